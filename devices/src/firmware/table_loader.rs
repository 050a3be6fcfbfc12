//! The `etc/table-loader` script (QEMU's "BIOS linker/loader"): commands
//! that tell firmware to allocate fw_cfg blobs in guest memory, patch
//! pointers between them and fix checksums. OVMF's AcpiPlatformDxe runs it,
//! then installs every ACPI table a pointer leads to.
//!
//! Each command is 128 bytes, little-endian: a u32 command number followed
//! by its arguments (file names are 56-byte NUL-padded strings).

use super::fw_cfg::FILE_NAME_LEN;

/// Length of one command.
pub const COMMAND_LEN: usize = 128;

/// ALLOCATE: load a file into guest memory.
pub const CMD_ALLOCATE: u32 = 1;
/// ADD_POINTER: add a file's guest address to a pointer inside another.
pub const CMD_ADD_POINTER: u32 = 2;
/// ADD_CHECKSUM: set a byte so that a range sums to zero.
pub const CMD_ADD_CHECKSUM: u32 = 3;

/// Where ALLOCATE may place a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Zone {
    /// Anywhere in memory below 4 GiB.
    High = 1,
    /// The F-segment (0xE0000-0xFFFFF), where an RSDP must be for BIOS scans.
    FSeg = 2,
}

/// Errors while building a script.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoaderError {
    /// Names must fit the 56-byte field with a NUL.
    #[error("table-loader file name {0:?} is too long")]
    NameTooLong(String),
    /// Pointers are 1, 2, 4 or 8 bytes.
    #[error("pointer size {0} is not 1, 2, 4 or 8")]
    BadPointerSize(u8),
}

/// A table-loader script under construction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableLoader {
    bytes: Vec<u8>,
}

fn name_field(name: &str) -> Result<[u8; FILE_NAME_LEN], LoaderError> {
    if name.len() >= FILE_NAME_LEN {
        return Err(LoaderError::NameTooLong(name.to_owned()));
    }
    let mut f = [0u8; FILE_NAME_LEN];
    f[..name.len()].copy_from_slice(name.as_bytes());
    Ok(f)
}

impl TableLoader {
    /// An empty script.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, cmd: u32, args: &[&[u8]]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&cmd.to_le_bytes());
        for a in args {
            self.bytes.extend_from_slice(a);
        }
        self.bytes.resize(start + COMMAND_LEN, 0);
    }

    /// ALLOCATE `file` aligned to `align` bytes in `zone`.
    pub fn allocate(&mut self, file: &str, align: u32, zone: Zone) -> Result<(), LoaderError> {
        let name = name_field(file)?;
        self.push(CMD_ALLOCATE, &[&name, &align.to_le_bytes(), &[zone as u8]]);
        Ok(())
    }

    /// ADD_POINTER: the `size`-byte little-endian value at `offset` in
    /// `dest` gets the guest address of `src` added to it (so it should hold
    /// the offset within `src` it points at).
    pub fn add_pointer(
        &mut self,
        dest: &str,
        src: &str,
        offset: u32,
        size: u8,
    ) -> Result<(), LoaderError> {
        if !matches!(size, 1 | 2 | 4 | 8) {
            return Err(LoaderError::BadPointerSize(size));
        }
        let d = name_field(dest)?;
        let s = name_field(src)?;
        self.push(CMD_ADD_POINTER, &[&d, &s, &offset.to_le_bytes(), &[size]]);
        Ok(())
    }

    /// ADD_CHECKSUM: set the byte at `result_offset` of `file` so that
    /// `length` bytes from `start` sum to zero (after pointers are patched).
    pub fn add_checksum(
        &mut self,
        file: &str,
        result_offset: u32,
        start: u32,
        length: u32,
    ) -> Result<(), LoaderError> {
        let f = name_field(file)?;
        self.push(
            CMD_ADD_CHECKSUM,
            &[
                &f,
                &result_offset.to_le_bytes(),
                &start.to_le_bytes(),
                &length.to_le_bytes(),
            ],
        );
        Ok(())
    }

    /// The script, ready to be the `etc/table-loader` file.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The script so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A decoded command (for tests and for checking scripts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// ALLOCATE
    Allocate {
        /// File.
        file: String,
        /// Alignment.
        align: u32,
        /// Zone byte.
        zone: u8,
    },
    /// ADD_POINTER
    AddPointer {
        /// Patched file.
        dest: String,
        /// File whose address is added.
        src: String,
        /// Offset of the pointer in `dest`.
        offset: u32,
        /// Pointer size.
        size: u8,
    },
    /// ADD_CHECKSUM
    AddChecksum {
        /// File.
        file: String,
        /// Checksum byte offset.
        result_offset: u32,
        /// Range start.
        start: u32,
        /// Range length.
        length: u32,
    },
    /// Anything else (skipped by firmware).
    Other(u32),
}

