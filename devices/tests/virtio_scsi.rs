//! virtio-scsi device tests with virtio-queue's MockSplitQueue and a fake
//! target whose every disk byte names its target, LUN and block: routing,
//! LUN addressing forms, responses (status, sense, resid), configuration
//! space, control queue TMFs, event queue, malformed chains, and one run
//! through the PCI transport with real worker threads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::pci::PciDevice;
use devices::virtio::pci::VirtioPciTransport;
use devices::virtio::scsi::control::tmf;
use devices::virtio::scsi::event::{
    EVENTS_MISSED, EVT_RESET_REMOVED, EVT_RESET_RESCAN, T_PARAM_CHANGE, T_TRANSPORT_RESET,
};
use devices::virtio::scsi::request::{decode_lun, encode_lun, response};
use devices::virtio::scsi::test_utils::{
    fake_byte, FakeTarget, RecordingInterrupt, RecordingMsi, FAKE_BLOCK, OP_LONG_SENSE,
    OP_TASK_ABORTED,
};
use devices::virtio::scsi::{features as scsi_f, ScsiControllerConfig, TargetSlot, VirtioScsi};
use devices::virtio::{features, InterruptType, VirtioDevice};
use scsi::sense::codes;
use scsi::target::TaskAttr;
use scsi::{PortName, TargetPort, TaskMgmt, TmfResponse};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const QSIZE: u16 = 64;
const MEM_SIZE: usize = 0x40_0000;
const HEAP: u64 = 0x10_0000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

const INITIATOR: &str = "naa.5001405000000001";

fn port(n: u16) -> TargetPort {
    TargetPort {
        relative_id: n,
        name: format!("naa.50014050000000{:02x}", n).parse().unwrap(),
    }
}

/// One part of a chain: device-readable bytes, or a device-writable buffer.
enum Part<'b> {
    In(&'b [u8]),
    Out(u32),
}

struct Ring<'m> {
    mem: &'m GuestMemoryMmap,
    vq: MockSplitQueue<'m, GuestMemoryMmap>,
    queue: Queue,
    next: u16,
    heap: u64,
    heap_end: u64,
}

impl<'m> Ring<'m> {
    fn new(mem: &'m GuestMemoryMmap, base: u64, heap: u64) -> Self {
        let vq = MockSplitQueue::create(mem, GuestAddress(base), QSIZE);
        let queue = vq.create_queue::<Queue>().unwrap();
        Ring {
            mem,
            vq,
            queue,
            next: 0,
            heap,
            heap_end: heap + 0x8_0000,
        }
    }

    fn alloc(&mut self, len: u32) -> u64 {
        let a = self.heap;
        self.heap += u64::from(len).max(1).next_multiple_of(64);
        if self.heap > self.heap_end {
            self.heap = self.heap_end - 0x8_0000;
            return self.alloc(len);
        }
        a
    }

