//! Guest physical address layout of the "pc" machine.
//!
//! ```text
//! 0x0000_0000 .. 0x000A_0000   low RAM (boot structures at 0x500-0x9FFFF)
//! 0x000A_0000 .. 0x0010_0000   legacy VGA/ROM hole (RAM in KVM, reserved in e820)
//! 0x0010_0000 .. low_end       RAM (kernel at 1 MiB), low_end <= 3 GiB
//! 0xC000_0000 .. 0xFEC0_0000   PCI MMIO32 window (allocator)
//! 0xFEC0_0000                  IOAPIC
//! 0xFED0_0000                  HPET (reserved)
//! 0xFEE0_0000                  LAPIC
//! 0xFFFB_C000 / 0xFFFB_D000    KVM identity map page / TSS (3 pages)
//! 0xFF00_0000 .. 4 GiB         firmware flash (later)
//! 0x1_0000_0000 ..             RAM above 4 GiB (when RAM > 3 GiB)
//! MMIO64 window                above RAM, 1 GiB aligned, 64 GiB long
//! ```

/// GDT used at boot.
pub const BOOT_GDT_START: u64 = 0x500;
/// hvm_start_info.
pub const PVH_INFO_START: u64 = 0x6000;
/// hvm_modlist_entry array.
pub const MODLIST_START: u64 = 0x6040;
/// hvm_memmap_table_entry array.
pub const MEMMAP_START: u64 = 0x7000;
/// Linux zero page (bzImage boot).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Boot stack top for bzImage boot.
pub const BOOT_STACK_POINTER: u64 = 0x8FF0;
/// Linux 64-bit boot page tables (PML4, PDPT, PD).
pub const PML4_START: u64 = 0x9000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Longest command line we accept.
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;
/// End of conventional low memory (EBDA starts at 0x9FC00).
pub const EBDA_START: u64 = 0x9_FC00;
/// Start of the legacy hole.
pub const LEGACY_HOLE_START: u64 = 0xA_0000;
/// ACPI tables for direct kernel boot (BIOS area, reserved in the e820 map).
pub const ACPI_TABLES_START: u64 = 0xE_0000;
/// ACPI RSDP for direct kernel boot (in the F-segment, where a scan finds it).
pub const ACPI_RSDP_START: u64 = 0xF_5A00;
/// Where high memory (the kernel) starts.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// Most RAM below 4 GiB; the rest goes above 4 GiB.
pub const LOW_RAM_MAX: u64 = 0xC000_0000;
/// PCI MMIO32 window.
pub const MMIO32_START: u64 = 0xC000_0000;
/// End of the MMIO32 window (exclusive).
pub const MMIO32_END: u64 = 0xFEC0_0000;
/// IOAPIC.
pub const IOAPIC_START: u64 = 0xFEC0_0000;
/// LAPIC.
pub const LAPIC_START: u64 = 0xFEE0_0000;
/// KVM's identity-map page (where QEMU puts it: below the flash images
/// that end at 4 GiB, above the LAPIC).
pub const KVM_IDENTITY_MAP_START: u64 = 0xFEFF_C000;
/// KVM's TSS (3 pages).
pub const KVM_TSS_START: u64 = 0xFEFF_D000;
/// 4 GiB.
pub const FOUR_GIB: u64 = 0x1_0000_0000;
/// Size of the MMIO64 window.
pub const MMIO64_SIZE: u64 = 64 << 30;
/// PCI I/O port window for BARs.
pub const PCI_IO_START: u64 = 0xC000;
/// End of the PCI I/O window (exclusive).
pub const PCI_IO_END: u64 = 0x1_0000;
/// First GSI handed to MSI routes (0-23 are IOAPIC pins).
pub const FIRST_MSI_GSI: u32 = 24;
/// Highest GSI (KVM_MAX_IRQ_ROUTES is 4096).
pub const MAX_GSI: u32 = 4095;
/// PIIX4 PM I/O base: OVMF's PIIX4_PMBA_VALUE. OVMF keeps a PMBA that is
/// already enabled, but its ResetSystem (`reset -s`, EFI ResetShutdown)
/// always writes PM1a_CNT at 0xB004 on i440FX, so the block must be here
/// (the ACPI tables name the same address).
pub const PM_IO_BASE: u64 = 0xB000;

/// RAM ranges (start, size) for `memory` bytes of RAM.
pub fn ram_ranges(memory: u64) -> Vec<(u64, u64)> {
    let low = memory.min(LOW_RAM_MAX);
    let mut v = vec![(0, low)];
    if memory > low {
        v.push((FOUR_GIB, memory - low));
    }
    v
}

/// RAM below 4 GiB and above 4 GiB.
pub fn ram_split(memory: u64) -> (u64, u64) {
    let low = memory.min(LOW_RAM_MAX);
    (low, memory - low)
}

/// First address of the MMIO64 window.
pub fn mmio64_start(memory: u64) -> u64 {
    let (_, high) = ram_split(memory);
    let end = FOUR_GIB + high;
    end.div_ceil(1 << 30) << 30
}

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start.
    pub addr: u64,
    /// Length.
    pub size: u64,
    /// 1 RAM, 2 reserved.
    pub kind: u32,
}

/// e820 RAM type.
pub const E820_RAM: u32 = 1;
/// e820 reserved type.
pub const E820_RESERVED: u32 = 2;

/// The memory map handed to the guest.
pub fn e820(memory: u64) -> Vec<E820Entry> {
    let (low, high) = ram_split(memory);
    let mut v = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: LEGACY_HOLE_START - EBDA_START,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: 0xF_0000,
            size: 0x1_0000,
            kind: E820_RESERVED,
        },
    ];
    if low > HIGH_MEMORY_START {
        v.push(E820Entry {
            addr: HIGH_MEMORY_START,
            size: low - HIGH_MEMORY_START,
            kind: E820_RAM,
        });
    }
    v.push(E820Entry {
        addr: IOAPIC_START,
        size: FOUR_GIB - IOAPIC_START,
        kind: E820_RESERVED,
    });
    if high > 0 {
        v.push(E820Entry {
            addr: FOUR_GIB,
            size: high,
            kind: E820_RAM,
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_memory() {
        assert_eq!(ram_ranges(64 << 20), vec![(0, 64 << 20)]);
        assert_eq!(ram_ranges(4 << 30), vec![(0, 3 << 30), (FOUR_GIB, 1 << 30)]);
        assert_eq!(mmio64_start(64 << 20), FOUR_GIB);
        assert_eq!(mmio64_start((4 << 30) + 4096), 6 << 30);
        let m = e820(4 << 30);
        let ram: u64 = m
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (4 << 30) - (HIGH_MEMORY_START - EBDA_START));
        assert!(m.windows(2).all(|w| w[0].addr + w[0].size <= w[1].addr));
    }
}
