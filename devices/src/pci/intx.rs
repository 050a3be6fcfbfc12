//! PCI INTx through the PIIX3 PIRQ router to the IOAPIC/PIC.
//!
//! Slot `s`, pin `p` (1 = INTA#) drives PIRQ[(s + p - 1) mod 4]; the
//! PIIX3's route register 0x60 + n picks the ISA IRQ (bits 3:0, bit 7 =
//! disabled). INTx is level-triggered and active-high towards the
//! in-kernel IOAPIC (as QEMU's tables declare it).
//!
//! Alternatively ([`IntxRouter::set_direct_gsis`]) PIRQ n goes straight to
//! a fixed IOAPIC input (e.g. GSIs 16-19), for ACPI tables whose `_PRT`
//! names GSIs instead of PIRQ link devices; the route registers are then
//! ignored.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::interrupt::{InterruptError, InterruptLine, InterruptManager};
use crate::pci::{PciConfiguration, PciDevice, PciIds};

/// Default PIRQ routes (A..D → IRQ 10, 10, 11, 11), as SeaBIOS programs them.
pub const DEFAULT_PIRQ_ROUTES: u32 = 0x0B0B_0A0A;
const PIRQ_REG: usize = 0x60 / 4;

/// The PIIX3 PCI-to-ISA bridge, 00:01.0 (8086:7000), owner of the PIRQ routes.
pub struct Piix3IsaBridge {
    config: PciConfiguration,
    routes: Arc<AtomicU32>,
}

impl std::fmt::Debug for Piix3IsaBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Piix3IsaBridge")
            .field("routes", &self.routes.load(Ordering::SeqCst))
            .finish()
    }
}

impl Default for Piix3IsaBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl Piix3IsaBridge {
    /// Multi-function header, PIRQ routes at their defaults.
    pub fn new() -> Self {
        let mut config = PciConfiguration::new(PciIds {
            vendor: 0x8086,
            device: 0x7000,
            class: 0x06_01_00,
            revision: 0,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
            header_type: 0x80,
        });
        config.set_reg(PIRQ_REG, DEFAULT_PIRQ_ROUTES);
        config.set_writable(PIRQ_REG, 0x8F8F_8F8F);
        Piix3IsaBridge {
            config,
            routes: Arc::new(AtomicU32::new(DEFAULT_PIRQ_ROUTES)),
        }
    }

    /// The live route registers (shared with [`IntxRouter`]).
    pub fn routes(&self) -> Arc<AtomicU32> {
        self.routes.clone()
    }
}

impl PciDevice for Piix3IsaBridge {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }

    fn write_config(
        &mut self,
        reg: usize,
        offset: u64,
        data: &[u8],
    ) -> Option<crate::pci::BarMove> {
        self.config.write_reg(reg, offset, data);
        if reg == PIRQ_REG {
            self.routes
                .store(self.config.read_reg(PIRQ_REG), Ordering::SeqCst);
        }
        None
    }

    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xFF);
    }

    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

/// Hands out INTx lines for slots.
#[derive(Clone)]
pub struct IntxRouter {
    routes: Arc<AtomicU32>,
    direct: Arc<Mutex<Option<[u32; 4]>>>,
    irqs: Arc<dyn InterruptManager>,
}

impl std::fmt::Debug for IntxRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntxRouter").finish()
    }
}

impl IntxRouter {
    /// Routes from the PIIX3's registers to `irqs`' lines.
    pub fn new(routes: Arc<AtomicU32>, irqs: Arc<dyn InterruptManager>) -> Self {
        IntxRouter {
            routes,
            direct: Arc::new(Mutex::new(None)),
            irqs,
        }
    }

    /// Route PIRQ A-D straight to these GSIs from now on (all lines of
    /// this router and its clones).
    pub fn set_direct_gsis(&self, gsis: [u32; 4]) {
        *self.direct.lock().unwrap_or_else(|e| e.into_inner()) = Some(gsis);
    }

    /// PIRQ index for slot `slot`, pin `pin` (1..=4).
    pub fn pirq_index(slot: u8, pin: u8) -> u8 {
        (slot + pin.saturating_sub(1)) & 3
    }

