//! A split virtqueue seen through slices of its rings taken once per batch:
//! descriptor table, avail ring and used ring are each resolved to one
//! guest-memory slice (bounds-checked accesses, no region search per
//! access), chains are walked with the same rules as virtio-queue's
//! `DescriptorChain`, and used entries are written in place then published
//! with one used-index store per batch.
//!
//! virtio-queue's [`Queue`] stays the owner of the ring state: the batch
//! starts from its `next_avail` / `next_used` and hands them back, and its
//! notification suppression (`disable_notification`, `enable_notification`)
//! is used as is. The interrupt decision is the one of
//! `Queue::needs_notification`, over the whole batch (virtio 1.2, 2.7.10).
//!
//! Rings that do not lie in one guest-memory region (never the case with a
//! driver that allocates them as the spec asks) are left to the generic path.

use std::sync::atomic::{fence, Ordering};

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, VolatileMemory, VolatileSlice};

use super::chain::{ChainBuilder, ChainReader, ChainShapeError, ChainWriter, Resolver};
use super::GuestMemory;

/// Descriptor flags (virtio 1.2, 2.7.5).
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
/// Size of one descriptor.
const DESC: usize = 16;

/// One descriptor as read from a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// Where a descriptor table is read from.
#[derive(Clone, Copy)]
enum Table<'m> {
    /// One slice of guest memory.
    Slice(VolatileSlice<'m>),
    /// An indirect table spanning regions: read descriptor by descriptor.
    Guest(&'m GuestMemory, u64),
}

impl Table<'_> {
    /// Descriptor `i`, or `None` if it cannot be read.
    fn get(&self, i: u16) -> Option<Desc> {
        let off = usize::from(i) * DESC;
        let d: SplitDescriptor = match self {
            // One bounds check; the descriptor's fields are read as words
            // (a byte array would be read byte by byte).
            Table::Slice(s) => s.get_ref::<SplitDescriptor>(off).ok()?.load(),
            Table::Guest(mem, base) => {
                let at = base.checked_add(u64::try_from(off).ok()?)?;
                mem.read_obj(GuestAddress(at)).ok()?
            }
        };
        Some(Desc {
            addr: d.addr().0,
            len: d.len(),
            flags: d.flags(),
            next: d.next(),
        })
    }
}

/// The rings of a ready split queue, resolved for one batch.
#[derive(Clone, Copy)]
pub struct SplitRing<'m> {
    desc: VolatileSlice<'m>,
    avail: VolatileSlice<'m>,
    used: VolatileSlice<'m>,
    size: u16,
    event_idx: bool,
}

impl std::fmt::Debug for SplitRing<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SplitRing(size {})", self.size)
    }
}

