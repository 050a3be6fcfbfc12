//! One pass over a descriptor chain: its shape is checked (at least one
//! descriptor, device-readable ones before device-writable ones, the chain
//! ends — no loop, no `next` outside the table) while its buffers are
//! resolved to guest-memory slices, kept inline for chains of up to four
//! segments. [`ChainReader`] and [`ChainWriter`] then move bytes straight
//! between those slices and the caller (no bounce buffer).
//!
//! This does what virtio-queue's `Reader`/`Writer` do, in one walk of the
//! chain and without heap allocation, which matters on the request path
//! (see `devices/benches/virtio_scsi.rs`).

use std::io::{self, IoSlice, IoSliceMut, Read, Write};

use scsi::target::{DataInSink, DataOutSource, DrainFn, FillFn};
use virtio_queue::DescriptorChain;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress,
    Permissions, VolatileSlice,
};

use super::GuestMemory;

/// Segments kept inline before spilling to the heap.
const INLINE: usize = 4;

/// Why a chain cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainShapeError {
    /// Empty chain, a `next` index outside the table, a loop, a nested or
    /// misaligned indirect table.
    #[error("malformed descriptor chain (loop, bad index or bad indirect table)")]
    Structure,
    /// A device-readable descriptor after a device-writable one.
    #[error("device-readable descriptor after a device-writable one")]
    Order,
    /// A buffer outside guest memory.
    #[error("descriptor buffer outside guest memory")]
    Memory,
    /// The chain adds up to more than 4 GiB.
    #[error("descriptor chain longer than 4 GiB")]
    TooLong,
}

/// A list of guest-memory slices.
#[derive(Clone, Copy)]
struct Inline<'a> {
    slots: [Option<VolatileSlice<'a>>; INLINE],
}

#[derive(Clone)]
struct Segments<'a> {
    inline: Inline<'a>,
    n: usize,
    spill: Vec<VolatileSlice<'a>>,
    total: usize,
}

impl<'a> Segments<'a> {
    fn new() -> Self {
        Segments {
            inline: Inline {
                slots: [None; INLINE],
            },
            n: 0,
            spill: Vec::new(),
            total: 0,
        }
    }

    fn push(&mut self, s: VolatileSlice<'a>) {
        if s.is_empty() {
            return;
        }
        self.total += s.len();
        if self.n < INLINE {
            self.inline.slots[self.n] = Some(s);
        } else {
            self.spill.push(s);
        }
        self.n += 1;
    }

    fn get(&self, i: usize) -> Option<VolatileSlice<'a>> {
        if i < INLINE {
            self.inline.slots[i]
        } else {
            self.spill.get(i - INLINE).copied()
        }
    }
}

/// A cursor over segments.
#[derive(Clone)]
struct Cursor<'a> {
    segs: Segments<'a>,
    idx: usize,
    off: usize,
    done: usize,
}

impl<'a> Cursor<'a> {
    fn new(segs: Segments<'a>) -> Self {
        Cursor {
            segs,
            idx: 0,
            off: 0,
            done: 0,
        }
    }

    fn remaining(&self) -> usize {
        self.segs.total - self.done
    }

    /// Apply `f(slice, position in buf)` to successive pieces covering up to
    /// `len` bytes; returns the bytes covered.
    fn step(&mut self, len: usize, mut f: impl FnMut(VolatileSlice<'a>, usize)) -> usize {
        let mut moved = 0;
        while moved < len {
            let Some(seg) = self.segs.get(self.idx) else {
                break;
            };
            let n = (seg.len() - self.off).min(len - moved);
            if let Ok(piece) = seg.subslice(self.off, n) {
                f(piece, moved);
            }
            moved += n;
            self.off += n;
            if self.off == seg.len() {
                self.idx += 1;
                self.off = 0;
            }
        }
        self.done += moved;
        moved
    }

    /// Advance by `n` bytes (or to the end).
    fn skip(&mut self, n: usize) -> usize {
        self.step(n, |_, _| {})
    }
}

/// The device-readable part of a chain.
#[derive(Clone)]
pub struct ChainReader<'a>(Cursor<'a>);

/// iovecs kept inline when lending chain memory in place.
const INLINE_IOV: usize = 8;

