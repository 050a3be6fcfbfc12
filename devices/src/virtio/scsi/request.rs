//! The command path: `virtio_scsi_cmd_req` in, `virtio_scsi_cmd_resp` out,
//! data moved by the target straight between the descriptor buffers and
//! the backing store (no intermediate copy).
//!
//! Request (device-readable): `lun[8] tag:u64 task_attr:u8 prio:u8 crn:u8
//! cdb[cdb_size]`, then data-out. Response (device-writable):
//! `sense_len:u32 resid:u32 status_qualifier:u16 status:u8 response:u8
//! sense[sense_size]`, then data-in. All little-endian.

use std::io::{Read, Write};
use std::sync::Arc;

use log::{debug, warn};
use scsi::target::{DataIn, DataOut, DeliveryFailure, Request, TaskAttr, TransportError};
use scsi::{Lun, Status};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::{Controller, TargetMap};
use crate::virtio::chain::{split_chain, ChainReader, ChainShapeError, ChainWriter, Resolver};
use crate::virtio::ring::SplitRing;
use crate::virtio::{GuestMemory, InterruptType, VirtioInterrupt};

/// Fixed part of a command request, before the CDB.
pub const REQ_HEADER_LEN: usize = 19;
/// Fixed part of a command response, before the sense buffer.
pub const RESP_HEADER_LEN: usize = 12;

/// `response` values (virtio 1.2, 5.6.6.1).
pub mod response {
    /// Command / TMF completed (FUNCTION COMPLETE for TMFs).
    pub const OK: u8 = 0;
    /// Data-in buffer too small.
    pub const OVERRUN: u8 = 1;
    /// Aborted by a TMF.
    pub const ABORTED: u8 = 2;
    /// No such target.
    pub const BAD_TARGET: u8 = 3;
    /// Aborted by a reset.
    pub const RESET: u8 = 4;
    /// Retry later.
    pub const BUSY: u8 = 5;
    /// Transport failure.
    pub const TRANSPORT_FAILURE: u8 = 6;
    /// Target failure.
    pub const TARGET_FAILURE: u8 = 7;
    /// Nexus failure.
    pub const NEXUS_FAILURE: u8 = 8;
    /// Anything else.
    pub const FAILURE: u8 = 9;
    /// TMF: FUNCTION SUCCEEDED.
    pub const FUNCTION_SUCCEEDED: u8 = 10;
    /// TMF: FUNCTION REJECTED.
    pub const FUNCTION_REJECTED: u8 = 11;
    /// TMF: INCORRECT LOGICAL UNIT NUMBER.
    pub const INCORRECT_LUN: u8 = 12;
}

/// A descriptor chain the device cannot use: the device is marked
/// DEVICE_NEEDS_RESET.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// Empty chain, a `next` index outside the table, a loop, or a nested
    /// indirect table.
    #[error("malformed descriptor chain (loop, bad index or bad indirect table)")]
    Structure,
    /// A device-readable descriptor after a device-writable one.
    #[error("device-readable descriptor after a device-writable one")]
    Order,
    /// A buffer outside guest memory.
    #[error("descriptor buffer outside guest memory")]
    Memory,
    /// Not even the fixed part of the response fits.
    #[error("response buffer of {got} bytes, need at least {need}")]
    ResponseTooShort {
        /// Bytes needed.
        need: usize,
        /// Bytes offered.
        got: usize,
    },
    /// The request is too short for its type (control and event queues).
    #[error("request of {got} bytes, need {need}")]
    RequestTooShort {
        /// Bytes needed.
        need: usize,
        /// Bytes offered.
        got: usize,
    },
    /// Unknown control request type.
    #[error("unknown control request type {0}")]
    ControlType(u32),
    /// The rings themselves are broken (avail index beyond the queue size).
    #[error("queue error: {0}")]
    Queue(String),
}

