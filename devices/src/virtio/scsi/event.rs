//! The event queue (virtio 1.2, 5.6.6.3): TRANSPORT_RESET when LUNs come
//! and go, PARAM_CHANGE when a "parameters changed" unit attention (ASC
//! 0x2A: mode parameters, capacity, reservations) is pending for this
//! controller's nexus, and EVENTS_MISSED when an event found no buffer.
//!
//! Event: `event:u32 lun[8] reason:u32` (16 bytes).

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;

use log::warn;
use scsi::Lun;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::request::{encode_lun, ChainError};
use super::{features, Controller, ScsiControllerError, TargetSlot, EVENT_SIZE};
use crate::virtio::chain::split_chain;
use crate::virtio::{GuestMemory, InterruptType, VirtioInterrupt};

/// No event (only with [`EVENTS_MISSED`]).
pub const T_NO_EVENT: u32 = 0;
/// A LUN appeared, disappeared, or the bus must be rescanned.
pub const T_TRANSPORT_RESET: u32 = 1;
/// Asynchronous notification (not generated: no AN classes are offered).
pub const T_ASYNC_NOTIFY: u32 = 2;
/// A unit attention with these ASC/ASCQ is pending.
pub const T_PARAM_CHANGE: u32 = 3;
/// Flag: events were dropped for lack of buffers.
pub const EVENTS_MISSED: u32 = 0x8000_0000;
/// TRANSPORT_RESET reason: rescan (LUN added).
pub const EVT_RESET_RESCAN: u32 = 1;
/// TRANSPORT_RESET reason: LUN removed.
pub const EVT_RESET_REMOVED: u32 = 2;

/// One event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Event type, possibly with [`EVENTS_MISSED`].
    pub event: u32,
    /// The LUN concerned.
    pub lun: [u8; 8],
    /// Reason (TRANSPORT_RESET) or `asc | ascq << 8` (PARAM_CHANGE).
    pub reason: u32,
}

impl Event {
    /// Wire form.
    pub fn encode(&self) -> [u8; EVENT_SIZE] {
        let mut b = [0u8; EVENT_SIZE];
        b[0..4].copy_from_slice(&self.event.to_le_bytes());
        b[4..12].copy_from_slice(&self.lun);
        b[12..16].copy_from_slice(&self.reason.to_le_bytes());
        b
    }
}

/// The live event queue.
#[derive(Debug)]
pub(crate) struct EventQueue {
    pub(crate) mem: GuestMemory,
    pub(crate) queue: Queue,
    pub(crate) index: u16,
    pub(crate) irq: Arc<dyn VirtioInterrupt>,
    pub(crate) broken: bool,
}

/// Event bookkeeping, behind the controller's mutex.
#[derive(Debug, Default)]
pub(crate) struct EventState {
    pub(crate) active: Option<EventQueue>,
    pub(crate) dropped: bool,
    pub(crate) reported: BTreeSet<(u8, Lun, u8, u8)>,
}

fn write_event(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    ev: &Event,
) -> Result<u32, ChainError> {
    let (_, mut w) = split_chain(mem, chain)?;
    let got = w.available_bytes();
    if got < EVENT_SIZE {
        return Err(ChainError::ResponseTooShort {
            need: EVENT_SIZE,
            got,
        });
    }
    w.write_all(&ev.encode()).map_err(|_| ChainError::Memory)?;
    Ok(16)
}

impl Controller {
    /// Deliver `ev` into the next event buffer; with none available,
    /// remember that an event was missed. Nothing happens while the device
    /// is not live.
    pub(crate) fn push_event(&self, mut ev: Event) {
        let mut guard = self.events();
        let st = &mut *guard;
        let Some(q) = st.active.as_mut() else {
            return;
        };
        if q.broken {
            return;
        }
        let chain = match q.queue.iter(&q.mem) {
            Ok(mut it) => it.next(),
            Err(e) => {
                warn!("virtio-scsi: event queue: {e}; device needs reset");
                q.broken = true;
                q.irq.set_needs_reset();
                return;
            }
        };
        let Some(chain) = chain else {
            st.dropped = true;
            return;
        };
        if st.dropped {
            ev.event |= EVENTS_MISSED;
            st.dropped = false;
        }
        let head = chain.head_index();
        let result = write_event(&q.mem, chain, &ev);
        let ok = q
            .queue
            .add_used(&q.mem, head, *result.as_ref().unwrap_or(&0))
            .is_ok();
        if let Err(e) = &result {
            warn!("virtio-scsi: event buffer: {e}; device needs reset");
        }
        if result.is_err() || !ok {
            q.broken = true;
            q.irq.set_needs_reset();
        }
        if q.queue.needs_notification(&q.mem).unwrap_or(true) {
            q.irq.trigger(InterruptType::Queue(q.index));
        }
    }

