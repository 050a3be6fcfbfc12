//! A PCI function's 256-byte configuration space: header registers with
//! per-bit write masks, BARs sized by the all-ones probe, and a capability
//! list.

/// Number of 32-bit registers in the (conventional) configuration space.
pub const NUM_REGS: usize = 64;
/// Number of BARs in a type-0 header.
pub const NUM_BARS: usize = 6;

const BAR0_REG: usize = 4;
const CAP_PTR_REG: usize = 0x34 / 4;
const INTR_REG: usize = 0x3C / 4;
const STATUS_CAP_LIST: u32 = 0x10 << 16;
const FIRST_CAP: usize = 0x40;

/// PCI capability IDs used here.
pub const CAP_ID_MSIX: u8 = 0x11;
/// Vendor-specific capability (virtio uses it).
pub const CAP_ID_VENDOR: u8 = 0x09;

/// Errors from building a configuration space.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// BAR index past 5, or the second half of a 64-bit BAR at index 5.
    #[error("invalid BAR index {0}")]
    BadBarIndex(usize),
    /// BAR already in use.
    #[error("BAR {0} already in use")]
    BarInUse(usize),
    /// BAR sizes must be powers of two (>= 16 for memory, >= 4 for I/O).
    #[error("invalid BAR size {0:#x}")]
    BadBarSize(u64),
    /// The address is not aligned to the BAR size, or does not fit.
    #[error("BAR address {0:#x} not aligned to its size or out of range")]
    BadBarAddress(u64),
    /// No room left for a capability.
    #[error("no room for a {0}-byte capability")]
    NoCapabilitySpace(usize),
}

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// Port I/O.
    Io,
    /// 32-bit memory.
    Mem32,
    /// 64-bit memory (takes two BAR registers).
    Mem64,
}

/// One BAR as the device declared it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarInfo {
    /// Kind.
    pub kind: BarKind,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// Prefetchable (memory BARs).
    pub prefetchable: bool,
}

/// A BAR whose guest-programmed address changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarMove {
    /// BAR index.
    pub bar: usize,
    /// Kind.
    pub kind: BarKind,
    /// Address it had.
    pub old: u64,
    /// Address the guest programmed.
    pub new: u64,
    /// Size.
    pub size: u64,
}

/// Identity of a function, written into the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PciIds {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code (base class, subclass, prog-if), e.g. 0x060000 for a host bridge.
    pub class: u32,
    /// Revision.
    pub revision: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
    /// Header type byte (0 normal; bit 7 = multi-function).
    pub header_type: u8,
}

/// The configuration space of one PCI function.
#[derive(Debug, Clone)]
pub struct PciConfiguration {
    regs: [u32; NUM_REGS],
    writable: [u32; NUM_REGS],
    bars: [Option<BarInfo>; NUM_BARS],
    /// Where each BAR is mapped now (what the buses hold).
    mapped: [u64; NUM_BARS],
    last_cap: Option<usize>,
    next_cap: usize,
    msix_cap: Option<usize>,
}

impl PciConfiguration {
    /// A type-0 header with these IDs, command bits (I/O, memory, bus
    /// master, SERR, INTx disable) and the interrupt line writable.
    pub fn new(ids: PciIds) -> Self {
        let mut regs = [0u32; NUM_REGS];
        let mut writable = [0u32; NUM_REGS];
        regs[0] = u32::from(ids.vendor) | (u32::from(ids.device) << 16);
        regs[2] = (ids.class << 8) | u32::from(ids.revision);
        regs[3] = u32::from(ids.header_type) << 16;
        regs[11] = u32::from(ids.subsystem_vendor) | (u32::from(ids.subsystem) << 16);
        // Command: I/O, memory, bus master, parity, SERR, INTx disable.
        writable[1] = 0x0000_0547;
        // Cache line size and latency timer.
        writable[3] = 0x0000_FFFF;
        // Interrupt line.
        writable[INTR_REG] = 0x0000_00FF;
        PciConfiguration {
            regs,
            writable,
            bars: [None; NUM_BARS],
            mapped: [0; NUM_BARS],
            last_cap: None,
            next_cap: FIRST_CAP,
            msix_cap: None,
        }
    }

    /// Vendor ID.
    pub fn vendor(&self) -> u16 {
        (self.regs[0] & 0xFFFF) as u16
    }

    /// Device ID.
    pub fn device_id(&self) -> u16 {
        (self.regs[0] >> 16) as u16
    }

    /// Command register.
    pub fn command(&self) -> u16 {
        (self.regs[1] & 0xFFFF) as u16
    }

