//! The abort fence: how PREEMPT AND ABORT stops the preempted nexuses'
//! commands in every process that has the disk open, not only in its own.
//!
//! # Pieces
//! * The **abort epoch**: [`super::state::AbortLog`] in the reservation state
//!   records, per PREEMPT AND ABORT, a new epoch and the registrants it
//!   preempted; the current epoch is also published in a shared word (the
//!   mmap of `.pr.lock` for [`super::SharedPr`], process memory for
//!   [`super::MemoryPr`]). A logical unit reads it when a command enters its
//!   task set ([`super::Reservations::abort_epoch`]): the command's `since`.
//! * **In-flight counters**: two counters per process (a slot in the
//!   shared page, owned through an OFD lock on its bytes, so a dead process'
//!   slot is recognised), one per parity of the epoch.
//! * A command that changes the logical blocks (WRITE, WRITE AND VERIFY,
//!   WRITE SAME, UNMAP, COMPARE AND WRITE, FORMAT UNIT) gets an [`IoPass`]
//!   before it starts ([`super::Reservations::enter_io`]), and keeps it
//!   until its handler returned: *in flight* means exactly that, between
//!   passing the fence and the end of its synchronous I/O (a `pwrite` the
//!   kernel is executing cannot be taken back, so the fence never pretends
//!   to cancel one).
//!   Entering: load the epoch `e`; if it moved past `since` and the log says
//!   the nexus was preempted since, the command is aborted and touches
//!   nothing; otherwise increment the counter of parity `e`, load the epoch
//!   again, and keep the pass only if it is still `e` (else undo, retry).
//! * PREEMPT AND ABORT, under the update lock: write the state with the new
//!   record (epoch `e + 1`), publish `e + 1`, then wait until every live
//!   process' counter of parity `e` is zero, and only then complete.
//!
//! # The guarantee
//! When a PREEMPT AND ABORT completes (its PERSISTENT RESERVE OUT status is
//! returned), no medium-changing command of a preempted I_T nexus that was
//! outstanding when it was issued — in this process or any other process
//! that has the disk open — will still change the medium: either it had
//! already passed the fence, and the PREEMPT AND ABORT waited until its I/O
//! returned, or it had not, and it ends with TASK ABORTED without touching
//! the medium. (Both sides use sequentially consistent operations: either
//! the command sees the new epoch on its second load, or the waiter sees its
//! increment.) Commands of preempted nexuses that complete after the
//! PREEMPT AND ABORT was published answer TASK ABORTED instead of their
//! status, whether or not they executed (SPC-4 allows a command that already
//! ran to complete; its effect is not undone). Reads and commands that change
//! no logical block (MODE SELECT, WRITE BUFFER, SYNCHRONIZE CACHE, ...) are
//! not fenced: one already executing finishes, then answers TASK ABORTED.
//! (Those may take the logical unit's state lock, which a command waiting
//! for the update lock can hold while the abort waits: fencing them could
//! stall the abort for [`ABORT_WAIT`].)
//!
//! The wait happens under the update lock: while it lasts (one write's
//! duration), other PR updates of the disk, in every process, wait too.
//!
//! Limits: the wait gives up after [`ABORT_WAIT`] (a process stopped with
//! SIGSTOP in the middle of a write, or a backend stuck in I/O): the
//! PREEMPT AND ABORT then completes and logs a warning, and that one write
//! may still land later. A process killed in the middle of a write is not
//! waited for: its slot's OFD lock went away with it, and the kernel had
//! finished or dropped its write before that.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a PREEMPT AND ABORT waits for writes already in flight.
pub const ABORT_WAIT: Duration = Duration::from_secs(10);

/// Permission for one command to change the medium, held while it runs.
/// Dropping it tells a waiting PREEMPT AND ABORT that the I/O is over.
#[derive(Debug)]
#[must_use = "the pass covers the command's I/O only while it is held"]
pub struct IoPass<'a> {
    counter: Option<&'a AtomicU64>,
}

impl IoPass<'_> {
    /// A pass that fences nothing (reservation states without a fence).
    pub fn unfenced() -> IoPass<'static> {
        IoPass { counter: None }
    }
}

