//! A client for the qemu-pr-helper socket protocol (QEMU
//! docs/interop/pr-helper.rst), so that an unprivileged process can send
//! PERSISTENT RESERVE IN/OUT through Debian's `qemu-pr-helper`, which holds
//! CAP_SYS_RAWIO (and speaks libmpathpersist for dm-multipath nodes).
//!
//! The protocol, all integers big-endian:
//! * on connect the helper writes 4 bytes of supported features; the client
//!   answers 4 bytes of requested features (no feature is defined: 0);
//! * a request is a 16-byte CDB whose first byte is 0x5E or 0x5F, sent with
//!   the device's file descriptor as SCM_RIGHTS ancillary data; for PR OUT
//!   the parameter list follows. The helper takes the transfer length from
//!   CDB bytes 7..9 and refuses more than 8 KiB;
//! * the reply is a 4-byte SCSI status, a 4-byte payload size (non-zero only
//!   for a GOOD PR IN), 96 bytes of sense (meaningful for CHECK CONDITION),
//!   then the payload;
//! * one command at a time per connection; on a protocol violation the
//!   helper closes the socket.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// CDB size on the wire.
pub const PR_HELPER_CDB_SIZE: usize = 16;
/// Sense size in a reply.
pub const PR_HELPER_SENSE_SIZE: usize = 96;
/// Largest PR IN allocation length / PR OUT parameter list.
pub const PR_HELPER_DATA_SIZE: usize = 8192;
/// PERSISTENT RESERVE IN.
pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
/// PERSISTENT RESERVE OUT.
pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;

/// What can go wrong talking to the helper.
#[derive(Debug, thiserror::Error)]
pub enum PrHelperError {
    /// Connecting, sending or receiving failed.
    #[error("I/O with qemu-pr-helper failed: {0}")]
    Io(#[from] io::Error),
    /// The helper closed the connection (it does so on protocol violations).
    #[error("qemu-pr-helper closed the connection")]
    Closed,
    /// The helper asked for features we do not know.
    #[error("qemu-pr-helper offers unknown features {0:#010x}")]
    Features(u32),
    /// Only PERSISTENT RESERVE IN/OUT can go through the helper.
    #[error("opcode {0:#04x} cannot go through qemu-pr-helper (only 0x5e/0x5f)")]
    NotPr(u8),
    /// The transfer exceeds what the protocol carries.
    #[error("transfer of {0} bytes exceeds qemu-pr-helper's 8 KiB limit")]
    TooLong(usize),
    /// The helper's reply does not follow the protocol.
    #[error("malformed reply from qemu-pr-helper: {0}")]
    BadReply(&'static str),
}

/// The helper's answer to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrHelperReply {
    /// SCSI status byte (as the 32-bit field's low byte).
    pub status: u8,
    /// Sense bytes (only for CHECK CONDITION; the length the sense format
    /// declares, at most 96).
    pub sense: Vec<u8>,
    /// PR IN payload.
    pub data: Vec<u8>,
}

/// The meaningful length of a sense buffer: 8 + ADDITIONAL SENSE LENGTH for
/// fixed (0x70/0x71) and descriptor (0x72/0x73) formats, 0 when empty.
pub fn sense_len(sense: &[u8]) -> usize {
    match sense.first().map(|b| b & 0x7F) {
        Some(0x70..=0x73) => (8 + usize::from(sense.get(7).copied().unwrap_or(0))).min(sense.len()),
        _ => 0,
    }
}

/// A connection to qemu-pr-helper, reconnected after errors.
#[derive(Debug)]
pub struct PrHelperClient {
    path: PathBuf,
    conn: Mutex<Option<UnixStream>>,
    timeout: Duration,
}

fn handshake(path: &Path, timeout: Duration) -> Result<UnixStream, PrHelperError> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut feat = [0u8; 4];
    read_all(&mut s, &mut feat)?;
    let _supported = u32::from_be_bytes(feat);
    // We request nothing; a bit the helper does not support would make it
    // close the connection, and unsupported-by-us bits are simply not asked.
    s.write_all(&0u32.to_be_bytes())?;
    Ok(s)
}

