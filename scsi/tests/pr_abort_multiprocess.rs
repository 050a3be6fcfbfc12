//! PREEMPT AND ABORT reaches commands outstanding in another process.
//!
//! Two real processes share one image file and its PR state: this test (node
//! A) and a copy of this test binary re-executed as the peer (nodes B and C,
//! the ignored test `peer_process`, driven over stdin/stdout). Nothing waits
//! on time except one check that may only fail the test, never pass it
//! wrongly (see `in_flight_write_finishes_before_the_abort_completes`).
//!
//! Scenario 1 (queued): B and C each have a WRITE held just before the abort
//! fence (the peer's reservation wrapper holds them after their reservation
//! check passed). A
//! does PREEMPT AND ABORT of B's key, then lets them go: B's WRITE must end
//! TASK ABORTED and its data must not reach the file; C (not preempted)
//! writes normally. B then gets 2A/05 and RESERVATION CONFLICT.
//!
//! Scenario 2 (in flight): B re-registers; its WRITE is held inside the
//! backend's `pwrite` call (it passed the fence). A's PREEMPT AND ABORT must
//! not complete until that write returned: when it completes, B's data is
//! already in the file (never later), and B's WRITE answers TASK ABORTED.
//!
//! Scenario 3 (crash): B re-registers, its WRITE is held inside the backend
//! again, and the peer is killed with SIGKILL. Its fence slot still counts
//! the write, but the slot's OFD lock died with the process, so A's
//! PREEMPT AND ABORT must complete without waiting out the 10 s limit.
//!
//! Finally the whole image is compared byte for byte.

mod disk_common;

use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use disk_common::{config, run, Out};
use scsi::backend::{BlockBackend, Extent, FileBackend, FileOptions};
use scsi::pr::{IoPass, PrAccess, PrOutcome, Reservations, SharedPr};
use scsi::{Disk, EmulatedTarget, ItNexus, PortName, Sense, TargetPort};

const IMAGE_BYTES: usize = 64 * 512;
const PEER_ENV: &str = "ARBITER_PR_ABORT_PEER_IMAGE";

/// Node `i`'s I_T nexus (its own target port, as each VM has its own
/// controller).
fn node(i: u8) -> ItNexus {
    ItNexus {
        initiator: PortName::Naa([0x50, 0, 0, 0, 0, 0, 0x0A, i]),
        target: TargetPort {
            relative_id: 1,
            name: PortName::Naa([0x60, 0, 0, 0, 0, 0, 0x0A, i]),
        },
    }
}

/// Byte `i` of the original image.
fn original(i: usize) -> u8 {
    u8::try_from((i / 512) % 251).unwrap() ^ 0x5A
}

/// TEST UNIT READY.
const TUR: [u8; 6] = [
    0x00, // TEST UNIT READY
    0, 0, 0, 0, // reserved
    0, // CONTROL
];

/// WRITE(10) of one 512-byte block at `lba`.
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

/// PERSISTENT RESERVE OUT with a 24-byte parameter list.
fn prout(sa: u8, ty: u8) -> [u8; 10] {
    [
        0x5F, // PERSISTENT RESERVE OUT
        sa,   // SERVICE ACTION
        ty,   // SCOPE 0 (LU) | TYPE
        0, 0, // reserved
        0, 0, 0, 24, // PARAMETER LIST LENGTH (bytes 5..8): 24
        0,  // CONTROL
    ]
}

/// PR OUT parameter list: RESERVATION KEY `rk`, SERVICE ACTION RESERVATION
/// KEY `sark`, no flags.
fn params(rk: u64, sark: u64) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[..8].copy_from_slice(&rk.to_be_bytes()); // RESERVATION KEY
    p[8..16].copy_from_slice(&sark.to_be_bytes()); // SERVICE ACTION RESERVATION KEY
    p
}

const REGISTER: u8 = 0x00;
const RESERVE: u8 = 0x01;
const PREEMPT_AND_ABORT: u8 = 0x05;
const WE_RO: u8 = 0x05;

fn status_byte(o: &Out) -> u8 {
    o.status as u8
}

// ---------------------------------------------------------------------------
// The peer's hooks.

/// A gate that holds callers until opened, counting how many wait.
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

/// The shared PR state, with WRITE-class commands held at a gate right after
/// their reservation check passed (the last step before the abort fence)
/// when armed: commands queued in the target.
#[derive(Debug)]
struct QueuedPr {
    inner: Arc<SharedPr>,
    gate: Gate,
}

