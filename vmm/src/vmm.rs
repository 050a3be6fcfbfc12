//! One boot of a VM: KVM set-up, devices, kernel load, vCPU threads and
//! the event loop, until something stops it.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::{bzimage, layout, mptable, pvh, regs};
use crate::config::VmConfig;
use crate::device_manager::{DeviceManager, Subscriber};
use crate::stop::{StopFlag, VmStop};
use crate::vstate::{hyperv, memory, vcpu, vm};
use crate::Error;

impl TryFrom<&VmConfig> for Vmm {
    type Error = Error;

    /// A VM whose COM1 writes to stdout, without signal handling and with
    /// fresh CMOS state: `Vmm::try_from(&config)?.run()`. (`arbiter run`
    /// uses [`Vmm::new`] to add `--serial`, signals and reboots.)
    fn try_from(config: &VmConfig) -> Result<Self, Error> {
        Vmm::new(
            config,
            Box::new(std::io::stdout()),
            None,
            &Persistent::new(config),
        )
    }
}

/// Machine state that survives a guest reset (CMOS NVRAM and clock offset).
#[derive(Debug)]
pub struct Persistent {
    /// CMOS/RTC.
    pub cmos: Arc<Mutex<devices::legacy::Cmos>>,
}

impl Persistent {
    /// Fresh state for `config`.
    pub fn new(config: &VmConfig) -> Self {
        let (below, above) = layout::ram_split(config.memory);
        Persistent {
            cmos: Arc::new(Mutex::new(devices::legacy::Cmos::new(below, above))),
        }
    }
}

/// A VM ready to run.
pub struct Vmm {
    // Field order is drop order: vCPU fds and the VM go before guest RAM.
    vcpus: Vec<VcpuFd>,
    devices: DeviceManager,
    vm: Arc<VmFd>,
    _kvm: Kvm,
    memory: GuestMemoryMmap,
    stop: Arc<StopFlag>,
    signal_evt: Option<EventFd>,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("vcpus", &self.vcpus.len())
            .finish()
    }
}

impl Vmm {
    /// Build the VM for `config`, with COM1 writing to `serial_out`.
    /// `signal_evt` (if any) becomes readable on SIGTERM/SIGINT.
    pub fn new(
        config: &VmConfig,
        serial_out: Box<dyn Write + Send>,
        signal_evt: Option<EventFd>,
        persistent: &Persistent,
    ) -> Result<Self, Error> {
        if !config.net.is_empty() {
            return Err(Error::NotImplemented("--net"));
        }
        let kvm = Kvm::new().map_err(vm::VmError::Kvm)?;
        if config.hyperv {
            hyperv::check_caps(&kvm).map_err(vm::VmError::Hyperv)?;
        }
        let memory = memory::create(config.memory)?;
        let vm = Arc::new(vm::create(&kvm, &memory)?);
        let stop = Arc::new(StopFlag::new().map_err(Error::Io)?);
        let devices = DeviceManager::new(
            vm.clone(),
            persistent.cmos.clone(),
            serial_out,
            stop.clone(),
            config.memory,
        )?;

        let mut devices = devices;
        if config.pci_testdev {
            devices.add_pci_testdev()?;
        }
        crate::scsi_config::add_controllers(
            &mut devices,
            &memory,
            &config.name,
            config.cpus,
            &config.scsi,
            &config.scsi_disks,
        )?;
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| vm::VmError::Ioctl {
                what: "KVM_GET_SUPPORTED_CPUID",
                source,
            })?;
        let mut vcpus = Vec::with_capacity(usize::from(config.cpus));
        for id in 0..config.cpus {
            let hv = config.hyperv.then_some(&kvm);
            vcpus.push(vcpu::create(
                &vm,
                id,
                config.cpus,
                &supported,
                None,
                hv,
                config.kvm_leaves,
            )?);
        }