    /// Add a chain from raw descriptors (addr, len, flags); NEXT links are
    /// set here. Returns the head index.
    fn push_raw(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let n = u16::try_from(descs.len()).unwrap();
        if self.next + n > QSIZE {
            self.next = 0;
        }
        let head = self.next;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(a, l, f))| {
                let i = u16::try_from(i).unwrap();
                let last = i + 1 == n;
                let flags = if last { f } else { f | F_NEXT };
                RawDescriptor::from(SplitDescriptor::new(a, l, flags, head + i + 1))
            })
            .collect();
        self.vq.add_desc_chains(&raw, head).unwrap();
        self.next += n;
        head
    }

    /// Add a chain; returns (head, addresses of the writable parts).
    fn push(&mut self, parts: &[Part<'_>]) -> (u16, Vec<u64>) {
        let mut descs = Vec::new();
        let mut outs = Vec::new();
        for p in parts {
            match p {
                Part::In(b) => {
                    let len = u32::try_from(b.len()).unwrap();
                    let a = self.alloc(len);
                    self.mem.write_slice(b, GuestAddress(a)).unwrap();
                    descs.push((a, len, 0));
                }
                Part::Out(len) => {
                    let a = self.alloc(*len);
                    self.mem
                        .write_slice(&vec![0xEE; usize::try_from(*len).unwrap()], GuestAddress(a))
                        .unwrap();
                    descs.push((a, *len, F_WRITE));
                    outs.push(a);
                }
            }
        }
        (self.push_raw(&descs), outs)
    }

    fn used_idx(&self) -> u16 {
        self.vq.used().idx().load()
    }

    /// The `i`th used element: (head, len).
    fn used(&self, i: u16) -> (u32, u32) {
        let e = self
            .vq
            .used()
            .ring()
            .ref_at(usize::from(i % QSIZE))
            .unwrap()
            .load();
        (e.id(), e.len())
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

struct Setup {
    dev: VirtioScsi,
    t0: Arc<FakeTarget>,
    t3: Arc<FakeTarget>,
}

/// Target 0 with LUNs 0, 1 and 300; target 3 with LUN 5.
fn setup() -> Setup {
    let initiator: PortName = INITIATOR.parse().unwrap();
    let t0 = Arc::new(FakeTarget::new(0, &[0, 1, 300]));
    let t3 = Arc::new(FakeTarget::new(3, &[5]));
    let dev = VirtioScsi::new(
        ScsiControllerConfig {
            num_queues: 2,
            queue_size: 256,
            initiator: initiator.clone(),
        },
        [
            (
                0,
                TargetSlot::new(t0.clone(), initiator.clone(), port(1), [0, 1, 300]),
            ),
            (3, TargetSlot::new(t3.clone(), initiator, port(2), [5])),
        ],
    )
    .unwrap();
    Setup { dev, t0, t3 }
}

/// Response fields of a command.
#[derive(Debug, PartialEq, Eq)]
struct Resp {
    sense_len: u32,
    resid: u32,
    status: u8,
    response: u8,
    sense: Vec<u8>,
    data_in: Vec<u8>,
    used_len: u32,
}

fn req_header(lun: [u8; 8], tag: u64, attr: u8, cdb: &[u8], cdb_size: usize) -> Vec<u8> {
    let mut h = lun.to_vec();
    h.extend_from_slice(&tag.to_le_bytes());
    h.extend_from_slice(&[attr, 0, 0]);
    let mut c = cdb.to_vec();
    c.resize(cdb_size, 0);
    h.extend_from_slice(&c);
    h
}

/// Run one command on request queue 2 and return the response.
#[allow(clippy::too_many_arguments)]
fn command(
    s: &Setup,
    ring: &mut Ring<'_>,
    irq: &RecordingInterrupt,
    lun: [u8; 8],
    tag: u64,
    cdb: &[u8],
    data_out: &[u8],
    din: u32,
) -> Resp {
    let sense_size = s.dev.controller().sense_size();
    let cdb_size = usize::try_from(s.dev.controller().cdb_size()).unwrap();
    let hdr = req_header(lun, tag, 0, cdb, cdb_size);
    let mut parts = vec![Part::In(&hdr)];
    if !data_out.is_empty() {
        parts.push(Part::In(data_out));
    }
    parts.push(Part::Out(12 + sense_size));
    if din > 0 {
        parts.push(Part::Out(din));
    }
    let (head, outs) = ring.push(&parts);
    let before = ring.used_idx();
    s.dev
        .request_processor()
        .process_queue(ring.mem, &mut ring.queue, 2, irq)
        .unwrap();
    assert_eq!(ring.used_idx(), before.wrapping_add(1));
    let (id, used_len) = ring.used(before);
    assert_eq!(id, u32::from(head));
    let r = ring.read(outs[0], 12);
    let sense_len = u32::from_le_bytes(r[0..4].try_into().unwrap());
    let sense = ring.read(outs[0] + 12, usize::try_from(sense_len).unwrap());
    let data_in = if din > 0 {
        ring.read(outs[1], usize::try_from(din).unwrap())
    } else {
        vec![]
    };
    Resp {
        sense_len,
        resid: u32::from_le_bytes(r[4..8].try_into().unwrap()),
        status: r[10],
        response: r[11],
        sense,
        data_in,
        used_len,
    }
}

/// READ(10) of `blocks` blocks at `lba`.
fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    [
        0x28, // READ(10)
        0x00, // RDPROTECT/DPO/FUA
        l[0], l[1], l[2], l[3], // LBA
        0x00, // group number
        n[0], n[1], // transfer length
        0x00, // control
    ]
}

fn expected_block(target: u8, lun: u16, lba: usize) -> Vec<u8> {
    (0..FAKE_BLOCK)
        .map(|o| fake_byte(target, lun, lba, o))
        .collect()
}

#[test]
fn lun_decoding_accepts_peripheral_and_flat_forms() {
    // Windows vioscsi: lun[2] = 0, lun[3] = LUN.
    assert_eq!(decode_lun(&[1, 3, 0, 5, 0, 0, 0, 0]), Some((3, 5)));
    // Linux: flat addressing for LUN 300 (0x40 | 0x01, 0x2C).
    assert_eq!(decode_lun(&[1, 0, 0x41, 0x2C, 0, 0, 0, 0]), Some((0, 300)));
    assert_eq!(
        decode_lun(&[1, 0, 0x7F, 0xFF, 0, 0, 0, 0]),
        Some((0, 16383))
    );
    // lun[0] must be 1; peripheral with a bus id, and the well-known
    // REPORT LUNS LUN (0xC101), are not single-level LUNs.
    assert_eq!(decode_lun(&[0, 0, 0, 0, 0, 0, 0, 0]), None);
    assert_eq!(decode_lun(&[1, 0, 0x01, 0x00, 0, 0, 0, 0]), None);
    assert_eq!(decode_lun(&[1, 0, 0xC1, 0x01, 0, 0, 0, 0]), None);
    assert_eq!(encode_lun(2, 7), [1, 2, 0, 7, 0, 0, 0, 0]);
    assert_eq!(encode_lun(2, 300), [1, 2, 0x41, 0x2C, 0, 0, 0, 0]);
}

#[test]
fn reads_are_routed_to_the_addressed_target_and_lun() {
    let s = setup();
    let mem = memory();
    let mut ring = Ring::new(&mem, 0x2000, HEAP);
    let irq = RecordingInterrupt::default();
    let cases: [([u8; 8], u8, u16); 4] = [
        ([1, 0, 0, 0, 0, 0, 0, 0], 0, 0),
        ([1, 0, 0, 1, 0, 0, 0, 0], 0, 1),
        ([1, 0, 0x41, 0x2C, 0, 0, 0, 0], 0, 300),
        ([1, 3, 0, 5, 0, 0, 0, 0], 3, 5),
    ];
    for (i, (lun, target, l)) in cases.iter().enumerate() {
        let tag = 0x1000 + u64::try_from(i).unwrap();
        let r = command(&s, &mut ring, &irq, *lun, tag, &read10(2, 1), &[], 512);
        assert_eq!((r.response, r.status, r.resid, r.sense_len), (0, 0, 0, 0));
        assert_eq!(r.data_in, expected_block(*target, *l, 2), "{lun:?}");
        assert_eq!(r.used_len, 12 + 96 + 512);
    }
    let c0 = s.t0.commands.lock().unwrap();
    let c3 = s.t3.commands.lock().unwrap();
    assert_eq!(
        c0.iter().map(|c| c.lun).collect::<Vec<_>>(),
        vec![0, 1, 300]
    );
    assert_eq!(c3.iter().map(|c| c.lun).collect::<Vec<_>>(), vec![5]);
    assert_eq!(c3[0].tag, 0x1003);
    assert_eq!(c3[0].attr, TaskAttr::Simple);
    assert_eq!(c3[0].cdb.len(), 32, "the whole cdb_size buffer is passed");
    assert_eq!(&c3[0].cdb[..10], &read10(2, 1));
    assert_eq!(c0[0].nexus.initiator.to_string(), INITIATOR);
    assert_eq!(c0[0].nexus.target, port(1));
    assert_eq!(c3[0].nexus.target, port(2));
    assert_eq!((c3[0].data_in_len, c3[0].data_out_len), (512, 0));
    // An interrupt for queue 2 was raised.
    assert!(irq.fired.lock().unwrap().contains(&InterruptType::Queue(2)));
}

#[test]
fn unknown_target_is_bad_target_and_reaches_no_target() {
    let s = setup();
    let mem = memory();
    let mut ring = Ring::new(&mem, 0x2000, HEAP);
    let irq = RecordingInterrupt::default();
    for lun in [
        [1, 1, 0, 0, 0, 0, 0, 0],    // target 1 does not exist
        [0, 0, 0, 0, 0, 0, 0, 0],    // lun[0] != 1
        [1, 0, 0xC1, 1, 0, 0, 0, 0], // not a single-level LUN
    ] {
        let r = command(&s, &mut ring, &irq, lun, 1, &read10(0, 1), &[], 512);
        assert_eq!(r.response, response::BAD_TARGET);
        assert_eq!((r.status, r.sense_len, r.resid), (0, 0, 0));
    }
    assert!(s.t0.commands.lock().unwrap().is_empty());
    assert!(s.t3.commands.lock().unwrap().is_empty());
}

#[test]
fn unknown_lun_goes_to_the_target() {
    let s = setup();
    let mem = memory();
    let mut ring = Ring::new(&mem, 0x2000, HEAP);
    let irq = RecordingInterrupt::default();
    let inquiry = [
        0x12, // INQUIRY
        0x00, // EVPD = 0
        0x00, // page code
        0x00, 0x24, // allocation length 36
        0x00, // control
    ];
    let r = command(
        &s,
        &mut ring,
        &irq,
        [1, 3, 0, 9, 0, 0, 0, 0],
        7,
        &inquiry,
        &[],
        36,
    );
    assert_eq!((r.response, r.status, r.resid), (0, 0, 0));
    assert_eq!(r.data_in[0], 0x7F, "peripheral qualifier 3, type 1Fh");
    let r = command(
        &s,
        &mut ring,
        &irq,
        [1, 3, 0, 9, 0, 0, 0, 0],
        8,
        &read10(0, 1),
        &[],
        512,
    );
    assert_eq!((r.response, r.status), (0, 0x02));
    assert_eq!(r.sense, codes::LUN_NOT_SUPPORTED.to_fixed().to_vec());
    assert_eq!(
        &r.sense[..14],
        &[0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x25, 0x00],
        "fixed sense, ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED"
    );
    assert_eq!(r.sense_len, 18);
    assert_eq!(r.resid, 512, "nothing transferred");
}

#[test]
fn write_data_out_reaches_the_disk_and_resid_counts_unused_bytes() {
    let s = setup();
    let mem = memory();
    let mut ring = Ring::new(&mem, 0x2000, HEAP);
    let irq = RecordingInterrupt::default();
    let payload: Vec<u8> = (0..1024u32)
        .map(|i| u8::try_from(i * 7 % 256).unwrap())
        .collect();
    let write10 = [
        0x2A, // WRITE(10)
        0x00, // WRPROTECT/DPO/FUA
        0x00, 0x00, 0x00, 0x03, // LBA 3
        0x00, // group
        0x00, 0x01, // 1 block
        0x00, // control
    ];
    // Offer 1024 bytes for a 512-byte write: resid 512.
    let r = command(
        &s,
        &mut ring,
        &irq,
        [1, 0, 0, 1, 0, 0, 0, 0],
        1,
        &write10,
        &payload,
        0,
    );
    assert_eq!((r.response, r.status, r.resid), (0, 0, 512));
    assert_eq!(r.used_len, 12 + 96);
    let disk = s.t0.disk(1).unwrap();
    assert_eq!(&disk[3 * 512..4 * 512], &payload[..512]);
    assert_eq!(&disk[2 * 512..3 * 512], &expected_block(0, 1, 2)[..]);
    assert_eq!(
        s.t0.disk(0).unwrap()[3 * 512],
        fake_byte(0, 0, 3, 0),
        "LUN 0 untouched"
    );
    // Read it back through the device; a 2048-byte buffer for 512 bytes
    // leaves resid 1536.
    let r = command(
        &s,
        &mut ring,
        &irq,
        [1, 0, 0, 1, 0, 0, 0, 0],
        2,
        &read10(3, 1),
        &[],
        2048,
    );
    assert_eq!((r.response, r.status, r.resid), (0, 0, 1536));
    assert_eq!(&r.data_in[..512], &payload[..512]);
    assert_eq!(&r.data_in[512..], &vec![0xEE; 1536][..], "rest untouched");
    assert_eq!(r.used_len, 12 + 96 + 512);
}

#[test]
fn sense_is_truncated_to_the_driver_sense_size() {
    let mut s = setup();
    let mem = memory();
    let mut ring = Ring::new(&mem, 0x2000, HEAP);
    let irq = RecordingInterrupt::default();
    let long = [OP_LONG_SENSE, 0, 0, 0, 0, 0];
    let r = command(
        &s,
        &mut ring,
        &irq,
        [1, 0, 0, 0, 0, 0, 0, 0],
        1,
        &long,
        &[],
        0,
    );
    assert_eq!((r.status, r.sense_len), (0x02, 96));
    assert_eq!(r.sense, (0..96u8).collect::<Vec<_>>());
    // The driver shrinks sense_size to 20 and cdb_size to 16.
    s.dev.write_config(20, &20u32.to_le_bytes());
    s.dev.write_config(24, &16u32.to_le_bytes());
    let mut cfg = [0u8; 8];
    s.dev.read_config(20, &mut cfg);
    assert_eq!(cfg, [20, 0, 0, 0, 16, 0, 0, 0]);
    let r = command(
        &s,
        &mut ring,
        &irq,
        [1, 0, 0, 0, 0, 0, 0, 0],
        2,
        &long,
        &[],
        0,
    );
    assert_eq!((r.status, r.sense_len), (0x02, 20));
    assert_eq!(r.sense, (0..20u8).collect::<Vec<_>>());
    let r = command(
        &s,
        &mut ring,
        &irq,
        [1, 0, 0, 1, 0, 0, 0, 0],
        3,
        &read10(1, 1),
        &[],
        512,
    );
    assert_eq!(r.data_in, expected_block(0, 1, 1));
    assert_eq!(s.t0.commands.lock().unwrap().last().unwrap().cdb.len(), 16);
    // Out-of-range values are refused.
    s.dev.write_config(20, &65536u32.to_le_bytes());
    s.dev.write_config(24, &256u32.to_le_bytes());
    s.dev.read_config(20, &mut cfg);
    assert_eq!(cfg, [20, 0, 0, 0, 16, 0, 0, 0]);
    // Device reset restores the defaults.
    s.dev.reset();
    s.dev.read_config(20, &mut cfg);
    assert_eq!(cfg, [96, 0, 0, 0, 32, 0, 0, 0]);
}

#[test]
fn task_aborted_status_is_answered_as_virtio_aborted() {
    let s = setup();
    let mem = memory();
    let mut ring = Ring::new(&mem, 0x2000, HEAP);
    let irq = RecordingInterrupt::default();
    // The fake target moves 100 bytes, then ends the command with status
    // TASK ABORTED (40h) and sense the transport must drop.
    let cdb = [
        OP_TASK_ABORTED, // vendor: aborted after cdb[4] bytes
        0x00,
        0x00,
        0x00,
        100,  // bytes moved before the abort
        0x00, // control
    ];
    let r = command(
        &s,
        &mut ring,
        &irq,
        [1, 0, 0, 0, 0, 0, 0, 0],
        0x77,
        &cdb,
        &[],
        512,
    );
    assert_eq!(r.response, response::ABORTED, "VIRTIO_SCSI_S_ABORTED (2)");
    assert_eq!((r.status, r.sense_len), (0, 0), "no status byte, no sense");
    assert_eq!(r.sense, Vec::<u8>::new());
    assert_eq!(r.resid, 512 - 100, "what was not transferred");
    assert_eq!(&r.data_in[..100], &[0xAB; 100][..]);
    assert_eq!(r.used_len, 12 + 96 + 100);
    // Nothing moved: resid is the whole buffer.
    let mut cdb0 = cdb;
    cdb0[4] = 0;
    let r = command(
        &s,
        &mut ring,
        &irq,
        [1, 0, 0, 0, 0, 0, 0, 0],
        0x78,
        &cdb0,
        &[],
        512,
    );
    assert_eq!(
        (r.response, r.status, r.sense_len, r.resid),
        (response::ABORTED, 0, 0, 512)
    );
    // Other statuses keep response OK with the status byte.
    let r = command(
        &s,
        &mut ring,
        &irq,
        [1, 0, 0, 0, 0, 0, 0, 0],
        0x79,
        &[OP_LONG_SENSE, 0, 0, 0, 0, 0],
        &[],
        0,
    );
    assert_eq!((r.response, r.status), (response::OK, 0x02));
}

#[test]
fn config_space_matches_qemu_defaults() {
    let s = setup();
    let mut c = [0u8; 36];
    s.dev.read_config(0, &mut c);
    let u = |o: usize| u32::from_le_bytes(c[o..o + 4].try_into().unwrap());
    assert_eq!(u(0), 2, "num_queues");
    assert_eq!(u(4), 254, "seg_max = queue size - 2");
    assert_eq!(u(8), 0xFFFF, "max_sectors");
    assert_eq!(u(12), 128, "cmd_per_lun");
    assert_eq!(u(16), 16, "event_info_size");
    assert_eq!(u(20), 96, "sense_size");
    assert_eq!(u(24), 32, "cdb_size");
    assert_eq!(u16::from_le_bytes([c[28], c[29]]), 0, "max_channel");
    assert_eq!(u16::from_le_bytes([c[30], c[31]]), 255, "max_target");
    assert_eq!(u(32), 16383, "max_lun");
    // Read-only fields ignore writes.
    let mut dev = s.dev;
    dev.write_config(0, &9u32.to_le_bytes());
    dev.write_config(32, &1u32.to_le_bytes());
    dev.read_config(0, &mut c);
    assert_eq!((c[0], c[32], c[33]), (2, 0xFF, 0x3F));
    assert_eq!(
        dev.features(),
        features::VERSION_1
            | features::RING_EVENT_IDX
            | features::RING_INDIRECT_DESC
            | scsi_f::HOTPLUG
            | scsi_f::CHANGE
    );
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256, 256]);
}

