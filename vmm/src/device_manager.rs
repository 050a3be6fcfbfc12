//! Builds the "pc" platform and is where every device is plugged in.
//!
//! Adding a PCI device (what virtio-pci does):
//! 1. Reserve BAR space: [`DeviceManager::allocate_mmio32`],
//!    [`allocate_mmio64`](DeviceManager::allocate_mmio64) or
//!    [`allocate_io`](DeviceManager::allocate_io) (size = alignment, a power of two).
//! 2. Get interrupts: `dm.interrupt_manager().create_msi_group(n)` gives an
//!    `Arc<dyn MsiInterruptGroup>` (one GSI + irqfd per vector; hand it to
//!    `MsixConfig::new`); `notifier(v)` gives the irqfd to write from a
//!    queue handler on the event loop.
//! 3. Doorbells: `dm.ioevents().register_ioevent(&fd, IoEventAddress::Mmio(addr), DataMatch::U16(q))`;
//!    re-register in `PciDevice::bar_moved` when the guest moves the BAR.
//! 4. Build the device with `PciConfiguration::add_bar(i, info, addr)` and
//!    call [`add_pci_device`](DeviceManager::add_pci_device); it maps the BARs.
//! 5. Event-loop work: [`add_subscriber`](DeviceManager::add_subscriber).

use std::io::Write;
use std::sync::{Arc, Mutex};

use devices::acpi::Piix4Pm;
use devices::bus::{Bus, BusError};
use devices::interrupt::{InterruptError, InterruptManager, IoEventRegistrar};
use devices::legacy::{
    cmos, debug_exit, i8042, port92, serial, Cmos, DebugExit, DebugPort, Port92, Serial, I8042,
};
use devices::lifecycle::ExitHandler;
use devices::pci::intx::{IntxRouter, Piix3IsaBridge};
use devices::pci::root::{ConfigOnlyFunction, PciRootError, CONFIG_ADDRESS_PORT, CONFIG_IO_LEN};
use devices::pci::{PciAddress, PciDevice, PciRoot};
use event_manager::MutEventSubscriber;
use kvm_ioctls::VmFd;

use crate::allocator::{AddressAllocator, AllocError};
use crate::arch::x86_64::layout;
use crate::stop::StopFlag;
use crate::vstate::vm::KvmInterrupts;

/// Event-loop subscriber handle.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Device set-up errors.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Bus conflict.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// Interrupt back end.
    #[error("interrupts: {0}")]
    Interrupt(#[from] InterruptError),
    /// PCI.
    #[error("PCI: {0}")]
    Pci(#[from] PciRootError),
    /// A device could not be built.
    #[error("{0}")]
    Device(String),
    /// Address space exhausted.
    #[error("allocating: {0}")]
    Alloc(#[from] AllocError),
}

/// All devices of one VM.
pub struct DeviceManager {
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    interrupts: Arc<KvmInterrupts>,
    pci: Arc<Mutex<PciRoot>>,
    serial: Arc<Mutex<Serial>>,
    intx: IntxRouter,
    io_alloc: Mutex<AddressAllocator>,
    mmio32_alloc: Mutex<AddressAllocator>,
    mmio64_alloc: Mutex<AddressAllocator>,
    subscribers: Vec<Subscriber>,
}

impl std::fmt::Debug for DeviceManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceManager")
            .field("pio", &self.pio)
            .field("mmio", &self.mmio)
            .finish()
    }
}

/// Wrap a device for a bus.
fn shared<T: devices::bus::BusDevice + 'static>(d: T) -> Arc<Mutex<T>> {
    Arc::new(Mutex::new(d))
}