/// Lend the next `len` bytes under `cursor` (which moves past them) to `f`,
/// as byte slices each wrapped by `make` (into an `IoSliceMut` or an
/// `IoSlice`); up to [`INLINE_IOV`] of them without allocating. Returns
/// `None` without calling `f` when two of the pieces overlap (a guest may
/// point two descriptors at the same memory; Rust slices must not alias):
/// the caller then goes through a bounce buffer.
///
/// # Safety
/// The cursor's slices must be guest memory that stays mapped for the call
/// (they are [`VolatileSlice`]s of the chain's `GuestMemory`, borrowed for
/// the chain's lifetime).
unsafe fn lend<'s, T, R>(
    cursor: &mut Cursor<'_>,
    len: usize,
    make: impl Fn(&'s mut [u8]) -> T,
    f: impl FnOnce(&mut [T]) -> R,
) -> Option<R> {
    let mut raw = [(std::ptr::null_mut::<u8>(), 0usize); INLINE_IOV];
    let mut raw_spill = Vec::new();
    let mut n = 0;
    cursor.step(len, |s, _| {
        // The guard of a plain mmap region is the pointer itself.
        let piece = (s.ptr_guard_mut().as_ptr(), s.len());
        if n < INLINE_IOV {
            raw[n] = piece;
        } else {
            raw_spill.push(piece);
        }
        n += 1;
    });
    let pieces = || raw[..n.min(INLINE_IOV)].iter().chain(raw_spill.iter());
    // Usually one piece; a few comparisons otherwise.
    for (i, &(a, al)) in pieces().enumerate() {
        for &(b, bl) in pieces().skip(i + 1) {
            let (a0, b0) = (a as usize, b as usize);
            if a0 < b0 + bl && b0 < a0 + al {
                return None;
            }
        }
    }
    let mut inline: [T; INLINE_IOV] = std::array::from_fn(|_| make(&mut []));
    let mut spill = Vec::new();
    for (i, &(ptr, l)) in pieces().enumerate() {
        // SAFETY: per this function's contract the piece is mapped guest
        // memory of `l` bytes for the duration of the call, and it overlaps
        // no other piece (checked above). The guest may access it
        // concurrently, as with any device DMA; the bytes have no validity
        // invariant, and no reference to them outlives the call.
        let piece = make(unsafe { std::slice::from_raw_parts_mut(ptr, l) });
        if i < INLINE_IOV {
            inline[i] = piece;
        } else {
            spill.push(piece);
        }
    }
    Some(if n <= INLINE_IOV {
        f(&mut inline[..n])
    } else {
        spill.splice(0..0, inline);
        f(&mut spill)
    })
}

/// A saved [`ChainWriter`] position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterPos {
    idx: usize,
    off: usize,
    done: usize,
}

/// The device-writable part of a chain.
#[derive(Clone)]
pub struct ChainWriter<'a>(Cursor<'a>);

impl ChainReader<'_> {
    /// Bytes not read yet.
    pub fn available_bytes(&self) -> usize {
        self.0.remaining()
    }
}

impl<'a> ChainWriter<'a> {
    /// Bytes not written yet.
    pub fn available_bytes(&self) -> usize {
        self.0.remaining()
    }

    /// Bytes written (or skipped) so far.
    pub fn bytes_written(&self) -> usize {
        self.0.done
    }

    /// Where the writer is now (to come back with [`Self::seek`]).
    pub fn position(&self) -> WriterPos {
        WriterPos {
            idx: self.0.idx,
            off: self.0.off,
            done: self.0.done,
        }
    }

    /// Go back (or forward) to a position taken with [`Self::position`].
    pub fn seek(&mut self, p: WriterPos) {
        self.0.idx = p.idx;
        self.0.off = p.off;
        self.0.done = p.done;
    }

    /// Move past `n` bytes without writing them; false if the chain is
    /// shorter (the writer is then at its end).
    pub fn skip(&mut self, n: usize) -> bool {
        self.0.skip(n) == n
    }

    /// A writer for what follows the first `n` bytes (this one keeps
    /// covering the first `n`). `None` if the chain is shorter.
    pub fn split_off(&self, n: usize) -> Option<ChainWriter<'a>> {
        let mut rest = self.clone();
        (rest.0.skip(n) == n).then(|| {
            rest.0.done = 0;
            rest.0.segs.total -= n;
            rest
        })
    }
}

