//! The shared-disk PR state: several openers of one disk (each
//! `open_unshared` plays a separate process) see one state through the
//! state file, unit attentions travel between them, APTPL persists and
//! non-APTPL state goes with the last user.

mod pr_common;

use std::sync::Arc;

use pr_common::*;
use scsi::pr::shared::{decode, encode, read_state_file};
use scsi::pr::state::Registration;
use scsi::pr::{PrAccess, PrState, RegistrantId, Reservations, SharedPr};

fn disk() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, [0u8; 512]).unwrap();
    (dir, img)
}

fn base(img: &std::path::Path) -> std::path::PathBuf {
    let mut s = img.canonicalize().unwrap().into_os_string();
    s.push(".pr");
    s.into()
}

#[test]
fn files_sit_beside_the_image_and_one_object_per_process() {
    let (dir, img) = disk();
    let link = dir.path().join("link.img");
    std::os::unix::fs::symlink(&img, &link).unwrap();
    let a = SharedPr::open(&img).unwrap();
    let b = SharedPr::open(&link).unwrap();
    assert!(
        Arc::ptr_eq(&a, &b),
        "same disk, same process: one state object"
    );
    assert_eq!(a.base_path(), base(&img));
    for suffix in ["disk.img.pr", "disk.img.pr.lock", "disk.img.pr.users"] {
        assert!(dir.path().join(suffix).exists(), "{suffix}");
    }
    // The state file decodes and carries the UUID.
    let (_, uuid, state) = read_state_file(&base(&img)).unwrap().unwrap();
    assert_eq!(uuid, a.disk_uuid());
    assert_eq!(state, PrState::default());
    assert_eq!(Reservations::disk_uuid(&*a), Some(uuid));
}

#[test]
fn uuid_persists_and_feeds_the_naa_designator() {
    let (_dir, img) = disk();
    let b = base(&img);
    let u1 = SharedPr::open_unshared(&b).unwrap().disk_uuid();
    let u2 = SharedPr::open_unshared(&b).unwrap().disk_uuid();
    assert_eq!(u1, u2, "identity survives every restart");
    assert_eq!(u1[6] >> 4, 4, "RFC 4122 version 4");
    let (_d2, img2) = disk();
    let other = SharedPr::open_unshared(&base(&img2)).unwrap().disk_uuid();
    assert_ne!(u1, other);
    // VPD 0x83's NAA 6 name derives from it: same disk, same name.
    let naa = scsi::DiskIdentity::from_uuid(u1).naa();
    assert_eq!(naa[0] >> 4, 6);
    assert_eq!(naa, scsi::DiskIdentity::from_uuid(u2).naa());
    assert_ne!(naa, scsi::DiskIdentity::from_uuid(other).naa());
}

#[test]
fn windows_arbitration_across_processes_two_nodes() {
    let (_dir, img) = disk();
    let b = base(&img);
    let p1 = SharedPr::open_unshared(&b).unwrap();
    let p2 = SharedPr::open_unshared(&b).unwrap();
    windows_arbitration_shared(&[&p1, &p2]);
}

#[test]
fn windows_arbitration_across_processes_three_nodes() {
    let (_dir, img) = disk();
    let b = base(&img);
    let p1 = SharedPr::open_unshared(&b).unwrap();
    let p2 = SharedPr::open_unshared(&b).unwrap();
    let p3 = SharedPr::open_unshared(&b).unwrap();
    windows_arbitration_shared(&[&p1, &p2, &p3]);
}

/// Same sequence as pr_state's `windows_arbitration`, each node on its own
/// opener of the disk.
fn windows_arbitration_shared(prs: &[&dyn Reservations]) {
    let n = prs.len();
    let nodes: Vec<_> = (1..=n).map(|i| node(u8::try_from(i).unwrap())).collect();
    let key = |i: usize| 0xC1u64 << 56 | u64::try_from(i).unwrap();
    let (a, pa) = (&nodes[0], prs[0]);
    expect(&out(pa, a, REG_IGNORE, 0, 0, key(0)), 0, &[]);
    expect(&out(pa, a, RESERVE, WE_RO, key(0), 0), 0, &[]);
    for (i, x) in nodes.iter().enumerate().skip(1) {
        let px = prs[i];
        assert!(
            px.conflicts(x, PrAccess::Write),
            "node {i} sees A's reservation"
        );
        #[rustfmt::skip]
        let want = [
            0, 0, 0, u8::try_from(i).unwrap(), // PRgeneration
            0, 0, 0, 0x10,                       // ADDITIONAL LENGTH
            0xC1, 0, 0, 0, 0, 0, 0, 0,           // A's key
            0, 0, 0, 0, 0x00, 0x05, 0, 0,        // LU | WE-RO
        ];
        assert_eq!(px.reserve_in(x, &in_cdb(1)).data, want);
        expect(&out(px, x, REG_IGNORE, 0, 0, key(i)), 0, &[]);
        assert!(!px.conflicts(x, PrAccess::Write));
    }
    let (z, pz) = (&nodes[n - 1], prs[n - 1]);
    expect(&out(pz, z, PREEMPT, WE_RO, key(n - 1), key(0)), 0, &[]);
    // The UA reached A's process through the state file.
    assert_eq!(uas(pa, a), vec![(6, 0x2A, 0x05)]);
    assert_eq!(uas(pa, a), vec![]);
    assert!(pa.conflicts(a, PrAccess::Write));
    for (i, x) in nodes.iter().enumerate().skip(1) {
        assert_eq!(uas(prs[i], x), vec![]);
    }
    expect(&out(pz, z, CLEAR, 0, key(n - 1), 0), 0, &[]);
    for (i, x) in nodes.iter().enumerate().take(n - 1).skip(1) {
        assert_eq!(uas(prs[i], x), vec![(6, 0x2A, 0x03)]);
    }
    assert_eq!(read_keys(pa, a).1, Vec::<u64>::new());
    assert!(!pa.conflicts(a, PrAccess::Write));
}

