//! Port-I/O and MMIO buses: address ranges mapped to devices, with overlap
//! checks, and dispatch of guest accesses.
//!
//! A [`Bus`] is shared (`Arc<Bus>`) between the vCPU threads and whoever
//! adds or moves devices (the device manager, or a PCI BAR being moved by
//! the guest). Dispatch clones the device's `Arc` out of the map under a
//! short read lock and calls the device with no bus lock held, so a device
//! may itself insert or remove ranges on the bus (BAR relocation) without
//! deadlocking.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device that answers guest reads and writes on one or more bus ranges.
///
/// `base` is the start of the range the access fell in and `offset` the
/// distance from it, so a device mapped at several ranges (PCI BARs) can
/// tell them apart. `data.len()` is the access size (1, 2, 4 or 8 bytes
/// for CPU accesses, anything for tests). Reads must fill all of `data`.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes at `base + offset`.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `base + offset`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// A device on a bus, shared with the bus.
pub type SharedBusDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors from bus updates.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps one already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps {other_base:#x}+{other_len:#x}")]
    Overlap {
        /// Start of the range that was refused.
        base: u64,
        /// Its length.
        len: u64,
        /// Start of the range already there.
        other_base: u64,
        /// Its length.
        other_len: u64,
    },
    /// A range of length zero, or one that wraps past the end of the address space.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Start of the range.
        base: u64,
        /// Its length.
        len: u64,
    },
    /// No range starts at this address.
    #[error("no device at {0:#x}")]
    NotFound(u64),
}

#[derive(Clone)]
struct Entry {
    len: u64,
    dev: SharedBusDevice,
}