        let platform = acpi_platform(config, &devices);
        crate::firmware::add_fw_cfg(config, &memory, &devices, platform.clone())?;
        if let Some(fw) = &config.firmware {
            // UEFI: OVMF runs from the reset vector (KVM's reset state) and
            // finds everything else through fw_cfg, --kernel included.
            crate::firmware::map_flash(fw, &vm, &devices)?;
            return Ok(Vmm {
                vcpus,
                devices,
                vm,
                _kvm: kvm,
                memory,
                stop,
                signal_evt,
            });
        }
        let kernel = config
            .kernel
            .as_deref()
            .ok_or(Error::NotImplemented("booting without --kernel"))?;
        let boot = &vcpus[0];
        let ioctl = |what| {
            move |source| vcpu::VcpuError::Ioctl {
                id: 0,
                what,
                source,
            }
        };
        let mut sregs = boot.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        mptable::write(&memory, config.cpus, &devices.pci_intx_routes())?;
        let rsdp = install_acpi(&memory, &platform)?;
        let regs = if pvh::is_elf(kernel) {
            let e = pvh::load(
                &memory,
                config.memory,
                kernel,
                config.initrd.as_deref(),
                &config.cmdline,
                Some(rsdp),
            )?;
            regs::setup_pvh_sregs(&memory, &mut sregs)?;
            regs::boot_regs(e.entry, 0, 0, e.start_info)
        } else {
            let e = bzimage::load(
                &memory,
                config.memory,
                kernel,
                config.initrd.as_deref(),
                &config.cmdline,
                Some(rsdp),
            )?;
            regs::setup_long_mode_sregs(&memory, &mut sregs)?;
            regs::boot_regs(e.entry, layout::BOOT_STACK_POINTER, e.zero_page, 0)
        };
        boot.set_sregs(&sregs).map_err(ioctl("KVM_SET_SREGS"))?;
        boot.set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;

        Ok(Vmm {
            vcpus,
            devices,
            vm,
            _kvm: kvm,
            memory,
            stop,
            signal_evt,
        })
    }

    /// The device manager (to add devices before [`run`](Self::run)).
    pub fn devices(&mut self) -> &mut DeviceManager {
        &mut self.devices
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The KVM VM.
    pub fn vm(&self) -> &Arc<VmFd> {
        &self.vm
    }

    /// Run until the VM stops; returns why.
    pub fn run(mut self) -> Result<VmStop, Error> {
        let mut em: EventManager<Subscriber> =
            EventManager::new().map_err(|e| Error::Io(std::io::Error::other(format!("{e:?}"))))?;
        em.add_subscriber(Arc::new(Mutex::new(StopWatcher {
            stop: self.stop.clone(),
            signal: self.signal_evt.take(),
        })));
        em.add_subscriber(Arc::new(Mutex::new(StdinReader {
            serial: self.devices.serial().clone(),
            open: true,
        })));
        for s in self.devices.take_subscribers() {
            em.add_subscriber(s);
        }

        vcpu::install_kick_handler();
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        for (i, fd) in std::mem::take(&mut self.vcpus).into_iter().enumerate() {
            let id = u8::try_from(i).unwrap_or(u8::MAX);
            match vcpu::spawn(
                id,
                fd,
                self.devices.pio.clone(),
                self.devices.mmio.clone(),
                self.stop.clone(),
            ) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.stop.request(VmStop::InternalError {
                        cpu: id,
                        what: e.to_string(),
                        regs: String::new(),
                    });
                    break;
                }
            }
        }

        while !self.stop.stopped() {
            if let Err(e) = em.run_with_timeout(50) {
                log::warn!("event loop: {e:?}");
            }
            self.devices
                .serial()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .flush_input();
        }

        // Kick every vCPU out of KVM_RUN until its thread ends.
        for t in threads {
            while !t.is_finished() {
                // SAFETY: the thread is alive (not finished and not joined),
                // so its pthread_t is valid; the kick signal has a no-op handler.
                unsafe { libc::pthread_kill(t.as_pthread_t(), vcpu::kick_signal()) };
                std::thread::sleep(Duration::from_micros(500));
            }
            let _ = t.join();
        }
        Ok(self.stop.reason().unwrap_or(VmStop::Signal(0)))
    }
}