#[test]
fn data_path_sees_other_processes_changes_without_locking() {
    let (_dir, img) = disk();
    let b = base(&img);
    let p1 = SharedPr::open_unshared(&b).unwrap();
    let p2 = SharedPr::open_unshared(&b).unwrap();
    let (a, x) = (node(1), node(2));
    assert!(!p2.conflicts(&x, PrAccess::Write)); // cached, empty
    let v0 = p2.version();
    expect(&out(&p1, &a, REGISTER, 0, 0, 7), 0, &[]);
    expect(&out(&p1, &a, RESERVE, EA, 7, 0), 0, &[]);
    assert_eq!(p2.version(), v0 + 2, "each change bumps the shared counter");
    assert!(p2.conflicts(&x, PrAccess::Read));
    // A no-op (RESERVE again) changes nothing: no write, no new version.
    expect(&out(&p1, &a, RESERVE, EA, 7, 0), 0, &[]);
    assert_eq!(p2.version(), v0 + 2);
    expect(&out(&p1, &a, RELEASE, EA, 7, 0), 0, &[]);
    assert!(!p2.conflicts(&x, PrAccess::Read));
}

#[test]
fn scsi2_reservation_is_shared_and_cleared_by_reset() {
    let (_dir, img) = disk();
    let b = base(&img);
    let p1 = SharedPr::open_unshared(&b).unwrap();
    let p2 = SharedPr::open_unshared(&b).unwrap();
    expect(&p1.scsi2_reserve(&node(1)), 0, &[]);
    expect(&p2.scsi2_reserve(&node(2)), CONFLICT.0, CONFLICT.1);
    assert!(p2.conflicts(&node(2), PrAccess::Write));
    p2.lu_reset();
    assert!(!p1.conflicts(&node(2), PrAccess::Write));
    expect(&p2.scsi2_reserve(&node(2)), 0, &[]);
    p1.nexus_loss(&node(2));
    assert!(!p1.conflicts(&node(1), PrAccess::Write));
}

#[test]
fn non_aptpl_state_goes_with_the_last_user() {
    let (_dir, img) = disk();
    let b = base(&img);
    let p1 = SharedPr::open_unshared(&b).unwrap();
    let p2 = SharedPr::open_unshared(&b).unwrap();
    expect(&out(&p1, &node(1), REGISTER, 0, 0, 5), 0, &[]);
    expect(&out(&p1, &node(1), RESERVE, WE, 5, 0), 0, &[]);
    drop(p1);
    // p2 still uses the disk: everything is still there.
    assert_eq!(read_keys(&p2, &node(2)), (1, vec![5]));
    assert!(p2.conflicts(&node(2), PrAccess::Write));
    drop(p2);
    let (_, _, s) = read_state_file(&b).unwrap().unwrap();
    assert_eq!(s, PrState::default(), "dropped by the last closer");
    let p3 = SharedPr::open_unshared(&b).unwrap();
    assert_eq!(read_keys(&p3, &node(2)), (0, vec![]));
}

