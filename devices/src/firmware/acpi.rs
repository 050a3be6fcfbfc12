//! ACPI tables for a QEMU-"pc"-compatible platform (i440FX + PIIX3/PIIX4),
//! delivered the way QEMU delivers them to OVMF: fw_cfg files
//! `etc/acpi/tables` (every table), `etc/acpi/rsdp` and an
//! `etc/table-loader` script that allocates both, patches the pointers
//! between tables and computes the checksums in guest memory.
//!
//! Tables: FACS, DSDT (PCI0 root bridge with `_CRS` windows and `_PRT`, the
//! ISA devices RTC / COM1 / PS/2 keyboard, the fw_cfg device `QEMU0002`,
//! processor devices, `_S5`), FADT (revision 3, PIIX4 PM blocks, PM timer,
//! SCI, reset register 0xCF9, century), MADT (one local APIC per vCPU, the
//! IOAPIC, interrupt source overrides, LINT1 NMI) and an RSDT; RSDP
//! revision 0, as QEMU's "pc" machine. Tables that hold pointers carry
//! offsets into `etc/acpi/tables` and get relocated by the loader.
//!
//! SMI_CMD is 0, so the OS takes ACPI as always enabled: the PM1 control
//! register's SCI_EN bit must read 1.

use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, Device, EISAName, Interrupt, Name, Package, Path,
    ResourceTemplate, Scope, IO,
};
use acpi_tables::Aml;

use super::table_loader::{LoaderError, TableLoader, Zone};

/// fw_cfg file with every table.
pub const TABLES_FILE: &str = "etc/acpi/tables";
/// fw_cfg file with the RSDP.
pub const RSDP_FILE: &str = "etc/acpi/rsdp";
/// fw_cfg file with the loader script.
pub const LOADER_FILE: &str = "etc/table-loader";

const OEM_ID: &[u8; 6] = b"ARBITR";
const OEM_TABLE_ID: &[u8; 8] = b"ARBITER ";
const CREATOR_ID: &[u8; 4] = b"ARBT";

/// The platform the tables describe. Defaults match QEMU's "pc" machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiPlatform {
    /// vCPUs; APIC IDs and ACPI processor UIDs are 0..cpus.
    pub cpus: u8,
    /// PIIX4 PM I/O base (PMBA): PM1a event at +0 (4 bytes), PM1a control at
    /// +4 (2 bytes), PM timer at +8 (4 bytes, 24-bit).
    pub pm_base: u16,
    /// GPE0 block (4 bytes: status then enable).
    pub gpe0_base: u16,
    /// SCI interrupt (ISA IRQ, level, active high).
    pub sci_irq: u8,
    /// 32-bit PCI MMIO window (base, length).
    pub pci_mmio32: (u32, u32),
    /// 64-bit PCI MMIO window (base, length), if any.
    pub pci_mmio64: Option<(u64, u64)>,
    /// GSI of PCI INTx for `(slot + pin) % 4` (pin 0 = INTA).
    pub intx_gsi: [u32; 4],
    /// IOAPIC MMIO base.
    pub ioapic_addr: u32,
    /// Local APIC MMIO base.
    pub lapic_addr: u32,
    /// Describe COM1 (0x3F8, IRQ 4).
    pub serial: bool,
    /// Describe the PS/2 keyboard controller (0x60/0x64, IRQ 1).
    pub i8042: bool,
    /// Describe the fw_cfg device (QEMU0002 at 0x510).
    pub fw_cfg: bool,
}

impl Default for AcpiPlatform {
    fn default() -> Self {
        AcpiPlatform {
            cpus: 1,
            pm_base: 0x600,
            gpe0_base: 0xAFE0,
            sci_irq: 9,
            pci_mmio32: (0xC000_0000, 0x3EC0_0000),
            pci_mmio64: None,
            intx_gsi: [16, 17, 18, 19],
            ioapic_addr: 0xFEC0_0000,
            lapic_addr: 0xFEE0_0000,
            serial: true,
            i8042: true,
            fw_cfg: true,
        }
    }
}

/// Errors building the tables.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    /// At least one vCPU.
    #[error("ACPI tables need at least one vCPU")]
    NoCpus,
    /// A window that wraps or is empty.
    #[error("PCI window {base:#x}+{len:#x} is empty or wraps")]
    BadWindow {
        /// Base.
        base: u64,
        /// Length.
        len: u64,
    },
    /// The table blob outgrew 32-bit offsets (cannot happen with sane inputs).
    #[error("ACPI tables too large")]
    TooLarge,
    /// Loader script error.
    #[error(transparent)]
    Loader(#[from] LoaderError),
}