impl Drop for IoPass<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.counter {
            c.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The counter of `slot` used at epoch `e`.
pub(crate) fn parity(slot: &[AtomicU64; 2], e: u64) -> &AtomicU64 {
    if e % 2 == 0 {
        &slot[0]
    } else {
        &slot[1]
    }
}

/// Pass the fence at `epoch` with `slot` for a command that entered its task
/// set at `since`; `aborted(since)` consults the abort log (only called when
/// the epoch moved). `None`: the command was aborted and must not run.
pub(crate) fn enter<'a>(
    epoch: &AtomicU64,
    slot: &'a [AtomicU64; 2],
    since: u64,
    mut aborted: impl FnMut(u64) -> bool,
) -> Option<IoPass<'a>> {
    loop {
        let e = epoch.load(Ordering::SeqCst);
        if e != since && aborted(since) {
            return None;
        }
        let c = parity(slot, e);
        c.fetch_add(1, Ordering::SeqCst);
        if epoch.load(Ordering::SeqCst) == e {
            return Some(IoPass { counter: Some(c) });
        }
        // A PREEMPT AND ABORT published a new epoch meanwhile: it may not
        // have seen our increment, so look at the log again.
        c.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Wait until `busy()` is false, up to `limit`; returns whether it became
/// false. Spins briefly, then yields, then sleeps in growing steps.
pub(crate) fn drain(limit: Duration, mut busy: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    let mut round = 0u32;
    loop {
        if !busy() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        round = round.saturating_add(1);
        if round < 64 {
            std::hint::spin_loop();
        } else if round < 128 {
            std::thread::yield_now();
        } else {
            let us = 20u64 << (round - 128).min(6);
            std::thread::sleep(Duration::from_micros(us));
        }
    }
}

/// The fence of a reservation state that lives in one process.
#[derive(Debug, Default)]
pub(crate) struct LocalFence {
    pub epoch: AtomicU64,
    pub slot: [AtomicU64; 2],
}

impl LocalFence {
    /// Publish `new` (the epoch a PREEMPT AND ABORT just recorded) and wait
    /// for the writes that passed the fence before it.
    pub fn publish_and_wait(&self, new: u64) {
        let old = self.epoch.swap(new, Ordering::SeqCst);
        let c = parity(&self.slot, old);
        if !drain(ABORT_WAIT, || c.load(Ordering::SeqCst) != 0) {
            log::warn!("PREEMPT AND ABORT: writes in flight did not finish in {ABORT_WAIT:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_counts_until_dropped_under_the_current_parity() {
        let f = LocalFence::default();
        f.epoch.store(3, Ordering::SeqCst);
        let p = enter(&f.epoch, &f.slot, 3, |_| panic!("epoch did not move"));
        assert!(p.is_some());
        assert_eq!(f.slot[1].load(Ordering::SeqCst), 1);
        assert_eq!(f.slot[0].load(Ordering::SeqCst), 0);
        drop(p);
        assert_eq!(f.slot[1].load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_moved_epoch_asks_the_log() {
        let f = LocalFence::default();
        f.epoch.store(5, Ordering::SeqCst);
        assert!(enter(&f.epoch, &f.slot, 4, |since| since == 4).is_none());
        assert_eq!(
            f.slot[1].load(Ordering::SeqCst),
            0,
            "an aborted command holds nothing"
        );
        let p = enter(&f.epoch, &f.slot, 4, |_| false).unwrap();
        assert_eq!(f.slot[1].load(Ordering::SeqCst), 1);
        drop(p);
    }

    #[test]
    fn publishing_waits_for_passes_of_the_old_epoch_only() {
        let f = LocalFence::default();
        let old = enter(&f.epoch, &f.slot, 0, |_| false).unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| f.publish_and_wait(1));
            // A command arriving after the new epoch is published passes
            // under the other parity and does not hold the waiter up.
            while f.epoch.load(Ordering::SeqCst) != 1 {
                std::thread::yield_now();
            }
            let new = enter(&f.epoch, &f.slot, 1, |_| false).unwrap();
            assert!(!waiter.is_finished());
            drop(old);
            waiter.join().unwrap();
            drop(new);
        });
        assert_eq!(f.slot[0].load(Ordering::SeqCst), 0);
        assert_eq!(f.slot[1].load(Ordering::SeqCst), 0);
    }

    #[test]
    fn drain_gives_up_after_the_limit() {
        assert!(!drain(Duration::from_millis(5), || true));
        assert!(drain(Duration::from_millis(5), || false));
    }
}
