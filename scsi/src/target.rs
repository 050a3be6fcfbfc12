//! The contract between a transport (virtio-scsi, tests, fuzzers) and the
//! SCSI target: SAM-5's "execute command" and "task management function"
//! procedure calls.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};

use crate::nexus::ItNexus;
use crate::sense::Status;

/// A SAM-5 LUN as the transport decoded it: the single-level LUN number
/// (0..=16383, peripheral or flat addressing already stripped).
pub type Lun = u16;

/// Task attribute (SAM-5 8.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskAttr {
    /// SIMPLE
    #[default]
    Simple,
    /// ORDERED
    Ordered,
    /// HEAD OF QUEUE
    HeadOfQueue,
    /// ACA
    Aca,
}

/// One command as delivered by the transport.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The I_T nexus it arrived on.
    pub nexus: &'a ItNexus,
    /// The logical unit addressed.
    pub lun: Lun,
    /// Command identifier, unique per nexus while the command is outstanding
    /// (virtio-scsi's `tag`); ABORT TASK and QUERY TASK name commands by it.
    pub tag: u64,
    /// Task attribute.
    pub attr: TaskAttr,
    /// The CDB as received (the transport's CDB buffer may be longer than the
    /// command's CDB; trailing bytes are ignored).
    pub cdb: &'a [u8],
}

/// Data-out: what the initiator sends with the command.
#[derive(Debug)]
pub struct DataOut<'a> {
    /// Source of the bytes.
    pub reader: &'a mut dyn DataOutSource,
    /// How many bytes the initiator provided.
    pub len: usize,
}

/// Data-in: where the command's response data goes.
#[derive(Debug)]
pub struct DataIn<'a> {
    /// Sink for the bytes.
    pub writer: &'a mut dyn DataInSink,
    /// How many bytes the initiator's buffer holds.
    pub len: usize,
}

/// Fills buffers in place (e.g. a backend `preadv` into them).
pub type FillFn<'f> = dyn FnMut(&mut [IoSliceMut<'_>]) -> io::Result<()> + 'f;
/// Consumes buffers in place (e.g. a backend `pwritev` from them).
pub type DrainFn<'f> = dyn FnMut(&[IoSlice<'_>]) -> io::Result<()> + 'f;

fn short_buffer(what: &str, need: usize, have: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("{what} of {have} bytes cannot hold {need}"),
    )
}

/// Where a command's data-in goes: a [`Write`] (response data built by the
/// target is written to it) that can also lend its memory, so that medium
/// data is read straight into the initiator's buffer (no bounce buffer, no
/// copy).
pub trait DataInSink: Write + std::fmt::Debug {
    /// Lend the next `len` bytes of the sink to `fill`, which fills all of
    /// them in place; if it succeeds they count as written, if it fails
    /// nothing does (the sink stays where it was; the bytes it lent are left
    /// unspecified) and its error is returned. A sink with room for fewer
    /// than `len` bytes fails without calling `fill`.
    ///
    /// The default fills a bounce buffer and writes it with `write_all`;
    /// sinks backed by memory override it.
    fn write_in_place(&mut self, len: usize, fill: &mut FillFn<'_>) -> io::Result<()> {
        let mut buf = vec![0u8; len];
        fill(&mut [IoSliceMut::new(&mut buf)])?;
        self.write_all(&buf)
    }
}

impl DataInSink for Vec<u8> {
    fn write_in_place(&mut self, len: usize, fill: &mut FillFn<'_>) -> io::Result<()> {
        let start = self.len();
        self.resize(start + len, 0);
        let r = fill(&mut [IoSliceMut::new(&mut self[start..])]);
        if r.is_err() {
            self.truncate(start);
        }
        r
    }
}

impl DataInSink for &mut [u8] {
    fn write_in_place(&mut self, len: usize, fill: &mut FillFn<'_>) -> io::Result<()> {
        if len > self.len() {
            return Err(short_buffer("data-in buffer", len, self.len()));
        }
        let buf = std::mem::take(self);
        let r = fill(&mut [IoSliceMut::new(&mut buf[..len])]);
        *self = if r.is_ok() { &mut buf[len..] } else { buf };
        r
    }
}

