//! The fw_cfg contents QEMU's "pc" machine offers and stock OVMF reads, put
//! together from a [`FirmwareConfig`]:
//!
//! | item | read by (OvmfPkg) | what |
//! |---|---|---|
//! | 0x05 NB_CPUS, 0x0F MAX_CPUS | PlatformPei (MP init) | vCPU count |
//! | 0x03 RAM_SIZE, `etc/e820` | PlatformPei | memory map |
//! | 0x02 UUID | SMBIOS / tools | VM UUID |
//! | `etc/acpi/tables`, `etc/acpi/rsdp`, `etc/table-loader` | AcpiPlatformDxe | ACPI |
//! | `etc/smbios/smbios-tables`, `-anchor` | SmbiosPlatformDxe | SMBIOS |
//! | `bootorder` | QemuBootOrderLib | OpenFirmware device paths, one a line |
//! | `etc/boot-fail-wait` | PlatformBootManagerLib | seconds, u32 |
//! | `opt/ovmf/X-PciMmio64Mb` | PlatformPei | 64-bit PCI window size, decimal MB |
//! | `etc/system-states` | S3/S4 support | all disabled |
//! | `etc/ramfb` | QemuRamfbDxe | framebuffer (guest-writable) |
//! | 0x08/0x11 kernel, 0x17/0x18 setup, 0x0B/0x12 initrd, 0x14/0x15 cmdline | QemuKernelLoaderFsDxe | direct kernel boot |

use vm_memory::GuestMemory;

use super::acpi::{self, AcpiPlatform};
use super::e820::{self, E820Entry};
use super::fw_cfg::{keys, FwCfg, FwCfgError};
use super::ramfb::{RAMFB_CONFIG_LEN, RAMFB_FILE};
use super::smbios::{self, SmbiosInfo};

/// A kernel for OVMF to boot without a disk (EFI-stub bzImage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectBoot {
    /// The bzImage file.
    pub kernel: Vec<u8>,
    /// Initial ramdisk, if any.
    pub initrd: Option<Vec<u8>>,
    /// Command line (without NUL).
    pub cmdline: String,
}

/// Everything the firmware is told.
#[derive(Debug, Clone)]
pub struct FirmwareConfig {
    /// vCPUs.
    pub cpus: u16,
    /// Memory map (RAM and reserved ranges).
    pub e820: Vec<E820Entry>,
    /// VM UUID.
    pub uuid: [u8; 16],
    /// VM name (SMBIOS serial number).
    pub name: String,
    /// ACPI platform description.
    pub acpi: AcpiPlatform,
    /// Size of the 64-bit PCI MMIO window to request, in MiB (0: let OVMF choose).
    pub pci_mmio64_mb: u64,
    /// `bootorder` entries (OpenFirmware paths), highest priority first.
    pub bootorder: Vec<String>,
    /// Seconds OVMF waits before retrying when nothing boots.
    pub boot_fail_wait: u32,
    /// Direct kernel boot.
    pub kernel: Option<DirectBoot>,
}

/// Errors putting the items together.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareConfigError {
    /// fw_cfg refused an item.
    #[error(transparent)]
    FwCfg(#[from] FwCfgError),
    /// ACPI tables could not be built.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// The kernel is not a bzImage (no "HdrS" header).
    #[error("direct kernel boot through OVMF needs a bzImage with an EFI stub; this file has no Linux boot header")]
    NotBzImage,
    /// Kernel or initrd too large for the 32-bit size items.
    #[error("{0} is larger than 4 GiB")]
    TooLarge(&'static str),
}

fn u32_len(what: &'static str, n: usize) -> Result<u32, FirmwareConfigError> {
    u32::try_from(n).map_err(|_| FirmwareConfigError::TooLarge(what))
}

/// Split a bzImage into its real-mode setup part and the protected-mode
/// kernel, as QEMU hands them to OVMF (which joins them again).
pub fn split_bzimage(image: &[u8]) -> Result<(&[u8], &[u8]), FirmwareConfigError> {
    if image.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        return Err(FirmwareConfigError::NotBzImage);
    }
    let sects = match image.get(0x1F1).copied() {
        Some(0) | None => 4,
        Some(n) => usize::from(n),
    };
    let setup_len = (sects + 1) * 512;
    if image.len() < setup_len {
        return Err(FirmwareConfigError::NotBzImage);
    }
    Ok(image.split_at(setup_len))
}

