//! MSI-X: the vector table and pending-bit array a device exposes in a BAR,
//! and the capability's enable and function-mask bits.
//!
//! Table entries are 16 bytes: message address low, high, data, vector
//! control (bit 0 = masked). Entries start masked. A vector raised while
//! masked (per vector or by the function mask) sets its pending bit and is
//! delivered when unmasked.

use std::sync::Arc;

use crate::interrupt::{MsiInterruptGroup, MsiMessage};
use crate::pci::configuration::{PciConfiguration, CAP_ID_MSIX};

const ENTRY_SIZE: usize = 16;
const CTRL_ENABLE: u16 = 1 << 15;
const CTRL_FUNCTION_MASK: u16 = 1 << 14;

/// Errors from MSI-X set-up.
#[derive(Debug, thiserror::Error)]
pub enum MsixError {
    /// 1..=2048 vectors.
    #[error("invalid MSI-X vector count {0}")]
    BadVectorCount(u16),
    /// Capability did not fit.
    #[error("MSI-X capability: {0}")]
    Config(#[from] crate::pci::configuration::ConfigError),
}

/// MSI-X state of one function.
pub struct MsixConfig {
    table: Vec<u8>,
    pba: Vec<u64>,
    enabled: bool,
    function_masked: bool,
    group: Arc<dyn MsiInterruptGroup>,
}

impl std::fmt::Debug for MsixConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsixConfig")
            .field("vectors", &self.vectors())
            .field("enabled", &self.enabled)
            .field("function_masked", &self.function_masked)
            .field("pba", &self.pba)
            .finish()
    }
}

impl MsixConfig {
    /// `group.len()` vectors, all masked, MSI-X disabled.
    pub fn new(group: Arc<dyn MsiInterruptGroup>) -> Result<Self, MsixError> {
        let n = group.len();
        if n == 0 || n > 2048 {
            return Err(MsixError::BadVectorCount(n));
        }
        let n = usize::from(n);
        let mut table = vec![0u8; n * ENTRY_SIZE];
        for e in table.chunks_mut(ENTRY_SIZE) {
            e[12] = 1;
        }
        Ok(MsixConfig {
            table,
            pba: vec![0; n.div_ceil(64)],
            enabled: false,
            function_masked: false,
            group,
        })
    }

    /// Add the MSI-X capability to `config`: table at `table_offset` in BAR
    /// `table_bar`, PBA at `pba_offset` in BAR `pba_bar` (offsets 8-byte
    /// aligned). The message-control enable and function-mask bits are
    /// made writable. Returns the capability's offset.
    pub fn add_capability(
        &self,
        config: &mut PciConfiguration,
        table_bar: u8,
        table_offset: u32,
        pba_bar: u8,
        pba_offset: u32,
    ) -> Result<usize, MsixError> {
        let ctrl = self.vectors() - 1;
        let mut body = Vec::with_capacity(10);
        body.extend_from_slice(&ctrl.to_le_bytes());
        body.extend_from_slice(&((table_offset & !7) | u32::from(table_bar & 7)).to_le_bytes());
        body.extend_from_slice(&((pba_offset & !7) | u32::from(pba_bar & 7)).to_le_bytes());
        let off = config.add_capability(CAP_ID_MSIX, &body)?;
        config.set_writable(off / 4, u32::from(CTRL_ENABLE | CTRL_FUNCTION_MASK) << 16);
        Ok(off)
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        u16::try_from(self.table.len() / ENTRY_SIZE).unwrap_or(u16::MAX)
    }

    /// Table size in bytes.
    pub fn table_size(&self) -> u64 {
        self.table.len() as u64
    }