impl Reservations for QueuedPr {
    fn conflicts(&self, nexus: &ItNexus, access: PrAccess) -> bool {
        let conflict = self.inner.conflicts(nexus, access);
        if access == PrAccess::Write {
            // Checked against the state before the PREEMPT AND ABORT.
            self.gate.pass();
        }
        conflict
    }
    fn reserve_out(&self, nexus: &ItNexus, cdb: &[u8], params: &[u8]) -> PrOutcome {
        self.inner.reserve_out(nexus, cdb, params)
    }
    fn reserve_out_with_aborts(
        &self,
        nexus: &ItNexus,
        cdb: &[u8],
        params: &[u8],
    ) -> scsi::pr::PrOutResult {
        self.inner.reserve_out_with_aborts(nexus, cdb, params)
    }
    fn abort_epoch(&self) -> u64 {
        self.inner.abort_epoch()
    }
    fn enter_io(&self, nexus: &ItNexus, since: u64) -> Option<IoPass<'_>> {
        self.inner.enter_io(nexus, since)
    }
    fn aborted_since(&self, nexus: &ItNexus, since: u64) -> bool {
        self.inner.aborted_since(nexus, since)
    }
    fn reserve_in(&self, nexus: &ItNexus, cdb: &[u8]) -> PrOutcome {
        self.inner.reserve_in(nexus, cdb)
    }
    fn scsi2_reserve(&self, nexus: &ItNexus) -> PrOutcome {
        self.inner.scsi2_reserve(nexus)
    }
    fn scsi2_release(&self, nexus: &ItNexus) -> PrOutcome {
        self.inner.scsi2_release(nexus)
    }
    fn take_unit_attentions(&self, nexus: &ItNexus) -> Vec<Sense> {
        self.inner.take_unit_attentions(nexus)
    }
    fn lu_reset(&self) {
        self.inner.lu_reset()
    }
    fn nexus_loss(&self, nexus: &ItNexus) {
        self.inner.nexus_loss(nexus)
    }
}

/// The image file, with writes held inside the backend call when armed:
/// commands in flight.
#[derive(Debug)]
struct InFlightBackend {
    inner: FileBackend,
    gate: Gate,
}