#[test]
fn indirect_descriptor_tables_are_followed() {
    let s = setup();
    let mem = memory();
    let mut ring = Ring::new(&mem, 0x2000, HEAP);
    let irq = RecordingInterrupt::default();
    let hdr = req_header([1, 3, 0, 5, 0, 0, 0, 0], 9, 0, &read10(7, 1), 32);
    let (ha, ra, da, table) = (0x20_0000u64, 0x20_1000u64, 0x20_2000u64, 0x20_3000u64);
    mem.write_slice(&hdr, GuestAddress(ha)).unwrap();
    let descs = [
        SplitDescriptor::new(ha, 51, F_NEXT, 1),
        SplitDescriptor::new(ra, 108, F_WRITE | F_NEXT, 2),
        SplitDescriptor::new(da, 512, F_WRITE, 0),
    ];
    for (i, d) in descs.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    ring.push_raw(&[(table, 48, F_INDIRECT)]);
    s.dev
        .request_processor()
        .process_queue(&mem, &mut ring.queue, 2, &irq)
        .unwrap();
    assert_eq!(ring.used(0).1, 108 + 512);
    assert_eq!(ring.read(ra + 10, 2), vec![0, 0], "GOOD, OK");
    assert_eq!(ring.read(da, 512), expected_block(3, 5, 7));
}

