//! The virtio 1.x PCI transport (virtio 1.2, 4.1): a modern-only PCI
//! function (vendor 0x1AF4, device 0x1040 + type, revision 1, subsystem
//! 0x1AF4:0x1100 as QEMU presents it, so vioscsi's INF matches) whose
//! 32-bit memory BAR 0 holds the common configuration, ISR, device
//! configuration, notification and MSI-X regions, each announced by a
//! vendor-specific capability; plus the PCI-configuration-access
//! capability the spec requires.
//!
//! It implements [`PciDevice`]: the PCI root forwards configuration-space
//! and BAR 0 accesses. Queue notifications are eventfds (one per queue,
//! registered as ioeventfds at `BAR0 + NOTIFY_OFFSET + 4 * queue` when an
//! [`IoEventRegistrar`] is given, and signalled by trapped writes
//! otherwise). Interrupts go out through MSI-X ([`MsixConfig`] on an
//! [`MsiInterruptGroup`], one vector per queue plus one for configuration
//! changes) or, while MSI-X is disabled, through the ISR and the INTx line.

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use log::{debug, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    features, status, ActiveQueue, GuestMemory, InterruptType, VirtioDevice, VirtioInterrupt,
};
use crate::interrupt::{InterruptError, InterruptLine, MsiInterruptGroup};
use crate::pci::configuration::{ConfigError, CAP_ID_VENDOR};
use crate::pci::msix::MsixError;
use crate::pci::{BarInfo, BarKind, BarMove, MsixConfig, PciConfiguration, PciDevice, PciIds};

/// Red Hat / Qumranet, the virtio PCI vendor.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1AF4;
/// Modern device IDs are this plus the virtio device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Subsystem ID QEMU gives virtio functions (vioscsi's INF matches
/// `SUBSYS_11001AF4`).
pub const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x1100;
/// "No MSI-X vector" in msix_config / queue_msix_vector.
pub const NO_VECTOR: u16 = 0xFFFF;

/// BAR 0 layout: common configuration.
pub const COMMON_CFG_OFFSET: u64 = 0x0000;
/// Size of the common configuration structure we implement (virtio 1.0).
pub const COMMON_CFG_LEN: u64 = 0x38;
/// ISR status byte.
pub const ISR_OFFSET: u64 = 0x1000;
/// Device-specific configuration.
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
/// Room reserved for device configuration.
pub const DEVICE_CFG_LEN: u64 = 0x1000;
/// Queue notification addresses: `NOTIFY_OFFSET + queue * NOTIFY_OFF_MULTIPLIER`.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// queue_notify_off multiplier.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// MSI-X table.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// MSI-X pending-bit array.
pub const MSIX_PBA_OFFSET: u64 = 0x6000;
/// Size of BAR 0 (32-bit, non-prefetchable memory).
pub const BAR0_SIZE: u64 = 0x8000;
/// Most queues the layout holds (MSI-X table below the PBA, one vector
/// per queue plus one).
pub const MAX_QUEUES: usize = 511;

/// virtio_pci_cap cfg_type values.
pub const CFG_TYPE_COMMON: u8 = 1;
/// Notification capability.
pub const CFG_TYPE_NOTIFY: u8 = 2;
/// ISR capability.
pub const CFG_TYPE_ISR: u8 = 3;
/// Device configuration capability.
pub const CFG_TYPE_DEVICE: u8 = 4;
/// PCI configuration access capability.
pub const CFG_TYPE_PCI: u8 = 5;

/// Class code (base, sub, prog-if) for a virtio device type, as QEMU uses.
fn class_code(device_type: u32) -> u32 {
    match device_type {
        super::device_type::SCSI => 0x01_00_00,
        super::device_type::BLOCK => 0x01_80_00,
        super::device_type::NET => 0x02_00_00,
        _ => 0xFF_00_00,
    }
}

/// Registers queue-notification eventfds with the hypervisor (KVM
/// ioeventfds on MMIO addresses, firing on any value and width). The VMM
/// implements it on top of its ioevent registrar.
pub trait NotifyRegistrar: Send + Sync + std::fmt::Debug {
    /// Signal `fd` for guest writes at MMIO address `addr`.
    fn register(&self, fd: &EventFd, addr: u64) -> Result<(), InterruptError>;
    /// Stop doing so.
    fn unregister(&self, fd: &EventFd, addr: u64) -> Result<(), InterruptError>;
}

