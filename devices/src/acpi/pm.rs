//! PIIX4 power management, PCI function 00:01.3 (8086:7113): the PMBA
//! register (0x40) and PMREGMISC enable (0x80) place a 64-byte I/O block
//! with PM1 status/enable (+0), PM1 control (+4) and the ACPI PM timer
//! (+8, 3.579545 MHz, 24 bits). SCI is IRQ 9, level, raised while an
//! enabled status bit is set and SCI_EN is on. Writing SLP_EN with
//! SLP_TYP 0 (the \_S5 value QEMU's tables use) powers the machine off.
//! There is no SMM, so the FADT has no SMI command port and ACPI is always
//! enabled: SCI_EN reads 1 from power-on and cannot be cleared.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::bus::{Bus, BusDevice};
use crate::interrupt::InterruptLine;
use crate::lifecycle::{ExitHandler, ExitReason};
use crate::pci::{PciConfiguration, PciDevice, PciIds};

/// Length of the PM I/O block.
pub const PM_IO_LEN: u64 = 64;
/// SCI's IRQ.
pub const SCI_IRQ: u8 = 9;
/// ACPI PM timer frequency.
pub const PM_TIMER_HZ: u64 = 3_579_545;

const PMBA_REG: usize = 0x40 / 4;
const PMREGMISC_REG: usize = 0x80 / 4;
const STS_TMROF: u16 = 1 << 0;
const STS_PWRBTN: u16 = 1 << 8;
const STS_WAK: u16 = 1 << 15;
const CNT_SCI_EN: u16 = 1 << 0;
const CNT_SLP_EN: u16 = 1 << 13;

/// The PM1 registers and timer.
pub struct PmIo {
    status: u16,
    enable: u16,
    control: u16,
    start: Instant,
    sci: Option<Arc<dyn InterruptLine>>,
    sci_level: bool,
    exit: Arc<dyn ExitHandler>,
}

impl std::fmt::Debug for PmIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PmIo")
            .field("status", &self.status)
            .field("enable", &self.enable)
            .field("control", &self.control)
            .finish()
    }
}

impl PmIo {
    fn timer(&self) -> u32 {
        let ticks = self.start.elapsed().as_nanos() * u128::from(PM_TIMER_HZ) / 1_000_000_000;
        u32::try_from(ticks & 0xFF_FFFF).unwrap_or(0)
    }

    fn update_sci(&mut self) {
        let level = self.control & CNT_SCI_EN != 0
            && self.status & self.enable & (STS_TMROF | STS_PWRBTN) != 0;
        if level != self.sci_level {
            self.sci_level = level;
            if let Some(l) = &self.sci {
                if let Err(e) = l.set_level(level) {
                    log::warn!("SCI: {e}");
                }
            }
        }
    }

    /// The host's power button (sets PWRBTN_STS; SCI if enabled).
    pub fn press_power_button(&mut self) {
        self.status |= STS_PWRBTN;
        self.update_sci();
    }

    fn read_u16(&self, off: u64) -> Option<u16> {
        match off {
            0 => Some(self.status),
            2 => Some(self.enable),
            4 => Some(self.control & !CNT_SLP_EN),
            _ => None,
        }
    }
}

impl BusDevice for PmIo {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let mut bytes = [0u8; 16];
        bytes[0..2].copy_from_slice(&self.status.to_le_bytes());
        bytes[2..4].copy_from_slice(&self.enable.to_le_bytes());
        bytes[4..6].copy_from_slice(&self.read_u16(4).unwrap_or(0).to_le_bytes());
        bytes[8..12].copy_from_slice(&self.timer().to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| bytes.get(o + i))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let mut v = [0u8; 2];
        let n = data.len().min(2);
        v[..n].copy_from_slice(&data[..n]);
        let mut val = u16::from_le_bytes(v);
        // Byte writes to the high half of a 16-bit register.
        let off = if offset % 2 == 1 && data.len() == 1 {
            val <<= 8;
            offset - 1
        } else {
            offset
        };
        let lanes: u16 = match (offset % 2, data.len()) {
            (1, 1) => 0xFF00,
            (0, 1) => 0x00FF,
            _ => 0xFFFF,
        };
        match off {
            0 => self.status &= !(val & lanes),
            2 => self.enable = (self.enable & !lanes) | (val & lanes),
            4 => {
                let v = (self.control & !lanes) | (val & lanes);
                self.control = (v & !CNT_SLP_EN) | CNT_SCI_EN;
                if v & CNT_SLP_EN != 0 {
                    let typ = (v >> 10) & 7;
                    if typ == 0 {
                        self.exit.request_exit(ExitReason::PowerOff);
                    } else {
                        // S1-S4 are not supported: wake at once.
                        log::info!("guest asked for sleep type {typ}; not supported, ignoring");
                        self.status |= STS_WAK;
                    }
                }
            }
            _ => {}
        }
        self.update_sci();
    }
}