impl DeviceManager {
    /// The legacy platform and PCI bus 0 with the i440FX/PIIX functions.
    /// `cmos` outlives reboots (its NVRAM survives a guest reset).
    pub fn new(
        vm: Arc<VmFd>,
        cmos: Arc<Mutex<Cmos>>,
        serial_out: Box<dyn Write + Send>,
        stop: Arc<StopFlag>,
        memory: u64,
    ) -> Result<Self, DeviceError> {
        let interrupts = Arc::new(KvmInterrupts::new(vm)?);
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let exit: Arc<dyn ExitHandler> = stop;

        let serial = shared(Serial::new(interrupts.line(serial::COM1_IRQ)?, serial_out));
        pio.insert(serial.clone(), serial::COM1_PORT, 8)?;
        pio.insert(cmos, cmos::CMOS_PORT, 2)?;
        let kbd = I8042::new(exit.clone()).with_irq(interrupts.line(i8042::KBD_IRQ)?);
        pio.insert(shared(kbd), i8042::I8042_DATA, 5)?;
        pio.insert(shared(Port92::new(exit.clone())), port92::PORT92, 1)?;
        pio.insert(
            shared(DebugExit::new(exit.clone())),
            debug_exit::DEBUG_EXIT_PORT,
            1,
        )?;
        pio.insert(shared(DebugPort::post_codes()), 0x80, 1)?;
        pio.insert(
            shared(devices::acpi::pm::Gpe0::default()),
            devices::acpi::pm::GPE0_BASE,
            devices::acpi::pm::GPE0_LEN,
        )?;
        pio.insert(shared(DebugPort::console(None)), 0x402, 1)?;

        let mut root = PciRoot::new(pio.clone(), mmio.clone(), exit.clone());
        root.add_device(
            Some(PciAddress {
                device: 0,
                function: 0,
            }),
            Arc::new(Mutex::new(ConfigOnlyFunction::i440fx_host_bridge())),
        )?;
        let isa = Piix3IsaBridge::new();
        let intx = IntxRouter::new(isa.routes(), interrupts.clone());
        root.add_device(
            Some(PciAddress {
                device: 1,
                function: 0,
            }),
            Arc::new(Mutex::new(isa)),
        )?;
        let pm = Piix4Pm::new(
            pio.clone(),
            Some(interrupts.line(u32::from(devices::acpi::pm::SCI_IRQ))?),
            exit.clone(),
            Some(layout::PM_IO_BASE),
        );
        root.add_device(
            Some(PciAddress {
                device: 1,
                function: 3,
            }),
            Arc::new(Mutex::new(pm)),
        )?;
        let pci = Arc::new(Mutex::new(root));
        pio.insert(pci.clone(), CONFIG_ADDRESS_PORT, CONFIG_IO_LEN)?;

        let mmio64 = layout::mmio64_start(memory);
        Ok(DeviceManager {
            pio,
            mmio,
            interrupts,
            pci,
            serial,
            intx,
            io_alloc: Mutex::new(AddressAllocator::new(
                layout::PCI_IO_START,
                layout::PCI_IO_END,
            )),
            mmio32_alloc: Mutex::new(AddressAllocator::new(
                layout::MMIO32_START,
                layout::MMIO32_END,
            )),
            mmio64_alloc: Mutex::new(AddressAllocator::new(mmio64, mmio64 + layout::MMIO64_SIZE)),
            subscribers: Vec::new(),
        })
    }

    /// COM1.
    pub fn serial(&self) -> &Arc<Mutex<Serial>> {
        &self.serial
    }

    /// Reserve `size` bytes of PCI port space (size-aligned).
    pub fn allocate_io(&self, size: u64) -> Result<u64, DeviceError> {
        Ok(self
            .io_alloc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allocate(size, size)?)
    }

    /// Reserve `size` bytes below 4 GiB (size-aligned).
    pub fn allocate_mmio32(&self, size: u64) -> Result<u64, DeviceError> {
        Ok(self
            .mmio32_alloc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allocate(size, size)?)
    }

    /// Reserve `size` bytes above RAM (size-aligned).
    pub fn allocate_mmio64(&self, size: u64) -> Result<u64, DeviceError> {
        Ok(self
            .mmio64_alloc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allocate(size, size)?)
    }

    /// A fresh GSI (for devices that manage routes themselves).
    pub fn allocate_gsi(&self) -> Result<u32, DeviceError> {
        Ok(self.interrupts.routes().allocate_gsi()?)
    }

    /// MSI groups and wired lines.
    pub fn interrupt_manager(&self) -> Arc<dyn InterruptManager> {
        self.interrupts.clone()
    }

    /// ioeventfd registration.
    pub fn ioevents(&self) -> Arc<dyn IoEventRegistrar> {
        self.interrupts.clone()
    }

    /// Put `dev` on PCI bus 0 (next free slot from 00:02.0) and map its BARs.
    pub fn add_pci_device(
        &self,
        dev: Arc<Mutex<dyn PciDevice>>,
    ) -> Result<PciAddress, DeviceError> {
        Ok(self
            .pci
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add_device(None, dev)?)
    }