/// Decode a virtio-scsi LUN: `lun[0] = 1`, `lun[1]` = target, `lun[2..4]` =
/// single-level LUN in peripheral (`00b`, bus 0) or flat (`01b`) addressing.
/// Returns `None` for anything else (the command is answered BAD_TARGET).
pub fn decode_lun(lun: &[u8; 8]) -> Option<(u8, Lun)> {
    if lun[0] != 1 {
        return None;
    }
    if lun[2] != 0 && !(0x40..0x80).contains(&lun[2]) {
        return None;
    }
    Some((
        lun[1],
        ((u16::from(lun[2]) << 8) | u16::from(lun[3])) & 0x3FFF,
    ))
}

/// Encode a LUN the way the device reports it in events (peripheral
/// addressing below 256, flat above).
pub fn encode_lun(target: u8, lun: Lun) -> [u8; 8] {
    let [hi, lo] = lun.to_be_bytes();
    let b2 = if lun < 256 { 0 } else { 0x40 | (hi & 0x3F) };
    [1, target, b2, lo, 0, 0, 0, 0]
}

impl From<ChainShapeError> for ChainError {
    fn from(e: ChainShapeError) -> Self {
        match e {
            ChainShapeError::Structure | ChainShapeError::TooLong => ChainError::Structure,
            ChainShapeError::Order => ChainError::Order,
            ChainShapeError::Memory => ChainError::Memory,
        }
    }
}

/// The fixed part of a command response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CmdResponse {
    /// Sense bytes that follow.
    pub sense_len: u32,
    /// Residual byte count.
    pub resid: u32,
    /// SCSI status.
    pub status: u8,
    /// virtio-scsi response code.
    pub response: u8,
}

impl CmdResponse {
    fn encode(&self) -> [u8; RESP_HEADER_LEN] {
        let mut b = [0u8; RESP_HEADER_LEN];
        b[0..4].copy_from_slice(&self.sense_len.to_le_bytes());
        b[4..8].copy_from_slice(&self.resid.to_le_bytes());
        // status_qualifier (b[8..10]) stays 0.
        b[10] = self.status;
        b[11] = self.response;
        b
    }
}

fn task_attr(v: u8) -> TaskAttr {
    match v {
        1 => TaskAttr::Ordered,
        2 => TaskAttr::HeadOfQueue,
        3 => TaskAttr::Aca,
        _ => TaskAttr::Simple,
    }
}