#[test]
fn short_request_header_is_answered_failure() {
    let s = setup();
    let mem = memory();
    let mut ring = Ring::new(&mem, 0x2000, HEAP);
    let irq = RecordingInterrupt::default();
    // 19 + 10 bytes: less than 19 + cdb_size.
    let hdr = req_header([1, 0, 0, 0, 0, 0, 0, 0], 1, 0, &read10(0, 1), 10);
    let (_, outs) = ring.push(&[Part::In(&hdr), Part::Out(108)]);
    s.dev
        .request_processor()
        .process_queue(&mem, &mut ring.queue, 2, &irq)
        .unwrap();
    assert_eq!(ring.used(0).1, 12);
    assert_eq!(ring.read(outs[0] + 11, 1), vec![response::FAILURE]);
    assert!(!irq.needs_reset());
    assert!(s.t0.commands.lock().unwrap().is_empty());
}

/// Each malformed chain marks the device NEEDS_RESET, is returned with
/// length 0, and never reaches a target.
#[test]
fn malformed_chains_set_needs_reset() {
    let hdr = req_header([1, 0, 0, 0, 0, 0, 0, 0], 1, 0, &read10(0, 1), 32);
    type Build<'h> = Box<dyn Fn(&mut Ring<'_>) + 'h>;
    let cases: Vec<(&str, Build)> = vec![
        (
            "buffer outside guest memory",
            Box::new(|r: &mut Ring<'_>| {
                let a = r.alloc(64);
                r.mem.write_slice(&hdr, GuestAddress(a)).unwrap();
                r.push_raw(&[(a, 51, 0), (MEM_SIZE as u64 - 8, 108, F_WRITE)]);
            }),
        ),
        (
            "buffer wrapping the address space",
            Box::new(|r: &mut Ring<'_>| {
                r.push_raw(&[(u64::MAX - 4, 51, 0), (0x20_0000, 108, F_WRITE)]);
            }),
        ),
        (
            "readable after writable",
            Box::new(|r: &mut Ring<'_>| {
                let a = r.alloc(64);
                r.mem.write_slice(&hdr, GuestAddress(a)).unwrap();
                r.push_raw(&[(0x20_0000, 108, F_WRITE), (a, 51, 0)]);
            }),
        ),
        (
            "descriptor loop",
            Box::new(|r: &mut Ring<'_>| {
                let a = r.alloc(64);
                r.mem.write_slice(&hdr, GuestAddress(a)).unwrap();
                let head = r.next;
                let d0 = SplitDescriptor::new(a, 51, F_NEXT, head + 1);
                let d1 = SplitDescriptor::new(0x20_0000, 108, F_WRITE | F_NEXT, head);
                r.vq.add_desc_chains(&[RawDescriptor::from(d0), RawDescriptor::from(d1)], head)
                    .unwrap();
                r.next += 2;
            }),
        ),
        (
            "next index outside the table",
            Box::new(|r: &mut Ring<'_>| {
                let a = r.alloc(64);
                r.mem.write_slice(&hdr, GuestAddress(a)).unwrap();
                let head = r.next;
                let d0 = SplitDescriptor::new(a, 51, F_NEXT, 999);
                r.vq.add_desc_chains(&[RawDescriptor::from(d0)], head)
                    .unwrap();
                r.next += 1;
            }),
        ),
        (
            "response shorter than 12 bytes",
            Box::new(|r: &mut Ring<'_>| {
                let a = r.alloc(64);
                r.mem.write_slice(&hdr, GuestAddress(a)).unwrap();
                r.push_raw(&[(a, 51, 0), (0x20_0000, 8, F_WRITE)]);
            }),
        ),
        (
            "indirect table of bad length",
            Box::new(|r: &mut Ring<'_>| {
                r.push_raw(&[(0x20_3000, 20, F_INDIRECT)]);
            }),
        ),
    ];
    for (name, build) in cases {
        let s = setup();
        let mem = memory();
        let mut ring = Ring::new(&mem, 0x2000, HEAP);
        let irq = RecordingInterrupt::default();
        build(&mut ring);
        let err = s
            .dev
            .request_processor()
            .process_queue(&mem, &mut ring.queue, 2, &irq);
        assert!(err.is_err(), "{name}");
        assert!(irq.needs_reset(), "{name}");
        assert_eq!(ring.used_idx(), 1, "{name}: chain returned");
        assert_eq!(ring.used(0).1, 0, "{name}: nothing written");
        assert!(s.t0.commands.lock().unwrap().is_empty(), "{name}");
    }
}

