//! Request-path throughput of 4 KiB reads through the virtio-scsi device
//! model (mock guest memory and split queue, no KVM), against the `scsi`
//! crate alone on the same disk in the same run.
//!
//! Both sides run batches of 32 READ(10)s of 8 blocks (4 KiB) from an
//! `EmulatedTarget` with one in-memory disk, cycling through the same 256
//! requests: the same LBAs (1 MiB of disk) into the same layout of
//! page-aligned 4 KiB buffers (1 MiB), so both copy the same bytes the same
//! way. The device side only updates the avail ring per batch (the
//! descriptor chains are laid out once, as a driver reusing its buffers
//! would), then drains the request queue. After criterion's report,
//! interleaved rounds timed in thread CPU time print the throughput
//! `ratio device/scsi-alone` (goal ≥ 0.9) and its spread over the rounds.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, Criterion, Throughput};
use devices::virtio::scsi::request::RequestProcessor;
use devices::virtio::scsi::test_utils::RecordingInterrupt;
use devices::virtio::scsi::{ScsiControllerConfig, TargetSlot, VirtioScsi};
use scsi::target::{DataIn, DataOut, Request, TaskAttr};
use scsi::{
    BlockBackend, Disk, DiskConfig, DiskIdentity, EmulatedTarget, FileBackend, FileOptions,
    ItNexus, MemBackend, PortName, ScsiTarget, TargetPort,
};
use tempfile::TempDir;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const BATCH: u16 = 32;
/// Requests of distinct LBAs (and distinct 4 KiB buffers) cycled through:
/// 1 MiB of disk and 1 MiB of buffers, the same on both sides.
const CHAINS: u16 = 256;
const IO: u32 = 4096;
const DISK: usize = 4 << 20;
/// Room for CHAINS chains of 3 descriptors.
const QSIZE: u16 = 1024;
/// Request headers and responses: 512 bytes per chain.
const HDRS: u64 = 0x10_0000;
/// Data-in buffers: 4 KiB per chain, contiguous (laid out as the scsi-alone
/// side's, so that both copy into the same memory pattern).
const DATA: u64 = 0x20_0000;

fn read10(lba: u32) -> [u8; 10] {
    let l = lba.to_be_bytes();
    [0x28, 0, l[0], l[1], l[2], l[3], 0, 0, 8, 0] // READ(10), 8 blocks
}

/// Where the disk's blocks live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    /// `MemBackend`: the copy out of the store is a memcpy.
    Memory,
    /// `FileBackend` on a page-cached temporary file: `pread`, as in the
    /// product.
    File,
}

fn target(store: Store) -> (Arc<EmulatedTarget>, PortName, TargetPort, Option<TempDir>) {
    let data: Vec<u8> = (0..DISK).map(|i| u8::try_from(i % 251).unwrap()).collect();
    let (backend, dir): (Arc<dyn BlockBackend>, _) = match store {
        Store::Memory => (Arc::new(MemBackend::from_vec(data)), None),
        Store::File => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("disk.img");
            std::fs::write(&path, &data).unwrap(); // now in the page cache
            let b = FileBackend::open(&path, FileOptions::default()).unwrap();
            (Arc::new(b), Some(dir))
        }
    };
    let disk = Disk::new(
        DiskConfig::new(DiskIdentity::from_text("bench")),
        backend,
        None,
    )
    .unwrap();
    let t = Arc::new(EmulatedTarget::new().with_lun(0, Arc::new(disk)).unwrap());
    let initiator: PortName = "naa.5001405000000001".parse().unwrap();
    let port = TargetPort {
        relative_id: 1,
        name: "naa.5001405000000002".parse().unwrap(),
    };
    (t, initiator, port, dir)
}

/// The scsi crate alone: one batch into a plain buffer.
struct Alone {
    t: Arc<EmulatedTarget>,
    nexus: ItNexus,
    buf: Vec<u8>,
    /// The next of the CHAINS requests.
    next: u16,
}

