//! QEMU fw_cfg on x86 port I/O: selector at 0x510 (16-bit), data at 0x511
//! (8-bit), DMA address at 0x514 (high 32 bits) / 0x518 (low 32 bits,
//! writing it starts the transfer), all DMA fields big-endian.
//!
//! Items are selected by a 16-bit key. Keys below 0x20 are fixed
//! ([`keys`]), 0x19 is the file directory, and named files get keys from
//! 0x20 up in the order they are added. Reading past the end of an item
//! returns zeros (port) or fills zeros (DMA), as QEMU does. A DMA request
//! that names memory outside guest RAM gets the ERROR bit and touches
//! nothing.

use std::collections::BTreeMap;

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::bus::BusDevice;

/// First port of the device (selector). The data port is +1, DMA is +4..+12.
pub const FW_CFG_PORT_SEL: u16 = 0x510;
/// Data port.
pub const FW_CFG_PORT_DATA: u16 = 0x511;
/// DMA address port (high half; the low half at +4 triggers).
pub const FW_CFG_PORT_DMA: u16 = 0x514;
/// Ports the device occupies from [`FW_CFG_PORT_SEL`].
pub const FW_CFG_PORT_LEN: u64 = 0x0C;

/// Fixed item keys (QEMU include/standard-headers/linux/qemu_fw_cfg.h).
pub mod keys {
    /// "QEMU"
    pub const SIGNATURE: u16 = 0x00;
    /// Feature bitmap: bit 0 traditional interface, bit 1 DMA.
    pub const ID: u16 = 0x01;
    /// VM UUID, 16 bytes.
    pub const UUID: u16 = 0x02;
    /// RAM size, u64 little-endian.
    pub const RAM_SIZE: u16 = 0x03;
    /// Whether there is no graphical console, u16.
    pub const NOGRAPHIC: u16 = 0x04;
    /// Boot CPU count, u16.
    pub const NB_CPUS: u16 = 0x05;
    /// Maximum CPU count, u16.
    pub const MAX_CPUS: u16 = 0x0F;
    /// Kernel load address, u32 (direct boot).
    pub const KERNEL_ADDR: u16 = 0x07;
    /// Kernel size, u32.
    pub const KERNEL_SIZE: u16 = 0x08;
    /// Initrd load address, u32.
    pub const INITRD_ADDR: u16 = 0x0A;
    /// Initrd size, u32.
    pub const INITRD_SIZE: u16 = 0x0B;
    /// Boot menu flag, u16.
    pub const BOOT_MENU: u16 = 0x0E;
    /// Kernel entry point, u32.
    pub const KERNEL_ENTRY: u16 = 0x10;
    /// Kernel image (after the setup sectors).
    pub const KERNEL_DATA: u16 = 0x11;
    /// Initrd image.
    pub const INITRD_DATA: u16 = 0x12;
    /// Command line address, u32.
    pub const CMDLINE_ADDR: u16 = 0x13;
    /// Command line size including the NUL, u32.
    pub const CMDLINE_SIZE: u16 = 0x14;
    /// Command line bytes, NUL-terminated.
    pub const CMDLINE_DATA: u16 = 0x15;
    /// Setup address, u32.
    pub const SETUP_ADDR: u16 = 0x16;
    /// Setup size, u32.
    pub const SETUP_SIZE: u16 = 0x17;
    /// Setup sectors of a bzImage.
    pub const SETUP_DATA: u16 = 0x18;
    /// The file directory.
    pub const FILE_DIR: u16 = 0x19;
    /// First key given to a named file.
    pub const FILE_FIRST: u16 = 0x20;
}

/// Bits of the ID item.
pub const ID_TRADITIONAL: u32 = 1 << 0;
/// DMA interface present.
pub const ID_DMA: u32 = 1 << 1;

/// DMA control bits (FWCfgDmaAccess.control).
pub mod dma_ctl {
    /// Set by the device when the request failed.
    pub const ERROR: u32 = 0x01;
    /// Read the selected item into guest memory.
    pub const READ: u32 = 0x02;
    /// Advance the item offset without transferring.
    pub const SKIP: u32 = 0x04;
    /// Select the item in the upper 16 bits first.
    pub const SELECT: u32 = 0x08;
    /// Write guest memory into the selected item.
    pub const WRITE: u32 = 0x10;
}

/// Longest file name, including the terminating NUL.
pub const FILE_NAME_LEN: usize = 56;
/// Size of one FWCfgDmaAccess structure.
const DMA_ACCESS_LEN: usize = 16;

