//! Boot vCPU register state: 32-bit flat protected mode for PVH, 64-bit
//! long mode with identity page tables for the Linux 64-bit boot protocol.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{BOOT_GDT_START, PML4_START};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Errors writing boot structures.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Guest memory write failed.
    #[error("writing boot page tables/GDT: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// A GDT entry from flags, base and limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

fn bits(entry: u64, shift: u32, mask: u64) -> u8 {
    u8::try_from((entry >> shift) & mask).unwrap_or(0)
}

/// The hidden segment state for GDT entry `index`.
pub fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | (((entry >> 56) & 0xff) << 24);
    let limit_raw = u32::try_from((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)).unwrap_or(0);
    let g = bits(entry, 55, 1);
    let limit = if g == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    kvm_segment {
        base,
        limit,
        selector: index * 8,
        type_: bits(entry, 40, 0xf),
        present: bits(entry, 47, 1),
        dpl: bits(entry, 45, 3),
        db: bits(entry, 54, 1),
        s: bits(entry, 44, 1),
        l: bits(entry, 53, 1),
        g,
        avl: bits(entry, 52, 1),
        unusable: u8::from(bits(entry, 47, 1) == 0),
        padding: 0,
    }
}

fn write_gdt(mem: &GuestMemoryMmap, gdt: &[u64]) -> Result<(), RegsError> {
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + (i as u64) * 8))?;
    }
    Ok(())
}

fn load_segments(sregs: &mut kvm_sregs, gdt: &[u64], code: u16, data: u16, tss: u16) {
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = u16::try_from(gdt.len() * 8 - 1).unwrap_or(0);
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    let c = segment_from_gdt(gdt[usize::from(code)], code);
    let d = segment_from_gdt(gdt[usize::from(data)], data);
    let t = segment_from_gdt(gdt[usize::from(tss)], tss);
    sregs.cs = c;
    sregs.ds = d;
    sregs.es = d;
    sregs.fs = d;
    sregs.gs = d;
    sregs.ss = d;
    sregs.tr = t;
}

/// PVH entry state: 32-bit flat protected mode, paging off.
pub fn setup_pvh_sregs(mem: &GuestMemoryMmap, sregs: &mut kvm_sregs) -> Result<(), RegsError> {
    let gdt = [
        gdt_entry(0, 0, 0),
        gdt_entry(0xc09b, 0, 0xfffff), // 0x08: 32-bit code
        gdt_entry(0xc093, 0, 0xfffff), // 0x10: data
        gdt_entry(0x008b, 0, 0x67),    // 0x18: TSS
    ];
    write_gdt(mem, &gdt)?;
    load_segments(sregs, &gdt, 1, 2, 3);
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    Ok(())
}

/// Linux 64-bit boot protocol state: long mode, identity map of the first
/// 1 GiB with 2 MiB pages.
pub fn setup_long_mode_sregs(
    mem: &GuestMemoryMmap,
    sregs: &mut kvm_sregs,
) -> Result<(), RegsError> {
    let gdt = [
        gdt_entry(0, 0, 0),
        gdt_entry(0, 0, 0),
        gdt_entry(0xa09b, 0, 0xfffff), // 0x10: 64-bit code
        gdt_entry(0xc093, 0, 0xfffff), // 0x18: data
        gdt_entry(0x808b, 0, 0xfffff), // 0x20: TSS
    ];
    write_gdt(mem, &gdt)?;
    load_segments(sregs, &gdt, 2, 3, 4);
    let pdpt = PML4_START + 0x1000;
    let pd = PML4_START + 0x2000;
    mem.write_obj(pdpt | 0x03, GuestAddress(PML4_START))?;
    mem.write_obj(pd | 0x03, GuestAddress(pdpt))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(pd + i * 8))?;
    }
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(())
}

/// General registers at entry.
pub fn boot_regs(rip: u64, rsp: u64, rsi: u64, rbx: u64) -> kvm_regs {
    kvm_regs {
        rip,
        rsp,
        rbp: rsp,
        rsi,
        rbx,
        rflags: 0x2,
        ..Default::default()
    }
}

/// x87/SSE state at reset.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_round_trip() {
        let e = gdt_entry(0xa09b, 0, 0xfffff);
        assert_eq!(e, 0x00af_9b00_0000_ffff);
        let s = segment_from_gdt(e, 2);
        assert_eq!(
            (s.selector, s.type_, s.l, s.g, s.present),
            (0x10, 0xb, 1, 1, 1)
        );
        assert_eq!(s.limit, 0xffff_ffff);
        let d = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!((d.db, d.type_, d.s), (1, 3, 1));
    }
}
