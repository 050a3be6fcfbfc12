//! [`VirtioScsi`]: the virtio-scsi device — configuration space, feature
//! set, and the worker threads that serve its queues once the driver is
//! ready (one per request queue, so several queues run at once, plus one
//! for the control and event queues).

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use log::{debug, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::control::ControlProcessor;
use super::event::EventQueue;
use super::request::RequestProcessor;
use super::{
    features as scsi_features, Controller, ScsiControllerConfig, ScsiControllerError, TargetSlot,
    DEFAULT_CDB_SIZE, DEFAULT_SENSE_SIZE, EVENT_SIZE, MAX_LUN, MAX_TARGET,
};
use crate::virtio::{
    device_type, features, read_config_bytes, ActivateError, ActiveQueue, GuestMemory,
    VirtioDevice, VirtioInterrupt,
};

/// Size of `virtio_scsi_config`.
pub const CONFIG_LEN: usize = 36;
/// Offset of `sense_size` in the configuration space.
pub const CONFIG_SENSE_SIZE: usize = 20;
/// Offset of `cdb_size` in the configuration space.
pub const CONFIG_CDB_SIZE: usize = 24;
/// `max_sectors` (as QEMU).
pub const MAX_SECTORS: u32 = 0xFFFF;
/// `cmd_per_lun` (as QEMU).
pub const CMD_PER_LUN: u32 = 128;
/// Index of the control queue.
pub const CONTROL_QUEUE: u16 = 0;
/// Index of the event queue.
pub const EVENT_QUEUE: u16 = 1;
/// Index of the first request queue.
pub const FIRST_REQUEST_QUEUE: u16 = 2;
/// How often the control worker looks for unit attentions to report.
const UA_POLL: Duration = Duration::from_millis(100);

/// A virtio-scsi controller.
#[derive(Debug)]
pub struct VirtioScsi {
    ctrl: Arc<Controller>,
    config: ScsiControllerConfig,
    queue_sizes: Vec<u16>,
    workers: Vec<JoinHandle<()>>,
    stop: Option<Arc<EventFd>>,
}

impl VirtioScsi {
    /// A controller with `config` in front of `targets` (target id → slot).
    pub fn new(
        config: ScsiControllerConfig,
        targets: impl IntoIterator<Item = (u8, TargetSlot)>,
    ) -> Result<Self, ScsiControllerError> {
        config.validate()?;
        let mut map = BTreeMap::new();
        for (id, slot) in targets {
            if let Some(&l) = slot.luns.iter().find(|&&l| u32::from(l) > MAX_LUN) {
                return Err(ScsiControllerError::LunRange(l));
            }
            if map.insert(id, slot).is_some() {
                return Err(ScsiControllerError::DuplicateTarget(id));
            }
        }
        let nq = usize::from(config.num_queues) + 2;
        Ok(VirtioScsi {
            ctrl: Arc::new(Controller::new(map)),
            queue_sizes: vec![config.queue_size; nq],
            config,
            workers: Vec::new(),
            stop: None,
        })
    }

    /// The shared controller state: hot-plug (`hot_add_lun`, `add_target`
    /// ...) and unit-attention polling go through it.
    pub fn controller(&self) -> Arc<Controller> {
        Arc::clone(&self.ctrl)
    }

    /// The command path, for callers that drive request queues themselves
    /// (tests, benchmarks).
    pub fn request_processor(&self) -> RequestProcessor {
        RequestProcessor {
            ctrl: Arc::clone(&self.ctrl),
        }
    }

    /// The control path, for callers that drive the control queue themselves.
    pub fn control_processor(&self) -> ControlProcessor {
        ControlProcessor {
            ctrl: Arc::clone(&self.ctrl),
        }
    }

    /// The configuration space image.
    pub fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut b = [0u8; CONFIG_LEN];
        let mut put = |off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_le_bytes());
        put(0, u32::from(self.config.num_queues));
        put(4, u32::from(self.config.queue_size).saturating_sub(2)); // seg_max
        put(8, MAX_SECTORS);
        put(12, CMD_PER_LUN);
        put(16, u32::try_from(EVENT_SIZE).unwrap_or(16)); // event_info_size
        put(CONFIG_SENSE_SIZE, self.ctrl.sense_size());
        put(CONFIG_CDB_SIZE, self.ctrl.cdb_size());
        put(32, MAX_LUN);
        // max_channel (u16 at 28) = 0, max_target (u16 at 30).
        b[30..32].copy_from_slice(&MAX_TARGET.to_le_bytes());
        b
    }

    /// Attach the event queue without starting workers (the caller drives
    /// the other queues through the processors).
    #[doc(hidden)]
    pub fn attach_event_queue(
        &self,
        mem: GuestMemory,
        queue: virtio_queue::Queue,
        irq: Arc<dyn VirtioInterrupt>,
    ) {
        self.ctrl.events().active = Some(EventQueue {
            mem,
            queue,
            index: EVENT_QUEUE,
            irq,
            broken: false,
        });
    }

    fn stop_workers(&mut self) {
        if let Some(stop) = self.stop.take() {
            if let Err(e) = stop.write(1) {
                warn!("virtio-scsi: cannot stop workers: {e}");
            }
        }
        for w in self.workers.drain(..) {
            if w.join().is_err() {
                warn!("virtio-scsi: a worker panicked");
            }
        }
    }
}