/// The three fw_cfg files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiBlobs {
    /// `etc/acpi/tables`
    pub tables: Vec<u8>,
    /// `etc/acpi/rsdp`
    pub rsdp: Vec<u8>,
    /// `etc/table-loader`
    pub loader: Vec<u8>,
    /// Where each table starts in `tables`: (signature, offset, length).
    pub layout: Vec<([u8; 4], usize, usize)>,
}

/// A table being written: header first, fields appended.
struct Table {
    bytes: Vec<u8>,
}

impl Table {
    fn new(signature: &[u8; 4], revision: u8) -> Self {
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(signature);
        bytes.extend_from_slice(&[0; 4]); // length, set by finish()
        bytes.push(revision);
        bytes.push(0); // checksum, computed by the loader
        bytes.extend_from_slice(OEM_ID);
        bytes.extend_from_slice(OEM_TABLE_ID);
        bytes.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
        bytes.extend_from_slice(CREATOR_ID);
        bytes.extend_from_slice(&1u32.to_le_bytes()); // creator revision
        Table { bytes }
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Generic Address Structure: space, bit width, bit offset, access size, address.
    fn gas(&mut self, space: u8, bits: u8, access: u8, addr: u64) -> &mut Self {
        self.u8(space).u8(bits).u8(0).u8(access).u64(addr)
    }
    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.bytes.len()).unwrap_or(u32::MAX);
        self.bytes[4..8].copy_from_slice(&len.to_le_bytes());
        self.bytes
    }
}

/// Sum of bytes, for checksums.
pub fn sum8(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
}

fn check_window(base: u64, len: u64) -> Result<(), AcpiError> {
    if len == 0 || base.checked_add(len - 1).is_none() {
        return Err(AcpiError::BadWindow { base, len });
    }
    Ok(())
}

/// Already-serialized AML, so objects can be built in one statement each.
struct Raw(Vec<u8>);