/// A ring whose avail index runs ahead of the queue size is a broken
/// driver: NEEDS_RESET, no panic.
/// Lay out `n` READ(10) chains of one block (LBA k % 8, LUN 1 of target 0)
/// at descriptors 3k..3k+2, published at avail positions `start + k`
/// (modulo the ring), as a driver whose indexes are about to wrap. Returns
/// the response addresses.
fn wrap_batch(s: &Setup, ring: &mut Ring<'_>, start: u16, n: u16, tag0: u64) -> Vec<u64> {
    let cdb_size = usize::try_from(s.dev.controller().cdb_size()).unwrap();
    let mut resps = Vec::new();
    for k in 0..n {
        let lba = u32::from(k % 8);
        let hdr = req_header(
            [1, 0, 0, 1, 0, 0, 0, 0],
            tag0 + u64::from(k),
            0,
            &read10(lba, 1),
            cdb_size,
        );
        let h = ring.alloc(u32::try_from(hdr.len()).unwrap());
        ring.mem.write_slice(&hdr, GuestAddress(h)).unwrap();
        let r = ring.alloc(12 + 96 + 512);
        ring.mem
            .write_slice(&[0xEE; 12 + 96 + 512], GuestAddress(r))
            .unwrap();
        let d = 3 * k;
        let hl = u32::try_from(hdr.len()).unwrap();
        let descs = [
            SplitDescriptor::new(h, hl, F_NEXT, d + 1),
            SplitDescriptor::new(r, 12 + 96, F_NEXT | F_WRITE, d + 2),
            SplitDescriptor::new(r + 12 + 96, 512, F_WRITE, 0),
        ];
        for (i, desc) in descs.iter().enumerate() {
            ring.vq
                .desc_table()
                .store(d + u16::try_from(i).unwrap(), RawDescriptor::from(*desc))
                .unwrap();
        }
        let pos = start.wrapping_add(k);
        ring.vq
            .avail()
            .ring()
            .ref_at(usize::from(pos % QSIZE))
            .unwrap()
            .store(d);
        resps.push(r);
    }
    ring.vq.avail().idx().store(start.wrapping_add(n));
    resps
}

#[test]
fn a_batch_across_index_wrap_completes_every_chain_in_order_with_one_interrupt() {
    let s = setup();
    let mem = memory();
    let mut ring = Ring::new(&mem, 0x2000, HEAP);
    // The mock puts the used ring over the avail ring's second half: give
    // it its own page for batches of more than QSIZE/2.
    ring.queue.set_used_ring_address(Some(0x8000), Some(0));
    ring.queue.set_event_idx(true);
    let used_event = GuestAddress(ring.vq.avail_addr().0 + 4 + 2 * u64::from(QSIZE));
    let used = |i: u16| -> [u32; 2] {
        mem.read_obj(GuestAddress(0x8000 + 4 + 8 * u64::from(i % QSIZE)))
            .unwrap()
    };
    let used_idx = || mem.read_obj::<u16>(GuestAddress(0x8000 + 2)).unwrap();
    let start = u16::MAX - 9;
    ring.queue.set_next_avail(start);
    ring.queue.set_next_used(start);
    let p = s.dev.request_processor();
    // 21 chains (the table holds 64 descriptors), indexes wrapping after 10;
    // the driver asks for an interrupt when entry start + 20 is used.
    let resps = wrap_batch(&s, &mut ring, start, 21, 0x100);
    mem.write_obj(start.wrapping_add(20), used_event).unwrap();
    let irq = RecordingInterrupt::default();
    p.process_queue(&mem, &mut ring.queue, 2, &irq).unwrap();
    let end = start.wrapping_add(21);
    assert_eq!(used_idx(), end);
    assert_eq!(
        (ring.queue.next_avail(), ring.queue.next_used()),
        (end, end)
    );
    for k in 0..21u16 {
        assert_eq!(
            used(start.wrapping_add(k)),
            [u32::from(3 * k), 12 + 96 + 512],
            "entry {k}"
        );
        let r = ring.read(resps[usize::from(k)], 12 + 96 + 512);
        assert_eq!(&r[..12], &[0; 12], "chain {k}: OK, GOOD, no sense, resid 0");
        assert_eq!(
            &r[108..],
            &expected_block(0, 1, usize::from(k % 8))[..],
            "chain {k}"
        );
    }
    assert_eq!(
        irq.fired.lock().unwrap().as_slice(),
        &[InterruptType::Queue(2)]
    );
    let tags: Vec<u64> =
        s.t0.commands
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.tag)
            .collect();
    assert_eq!(
        tags,
        (0x100..0x100 + 21).collect::<Vec<u64>>(),
        "in avail order"
    );
    // Next batch: used_event names an entry beyond it: no interrupt.
    let resps = wrap_batch(&s, &mut ring, end, 5, 0x200);
    mem.write_obj(end.wrapping_add(7), used_event).unwrap();
    let irq = RecordingInterrupt::default();
    p.process_queue(&mem, &mut ring.queue, 2, &irq).unwrap();
    assert_eq!(used_idx(), end.wrapping_add(5));
    assert!(
        irq.fired.lock().unwrap().is_empty(),
        "suppressed by used_event"
    );
    assert_eq!(&ring.read(resps[4], 12)[..], &[0; 12]);
    // With EVENT_IDX the device publishes avail_event = next_avail when it
    // re-enables notifications.
    let avail_event = GuestAddress(0x8000 + 4 + 8 * u64::from(QSIZE));
    assert_eq!(
        mem.read_obj::<u16>(avail_event).unwrap(),
        end.wrapping_add(5)
    );
    // A malformed chain in the middle of a batch: the chains before it
    // complete, it is returned with length 0, the device needs reset and
    // the driver is interrupted.
    let at = end.wrapping_add(5);
    wrap_batch(&s, &mut ring, at, 4, 0x300);
    // Chain 2's last descriptor loops back to its first.
    ring.vq
        .desc_table()
        .store(
            8,
            RawDescriptor::from(SplitDescriptor::new(0x10_0000, 8, F_WRITE | F_NEXT, 6)),
        )
        .unwrap();
    let irq = RecordingInterrupt::default();
    assert!(p.process_queue(&mem, &mut ring.queue, 2, &irq).is_err());
    assert!(irq.needs_reset());
    assert_eq!(
        irq.fired.lock().unwrap().as_slice(),
        &[InterruptType::Queue(2)]
    );
    assert_eq!(used_idx(), at.wrapping_add(3));
    assert_eq!(used(at.wrapping_add(1))[1], 12 + 96 + 512);
    assert_eq!(used(at.wrapping_add(2)), [6, 0]);
    let last_tag = s.t0.commands.lock().unwrap().last().unwrap().tag;
    assert_eq!(last_tag, 0x301, "chain 3 was not executed");
}

#[test]
fn avail_index_beyond_queue_size_sets_needs_reset() {
    let s = setup();
    let mem = memory();
    let mut ring = Ring::new(&mem, 0x2000, HEAP);
    let irq = RecordingInterrupt::default();
    ring.vq.avail().idx().store(QSIZE + 5);
    assert!(s
        .dev
        .request_processor()
        .process_queue(&mem, &mut ring.queue, 2, &irq)
        .is_err());
    assert!(irq.needs_reset());
}

fn tmf_req(subtype: u32, lun: [u8; 8], tag: u64) -> Vec<u8> {
    let mut v = 0u32.to_le_bytes().to_vec(); // VIRTIO_SCSI_T_TMF
    v.extend_from_slice(&subtype.to_le_bytes());
    v.extend_from_slice(&lun);
    v.extend_from_slice(&tag.to_le_bytes());
    v
}

fn control(s: &Setup, ring: &mut Ring<'_>, req: &[u8], resp_len: u32) -> Vec<u8> {
    let irq = RecordingInterrupt::default();
    let (_, outs) = ring.push(&[Part::In(req), Part::Out(resp_len)]);
    let before = ring.used_idx();
    s.dev
        .control_processor()
        .process_queue(ring.mem, &mut ring.queue, 0, &irq)
        .unwrap();
    assert_eq!(ring.used_idx(), before.wrapping_add(1));
    assert_eq!(
        irq.fired.lock().unwrap().as_slice(),
        &[InterruptType::Queue(0)]
    );
    ring.read(outs[0], usize::try_from(resp_len).unwrap())
}