#[test]
fn aptpl_state_survives_every_restart() {
    let (_dir, img) = disk();
    let b = base(&img);
    {
        let p = SharedPr::open_unshared(&b).unwrap();
        let params = plist(0, 0x5A, 0x01); // APTPL
        expect(
            &p.reserve_out(&node(1), &out_cdb(REGISTER, 0, 24), &params),
            0,
            &[],
        );
        expect(&out(&p, &node(1), RESERVE, WE_RO, 0x5A, 0), 0, &[]);
        assert!(p.scsi2_reserve(&node(1)).status as u8 == 0);
    }
    let p = SharedPr::open_unshared(&b).unwrap();
    assert_eq!(read_keys(&p, &node(2)), (1, vec![0x5A]));
    assert!(p.conflicts(&node(2), PrAccess::Write));
    // REPORT CAPABILITIES shows PTPL_A.
    assert_eq!(p.reserve_in(&node(2), &in_cdb(2)).data[3], 0xB1);
    // Registering again without APTPL turns persistence off: gone after close.
    expect(&out(&p, &node(1), REGISTER, 0, 0x5A, 0x5B), 0, &[]);
    drop(p);
    let p = SharedPr::open_unshared(&b).unwrap();
    assert_eq!(read_keys(&p, &node(2)), (0, vec![]));
}

#[test]
fn first_opener_after_a_crash_drops_volatile_state() {
    // A state file left by processes that all died (nobody holds the users
    // lock): non-APTPL registrations, pending UAs, a SCSI-2 reservation.
    let (_dir, img) = disk();
    let b = base(&img);
    let uuid = [7u8; 16];
    let mut s = PrState::default();
    let p = SharedPr::open_unshared(&b).unwrap();
    expect(&out(&p, &node(1), REGISTER, 0, 0, 1), 0, &[]);
    expect(&out(&p, &node(2), REGISTER, 0, 0, 2), 0, &[]);
    expect(&out(&p, &node(1), CLEAR, 0, 1, 0), 0, &[]); // UA for node 2
    s.clone_from(&p.snapshot());
    drop(p);
    assert_eq!(s.pending_ua.len(), 1);
    s.scsi2 = Some(node(3));
    s.registrations.push(Registration {
        id: RegistrantId::exact(&node(4)),
        key: 4,
    });
    s.generation = 5;
    std::fs::write(&b, encode(42, &uuid, &s)).unwrap();
    let p = SharedPr::open_unshared(&b).unwrap();
    assert_eq!(p.disk_uuid(), uuid);
    let now = p.snapshot();
    assert!(now.pending_ua.is_empty() && now.scsi2.is_none());
    assert!(now.registrations.is_empty() && now.generation == 0);
    assert!(p.version() > 42, "versions only grow");
}

#[test]
fn corrupt_state_is_detected_and_replaced() {
    let (_dir, img) = disk();
    let b = base(&img);
    let s = PrState {
        generation: 9,
        aptpl: true,
        ..PrState::default()
    };
    let good = encode(3, &[1; 16], &s);
    assert_eq!(decode(&good).unwrap(), (3, [1; 16], s.clone()));
    // Every truncation and every single flipped byte is rejected.
    for cut in 0..good.len() {
        assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
    }
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x40;
        assert!(decode(&bad).is_err(), "flip at {i}");
    }
    std::fs::write(&b, &good[..good.len() - 3]).unwrap();
    assert!(read_state_file(&b).is_err());
    let p = SharedPr::open_unshared(&b).unwrap();
    assert_eq!(p.snapshot(), PrState::default());
    assert!(read_state_file(&b).unwrap().is_some());
}

#[test]
fn data_path_never_waits_for_the_update_lock() {
    let (_dir, img) = disk();
    let b = base(&img);
    let p1 = SharedPr::open_unshared(&b).unwrap();
    let p2 = Arc::new(SharedPr::open_unshared(&b).unwrap());
    expect(&out(&p1, &node(1), REGISTER, 0, 0, 1), 0, &[]);
    expect(&out(&p1, &node(1), RESERVE, EA, 1, 0), 0, &[]);
    // Somebody (a third process, say) holds the update lock.
    let mut lock_path = b.clone().into_os_string();
    lock_path.push(".lock");
    let lock = std::fs::File::open(&lock_path).unwrap();
    let fd = std::os::unix::io::AsRawFd::as_raw_fd(&lock);
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(fd, libc::LOCK_EX) };
    assert_eq!(rc, 0);
    let (tx, rx) = std::sync::mpsc::channel();
    let p = Arc::clone(&p2);
    std::thread::spawn(move || {
        let r = (
            p.conflicts(&node(2), PrAccess::Read),
            p.take_unit_attentions(&node(2)).len(),
            p.reserve_in(&node(2), &in_cdb(1)).data.len(),
        );
        tx.send(r).unwrap();
    });
    // A generous deadline only detects blocking; it is not a speed goal.
    let r = rx.recv_timeout(std::time::Duration::from_secs(20));
    assert_eq!(r, Ok((true, 0, 24)), "the data path blocked on the lock");
    drop(lock);
}