impl Raw {
    fn of(obj: &dyn Aml) -> Raw {
        let mut v = Vec::new();
        obj.to_aml_bytes(&mut v);
        Raw(v)
    }
}

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// The DSDT's AML body.
fn dsdt_body(p: &AcpiPlatform) -> Result<Vec<u8>, AcpiError> {
    let (m32_base, m32_len) = p.pci_mmio32;
    check_window(u64::from(m32_base), u64::from(m32_len))?;
    let m32_max = m32_base + (m32_len - 1);
    let bus = AddressSpace::<u16>::new_bus_number(0, 0xFF);
    let cf8 = IO::new(0xCF8, 0xCF8, 1, 8);
    let io_lo = AddressSpace::<u16>::new_io(0x0000, 0x0CF7, None);
    let io_hi = AddressSpace::<u16>::new_io(0x0D00, 0xFFFF, None);
    let vga = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::Cacheable,
        true,
        0xA_0000,
        0xB_FFFF,
        None,
    );
    let mmio32 = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        m32_base,
        m32_max,
        None,
    );
    let mmio64 = match p.pci_mmio64 {
        Some((base, len)) => {
            check_window(base, len)?;
            Some(AddressSpace::<u64>::new_memory(
                AddressSpaceCacheable::NotCacheable,
                true,
                base,
                base + (len - 1),
                None,
            ))
        }
        None => None,
    };
    let mut crs_items: Vec<&dyn Aml> = vec![&bus, &cf8, &io_lo, &io_hi, &vga, &mmio32];
    if let Some(m) = &mmio64 {
        crs_items.push(m);
    }
    let crs = ResourceTemplate::new(crs_items);

    // _PRT: every slot 1..31, pins INTA..INTD, hard-wired GSIs (no link devices).
    let mut prt_raw: Vec<(u32, u8, u32)> = Vec::new();
    for slot in 1u32..32 {
        for pin in 0u8..4 {
            let idx = usize::try_from((slot + u32::from(pin)) % 4).unwrap_or(0);
            prt_raw.push(((slot << 16) | 0xFFFF, pin, p.intx_gsi[idx]));
        }
    }
    let zero = aml::ZERO;
    let prt_entries: Vec<Package> = prt_raw
        .iter()
        .map(|(addr, pin, gsi)| Package::new(vec![addr, pin, &zero, gsi]))
        .collect();
    let prt = Package::new(prt_entries.iter().map(|e| e as &dyn Aml).collect());

    // ISA devices behind the PIIX3 at 00:01.0. Each object is serialized in
    // the statement that builds it, so its borrowed parts can be temporaries.
    let rtc = Raw::of(&Device::new(
        "RTC_".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0B00")),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![
                    &IO::new(0x70, 0x70, 1, 2),
                    &Interrupt::new(true, true, false, false, 8),
                ]),
            ),
        ],
    ));
    let com1 = Raw::of(&Device::new(
        "COM1".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0501")),
            &Name::new("_UID".into(), &1u8),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![
                    &IO::new(0x3F8, 0x3F8, 1, 8),
                    &Interrupt::new(true, true, false, false, 4),
                ]),
            ),
        ],
    ));
    let kbd = Raw::of(&Device::new(
        "KBD_".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0303")),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![
                    &IO::new(0x60, 0x60, 1, 1),
                    &IO::new(0x64, 0x64, 1, 1),
                    &Interrupt::new(true, true, false, false, 1),
                ]),
            ),
        ],
    ));
    let isa_adr = Raw::of(&Name::new("_ADR".into(), &0x0001_0000u32));
    let mut isa_children: Vec<&dyn Aml> = vec![&isa_adr, &rtc];
    if p.serial {
        isa_children.push(&com1);
    }
    if p.i8042 {
        isa_children.push(&kbd);
    }
    let isa = Raw::of(&Device::new("ISA_".into(), isa_children));

    let pci0 = Raw::of(&Device::new(
        "PCI0".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0A03")),
            &Name::new("_ADR".into(), &0u8),
            &Name::new("_UID".into(), &0u8),
            &Name::new("_BBN".into(), &0u8),
            &Name::new("_CRS".into(), &crs),
            &Name::new("_PRT".into(), &prt),
            &isa,
        ],
    ));

    let fwcf = Raw::of(&Device::new(
        "FWCF".into(),
        vec![
            &Name::new("_HID".into(), &"QEMU0002"),
            &Name::new("_STA".into(), &0x0Bu8),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![&IO::new(0x510, 0x510, 1, 0x0C)]),
            ),
        ],
    ));

    let cpus: Vec<Raw> = (0..p.cpus)
        .map(|i| {
            Raw::of(&Device::new(
                Path::new(&format!("C{i:03X}")),
                vec![
                    &Name::new("_HID".into(), &"ACPI0007"),
                    &Name::new("_UID".into(), &i),
                    &Name::new("_STA".into(), &0x0Fu8),
                ],
            ))
        })
        .collect();

    let mut sb_children: Vec<&dyn Aml> = vec![&pci0];
    if p.fw_cfg {
        sb_children.push(&fwcf);
    }
    for c in &cpus {
        sb_children.push(c);
    }
    let sb = Scope::new("\\_SB_".into(), sb_children);
    // S5 (soft off): PIIX4 SLP_TYP 0.
    let s5 = Name::new(
        "_S5_".into(),
        &Package::new(vec![&zero, &zero, &zero, &zero]),
    );

    let mut body = Vec::new();
    sb.to_aml_bytes(&mut body);
    s5.to_aml_bytes(&mut body);
    Ok(body)
}