impl Read for ChainReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf.len();
        Ok(self.0.step(len, |s, at| {
            s.copy_to(&mut buf[at..at + s.len()]);
        }))
    }
}

impl Write for ChainWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(self.0.step(buf.len(), |s, at| {
            s.copy_from(&buf[at..at + s.len()]);
        }))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl DataInSink for ChainWriter<'_> {
    /// The backend fills the chain's guest buffers directly.
    fn write_in_place(&mut self, len: usize, fill: &mut FillFn<'_>) -> io::Result<()> {
        if len > self.available_bytes() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "data-in buffers shorter than the transfer",
            ));
        }
        let start = self.position();
        // SAFETY: the writer's VolatileSlices borrow the guest memory for 'a,
        // alive across the call.
        let lent = unsafe { lend(&mut self.0, len, IoSliceMut::new, |bufs| fill(bufs)) };
        let r = lent.unwrap_or_else(|| {
            // Overlapping buffers: fill a bounce buffer, then copy.
            self.seek(start);
            let mut buf = vec![0u8; len];
            fill(&mut [IoSliceMut::new(&mut buf)])?;
            self.write_all(&buf)
        });
        if r.is_err() {
            self.seek(start);
        }
        r
    }
}

impl DataOutSource for ChainReader<'_> {
    /// The backend writes from the chain's guest buffers directly.
    fn read_in_place(&mut self, len: usize, drain: &mut DrainFn<'_>) -> io::Result<()> {
        if len > self.available_bytes() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "data-out buffers shorter than the transfer",
            ));
        }
        let start = (self.0.idx, self.0.off, self.0.done);
        // SAFETY: as for ChainWriter::write_in_place; the slices are only
        // read through.
        let lent = unsafe { lend(&mut self.0, len, |s| IoSlice::new(s), |bufs| drain(bufs)) };
        let r = lent.unwrap_or_else(|| {
            // Overlapping buffers: copy them out first.
            (self.0.idx, self.0.off, self.0.done) = start;
            let mut buf = vec![0u8; len];
            self.read_exact(&mut buf)?;
            drain(&[IoSlice::new(&buf)])
        });
        if r.is_err() {
            (self.0.idx, self.0.off, self.0.done) = start;
        }
        r
    }
}

impl std::fmt::Debug for ChainReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChainReader({} bytes left)", self.available_bytes())
    }
}

impl std::fmt::Debug for ChainWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChainWriter({} bytes left)", self.available_bytes())
    }
}

/// Finds the guest-memory slices of descriptor buffers, remembering the
/// region of the last one: a batch of chains whose buffers lie in the same
/// region (the usual case) costs one region search.
#[derive(Clone, Copy)]
pub struct Resolver<'a> {
    mem: &'a GuestMemory,
    last: Option<&'a GuestRegionMmap<()>>,
}

impl<'a> Resolver<'a> {
    /// A resolver over `mem` with nothing cached yet.
    pub fn new(mem: &'a GuestMemory) -> Self {
        Resolver { mem, last: None }
    }

    /// The guest memory resolved against.
    pub fn memory(&self) -> &'a GuestMemory {
        self.mem
    }

    /// `len` (> 0) bytes at `addr` as one slice, if they lie in one region.
    pub fn slice(&mut self, addr: u64, len: usize) -> Option<VolatileSlice<'a>> {
        let within = |r: &GuestRegionMmap<()>| {
            let off = addr.checked_sub(r.start_addr().0)?;
            let end = off.checked_add(u64::try_from(len).ok()?)?;
            (end <= r.len()).then_some(off)
        };
        if let Some(r) = self.last {
            if let Some(off) = within(r) {
                return r.get_slice(MemoryRegionAddress(off), len).ok();
            }
        }
        let r = self.mem.find_region(GuestAddress(addr))?;
        self.last = Some(r);
        let off = within(r)?;
        r.get_slice(MemoryRegionAddress(off), len).ok()
    }
}

/// Builds a chain's reader and writer from its descriptors, in order,
/// checking its shape as they come: device-readable descriptors first, every
/// buffer in guest memory, at most 4 GiB in all.
pub struct ChainBuilder<'a> {
    res: Resolver<'a>,
    readable: Segments<'a>,
    writable: Segments<'a>,
    seen_write: bool,
    total: u64,
}

