//! SMBIOS tables handed to OVMF through fw_cfg the way QEMU does:
//! `etc/smbios/smbios-tables` (every structure, back to back) and
//! `etc/smbios/smbios-anchor` (an SMBIOS 3.0 entry point whose version
//! OVMF's SmbiosPlatformDxe reads; it installs the structures itself).
//!
//! Structures: type 0 (BIOS), 1 (system, with the VM's UUID — Windows
//! licensing and cluster tools read it), 3 (chassis), 4 (one per socket),
//! 16 (memory array), 17 (one per memory device), 19 (array mapped
//! address), 32 (boot information) and 127 (end). Layouts per DMTF DSP0134.

/// fw_cfg file with the structures.
pub const TABLES_FILE: &str = "etc/smbios/smbios-tables";
/// fw_cfg file with the entry point.
pub const ANCHOR_FILE: &str = "etc/smbios/smbios-anchor";

/// What the tables describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmbiosInfo {
    /// VM UUID in RFC 4122 byte order (as printed: `xxxxxxxx-xxxx-...`).
    pub uuid: [u8; 16],
    /// System product name (type 1).
    pub product: String,
    /// System serial number (type 1); the VM name by default.
    pub serial: String,
    /// Number of vCPUs (one socket, this many cores).
    pub cpus: u16,
    /// Guest RAM in bytes.
    pub memory: u64,
}

/// Size of one memory device (type 17) QEMU-style: 16 GiB each.
const DIMM_MAX: u64 = 16 << 30;

/// One structure: formatted area plus strings.
struct Structure {
    bytes: Vec<u8>,
    strings: Vec<String>,
}

impl Structure {
    fn new(kind: u8, len: u8, handle: u16) -> Self {
        let mut bytes = Vec::with_capacity(usize::from(len));
        bytes.push(kind);
        bytes.push(len);
        bytes.extend_from_slice(&handle.to_le_bytes());
        Structure {
            bytes,
            strings: Vec::new(),
        }
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
    fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(v);
        self
    }
    /// Add a string and store its 1-based number (0 = no string).
    fn string(&mut self, s: &str) -> &mut Self {
        let clean: String = s.chars().filter(|c| *c != '\0').take(64).collect();
        if clean.is_empty() {
            return self.u8(0);
        }
        self.strings.push(clean);
        let n = u8::try_from(self.strings.len()).unwrap_or(0);
        self.u8(n)
    }
    fn finish(self, out: &mut Vec<u8>) {
        debug_assert_eq!(usize::from(self.bytes[1]), self.bytes.len());
        out.extend_from_slice(&self.bytes);
        if self.strings.is_empty() {
            out.extend_from_slice(&[0, 0]);
        } else {
            for s in &self.strings {
                out.extend_from_slice(s.as_bytes());
                out.push(0);
            }
            out.push(0);
        }
    }
}

/// SMBIOS stores the first three UUID fields little-endian (DSP0134 7.2.1).
fn smbios_uuid(u: &[u8; 16]) -> [u8; 16] {
    let mut o = *u;
    o[0..4].reverse();
    o[4..6].reverse();
    o[6..8].reverse();
    o
}