fn fadt(p: &AcpiPlatform, facs_off: u32, dsdt_off: u32) -> Vec<u8> {
    let pm1_evt = u32::from(p.pm_base);
    let pm1_cnt = pm1_evt + 4;
    let pm_tmr = pm1_evt + 8;
    let gpe0 = u32::from(p.gpe0_base);
    let mut t = Table::new(b"FACP", 3);
    t.u32(facs_off) // 36 FIRMWARE_CTRL (patched)
        .u32(dsdt_off) // 40 DSDT (patched)
        .u8(0) // 44 reserved
        .u8(0) // 45 preferred PM profile: unspecified
        .u16(u16::from(p.sci_irq)) // 46 SCI_INT
        .u32(0) // 48 SMI_CMD: none, ACPI always enabled
        .u8(0) // 52 ACPI_ENABLE
        .u8(0) // 53 ACPI_DISABLE
        .u8(0) // 54 S4BIOS_REQ
        .u8(0) // 55 PSTATE_CNT
        .u32(pm1_evt) // 56 PM1a_EVT_BLK
        .u32(0) // 60 PM1b_EVT_BLK
        .u32(pm1_cnt) // 64 PM1a_CNT_BLK
        .u32(0) // 68 PM1b_CNT_BLK
        .u32(0) // 72 PM2_CNT_BLK
        .u32(pm_tmr) // 76 PM_TMR_BLK
        .u32(gpe0) // 80 GPE0_BLK
        .u32(0) // 84 GPE1_BLK
        .u8(4) // 88 PM1_EVT_LEN
        .u8(2) // 89 PM1_CNT_LEN
        .u8(0) // 90 PM2_CNT_LEN
        .u8(4) // 91 PM_TMR_LEN
        .u8(4) // 92 GPE0_BLK_LEN
        .u8(0) // 93 GPE1_BLK_LEN
        .u8(0) // 94 GPE1_BASE
        .u8(0) // 95 CST_CNT
        .u16(0x0FFF) // 96 P_LVL2_LAT: C2 not supported
        .u16(0x0FFF) // 98 P_LVL3_LAT: C3 not supported
        .u16(0) // 100 FLUSH_SIZE
        .u16(0) // 102 FLUSH_STRIDE
        .u8(0) // 104 DUTY_OFFSET
        .u8(0) // 105 DUTY_WIDTH
        .u8(0x0D) // 106 DAY_ALRM (CMOS index)
        .u8(0) // 107 MON_ALRM
        .u8(0x32) // 108 CENTURY (CMOS index)
        .u16(0x0003) // 109 IAPC_BOOT_ARCH: LEGACY_DEVICES | 8042
        .u8(0) // 111 reserved
        // 112 flags: WBINVD | PROC_C1 | SLP_BUTTON | RTC_S4 | RESET_REG_SUP | USE_PLATFORM_CLOCK
        .u32((1 << 0) | (1 << 2) | (1 << 5) | (1 << 7) | (1 << 10) | (1 << 15))
        .gas(1, 8, 0, 0xCF9) // 116 RESET_REG: system I/O 0xCF9
        .u8(0x06) // 128 RESET_VALUE
        .u8(0)
        .u8(0)
        .u8(0) // 129 reserved
        .u64(u64::from(facs_off)) // 132 X_FIRMWARE_CTRL (patched)
        .u64(u64::from(dsdt_off)) // 140 X_DSDT (patched)
        .gas(1, 32, 0, u64::from(pm1_evt)) // 148 X_PM1a_EVT_BLK
        .gas(0, 0, 0, 0) // 160 X_PM1b_EVT_BLK
        .gas(1, 16, 0, u64::from(pm1_cnt)) // 172 X_PM1a_CNT_BLK
        .gas(0, 0, 0, 0) // 184 X_PM1b_CNT_BLK
        .gas(0, 0, 0, 0) // 196 X_PM2_CNT_BLK
        .gas(1, 32, 0, u64::from(pm_tmr)) // 208 X_PM_TMR_BLK
        .gas(1, 32, 0, u64::from(gpe0)) // 220 X_GPE0_BLK
        .gas(0, 0, 0, 0); // 232 X_GPE1_BLK
    t.finish()
}

/// Byte offsets of the pointers inside the FADT.
const FADT_FIRMWARE_CTRL: u32 = 36;
const FADT_DSDT: u32 = 40;
const FADT_X_FIRMWARE_CTRL: u32 = 132;
const FADT_X_DSDT: u32 = 140;

fn madt(p: &AcpiPlatform) -> Vec<u8> {
    let mut t = Table::new(b"APIC", 1);
    t.u32(p.lapic_addr).u32(1); // local APIC address, PCAT_COMPAT
    for i in 0..p.cpus {
        // Processor local APIC: type 0, length 8, UID, APIC ID, enabled.
        t.u8(0).u8(8).u8(i).u8(i).u32(1);
    }
    // I/O APIC: type 1, length 12, ID (after the CPUs), reserved, address, GSI base 0.
    t.u8(1).u8(12).u8(p.cpus).u8(0).u32(p.ioapic_addr).u32(0);
    // Interrupt source overrides: type 2, length 10, bus 0, source, GSI, flags.
    t.u8(2).u8(10).u8(0).u8(0).u32(2).u16(0); // PIT IRQ0 -> GSI 2
    let mut level = vec![5u8, 9, 10, 11];
    if !level.contains(&p.sci_irq) {
        level.push(p.sci_irq);
    }
    for irq in level {
        // PCI-style ISA IRQs and the SCI: level-triggered, active high.
        t.u8(2).u8(10).u8(0).u8(irq).u32(u32::from(irq)).u16(0x000D);
    }
    // Local APIC NMI: type 4, length 6, all processors, flags 0, LINT1.
    t.u8(4).u8(6).u8(0xFF).u16(0).u8(1);
    t.finish()
}