impl<'a> ChainBuilder<'a> {
    /// An empty chain over `res`'s memory.
    pub fn new(res: Resolver<'a>) -> Self {
        ChainBuilder {
            res,
            readable: Segments::new(),
            writable: Segments::new(),
            seen_write: false,
            total: 0,
        }
    }

    /// Add the buffer of one (non-indirect) descriptor.
    pub fn push(&mut self, addr: u64, len: u32, write: bool) -> Result<(), ChainShapeError> {
        self.total += u64::from(len);
        if self.total > u64::from(u32::MAX) {
            return Err(ChainShapeError::TooLong);
        }
        let ulen = usize::try_from(len).map_err(|_| ChainShapeError::TooLong)?;
        let (segs, perm) = if write {
            self.seen_write = true;
            (&mut self.writable, Permissions::Write)
        } else if self.seen_write {
            return Err(ChainShapeError::Order);
        } else {
            (&mut self.readable, Permissions::Read)
        };
        if ulen == 0 {
            return Ok(());
        }
        // Fast path: the buffer lies in one region; else walk the regions
        // it spans.
        if let Some(one) = self.res.slice(addr, ulen) {
            segs.push(one);
            return Ok(());
        }
        let slices =
            vm_memory::GuestMemory::get_slices(self.res.mem, GuestAddress(addr), ulen, perm)
                .map_err(|_| ChainShapeError::Memory)?;
        for s in slices {
            segs.push(s.map_err(|_| ChainShapeError::Memory)?);
        }
        Ok(())
    }

    /// The region cache, to carry over to the next chain.
    pub fn resolver(&self) -> Resolver<'a> {
        self.res
    }

    /// The reader over the device-readable buffers and the writer over the
    /// device-writable ones.
    pub fn finish(self) -> (ChainReader<'a>, ChainWriter<'a>) {
        (
            ChainReader(Cursor::new(self.readable)),
            ChainWriter(Cursor::new(self.writable)),
        )
    }
}

impl std::fmt::Debug for Resolver<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Resolver(cached: {})", self.last.is_some())
    }
}

impl std::fmt::Debug for ChainBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ChainBuilder({} readable, {} writable bytes)",
            self.readable.total, self.writable.total
        )
    }
}