fn sat_u32(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Serves request queues.
#[derive(Debug, Clone)]
pub struct RequestProcessor {
    pub(crate) ctrl: Arc<Controller>,
}

impl RequestProcessor {
    /// Serve every available chain of `queue`, then signal the driver if it
    /// wants it. A malformed chain marks the device NEEDS_RESET and stops.
    pub fn process_queue(
        &self,
        mem: &GuestMemory,
        queue: &mut Queue,
        index: u16,
        irq: &dyn VirtioInterrupt,
    ) -> Result<(), ChainError> {
        // One snapshot of the targets per batch: no lock per command.
        let targets = self.ctrl.targets();
        let mut res = Resolver::new(mem);
        match SplitRing::new(&mut res, queue) {
            Some(ring) => drain_ring(mem, queue, ring, res, index, irq, |rd, wr| {
                self.execute(&targets, rd, wr)
            }),
            None => drain_queue(mem, queue, index, irq, |chain| {
                self.handle(&targets, mem, chain)
            }),
        }
    }

    /// Execute one command chain; returns the used length.
    pub fn handle_chain(
        &self,
        mem: &GuestMemory,
        chain: DescriptorChain<&GuestMemory>,
    ) -> Result<u32, ChainError> {
        self.handle(&self.ctrl.targets(), mem, chain)
    }

    fn handle(
        &self,
        targets: &TargetMap,
        mem: &GuestMemory,
        chain: DescriptorChain<&GuestMemory>,
    ) -> Result<u32, ChainError> {
        let (mut reader, mut writer) = split_chain(mem, chain)?;
        self.execute(targets, &mut reader, &mut writer)
    }

    fn execute(
        &self,
        targets: &TargetMap,
        reader: &mut ChainReader<'_>,
        writer: &mut ChainWriter<'_>,
    ) -> Result<u32, ChainError> {
        let sense_size = usize::try_from(self.ctrl.sense_size()).unwrap_or(0);
        let cdb_size = usize::try_from(self.ctrl.cdb_size()).unwrap_or(0).min(255);
        let hdr_len = REQ_HEADER_LEN + cdb_size;
        let resp_len = RESP_HEADER_LEN + sense_size;
        let wavail = writer.available_bytes();
        if wavail < RESP_HEADER_LEN {
            return Err(ChainError::ResponseTooShort {
                need: resp_len,
                got: wavail,
            });
        }
        if reader.available_bytes() < hdr_len || wavail < resp_len {
            debug!(
                "virtio-scsi: request {} / response {} bytes too short",
                reader.available_bytes(),
                wavail
            );
            let r = CmdResponse {
                response: response::FAILURE,
                ..Default::default()
            };
            writer
                .write_all(&r.encode())
                .map_err(|_| ChainError::Memory)?;
            return Ok(sat_u32(RESP_HEADER_LEN));
        }
        // The default CDB size (32) needs no more than a small buffer; the
        // large one is only made (and zeroed) for a bigger driver cdb_size.
        let mut small = [0u8; REQ_HEADER_LEN + 32];
        let mut large;
        let hdr: &mut [u8] = if hdr_len <= small.len() {
            &mut small[..hdr_len]
        } else {
            large = [0u8; REQ_HEADER_LEN + 255];
            &mut large[..hdr_len]
        };
        reader.read_exact(hdr).map_err(|_| ChainError::Memory)?;
        self.run(targets, hdr, resp_len, sense_size, reader, writer)
    }

    /// Run the command whose request header is `hdr` and complete its
    /// response; returns the used length.
    fn run(
        &self,
        targets: &TargetMap,
        hdr: &[u8],
        resp_len: usize,
        sense_size: usize,
        reader: &mut ChainReader<'_>,
        writer: &mut ChainWriter<'_>,
    ) -> Result<u32, ChainError> {
        // The response goes first in the writable buffers, data-in after it:
        // skip the response area, let the target write data-in, come back.
        let resp_pos = writer.position();
        if !writer.skip(resp_len) {
            return Err(ChainError::Memory);
        }
        let mut lun = [0u8; 8];
        lun.copy_from_slice(&hdr[0..8]);
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&hdr[8..16]);
        let tag = u64::from_le_bytes(tag);

        let target = decode_lun(&lun).and_then(|(t, l)| targets.get(&t).map(|x| (x, l)));
        let mut sense_out: &[u8] = &[];
        let result;
        let resp = match target {
            None => CmdResponse {
                response: response::BAD_TARGET,
                ..Default::default()
            },
            Some((slot, lun)) => {
                let din_cap = writer.available_bytes();
                let dout_cap = reader.available_bytes();
                let req = Request {
                    nexus: &slot.nexus,
                    lun,
                    tag,
                    attr: task_attr(hdr[16]),
                    cdb: &hdr[REQ_HEADER_LEN..],
                };
                result = slot.target.execute(
                    &req,
                    DataOut {
                        reader: &mut *reader,
                        len: dout_cap,
                    },
                    DataIn {
                        writer: &mut *writer,
                        len: din_cap,
                    },
                );
                match &result {
                    Ok(r) => {
                        let resid = if din_cap > 0 {
                            din_cap.saturating_sub(r.data_in_len)
                        } else {
                            dout_cap.saturating_sub(r.data_out_len)
                        };
                        if r.status == Status::TaskAborted {
                            // Ended by ABORT TASK (SET), CLEAR TASK SET, a
                            // LU reset or PREEMPT AND ABORT: virtio answers
                            // ABORTED with no status or sense (virtio 1.2,
                            // 5.6.6.1), as QEMU does.
                            CmdResponse {
                                resid: sat_u32(resid),
                                response: response::ABORTED,
                                ..Default::default()
                            }
                        } else {
                            sense_out = &r.sense[..r.sense.len().min(sense_size)];
                            CmdResponse {
                                sense_len: sat_u32(sense_out.len()),
                                resid: sat_u32(resid),
                                status: r.status as u8,
                                response: response::OK,
                            }
                        }
                    }
                    Err(TransportError::Delivery {
                        failure,
                        data_in_len,
                        data_out_len,
                    }) => {
                        debug!("virtio-scsi: tag {tag:#x}: service delivery failed: {failure:?}");
                        let resid = if din_cap > 0 {
                            din_cap.saturating_sub(*data_in_len)
                        } else {
                            dout_cap.saturating_sub(*data_out_len)
                        };
                        CmdResponse {
                            resid: sat_u32(resid),
                            response: delivery_response(*failure),
                            ..Default::default()
                        }
                    }
                    Err(e) => {
                        debug!("virtio-scsi: transport error on tag {tag:#x}: {e}");
                        CmdResponse {
                            response: response::FAILURE,
                            ..Default::default()
                        }
                    }
                }
            }
        };
        let used = writer.bytes_written();
        writer.seek(resp_pos);
        writer
            .write_all(&resp.encode())
            .and_then(|()| writer.write_all(sense_out))
            .map_err(|_| ChainError::Memory)?;
        Ok(sat_u32(used))
    }
}