    /// Set the interrupt pin (1 = INTA# .. 4 = INTD#) and initial line.
    pub fn set_interrupt(&mut self, pin: u8, line: u8) {
        self.regs[INTR_REG] =
            (self.regs[INTR_REG] & !0xFFFF) | (u32::from(pin) << 8) | u32::from(line);
    }

    /// Interrupt pin (0 = none).
    pub fn interrupt_pin(&self) -> u8 {
        ((self.regs[INTR_REG] >> 8) & 0xFF) as u8
    }

    /// Make bits of register `reg` writable by the guest (device-specific registers).
    pub fn set_writable(&mut self, reg: usize, mask: u32) {
        if let Some(w) = self.writable.get_mut(reg) {
            *w = mask;
        }
    }

    /// Set a register's value directly (device side; ignores masks).
    pub fn set_reg(&mut self, reg: usize, value: u32) {
        if let Some(r) = self.regs.get_mut(reg) {
            *r = value;
        }
    }

    /// Read register `reg` (0..64); out-of-range registers read all-ones.
    pub fn read_reg(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(0xFFFF_FFFF)
    }

    /// Declare BAR `bar` with its first address. For `Mem64` it also takes
    /// register `bar + 1`. The address must be aligned to the size.
    pub fn add_bar(&mut self, bar: usize, info: BarInfo, addr: u64) -> Result<(), ConfigError> {
        let regs_needed = if info.kind == BarKind::Mem64 { 2 } else { 1 };
        if bar + regs_needed > NUM_BARS {
            return Err(ConfigError::BadBarIndex(bar));
        }
        if self.bars[bar].is_some() || (regs_needed == 2 && self.bars[bar + 1].is_some()) {
            return Err(ConfigError::BarInUse(bar));
        }
        let min = if info.kind == BarKind::Io { 4 } else { 16 };
        if !info.size.is_power_of_two() || info.size < min {
            return Err(ConfigError::BadBarSize(info.size));
        }
        let limit = match info.kind {
            BarKind::Io => 0x1_0000,
            BarKind::Mem32 => 0x1_0000_0000,
            BarKind::Mem64 => u64::MAX,
        };
        if addr & (info.size - 1) != 0 || addr.checked_add(info.size - 1).is_none_or(|e| e >= limit)
        {
            return Err(ConfigError::BadBarAddress(addr));
        }
        let mask = !(info.size - 1);
        let reg = BAR0_REG + bar;
        match info.kind {
            BarKind::Io => {
                self.regs[reg] = lo32(addr) | 1;
                self.writable[reg] = lo32(mask) & 0xFFFF_FFFC;
            }
            BarKind::Mem32 | BarKind::Mem64 => {
                let mut low = lo32(addr) & 0xFFFF_FFF0;
                if info.kind == BarKind::Mem64 {
                    low |= 0b100;
                }
                if info.prefetchable {
                    low |= 0b1000;
                }
                self.regs[reg] = low;
                self.writable[reg] = lo32(mask) & 0xFFFF_FFF0;
                if info.kind == BarKind::Mem64 {
                    self.regs[reg + 1] = lo32(addr >> 32);
                    self.writable[reg + 1] = lo32(mask >> 32);
                }
            }
        }
        self.bars[bar] = Some(info);
        self.mapped[bar] = addr;
        Ok(())
    }

    /// BAR `bar` as declared, if any.
    pub fn bar(&self, bar: usize) -> Option<BarInfo> {
        self.bars.get(bar).copied().flatten()
    }

    /// Address the guest has programmed into BAR `bar` (from the registers).
    pub fn bar_address(&self, bar: usize) -> Option<u64> {
        let info = self.bar(bar)?;
        let reg = BAR0_REG + bar;
        Some(match info.kind {
            BarKind::Io => u64::from(self.regs[reg] & 0xFFFF_FFFC),
            BarKind::Mem32 => u64::from(self.regs[reg] & 0xFFFF_FFF0),
            BarKind::Mem64 => {
                u64::from(self.regs[reg] & 0xFFFF_FFF0) | (u64::from(self.regs[reg + 1]) << 32)
            }
        })
    }

    /// Address BAR `bar` is mapped at on the bus now.
    pub fn bar_mapped(&self, bar: usize) -> Option<u64> {
        self.bar(bar).map(|_| self.mapped[bar])
    }

    /// Record that the bus now maps BAR `bar` at `addr` (after a successful move).
    pub fn set_bar_mapped(&mut self, bar: usize, addr: u64) {
        if self.bar(bar).is_some() {
            self.mapped[bar] = addr;
        }
    }

    /// Which BAR (if any) register `reg` belongs to.
    fn bar_of_reg(&self, reg: usize) -> Option<usize> {
        if !(BAR0_REG..BAR0_REG + NUM_BARS).contains(&reg) {
            return None;
        }
        let idx = reg - BAR0_REG;
        if self.bars[idx].is_some() {
            return Some(idx);
        }
        if idx > 0 && self.bars[idx - 1].is_some_and(|b| b.kind == BarKind::Mem64) {
            return Some(idx - 1);
        }
        None
    }