/// Errors when building the item set.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FwCfgError {
    /// File names are at most 55 bytes (plus NUL) and must be unique.
    #[error("fw_cfg file name {0:?} is empty, too long (max 55 bytes) or has a NUL")]
    BadName(String),
    /// A file of that name was already added.
    #[error("fw_cfg file {0:?} added twice")]
    Duplicate(String),
    /// Out of file keys.
    #[error("too many fw_cfg files")]
    TooManyFiles,
    /// Items are limited to 4 GiB - 1 (the directory's size field is 32 bits).
    #[error("fw_cfg item {0:?} is larger than 4 GiB")]
    TooLarge(String),
}

#[derive(Debug, Clone, Default)]
struct Item {
    data: Vec<u8>,
    writable: bool,
}

#[derive(Debug, Clone)]
struct FileEntry {
    name: String,
    key: u16,
}

/// The fw_cfg device.
#[derive(Debug)]
pub struct FwCfg<M: GuestMemory> {
    items: BTreeMap<u16, Item>,
    files: Vec<FileEntry>,
    selected: u16,
    offset: usize,
    dma_high: u32,
    mem: M,
}

impl<M: GuestMemory> FwCfg<M> {
    /// A device with the signature, ID (traditional + DMA) and an empty
    /// file directory; `mem` is guest memory, for DMA.
    pub fn new(mem: M) -> Self {
        let mut d = FwCfg {
            items: BTreeMap::new(),
            files: Vec::new(),
            selected: 0,
            offset: 0,
            dma_high: 0,
            mem,
        };
        d.items.insert(
            keys::SIGNATURE,
            Item {
                data: b"QEMU".to_vec(),
                writable: false,
            },
        );
        d.set_u32(keys::ID, ID_TRADITIONAL | ID_DMA);
        d.rebuild_directory();
        d
    }

    /// Set a fixed item to raw bytes.
    pub fn set_bytes(&mut self, key: u16, data: Vec<u8>) {
        self.items.insert(
            key,
            Item {
                data,
                writable: false,
            },
        );
    }

    /// Set a fixed item to a little-endian u16.
    pub fn set_u16(&mut self, key: u16, v: u16) {
        self.set_bytes(key, v.to_le_bytes().to_vec());
    }

    /// Set a fixed item to a little-endian u32.
    pub fn set_u32(&mut self, key: u16, v: u32) {
        self.set_bytes(key, v.to_le_bytes().to_vec());
    }

    /// Set a fixed item to a little-endian u64.
    pub fn set_u64(&mut self, key: u16, v: u64) {
        self.set_bytes(key, v.to_le_bytes().to_vec());
    }

