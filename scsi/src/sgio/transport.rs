//! One SG_IO request: the [`SgTransport`] trait, the real device behind
//! `ioctl(fd, SG_IO, &sg_io_hdr)` and a scriptable fake for tests.
//!
//! Facts about the Linux interface (include/uapi/scsi/sg.h, block/scsi_ioctl.c,
//! drivers/scsi/sg.c):
//! * `SG_IO` is ioctl 0x2285 and takes a version-3 `sg_io_hdr` (interface id
//!   `'S'`); it is synchronous on both `/dev/sgN` and block nodes, whatever
//!   `O_NONBLOCK` says (that flag only affects `open` and `read`/`write`).
//! * `status` is the SCSI status byte; `masked_status` the old shifted form;
//!   `host_status` the `DID_*` host byte; `driver_status` the driver byte
//!   (`DRIVER_SENSE` 0x08 when sense was collected, `DRIVER_TIMEOUT` 6);
//!   `resid` = `dxfer_len` − bytes actually transferred; `sb_len_wr` the
//!   bytes of sense written.
//! * Commands outside the kernel's unprivileged list (PERSISTENT RESERVE
//!   IN/OUT, RESERVE/RELEASE, SYNCHRONIZE CACHE(16), UNMAP, …) fail with
//!   `EPERM` without CAP_SYS_RAWIO; write-class commands also need the node
//!   open for writing.
//! * `BLKSECTGET` (0x1267) answers the largest transfer: on a block node an
//!   `unsigned short` count of 512-byte sectors, on an sg node an `int`
//!   count of bytes.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;

use super::SgioError;

/// `SG_IO` ioctl number.
pub const SG_IO: u32 = 0x2285;
/// `BLKSECTGET` ioctl number (`_IO(0x12, 103)`).
pub const BLKSECTGET: u32 = 0x1267;
/// No data transfer.
pub const SG_DXFER_NONE: i32 = -1;
/// Host to device (data-out).
pub const SG_DXFER_TO_DEV: i32 = -2;
/// Device to host (data-in).
pub const SG_DXFER_FROM_DEV: i32 = -3;
/// `driver_status` bit: sense data was collected.
pub const DRIVER_SENSE: u16 = 0x08;
/// `driver_status` low nibble: the command timed out.
pub const DRIVER_TIMEOUT: u16 = 0x06;
/// Largest sense buffer a `sg_io_hdr` can describe, and what virtio-scsi
/// carries by default.
pub const SENSE_BUF_LEN: usize = 96;

/// Linux host byte values (`DID_*`, include/scsi/scsi_status.h).
#[allow(missing_docs)]
pub mod did {
    pub const OK: u16 = 0x00;
    pub const NO_CONNECT: u16 = 0x01;
    pub const BUS_BUSY: u16 = 0x02;
    pub const TIME_OUT: u16 = 0x03;
    pub const BAD_TARGET: u16 = 0x04;
    pub const ABORT: u16 = 0x05;
    pub const PARITY: u16 = 0x06;
    pub const ERROR: u16 = 0x07;
    pub const RESET: u16 = 0x08;
    pub const BAD_INTR: u16 = 0x09;
    pub const PASSTHROUGH: u16 = 0x0a;
    pub const SOFT_ERROR: u16 = 0x0b;
    pub const IMM_RETRY: u16 = 0x0c;
    pub const REQUEUE: u16 = 0x0d;
    pub const TRANSPORT_DISRUPTED: u16 = 0x0e;
    pub const TRANSPORT_FAILFAST: u16 = 0x0f;
    pub const TARGET_FAILURE: u16 = 0x10;
    pub const NEXUS_FAILURE: u16 = 0x11;
    pub const ALLOC_FAILURE: u16 = 0x12;
    pub const MEDIUM_ERROR: u16 = 0x13;
    pub const TRANSPORT_MARGINAL: u16 = 0x14;
}

