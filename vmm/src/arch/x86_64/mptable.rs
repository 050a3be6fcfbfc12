//! Intel MultiProcessor Specification 1.4 tables for direct kernel boot:
//! the processors, the ISA and PCI buses, the IOAPIC and how ISA IRQs and
//! PCI INTx pins reach it, so a kernel without ACPI tables sets up the
//! IOAPIC and all CPUs. The floating pointer sits in the last KiB of base
//! memory (0x9FC00), where kernels look for it, followed by the table.
//!
//! Interrupt wiring matches the GSI routes in `vstate::vm` (QEMU "pc"):
//! ISA IRQ 0 (the PIT) → IOAPIC pin 2, ISA IRQ n → pin n, SCI (IRQ 9)
//! level/active-high, PCI INTx → the PIRQ's IRQ, level/active-high.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout;

/// Where the floating pointer goes.
pub const MPTABLE_START: u64 = layout::EBDA_START;
/// Room up to the legacy hole at 0xA0000.
const MAX_SIZE: usize = 0x400;

const BUS_PCI: u8 = 0;
const BUS_ISA: u8 = 1;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity active high (01), trigger level (11).
const FLAGS_LEVEL_HIGH: u16 = 0x000D;
/// Conforms to the bus (ISA: edge, active high).
const FLAGS_CONFORM: u16 = 0;

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Too many entries for the space below 640 KiB.
    #[error("MP table of {0} bytes does not fit below 0xA0000")]
    TooBig(usize),
    /// Guest memory.
    #[error("writing MP table: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// A PCI function's INTx wiring for the table.
#[derive(Debug, Clone, Copy)]
pub struct PciIntx {
    /// Slot.
    pub slot: u8,
    /// Pin (1 = INTA#).
    pub pin: u8,
    /// ISA IRQ / IOAPIC pin it reaches.
    pub irq: u8,
}

fn checksum(b: &[u8]) -> u8 {
    0u8.wrapping_sub(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)))
}

fn int_entry(kind: u8, flags: u16, bus: u8, bus_irq: u8, ioapic: u8, pin: u8) -> [u8; 8] {
    let f = flags.to_le_bytes();
    [3, kind, f[0], f[1], bus, bus_irq, ioapic, pin]
}

/// Build the table bytes (floating pointer first) for `cpus` CPUs.
pub fn build(cpus: u8, intx: &[PciIntx]) -> Result<Vec<u8>, MptableError> {
    let ioapic_id = cpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let mut p = [0u8; 20];
        p[0] = 0; // processor
        p[1] = id;
        p[2] = 0x14; // LAPIC version
        p[3] = 0x01 | if id == 0 { 0x02 } else { 0 }; // enabled, BSP
        p[4..8].copy_from_slice(&0x0000_0600u32.to_le_bytes()); // family 6
        p[8..12].copy_from_slice(&0x0000_0201u32.to_le_bytes()); // FPU, APIC
        entries.extend_from_slice(&p);
        count += 1;
    }
    for (id, name) in [(BUS_PCI, b"PCI   "), (BUS_ISA, b"ISA   ")] {
        entries.push(1);
        entries.push(id);
        entries.extend_from_slice(name);
        count += 1;
    }
    entries.extend_from_slice(&[2, ioapic_id, 0x11, 1]);
    entries.extend_from_slice(
        &u32::try_from(layout::IOAPIC_START)
            .unwrap_or(0)
            .to_le_bytes(),
    );
    count += 1;
    for irq in 0u8..16 {
        let (pin, flags) = match irq {
            0 => (2, FLAGS_CONFORM),
            2 => continue,
            9 => (9, FLAGS_LEVEL_HIGH),
            n => (n, FLAGS_CONFORM),
        };
        entries.extend_from_slice(&int_entry(
            INT_TYPE_INT,
            flags,
            BUS_ISA,
            irq,
            ioapic_id,
            pin,
        ));
        count += 1;
    }
    for i in intx {
        let src = (i.slot << 2) | (i.pin.saturating_sub(1) & 3);
        entries.extend_from_slice(&int_entry(
            INT_TYPE_INT,
            FLAGS_LEVEL_HIGH,
            BUS_PCI,
            src,
            ioapic_id,
            i.irq,
        ));
        count += 1;
    }
    // Local interrupts: LINT0 ExtINT (the PIC), LINT1 NMI, on all CPUs.
    entries.extend_from_slice(&[4, INT_TYPE_EXTINT, 0, 0, BUS_ISA, 0, 0xFF, 0]);
    entries.extend_from_slice(&[4, INT_TYPE_NMI, 0, 0, BUS_ISA, 0, 0xFF, 1]);
    count += 2;

    let table_addr = u32::try_from(MPTABLE_START + 16).unwrap_or(0);
    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    let len = u16::try_from(44 + entries.len()).map_err(|_| MptableError::TooBig(entries.len()))?;
    header.extend_from_slice(&len.to_le_bytes());
    header.push(4); // spec 1.4
    header.push(0); // checksum, below
    header.extend_from_slice(b"ARBITER ");
    header.extend_from_slice(b"PC          ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(
        &u32::try_from(layout::LAPIC_START)
            .unwrap_or(0)
            .to_le_bytes(),
    );
    header.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = [0u8; 16];
    fp[0..4].copy_from_slice(b"_MP_");
    fp[4..8].copy_from_slice(&table_addr.to_le_bytes());
    fp[8] = 1; // length in 16-byte units
    fp[9] = 4; // spec 1.4
    fp[10] = checksum(&fp);
    let mut out = fp.to_vec();
    out.extend_from_slice(&table);
    if out.len() > MAX_SIZE {
        return Err(MptableError::TooBig(out.len()));
    }
    Ok(out)
}

/// Write the MP table into guest memory.
pub fn write(mem: &GuestMemoryMmap, cpus: u8, intx: &[PciIntx]) -> Result<(), MptableError> {
    let bytes = build(cpus, intx)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_counts_and_entries() {
        let t = build(
            2,
            &[PciIntx {
                slot: 2,
                pin: 1,
                irq: 11,
            }],
        )
        .unwrap();
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()), 0x9FC10);
        let table = &t[16..];
        assert_eq!(&table[0..4], b"PCMP");
        let len = usize::from(u16::from_le_bytes([table[4], table[5]]));
        assert_eq!(len, table.len());
        assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        // 2 CPUs, 2 buses, 1 IOAPIC, 15 ISA IRQs, 1 PCI INTx, 2 local.
        assert_eq!(
            u16::from_le_bytes([table[34], table[35]]),
            2 + 2 + 1 + 15 + 1 + 2
        );
        // The PCI INTx entry: slot 2 INTA# (src irq 8) -> pin 11, level/high.
        let pci = [3u8, 0, 0x0D, 0, 0, 8, 2, 11];
        assert!(table.windows(8).any(|w| w == pci));
        // ISA IRQ 0 -> pin 2.
        assert!(table.windows(8).any(|w| w == [3, 0, 0, 0, 1, 0, 2, 2]));
        let too_many: Vec<PciIntx> = (0..200)
            .map(|i| PciIntx {
                slot: i % 32,
                pin: 1,
                irq: 10,
            })
            .collect();
        assert!(build(64, &too_many).is_err());
    }
}