impl Drop for VirtioScsi {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

/// Wait until one of `fds` is readable or `timeout` passes; returns which
/// are readable.
fn wait(fds: &[&EventFd], timeout: Option<Duration>) -> Vec<bool> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|e| libc::pollfd {
            fd: e.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |d| i32::try_from(d.as_millis()).unwrap_or(i32::MAX));
    let n = libc::nfds_t::try_from(pfds.len()).unwrap_or(0);
    // SAFETY: `pfds` is a valid, initialised array of `n` pollfd structures
    // that outlives the call; poll only writes their `revents`.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), n, ms) };
    if r < 0 {
        return vec![false; fds.len()];
    }
    pfds.iter().map(|p| p.revents & libc::POLLIN != 0).collect()
}

fn request_worker(
    proc_: RequestProcessor,
    mem: GuestMemory,
    mut q: ActiveQueue,
    irq: Arc<dyn VirtioInterrupt>,
    stop: Arc<EventFd>,
) {
    let mut broken = proc_
        .process_queue(&mem, &mut q.queue, q.index, irq.as_ref())
        .is_err();
    loop {
        let ready = wait(&[&q.notify, &stop], None);
        if ready[1] {
            return;
        }
        if ready[0] {
            let _ = q.notify.read();
            if !broken {
                broken = proc_
                    .process_queue(&mem, &mut q.queue, q.index, irq.as_ref())
                    .is_err();
            }
        }
    }
}

/// Serves the control queue and event-queue kicks (either may be absent:
/// OVMF enables only the request queue) and polls for unit attentions to
/// report.
fn control_worker(
    proc_: ControlProcessor,
    mem: GuestMemory,
    mut ctl: Option<ActiveQueue>,
    event_notify: Option<Arc<EventFd>>,
    irq: Arc<dyn VirtioInterrupt>,
    stop: Arc<EventFd>,
) {
    let ctrl = Arc::clone(&proc_.ctrl);
    let mut broken = false;
    if let Some(q) = ctl.as_mut() {
        broken = proc_
            .process_queue(&mem, &mut q.queue, q.index, irq.as_ref())
            .is_err();
    }
    loop {
        let mut fds: Vec<&EventFd> = vec![&stop];
        if let Some(q) = &ctl {
            fds.push(&q.notify);
        }
        if let Some(e) = &event_notify {
            fds.push(e);
        }
        let ready = wait(&fds, Some(UA_POLL));
        if ready[0] {
            return;
        }
        let mut i = 1;
        if let Some(q) = ctl.as_mut() {
            if ready[i] {
                let _ = q.notify.read();
                if !broken {
                    broken = proc_
                        .process_queue(&mem, &mut q.queue, q.index, irq.as_ref())
                        .is_err();
                }
            }
            i += 1;
        }
        if let Some(e) = &event_notify {
            if ready[i] {
                let _ = e.read();
                ctrl.event_queue_kick();
            }
        }
        ctrl.poll_unit_attentions();
    }
}