/// The PCI function.
pub struct Piix4Pm {
    config: PciConfiguration,
    io: Arc<Mutex<PmIo>>,
    pio: Arc<Bus>,
    mapped: Option<u64>,
}

impl std::fmt::Debug for Piix4Pm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Piix4Pm")
            .field("mapped", &self.mapped)
            .finish()
    }
}

impl Piix4Pm {
    /// The function, with its I/O block on `pio` once enabled. `sci` is
    /// IRQ 9's line. `preset_base`: program PMBA and enable the block, as
    /// a BIOS would (for direct kernel boot).
    pub fn new(
        pio: Arc<Bus>,
        sci: Option<Arc<dyn InterruptLine>>,
        exit: Arc<dyn ExitHandler>,
        preset_base: Option<u64>,
    ) -> Self {
        let mut config = PciConfiguration::new(PciIds {
            vendor: 0x8086,
            device: 0x7113,
            class: 0x06_80_00,
            revision: 0x03,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
            header_type: 0,
        });
        config.set_interrupt(1, SCI_IRQ);
        config.set_reg(PMBA_REG, 1);
        config.set_writable(PMBA_REG, 0x0000_FFC0);
        config.set_writable(PMREGMISC_REG, 0x0000_0001);
        let io = Arc::new(Mutex::new(PmIo {
            status: 0,
            enable: 0,
            control: CNT_SCI_EN,
            start: Instant::now(),
            sci,
            sci_level: false,
            exit,
        }));
        let mut pm = Piix4Pm {
            config,
            io,
            pio,
            mapped: None,
        };
        if let Some(base) = preset_base {
            pm.config
                .set_reg(PMBA_REG, u32::try_from(base & 0xFFC0).unwrap_or(0) | 1);
            pm.config.set_reg(PMREGMISC_REG, 1);
            pm.remap();
        }
        pm
    }

    /// The PM registers (for the power button).
    pub fn io(&self) -> &Arc<Mutex<PmIo>> {
        &self.io
    }

    /// Where the I/O block is mapped, if enabled.
    pub fn io_base(&self) -> Option<u64> {
        self.mapped
    }

    fn remap(&mut self) {
        let base = u64::from(self.config.read_reg(PMBA_REG) & 0xFFC0);
        let want = (self.config.read_reg(PMREGMISC_REG) & 1 != 0 && base != 0).then_some(base);
        if want == self.mapped {
            return;
        }
        if let Some(old) = self.mapped.take() {
            let _ = self.pio.remove(old);
        }
        if let Some(new) = want {
            match self.pio.insert(self.io.clone(), new, PM_IO_LEN) {
                Ok(()) => self.mapped = Some(new),
                Err(e) => log::warn!("PIIX4 PM I/O at {new:#x}: {e}"),
            }
        }
    }
}

