//! PVH direct boot: load an ELF with a XEN_ELFNOTE_PHYS32_ENTRY note and
//! hand over an hvm_start_info with the memory map, command line and
//! modules (the initrd).

use std::fs::File;
use std::path::Path;

use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{self, E820Entry};

/// Magic of hvm_start_info.
pub const HVM_START_MAGIC: u32 = 0x336e_c578;

/// Errors from PVH boot.
#[derive(Debug, thiserror::Error)]
pub enum PvhError {
    /// Could not open a file.
    #[error("{what} {path}: {source}")]
    Open {
        /// Kernel or initrd.
        what: &'static str,
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// linux-loader refused the ELF.
    #[error("loading ELF kernel: {0}")]
    Load(#[from] linux_loader::loader::Error),
    /// No PVH note.
    #[error("ELF kernel has no PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY)")]
    NoPvhEntry,
    /// Command line too long.
    #[error("command line longer than {0} bytes")]
    CmdlineTooLong(usize),
    /// Initrd does not fit.
    #[error("initrd of {0} bytes does not fit in low RAM")]
    InitrdTooBig(u64),
    /// Guest memory write failed.
    #[error("writing boot data: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// Where the boot vCPU starts and what it gets in %ebx.
#[derive(Debug, Clone, Copy)]
pub struct PvhEntry {
    /// 32-bit entry point.
    pub entry: u64,
    /// Address of hvm_start_info.
    pub start_info: u64,
    /// End of the loaded kernel image.
    pub kernel_end: u64,
}

/// Whether `path` is an ELF file.
pub fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut m = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut m))
        .map(|()| m == *b"\x7fELF")
        .unwrap_or(false)
}

/// Load an initrd at the top of low RAM, page aligned, above `min`.
/// Returns (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    low_ram_end: u64,
    min: u64,
    max_end: u64,
) -> Result<(u64, u64), PvhError> {
    let open_err = |source| PvhError::Open {
        what: "--initrd",
        path: path.display().to_string(),
        source,
    };
    let mut f = File::open(path).map_err(open_err)?;
    let size = f.metadata().map_err(open_err)?.len();
    let top = low_ram_end.min(max_end);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xFFF)
        .filter(|&a| a >= min);
    let addr = addr.ok_or(PvhError::InitrdTooBig(size))?;
    let len = usize::try_from(size).map_err(|_| PvhError::InitrdTooBig(size))?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, len)?;
    Ok((addr, size))
}

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

/// Load `kernel` and write the PVH start info for a guest with `memory`
/// bytes (`rsdp`: where the ACPI RSDP is, if tables were installed).
pub fn load(
    mem: &GuestMemoryMmap,
    memory: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    rsdp: Option<u64>,
) -> Result<PvhEntry, PvhError> {
    let mut f = File::open(kernel).map_err(|source| PvhError::Open {
        what: "--kernel",
        path: kernel.display().to_string(),
        source,
    })?;
    let res = Elf::load(
        mem,
        None,
        &mut f,
        Some(GuestAddress(layout::HIGH_MEMORY_START)),
    )?;
    let entry = match res.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(a) => a.0,
        _ => return Err(PvhError::NoPvhEntry),
    };
    let kernel_end = res.kernel_end;

    if cmdline.len() + 1 > layout::CMDLINE_MAX_SIZE {
        return Err(PvhError::CmdlineTooLong(layout::CMDLINE_MAX_SIZE - 1));
    }
    let mut cl = cmdline.as_bytes().to_vec();
    cl.push(0);
    mem.write_slice(&cl, GuestAddress(layout::CMDLINE_START))?;

    let (low, _) = layout::ram_split(memory);
    let mut nr_modules = 0;
    if let Some(p) = initrd {
        let (addr, size) = load_initrd(
            mem,
            p,
            low,
            kernel_end.max(layout::HIGH_MEMORY_START),
            u64::MAX,
        )?;
        let mut m = Vec::new();
        put_u64(&mut m, addr);
        put_u64(&mut m, size);
        put_u64(&mut m, 0);
        put_u64(&mut m, 0);
        mem.write_slice(&m, GuestAddress(layout::MODLIST_START))?;
        nr_modules = 1;
    }

    let map: Vec<E820Entry> = layout::e820(memory);
    let mut mm = Vec::new();
    for e in &map {
        put_u64(&mut mm, e.addr);
        put_u64(&mut mm, e.size);
        put_u32(&mut mm, e.kind);
        put_u32(&mut mm, 0);
    }
    mem.write_slice(&mm, GuestAddress(layout::MEMMAP_START))?;

    let mut si = Vec::new();
    put_u32(&mut si, HVM_START_MAGIC);
    put_u32(&mut si, 1); // version
    put_u32(&mut si, 0); // flags
    put_u32(&mut si, nr_modules);
    put_u64(
        &mut si,
        if nr_modules > 0 {
            layout::MODLIST_START
        } else {
            0
        },
    );
    put_u64(&mut si, layout::CMDLINE_START);
    put_u64(&mut si, rsdp.unwrap_or(0));
    put_u64(&mut si, layout::MEMMAP_START);
    put_u32(&mut si, u32::try_from(map.len()).unwrap_or(0));
    put_u32(&mut si, 0);
    mem.write_slice(&si, GuestAddress(layout::PVH_INFO_START))?;

    Ok(PvhEntry {
        entry,
        start_info: layout::PVH_INFO_START,
        kernel_end,
    })
}
