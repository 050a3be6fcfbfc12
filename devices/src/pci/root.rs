//! PCI bus 0 behind configuration mechanism #1 (0xCF8 address, 0xCFC
//! data), plus the PIIX3 reset control register at 0xCF9.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::bus::{Bus, BusDevice};
use crate::lifecycle::{ExitHandler, ExitReason};
use crate::pci::configuration::{BarKind, BarMove, NUM_BARS};
use crate::pci::device::PciDevice;

/// I/O port of the configuration address register.
pub const CONFIG_ADDRESS_PORT: u64 = 0xCF8;
/// Length of the 0xCF8..0xCFF block.
pub const CONFIG_IO_LEN: u64 = 8;

/// A function's address on bus 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PciAddress {
    /// Device (slot) 0..32.
    pub device: u8,
    /// Function 0..8.
    pub function: u8,
}

impl PciAddress {
    fn devfn(self) -> u8 {
        (self.device << 3) | self.function
    }
}

impl std::fmt::Display for PciAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "00:{:02x}.{}", self.device, self.function)
    }
}

/// Errors from adding PCI functions.
#[derive(Debug, thiserror::Error)]
pub enum PciRootError {
    /// The slot/function is taken or out of range.
    #[error("PCI address {0} is taken or invalid")]
    AddressInUse(PciAddress),
    /// All 32 slots are used.
    #[error("no free PCI slot")]
    NoSlot,
    /// A BAR could not be mapped on its bus.
    #[error("mapping BAR {bar} of {addr}: {source}")]
    Bar {
        /// Function.
        addr: PciAddress,
        /// BAR index.
        bar: usize,
        /// Why.
        source: crate::bus::BusError,
    },
}

/// One BAR of a function as a bus device.
struct BarWindow {
    dev: Arc<Mutex<dyn PciDevice>>,
    bar: usize,
}

impl BusDevice for BarWindow {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        self.dev
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read_bar(self.bar, offset, data);
    }
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        self.dev
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_bar(self.bar, offset, data);
    }
}

/// Bus 0 and the 0xCF8-0xCFF port block.
pub struct PciRoot {
    address: u32,
    reset_control: u8,
    functions: BTreeMap<u8, Arc<Mutex<dyn PciDevice>>>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: Arc<dyn ExitHandler>,
}

impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciRoot")
            .field("address", &self.address)
            .field("functions", &self.functions.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PciRoot {
    /// An empty bus 0 whose BARs live on `pio` and `mmio`; 0xCF9 resets go to `exit`.
    pub fn new(pio: Arc<Bus>, mmio: Arc<Bus>, exit: Arc<dyn ExitHandler>) -> Self {
        PciRoot {
            address: 0,
            reset_control: 0,
            functions: BTreeMap::new(),
            pio,
            mmio,
            exit,
        }
    }

    /// (slot, interrupt pin) of every function in slots 2-31 that has an
    /// INTx pin (for the firmware/MP tables' routing entries).
    pub fn intx_pins(&self) -> Vec<(u8, u8)> {
        let mut v: Vec<(u8, u8)> = self
            .functions
            .iter()
            .filter(|(devfn, _)| *devfn >> 3 >= 2)
            .filter_map(|(devfn, d)| {
                let pin = d
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .config()
                    .interrupt_pin();
                (1..=4).contains(&pin).then_some((devfn >> 3, pin))
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The first slot with no function 0, from slot 2 on.
    pub fn free_slot(&self) -> Option<u8> {
        (2u8..32).find(|s| !self.functions.contains_key(&(s << 3)))
    }

    /// Add a function at `addr` (or function 0 of the next free slot) and
    /// map its BARs where its configuration says they are.
    pub fn add_device(
        &mut self,
        addr: Option<PciAddress>,
        dev: Arc<Mutex<dyn PciDevice>>,
    ) -> Result<PciAddress, PciRootError> {
        let addr = match addr {
            Some(a) => a,
            None => PciAddress {
                device: self.free_slot().ok_or(PciRootError::NoSlot)?,
                function: 0,
            },
        };
        if addr.device >= 32 || addr.function >= 8 || self.functions.contains_key(&addr.devfn()) {
            return Err(PciRootError::AddressInUse(addr));
        }
        let bars: Vec<(usize, BarKind, u64, u64)> = {
            let d = dev.lock().unwrap_or_else(|e| e.into_inner());
            (0..NUM_BARS)
                .filter_map(|i| {
                    let info = d.config().bar(i)?;
                    Some((i, info.kind, d.config().bar_mapped(i)?, info.size))
                })
                .collect()
        };
        let mut mapped: Vec<(BarKind, u64)> = Vec::new();
        for (bar, kind, base, size) in bars {
            let window = Arc::new(Mutex::new(BarWindow {
                dev: dev.clone(),
                bar,
            }));
            let bus = if kind == BarKind::Io {
                &self.pio
            } else {
                &self.mmio
            };
            if let Err(source) = bus.insert(window, base, size) {
                for (k, b) in mapped {
                    let bus = if k == BarKind::Io {
                        &self.pio
                    } else {
                        &self.mmio
                    };
                    let _ = bus.remove(b);
                }
                return Err(PciRootError::Bar { addr, bar, source });
            }
            mapped.push((kind, base));
        }
        self.functions.insert(addr.devfn(), dev);
        Ok(addr)
    }

    fn selected(&self) -> Option<(Arc<Mutex<dyn PciDevice>>, usize)> {
        if self.address & 0x8000_0000 == 0 {
            return None;
        }
        let bus = (self.address >> 16) & 0xFF;
        if bus != 0 {
            return None;
        }
        let devfn = ((self.address >> 8) & 0xFF) as u8;
        let reg = ((self.address >> 2) & 0x3F) as usize;
        self.functions.get(&devfn).map(|d| (d.clone(), reg))
    }

    /// Config read of `reg` for the function `devfn` (tests and tools).
    pub fn config_read(&self, devfn: u8, reg: usize) -> u32 {
        match self.functions.get(&devfn) {
            Some(d) => d.lock().unwrap_or_else(|e| e.into_inner()).read_config(reg),
            None => 0xFFFF_FFFF,
        }
    }

    fn carry_out(&self, dev: &Arc<Mutex<dyn PciDevice>>, mv: BarMove) {
        let bus = if mv.kind == BarKind::Io {
            &self.pio
        } else {
            &self.mmio
        };
        match bus.relocate(mv.old, mv.new) {
            Ok(()) => {
                let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
                d.config_mut().set_bar_mapped(mv.bar, mv.new);
                d.bar_moved(&mv);
            }
            Err(e) => {
                // Stays mapped at the old place until a later write
                // (e.g. the other half of a 64-bit BAR) makes it fit.
                log::debug!(
                    "BAR {} move {:#x} -> {:#x} deferred: {e}",
                    mv.bar,
                    mv.old,
                    mv.new
                );
            }
        }
    }

    fn data_read(&self, offset: u64, data: &mut [u8]) {
        let Some((dev, reg)) = self.selected() else {
            data.fill(0xFF);
            return;
        };
        let v = dev
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read_config(reg);
        let bytes = v.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| bytes.get(o + i))
                .copied()
                .unwrap_or(0xFF);
        }
    }

    fn data_write(&self, offset: u64, data: &[u8]) {
        let Some((dev, reg)) = self.selected() else {
            return;
        };
        if offset + data.len() as u64 > 4 {
            return;
        }
        let mv = dev
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_config(reg, offset, data);
        if let Some(mv) = mv {
            self.carry_out(&dev, mv);
        }
    }
}

impl BusDevice for PciRoot {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.address.to_le_bytes()),
            (1, 1) => data[0] = self.reset_control,
            (4..=7, _) => self.data_read(offset - 4, data),
            _ => data.fill(0xFF),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 4) => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                self.address = u32::from_le_bytes(b) & 0x80FF_FFFC;
            }
            (1, 1) => {
                // PIIX3 reset control: bit 2 starts the reset (bit 1 picks hard/soft).
                let v = data[0];
                if v & 0x04 != 0 && self.reset_control & 0x04 == 0 {
                    self.exit.request_exit(ExitReason::Reset);
                }
                self.reset_control = v & 0x0A;
            }
            (4..=7, _) => self.data_write(offset - 4, data),
            _ => {}
        }
    }
}

/// A function with only a configuration space (host bridge, ISA bridge).
#[derive(Debug)]
pub struct ConfigOnlyFunction {
    config: crate::pci::PciConfiguration,
}

impl ConfigOnlyFunction {
    /// Wrap a configuration.
    pub fn new(config: crate::pci::PciConfiguration) -> Self {
        ConfigOnlyFunction { config }
    }

    /// i440FX host bridge, 8086:1237.
    pub fn i440fx_host_bridge() -> Self {
        Self::new(crate::pci::PciConfiguration::new(crate::pci::PciIds {
            vendor: 0x8086,
            device: 0x1237,
            class: 0x06_00_00,
            revision: 0x02,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
            header_type: 0,
        }))
    }
}

