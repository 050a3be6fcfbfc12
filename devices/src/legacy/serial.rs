//! 16550A UART (COM1 at 0x3F8, IRQ 4) on vm-superio: output to any
//! writer, input queued by the event loop.

use std::io::Write;
use std::sync::Arc;

use crate::bus::BusDevice;
use crate::interrupt::InterruptLine;

/// COM1's base port.
pub const COM1_PORT: u64 = 0x3F8;
/// COM1's ISA IRQ.
pub const COM1_IRQ: u32 = 4;

/// vm-superio's interrupt hook, pulsing our line.
#[allow(missing_debug_implementations)]
pub struct LineTrigger(pub Arc<dyn InterruptLine>);

impl vm_superio::Trigger for LineTrigger {
    type E = crate::interrupt::InterruptError;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.trigger()
    }
}

/// Output writer that flushes after each byte (console semantics).
struct Flushing(Box<dyn Write + Send>);

impl Write for Flushing {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(b)?;
        self.0.flush()?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// The UART.
pub struct Serial {
    inner: vm_superio::Serial<LineTrigger, vm_superio::serial::NoEvents, Flushing>,
    pending_input: std::collections::VecDeque<u8>,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial")
            .field("pending_input", &self.pending_input.len())
            .finish()
    }
}

impl Serial {
    /// A UART raising `irq` and writing what the guest sends to `out`.
    pub fn new(irq: Arc<dyn InterruptLine>, out: Box<dyn Write + Send>) -> Self {
        Serial {
            inner: vm_superio::Serial::new(LineTrigger(irq), Flushing(out)),
            pending_input: std::collections::VecDeque::new(),
        }
    }

    /// Queue bytes from the host for the guest to read. Bytes that do not
    /// fit in the receive FIFO wait here until [`flush_input`](Self::flush_input).
    pub fn queue_input(&mut self, bytes: &[u8]) {
        self.pending_input.extend(bytes);
        self.flush_input();
    }

    /// Move waiting input into the FIFO as room allows. Returns how many bytes still wait.
    pub fn flush_input(&mut self) -> usize {
        while !self.pending_input.is_empty() {
            let (a, _) = self.pending_input.as_slices();
            match self.inner.enqueue_raw_bytes(a) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    self.pending_input.drain(..n);
                }
            }
        }
        self.pending_input.len()
    }
}

impl BusDevice for Serial {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Ok(off), Some(b)) = (u8::try_from(offset), data.first_mut()) {
            *b = self.inner.read(off);
        }
        // A guest reading the receive buffer may have made room.
        if offset == 0 && !self.pending_input.is_empty() {
            self.flush_input();
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let (Ok(off), Some(&b)) = (u8::try_from(offset), data.first()) {
            if let Err(e) = self.inner.write(off, b) {
                log::debug!("serial write: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::InterruptError;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Count(AtomicUsize);
    impl InterruptLine for Count {
        fn trigger(&self) -> Result<(), InterruptError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn set_level(&self, _high: bool) -> Result<(), InterruptError> {
            Ok(())
        }
    }

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
    fn output_input_and_irq() {
        let irq = Arc::new(Count::default());
        let out = Shared::default();
        let mut s = Serial::new(irq.clone(), Box::new(out.clone()));
        s.write(COM1_PORT, 0, b"h");
        s.write(COM1_PORT, 0, b"i");
        assert_eq!(&*out.0.lock().unwrap(), b"hi");
        let mut lsr = [0u8];
        s.read(COM1_PORT, 5, &mut lsr);
        assert_eq!(lsr[0] & 0x20, 0x20, "THR empty");
        assert_eq!(lsr[0] & 0x01, 0, "no data yet");
        // Enable the received-data interrupt, then feed more than the FIFO holds.
        s.write(COM1_PORT, 1, &[0x01]);
        let big: Vec<u8> = (0..100u8).collect();
        s.queue_input(&big);
        assert!(irq.0.load(Ordering::SeqCst) >= 1);
        let mut got = Vec::new();
        for _ in 0..100 {
            let mut b = [0u8];
            s.read(COM1_PORT, 5, &mut b);
            if b[0] & 1 == 0 {
                break;
            }
            s.read(COM1_PORT, 0, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, big);
        let mut wide = [0xAAu8; 4];
        s.read(COM1_PORT, 0x1000, &mut wide);
        assert_eq!(&wide[1..], &[0, 0, 0]);
    }
}
