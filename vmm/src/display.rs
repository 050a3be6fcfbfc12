//! `--display png=PATH[,interval=MS]`: the guest's screen as PNG pictures.
//!
//! The screen is QEMU's `ramfb` ([`devices::firmware::ramfb`]): the guest
//! (OVMF's QemuRamfbDxe) writes the framebuffer's address and geometry to the
//! fw_cfg file `etc/ramfb` and draws into its own RAM. A thread looks at it
//! every interval and rewrites PATH (through a temporary file and a rename,
//! so a viewer never sees half a file) when the picture changed; when the VM
//! stops, one last picture is written. A guest can never make this touch
//! memory outside guest RAM: the pixels are read through the guest memory
//! map, which refuses addresses it does not hold.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use devices::bus::BusDevice;
use devices::firmware::fw_cfg::FwCfg;
use devices::firmware::ramfb::{png_rgb, RamfbConfig, RamfbError, RAMFB_FILE};
use vm_memory::GuestMemoryMmap;

use crate::config::DisplayConfig;

/// Errors writing a picture.
#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    /// The guest's framebuffer cannot be read.
    #[error("framebuffer: {0}")]
    Ramfb(#[from] RamfbError),
    /// The PNG file cannot be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The display thread could not be started.
    #[error("starting the display thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Turns the guest's framebuffer into PNG files.
#[derive(Debug)]
pub struct Screen {
    memory: GuestMemoryMmap,
    path: PathBuf,
    /// The last picture written: (config, pixels).
    last: Option<(RamfbConfig, Vec<u8>)>,
    /// The last error reported (each distinct error is logged once).
    last_error: Option<String>,
}

impl Screen {
    /// A screen reading `memory` and writing `path`.
    pub fn new(memory: GuestMemoryMmap, path: &Path) -> Self {
        Screen {
            memory,
            path: path.to_owned(),
            last: None,
            last_error: None,
        }
    }

    /// Look at the framebuffer the guest configured (`etc/ramfb` contents)
    /// and write PATH if the picture differs from the last one written.
    /// Returns whether a file was written; not configured yet is `Ok(false)`.
    pub fn refresh(&mut self, ramfb: &[u8]) -> Result<bool, DisplayError> {
        let cfg = match RamfbConfig::parse(ramfb) {
            Ok(c) => c,
            Err(RamfbError::NotConfigured) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let rgb = cfg.read_rgb(&self.memory)?;
        if self
            .last
            .as_ref()
            .is_some_and(|(c, p)| *c == cfg && *p == rgb)
        {
            return Ok(false);
        }
        let png = png_rgb(cfg.width, cfg.height, &rgb);
        write_atomically(&self.path, &png)?;
        self.last = Some((cfg, rgb));
        Ok(true)
    }

    /// [`Screen::refresh`], logging each new error once on stderr.
    fn refresh_logged(&mut self, ramfb: &[u8]) {
        match self.refresh(ramfb) {
            Ok(_) => self.last_error = None,
            Err(e) => {
                let msg = e.to_string();
                if self.last_error.as_deref() != Some(msg.as_str()) {
                    eprintln!("arbiter: --display: {msg}");
                    self.last_error = Some(msg);
                }
            }
        }
    }
}

fn write_atomically(path: &Path, data: &[u8]) -> Result<(), DisplayError> {
    let err = |source| DisplayError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, data).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// What the device and the refresh thread share.
#[derive(Debug)]
struct Shared {
    /// The last `etc/ramfb` contents the guest wrote.
    ramfb: Mutex<Vec<u8>>,
    screen: Mutex<Screen>,
    stop: AtomicBool,
}

impl Shared {
    /// Stop the thread and write the last picture (once).
    fn finish(&self) {
        if !self.stop.swap(true, Ordering::AcqRel) {
            self.refresh();
        }
    }

    fn refresh(&self) {
        let ramfb = self.ramfb.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.screen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refresh_logged(&ramfb);
    }
}

/// fw_cfg with the screen beside it: the device the port bus holds when
/// `--display` is given. It forwards every access to fw_cfg and notes what
/// the guest wrote to `etc/ramfb`; when the VM goes away (the bus drops
/// it), it stops the refresh thread and writes the last picture.
pub struct FwCfgWithScreen {
    fw_cfg: FwCfg<GuestMemoryMmap>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FwCfgWithScreen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FwCfgWithScreen")
            .field("shared", &self.shared)
            .finish()
    }
}

impl BusDevice for FwCfgWithScreen {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        self.fw_cfg.read(base, offset, data);
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        self.fw_cfg.write(base, offset, data);
        // A DMA write (or anything else) may have changed etc/ramfb: 28 bytes.
        if let Some(now) = self.fw_cfg.file(RAMFB_FILE) {
            let mut seen = self.shared.ramfb.lock().unwrap_or_else(|e| e.into_inner());
            if seen.as_slice() != now {
                seen.clear();
                seen.extend_from_slice(now);
            }
        }
    }
}

