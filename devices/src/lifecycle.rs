//! How platform devices ask the VMM to end or restart the VM.

/// Why a device wants the VM to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// Guest requested a reset (i8042 0xFE, port 0x92 bit 0, 0xCF9).
    Reset,
    /// ACPI S5 power-off (PIIX4 PM1 control SLP_EN).
    PowerOff,
    /// A write of this value to the debug-exit port 0xF4.
    DebugExit(u32),
}

/// Receives exit requests (the VMM stops all vCPUs and acts on the first one).
pub trait ExitHandler: Send + Sync {
    /// Ask for the VM to stop for `reason`.
    fn request_exit(&self, reason: ExitReason);
}

#[cfg(test)]
pub(crate) mod test_utils {
    use super::*;
    use std::sync::Mutex;

    /// Records exit requests.
    #[derive(Debug, Default)]
    pub struct RecordingExit(pub Mutex<Vec<ExitReason>>);

    impl ExitHandler for RecordingExit {
        fn request_exit(&self, reason: ExitReason) {
            self.0.lock().unwrap().push(reason);
        }
    }
}
