//! The KVM VM: memory slots, in-kernel irqchip and PIT, TSS, and the
//! interrupt/ioevent back ends the devices crate asks for (GSI routes for
//! MSI, irqfds, IRQ lines, ioeventfds).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use devices::interrupt::{
    DataMatch, InterruptError, InterruptLine, InterruptManager, IoEventAddress, IoEventRegistrar,
    MsiInterruptGroup, MsiMessage,
};
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi, kvm_pit_config, kvm_userspace_memory_region, KvmIrqRouting,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_IRQ_ROUTING_MSI, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, NoDatamatch, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::x86_64::layout;

/// Errors setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `hyperv=on` on a KVM that cannot do it.
    #[error(transparent)]
    Hyperv(#[from] crate::arch::x86_64::hyperv::HypervError),
    /// /dev/kvm could not be opened.
    #[error("opening /dev/kvm: {0}")]
    Kvm(#[source] kvm_ioctls::Error),
    /// A VM ioctl failed.
    #[error("{what}: {source}")]
    Ioctl {
        /// Which step.
        what: &'static str,
        /// Cause.
        source: kvm_ioctls::Error,
    },
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Ioctl { what, source }
}

/// Create the VM with its irqchip, PIT, TSS/identity map and RAM slots.
pub fn create(kvm: &Kvm, mem: &GuestMemoryMmap) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_START)
        .map_err(ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
    let tss = usize::try_from(layout::KVM_TSS_START).unwrap_or(0);
    vm.set_tss_address(tss).map_err(ioctl("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|_| VmError::Ioctl {
                what: "guest RAM host address",
                source: kvm_ioctls::Error::new(libc::EFAULT),
            })?;
        let r = kvm_userspace_memory_region {
            slot: u32::try_from(slot).unwrap_or(u32::MAX),
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: `host` points at a mapping of `region.len()` bytes owned
        // by `mem`, which the caller keeps alive for as long as the VM
        // (the Vmm holds both and drops the VM fd first).
        unsafe { vm.set_user_memory_region(r) }.map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(vm)
}

/// The GSI routing table: the default PIC/IOAPIC routes plus MSI routes.
#[derive(Debug)]
pub struct GsiRoutes {
    vm: Arc<VmFd>,
    msi: Mutex<BTreeMap<u32, MsiMessage>>,
    next_gsi: Mutex<u32>,
}

fn irqchip_entry(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            irqchip: kvm_irq_routing_irqchip { irqchip: chip, pin },
        },
        ..Default::default()
    }
}

impl GsiRoutes {
    /// Routes for `vm` (call [`commit`](Self::commit) to install).
    pub fn new(vm: Arc<VmFd>) -> Self {
        GsiRoutes {
            vm,
            msi: Mutex::new(BTreeMap::new()),
            next_gsi: Mutex::new(layout::FIRST_MSI_GSI),
        }
    }

    /// A fresh GSI for an MSI route.
    pub fn allocate_gsi(&self) -> Result<u32, InterruptError> {
        let mut n = self.next_gsi.lock().unwrap_or_else(|e| e.into_inner());
        if *n > layout::MAX_GSI {
            return Err(InterruptError::NoGsi);
        }
        let g = *n;
        *n += 1;
        Ok(g)
    }

    /// Set (or replace) the MSI route of `gsi` and install the table.
    pub fn set_msi(&self, gsi: u32, msg: MsiMessage) -> Result<(), InterruptError> {
        let mut m = self.msi.lock().unwrap_or_else(|e| e.into_inner());
        if m.get(&gsi) == Some(&msg) {
            return Ok(());
        }
        m.insert(gsi, msg);
        self.commit_locked(&m)
    }

    /// Install the table as it stands.
    pub fn commit(&self) -> Result<(), InterruptError> {
        let m = self.msi.lock().unwrap_or_else(|e| e.into_inner());
        self.commit_locked(&m)
    }

