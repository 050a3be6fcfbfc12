//! isa-debug-exit-style port (0xF4): a write of `v` ends the VM and
//! arbiter exits with status `(v << 1) | 1`. For test guests.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::lifecycle::{ExitHandler, ExitReason};

/// The conventional port.
pub const DEBUG_EXIT_PORT: u64 = 0xF4;

/// The debug-exit device.
pub struct DebugExit {
    exit: Arc<dyn ExitHandler>,
}

impl std::fmt::Debug for DebugExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DebugExit")
    }
}

impl DebugExit {
    /// Report writes to `exit`.
    pub fn new(exit: Arc<dyn ExitHandler>) -> Self {
        DebugExit { exit }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0xFF);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset != 0 || data.is_empty() || data.len() > 4 {
            return;
        }
        let mut b = [0u8; 4];
        b[..data.len()].copy_from_slice(data);
        self.exit
            .request_exit(ExitReason::DebugExit(u32::from_le_bytes(b)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::test_utils::RecordingExit;

    #[test]
    fn writes_of_any_width_report_the_value() {
        let rec = Arc::new(RecordingExit::default());
        let mut d = DebugExit::new(rec.clone());
        d.write(0xF4, 0, &[0x10, 0, 0, 0]);
        d.write(0xF4, 0, &[0x7]);
        d.write(0xF4, 0, &[1, 2, 3, 4, 5]);
        let mut r = [0u8; 1];
        d.read(0xF4, 0, &mut r);
        assert_eq!(r, [0xFF]);
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![ExitReason::DebugExit(0x10), ExitReason::DebugExit(7)]
        );
    }
}