/// The virtio response for a command the target could not deliver (virtio
/// 1.2, 5.6.6.1). A timeout is BUSY, as QEMU answers it: Linux
/// (`DID_BUS_BUSY`) and Windows vioscsi (`SRB_STATUS_BUSY`) retry BUSY, while
/// both fail an ABORTED command without retrying.
pub fn delivery_response(failure: DeliveryFailure) -> u8 {
    match failure {
        DeliveryFailure::Timeout | DeliveryFailure::Busy => response::BUSY,
        DeliveryFailure::Reset => response::RESET,
        DeliveryFailure::Aborted => response::ABORTED,
        DeliveryFailure::TransportFailure => response::TRANSPORT_FAILURE,
        DeliveryFailure::BadTarget => response::BAD_TARGET,
        DeliveryFailure::TargetFailure => response::TARGET_FAILURE,
        DeliveryFailure::NexusFailure => response::NEXUS_FAILURE,
        DeliveryFailure::Overrun => response::OVERRUN,
        DeliveryFailure::Failure => response::FAILURE,
    }
}

/// Most chains taken from one read of the avail index before their used
/// entries are published.
const PUBLISH_EVERY: u16 = 64;

/// Drain a queue through its resolved rings: each chain is walked and
/// handed to `f` as a reader and a writer (`f` returns the used length);
/// used entries are written as chains complete and published every
/// [`PUBLISH_EVERY`] chains and at the end of each avail snapshot; one
/// interrupt decision at the end. Notification suppression while draining
/// and the final avail/used positions go through `queue`, which owns them.
/// Same outcome as [`drain_queue`], without the per-access region searches.
pub(crate) fn drain_ring<'m>(
    mem: &'m GuestMemory,
    queue: &mut Queue,
    ring: SplitRing<'m>,
    mut res: Resolver<'m>,
    index: u16,
    irq: &dyn VirtioInterrupt,
    mut f: impl FnMut(&mut ChainReader<'m>, &mut ChainWriter<'m>) -> Result<u32, ChainError>,
) -> Result<(), ChainError> {
    let fail = |e: ChainError, irq: &dyn VirtioInterrupt| {
        warn!("virtio-scsi: queue {index}: {e}; device needs reset");
        irq.set_needs_reset();
        e
    };
    let start_used = queue.next_used();
    let mut next_avail = queue.next_avail();
    let mut next_used = start_used;
    let size = ring.size();
    let memory_error = || ChainError::Queue("ring outside guest memory".into());
    loop {
        queue
            .disable_notification(mem)
            .map_err(|e| fail(ChainError::Queue(e.to_string()), irq))?;
        loop {
            let Some(avail) = ring.avail_idx() else {
                return Err(fail(memory_error(), irq));
            };
            let pending = avail.wrapping_sub(next_avail);
            if pending > size {
                return Err(fail(
                    ChainError::Queue(format!(
                        "avail index {avail} is {pending} entries ahead of {next_avail}, queue size {size}"
                    )),
                    irq,
                ));
            }
            if pending == 0 {
                break;
            }
            let mut failed = None;
            for i in 0..pending {
                let Some(head) = ring.avail_head(next_avail) else {
                    failed = Some(memory_error());
                    break;
                };
                next_avail = next_avail.wrapping_add(1);
                let r = ring
                    .walk(&mut res, head)
                    .map_err(ChainError::from)
                    .and_then(|(mut rd, mut wr)| f(&mut rd, &mut wr));
                let len = match r {
                    Ok(len) => len,
                    Err(e) => {
                        failed = Some(e);
                        0
                    }
                };
                // A head outside the table gets no used entry (it names no
                // chain); the error below resets the device anyway.
                if head < size {
                    if ring.put_used(next_used, head, len).is_none() {
                        failed.get_or_insert_with(memory_error);
                    }
                    next_used = next_used.wrapping_add(1);
                }
                if failed.is_some() {
                    break;
                }
                if (i + 1) % PUBLISH_EVERY == 0 && ring.publish_used(next_used).is_none() {
                    failed = Some(memory_error());
                    break;
                }
            }
            if ring.publish_used(next_used).is_none() {
                failed.get_or_insert_with(memory_error);
            }
            queue.set_next_avail(next_avail);
            queue.set_next_used(next_used);
            if let Some(e) = failed {
                irq.trigger(InterruptType::Queue(index));
                return Err(fail(e, irq));
            }
        }
        match queue.enable_notification(mem) {
            Ok(true) => continue,
            Ok(false) => break,
            Err(e) => return Err(fail(ChainError::Queue(e.to_string()), irq)),
        }
    }
    if next_used != start_used && ring.needs_notification(start_used, next_used) {
        irq.trigger(InterruptType::Queue(index));
    }
    Ok(())
}

