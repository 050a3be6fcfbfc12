//! Virtio: the transport-agnostic device interface ([`VirtioDevice`]), the
//! virtio 1.x PCI transport ([`pci::VirtioPciTransport`]) and the devices
//! (so far the virtio-scsi controller, [`scsi`]).
//!
//! A device never sees the transport: it is handed its queues, guest memory
//! and a [`VirtioInterrupt`] when the driver sets DRIVER_OK, and gives them
//! back on reset. The transport owns registers, feature negotiation, the
//! status machine, queue configuration, notification eventfds and the
//! interrupt routing (MSI-X or INTx).

pub mod chain;
pub mod pci;
pub mod ring;
pub mod scsi;

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as devices see it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u8 = 2;
    /// The driver is set up and the device is live.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const NEEDS_RESET: u8 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u8 = 0x80;
}

/// Feature bits shared by all devices (virtio 1.2, 6).
pub mod features {
    /// Indirect descriptors.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// used_event / avail_event notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// Virtio 1.x (modern) device.
    pub const VERSION_1: u64 = 1 << 32;
}

/// Device type numbers (virtio 1.2, 5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// SCSI host bus adapter.
    pub const SCSI: u32 = 8;
}

/// What an interrupt is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptType {
    /// The device configuration space changed (or NEEDS_RESET was set).
    Config,
    /// The used ring of this queue index has new entries.
    Queue(u16),
}

/// How an active device reaches the driver: interrupts and the
/// DEVICE_NEEDS_RESET status bit. Implemented by the transport.
pub trait VirtioInterrupt: Send + Sync + std::fmt::Debug {
    /// Signal the driver.
    fn trigger(&self, ty: InterruptType);
    /// Set DEVICE_NEEDS_RESET and send a configuration change interrupt: the
    /// device met something it cannot continue from (a malformed ring).
    fn set_needs_reset(&self);
}

/// One queue handed to a device at activation.
#[derive(Debug)]
pub struct ActiveQueue {
    /// Queue index (0-based, as the driver numbers it).
    pub index: u16,
    /// The configured ring.
    pub queue: Queue,
    /// Signalled when the driver notifies this queue (through an ioeventfd
    /// or a trapped write to the notify region).
    pub notify: Arc<EventFd>,
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver enabled fewer queues than the device needs.
    #[error("device needs queue {0}, which the driver did not enable")]
    MissingQueue(u16),
    /// The device was already active.
    #[error("device already active")]
    AlreadyActive,
    /// A worker thread could not be started.
    #[error("starting a worker thread failed: {0}")]
    Thread(#[source] std::io::Error),
    /// An eventfd could not be created.
    #[error("creating an eventfd failed: {0}")]
    EventFd(#[source] std::io::Error),
}

/// A virtio device, independent of the transport (PCI here; MMIO would do).
pub trait VirtioDevice: Send + std::fmt::Debug {
    /// Virtio device type ([`device_type`]).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The feature bits the device offers (including transport bits such as
    /// [`features::VERSION_1`]).
    fn features(&self) -> u64;
    /// The driver accepted these features (a subset of [`Self::features`]),
    /// called once when the driver sets FEATURES_OK.
    fn ack_features(&mut self, features: u64);
    /// Read device configuration space at `offset`. Bytes past the end read
    /// as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write device configuration space at `offset`; read-only fields ignore
    /// the write.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Start serving `queues` (the enabled ones, in index order).
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError>;
    /// Stop serving and drop the queues: the driver reset the device. Must
    /// not return before the device has stopped touching guest memory.
    fn reset(&mut self);
}

/// Copy `src` (a little-endian configuration structure) to `data` as read at
/// `offset`; bytes beyond `src` read as zero.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(avail) = src.get(start..) {
        let n = avail.len().min(data.len());
        data[..n].copy_from_slice(&avail[..n]);
    }
}