impl VirtioDevice for VirtioScsi {
    fn device_type(&self) -> u32 {
        device_type::SCSI
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        features::VERSION_1
            | features::RING_EVENT_IDX
            | features::RING_INDIRECT_DESC
            | scsi_features::HOTPLUG
            | scsi_features::CHANGE
    }

    fn ack_features(&mut self, features: u64) {
        self.ctrl.set_acked_features(features & self.features());
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut img = self.config_bytes();
        let Ok(off) = usize::try_from(offset) else {
            return;
        };
        let Some(end) = off.checked_add(data.len()).filter(|&e| e <= CONFIG_LEN) else {
            return;
        };
        img[off..end].copy_from_slice(data);
        let get = |o: usize| u32::from_le_bytes([img[o], img[o + 1], img[o + 2], img[o + 3]]);
        // Only sense_size and cdb_size are driver-writable; the limits are
        // QEMU's (sense_size < 65536, cdb_size < 256).
        if off < CONFIG_SENSE_SIZE + 4 && CONFIG_SENSE_SIZE < end {
            let v = get(CONFIG_SENSE_SIZE);
            if v < 65536 {
                self.ctrl.set_sense_size(v);
            } else {
                warn!("virtio-scsi: sense_size {v} rejected");
            }
        }
        if off < CONFIG_CDB_SIZE + 4 && CONFIG_CDB_SIZE < end {
            let v = get(CONFIG_CDB_SIZE);
            if v < 256 {
                self.ctrl.set_cdb_size(v);
            } else {
                warn!("virtio-scsi: cdb_size {v} rejected");
            }
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        if self.stop.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let mut ctl = None;
        let mut evt = None;
        let mut reqs = Vec::new();
        for q in queues {
            match q.index {
                CONTROL_QUEUE => ctl = Some(q),
                EVENT_QUEUE => evt = Some(q),
                _ => reqs.push(q),
            }
        }
        // Control and event queues are optional: OVMF's driver enables the
        // first request queue only. Events then have nowhere to go.
        if reqs.is_empty() {
            return Err(ActivateError::MissingQueue(FIRST_REQUEST_QUEUE));
        }
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(ActivateError::EventFd)?);
        let event_notify = evt.as_ref().map(|e| Arc::clone(&e.notify));
        if let Some(evt) = evt {
            self.attach_event_queue(mem.clone(), evt.queue, Arc::clone(&interrupt));
        }
        self.stop = Some(Arc::clone(&stop));

        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(f)
                .map_err(ActivateError::Thread)
        };
        let mut workers = Vec::new();
        let result = (|| {
            let (p, m, i, s, e) = (
                self.control_processor(),
                mem.clone(),
                Arc::clone(&interrupt),
                Arc::clone(&stop),
                event_notify.clone(),
            );
            workers.push(spawn(
                "scsi-ctl".into(),
                Box::new(move || control_worker(p, m, ctl, e, i, s)),
            )?);
            for q in reqs {
                let (p, m, i, s) = (
                    self.request_processor(),
                    mem.clone(),
                    Arc::clone(&interrupt),
                    Arc::clone(&stop),
                );
                workers.push(spawn(
                    format!("scsi-req{}", q.index - FIRST_REQUEST_QUEUE),
                    Box::new(move || request_worker(p, m, q, i, s)),
                )?);
            }
            Ok(())
        })();
        self.workers = workers;
        if let Err(e) = result {
            self.reset();
            return Err(e);
        }
        debug!("virtio-scsi: active with {} workers", self.workers.len());
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_workers();
        {
            let mut ev = self.ctrl.events();
            ev.active = None;
            ev.dropped = false;
            ev.reported.clear();
        }
        self.ctrl.set_sense_size(DEFAULT_SENSE_SIZE);
        self.ctrl.set_cdb_size(DEFAULT_CDB_SIZE);
        self.ctrl.set_acked_features(0);
    }
}