    /// Add a named file (read-only to the guest). Returns its key.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        self.add_file_inner(name, data, false)
    }

    /// Add a named file the guest may overwrite through DMA WRITE (within
    /// its current size). Returns its key.
    pub fn add_writable_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        self.add_file_inner(name, data, true)
    }

    fn add_file_inner(
        &mut self,
        name: &str,
        data: Vec<u8>,
        writable: bool,
    ) -> Result<u16, FwCfgError> {
        if name.is_empty() || name.len() >= FILE_NAME_LEN || name.contains('\0') {
            return Err(FwCfgError::BadName(name.to_owned()));
        }
        if self.files.iter().any(|f| f.name == name) {
            return Err(FwCfgError::Duplicate(name.to_owned()));
        }
        if u32::try_from(data.len()).is_err() {
            return Err(FwCfgError::TooLarge(name.to_owned()));
        }
        let index = u16::try_from(self.files.len()).map_err(|_| FwCfgError::TooManyFiles)?;
        let key = keys::FILE_FIRST
            .checked_add(index)
            .filter(|k| *k < 0x4000)
            .ok_or(FwCfgError::TooManyFiles)?;
        self.files.push(FileEntry {
            name: name.to_owned(),
            key,
        });
        self.items.insert(key, Item { data, writable });
        self.rebuild_directory();
        Ok(key)
    }

    /// The current contents of a file (e.g. what the guest wrote).
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        let key = self.files.iter().find(|f| f.name == name)?.key;
        self.items.get(&key).map(|i| i.data.as_slice())
    }

    /// Directory layout: u32 count (BE), then per file: u32 size (BE),
    /// u16 key (BE), u16 reserved, 56-byte NUL-padded name. Files are listed
    /// sorted by name, as QEMU does.
    fn rebuild_directory(&mut self) {
        let mut sorted: Vec<&FileEntry> = self.files.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let count = u32::try_from(sorted.len()).unwrap_or(u32::MAX);
        let mut dir = count.to_be_bytes().to_vec();
        for f in sorted {
            let size = self.items.get(&f.key).map_or(0, |i| i.data.len());
            dir.extend_from_slice(&u32::try_from(size).unwrap_or(u32::MAX).to_be_bytes());
            dir.extend_from_slice(&f.key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut name = [0u8; FILE_NAME_LEN];
            name[..f.name.len()].copy_from_slice(f.name.as_bytes());
            dir.extend_from_slice(&name);
        }
        self.items.insert(
            keys::FILE_DIR,
            Item {
                data: dir,
                writable: false,
            },
        );
    }

    fn select(&mut self, key: u16) {
        self.selected = key;
        self.offset = 0;
    }

    /// The selected item's data (empty if the key names nothing). Bits 14
    /// (write channel) and 15 (arch-local) are part of the key, as in QEMU's
    /// x86 keys 0x8000.. .
    fn current(&self) -> &[u8] {
        self.items
            .get(&self.selected)
            .map_or(&[], |i| i.data.as_slice())
    }

    fn read_data_port(&mut self) -> u8 {
        let b = self.current().get(self.offset).copied().unwrap_or(0);
        if self.offset < self.current().len() {
            self.offset += 1;
        }
        b
    }

    /// Run the DMA request whose FWCfgDmaAccess structure is at `addr`.
    pub fn dma(&mut self, addr: u64) {
        let mut raw = [0u8; DMA_ACCESS_LEN];
        if self.mem.read_slice(&mut raw, GuestAddress(addr)).is_err() {
            // Nowhere to report the error: the guest named memory it has not got.
            log::warn!("fw_cfg: DMA descriptor at {addr:#x} is outside guest memory");
            return;
        }
        let control = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let length = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
        let address = u64::from_be_bytes([
            raw[8], raw[9], raw[10], raw[11], raw[12], raw[13], raw[14], raw[15],
        ]);
        let ok = self.dma_transfer(control, length, address);
        let result: u32 = if ok { 0 } else { dma_ctl::ERROR };
        // The control word goes back as 0 (done) or ERROR.
        if self
            .mem
            .write_slice(&result.to_be_bytes(), GuestAddress(addr))
            .is_err()
        {
            log::warn!("fw_cfg: cannot complete DMA descriptor at {addr:#x}");
        }
    }

    fn dma_transfer(&mut self, control: u32, length: u32, address: u64) -> bool {
        if control & dma_ctl::SELECT != 0 {
            let key = u16::try_from(control >> 16).unwrap_or(0);
            self.select(key);
        }
        let len = usize::try_from(length).unwrap_or(usize::MAX);
        if control & dma_ctl::READ != 0 {
            let data = self.current();
            let start = self.offset.min(data.len());
            let avail = data.len() - start;
            let n = avail.min(len);
            let mut buf = Vec::with_capacity(len);
            buf.extend_from_slice(&data[start..start + n]);
            buf.resize(len, 0); // past the end: zeros
            if self.mem.write_slice(&buf, GuestAddress(address)).is_err() {
                return false;
            }
            self.offset = start + n;
            true
        } else if control & dma_ctl::WRITE != 0 {
            let mut buf = vec![0u8; len];
            if self
                .mem
                .read_slice(&mut buf, GuestAddress(address))
                .is_err()
            {
                return false;
            }
            let offset = self.offset;
            let Some(item) = self.items.get_mut(&self.selected).filter(|i| i.writable) else {
                return false;
            };
            let Some(end) = offset.checked_add(len).filter(|e| *e <= item.data.len()) else {
                return false;
            };
            item.data[offset..end].copy_from_slice(&buf);
            self.offset = end;
            true
        } else if control & dma_ctl::SKIP != 0 {
            self.offset = self.offset.saturating_add(len).min(self.current().len());
            true
        } else {
            // SELECT alone (or nothing) is a valid request.
            true
        }
    }
}

