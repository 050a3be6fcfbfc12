//! PREEMPT AND ABORT's abort fence inside one process, and its pieces: the
//! abort log of the PR state, its encoding in the state file, the fence
//! slots of the shared page. (Two real processes:
//! `pr_abort_multiprocess.rs`.)

mod pr_common;

use std::io::{self, IoSlice, IoSliceMut};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use pr_common::*;
use scsi::backend::{BlockBackend, MemBackend};
use scsi::pr::shared::{decode, encode};
use scsi::pr::state::MAX_ABORT_RECORDS;
use scsi::pr::{
    AbortLog, IoPass, MemoryPr, NexusPrCache, PrAccess, PrOutResult, PrOutcome, PrState,
    RegistrantId, Reservations, SharedPr, SharedPrError,
};
use scsi::target::TaskAttr;
use scsi::{
    DataIn, DataOut, Disk, DiskConfig, DiskIdentity, EmulatedTarget, ItNexus, Request, ScsiTarget,
    Sense, Status,
};

// ---------------------------------------------------------------------------
// The abort log.

#[test]
fn abort_log_answers_by_epoch_and_nexus() {
    let (a, b, c) = (node(1), node(2), node(3));
    let mut log = AbortLog::default();
    assert!(!log.aborted(&b, 0), "no abort ever");
    assert_eq!(log.push(&[RegistrantId::exact(&b)]), 1);
    assert!(log.aborted(&b, 0), "B's command from before epoch 1");
    assert!(!log.aborted(&b, 1), "B's command from after it");
    assert!(
        !log.aborted(&a, 0) && !log.aborted(&c, 0),
        "others untouched"
    );
    // An ALL_TG_PT registrant covers its initiator on every target port.
    let all_c = RegistrantId {
        initiator: c.initiator.clone(),
        target: None,
    };
    assert_eq!(log.push(&[all_c]), 2);
    assert!(log.aborted(&node_port2(3), 1) && log.aborted(&c, 1));
    assert!(!log.aborted(&b, 1), "epoch 2 did not preempt B");
    assert!(log.aborted(&b, 0), "epoch 1 still answers");
}

#[test]
fn abort_log_drops_whole_old_epochs_and_then_answers_aborted() {
    let mut log = AbortLog::default();
    let ids: Vec<RegistrantId> = (1..=100u8).map(|i| RegistrantId::exact(&node(i))).collect();
    for _ in 0..3 {
        log.push(&ids); // 300 records > MAX_ABORT_RECORDS
    }
    assert!(log.records.len() <= MAX_ABORT_RECORDS);
    assert_eq!((log.epoch, log.floor), (3, 1), "epoch 1 dropped as a whole");
    assert!(log.records.iter().all(|r| r.0 >= 2));
    // Node 200 was never preempted, but a command from before the dropped
    // epoch cannot be answered any more: it counts as aborted.
    assert!(log.aborted(&node(200), 0));
    assert!(!log.aborted(&node(200), 1), "epochs 2..3 are known");
    assert!(log.aborted(&node(7), 1));
}

#[test]
fn preempt_and_abort_records_the_preempted_and_plain_preempt_does_not() {
    let mut s = PrState::default();
    let (a, b, c) = (node(1), node(2), node(3));
    let o = |s: &mut PrState, n: &ItNexus, sa: u8, ty: u8, rk: u64, sark: u64| -> PrOutResult {
        s.pr_out(n, &out_cdb(sa, ty, 24), &plist(rk, sark, 0), &[])
    };
    for (n, k) in [(&a, 0xA), (&b, 0xB), (&c, 0xC)] {
        assert_eq!(o(&mut s, n, REGISTER, 0, 0, k).outcome, PrOutcome::good());
    }
    assert_eq!(
        o(&mut s, &a, RESERVE, WE_RO, 0xA, 0).outcome,
        PrOutcome::good()
    );
    let r = o(&mut s, &a, PREEMPT, WE_RO, 0xA, 0xC);
    assert_eq!((r.outcome, r.abort.len()), (PrOutcome::good(), 0));
    assert_eq!(s.aborts, AbortLog::default(), "PREEMPT aborts nothing");
    let r = o(&mut s, &a, PREEMPT_AND_ABORT, WE_RO, 0xA, 0xB);
    assert_eq!(r.outcome, PrOutcome::good());
    assert_eq!(r.abort, vec![RegistrantId::exact(&b)]);
    assert_eq!(s.aborts.epoch, 1);
    assert_eq!(s.aborts.records, vec![(1, RegistrantId::exact(&b))]);
    // A failed PREEMPT AND ABORT (unknown key) records nothing.
    let r = o(&mut s, &a, PREEMPT_AND_ABORT, WE_RO, 0xA, 0x77);
    assert_eq!(r.outcome, PrOutcome::conflict());
    assert_eq!(s.aborts.epoch, 1);
    // Power loss: no command survives it; the epoch keeps counting.
    s.power_loss();
    assert_eq!((s.aborts.epoch, s.aborts.floor), (1, 1));
    assert!(s.aborts.records.is_empty());
}