fn read_all(s: &mut UnixStream, buf: &mut [u8]) -> Result<(), PrHelperError> {
    let mut at = 0;
    while at < buf.len() {
        match s.read(&mut buf[at..]) {
            Ok(0) => return Err(PrHelperError::Closed),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Send `bytes` with `fd` attached as SCM_RIGHTS.
fn send_with_fd(s: &UnixStream, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    let fd_size = u32::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    let space = unsafe { libc::CMSG_SPACE(fd_size) };
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = vec![0u64; usize::try_from(space).unwrap_or(64).div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = std::ptr::addr_of_mut!(iov);
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = usize::try_from(space).unwrap_or(0);
    // SAFETY: msg_control points at `space` zeroed, aligned bytes, enough
    // for one cmsghdr carrying one int, so CMSG_FIRSTHDR is non-null and
    // CMSG_DATA points inside the buffer.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(std::ptr::addr_of!(msg));
        if cmsg.is_null() {
            return Err(io::Error::other("no room for SCM_RIGHTS"));
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = usize::try_from(libc::CMSG_LEN(fd_size)).unwrap_or(0);
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), raw);
    }
    let sent = loop {
        // SAFETY: `msg` describes `bytes` (readable, alive) and the control
        // buffer above; sendmsg only reads them.
        let n =
            unsafe { libc::sendmsg(s.as_raw_fd(), std::ptr::addr_of!(msg), libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        break usize::try_from(n).unwrap_or(0);
    };
    if sent < bytes.len() {
        // The descriptor went with the first byte; the rest is plain data.
        let mut rest = s;
        rest.write_all(&bytes[sent..])?;
    }
    Ok(())
}

impl PrHelperClient {
    /// Connect to the helper at `path` and do the feature handshake. Fails
    /// now if the helper is not there, so a misconfigured disk is reported
    /// at startup.
    pub fn connect(path: &Path) -> Result<Self, PrHelperError> {
        let timeout = Duration::from_secs(60);
        let s = handshake(path, timeout)?;
        Ok(PrHelperClient {
            path: path.to_owned(),
            conn: Mutex::new(Some(s)),
            timeout,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run one PERSISTENT RESERVE IN/OUT on `fd`. `cdb` is the guest's CDB
    /// (10 bytes); `params` the PR OUT parameter list (exactly PARAMETER
    /// LIST LENGTH bytes). PR IN allocation lengths above 8 KiB are lowered
    /// to 8 KiB (the reply can only be shorter).
    pub fn execute(
        &self,
        fd: BorrowedFd<'_>,
        cdb: &[u8],
        params: &[u8],
    ) -> Result<PrHelperReply, PrHelperError> {
        let op = cdb.first().copied().unwrap_or(0);
        let mut wire = [0u8; PR_HELPER_CDB_SIZE];
        let n = cdb.len().min(PR_HELPER_CDB_SIZE);
        wire[..n].copy_from_slice(&cdb[..n]);
        let alloc = match op {
            PERSISTENT_RESERVE_IN => {
                let a = usize::from(u16::from_be_bytes([wire[7], wire[8]]));
                let a = a.min(PR_HELPER_DATA_SIZE);
                wire[7..9].copy_from_slice(&u16::try_from(a).unwrap_or(0).to_be_bytes());
                a
            }
            PERSISTENT_RESERVE_OUT => {
                if params.len() > PR_HELPER_DATA_SIZE {
                    return Err(PrHelperError::TooLong(params.len()));
                }
                // The helper reads the length from bytes 7..9 only.
                let len = u32::try_from(params.len()).unwrap_or(0);
                wire[5..9].copy_from_slice(&len.to_be_bytes());
                0
            }
            other => return Err(PrHelperError::NotPr(other)),
        };

        let mut guard = self
            .conn
            .lock()
            .map_err(|_| PrHelperError::BadReply("connection lock poisoned"))?;
        // Sending is safe to retry once on a fresh connection (the helper
        // had not started the command); a failure after sending is not
        // retried (PR OUT is not idempotent).
        let mut tries = 0;
        loop {
            if guard.is_none() {
                *guard = Some(handshake(&self.path, self.timeout)?);
            }
            let Some(s) = guard.as_mut() else {
                return Err(PrHelperError::Closed);
            };
            let sent = send_with_fd(s, &wire, fd).and_then(|()| {
                if op == PERSISTENT_RESERVE_OUT {
                    (&*s).write_all(params)
                } else {
                    Ok(())
                }
            });
            match sent {
                Ok(()) => break,
                Err(e) => {
                    *guard = None;
                    tries += 1;
                    if tries > 1 {
                        return Err(e.into());
                    }
                }
            }
        }
        let Some(s) = guard.as_mut() else {
            return Err(PrHelperError::Closed);
        };
        let result = read_reply(s, op, alloc);
        if result.is_err() {
            *guard = None;
        }
        result
    }
}

fn read_reply(s: &mut UnixStream, op: u8, alloc: usize) -> Result<PrHelperReply, PrHelperError> {
    let mut head = [0u8; 8 + PR_HELPER_SENSE_SIZE];
    read_all(s, &mut head)?;
    let status32 = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let size = usize::try_from(u32::from_be_bytes([head[4], head[5], head[6], head[7]]))
        .map_err(|_| PrHelperError::BadReply("payload size"))?;
    let status = u8::try_from(status32).map_err(|_| PrHelperError::BadReply("status"))?;
    if size > PR_HELPER_DATA_SIZE || size > alloc || (size > 0 && op != PERSISTENT_RESERVE_IN) {
        return Err(PrHelperError::BadReply("payload size"));
    }
    let mut data = vec![0u8; size];
    read_all(s, &mut data)?;
    let raw_sense = &head[8..];
    let sense = if status == 0x02 {
        raw_sense[..sense_len(raw_sense)].to_vec()
    } else {
        Vec::new()
    };
    Ok(PrHelperReply {
        status,
        sense,
        data,
    })
}
