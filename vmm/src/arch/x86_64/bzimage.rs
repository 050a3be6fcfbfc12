//! Linux bzImage direct boot (64-bit boot protocol): load the protected-
//! mode kernel, fill the zero page (setup header, e820, command line,
//! initrd) and start at the 64-bit entry (load address + 0x200).

use std::fs::File;
use std::path::Path;

use linux_loader::bootparam::boot_params;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout;
use super::pvh::{load_initrd, PvhError};

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const LOADED_HIGH: u8 = 0x01;
const CAN_USE_HEAP: u8 = 0x80;

/// Errors from bzImage boot.
#[derive(Debug, thiserror::Error)]
pub enum BzImageError {
    /// File problems.
    #[error("--kernel {path}: {source}")]
    Open {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// linux-loader refused the image.
    #[error("loading bzImage: {0}")]
    Load(#[from] linux_loader::loader::Error),
    /// Not a 64-bit-capable bzImage.
    #[error("kernel is not a bzImage with a setup header")]
    NoSetupHeader,
    /// initrd / command line.
    #[error(transparent)]
    Boot(#[from] PvhError),
    /// Guest memory.
    #[error("writing zero page: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// Where the boot vCPU starts.
#[derive(Debug, Clone, Copy)]
pub struct BzImageEntry {
    /// 64-bit entry point.
    pub entry: u64,
    /// Zero page address (%rsi).
    pub zero_page: u64,
}

/// Load a bzImage and its boot parameters.
pub fn load(
    mem: &GuestMemoryMmap,
    memory: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    rsdp: Option<u64>,
) -> Result<BzImageEntry, BzImageError> {
    let mut f = File::open(kernel).map_err(|source| BzImageError::Open {
        path: kernel.display().to_string(),
        source,
    })?;
    let res = BzImage::load(
        mem,
        None,
        &mut f,
        Some(GuestAddress(layout::HIGH_MEMORY_START)),
    )?;
    let mut hdr = res.setup_header.ok_or(BzImageError::NoSetupHeader)?;
    if hdr.boot_flag != KERNEL_BOOT_FLAG_MAGIC || hdr.header != KERNEL_HDR_MAGIC {
        return Err(BzImageError::NoSetupHeader);
    }
    if cmdline.len() + 1 > layout::CMDLINE_MAX_SIZE {
        return Err(PvhError::CmdlineTooLong(layout::CMDLINE_MAX_SIZE - 1).into());
    }
    let mut cl = cmdline.as_bytes().to_vec();
    cl.push(0);
    mem.write_slice(&cl, GuestAddress(layout::CMDLINE_START))?;

    hdr.type_of_loader = KERNEL_LOADER_OTHER;
    hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    hdr.heap_end_ptr = 0xfe00;
    hdr.cmd_line_ptr = u32::try_from(layout::CMDLINE_START).unwrap_or(0);
    hdr.cmdline_size = u32::try_from(cl.len()).unwrap_or(0);
    if hdr.kernel_alignment == 0 {
        hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    let (low, _) = layout::ram_split(memory);
    if let Some(p) = initrd {
        let max = match hdr.initrd_addr_max {
            0 => 0x3800_0000,
            m => u64::from(m) + 1,
        };
        let (addr, size) = load_initrd(mem, p, low, res.kernel_end, max)?;
        hdr.ramdisk_image = u32::try_from(addr).unwrap_or(0);
        hdr.ramdisk_size = u32::try_from(size).unwrap_or(0);
    }

    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    let map = layout::e820(memory);
    for (i, e) in map.iter().enumerate().take(params.e820_table.len()) {
        params.e820_table[i].addr = e.addr;
        params.e820_table[i].size = e.size;
        params.e820_table[i].r#type = e.kind;
    }
    params.e820_entries = u8::try_from(map.len()).unwrap_or(0);
    params.acpi_rsdp_addr = rsdp.unwrap_or(0);
    mem.write_obj(params, GuestAddress(layout::ZERO_PAGE_START))?;
    Ok(BzImageEntry {
        entry: res.kernel_load.0 + 0x200,
        zero_page: layout::ZERO_PAGE_START,
    })
}