#[test]
fn the_abort_log_is_kept_in_the_state_file() {
    let mut s = PrState::default();
    s.aborts.push(&[RegistrantId::exact(&node(2))]);
    s.aborts.push(&[RegistrantId {
        initiator: node(3).initiator,
        target: None,
    }]);
    let img = encode(9, &[3; 16], &s);
    assert_eq!(decode(&img).unwrap(), (9, [3; 16], s.clone()));
    // A state without aborts encodes exactly as before the log existed
    // (the section is left out), so older files read the same.
    let plain = encode(9, &[3; 16], &PrState::default());
    assert!(plain.len() < img.len());
    assert_eq!(decode(&plain).unwrap().2, PrState::default());
    // Every truncation and every flipped byte is rejected (checksum).
    for cut in 0..img.len() {
        assert!(decode(&img[..cut]).is_err(), "cut at {cut}");
    }
    for i in 0..img.len() {
        let mut bad = img.clone();
        bad[i] ^= 0x10;
        assert!(decode(&bad).is_err(), "flip at {i}");
    }
    // A record outside (floor, epoch] is refused even with a valid
    // checksum.
    let mut odd = s.clone();
    odd.aborts.records[0].0 = 5;
    assert!(decode(&encode(9, &[3; 16], &odd)).is_err());
}

// ---------------------------------------------------------------------------
// Fence slots of the shared page.

#[test]
fn the_256th_concurrent_opener_is_refused_and_a_closed_slot_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("disk.img.pr");
    let mut open: Vec<SharedPr> = (0..255)
        .map(|i| SharedPr::open_unshared(&base).unwrap_or_else(|e| panic!("opener {i}: {e}")))
        .collect();
    match SharedPr::open_unshared(&base) {
        Err(SharedPrError::TooManyUsers(p)) => assert_eq!(p, base),
        other => panic!("expected TooManyUsers, got {other:?}"),
    }
    drop(open.pop());
    open.push(SharedPr::open_unshared(&base).expect("the freed slot is reused"));
}

#[test]
fn a_new_opener_sees_the_published_abort_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("disk.img.pr");
    let p1 = SharedPr::open_unshared(&base).unwrap();
    let (a, b) = (node(1), node(2));
    expect(&out(&p1, &a, REGISTER, 0, 0, 0xA), GOOD.0, GOOD.1);
    expect(&out(&p1, &b, REGISTER, 0, 0, 0xB), GOOD.0, GOOD.1);
    let since = p1.abort_epoch();
    expect(
        &out(&p1, &a, PREEMPT_AND_ABORT, WE, 0xA, 0xB),
        GOOD.0,
        GOOD.1,
    );
    assert_eq!(p1.abort_epoch(), since + 1);
    let p2 = SharedPr::open_unshared(&base).unwrap();
    assert_eq!(p2.abort_epoch(), since + 1);
    assert!(p2.aborted_since(&b, since), "B's older command is aborted");
    assert!(p2.enter_io(&b, since).is_none(), "and may not write");
    assert!(!p2.aborted_since(&a, since));
    assert!(p2.enter_io(&a, since).is_some());
    assert!(
        p2.enter_io(&b, since + 1).is_some(),
        "B's new commands pass"
    );
}

// ---------------------------------------------------------------------------
// A logical unit in one process: MemoryPr and SharedPr.

const IMAGE: usize = 64 * 512;

/// Holds callers until opened, counting how many wait.
#[derive(Debug, Default)]
struct Gate {
    st: Mutex<(bool, bool, u32)>, // armed, open, waiting
    cv: Condvar,
}

