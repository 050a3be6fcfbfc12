//! Why and how a VM stops: the first request wins, every vCPU thread sees
//! the flag, and the event loop is woken through an eventfd.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;

use devices::lifecycle::{ExitHandler, ExitReason};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Exit status after a triple fault.
pub const EXIT_TRIPLE_FAULT: i32 = 2;
/// Exit status after a KVM internal error or failed VM entry.
pub const EXIT_INTERNAL_ERROR: i32 = 4;
/// Exit status for a reset with `--on-reset exit`.
pub const EXIT_RESET: i32 = 0x80;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmStop {
    /// A device asked (power-off, reset, debug exit).
    Device(ExitReason),
    /// SIGTERM or SIGINT.
    Signal(i32),
    /// Triple fault on a vCPU.
    TripleFault {
        /// vCPU.
        cpu: u8,
        /// Register dump.
        regs: String,
    },
    /// KVM could not go on.
    InternalError {
        /// vCPU.
        cpu: u8,
        /// What happened.
        what: String,
        /// Register dump.
        regs: String,
    },
}

/// Shared stop state of one VM.
#[derive(Debug)]
pub struct StopFlag {
    stopped: AtomicBool,
    reason: Mutex<Option<VmStop>>,
    evt: EventFd,
}

impl StopFlag {
    /// Not stopped.
    pub fn new() -> std::io::Result<Self> {
        Ok(StopFlag {
            stopped: AtomicBool::new(false),
            reason: Mutex::new(None),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Ask the VM to stop (the first reason is kept).
    pub fn request(&self, why: VmStop) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(why);
        }
        self.stopped.store(true, Ordering::SeqCst);
        let _ = self.evt.write(1);
    }

    /// Whether a stop was requested.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// The reason, once stopped.
    pub fn reason(&self) -> Option<VmStop> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Readable when a stop was requested.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

impl ExitHandler for StopFlag {
    fn request_exit(&self, reason: ExitReason) {
        self.request(VmStop::Device(reason));
    }
}

static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_term_signal(num: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    LAST_SIGNAL.store(num, Ordering::SeqCst);
    let fd = SIGNAL_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` is a valid 8-byte
        // buffer and `fd` is the eventfd kept open for the process's life.
        unsafe { libc::write(fd, std::ptr::addr_of!(one).cast(), 8) };
    }
}

/// Route SIGTERM and SIGINT to `evt` (kept open by the caller for the
/// life of the process). [`last_signal`] says which arrived.
pub fn install_term_handlers(evt: &EventFd) {
    use std::os::fd::AsRawFd;
    SIGNAL_FD.store(evt.as_raw_fd(), Ordering::SeqCst);
    for s in [libc::SIGTERM, libc::SIGINT] {
        let _ = vmm_sys_util::signal::register_signal_handler(s, on_term_signal);
    }
}

/// The last SIGTERM/SIGINT received (0 if none).
pub fn last_signal() -> i32 {
    LAST_SIGNAL.load(Ordering::SeqCst)
}
