//! Persistent reservation costs: a PR OUT round trip through the shared
//! state file (lock, read, update, atomic replace) with and without APTPL,
//! the data-path `conflicts()` check with no reservation and with one held
//! by another node, and a 4 KiB file read with and without the per-command
//! checks (the throughput ratio the issue asks for: goal >= 0.95).

use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use scsi::pr::{MemoryPr, PrAccess, Reservations, SharedPr};
use scsi::{ItNexus, PortName, TargetPort};

fn node(i: u8) -> ItNexus {
    ItNexus {
        initiator: PortName::Naa([0x50, 0, 0, 0, 0, 0, 0x0A, i]),
        target: TargetPort {
            relative_id: 1,
            name: PortName::Naa([0x60, 0, 0, 0, 0, 0, 0, i]),
        },
    }
}

fn cdb(sa: u8, ty: u8) -> [u8; 10] {
    // PERSISTENT RESERVE OUT, service action, scope LU | type, length 24.
    [0x5F, sa, ty, 0, 0, 0, 0, 0, 24, 0]
}

fn plist(rk: u64, sark: u64, flags: u8) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[..8].copy_from_slice(&rk.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    p[20] = flags; // APTPL in bit 0
    p
}

fn pr_out(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = c.benchmark_group("pr_out");
    for (name, flags) in [
        ("shared_register_no_aptpl", 0u8),
        ("shared_register_aptpl", 1),
    ] {
        let pr = SharedPr::open_unshared(&dir.path().join(format!("{name}.pr"))).expect("open");
        let a = node(1);
        let mut key = 1u64;
        // Every iteration changes the key: a real update and file replace.
        g.bench_function(name, |b| {
            b.iter(|| {
                let o = pr.reserve_out(&a, &cdb(0x06, 0), &plist(0, key + 1, flags));
                key += 1;
                black_box(o)
            })
        });
    }
    let mem = MemoryPr::new();
    let a = node(1);
    let mut key = 1u64;
    g.bench_function("memory_register", |b| {
        b.iter(|| {
            let o = mem.reserve_out(&a, &cdb(0x06, 0), &plist(0, key + 1, 0));
            key += 1;
            black_box(o)
        })
    });
    g.finish();
}

fn data_path(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let free = SharedPr::open_unshared(&dir.path().join("free.pr")).expect("open");
    let held = SharedPr::open_unshared(&dir.path().join("held.pr")).expect("open");
    let (a, b) = (node(1), node(2));
    held.reserve_out(&a, &cdb(0x06, 0), &plist(0, 0xA, 0));
    held.reserve_out(&b, &cdb(0x06, 0), &plist(0, 0xB, 0));
    held.reserve_out(&a, &cdb(0x01, 5), &plist(0xA, 0, 0)); // WE-RO by A
    assert!(!held.conflicts(&b, PrAccess::Write));

    let mut g = c.benchmark_group("conflicts");
    g.bench_function("shared_no_reservation", |bn| {
        bn.iter(|| black_box(free.conflicts(black_box(&b), PrAccess::Write)))
    });
    g.bench_function("shared_held_by_other", |bn| {
        bn.iter(|| black_box(held.conflicts(black_box(&b), PrAccess::Write)))
    });
    g.bench_function("shared_unit_attention_poll", |bn| {
        bn.iter(|| black_box(held.take_unit_attentions(black_box(&b))))
    });
    g.finish();

    // A 4 KiB read from a (page-cached) image file, as the file backend
    // does it, alone and preceded by the checks a logical unit makes per
    // command (unit attentions + conflicts) with a reservation held by
    // another node.
    let img_path = dir.path().join("disk.img");
    std::fs::write(&img_path, vec![0x5Au8; 1 << 20]).expect("image");
    let img = std::fs::File::open(&img_path).expect("image");
    let mut dst = vec![0u8; 4096];
    let mut lba = 0u64;
    let mut g = c.benchmark_group("io_4k_read");
    g.bench_function("no_pr", |bn| {
        bn.iter(|| {
            lba = (lba + 1) % 256;
            img.read_exact_at(&mut dst, lba * 4096).expect("read");
            black_box(&dst);
        })
    });
    g.bench_function("reservation_held", |bn| {
        bn.iter(|| {
            lba = (lba + 1) % 256;
            let ua = held.take_unit_attentions(black_box(&b));
            if ua.is_empty() && !held.conflicts(black_box(&b), PrAccess::Read) {
                img.read_exact_at(&mut dst, lba * 4096).expect("read");
            }
            black_box(&dst);
        })
    });
    g.finish();
}

/// One 4 KiB READ(10) through `EmulatedTarget` + `Disk` (memory image):
/// the whole command path, with no PR state, and with shared PR state where
/// another node holds a Write Exclusive - Registrants Only reservation and
/// this node is registered (the cluster's steady state).
fn target_path(c: &mut Criterion) {
    use scsi::target::TaskAttr;
    use scsi::{
        DataIn, DataOut, Disk, DiskConfig, DiskIdentity, EmulatedTarget, MemBackend, Request,
        ScsiTarget,
    };
    use std::sync::Arc;

    let dir = tempfile::tempdir().expect("tempdir");
    let make = |pr: Option<Arc<dyn Reservations>>| {
        let disk = Disk::new(
            DiskConfig::new(DiskIdentity::from_uuid([7; 16])),
            Arc::new(MemBackend::from_vec(vec![0; 1 << 20])),
            pr,
        )
        .expect("disk");
        EmulatedTarget::new()
            .with_lun(0, Arc::new(disk))
            .expect("lun")
    };
    let shared = Arc::new(SharedPr::open_unshared(&dir.path().join("t.pr")).expect("open"));
    let (a, b) = (node(1), node(2));
    shared.reserve_out(&a, &cdb(0x06, 0), &plist(0, 0xA, 0));
    shared.reserve_out(&b, &cdb(0x06, 0), &plist(0, 0xB, 0));
    shared.reserve_out(&a, &cdb(0x01, 5), &plist(0xA, 0, 0));
    let targets = [
        ("no_pr", make(None)),
        ("reservation_held", make(Some(shared))),
    ];
    // READ(10), LBA 8, 8 blocks of 512 bytes.
    let read10 = [0x28, 0x00, 0, 0, 0, 8, 0x00, 0x00, 0x08, 0x00];
    let mut sink = Vec::with_capacity(4096);
    let mut g = c.benchmark_group("target_read_4k");
    g.sample_size(40).measurement_time(Duration::from_secs(3));
    for (name, t) in &targets {
        let mut tag = 1u64;
        // Consume the power-on unit attention.
        for _ in 0..4 {
            sink.clear();
            let req = Request {
                nexus: &b,
                lun: 0,
                tag,
                attr: TaskAttr::Simple,
                cdb: &read10,
            };
            tag += 1;
            let _ = t.execute(
                &req,
                DataOut {
                    reader: &mut std::io::empty(),
                    len: 0,
                },
                DataIn {
                    writer: &mut sink,
                    len: 4096,
                },
            );
        }
        g.bench_function(*name, |bn| {
            bn.iter(|| {
                sink.clear();
                let req = Request {
                    nexus: &b,
                    lun: 0,
                    tag,
                    attr: TaskAttr::Simple,
                    cdb: &read10,
                };
                tag += 1;
                let r = t.execute(
                    &req,
                    DataOut {
                        reader: &mut std::io::empty(),
                        len: 0,
                    },
                    DataIn {
                        writer: &mut sink,
                        len: 4096,
                    },
                );
                black_box(r.map(|r| r.status))
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = pr_out, data_path, target_path
}
criterion_main!(benches);
