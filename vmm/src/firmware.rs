//! UEFI boot with the distribution's stock OVMF, the way QEMU's "pc"
//! machine offers it (facts: `resources/firmware.md`):
//!
//! * flash: `--firmware code=CODE.fd,vars=VARS.fd` maps the code image
//!   read-only so that it ends at 4 GiB and the variable store right below
//!   it; both are CFI flash devices ([`devices::firmware::pflash`]) whose
//!   memory is a read-only KVM memory slot while they are in read-array mode
//!   ("ROMD") and is taken away while the guest talks to them in command
//!   mode. The variable store is the user's file, mapped shared, so what
//!   OVMF programs persists. `--firmware OVMF.fd` maps one image as ROM
//!   (writes ignored; OVMF then keeps variables in RAM only);
//! * fw_cfg ([`devices::firmware::qemu_pc`]) on ports 0x510-0x51B, present
//!   on every boot (test guests read it too);
//! * the boot vCPU stays in KVM's reset state, at the reset vector
//!   0xFFFF_FFF0 inside the code image.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use devices::bus::BusDevice;
use devices::firmware::acpi::AcpiPlatform;
use devices::firmware::e820::{E820Entry, E820Type};
use devices::firmware::fw_cfg::{FwCfg, FW_CFG_PORT_LEN, FW_CFG_PORT_SEL};
use devices::firmware::pflash::{Pflash, BLOCK_SIZE};
use devices::firmware::qemu_pc::{self, DirectBoot, FirmwareConfig as FwItems};
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use crate::arch::x86_64::layout;
use crate::config::{FirmwareConfig, VmConfig};
use crate::device_manager::DeviceManager;

/// KVM memory slots for the flash images (RAM uses the first few).
const CODE_SLOT: u32 = 32;
const VARS_SLOT: u32 = 33;

/// Errors setting up firmware boot.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    /// A firmware file could not be opened or mapped.
    #[error("firmware image {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Flash images are whole 4 KiB blocks, at most 16 MiB together.
    #[error("firmware image {path}: size {size} is not a non-zero multiple of 4 KiB, or the images exceed 16 MiB")]
    Size {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The variable store given is the distribution's template.
    #[error(
        "--firmware vars={0}: this is the distribution's template; copy it and pass the copy \
         (e.g. cp {0} node1_VARS.fd), so UEFI variables persist per VM"
    )]
    Template(PathBuf),
    /// KVM cannot map read-only memory (needed for flash).
    #[error("this KVM cannot map read-only memory (KVM_CAP_READONLY_MEM), which UEFI flash needs")]
    NoReadonlyMem,
    /// A KVM memory slot could not be set.
    #[error("mapping firmware flash into the guest: {0}")]
    Slot(#[source] kvm_ioctls::Error),
    /// A bus refused the device.
    #[error("placing firmware devices: {0}")]
    Bus(String),
    /// Building the fw_cfg items failed.
    #[error("firmware configuration: {0}")]
    Items(String),
    /// Reading the kernel or initrd for OVMF's direct boot failed.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A file mapped into this process: the memory behind a flash device and
/// its KVM memory slot.
#[derive(Debug)]
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this struct; access from
// other threads goes through `&`/`&mut` borrows of the owner (the flash
// device behind a Mutex), and the guest only reads it through KVM.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Map `file` (`len` bytes): shared and writable for a variable store,
    /// private (copy-on-write, never written) for code.
    fn new(file: &File, len: usize, shared: bool) -> std::io::Result<Self> {
        let flags = if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        // SAFETY: a fresh mapping of `len` bytes of an open file; the result
        // is checked before use and unmapped exactly once in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping { ptr: p.cast(), len })
    }
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl AsMut<[u8]> for Mapping {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live, writable mapping of `len` bytes owned by
        // self, and `&mut self` makes this the only borrow on our side (the
        // guest cannot write it: its slot is read-only).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping the region mapped in `new`, once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A flash device plus the KVM slot that shows its memory in read-array mode.
struct FlashDevice {
    flash: Pflash<Mapping>,
    vm: Arc<VmFd>,
    slot: u32,
    gpa: u64,
    /// Plain ROM (single image): every write is ignored.
    rom: bool,
    mapped: bool,
}

impl std::fmt::Debug for FlashDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlashDevice")
            .field("gpa", &self.gpa)
            .field("mapped", &self.mapped)
            .finish()
    }
}