impl Drop for FwCfgWithScreen {
    fn drop(&mut self) {
        self.shared.finish();
    }
}

/// Every screen attached in this process (the VM may be rebuilt on reboot).
static SCREENS: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

/// Write the last picture of every live screen now and stop their threads:
/// called when arbiter is about to exit (the VM's devices may not be
/// dropped before the process ends).
pub fn flush_all() {
    let screens = std::mem::take(&mut *SCREENS.lock().unwrap_or_else(|e| e.into_inner()));
    for s in screens.iter().filter_map(Weak::upgrade) {
        s.finish();
    }
}

/// Wrap `fw_cfg` with a screen writing `config.png`, and start the thread
/// that refreshes it every `config.interval` until the returned device is
/// dropped.
pub fn attach(
    fw_cfg: FwCfg<GuestMemoryMmap>,
    memory: GuestMemoryMmap,
    config: &DisplayConfig,
) -> Result<Arc<Mutex<FwCfgWithScreen>>, DisplayError> {
    let shared = Arc::new(Shared {
        ramfb: Mutex::new(
            fw_cfg
                .file(RAMFB_FILE)
                .map(<[u8]>::to_vec)
                .unwrap_or_default(),
        ),
        screen: Mutex::new(Screen::new(memory, &config.png)),
        stop: AtomicBool::new(false),
    });
    {
        // A rebuilt VM (reboot) replaces the screens of the one before.
        let mut all = SCREENS.lock().unwrap_or_else(|e| e.into_inner());
        for old in all.drain(..).filter_map(|w| w.upgrade()) {
            old.stop.store(true, Ordering::Release);
        }
        all.push(Arc::downgrade(&shared));
    }
    let thread_shared = shared.clone();
    let interval = config.interval;
    std::thread::Builder::new()
        .name("display".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            if thread_shared.stop.load(Ordering::Acquire) {
                return;
            }
            thread_shared.refresh();
        })
        .map_err(DisplayError::Thread)?;
    Ok(Arc::new(Mutex::new(FwCfgWithScreen { fw_cfg, shared })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::firmware::ramfb::FOURCC_XRGB8888;
    use vm_memory::{Bytes, GuestAddress};

    fn ramfb_config(addr: u64, w: u32, h: u32, stride: u32) -> Vec<u8> {
        let mut b = addr.to_be_bytes().to_vec();
        for v in [FOURCC_XRGB8888, 0, w, h, stride] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b
    }

    /// Decode a PNG with the `png` crate: (width, height, RGB bytes).
    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let dec = png::Decoder::new(std::fs::File::open(path).unwrap());
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    /// A 3x2 framebuffer with stride padding, XRGB8888 in guest memory,
    /// becomes a PNG whose decoded pixels are the same colours; unchanged
    /// pictures are not rewritten, changed ones are.
    #[test]
    fn framebuffer_becomes_a_png_and_only_changes_are_written() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("screen.png");
        let mut screen = Screen::new(mem.clone(), &path);
        assert!(!screen.refresh(&[0; 28]).unwrap(), "not configured yet");
        assert!(!path.exists());
        // Row 0: red, green, blue; row 1: white, black, (0x12,0x34,0x56).
        // Memory order per pixel: B, G, R, X. Stride 16 (4 bytes of padding).
        let rows: [&[u8]; 2] = [
            &[
                0, 0, 0xFF, 0, 0, 0xFF, 0, 0, 0xFF, 0, 0, 0, 0xEE, 0xEE, 0xEE, 0xEE,
            ],
            &[
                0xFF, 0xFF, 0xFF, 0x99, 0, 0, 0, 0, 0x56, 0x34, 0x12, 0, 0xEE, 0xEE, 0xEE, 0xEE,
            ],
        ];
        mem.write_slice(rows[0], GuestAddress(0x8000)).unwrap();
        mem.write_slice(rows[1], GuestAddress(0x8010)).unwrap();
        let cfg = ramfb_config(0x8000, 3, 2, 16);
        assert!(screen.refresh(&cfg).unwrap());
        let (w, h, rgb) = decode(&path);
        assert_eq!((w, h), (3, 2));
        assert_eq!(
            rgb,
            [
                0xFF, 0, 0, 0, 0xFF, 0, 0, 0, 0xFF, //
                0xFF, 0xFF, 0xFF, 0, 0, 0, 0x12, 0x34, 0x56
            ]
        );
        assert!(
            !screen.refresh(&cfg).unwrap(),
            "same picture: not rewritten"
        );
        mem.write_slice(&[0, 0xFF, 0], GuestAddress(0x8014))
            .unwrap();
        assert!(screen.refresh(&cfg).unwrap());
        assert_eq!(&decode(&path).2[9..15], &[0xFF, 0xFF, 0xFF, 0, 0xFF, 0]);
        assert!(!dir.path().join("screen.png.tmp").exists());
    }

    #[test]
    fn bad_framebuffers_are_errors_not_reads_outside_ram() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut screen = Screen::new(mem, &dir.path().join("s.png"));
        assert!(matches!(
            screen.refresh(&ramfb_config(0xFFFF_0000, 64, 64, 256)),
            Err(DisplayError::Ramfb(RamfbError::OutsideMemory(_)))
        ));
        assert!(matches!(
            screen.refresh(&ramfb_config(0x1000, 64, 64, 100)),
            Err(DisplayError::Ramfb(RamfbError::Geometry { .. }))
        ));
        let mut other = ramfb_config(0x1000, 4, 4, 16);
        other[8..12].copy_from_slice(b"AR24");
        assert!(matches!(
            screen.refresh(&other),
            Err(DisplayError::Ramfb(RamfbError::Format(_)))
        ));
        assert!(!dir.path().join("s.png").exists());
    }

    /// Through fw_cfg as a guest does it: a DMA write of `etc/ramfb`
    /// (select + write, big-endian descriptor) is picked up by the refresh
    /// thread, and dropping the device writes the final picture.
    #[test]
    fn attached_screen_follows_fw_cfg_dma_and_writes_on_drop() {
        use std::time::Duration;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("screen.png");
        let mut fw = FwCfg::new(mem.clone());
        let key = fw.add_writable_file(RAMFB_FILE, vec![0; 28]).unwrap();
        let dev = attach(
            fw,
            mem.clone(),
            &DisplayConfig {
                png: path.clone(),
                interval: Duration::from_millis(10),
            },
        )
        .unwrap();
        // One pixel at 0x4000: B=0x10 G=0x20 R=0x30.
        mem.write_slice(&[0x10, 0x20, 0x30, 0], GuestAddress(0x4000))
            .unwrap();
        // The configuration at 0x5000, the DMA descriptor at 0x6000:
        // control = key << 16 | SELECT (0x08) | WRITE (0x10), length 28, address.
        mem.write_slice(&ramfb_config(0x4000, 1, 1, 4), GuestAddress(0x5000))
            .unwrap();
        let control = (u32::from(key) << 16) | 0x08 | 0x10;
        let mut desc = control.to_be_bytes().to_vec();
        desc.extend_from_slice(&28u32.to_be_bytes());
        desc.extend_from_slice(&0x5000u64.to_be_bytes());
        mem.write_slice(&desc, GuestAddress(0x6000)).unwrap();
        {
            let mut d = dev.lock().unwrap();
            d.write(0x510, 4, &0u32.to_be_bytes()); // 0x514: address bits 63..32
            d.write(0x510, 8, &0x6000u32.to_be_bytes()); // 0x518: bits 31..0, starts it
        }
        let status = mem.read_obj::<u32>(GuestAddress(0x6000)).unwrap();
        assert_eq!(status, 0, "DMA finished without error (control cleared)");
        let mut waited = 0;
        while !path.exists() && waited < 500 {
            std::thread::sleep(Duration::from_millis(10));
            waited += 1;
        }
        assert_eq!(decode(&path).2, [0x30, 0x20, 0x10]);
        mem.write_slice(&[0x01, 0x02, 0x03], GuestAddress(0x4000))
            .unwrap();
        drop(dev);
        assert_eq!(decode(&path).2, [0x03, 0x02, 0x01]);
    }
}
