//! Arbiter's virtual machine monitor: configuration, KVM set-up, guest
//! memory, vCPUs, the device manager and boot.

pub mod cli;

/// Errors that end `arbiter` before or while it runs a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A feature the command line names has not landed yet.
    #[error("{0} is not implemented yet")]
    NotImplemented(&'static str),
}

/// Run the VM described by `args`; returns the process exit status.
pub fn run(args: &cli::RunArgs) -> Result<i32, Error> {
    let _ = args;
    Err(Error::NotImplemented("arbiter run"))
}
