//! The task set of one I_T nexus: the tags of its outstanding commands,
//! each live or aborted.
//!
//! A command enters and leaves with one atomic read-modify-write each and
//! no lock: a tag below 2^62 lives in its home slot (a word holding the
//! state in its top two bits and the tag below) when that slot is free.
//! Larger tags, and tags whose home slot another live tag holds, go to an
//! overflow map under a mutex, which a command whose tag sits in its home
//! slot only looks at when the map is not empty.
//!
//! Overlapped tags (a tag entering while it is outstanding) are refused.
//! Two commands with the same tag entering at the same moment, one in the
//! home slot and one in the overflow map, each publish their entry before
//! looking for the other's (sequentially consistent), so at least one of
//! them sees the other: both may be refused, never both accepted.
//!
//! Task management marks tasks aborted with a compare-and-swap on the slot;
//! the command learns it when it leaves (its swap to free returns the
//! aborted state).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::FastMap;

/// Home slots per nexus (a power of two).
const SLOTS: usize = 64;
/// State bits of a slot word.
const LIVE: u64 = 1 << 62;
const ABORTED: u64 = 2 << 62;
const STATE: u64 = 3 << 62;
const TAG: u64 = !STATE;
/// A free slot.
const FREE: u64 = 0;

/// Where a task of the set is kept (returned by [`TaskSet::insert`], handed
/// back to [`TaskSet::remove`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// The home slot of that index.
    Home(usize),
    /// The overflow map.
    Overflow,
}

/// The tag is already outstanding on the nexus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overlap;

/// The outstanding commands of one I_T nexus on one logical unit.
#[derive(Debug)]
pub(crate) struct TaskSet {
    /// Inline (no separate allocation: one page less to touch per command).
    slots: [AtomicU64; SLOTS],
    /// Tags not in a home slot: `true` once aborted.
    overflow: Mutex<FastMap<u64, bool>>,
    /// Entries of `overflow` (read without its lock).
    overflow_len: AtomicUsize,
}

impl Default for TaskSet {
    fn default() -> Self {
        TaskSet {
            slots: [const { AtomicU64::new(FREE) }; SLOTS],
            overflow: Mutex::default(),
            overflow_len: AtomicUsize::new(0),
        }
    }
}

/// The home slot index of `tag` (Fibonacci hashing: tags that are pointers
/// or multiples of a stride spread too).
fn home(tag: u64) -> usize {
    let h = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58;
    // h < 64 = SLOTS.
    usize::try_from(h).unwrap_or(0) & (SLOTS - 1)
}