/// Drain a queue with `f` (which returns each chain's used length), with
/// notification suppression while draining, then interrupt the driver if
/// it asked for one.
pub(crate) fn drain_queue<'m>(
    mem: &'m GuestMemory,
    queue: &mut Queue,
    index: u16,
    irq: &dyn VirtioInterrupt,
    mut f: impl FnMut(DescriptorChain<&'m GuestMemory>) -> Result<u32, ChainError>,
) -> Result<(), ChainError> {
    let fail = |e: ChainError, irq: &dyn VirtioInterrupt| {
        warn!("virtio-scsi: queue {index}: {e}; device needs reset");
        irq.set_needs_reset();
        e
    };
    let mut used_any = false;
    loop {
        queue
            .disable_notification(mem)
            .map_err(|e| fail(ChainError::Queue(e.to_string()), irq))?;
        loop {
            // Take up to CHUNK chains from one read of the avail index, then
            // publish their used entries.
            const CHUNK: usize = 16;
            let mut done = [(0u16, 0u32); CHUNK];
            let mut n = 0;
            let mut failed = None;
            {
                let mut it = queue
                    .iter(mem)
                    .map_err(|e| fail(ChainError::Queue(e.to_string()), irq))?;
                while n < CHUNK {
                    let Some(chain) = it.next() else { break };
                    let head = chain.head_index();
                    match f(chain) {
                        Ok(len) => done[n] = (head, len),
                        Err(e) => {
                            done[n] = (head, 0);
                            failed = Some(e);
                        }
                    }
                    n += 1;
                    if failed.is_some() {
                        break;
                    }
                }
            }
            for &(head, len) in &done[..n] {
                queue
                    .add_used(mem, head, len)
                    .map_err(|e| fail(ChainError::Queue(e.to_string()), irq))?;
                used_any = true;
            }
            if let Some(e) = failed {
                irq.trigger(InterruptType::Queue(index));
                return Err(fail(e, irq));
            }
            if n < CHUNK {
                break;
            }
        }
        match queue.enable_notification(mem) {
            Ok(true) => continue,
            Ok(false) => break,
            Err(e) => return Err(fail(ChainError::Queue(e.to_string()), irq)),
        }
    }
    if used_any && queue.needs_notification(mem).unwrap_or(true) {
        irq.trigger(InterruptType::Queue(index));
    }
    Ok(())
}
