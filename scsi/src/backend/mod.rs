//! Block backends: where a disk's logical blocks live.
//!
//! All I/O is positional (`&self`, an offset per call), so commands from
//! several request queues proceed in parallel without a lock around I/O.

use std::io::{self, IoSlice, IoSliceMut};

mod file;
mod memory;

pub use file::{FileBackend, FileOptions};
pub use memory::MemBackend;

/// Allocation state of a byte range (GET LBA STATUS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Whether the range is mapped (holds data) or deallocated (a hole).
    pub mapped: bool,
    /// Length in bytes of the range with that state starting at the offset
    /// asked about (at least 1, at most what was asked for).
    pub len: u64,
}

/// A store of bytes addressed by offset: a raw image, a block device, memory.
///
/// Implementations are shared between request queues: every method takes
/// `&self` and must be safe to call concurrently.
pub trait BlockBackend: Send + Sync + std::fmt::Debug {
    /// Read exactly the total length of `bufs` starting at `offset`. A short
    /// read (end of file) is an error.
    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()>;

    /// Write all of `bufs` at `offset`. With `fua`, the data is on stable
    /// storage when this returns.
    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64, fua: bool) -> io::Result<()>;

    /// Make every completed write durable.
    fn flush(&self) -> io::Result<()>;

    /// Deallocate `len` bytes at `offset`; they read back as zeros
    /// afterwards. Only called when [`BlockBackend::supports_discard`].
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Whether [`BlockBackend::discard`] works (and zeroes).
    fn supports_discard(&self) -> bool;

    /// Current size in bytes (checked again to detect resizes).
    fn size(&self) -> io::Result<u64>;

    /// Whether other processes may open the same storage (a shared disk).
    fn is_shared(&self) -> bool;

    /// Allocation state at `offset`, looking at most `len` bytes ahead. The
    /// default reports everything mapped.
    fn extent(&self, _offset: u64, len: u64) -> io::Result<Extent> {
        Ok(Extent {
            mapped: true,
            len: len.max(1),
        })
    }

    /// Read exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_vectored_at(&mut [IoSliceMut::new(buf)], offset)
    }

    /// Write all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.write_vectored_at(&[IoSlice::new(buf)], offset, fua)
    }
}