impl PciDevice for ConfigOnlyFunction {
    fn config(&self) -> &crate::pci::PciConfiguration {
        &self.config
    }
    fn config_mut(&mut self) -> &mut crate::pci::PciConfiguration {
        &mut self.config
    }
    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xFF);
    }
    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::test_utils::RecordingExit;
    use crate::pci::{BarInfo, PciConfiguration, PciIds};
    use proptest::prelude::*;

    struct TestDev {
        config: PciConfiguration,
        reads: Vec<(usize, u64)>,
        moved: Vec<BarMove>,
    }

    impl PciDevice for TestDev {
        fn config(&self) -> &PciConfiguration {
            &self.config
        }
        fn config_mut(&mut self) -> &mut PciConfiguration {
            &mut self.config
        }
        fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            self.reads.push((bar, offset));
            data.fill(0x5A);
        }
        fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
        fn bar_moved(&mut self, mv: &BarMove) {
            self.moved.push(*mv);
        }
    }

    #[allow(clippy::type_complexity)]
    fn setup() -> (
        Bus,
        Arc<Bus>,
        Arc<Mutex<PciRoot>>,
        Arc<Mutex<TestDev>>,
        Arc<RecordingExit>,
    ) {
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let exit = Arc::new(RecordingExit::default());
        let mut root = PciRoot::new(pio.clone(), mmio.clone(), exit.clone());
        root.add_device(
            Some(PciAddress {
                device: 0,
                function: 0,
            }),
            Arc::new(Mutex::new(ConfigOnlyFunction::i440fx_host_bridge())),
        )
        .unwrap();
        let mut config = PciConfiguration::new(PciIds {
            vendor: 0x1234,
            device: 0x11,
            ..Default::default()
        });
        config
            .add_bar(
                0,
                BarInfo {
                    kind: BarKind::Mem32,
                    size: 0x1000,
                    prefetchable: false,
                },
                0xE000_0000,
            )
            .unwrap();
        let dev = Arc::new(Mutex::new(TestDev {
            config,
            reads: vec![],
            moved: vec![],
        }));
        let a = root.add_device(None, dev.clone()).unwrap();
        assert_eq!(
            a,
            PciAddress {
                device: 2,
                function: 0
            }
        );
        let root = Arc::new(Mutex::new(root));
        let ports = Bus::new();
        ports
            .insert(root.clone(), CONFIG_ADDRESS_PORT, CONFIG_IO_LEN)
            .unwrap();
        (ports, mmio, root, dev, exit)
    }

    fn cfg_read(ports: &Bus, devfn: u32, off: u32) -> u32 {
        ports.write(0xCF8, &(0x8000_0000 | (devfn << 8) | off).to_le_bytes());
        let mut b = [0u8; 4];
        ports.read(0xCFC, &mut b);
        u32::from_le_bytes(b)
    }

    fn cfg_write(ports: &Bus, devfn: u32, off: u32, v: u32) {
        ports.write(0xCF8, &(0x8000_0000 | (devfn << 8) | off).to_le_bytes());
        ports.write(0xCFC, &v.to_le_bytes());
    }

    #[test]
    fn enumerate_probe_and_move() {
        let (ports, mmio, _root, dev, _) = setup();
        assert_eq!(cfg_read(&ports, 0, 0), 0x1237_8086);
        assert_eq!(cfg_read(&ports, 8, 0), 0xFFFF_FFFF);
        assert_eq!(cfg_read(&ports, 16, 0), 0x0011_1234);
        // Byte read of the device ID's high byte via 0xCFE.
        let mut b = [0u8; 1];
        ports.read(0xCFE, &mut b);
        assert_eq!(b[0], 0x11);
        cfg_write(&ports, 16, 0x10, 0xFFFF_FFFF);
        assert_eq!(cfg_read(&ports, 16, 0x10), 0xFFFF_F000);
        cfg_write(&ports, 16, 0x10, 0xE000_0000);
        let mut d = [0u8; 4];
        assert!(mmio.read(0xE000_0010, &mut d));
        cfg_write(&ports, 16, 0x10, 0xE800_0000);
        assert!(!mmio.read(0xE000_0010, &mut d));
        assert!(mmio.read(0xE800_0010, &mut d));
        assert_eq!(d, [0x5A; 4]);
        let dv = dev.lock().unwrap();
        assert_eq!(dv.reads, vec![(0, 0x10), (0, 0x10)]);
        assert_eq!(dv.moved.len(), 1);
        assert_eq!(dv.moved[0].new, 0xE800_0000);
    }

    #[test]
    fn cf9_reset() {
        let (ports, _, _, _, exit) = setup();
        ports.write(0xCF9, &[0x02]);
        assert!(exit.0.lock().unwrap().is_empty());
        ports.write(0xCF9, &[0x06]);
        assert_eq!(*exit.0.lock().unwrap(), vec![ExitReason::Reset]);
    }

    proptest! {
        /// Random port accesses to 0xCF8-0xCFF never panic and never map
        /// the test BAR at an unaligned address.
        #[test]
        fn random_config_io(ops in proptest::collection::vec((0u64..8, prop_oneof![Just(1usize), Just(2), Just(4), Just(3)], any::<u32>(), any::<bool>()), 0..300)) {
            let (ports, mmio, _root, dev, _) = setup();
            for (off, len, val, is_write) in ops {
                if is_write {
                    let bytes = val.to_le_bytes();
                    ports.write(0xCF8 + off, &bytes[..len]);
                } else {
                    let mut d = vec![0u8; len];
                    ports.read(0xCF8 + off, &mut d);
                }
            }
            let at = dev.lock().unwrap().config.bar_mapped(0).unwrap();
            prop_assert_eq!(at & 0xFFF, 0);
            prop_assert_eq!(mmio.resolve(at).map(|r| r.0), Some(at));
            prop_assert_eq!(mmio.len(), 1);
        }
    }
}
