//! "pci-testdev": a small PCI function for exercising the platform from
//! test guests (enabled with `arbiter run --pci-testdev`).
//!
//! ID 1234:11e5, class ff0000. BAR0: 4 KiB MMIO registers; BAR1: 4 KiB
//! MMIO with the MSI-X table (2 vectors) at 0 and the PBA at 0x800; BAR2:
//! 32 bytes of I/O ports mirroring the first registers of BAR0.
//!
//! | off  | access | meaning                                              |
//! |------|--------|------------------------------------------------------|
//! | 0x00 | R      | magic 0x54425241 ("ARBT")                            |
//! | 0x04 | RW     | scratch                                              |
//! | 0x08 | W      | raise MSI-X vector (value), honouring masks/PBA      |
//! | 0x0C | R      | number of 0x08 writes                                |
//! | 0x10 | W      | doorbell: an ioeventfd (BAR0 only); the event loop    |
//! |      |        | answers by writing vector 1's irqfd                  |
//! | 0x14 | R      | doorbells handled by the event loop                  |
//! | 0x18 | RW     | INTx level (1 asserts INTA#, 0 deasserts)            |

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::interrupt::{
    DataMatch, InterruptError, IoEventAddress, IoEventRegistrar, MsiInterruptGroup,
};
use crate::pci::configuration::{BarInfo, BarKind, BarMove, PciConfiguration, PciIds};
use crate::pci::device::PciDevice;
use crate::pci::msix::{MsixConfig, MsixError};

/// Magic value at offset 0.
pub const MAGIC: u32 = 0x5442_5241;
/// Offset of the doorbell register.
pub const DOORBELL: u64 = 0x10;
/// MSI-X vectors.
pub const VECTORS: u16 = 2;
/// Register BAR size.
pub const REG_BAR_SIZE: u64 = 0x1000;
/// MSI-X BAR size.
pub const MSIX_BAR_SIZE: u64 = 0x1000;
/// I/O BAR size.
pub const IO_BAR_SIZE: u64 = 0x20;
const PBA_OFFSET: u64 = 0x800;