/// Fill `fw` with the items for `cfg`.
pub fn populate<M: GuestMemory>(
    fw: &mut FwCfg<M>,
    cfg: &FirmwareConfig,
) -> Result<(), FirmwareConfigError> {
    fw.set_u16(keys::NB_CPUS, cfg.cpus);
    fw.set_u16(keys::MAX_CPUS, cfg.cpus);
    fw.set_bytes(keys::UUID, cfg.uuid.to_vec());
    let ram: u64 = cfg
        .e820
        .iter()
        .filter(|e| e.kind == e820::E820Type::Ram)
        .map(|e| e.len)
        .sum();
    fw.set_u64(keys::RAM_SIZE, ram);
    fw.set_u16(keys::NOGRAPHIC, 0);
    fw.set_u16(keys::BOOT_MENU, 0);

    fw.add_file("etc/e820", e820::encode(&cfg.e820))?;

    let acpi = acpi::build(&cfg.acpi)?;
    fw.add_file(acpi::TABLES_FILE, acpi.tables)?;
    fw.add_file(acpi::RSDP_FILE, acpi.rsdp)?;
    fw.add_file(acpi::LOADER_FILE, acpi.loader)?;

    let (tables, anchor) = smbios::build(&SmbiosInfo {
        uuid: cfg.uuid,
        product: "Arbiter Virtual Machine".to_owned(),
        serial: cfg.name.clone(),
        cpus: cfg.cpus,
        memory: ram,
    });
    fw.add_file(smbios::TABLES_FILE, tables)?;
    fw.add_file(smbios::ANCHOR_FILE, anchor)?;

    if !cfg.bootorder.is_empty() {
        let mut b = cfg.bootorder.join("\n").into_bytes();
        b.push(0);
        fw.add_file("bootorder", b)?;
    }
    fw.add_file(
        "etc/boot-fail-wait",
        cfg.boot_fail_wait.to_le_bytes().to_vec(),
    )?;
    if cfg.pci_mmio64_mb != 0 {
        fw.add_file(
            "opt/ovmf/X-PciMmio64Mb",
            cfg.pci_mmio64_mb.to_string().into_bytes(),
        )?;
    }
    // S3 and S4 off: byte 3 (S3) and byte 4 (S4) have no enable bit set.
    fw.add_file("etc/system-states", vec![0; 6])?;
    fw.add_writable_file(RAMFB_FILE, vec![0; RAMFB_CONFIG_LEN])?;

    if let Some(k) = &cfg.kernel {
        let (setup, kernel) = split_bzimage(&k.kernel)?;
        fw.set_u32(keys::SETUP_SIZE, u32_len("kernel setup", setup.len())?);
        fw.set_bytes(keys::SETUP_DATA, setup.to_vec());
        fw.set_u32(keys::KERNEL_SIZE, u32_len("kernel", kernel.len())?);
        fw.set_bytes(keys::KERNEL_DATA, kernel.to_vec());
        let initrd = k.initrd.clone().unwrap_or_default();
        fw.set_u32(keys::INITRD_SIZE, u32_len("initrd", initrd.len())?);
        fw.set_bytes(keys::INITRD_DATA, initrd);
        let mut cmdline = k.cmdline.clone().into_bytes();
        cmdline.push(0);
        fw.set_u32(keys::CMDLINE_SIZE, u32_len("command line", cmdline.len())?);
        fw.set_bytes(keys::CMDLINE_DATA, cmdline);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::e820::E820Type;
    use super::super::fw_cfg::dma_ctl;
    use super::*;
    use crate::bus::BusDevice;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn config() -> FirmwareConfig {
        FirmwareConfig {
            cpus: 2,
            e820: vec![
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
                E820Entry {
                    addr: 1 << 32,
                    len: 0x4000_0000,
                    kind: E820Type::Ram,
                },
            ],
            uuid: [7; 16],
            name: "node1".into(),
            acpi: AcpiPlatform {
                cpus: 2,
                ..Default::default()
            },
            pci_mmio64_mb: 32768,
            bootorder: vec!["/pci@i0cf8/scsi@3/channel@0/disk@0,0".into()],
            boot_fail_wait: 5,
            kernel: None,
        }
    }

    fn read_item(fw: &mut FwCfg<GuestMemoryMmap>, key: u16, len: usize) -> Vec<u8> {
        fw.write(0, 0, &key.to_le_bytes());
        (0..len)
            .map(|_| {
                let mut b = [0u8];
                fw.read(0, 1, &mut b);
                b[0]
            })
            .collect()
    }

    fn fake_bzimage(setup_sects: u8, total: usize) -> Vec<u8> {
        let mut k = vec![0u8; total];
        k[0x1F1] = setup_sects;
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k
    }

    #[test]
    fn ovmf_items_are_present() {
        let mut fw = FwCfg::new(mem());
        populate(&mut fw, &config()).unwrap();
        assert_eq!(read_item(&mut fw, keys::NB_CPUS, 2), [2, 0]);
        assert_eq!(
            read_item(&mut fw, keys::RAM_SIZE, 8),
            (0xC000_0000u64).to_le_bytes()
        );
        assert_eq!(fw.file("etc/e820").unwrap().len(), 60);
        assert_eq!(
            fw.file("bootorder").unwrap(),
            b"/pci@i0cf8/scsi@3/channel@0/disk@0,0\0"
        );
        assert_eq!(fw.file("etc/boot-fail-wait").unwrap(), [5, 0, 0, 0]);
        assert_eq!(fw.file("opt/ovmf/X-PciMmio64Mb").unwrap(), b"32768");
        assert_eq!(fw.file("etc/system-states").unwrap(), [0; 6]);
        for f in [
            acpi::TABLES_FILE,
            acpi::RSDP_FILE,
            acpi::LOADER_FILE,
            smbios::TABLES_FILE,
            smbios::ANCHOR_FILE,
        ] {
            assert!(!fw.file(f).unwrap().is_empty(), "{f}");
        }
        assert_eq!(&fw.file(acpi::RSDP_FILE).unwrap()[..8], b"RSD PTR ");
    }

    #[test]
    fn ramfb_config_is_writable_by_dma() {
        let mem = mem();
        let mut fw = FwCfg::new(mem.clone());
        populate(&mut fw, &config()).unwrap();
        // Find the ramfb key in the directory, as OVMF does.
        let dir = read_item(&mut fw, keys::FILE_DIR, 4 + 64 * 16);
        let count = usize::try_from(u32::from_be_bytes(dir[..4].try_into().unwrap())).unwrap();
        let key = (0..count)
            .map(|i| &dir[4 + i * 64..4 + (i + 1) * 64])
            .find(|e| e[8..].starts_with(b"etc/ramfb\0"))
            .map(|e| u16::from_be_bytes([e[4], e[5]]))
            .unwrap();
        // DMA WRITE of a 28-byte configuration from guest memory.
        let cfg: Vec<u8> = (1..=28).collect();
        mem.write_slice(&cfg, GuestAddress(0x2000)).unwrap();
        let mut req = ((u32::from(key) << 16) | dma_ctl::SELECT | dma_ctl::WRITE)
            .to_be_bytes()
            .to_vec();
        req.extend_from_slice(&28u32.to_be_bytes());
        req.extend_from_slice(&0x2000u64.to_be_bytes());
        mem.write_slice(&req, GuestAddress(0x1000)).unwrap();
        fw.write(0, 4, &0u32.to_be_bytes());
        fw.write(0, 8, &0x1000u32.to_be_bytes());
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(), 0);
        assert_eq!(fw.file(RAMFB_FILE).unwrap(), cfg.as_slice());
    }

    #[test]
    fn direct_boot_splits_the_bzimage_like_qemu() {
        let mut c = config();
        c.kernel = Some(DirectBoot {
            kernel: fake_bzimage(3, 8192),
            initrd: Some(vec![9; 100]),
            cmdline: "console=ttyS0".into(),
        });
        let mut fw = FwCfg::new(mem());
        populate(&mut fw, &c).unwrap();
        assert_eq!(
            read_item(&mut fw, keys::SETUP_SIZE, 4),
            2048u32.to_le_bytes()
        );
        assert_eq!(
            read_item(&mut fw, keys::KERNEL_SIZE, 4),
            6144u32.to_le_bytes()
        );
        assert_eq!(
            read_item(&mut fw, keys::INITRD_SIZE, 4),
            100u32.to_le_bytes()
        );
        assert_eq!(
            read_item(&mut fw, keys::CMDLINE_SIZE, 4),
            14u32.to_le_bytes()
        );
        assert_eq!(
            read_item(&mut fw, keys::CMDLINE_DATA, 14),
            b"console=ttyS0\0"
        );
        assert_eq!(
            &read_item(&mut fw, keys::SETUP_DATA, 0x206)[0x202..],
            b"HdrS"
        );
        // setup_sects 0 means 4.
        assert_eq!(split_bzimage(&fake_bzimage(0, 4096)).unwrap().0.len(), 2560);
        assert!(matches!(
            split_bzimage(&[0; 4096]),
            Err(FirmwareConfigError::NotBzImage)
        ));
        assert!(matches!(
            split_bzimage(&fake_bzimage(200, 4096)),
            Err(FirmwareConfigError::NotBzImage)
        ));
    }
}
