//! System control port A (0x92): bit 1 A20 gate (always on here), bit 0
//! fast reset (a 0→1 write resets the machine).

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::lifecycle::{ExitHandler, ExitReason};

/// Port 0x92.
pub const PORT92: u64 = 0x92;

/// The device.
pub struct Port92 {
    value: u8,
    exit: Arc<dyn ExitHandler>,
}

impl std::fmt::Debug for Port92 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port92")
            .field("value", &self.value)
            .finish()
    }
}

impl Port92 {
    /// A20 on, reset bit clear.
    pub fn new(exit: Arc<dyn ExitHandler>) -> Self {
        Port92 { value: 0x02, exit }
    }
}

impl BusDevice for Port92 {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.value;
        }
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        if v & 1 != 0 && self.value & 1 == 0 {
            self.exit.request_exit(ExitReason::Reset);
        }
        // A20 stays enabled: guests here never run with it masked.
        self.value = (v & 1) | 0x02;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::test_utils::RecordingExit;

    #[test]
    fn fast_reset_on_rising_bit0() {
        let rec = Arc::new(RecordingExit::default());
        let mut p = Port92::new(rec.clone());
        let mut b = [0u8];
        p.read(PORT92, 0, &mut b);
        assert_eq!(b, [0x02]);
        p.write(PORT92, 0, &[0x02]);
        assert!(rec.0.lock().unwrap().is_empty());
        p.write(PORT92, 0, &[0x03]);
        p.write(PORT92, 0, &[0x03]);
        assert_eq!(*rec.0.lock().unwrap(), vec![ExitReason::Reset]);
    }
}
