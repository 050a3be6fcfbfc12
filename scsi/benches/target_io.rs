//! 4 KiB random reads and writes through the SCSI target (READ(10)/WRITE(10)
//! on an `EmulatedTarget` over a `FileBackend`) against plain `pread`/`pwrite`
//! on the same page-cached file, at queue depth 1 and 32 (32 threads issuing
//! concurrently), both reading into (writing from) the same buffers at the
//! same offsets. After the criterion groups, `cargo bench` prints the
//! throughput ratio target / plain for each case (goal: ≥ 0.9), measured in
//! interleaved rounds (see `ratios`); `cargo bench -p scsi --bench target_io
//! -- ratios_only` skips the criterion groups.

use std::fs::File;
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use scsi::target::TaskAttr;
use scsi::{
    DataIn, DataOut, Disk, DiskConfig, DiskIdentity, EmulatedTarget, FileBackend, FileOptions,
    ItNexus, PortName, Request, ScsiTarget, Status, TargetPort,
};

const FILE_SIZE: u64 = 64 << 20;
const IO: usize = 4096;
const BLOCKS_PER_IO: u64 = (IO / 512) as u64;
const SLOTS: u64 = FILE_SIZE / IO as u64;

struct Fixture {
    _dir: tempfile::TempDir,
    file: File,
    /// As a transport holds it (virtio-scsi: `Arc<dyn ScsiTarget>`).
    target: Box<dyn ScsiTarget>,
}

/// A disk called directly as the target (no `EmulatedTarget` dispatch):
/// separates the LUN dispatch from the logical unit's own cost.
#[derive(Debug)]
struct LuAlone(Arc<Disk>);

impl ScsiTarget for LuAlone {
    fn execute(
        &self,
        req: &Request<'_>,
        data_out: DataOut<'_>,
        data_in: DataIn<'_>,
    ) -> Result<scsi::Response, scsi::TransportError> {
        scsi::LogicalUnit::execute(&*self.0, req, data_out, data_in)
    }
    fn task_mgmt(&self, n: &ItNexus, _: scsi::Lun, t: scsi::TaskMgmt) -> scsi::TmfResponse {
        scsi::LogicalUnit::task_mgmt(&*self.0, n, t)
    }
    fn has_lun(&self, lun: scsi::Lun) -> bool {
        lun == 0
    }
    fn pending_unit_attention(&self, n: &ItNexus, _: scsi::Lun) -> Option<scsi::Sense> {
        scsi::LogicalUnit::pending_unit_attention(&*self.0, n)
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("disk.img");
    // Fill the file so every block is allocated and in the page cache.
    let chunk = vec![0x5Au8; 1 << 20];
    let f = File::create(&path).expect("create");
    for i in 0..(FILE_SIZE >> 20) {
        f.write_all_at(&chunk, i << 20).expect("fill");
    }
    let backend = Arc::new(FileBackend::open(&path, FileOptions::default()).expect("open"));
    let disk = Disk::new(
        DiskConfig::new(DiskIdentity::from_text("bench")),
        backend,
        None,
    )
    .expect("disk");
    let target = EmulatedTarget::new()
        .with_lun(0, Arc::new(disk))
        .expect("lun");
    let file = File::options()
        .read(true)
        .write(true)
        .open(&path)
        .expect("reopen");
    Fixture {
        _dir: dir,
        file,
        target: Box::new(target),
    }
}

fn nexus(i: u64) -> ItNexus {
    ItNexus {
        initiator: PortName::Naa((0x5000_0000_0000_0000u64 | i).to_be_bytes()),
        target: TargetPort {
            relative_id: 1,
            name: PortName::Naa(0x5001_4050_0000_0001u64.to_be_bytes()),
        },
    }
}

/// xorshift64: a cheap random slot per I/O.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state % SLOTS
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read,
    Write,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Target,
    Plain,
}

static TAGS: AtomicU64 = AtomicU64::new(1);