/// The version-3 SG header, laid out as in `<scsi/sg.h>`.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct SgIoHdr {
    pub interface_id: libc::c_int,
    pub dxfer_direction: libc::c_int,
    pub cmd_len: libc::c_uchar,
    pub mx_sb_len: libc::c_uchar,
    pub iovec_count: libc::c_ushort,
    pub dxfer_len: libc::c_uint,
    pub dxferp: *mut libc::c_void,
    pub cmdp: *const libc::c_uchar,
    pub sbp: *mut libc::c_uchar,
    pub timeout: libc::c_uint,
    pub flags: libc::c_uint,
    pub pack_id: libc::c_int,
    pub usr_ptr: *mut libc::c_void,
    pub status: libc::c_uchar,
    pub masked_status: libc::c_uchar,
    pub msg_status: libc::c_uchar,
    pub sb_len_wr: libc::c_uchar,
    pub host_status: libc::c_ushort,
    pub driver_status: libc::c_ushort,
    pub resid: libc::c_int,
    pub duration: libc::c_uint,
    pub info: libc::c_uint,
}

/// Data phase of one request.
#[derive(Debug)]
pub enum SgData<'a> {
    /// No data.
    None,
    /// Data-out: the bytes sent to the device.
    ToDevice(&'a [u8]),
    /// Data-in: the buffer the device fills.
    FromDevice(&'a mut [u8]),
}

/// Data direction, as the fake records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SgDir {
    /// `SG_DXFER_NONE`.
    None,
    /// `SG_DXFER_TO_DEV`.
    ToDevice,
    /// `SG_DXFER_FROM_DEV`.
    FromDevice,
}

impl SgData<'_> {
    /// The direction.
    pub fn dir(&self) -> SgDir {
        match self {
            SgData::None => SgDir::None,
            SgData::ToDevice(_) => SgDir::ToDevice,
            SgData::FromDevice(_) => SgDir::FromDevice,
        }
    }
    /// `dxfer_len`.
    pub fn len(&self) -> usize {
        match self {
            SgData::None => 0,
            SgData::ToDevice(b) => b.len(),
            SgData::FromDevice(b) => b.len(),
        }
    }
    /// Whether there is no data.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One `sg_io_hdr`-equivalent request.
#[derive(Debug)]
pub struct SgRequest<'a> {
    /// The CDB, exactly the command's length.
    pub cdb: &'a [u8],
    /// Direction and buffer.
    pub data: SgData<'a>,
    /// Sense buffer (`mx_sb_len` is its length, at most 255).
    pub sense: &'a mut [u8],
    /// Timeout in milliseconds (0: the kernel's default).
    pub timeout_ms: u32,
}

/// The output fields of a completed `sg_io_hdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SgCompletion {
    /// SCSI status byte.
    pub status: u8,
    /// `(status >> 1) & 0x7f`, as the kernel reports it.
    pub masked_status: u8,
    /// Host byte (`DID_*`).
    pub host_status: u16,
    /// Driver byte (`DRIVER_*`, with `DRIVER_SENSE`).
    pub driver_status: u16,
    /// `dxfer_len` − bytes transferred.
    pub resid: i32,
    /// Bytes of sense written to the sense buffer.
    pub sense_len: u8,
    /// Milliseconds the command took.
    pub duration_ms: u32,
    /// `SG_INFO_*` bits.
    pub info: u32,
}

