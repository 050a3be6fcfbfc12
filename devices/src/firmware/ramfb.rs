//! QEMU's `ramfb` display: the guest (OVMF's QemuRamfbDxe, which provides
//! GOP) writes a 28-byte configuration to the fw_cfg file `etc/ramfb` — the
//! framebuffer's guest-physical address, DRM fourcc, flags, width, height
//! and stride, all big-endian — and draws into guest RAM. The monitor reads
//! the pixels back to show them: here, as PNG snapshots a person can open
//! while Windows boots or runs Setup.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// The fw_cfg file name.
pub const RAMFB_FILE: &str = "etc/ramfb";
/// Size of the configuration.
pub const RAMFB_CONFIG_LEN: usize = 28;
/// DRM_FORMAT_XRGB8888 ("XR24"), the only format OVMF uses.
pub const FOURCC_XRGB8888: u32 = u32::from_le_bytes(*b"XR24");

/// Largest framebuffer we read back (OVMF offers up to 1920x1200 or so).
const MAX_DIM: u32 = 4096;

/// A framebuffer configuration the guest wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamfbConfig {
    /// Guest-physical address of the first pixel.
    pub addr: u64,
    /// DRM fourcc.
    pub fourcc: u32,
    /// Flags (unused).
    pub flags: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes per line.
    pub stride: u32,
}

/// Why a framebuffer cannot be shown.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RamfbError {
    /// The guest has not configured the display (all zeros).
    #[error("the guest has not set up the framebuffer yet")]
    NotConfigured,
    /// A pixel format other than XRGB8888.
    #[error("unsupported framebuffer format {0:#010x}")]
    Format(u32),
    /// Width/height zero or huge, or stride too small.
    #[error("bad framebuffer geometry {width}x{height} stride {stride}")]
    Geometry {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// Stride.
        stride: u32,
    },
    /// The framebuffer is not inside guest RAM.
    #[error("framebuffer at {0:#x} is outside guest memory")]
    OutsideMemory(u64),
}

impl RamfbConfig {
    /// Decode the `etc/ramfb` contents.
    pub fn parse(b: &[u8]) -> Result<Self, RamfbError> {
        let b: &[u8; RAMFB_CONFIG_LEN] = b
            .get(..RAMFB_CONFIG_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(RamfbError::NotConfigured)?;
        let be32 = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let cfg = RamfbConfig {
            addr: u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            fourcc: be32(8),
            flags: be32(12),
            width: be32(16),
            height: be32(20),
            stride: be32(24),
        };
        if cfg.addr == 0 && cfg.width == 0 {
            return Err(RamfbError::NotConfigured);
        }
        if cfg.fourcc != FOURCC_XRGB8888 {
            return Err(RamfbError::Format(cfg.fourcc));
        }
        let stride_ok = u64::from(cfg.stride) >= u64::from(cfg.width) * 4;
        if cfg.width == 0
            || cfg.height == 0
            || cfg.width > MAX_DIM
            || cfg.height > MAX_DIM
            || !stride_ok
        {
            return Err(RamfbError::Geometry {
                width: cfg.width,
                height: cfg.height,
                stride: cfg.stride,
            });
        }
        Ok(cfg)
    }

    /// Read the pixels as packed RGB (3 bytes a pixel, rows top to bottom).
    pub fn read_rgb<M: GuestMemory>(&self, mem: &M) -> Result<Vec<u8>, RamfbError> {
        let w = usize::try_from(self.width).map_err(|_| RamfbError::OutsideMemory(self.addr))?;
        let h = usize::try_from(self.height).map_err(|_| RamfbError::OutsideMemory(self.addr))?;
        let mut row = vec![0u8; w * 4];
        let mut rgb = Vec::with_capacity(w * h * 3);
        for y in 0..self.height {
            let at = self
                .addr
                .checked_add(u64::from(y) * u64::from(self.stride))
                .ok_or(RamfbError::OutsideMemory(self.addr))?;
            mem.read_slice(&mut row, GuestAddress(at))
                .map_err(|_| RamfbError::OutsideMemory(at))?;
            for px in row.chunks_exact(4) {
                // XRGB8888 little-endian in memory: B, G, R, X.
                rgb.extend_from_slice(&[px[2], px[1], px[0]]);
            }
        }
        Ok(rgb)
    }
}

/// CRC-32 (IEEE), as PNG chunks need.
fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// Encode packed RGB as a PNG (8-bit truecolour, zlib "stored" blocks: no
/// compression library needed, and any viewer opens it).
pub fn png_rgb(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
    let w = usize::try_from(width).unwrap_or(0);
    let h = usize::try_from(height).unwrap_or(0);
    let mut raw = Vec::with_capacity(h * (w * 3 + 1));
    for y in 0..h {
        raw.push(0); // filter: none
        let line = rgb.get(y * w * 3..(y + 1) * w * 3).unwrap_or(&[]);
        raw.extend_from_slice(line);
        raw.resize(raw.len() + (w * 3 - line.len()), 0);
    }
    let mut z = vec![0x78, 0x01];
    let mut blocks = raw.chunks(65535).peekable();
    if blocks.peek().is_none() {
        z.extend_from_slice(&[1, 0, 0, 0xFF, 0xFF]);
    }
    while let Some(block) = blocks.next() {
        let last = u8::from(blocks.peek().is_none());
        let len = u16::try_from(block.len()).unwrap_or(u16::MAX);
        z.push(last);
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(block);
    }
    z.extend_from_slice(&adler32(&raw).to_be_bytes());

    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // depth 8, RGB, deflate, filter 0, no interlace
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &z);
    chunk(&mut png, b"IEND", &[]);
    png
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn config(addr: u64, w: u32, h: u32, stride: u32) -> Vec<u8> {
        let mut b = addr.to_be_bytes().to_vec();
        for v in [FOURCC_XRGB8888, 0, w, h, stride] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b
    }