/// The structure table and the 3.0 entry point.
pub fn build(info: &SmbiosInfo) -> (Vec<u8>, Vec<u8>) {
    let mut t = Vec::new();
    let push = |s: Structure, t: &mut Vec<u8>| s.finish(t);

    // Type 0: BIOS information (3.1 layout, 26 bytes).
    let mut s = Structure::new(0, 0x1A, 0x0000);
    s.string("Arbiter")
        .string(env!("CARGO_PKG_VERSION"))
        .u16(0xE800) // starting address segment
        .string("11/25/2026")
        .u8(0) // ROM size: see extended size
        .u64(1 << 3) // characteristics not supported
        .u8(0) // extension byte 1
        .u8((1 << 3) | (1 << 4)) // extension byte 2: targeted content distribution, UEFI
        .u8(0)
        .u8(0) // system BIOS major/minor
        .u8(0xFF)
        .u8(0xFF) // no embedded controller
        .u16(0); // extended ROM size
    push(s, &mut t);

    // Type 1: system information (27 bytes).
    let mut s = Structure::new(1, 0x1B, 0x0100);
    s.string("Arbiter")
        .string(&info.product)
        .string(env!("CARGO_PKG_VERSION"))
        .string(&info.serial)
        .raw(&smbios_uuid(&info.uuid))
        .u8(0x06) // wake-up type: power switch
        .string("")
        .string("Virtual Machine");
    push(s, &mut t);

    // Type 3: chassis (22 bytes, no contained elements).
    let mut s = Structure::new(3, 0x16, 0x0300);
    s.string("Arbiter")
        .u8(0x01) // type: other
        .string("")
        .string("")
        .string("")
        .u8(0x03) // boot-up state: safe
        .u8(0x03) // power supply state: safe
        .u8(0x03) // thermal state: safe
        .u8(0x02) // security status: unknown
        .u32(0) // OEM defined
        .u8(0) // height
        .u8(0) // power cords
        .u8(0) // contained element count
        .u8(0) // contained element record length
        .string("");
    push(s, &mut t);

    // Type 4: one processor socket with all vCPUs as cores (3.0 layout, 48 bytes).
    let cores = info.cpus.max(1);
    let c8 = u8::try_from(cores).unwrap_or(0xFF);
    let mut s = Structure::new(4, 0x30, 0x0400);
    s.string("CPU 0")
        .u8(0x03) // processor type: central
        .u8(0x01) // family: other
        .string("Arbiter")
        .u64(0) // processor ID
        .string("")
        .u8(0) // voltage
        .u16(0) // external clock: unknown
        .u16(2000) // max speed MHz
        .u16(2000) // current speed MHz
        .u8(0x41) // status: populated, enabled
        .u8(0x01) // upgrade: other
        .u16(0xFFFF)
        .u16(0xFFFF)
        .u16(0xFFFF) // no caches
        .string("")
        .string("")
        .string("")
        .u8(c8) // core count
        .u8(c8) // cores enabled
        .u8(c8) // thread count
        .u16(0x0004) // characteristics: 64-bit capable
        .u16(0x0001) // family 2: other
        .u16(cores)
        .u16(cores)
        .u16(cores); // core count 2, enabled 2, thread count 2
    push(s, &mut t);

    // Type 16: physical memory array (23 bytes).
    let dimms = info.memory.div_ceil(DIMM_MAX).max(1);
    let kib = info.memory >> 10;
    let mut s = Structure::new(16, 0x17, 0x1000);
    s.u8(0x01) // location: other
        .u8(0x03) // use: system memory
        .u8(0x06) // error correction: multi-bit ECC
        .u32(u32::try_from(kib).unwrap_or(0x8000_0000))
        .u16(0xFFFE) // no error information
        .u16(u16::try_from(dimms).unwrap_or(u16::MAX))
        .u64(if u32::try_from(kib).is_ok() {
            0
        } else {
            info.memory
        });
    push(s, &mut t);

    // Type 17: memory devices (2.8 layout, 40 bytes).
    let mut left = info.memory;
    for i in 0..dimms {
        let size = left.min(DIMM_MAX);
        left -= size;
        let mib = size >> 20;
        let handle = 0x1100 + u16::try_from(i).unwrap_or(0xFF);
        let mut s = Structure::new(17, 0x28, handle);
        s.u16(0x1000) // array handle
            .u16(0xFFFE) // no error information
            .u16(0xFFFF)
            .u16(0xFFFF) // total/data width unknown
            .u16(if mib < 0x7FFF {
                u16::try_from(mib).unwrap_or(0x7FFF)
            } else {
                0x7FFF
            })
            .u8(0x09) // form factor: DIMM
            .u8(0) // device set
            .string(&format!("DIMM {i}"))
            .string("")
            .u8(0x07) // type: RAM
            .u16(0x0002) // type detail: other
            .u16(0) // speed unknown
            .string("Arbiter")
            .string("")
            .string("")
            .string("")
            .u8(0) // attributes
            .u32(if mib < 0x7FFF {
                0
            } else {
                u32::try_from(mib).unwrap_or(u32::MAX)
            })
            .u16(0) // configured speed
            .u16(0)
            .u16(0)
            .u16(0); // voltages
        push(s, &mut t);
    }

    // Type 19: memory array mapped address (31 bytes), all RAM as one range.
    let end_kib = kib.saturating_sub(1);
    let fits = u32::try_from(end_kib).is_ok();
    let mut s = Structure::new(19, 0x1F, 0x1300);
    s.u32(0)
        .u32(if fits {
            u32::try_from(end_kib).unwrap_or(0)
        } else {
            0xFFFF_FFFF
        })
        .u16(0x1000)
        .u8(u8::try_from(dimms).unwrap_or(0xFF))
        .u64(0)
        .u64(if fits {
            0
        } else {
            info.memory.saturating_sub(1)
        });
    if !fits {
        // Extended addresses are used when the 32-bit KiB fields are all ones.
        s.bytes[4..8].copy_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
    }
    push(s, &mut t);

    // Type 32: system boot information (11 bytes): no errors.
    let mut s = Structure::new(32, 0x0B, 0x2000);
    s.raw(&[0; 6]).u8(0);
    push(s, &mut t);

    // Type 127: end of table.
    push(Structure::new(127, 4, 0x7F00), &mut t);

    // SMBIOS 3.0 entry point (24 bytes); the table address is filled in by the firmware.
    let mut a = Vec::with_capacity(24);
    a.extend_from_slice(b"_SM3_");
    a.push(0); // checksum
    a.push(24); // length
    a.extend_from_slice(&[3, 0, 0]); // version 3.0.0
    a.push(1); // entry point revision
    a.push(0); // reserved
    a.extend_from_slice(&u32::try_from(t.len()).unwrap_or(u32::MAX).to_le_bytes()); // max table size
    a.extend_from_slice(&0u64.to_le_bytes()); // table address
    let sum = a.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    a[5] = 0u8.wrapping_sub(sum);
    (t, a)
}