impl Gate {
    fn arm(&self) {
        *self.st.lock().unwrap() = (true, false, 0);
    }
    fn pass(&self) {
        let mut g = self.st.lock().unwrap();
        if !g.0 {
            return;
        }
        g.2 += 1;
        self.cv.notify_all();
        while !g.1 {
            g = self.cv.wait(g).unwrap();
        }
    }
    fn wait_waiting(&self, n: u32) {
        let mut g = self.st.lock().unwrap();
        while g.2 < n {
            g = self.cv.wait(g).unwrap();
        }
    }
    fn open(&self) {
        let mut g = self.st.lock().unwrap();
        g.0 = false;
        g.1 = true;
        self.cv.notify_all();
    }
}

/// Reservations whose WRITE-class commands wait at a gate after their
/// conflict check passed (queued before the fence).
#[derive(Debug)]
struct Queued<P> {
    inner: P,
    gate: Gate,
}

impl<P: Reservations> Reservations for Queued<P> {
    fn conflicts(&self, n: &ItNexus, access: PrAccess) -> bool {
        let c = self.inner.conflicts(n, access);
        if access == PrAccess::Write {
            self.gate.pass();
        }
        c
    }
    fn reserve_out(&self, n: &ItNexus, cdb: &[u8], p: &[u8]) -> PrOutcome {
        self.inner.reserve_out(n, cdb, p)
    }
    fn reserve_out_with_aborts(&self, n: &ItNexus, cdb: &[u8], p: &[u8]) -> PrOutResult {
        self.inner.reserve_out_with_aborts(n, cdb, p)
    }
    // No state version: the logical unit asks `conflicts` every command.
    fn abort_epoch(&self) -> u64 {
        self.inner.abort_epoch()
    }
    fn enter_io(&self, n: &ItNexus, since: u64) -> Option<IoPass<'_>> {
        self.inner.enter_io(n, since)
    }
    fn aborted_since(&self, n: &ItNexus, since: u64) -> bool {
        self.inner.aborted_since(n, since)
    }
    fn reserve_in(&self, n: &ItNexus, cdb: &[u8]) -> PrOutcome {
        self.inner.reserve_in(n, cdb)
    }
    fn scsi2_reserve(&self, n: &ItNexus) -> PrOutcome {
        self.inner.scsi2_reserve(n)
    }
    fn scsi2_release(&self, n: &ItNexus) -> PrOutcome {
        self.inner.scsi2_release(n)
    }
    fn take_unit_attentions(&self, n: &ItNexus) -> Vec<Sense> {
        self.inner.take_unit_attentions(n)
    }
    fn lu_reset(&self) {
        self.inner.lu_reset()
    }
    fn nexus_loss(&self, n: &ItNexus) {
        self.inner.nexus_loss(n)
    }
}

/// A memory image whose writes wait at a gate inside the backend call.
#[derive(Debug)]
struct HeldWrites {
    mem: MemBackend,
    gate: Gate,
}