    fn commit_locked(&self, msi: &BTreeMap<u32, MsiMessage>) -> Result<(), InterruptError> {
        let mut entries = Vec::with_capacity(40 + msi.len());
        // As QEMU's "pc": ISA IRQ 0 (the PIT) reaches IOAPIC pin 2 (the
        // MP table and firmware ACPI tables declare that override), and
        // GSI 2 (the PIC cascade) has no IOAPIC route.
        for gsi in 0..24u32 {
            if gsi < 8 && gsi != 2 {
                entries.push(irqchip_entry(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
            } else if (8..16).contains(&gsi) {
                entries.push(irqchip_entry(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
            }
            match gsi {
                0 => entries.push(irqchip_entry(0, KVM_IRQCHIP_IOAPIC, 2)),
                2 => {}
                _ => entries.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi)),
            }
        }
        for (&gsi, m) in msi {
            entries.push(kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                u: kvm_irq_routing_entry__bindgen_ty_1 {
                    msi: kvm_irq_routing_msi {
                        address_lo: u32::try_from(m.address & 0xFFFF_FFFF).unwrap_or(0),
                        address_hi: u32::try_from(m.address >> 32).unwrap_or(0),
                        data: m.data,
                        ..Default::default()
                    },
                },
                ..Default::default()
            });
        }
        let table = KvmIrqRouting::from_entries(&entries).map_err(|_| {
            InterruptError::Hypervisor(std::io::Error::other("routing table too large"))
        })?;
        self.vm
            .set_gsi_routing(&table)
            .map_err(|e| InterruptError::Hypervisor(e.into()))
    }
}

struct MsiVector {
    gsi: u32,
    fd: EventFd,
    registered: bool,
}

/// MSI vectors of one device: a GSI and an irqfd each.
pub struct KvmMsiGroup {
    vm: Arc<VmFd>,
    routes: Arc<GsiRoutes>,
    vectors: Vec<Mutex<MsiVector>>,
}

impl std::fmt::Debug for KvmMsiGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmMsiGroup")
            .field("vectors", &self.vectors.len())
            .finish()
    }
}

impl MsiInterruptGroup for KvmMsiGroup {
    fn len(&self) -> u16 {
        u16::try_from(self.vectors.len()).unwrap_or(u16::MAX)
    }

    fn update(&self, vector: u16, msg: MsiMessage, masked: bool) -> Result<(), InterruptError> {
        let v = self
            .vectors
            .get(usize::from(vector))
            .ok_or(InterruptError::BadVector(vector))?;
        let mut v = v.lock().unwrap_or_else(|e| e.into_inner());
        self.routes.set_msi(v.gsi, msg)?;
        let hv = |e: kvm_ioctls::Error| InterruptError::Hypervisor(e.into());
        if masked && v.registered {
            self.vm.unregister_irqfd(&v.fd, v.gsi).map_err(hv)?;
            v.registered = false;
        } else if !masked && !v.registered {
            // A write made while masked is still in the counter: KVM
            // delivers it as soon as the irqfd is registered.
            self.vm.register_irqfd(&v.fd, v.gsi).map_err(hv)?;
            v.registered = true;
        }
        Ok(())
    }

    fn trigger(&self, vector: u16) -> Result<(), InterruptError> {
        let v = self
            .vectors
            .get(usize::from(vector))
            .ok_or(InterruptError::BadVector(vector))?;
        v.lock()
            .unwrap_or_else(|e| e.into_inner())
            .fd
            .write(1)
            .map_err(InterruptError::Hypervisor)
    }

    fn notifier(&self, vector: u16) -> Option<EventFd> {
        self.vectors
            .get(usize::from(vector))?
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fd
            .try_clone()
            .ok()
    }
}

/// An IOAPIC/PIC input driven with KVM_IRQ_LINE.
#[derive(Debug)]
pub struct KvmIrqLine {
    vm: Arc<VmFd>,
    gsi: u32,
}