/// An address space (port I/O or MMIO) of non-overlapping device ranges.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let map = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        f.debug_list()
            .entries(map.iter().map(|(b, e)| (*b, e.len)))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    fn check_range(base: u64, len: u64) -> Result<u64, BusError> {
        if len == 0 {
            return Err(BusError::InvalidRange { base, len });
        }
        base.checked_add(len - 1)
            .ok_or(BusError::InvalidRange { base, len })
    }

    /// Map `dev` at `[base, base + len)`. Fails if that overlaps any range on the bus.
    pub fn insert(&self, dev: SharedBusDevice, base: u64, len: u64) -> Result<(), BusError> {
        let last = Self::check_range(base, len)?;
        let mut map = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        // The closest range starting at or before our last byte is the only
        // one that can overlap (ranges on the bus never overlap each other).
        if let Some((&ob, oe)) = map.range(..=last).next_back() {
            if ob + (oe.len - 1) >= base {
                return Err(BusError::Overlap {
                    base,
                    len,
                    other_base: ob,
                    other_len: oe.len,
                });
            }
        }
        map.insert(base, Entry { len, dev });
        Ok(())
    }

    /// Remove the range that starts at `base`; returns its device and length.
    pub fn remove(&self, base: u64) -> Result<(SharedBusDevice, u64), BusError> {
        let mut map = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        map.remove(&base)
            .map(|e| (e.dev, e.len))
            .ok_or(BusError::NotFound(base))
    }

    /// Move the range at `old_base` to `new_base` (same device, same length).
    /// On overlap the range stays where it was.
    pub fn relocate(&self, old_base: u64, new_base: u64) -> Result<(), BusError> {
        let (dev, len) = self.remove(old_base)?;
        if let Err(e) = self.insert(dev.clone(), new_base, len) {
            // Put it back; this cannot fail since we just removed it.
            let _ = self.insert(dev, old_base, len);
            return Err(e);
        }
        Ok(())
    }

    /// The device whose range holds `addr`, with the range's base.
    pub fn resolve(&self, addr: u64) -> Option<(u64, SharedBusDevice)> {
        let map = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (&base, e) = map.range(..=addr).next_back()?;
        if addr - base < e.len {
            Some((base, e.dev.clone()))
        } else {
            None
        }
    }

    /// Dispatch a read. Returns false (and leaves `data` alone) if no device
    /// holds `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((base, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(base, addr - base, data);
                true
            }
            None => false,
        }
    }

    /// Dispatch a write. Returns false if no device holds `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((base, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(base, addr - base, data);
                true
            }
            None => false,
        }
    }

    /// Number of ranges on the bus.
    pub fn len(&self) -> usize {
        self.ranges.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether the bus has no ranges.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Default)]
    struct Recorder {
        last: Option<(u64, u64, Vec<u8>)>,
    }
    impl BusDevice for Recorder {
        fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = base
                    .wrapping_add(offset)
                    .wrapping_add(i as u64)
                    .to_le_bytes()[0];
            }
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.last = Some((base, offset, data.to_vec()));
        }
    }

    fn dev() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn overlap_is_refused_and_neighbours_are_fine() {
        let bus = Bus::new();
        bus.insert(dev(), 0x100, 0x10).unwrap();
        assert!(matches!(
            bus.insert(dev(), 0x10f, 1),
            Err(BusError::Overlap {
                other_base: 0x100,
                ..
            })
        ));
        assert!(matches!(
            bus.insert(dev(), 0xf0, 0x11),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(dev(), 0x0, 0x1000),
            Err(BusError::Overlap { .. })
        ));
        bus.insert(dev(), 0xf0, 0x10).unwrap();
        bus.insert(dev(), 0x110, 0x10).unwrap();
        assert_eq!(bus.len(), 3);
        assert_eq!(
            bus.insert(dev(), 5, 0),
            Err(BusError::InvalidRange { base: 5, len: 0 })
        );
        assert!(bus.insert(dev(), u64::MAX, 2).is_err());
        bus.insert(dev(), u64::MAX, 1).unwrap();
    }

    #[test]
    fn dispatch_passes_base_and_offset() {
        let bus = Bus::new();
        let d = dev();
        bus.insert(d.clone(), 0x3f8, 8).unwrap();
        assert!(bus.write(0x3fb, &[0x80]));
        assert_eq!(d.lock().unwrap().last, Some((0x3f8, 3, vec![0x80])));
        let mut b = [0u8; 2];
        assert!(bus.read(0x3f9, &mut b));
        assert_eq!(b, [0xf8u8.wrapping_add(1), 0xf8u8.wrapping_add(2)]);
        assert!(!bus.read(0x400, &mut b));
        assert!(!bus.write(0x3f7, &[0]));
    }

    #[test]
    fn relocate_moves_or_keeps() {
        let bus = Bus::new();
        let d = dev();
        bus.insert(d.clone(), 0x1000, 0x100).unwrap();
        bus.insert(dev(), 0x3000, 0x100).unwrap();
        bus.relocate(0x1000, 0x2000).unwrap();
        assert!(bus.resolve(0x1000).is_none());
        assert_eq!(bus.resolve(0x20ff).map(|r| r.0), Some(0x2000));
        assert!(bus.relocate(0x2000, 0x2f80).is_err());
        assert_eq!(bus.resolve(0x2000).map(|r| r.0), Some(0x2000));
        assert_eq!(bus.relocate(0x5000, 0), Err(BusError::NotFound(0x5000)));
    }

    proptest! {
        /// Random inserts never produce overlapping ranges, and every address
        /// resolves to the one range that holds it (checked against a model).
        #[test]
        fn random_inserts_match_model(ops in proptest::collection::vec((0u64..0x1000, 1u64..0x80), 1..60),
                                      probes in proptest::collection::vec(0u64..0x1100, 1..100)) {
            let bus = Bus::new();
            let mut model: Vec<(u64, u64)> = Vec::new();
            for (base, len) in ops {
                let overlaps = model.iter().any(|&(b, l)| base < b + l && b < base + len);
                let r = bus.insert(dev(), base, len);
                prop_assert_eq!(r.is_ok(), !overlaps);
                if !overlaps { model.push((base, len)); }
            }
            for p in probes {
                let want = model.iter().find(|&&(b, l)| p >= b && p < b + l).map(|&(b, _)| b);
                prop_assert_eq!(bus.resolve(p).map(|r| r.0), want);
                let mut d = [0u8; 4];
                prop_assert_eq!(bus.read(p, &mut d), want.is_some());
            }
        }
    }
}