impl BlockBackend for HeldWrites {
    fn read_vectored_at(&self, b: &mut [IoSliceMut<'_>], o: u64) -> io::Result<()> {
        self.mem.read_vectored_at(b, o)
    }
    fn write_vectored_at(&self, b: &[IoSlice<'_>], o: u64, fua: bool) -> io::Result<()> {
        self.gate.pass();
        self.mem.write_vectored_at(b, o, fua)
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn discard(&self, o: u64, l: u64) -> io::Result<()> {
        self.mem.discard(o, l)
    }
    fn supports_discard(&self) -> bool {
        false
    }
    fn size(&self) -> io::Result<u64> {
        self.mem.size()
    }
    fn is_shared(&self) -> bool {
        false
    }
}

/// WRITE(10) of one block at `lba`.
fn write10(lba: u8) -> [u8; 10] {
    [
        0x2A, // WRITE(10)
        0x00, // WRPROTECT 0, DPO 0, FUA 0
        0, 0, 0, lba,  // LOGICAL BLOCK ADDRESS
        0x00, // GROUP NUMBER
        0x00, 0x01, // TRANSFER LENGTH: 1 block
        0x00, // CONTROL
    ]
}

/// TEST UNIT READY.
const TUR: [u8; 6] = [0x00, 0, 0, 0, 0, 0];

fn exec(t: &EmulatedTarget, n: &ItNexus, tag: u64, cdb: &[u8], out: &[u8]) -> Status {
    let mut src: &[u8] = out;
    let mut sink: Vec<u8> = Vec::new();
    t.execute(
        &Request {
            nexus: n,
            lun: 0,
            tag,
            attr: TaskAttr::Simple,
            cdb,
        },
        DataOut {
            reader: &mut src,
            len: out.len(),
        },
        DataIn {
            writer: &mut sink,
            len: 0,
        },
    )
    .expect("transport")
    .status
}

fn pr_out_cmd(t: &EmulatedTarget, n: &ItNexus, tag: u64, sa: u8, ty: u8, rk: u64, sark: u64) {
    let st = exec(t, n, tag, &out_cdb(sa, ty, 24), &plist(rk, sark, 0));
    assert_eq!(st, Status::Good, "PR OUT sa {sa}");
}

fn disk(pr: Arc<dyn Reservations>, backend: Arc<dyn BlockBackend>) -> EmulatedTarget {
    let d = Disk::new(
        DiskConfig::new(DiskIdentity::from_uuid([5; 16])),
        backend,
        Some(pr),
    )
    .unwrap();
    EmulatedTarget::new().with_lun(0, Arc::new(d)).unwrap()
}

/// A: holder of WE-RO; B and C registrants; B and C each have a WRITE
/// queued before the fence; A's PREEMPT AND ABORT of B: B's WRITE ends
/// TASK ABORTED and never reaches the medium, C's lands.
fn queued_write_of_the_preempted_nexus_never_lands(inner: impl Reservations + 'static) {
    let pr = Arc::new(Queued {
        inner,
        gate: Gate::default(),
    });
    let mem = Arc::new(MemBackend::from_vec(vec![0x11; IMAGE]));
    let t = disk(pr.clone(), mem.clone());
    let (a, b, c) = (node(1), node(2), node(3));
    for n in [&a, &b, &c] {
        assert_eq!(exec(&t, n, 1, &TUR, &[]), Status::CheckCondition); // 29/00
    }
    pr_out_cmd(&t, &a, 2, REGISTER, 0, 0, 0xA);
    pr_out_cmd(&t, &b, 2, REGISTER, 0, 0, 0xB);
    pr_out_cmd(&t, &c, 2, REGISTER, 0, 0, 0xC);
    pr_out_cmd(&t, &a, 3, RESERVE, WE_RO, 0xA, 0);
    pr.gate.arm();
    std::thread::scope(|s| {
        let wb = s.spawn(|| exec(&t, &b, 10, &write10(8), &[0xBB; 512]));
        let wc = s.spawn(|| exec(&t, &c, 10, &write10(9), &[0xCC; 512]));
        pr.gate.wait_waiting(2);
        pr_out_cmd(&t, &a, 4, PREEMPT_AND_ABORT, WE_RO, 0xA, 0xB);
        pr.gate.open();
        assert_eq!(wb.join().unwrap(), Status::TaskAborted);
        assert_eq!(wc.join().unwrap(), Status::Good);
    });
    let mut blk = [0u8; 512];
    mem.read_at(&mut blk, 8 * 512).unwrap();
    assert_eq!(blk, [0x11; 512], "B's queued WRITE reached the medium");
    mem.read_at(&mut blk, 9 * 512).unwrap();
    assert_eq!(blk, [0xCC; 512]);
}

#[test]
fn memory_pr_queued_write_of_the_preempted_nexus_never_lands() {
    queued_write_of_the_preempted_nexus_never_lands(MemoryPr::new());
}

#[test]
fn shared_pr_queued_write_of_the_preempted_nexus_never_lands() {
    let dir = tempfile::tempdir().unwrap();
    let pr = SharedPr::open_unshared(&dir.path().join("d.pr")).unwrap();
    queued_write_of_the_preempted_nexus_never_lands(pr);
}

/// B's WRITE is inside the backend call when A's PREEMPT AND ABORT comes:
/// the abort completes only after that write returned, and the WRITE
/// answers TASK ABORTED. A write of C (not preempted) that starts while the
/// abort waits does not hold it up.
fn in_flight_write_finishes_before_the_abort_completes(pr: Arc<dyn Reservations>) {
    let mem = Arc::new(HeldWrites {
        mem: MemBackend::from_vec(vec![0x11; IMAGE]),
        gate: Gate::default(),
    });
    let t = disk(pr, mem.clone());
    let (a, b) = (node(1), node(2));
    for n in [&a, &b] {
        exec(&t, n, 1, &TUR, &[]);
    }
    pr_out_cmd(&t, &a, 2, REGISTER, 0, 0, 0xA);
    pr_out_cmd(&t, &b, 2, REGISTER, 0, 0, 0xB);
    mem.gate.arm();
    std::thread::scope(|s| {
        let wb = s.spawn(|| exec(&t, &b, 10, &write10(8), &[0xBB; 512]));
        mem.gate.wait_waiting(1);
        let pa = s.spawn(|| {
            // PREEMPT AND ABORT with no reservation: removes B's key.
            let st = exec(&t, &a, 3, &out_cdb(PREEMPT_AND_ABORT, WE, 24), &{
                plist(0xA, 0xB, 0)
            });
            let mut blk = [0u8; 512];
            mem.mem.read_at(&mut blk, 8 * 512).unwrap();
            (st, blk)
        });
        // Without the fence the abort returns in microseconds; it cannot
        // return while B's write is held. (This wait can only make the
        // test fail, never pass wrongly.)
        std::thread::sleep(Duration::from_millis(200));
        let early = pa.is_finished();
        mem.gate.open();
        let (st, blk) = pa.join().unwrap();
        assert!(!early, "PREEMPT AND ABORT completed during B's write");
        assert_eq!(st, Status::Good);
        assert_eq!(blk, [0xBB; 512], "B's write was not over at completion");
        assert_eq!(wb.join().unwrap(), Status::TaskAborted);
    });
}

#[test]
fn memory_pr_in_flight_write_finishes_before_the_abort_completes() {
    in_flight_write_finishes_before_the_abort_completes(Arc::new(MemoryPr::new()));
}

#[test]
fn shared_pr_in_flight_write_finishes_before_the_abort_completes() {
    let dir = tempfile::tempdir().unwrap();
    let pr = SharedPr::open_unshared(&dir.path().join("d.pr")).unwrap();
    in_flight_write_finishes_before_the_abort_completes(Arc::new(pr));
}

// ---------------------------------------------------------------------------
// The per-nexus answer cache.

#[test]
fn nexus_cache_asks_again_only_when_the_version_moves() {
    let dir = tempfile::tempdir().unwrap();
    let p1 = SharedPr::open_unshared(&dir.path().join("d.pr")).unwrap();
    let p2 = SharedPr::open_unshared(&dir.path().join("d.pr")).unwrap();
    let (a, b) = (node(1), node(2));
    let mut cache = NexusPrCache::default();
    let mut got = Vec::new();
    let m = cache.refresh(&p1, &b, |s| got.push(s));
    assert_eq!(m, Some(0), "no reservation: nothing conflicts");
    // Another "process" registers both and reserves Exclusive Access for A.
    expect(&out(&p2, &a, REGISTER, 0, 0, 0xA), GOOD.0, GOOD.1);
    expect(&out(&p2, &b, REGISTER, 0, 0, 0xB), GOOD.0, GOOD.1);
    expect(&out(&p2, &a, RESERVE, EA, 0xA, 0), GOOD.0, GOOD.1);
    let m = cache.refresh(&p1, &b, |s| got.push(s)).unwrap();
    assert_eq!(m, PrAccess::Read.bit() | PrAccess::Write.bit());
    assert!(got.is_empty());
    // A preempts B: B's next refresh hands over 2A/05.
    expect(&out(&p2, &a, PREEMPT, EA, 0xA, 0xB), GOOD.0, GOOD.1);
    cache.refresh(&p1, &b, |s| got.push(s));
    assert_eq!(
        got.iter().map(|s| (s.asc, s.ascq)).collect::<Vec<_>>(),
        vec![(0x2A, 0x05)]
    );
    // Unchanged state: the same answers, and no unit attention twice.
    let v = p1.version();
    let again = cache.refresh(&p1, &b, |_| panic!("no new unit attention"));
    assert_eq!(p1.version(), v);
    assert_eq!(again, Some(PrAccess::Read.bit() | PrAccess::Write.bit()));
    // Without a version (MemoryPr) every refresh asks and leaves the
    // conflict question to the caller.
    let mem = MemoryPr::new();
    assert_eq!(NexusPrCache::default().refresh(&mem, &b, |_| {}), None);
}
