//! First-fit address allocator for the PCI I/O, MMIO32 and MMIO64
//! windows, and a GSI allocator.

use std::collections::BTreeMap;

/// Allocation errors.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    /// No aligned gap of this size is left.
    #[error("no room for {size:#x} bytes (alignment {align:#x}) in {start:#x}..{end:#x}")]
    Exhausted {
        /// Requested size.
        size: u64,
        /// Requested alignment.
        align: u64,
        /// Window start.
        start: u64,
        /// Window end.
        end: u64,
    },
    /// Size zero or alignment not a power of two.
    #[error("invalid allocation request size {0:#x} align {1:#x}")]
    Invalid(u64, u64),
}

/// Hands out non-overlapping aligned ranges of `[start, end)`.
#[derive(Debug, Clone)]
pub struct AddressAllocator {
    start: u64,
    end: u64,
    used: BTreeMap<u64, u64>,
}

impl AddressAllocator {
    /// A window `[start, end)`.
    pub fn new(start: u64, end: u64) -> Self {
        AddressAllocator {
            start,
            end,
            used: BTreeMap::new(),
        }
    }

    /// Lowest free `size` bytes aligned to `align` (a power of two).
    pub fn allocate(&mut self, size: u64, align: u64) -> Result<u64, AllocError> {
        if size == 0 || !align.is_power_of_two() {
            return Err(AllocError::Invalid(size, align));
        }
        let exhausted = AllocError::Exhausted {
            size,
            align,
            start: self.start,
            end: self.end,
        };
        let mut cand = self
            .start
            .checked_next_multiple_of(align)
            .ok_or(exhausted.clone())?;
        for (&b, &l) in &self.used {
            if cand.checked_add(size).is_some_and(|e| e <= b) {
                break;
            }
            if b + l > cand {
                cand = (b + l)
                    .checked_next_multiple_of(align)
                    .ok_or(exhausted.clone())?;
            }
        }
        match cand.checked_add(size) {
            Some(e) if e <= self.end => {
                self.used.insert(cand, size);
                Ok(cand)
            }
            _ => Err(exhausted),
        }
    }

    /// Give back the range that starts at `addr`.
    pub fn free(&mut self, addr: u64) {
        self.used.remove(&addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_aligned() {
        let mut a = AddressAllocator::new(0x1000, 0x10000);
        assert_eq!(a.allocate(0x100, 0x100), Ok(0x1000));
        assert_eq!(a.allocate(0x1000, 0x1000), Ok(0x2000));
        assert_eq!(a.allocate(0x100, 0x100), Ok(0x1100));
        a.free(0x1000);
        assert_eq!(a.allocate(0x80, 0x80), Ok(0x1000));
        assert!(a.allocate(0x10000, 1).is_err());
        assert!(a.allocate(0, 1).is_err());
        assert!(a.allocate(16, 3).is_err());
        assert_eq!(a.allocate(0xD000, 0x1000), Ok(0x3000));
        assert!(a.allocate(0x1000, 0x1000).is_err());
    }
}
