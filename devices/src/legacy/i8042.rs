//! The i8042 keyboard controller with a PS/2 keyboard that answers its
//! commands (no keys are ever pressed), and the reset line (command 0xFE on
//! port 0x64). Firmware and kernels probe the keyboard: OVMF's PS/2 driver
//! sends "enable" (0xF4) and waits up to a second for the acknowledge
//! (0xFA) before it gives up, so a silent keyboard costs every UEFI boot that
//! second (and 100 000 status-port exits). IRQ 1 is a level, as QEMU drives
//! it: high while a byte waits in the output buffer and the command byte
//! enables keyboard interrupts, lowered and raised again for each next byte.
//! No mouse is attached.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::bus::BusDevice;
use crate::interrupt::InterruptLine;
use crate::lifecycle::{ExitHandler, ExitReason};

/// Data port.
pub const I8042_DATA: u64 = 0x60;
/// Status/command port (map 0x60..0x65 with one device; 0x61 is the
/// speaker port and reads 0, see below).
pub const I8042_COMMAND: u64 = 0x64;
/// The keyboard's ISA interrupt.
pub const KBD_IRQ: u32 = 1;

const STATUS_OBF: u8 = 0x01;
const STATUS_SYS: u8 = 0x04;
const STATUS_CMD: u8 = 0x08;
/// Keyboard not inhibited (the "keylock" switch is open).
const STATUS_UNLOCKED: u8 = 0x10;

/// Command byte: keyboard interrupt enable.
const CB_KBD_INT: u8 = 0x01;
/// Command byte: keyboard interface disabled.
const CB_KBD_DISABLE: u8 = 0x10;
/// Command byte: auxiliary (mouse) interface disabled.
const CB_AUX_DISABLE: u8 = 0x20;
/// Command byte: translate scan codes to set 1.
const CB_TRANSLATE: u8 = 0x40;

/// Keyboard answers.
const KBD_ACK: u8 = 0xFA;
const KBD_RESEND: u8 = 0xFE;
const KBD_SELF_TEST_OK: u8 = 0xAA;

/// Longest output queue (a guest flooding the keyboard with commands).
const MAX_OUTPUT: usize = 16;

/// The controller.
pub struct I8042 {
    status: u8,
    /// Bytes for the guest to read from port 0x60, oldest first.
    output: VecDeque<u8>,
    command_byte: u8,
    pending_cmd: Option<u8>,
    /// A keyboard command waiting for its parameter byte (0xED, 0xF0, 0xF3).
    kbd_pending: Option<u8>,
    /// Keyboard scanning enabled (0xF4 / 0xF5).
    kbd_enabled: bool,
    /// Scan code set selected with 0xF0.
    scancode_set: u8,
    port61: u8,
    irq: Option<Arc<dyn InterruptLine>>,
    irq_high: bool,
    exit: Arc<dyn ExitHandler>,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042")
            .field("status", &self.status)
            .field("command_byte", &self.command_byte)
            .field("output", &self.output)
            .finish()
    }
}

impl I8042 {
    /// A controller after power-on self test, without an interrupt line.
    pub fn new(exit: Arc<dyn ExitHandler>) -> Self {
        I8042 {
            status: STATUS_SYS | STATUS_UNLOCKED,
            output: VecDeque::new(),
            command_byte: 0x45,
            pending_cmd: None,
            kbd_pending: None,
            kbd_enabled: true,
            scancode_set: 2,
            port61: 0,
            irq: None,
            irq_high: false,
            exit,
        }
    }

    /// Drive `irq` (ISA IRQ 1) while a byte waits for the guest.
    pub fn with_irq(mut self, irq: Arc<dyn InterruptLine>) -> Self {
        self.irq = Some(irq);
        self
    }

    /// Queue a byte for port 0x60; the first one of an empty queue is
    /// visible at once (and interrupts).
    fn push(&mut self, b: u8) {
        if self.output.len() >= MAX_OUTPUT {
            return;
        }
        self.output.push_back(b);
        self.update_irq(false);
    }

    /// Set IRQ 1 to what the output buffer and the command byte ask for;
    /// `next_byte`: a new byte replaced the one just read (a new edge).
    fn update_irq(&mut self, next_byte: bool) {
        let want = !self.output.is_empty() && self.command_byte & CB_KBD_INT != 0;
        let Some(irq) = &self.irq else { return };
        let set = |high: bool| {
            if let Err(e) = irq.set_level(high) {
                log::warn!("i8042: IRQ 1: {e}");
            }
        };
        if next_byte && want && self.irq_high {
            set(false);
            set(true);
        } else if want != self.irq_high {
            set(want);
        }
        self.irq_high = want;
    }