/// Errors building the test device.
#[derive(Debug, thiserror::Error)]
pub enum TestDevError {
    /// BAR/capability layout.
    #[error("pci-testdev config: {0}")]
    Config(#[from] crate::pci::configuration::ConfigError),
    /// MSI-X.
    #[error("pci-testdev MSI-X: {0}")]
    Msix(#[from] MsixError),
    /// Eventfd or ioeventfd.
    #[error("pci-testdev doorbell: {0}")]
    Doorbell(#[from] InterruptError),
    /// Eventfd creation.
    #[error("pci-testdev eventfd: {0}")]
    EventFd(#[from] std::io::Error),
}

/// Where the test device's BARs go.
#[derive(Debug, Clone, Copy)]
pub struct TestDevBars {
    /// BAR0 (registers).
    pub regs: u64,
    /// BAR1 (MSI-X).
    pub msix: u64,
    /// BAR2 (I/O ports).
    pub io: u64,
}

/// The device.
pub struct PciTestDev {
    config: PciConfiguration,
    msix: MsixConfig,
    scratch: u32,
    raises: u32,
    doorbell: EventFd,
    doorbells_handled: Arc<AtomicU32>,
    ioevents: Arc<dyn IoEventRegistrar>,
    doorbell_at: Option<u64>,
    intx: Option<Arc<dyn crate::interrupt::InterruptLine>>,
    intx_level: u32,
}

impl std::fmt::Debug for PciTestDev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciTestDev")
            .field("msix", &self.msix)
            .field("doorbell_at", &self.doorbell_at)
            .finish()
    }
}

impl PciTestDev {
    /// Build it with BARs at `bars`, MSI-X through `group` (2 vectors) and
    /// the doorbell registered with `ioevents`.
    pub fn new(
        bars: TestDevBars,
        group: Arc<dyn MsiInterruptGroup>,
        ioevents: Arc<dyn IoEventRegistrar>,
    ) -> Result<Self, TestDevError> {
        let mut config = PciConfiguration::new(PciIds {
            vendor: 0x1234,
            device: 0x11e5,
            class: 0xff_00_00,
            revision: 1,
            subsystem_vendor: 0x1234,
            subsystem: 0x0001,
            header_type: 0,
        });
        let mem = |size| BarInfo {
            kind: BarKind::Mem32,
            size,
            prefetchable: false,
        };
        config.add_bar(0, mem(REG_BAR_SIZE), bars.regs)?;
        config.add_bar(1, mem(MSIX_BAR_SIZE), bars.msix)?;
        config.add_bar(
            2,
            BarInfo {
                kind: BarKind::Io,
                size: IO_BAR_SIZE,
                prefetchable: false,
            },
            bars.io,
        )?;
        let msix = MsixConfig::new(group)?;
        msix.add_capability(&mut config, 1, 0, 1, u32::try_from(PBA_OFFSET).unwrap_or(0))?;
        let doorbell = EventFd::new(EFD_NONBLOCK)?;
        let mut d = PciTestDev {
            config,
            msix,
            scratch: 0,
            raises: 0,
            doorbell,
            doorbells_handled: Arc::new(AtomicU32::new(0)),
            ioevents,
            doorbell_at: None,
            intx: None,
            intx_level: 0,
        };
        d.register_doorbell(bars.regs + DOORBELL)?;
        Ok(d)
    }

    /// Wire INTA# to `line` and set the interrupt line register to `irq`
    /// (as firmware would after routing).
    pub fn set_intx(&mut self, line: Arc<dyn crate::interrupt::InterruptLine>, irq: u8) {
        self.config.set_interrupt(1, irq);
        self.intx = Some(line);
    }

    fn register_doorbell(&mut self, addr: u64) -> Result<(), InterruptError> {
        if let Some(old) = self.doorbell_at.take() {
            self.ioevents.unregister_ioevent(
                &self.doorbell,
                IoEventAddress::Mmio(old),
                DataMatch::Any,
            )?;
        }
        self.ioevents.register_ioevent(
            &self.doorbell,
            IoEventAddress::Mmio(addr),
            DataMatch::Any,
        )?;
        self.doorbell_at = Some(addr);
        Ok(())
    }

    /// What the event loop needs to serve the doorbell: the ioeventfd,
    /// vector 1's irqfd, and the handled counter.
    pub fn doorbell_handler(&self) -> Option<DoorbellHandler> {
        Some(DoorbellHandler {
            doorbell: self.doorbell.try_clone().ok()?,
            irq: self.msix.group().notifier(1)?,
            handled: self.doorbells_handled.clone(),
        })
    }

    fn reg_read(&self, offset: u64) -> u32 {
        match offset {
            0x00 => MAGIC,
            0x04 => self.scratch,
            0x0C => self.raises,
            0x14 => self.doorbells_handled.load(Ordering::SeqCst),
            0x18 => self.intx_level,
            _ => 0,
        }
    }

    fn reg_write(&mut self, offset: u64, v: u32) {
        match offset {
            0x04 => self.scratch = v,
            0x08 => {
                self.raises = self.raises.wrapping_add(1);
                if let Ok(vec) = u16::try_from(v) {
                    self.msix.trigger(vec);
                }
            }
            0x18 => {
                // Command register bit 10 disables INTx.
                let allowed = self.config.command() & 0x400 == 0;
                self.intx_level = v & 1;
                if let Some(l) = &self.intx {
                    if let Err(e) = l.set_level(self.intx_level == 1 && allowed) {
                        log::warn!("pci-testdev INTx: {e}");
                    }
                }
            }
            // A doorbell that reached us (no ioeventfd): same effect.
            DOORBELL => {
                let _ = self.doorbell.write(1);
            }
            _ => {}
        }
    }
}

/// Event-loop side of the doorbell: read the ioeventfd, count, and raise
/// vector 1 by writing its irqfd (no device lock, no vCPU involvement).
#[derive(Debug)]
pub struct DoorbellHandler {
    /// The ioeventfd.
    pub doorbell: EventFd,
    /// Vector 1's irqfd.
    pub irq: EventFd,
    /// Counter readable at 0x14.
    pub handled: Arc<AtomicU32>,
}

impl DoorbellHandler {
    /// Serve pending doorbells; returns how many.
    pub fn handle(&self) -> u64 {
        match self.doorbell.read() {
            Ok(n) => {
                self.handled
                    .fetch_add(u32::try_from(n).unwrap_or(u32::MAX), Ordering::SeqCst);
                let _ = self.irq.write(1);
                n
            }
            Err(_) => 0,
        }
    }
}

fn le_bytes_to_u32(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

impl PciDevice for PciTestDev {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }

    fn msix(&mut self) -> Option<&mut MsixConfig> {
        Some(&mut self.msix)
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match bar {
            0 | 2 => {
                let v = self.reg_read(offset & !3).to_le_bytes();
                let sh = usize::try_from(offset & 3).unwrap_or(0);
                for (i, b) in data.iter_mut().enumerate() {
                    *b = v.get(sh + i).copied().unwrap_or(0);
                }
            }
            1 if offset < PBA_OFFSET => self.msix.read_table(offset, data),
            1 => self.msix.read_pba(offset - PBA_OFFSET, data),
            _ => data.fill(0xFF),
        }
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match bar {
            0 | 2 if offset & 3 == 0 => self.reg_write(offset, le_bytes_to_u32(data)),
            1 if offset < PBA_OFFSET => self.msix.write_table(offset, data),
            _ => {}
        }
    }

    fn bar_moved(&mut self, mv: &BarMove) {
        if mv.bar == 0 {
            if let Err(e) = self.register_doorbell(mv.new + DOORBELL) {
                log::warn!("pci-testdev: doorbell at {:#x}: {e}", mv.new + DOORBELL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::test_utils::FakeMsiGroup;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Regs(Mutex<Vec<(bool, IoEventAddress)>>);
    impl IoEventRegistrar for Regs {
        fn register_ioevent(
            &self,
            _: &EventFd,
            a: IoEventAddress,
            _: DataMatch,
        ) -> Result<(), InterruptError> {
            self.0.lock().unwrap().push((true, a));
            Ok(())
        }
        fn unregister_ioevent(
            &self,
            _: &EventFd,
            a: IoEventAddress,
            _: DataMatch,
        ) -> Result<(), InterruptError> {
            self.0.lock().unwrap().push((false, a));
            Ok(())
        }
    }

    #[test]
    fn registers_msix_and_doorbell_move() {
        let g = FakeMsiGroup::new(VECTORS);
        let io = Arc::new(Regs::default());
        let bars = TestDevBars {
            regs: 0xC000_0000,
            msix: 0xC000_1000,
            io: 0xC000,
        };
        let mut d = PciTestDev::new(bars, g.clone(), io.clone()).unwrap();
        let mut b = [0u8; 4];
        d.read_bar(0, 0, &mut b);
        assert_eq!(u32::from_le_bytes(b), MAGIC);
        d.read_bar(2, 0, &mut b);
        assert_eq!(u32::from_le_bytes(b), MAGIC);
        d.write_bar(0, 4, &7u32.to_le_bytes());
        d.read_bar(2, 4, &mut b);
        assert_eq!(u32::from_le_bytes(b), 7);
        // Raise vector 0 while MSI-X is off: pending, visible in the PBA.
        d.write_bar(0, 8, &0u32.to_le_bytes());
        let mut pba = [0u8; 8];
        d.read_bar(1, PBA_OFFSET, &mut pba);
        assert_eq!(pba[0], 1);
        assert!(g.fired.lock().unwrap().is_empty());
        d.read_bar(0, 0xC, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1);
        // Move BAR0: the doorbell follows.
        d.bar_moved(&BarMove {
            bar: 0,
            kind: BarKind::Mem32,
            old: 0xC000_0000,
            new: 0xD000_0000,
            size: 0x1000,
        });
        assert_eq!(
            *io.0.lock().unwrap(),
            vec![
                (true, IoEventAddress::Mmio(0xC000_0010)),
                (false, IoEventAddress::Mmio(0xC000_0010)),
                (true, IoEventAddress::Mmio(0xD000_0010)),
            ]
        );
    }
}