/// One parsed structure: type, formatted area, strings.
pub type ParsedStructure = (u8, Vec<u8>, Vec<String>);

/// Walk a structure table, one entry per structure.
/// `None` if it is malformed. For tests and the guest checks.
pub fn parse(table: &[u8]) -> Option<Vec<ParsedStructure>> {
    let mut out = Vec::new();
    let mut i = 0usize;
    while i < table.len() {
        let kind = *table.get(i)?;
        let len = usize::from(*table.get(i + 1)?);
        if len < 4 {
            return None;
        }
        let formatted = table.get(i..i + len)?.to_vec();
        let mut j = i + len;
        let mut strings = Vec::new();
        if table.get(j..j + 2)? == [0, 0] {
            j += 2;
        } else {
            loop {
                let end = j + table.get(j..)?.iter().position(|&b| b == 0)?;
                if end == j {
                    j += 1;
                    break;
                }
                strings.push(String::from_utf8_lossy(&table[j..end]).into_owned());
                j = end + 1;
            }
        }
        out.push((kind, formatted, strings));
        i = j;
        if kind == 127 {
            break;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(memory: u64) -> SmbiosInfo {
        SmbiosInfo {
            uuid: [
                0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
                0xcd, 0xef,
            ],
            product: "Arbiter VM".into(),
            serial: "node1".into(),
            cpus: 2,
            memory,
        }
    }

    #[test]
    fn structures_are_well_formed_and_complete() {
        let (t, _) = build(&info(4 << 30));
        let s = parse(&t).unwrap();
        let kinds: Vec<u8> = s.iter().map(|(k, _, _)| *k).collect();
        assert_eq!(kinds, [0, 1, 3, 4, 16, 17, 19, 32, 127]);
        // Handles are unique.
        let mut handles: Vec<u16> = s
            .iter()
            .map(|(_, f, _)| u16::from_le_bytes([f[2], f[3]]))
            .collect();
        handles.sort_unstable();
        handles.dedup();
        assert_eq!(handles.len(), s.len());
        // The table ends right after type 127.
        assert_eq!(&t[t.len() - 6..], &[127, 4, 0x00, 0x7F, 0, 0]);
    }

    #[test]
    fn type1_carries_the_vm_uuid_in_smbios_byte_order() {
        let (t, _) = build(&info(1 << 30));
        let s = parse(&t).unwrap();
        let (_, f, strings) = &s[1];
        assert_eq!(
            &f[8..24],
            &[
                0x78, 0x56, 0x34, 0x12, 0xbc, 0x9a, 0xf0, 0xde, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
                0xcd, 0xef
            ]
        );
        assert_eq!(
            strings,
            &[
                "Arbiter",
                "Arbiter VM",
                env!("CARGO_PKG_VERSION"),
                "node1",
                "Virtual Machine"
            ]
        );
        assert_eq!(f[4], 1); // manufacturer string 1
        assert_eq!(f[7], 4); // serial string 4
        assert_eq!(f[25], 0); // SKU: no string
        assert_eq!(f[26], 5); // family string 5
    }

    #[test]
    fn memory_is_split_into_16g_devices() {
        let (t, _) = build(&info(40 << 30));
        let s = parse(&t).unwrap();
        let sizes: Vec<u16> = s
            .iter()
            .filter(|(k, _, _)| *k == 17)
            .map(|(_, f, _)| u16::from_le_bytes([f[12], f[13]]))
            .collect();
        assert_eq!(sizes, [16384, 16384, 8192]);
        let (_, t19, _) = s.iter().find(|(k, _, _)| *k == 19).unwrap();
        assert_eq!(&t19[8..12], &((40u32 << 20) - 1).to_le_bytes()); // ending KiB
    }

    #[test]
    fn anchor_is_an_smbios3_entry_point_with_a_good_checksum() {
        let (t, a) = build(&info(1 << 30));
        assert_eq!(a.len(), 24);
        assert_eq!(&a[..5], b"_SM3_");
        assert_eq!(&a[6..10], &[24, 3, 0, 0]);
        assert_eq!(a.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        assert_eq!(
            u32::from_le_bytes(a[12..16].try_into().unwrap()) as usize,
            t.len()
        );
    }

    #[test]
    fn parse_rejects_truncated_tables() {
        let (t, _) = build(&info(1 << 30));
        assert!(parse(&t[..t.len() - 3]).is_none());
        assert!(parse(&[1, 2]).is_none());
    }
}