    fn command(&mut self, cmd: u8) {
        self.status |= STATUS_CMD;
        match cmd {
            0x20 => self.push(self.command_byte),
            0x60 | 0xD1 | 0xD2 | 0xD3 | 0xD4 => self.pending_cmd = Some(cmd),
            0xA7 => self.command_byte |= CB_AUX_DISABLE,
            0xA8 => self.command_byte &= !CB_AUX_DISABLE,
            0xAA => self.push(0x55),
            0xA9 | 0xAB => self.push(0x00),
            0xAD => self.command_byte |= CB_KBD_DISABLE,
            0xAE => self.command_byte &= !CB_KBD_DISABLE,
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
            Some(0x60) => {
                self.command_byte = v;
                self.update_irq(false);
            }
            // Output port: bit 0 low resets the CPU.
            Some(0xD1) if v & 1 == 0 => self.exit.request_exit(ExitReason::Reset),
            Some(0xD1) => {}
            Some(0xD2) | Some(0xD3) => self.push(v),
            // To the mouse: there is none, so no answer.
            Some(0xD4) => {}
            _ => self.keyboard(v),
        }
    }

    /// A byte sent to the keyboard (written to port 0x60 without a pending
    /// controller command): answer it as a PS/2 keyboard does.
    fn keyboard(&mut self, v: u8) {
        // Sending to the keyboard enables its interface again.
        self.command_byte &= !CB_KBD_DISABLE;
        if let Some(cmd) = self.kbd_pending.take() {
            // The parameter of 0xED (LEDs), 0xF3 (typematic rate) or 0xF0.
            self.push(KBD_ACK);
            if cmd == 0xF0 {
                match v {
                    0 => {
                        // Report the set, translated to set 1 codes if asked.
                        let id = match (self.command_byte & CB_TRANSLATE != 0, self.scancode_set) {
                            (false, s) => s,
                            (true, 1) => 0x43,
                            (true, 2) => 0x41,
                            (true, _) => 0x3F,
                        };
                        self.push(id);
                    }
                    1..=3 => self.scancode_set = v,
                    _ => {}
                }
            }
            return;
        }
        match v {
            0xED | 0xF0 | 0xF3 => {
                self.kbd_pending = Some(v);
                self.push(KBD_ACK);
            }
            0xEE => self.push(0xEE),
            0xF2 => {
                // Identify: an MF2 keyboard (0xAB 0x83; 0xAB 0x41 translated).
                self.push(KBD_ACK);
                self.push(0xAB);
                self.push(if self.command_byte & CB_TRANSLATE != 0 {
                    0x41
                } else {
                    0x83
                });
            }
            0xF4 => {
                self.kbd_enabled = true;
                self.push(KBD_ACK);
            }
            0xF5 | 0xF6 => {
                self.kbd_enabled = v == 0xF6;
                self.scancode_set = 2;
                self.push(KBD_ACK);
            }
            0xF7..=0xFD => self.push(KBD_ACK),
            0xFF => {
                self.kbd_enabled = true;
                self.scancode_set = 2;
                self.push(KBD_ACK);
                self.push(KBD_SELF_TEST_OK);
            }
            _ => self.push(KBD_RESEND),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(b) = data.first_mut() else { return };
        match base + offset {
            I8042_DATA => {
                *b = self.output.pop_front().unwrap_or(0);
                self.update_irq(true);
            }
            0x61 => {
                // Toggle the refresh bit (bit 4) so delay loops polling it progress.
                self.port61 ^= 0x10;
                *b = self.port61;
            }
            I8042_COMMAND => {
                *b = self.status
                    | if self.output.is_empty() {
                        0
                    } else {
                        STATUS_OBF
                    };
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
    use crate::interrupt::InterruptError;
    use crate::lifecycle::test_utils::RecordingExit;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts rising edges and remembers the level.
    #[derive(Default)]
    struct Level {
        rises: AtomicUsize,
        high: std::sync::atomic::AtomicBool,
    }
    impl InterruptLine for Level {
        fn trigger(&self) -> Result<(), InterruptError> {
            self.set_level(true)?;
            self.set_level(false)
        }
        fn set_level(&self, high: bool) -> Result<(), InterruptError> {
            if high && !self.high.swap(true, Ordering::SeqCst) {
                self.rises.fetch_add(1, Ordering::SeqCst);
            }
            if !high {
                self.high.store(false, Ordering::SeqCst);
            }
            Ok(())
        }
    }

    /// Send `bytes` to the keyboard and read back everything it answered.
    fn to_keyboard(k: &mut I8042, bytes: &[u8]) -> Vec<u8> {
        for &b in bytes {
            k.write(0x60, 0, &[b]);
        }
        let mut out = Vec::new();
        let mut s = [0u8];
        loop {
            k.read(0x60, 4, &mut s);
            if s[0] & STATUS_OBF == 0 {
                return out;
            }
            k.read(0x60, 0, &mut s);
            out.push(s[0]);
        }
    }

    /// What OVMF's PS/2 driver sends (enable, reset, LEDs, identify, scan
    /// code set query) is acknowledged as a PS/2 keyboard does.
    #[test]
    fn keyboard_answers_its_commands() {
        let mut k = I8042::new(Arc::new(RecordingExit::default()));
        assert_eq!(to_keyboard(&mut k, &[0xF4]), [0xFA], "enable: ACK");
        assert_eq!(
            to_keyboard(&mut k, &[0xFF]),
            [0xFA, 0xAA],
            "reset: ACK, self-test passed"
        );
        assert_eq!(
            to_keyboard(&mut k, &[0xED, 0x02]),
            [0xFA, 0xFA],
            "LEDs + parameter"
        );
        assert_eq!(
            to_keyboard(&mut k, &[0xF3, 0x20]),
            [0xFA, 0xFA],
            "typematic + parameter"
        );
        // Command byte 0x45 has translation on: identify and set 2 read translated.
        assert_eq!(to_keyboard(&mut k, &[0xF2]), [0xFA, 0xAB, 0x41]);
        assert_eq!(to_keyboard(&mut k, &[0xF0, 0x00]), [0xFA, 0xFA, 0x41]);
        k.write(0x60, 4, &[0x60]);
        k.write(0x60, 0, &[0x05]); // translation off
        assert_eq!(to_keyboard(&mut k, &[0xF2]), [0xFA, 0xAB, 0x83]);
        assert_eq!(
            to_keyboard(&mut k, &[0xF0, 0x03, 0xF0, 0x00]),
            [0xFA, 0xFA, 0xFA, 0xFA, 0x03]
        );
        assert_eq!(to_keyboard(&mut k, &[0xEE]), [0xEE], "echo");
        assert_eq!(to_keyboard(&mut k, &[0x12]), [0xFE], "unknown: resend");
        // A flood does not grow the queue without bound.
        assert_eq!(to_keyboard(&mut k, &[0xF4; 100]).len(), MAX_OUTPUT);
    }

    /// IRQ 1 is high while a byte waits and keyboard interrupts are
    /// enabled, with a rising edge for each byte; never when disabled.
    #[test]
    fn output_bytes_raise_irq1_when_enabled() {
        let irq = Arc::new(Level::default());
        let mut k = I8042::new(Arc::new(RecordingExit::default())).with_irq(irq.clone());
        let high = |l: &Level| l.high.load(Ordering::SeqCst);
        let rises = |l: &Level| l.rises.load(Ordering::SeqCst);
        k.write(0x60, 0, &[0xFF]);
        assert!(high(&irq), "0x45: interrupts enabled, ACK waiting");
        assert_eq!(to_keyboard(&mut k, &[]), [0xFA, 0xAA]);
        assert_eq!(rises(&irq), 2, "one edge per byte");
        assert!(!high(&irq), "low once the buffer is empty");
        k.write(0x60, 4, &[0x60]);
        k.write(0x60, 0, &[0x44]);
        assert_eq!(to_keyboard(&mut k, &[0xFF]), [0xFA, 0xAA]);
        assert_eq!(rises(&irq), 2, "interrupts off: no edge");
        // Enabling interrupts with a byte waiting raises the line.
        k.write(0x60, 0, &[0xF4]);
        assert!(!high(&irq));
        k.write(0x60, 4, &[0x60]);
        k.write(0x60, 0, &[0x45]);
        assert!(high(&irq));
        assert_eq!(to_keyboard(&mut k, &[]), [0xFA]);
        assert!(!high(&irq));
    }

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
