//! CFI parallel flash (Intel command set, 8-bit wide, 4 KiB blocks) as QEMU's
//! `pflash_cfi01` presents OVMF's code and variable stores.
//!
//! The storage is a byte slice the monitor owns (normally a `MAP_SHARED`
//! mapping of the user's `*_VARS.fd`, so programmed bytes reach the file).
//! In read-array mode the monitor maps that same memory into the guest as a
//! read-only memory slot ("ROMD"): reads cost nothing and writes exit to
//! [`Pflash::write`]. A command switches the device out of read-array mode;
//! the monitor must then take the slot away so reads reach [`Pflash::read`]
//! (status, ID, CFI query), and map it again when the guest returns to
//! read-array. [`Pflash::romd`] says which mode the device is in; the
//! monitor checks it after every write.
//!
//! OVMF's QemuFlashFvbServicesRuntimeDxe relies on exactly this: it detects
//! flash by writing CLEAR STATUS (0x50) then READ STATUS (0x70) and reading
//! 0x00 back; it programs bytes with 0x10 + data and erases 4 KiB blocks
//! with 0x20 + 0xD0, returning to read-array (0xFF) after each.

use crate::bus::BusDevice;

/// Block (sector) size: the erase granule.
pub const BLOCK_SIZE: usize = 4096;

/// Commands (first cycle).
mod cmd {
    pub const PROGRAM: u8 = 0x10;
    pub const PROGRAM_ALT: u8 = 0x40;
    pub const BLOCK_ERASE: u8 = 0x20;
    pub const CLEAR_STATUS: u8 = 0x50;
    pub const READ_STATUS: u8 = 0x70;
    pub const READ_ID: u8 = 0x90;
    pub const CFI_QUERY: u8 = 0x98;
    pub const ERASE_CONFIRM: u8 = 0xD0;
    pub const READ_ARRAY: u8 = 0xFF;
    pub const READ_ARRAY_ALT: u8 = 0x00;
}

/// Status register bits.
const SR_READY: u8 = 0x80;
const SR_ERASE_ERROR: u8 = 0x20;
const SR_PROGRAM_ERROR: u8 = 0x10;
const SR_PROTECT_ERROR: u8 = 0x02;

/// Intel manufacturer ID and a device ID, as QEMU reports for OVMF.
const MANUFACTURER_ID: u8 = 0x89;
const DEVICE_ID: u8 = 0x18;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    ReadArray,
    ReadStatus,
    ReadId,
    CfiQuery,
    /// Next write is the byte to program.
    ProgramData,
    /// Next write must be ERASE CONFIRM.
    EraseConfirm,
}

/// What happened to the storage in a write, so the monitor can persist it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing stored changed.
    None,
    /// Bytes `start..end` of the storage changed.
    Range(usize, usize),
}

/// One flash device.
#[derive(Debug)]
pub struct Pflash<S: AsRef<[u8]> + AsMut<[u8]>> {
    storage: S,
    read_only: bool,
    mode: Mode,
    status: u8,
    last_change: Change,
}

impl<S: AsRef<[u8]> + AsMut<[u8]>> Pflash<S> {
    /// A device over `storage`; `read_only` for the code store (commands
    /// that would change it set the protect error bit instead).
    pub fn new(storage: S, read_only: bool) -> Self {
        Pflash {
            storage,
            read_only,
            mode: Mode::ReadArray,
            status: SR_READY,
            last_change: Change::None,
        }
    }

    /// Whether the device is in read-array mode, i.e. whether the monitor
    /// should have its memory mapped read-only into the guest.
    pub fn romd(&self) -> bool {
        self.mode == Mode::ReadArray
    }

    /// The storage.
    pub fn storage(&self) -> &[u8] {
        self.storage.as_ref()
    }

    /// What the last write changed (reset by each write).
    pub fn last_change(&self) -> Change {
        self.last_change
    }

    fn len(&self) -> usize {
        self.storage.as_ref().len()
    }