fn read_name(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Decode a script (whole 128-byte commands; a trailing partial one is ignored).
pub fn decode(script: &[u8]) -> Vec<Command> {
    script
        .chunks_exact(COMMAND_LEN)
        .map(|c| {
            let a = &c[4..];
            match le32(c) {
                CMD_ALLOCATE => Command::Allocate {
                    file: read_name(&a[..56]),
                    align: le32(&a[56..]),
                    zone: a[60],
                },
                CMD_ADD_POINTER => Command::AddPointer {
                    dest: read_name(&a[..56]),
                    src: read_name(&a[56..112]),
                    offset: le32(&a[112..]),
                    size: a[116],
                },
                CMD_ADD_CHECKSUM => Command::AddChecksum {
                    file: read_name(&a[..56]),
                    result_offset: le32(&a[56..]),
                    start: le32(&a[60..]),
                    length: le32(&a[64..]),
                },
                other => Command::Other(other),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_have_the_qemu_layout() {
        let mut l = TableLoader::new();
        l.allocate("etc/acpi/rsdp", 16, Zone::FSeg).unwrap();
        l.add_pointer("etc/acpi/rsdp", "etc/acpi/tables", 16, 4)
            .unwrap();
        l.add_checksum("etc/acpi/rsdp", 8, 0, 20).unwrap();
        let b = l.into_bytes();
        assert_eq!(b.len(), 3 * 128);
        // ALLOCATE: command 1, name, align 16 at +60, zone 2 at +64.
        assert_eq!(&b[0..4], &[1, 0, 0, 0]);
        assert_eq!(&b[4..17], b"etc/acpi/rsdp");
        assert_eq!(&b[60..65], &[16, 0, 0, 0, 2]);
        assert!(b[65..128].iter().all(|&x| x == 0));
        // ADD_POINTER: command 2, dest, src at +60, offset at +116, size at +120.
        assert_eq!(&b[128..132], &[2, 0, 0, 0]);
        assert_eq!(&b[128 + 60..128 + 75], b"etc/acpi/tables");
        assert_eq!(&b[128 + 116..128 + 121], &[16, 0, 0, 0, 4]);
        // ADD_CHECKSUM: command 3, file, result offset +60, start +64, length +68.
        assert_eq!(&b[256..260], &[3, 0, 0, 0]);
        assert_eq!(
            &b[256 + 60..256 + 72],
            &[8, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0]
        );
        assert_eq!(
            decode(&b),
            vec![
                Command::Allocate {
                    file: "etc/acpi/rsdp".into(),
                    align: 16,
                    zone: 2
                },
                Command::AddPointer {
                    dest: "etc/acpi/rsdp".into(),
                    src: "etc/acpi/tables".into(),
                    offset: 16,
                    size: 4
                },
                Command::AddChecksum {
                    file: "etc/acpi/rsdp".into(),
                    result_offset: 8,
                    start: 0,
                    length: 20
                },
            ]
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        let mut l = TableLoader::new();
        assert_eq!(
            l.add_pointer("a", "b", 0, 3),
            Err(LoaderError::BadPointerSize(3))
        );
        let long = "n".repeat(56);
        assert_eq!(
            l.allocate(&long, 1, Zone::High),
            Err(LoaderError::NameTooLong(long.clone()))
        );
        assert!(l.as_bytes().is_empty());
    }
}
