//! Arbiter's virtual machine monitor: configuration, KVM set-up, guest
//! memory, vCPUs, the device manager and boot.
//!
//! `Vmm::new(&config, serial_out, signal_evt)?.run()` boots one VM;
//! [`run`] adds reboots on reset and turns the outcome into an exit status.

pub mod allocator;
pub mod arch;
pub mod cli;
pub mod config;
pub mod device_manager;
pub mod display;
pub mod firmware;
pub mod scsi_config;
pub mod stop;
pub mod vmm;
pub mod vstate;

use std::io::Write;

use devices::lifecycle::ExitReason;
pub use vmm::Vmm;

use crate::config::{OnReset, SerialMode, VmConfig};
use crate::stop::VmStop;

static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Record the process start (called first thing in `main`).
pub fn mark_start() {
    let _ = STARTED.set(std::time::Instant::now());
}

/// With `ARBITER_TRACE_STARTUP` set, print how long after [`mark_start`]
/// the boot vCPU first entered the guest (the startup benchmark reads it).
pub(crate) fn trace_first_entry() {
    if std::env::var_os("ARBITER_TRACE_STARTUP").is_some() {
        if let Some(t) = STARTED.get() {
            eprintln!(
                "arbiter: first guest entry {} us after start",
                t.elapsed().as_micros()
            );
        }
    }
}

/// Errors that end `arbiter` before or while it runs a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A feature the command line names has not landed yet.
    #[error("{0} is not implemented yet")]
    NotImplemented(&'static str),
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Guest RAM.
    #[error(transparent)]
    Memory(#[from] vstate::memory::MemoryError),
    /// KVM VM set-up.
    #[error(transparent)]
    Vm(#[from] vstate::vm::VmError),
    /// vCPU set-up.
    #[error(transparent)]
    Vcpu(#[from] vstate::vcpu::VcpuError),
    /// Devices.
    #[error(transparent)]
    Devices(#[from] device_manager::DeviceError),
    /// PVH kernel load.
    #[error(transparent)]
    Pvh(#[from] arch::x86_64::pvh::PvhError),
    /// bzImage kernel load.
    #[error(transparent)]
    BzImage(#[from] arch::x86_64::bzimage::BzImageError),
    /// ACPI tables for direct boot.
    #[error("ACPI tables: {0}")]
    Acpi(String),
    /// UEFI firmware set-up.
    #[error(transparent)]
    Firmware(#[from] firmware::FirmwareError),
    /// MP table.
    #[error(transparent)]
    Mptable(#[from] arch::x86_64::mptable::MptableError),
    /// Boot register set-up.
    #[error(transparent)]
    Regs(#[from] arch::x86_64::regs::RegsError),
    /// Serial output file.
    #[error("--serial file={path}: {source}")]
    SerialFile {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Other I/O.
    #[error("{0}")]
    Io(#[source] std::io::Error),
}

/// Where COM1 output goes, reopened for each boot.
fn serial_writer(
    mode: &SerialMode,
    file: Option<&std::fs::File>,
) -> Result<Box<dyn Write + Send>, Error> {
    Ok(match (mode, file) {
        (SerialMode::Stdio, _) => Box::new(std::io::stdout()),
        (SerialMode::File(p), Some(f)) => {
            Box::new(f.try_clone().map_err(|source| Error::SerialFile {
                path: p.display().to_string(),
                source,
            })?)
        }
        _ => Box::new(std::io::sink()),
    })
}

/// Exit status for how a VM stopped (`None`: reboot).
pub fn exit_status(stop: &VmStop, on_reset: OnReset) -> Option<i32> {
    match stop {
        VmStop::Device(ExitReason::PowerOff) => Some(0),
        VmStop::Device(ExitReason::DebugExit(v)) => {
            Some(i32::from_ne_bytes(((v << 1) | 1).to_ne_bytes()))
        }
        VmStop::Device(ExitReason::Reset) => match on_reset {
            OnReset::Reboot => None,
            OnReset::Exit => Some(stop::EXIT_RESET),
        },
        VmStop::Signal(s) => Some(128 + s),
        VmStop::TripleFault { .. } => Some(stop::EXIT_TRIPLE_FAULT),
        VmStop::InternalError { .. } => Some(stop::EXIT_INTERNAL_ERROR),
    }
}

/// Run the VM described by `args`; returns the process exit status.
pub fn run(args: &cli::RunArgs) -> Result<i32, Error> {
    let config = VmConfig::try_from(args)?;
    let file = match &config.serial {
        SerialMode::File(p) => {
            Some(
                std::fs::File::create(p).map_err(|source| Error::SerialFile {
                    path: p.display().to_string(),
                    source,
                })?,
            )
        }
        _ => None,
    };
    let signal_evt = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)
        .map_err(Error::Io)?;
    stop::install_term_handlers(&signal_evt);
    let persistent = vmm::Persistent::new(&config);
    loop {
        let out = serial_writer(&config.serial, file.as_ref())?;
        let vmm = Vmm::new(
            &config,
            out,
            Some(signal_evt.try_clone().map_err(Error::Io)?),
            &persistent,
        )?;
        let why = vmm.run()?;
        let _ = std::io::stdout().flush();
        match &why {
            VmStop::TripleFault { cpu, regs } => {
                eprintln!(
                    "arbiter: vCPU {cpu}: triple fault (guest reset by fault), stopping\n{regs}"
                );
            }
            VmStop::InternalError { cpu, what, regs } => {
                eprintln!("arbiter: vCPU {cpu}: {what}\n{regs}");
            }
            VmStop::Signal(s) => eprintln!("arbiter: signal {s}: VM stopped"),
            VmStop::Device(ExitReason::Reset) if config.on_reset == OnReset::Reboot => {
                log::info!("guest reset: rebooting");
            }
            _ => {}
        }
        if let Some(code) = exit_status(&why, config.on_reset) {
            display::flush_all();
            return Ok(code);
        }
    }
}