    /// PBA size in bytes.
    pub fn pba_size(&self) -> u64 {
        (self.pba.len() * 8) as u64
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the function mask is set.
    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    fn entry_u32(&self, v: usize, field: usize) -> u32 {
        let o = v * ENTRY_SIZE + field * 4;
        self.table
            .get(o..o + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .unwrap_or(0)
    }

    /// Vector `v`'s programmed message.
    pub fn message(&self, v: u16) -> MsiMessage {
        let v = usize::from(v);
        MsiMessage {
            address: u64::from(self.entry_u32(v, 0)) | (u64::from(self.entry_u32(v, 1)) << 32),
            data: self.entry_u32(v, 2),
        }
    }

    /// Whether vector `v` is masked by its own mask bit.
    pub fn vector_masked(&self, v: u16) -> bool {
        self.entry_u32(usize::from(v), 3) & 1 != 0
    }

    fn effectively_masked(&self, v: u16) -> bool {
        !self.enabled || self.function_masked || self.vector_masked(v)
    }

    /// Whether vector `v`'s pending bit is set.
    pub fn pending(&self, v: u16) -> bool {
        let v = usize::from(v);
        self.pba
            .get(v / 64)
            .is_some_and(|w| w & (1 << (v % 64)) != 0)
    }

    fn set_pending(&mut self, v: u16, on: bool) {
        let v = usize::from(v);
        if let Some(w) = self.pba.get_mut(v / 64) {
            if on {
                *w |= 1 << (v % 64);
            } else {
                *w &= !(1 << (v % 64));
            }
        }
    }

    /// Push vector `v`'s route to the interrupt back end and deliver it if
    /// it is pending and now unmasked.
    fn sync_vector(&mut self, v: u16) {
        let masked = self.effectively_masked(v);
        if let Err(e) = self.group.update(v, self.message(v), masked) {
            log::warn!("MSI-X vector {v}: route update failed: {e}");
        }
        if !masked && self.pending(v) {
            self.set_pending(v, false);
            if let Err(e) = self.group.trigger(v) {
                log::warn!("MSI-X vector {v}: {e}");
            }
        }
    }

    /// The guest wrote the capability's message control word.
    pub fn set_control(&mut self, ctrl: u16) {
        let enabled = ctrl & CTRL_ENABLE != 0;
        let fmask = ctrl & CTRL_FUNCTION_MASK != 0;
        if enabled == self.enabled && fmask == self.function_masked {
            return;
        }
        self.enabled = enabled;
        self.function_masked = fmask;
        for v in 0..self.vectors() {
            self.sync_vector(v);
        }
    }

    /// Guest read in the table region (any size, any offset; outside reads 0).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        read_bytes(&self.table, offset, data);
    }

    /// Guest write in the table region.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        let Some(end) = start.checked_add(data.len()) else {
            return;
        };
        if end > self.table.len() || data.is_empty() {
            return;
        }
        // Only the mask bit of the vector-control word is writable.
        let before: Vec<u8> = self.table[start..end].to_vec();
        self.table[start..end].copy_from_slice(data);
        for v in (start / ENTRY_SIZE)..=((end - 1) / ENTRY_SIZE) {
            let c = v * ENTRY_SIZE + 12;
            self.table[c] &= 1;
            self.table[c + 1..c + 4].fill(0);
        }
        if before != self.table[start..end] {
            for v in (start / ENTRY_SIZE)..=((end - 1) / ENTRY_SIZE) {
                if let Ok(v) = u16::try_from(v) {
                    self.sync_vector(v);
                }
            }
        }
    }

    /// Guest read in the PBA region.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        let bytes: Vec<u8> = self.pba.iter().flat_map(|w| w.to_le_bytes()).collect();
        read_bytes(&bytes, offset, data);
    }

    /// Raise vector `v` from the device: delivered now, or left pending if masked.
    pub fn trigger(&mut self, v: u16) {
        if v >= self.vectors() {
            return;
        }
        if self.effectively_masked(v) {
            self.set_pending(v, true);
        } else if let Err(e) = self.group.trigger(v) {
            log::warn!("MSI-X vector {v}: {e}");
        }
    }

    /// The interrupt group (for [`MsiInterruptGroup::notifier`]).
    pub fn group(&self) -> &Arc<dyn MsiInterruptGroup> {
        &self.group
    }
}

fn read_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= src.len() {
        return;
    }
    let n = data.len().min(src.len() - start);
    data[..n].copy_from_slice(&src[start..start + n]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::test_utils::FakeMsiGroup;
    use crate::pci::configuration::PciIds;

    #[test]
    fn mask_pending_and_delivery() {
        let g = FakeMsiGroup::new(3);
        let mut m = MsixConfig::new(g.clone()).unwrap();
        // Program vector 1: address 0xFEE00000, data 0x41, unmasked.
        m.write_table(16, &0xFEE0_0000u32.to_le_bytes());
        m.write_table(20, &0u32.to_le_bytes());
        m.write_table(24, &0x41u32.to_le_bytes());
        m.write_table(28, &0u32.to_le_bytes());
        assert!(!m.vector_masked(1));
        // Not enabled yet: the trigger stays pending.
        m.trigger(1);
        assert!(m.pending(1));
        assert!(g.fired.lock().unwrap().is_empty());
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 0b10);
        // Enable with function mask: still pending.
        m.set_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        assert!(m.pending(1));
        // Clear the function mask: delivered once.
        m.set_control(CTRL_ENABLE);
        assert!(!m.pending(1));
        assert_eq!(*g.fired.lock().unwrap(), vec![1]);
        assert_eq!(
            g.routes.lock().unwrap()[1],
            (
                MsiMessage {
                    address: 0xFEE0_0000,
                    data: 0x41
                },
                false
            )
        );
        m.trigger(1);
        assert_eq!(*g.fired.lock().unwrap(), vec![1, 1]);
        // Vector 0 is masked: pending, then delivered when unmasked.
        m.trigger(0);
        assert!(m.pending(0));
        m.write_table(12, &[0]);
        assert_eq!(*g.fired.lock().unwrap(), vec![1, 1, 0]);
        // Out-of-range trigger and accesses are ignored.
        m.trigger(7);
        m.write_table(1000, &[1, 2, 3]);
        let mut d = [0xAAu8; 8];
        m.read_table(44, &mut d);
        assert_eq!(d, [1, 0, 0, 0, 0, 0, 0, 0]);
        // Reserved vector-control bits stay zero.
        m.write_table(28, &0xFFFF_FFFEu32.to_le_bytes());
        let mut c = [0u8; 4];
        m.read_table(28, &mut c);
        assert_eq!(u32::from_le_bytes(c), 0);
    }

    #[test]
    fn capability_layout() {
        let g = FakeMsiGroup::new(4);
        let m = MsixConfig::new(g).unwrap();
        let mut c = PciConfiguration::new(PciIds::default());
        let off = m.add_capability(&mut c, 1, 0, 1, 0x800).unwrap();
        assert_eq!(c.read_reg(off / 4), 0x0003_0011);
        assert_eq!(c.read_reg(off / 4 + 1), 1);
        assert_eq!(c.read_reg(off / 4 + 2), 0x801);
        c.write_reg(off / 4, 2, &0xFFFFu16.to_le_bytes());
        assert_eq!(c.read_reg(off / 4) >> 16, 0xC003);
        assert!(MsixConfig::new(FakeMsiGroup::new(0)).is_err());
    }
}