impl DataInSink for io::Cursor<&mut [u8]> {}
impl DataInSink for io::Cursor<Vec<u8>> {}
impl DataInSink for io::Sink {}

/// Where a command's data-out comes from: a [`Read`] that can also lend its
/// memory, so that medium data is written straight from the initiator's
/// buffer.
pub trait DataOutSource: Read + std::fmt::Debug {
    /// Lend the next `len` bytes of the source to `drain`; if it succeeds
    /// they count as read, if it fails nothing does and its error is
    /// returned. A source with fewer than `len` bytes fails without calling
    /// `drain`.
    ///
    /// The default reads them into a bounce buffer first.
    fn read_in_place(&mut self, len: usize, drain: &mut DrainFn<'_>) -> io::Result<()> {
        let mut buf = vec![0u8; len];
        self.read_exact(&mut buf)?;
        drain(&[IoSlice::new(&buf)])
    }
}

impl DataOutSource for &[u8] {
    fn read_in_place(&mut self, len: usize, drain: &mut DrainFn<'_>) -> io::Result<()> {
        if len > self.len() {
            return Err(short_buffer("data-out buffer", len, self.len()));
        }
        drain(&[IoSlice::new(&self[..len])])?;
        *self = &self[len..];
        Ok(())
    }
}

impl DataOutSource for io::Cursor<&[u8]> {}
impl DataOutSource for io::Cursor<Vec<u8>> {}
impl DataOutSource for io::Empty {}

/// Any [`Write`] as a [`DataInSink`] (bytes lent in place go through a
/// bounce buffer).
#[derive(Debug)]
pub struct WriteSink<W>(pub W);

impl<W: Write> Write for WriteSink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write + std::fmt::Debug> DataInSink for WriteSink<W> {}

/// Any [`Read`] as a [`DataOutSource`] (bytes lent in place go through a
/// bounce buffer).
#[derive(Debug)]
pub struct ReadSource<R>(pub R);

impl<R: Read> Read for ReadSource<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read + std::fmt::Debug> DataOutSource for ReadSource<R> {}

/// The target's answer to a command that reached it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// SCSI status.
    pub status: Status,
    /// Sense data, already encoded in the format the initiator asked for
    /// (fixed or descriptor); empty when there is none.
    pub sense: Vec<u8>,
    /// Bytes written to data-in.
    pub data_in_len: usize,
    /// Bytes consumed from data-out.
    pub data_out_len: usize,
}

/// Transport-level failure: the command's buffers could not be used. A SCSI
/// error is never a `TransportError`.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Reading the data-out buffer failed.
    #[error("reading data-out failed: {0}")]
    DataOut(#[source] std::io::Error),
    /// Writing the data-in buffer failed.
    #[error("writing data-in failed: {0}")]
    DataIn(#[source] std::io::Error),
    /// The CDB buffer is shorter than the command's CDB length.
    #[error("CDB of {got} bytes is shorter than the {need} bytes opcode {opcode:#04x} needs")]
    CdbTooShort {
        /// Operation code.
        opcode: u8,
        /// Bytes available.
        got: usize,
        /// Bytes required.
        need: usize,
    },
    /// The CDB buffer is empty.
    #[error("empty CDB")]
    EmptyCdb,
    /// The command did not complete with a SCSI status: the service
    /// delivery subsystem failed (SAM-5's SERVICE DELIVERY OR TARGET
    /// FAILURE), e.g. the host path to a passthrough device timed out, was
    /// reset or is gone. A transport that can say so tells the initiator
    /// which (virtio-scsi: its response codes, which guest drivers retry
    /// where that makes sense); it is never reported as GOOD.
    #[error("service delivery failed ({failure:?})")]
    Delivery {
        /// What failed.
        failure: DeliveryFailure,
        /// Bytes written to data-in before the failure.
        data_in_len: usize,
        /// Bytes consumed from data-out before the failure.
        data_out_len: usize,
    },
}

/// Why a command could not be delivered or completed by the target
/// ([`TransportError::Delivery`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryFailure {
    /// The command timed out below the target (retry).
    Timeout,
    /// The path is busy (retry).
    Busy,
    /// The path or the device was reset.
    Reset,
    /// The command was aborted below the target.
    Aborted,
    /// The path to the device is down.
    TransportFailure,
    /// The device is not there (any more).
    BadTarget,
    /// The device failed permanently.
    TargetFailure,
    /// The I_T nexus failed.
    NexusFailure,
    /// The initiator's buffers are smaller than the command's transfer.
    Overrun,
    /// Any other failure.
    Failure,
}