/// Something that executes one SCSI command the way `ioctl(SG_IO)` does.
/// `Err` is the ioctl's errno (the command may not have reached the device).
pub trait SgTransport: Send + Sync + fmt::Debug {
    /// Submit one request and wait for it.
    fn submit(&self, req: SgRequest<'_>) -> io::Result<SgCompletion>;

    /// The largest transfer in bytes the host path accepts (`BLKSECTGET`),
    /// if known.
    fn max_transfer_bytes(&self) -> Option<u32> {
        None
    }

    /// The file descriptor behind the transport, handed to qemu-pr-helper.
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

/// A real SCSI device node.
#[derive(Debug)]
pub struct SgDevice {
    file: File,
    kind: NodeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeKind {
    /// `/dev/sgN` (character device).
    Sg,
    /// `/dev/sdX`, dm-multipath (block device).
    Block,
    /// Anything else (tests use a regular file to exercise the errno path).
    Other,
}

impl SgDevice {
    /// Open `path` (an sg character node or a SCSI block node) read-write.
    ///
    /// Opened `O_RDWR | O_NONBLOCK | O_CLOEXEC`: write access is what the
    /// kernel checks before letting write-class commands through SG_IO, and
    /// `O_NONBLOCK` keeps `open` from waiting on an sg node held `O_EXCL`
    /// (SG_IO itself stays synchronous). Not `O_EXCL`: the LUN is shared.
    pub fn open(path: &Path) -> Result<Self, SgioError> {
        let shown = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| SgioError::Open {
                path: shown.clone(),
                source,
            })?;
        let ft = file
            .metadata()
            .map_err(|source| SgioError::Open {
                path: shown.clone(),
                source,
            })?
            .file_type();
        let kind = if ft.is_char_device() {
            NodeKind::Sg
        } else if ft.is_block_device() {
            NodeKind::Block
        } else {
            return Err(SgioError::NotADevice(shown));
        };
        Ok(SgDevice { file, kind })
    }

    /// Wrap an already open file without checking its type. SG_IO on a file
    /// that is not a SCSI node fails with `ENOTTY`; the tests use that to
    /// exercise the real ioctl path.
    pub fn from_file(file: File) -> Self {
        let kind = match file.metadata().map(|m| m.file_type()) {
            Ok(ft) if ft.is_char_device() => NodeKind::Sg,
            Ok(ft) if ft.is_block_device() => NodeKind::Block,
            _ => NodeKind::Other,
        };
        SgDevice { file, kind }
    }
}

impl SgTransport for SgDevice {
    fn submit(&self, req: SgRequest<'_>) -> io::Result<SgCompletion> {
        let einval = || io::Error::from_raw_os_error(libc::EINVAL);
        let cmd_len = u8::try_from(req.cdb.len()).map_err(|_| einval())?;
        let mx_sb_len =
            u8::try_from(req.sense.len().min(usize::from(u8::MAX))).map_err(|_| einval())?;
        let (dir, ptr, len): (i32, *mut libc::c_void, usize) = match req.data {
            SgData::None => (SG_DXFER_NONE, std::ptr::null_mut(), 0),
            // The kernel only reads through dxferp for TO_DEV.
            SgData::ToDevice(b) => (SG_DXFER_TO_DEV, b.as_ptr().cast_mut().cast(), b.len()),
            SgData::FromDevice(b) => (SG_DXFER_FROM_DEV, b.as_mut_ptr().cast(), b.len()),
        };
        let dxfer_len = u32::try_from(len).map_err(|_| einval())?;
        let mut hdr = SgIoHdr {
            interface_id: libc::c_int::from(b'S'),
            dxfer_direction: dir,
            cmd_len,
            mx_sb_len,
            iovec_count: 0,
            dxfer_len,
            dxferp: ptr,
            cmdp: req.cdb.as_ptr(),
            sbp: req.sense.as_mut_ptr(),
            timeout: req.timeout_ms,
            flags: 0,
            pack_id: 0,
            usr_ptr: std::ptr::null_mut(),
            status: 0,
            masked_status: 0,
            msg_status: 0,
            sb_len_wr: 0,
            host_status: 0,
            driver_status: 0,
            resid: 0,
            duration: 0,
            info: 0,
        };
        // SAFETY: `hdr` is a properly laid out sg_io_hdr that lives across
        // the call; cmdp points at `cmd_len` readable bytes, sbp at
        // `mx_sb_len` writable bytes and dxferp at `dxfer_len` bytes (writable
        // for FROM_DEV, only read for TO_DEV), all borrowed from `req` for the
        // duration of this synchronous ioctl. The kernel writes nothing else.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::Ioctl::from(SG_IO),
                std::ptr::addr_of_mut!(hdr),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SgCompletion {
            status: hdr.status,
            masked_status: hdr.masked_status,
            host_status: hdr.host_status,
            driver_status: hdr.driver_status,
            resid: hdr.resid,
            sense_len: hdr.sb_len_wr.min(mx_sb_len),
            duration_ms: hdr.duration,
            info: hdr.info,
        })
    }

    fn max_transfer_bytes(&self) -> Option<u32> {
        match self.kind {
            NodeKind::Block => {
                let mut sectors: libc::c_ushort = 0;
                // SAFETY: BLKSECTGET on a block device writes one unsigned
                // short through the pointer, which points at a live local.
                let rc = unsafe {
                    libc::ioctl(
                        self.file.as_raw_fd(),
                        libc::Ioctl::from(BLKSECTGET),
                        std::ptr::addr_of_mut!(sectors),
                    )
                };
                (rc == 0 && sectors > 0).then(|| u32::from(sectors) * 512)
            }
            NodeKind::Sg => {
                let mut bytes: libc::c_int = 0;
                // SAFETY: BLKSECTGET on an sg node writes one int through the
                // pointer, which points at a live local.
                let rc = unsafe {
                    libc::ioctl(
                        self.file.as_raw_fd(),
                        libc::Ioctl::from(BLKSECTGET),
                        std::ptr::addr_of_mut!(bytes),
                    )
                };
                if rc == 0 {
                    u32::try_from(bytes).ok().filter(|&b| b > 0)
                } else {
                    None
                }
            }
            NodeKind::Other => None,
        }
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.file.as_fd())
    }
}

