//! PC legacy devices at fixed I/O ports.

pub mod cmos;
pub mod debug_exit;
pub mod debug_port;
pub mod i8042;
pub mod port92;
pub mod serial;

pub use cmos::Cmos;
pub use debug_exit::DebugExit;
pub use debug_port::DebugPort;
pub use i8042::I8042;
pub use port92::Port92;
pub use serial::Serial;

#[cfg(test)]
mod platform_fuzz {
    //! Random guest accesses to the whole PC platform (legacy ports, the
    //! PCI root and its functions, BARs): nothing may panic, touch memory
    //! out of bounds, or corrupt the buses.
    use std::sync::{Arc, Mutex};

    use proptest::prelude::*;

    use super::*;
    use crate::acpi::Piix4Pm;
    use crate::bus::Bus;
    use crate::interrupt::test_utils::FakeMsiGroup;
    use crate::interrupt::{
        DataMatch, InterruptError, InterruptLine, IoEventAddress, IoEventRegistrar,
    };
    use crate::lifecycle::test_utils::RecordingExit;
    use crate::pci::intx::Piix3IsaBridge;
    use crate::pci::root::{ConfigOnlyFunction, PciRoot};
    use crate::pci::testdev::{PciTestDev, TestDevBars};
    use crate::pci::PciAddress;
    use vmm_sys_util::eventfd::EventFd;

    struct NoLine;
    impl InterruptLine for NoLine {
        fn trigger(&self) -> Result<(), InterruptError> {
            Ok(())
        }
        fn set_level(&self, _: bool) -> Result<(), InterruptError> {
            Ok(())
        }
    }
    struct NoIoEvents;
    impl IoEventRegistrar for NoIoEvents {
        fn register_ioevent(
            &self,
            _: &EventFd,
            _: IoEventAddress,
            _: DataMatch,
        ) -> Result<(), InterruptError> {
            Ok(())
        }
        fn unregister_ioevent(
            &self,
            _: &EventFd,
            _: IoEventAddress,
            _: DataMatch,
        ) -> Result<(), InterruptError> {
            Ok(())
        }
    }

    fn platform() -> (Arc<Bus>, Arc<Bus>, Arc<RecordingExit>) {
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let exit = Arc::new(RecordingExit::default());
        let line: Arc<dyn InterruptLine> = Arc::new(NoLine);
        pio.insert(
            Arc::new(Mutex::new(Serial::new(
                line.clone(),
                Box::new(std::io::sink()),
            ))),
            0x3F8,
            8,
        )
        .unwrap();
        pio.insert(Arc::new(Mutex::new(Cmos::new(64 << 20, 0))), 0x70, 2)
            .unwrap();
        pio.insert(Arc::new(Mutex::new(I8042::new(exit.clone()))), 0x60, 5)
            .unwrap();
        pio.insert(Arc::new(Mutex::new(Port92::new(exit.clone()))), 0x92, 1)
            .unwrap();
        pio.insert(Arc::new(Mutex::new(DebugExit::new(exit.clone()))), 0xF4, 1)
            .unwrap();
        pio.insert(Arc::new(Mutex::new(DebugPort::post_codes())), 0x80, 1)
            .unwrap();
        pio.insert(Arc::new(Mutex::new(DebugPort::console(None))), 0x402, 1)
            .unwrap();
        pio.insert(
            Arc::new(Mutex::new(crate::acpi::pm::Gpe0::default())),
            0xAFE0,
            4,
        )
        .unwrap();
        let mut root = PciRoot::new(pio.clone(), mmio.clone(), exit.clone());
        let at = |device, function| Some(PciAddress { device, function });
        root.add_device(
            at(0, 0),
            Arc::new(Mutex::new(ConfigOnlyFunction::i440fx_host_bridge())),
        )
        .unwrap();
        root.add_device(at(1, 0), Arc::new(Mutex::new(Piix3IsaBridge::new())))
            .unwrap();
        let pm = Piix4Pm::new(pio.clone(), Some(line.clone()), exit.clone(), Some(0x600));
        root.add_device(at(1, 3), Arc::new(Mutex::new(pm))).unwrap();
        let bars = TestDevBars {
            regs: 0xC000_0000,
            msix: 0xC000_1000,
            io: 0xC000,
        };
        let mut dev = PciTestDev::new(bars, FakeMsiGroup::new(2), Arc::new(NoIoEvents)).unwrap();
        dev.set_intx(line, 11);
        root.add_device(None, Arc::new(Mutex::new(dev))).unwrap();
        pio.insert(Arc::new(Mutex::new(root)), 0xCF8, 8).unwrap();
        (pio, mmio, exit)
    }

    fn port() -> impl Strategy<Value = u64> {
        prop_oneof![
            (0u64..0x10000),
            (0x3F8u64..0x400),
            (0x60u64..0x72),
            (0xCF8u64..0xD00),
            (0x600u64..0x640),
            (0xC000u64..0xC040),
            (0xAFE0u64..0xAFE8),
        ]
    }

    fn mmio_addr() -> impl Strategy<Value = u64> {
        prop_oneof![
            (0xC000_0000u64..0xC000_2100),
            any::<u64>(),
            (0xD000_0000u64..0xD000_1000)
        ]
    }

    fn size() -> impl Strategy<Value = usize> {
        prop_oneof![Just(1usize), Just(2), Just(4), Just(8), 0usize..16]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        #[test]
        fn random_platform_accesses(ops in proptest::collection::vec(
            (any::<bool>(), any::<bool>(), port(), mmio_addr(), size(), any::<u64>()), 0..400)) {
            let (pio, mmio, _exit) = platform();
            let pio_ranges = pio.len();
            for (is_pio, write, p, m, len, val) in ops {
                let (bus, addr) = if is_pio { (&pio, p) } else { (&mmio, m) };
                let bytes: Vec<u8> = val.to_le_bytes().iter().cycle().take(len).copied().collect();
                if write {
                    bus.write(addr, &bytes);
                } else {
                    let mut d = vec![0u8; len];
                    bus.read(addr, &mut d);
                }
            }
            // The PM block may have been moved or disabled, never duplicated.
            prop_assert!(pio.len() == pio_ranges || pio.len() == pio_ranges - 1);
            prop_assert!(mmio.len() == 2);
            // The host bridge still answers with its IDs.
            pio.write(0xCF8, &0x8000_0000u32.to_le_bytes());
            let mut id = [0u8; 4];
            pio.read(0xCFC, &mut id);
            prop_assert_eq!(u32::from_le_bytes(id), 0x1237_8086);
        }
    }
}
