//! The emulated disk with the real shared-disk reservation state
//! (`pr::shared::SharedPr`): two "VMs" open the same image, each through its
//! own target and I_T nexus, with separate PR openers as separate processes
//! would have.

mod disk_common;

use disk_common::*;
use scsi::pr::shared::SharedPr;
use scsi::{Disk, DiskConfig, DiskIdentity, EmulatedTarget, FileBackend, FileOptions, Status};
use std::sync::Arc;

fn vm(image: &std::path::Path, pr: Arc<SharedPr>) -> EmulatedTarget {
    let backend = Arc::new(
        FileBackend::open(
            image,
            FileOptions {
                shared: true,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    // The identity comes from the shared state's persisted disk UUID.
    let cfg = DiskConfig::new(DiskIdentity::from_uuid(pr.disk_uuid()));
    let disk = Disk::new(cfg, backend, Some(pr)).unwrap();
    EmulatedTarget::new().with_lun(0, Arc::new(disk)).unwrap()
}

fn pr_out(sa: u8, ty: u8, key: u64, sa_key: u64) -> ([u8; 10], Vec<u8>) {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes()); // RESERVATION KEY
    p[8..16].copy_from_slice(&sa_key.to_be_bytes()); // SERVICE ACTION RESERVATION KEY
                                                     // PERSISTENT RESERVE OUT, service action, scope 0 / type, length 24.
    ([0x5F, sa, ty, 0, 0, 0, 0, 0, 24, 0], p)
}

#[test]
fn two_vms_share_identity_and_reservations() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("shared.img");
    std::fs::write(&image, pattern(1 << 20, 512)).unwrap();
    let base = dir.path().join("shared.img.pr");
    let a = vm(&image, Arc::new(SharedPr::open_unshared(&base).unwrap()));
    let b = vm(&image, Arc::new(SharedPr::open_unshared(&base).unwrap()));
    let (na, nb) = (nexus(1), nexus(2));
    run(&a, &na, 0, &[0, 0, 0, 0, 0, 0], &[], 0).check(6, 0x29, 0);
    run(&b, &nb, 0, &[0, 0, 0, 0, 0, 0], &[], 0).check(6, 0x29, 0);

    // Same LU designator (VPD 0x83 NAA) from both.
    let vpd = |t: &EmulatedTarget, n| run(t, n, 0, &[0x12, 1, 0x83, 0, 0xFF, 0], &[], 255).data;
    let (va, vb) = (vpd(&a, &na), vpd(&b, &nb));
    assert_eq!(&va[4..8], &[0x01, 0x03, 0x00, 0x10]);
    assert_eq!(va[8] >> 4, 6);
    assert_eq!(va[4..24], vb[4..24]);

    // A registers key 0xA and takes Write Exclusive (type 1).
    let (cdb, p) = pr_out(0x00, 0x00, 0, 0xA);
    run(&a, &na, 0, &cdb, &p, 0).good();
    let (cdb, p) = pr_out(0x01, 0x01, 0xA, 0);
    run(&a, &na, 0, &cdb, &p, 0).good();

    // B: writes conflict (status 0x18, no sense), reads pass.
    let w = run(
        &b,
        &nb,
        0,
        &[0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0],
        &[0xBB; 512],
        0,
    );
    assert_eq!(w.status, Status::ReservationConflict);
    assert!(w.sense.is_empty());
    run(&b, &nb, 0, &[0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0], &[], 512).good();
    // A writes.
    run(
        &a,
        &na,
        0,
        &[0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0],
        &[0xAA; 512],
        0,
    )
    .good();
    assert_eq!(&std::fs::read(&image).unwrap()[512..1024], &[0xAA; 512][..]);

    // B sees the reservation through PERSISTENT RESERVE IN / READ RESERVATION.
    let o = run(&b, &nb, 0, &[0x5E, 0x01, 0, 0, 0, 0, 0, 0, 24, 0], &[], 24);
    let d = o.good();
    assert_eq!(
        &d[4..8],
        &[0, 0, 0, 16],
        "ADDITIONAL LENGTH: one reservation"
    );
    assert_eq!(&d[8..16], &0xAu64.to_be_bytes());
    assert_eq!(d[21] & 0x0F, 0x01);

    // B registers and preempts A: A's next command reports a unit attention
    // raised by the other opener, then A's writes conflict.
    let (cdb, p) = pr_out(0x00, 0x00, 0, 0xB);
    run(&b, &nb, 0, &cdb, &p, 0).good();
    let (cdb, p) = pr_out(0x04, 0x01, 0xB, 0xA);
    run(&b, &nb, 0, &cdb, &p, 0).good();
    let o = run(
        &a,
        &na,
        0,
        &[0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0],
        &[0xAA; 512],
        0,
    );
    assert_eq!(o.status, Status::CheckCondition);
    assert_eq!(o.triple().map(|t| (t.0, t.1)), Some((6, 0x2A)));
    let mut conflict = false;
    for _ in 0..4 {
        let o = run(
            &a,
            &na,
            0,
            &[0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0],
            &[0xAA; 512],
            0,
        );
        if o.status == Status::ReservationConflict {
            conflict = true;
            break;
        }
        assert_eq!(
            o.triple().map(|t| t.0),
            Some(6),
            "only unit attentions before the conflict"
        );
    }
    assert!(conflict);
}
