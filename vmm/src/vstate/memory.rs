//! Guest RAM: anonymous mappings laid out around the PCI hole.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout;

/// Errors creating guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap failed.
    #[error("allocating {size} bytes of guest RAM: {msg}")]
    Mmap {
        /// Requested size.
        size: u64,
        /// Cause.
        msg: String,
    },
}

/// RAM for `size` bytes: below the PCI hole, the rest above 4 GiB.
pub fn create(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let err = |msg: String| MemoryError::Mmap { size, msg };
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(size)
        .into_iter()
        .map(|(s, l)| usize::try_from(l).map(|l| (GuestAddress(s), l)))
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| err(e.to_string()))
}