impl<M: GuestMemory + Send> BusDevice for FwCfg<M> {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 2) => data.copy_from_slice(&self.selected.to_le_bytes()),
            (1, _) => {
                for b in data.iter_mut() {
                    *b = self.read_data_port();
                }
            }
            // Reading the DMA port returns the signature "QEMU CFG".
            (4..=11, _) => {
                let sig = b"QEMU CFG";
                for (i, b) in data.iter_mut().enumerate() {
                    let at = usize::try_from(offset - 4).unwrap_or(0) + i;
                    *b = sig.get(at).copied().unwrap_or(0);
                }
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, [lo, hi]) => self.select(u16::from_le_bytes([*lo, *hi])),
            // The guest writes big-endian values; the port sees their bytes in order.
            (4, [a, b, c, d]) => self.dma_high = u32::from_be_bytes([*a, *b, *c, *d]),
            (8, [a, b, c, d]) => {
                let low = u32::from_be_bytes([*a, *b, *c, *d]);
                let addr = (u64::from(self.dma_high) << 32) | u64::from(low);
                self.dma_high = 0;
                self.dma(addr);
            }
            // Writes through the data port have been ignored since QEMU 2.4.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn sel(d: &mut FwCfg<GuestMemoryMmap>, key: u16) {
        d.write(0x510, 0, &key.to_le_bytes());
    }

    fn read_port(d: &mut FwCfg<GuestMemoryMmap>, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                let mut b = [0u8];
                d.read(0x510, 1, &mut b);
                b[0]
            })
            .collect()
    }

    /// Lay a FWCfgDmaAccess at `at` and kick it through the two DMA ports.
    fn dma(d: &mut FwCfg<GuestMemoryMmap>, at: u64, control: u32, len: u32, addr: u64) -> u32 {
        let mut raw = Vec::new();
        raw.extend_from_slice(&control.to_be_bytes());
        raw.extend_from_slice(&len.to_be_bytes());
        raw.extend_from_slice(&addr.to_be_bytes());
        d.mem.write_slice(&raw, GuestAddress(at)).unwrap();
        let high = u32::try_from(at >> 32).unwrap();
        let low = u32::try_from(at & 0xFFFF_FFFF).unwrap();
        d.write(0x510, 4, &high.to_be_bytes());
        d.write(0x510, 8, &low.to_be_bytes());
        let mut c = [0u8; 4];
        d.mem.read_slice(&mut c, GuestAddress(at)).unwrap();
        u32::from_be_bytes(c)
    }

    #[test]
    fn signature_and_id_through_the_data_port() {
        let mut d = FwCfg::new(mem());
        sel(&mut d, keys::SIGNATURE);
        assert_eq!(read_port(&mut d, 6), b"QEMU\0\0"); // past the end: zeros
        sel(&mut d, keys::ID);
        assert_eq!(read_port(&mut d, 4), [0x03, 0, 0, 0]);
        let mut s = [0u8; 2];
        d.read(0x510, 0, &mut s);
        assert_eq!(u16::from_le_bytes(s), keys::ID);
        // Reselecting rewinds.
        sel(&mut d, keys::ID);
        assert_eq!(read_port(&mut d, 1), [0x03]);
        // An unknown key reads as zeros.
        sel(&mut d, 0x3fff);
        assert_eq!(read_port(&mut d, 2), [0, 0]);
    }

    #[test]
    fn dma_port_reads_the_dma_signature() {
        let mut d = FwCfg::new(mem());
        let mut b = [0u8; 8];
        for (i, byte) in b.iter_mut().enumerate() {
            let mut one = [0u8];
            d.read(0x510, 4 + u64::try_from(i).unwrap(), &mut one);
            *byte = one[0];
        }
        assert_eq!(&b, b"QEMU CFG");
    }

    #[test]
    fn file_directory_is_sorted_with_big_endian_fields() {
        let mut d = FwCfg::new(mem());
        assert_eq!(d.add_file("etc/e820", vec![1; 40]).unwrap(), 0x20);
        assert_eq!(
            d.add_file("bootorder", b"/pci@i0cf8/scsi@2\n\0".to_vec())
                .unwrap(),
            0x21
        );
        sel(&mut d, keys::FILE_DIR);
        let dir = read_port(&mut d, 4 + 2 * 64);
        assert_eq!(&dir[0..4], &[0, 0, 0, 2]); // count
                                               // First entry: "bootorder" (sorted), size 19, key 0x21.
        assert_eq!(&dir[4..12], &[0, 0, 0, 19, 0x00, 0x21, 0, 0]);
        assert_eq!(&dir[12..21], b"bootorder");
        assert!(dir[21..68].iter().all(|&b| b == 0));
        // Second: "etc/e820", size 40, key 0x20.
        assert_eq!(&dir[68..76], &[0, 0, 0, 40, 0x00, 0x20, 0, 0]);
        assert_eq!(&dir[76..84], b"etc/e820");
    }

    #[test]
    fn bad_file_names_are_refused() {
        let mut d = FwCfg::new(mem());
        assert!(matches!(
            d.add_file("", vec![]),
            Err(FwCfgError::BadName(_))
        ));
        assert!(matches!(
            d.add_file(&"x".repeat(56), vec![]),
            Err(FwCfgError::BadName(_))
        ));
        assert!(d.add_file(&"x".repeat(55), vec![]).is_ok());
        assert!(matches!(
            d.add_file(&"x".repeat(55), vec![]),
            Err(FwCfgError::Duplicate(_))
        ));
    }

    #[test]
    fn dma_select_read_skip_and_zero_fill() {
        let mut d = FwCfg::new(mem());
        let key = d.add_file("etc/test", (0u8..10).collect()).unwrap();
        // SELECT | READ 4 bytes to 0x2000.
        let ctl = (u32::from(key) << 16) | dma_ctl::SELECT | dma_ctl::READ;
        assert_eq!(dma(&mut d, 0x1000, ctl, 4, 0x2000), 0);
        let mut b = [0u8; 4];
        d.mem.read_slice(&mut b, GuestAddress(0x2000)).unwrap();
        assert_eq!(b, [0, 1, 2, 3]);
        // SKIP 2, then READ 8: bytes 6..10 then four zeros.
        assert_eq!(dma(&mut d, 0x1000, dma_ctl::SKIP, 2, 0), 0);
        assert_eq!(dma(&mut d, 0x1000, dma_ctl::READ, 8, 0x2000), 0);
        let mut b = [0xAAu8; 8];
        d.mem.read_slice(&mut b, GuestAddress(0x2000)).unwrap();
        assert_eq!(b, [6, 7, 8, 9, 0, 0, 0, 0]);
        // The port continues where DMA left off (the end): zeros.
        assert_eq!(read_port(&mut d, 1), [0]);
    }

    #[test]
    fn dma_outside_guest_memory_sets_error_and_writes_nothing_outside() {
        let mut d = FwCfg::new(mem());
        let ctl = (u32::from(keys::SIGNATURE) << 16) | dma_ctl::SELECT | dma_ctl::READ;
        // Destination past the end of RAM.
        assert_eq!(dma(&mut d, 0x1000, ctl, 4, 0xFFFF_0000), dma_ctl::ERROR);
        // Straddling the end of RAM.
        assert_eq!(dma(&mut d, 0x1000, ctl, 4, 0xFFFE), dma_ctl::ERROR);
        // A descriptor outside RAM is ignored (no panic).
        d.write(0x510, 4, &0u32.to_be_bytes());
        d.write(0x510, 8, &0x8000_0000u32.to_be_bytes());
    }

    #[test]
    fn dma_write_only_to_writable_files_and_within_size() {
        let mut d = FwCfg::new(mem());
        let ro = d.add_file("etc/ro", vec![0; 4]).unwrap();
        let rw = d.add_writable_file("etc/rw", vec![0; 4]).unwrap();
        d.mem
            .write_slice(&[9, 8, 7, 6, 5], GuestAddress(0x3000))
            .unwrap();
        let w = |k: u16| (u32::from(k) << 16) | dma_ctl::SELECT | dma_ctl::WRITE;
        assert_eq!(dma(&mut d, 0x1000, w(ro), 4, 0x3000), dma_ctl::ERROR);
        assert_eq!(d.file("etc/ro").unwrap(), &[0, 0, 0, 0]);
        assert_eq!(dma(&mut d, 0x1000, w(rw), 5, 0x3000), dma_ctl::ERROR); // too long
        assert_eq!(dma(&mut d, 0x1000, w(rw), 4, 0x3000), 0);
        assert_eq!(d.file("etc/rw").unwrap(), &[9, 8, 7, 6]);
    }

    #[test]
    fn fixed_numeric_items_are_little_endian() {
        let mut d = FwCfg::new(mem());
        d.set_u16(keys::NB_CPUS, 2);
        d.set_u64(keys::RAM_SIZE, 0x1_2345_6789);
        sel(&mut d, keys::NB_CPUS);
        assert_eq!(read_port(&mut d, 2), [2, 0]);
        sel(&mut d, keys::RAM_SIZE);
        assert_eq!(
            read_port(&mut d, 8),
            [0x89, 0x67, 0x45, 0x23, 0x01, 0, 0, 0]
        );
    }
}