    /// CFI query table (JEDEC/CFI, "QRY" at 0x10), byte-wide device.
    fn cfi(&self, offset: usize) -> u8 {
        let blocks = u16::try_from(self.len() / BLOCK_SIZE)
            .unwrap_or(u16::MAX)
            .saturating_sub(1);
        let size_log2 =
            u8::try_from(usize::BITS - self.len().max(1).leading_zeros() - 1).unwrap_or(0);
        let [b0, b1] = blocks.to_le_bytes();
        match offset {
            0x10 => b'Q',
            0x11 => b'R',
            0x12 => b'Y',
            0x13 => 0x01, // primary command set: Intel/Sharp extended
            0x15 => 0x31, // primary extended table address
            0x1B => 0x45, // Vcc min 4.5 V
            0x1C => 0x55, // Vcc max 5.5 V
            0x1F => 0x07, // typical single-byte program time 2^7 us
            0x21 => 0x0A, // typical block erase time 2^10 ms
            0x23 => 0x04, // max program time 2^4 x typical
            0x25 => 0x04, // max erase time 2^4 x typical
            0x27 => size_log2,
            0x28 => 0x00, // x8 interface
            0x2C => 0x01, // one erase block region
            0x2D => b0,
            0x2E => b1,
            0x2F => 0x00, // block size / 256: 4096 = 0x0010 x 256
            0x30 => 0x10,
            0x31 => b'P',
            0x32 => b'R',
            0x33 => b'I',
            0x34 => b'1',
            0x35 => b'0',
            _ => 0,
        }
    }

    /// Guest read of one byte at `offset` (outside read-array mode, or when
    /// the monitor did not map the memory).
    pub fn read_byte(&self, offset: usize) -> u8 {
        match self.mode {
            Mode::ReadArray => self.storage.as_ref().get(offset).copied().unwrap_or(0xFF),
            Mode::ReadStatus | Mode::ProgramData | Mode::EraseConfirm => self.status,
            Mode::ReadId => match offset & 0xFF {
                0 => MANUFACTURER_ID,
                1 => DEVICE_ID,
                _ => 0,
            },
            Mode::CfiQuery => self.cfi(offset & 0xFF),
        }
    }

    /// Guest write of one byte at `offset`.
    pub fn write_byte(&mut self, offset: usize, value: u8) {
        self.last_change = Change::None;
        if offset >= self.len() {
            return;
        }
        match self.mode {
            Mode::ProgramData => {
                if self.read_only {
                    self.status |= SR_PROGRAM_ERROR | SR_PROTECT_ERROR;
                } else {
                    self.storage.as_mut()[offset] = value;
                    self.last_change = Change::Range(offset, offset + 1);
                }
                self.status |= SR_READY;
                self.mode = Mode::ReadStatus;
            }
            Mode::EraseConfirm => {
                if value == cmd::ERASE_CONFIRM {
                    if self.read_only {
                        self.status |= SR_ERASE_ERROR | SR_PROTECT_ERROR;
                    } else {
                        let start = offset - offset % BLOCK_SIZE;
                        let end = (start + BLOCK_SIZE).min(self.len());
                        self.storage.as_mut()[start..end].fill(0xFF);
                        self.last_change = Change::Range(start, end);
                    }
                } else {
                    // A wrong second cycle is a command sequence error.
                    self.status |= SR_ERASE_ERROR | SR_PROGRAM_ERROR;
                }
                self.status |= SR_READY;
                self.mode = Mode::ReadStatus;
            }
            _ => self.command(value),
        }
    }

    fn command(&mut self, value: u8) {
        self.mode = match value {
            cmd::READ_ARRAY | cmd::READ_ARRAY_ALT => Mode::ReadArray,
            cmd::PROGRAM | cmd::PROGRAM_ALT => Mode::ProgramData,
            cmd::BLOCK_ERASE => Mode::EraseConfirm,
            cmd::CLEAR_STATUS => {
                self.status = 0;
                // QEMU keeps the mode; a following read sees the status.
                if self.mode == Mode::ReadArray {
                    Mode::ReadStatus
                } else {
                    self.mode
                }
            }
            cmd::READ_STATUS => Mode::ReadStatus,
            cmd::READ_ID => Mode::ReadId,
            cmd::CFI_QUERY => Mode::CfiQuery,
            _ => {
                log::debug!("pflash: unsupported command {value:#04x}, back to read array");
                Mode::ReadArray
            }
        };
    }
}

