//! Task management, unit attentions and the reservation hooks, through the
//! public API (commands executing on other threads = other queues).

mod disk_common;

use disk_common::*;
use scsi::pr::{PrAccess, Reservations};
use scsi::sense::codes;
use scsi::target::{TaskMgmt, TmfResponse};
use scsi::{Disk, EmulatedTarget, ScsiTarget, Status};
use std::sync::Arc;

const TUR: [u8; 6] = [0x00, 0, 0, 0, 0, 0];
const READ1: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]; // READ(10) LBA 0, 1 block

fn gated() -> (Arc<GateBackend>, EmulatedTarget) {
    let gate = Arc::new(GateBackend::new(1 << 20));
    let disk = Arc::new(Disk::new(config(), gate.clone(), None).unwrap());
    (gate, EmulatedTarget::new().with_lun(0, disk).unwrap())
}

fn wait_until(mut f: impl FnMut() -> bool) {
    for _ in 0..5000 {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("condition never became true");
}

#[test]
fn query_and_abort_task_executing_on_another_queue() {
    let (gate, t) = gated();
    let (n1, n2) = (nexus(1), nexus(2));
    run(&t, &n1, 0, &TUR, &[], 0);
    std::thread::scope(|s| {
        let cmd = s.spawn(|| run_tag(&t, &n1, 0, 77, &READ1, &[], 512));
        gate.wait_blocked(1);
        assert_eq!(
            t.task_mgmt(&n1, 0, TaskMgmt::QueryTask(77)),
            TmfResponse::Succeeded
        );
        assert_eq!(
            t.task_mgmt(&n1, 0, TaskMgmt::QueryTask(78)),
            TmfResponse::Complete
        );
        assert_eq!(
            t.task_mgmt(&n2, 0, TaskMgmt::QueryTask(77)),
            TmfResponse::Complete
        );
        assert_eq!(
            t.task_mgmt(&n1, 0, TaskMgmt::QueryTaskSet),
            TmfResponse::Succeeded
        );
        assert_eq!(
            t.task_mgmt(&n2, 0, TaskMgmt::QueryTaskSet),
            TmfResponse::Complete
        );
        // A second command with the same tag from the same nexus: OVERLAPPED COMMANDS.
        let o = run_tag(&t, &n1, 0, 77, &TUR, &[], 0);
        o.check(0x0B, 0x4E, 0x00);
        // ABORT TASK waits until the command has left the task set.
        let abort = s.spawn(|| t.task_mgmt(&n1, 0, TaskMgmt::AbortTask(77)));
        wait_until(|| t.task_mgmt(&n1, 0, TaskMgmt::QueryTask(77)) == TmfResponse::Complete);
        assert!(!abort.is_finished());
        gate.open();
        assert_eq!(abort.join().unwrap(), TmfResponse::Complete);
        let o = cmd.join().unwrap();
        assert_eq!(o.status, Status::TaskAborted);
        assert!(o.sense.is_empty() && o.data.is_empty());
    });
    assert_eq!(
        t.task_mgmt(&n1, 0, TaskMgmt::QueryTaskSet),
        TmfResponse::Complete
    );
    // The tag is reusable and the LU works.
    assert_eq!(run_tag(&t, &n1, 0, 77, &READ1, &[], 512).good().len(), 512);
}

/// PREEMPT AND ABORT aborts the preempted nexus' outstanding commands (here
/// a READ blocked on another queue) and leaves the preempting one alone.
#[test]
fn preempt_and_abort_aborts_the_preempted_nexus_commands() {
    let gate = Arc::new(GateBackend::new(1 << 20));
    let pr: Arc<dyn Reservations> = Arc::new(scsi::pr::MemoryPr::new());
    let disk = Arc::new(Disk::new(config(), gate.clone(), Some(pr)).unwrap());
    let t = EmulatedTarget::new().with_lun(0, disk).unwrap();
    let (n1, n2, n3) = (nexus(1), nexus(2), nexus(3));
    for n in [&n1, &n2, &n3] {
        run(&t, n, 0, &TUR, &[], 0); // consume the power-on unit attention
    }
    // PERSISTENT RESERVE OUT with a 24-byte parameter list.
    let prout = |sa: u8, ty: u8| [0x5F, sa, ty, 0, 0, 0, 0, 0, 24, 0];
    let params = |rk: u8, sark: u8| {
        let mut p = [0u8; 24];
        p[7] = rk; // RESERVATION KEY
        p[15] = sark; // SERVICE ACTION RESERVATION KEY
        p
    };
    run(&t, &n1, 0, &prout(0x00, 0), &params(0, 0xA), 0).good(); // n1 REGISTER 0xA
    run(&t, &n2, 0, &prout(0x00, 0), &params(0, 0xB), 0).good(); // n2 REGISTER 0xB
    run(&t, &n3, 0, &prout(0x00, 0), &params(0, 0xC), 0).good(); // n3 REGISTER 0xC
    run(&t, &n1, 0, &prout(0x01, 0x05), &params(0xA, 0), 0).good(); // n1 RESERVE WE-RO
    std::thread::scope(|s| {
        let a = s.spawn(|| run_tag(&t, &n1, 0, 7, &READ1, &[], 512));
        let c = s.spawn(|| run_tag(&t, &n3, 0, 7, &READ1, &[], 512));
        gate.wait_blocked(2);
        // n2: PREEMPT AND ABORT (SA 5), type WE-RO, RK 0xB, SARK 0xA.
        let pa = run(&t, &n2, 0, &prout(0x05, 0x05), &params(0xB, 0xA), 0);
        let q1 = t.task_mgmt(&n1, 0, TaskMgmt::QueryTask(7));
        let q3 = t.task_mgmt(&n3, 0, TaskMgmt::QueryTask(7));
        gate.open(); // before asserting, so a failure cannot leave the readers blocked
        pa.good();
        assert_eq!(q1, TmfResponse::Complete, "n1's READ must be aborted");
        assert_eq!(q3, TmfResponse::Succeeded, "n3's READ must still run");
        let a = a.join().unwrap();
        assert_eq!(a.status, Status::TaskAborted);
        assert!(a.sense.is_empty() && a.data.is_empty());
        assert_eq!(c.join().unwrap().good().len(), 512); // not preempted: untouched
    });
    // n1 learns it was preempted (2A/05), then conflicts on writes under n2's WE-RO.
    run(&t, &n1, 0, &TUR, &[], 0).check(0x06, 0x2A, 0x05);
    let write1 = [0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    let w = run(&t, &n1, 0, &write1, &[0u8; 512], 0);
    assert_eq!(w.status, Status::ReservationConflict);
}

#[test]
fn abort_task_set_only_touches_its_nexus() {
    let (gate, t) = gated();
    let (n1, n2) = (nexus(1), nexus(2));
    run(&t, &n1, 0, &TUR, &[], 0);
    run(&t, &n2, 0, &TUR, &[], 0);
    std::thread::scope(|s| {
        let a = s.spawn(|| run_tag(&t, &n1, 0, 1, &READ1, &[], 512));
        let b = s.spawn(|| run_tag(&t, &n2, 0, 1, &READ1, &[], 512));
        gate.wait_blocked(2);
        let abort = s.spawn(|| t.task_mgmt(&n1, 0, TaskMgmt::AbortTaskSet));
        wait_until(|| t.task_mgmt(&n1, 0, TaskMgmt::QueryTask(1)) == TmfResponse::Complete);
        assert_eq!(
            t.task_mgmt(&n2, 0, TaskMgmt::QueryTask(1)),
            TmfResponse::Succeeded
        );
        gate.open();
        assert_eq!(abort.join().unwrap(), TmfResponse::Complete);
        assert_eq!(a.join().unwrap().status, Status::TaskAborted);
        assert_eq!(b.join().unwrap().good().len(), 512);
    });
    // No unit attention for either (ABORT TASK SET establishes none).
    run(&t, &n1, 0, &TUR, &[], 0).good();
    run(&t, &n2, 0, &TUR, &[], 0).good();
}

#[test]
fn clear_task_set_aborts_all_and_tells_other_nexus() {
    let (gate, t) = gated();
    let (n1, n2) = (nexus(1), nexus(2));
    run(&t, &n1, 0, &TUR, &[], 0);
    run(&t, &n2, 0, &TUR, &[], 0);
    std::thread::scope(|s| {
        let a = s.spawn(|| run_tag(&t, &n1, 0, 1, &READ1, &[], 512));
        gate.wait_blocked(1);
        let clear = s.spawn(|| t.task_mgmt(&n2, 0, TaskMgmt::ClearTaskSet));
        wait_until(|| t.task_mgmt(&n1, 0, TaskMgmt::QueryTask(1)) == TmfResponse::Complete);
        gate.open();
        assert_eq!(clear.join().unwrap(), TmfResponse::Complete);
        assert_eq!(a.join().unwrap().status, Status::TaskAborted);
    });
    // TAS = 0: COMMANDS CLEARED BY ANOTHER INITIATOR for nexus 1 only.
    run(&t, &n1, 0, &TUR, &[], 0).check(6, 0x2F, 0x00);
    run(&t, &n1, 0, &TUR, &[], 0).good();
    run(&t, &n2, 0, &TUR, &[], 0).good();
}

#[test]
fn logical_unit_reset_raises_29_03_everywhere_and_resets_mode() {
    let pr = Arc::new(FakePr::default());
    let r = Rig::with(config(), 1 << 20, Some(pr.clone()));
    let n2 = nexus(2);
    r.clear_ua(&r.n);
    r.clear_ua(&n2);
    // Clear WCE with MODE SELECT(6) (nexus 2 learns 2A/01).
    let mut p = vec![0, 0, 0, 0, 0x08, 0x12, 0x00];
    p.resize(24, 0);
    r.cmd(&[0x15, 0x10, 0, 0, 24, 0], &p, 0).good();
    assert_eq!(
        r.target.task_mgmt(&r.n, 0, TaskMgmt::LogicalUnitReset),
        TmfResponse::Complete
    );
    // 29/03 replaces the queued 2A/01.
    run(&r.target, &n2, 0, &TUR, &[], 0).check(6, 0x29, 0x03);
    run(&r.target, &n2, 0, &TUR, &[], 0).good();
    r.cmd(&TUR, &[], 0).check(6, 0x29, 0x03);
    // Mode parameters are back to their defaults (WCE 1).
    assert_eq!(
        r.cmd(&[0x1A, 0x08, 0x08, 0, 0xFF, 0], &[], 255).good()[6],
        0x04
    );
    assert_eq!(pr.calls(), vec!["lu_reset".to_string()]);
}

#[test]
fn it_nexus_reset_is_per_nexus_and_covers_all_luns() {
    let pr = Arc::new(FakePr::default());
    let mem = Arc::new(scsi::MemBackend::new(1 << 20));
    let mk = |id: &str| {
        let mut c = config();
        c.identity = scsi::DiskIdentity::from_text(id);
        Arc::new(Disk::new(c, mem.clone(), Some(pr.clone())).unwrap())
    };
    let t = EmulatedTarget::new()
        .with_lun(0, mk("a"))
        .unwrap()
        .with_lun(1, mk("b"))
        .unwrap();
    let (n1, n2) = (nexus(1), nexus(2));
    for lun in [0, 1] {
        run(&t, &n1, lun, &TUR, &[], 0);
        run(&t, &n2, lun, &TUR, &[], 0);
    }
    // Sent for LUN 1 but applies to every LU of the nexus.
    assert_eq!(
        t.task_mgmt(&n1, 1, TaskMgmt::ItNexusReset),
        TmfResponse::Complete
    );
    for lun in [0, 1] {
        run(&t, &n1, lun, &TUR, &[], 0).check(6, 0x29, 0x07);
        run(&t, &n2, lun, &TUR, &[], 0).good();
    }
    let loss = format!("nexus_loss {}", n1.initiator);
    assert_eq!(pr.calls(), vec![loss.clone(), loss]);
}

#[test]
fn tmf_misc() {
    let r = Rig::new();
    // A new nexus has 29/00 pending: QUERY ASYNCHRONOUS EVENT succeeds.
    assert_eq!(
        r.target.task_mgmt(&r.n, 0, TaskMgmt::QueryAsyncEvent),
        TmfResponse::Succeeded
    );
    assert_eq!(
        r.target.pending_unit_attention(&r.n, 0),
        Some(codes::POWER_ON_RESET)
    );
    r.clear_ua(&r.n);
    assert_eq!(
        r.target.task_mgmt(&r.n, 0, TaskMgmt::QueryAsyncEvent),
        TmfResponse::Complete
    );
    assert_eq!(r.target.pending_unit_attention(&r.n, 0), None);
    assert_eq!(r.target.pending_unit_attention(&r.n, 3), None);
    // Absent LUN.
    assert_eq!(
        r.target.task_mgmt(&r.n, 3, TaskMgmt::AbortTaskSet),
        TmfResponse::IncorrectLun
    );
    // ABORT TASK of an unknown tag: nothing to do.
    assert_eq!(
        r.target.task_mgmt(&r.n, 0, TaskMgmt::AbortTask(12345)),
        TmfResponse::Complete
    );
    // NACA is not supported: CLEAR ACA is rejected.
    assert_eq!(
        r.target.task_mgmt(&r.n, 0, TaskMgmt::ClearAca),
        TmfResponse::Rejected
    );
}

#[test]
fn hot_added_lun_raises_reported_luns_changed() {
    let r = Rig::ready();
    let n2 = nexus(2);
    r.clear_ua(&n2);
    let d2 = Arc::new(Disk::new(config(), Arc::new(scsi::MemBackend::new(4096)), None).unwrap());
    r.target.add_lun(1, d2).unwrap();
    r.cmd(&TUR, &[], 0).check(6, 0x3F, 0x0E);
    r.cmd(&TUR, &[], 0).good();
    assert!(r.target.add_lun(1, r.disk.clone()).is_err());
    assert!(r.target.add_lun(16384, r.disk.clone()).is_err());
    assert!(r.target.remove_lun(1).is_some());
    assert!(!r.target.has_lun(1));
    // REPORT LUNS clears REPORTED LUNS DATA HAS CHANGED for the nexus.
    let o = r.cmd(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], &[], 16);
    assert_eq!(o.good(), &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    r.cmd(&TUR, &[], 0).good();
    // Another nexus still has it.
    run(&r.target, &n2, 0, &TUR, &[], 0).check(6, 0x3F, 0x0E);
}

#[test]
fn luns_are_routed_to_their_own_disks() {
    let a = Arc::new(scsi::MemBackend::from_vec(vec![0xAA; 4096]));
    let b = Arc::new(scsi::MemBackend::from_vec(vec![0xBB; 4096]));
    let da = Arc::new(Disk::new(config(), a, None).unwrap());
    let db = Arc::new(Disk::new(config(), b, None).unwrap());
    let t = EmulatedTarget::new()
        .with_lun(0, da)
        .unwrap()
        .with_lun(9, db)
        .unwrap();
    let n = nexus(1);
    for (lun, byte) in [(0u16, 0xAA), (9, 0xBB)] {
        run(&t, &n, lun, &TUR, &[], 0);
        assert_eq!(run(&t, &n, lun, &READ1, &[], 512).good(), &[byte; 512][..]);
    }
}

#[test]
fn reservation_conflict_status_without_sense() {
    let pr = Arc::new(FakePr::default());
    let r = Rig::with(config(), 1 << 20, Some(pr.clone()));
    r.clear_ua(&r.n);
    pr.conflict_for
        .lock()
        .unwrap()
        .push((r.n.clone(), PrAccess::Write));
    // WRITE(10): RESERVATION CONFLICT, no sense, nothing written.
    let o = r.cmd(&[0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0], &[0xFF; 512], 0);
    assert_eq!(o.status, Status::ReservationConflict);
    assert!(o.sense.is_empty());
    assert_eq!(o.data_out_len, 0);
    assert_eq!(&r.mem.contents()[512..1024], &[1u8; 512][..]);
    // READ (class Read) and INQUIRY (Allowed) pass.
    r.cmd(&READ1, &[], 512).good();
    r.cmd(&[0x12, 0, 0, 0, 36, 0], &[], 36).good();
    // Another nexus is not in conflict.
    let n2 = nexus(2);
    r.clear_ua(&n2);
    run(
        &r.target,
        &n2,
        0,
        &[0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0],
        &[0xFF; 512],
        0,
    )
    .good();
    // A pending unit attention is reported before the conflict.
    pr.pending
        .lock()
        .unwrap()
        .push((r.n.clone(), codes::RESERVATIONS_PREEMPTED));
    r.cmd(&[0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0], &[0; 512], 0)
        .check(6, 0x2A, 0x03);
    assert_eq!(
        r.cmd(&[0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0], &[0; 512], 0)
            .status,
        Status::ReservationConflict
    );
}

#[test]
fn persistent_reserve_in_out_and_scsi2_are_routed() {
    let pr = Arc::new(FakePr::default());
    let r = Rig::with(config(), 1 << 20, Some(pr.clone()));
    r.clear_ua(&r.n);
    // PERSISTENT RESERVE IN, READ KEYS, allocation length 8: truncated by us.
    let o = r.cmd(&[0x5E, 0x00, 0, 0, 0, 0, 0, 0x00, 0x08, 0], &[], 64);
    assert_eq!(o.good(), &[0, 0, 0, 5, 0, 0, 0, 8]);
    let o = r.cmd(&[0x5E, 0x00, 0, 0, 0, 0, 0, 0x00, 0x40, 0], &[], 64);
    assert_eq!(o.good().len(), 16);
    // PERSISTENT RESERVE OUT, REGISTER, PARAMETER LIST LENGTH 24.
    let mut params = vec![0u8; 24];
    params[8..16].copy_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
    let o = r.cmd(&[0x5F, 0x00, 0x00, 0, 0, 0, 0, 0, 24, 0], &params, 0);
    o.good();
    assert_eq!(o.data_out_len, 24);
    // The fake answers PARAMETER LIST LENGTH ERROR for other lengths.
    r.cmd(&[0x5F, 0x06, 0x00, 0, 0, 0, 0, 0, 20, 0], &[0; 20], 0)
        .check(5, 0x1A, 0);
    // RESERVE(6), RELEASE(10).
    r.cmd(&[0x16, 0, 0, 0, 0, 0], &[], 0).good();
    r.cmd(&[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0).good();
    // Unknown PR OUT service action 0x08: INVALID FIELD IN CDB before reaching PR.
    r.cmd(&[0x5F, 0x08, 0x00, 0, 0, 0, 0, 0, 24, 0], &params, 0)
        .check(5, 0x24, 0);
    let who = r.n.initiator.to_string();
    assert_eq!(
        pr.calls(),
        vec![
            "in sa=0".to_string(),
            "in sa=0".to_string(),
            format!("out sa=0 cdb=10 params={params:02x?}"),
            format!("out sa=6 cdb=10 params={:02x?}", [0u8; 20]),
            format!("reserve {who}"),
            format!("release {who}"),
        ]
    );
    // RSOC lists the PR commands now.
    let o = r.cmd(
        &[0xA3, 0x0C, 0x02, 0x5F, 0x00, 0x07, 0, 0, 0x01, 0x00, 0, 0],
        &[],
        256,
    );
    assert_eq!(&o.good()[..4], &[0x00, 0x03, 0x00, 0x0A]);
    let _: &dyn Reservations = &*pr;
}

#[test]
fn reservation_commands_without_reservation_state() {
    let r = Rig::ready();
    // PERSISTENT RESERVE IN: INVALID COMMAND OPERATION CODE.
    r.cmd(&[0x5E, 0x00, 0, 0, 0, 0, 0, 0x00, 0x08, 0], &[], 64)
        .check(5, 0x20, 0);
    // RESERVE(6).
    r.cmd(&[0x16, 0, 0, 0, 0, 0], &[], 0).check(5, 0x20, 0);
}

#[test]
fn nexuses_differing_only_in_target_port_name_are_distinct() {
    let r = Rig::new();
    let a = nexus(1);
    let mut b = nexus(1);
    b.target.name = scsi::PortName::Naa([0x50, 0x01, 0x40, 0x5A, 0, 0, 0, 0x99]);
    run(&r.target, &a, 0, &TUR, &[], 0).check(6, 0x29, 0x00);
    run(&r.target, &a, 0, &TUR, &[], 0).good();
    // Same initiator and relative port id, other target port: its own 29/00.
    run(&r.target, &b, 0, &TUR, &[], 0).check(6, 0x29, 0x00);
    let mut c = nexus(1);
    c.target.relative_id = 2;
    run(&r.target, &c, 0, &TUR, &[], 0).check(6, 0x29, 0x00);
    run(&r.target, &a, 0, &TUR, &[], 0).good();
}
