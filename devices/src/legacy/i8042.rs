//! Just enough of the i8042 keyboard controller for firmware and kernels
//! to probe it and to pulse the reset line (command 0xFE on port 0x64).
//! No keyboard or mouse is attached.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::lifecycle::{ExitHandler, ExitReason};

/// Data port.
pub const I8042_DATA: u64 = 0x60;
/// Status/command port (map 0x60..0x65 with one device; 0x61 is the
/// speaker port and reads 0, see below).
pub const I8042_COMMAND: u64 = 0x64;

const STATUS_OBF: u8 = 0x01;
const STATUS_SYS: u8 = 0x04;
const STATUS_CMD: u8 = 0x08;
/// Keyboard not inhibited (the "keylock" switch is open).
const STATUS_UNLOCKED: u8 = 0x10;

/// The controller.
pub struct I8042 {
    status: u8,
    output: Option<u8>,
    command_byte: u8,
    pending_cmd: Option<u8>,
    port61: u8,
    exit: Arc<dyn ExitHandler>,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042")
            .field("status", &self.status)
            .field("command_byte", &self.command_byte)
            .finish()
    }
}

impl I8042 {
    /// A controller after power-on self test.
    pub fn new(exit: Arc<dyn ExitHandler>) -> Self {
        I8042 {
            status: STATUS_SYS | STATUS_UNLOCKED,
            output: None,
            command_byte: 0x45,
            pending_cmd: None,
            port61: 0,
            exit,
        }
    }

    fn push(&mut self, b: u8) {
        self.output = Some(b);
    }

    fn command(&mut self, cmd: u8) {
        self.status |= STATUS_CMD;
        match cmd {
            0x20 => self.push(self.command_byte),
            0x60 | 0xD1 | 0xD2 | 0xD3 | 0xD4 => self.pending_cmd = Some(cmd),
            0xAA => self.push(0x55),
            0xA9 | 0xAB => self.push(0x00),
            0xC0 => self.push(0x00),
            0xD0 => self.push(0x02),
            0xFE => self.exit.request_exit(ExitReason::Reset),
            // 0xF0-0xFF pulse output lines: bit 0 clear is the reset line.
            0xF0..=0xFD if cmd & 1 == 0 => self.exit.request_exit(ExitReason::Reset),
            _ => {}
        }
    }

    fn data(&mut self, v: u8) {
        self.status &= !STATUS_CMD;
        match self.pending_cmd.take() {
            Some(0x60) => self.command_byte = v,
            // Output port: bit 0 low resets the CPU.
            Some(0xD1) if v & 1 == 0 => self.exit.request_exit(ExitReason::Reset),
            Some(0xD2) | Some(0xD3) => self.push(v),
            // Commands to an absent keyboard/mouse get "resend"-free silence.
            _ => {}
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(b) = data.first_mut() else { return };
        match base + offset {
            I8042_DATA => *b = self.output.take().unwrap_or(0),
            0x61 => {
                // Toggle the refresh bit (bit 4) so delay loops polling it progress.
                self.port61 ^= 0x10;
                *b = self.port61;
            }
            I8042_COMMAND => {
                *b = self.status | if self.output.is_some() { STATUS_OBF } else { 0 };
            }
            _ => {}
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match base + offset {
            I8042_DATA => self.data(v),
            0x61 => self.port61 = (self.port61 & 0x10) | (v & 0x0F),
            I8042_COMMAND => self.command(v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::test_utils::RecordingExit;

    #[test]
    fn self_test_command_byte_and_reset() {
        let rec = Arc::new(RecordingExit::default());
        let mut k = I8042::new(rec.clone());
        let mut b = [0u8];
        k.write(0x60, 4, &[0xAA]);
        k.read(0x60, 4, &mut b);
        assert_eq!(b[0] & STATUS_OBF, STATUS_OBF);
        k.read(0x60, 0, &mut b);
        assert_eq!(b, [0x55]);
        k.read(0x60, 4, &mut b);
        assert_eq!(b[0] & STATUS_OBF, 0);
        k.write(0x60, 4, &[0x60]);
        k.write(0x60, 0, &[0x47]);
        k.write(0x60, 4, &[0x20]);
        k.read(0x60, 0, &mut b);
        assert_eq!(b, [0x47]);
        assert!(rec.0.lock().unwrap().is_empty());
        k.write(0x60, 4, &[0xFE]);
        assert_eq!(*rec.0.lock().unwrap(), vec![ExitReason::Reset]);
    }
}