impl InterruptLine for KvmIrqLine {
    fn trigger(&self) -> Result<(), InterruptError> {
        self.set_level(true)?;
        self.set_level(false)
    }

    fn set_level(&self, high: bool) -> Result<(), InterruptError> {
        self.vm
            .set_irq_line(self.gsi, high)
            .map_err(|e| InterruptError::Hypervisor(e.into()))
    }
}

/// KVM implementation of the devices crate's interrupt and ioevent traits.
#[derive(Debug)]
pub struct KvmInterrupts {
    vm: Arc<VmFd>,
    routes: Arc<GsiRoutes>,
}

impl KvmInterrupts {
    /// Back ends for `vm`; installs the default routing table.
    pub fn new(vm: Arc<VmFd>) -> Result<Self, InterruptError> {
        let routes = Arc::new(GsiRoutes::new(vm.clone()));
        routes.commit()?;
        Ok(KvmInterrupts { vm, routes })
    }

    /// The routing table.
    pub fn routes(&self) -> &Arc<GsiRoutes> {
        &self.routes
    }
}

impl InterruptManager for KvmInterrupts {
    fn create_msi_group(&self, vectors: u16) -> Result<Arc<dyn MsiInterruptGroup>, InterruptError> {
        let mut v = Vec::with_capacity(usize::from(vectors));
        for _ in 0..vectors {
            v.push(Mutex::new(MsiVector {
                gsi: self.routes.allocate_gsi()?,
                fd: EventFd::new(EFD_NONBLOCK).map_err(InterruptError::Hypervisor)?,
                registered: false,
            }));
        }
        Ok(Arc::new(KvmMsiGroup {
            vm: self.vm.clone(),
            routes: self.routes.clone(),
            vectors: v,
        }))
    }

    fn line(&self, gsi: u32) -> Result<Arc<dyn InterruptLine>, InterruptError> {
        if gsi >= layout::FIRST_MSI_GSI {
            return Err(InterruptError::BadVector(
                u16::try_from(gsi).unwrap_or(u16::MAX),
            ));
        }
        Ok(Arc::new(KvmIrqLine {
            vm: self.vm.clone(),
            gsi,
        }))
    }
}

impl IoEventRegistrar for KvmInterrupts {
    fn register_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: DataMatch,
    ) -> Result<(), InterruptError> {
        let a = match addr {
            IoEventAddress::Pio(p) => kvm_ioctls::IoEventAddress::Pio(p),
            IoEventAddress::Mmio(m) => kvm_ioctls::IoEventAddress::Mmio(m),
        };
        let r = match datamatch {
            DataMatch::Any => self.vm.register_ioevent(fd, &a, NoDatamatch),
            DataMatch::U8(v) => self.vm.register_ioevent(fd, &a, v),
            DataMatch::U16(v) => self.vm.register_ioevent(fd, &a, v),
            DataMatch::U32(v) => self.vm.register_ioevent(fd, &a, v),
            DataMatch::U64(v) => self.vm.register_ioevent(fd, &a, v),
        };
        r.map_err(|e| InterruptError::Hypervisor(e.into()))
    }

    fn unregister_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: DataMatch,
    ) -> Result<(), InterruptError> {
        let a = match addr {
            IoEventAddress::Pio(p) => kvm_ioctls::IoEventAddress::Pio(p),
            IoEventAddress::Mmio(m) => kvm_ioctls::IoEventAddress::Mmio(m),
        };
        let r = match datamatch {
            DataMatch::Any => self.vm.unregister_ioevent(fd, &a, NoDatamatch),
            DataMatch::U8(v) => self.vm.unregister_ioevent(fd, &a, v),
            DataMatch::U16(v) => self.vm.unregister_ioevent(fd, &a, v),
            DataMatch::U32(v) => self.vm.unregister_ioevent(fd, &a, v),
            DataMatch::U64(v) => self.vm.unregister_ioevent(fd, &a, v),
        };
        r.map_err(|e| InterruptError::Hypervisor(e.into()))
    }
}