/// Walk `chain` once: check its shape and resolve its buffers.
pub fn split_chain<'a>(
    mem: &'a GuestMemory,
    chain: DescriptorChain<&'a GuestMemory>,
) -> Result<(ChainReader<'a>, ChainWriter<'a>), ChainShapeError> {
    let mut b = ChainBuilder::new(Resolver::new(mem));
    let mut count = 0usize;
    let mut last_has_next = false;
    for d in chain {
        count += 1;
        last_has_next = d.has_next();
        b.push(d.addr().0, d.len(), d.is_write_only())?;
    }
    if count == 0 || last_has_next {
        return Err(ChainShapeError::Structure);
    }
    Ok(b.finish())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;

    const W: u16 = 2;

    /// Memory of two adjacent regions, so a buffer may span both.
    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1_0000),
            (GuestAddress(0x1_0000), 0x1_0000),
        ])
        .unwrap()
    }

    fn with_chain<R>(
        m: &GuestMemoryMmap,
        descs: &[(u64, u32, u16)],
        f: impl FnOnce(Result<(ChainReader<'_>, ChainWriter<'_>), ChainShapeError>) -> R,
    ) -> R {
        let vq = MockSplitQueue::new(m, 16);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(a, l, fl))| {
                let i = u16::try_from(i).unwrap();
                let last = usize::from(i) + 1 == descs.len();
                let fl = if last { fl } else { fl | 1 };
                RawDescriptor::from(SplitDescriptor::new(a, l, fl, i + 1))
            })
            .collect();
        vq.add_desc_chains(&raw, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.iter(m).unwrap().next().unwrap();
        f(split_chain(m, chain))
    }

    #[test]
    fn reads_and_writes_across_descriptors_and_regions() {
        let m = mem();
        let data: Vec<u8> = (0..100u8).collect();
        m.write_slice(&data[..30], GuestAddress(0x1000)).unwrap();
        m.write_slice(&data[30..], GuestAddress(0xFFF0 - 40))
            .unwrap();
        // Readable: 30 bytes, then 70 bytes crossing the region boundary at
        // 0x10000; writable: six pieces (past the inline capacity).
        let descs = [
            (0x1000, 30, 0),
            (0xFFF0 - 40, 70, 0),
            (0x2000, 3, W),
            (0x2100, 5, W),
            (0x2200, 7, W),
            (0x2300, 1, W),
            (0x2400, 0, W),
            (0x2500, 9, W),
            (0x2600, 11, W),
        ];
        with_chain(&m, &descs, |r| {
            let (mut rd, mut wr) = r.unwrap();
            assert_eq!(rd.available_bytes(), 100);
            let mut got = vec![0u8; 120];
            assert_eq!(rd.read(&mut got).unwrap(), 100);
            assert_eq!(&got[..100], &data[..]);
            assert_eq!(rd.available_bytes(), 0);

            assert_eq!(wr.available_bytes(), 36);
            let start = wr.position();
            assert!(wr.skip(10));
            assert_eq!(wr.bytes_written(), 10);
            let payload: Vec<u8> = (200..226u8).collect();
            wr.write_all(&payload).unwrap();
            assert_eq!(wr.available_bytes(), 0);
            assert!(wr.write_all(&[1]).is_err(), "no room left");
            wr.seek(start);
            wr.write_all(&[0xA0; 10]).unwrap();
            let mut out = Vec::new();
            for &(a, l, _) in &descs[2..] {
                let mut b = vec![0u8; usize::try_from(l).unwrap()];
                m.read_slice(&mut b, GuestAddress(a)).unwrap();
                out.extend(b);
            }
            let mut want = vec![0xA0; 10];
            want.extend(&payload);
            assert_eq!(out, want);
        });
    }

    #[test]
    fn memory_is_lent_in_place_across_descriptors_and_regions() {
        let m = mem();
        let data: Vec<u8> = (1..=40u8).collect();
        m.write_slice(&data[..10], GuestAddress(0x1000)).unwrap();
        m.write_slice(&data[10..], GuestAddress(0x1100)).unwrap();
        // Readable: 10 + 30 bytes; writable: 5 + 20 (crossing into the
        // second region) + 6 bytes.
        let descs = [
            (0x1000, 10, 0),
            (0x1100, 30, 0),
            (0x3000, 5, W),
            (0xFFF6, 20, W),
            (0x3100, 6, W),
        ];
        with_chain(&m, &descs, |r| {
            let (mut rd, mut wr) = r.unwrap();
            // A failing drain consumes nothing.
            let e = rd.read_in_place(12, &mut |_| Err(io::Error::other("no")));
            assert!(e.is_err());
            assert_eq!(rd.available_bytes(), 40);
            let mut seen = Vec::new();
            rd.read_in_place(25, &mut |bufs| {
                assert_eq!(bufs.len(), 2, "one slice per piece");
                bufs.iter().for_each(|b| seen.extend_from_slice(b));
                Ok(())
            })
            .unwrap();
            assert_eq!(seen, &data[..25]);
            let mut rest = Vec::new();
            rd.read_to_end(&mut rest).unwrap();
            assert_eq!(rest, &data[25..]);
            assert!(rd.read_in_place(1, &mut |_| Ok(())).is_err(), "empty");

            // Data-in: 2 bytes written, then 27 in place, then the rest.
            wr.write_all(&[0xA1, 0xA2]).unwrap();
            let before = wr.position();
            let e = wr.write_in_place(27, &mut |bufs| {
                bufs.iter_mut().for_each(|b| b.fill(0xEE));
                Err(io::Error::other("backend failed"))
            });
            assert!(e.is_err());
            assert_eq!(wr.position(), before, "a failed fill writes nothing");
            wr.write_in_place(27, &mut |bufs| {
                // 3 + 10 + 10 (the region boundary) + 4 bytes.
                let lens: Vec<usize> = bufs.iter().map(|b| b.len()).collect();
                assert_eq!(lens, [3, 10, 10, 4]);
                let mut v = 0u8;
                for b in bufs.iter_mut() {
                    for x in b.iter_mut() {
                        *x = v;
                        v += 1;
                    }
                }
                Ok(())
            })
            .unwrap();
            assert_eq!(wr.bytes_written(), 29);
            let e = wr.write_in_place(3, &mut |_| Ok(())).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WriteZero);
            wr.write_all(&[0xB1, 0xB2]).unwrap();
        });
        let mut out = Vec::new();
        for &(a, l, _) in &descs[2..] {
            let mut b = vec![0u8; usize::try_from(l).unwrap()];
            m.read_slice(&mut b, GuestAddress(a)).unwrap();
            out.extend(b);
        }
        let mut want = vec![0xA1, 0xA2];
        want.extend(0..27u8);
        want.extend([0xB1, 0xB2]);
        assert_eq!(out, want);
    }

    #[test]
    fn more_pieces_than_kept_inline_are_lent_in_order() {
        let m = mem();
        let descs: Vec<(u64, u32, u16)> = (0..11u64).map(|i| (0x4000 + 0x10 * i, 3, W)).collect();
        with_chain(&m, &descs, |r| {
            let (_, mut wr) = r.unwrap();
            wr.write_in_place(31, &mut |bufs| {
                assert_eq!(bufs.len(), 11);
                let mut v = 0u8;
                for b in bufs.iter_mut() {
                    for x in b.iter_mut() {
                        *x = v;
                        v += 1;
                    }
                }
                Ok(())
            })
            .unwrap();
        });
        let mut got = Vec::new();
        for &(a, _, _) in &descs {
            let mut b = [0u8; 3];
            m.read_slice(&mut b, GuestAddress(a)).unwrap();
            got.extend(b);
        }
        let mut want: Vec<u8> = (0..31).collect();
        want.extend([0, 0]);
        assert_eq!(got, want);
    }

    /// A guest may point two descriptors at the same bytes: they are then
    /// not lent as (aliasing) slices but go through a bounce buffer, with
    /// the same result as writing / reading them in order.
    #[test]
    fn overlapping_buffers_go_through_a_bounce_buffer() {
        let m = mem();
        m.write_slice(&[1, 2, 3, 4, 5, 6], GuestAddress(0x500))
            .unwrap();
        let descs = [
            (0x500, 4, 0),
            (0x502, 4, 0), // overlaps the first
            (0x600, 4, W),
            (0x602, 4, W), // overlaps the previous one
        ];
        with_chain(&m, &descs, |r| {
            let (mut rd, mut wr) = r.unwrap();
            let mut seen = Vec::new();
            rd.read_in_place(8, &mut |bufs| {
                assert_eq!(bufs.len(), 1, "one bounce buffer");
                seen.extend_from_slice(&bufs[0]);
                Ok(())
            })
            .unwrap();
            assert_eq!(seen, [1, 2, 3, 4, 3, 4, 5, 6]);
            assert_eq!(rd.available_bytes(), 0);
            wr.write_in_place(8, &mut |bufs| {
                assert_eq!(bufs.len(), 1, "one bounce buffer");
                bufs[0].copy_from_slice(&[10, 11, 12, 13, 14, 15, 16, 17]);
                Ok(())
            })
            .unwrap();
            assert_eq!(wr.bytes_written(), 8);
        });
        let mut got = [0u8; 6];
        m.read_slice(&mut got, GuestAddress(0x600)).unwrap();
        assert_eq!(got, [10, 11, 14, 15, 16, 17]);
    }

    #[test]
    fn split_off_covers_the_rest() {
        let m = mem();
        with_chain(&m, &[(0x400, 4, 0), (0x200, 8, W), (0x300, 8, W)], |r| {
            let (_, wr) = r.unwrap();
            let mut rest = wr.split_off(12).unwrap();
            assert_eq!(rest.available_bytes(), 4);
            rest.write_all(&[9, 9, 9, 9]).unwrap();
            assert_eq!(rest.bytes_written(), 4);
            assert!(wr.split_off(17).is_none());
        });
        let mut b = [0u8; 4];
        m.read_slice(&mut b, GuestAddress(0x304)).unwrap();
        assert_eq!(b, [9; 4]);
    }

    #[test]
    fn shape_errors() {
        let m = mem();
        type Descs<'a> = &'a [(u64, u32, u16)];
        let cases: [(Descs<'_>, ChainShapeError); 3] = [
            (&[(0x400, 8, W), (0x500, 8, 0)], ChainShapeError::Order),
            (&[(0x1_FFF8, 16, 0)], ChainShapeError::Memory),
            (
                &[(0x400, u32::MAX, 0), (0x200, 8, W)],
                ChainShapeError::Memory,
            ),
        ];
        for (descs, want) in cases {
            with_chain(&m, descs, |r| assert_eq!(r.err(), Some(want), "{descs:?}"));
        }
    }
}
