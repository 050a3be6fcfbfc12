//! Write-mostly sink ports: POST codes at 0x80 and the firmware debug
//! console at 0x402 (OVMF prints there; reads return 0xE9 like QEMU's
//! isa-debugcon so firmware can detect it).

use std::io::Write;

use crate::bus::BusDevice;

/// What a sink does with the bytes written to it.
pub struct DebugPort {
    out: Option<Box<dyn Write + Send>>,
    read_value: u8,
    last: u8,
}

impl std::fmt::Debug for DebugPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugPort")
            .field("last", &self.last)
            .finish()
    }
}

impl DebugPort {
    /// POST-code port: remembers the last code (logged at debug level).
    pub fn post_codes() -> Self {
        DebugPort {
            out: None,
            read_value: 0,
            last: 0,
        }
    }

    /// Debug console: bytes go to `out` (or nowhere).
    pub fn console(out: Option<Box<dyn Write + Send>>) -> Self {
        DebugPort {
            out,
            read_value: 0xE9,
            last: 0,
        }
    }

    /// Last byte written.
    pub fn last(&self) -> u8 {
        self.last
    }
}

impl BusDevice for DebugPort {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = if self.out.is_some() || self.read_value != 0 {
                self.read_value
            } else {
                self.last
            };
        }
    }

    fn write(&mut self, base: u64, _offset: u64, data: &[u8]) {
        let Some(&b) = data.first() else { return };
        self.last = b;
        match &mut self.out {
            Some(w) => {
                let _ = w.write_all(&data[..1]);
                if b == b'\n' {
                    let _ = w.flush();
                }
            }
            None => log::debug!("port {base:#x}: {b:#04x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn console_and_post_codes() {
        let s = Shared::default();
        let mut con = DebugPort::console(Some(Box::new(s.clone())));
        for b in b"OK\n" {
            con.write(0x402, 0, &[*b]);
        }
        assert_eq!(&*s.0.lock().unwrap(), b"OK\n");
        let mut r = [0u8; 1];
        con.read(0x402, 0, &mut r);
        assert_eq!(r, [0xE9]);
        let mut post = DebugPort::post_codes();
        post.write(0x80, 0, &[0x42]);
        post.write(0x80, 0, &[]);
        assert_eq!(post.last(), 0x42);
        post.read(0x80, 0, &mut r);
        assert_eq!(r, [0x42]);
    }
}