#[test]
fn task_management_functions_map_to_sam_tmfs() {
    let s = setup();
    let mem = memory();
    let mut ring = Ring::new(&mem, 0, HEAP);
    let lun5 = [1, 3, 0, 5, 0, 0, 0, 0];
    let cases = [
        (tmf::ABORT_TASK, TaskMgmt::AbortTask(0xABCD)),
        (tmf::ABORT_TASK_SET, TaskMgmt::AbortTaskSet),
        (tmf::CLEAR_ACA, TaskMgmt::ClearAca),
        (tmf::CLEAR_TASK_SET, TaskMgmt::ClearTaskSet),
        (tmf::I_T_NEXUS_RESET, TaskMgmt::ItNexusReset),
        (tmf::LOGICAL_UNIT_RESET, TaskMgmt::LogicalUnitReset),
        (tmf::QUERY_TASK, TaskMgmt::QueryTask(0xABCD)),
        (tmf::QUERY_TASK_SET, TaskMgmt::QueryTaskSet),
    ];
    for (sub, _) in cases {
        assert_eq!(
            control(&s, &mut ring, &tmf_req(sub, lun5, 0xABCD), 1),
            vec![0]
        );
    }
    let got = s.t3.tmfs.lock().unwrap().clone();
    assert_eq!(
        got.iter().map(|(_, l, f)| (*l, *f)).collect::<Vec<_>>(),
        cases.iter().map(|(_, f)| (5, *f)).collect::<Vec<_>>()
    );
    assert_eq!(got[0].0.target, port(2));
    assert!(s.t0.tmfs.lock().unwrap().is_empty());

    // Response codes.
    for (answer, code) in [
        (TmfResponse::Succeeded, response::FUNCTION_SUCCEEDED),
        (TmfResponse::Rejected, response::FUNCTION_REJECTED),
        (TmfResponse::IncorrectLun, response::INCORRECT_LUN),
        (TmfResponse::Complete, response::OK),
    ] {
        *s.t3.tmf_answer.lock().unwrap() = answer;
        let r = control(&s, &mut ring, &tmf_req(tmf::QUERY_TASK, lun5, 1), 1);
        assert_eq!(r, vec![code]);
    }
    // Unknown target, unknown LUN, unknown subtype.
    let r = control(
        &s,
        &mut ring,
        &tmf_req(tmf::LOGICAL_UNIT_RESET, [1, 7, 0, 0, 0, 0, 0, 0], 0),
        1,
    );
    assert_eq!(r, vec![response::BAD_TARGET]);
    let n = s.t3.tmfs.lock().unwrap().len();
    let r = control(
        &s,
        &mut ring,
        &tmf_req(tmf::LOGICAL_UNIT_RESET, [1, 3, 0, 6, 0, 0, 0, 0], 0),
        1,
    );
    assert_eq!(r, vec![response::INCORRECT_LUN]);
    let r = control(&s, &mut ring, &tmf_req(99, lun5, 0), 1);
    assert_eq!(r, vec![response::FUNCTION_REJECTED]);
    assert_eq!(
        s.t3.tmfs.lock().unwrap().len(),
        n,
        "none reached the target"
    );
    // vioscsi's bus reset: LOGICAL UNIT RESET to 1/0/0/0.
    let r = control(
        &s,
        &mut ring,
        &tmf_req(tmf::LOGICAL_UNIT_RESET, [1, 0, 0, 0, 0, 0, 0, 0], 0),
        1,
    );
    assert_eq!(r, vec![0]);
    assert_eq!(s.t0.tmfs.lock().unwrap()[0].2, TaskMgmt::LogicalUnitReset);
}

#[test]
fn async_notification_requests_are_answered() {
    let s = setup();
    let mem = memory();
    let mut ring = Ring::new(&mem, 0, HEAP);
    for ty in [1u32, 2] {
        let mut req = ty.to_le_bytes().to_vec();
        req.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        req.extend_from_slice(&0x0000_0004u32.to_le_bytes()); // event_requested
        let r = control(&s, &mut ring, &req, 5);
        assert_eq!(r, vec![0, 0, 0, 0, response::OK], "event_actual 0, OK");
    }
}

#[test]
fn malformed_control_requests_set_needs_reset() {
    for req in [
        vec![0u8, 0],
        vec![7, 0, 0, 0],
        tmf_req(0, [1; 8], 0)[..20].to_vec(),
    ] {
        let s = setup();
        let mem = memory();
        let mut ring = Ring::new(&mem, 0, HEAP);
        let irq = RecordingInterrupt::default();
        ring.push(&[Part::In(&req), Part::Out(1)]);
        assert!(s
            .dev
            .control_processor()
            .process_queue(&mem, &mut ring.queue, 0, &irq)
            .is_err());
        assert!(irq.needs_reset(), "{req:?}");
    }
}

struct EventRing<'m> {
    ring: Ring<'m>,
    bufs: Vec<u64>,
}

/// Attach an event ring with `n` 16-byte buffers.
fn event_ring<'m>(
    s: &Setup,
    mem: &'m GuestMemoryMmap,
    n: usize,
    irq: Arc<RecordingInterrupt>,
) -> EventRing<'m> {
    let mut ring = Ring::new(mem, 0x1000, 0x30_0000);
    let mut bufs = Vec::new();
    for _ in 0..n {
        bufs.push(ring.push(&[Part::Out(16)]).1[0]);
    }
    let q = ring.vq.create_queue::<Queue>().unwrap();
    s.dev.attach_event_queue(mem.clone(), q, irq);
    EventRing { ring, bufs }
}

fn event_at(er: &EventRing<'_>, i: usize) -> (u32, [u8; 8], u32) {
    let b = er.ring.read(er.bufs[i], 16);
    (
        u32::from_le_bytes(b[0..4].try_into().unwrap()),
        b[4..12].try_into().unwrap(),
        u32::from_le_bytes(b[12..16].try_into().unwrap()),
    )
}

#[test]
fn hotplug_posts_transport_reset_events() {
    let mut s = setup();
    let mem = memory();
    let irq = Arc::new(RecordingInterrupt::default());
    let er = event_ring(&s, &mem, 2, irq.clone());
    let ctrl = s.dev.controller();
    // Without HOTPLUG negotiated nothing is posted.
    s.t3.add_lun(6);
    ctrl.hot_add_lun(3, 6).unwrap();
    assert_eq!(er.ring.used_idx(), 0);
    s.dev.ack_features(features::VERSION_1 | scsi_f::HOTPLUG);
    ctrl.hot_add_lun(3, 7).unwrap();
    ctrl.hot_remove_lun(0, 300).unwrap();
    assert_eq!(er.ring.used_idx(), 2);
    assert_eq!(er.ring.used(0).1, 16);
    assert_eq!(
        event_at(&er, 0),
        (
            T_TRANSPORT_RESET,
            [1, 3, 0, 7, 0, 0, 0, 0],
            EVT_RESET_RESCAN
        )
    );
    assert_eq!(
        event_at(&er, 1),
        (
            T_TRANSPORT_RESET,
            [1, 0, 0x41, 0x2C, 0, 0, 0, 0],
            EVT_RESET_REMOVED
        )
    );
    assert_eq!(
        irq.fired.lock().unwrap().as_slice(),
        &[InterruptType::Queue(1), InterruptType::Queue(1)]
    );
    assert!(ctrl.hot_add_lun(9, 0).is_err(), "no target 9");
}