/// This platform as the ACPI tables describe it, for direct kernel boot and
/// for OVMF alike (the firmware crate's QEMU-"pc" tables: MADT with the
/// IRQ 0 -> GSI 2 override, FADT with the PIIX4 PM blocks at 0xB000 (preset
/// and enabled, so OVMF keeps it) and GPE0 at 0xAFE0, SCI 9, reset via
/// 0xCF9, DSDT with `_PRT`, fw_cfg and `_S5`). PCI INTx in the `_PRT` names
/// the GSIs the PIIX3 routes give now (10, 10, 11, 11 unless changed),
/// which the MP table also lists.
fn acpi_platform(
    config: &VmConfig,
    devices: &DeviceManager,
) -> devices::firmware::acpi::AcpiPlatform {
    use devices::firmware::acpi::AcpiPlatform;
    let mut intx_gsi = [0u32; 4];
    for (n, g) in intx_gsi.iter_mut().enumerate() {
        *g = devices.pirq_gsi(u8::try_from(n).unwrap_or(0)).unwrap_or(0);
    }
    let mmio64 = layout::mmio64_start(config.memory);
    AcpiPlatform {
        cpus: config.cpus,
        pm_base: u16::try_from(layout::PM_IO_BASE).unwrap_or(0xB000),
        gpe0_base: u16::try_from(devices::acpi::pm::GPE0_BASE).unwrap_or(0xAFE0),
        sci_irq: devices::acpi::pm::SCI_IRQ,
        pci_mmio32: (
            u32::try_from(layout::MMIO32_START).unwrap_or(0),
            u32::try_from(layout::MMIO32_END - layout::MMIO32_START).unwrap_or(0),
        ),
        pci_mmio64: Some((mmio64, layout::MMIO64_SIZE)),
        intx_gsi,
        ioapic_addr: u32::try_from(layout::IOAPIC_START).unwrap_or(0),
        lapic_addr: u32::try_from(layout::LAPIC_START).unwrap_or(0),
        serial: true,
        i8042: true,
        fw_cfg: true,
    }
}

/// Write the tables for `p` into guest memory (direct kernel boot); returns
/// the RSDP address.
fn install_acpi(
    memory: &GuestMemoryMmap,
    p: &devices::firmware::acpi::AcpiPlatform,
) -> Result<u64, Error> {
    use devices::firmware::acpi::install;
    let at = install(
        memory,
        p,
        layout::ACPI_TABLES_START,
        layout::ACPI_RSDP_START,
    )
    .map_err(|e| Error::Acpi(e.to_string()))?;
    Ok(at.rsdp)
}

/// Wakes the event loop when the VM stops or a termination signal arrives.
struct StopWatcher {
    stop: Arc<StopFlag>,
    signal: Option<EventFd>,
}

impl MutEventSubscriber for StopWatcher {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if let Some(s) = &self.signal {
            if events.fd() == s.as_raw_fd() {
                let _ = s.read();
                self.stop
                    .request(VmStop::Signal(crate::stop::last_signal()));
                return;
            }
        }
        let _ = self.stop.eventfd().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.stop.eventfd(), EventSet::IN)) {
            log::warn!("event loop: stop eventfd: {e:?}");
        }
        if let Some(s) = &self.signal {
            if let Err(e) = ops.add(Events::new(s, EventSet::IN)) {
                log::warn!("event loop: signal eventfd: {e:?}");
            }
        }
    }
}

/// Feeds stdin to COM1.
struct StdinReader {
    serial: Arc<Mutex<devices::legacy::Serial>>,
    open: bool,
}

impl MutEventSubscriber for StdinReader {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        // SAFETY: reads at most buf.len() bytes into a live stack buffer.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        match usize::try_from(n) {
            Ok(0) | Err(_) => {
                if n == 0
                    || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    let _ = ops.remove(events);
                    self.open = false;
                }
            }
            Ok(n) => self
                .serial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .queue_input(&buf[..n]),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        // Regular files and /dev/null cannot be polled: then there is no input.
        if ops
            .add(Events::with_data_raw(libc::STDIN_FILENO, 0, EventSet::IN))
            .is_err()
        {
            self.open = false;
        }
    }
}