impl<S: AsRef<[u8]> + AsMut<[u8]> + Send> BusDevice for Pflash<S> {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, b) in data.iter_mut().enumerate() {
            // Status/ID reads of a wider access repeat the byte, as on a
            // byte-wide part read through a wider bus.
            *b = if self.mode == Mode::ReadArray {
                self.read_byte(start.saturating_add(i))
            } else {
                self.read_byte(start)
            };
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        // Commands and program data are byte-wide; a wider write carries
        // them in its low byte.
        if let (Ok(off), Some(&v)) = (usize::try_from(offset), data.first()) {
            self.write_byte(off, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flash() -> Pflash<Vec<u8>> {
        let mut s = vec![0xFFu8; 4 * BLOCK_SIZE];
        s[0] = 0x5A; // a byte that is neither 0x50 nor 0x70, as OVMF looks for
        Pflash::new(s, false)
    }

    fn rd(f: &mut Pflash<Vec<u8>>, off: u64) -> u8 {
        let mut b = [0u8];
        f.read(0, off, &mut b);
        b[0]
    }

    #[test]
    fn ovmf_detects_flash_behaviour() {
        // QemuFlashDetected: remember the byte, CLEAR STATUS, read back (must
        // differ from 0x50 = not RAM), READ STATUS, read back 0x00 = flash.
        let mut f = flash();
        let original = rd(&mut f, 0);
        f.write(0, 0, &[0x50]);
        assert!(!f.romd());
        assert_ne!(rd(&mut f, 0), 0x50);
        f.write(0, 0, &[0x70]);
        let probe = rd(&mut f, 0);
        assert_ne!(probe, original);
        assert_eq!(probe, 0x00);
        f.write(0, 0, &[0xFF]);
        assert!(f.romd());
        assert_eq!(rd(&mut f, 0), 0x5A);
    }

    #[test]
    fn program_and_erase_like_ovmf() {
        let mut f = flash();
        // Program two bytes at 0x1234 (0x10 + data each), then read array.
        for (i, v) in [0xAAu8, 0x55].iter().enumerate() {
            let off = 0x1234 + u64::try_from(i).unwrap();
            f.write(0, off, &[0x10]);
            f.write(0, off, &[*v]);
            assert_eq!(
                f.last_change(),
                Change::Range(
                    usize::try_from(off).unwrap(),
                    usize::try_from(off).unwrap() + 1
                )
            );
            assert_eq!(rd(&mut f, off) & SR_READY, SR_READY); // status after programming
        }
        f.write(0, 0x1235, &[0xFF]);
        assert_eq!(&f.storage()[0x1234..0x1236], &[0xAA, 0x55]);
        // Erase the block holding them: 0x20, 0xD0, 0xFF.
        f.write(0, 0x1000, &[0x20]);
        f.write(0, 0x1000, &[0xD0]);
        assert_eq!(f.last_change(), Change::Range(0x1000, 0x2000));
        f.write(0, 0x1000, &[0xFF]);
        assert!(f.storage()[0x1000..0x2000].iter().all(|&b| b == 0xFF));
        assert_eq!(f.storage()[0], 0x5A); // other blocks untouched
    }

    #[test]
    fn read_only_code_store_refuses_changes() {
        let mut f = Pflash::new(vec![0u8; BLOCK_SIZE], true);
        f.write(0, 8, &[0x10]);
        f.write(0, 8, &[0x77]);
        assert_eq!(f.storage()[8], 0);
        assert_eq!(
            rd(&mut f, 8) & (SR_PROGRAM_ERROR | SR_PROTECT_ERROR),
            SR_PROGRAM_ERROR | SR_PROTECT_ERROR
        );
        f.write(0, 0, &[0x20]);
        f.write(0, 0, &[0xD0]);
        assert_eq!(f.storage()[0], 0);
        assert_eq!(f.last_change(), Change::None);
    }

    #[test]
    fn bad_erase_sequence_sets_errors_and_changes_nothing() {
        let mut f = flash();
        f.write(0, 0, &[0x20]);
        f.write(0, 0, &[0x33]);
        assert_eq!(f.storage()[0], 0x5A);
        assert_eq!(
            rd(&mut f, 0) & (SR_ERASE_ERROR | SR_PROGRAM_ERROR),
            SR_ERASE_ERROR | SR_PROGRAM_ERROR
        );
        f.write(0, 0, &[0x50]);
        assert_eq!(rd(&mut f, 0), 0);
    }

    #[test]
    fn id_and_cfi_query() {
        let mut f = flash();
        f.write(0, 0, &[0x90]);
        assert_eq!((rd(&mut f, 0), rd(&mut f, 1)), (0x89, 0x18));
        f.write(0, 0, &[0x98]);
        assert_eq!(
            [rd(&mut f, 0x10), rd(&mut f, 0x11), rd(&mut f, 0x12)],
            *b"QRY"
        );
        assert_eq!(rd(&mut f, 0x27), 14); // 16 KiB = 2^14
        assert_eq!((rd(&mut f, 0x2D), rd(&mut f, 0x2E)), (3, 0)); // 4 blocks - 1
        f.write(0, 0, &[0xFF]);
        assert!(f.romd());
    }

    #[test]
    fn accesses_past_the_end_are_harmless() {
        let mut f = flash();
        f.write(0, 1 << 40, &[0x10]);
        f.write(0, u64::MAX, &[0x10]);
        assert!(f.romd());
        let mut b = [0u8; 8];
        f.read(0, u64::MAX - 2, &mut b);
        assert_eq!(b, [0xFF; 8]);
    }
}