fn facs() -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[0..4].copy_from_slice(b"FACS");
    b[4..8].copy_from_slice(&64u32.to_le_bytes());
    b
}

fn u32_off(v: usize) -> Result<u32, AcpiError> {
    u32::try_from(v).map_err(|_| AcpiError::TooLarge)
}

/// Build the tables, the RSDP and the loader script for `p`.
pub fn build(p: &AcpiPlatform) -> Result<AcpiBlobs, AcpiError> {
    if p.cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    let mut tables = Vec::new();
    let mut layout = Vec::new();
    let mut loader = TableLoader::new();
    loader.allocate(TABLES_FILE, 64, Zone::High)?;

    // FACS first: it needs 64-byte alignment, and the blob is 64-aligned.
    let facs_off = tables.len();
    tables.extend_from_slice(&facs());
    layout.push((*b"FACS", facs_off, 64));

    let dsdt_off = tables.len();
    let mut dsdt = Table::new(b"DSDT", 2);
    dsdt.bytes.extend_from_slice(&dsdt_body(p)?);
    let dsdt = dsdt.finish();
    tables.extend_from_slice(&dsdt);
    layout.push((*b"DSDT", dsdt_off, dsdt.len()));

    let fadt_off = tables.len();
    let fadt = fadt(p, u32_off(facs_off)?, u32_off(dsdt_off)?);
    tables.extend_from_slice(&fadt);
    layout.push((*b"FACP", fadt_off, fadt.len()));

    let madt_off = tables.len();
    let madt = madt(p);
    tables.extend_from_slice(&madt);
    layout.push((*b"APIC", madt_off, madt.len()));

    let rsdt_off = tables.len();
    let mut rsdt = Table::new(b"RSDT", 1);
    rsdt.u32(u32_off(fadt_off)?).u32(u32_off(madt_off)?);
    let rsdt = rsdt.finish();
    tables.extend_from_slice(&rsdt);
    layout.push((*b"RSDT", rsdt_off, rsdt.len()));

    // Pointers (each holds an offset into the tables blob until relocated).
    let f = u32_off(fadt_off)?;
    loader.add_pointer(TABLES_FILE, TABLES_FILE, f + FADT_FIRMWARE_CTRL, 4)?;
    loader.add_pointer(TABLES_FILE, TABLES_FILE, f + FADT_DSDT, 4)?;
    loader.add_pointer(TABLES_FILE, TABLES_FILE, f + FADT_X_FIRMWARE_CTRL, 8)?;
    loader.add_pointer(TABLES_FILE, TABLES_FILE, f + FADT_X_DSDT, 8)?;
    let r = u32_off(rsdt_off)?;
    loader.add_pointer(TABLES_FILE, TABLES_FILE, r + 36, 4)?;
    loader.add_pointer(TABLES_FILE, TABLES_FILE, r + 40, 4)?;
    // Checksums after every pointer is patched (FACS has none).
    for (sig, off, len) in &layout {
        if sig != b"FACS" {
            loader.add_checksum(
                TABLES_FILE,
                u32_off(off + 9)?,
                u32_off(*off)?,
                u32_off(*len)?,
            )?;
        }
    }

    // RSDP revision 0: signature, checksum, OEM ID, revision, RSDT address.
    let mut rsdp = Vec::with_capacity(20);
    rsdp.extend_from_slice(b"RSD PTR ");
    rsdp.push(0);
    rsdp.extend_from_slice(OEM_ID);
    rsdp.push(0);
    rsdp.extend_from_slice(&r.to_le_bytes());
    loader.allocate(RSDP_FILE, 16, Zone::FSeg)?;
    loader.add_pointer(RSDP_FILE, TABLES_FILE, 16, 4)?;
    loader.add_checksum(RSDP_FILE, 8, 0, 20)?;

    Ok(AcpiBlobs {
        tables,
        rsdp,
        loader: loader.into_bytes(),
        layout,
    })
}