impl<'m> SplitRing<'m> {
    /// The rings of `queue`, if it is ready and each ring lies in one
    /// region of `mem` at the alignment the spec requires (virtio 1.2,
    /// 2.7); `None` leaves the queue to the generic path (which reports
    /// what is wrong with it).
    pub fn new(res: &mut Resolver<'m>, queue: &Queue) -> Option<Self> {
        let size = queue.size();
        if !queue.ready() || size == 0 || !size.is_power_of_two() || queue.avail_ring() == 0 {
            return None;
        }
        let (d, a, u) = (queue.desc_table(), queue.avail_ring(), queue.used_ring());
        if d % 16 != 0 || a % 2 != 0 || u % 4 != 0 {
            return None;
        }
        let n = usize::from(size);
        // flags, idx, ring[size], used_event / avail_event.
        let desc = res.slice(d, DESC * n)?;
        let avail = res.slice(a, 4 + 2 * n + 2)?;
        let used = res.slice(u, 4 + 8 * n + 2)?;
        Some(SplitRing {
            desc,
            avail,
            used,
            size,
            event_idx: queue.event_idx_enabled(),
        })
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The driver's avail index (acquire: the entries it covers are read
    /// after it).
    pub fn avail_idx(&self) -> Option<u16> {
        self.avail
            .load::<u16>(2, Ordering::Acquire)
            .ok()
            .map(u16::from_le)
    }

    /// The head in avail ring position `pos` (taken modulo the size).
    pub fn avail_head(&self, pos: u16) -> Option<u16> {
        let at = 4 + 2 * usize::from(pos % self.size);
        Some(u16::from_le(self.avail.get_ref::<u16>(at).ok()?.load()))
    }

    /// `used_event` (EVENT_IDX), after the avail ring's entries.
    fn used_event(&self) -> Option<u16> {
        let at = 4 + 2 * usize::from(self.size);
        self.avail
            .load::<u16>(at, Ordering::Relaxed)
            .ok()
            .map(u16::from_le)
    }

    /// Write used entry `pos` (modulo the size); not visible to the driver
    /// until [`Self::publish_used`].
    pub fn put_used(&self, pos: u16, head: u16, len: u32) -> Option<()> {
        let at = 4 + 8 * usize::from(pos % self.size);
        // id then len, little-endian: one 8-byte store.
        let e = u64::from(head) | (u64::from(len) << 32);
        self.used.get_ref::<u64>(at).ok()?.store(e.to_le());
        Some(())
    }

    /// Publish the used index (release: the entries before it are visible
    /// first).
    pub fn publish_used(&self, idx: u16) -> Option<()> {
        self.used.store(idx.to_le(), 2, Ordering::Release).ok()
    }

    /// Whether the driver wants an interrupt now that the used index went
    /// from `old` to `new`: always without EVENT_IDX (as
    /// `Queue::needs_notification`), else when `used_event` lies in
    /// `[old, new)` (virtio 1.2, 2.7.10).
    pub fn needs_notification(&self, old: u16, new: u16) -> bool {
        if !self.event_idx {
            return true;
        }
        // The used index stores before reading used_event.
        fence(Ordering::SeqCst);
        match self.used_event() {
            Some(ev) => new.wrapping_sub(ev).wrapping_sub(1) < new.wrapping_sub(old),
            None => true,
        }
    }

    /// Walk the chain starting at `head`, with the rules of virtio-queue's
    /// `DescriptorChain`: at most as many descriptors as the table holds
    /// (which also ends loops), `next` inside the table, one level of
    /// indirect table (16-byte multiple, at most 65535 entries), the chain
    /// at most 4 GiB; readable descriptors before writable ones and every
    /// buffer inside guest memory. `res` carries the region cache from
    /// chain to chain.
    pub fn walk(
        &self,
        res: &mut Resolver<'m>,
        head: u16,
    ) -> Result<(ChainReader<'m>, ChainWriter<'m>), ChainShapeError> {
        let mut table = Table::Slice(self.desc);
        let mut table_size = self.size;
        let mut ttl = self.size;
        let mut idx = head;
        let mut indirect = false;
        let mut b = ChainBuilder::new(*res);
        loop {
            if ttl == 0 || idx >= table_size {
                return Err(ChainShapeError::Structure);
            }
            let d = table.get(idx).ok_or(ChainShapeError::Structure)?;
            if d.flags & F_INDIRECT != 0 {
                if indirect || d.len % 16 != 0 {
                    return Err(ChainShapeError::Structure);
                }
                let n = u16::try_from(d.len / 16).map_err(|_| ChainShapeError::Structure)?;
                let len = usize::try_from(d.len).map_err(|_| ChainShapeError::Structure)?;
                if n == 0 {
                    return Err(ChainShapeError::Structure);
                }
                let mut r = *res;
                table = match r.slice(d.addr, len) {
                    Some(s) => Table::Slice(s),
                    None => Table::Guest(res.memory(), d.addr),
                };
                table_size = n;
                ttl = n;
                idx = 0;
                indirect = true;
                continue;
            }
            b.push(d.addr, d.len, d.flags & F_WRITE != 0)?;
            if d.flags & F_NEXT == 0 {
                break;
            }
            idx = d.next;
            ttl -= 1;
        }
        *res = b.resolver();
        Ok(b.finish())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use proptest::prelude::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT, QueueT};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::virtio::chain::split_chain;

    const QSIZE: u16 = 16;
    /// Indirect tables are placed here.
    const ITABLE: u64 = 0x3000;
    /// A separate page for the used ring (the mock's overlaps its avail
    /// ring's unused half).
    const USED: u64 = 0x5000;

    /// 64 KiB of memory in two regions (buffers may span them).
    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x8000), (GuestAddress(0x8000), 0x8000)])
            .unwrap()
    }

    fn queue(vq: &MockSplitQueue<'_, GuestMemoryMmap>) -> Queue {
        let mut q: Queue = vq.create_queue().unwrap();
        q.set_used_ring_address(Some(u32::try_from(USED).unwrap()), Some(0));
        q
    }

    fn desc(a: u64, l: u32, f: u16, n: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(a, l, f, n))
    }

    /// What a chain gave: readable bytes, writable length; or the error.
    type Outcome = Result<(Vec<u8>, usize), ChainShapeError>;

    fn outcome(r: Result<(ChainReader<'_>, ChainWriter<'_>), ChainShapeError>) -> Outcome {
        r.map(|(mut rd, wr)| {
            let mut b = vec![0u8; rd.available_bytes()];
            rd.read_exact(&mut b).unwrap();
            (b, wr.available_bytes())
        })
    }

    /// The chain at `head` walked by [`SplitRing::walk`] and by
    /// virtio-queue's iterator + `split_chain`.
    fn both(
        m: &GuestMemoryMmap,
        vq: &MockSplitQueue<'_, GuestMemoryMmap>,
        head: u16,
    ) -> (Outcome, Outcome) {
        vq.avail().ring().ref_at(0).unwrap().store(head);
        vq.avail().idx().store(1);
        let mut q = queue(vq);
        let mut res = Resolver::new(m);
        let ring = SplitRing::new(&mut res, &q).expect("rings in one region");
        assert_eq!(ring.avail_idx(), Some(1));
        assert_eq!(ring.avail_head(0), Some(head));
        let ours = outcome(ring.walk(&mut res, head));
        let chain = q.iter(m).unwrap().next().unwrap();
        let theirs = outcome(split_chain(m, chain).map_err(|e| match e {
            ChainShapeError::TooLong => ChainShapeError::Structure,
            e => e,
        }));
        let ours = ours.map_err(|e| match e {
            ChainShapeError::TooLong => ChainShapeError::Structure,
            e => e,
        });
        (ours, theirs)
    }

    fn fill(m: &GuestMemoryMmap) {
        let bytes: Vec<u8> = (0..0x1_0000u32)
            .map(|i| u8::try_from(i % 253).unwrap())
            .collect();
        m.write_slice(&bytes[0x6000..], GuestAddress(0x6000))
            .unwrap();
    }

    /// (name, descriptors to store, head, expected outcome).
    type Case = (
        &'static str,
        Vec<(u16, RawDescriptor)>,
        u16,
        Result<(), ChainShapeError>,
    );

    #[test]
    fn malformed_chains_are_refused_like_virtio_queue() {
        let m = mem();
        fill(&m);
        let vq = MockSplitQueue::new(&m, QSIZE);
        let t = vq.desc_table();
        let cases: Vec<Case> = vec![
            (
                "plain",
                vec![(0, desc(0x6000, 8, 1, 1)), (1, desc(0x7000, 16, 2, 0))],
                0,
                Ok(()),
            ),
            (
                "loop",
                vec![(0, desc(0x6000, 8, 1, 1)), (1, desc(0x6100, 8, 1, 0))],
                0,
                Err(ChainShapeError::Structure),
            ),
            (
                "self loop",
                vec![(0, desc(0x6000, 8, 1, 0))],
                0,
                Err(ChainShapeError::Structure),
            ),
            (
                "next out of table",
                vec![(0, desc(0x6000, 8, 1, QSIZE))],
                0,
                Err(ChainShapeError::Structure),
            ),
            (
                "head out of table",
                vec![],
                QSIZE + 3,
                Err(ChainShapeError::Structure),
            ),
            (
                "readable after writable",
                vec![(0, desc(0x6000, 8, 3, 1)), (1, desc(0x6100, 8, 0, 0))],
                0,
                Err(ChainShapeError::Order),
            ),
            (
                "buffer outside memory",
                vec![(0, desc(0x1_0000, 8, 0, 0))],
                0,
                Err(ChainShapeError::Memory),
            ),
            (
                "buffer running off memory",
                vec![(0, desc(0xFFF8, 16, 0, 0))],
                0,
                Err(ChainShapeError::Memory),
            ),
            (
                "buffer across regions",
                vec![(0, desc(0x7FF0, 32, 0, 0))],
                0,
                Ok(()),
            ),
            (
                "address overflow",
                vec![(0, desc(u64::MAX - 3, 8, 0, 0))],
                0,
                Err(ChainShapeError::Memory),
            ),
            (
                "longer than memory",
                vec![
                    (0, desc(0x6000, u32::MAX, 2, 1)),
                    (1, desc(0x6000, 2, 2, 0)),
                ],
                0,
                Err(ChainShapeError::Memory),
            ),
            (
                "indirect, misaligned length",
                vec![(0, desc(ITABLE, 24, 4, 0))],
                0,
                Err(ChainShapeError::Structure),
            ),
            (
                "indirect, empty",
                vec![(0, desc(ITABLE, 0, 4, 0))],
                0,
                Err(ChainShapeError::Structure),
            ),
            (
                "indirect, outside memory",
                vec![(0, desc(0x2_0000, 32, 4, 0))],
                0,
                Err(ChainShapeError::Structure),
            ),
            (
                "indirect after a direct one",
                vec![(0, desc(0x6000, 8, 1, 1)), (1, desc(ITABLE, 32, 4, 0))],
                0,
                Ok(()),
            ),
        ];
        // The indirect table: two entries, readable then writable.
        m.write_obj(desc(0x6200, 4, 1, 1), GuestAddress(ITABLE))
            .unwrap();
        m.write_obj(desc(0x7200, 8, 2, 0), GuestAddress(ITABLE + 16))
            .unwrap();
        for (name, descs, head, want) in cases {
            for i in 0..QSIZE {
                t.store(i, desc(0, 0, 0, 0)).unwrap();
            }
            for (i, d) in descs {
                t.store(i, d).unwrap();
            }
            let (ours, theirs) = both(&m, &vq, head);
            assert_eq!(ours, theirs, "{name}");
            assert_eq!(ours.as_ref().map(|_| ()).map_err(|e| *e), want, "{name}");
        }
        // Nested indirect tables and a loop inside an indirect table.
        t.store(0, desc(ITABLE, 32, 4, 0)).unwrap();
        m.write_obj(desc(ITABLE, 32, 4, 0), GuestAddress(ITABLE))
            .unwrap();
        let (ours, theirs) = both(&m, &vq, 0);
        assert_eq!(
            (ours.clone(), theirs),
            (
                Err(ChainShapeError::Structure),
                Err(ChainShapeError::Structure)
            )
        );
        m.write_obj(desc(0x6000, 4, 1, 1), GuestAddress(ITABLE))
            .unwrap();
        m.write_obj(desc(0x6000, 4, 1, 0), GuestAddress(ITABLE + 16))
            .unwrap();
        let (ours, theirs) = both(&m, &vq, 0);
        assert_eq!(
            (ours.clone(), theirs),
            (
                Err(ChainShapeError::Structure),
                Err(ChainShapeError::Structure)
            )
        );
        // An indirect table spanning the two regions is read entry by entry.
        t.store(0, desc(0x7FF0, 32, 4, 0)).unwrap();
        m.write_obj(desc(0x6000, 5, 1, 1), GuestAddress(0x7FF0))
            .unwrap();
        m.write_obj(desc(0x7000, 9, 2, 0), GuestAddress(0x8000))
            .unwrap();
        let (ours, theirs) = both(&m, &vq, 0);
        assert_eq!(ours, theirs);
        let (rd, wl) = ours.unwrap();
        assert_eq!((rd.len(), wl), (5, 9));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        /// Any descriptor table (direct and one indirect, with loops, bad
        /// indexes, bad flags, buffers in and out of memory): the walk
        /// gives what virtio-queue's iterator + `split_chain` give.
        #[test]
        fn walk_matches_virtio_queue(
            table in proptest::collection::vec((0u64..0x1_2000, 0u32..0x3000, 0u16..8, 0u16..20), 16),
            itable in proptest::collection::vec((0u64..0x1_2000, 0u32..0x3000, 0u16..8, 0u16..6), 4),
            head in 0u16..18,
        ) {
            let m = mem();
            fill(&m);
            let vq = MockSplitQueue::new(&m, QSIZE);
            for (i, &(a, l, f, n)) in table.iter().enumerate() {
                // Indirect descriptors point at the indirect table.
                let (a, l) = if f & 4 != 0 { (ITABLE, l % 96) } else { (a, l) };
                vq.desc_table().store(u16::try_from(i).unwrap(), desc(a, l, f, n)).unwrap();
            }
            for (i, &(a, l, f, n)) in itable.iter().enumerate() {
                let at = ITABLE + 16 * u64::try_from(i).unwrap();
                m.write_obj(desc(a, l, f, n), GuestAddress(at)).unwrap();
            }
            let (ours, theirs) = both(&m, &vq, head);
            prop_assert_eq!(ours, theirs);
        }
    }

    /// Chains of one readable and one writable descriptor at `n` heads.
    fn simple_chains(vq: &MockSplitQueue<'_, GuestMemoryMmap>, n: u16) {
        for c in 0..n {
            let d = 2 * c;
            vq.desc_table()
                .store(d, desc(0x6000 + u64::from(c) * 0x10, 4, 1, d + 1))
                .unwrap();
            vq.desc_table()
                .store(d + 1, desc(0x7000 + u64::from(c) * 0x10, 8, 2, 0))
                .unwrap();
        }
    }

    #[test]
    fn used_entries_wrap_and_notification_follows_used_event() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, QSIZE);
        simple_chains(&vq, QSIZE / 2);
        let mut q = queue(&vq);
        q.set_event_idx(true);
        // Near the end of the 16-bit index space, both rings wrap.
        let start = u16::MAX - 2;
        q.set_next_avail(start);
        q.set_next_used(start);
        let mut res = Resolver::new(&m);
        let ring = SplitRing::new(&mut res, &q).unwrap();
        for k in 0..6u16 {
            let pos = start.wrapping_add(k);
            vq.avail()
                .ring()
                .ref_at(usize::from(pos % QSIZE))
                .unwrap()
                .store(2 * k);
        }
        vq.avail().idx().store(start.wrapping_add(6));
        assert_eq!(ring.avail_idx(), Some(start.wrapping_add(6)));
        for k in 0..6u16 {
            let pos = start.wrapping_add(k);
            let head = ring.avail_head(pos).unwrap();
            assert_eq!(head, 2 * k);
            ring.put_used(pos, head, 100 + u32::from(k)).unwrap();
        }
        let end = start.wrapping_add(6);
        ring.publish_used(end).unwrap();
        assert_eq!(m.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), end);
        for k in 0..6u16 {
            let slot = u64::from(start.wrapping_add(k) % QSIZE);
            let e: [u32; 2] = m.read_obj(GuestAddress(USED + 4 + 8 * slot)).unwrap();
            assert_eq!(e, [u32::from(2 * k), 100 + u32::from(k)]);
        }
        // used_event (after the avail ring's entries) inside [start, end)
        // asks for an interrupt; outside it does not.
        let ev = GuestAddress(vq.avail_addr().0 + 4 + 2 * u64::from(QSIZE));
        for (used_event, want) in [
            (start, true),
            (start.wrapping_add(3), true),
            (start.wrapping_add(5), true),
            (end, false),
            (start.wrapping_sub(1), false),
            (start.wrapping_add(100), false),
        ] {
            m.write_obj(used_event, ev).unwrap();
            assert_eq!(
                ring.needs_notification(start, end),
                want,
                "used_event {used_event}"
            );
        }
        // Without EVENT_IDX: always.
        q.set_event_idx(false);
        let ring = SplitRing::new(&mut res, &q).unwrap();
        m.write_obj(start.wrapping_add(100), ev).unwrap();
        assert!(ring.needs_notification(start, end));
    }

    #[test]
    fn rings_outside_one_region_or_misaligned_are_left_to_the_generic_path() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, QSIZE);
        let mut res = Resolver::new(&m);
        let mut q = queue(&vq);
        assert!(SplitRing::new(&mut res, &q).is_some());
        // Used ring across the region boundary.
        q.set_used_ring_address(Some(0x8000 - 8), Some(0));
        assert!(SplitRing::new(&mut res, &q).is_none());
        // Used ring beyond memory.
        q.set_used_ring_address(Some(0x2_0000), Some(0));
        assert!(SplitRing::new(&mut res, &q).is_none());
        q.set_used_ring_address(Some(u32::try_from(USED).unwrap()), Some(0));
        // Not ready.
        q.set_ready(false);
        assert!(SplitRing::new(&mut res, &q).is_none());
    }
}