impl FlashDevice {
    fn set_mapped(&mut self, on: bool) -> Result<(), kvm_ioctls::Error> {
        let storage = self.flash.storage();
        let r = kvm_userspace_memory_region {
            slot: self.slot,
            flags: KVM_MEM_READONLY,
            guest_phys_addr: self.gpa,
            memory_size: if on { storage.len() as u64 } else { 0 },
            userspace_addr: storage.as_ptr() as u64,
        };
        // SAFETY: the slot points at the flash mapping, which lives as long
        // as this device, and the device lives as long as the VM (it is on
        // the VM's MMIO bus); the slot is read-only for the guest.
        unsafe { self.vm.set_user_memory_region(r) }?;
        self.mapped = on;
        Ok(())
    }
}

impl BusDevice for FlashDevice {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        self.flash.read(base, offset, data);
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        if self.rom {
            return;
        }
        self.flash.write(base, offset, data);
        let want = self.flash.romd();
        if want != self.mapped {
            if let Err(e) = self.set_mapped(want) {
                log::error!(
                    "flash at {:#x}: cannot {} its memory: {e}",
                    self.gpa,
                    if want { "map" } else { "unmap" }
                );
            }
        }
    }
}

fn open_image(path: &Path, writable: bool) -> Result<(File, usize), FirmwareError> {
    let open_err = |source| FirmwareError::Open {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .map_err(open_err)?;
    let size = file.metadata().map_err(open_err)?.len();
    let len = usize::try_from(size)
        .ok()
        .filter(|l| *l > 0 && l % BLOCK_SIZE == 0 && *l <= 16 << 20);
    let len = len.ok_or(FirmwareError::Size {
        path: path.to_owned(),
        size,
    })?;
    Ok((file, len))
}

fn is_template(path: &Path) -> bool {
    let p = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    p.starts_with("/usr/share")
}

/// What a single firmware image means for UEFI variables (printed at start).
fn rom_note(code: &Path) -> String {
    format!(
        "--firmware {}: one image, mapped as ROM: UEFI variables the guest sets are lost \
         when arbiter exits (use --firmware code=OVMF_CODE.fd,vars=MY_VARS.fd to keep them)",
        code.display()
    )
}

/// Map the flash images and put them on the MMIO bus. Returns nothing the
/// caller needs: the vCPU simply starts at the reset vector.
pub fn map_flash(
    fw: &FirmwareConfig,
    vm: &Arc<VmFd>,
    dm: &DeviceManager,
) -> Result<(), FirmwareError> {
    if !vm.check_extension(kvm_ioctls::Cap::ReadonlyMem) {
        return Err(FirmwareError::NoReadonlyMem);
    }
    let (code_file, code_len) = open_image(&fw.code, false)?;
    if fw.vars.is_none() {
        eprintln!("arbiter: {}", rom_note(&fw.code));
    }
    let code_gpa = layout::FOUR_GIB - code_len as u64;
    let mut images: Vec<(File, usize, u64, u32, bool, bool)> = vec![(
        code_file,
        code_len,
        code_gpa,
        CODE_SLOT,
        false,
        fw.vars.is_none(),
    )];
    if let Some(vars) = &fw.vars {
        if is_template(vars) {
            return Err(FirmwareError::Template(vars.clone()));
        }
        let (f, len) = open_image(vars, true)?;
        if code_len + len > 16 << 20 {
            return Err(FirmwareError::Size {
                path: vars.clone(),
                size: len as u64,
            });
        }
        images.push((f, len, code_gpa - len as u64, VARS_SLOT, true, false));
    }
    for (file, len, gpa, slot, writable, rom) in images {
        let path = if writable {
            fw.vars.clone().unwrap_or_default()
        } else {
            fw.code.clone()
        };
        let map = Mapping::new(&file, len, writable)
            .map_err(|source| FirmwareError::Open { path, source })?;
        let mut dev = FlashDevice {
            flash: Pflash::new(map, !writable),
            vm: vm.clone(),
            slot,
            gpa,
            rom,
            mapped: false,
        };
        dev.set_mapped(true).map_err(FirmwareError::Slot)?;
        dm.mmio
            .insert(Arc::new(Mutex::new(dev)), gpa, len as u64)
            .map_err(|e| FirmwareError::Bus(e.to_string()))?;
    }
    Ok(())
}

/// The memory map as QEMU's fw_cfg `etc/e820` has it: RAM below the PCI
/// hole and above 4 GiB, plus the pages KVM keeps for itself.
fn e820(memory: u64) -> Vec<E820Entry> {
    let (low, high) = layout::ram_split(memory);
    let mut v = vec![E820Entry {
        addr: 0,
        len: low,
        kind: E820Type::Ram,
    }];
    v.push(E820Entry {
        addr: layout::KVM_IDENTITY_MAP_START,
        len: 0x4000,
        kind: E820Type::Reserved,
    });
    if high > 0 {
        v.push(E820Entry {
            addr: layout::FOUR_GIB,
            len: high,
            kind: E820Type::Ram,
        });
    }
    v
}

/// A stable VM UUID derived from its name (a config option can override
/// it later): version 4 layout, variant 1.
pub fn vm_uuid(name: &str) -> [u8; 16] {
    let a = scsi::nexus::fnv1a64(name.as_bytes());
    let b = scsi::nexus::fnv1a64(format!("arbiter/{name}").as_bytes());
    let mut u = [0u8; 16];
    u[..8].copy_from_slice(&a.to_be_bytes());
    u[8..].copy_from_slice(&b.to_be_bytes());
    u[6] = (u[6] & 0x0F) | 0x40;
    u[8] = (u[8] & 0x3F) | 0x80;
    u
}

/// Put fw_cfg on the port bus with the items for `config`.
pub fn add_fw_cfg(
    config: &VmConfig,
    memory: &GuestMemoryMmap,
    dm: &DeviceManager,
    acpi: AcpiPlatform,
) -> Result<(), FirmwareError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| FirmwareError::Read {
            path: p.to_owned(),
            source,
        })
    };
    // OVMF boots --kernel itself (EFI stub) when both are given.
    let kernel = match (&config.firmware, &config.kernel) {
        (Some(_), Some(k)) => Some(DirectBoot {
            kernel: read(k)?,
            initrd: config.initrd.as_deref().map(read).transpose()?,
            cmdline: config.cmdline.clone(),
        }),
        _ => None,
    };
    let items = FwItems {
        cpus: u16::from(config.cpus),
        e820: e820(config.memory),
        uuid: vm_uuid(&config.name),
        name: config.name.clone(),
        acpi,
        pci_mmio64_mb: layout::MMIO64_SIZE >> 20,
        bootorder: Vec::new(),
        boot_fail_wait: 5,
        kernel,
    };
    let mut fw = FwCfg::new(memory.clone());
    qemu_pc::populate(&mut fw, &items).map_err(|e| FirmwareError::Items(e.to_string()))?;
    // With --display, the screen reads the framebuffer etc/ramfb names.
    let dev: Arc<Mutex<dyn BusDevice>> = match &config.display {
        Some(d) => crate::display::attach(fw, memory.clone(), d)
            .map_err(|e| FirmwareError::Items(e.to_string()))?,
        None => Arc::new(Mutex::new(fw)),
    };
    dm.pio
        .insert(dev, u64::from(FW_CFG_PORT_SEL), FW_CFG_PORT_LEN)
        .map_err(|e| FirmwareError::Bus(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_is_qemu_style() {
        let m = e820(4 << 30);
        assert_eq!(
            m[0],
            E820Entry {
                addr: 0,
                len: 3 << 30,
                kind: E820Type::Ram
            }
        );
        assert_eq!(
            m[2],
            E820Entry {
                addr: 1 << 32,
                len: 1 << 30,
                kind: E820Type::Ram
            }
        );
        assert_eq!(e820(64 << 20).len(), 2);
    }

    #[test]
    fn uuids_are_stable_v4_and_distinct() {
        let a = vm_uuid("node1");
        assert_eq!(a, vm_uuid("node1"));
        assert_ne!(a, vm_uuid("node2"));
        assert_eq!(a[6] >> 4, 4);
        assert_eq!(a[8] >> 6, 2);
    }

    /// What OVMF programs into the variable store reaches the user's file,
    /// and the flash's memory slot follows its mode (mapped in read-array
    /// mode, taken away in command mode).
    #[test]
    fn programmed_bytes_reach_the_vars_file_and_romd_toggles() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("SKIPPED programmed_bytes_reach_the_vars_file_and_romd_toggles: /dev/kvm unavailable");
            return;
        };
        let vm = Arc::new(kvm.create_vm().unwrap());
        if !vm.check_extension(kvm_ioctls::Cap::ReadonlyMem) {
            eprintln!("SKIPPED programmed_bytes_reach_the_vars_file_and_romd_toggles: no KVM_CAP_READONLY_MEM");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("VARS.fd");
        std::fs::write(&path, vec![0xFFu8; 2 * BLOCK_SIZE]).unwrap();
        let (file, len) = open_image(&path, true).unwrap();
        let map = Mapping::new(&file, len, true).unwrap();
        let gpa = 0xFFE0_0000;
        let mut dev = FlashDevice {
            flash: Pflash::new(map, false),
            vm,
            slot: VARS_SLOT,
            gpa,
            rom: false,
            mapped: false,
        };
        dev.set_mapped(true).unwrap();
        // Program 0xA5 at offset 0x1001 (0x10, data), then back to read array.
        dev.write(gpa, 0x1001, &[0x10]);
        assert!(!dev.mapped, "command mode must take the slot away");
        dev.write(gpa, 0x1001, &[0xA5]);
        dev.write(gpa, 0x1001, &[0xFF]);
        assert!(dev.mapped, "read-array mode maps the slot again");
        drop(dev);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk[0x1001], 0xA5);
        assert!(on_disk
            .iter()
            .enumerate()
            .all(|(i, &b)| i == 0x1001 || b == 0xFF));
    }

    #[test]
    fn rom_ignores_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("OVMF.fd");
        std::fs::write(&path, vec![0x11u8; BLOCK_SIZE]).unwrap();
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("SKIPPED rom_ignores_writes: /dev/kvm unavailable");
            return;
        };
        let (file, len) = open_image(&path, false).unwrap();
        let map = Mapping::new(&file, len, false).unwrap();
        let vm = Arc::new(kvm.create_vm().unwrap());
        let mut dev = FlashDevice {
            flash: Pflash::new(map, true),
            vm,
            slot: CODE_SLOT,
            gpa: 0,
            rom: true,
            mapped: true,
        };
        dev.write(0, 0, &[0x50]);
        let mut b = [0u8];
        dev.read(0, 0, &mut b);
        assert_eq!(b, [0x11], "a ROM reads its contents whatever was written");
        assert_eq!(std::fs::read(&path).unwrap()[0], 0x11);
    }

    #[test]
    fn templates_are_recognised() {
        assert!(is_template(Path::new("/usr/share/OVMF/OVMF_VARS_4M.fd")));
        assert!(!is_template(Path::new("/tmp/node1_VARS.fd")));
    }
}