    /// Same, at a chosen address (multi-function devices).
    pub fn add_pci_device_at(
        &self,
        addr: PciAddress,
        dev: Arc<Mutex<dyn PciDevice>>,
    ) -> Result<PciAddress, DeviceError> {
        Ok(self
            .pci
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add_device(Some(addr), dev)?)
    }

    /// Add the pci-testdev function (BARs in the MMIO32 and I/O windows,
    /// 2 MSI-X vectors, doorbell served on the event loop).
    pub fn add_pci_testdev(&mut self) -> Result<PciAddress, DeviceError> {
        use devices::pci::testdev::{self, PciTestDev, TestDevBars};
        let bars = TestDevBars {
            regs: self.allocate_mmio32(testdev::REG_BAR_SIZE)?,
            msix: self.allocate_mmio32(testdev::MSIX_BAR_SIZE)?,
            io: self.allocate_io(testdev::IO_BAR_SIZE)?,
        };
        let group = self.interrupts.create_msi_group(testdev::VECTORS)?;
        let mut dev = PciTestDev::new(bars, group, self.ioevents())
            .map_err(|e| DeviceError::Device(e.to_string()))?;
        if let Some(h) = dev.doorbell_handler() {
            self.add_subscriber(Arc::new(Mutex::new(DoorbellSubscriber(h))));
        }
        let slot = self
            .pci
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .free_slot()
            .ok_or(PciRootError::NoSlot)?;
        let (line, irq) = self.intx_line(slot, 1);
        dev.set_intx(line, irq);
        self.add_pci_device_at(
            PciAddress {
                device: slot,
                function: 0,
            },
            Arc::new(Mutex::new(dev)),
        )
    }

    /// The INTx line of `slot`/`pin` (1 = INTA#) through the PIIX3 PIRQ
    /// routes, and the IRQ it routes to now (for the interrupt line register).
    pub fn intx_line(&self, slot: u8, pin: u8) -> (Arc<dyn devices::interrupt::InterruptLine>, u8) {
        let irq = self
            .intx
            .routed_irq(IntxRouter::pirq_index(slot, pin))
            .and_then(|g| u8::try_from(g).ok())
            .unwrap_or(0xFF);
        (self.intx.line(slot, pin), irq)
    }

    /// Send PCI INTx for PIRQ A-D straight to these IOAPIC GSIs instead of
    /// through the PIIX3 route registers (use with ACPI tables whose `_PRT`
    /// names GSIs, e.g. 16-19). Call before adding devices so their
    /// interrupt line registers and the MP table agree.
    pub fn set_intx_direct_gsis(&self, gsis: [u32; 4]) {
        self.intx.set_direct_gsis(gsis);
    }

    /// The GSI PIRQ `n` (0 = A) reaches now.
    pub fn pirq_gsi(&self, n: u8) -> Option<u32> {
        self.intx.routed_irq(n)
    }

    /// INTx wiring of the PCI functions in slots 2-31 for the MP table.
    pub fn pci_intx_routes(&self) -> Vec<crate::arch::x86_64::mptable::PciIntx> {
        let pins = self
            .pci
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .intx_pins();
        pins.into_iter()
            .filter_map(|(slot, pin)| {
                let irq = self.intx.routed_irq(IntxRouter::pirq_index(slot, pin))?;
                let irq = u8::try_from(irq).ok()?;
                Some(crate::arch::x86_64::mptable::PciIntx { slot, pin, irq })
            })
            .collect()
    }

    /// Run `sub` on the event loop (added when the VM starts).
    pub fn add_subscriber(&mut self, sub: Subscriber) {
        self.subscribers.push(sub);
    }

    /// Subscribers to add to the event manager.
    pub fn take_subscribers(&mut self) -> Vec<Subscriber> {
        std::mem::take(&mut self.subscribers)
    }
}

/// Serves the pci-testdev doorbell on the event loop.
struct DoorbellSubscriber(devices::pci::testdev::DoorbellHandler);

impl MutEventSubscriber for DoorbellSubscriber {
    fn process(&mut self, _events: event_manager::Events, _ops: &mut event_manager::EventOps) {
        self.0.handle();
    }

    fn init(&mut self, ops: &mut event_manager::EventOps) {
        let ev = event_manager::Events::new(&self.0.doorbell, vmm_sys_util::epoll::EventSet::IN);
        if let Err(e) = ops.add(ev) {
            log::warn!("pci-testdev doorbell: {e:?}");
        }
    }
}