impl PciDevice for Piix4Pm {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }

    fn write_config(
        &mut self,
        reg: usize,
        offset: u64,
        data: &[u8],
    ) -> Option<crate::pci::BarMove> {
        self.config.write_reg(reg, offset, data);
        if reg == PMBA_REG || reg == PMREGMISC_REG {
            self.remap();
        }
        None
    }

    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xFF);
    }

    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::InterruptError;
    use crate::lifecycle::test_utils::RecordingExit;

    #[derive(Default)]
    struct Level(Mutex<Vec<bool>>);
    impl InterruptLine for Level {
        fn trigger(&self) -> Result<(), InterruptError> {
            Ok(())
        }
        fn set_level(&self, high: bool) -> Result<(), InterruptError> {
            self.0.lock().unwrap().push(high);
            Ok(())
        }
    }

    #[test]
    fn pmba_mapping_timer_sci_and_poweroff() {
        let pio = Arc::new(Bus::new());
        let exit = Arc::new(RecordingExit::default());
        let sci = Arc::new(Level::default());
        let mut pm = Piix4Pm::new(pio.clone(), Some(sci.clone()), exit.clone(), None);
        assert_eq!(pm.config().read_reg(0), 0x7113_8086);
        assert_eq!(pm.config().read_reg(0x3C / 4) & 0xFFFF, 0x0109);
        assert!(pio.is_empty());
        pm.write_config(PMBA_REG, 0, &0xB001u32.to_le_bytes());
        assert!(pio.is_empty(), "not enabled yet");
        pm.write_config(PMREGMISC_REG, 0, &[1]);
        assert_eq!(pm.io_base(), Some(0xB000));
        assert_eq!(pm.config().read_reg(PMBA_REG), 0xB001);
        // Timer advances.
        let mut a = [0u8; 4];
        let mut b = [0u8; 4];
        pio.read(0xB008, &mut a);
        std::thread::sleep(std::time::Duration::from_millis(2));
        pio.read(0xB008, &mut b);
        let d = u32::from_le_bytes(b).wrapping_sub(u32::from_le_bytes(a)) & 0xFF_FFFF;
        assert!(d >= 7000, "2 ms is >= 7159 ticks, got {d}");
        // ACPI is always enabled: SCI_EN reads 1 and stays set.
        let mut cnt = [0u8; 2];
        pio.read(0xB004, &mut cnt);
        assert_eq!(u16::from_le_bytes(cnt), CNT_SCI_EN);
        pio.write(0xB004, &0u16.to_le_bytes());
        pio.read(0xB004, &mut cnt);
        assert_eq!(u16::from_le_bytes(cnt), CNT_SCI_EN);
        // Power button with PWRBTN_EN raises SCI; W1C lowers it.
        pio.write(0xB002, &STS_PWRBTN.to_le_bytes());
        pm.io().lock().unwrap().press_power_button();
        assert_eq!(*sci.0.lock().unwrap(), vec![true]);
        pio.write(0xB000, &STS_PWRBTN.to_le_bytes());
        assert_eq!(*sci.0.lock().unwrap(), vec![true, false]);
        // S3 is ignored, S5 (SLP_TYP 0) powers off.
        pio.write(
            0xB004,
            &((1u16 << 10) | CNT_SLP_EN | CNT_SCI_EN).to_le_bytes(),
        );
        assert!(exit.0.lock().unwrap().is_empty());
        pio.write(0xB005, &[0x20]);
        assert_eq!(*exit.0.lock().unwrap(), vec![ExitReason::PowerOff]);
        // Moving PMBA moves the block.
        pm.write_config(PMBA_REG, 0, &0x0601u32.to_le_bytes());
        assert_eq!(pm.io_base(), Some(0x600));
        assert!(pio.resolve(0xB000).is_none());
        assert!(pio.resolve(0x63F).is_some());
    }
}

/// QEMU "pc" GPE0 block address (status at +0, enable at +2).
pub const GPE0_BASE: u64 = 0xAFE0;
/// GPE0 block length.
pub const GPE0_LEN: u64 = 4;

/// The general-purpose event block the FADT points at. No event sources
/// are wired yet (no hotplug), so status bits never set; enable bits are
/// kept so the OS reads back what it wrote (unbacked ports would read
/// all-ones: every GPE "enabled and pending").
#[derive(Debug, Default)]
pub struct Gpe0 {
    status: [u8; 2],
    enable: [u8; 2],
}

impl BusDevice for Gpe0 {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let regs = [
            self.status[0],
            self.status[1],
            self.enable[0],
            self.enable[1],
        ];
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| regs.get(o + i))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        for (i, v) in data.iter().enumerate() {
            match usize::try_from(offset).ok().map(|o| o + i) {
                Some(o @ 0..=1) => self.status[o] &= !v,
                Some(o @ 2..=3) => self.enable[o - 2] = *v,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod gpe_tests {
    use super::*;

    #[test]
    fn gpe0_enable_kept_status_clear() {
        let mut g = Gpe0::default();
        g.write(GPE0_BASE, 2, &[0xFF, 0x01]);
        let mut d = [0xAAu8; 4];
        g.read(GPE0_BASE, 0, &mut d);
        assert_eq!(d, [0, 0, 0xFF, 0x01]);
        g.write(GPE0_BASE, 0, &[0xFF, 0xFF]);
        let mut e = [0u8; 8];
        g.read(GPE0_BASE, 0, &mut e);
        assert_eq!(e, [0, 0, 0xFF, 0x01, 0, 0, 0, 0]);
    }
}