impl Alone {
    /// TEST UNIT READY until GOOD: consumes the power-on unit attention of
    /// the nexus (the device side uses the same nexus).
    fn clear_unit_attention(&mut self) {
        let tur = [0u8; 6]; // TEST UNIT READY
        for _ in 0..3 {
            let req = Request {
                nexus: &self.nexus,
                lun: 0,
                tag: 1,
                attr: TaskAttr::Simple,
                cdb: &tur,
            };
            let mut din: &mut [u8] = &mut [];
            let mut dout: &[u8] = &[];
            let r = self
                .t
                .execute(
                    &req,
                    DataOut {
                        reader: &mut dout,
                        len: 0,
                    },
                    DataIn {
                        writer: &mut din,
                        len: 0,
                    },
                )
                .unwrap();
            if r.status == scsi::Status::Good {
                return;
            }
        }
        panic!("unit attention does not clear");
    }

    fn batch(&mut self) {
        for _ in 0..BATCH {
            // The device side's chain c reads LBA 8c into its own 4 KiB
            // buffer, chains taken in order: same offsets, same buffers.
            let c = self.next;
            self.next = (c + 1) % CHAINS;
            let cdb = read10(u32::from(c) * 8);
            let req = Request {
                nexus: &self.nexus,
                lun: 0,
                tag: 1,
                attr: TaskAttr::Simple,
                cdb: &cdb,
            };
            let slot = usize::from(c);
            let io = IO as usize;
            // Page-aligned 4 KiB buffers, as the device side's (the copy's
            // speed depends on the destination's alignment).
            let base = self.buf.as_ptr().align_offset(4096);
            let at = base + slot * io;
            let mut din: &mut [u8] = &mut self.buf[at..at + io];
            let mut dout: &[u8] = &[];
            let r = self
                .t
                .execute(
                    &req,
                    DataOut {
                        reader: &mut dout,
                        len: 0,
                    },
                    DataIn {
                        writer: &mut din,
                        len: IO as usize,
                    },
                )
                .unwrap();
            assert_eq!(r.data_in_len, IO as usize);
        }
    }
}

/// The device: chains laid out once; each batch publishes BATCH heads.
struct Device<'m> {
    mem: &'m GuestMemoryMmap,
    vq: MockSplitQueue<'m, GuestMemoryMmap>,
    queue: Queue,
    proc_: RequestProcessor,
    irq: RecordingInterrupt,
    avail: u16,
    chains: u16,
}

impl<'m> Device<'m> {
    fn new(mem: &'m GuestMemoryMmap, proc_: RequestProcessor) -> Self {
        let vq = MockSplitQueue::create(mem, GuestAddress(0), QSIZE);
        // CHAINS chains laid out once, published BATCH at a time in order.
        let chains = CHAINS;
        for c in 0..chains {
            let base = HDRS + u64::from(c) * 0x200;
            let data = DATA + u64::from(c) * u64::from(IO);
            let mut hdr = vec![1u8, 0, 0, 0, 0, 0, 0, 0];
            hdr.extend_from_slice(&u64::from(c).to_le_bytes());
            hdr.extend_from_slice(&[0, 0, 0]);
            let mut cdb = read10(u32::from(c) * 8).to_vec();
            cdb.resize(32, 0);
            hdr.extend_from_slice(&cdb);
            mem.write_slice(&hdr, GuestAddress(base)).unwrap();
            let d = 3 * c;
            let descs = [
                SplitDescriptor::new(base, 51, 1, d + 1),
                SplitDescriptor::new(base + 0x100, 108, 1 | 2, d + 2),
                SplitDescriptor::new(data, IO, 2, 0),
            ];
            for (i, desc) in descs.iter().enumerate() {
                vq.desc_table()
                    .store(d + u16::try_from(i).unwrap(), RawDescriptor::from(*desc))
                    .unwrap();
            }
        }
        for p in 0..QSIZE {
            vq.avail()
                .ring()
                .ref_at(usize::from(p))
                .unwrap()
                .store(3 * (p % chains));
        }
        let mut queue = vq.create_queue::<Queue>().unwrap();
        // MockSplitQueue places the used ring right after half of the avail
        // ring (it sizes the avail ring in entries, not bytes), so with
        // more than QSIZE/2 entries in flight the two would overlap: give
        // the used ring its own page.
        queue.set_used_ring_address(Some(0x8000), Some(0));
        Device {
            mem,
            vq,
            queue,
            proc_,
            irq: RecordingInterrupt::default(),
            avail: 0,
            chains,
        }
    }