/// One worker doing `n` I/Os; returns when done.
fn worker(fx: &Fixture, op: Op, path: Path, n: u64, seed: u64) {
    let mut rng = seed | 1;
    let nx = nexus(seed);
    // Tags are per nexus (as a transport's are): no shared counter that
    // the plain path does not have.
    let mut tag = TAGS.fetch_add(1 << 32, Ordering::Relaxed);
    let wbuf = vec![0xA5u8; IO];
    // Both paths read into (write from) the same buffers.
    let mut rbuf = vec![0u8; IO];
    for _ in 0..n {
        let slot = next(&mut rng);
        match path {
            Path::Plain => match op {
                Op::Read => fx
                    .file
                    .read_exact_at(&mut rbuf, slot * IO as u64)
                    .expect("pread"),
                Op::Write => fx
                    .file
                    .write_all_at(&wbuf, slot * IO as u64)
                    .expect("pwrite"),
            },
            Path::Target => {
                let lba = u32::try_from(slot * BLOCKS_PER_IO)
                    .expect("lba")
                    .to_be_bytes();
                let opcode = if op == Op::Read { 0x28 } else { 0x2A };
                let cdb = [opcode, 0, lba[0], lba[1], lba[2], lba[3], 0, 0, 8, 0];
                let req = Request {
                    nexus: &nx,
                    lun: 0,
                    tag,
                    attr: TaskAttr::Simple,
                    cdb: &cdb,
                };
                let mut src: &[u8] = if op == Op::Write { &wbuf } else { &[] };
                let dout_len = src.len();
                let mut sink: &mut [u8] = if op == Op::Read { &mut rbuf } else { &mut [] };
                let din_len = sink.len();
                let r = fx
                    .target
                    .execute(
                        &req,
                        DataOut {
                            reader: &mut src,
                            len: dout_len,
                        },
                        DataIn {
                            writer: &mut sink,
                            len: din_len,
                        },
                    )
                    .expect("transport");
                debug_assert_eq!(r.status, Status::Good);
                tag += 1;
            }
        }
    }
    black_box(&rbuf);
}

/// `total` I/Os split over `qd` threads; wall time.
fn run(fx: &Fixture, op: Op, path: Path, qd: u64, total: u64) -> Duration {
    let start = Instant::now();
    if qd == 1 {
        worker(fx, op, path, total, 0x9E37_79B9);
    } else {
        std::thread::scope(|s| {
            for t in 0..qd {
                let n = total / qd + u64::from(t < total % qd);
                s.spawn(move || worker(fx, op, path, n, 0x9E37_79B9 + t * 7919));
            }
        });
    }
    start.elapsed()
}

fn prime(fx: &Fixture) {
    // Consume each worker nexus' POWER ON unit attention.
    for t in 0..32u64 {
        let nx = nexus(0x9E37_79B9 + t * 7919);
        let nx1 = nexus(0x9E37_79B9);
        for n in [&nx, &nx1] {
            let mut sink = Vec::new();
            let mut src: &[u8] = &[];
            let _ = fx.target.execute(
                &Request {
                    nexus: n,
                    lun: 0,
                    tag: TAGS.fetch_add(1, Ordering::Relaxed),
                    attr: TaskAttr::Simple,
                    cdb: &[0, 0, 0, 0, 0, 0],
                },
                DataOut {
                    reader: &mut src,
                    len: 0,
                },
                DataIn {
                    writer: &mut sink,
                    len: 0,
                },
            );
        }
    }
}

fn bench(c: &mut Criterion, fx: &Fixture) {
    for (op, name) in [(Op::Read, "read_4k"), (Op::Write, "write_4k")] {
        for qd in [1u64, 32] {
            let mut g = c.benchmark_group(format!("{name}_qd{qd}"));
            g.throughput(Throughput::Elements(1));
            for (path, pname) in [(Path::Target, "target"), (Path::Plain, "pread_pwrite")] {
                g.bench_function(pname, |b| {
                    b.iter_custom(|iters| run(fx, op, path, qd, iters))
                });
            }
            g.finish();
        }
    }
}

/// CPU time of the whole process (all worker threads, user + system).
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    Duration::new(
        u64::try_from(ts.tv_sec).expect("sec"),
        u32::try_from(ts.tv_nsec).expect("nsec"),
    )
}

/// One timed run: (wall-clock IOPS, IOPS per CPU-second).
fn rates(fx: &Fixture, op: Op, path: Path, qd: u64, ops: u64) -> (f64, f64) {
    let cpu = process_cpu();
    let wall = run(fx, op, path, qd, ops);
    let cpu = process_cpu() - cpu;
    let n = ops as f64;
    (n / wall.as_secs_f64(), n / cpu.as_secs_f64())
}

