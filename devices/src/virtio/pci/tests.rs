//! Transport unit tests: every common-configuration register, feature
//! paging, the status machine, queue set-up, notification, MSI-X masking,
//! INTx fallback and the configuration-space layout.

use std::sync::{Arc, Mutex};

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::virtio::scsi::test_utils::{RecordingLine, RecordingMsi};
use crate::virtio::{ActivateError, VirtioInterrupt};

const BAR: u64 = 0xE000_0000;
const OFFERED: u64 = (1 << 3) | features::RING_EVENT_IDX | features::VERSION_1;

#[derive(Debug, Default)]
struct Log {
    acked: Option<u64>,
    activated: Vec<(u16, u16, u64, u64, u64, bool)>,
    resets: usize,
    config_writes: Vec<(u64, Vec<u8>)>,
    irq: Option<Arc<dyn VirtioInterrupt>>,
}

#[derive(Debug)]
struct Dummy {
    sizes: Vec<u16>,
    log: Arc<Mutex<Log>>,
    fail_activate: bool,
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        crate::virtio::device_type::SCSI
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        OFFERED
    }
    fn ack_features(&mut self, f: u64) {
        self.log.lock().unwrap().acked = Some(f);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&[0x11, 0x22, 0x33, 0x44, 0x55], offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.log
            .lock()
            .unwrap()
            .config_writes
            .push((offset, data.to_vec()));
    }
    fn activate(
        &mut self,
        _mem: GuestMemory,
        irq: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        if self.fail_activate {
            return Err(ActivateError::MissingQueue(0));
        }
        let mut log = self.log.lock().unwrap();
        for q in queues {
            log.activated.push((
                q.index,
                q.queue.size(),
                q.queue.desc_table(),
                q.queue.avail_ring(),
                q.queue.used_ring(),
                q.queue.event_idx_enabled(),
            ));
        }
        log.irq = Some(irq);
        Ok(())
    }
    fn reset(&mut self) {
        self.log.lock().unwrap().resets += 1;
    }
}

struct Fixture {
    t: VirtioPciTransport<Dummy>,
    log: Arc<Mutex<Log>>,
    msi: Arc<RecordingMsi>,
    line: Arc<RecordingLine>,
}

fn fixture() -> Fixture {
    fixture_with(false)
}

fn fixture_with(fail_activate: bool) -> Fixture {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let log = Arc::new(Mutex::new(Log::default()));
    let msi = RecordingMsi::new(4);
    let line = Arc::new(RecordingLine::default());
    let dev = Dummy {
        sizes: vec![256, 128, 64],
        log: log.clone(),
        fail_activate,
    };
    let t = VirtioPciTransport::new(dev, mem, BAR, msi.clone(), Some(line.clone()), None)
        .expect("transport");
    Fixture { t, log, msi, line }
}

fn r8(t: &mut VirtioPciTransport<Dummy>, off: u64) -> u8 {
    let mut b = [0u8; 1];
    t.bar_read(off, &mut b);
    b[0]
}
fn r16(t: &mut VirtioPciTransport<Dummy>, off: u64) -> u16 {
    let mut b = [0u8; 2];
    t.bar_read(off, &mut b);
    u16::from_le_bytes(b)
}
fn r32(t: &mut VirtioPciTransport<Dummy>, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.bar_read(off, &mut b);
    u32::from_le_bytes(b)
}
fn r64(t: &mut VirtioPciTransport<Dummy>, off: u64) -> u64 {
    let mut b = [0u8; 8];
    t.bar_read(off, &mut b);
    u64::from_le_bytes(b)
}
fn w8(t: &mut VirtioPciTransport<Dummy>, off: u64, v: u8) {
    t.bar_write(off, &[v]);
}
fn w16(t: &mut VirtioPciTransport<Dummy>, off: u64, v: u16) {
    t.bar_write(off, &v.to_le_bytes());
}
fn w32(t: &mut VirtioPciTransport<Dummy>, off: u64, v: u32) {
    t.bar_write(off, &v.to_le_bytes());
}
fn w64(t: &mut VirtioPciTransport<Dummy>, off: u64, v: u64) {
    t.bar_write(off, &v.to_le_bytes());
}
fn cfg32(t: &mut VirtioPciTransport<Dummy>, off: usize) -> u32 {
    t.read_config(off / 4)
}
fn cfg_w32(t: &mut VirtioPciTransport<Dummy>, off: usize, v: u32) {
    let _ = t.write_config(off / 4, 0, &v.to_le_bytes());
}