    /// Guest write of `data` (1-4 bytes) at byte `offset` within register
    /// `reg`; only writable bits change. Returns a BAR move if this write
    /// programmed a BAR to a new address (never for the all-ones size probe).
    pub fn write_reg(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarMove> {
        let off = usize::try_from(offset).ok()?;
        if reg >= NUM_REGS || data.is_empty() || off + data.len() > 4 {
            return None;
        }
        let mut val = 0u32;
        let mut lanes = 0u32;
        for (i, b) in data.iter().enumerate() {
            val |= u32::from(*b) << (8 * (off + i));
            lanes |= 0xFF << (8 * (off + i));
        }
        let mask = self.writable[reg] & lanes;
        self.regs[reg] = (self.regs[reg] & !mask) | (val & mask);

        let bar = self.bar_of_reg(reg)?;
        let info = self.bars[bar]?;
        // The all-ones size probe leaves every writable bit set: not a move.
        if self.regs[reg] & self.writable[reg] == self.writable[reg] {
            return None;
        }
        if info.kind == BarKind::Mem64 {
            let other = if reg == BAR0_REG + bar {
                reg + 1
            } else {
                reg - 1
            };
            if self.writable[other] != 0
                && self.regs[other] & self.writable[other] == self.writable[other]
            {
                return None;
            }
        }
        let new = self.bar_address(bar)?;
        let old = self.mapped[bar];
        (new != old).then_some(BarMove {
            bar,
            kind: info.kind,
            old,
            new,
            size: info.size,
        })
    }

    /// Append a capability. `body` is everything after the ID and next
    /// bytes; `writable` masks for the whole capability's registers may be
    /// set afterwards with [`set_writable`](Self::set_writable). Returns its offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Result<usize, ConfigError> {
        let len = (body.len() + 2 + 3) & !3;
        let off = self.next_cap;
        if off + len > NUM_REGS * 4 {
            return Err(ConfigError::NoCapabilitySpace(len));
        }
        let mut bytes = vec![0u8; len];
        bytes[0] = id;
        bytes[2..2 + body.len()].copy_from_slice(body);
        for (i, chunk) in bytes.chunks(4).enumerate() {
            let mut w = [0u8; 4];
            w[..chunk.len()].copy_from_slice(chunk);
            self.regs[off / 4 + i] = u32::from_le_bytes(w);
        }
        match self.last_cap {
            Some(prev) => {
                let r = prev / 4;
                self.regs[r] = (self.regs[r] & !0xFF00) | (lo32(off as u64) << 8);
            }
            None => {
                self.regs[CAP_PTR_REG] = lo32(off as u64);
                self.regs[1] |= STATUS_CAP_LIST;
            }
        }
        self.last_cap = Some(off);
        self.next_cap = off + len;
        if id == CAP_ID_MSIX {
            self.msix_cap = Some(off);
        }
        Ok(off)
    }

    /// Offset of the MSI-X capability, if one was added.
    pub fn msix_cap(&self) -> Option<usize> {
        self.msix_cap
    }
}