/// Task management functions (SAM-5 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskMgmt {
    /// ABORT TASK: the command with this tag.
    AbortTask(u64),
    /// ABORT TASK SET: every command of this nexus on the LU.
    AbortTaskSet,
    /// CLEAR TASK SET: every command of every nexus on the LU.
    ClearTaskSet,
    /// CLEAR ACA.
    ClearAca,
    /// LOGICAL UNIT RESET.
    LogicalUnitReset,
    /// I_T NEXUS RESET (all LUs of the target, this nexus).
    ItNexusReset,
    /// QUERY TASK: is the command with this tag still in the task set?
    QueryTask(u64),
    /// QUERY TASK SET: does this nexus have commands in the task set?
    QueryTaskSet,
    /// QUERY ASYNCHRONOUS EVENT: is a unit attention pending for this nexus?
    QueryAsyncEvent,
}

/// Service responses of a task management function (SAM-5 7.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfResponse {
    /// FUNCTION COMPLETE.
    Complete,
    /// FUNCTION SUCCEEDED (QUERY functions: the thing asked about exists).
    Succeeded,
    /// FUNCTION REJECTED.
    Rejected,
    /// INCORRECT LOGICAL UNIT NUMBER.
    IncorrectLun,
}

/// A SCSI target device: a set of logical units behind one or more target
/// ports. Safe to call from several request queues at once.
pub trait ScsiTarget: Send + Sync {
    /// Execute one command. `Ok` carries the SCSI outcome (including CHECK
    /// CONDITION); `Err` only a transport failure.
    fn execute(
        &self,
        req: &Request<'_>,
        data_out: DataOut<'_>,
        data_in: DataIn<'_>,
    ) -> Result<Response, TransportError>;

    /// Perform a task management function for `nexus` on `lun`.
    fn task_mgmt(&self, nexus: &ItNexus, lun: Lun, tmf: TaskMgmt) -> TmfResponse;

    /// Whether `lun` exists (transports use it for hot-plug events and to
    /// answer TMFs with INCORRECT LUN).
    fn has_lun(&self, lun: Lun) -> bool;

    /// The unit attention condition pending for `nexus` on `lun`, if any,
    /// without consuming it (virtio-scsi PARAM_CHANGE events and QUERY
    /// ASYNCHRONOUS EVENT use it).
    fn pending_unit_attention(&self, nexus: &ItNexus, lun: Lun) -> Option<crate::sense::Sense>;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::MemBackend;
    use crate::disk::{Disk, DiskConfig, DiskIdentity};
    use crate::emulated::EmulatedTarget;
    use crate::nexus::{PortName, TargetPort};