    #[test]
    fn parse_checks_format_and_geometry() {
        let c = RamfbConfig::parse(&config(0x10_0000, 640, 480, 2560)).unwrap();
        assert_eq!(
            (c.addr, c.width, c.height, c.stride),
            (0x10_0000, 640, 480, 2560)
        );
        assert_eq!(RamfbConfig::parse(&[0; 28]), Err(RamfbError::NotConfigured));
        assert_eq!(RamfbConfig::parse(&[0; 5]), Err(RamfbError::NotConfigured));
        assert!(matches!(
            RamfbConfig::parse(&config(0x1000, 640, 480, 100)),
            Err(RamfbError::Geometry { .. })
        ));
        let mut bad = config(0x1000, 8, 8, 32);
        bad[8..12].copy_from_slice(b"RG16");
        assert!(matches!(
            RamfbConfig::parse(&bad),
            Err(RamfbError::Format(_))
        ));
    }

    #[test]
    fn pixels_are_read_from_guest_memory_and_bounds_checked() {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        // 2x2, stride 16: red, green / blue, white.
        mem.write_slice(&[0, 0, 0xFF, 0, 0, 0xFF, 0, 0], GuestAddress(0x1000))
            .unwrap();
        mem.write_slice(&[0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0], GuestAddress(0x1010))
            .unwrap();
        let c = RamfbConfig::parse(&config(0x1000, 2, 2, 16)).unwrap();
        assert_eq!(
            c.read_rgb(&mem).unwrap(),
            [0xFF, 0, 0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]
        );
        let outside = RamfbConfig::parse(&config(0xFFF0, 2, 2, 16)).unwrap();
        assert!(matches!(
            outside.read_rgb(&mem),
            Err(RamfbError::OutsideMemory(_))
        ));
    }

    #[test]
    fn png_encoding_is_valid() {
        let png = png_rgb(2, 1, &[0xFF, 0, 0, 0, 0xFF, 0]);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[8..16], &[0, 0, 0, 13, b'I', b'H', b'D', b'R']);
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        assert_eq!(
            &png[png.len() - 8..],
            &[b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82]
        );
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
        // Python's zlib decodes our stream back to the filtered rows, when python3 is around.
        let ok = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import sys,zlib,struct;d=open(sys.argv[1],'rb').read();i=d.index(b'IDAT');\
                 n=struct.unpack('>I',d[i-4:i])[0];r=zlib.decompress(d[i+4:i+4+n]);\
                 assert r==bytes([0,255,0,0,0,255,0]),r",
            )
            .arg({
                let p =
                    std::env::temp_dir().join(format!("arbiter-ramfb-{}.png", std::process::id()));
                std::fs::write(&p, &png).unwrap();
                p
            })
            .status();
        if let Ok(st) = ok {
            assert!(st.success(), "python3 zlib could not decode the PNG data");
        }
    }
}
