//! What the monitor hands to guest firmware (OVMF) the way QEMU's "pc"
//! machine does: the fw_cfg device and the blobs it carries — the
//! ACPI tables with their table-loader script, SMBIOS, the e820 map.
//!
//! The facts come from QEMU's firmware contract as OVMF consumes it
//! (OvmfPkg/Library/QemuFwCfgLib, OvmfPkg/AcpiPlatformDxe/QemuFwCfgAcpi.c,
//! QEMU docs/specs/fw_cfg.rst); the code is ours.

pub mod acpi;
pub mod e820;
pub mod fw_cfg;
pub mod pflash;
pub mod qemu_pc;
pub mod ramfb;
pub mod smbios;
pub mod table_loader;