/// Low 32 bits of `v`.
fn lo32(v: u64) -> u32 {
    u32::try_from(v & 0xFFFF_FFFF).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> PciConfiguration {
        PciConfiguration::new(PciIds {
            vendor: 0x1b36,
            device: 0x0005,
            class: 0x00ff_0000,
            ..Default::default()
        })
    }

    fn wr32(c: &mut PciConfiguration, off: usize, v: u32) -> Option<BarMove> {
        c.write_reg(off / 4, 0, &v.to_le_bytes())
    }

    #[test]
    fn ids_are_read_only() {
        let mut c = cfg();
        assert_eq!(c.read_reg(0), 0x0005_1b36);
        wr32(&mut c, 0, 0xFFFF_FFFF);
        assert_eq!(c.read_reg(0), 0x0005_1b36);
        assert_eq!(c.read_reg(2), 0xff00_0000);
        assert_eq!(c.read_reg(64), 0xFFFF_FFFF);
    }

    #[test]
    fn mem32_bar_probe_and_move() {
        let mut c = cfg();
        c.add_bar(
            0,
            BarInfo {
                kind: BarKind::Mem32,
                size: 0x1000,
                prefetchable: false,
            },
            0xE000_0000,
        )
        .unwrap();
        assert_eq!(c.read_reg(4), 0xE000_0000);
        assert_eq!(wr32(&mut c, 0x10, 0xFFFF_FFFF), None);
        assert_eq!(c.read_reg(4), 0xFFFF_F000);
        assert_eq!(wr32(&mut c, 0x10, 0xE000_0000), None);
        let mv = wr32(&mut c, 0x10, 0xE010_0000).unwrap();
        assert_eq!(
            (mv.bar, mv.old, mv.new, mv.size),
            (0, 0xE000_0000, 0xE010_0000, 0x1000)
        );
        c.set_bar_mapped(0, mv.new);
        assert_eq!(c.bar_mapped(0), Some(0xE010_0000));
    }

    #[test]
    fn mem64_and_io_bars() {
        let mut c = cfg();
        c.add_bar(
            2,
            BarInfo {
                kind: BarKind::Mem64,
                size: 0x4000,
                prefetchable: true,
            },
            0x1_0000_0000,
        )
        .unwrap();
        c.add_bar(
            4,
            BarInfo {
                kind: BarKind::Io,
                size: 0x20,
                prefetchable: false,
            },
            0xC000,
        )
        .unwrap();
        assert_eq!(c.read_reg(6), 0x0000_000C);
        assert_eq!(c.read_reg(7), 1);
        assert_eq!(c.read_reg(8), 0xC001);
        wr32(&mut c, 0x18, 0xFFFF_FFFF);
        wr32(&mut c, 0x1C, 0xFFFF_FFFF);
        assert_eq!(c.read_reg(6), 0xFFFF_C00C);
        assert_eq!(c.read_reg(7), 0xFFFF_FFFF);
        assert_eq!(wr32(&mut c, 0x18, 0x0000_0000), None); // high half still probed
        let mv = wr32(&mut c, 0x1C, 0x2).unwrap();
        assert_eq!((mv.bar, mv.new), (2, 0x2_0000_0000));
        wr32(&mut c, 0x20, 0xFFFF_FFFF);
        assert_eq!(c.read_reg(8), 0xFFFF_FFE1);
        assert_eq!(
            c.add_bar(
                5,
                BarInfo {
                    kind: BarKind::Mem64,
                    size: 16,
                    prefetchable: false
                },
                0
            ),
            Err(ConfigError::BadBarIndex(5))
        );
        assert_eq!(
            c.add_bar(
                0,
                BarInfo {
                    kind: BarKind::Mem32,
                    size: 24,
                    prefetchable: false
                },
                0
            ),
            Err(ConfigError::BadBarSize(24))
        );
        assert_eq!(
            c.add_bar(
                0,
                BarInfo {
                    kind: BarKind::Mem32,
                    size: 32,
                    prefetchable: false
                },
                8
            ),
            Err(ConfigError::BadBarAddress(8))
        );
    }

    #[test]
    fn capability_chain() {
        let mut c = cfg();
        assert_eq!(c.read_reg(1) & STATUS_CAP_LIST, 0);
        let a = c.add_capability(CAP_ID_VENDOR, &[4, 1, 2]).unwrap();
        let b = c.add_capability(CAP_ID_MSIX, &[0; 10]).unwrap();
        assert_eq!(c.read_reg(1) & STATUS_CAP_LIST, STATUS_CAP_LIST);
        assert_eq!(c.read_reg(0x34 / 4) & 0xFF, lo32(a as u64));
        assert_eq!(
            c.read_reg(a / 4) & 0xFFFF,
            lo32(b as u64) << 8 | u32::from(CAP_ID_VENDOR)
        );
        assert_eq!(c.read_reg(b / 4) & 0xFF, 0x11);
        assert_eq!(c.msix_cap(), Some(b));
    }

    proptest! {
        /// Random writes of any size and offset never panic, never change
        /// read-only bits, and BAR moves are always size-aligned.
        #[test]
        fn random_config_writes(writes in proptest::collection::vec((0usize..80, 0u64..6, proptest::collection::vec(any::<u8>(), 0..6)), 0..200)) {
            let mut c = cfg();
            c.add_bar(0, BarInfo { kind: BarKind::Mem64, size: 0x1000, prefetchable: false }, 0xE000_0000).unwrap();
            c.add_bar(2, BarInfo { kind: BarKind::Io, size: 0x40, prefetchable: false }, 0xC040).unwrap();
            c.add_capability(CAP_ID_MSIX, &[0; 10]).unwrap();
            let before = c.clone();
            for (reg, off, data) in writes {
                if let Some(mv) = c.write_reg(reg, off, &data) {
                    prop_assert_eq!(mv.new & (mv.size - 1), 0);
                    c.set_bar_mapped(mv.bar, mv.new);
                }
                for r in 0..NUM_REGS {
                    prop_assert_eq!(c.read_reg(r) & !c.writable[r], before.read_reg(r) & !before.writable[r]);
                }
            }
        }
    }
}