/// Negotiate `feats` and stop before DRIVER_OK.
fn negotiate(t: &mut VirtioPciTransport<Dummy>, feats: u64) -> u8 {
    w8(t, 0x14, status::ACKNOWLEDGE);
    w8(t, 0x14, status::ACKNOWLEDGE | status::DRIVER);
    w32(t, 0x08, 0);
    w32(t, 0x0C, lo32(feats));
    w32(t, 0x08, 1);
    w32(t, 0x0C, lo32(feats >> 32));
    w8(
        t,
        0x14,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    r8(t, 0x14)
}

fn setup_queue(t: &mut VirtioPciTransport<Dummy>, q: u16, size: u16, base: u64) {
    w16(t, 0x16, q);
    w16(t, 0x18, size);
    w64(t, 0x20, base);
    w64(t, 0x28, base + 0x1000);
    w64(t, 0x30, base + 0x2000);
    w16(t, 0x1C, 1);
}

const DRIVER_OK_ALL: u8 =
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

#[test]
fn identity_matches_qemu_modern_virtio_scsi() {
    let mut f = fixture();
    let t = &mut f.t;
    assert_eq!(cfg32(t, 0x00), 0x1048_1AF4, "device 0x1048, vendor 0x1AF4");
    // Class 01/00/00 (SCSI storage), revision 1.
    assert_eq!(cfg32(t, 0x08), 0x0100_0001);
    assert_eq!(cfg32(t, 0x2C), 0x1100_1AF4, "subsystem 0x1100, 0x1AF4");
    // Capability list bit in status; interrupt pin INTA.
    assert_eq!(cfg32(t, 0x04) >> 16 & 0x10, 0x10);
    assert_eq!((cfg32(t, 0x3C) >> 8) & 0xFF, 1);
    // BAR 0: 32-bit, non-prefetchable memory at BAR.
    assert_eq!(u64::from(cfg32(t, 0x10)), BAR);
    assert_eq!(t.bar0_address(), BAR);
}

#[test]
fn bar0_size_probe() {
    let mut f = fixture();
    cfg_w32(&mut f.t, 0x10, 0xFFFF_FFFF);
    assert_eq!(cfg32(&mut f.t, 0x10), 0xFFFF_8000, "32 KiB, memory, 32-bit");
    cfg_w32(&mut f.t, 0x10, 0xD000_0000);
    assert_eq!(cfg32(&mut f.t, 0x10), 0xD000_0000);
}

#[test]
fn capability_list_describes_bar_layout() {
    let mut f = fixture();
    let t = &mut f.t;
    let mut ptr = usize::try_from(cfg32(t, 0x34) & 0xFF).unwrap();
    let mut seen = Vec::new();
    while ptr != 0 {
        let head = cfg32(t, ptr);
        let id = head & 0xFF;
        let next = usize::try_from((head >> 8) & 0xFF).unwrap();
        if id == 0x09 {
            let cap_len = (head >> 16) & 0xFF;
            let cfg_type = head >> 24;
            let bar = cfg32(t, ptr + 4) & 0xFF;
            let offset = cfg32(t, ptr + 8);
            let length = cfg32(t, ptr + 12);
            seen.push((cfg_type, cap_len, bar, offset, length));
            if cfg_type == 2 {
                assert_eq!(cfg32(t, ptr + 16), 4, "notify_off_multiplier");
            }
        } else {
            assert_eq!(id, 0x11, "only vendor and MSI-X capabilities");
            // 4 vectors (3 queues + config): table size field 3.
            assert_eq!(head >> 16, 3);
            assert_eq!(cfg32(t, ptr + 4), 0x4000, "table at 0x4000, BIR 0");
            assert_eq!(cfg32(t, ptr + 8), 0x6000, "PBA at 0x6000, BIR 0");
            seen.push((0x11, 0, 0, 0, 0));
        }
        ptr = next;
    }
    assert_eq!(
        seen,
        vec![
            (1, 16, 0, 0x0000, 0x38),
            (2, 20, 0, 0x3000, 12),
            (3, 16, 0, 0x1000, 1),
            (4, 16, 0, 0x2000, 0x1000),
            (5, 20, 0, 0, 0),
            (0x11, 0, 0, 0, 0),
        ]
    );
}

#[test]
fn feature_pages_read_and_negotiate() {
    let mut f = fixture();
    let t = &mut f.t;
    w32(t, 0x00, 0);
    assert_eq!(r32(t, 0x04), lo32(OFFERED));
    w32(t, 0x00, 1);
    assert_eq!(r32(t, 0x04), 1, "VERSION_1 is bit 0 of page 1");
    assert_eq!(r32(t, 0x00), 1);
    w32(t, 0x00, 2);
    assert_eq!(r32(t, 0x04), 0, "pages past 1 are empty");

    // Driver features are ignored before DRIVER.
    w32(t, 0x08, 0);
    w32(t, 0x0C, 8);
    assert_eq!(r32(t, 0x0C), 0);

    let st = negotiate(t, features::VERSION_1 | (1 << 3));
    assert_eq!(st & status::FEATURES_OK, status::FEATURES_OK);
    assert_eq!(
        f.log.lock().unwrap().acked,
        Some(features::VERSION_1 | (1 << 3))
    );
    // Read back by page.
    w32(t, 0x08, 0);
    assert_eq!(r32(t, 0x0C), 8);
    w32(t, 0x08, 1);
    assert_eq!(r32(t, 0x0C), 1);
    // Locked after FEATURES_OK.
    w32(t, 0x08, 0);
    w32(t, 0x0C, 0);
    assert_eq!(r32(t, 0x0C), 8);
}

#[test]
fn features_ok_refused_without_version_1_or_with_unoffered_bits() {
    let mut f = fixture();
    let st = negotiate(&mut f.t, 1 << 3);
    assert_eq!(st & status::FEATURES_OK, 0, "legacy-only driver refused");
    assert_eq!(f.log.lock().unwrap().acked, None);

    let mut f = fixture();
    let st = negotiate(&mut f.t, features::VERSION_1 | (1 << 5));
    assert_eq!(st & status::FEATURES_OK, 0, "bit 5 was not offered");
    assert_eq!(f.log.lock().unwrap().acked, None);
}

#[test]
fn common_config_queue_registers() {
    let mut f = fixture();
    let t = &mut f.t;
    assert_eq!(r16(t, 0x12), 3, "num_queues");
    for (q, max) in [(0u16, 256u16), (1, 128), (2, 64)] {
        w16(t, 0x16, q);
        assert_eq!(r16(t, 0x16), q);
        assert_eq!(r16(t, 0x18), max, "queue_size starts at the maximum");
        assert_eq!(r16(t, 0x1A), NO_VECTOR);
        assert_eq!(r16(t, 0x1C), 0);
        assert_eq!(r16(t, 0x1E), q, "queue_notify_off");
    }
    // A queue that does not exist reads size 0.
    w16(t, 0x16, 7);
    assert_eq!(r16(t, 0x18), 0);
    w16(t, 0x18, 16);
    assert_eq!(r16(t, 0x18), 0);

    w16(t, 0x16, 0);
    w16(t, 0x18, 100); // not a power of two
    assert_eq!(r16(t, 0x18), 256);
    w16(t, 0x18, 512); // above the maximum
    assert_eq!(r16(t, 0x18), 256);
    w16(t, 0x18, 64);
    assert_eq!(r16(t, 0x18), 64);

    // 64-bit addresses written as two 32-bit halves, and as one 64-bit access.
    w32(t, 0x20, 0x1234_5000);
    w32(t, 0x24, 0x1);
    assert_eq!(r64(t, 0x20), 0x1_1234_5000);
    assert_eq!(r32(t, 0x24), 1);
    w64(t, 0x28, 0xAAAA_0000);
    assert_eq!(r64(t, 0x28), 0xAAAA_0000);
    w64(t, 0x30, 0xBBBB_0000);
    assert_eq!(r64(t, 0x30), 0xBBBB_0000);

    // MSI-X vectors: in range kept, out of range → NO_VECTOR.
    w16(t, 0x1A, 2);
    assert_eq!(r16(t, 0x1A), 2);
    w16(t, 0x1A, 4);
    assert_eq!(r16(t, 0x1A), NO_VECTOR);
    w16(t, 0x10, 3);
    assert_eq!(r16(t, 0x10), 3);
    w16(t, 0x10, 9);
    assert_eq!(r16(t, 0x10), NO_VECTOR);

    // Enable: only 1 counts; afterwards the queue's set-up is frozen.
    w16(t, 0x1C, 0);
    assert_eq!(r16(t, 0x1C), 0);
    w16(t, 0x1C, 1);
    assert_eq!(r16(t, 0x1C), 1);
    w16(t, 0x18, 32);
    w64(t, 0x20, 0x9000);
    assert_eq!(r16(t, 0x18), 64);
    assert_eq!(r64(t, 0x20), 0x1_1234_5000);
    // config_generation reads 0 and is read-only.
    w8(t, 0x15, 9);
    assert_eq!(r8(t, 0x15), 0);
}

#[test]
fn driver_ok_activates_enabled_queues_and_reset_clears_everything() {
    let mut f = fixture();
    let t = &mut f.t;
    negotiate(t, features::VERSION_1 | features::RING_EVENT_IDX);
    setup_queue(t, 0, 64, 0x10000);
    setup_queue(t, 2, 32, 0x20000);
    w16(t, 0x16, 2);
    w16(t, 0x1A, 1);
    w8(t, 0x14, DRIVER_OK_ALL);
    assert_eq!(r8(t, 0x14), DRIVER_OK_ALL);
    {
        let log = f.log.lock().unwrap();
        assert_eq!(
            log.activated,
            vec![
                (0, 64, 0x10000, 0x11000, 0x12000, true),
                (2, 32, 0x20000, 0x21000, 0x22000, true),
            ]
        );
    }
    // Clearing bits other than by reset is ignored.
    w8(t, 0x14, status::ACKNOWLEDGE);
    assert_eq!(r8(t, 0x14), DRIVER_OK_ALL);

    w8(t, 0x14, 0);
    assert_eq!(r8(t, 0x14), 0);
    assert_eq!(f.log.lock().unwrap().resets, 1);
    w16(t, 0x16, 2);
    assert_eq!(r16(t, 0x18), 64, "size back to the maximum");
    assert_eq!(r16(t, 0x1A), NO_VECTOR);
    assert_eq!(r16(t, 0x1C), 0);
    assert_eq!(r64(t, 0x20), 0);
    w32(t, 0x08, 0);
    assert_eq!(r32(t, 0x0C), 0, "driver features cleared");
    // A second reset of an inactive device does not reset the device again.
    w8(t, 0x14, 0);
    assert_eq!(f.log.lock().unwrap().resets, 1);
}

#[test]
fn invalid_ring_address_sets_needs_reset() {
    let mut f = fixture();
    let t = &mut f.t;
    negotiate(t, features::VERSION_1);
    setup_queue(t, 0, 64, 0x10_0000); // just past guest memory
    w8(t, 0x14, DRIVER_OK_ALL);
    assert_eq!(r8(t, 0x14) & status::NEEDS_RESET, status::NEEDS_RESET);
    assert!(f.log.lock().unwrap().activated.is_empty());
    // Reset clears it.
    w8(t, 0x14, 0);
    assert_eq!(r8(t, 0x14), 0);
}

#[test]
fn failed_activation_sets_needs_reset() {
    let mut f = fixture_with(true);
    let t = &mut f.t;
    negotiate(t, features::VERSION_1);
    setup_queue(t, 0, 64, 0x10000);
    w8(t, 0x14, DRIVER_OK_ALL);
    assert_eq!(r8(t, 0x14), DRIVER_OK_ALL | status::NEEDS_RESET);
}

#[test]
fn notify_writes_signal_the_queue_eventfd() {
    let mut f = fixture();
    let fds = f.t.ioeventfds();
    assert_eq!(
        fds.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        vec![0x3000, 0x3004, 0x3008]
    );
    w16(&mut f.t, 0x3008, 2);
    assert_eq!(fds[2].1.read().unwrap(), 1);
    assert!(fds[0].1.read().is_err(), "queue 0 not notified");
    w32(&mut f.t, 0x3000, 0);
    assert_eq!(fds[0].1.read().unwrap(), 1);
}

#[test]
fn device_config_passes_through() {
    let mut f = fixture();
    assert_eq!(r32(&mut f.t, 0x2000), 0x4433_2211);
    assert_eq!(r16(&mut f.t, 0x2003), 0x5544);
    assert_eq!(r8(&mut f.t, 0x2005), 0);
    w32(&mut f.t, 0x2014, 0x20);
    assert_eq!(
        f.log.lock().unwrap().config_writes,
        vec![(0x14, vec![0x20, 0, 0, 0])]
    );
}

fn enable_msix(t: &mut VirtioPciTransport<Dummy>, ctrl_bits: u32) {
    let cap = t.capabilities().msix;
    let v = t.read_config(cap / 4);
    let _ = t.write_config(
        cap / 4,
        0,
        &((v & 0xFFFF) | (ctrl_bits << 16)).to_le_bytes(),
    );
}

fn program_vector(t: &mut VirtioPciTransport<Dummy>, v: u64, addr: u64, data: u32, masked: bool) {
    let e = 0x4000 + 16 * v;
    w32(t, e, lo32(addr));
    w32(t, e + 4, lo32(addr >> 32));
    w32(t, e + 8, data);
    w32(t, e + 12, u32::from(masked));
}

#[test]
fn msix_per_queue_vectors_masking_and_pending_bits() {
    let mut f = fixture();
    let t = &mut f.t;
    negotiate(t, features::VERSION_1);
    setup_queue(t, 0, 64, 0x10000);
    w16(t, 0x16, 0);
    w16(t, 0x1A, 1);
    w16(t, 0x10, 0);
    w8(t, 0x14, DRIVER_OK_ALL);
    let irq = f.log.lock().unwrap().irq.clone().unwrap();

    enable_msix(t, 0x8000);
    program_vector(t, 1, 0xFEE0_0000, 0x41, false);
    program_vector(t, 0, 0xFEE0_0000, 0x40, true);
    assert_eq!(r32(t, 0x4010 + 8), 0x41, "table reads back");
    assert_eq!(r32(t, 0x400C), 1, "vector 0 masked");

    irq.trigger(InterruptType::Queue(0));
    assert_eq!(*f.msi.fired.lock().unwrap(), vec![1]);
    // Config vector is masked: pending, not delivered.
    irq.trigger(InterruptType::Config);
    assert_eq!(*f.msi.fired.lock().unwrap(), vec![1]);
    assert!(t.msix_pending(0));
    assert_eq!(r64(t, 0x6000), 1, "PBA bit 0");
    // Unmasking delivers it and clears the pending bit.
    w32(t, 0x400C, 0);
    assert_eq!(*f.msi.fired.lock().unwrap(), vec![1, 0]);
    assert_eq!(r64(t, 0x6000), 0);

    // Function mask holds everything back.
    enable_msix(t, 0xC000);
    irq.trigger(InterruptType::Queue(0));
    assert_eq!(f.msi.fired.lock().unwrap().len(), 2);
    assert!(t.msix_pending(1));
    enable_msix(t, 0x8000);
    assert_eq!(*f.msi.fired.lock().unwrap(), vec![1, 0, 1]);
    // With MSI-X on, INTx is never used.
    assert!(f.line.levels.lock().unwrap().is_empty());
    assert_eq!(r8(t, 0x1000), 0);
    // A queue with NO_VECTOR raises nothing.
    irq.trigger(InterruptType::Queue(2));
    assert_eq!(f.msi.fired.lock().unwrap().len(), 3);
}

#[test]
fn intx_fallback_uses_isr_and_read_clears() {
    let mut f = fixture();
    let t = &mut f.t;
    negotiate(t, features::VERSION_1);
    setup_queue(t, 0, 64, 0x10000);
    w8(t, 0x14, DRIVER_OK_ALL);
    let irq = f.log.lock().unwrap().irq.clone().unwrap();
    irq.trigger(InterruptType::Queue(0));
    assert!(f.line.level());
    irq.trigger(InterruptType::Config);
    assert_eq!(r8(t, 0x1000), 0b11, "queue + config bits");
    assert!(!f.line.level(), "reading the ISR lowers INTx");
    assert_eq!(r8(t, 0x1000), 0);
    assert!(f.msi.fired.lock().unwrap().is_empty());
}

#[test]
fn device_needs_reset_from_the_device_side() {
    let mut f = fixture();
    let t = &mut f.t;
    negotiate(t, features::VERSION_1);
    setup_queue(t, 0, 64, 0x10000);
    w8(t, 0x14, DRIVER_OK_ALL);
    let irq = f.log.lock().unwrap().irq.clone().unwrap();
    irq.set_needs_reset();
    assert_eq!(r8(t, 0x14), DRIVER_OK_ALL | status::NEEDS_RESET);
    assert_eq!(r8(t, 0x1000), 0b10, "config-change interrupt");
    // Driver writes keep the bit until reset.
    w8(t, 0x14, DRIVER_OK_ALL);
    assert_eq!(r8(t, 0x14) & status::NEEDS_RESET, status::NEEDS_RESET);
    w8(t, 0x14, 0);
    assert_eq!(r8(t, 0x14), 0);
}

#[test]
fn pci_cfg_access_capability_reads_and_writes_the_bar() {
    let mut f = fixture();
    let t = &mut f.t;
    let cap = t.capabilities().pci_cfg;
    // bar 0, offset 0x12 (num_queues), length 2.
    cfg_w32(t, cap + 4, 0);
    cfg_w32(t, cap + 8, 0x12);
    cfg_w32(t, cap + 12, 2);
    assert_eq!(cfg32(t, cap + 16) & 0xFFFF, 3);
    // Write queue_select = 2 through the window.
    cfg_w32(t, cap + 8, 0x16);
    cfg_w32(t, cap + 16, 2);
    assert_eq!(r16(t, 0x16), 2);
}

#[test]
fn odd_accesses_are_harmless() {
    let mut f = fixture();
    let t = &mut f.t;
    let mut big = [0xAAu8; 16];
    t.bar_read(0, &mut big);
    assert_eq!(big, [0; 16]);
    t.bar_write(0x14, &[0xFF; 16]);
    assert_eq!(r8(t, 0x14), 0);
    t.bar_write(0x7FFF, &[1]);
    t.bar_write(u64::MAX, &[1, 2, 3, 4]);
    assert_eq!(r32(t, u64::MAX - 1), 0);
    t.bar_write(0x37, &[1, 2, 3, 4]); // straddles the end of common config
    let mut b = [0u8; 4];
    t.read_bar(3, 0, &mut b);
    assert_eq!(b, [0; 4]);
}
