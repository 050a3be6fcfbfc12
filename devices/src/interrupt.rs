//! How devices raise interrupts and ask for doorbell eventfds without
//! touching KVM: small traits that the `vmm` crate implements with
//! KVM_SET_GSI_ROUTING, irqfds and ioeventfds (and tests implement with
//! plain counters).

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// Errors from the interrupt and ioevent back ends.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    /// The vector index is past the group's size.
    #[error("interrupt vector {0} out of range")]
    BadVector(u16),
    /// No GSI left to allocate.
    #[error("no free GSI")]
    NoGsi,
    /// The hypervisor refused (routing table, irqfd or ioeventfd ioctl).
    #[error("hypervisor: {0}")]
    Hypervisor(#[source] std::io::Error),
}

/// A message-signalled interrupt: what the device would write where.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Address (0xFEEx_xxxx for x86 LAPIC delivery).
    pub address: u64,
    /// Data (vector and delivery mode).
    pub data: u32,
}

/// The MSI vectors of one device function (MSI-X table entries map 1:1).
///
/// In the KVM back end each vector owns a GSI and an irqfd: [`trigger`]
/// writes the irqfd, and a masked vector is an unregistered irqfd, so
/// writes while masked stay pending in the eventfd's counter and are
/// delivered when [`update`] unmasks it.
///
/// [`trigger`]: MsiInterruptGroup::trigger
/// [`update`]: MsiInterruptGroup::update
pub trait MsiInterruptGroup: Send + Sync {
    /// Number of vectors.
    fn len(&self) -> u16;
    /// Whether the group has no vectors.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Route `vector` to `msg`; `masked` vectors are not delivered.
    fn update(&self, vector: u16, msg: MsiMessage, masked: bool) -> Result<(), InterruptError>;
    /// Raise `vector` now (from any thread).
    fn trigger(&self, vector: u16) -> Result<(), InterruptError>;
    /// An eventfd that raises `vector` when written (for queue handlers on
    /// the event loop, so they need no device lock to interrupt the guest).
    fn notifier(&self, vector: u16) -> Option<EventFd>;
}

/// A wired interrupt line (ISA IRQ or PCI INTx through the IOAPIC).
pub trait InterruptLine: Send + Sync {
    /// Edge: pulse the line.
    fn trigger(&self) -> Result<(), InterruptError>;
    /// Level: drive the line high (`true`) or low.
    fn set_level(&self, high: bool) -> Result<(), InterruptError>;
}

/// Where an ioeventfd listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoEventAddress {
    /// Port I/O address.
    Pio(u64),
    /// MMIO address.
    Mmio(u64),
}

/// What value (and access width) an ioeventfd fires on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataMatch {
    /// Any write of any width.
    Any,
    /// A 1-byte write of this value.
    U8(u8),
    /// A 2-byte write of this value (virtio-pci notify: the queue index).
    U16(u16),
    /// A 4-byte write of this value.
    U32(u32),
    /// An 8-byte write of this value.
    U64(u64),
}

/// Registers doorbell eventfds with the hypervisor, so a guest write of
/// `datamatch` at an address only signals the
/// eventfd and never exits to a vCPU-thread device handler.
pub trait IoEventRegistrar: Send + Sync {
    /// Start signalling `fd` for writes at `addr` (matching `datamatch`).
    fn register_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: DataMatch,
    ) -> Result<(), InterruptError>;
    /// Stop it (same arguments as the registration).
    fn unregister_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: DataMatch,
    ) -> Result<(), InterruptError>;
}

/// Makes interrupt sources for devices.
pub trait InterruptManager: Send + Sync {
    /// A group of `vectors` MSI vectors (each gets its own GSI and irqfd),
    /// all masked until [`MsiInterruptGroup::update`] unmasks them.
    fn create_msi_group(&self, vectors: u16) -> Result<Arc<dyn MsiInterruptGroup>, InterruptError>;
    /// The wired line for IOAPIC/PIC input `gsi`.
    fn line(&self, gsi: u32) -> Result<Arc<dyn InterruptLine>, InterruptError>;
}

#[cfg(test)]
pub(crate) mod test_utils {
    //! Counting interrupt back ends for unit tests.
    use super::*;
    use std::sync::Mutex;

    /// Records routes and triggers.
    #[derive(Debug, Default)]
    pub struct FakeMsiGroup {
        pub routes: Mutex<Vec<(MsiMessage, bool)>>,
        pub fired: Mutex<Vec<u16>>,
    }

    impl FakeMsiGroup {
        pub fn new(n: u16) -> Arc<Self> {
            Arc::new(FakeMsiGroup {
                routes: Mutex::new(vec![(MsiMessage::default(), true); usize::from(n)]),
                fired: Mutex::new(Vec::new()),
            })
        }
    }

    impl MsiInterruptGroup for FakeMsiGroup {
        fn len(&self) -> u16 {
            u16::try_from(self.routes.lock().unwrap().len()).unwrap()
        }
        fn update(&self, vector: u16, msg: MsiMessage, masked: bool) -> Result<(), InterruptError> {
            let mut r = self.routes.lock().unwrap();
            let e = r
                .get_mut(usize::from(vector))
                .ok_or(InterruptError::BadVector(vector))?;
            *e = (msg, masked);
            Ok(())
        }
        fn trigger(&self, vector: u16) -> Result<(), InterruptError> {
            if usize::from(vector) >= self.routes.lock().unwrap().len() {
                return Err(InterruptError::BadVector(vector));
            }
            self.fired.lock().unwrap().push(vector);
            Ok(())
        }
        fn notifier(&self, _vector: u16) -> Option<EventFd> {
            None
        }
    }
}