/// Run a loader script the way firmware does, placing each allocated file
/// at the address `place(file)` returns: pointers patched, checksums set.
/// Returns the patched files. Used by tests (ours and the guests') to see
/// the tables as the OS will.
pub fn run_loader(
    script: &[u8],
    files: &mut std::collections::BTreeMap<String, Vec<u8>>,
    place: impl Fn(&str) -> u64,
) -> Result<(), String> {
    use super::table_loader::{decode, Command};
    for cmd in decode(script) {
        match cmd {
            Command::Allocate { file, .. } => {
                if !files.contains_key(&file) {
                    return Err(format!("ALLOCATE of unknown file {file}"));
                }
            }
            Command::AddPointer {
                dest,
                src,
                offset,
                size,
            } => {
                let base = place(&src);
                let d = files
                    .get_mut(&dest)
                    .ok_or(format!("ADD_POINTER into unknown {dest}"))?;
                let off = usize::try_from(offset).map_err(|e| e.to_string())?;
                let n = usize::from(size);
                let field = d
                    .get_mut(off..off + n)
                    .ok_or(format!("pointer at {off}+{n} outside {dest}"))?;
                let mut v = [0u8; 8];
                v[..n].copy_from_slice(field);
                let patched = u64::from_le_bytes(v).wrapping_add(base);
                field.copy_from_slice(&patched.to_le_bytes()[..n]);
            }
            Command::AddChecksum {
                file,
                result_offset,
                start,
                length,
            } => {
                let d = files
                    .get_mut(&file)
                    .ok_or(format!("ADD_CHECKSUM of unknown {file}"))?;
                let (ro, s, l) = (
                    usize::try_from(result_offset).map_err(|e| e.to_string())?,
                    usize::try_from(start).map_err(|e| e.to_string())?,
                    usize::try_from(length).map_err(|e| e.to_string())?,
                );
                let sum = sum8(
                    d.get(s..s + l)
                        .ok_or(format!("checksum range outside {file}"))?,
                );
                let b = d
                    .get_mut(ro)
                    .ok_or(format!("checksum byte outside {file}"))?;
                *b = b.wrapping_sub(sum);
            }
            Command::Other(n) => return Err(format!("unknown loader command {n}")),
        }
    }
    Ok(())
}

/// Where [`install`] put the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Installed {
    /// Guest-physical address of the RSDP (for `hvm_start_info.rsdp_paddr`
    /// or `boot_params.acpi_rsdp_addr`; it is also where a BIOS-style scan
    /// of 0xE0000-0xFFFFF finds it when placed there).
    pub rsdp: u64,
    /// Guest-physical address of the first table.
    pub tables: u64,
    /// Bytes used from `tables`.
    pub tables_len: usize,
}

/// Errors writing the tables into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Building them failed.
    #[error(transparent)]
    Build(#[from] AcpiError),
    /// The loader script did not run (a bug).
    #[error("ACPI loader script: {0}")]
    Loader(String),
    /// The chosen addresses are not guest RAM.
    #[error("ACPI tables do not fit in guest memory at {0:#x}")]
    Memory(u64),
}