    /// A fill that writes 1, 2, 3, ... across the lent buffers.
    fn counting(bufs: &mut [IoSliceMut<'_>]) -> io::Result<()> {
        let mut v = 1u8;
        for b in bufs.iter_mut() {
            for x in b.iter_mut() {
                *x = v;
                v = v.wrapping_add(1);
            }
        }
        Ok(())
    }

    fn failing(_: &mut [IoSliceMut<'_>]) -> io::Result<()> {
        Err(io::Error::other("backend failed"))
    }

    #[test]
    fn vec_sink_appends_in_place_and_rolls_back_on_failure() {
        let mut v = vec![9u8];
        v.write_in_place(3, &mut counting).unwrap();
        assert_eq!(v, [9, 1, 2, 3]);
        assert!(v.write_in_place(2, &mut failing).is_err());
        assert_eq!(v, [9, 1, 2, 3], "a failed fill counts as nothing written");
    }

    #[test]
    fn slice_sink_advances_only_on_success() {
        let mut buf = [0u8; 5];
        {
            let mut s: &mut [u8] = &mut buf;
            s.write_in_place(2, &mut counting).unwrap();
            assert_eq!(s.len(), 3);
            assert!(s.write_in_place(2, &mut failing).is_err());
            assert_eq!(s.len(), 3);
            let e = s.write_in_place(4, &mut counting).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
            s.write_all(&[7]).unwrap();
        }
        assert_eq!(buf, [1, 2, 7, 0, 0]);
    }

    #[test]
    fn write_sink_goes_through_a_bounce_buffer() {
        let mut w = WriteSink(io::Cursor::new(Vec::new()));
        w.write_in_place(3, &mut counting).unwrap();
        assert!(w.write_in_place(3, &mut failing).is_err());
        assert_eq!(w.0.into_inner(), [1, 2, 3]);
    }

    #[test]
    fn sources_lend_data_out_and_advance_only_on_success() {
        let data = [1u8, 2, 3, 4];
        let mut s: &[u8] = &data;
        let mut seen = Vec::new();
        s.read_in_place(3, &mut |bufs| {
            for b in bufs {
                seen.extend_from_slice(b);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!((seen.as_slice(), s), (&[1u8, 2, 3][..], &[4u8][..]));
        assert!(s
            .read_in_place(1, &mut |_| Err(io::Error::other("no")))
            .is_err());
        assert_eq!(s, [4]);
        assert!(s.read_in_place(2, &mut |_| Ok(())).is_err(), "too short");
        let mut r = ReadSource(io::Cursor::new(vec![5u8, 6]));
        let mut got = Vec::new();
        r.read_in_place(2, &mut |bufs| {
            got.extend(bufs.iter().flat_map(|b| b.iter().copied()));
            Ok(())
        })
        .unwrap();
        assert_eq!(got, [5, 6]);
    }

    fn nexus() -> ItNexus {
        ItNexus {
            initiator: PortName::Naa(0x5000_0000_0000_0001u64.to_be_bytes()),
            target: TargetPort {
                relative_id: 1,
                name: PortName::Naa(0x5001_4050_0000_0001u64.to_be_bytes()),
            },
        }
    }

    /// A target over 8 blocks of 512 bytes, byte i = i % 251; the power-on
    /// unit attention of `nexus()` already consumed.
    fn target() -> (Arc<MemBackend>, EmulatedTarget) {
        let data = (0..4096u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let mem = Arc::new(MemBackend::from_vec(data));
        let disk = Disk::new(
            DiskConfig::new(DiskIdentity::from_text("t")),
            mem.clone(),
            None,
        )
        .unwrap();
        let t = EmulatedTarget::new().with_lun(0, Arc::new(disk)).unwrap();
        let tur = [0u8; 6]; // TEST UNIT READY
        let r = exec(&t, &tur, &mut Vec::new(), 0);
        assert_eq!(r.status, Status::CheckCondition);
        (mem, t)
    }

    fn exec(t: &EmulatedTarget, cdb: &[u8], sink: &mut dyn DataInSink, len: usize) -> Response {
        let n = nexus();
        let mut none: &[u8] = &[];
        t.execute(
            &Request {
                nexus: &n,
                lun: 0,
                tag: 1,
                attr: TaskAttr::Simple,
                cdb,
            },
            DataOut {
                reader: &mut none,
                len: 0,
            },
            DataIn { writer: sink, len },
        )
        .unwrap()
    }

    const READ_2_AT_1: [u8; 10] = [
        0x28, // READ(10)
        0x00, // flags
        0, 0, 0, 1,    // LBA 1
        0x00, // group
        0, 2,    // 2 blocks
        0x00, // control
    ];

    fn medium(from: u32, len: u32) -> Vec<u8> {
        (from..from + len)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect()
    }

    #[test]
    fn read_data_in_is_the_same_through_every_kind_of_sink() {
        let (_, t) = target();
        // A slice (in place).
        let mut buf = vec![0u8; 1024];
        let r = exec(&t, &READ_2_AT_1, &mut buf.as_mut_slice(), 1024);
        assert_eq!((r.status, r.data_in_len), (Status::Good, 1024));
        assert_eq!(buf, medium(512, 1024));
        // A Vec (in place, appended).
        let mut v = Vec::new();
        let r = exec(&t, &READ_2_AT_1, &mut v, 1024);
        assert_eq!((r.status, r.data_in_len), (Status::Good, 1024));
        assert_eq!(v, medium(512, 1024));
        // Any Write (bounce buffer).
        let mut w = WriteSink(io::Cursor::new(Vec::new()));
        let r = exec(&t, &READ_2_AT_1, &mut w, 1024);
        assert_eq!((r.status, r.data_in_len), (Status::Good, 1024));
        assert_eq!(w.0.into_inner(), medium(512, 1024));
    }

    #[test]
    fn read_into_a_shorter_buffer_delivers_what_fits() {
        let (_, t) = target();
        let mut v = Vec::new();
        let r = exec(&t, &READ_2_AT_1, &mut v, 700);
        assert_eq!((r.status, r.data_in_len), (Status::Good, 700));
        assert_eq!(v, medium(512, 700));
    }

    #[test]
    fn failed_read_in_place_transfers_nothing() {
        let (mem, t) = target();
        mem.fail_reads(true);
        let mut v = vec![0xEE];
        let r = exec(&t, &READ_2_AT_1, &mut v, 1024);
        assert_eq!((r.status, r.data_in_len), (Status::CheckCondition, 0));
        // Fixed sense: MEDIUM ERROR, UNRECOVERED READ ERROR (11/00), VALID
        // with INFORMATION = the LBA.
        assert_eq!(
            r.sense,
            [0xF0, 0, 0x03, 0, 0, 0, 1, 10, 0, 0, 0, 0, 0x11, 0, 0, 0, 0, 0]
        );
        assert_eq!(v, [0xEE]);
        // A data-in buffer that fails is a transport error, not GOOD.
        mem.fail_reads(false);
        let mut tiny: &mut [u8] = &mut [0u8; 4];
        let n = nexus();
        let mut none: &[u8] = &[];
        let e = t
            .execute(
                &Request {
                    nexus: &n,
                    lun: 0,
                    tag: 2,
                    attr: TaskAttr::Simple,
                    cdb: &READ_2_AT_1,
                },
                DataOut {
                    reader: &mut none,
                    len: 0,
                },
                // The transport claims more room than the sink has.
                DataIn {
                    writer: &mut tiny,
                    len: 1024,
                },
            )
            .unwrap_err();
        assert!(matches!(e, TransportError::DataIn(_)), "{e:?}");
    }

    /// The target's per-thread "last unit" shortcut never sends a command
    /// to a unit that was removed or replaced.
    #[test]
    fn commands_follow_hot_unplug_and_replug_of_a_lun() {
        let (_, t) = target();
        let read1 = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]; // READ(10) LBA 0, 1 block
        let mut v = Vec::new();
        assert_eq!(exec(&t, &read1, &mut v, 512).status, Status::Good);
        assert_eq!(v, medium(0, 512));
        assert!(t.remove_lun(0).is_some());
        let r = exec(&t, &read1, &mut Vec::new(), 512);
        // LOGICAL UNIT NOT SUPPORTED (5/25/00), answered by the target.
        assert_eq!(
            (r.status, r.sense[2], r.sense[12]),
            (Status::CheckCondition, 5, 0x25)
        );
        // A different disk at the same LUN: zeros, and its own power-on UA.
        let disk = Disk::new(
            DiskConfig::new(DiskIdentity::from_text("u")),
            Arc::new(MemBackend::new(4096)),
            None,
        )
        .unwrap();
        t.add_lun(0, Arc::new(disk)).unwrap();
        let r = exec(&t, &read1, &mut Vec::new(), 512);
        assert_eq!(
            (r.status, r.sense[12], r.sense[13]),
            (Status::CheckCondition, 0x29, 0)
        );
        let mut v = Vec::new();
        assert_eq!(exec(&t, &read1, &mut v, 512).status, Status::Good);
        assert_eq!(v, [0u8; 512]);
    }

    /// Reservations that report the nexus preempted (PREEMPT AND ABORT in
    /// another process) while `preempted` is set.
    #[derive(Debug, Default)]
    struct PreemptedPr {
        inner: crate::pr::MemoryPr,
        preempted: std::sync::atomic::AtomicBool,
    }

    impl crate::pr::Reservations for PreemptedPr {
        fn conflicts(&self, _: &ItNexus, _: crate::pr::PrAccess) -> bool {
            false
        }
        fn reserve_out(&self, n: &ItNexus, cdb: &[u8], p: &[u8]) -> crate::pr::PrOutcome {
            self.inner.reserve_out(n, cdb, p)
        }
        fn aborted_since(&self, _: &ItNexus, _: u64) -> bool {
            self.preempted.load(std::sync::atomic::Ordering::SeqCst)
        }
        fn reserve_in(&self, n: &ItNexus, cdb: &[u8]) -> crate::pr::PrOutcome {
            self.inner.reserve_in(n, cdb)
        }
        fn scsi2_reserve(&self, n: &ItNexus) -> crate::pr::PrOutcome {
            self.inner.scsi2_reserve(n)
        }
        fn scsi2_release(&self, n: &ItNexus) -> crate::pr::PrOutcome {
            self.inner.scsi2_release(n)
        }
        fn take_unit_attentions(&self, n: &ItNexus) -> Vec<crate::sense::Sense> {
            self.inner.take_unit_attentions(n)
        }
        fn lu_reset(&self) {
            self.inner.lu_reset()
        }
        fn nexus_loss(&self, n: &ItNexus) {
            self.inner.nexus_loss(n)
        }
    }

    /// A READ whose nexus was preempted by another process while it ran
    /// ends TASK ABORTED, and its data (read in place) does not count.
    #[test]
    fn read_preempted_elsewhere_transfers_nothing() {
        let pr = Arc::new(PreemptedPr::default());
        let data = (0..4096u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let disk = Disk::new(
            DiskConfig::new(DiskIdentity::from_text("p")),
            Arc::new(MemBackend::from_vec(data)),
            Some(pr.clone()),
        )
        .unwrap();
        let t = EmulatedTarget::new().with_lun(0, Arc::new(disk)).unwrap();
        let tur = [0u8; 6]; // TEST UNIT READY: consumes the power-on UA
        assert_eq!(
            exec(&t, &tur, &mut Vec::new(), 0).status,
            Status::CheckCondition
        );
        pr.preempted
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut v = vec![0xEE];
        let r = exec(&t, &READ_2_AT_1, &mut v, 1024);
        assert_eq!((r.status, r.data_in_len), (Status::TaskAborted, 0));
        assert!(r.sense.is_empty());
        assert_eq!(v, [0xEE], "no data-in for an aborted command");
        pr.preempted
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let r = exec(&t, &READ_2_AT_1, &mut v, 1024);
        assert_eq!((r.status, r.data_in_len), (Status::Good, 1024));
        assert_eq!(&v[1..], &medium(512, 1024)[..]);
    }

    #[test]
    fn write_goes_from_data_out_in_place_and_short_data_out_is_refused() {
        let (mem, t) = target();
        let n = nexus();
        let payload = [0x42u8; 512];
        let mut src: &[u8] = &payload;
        let write1 = [
            0x2A, // WRITE(10)
            0x00, // flags
            0, 0, 0, 3,    // LBA 3
            0x00, // group
            0, 1,    // 1 block
            0x00, // control
        ];
        let req = Request {
            nexus: &n,
            lun: 0,
            tag: 3,
            attr: TaskAttr::Simple,
            cdb: &write1,
        };
        let mut sink = Vec::new();
        let r = t
            .execute(
                &req,
                DataOut {
                    reader: &mut src,
                    len: 512,
                },
                DataIn {
                    writer: &mut sink,
                    len: 0,
                },
            )
            .unwrap();
        assert_eq!((r.status, r.data_out_len), (Status::Good, 512));
        assert!(src.is_empty());
        let c = mem.contents();
        assert_eq!(&c[1536..2048], &payload[..]);
        assert_eq!(&c[1024..1536], &medium(1024, 512)[..], "neighbours intact");
        let mut short: &[u8] = &payload[..100];
        let e = t
            .execute(
                &req,
                DataOut {
                    reader: &mut short,
                    len: 100,
                },
                DataIn {
                    writer: &mut sink,
                    len: 0,
                },
            )
            .unwrap_err();
        assert!(matches!(e, TransportError::DataOut(_)), "{e:?}");
    }
}