/// Whether this process holds CAP_SYS_RAWIO in its effective set (read from
/// `/proc/self/status`, so no libcap is needed).
pub fn has_cap_sys_rawio() -> bool {
    const CAP_SYS_RAWIO: u32 = 17;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1u64 << CAP_SYS_RAWIO) != 0)
}

/// What the fake saw of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeCall {
    /// The CDB.
    pub cdb: Vec<u8>,
    /// Direction.
    pub dir: SgDir,
    /// `dxfer_len`.
    pub dxfer_len: usize,
    /// Data-out bytes (empty unless `ToDevice`).
    pub data_out: Vec<u8>,
    /// Sense buffer size (`mx_sb_len`).
    pub sense_cap: usize,
    /// Timeout.
    pub timeout_ms: u32,
}

/// What the fake answers to one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FakeReply {
    /// SCSI status byte.
    pub status: u8,
    /// Host byte.
    pub host_status: u16,
    /// Driver byte, without `DRIVER_SENSE` (added when `sense` is non-empty).
    pub driver_status: u16,
    /// Data-in the device returns (truncated to `dxfer_len`).
    pub data_in: Vec<u8>,
    /// Data-out bytes the device consumed; `None`: all of them.
    pub data_out_taken: Option<usize>,
    /// Sense bytes (truncated to the sense buffer).
    pub sense: Vec<u8>,
    /// Reported duration.
    pub duration_ms: u32,
}

impl FakeReply {
    /// GOOD, with data-in.
    pub fn good(data_in: Vec<u8>) -> Self {
        FakeReply {
            data_in,
            ..Default::default()
        }
    }
    /// A SCSI status with sense.
    pub fn status(status: u8, sense: Vec<u8>) -> Self {
        FakeReply {
            status,
            sense,
            ..Default::default()
        }
    }
    /// A host byte failure.
    pub fn host(host_status: u16) -> Self {
        FakeReply {
            host_status,
            ..Default::default()
        }
    }
}

type Handler = Box<dyn FnMut(&FakeCall) -> io::Result<FakeReply> + Send>;

/// A scriptable SG transport: every request is recorded and answered by a
/// closure, with the kernel's bookkeeping (resid, sense length,
/// `DRIVER_SENSE`) done the way SG_IO does it.
pub struct FakeSg {
    handler: Mutex<Handler>,
    calls: Mutex<Vec<FakeCall>>,
    max_transfer: Option<u32>,
    file: Option<File>,
}

impl fmt::Debug for FakeSg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeSg")
            .field("max_transfer", &self.max_transfer)
            .finish_non_exhaustive()
    }
}

impl FakeSg {
    /// A fake answering with `handler`.
    pub fn new(handler: impl FnMut(&FakeCall) -> io::Result<FakeReply> + Send + 'static) -> Self {
        FakeSg {
            handler: Mutex::new(Box::new(handler)),
            calls: Mutex::new(Vec::new()),
            max_transfer: None,
            file: None,
        }
    }

    /// Report `bytes` as the BLKSECTGET limit.
    pub fn with_max_transfer(mut self, bytes: u32) -> Self {
        self.max_transfer = Some(bytes);
        self
    }

    /// Expose `file`'s descriptor as the device fd (for pr=helper tests).
    pub fn with_file(mut self, file: File) -> Self {
        self.file = Some(file);
        self
    }