/// Why a transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// An eventfd could not be created.
    #[error("creating a queue notification eventfd failed: {0}")]
    EventFd(#[source] std::io::Error),
    /// The device has no queues or more than the BAR layout can hold.
    #[error("device has {0} queues; the transport supports 1..=511")]
    QueueCount(usize),
    /// The MSI group must have one vector per queue plus one.
    #[error("MSI group has {got} vectors, need {need}")]
    VectorCount {
        /// Vectors needed.
        need: usize,
        /// Vectors in the group.
        got: u16,
    },
    /// Building the configuration space failed.
    #[error("configuration space: {0}")]
    Config(#[from] ConfigError),
    /// MSI-X set-up failed.
    #[error("MSI-X: {0}")]
    Msix(#[from] MsixError),
    /// Registering an ioeventfd failed.
    #[error("ioeventfd registration: {0}")]
    IoEvent(#[source] InterruptError),
}

#[derive(Debug, Clone, Copy, Default)]
struct QueueRegs {
    max_size: u16,
    size: u16,
    enabled: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

/// State shared between the transport (vCPU threads) and the device's
/// workers (through [`PciInterrupt`]).
struct Shared {
    msix: Mutex<MsixConfig>,
    intx: Mutex<Option<Arc<dyn InterruptLine>>>,
    isr: AtomicU8,
    status: AtomicU8,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("isr", &self.isr)
            .field("status", &self.status)
            .field("config_vector", &self.config_vector)
            .field("queue_vectors", &self.queue_vectors)
            .finish()
    }
}

impl Shared {
    fn msix(&self) -> MutexGuard<'_, MsixConfig> {
        self.msix.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Route one interrupt: the queue's (or config's) MSI-X vector when
    /// MSI-X is enabled, else ISR bit + INTx.
    fn trigger(&self, ty: InterruptType) {
        let mut msix = self.msix();
        if msix.enabled() {
            let vector = match ty {
                InterruptType::Config => self.config_vector.load(Ordering::Acquire),
                InterruptType::Queue(q) => match self.queue_vectors.get(usize::from(q)) {
                    Some(v) => v.load(Ordering::Acquire),
                    None => return,
                },
            };
            if vector != NO_VECTOR {
                msix.trigger(vector);
            }
            return;
        }
        drop(msix);
        let bit = match ty {
            InterruptType::Config => 2,
            InterruptType::Queue(_) => 1,
        };
        self.isr.fetch_or(bit, Ordering::AcqRel);
        let line = self.intx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(line) = line {
            if let Err(e) = line.set_level(true) {
                warn!("virtio-pci: INTx: {e}");
            }
        }
    }

    fn lower_intx(&self) {
        let line = self.intx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(line) = line {
            if let Err(e) = line.set_level(false) {
                warn!("virtio-pci: INTx: {e}");
            }
        }
    }
}

/// The device-facing interrupt of a virtio PCI function.
#[derive(Debug, Clone)]
pub struct PciInterrupt {
    shared: Arc<Shared>,
}

impl VirtioInterrupt for PciInterrupt {
    fn trigger(&self, ty: InterruptType) {
        self.shared.trigger(ty);
    }

    fn set_needs_reset(&self) {
        self.shared
            .status
            .fetch_or(status::NEEDS_RESET, Ordering::AcqRel);
        self.shared.trigger(InterruptType::Config);
    }
}

/// Where the capabilities landed in configuration space.
#[derive(Debug, Clone, Copy, Default)]
pub struct CapOffsets {
    /// Common configuration capability.
    pub common: usize,
    /// Notification capability.
    pub notify: usize,
    /// ISR capability.
    pub isr: usize,
    /// Device configuration capability.
    pub device: usize,
    /// PCI configuration access capability.
    pub pci_cfg: usize,
    /// MSI-X capability.
    pub msix: usize,
}

/// A virtio device behind a modern virtio PCI function.
#[derive(Debug)]
pub struct VirtioPciTransport<D: VirtioDevice> {
    device: D,
    config: PciConfiguration,
    caps: CapOffsets,
    shared: Arc<Shared>,
    mem: GuestMemory,
    ioevents: Option<Arc<dyn NotifyRegistrar>>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    queue_select: u16,
    queues: Vec<QueueRegs>,
    notify: Vec<Arc<EventFd>>,
    config_generation: u8,
    active: bool,
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn le_value(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}
fn lo32(v: u64) -> u32 {
    u32::try_from(v & 0xFFFF_FFFF).unwrap_or(0)
}

/// Body of a virtio_pci_cap after the ID and next bytes.
fn vendor_cap(len: u8, cfg_type: u8, offset: u64, length: u32, extra: &[u8]) -> Vec<u8> {
    let mut b = vec![len, cfg_type, 0, 0, 0, 0];
    b.extend_from_slice(&lo32(offset).to_le_bytes());
    b.extend_from_slice(&length.to_le_bytes());
    b.extend_from_slice(extra);
    b
}

impl<D: VirtioDevice> VirtioPciTransport<D> {
    /// Put `device` behind a new PCI function with BAR 0 at `bar0` (32-bit,
    /// aligned to [`BAR0_SIZE`]). `msi` must have one vector per queue plus
    /// one; `intx` is the function's INTx line (None: no INTx fallback);
    /// `ioevents` registers the notification eventfds with the hypervisor.
    pub fn new(
        device: D,
        mem: GuestMemory,
        bar0: u64,
        msi: Arc<dyn MsiInterruptGroup>,
        intx: Option<Arc<dyn InterruptLine>>,
        ioevents: Option<Arc<dyn NotifyRegistrar>>,
    ) -> Result<Self, TransportError> {
        let max_sizes = device.queue_max_sizes().to_vec();
        let nq = max_sizes.len();
        if nq == 0 || nq > MAX_QUEUES {
            return Err(TransportError::QueueCount(nq));
        }
        if usize::from(msi.len()) != nq + 1 {
            return Err(TransportError::VectorCount {
                need: nq + 1,
                got: msi.len(),
            });
        }
        let notify = (0..nq)
            .map(|_| EventFd::new(EFD_NONBLOCK).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(TransportError::EventFd)?;
        let queues = max_sizes
            .iter()
            .map(|&m| QueueRegs {
                max_size: m,
                size: m,
                ..Default::default()
            })
            .collect();
        let device_type = device.device_type();
        let mut config = PciConfiguration::new(PciIds {
            vendor: VIRTIO_PCI_VENDOR_ID,
            device: VIRTIO_PCI_DEVICE_ID_BASE
                .wrapping_add(u16::try_from(device_type & 0x3F).unwrap_or(0)),
            class: class_code(device_type),
            revision: 1,
            subsystem_vendor: VIRTIO_PCI_VENDOR_ID,
            subsystem: VIRTIO_PCI_SUBSYSTEM_ID,
            header_type: 0,
        });
        config.set_interrupt(1, 0); // INTA#
        config.add_bar(
            0,
            BarInfo {
                kind: BarKind::Mem32,
                size: BAR0_SIZE,
                prefetchable: false,
            },
            bar0,
        )?;
        let notify_len = u32::try_from(nq).unwrap_or(0) * NOTIFY_OFF_MULTIPLIER;
        let mut caps = CapOffsets {
            common: config.add_capability(
                CAP_ID_VENDOR,
                &vendor_cap(
                    16,
                    CFG_TYPE_COMMON,
                    COMMON_CFG_OFFSET,
                    lo32(COMMON_CFG_LEN),
                    &[],
                ),
            )?,
            notify: config.add_capability(
                CAP_ID_VENDOR,
                &vendor_cap(
                    20,
                    CFG_TYPE_NOTIFY,
                    NOTIFY_OFFSET,
                    notify_len,
                    &NOTIFY_OFF_MULTIPLIER.to_le_bytes(),
                ),
            )?,
            isr: config.add_capability(
                CAP_ID_VENDOR,
                &vendor_cap(16, CFG_TYPE_ISR, ISR_OFFSET, 1, &[]),
            )?,
            device: config.add_capability(
                CAP_ID_VENDOR,
                &vendor_cap(
                    16,
                    CFG_TYPE_DEVICE,
                    DEVICE_CFG_OFFSET,
                    lo32(DEVICE_CFG_LEN),
                    &[],
                ),
            )?,
            pci_cfg: config
                .add_capability(CAP_ID_VENDOR, &vendor_cap(20, CFG_TYPE_PCI, 0, 0, &[0; 4]))?,
            msix: 0,
        };
        // The access window: bar (byte 4), offset, length and data.
        config.set_writable(caps.pci_cfg / 4 + 1, 0x0000_00FF);
        config.set_writable(caps.pci_cfg / 4 + 2, 0xFFFF_FFFF);
        config.set_writable(caps.pci_cfg / 4 + 3, 0xFFFF_FFFF);
        config.set_writable(caps.pci_cfg / 4 + 4, 0xFFFF_FFFF);
        let msix = MsixConfig::new(msi)?;
        caps.msix = msix.add_capability(
            &mut config,
            0,
            lo32(MSIX_TABLE_OFFSET),
            0,
            lo32(MSIX_PBA_OFFSET),
        )?;
        let shared = Arc::new(Shared {
            msix: Mutex::new(msix),
            intx: Mutex::new(intx),
            isr: AtomicU8::new(0),
            status: AtomicU8::new(0),
            config_vector: AtomicU16::new(NO_VECTOR),
            queue_vectors: (0..nq).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
        });
        let t = VirtioPciTransport {
            device,
            config,
            caps,
            shared,
            mem,
            ioevents,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            queue_select: 0,
            queues,
            notify,
            config_generation: 0,
            active: false,
        };
        t.register_ioevents(bar0, true)
            .map_err(TransportError::IoEvent)?;
        Ok(t)
    }

    fn register_ioevents(&self, bar0: u64, register: bool) -> Result<(), InterruptError> {
        let Some(reg) = &self.ioevents else {
            return Ok(());
        };
        for (off, evt) in self.ioeventfds() {
            if register {
                reg.register(&evt, bar0 + off)?;
            } else {
                reg.unregister(&evt, bar0 + off)?;
            }
        }
        Ok(())
    }

    /// Wire INTA# to `line` (once the function's slot, hence its PIRQ, is
    /// known) and report `irq` in the interrupt line register.
    pub fn set_intx(&mut self, line: Arc<dyn InterruptLine>, irq: u8) {
        *self.shared.intx.lock().unwrap_or_else(|e| e.into_inner()) = Some(line);
        self.config.set_interrupt(1, irq);
    }

    /// Capability offsets in configuration space.
    pub fn capabilities(&self) -> CapOffsets {
        self.caps
    }

    /// The device behind the transport.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device behind the transport, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Guest-physical address BAR 0 is mapped at.
    pub fn bar0_address(&self) -> u64 {
        self.config.bar_mapped(0).unwrap_or(0)
    }

    /// The queue notification eventfds and their offsets in BAR 0 (any
    /// value, any width).
    pub fn ioeventfds(&self) -> Vec<(u64, Arc<EventFd>)> {
        self.notify
            .iter()
            .enumerate()
            .map(|(i, e)| {
                (
                    NOTIFY_OFFSET + u64::from(NOTIFY_OFF_MULTIPLIER) * i as u64,
                    Arc::clone(e),
                )
            })
            .collect()
    }

    /// The current device status byte.
    pub fn device_status(&self) -> u8 {
        self.shared.status.load(Ordering::Acquire)
    }

    /// An interrupt handle for this function (what the device gets at
    /// activation).
    pub fn interrupt(&self) -> PciInterrupt {
        PciInterrupt {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Whether MSI-X vector `v` is pending (masked when raised).
    pub fn msix_pending(&self, v: u16) -> bool {
        self.shared.msix().pending(v)
    }

    /// Tell the driver the device configuration changed.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.shared.trigger(InterruptType::Config);
    }

    /// VIRTIO_PCI_CAP_PCI_CFG: access `length` bytes of BAR `bar` at
    /// `offset` through the capability's data window.
    fn pci_cfg_window(&mut self, write: bool) {
        let r = self.caps.pci_cfg / 4;
        let bar = self.config.read_reg(r + 1) & 0xFF;
        let off = u64::from(self.config.read_reg(r + 2));
        let len = self.config.read_reg(r + 3);
        if bar != 0 || !matches!(len, 1 | 2 | 4) {
            return;
        }
        let n = usize::try_from(len).unwrap_or(0);
        let mut buf = self.config.read_reg(r + 4).to_le_bytes();
        if write {
            self.bar_write(off, &buf[..n]);
        } else {
            self.bar_read(off, &mut buf[..n]);
            self.config.set_reg(r + 4, u32::from_le_bytes(buf));
        }
    }

    // ---------------------------------------------------------------
    // BAR 0.

    /// Guest read of BAR 0 at `offset`.
    pub fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() > 8 {
            return;
        }
        match offset {
            o if o < COMMON_CFG_LEN => self.common_read(o, data),
            ISR_OFFSET => {
                // Reading the ISR clears it and deasserts INTx.
                data[0] = self.shared.isr.swap(0, Ordering::AcqRel);
                self.shared.lower_intx();
            }
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_LEN).contains(&o) => {
                self.device.read_config(o - DEVICE_CFG_OFFSET, data);
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                self.shared.msix().read_table(o - MSIX_TABLE_OFFSET, data);
            }
            o if (MSIX_PBA_OFFSET..BAR0_SIZE).contains(&o) => {
                self.shared.msix().read_pba(o - MSIX_PBA_OFFSET, data);
            }
            _ => {}
        }
    }

    /// Guest write of BAR 0 at `offset`.
    pub fn bar_write(&mut self, offset: u64, data: &[u8]) {
        if data.len() > 8 {
            return;
        }
        match offset {
            o if o < COMMON_CFG_LEN => self.common_write(o, data),
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_LEN).contains(&o) => {
                self.device.write_config(o - DEVICE_CFG_OFFSET, data);
            }
            o if (NOTIFY_OFFSET..MSIX_TABLE_OFFSET).contains(&o) => {
                let q = (o - NOTIFY_OFFSET) / u64::from(NOTIFY_OFF_MULTIPLIER);
                if let Some(evt) = usize::try_from(q).ok().and_then(|q| self.notify.get(q)) {
                    if let Err(e) = evt.write(1) {
                        warn!("virtio-pci: queue {q} notify failed: {e}");
                    }
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                self.shared.msix().write_table(o - MSIX_TABLE_OFFSET, data);
            }
            _ => {}
        }
    }

    // ---------------------------------------------------------------
    // Common configuration (virtio 1.2, 4.1.4.3).

    fn common_image(&self) -> [u8; 0x38] {
        let mut b = [0u8; 0x38];
        let features = self.device.features();
        put32(&mut b, 0x00, self.device_feature_select);
        let page = match self.device_feature_select {
            0 => lo32(features),
            1 => lo32(features >> 32),
            _ => 0,
        };
        put32(&mut b, 0x04, page);
        put32(&mut b, 0x08, self.driver_feature_select);
        let dpage = match self.driver_feature_select {
            0 => lo32(self.driver_features),
            1 => lo32(self.driver_features >> 32),
            _ => 0,
        };
        put32(&mut b, 0x0C, dpage);
        put16(
            &mut b,
            0x10,
            self.shared.config_vector.load(Ordering::Acquire),
        );
        put16(
            &mut b,
            0x12,
            u16::try_from(self.queues.len()).unwrap_or(u16::MAX),
        );
        b[0x14] = self.device_status();
        b[0x15] = self.config_generation;
        put16(&mut b, 0x16, self.queue_select);
        if let Some(q) = self.queues.get(usize::from(self.queue_select)) {
            put16(&mut b, 0x18, q.size);
            let vec =
                self.shared.queue_vectors[usize::from(self.queue_select)].load(Ordering::Acquire);
            put16(&mut b, 0x1A, vec);
            put16(&mut b, 0x1C, u16::from(q.enabled));
            put16(&mut b, 0x1E, self.queue_select); // queue_notify_off
            b[0x20..0x28].copy_from_slice(&q.desc.to_le_bytes());
            b[0x28..0x30].copy_from_slice(&q.driver.to_le_bytes());
            b[0x30..0x38].copy_from_slice(&q.device.to_le_bytes());
        } else {
            // Nonexistent queue: size 0 (virtio 1.2, 4.1.4.3.1).
            put16(&mut b, 0x1A, NO_VECTOR);
        }
        b
    }

    fn common_read(&self, offset: u64, data: &mut [u8]) {
        let img = self.common_image();
        super::read_config_bytes(&img, offset, data);
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let Ok(off) = usize::try_from(offset) else {
            return;
        };
        let end = off + data.len();
        let mut img = self.common_image();
        if end > img.len() {
            return;
        }
        img[off..end].copy_from_slice(data);
        const FIELDS: [(usize, usize); 12] = [
            (0x00, 4),
            (0x08, 4),
            (0x0C, 4),
            (0x10, 2),
            (0x14, 1),
            (0x16, 2),
            (0x18, 2),
            (0x1A, 2),
            (0x1C, 2),
            (0x20, 8),
            (0x28, 8),
            (0x30, 8),
        ];
        for (fo, fl) in FIELDS {
            if off < fo + fl && fo < end {
                // A 32-bit access to half of a 64-bit field keeps the other
                // half (it is in `img` already).
                self.apply_common(fo, le_value(&img[fo..fo + fl]));
            }
        }
    }

    fn apply_common(&mut self, field: usize, v: u64) {
        let st = self.device_status();
        let q = usize::from(self.queue_select);
        match field {
            0x00 => self.device_feature_select = lo32(v),
            0x08 => self.driver_feature_select = lo32(v),
            0x0C => {
                if st & status::DRIVER == 0 || st & status::FEATURES_OK != 0 {
                    debug!("virtio-pci: driver_feature write outside negotiation ignored");
                    return;
                }
                match self.driver_feature_select {
                    0 => self.driver_features = (self.driver_features & !0xFFFF_FFFF) | v,
                    1 => self.driver_features = (self.driver_features & 0xFFFF_FFFF) | (v << 32),
                    _ => {}
                }
            }
            0x10 => {
                let vec = self.checked_vector(v);
                self.shared.config_vector.store(vec, Ordering::Release);
            }
            0x14 => self.set_status(u8::try_from(v & 0xFF).unwrap_or(0)),
            0x16 => self.queue_select = u16::try_from(v & 0xFFFF).unwrap_or(0),
            0x1A => {
                if q < self.queues.len() {
                    let vec = self.checked_vector(v);
                    self.shared.queue_vectors[q].store(vec, Ordering::Release);
                }
            }
            _ => {
                if st & status::DRIVER_OK != 0 {
                    return;
                }
                let Some(regs) = self.queues.get_mut(q) else {
                    return;
                };
                match field {
                    // Only 1 may be written (virtio 1.2, 4.1.4.3.2).
                    0x1C if v == 1 => regs.enabled = true,
                    0x1C => {}
                    _ if regs.enabled => {}
                    0x18 => {
                        let size = u16::try_from(v & 0xFFFF).unwrap_or(0);
                        if size != 0 && size.is_power_of_two() && size <= regs.max_size {
                            regs.size = size;
                        } else {
                            debug!("virtio-pci: queue {q} size {size} rejected");
                        }
                    }
                    0x20 => regs.desc = v,
                    0x28 => regs.driver = v,
                    0x30 => regs.device = v,
                    _ => {}
                }
            }
        }
    }

    /// A vector number is stored only if the table has it (else NO_VECTOR,
    /// which tells the driver the mapping failed).
    fn checked_vector(&self, v: u64) -> u16 {
        let vec = u16::try_from(v & 0xFFFF).unwrap_or(NO_VECTOR);
        if vec < self.shared.msix().vectors() {
            vec
        } else {
            NO_VECTOR
        }
    }

    fn set_status(&mut self, new: u8) {
        if new == 0 {
            self.reset();
            return;
        }
        let old = self.device_status();
        let mut new = new | (old & status::NEEDS_RESET);
        if new & old != old {
            debug!("virtio-pci: status {old:#x} -> {new:#x} clears bits; ignored");
            return;
        }
        let added = new & !old;
        if added & status::FEATURES_OK != 0 {
            let offered = self.device.features();
            if self.driver_features & !offered != 0
                || self.driver_features & features::VERSION_1 == 0
            {
                debug!(
                    "virtio-pci: features {:#x} refused (offered {offered:#x})",
                    self.driver_features
                );
                new &= !status::FEATURES_OK;
            } else {
                self.device.ack_features(self.driver_features);
            }
        }
        self.shared.status.store(new, Ordering::Release);
        if added & status::DRIVER_OK != 0 && new & status::FEATURES_OK != 0 && !self.active {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & features::RING_EVENT_IDX != 0;
        let mut active = Vec::new();
        for (i, regs) in self.queues.iter().enumerate() {
            if !regs.enabled {
                continue;
            }
            let index = u16::try_from(i).unwrap_or(u16::MAX);
            let queue = match Self::make_queue(regs, event_idx, &self.mem) {
                Some(q) => q,
                None => {
                    warn!("virtio-pci: queue {i} configuration invalid");
                    self.interrupt().set_needs_reset();
                    return;
                }
            };
            active.push(ActiveQueue {
                index,
                queue,
                notify: Arc::clone(&self.notify[i]),
            });
        }
        let irq = Arc::new(self.interrupt());
        match self.device.activate(self.mem.clone(), irq, active) {
            Ok(()) => self.active = true,
            Err(e) => {
                warn!("virtio-pci: activation failed: {e}");
                self.interrupt().set_needs_reset();
            }
        }
    }

    fn make_queue(regs: &QueueRegs, event_idx: bool, mem: &GuestMemory) -> Option<Queue> {
        let mut q = Queue::new(regs.max_size).ok()?;
        q.try_set_size(regs.size).ok()?;
        q.try_set_desc_table_address(GuestAddress(regs.desc)).ok()?;
        q.try_set_avail_ring_address(GuestAddress(regs.driver))
            .ok()?;
        q.try_set_used_ring_address(GuestAddress(regs.device))
            .ok()?;
        q.set_event_idx(event_idx);
        q.set_ready(true);
        q.is_valid(mem).then_some(q)
    }

    /// Device reset (status 0 written): stop the device, forget negotiated
    /// features and queue configuration, clear the ISR.
    pub fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        self.shared.status.store(0, Ordering::Release);
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        for q in &mut self.queues {
            *q = QueueRegs {
                max_size: q.max_size,
                size: q.max_size,
                ..Default::default()
            };
        }
        self.shared
            .config_vector
            .store(NO_VECTOR, Ordering::Release);
        for v in &self.shared.queue_vectors {
            v.store(NO_VECTOR, Ordering::Release);
        }
        for e in &self.notify {
            // Drain a stale notification; EAGAIN when none is pending.
            let _ = e.read();
        }
        if self.shared.isr.swap(0, Ordering::AcqRel) != 0 {
            self.shared.lower_intx();
        }
    }
}

impl<D: VirtioDevice> PciDevice for VirtioPciTransport<D> {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }

    fn read_config(&mut self, reg: usize) -> u32 {
        if reg == self.caps.pci_cfg / 4 + 4 {
            self.pci_cfg_window(false);
        }
        self.config.read_reg(reg)
    }

    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarMove> {
        let mv = self.config.write_reg(reg, offset, data);
        if reg == self.caps.msix / 4 {
            let ctrl = u16::try_from(self.config.read_reg(reg) >> 16).unwrap_or(0);
            self.shared.msix().set_control(ctrl);
        }
        if reg == self.caps.pci_cfg / 4 + 4 {
            self.pci_cfg_window(true);
        }
        mv
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar == 0 {
            self.bar_read(offset, data);
        } else {
            data.fill(0);
        }
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar == 0 {
            self.bar_write(offset, data);
        }
    }

    fn bar_moved(&mut self, mv: &BarMove) {
        if mv.bar != 0 {
            return;
        }
        if let Err(e) = self.register_ioevents(mv.old, false) {
            warn!("virtio-pci: unregistering ioeventfds at {:#x}: {e}", mv.old);
        }
        if let Err(e) = self.register_ioevents(mv.new, true) {
            warn!("virtio-pci: registering ioeventfds at {:#x}: {e}", mv.new);
        }
    }
}

#[cfg(test)]
mod tests;