fn median_and_spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// Both paths measured in alternating short rounds (so load from other
/// processes hits both alike; which path goes first alternates too), with
/// the same offsets, buffers and thread count on both. Prints, per case,
/// the median over the rounds of the throughput ratio target / plain with
/// its range, by wall-clock time and by CPU time (CPU time leaves out the
/// time other processes held the CPUs: steadier on a shared machine).
fn ratios(fx: &Fixture) {
    println!("\ntarget_io: throughput ratio target / plain pread-pwrite (goal >= 0.9)");
    for (op, name) in [(Op::Read, "read"), (Op::Write, "write")] {
        for qd in [1u64, 32] {
            // Rounds of about 0.1 s per side.
            let ops = if op == Op::Read { 200_000u64 } else { 20_000 };
            let rounds: Vec<((f64, f64), (f64, f64))> = (0..15)
                .map(|i| {
                    if i % 2 == 0 {
                        let t = rates(fx, op, Path::Target, qd, ops);
                        (t, rates(fx, op, Path::Plain, qd, ops))
                    } else {
                        let p = rates(fx, op, Path::Plain, qd, ops);
                        (rates(fx, op, Path::Target, qd, ops), p)
                    }
                })
                .collect();
            let (t, _, _) = median_and_spread(rounds.iter().map(|r| r.0 .0).collect());
            let (p, _, _) = median_and_spread(rounds.iter().map(|r| r.1 .0).collect());
            let wall = median_and_spread(rounds.iter().map(|r| r.0 .0 / r.1 .0).collect());
            let cpu = median_and_spread(rounds.iter().map(|r| r.0 .1 / r.1 .1).collect());
            println!(
                "  4k random {name:5} QD{qd:<2}: target {t:>9.0} IOPS, plain {p:>9.0} IOPS; \
                 ratio by wall time {:.3} ({:.3}..{:.3}), by CPU time {:.3} ({:.3}..{:.3})",
                wall.0, wall.1, wall.2, cpu.0, cpu.1, cpu.2
            );
        }
    }
}

/// A backend that moves no data: isolates the target's own per-command cost.
#[derive(Debug)]
struct NullBackend;

impl scsi::BlockBackend for NullBackend {
    fn read_vectored_at(&self, _b: &mut [std::io::IoSliceMut<'_>], _o: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn write_vectored_at(
        &self,
        _b: &[std::io::IoSlice<'_>],
        _o: u64,
        _f: bool,
    ) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn discard(&self, _o: u64, _l: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn supports_discard(&self) -> bool {
        false
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(FILE_SIZE)
    }
    fn is_shared(&self) -> bool {
        false
    }
}

/// Per-command cost of the target itself (CDB parse, unit attention and
/// task bookkeeping, data copy) over a backend that does nothing.
fn overhead(c: &mut Criterion, fx: &Fixture) {
    let disk = || {
        let d = Disk::new(
            DiskConfig::new(DiskIdentity::from_text("null")),
            Arc::new(NullBackend),
            None,
        );
        Arc::new(d.expect("disk"))
    };
    let null = Fixture {
        _dir: tempfile::tempdir().expect("tempdir"),
        file: fx.file.try_clone().expect("clone"),
        target: Box::new(EmulatedTarget::new().with_lun(0, disk()).expect("lun")),
    };
    let lu_alone = Fixture {
        _dir: tempfile::tempdir().expect("tempdir"),
        file: fx.file.try_clone().expect("clone"),
        target: Box::new(LuAlone(disk())),
    };
    prime(&null);
    prime(&lu_alone);
    let mut g = c.benchmark_group("target_overhead_null_backend");
    g.throughput(Throughput::Elements(1));
    for (op, name) in [(Op::Read, "read_4k_qd1"), (Op::Write, "write_4k_qd1")] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| run(&null, op, Path::Target, 1, iters))
        });
        g.bench_function(format!("{name}_disk_without_target"), |b| {
            b.iter_custom(|iters| run(&lu_alone, op, Path::Target, 1, iters))
        });
    }
    g.finish();
}

fn main() {
    let fx = fixture();
    prime(&fx);
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    bench(&mut c, &fx);
    overhead(&mut c, &fx);
    c.final_summary();
    // Only under `cargo bench` (not `cargo test --benches`), unless
    // TARGET_IO_RATIOS=0.
    let wanted = std::env::var("TARGET_IO_RATIOS").map_or(true, |v| v != "0");
    if wanted && std::env::args().any(|a| a == "--bench") {
        ratios(&fx);
    }
}