    /// The GSI PIRQ `n` reaches now: the ISA IRQ its route register
    /// names (if enabled), or the fixed GSI in direct mode.
    pub fn routed_irq(&self, n: u8) -> Option<u32> {
        if let Some(g) = *self.direct.lock().unwrap_or_else(|e| e.into_inner()) {
            return Some(g[usize::from(n & 3)]);
        }
        let r = self.routes.load(Ordering::SeqCst).to_le_bytes()[usize::from(n & 3)];
        (r & 0x80 == 0 && r & 0x0F >= 3).then_some(u32::from(r & 0x0F))
    }

    /// The line for `slot`/`pin`.
    pub fn line(&self, slot: u8, pin: u8) -> Arc<IntxLine> {
        Arc::new(IntxLine {
            router: self.clone(),
            pirq: Self::pirq_index(slot, pin),
            asserted_on: Mutex::new(None),
        })
    }
}

/// One function's INTx pin.
pub struct IntxLine {
    router: IntxRouter,
    pirq: u8,
    /// The GSI we drove high (so deassertion reaches it even if re-routed).
    asserted_on: Mutex<Option<u32>>,
}

impl std::fmt::Debug for IntxLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntxLine")
            .field("pirq", &self.pirq)
            .finish()
    }
}

impl InterruptLine for IntxLine {
    fn trigger(&self) -> Result<(), InterruptError> {
        self.set_level(true)?;
        self.set_level(false)
    }

    fn set_level(&self, high: bool) -> Result<(), InterruptError> {
        let mut on = self.asserted_on.lock().unwrap_or_else(|e| e.into_inner());
        if high {
            if on.is_some() {
                return Ok(());
            }
            if let Some(irq) = self.router.routed_irq(self.pirq) {
                self.router.irqs.line(irq)?.set_level(true)?;
                *on = Some(irq);
            }
        } else if let Some(irq) = on.take() {
            self.router.irqs.line(irq)?.set_level(false)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::MsiInterruptGroup;

    #[derive(Default)]
    struct Lines(Mutex<Vec<(u32, bool)>>);
    struct One(Arc<Lines>, u32);
    impl InterruptLine for One {
        fn trigger(&self) -> Result<(), InterruptError> {
            Ok(())
        }
        fn set_level(&self, high: bool) -> Result<(), InterruptError> {
            self.0 .0.lock().unwrap().push((self.1, high));
            Ok(())
        }
    }
    struct Mgr(Arc<Lines>);
    impl InterruptManager for Mgr {
        fn create_msi_group(&self, _: u16) -> Result<Arc<dyn MsiInterruptGroup>, InterruptError> {
            Err(InterruptError::NoGsi)
        }
        fn line(&self, gsi: u32) -> Result<Arc<dyn InterruptLine>, InterruptError> {
            Ok(Arc::new(One(self.0.clone(), gsi)))
        }
    }

    #[test]
    fn pirq_routing_follows_piix3_registers() {
        let lines = Arc::new(Lines::default());
        let mut isa = Piix3IsaBridge::new();
        let router = IntxRouter::new(isa.routes(), Arc::new(Mgr(lines.clone())));
        // Slot 2 INTA# -> PIRQC -> IRQ 11.
        let l = router.line(2, 1);
        l.set_level(true).unwrap();
        l.set_level(true).unwrap();
        l.set_level(false).unwrap();
        assert_eq!(*lines.0.lock().unwrap(), vec![(11, true), (11, false)]);
        // Guest re-routes PIRQC to IRQ 5 while the line is high: the
        // deassertion still reaches IRQ 11.
        l.set_level(true).unwrap();
        isa.write_config(PIRQ_REG, 2, &[0x05]);
        l.set_level(false).unwrap();
        l.set_level(true).unwrap();
        assert_eq!(
            lines.0.lock().unwrap()[2..],
            [(11, true), (11, false), (5, true)]
        );
        // Disabled route: nothing is driven.
        l.set_level(false).unwrap();
        isa.write_config(PIRQ_REG, 2, &[0x80]);
        let n = lines.0.lock().unwrap().len();
        l.set_level(true).unwrap();
        assert_eq!(lines.0.lock().unwrap().len(), n);
        assert_eq!(IntxRouter::pirq_index(3, 2), 0);
        // Direct mode: PIRQC -> GSI 18 whatever the registers say.
        router.set_direct_gsis([16, 17, 18, 19]);
        let n = lines.0.lock().unwrap().len();
        l.set_level(true).unwrap();
        l.set_level(false).unwrap();
        assert_eq!(lines.0.lock().unwrap()[n..], [(18, true), (18, false)]);
        assert_eq!(router.routed_irq(0), Some(16));
    }
}
