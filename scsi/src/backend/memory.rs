//! An in-memory backend for tests, with fault injection.

use std::io::{self, IoSlice, IoSliceMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use super::{BlockBackend, Extent};

/// Bytes in memory. Reads run in parallel; writes take the lock briefly.
#[derive(Debug, Default)]
pub struct MemBackend {
    data: RwLock<Vec<u8>>,
    fail_reads: AtomicBool,
    fail_writes: AtomicBool,
    fail_flush: AtomicBool,
    no_discard: AtomicBool,
    shared: AtomicBool,
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl MemBackend {
    /// `size` zero bytes.
    pub fn new(size: usize) -> Self {
        Self::from_vec(vec![0; size])
    }

    /// The given bytes.
    pub fn from_vec(data: Vec<u8>) -> Self {
        MemBackend {
            data: RwLock::new(data),
            ..Default::default()
        }
    }

    /// A copy of the contents.
    pub fn contents(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Grow or shrink (new bytes are zero).
    pub fn resize(&self, size: usize) {
        self.data
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .resize(size, 0);
    }

    /// Make reads fail with EIO.
    pub fn fail_reads(&self, on: bool) {
        self.fail_reads.store(on, Ordering::Relaxed);
    }

    /// Make writes (and discards) fail with EIO.
    pub fn fail_writes(&self, on: bool) {
        self.fail_writes.store(on, Ordering::Relaxed);
    }

    /// Make flushes fail with EIO.
    pub fn fail_flush(&self, on: bool) {
        self.fail_flush.store(on, Ordering::Relaxed);
    }

    /// Report discard as unsupported.
    pub fn disable_discard(&self) {
        self.no_discard.store(true, Ordering::Relaxed);
    }

    /// Report the backend as shared.
    pub fn set_shared(&self, on: bool) {
        self.shared.store(on, Ordering::Relaxed);
    }

    fn range(len: usize, offset: u64, n: usize) -> io::Result<std::ops::Range<usize>> {
        let start = usize::try_from(offset).map_err(|_| eio())?;
        let end = start.checked_add(n).ok_or_else(eio)?;
        if end > len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "past end"));
        }
        Ok(start..end)
    }
}

impl BlockBackend for MemBackend {
    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        if self.fail_reads.load(Ordering::Relaxed) {
            return Err(eio());
        }
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        let total = bufs.iter().map(|b| b.len()).sum();
        let r = Self::range(data.len(), offset, total)?;
        let mut pos = r.start;
        for b in bufs.iter_mut() {
            let n = b.len();
            b.copy_from_slice(&data[pos..pos + n]);
            pos += n;
        }
        Ok(())
    }

    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64, _fua: bool) -> io::Result<()> {
        if self.fail_writes.load(Ordering::Relaxed) {
            return Err(eio());
        }
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        let total = bufs.iter().map(|b| b.len()).sum();
        let r = Self::range(data.len(), offset, total)?;
        let mut pos = r.start;
        for b in bufs {
            data[pos..pos + b.len()].copy_from_slice(b);
            pos += b.len();
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        if self.fail_flush.load(Ordering::Relaxed) {
            return Err(eio());
        }
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.fail_writes.load(Ordering::Relaxed) {
            return Err(eio());
        }
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        let n = usize::try_from(len).map_err(|_| eio())?;
        let r = Self::range(data.len(), offset, n)?;
        data[r].fill(0);
        Ok(())
    }

    fn supports_discard(&self) -> bool {
        !self.no_discard.load(Ordering::Relaxed)
    }

    fn size(&self) -> io::Result<u64> {
        let len = self.data.read().unwrap_or_else(|e| e.into_inner()).len();
        Ok(u64::try_from(len).unwrap_or(u64::MAX))
    }

    fn is_shared(&self) -> bool {
        self.shared.load(Ordering::Relaxed)
    }

    fn extent(&self, offset: u64, len: u64) -> io::Result<Extent> {
        // Report all-zero 4 KiB chunks as deallocated, like a sparse file.
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        let start = usize::try_from(offset).map_err(|_| eio())?;
        let limit = start.saturating_add(usize::try_from(len.max(1)).unwrap_or(usize::MAX));
        let limit = limit.min(data.len());
        if start >= limit {
            return Ok(Extent {
                mapped: true,
                len: len.max(1),
            });
        }
        let chunk_zero = |s: usize| {
            let e = (s - s % 4096 + 4096).min(data.len());
            data[s..e].iter().all(|&b| b == 0)
        };
        let first = !chunk_zero(start);
        let mut pos = start;
        while pos < limit && chunk_zero(pos) != first {
            pos = pos - pos % 4096 + 4096;
        }
        let end = pos.min(limit);
        Ok(Extent {
            mapped: first,
            len: u64::try_from(end - start).unwrap_or(1).max(1),
        })
    }
}