impl BlockBackend for InFlightBackend {
    fn read_vectored_at(&self, b: &mut [IoSliceMut<'_>], o: u64) -> io::Result<()> {
        self.inner.read_vectored_at(b, o)
    }
    fn write_vectored_at(&self, b: &[IoSlice<'_>], o: u64, fua: bool) -> io::Result<()> {
        self.gate.pass();
        self.inner.write_vectored_at(b, o, fua)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn discard(&self, o: u64, l: u64) -> io::Result<()> {
        self.inner.discard(o, l)
    }
    fn supports_discard(&self) -> bool {
        false
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn is_shared(&self) -> bool {
        true
    }
    fn extent(&self, o: u64, l: u64) -> io::Result<Extent> {
        self.inner.extent(o, l)
    }
}

fn say(line: &str) {
    let mut o = io::stdout().lock();
    writeln!(o, "\nPEER {line}").unwrap();
    o.flush().unwrap();
}

fn expect_command(lines: &mut impl Iterator<Item = io::Result<String>>, want: &str) {
    let got = lines.next().expect("parent went away").unwrap();
    assert_eq!(got.trim(), want, "peer protocol");
}

fn describe(o: &Out) -> String {
    match o.triple() {
        Some((k, a, q)) => format!("{:02x}/{k:02x}/{a:02x}/{q:02x}", status_byte(o)),
        None => format!("{:02x}", status_byte(o)),
    }
}

/// The peer process (nodes B and C). Run only by the parent test below,
/// which re-executes this binary with `--ignored --exact peer_process`.
#[test]
#[ignore = "the peer half of the two-process PREEMPT AND ABORT tests"]
fn peer_process() {
    let Some(image) = std::env::var_os(PEER_ENV) else {
        eprintln!("peer_process: run by two_processes_preempt_and_abort only");
        return;
    };
    let image = Path::new(&image);
    let pr = Arc::new(QueuedPr {
        inner: SharedPr::open(image).unwrap(),
        gate: Gate::default(),
    });
    let opts = FileOptions {
        shared: true,
        ..FileOptions::default()
    };
    let backend = Arc::new(InFlightBackend {
        inner: FileBackend::open(image, opts).unwrap(),
        gate: Gate::default(),
    });
    let dyn_pr: Arc<dyn Reservations> = pr.clone();
    let disk = Disk::new(config(), backend.clone(), Some(dyn_pr)).unwrap();
    let t = EmulatedTarget::new().with_lun(0, Arc::new(disk)).unwrap();
    let (b, c) = (node(2), node(3));
    let mut lines = io::stdin().lock().lines();

    // Power-on unit attentions, then registrations: B key 0xB, C key 0xC.
    run(&t, &b, 0, &TUR, &[], 0).check(0x06, 0x29, 0x00);
    run(&t, &c, 0, &TUR, &[], 0).check(0x06, 0x29, 0x00);
    run(&t, &b, 0, &prout(REGISTER, 0), &params(0, 0xB), 0).good();
    run(&t, &c, 0, &prout(REGISTER, 0), &params(0, 0xC), 0).good();
    say("registered");

    // Scenario 1: WRITEs of B (LBA 8) and C (LBA 9) queued before the fence.
    expect_command(&mut lines, "queue");
    pr.gate.arm();
    std::thread::scope(|s| {
        let wb = s.spawn(|| run(&t, &b, 0, &write10(8), &[0xB1; 512], 0));
        let wc = s.spawn(|| run(&t, &c, 0, &write10(9), &[0xC1; 512], 0));
        pr.gate.wait_waiting(2);
        say("queued");
        expect_command(&mut lines, "release");
        pr.gate.open();
        let (wb, wc) = (wb.join().unwrap(), wc.join().unwrap());
        say(&format!(
            "queued-result {} {}",
            describe(&wb),
            describe(&wc)
        ));
    });
    // B learns of the preemption, then conflicts under A's WE-RO.
    let tur = run(&t, &b, 0, &TUR, &[], 0);
    let w = run(&t, &b, 0, &write10(10), &[0xB9; 512], 0);
    say(&format!("after {} {}", describe(&tur), describe(&w)));

    // Scenario 2: B registers again (key 0xB2) and has a WRITE (LBA 16)
    // inside the backend's write call.
    expect_command(&mut lines, "inflight");
    run(&t, &b, 0, &prout(REGISTER, 0), &params(0, 0xB2), 0).good();
    backend.gate.arm();
    std::thread::scope(|s| {
        let wb = s.spawn(|| run(&t, &b, 0, &write10(16), &[0xB2; 512], 0));
        backend.gate.wait_waiting(1);
        say("inflight");
        expect_command(&mut lines, "release");
        backend.gate.open();
        let wb = wb.join().unwrap();
        say(&format!("inflight-result {}", describe(&wb)));
    });
    // Scenario 3: B registers again (key 0xB3), has a WRITE (LBA 24) held
    // inside the backend's write call, and the parent kills this process.
    expect_command(&mut lines, "crash");
    // B first learns of the second preemption: UNIT ATTENTION 2A/05.
    run(&t, &b, 0, &TUR, &[], 0).check(0x06, 0x2A, 0x05);
    run(&t, &b, 0, &prout(REGISTER, 0), &params(0, 0xB3), 0).good();
    backend.gate.arm();
    std::thread::scope(|s| {
        s.spawn(|| run(&t, &b, 0, &write10(24), &[0xB3; 512], 0));
        backend.gate.wait_waiting(1);
        say("held");
        // Wait for SIGKILL (EOF only if the parent went away first).
        let _ = lines.next();
        std::process::exit(3);
    });
}

// ---------------------------------------------------------------------------
// The parent (node A).

struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Dropped with the peer; until then a watchdog kills a peer that is
    /// still running after two minutes (so a hang fails, never blocks).
    _watchdog: std::sync::mpsc::Sender<()>,
}

impl Peer {
    fn spawn(image: &Path) -> Peer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "peer_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PEER_ENV, image)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        std::thread::spawn(move || {
            if rx.recv_timeout(Duration::from_secs(120))
                == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            {
                // SAFETY: kill(2) on our own child, which has not been
                // reaped yet (Peer, which reaps it, still holds the sender).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        Peer {
            child,
            stdin,
            stdout,
            _watchdog: tx,
        }
    }

    /// The peer's next protocol line (without "PEER "); libtest's own lines
    /// are skipped.
    fn hear(&mut self) -> String {
        loop {
            let mut l = String::new();
            let n = self.stdout.read_line(&mut l).unwrap();
            assert!(n > 0, "the peer exited early: {:?}", self.child.wait());
            // libtest may have printed "test peer_process ... " on the
            // same line.
            if let Some((_, rest)) = l.trim_end().split_once("PEER ") {
                return rest.to_string();
            }
        }
    }

    fn tell(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // A failed assertion must not leave the peer blocked at a gate.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_image(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn two_processes_preempt_and_abort() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("shared.img");
    let orig: Vec<u8> = (0..IMAGE_BYTES).map(original).collect();
    std::fs::write(&image, &orig).unwrap();

    let pr: Arc<dyn Reservations> = SharedPr::open(&image).unwrap();
    let opts = FileOptions {
        shared: true,
        ..FileOptions::default()
    };
    let backend = Arc::new(FileBackend::open(&image, opts).unwrap());
    let disk = Disk::new(config(), backend, Some(pr)).unwrap();
    let t = EmulatedTarget::new().with_lun(0, Arc::new(disk)).unwrap();
    let a = node(1);
    run(&t, &a, 0, &TUR, &[], 0).check(0x06, 0x29, 0x00);

    let mut peer = Peer::spawn(&image);
    assert_eq!(peer.hear(), "registered");
    // A: REGISTER key 0xA, RESERVE Write Exclusive - Registrants Only.
    run(&t, &a, 0, &prout(REGISTER, 0), &params(0, 0xA), 0).good();
    run(&t, &a, 0, &prout(RESERVE, WE_RO), &params(0xA, 0), 0).good();

    // Scenario 1.
    peer.tell("queue");
    assert_eq!(peer.hear(), "queued");
    // PREEMPT AND ABORT: RK 0xA, SARK 0xB (B's key), type WE-RO.
    let pa = run(
        &t,
        &a,
        0,
        &prout(PREEMPT_AND_ABORT, WE_RO),
        &params(0xA, 0xB),
        0,
    );
    pa.good();
    peer.tell("release");
    // B: TASK ABORTED (0x40). C: GOOD (0x00).
    assert_eq!(peer.hear(), "queued-result 40 00");
    // B's TUR: CHECK CONDITION (0x02), UNIT ATTENTION, REGISTRATIONS
    // PREEMPTED (2A/05); its next WRITE: RESERVATION CONFLICT (0x18).
    assert_eq!(peer.hear(), "after 02/06/2a/05 18");
    let now = read_image(&image);
    assert!(
        now[8 * 512..9 * 512] == orig[8 * 512..9 * 512],
        "B's WRITE landed"
    );
    assert_eq!(
        &now[9 * 512..10 * 512],
        &[0xC1; 512][..],
        "C's WRITE is missing"
    );

    // Scenario 2.
    peer.tell("inflight");
    assert_eq!(peer.hear(), "inflight");
    let done = std::thread::scope(|s| {
        let pa = s.spawn(|| {
            let o = run(
                &t,
                &a,
                0,
                &prout(PREEMPT_AND_ABORT, WE_RO),
                &params(0xA, 0xB2),
                0,
            );
            (o, read_image(&image))
        });
        // Without the fence this PREEMPT AND ABORT completes in well under
        // a millisecond; with it, it cannot complete while B's write is
        // held. (This wait can only make the test fail, never pass wrongly.)
        std::thread::sleep(Duration::from_millis(300));
        let early = pa.is_finished();
        peer.tell("release");
        let r = pa.join().unwrap();
        assert!(
            !early,
            "PREEMPT AND ABORT completed while B's write was in flight"
        );
        r
    });
    let (pa, at_completion) = done;
    pa.good();
    assert_eq!(
        &at_completion[16 * 512..17 * 512],
        &[0xB2; 512][..],
        "the in-flight write was not over when PREEMPT AND ABORT completed"
    );
    assert_eq!(peer.hear(), "inflight-result 40");

    // Scenario 3: the peer dies (SIGKILL) while its write is in flight. Its
    // fence slot still counts that write, but its OFD lock died with it: the
    // PREEMPT AND ABORT must not wait for it (ABORT_WAIT is 10 s).
    peer.tell("crash");
    assert_eq!(peer.hear(), "held");
    peer.child.kill().unwrap();
    assert!(!peer.child.wait().unwrap().success());
    let t0 = std::time::Instant::now();
    let pa = run(
        &t,
        &a,
        0,
        &prout(PREEMPT_AND_ABORT, WE_RO),
        &params(0xA, 0xB3),
        0,
    );
    let took = t0.elapsed();
    pa.good();
    assert!(
        took < Duration::from_secs(5),
        "PREEMPT AND ABORT waited {took:?} for a dead process"
    );

    // The image, byte for byte: only C's block 9 and B's in-flight block 16
    // changed (the killed peer's block 24 never got past the gate).
    let mut want = orig.clone();
    want[9 * 512..10 * 512].fill(0xC1);
    want[16 * 512..17 * 512].fill(0xB2);
    let now = read_image(&image);
    let diff: Vec<usize> = (0..IMAGE_BYTES)
        .filter(|&i| now[i] != want[i])
        .step_by(512)
        .collect();
    assert!(diff.is_empty(), "unexpected bytes at offsets {diff:?}");
    assert_eq!(now, want);
}