impl TaskSet {
    fn overflow(&self) -> MutexGuard<'_, FastMap<u64, bool>> {
        self.overflow.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enter `tag`, live. Refused if it is outstanding already (which stays
    /// outstanding).
    pub(crate) fn insert(&self, tag: u64) -> Result<Place, Overlap> {
        if tag & STATE == 0 {
            let i = home(tag);
            let slot = &self.slots[i];
            let cur = slot.load(Ordering::Relaxed);
            if cur & STATE != FREE && cur & TAG == tag {
                return Err(Overlap);
            }
            if cur == FREE
                && slot
                    .compare_exchange(FREE, LIVE | tag, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            {
                if self.overflow_len.load(Ordering::SeqCst) != 0
                    && self.overflow().contains_key(&tag)
                {
                    // Entered before us through the overflow map.
                    slot.store(FREE, Ordering::SeqCst);
                    return Err(Overlap);
                }
                return Ok(Place::Home(i));
            }
        }
        self.insert_overflow(tag)
    }

    /// Enter `tag` in the overflow map (its home slot is taken, or it has
    /// state bits set).
    #[cold]
    #[inline(never)]
    fn insert_overflow(&self, tag: u64) -> Result<Place, Overlap> {
        {
            let mut m = self.overflow();
            if m.contains_key(&tag) {
                return Err(Overlap);
            }
            m.insert(tag, false);
            self.overflow_len.fetch_add(1, Ordering::SeqCst);
        }
        if tag & STATE == 0 {
            let cur = self.slots[home(tag)].load(Ordering::SeqCst);
            if cur & STATE != FREE && cur & TAG == tag {
                // Entered meanwhile through its home slot.
                let mut m = self.overflow();
                m.remove(&tag);
                self.overflow_len.fetch_sub(1, Ordering::SeqCst);
                return Err(Overlap);
            }
        }
        Ok(Place::Overflow)
    }

    /// Take `tag` (entered at `place`) out; returns whether it was aborted.
    pub(crate) fn remove(&self, tag: u64, place: Place) -> bool {
        match place {
            Place::Home(i) => self.slots[i].swap(FREE, Ordering::SeqCst) & STATE == ABORTED,
            Place::Overflow => self.remove_overflow(tag),
        }
    }

    #[cold]
    #[inline(never)]
    fn remove_overflow(&self, tag: u64) -> bool {
        let mut m = self.overflow();
        let aborted = m.remove(&tag);
        if aborted.is_some() {
            self.overflow_len.fetch_sub(1, Ordering::SeqCst);
        }
        aborted.unwrap_or(false)
    }

    /// Mark aborted every live task whose tag satisfies `which`.
    pub(crate) fn abort(&self, which: impl Fn(u64) -> bool) {
        for slot in self.slots.iter() {
            let mut cur = slot.load(Ordering::SeqCst);
            while cur & STATE == LIVE && which(cur & TAG) {
                match slot.compare_exchange(
                    cur,
                    ABORTED | (cur & TAG),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                ) {
                    Ok(_) => break,
                    Err(now) => cur = now,
                }
            }
        }
        if self.overflow_len.load(Ordering::SeqCst) != 0 {
            for (tag, aborted) in self.overflow().iter_mut() {
                if which(*tag) {
                    *aborted = true;
                }
            }
        }
    }

    /// Mark every live task aborted.
    pub(crate) fn abort_all(&self) {
        self.abort(|_| true);
    }

    /// Visit each outstanding task: (tag, aborted).
    fn any(&self, mut f: impl FnMut(u64, bool) -> bool) -> bool {
        let home = self.slots.iter().any(|slot| {
            let cur = slot.load(Ordering::SeqCst);
            cur & STATE != FREE && f(cur & TAG, cur & STATE == ABORTED)
        });
        home || (self.overflow_len.load(Ordering::SeqCst) != 0
            && self.overflow().iter().any(|(&t, &a)| f(t, a)))
    }

    /// Whether `tag` is outstanding and not aborted.
    pub(crate) fn is_live(&self, tag: u64) -> bool {
        self.any(|t, aborted| t == tag && !aborted)
    }

    /// Whether any task is outstanding and not aborted.
    pub(crate) fn any_live(&self) -> bool {
        self.any(|_, aborted| !aborted)
    }

    /// Whether any task is marked aborted (and has not left yet).
    pub(crate) fn any_aborted(&self) -> bool {
        self.any(|_, aborted| aborted)
    }

    /// Whether no task is outstanding.
    pub(crate) fn is_empty(&self) -> bool {
        !self.any(|_, _| true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_and_overflow_tags_enter_leave_and_overlap() {
        let t = TaskSet::default();
        assert!(t.is_empty());
        let a = t.insert(5).expect("enter 5");
        assert!(matches!(a, Place::Home(_)));
        assert_eq!(t.insert(5), Err(Overlap));
        // A tag with state bits set always lives in the overflow map.
        let big = u64::MAX;
        assert_eq!(t.insert(big), Ok(Place::Overflow));
        assert_eq!(t.insert(big), Err(Overlap));
        // A tag whose home slot is taken by another tag overflows.
        let other = (1..u64::from(u32::MAX))
            .find(|&x| x != 5 && home(x) == home(5))
            .expect("a colliding tag");
        assert_eq!(t.insert(other), Ok(Place::Overflow));
        assert!(t.is_live(5) && t.is_live(other) && t.is_live(big));
        assert!(!t.is_live(6));
        // 5 leaves; `other` (still in the overflow map) entering again
        // through its now free home slot is still an overlap.
        assert!(!t.remove(5, a));
        assert_eq!(t.insert(other), Err(Overlap));
        assert!(!t.is_live(5));
        t.abort(|tag| tag == other);
        assert!(t.any_aborted() && t.any_live() && !t.is_live(other));
        assert!(t.remove(other, Place::Overflow));
        assert!(!t.any_aborted());
        t.abort_all();
        assert!(!t.any_live() && t.any_aborted());
        assert!(t.remove(big, Place::Overflow));
        assert!(t.is_empty());
    }

    #[test]
    fn aborted_home_task_reports_aborted_once() {
        let t = TaskSet::default();
        let p = t.insert(77).expect("enter");
        t.abort_all();
        assert!(!t.is_live(77));
        // Marking twice keeps it aborted.
        t.abort_all();
        assert!(t.remove(77, p));
        assert!(t.is_empty());
        // The slot is free again: a new command with the same tag is live.
        let p = t.insert(77).expect("re-enter");
        assert!(t.is_live(77));
        assert!(!t.remove(77, p));
    }

    #[test]
    fn concurrent_same_tag_never_both_accepted() {
        for round in 0..200u64 {
            let t = TaskSet::default();
            // Make the home slot of `tag` busy half the time so that one
            // of the racers overflows.
            let tag = 1000 + round;
            let blocker = (1..u64::from(u32::MAX))
                .find(|&x| x != tag && home(x) == home(tag))
                .expect("a colliding tag");
            let bp = t.insert(blocker).expect("blocker");
            let accepted = std::sync::atomic::AtomicUsize::new(0);
            std::thread::scope(|s| {
                for k in 0..2 {
                    let (t, accepted) = (&t, &accepted);
                    s.spawn(move || {
                        if k == 0 && round % 2 == 0 {
                            t.remove(blocker, bp);
                        }
                        if t.insert(tag).is_ok() {
                            accepted.fetch_add(1, Ordering::SeqCst);
                        }
                    });
                }
            });
            assert!(accepted.load(Ordering::SeqCst) <= 1, "round {round}");
        }
    }

    /// A backend whose reads wait at a gate until it opens.
    #[derive(Debug)]
    struct Gate {
        inner: crate::MemBackend,
        state: Mutex<(bool, u32)>,
        cv: std::sync::Condvar,
    }

    impl Gate {
        fn wait_blocked(&self, n: u32) {
            let mut g = self.state.lock().expect("gate");
            while g.1 < n {
                g = self.cv.wait(g).expect("gate");
            }
        }
        fn open(&self) {
            self.state.lock().expect("gate").0 = true;
            self.cv.notify_all();
        }
    }

    impl crate::BlockBackend for Gate {
        fn read_vectored_at(
            &self,
            bufs: &mut [std::io::IoSliceMut<'_>],
            o: u64,
        ) -> std::io::Result<()> {
            let mut g = self.state.lock().expect("gate");
            g.1 += 1;
            self.cv.notify_all();
            while !g.0 {
                g = self.cv.wait(g).expect("gate");
            }
            drop(g);
            self.inner.read_vectored_at(bufs, o)
        }
        fn write_vectored_at(
            &self,
            b: &[std::io::IoSlice<'_>],
            o: u64,
            f: bool,
        ) -> std::io::Result<()> {
            self.inner.write_vectored_at(b, o, f)
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn discard(&self, o: u64, l: u64) -> std::io::Result<()> {
            self.inner.discard(o, l)
        }
        fn supports_discard(&self) -> bool {
            false
        }
        fn size(&self) -> std::io::Result<u64> {
            self.inner.size()
        }
        fn is_shared(&self) -> bool {
            false
        }
    }

    /// (status, sense, data-in) of one command.
    fn exec(
        lu: &crate::Disk,
        n: &crate::ItNexus,
        tag: u64,
        cdb: &[u8],
    ) -> (crate::Status, Vec<u8>, Vec<u8>) {
        use crate::LogicalUnit;
        let req = crate::Request {
            nexus: n,
            lun: 0,
            tag,
            attr: crate::target::TaskAttr::Simple,
            cdb,
        };
        let mut data = vec![0xEEu8; 512];
        let mut sink: &mut [u8] = &mut data;
        let mut src: &[u8] = &[];
        let r = lu
            .execute(
                &req,
                crate::DataOut {
                    reader: &mut src,
                    len: 0,
                },
                crate::DataIn {
                    writer: &mut sink,
                    len: 512,
                },
            )
            .expect("transport");
        data.truncate(r.data_in_len);
        (r.status, r.sense, data)
    }

    /// Commands whose tags live in the overflow map (a tag with its top
    /// bits set, a tag whose home slot a live command holds) are queried,
    /// refused when overlapped and aborted like the others, through the
    /// logical unit; the aborting TMF returns once they have left.
    #[test]
    fn overflow_tags_through_the_disk() {
        use crate::target::{TaskMgmt, TmfResponse};
        use crate::{LogicalUnit, Status};
        let gate = std::sync::Arc::new(Gate {
            inner: crate::MemBackend::new(1 << 20),
            state: Mutex::new((false, 0)),
            cv: std::sync::Condvar::new(),
        });
        let cfg = crate::DiskConfig::new(crate::DiskIdentity::from_text("tasks"));
        let disk = crate::Disk::new(cfg, gate.clone(), None).expect("disk");
        let n = crate::ItNexus {
            initiator: crate::PortName::Naa(0x5000_0000_0000_0001u64.to_be_bytes()),
            target: crate::TargetPort {
                relative_id: 1,
                name: crate::PortName::Naa(0x5001_4050_0000_0001u64.to_be_bytes()),
            },
        };
        // TEST UNIT READY: opcode, 4 reserved bytes, CONTROL.
        const TUR: [u8; 6] = [0x00, 0, 0, 0, 0, 0];
        // READ(10): opcode, flags, LBA 0 (4 bytes), group, TRANSFER LENGTH
        // 1 block (2 bytes), CONTROL.
        const READ1: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        // The new nexus' POWER ON, RESET OR BUS DEVICE RESET OCCURRED: fixed
        // format, UNIT ATTENTION, ADDITIONAL SENSE LENGTH 10, ASC/ASCQ 29/00.
        let (st, sense, _) = exec(&disk, &n, 1, &TUR);
        assert_eq!(st, Status::CheckCondition);
        assert_eq!(
            sense,
            [0x70, 0, 0x06, 0, 0, 0, 0, 0x0A, 0, 0, 0, 0, 0x29, 0x00, 0, 0, 0, 0]
        );
        let home_tag = 5u64;
        let colliding = (6..u64::from(u32::MAX))
            .find(|&x| home(x) == home(home_tag))
            .expect("a colliding tag");
        let big = u64::MAX;
        std::thread::scope(|s| {
            let a = s.spawn(|| exec(&disk, &n, home_tag, &READ1));
            gate.wait_blocked(1);
            let b = s.spawn(|| exec(&disk, &n, colliding, &READ1));
            gate.wait_blocked(2);
            let c = s.spawn(|| exec(&disk, &n, big, &READ1));
            gate.wait_blocked(3);
            for tag in [home_tag, colliding, big] {
                assert_eq!(
                    disk.task_mgmt(&n, TaskMgmt::QueryTask(tag)),
                    TmfResponse::Succeeded,
                    "tag {tag:#x}"
                );
                // Overlapped: ABORTED COMMAND 4E/00 (fixed format, sense
                // key 0x0B, ADDITIONAL SENSE LENGTH 10).
                let (st, sense, data) = exec(&disk, &n, tag, &TUR);
                assert_eq!(st, Status::CheckCondition);
                assert_eq!(
                    sense,
                    [0x70, 0, 0x0B, 0, 0, 0, 0, 0x0A, 0, 0, 0, 0, 0x4E, 0x00, 0, 0, 0, 0]
                );
                assert!(data.is_empty());
            }
            // ABORT TASK SET returns only after the three have left.
            let abort = s.spawn(|| disk.task_mgmt(&n, TaskMgmt::AbortTaskSet));
            for _ in 0..5000 {
                if disk.task_mgmt(&n, TaskMgmt::QueryTaskSet) == TmfResponse::Complete {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            assert_eq!(
                disk.task_mgmt(&n, TaskMgmt::QueryTaskSet),
                TmfResponse::Complete
            );
            assert!(!abort.is_finished());
            gate.open();
            assert_eq!(abort.join().expect("abort"), TmfResponse::Complete);
            for h in [a, b, c] {
                let (st, sense, data) = h.join().expect("command");
                assert_eq!(st, Status::TaskAborted);
                assert!(sense.is_empty() && data.is_empty());
            }
        });
        // All tags are free again and a READ returns the block (zeros).
        for tag in [home_tag, colliding, big] {
            let (st, sense, data) = exec(&disk, &n, tag, &READ1);
            assert_eq!(st, Status::Good);
            assert!(sense.is_empty());
            assert_eq!(data, vec![0u8; 512]);
        }
    }
}