    /// The driver added event buffers: report missed events now.
    pub fn event_queue_kick(&self) {
        if self.events().dropped {
            self.push_event(Event {
                event: T_NO_EVENT,
                lun: [0; 8],
                reason: 0,
            });
        }
    }

    fn hotplug_event(&self, target: u8, lun: Lun, reason: u32) {
        if self.acked_features() & features::HOTPLUG != 0 {
            self.push_event(Event {
                event: T_TRANSPORT_RESET,
                lun: encode_lun(target, lun),
                reason,
            });
        }
    }

    /// A LUN was added to target `target` (the target itself must already
    /// serve it): tell the driver to rescan.
    pub fn hot_add_lun(&self, target: u8, lun: Lun) -> Result<(), ScsiControllerError> {
        if u32::from(lun) > super::MAX_LUN {
            return Err(ScsiControllerError::LunRange(lun));
        }
        self.update_targets(|t| {
            t.get_mut(&target)
                .map(|s| s.luns.insert(lun))
                .ok_or(ScsiControllerError::NoTarget(target))
        })?;
        self.hotplug_event(target, lun, EVT_RESET_RESCAN);
        Ok(())
    }

    /// A LUN was removed from target `target`.
    pub fn hot_remove_lun(&self, target: u8, lun: Lun) -> Result<(), ScsiControllerError> {
        self.update_targets(|t| {
            t.get_mut(&target)
                .map(|s| s.luns.remove(&lun))
                .ok_or(ScsiControllerError::NoTarget(target))
        })?;
        self.hotplug_event(target, lun, EVT_RESET_REMOVED);
        Ok(())
    }

    /// Attach a new target with its LUNs.
    pub fn add_target(&self, id: u8, slot: TargetSlot) -> Result<(), ScsiControllerError> {
        let luns: Vec<Lun> = slot.luns.iter().copied().collect();
        self.update_targets(|t| {
            if t.contains_key(&id) {
                return Err(ScsiControllerError::DuplicateTarget(id));
            }
            t.insert(id, slot);
            Ok(())
        })?;
        for lun in luns {
            self.hotplug_event(id, lun, EVT_RESET_RESCAN);
        }
        Ok(())
    }

    /// Detach a target.
    pub fn remove_target(&self, id: u8) -> Result<(), ScsiControllerError> {
        let slot = self
            .update_targets(|t| t.remove(&id))
            .ok_or(ScsiControllerError::NoTarget(id))?;
        for lun in slot.luns {
            self.hotplug_event(id, lun, EVT_RESET_REMOVED);
        }
        Ok(())
    }

    /// Look for "parameters changed" unit attentions pending for this
    /// controller's nexuses and send one PARAM_CHANGE per new condition
    /// (if the driver accepted VIRTIO_SCSI_F_CHANGE). Called periodically
    /// by the control worker.
    pub fn poll_unit_attentions(&self) {
        if self.acked_features() & features::CHANGE == 0 {
            return;
        }
        let mut current = BTreeSet::new();
        for (&tid, slot) in self.targets().iter() {
            for &lun in &slot.luns {
                if let Some(s) = slot.target.pending_unit_attention(&slot.nexus, lun) {
                    if s.asc == 0x2A {
                        current.insert((tid, lun, s.asc, s.ascq));
                    }
                }
            }
        }
        let fresh: Vec<_> = {
            let mut st = self.events();
            let fresh = current.difference(&st.reported).copied().collect();
            st.reported = current;
            fresh
        };
        for (tid, lun, asc, ascq) in fresh {
            self.push_event(Event {
                event: T_PARAM_CHANGE,
                lun: encode_lun(tid, lun),
                reason: u32::from(asc) | (u32::from(ascq) << 8),
            });
        }
    }
}