    fn batch(&mut self) {
        // The avail ring was filled once (position p always names chain
        // p % CHAINS, as a driver recycling its buffers in order would):
        // publishing a batch is one index store.
        self.avail = self.avail.wrapping_add(BATCH);
        self.vq.avail().idx().store(self.avail);
        self.proc_
            .process_queue(self.mem, &mut self.queue, 2, &self.irq)
            .unwrap();
        self.irq.fired.lock().unwrap().clear();
        // The last command's response: GOOD, OK, and 4 KiB transferred.
        let last = 3 * (self.avail.wrapping_sub(1) % self.chains);
        let base = HDRS + u64::from(last / 3) * 0x200;
        let resp: [u8; 12] = self.mem.read_obj(GuestAddress(base + 0x100)).unwrap();
        assert_eq!(
            &resp[4..12],
            &[0, 0, 0, 0, 0, 0, 0, 0],
            "resid/status/response"
        );
    }
}

type Setup = (
    Alone,
    GuestMemoryMmap,
    RequestProcessor,
    VirtioScsi,
    Option<TempDir>,
);

fn setup(store: Store) -> Setup {
    let (t, initiator, port, dir) = target(store);
    let alone = Alone {
        t: t.clone(),
        nexus: ItNexus {
            initiator: initiator.clone(),
            target: port.clone(),
        },
        buf: vec![0; IO as usize * (usize::from(CHAINS) + 1)],
        next: 0,
    };
    let mut alone = alone;
    alone.clear_unit_attention();
    let dev = VirtioScsi::new(
        ScsiControllerConfig {
            num_queues: 1,
            queue_size: QSIZE,
            initiator: initiator.clone(),
        },
        [(0, TargetSlot::new(t, initiator, port, [0]))],
    )
    .unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
    let p = dev.request_processor();
    (alone, mem, p, dev, dir)
}

fn bench(c: &mut Criterion) {
    let (mut alone, mem, p, _dev, _dir) = setup(Store::Memory);
    let mut device = Device::new(&mem, p);
    let mut g = c.benchmark_group("read_4k_batch32");
    g.throughput(Throughput::Bytes(u64::from(IO) * u64::from(BATCH)));
    g.bench_function("scsi_alone", |b| b.iter(|| alone.batch()));
    g.bench_function("virtio_scsi_device", |b| b.iter(|| device.batch()));
    g.finish();
}

criterion_group!(benches, bench);

/// CPU time of this thread: unlike wall time it does not count the time
/// other processes on a shared machine hold the CPU.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap(),
        u32::try_from(ts.tv_nsec).unwrap(),
    )
}

/// Interleaved rounds of a fixed number of batches on each side, timed in
/// thread CPU time: prints the per-command cost of each side and the
/// throughput ratio (median of rounds and best-of-rounds).
fn ratio(store: Store) {
    let (mut alone, mem, p, _dev, _dir) = setup(store);
    let mut device = Device::new(&mem, p);
    const N: u32 = 3000;
    let time = |f: &mut dyn FnMut()| {
        let start = thread_cpu();
        for _ in 0..N {
            f();
        }
        (thread_cpu() - start) / (N * u32::from(BATCH))
    };
    // Touch every buffer of both sides once before timing (page faults of
    // the heap and of the mock guest memory stay out of the rounds).
    for _ in 0..CHAINS / BATCH {
        alone.batch();
        device.batch();
    }
    let mut rounds = Vec::new();
    for i in 0..15 {
        // Which side goes first alternates.
        let (a, d) = if i % 2 == 0 {
            let a = time(&mut || alone.batch());
            (a, time(&mut || device.batch()))
        } else {
            let d = time(&mut || device.batch());
            (time(&mut || alone.batch()), d)
        };
        rounds.push((a.as_secs_f64(), d.as_secs_f64()));
    }
    let best_a = rounds.iter().map(|r| r.0).fold(f64::MAX, f64::min);
    let best_d = rounds.iter().map(|r| r.1).fold(f64::MAX, f64::min);
    let mut ratios: Vec<f64> = rounds.iter().map(|(a, d)| a / d).collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "read_4k from {store:?} per command (thread CPU time, best of 15 rounds): scsi alone {:.0} ns, \
         through virtio-scsi {:.0} ns; throughput ratio device/scsi-alone: best {:.3}, \
         median of rounds {:.3} (rounds {:.3}..{:.3}) (goal >= 0.9)",
        best_a * 1e9,
        best_d * 1e9,
        best_a / best_d,
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only under `cargo bench` (not `cargo test --benches`, which builds
    // without optimizations).
    if std::env::args().any(|a| a == "--bench") {
        ratio(Store::Memory);
        ratio(Store::File);
    }
}