/// For direct kernel boot without firmware: build the tables, relocate
/// them to `tables_at` / `rsdp_at` (running the same loader script OVMF
/// would) and write them into guest memory. Both ranges must be guest RAM
/// that the memory map marks reserved (the F-segment is customary for the
/// RSDP).
pub fn install<M: vm_memory::GuestMemory>(
    mem: &M,
    p: &AcpiPlatform,
    tables_at: u64,
    rsdp_at: u64,
) -> Result<Installed, InstallError> {
    use vm_memory::{Bytes, GuestAddress};
    let blobs = build(p)?;
    let mut files = std::collections::BTreeMap::new();
    files.insert(TABLES_FILE.to_owned(), blobs.tables);
    files.insert(RSDP_FILE.to_owned(), blobs.rsdp);
    run_loader(&blobs.loader, &mut files, |f| {
        if f == TABLES_FILE {
            tables_at
        } else {
            rsdp_at
        }
    })
    .map_err(InstallError::Loader)?;
    let tables = &files[TABLES_FILE];
    mem.write_slice(tables, GuestAddress(tables_at))
        .map_err(|_| InstallError::Memory(tables_at))?;
    mem.write_slice(&files[RSDP_FILE], GuestAddress(rsdp_at))
        .map_err(|_| InstallError::Memory(rsdp_at))?;
    Ok(Installed {
        rsdp: rsdp_at,
        tables: tables_at,
        tables_len: tables.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const TABLES_AT: u64 = 0x7FF0_0000;
    const RSDP_AT: u64 = 0xF_5A00;

    fn resolved(p: &AcpiPlatform) -> (AcpiBlobs, BTreeMap<String, Vec<u8>>) {
        let blobs = build(p).unwrap();
        let mut files = BTreeMap::new();
        files.insert(TABLES_FILE.to_owned(), blobs.tables.clone());
        files.insert(RSDP_FILE.to_owned(), blobs.rsdp.clone());
        run_loader(&blobs.loader, &mut files, |f| {
            if f == TABLES_FILE {
                TABLES_AT
            } else {
                RSDP_AT
            }
        })
        .unwrap();
        (blobs, files)
    }

    fn table<'a>(
        blobs: &AcpiBlobs,
        files: &'a BTreeMap<String, Vec<u8>>,
        sig: &[u8; 4],
    ) -> &'a [u8] {
        let (_, off, len) = blobs.layout.iter().find(|(s, _, _)| s == sig).unwrap();
        &files[TABLES_FILE][*off..off + len]
    }

    #[test]
    fn every_checksum_is_right_after_loading() {
        let (blobs, files) = resolved(&AcpiPlatform {
            cpus: 4,
            ..Default::default()
        });
        for (sig, off, len) in &blobs.layout {
            let t = &files[TABLES_FILE][*off..off + len];
            assert_eq!(&t[..4], sig);
            assert_eq!(
                u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
                *len
            );
            if sig != b"FACS" {
                assert_eq!(sum8(t), 0, "{} checksum", String::from_utf8_lossy(sig));
            }
        }
        assert_eq!(sum8(&files[RSDP_FILE]), 0);
    }

    #[test]
    fn pointers_are_relocated_to_the_allocated_addresses() {
        let (blobs, files) = resolved(&AcpiPlatform::default());
        let off = |sig: &[u8; 4]| blobs.layout.iter().find(|(s, _, _)| s == sig).unwrap().1 as u64;
        let rsdp = &files[RSDP_FILE];
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        let rsdt_addr = u64::from(u32::from_le_bytes(rsdp[16..20].try_into().unwrap()));
        assert_eq!(rsdt_addr, TABLES_AT + off(b"RSDT"));
        let fadt = table(&blobs, &files, b"FACP");
        assert_eq!(
            u64::from(u32::from_le_bytes(fadt[36..40].try_into().unwrap())),
            TABLES_AT + off(b"FACS")
        );
        assert_eq!(
            u64::from(u32::from_le_bytes(fadt[40..44].try_into().unwrap())),
            TABLES_AT + off(b"DSDT")
        );
        assert_eq!(
            u64::from_le_bytes(fadt[140..148].try_into().unwrap()),
            TABLES_AT + off(b"DSDT")
        );
        let rsdt = table(&blobs, &files, b"RSDT");
        let entries: Vec<u64> = rsdt[36..]
            .chunks(4)
            .map(|c| u64::from(u32::from_le_bytes(c.try_into().unwrap())))
            .collect();
        assert_eq!(
            entries,
            vec![TABLES_AT + off(b"FACP"), TABLES_AT + off(b"APIC")]
        );
    }

    #[test]
    fn fadt_describes_the_piix4_pm_blocks() {
        let (blobs, files) = resolved(&AcpiPlatform::default());
        let f = table(&blobs, &files, b"FACP");
        assert_eq!(f.len(), 244);
        assert_eq!(f[8], 3); // revision
        assert_eq!(&f[46..48], &[9, 0]); // SCI_INT
        assert_eq!(&f[56..60], &0x600u32.to_le_bytes()); // PM1a_EVT_BLK
        assert_eq!(&f[64..68], &0x604u32.to_le_bytes()); // PM1a_CNT_BLK
        assert_eq!(&f[76..80], &0x608u32.to_le_bytes()); // PM_TMR_BLK
        assert_eq!(&f[88..92], &[4, 2, 0, 4]); // PM1 evt/cnt, PM2, timer lengths
        assert_eq!(f[108], 0x32); // CENTURY
        assert_eq!(&f[116..128], &[1, 8, 0, 0, 0xF9, 0x0C, 0, 0, 0, 0, 0, 0]); // RESET_REG
        assert_eq!(f[128], 6); // RESET_VALUE
    }

    #[test]
    fn madt_has_one_lapic_per_cpu_and_the_ioapic() {
        let (blobs, files) = resolved(&AcpiPlatform {
            cpus: 3,
            ..Default::default()
        });
        let m = table(&blobs, &files, b"APIC");
        assert_eq!(&m[36..44], &[0x00, 0x00, 0xE0, 0xFE, 1, 0, 0, 0]);
        assert_eq!(&m[44..52], &[0, 8, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&m[52..60], &[0, 8, 1, 1, 1, 0, 0, 0]);
        assert_eq!(&m[60..68], &[0, 8, 2, 2, 1, 0, 0, 0]);
        assert_eq!(
            &m[68..80],
            &[1, 12, 3, 0, 0x00, 0x00, 0xC0, 0xFE, 0, 0, 0, 0]
        );
        assert_eq!(&m[80..90], &[2, 10, 0, 0, 2, 0, 0, 0, 0, 0]); // IRQ0 -> GSI2
    }

    #[test]
    fn bad_platforms_are_refused() {
        assert_eq!(
            build(&AcpiPlatform {
                cpus: 0,
                ..Default::default()
            }),
            Err(AcpiError::NoCpus)
        );
        assert!(matches!(
            build(&AcpiPlatform {
                pci_mmio32: (0xC000_0000, 0),
                ..Default::default()
            }),
            Err(AcpiError::BadWindow { .. })
        ));
        assert!(matches!(
            build(&AcpiPlatform {
                pci_mmio64: Some((u64::MAX, 2)),
                ..Default::default()
            }),
            Err(AcpiError::BadWindow { .. })
        ));
    }

    #[test]
    fn install_writes_relocated_tables_into_guest_memory() {
        use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let at = install(&mem, &AcpiPlatform::default(), 0xE_0000, 0xF_0000).unwrap();
        assert_eq!(at.rsdp, 0xF_0000);
        let mut rsdp = [0u8; 20];
        mem.read_slice(&mut rsdp, GuestAddress(0xF_0000)).unwrap();
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum8(&rsdp), 0);
        let rsdt = u64::from(u32::from_le_bytes(rsdp[16..20].try_into().unwrap()));
        assert!(rsdt > 0xE_0000 && rsdt < 0xE_0000 + at.tables_len as u64);
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(rsdt)).unwrap();
        assert_eq!(&sig, b"RSDT");
        // Outside guest memory: an error.
        assert!(matches!(
            install(&mem, &AcpiPlatform::default(), 0xFF_F000, 0xF_0000),
            Err(InstallError::Memory(_))
        ));
    }

    /// Decode every table with ACPICA's disassembler (`iasl -d`), the tool
    /// the issue names, and check it reports no errors and sees our devices.
    #[test]
    fn iasl_disassembles_every_table_without_errors() {
        if std::process::Command::new("iasl")
            .arg("-v")
            .output()
            .is_err()
        {
            eprintln!("SKIPPED iasl_disassembles_every_table_without_errors: iasl not installed (apt-get install acpica-tools)");
            return;
        }
        let (blobs, files) = resolved(&AcpiPlatform {
            cpus: 2,
            pci_mmio64: Some((0x80_0000_0000, 0x80_0000_0000)),
            ..Default::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let mut dsl = String::new();
        for (sig, off, len) in &blobs.layout {
            let name = String::from_utf8_lossy(sig).to_lowercase();
            let path = dir.path().join(format!("{name}.dat"));
            std::fs::write(&path, &files[TABLES_FILE][*off..off + len]).unwrap();
            let out = std::process::Command::new("iasl")
                .arg("-d")
                .arg(&path)
                .current_dir(dir.path())
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "iasl -d {name}: {text}");
            assert!(
                !text.contains("Error") && !text.to_lowercase().contains("invalid"),
                "iasl -d {name}: {text}"
            );
            let d = std::fs::read_to_string(dir.path().join(format!("{name}.dsl"))).unwrap();
            assert!(!d.contains("**** Invalid"), "{name}: {d}");
            if std::env::var_os("ARBITER_DUMP_ACPI").is_some() {
                println!("{d}");
            }
            dsl.push_str(&d);
        }
        for needle in [
            "PNP0A03",
            "PNP0B00",
            "PNP0501",
            "PNP0303",
            "QEMU0002",
            "ACPI0007",
            "_PRT",
            "_S5_",
            "Address : 0000000000000CF9",
            "Local Apic Address : FEE00000",
        ] {
            assert!(dsl.contains(needle), "decoded tables lack {needle}:\n{dsl}");
        }
    }
}
