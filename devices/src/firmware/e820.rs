//! The `etc/e820` fw_cfg file: the guest-physical memory map as OVMF reads
//! it (PlatformPei scans it for RAM below and above 4 GiB and for reserved
//! ranges). Entries are packed little-endian `{u64 address, u64 length,
//! u32 type}`, 20 bytes each.

/// e820 entry types (ACPI address range types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Type {
    /// Usable RAM.
    Ram = 1,
    /// Reserved by the platform.
    Reserved = 2,
    /// ACPI reclaimable.
    Acpi = 3,
    /// ACPI NVS.
    Nvs = 4,
}

/// One range of the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Type.
    pub kind: E820Type,
}

/// Size of one packed entry.
pub const E820_ENTRY_LEN: usize = 20;

/// Encode a memory map as the `etc/e820` file.
pub fn encode(entries: &[E820Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * E820_ENTRY_LEN);
    for e in entries {
        out.extend_from_slice(&e.addr.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
        out.extend_from_slice(&(e.kind as u32).to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_packed_little_endian() {
        let b = encode(&[
            E820Entry {
                addr: 0,
                len: 0x8000_0000,
                kind: E820Type::Ram,
            },
            E820Entry {
                addr: 0xFEFF_C000,
                len: 0x4000,
                kind: E820Type::Reserved,
            },
        ]);
        assert_eq!(b.len(), 40);
        assert_eq!(
            &b[..20],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0, 0, 1, 0, 0, 0]
        );
        assert_eq!(
            &b[20..],
            &[0x00, 0xC0, 0xFF, 0xFE, 0, 0, 0, 0, 0x00, 0x40, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]
        );
    }
}