#[test]
fn events_without_buffers_are_reported_missed() {
    let mut s = setup();
    let mem = memory();
    let irq = Arc::new(RecordingInterrupt::default());
    let mut er = event_ring(&s, &mem, 0, irq);
    s.dev.ack_features(features::VERSION_1 | scsi_f::HOTPLUG);
    let ctrl = s.dev.controller();
    ctrl.hot_add_lun(3, 8).unwrap(); // no buffer: dropped
    assert_eq!(er.ring.used_idx(), 0);
    // The driver adds a buffer and kicks the event queue.
    er.bufs.push(er.ring.push(&[Part::Out(16)]).1[0]);
    ctrl.event_queue_kick();
    assert_eq!(er.ring.used_idx(), 1);
    assert_eq!(event_at(&er, 0), (EVENTS_MISSED, [0; 8], 0));
    // Next event after a drop carries the flag too.
    ctrl.hot_add_lun(3, 9).unwrap();
    er.bufs.push(er.ring.push(&[Part::Out(16)]).1[0]);
    ctrl.hot_add_lun(3, 10).unwrap();
    assert_eq!(
        event_at(&er, 1),
        (
            T_TRANSPORT_RESET | EVENTS_MISSED,
            [1, 3, 0, 10, 0, 0, 0, 0],
            EVT_RESET_RESCAN
        )
    );
}