#[test]
fn a_writer_killed_before_publishing_is_repaired_by_the_next_update() {
    let (_dir, img) = disk();
    let b = base(&img);
    let p = SharedPr::open_unshared(&b).unwrap();
    assert!(!p.conflicts(&node(2), PrAccess::Write));
    // A writer renamed a new state in but died before bumping the counter.
    let (v, uuid, mut s) = read_state_file(&b).unwrap().unwrap();
    s.registrations.push(Registration {
        id: RegistrantId::exact(&node(1)),
        key: 1,
    });
    s.reservation = Some(scsi::pr::state::Reservation {
        holder: RegistrantId::exact(&node(1)),
        ty: scsi::pr::PrType::WriteExclusive,
    });
    std::fs::write(&b, encode(v + 1, &uuid, &s)).unwrap();
    assert_eq!(p.version(), v);
    // The next update (any nexus, any command) publishes the file's version.
    expect(&out(&p, &node(3), REGISTER, 0, 0, 3), 0, &[]);
    assert_eq!(p.version(), v + 2);
    assert!(p.conflicts(&node(2), PrAccess::Write));
    assert_eq!(read_keys(&p, &node(2)).1, vec![1, 3]);
}

#[test]
fn threads_of_one_process_arbitrate_on_one_state_object() {
    let (_dir, img) = disk();
    let pr = SharedPr::open(&img).unwrap();
    let workers: Vec<_> = (1..=4u8)
        .map(|w| {
            let pr = Arc::clone(&pr);
            std::thread::spawn(move || {
                let arb = node(w);
                let by = node_port2(w);
                let mine = 0xA0u64 << 56 | u64::from(w);
                let mut by_key = 0xB0u64 << 56 | u64::from(w) << 16;
                expect(&out(&*pr, &by, REG_IGNORE, 0, 0, by_key), 0, &[]);
                let mut wins = 0;
                for i in 0..150u32 {
                    pr.take_unit_attentions(&arb);
                    expect(&out(&*pr, &arb, REG_IGNORE, 0, 0, mine), 0, &[]);
                    let d = pr.reserve_in(&arb, &in_cdb(1)).data;
                    let o = if d.len() < 24 {
                        out(&*pr, &arb, RESERVE, EA, mine, 0)
                    } else {
                        let holder = u64::from_be_bytes(d[8..16].try_into().unwrap());
                        if holder == mine {
                            out(&*pr, &arb, RELEASE, EA, mine, 0)
                        } else {
                            out(&*pr, &arb, PREEMPT, EA, mine, holder)
                        }
                    };
                    assert!(matches!(o.status as u8, 0x00 | 0x18), "{o:?}");
                    wins += usize::from(o.status as u8 == 0);
                    if i % 10 == 0 {
                        // Nobody touches bystander keys: this never conflicts.
                        expect(&out(&*pr, &by, REGISTER, 0, by_key, by_key + 1), 0, &[]);
                        by_key += 1;
                    }
                }
                (by_key, wins)
            })
        })
        .collect();
    let results: Vec<_> = workers.into_iter().map(|h| h.join().unwrap()).collect();
    let keys = read_keys(&*pr, &node(9)).1;
    for (by_key, wins) in results {
        assert!(keys.contains(&by_key), "bystander key {by_key:#x} lost");
        assert!(wins > 0);
    }
    let s = pr.snapshot();
    assert!(
        s.reservation.is_none()
            || s.registrations
                .iter()
                .any(|g| Some(&g.id) == s.reservation.as_ref().map(|r| &r.holder))
    );
}

#[test]
fn aptpl_state_survives_a_crash_of_every_user() {
    // All processes died (nobody holds the users lock) and left APTPL state
    // with a pending UA and a reservation: the first opener keeps the
    // registrations and the reservation, drops the UA.
    let (_dir, img) = disk();
    let b = base(&img);
    let mut s = PrState {
        generation: 7,
        aptpl: true,
        ..PrState::default()
    };
    for i in 1..=2 {
        s.registrations.push(Registration {
            id: RegistrantId::exact(&node(i)),
            key: u64::from(i),
        });
    }
    s.reservation = Some(scsi::pr::state::Reservation {
        holder: RegistrantId::exact(&node(1)),
        ty: scsi::pr::PrType::ExclusiveAccessRegistrantsOnly,
    });
    s.pending_ua.push(scsi::pr::state::PendingUa {
        to: RegistrantId::exact(&node(2)),
        asc: 0x2A,
        ascq: 0x05,
    });
    std::fs::write(&b, encode(3, &[9; 16], &s)).unwrap();
    let p = SharedPr::open_unshared(&b).unwrap();
    assert_eq!(read_keys(&p, &node(3)), (7, vec![1, 2]));
    assert!(p.conflicts(&node(3), PrAccess::Read));
    assert!(!p.conflicts(&node(2), PrAccess::Write));
    assert_eq!(uas(&p, &node(2)), vec![]);
    assert_eq!(p.disk_uuid(), [9; 16]);
}
