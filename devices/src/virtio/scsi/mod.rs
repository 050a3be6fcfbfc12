//! The virtio-scsi controller (virtio 1.2, 5.6): one SCSI initiator port in
//! the guest, in front of up to 256 targets of the `scsi` crate.
//!
//! Queue 0 is the control queue (task management, asynchronous-notification
//! queries), queue 1 the event queue (hot-plug and parameter-change events),
//! queues 2.. the request queues. Every target gets its own I_T nexus: the
//! controller's initiator port name paired with the target's port.
//!
//! - [`device`]: the [`VirtioDevice`](crate::virtio::VirtioDevice)
//!   implementation, configuration space and worker threads;
//! - [`request`]: the command path (LUN decoding, request/response layouts);
//! - [`control`]: task management and AN requests;
//! - [`event`]: event queue, hot-plug and unit-attention reporting.

pub mod control;
pub mod device;
pub mod event;
pub mod request;
#[doc(hidden)]
pub mod test_utils;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use scsi::{ItNexus, Lun, PortName, ScsiTarget, TargetPort};

pub use device::VirtioScsi;

/// virtio-scsi feature bits.
pub mod features {
    /// Hot-plug events (TRANSPORT_RESET) on the event queue.
    pub const HOTPLUG: u64 = 1 << 1;
    /// PARAM_CHANGE events for unit attentions.
    pub const CHANGE: u64 = 1 << 2;
}

/// Default sense buffer size (and the reset value of `sense_size`).
pub const DEFAULT_SENSE_SIZE: u32 = 96;
/// Default CDB size (and the reset value of `cdb_size`).
pub const DEFAULT_CDB_SIZE: u32 = 32;
/// Default queue size.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Size of a `virtio_scsi_event`.
pub const EVENT_SIZE: usize = 16;
/// Highest target id a driver may address (`max_target`).
pub const MAX_TARGET: u16 = 255;
/// Highest LUN (`max_lun`): single-level LUNs are 14 bits.
pub const MAX_LUN: u32 = 16383;

/// Errors configuring a controller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScsiControllerError {
    /// A controller needs at least one request queue.
    #[error("number of request queues must be 1..=256, got {0}")]
    QueueCount(u16),
    /// Queue size must be a power of two between 4 and 32768.
    #[error("queue size must be a power of two in 4..=32768, got {0}")]
    QueueSize(u16),
    /// The target id is already used.
    #[error("target {0} already exists")]
    DuplicateTarget(u8),
    /// No such target.
    #[error("no target {0}")]
    NoTarget(u8),
    /// LUN above 16383.
    #[error("LUN {0} is above 16383")]
    LunRange(Lun),
}

/// Controller settings.
#[derive(Debug, Clone)]
pub struct ScsiControllerConfig {
    /// Number of request queues (`num_queues` in config space).
    pub num_queues: u16,
    /// Size of every queue.
    pub queue_size: u16,
    /// The controller's initiator port name (one per controller, per VM).
    pub initiator: PortName,
}

impl ScsiControllerConfig {
    /// Check the settings.
    pub fn validate(&self) -> Result<(), ScsiControllerError> {
        if self.num_queues == 0 || self.num_queues > 256 {
            return Err(ScsiControllerError::QueueCount(self.num_queues));
        }
        if !(4..=32768).contains(&self.queue_size) || !self.queue_size.is_power_of_two() {
            return Err(ScsiControllerError::QueueSize(self.queue_size));
        }
        Ok(())
    }
}

/// A target behind the controller.
#[derive(Clone)]
pub struct TargetSlot {
    /// The SCSI target.
    pub target: Arc<dyn ScsiTarget>,
    /// The I_T nexus commands from this controller arrive on.
    pub nexus: Arc<ItNexus>,
    /// The LUNs the controller reports events for.
    pub luns: BTreeSet<Lun>,
}

impl std::fmt::Debug for TargetSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetSlot")
            .field("nexus", &self.nexus)
            .field("luns", &self.luns)
            .finish()
    }
}

impl TargetSlot {
    /// A target reached through `port` by `initiator`.
    pub fn new(
        target: Arc<dyn ScsiTarget>,
        initiator: PortName,
        port: TargetPort,
        luns: impl IntoIterator<Item = Lun>,
    ) -> Self {
        TargetSlot {
            target,
            nexus: Arc::new(ItNexus {
                initiator,
                target: port,
            }),
            luns: luns.into_iter().collect(),
        }
    }
}

/// Target id → target.
pub type TargetMap = BTreeMap<u8, TargetSlot>;

/// State shared by the device, its workers and hot-plug callers.
#[derive(Debug)]
pub struct Controller {
    /// Copy-on-write: the command path takes one snapshot per batch.
    targets: RwLock<Arc<TargetMap>>,
    sense_size: AtomicU32,
    cdb_size: AtomicU32,
    acked: AtomicU64,
    pub(crate) events: Mutex<event::EventState>,
}

impl Controller {
    pub(crate) fn new(targets: BTreeMap<u8, TargetSlot>) -> Self {
        Controller {
            targets: RwLock::new(Arc::new(targets)),
            sense_size: AtomicU32::new(DEFAULT_SENSE_SIZE),
            cdb_size: AtomicU32::new(DEFAULT_CDB_SIZE),
            acked: AtomicU64::new(0),
            events: Mutex::new(event::EventState::default()),
        }
    }

    /// The current targets (a snapshot: later hot-plug does not change it).
    pub fn targets(&self) -> Arc<TargetMap> {
        Arc::clone(&self.targets.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Change the targets (copy-on-write).
    pub(crate) fn update_targets<R>(&self, f: impl FnOnce(&mut TargetMap) -> R) -> R {
        let mut g = self.targets.write().unwrap_or_else(|e| e.into_inner());
        f(Arc::make_mut(&mut g))
    }

    pub(crate) fn events(&self) -> MutexGuard<'_, event::EventState> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sense buffer size the driver asked for.
    pub fn sense_size(&self) -> u32 {
        self.sense_size.load(Ordering::Relaxed)
    }

    /// CDB size the driver asked for.
    pub fn cdb_size(&self) -> u32 {
        self.cdb_size.load(Ordering::Relaxed)
    }

    pub(crate) fn set_sense_size(&self, v: u32) {
        self.sense_size.store(v, Ordering::Relaxed);
    }

    pub(crate) fn set_cdb_size(&self, v: u32) {
        self.cdb_size.store(v, Ordering::Relaxed);
    }

    /// Features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    pub(crate) fn set_acked_features(&self, v: u64) {
        self.acked.store(v, Ordering::Relaxed);
    }

    /// Look up a target (a clone of its slot, so no lock is held while a
    /// command runs).
    pub(crate) fn target(&self, id: u8) -> Option<(Arc<dyn ScsiTarget>, Arc<ItNexus>)> {
        self.targets()
            .get(&id)
            .map(|s| (Arc::clone(&s.target), Arc::clone(&s.nexus)))
    }
}
