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

use std::io::{self, Read, Write};

use virtio_queue::DescriptorChain;
use vm_memory::{GuestMemoryBackend, Permissions, VolatileSlice};

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

/// Walk `chain` once: check its shape and resolve its buffers.
pub fn split_chain<'a>(
    mem: &'a GuestMemory,
    chain: DescriptorChain<&'a GuestMemory>,
) -> Result<(ChainReader<'a>, ChainWriter<'a>), ChainShapeError> {
    let mut readable = Segments::new();
    let mut writable = Segments::new();
    let mut count = 0usize;
    let mut seen_write = false;
    let mut last_has_next = false;
    let mut total: u64 = 0;
    for d in chain {
        count += 1;
        last_has_next = d.has_next();
        total += u64::from(d.len());
        if total > u64::from(u32::MAX) {
            return Err(ChainShapeError::TooLong);
        }
        let len = usize::try_from(d.len()).map_err(|_| ChainShapeError::TooLong)?;
        let (segs, perm) = if d.is_write_only() {
            seen_write = true;
            (&mut writable, Permissions::Write)
        } else if seen_write {
            return Err(ChainShapeError::Order);
        } else {
            (&mut readable, Permissions::Read)
        };
        if len == 0 {
            continue;
        }
        // Fast path: the buffer lies in one region (one lookup); else walk
        // the regions it spans.
        if let Ok(one) = GuestMemoryBackend::get_slice(mem, d.addr(), len) {
            segs.push(one);
            continue;
        }
        let slices = vm_memory::GuestMemory::get_slices(mem, d.addr(), len, perm)
            .map_err(|_| ChainShapeError::Memory)?;
        for s in slices {
            segs.push(s.map_err(|_| ChainShapeError::Memory)?);
        }
    }
    if count == 0 || last_has_next {
        return Err(ChainShapeError::Structure);
    }
    Ok((
        ChainReader(Cursor::new(readable)),
        ChainWriter(Cursor::new(writable)),
    ))
}