    /// Every request so far, oldest first.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Forget the recorded requests.
    pub fn clear_calls(&self) {
        if let Ok(mut c) = self.calls.lock() {
            c.clear();
        }
    }
}

impl SgTransport for FakeSg {
    fn submit(&self, req: SgRequest<'_>) -> io::Result<SgCompletion> {
        let call = FakeCall {
            cdb: req.cdb.to_vec(),
            dir: req.data.dir(),
            dxfer_len: req.data.len(),
            data_out: match &req.data {
                SgData::ToDevice(b) => b.to_vec(),
                _ => Vec::new(),
            },
            sense_cap: req.sense.len(),
            timeout_ms: req.timeout_ms,
        };
        if let Ok(mut c) = self.calls.lock() {
            c.push(call.clone());
        }
        let reply = {
            let mut h = self
                .handler
                .lock()
                .map_err(|_| io::Error::other("fake handler poisoned"))?;
            (*h)(&call)?
        };
        let transferred = match req.data {
            SgData::None => 0,
            SgData::ToDevice(b) => reply.data_out_taken.unwrap_or(b.len()).min(b.len()),
            SgData::FromDevice(b) => {
                let n = reply.data_in.len().min(b.len());
                b[..n].copy_from_slice(&reply.data_in[..n]);
                n
            }
        };
        let sense_len = reply.sense.len().min(req.sense.len()).min(255);
        req.sense[..sense_len].copy_from_slice(&reply.sense[..sense_len]);
        let resid = i32::try_from(call.dxfer_len - transferred).unwrap_or(i32::MAX);
        let mut driver_status = reply.driver_status;
        if sense_len > 0 {
            driver_status |= DRIVER_SENSE;
        }
        Ok(SgCompletion {
            status: reply.status,
            masked_status: (reply.status >> 1) & 0x7f,
            host_status: reply.host_status,
            driver_status,
            resid,
            sense_len: u8::try_from(sense_len).unwrap_or(u8::MAX),
            duration_ms: reply.duration_ms,
            info: u32::from(reply.status != 0 || reply.host_status != 0 || driver_status != 0),
        })
    }

    fn max_transfer_bytes(&self) -> Option<u32> {
        self.max_transfer
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.file.as_ref().map(|f| f.as_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn sg_io_hdr_layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<SgIoHdr>(), 88);
        assert_eq!(std::mem::offset_of!(SgIoHdr, dxfer_len), 12);
        assert_eq!(std::mem::offset_of!(SgIoHdr, dxferp), 16);
        assert_eq!(std::mem::offset_of!(SgIoHdr, cmdp), 24);
        assert_eq!(std::mem::offset_of!(SgIoHdr, sbp), 32);
        assert_eq!(std::mem::offset_of!(SgIoHdr, timeout), 40);
        assert_eq!(std::mem::offset_of!(SgIoHdr, usr_ptr), 56);
        assert_eq!(std::mem::offset_of!(SgIoHdr, status), 64);
        assert_eq!(std::mem::offset_of!(SgIoHdr, host_status), 68);
        assert_eq!(std::mem::offset_of!(SgIoHdr, driver_status), 70);
        assert_eq!(std::mem::offset_of!(SgIoHdr, resid), 72);
        assert_eq!(std::mem::offset_of!(SgIoHdr, info), 80);
    }

    #[test]
    fn real_ioctl_on_a_regular_file_is_an_error_not_good() {
        let f = tempfile::tempfile().unwrap();
        let dev = SgDevice::from_file(f);
        let mut sense = [0u8; SENSE_BUF_LEN];
        let mut buf = [0u8; 36];
        let cdb = [0x12, 0, 0, 0, 36, 0]; // INQUIRY, allocation length 36
        let err = dev
            .submit(SgRequest {
                cdb: &cdb,
                data: SgData::FromDevice(&mut buf),
                sense: &mut sense,
                timeout_ms: 1000,
            })
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
        assert_eq!(dev.max_transfer_bytes(), None);
    }

    #[test]
    fn open_rejects_regular_files() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(matches!(
            SgDevice::open(f.path()),
            Err(SgioError::NotADevice(_))
        ));
        assert!(matches!(
            SgDevice::open(Path::new("/nonexistent/sg0")),
            Err(SgioError::Open { .. })
        ));
    }
}
