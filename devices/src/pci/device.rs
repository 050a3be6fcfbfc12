//! The trait every PCI function implements.

use crate::pci::configuration::{BarMove, PciConfiguration};
use crate::pci::msix::MsixConfig;

/// A PCI function on bus 0.
///
/// Configuration space goes through [`config`](Self::config) /
/// [`config_mut`](Self::config_mut); the default config handlers apply the
/// write masks, report BAR moves and keep MSI-X enable/mask bits in step.
/// BAR accesses arrive with the BAR index and the offset inside it.
///
/// BARs are declared by the device in its configuration
/// ([`PciConfiguration::add_bar`]) at addresses the device manager
/// allocated; when the device is added the manager maps each BAR on the
/// PIO or MMIO bus. When the guest programs a BAR elsewhere, the PCI root
/// moves the bus range and then calls [`bar_moved`](Self::bar_moved), where
/// the device re-registers ioeventfds that live in that BAR.
pub trait PciDevice: Send {
    /// Configuration space.
    fn config(&self) -> &PciConfiguration;
    /// Configuration space, mutable.
    fn config_mut(&mut self) -> &mut PciConfiguration;

    /// The function's MSI-X state, if it has the capability.
    fn msix(&mut self) -> Option<&mut MsixConfig> {
        None
    }

    /// Guest read of dword register `reg` (0..64).
    fn read_config(&mut self, reg: usize) -> u32 {
        self.config().read_reg(reg)
    }

    /// Guest write of `data` at byte `offset` of register `reg`. Returns a
    /// BAR move for the PCI root to carry out.
    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarMove> {
        let mv = self.config_mut().write_reg(reg, offset, data);
        if let Some(cap) = self.config().msix_cap() {
            if reg == cap / 4 {
                let ctrl = (self.config().read_reg(reg) >> 16) as u16;
                if let Some(m) = self.msix() {
                    m.set_control(ctrl);
                }
            }
        }
        mv
    }

    /// Guest read at `offset` in BAR `bar`.
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// Guest write at `offset` in BAR `bar`.
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]);

    /// BAR `mv.bar` now lives at `mv.new` (the bus range already moved).
    fn bar_moved(&mut self, mv: &BarMove) {
        let _ = mv;
    }
}