#[test]
fn pending_parameter_change_unit_attentions_become_param_change_events() {
    let mut s = setup();
    let mem = memory();
    let irq = Arc::new(RecordingInterrupt::default());
    let er = event_ring(&s, &mem, 4, irq);
    let ctrl = s.dev.controller();
    let key = |l: u16| (INITIATOR.to_string(), l);
    s.t0.unit_attentions
        .lock()
        .unwrap()
        .insert(key(1), codes::CAPACITY_DATA_CHANGED);
    ctrl.poll_unit_attentions();
    assert_eq!(er.ring.used_idx(), 0, "CHANGE not negotiated");
    s.dev.ack_features(features::VERSION_1 | scsi_f::CHANGE);
    ctrl.poll_unit_attentions();
    ctrl.poll_unit_attentions(); // still pending: not reported twice
    assert_eq!(er.ring.used_idx(), 1);
    assert_eq!(
        event_at(&er, 0),
        (T_PARAM_CHANGE, [1, 0, 0, 1, 0, 0, 0, 0], 0x092A)
    );
    // A reservation UA on another LU; a non-2A UA is not reported.
    s.t3.unit_attentions
        .lock()
        .unwrap()
        .insert(key(5), codes::RESERVATIONS_PREEMPTED);
    s.t0.unit_attentions
        .lock()
        .unwrap()
        .insert(key(0), codes::POWER_ON_RESET);
    ctrl.poll_unit_attentions();
    assert_eq!(er.ring.used_idx(), 2);
    assert_eq!(
        event_at(&er, 1),
        (T_PARAM_CHANGE, [1, 3, 0, 5, 0, 0, 0, 0], 0x032A)
    );
    // Once cleared and raised again, it is reported again.
    s.t0.unit_attentions.lock().unwrap().remove(&key(1));
    ctrl.poll_unit_attentions();
    s.t0.unit_attentions
        .lock()
        .unwrap()
        .insert(key(1), codes::CAPACITY_DATA_CHANGED);
    ctrl.poll_unit_attentions();
    assert_eq!(er.ring.used_idx(), 3);
    assert_eq!(event_at(&er, 2).2, 0x092A);
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The whole path: PCI registers, DRIVER_OK starts the workers, a notify
/// write is served by the request worker on its own thread, MSI-X vectors
/// per queue, TMF on the control worker, reset stops everything.
#[test]
fn end_to_end_through_the_pci_transport_with_workers() {
    let s = setup();
    let (t0, t3) = (s.t0.clone(), s.t3.clone());
    let mem = memory();
    let msi = RecordingMsi::new(5);
    let mut t =
        VirtioPciTransport::new(s.dev, mem.clone(), 0xE000_0000, msi.clone(), None, None).unwrap();
    let mut ctl = Ring::new(&mem, 0x0, HEAP);
    let evt = Ring::new(&mem, 0x1000, 0x20_0000);
    let mut req = Ring::new(&mem, 0x2000, 0x28_0000);
    let mut req2 = Ring::new(&mem, 0x3000, 0x30_0000);
    let w = |t: &mut VirtioPciTransport<VirtioScsi>, off: u64, v: &[u8]| t.bar_write(off, v);
    let r8 = |t: &mut VirtioPciTransport<VirtioScsi>, off: u64| {
        let mut b = [0u8];
        t.bar_read(off, &mut b);
        b[0]
    };
    // MSI-X on, vectors 0 (config), 1.. per queue.
    let cap = t.capabilities().msix;
    let v = t.read_config(cap / 4);
    let _ = t.write_config(cap / 4, 0, &((v & 0xFFFF) | 0x8000_0000).to_le_bytes());
    for vec in 0..5u64 {
        w(&mut t, 0x4000 + 16 * vec, &0xFEE0_0000u32.to_le_bytes());
        w(
            &mut t,
            0x4000 + 16 * vec + 8,
            &(0x30 + u32::try_from(vec).unwrap()).to_le_bytes(),
        );
        w(&mut t, 0x4000 + 16 * vec + 12, &0u32.to_le_bytes());
    }
    w(&mut t, 0x14, &[1]);
    w(&mut t, 0x14, &[3]);
    let feats = features::VERSION_1 | scsi_f::HOTPLUG;
    w(&mut t, 0x08, &0u32.to_le_bytes());
    w(
        &mut t,
        0x0C,
        &u32::try_from(feats & 0xFFFF_FFFF).unwrap().to_le_bytes(),
    );
    w(&mut t, 0x08, &1u32.to_le_bytes());
    w(
        &mut t,
        0x0C,
        &u32::try_from(feats >> 32).unwrap().to_le_bytes(),
    );
    w(&mut t, 0x14, &[0x0B]);
    assert_eq!(r8(&mut t, 0x14), 0x0B);
    w(&mut t, 0x10, &0u16.to_le_bytes());
    for (i, ring) in [&ctl, &evt, &req, &req2].iter().enumerate() {
        let i16_ = u16::try_from(i).unwrap();
        w(&mut t, 0x16, &i16_.to_le_bytes());
        w(&mut t, 0x18, &QSIZE.to_le_bytes());
        w(&mut t, 0x1A, &(i16_ + 1).to_le_bytes());
        w(&mut t, 0x20, &ring.vq.desc_table_addr().0.to_le_bytes());
        w(&mut t, 0x28, &ring.vq.avail_addr().0.to_le_bytes());
        w(&mut t, 0x30, &ring.vq.used_addr().0.to_le_bytes());
        w(&mut t, 0x1C, &1u16.to_le_bytes());
    }
    w(&mut t, 0x14, &[0x0F]);
    assert_eq!(r8(&mut t, 0x14), 0x0F);

    // A READ on each request queue, notified through the BAR.
    let hdr = req_header([1, 3, 0, 5, 0, 0, 0, 0], 1, 0, &read10(4, 1), 32);
    let (_, outs) = req.push(&[Part::In(&hdr), Part::Out(108), Part::Out(512)]);
    w(&mut t, 0x3008, &2u16.to_le_bytes());
    let hdr2 = req_header([1, 0, 0, 1, 0, 0, 0, 0], 2, 0, &read10(6, 1), 32);
    let (_, outs2) = req2.push(&[Part::In(&hdr2), Part::Out(108), Part::Out(512)]);
    w(&mut t, 0x300C, &3u16.to_le_bytes());
    wait_until("request queue 2", || req.used_idx() == 1);
    wait_until("request queue 3", || req2.used_idx() == 1);
    assert_eq!(req.read(outs[1], 512), expected_block(3, 5, 4));
    assert_eq!(req2.read(outs2[1], 512), expected_block(0, 1, 6));
    wait_until("MSI vectors 3 and 4", || {
        let f = msi.fired.lock().unwrap();
        f.contains(&3) && f.contains(&4)
    });
    // TMF on the control queue (vector 1).
    ctl.push(&[
        Part::In(&tmf_req(
            tmf::LOGICAL_UNIT_RESET,
            [1, 3, 0, 5, 0, 0, 0, 0],
            0,
        )),
        Part::Out(1),
    ]);
    w(&mut t, 0x3000, &0u16.to_le_bytes());
    wait_until("control queue", || ctl.used_idx() == 1);
    wait_until("MSI vector 1", || msi.fired.lock().unwrap().contains(&1));
    assert_eq!(t3.tmfs.lock().unwrap()[0].2, TaskMgmt::LogicalUnitReset);
    assert_eq!(t0.commands.lock().unwrap().len(), 1);

    // Reset: workers stop; a later notify is not served.
    w(&mut t, 0x14, &[0]);
    assert_eq!(r8(&mut t, 0x14), 0);
    let (_, _) = req.push(&[Part::In(&hdr), Part::Out(108), Part::Out(512)]);
    w(&mut t, 0x3008, &2u16.to_le_bytes());
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(req.used_idx(), 1);
    assert_eq!(t3.commands.lock().unwrap().len(), 1);
    assert_eq!(t.device().controller().acked_features(), 0);
}

/// OVMF's VirtioScsiDxe negotiates VERSION_1 only, enables the first
/// request queue alone (no control, no event queue), writes cdb_size and
/// sense_size, sets DRIVER_OK and polls the used ring: the device must go
/// live and serve it.
#[test]
fn request_queue_alone_as_ovmf_drives_it() {
    let s = setup();
    let t3 = s.t3.clone();
    let mem = memory();
    let msi = RecordingMsi::new(5);
    let mut t = VirtioPciTransport::new(s.dev, mem.clone(), 0xE000_0000, msi, None, None).unwrap();
    let mut req = Ring::new(&mem, 0x2000, 0x28_0000);
    let w = |t: &mut VirtioPciTransport<VirtioScsi>, off: u64, v: &[u8]| t.bar_write(off, v);
    let status = |t: &mut VirtioPciTransport<VirtioScsi>| {
        let mut b = [0u8];
        t.bar_read(0x14, &mut b);
        b[0]
    };
    w(&mut t, 0x14, &[0]);
    w(&mut t, 0x14, &[1]);
    w(&mut t, 0x14, &[3]);
    w(&mut t, 0x08, &1u32.to_le_bytes());
    w(&mut t, 0x0C, &1u32.to_le_bytes()); // VERSION_1 only
    w(&mut t, 0x14, &[0x0B]);
    assert_eq!(status(&mut t), 0x0B);
    w(&mut t, 0x16, &2u16.to_le_bytes());
    w(&mut t, 0x18, &QSIZE.to_le_bytes());
    w(&mut t, 0x20, &req.vq.desc_table_addr().0.to_le_bytes());
    w(&mut t, 0x28, &req.vq.avail_addr().0.to_le_bytes());
    w(&mut t, 0x30, &req.vq.used_addr().0.to_le_bytes());
    w(&mut t, 0x1C, &1u16.to_le_bytes());
    w(&mut t, 0x2000 + 24, &32u32.to_le_bytes()); // cdb_size
    w(&mut t, 0x2000 + 20, &96u32.to_le_bytes()); // sense_size
    w(&mut t, 0x14, &[0x0F]);
    assert_eq!(status(&mut t), 0x0F, "live, no NEEDS_RESET");
    let hdr = req_header([1, 3, 0, 5, 0, 0, 0, 0], 1, 0, &read10(2, 1), 32);
    let (_, outs) = req.push(&[Part::In(&hdr), Part::Out(108), Part::Out(512)]);
    w(&mut t, 0x3008, &2u16.to_le_bytes());
    wait_until("request queue 2", || req.used_idx() == 1);
    assert_eq!(req.read(outs[0] + 10, 2), vec![0, 0], "GOOD, OK");
    assert_eq!(req.read(outs[1], 512), expected_block(3, 5, 2));
    assert_eq!(t3.commands.lock().unwrap().len(), 1);
    // Hot-plug with no event queue is harmless.
    t.device().controller().hot_add_lun(3, 6).unwrap();
    w(&mut t, 0x14, &[0]);
    assert_eq!(status(&mut t), 0);
}

/// A target that could not deliver a command (a passthrough LU whose host
/// path failed) makes the device answer with the matching virtio response
/// code, no SCSI status and no sense, and the residual of what was not
/// transferred: the codes guest drivers act on (Linux maps BUSY to
/// DID_BUS_BUSY and retries, RESET to DID_RESET, TRANSPORT_FAILURE to
/// DID_TRANSPORT_DISRUPTED, ...).
#[test]
fn delivery_failures_become_virtio_response_codes() {
    use scsi::DeliveryFailure as D;
    let s = setup();
    let mem = memory();
    let mut ring = Ring::new(&mem, 0x2000, HEAP);
    let irq = RecordingInterrupt::default();
    let cases = [
        (D::Timeout, response::BUSY),
        (D::Busy, response::BUSY),
        (D::Reset, response::RESET),
        (D::Aborted, response::ABORTED),
        (D::TransportFailure, response::TRANSPORT_FAILURE),
        (D::BadTarget, response::BAD_TARGET),
        (D::TargetFailure, response::TARGET_FAILURE),
        (D::NexusFailure, response::NEXUS_FAILURE),
        (D::Overrun, response::OVERRUN),
        (D::Failure, response::FAILURE),
    ];
    for (i, (failure, code)) in cases.into_iter().enumerate() {
        // 100 of the 512 data-in bytes arrived before the failure.
        *s.t0.delivery_failure.lock().unwrap() = Some((failure, 100));
        let tag = 0x2000 + u64::try_from(i).unwrap();
        let r = command(
            &s,
            &mut ring,
            &irq,
            [1, 0, 0, 0, 0, 0, 0, 0],
            tag,
            &read10(0, 1),
            &[],
            512,
        );
        assert_eq!(
            (r.response, r.status, r.sense_len, r.resid),
            (code, 0, 0, 412),
            "{failure:?}"
        );
    }
    // Once the path is back, the same command completes normally.
    *s.t0.delivery_failure.lock().unwrap() = None;
    let r = command(
        &s,
        &mut ring,
        &irq,
        [1, 0, 0, 0, 0, 0, 0, 0],
        0x3000,
        &read10(0, 1),
        &[],
        512,
    );
    assert_eq!((r.response, r.status, r.resid), (response::OK, 0, 0));
    assert_eq!(r.data_in, expected_block(0, 0, 0));
}
