//! MC146818 CMOS RTC and NVRAM at 0x70/0x71: the wall clock (UTC from the
//! host), status registers, the memory-size bytes firmware reads
//! (0x15-0x18, 0x30/0x31, 0x34/0x35, 0x5B-0x5D) and the NMI mask (bit 7 of
//! the index port).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

/// Index port.
pub const CMOS_PORT: u64 = 0x70;

const REG_SECONDS: usize = 0x00;
const REG_MINUTES: usize = 0x02;
const REG_HOURS: usize = 0x04;
const REG_WEEKDAY: usize = 0x06;
const REG_DAY: usize = 0x07;
const REG_MONTH: usize = 0x08;
const REG_YEAR: usize = 0x09;
const REG_A: usize = 0x0A;
const REG_B: usize = 0x0B;
const REG_C: usize = 0x0C;
const REG_D: usize = 0x0D;
const REG_CENTURY: usize = 0x32;
const B_24H: u8 = 0x02;
const B_BINARY: u8 = 0x04;

/// The CMOS device.
#[derive(Debug, Clone)]
pub struct Cmos {
    index: u8,
    nmi_disabled: bool,
    nvram: [u8; 128],
    /// Seconds added to the host clock (the guest set the clock).
    offset: i64,
    now: fn() -> i64,
}

fn host_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0)
}

/// (year, month, day) from days since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl Cmos {
    /// CMOS for a machine with `below_4g` bytes of RAM under the PCI hole
    /// and `above_4g` bytes above 4 GiB.
    pub fn new(below_4g: u64, above_4g: u64) -> Self {
        Self::with_clock(below_4g, above_4g, host_now)
    }

    /// Same, with a clock source (seconds since the epoch) for tests.
    pub fn with_clock(below_4g: u64, above_4g: u64, now: fn() -> i64) -> Self {
        let mut nvram = [0u8; 128];
        nvram[REG_A] = 0x26; // 32.768 kHz time base, 1024 Hz periodic rate
        nvram[REG_B] = B_24H;
        nvram[REG_D] = 0x80; // RTC battery good
                             // Base memory: 640 KiB.
        nvram[0x15] = 0x80;
        nvram[0x16] = 0x02;
        // Extended memory 1 MiB..64 MiB in KiB.
        let ext_kib = (below_4g.saturating_sub(1 << 20) >> 10).min(0xFFFF);
        let ext = u16::try_from(ext_kib).unwrap_or(u16::MAX).to_le_bytes();
        nvram[0x17] = ext[0];
        nvram[0x18] = ext[1];
        nvram[0x30] = ext[0];
        nvram[0x31] = ext[1];
        // Memory above 16 MiB (below 4 GiB) in 64 KiB units.
        let above16 = (below_4g.saturating_sub(16 << 20) >> 16).min(0xFFFF);
        let a = u16::try_from(above16).unwrap_or(u16::MAX).to_le_bytes();
        nvram[0x34] = a[0];
        nvram[0x35] = a[1];
        // Memory above 4 GiB in 64 KiB units, 24 bits.
        let high = (above_4g >> 16).min(0xFF_FFFF).to_le_bytes();
        nvram[0x5B] = high[0];
        nvram[0x5C] = high[1];
        nvram[0x5D] = high[2];
        Cmos {
            index: 0,
            nmi_disabled: false,
            nvram,
            offset: 0,
            now,
        }
    }

    /// Whether the guest masked NMIs (bit 7 of the last index write).
    pub fn nmi_disabled(&self) -> bool {
        self.nmi_disabled
    }

    fn encode(&self, v: u32) -> u8 {
        let v = u8::try_from(v % 100).unwrap_or(0);
        if self.nvram[REG_B] & B_BINARY != 0 {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn decode(&self, v: u8) -> u32 {
        if self.nvram[REG_B] & B_BINARY != 0 {
            u32::from(v)
        } else {
            u32::from(v >> 4) * 10 + u32::from(v & 0xF)
        }
    }

    fn clock_fields(&self) -> [(usize, u32); 8] {
        let t = (self.now)() + self.offset;
        let days = t.div_euclid(86_400);
        let secs = u32::try_from(t.rem_euclid(86_400)).unwrap_or(0);
        let (y, m, d) = civil_from_days(days);
        let y = u32::try_from(y).unwrap_or(2000);
        let weekday = u32::try_from((days + 4).rem_euclid(7)).unwrap_or(0) + 1;
        [
            (REG_SECONDS, secs % 60),
            (REG_MINUTES, (secs / 60) % 60),
            (REG_HOURS, secs / 3600),
            (REG_WEEKDAY, weekday),
            (REG_DAY, d),
            (REG_MONTH, m),
            (REG_YEAR, y % 100),
            (REG_CENTURY, y / 100),
        ]
    }

    fn read_reg(&mut self, r: usize) -> u8 {
        if let Some(&(_, v)) = self.clock_fields().iter().find(|(i, _)| *i == r) {
            return self.encode(v);
        }
        match r {
            REG_C => {
                let v = self.nvram[REG_C];
                self.nvram[REG_C] = 0;
                v
            }
            _ => self.nvram.get(r).copied().unwrap_or(0xFF),
        }
    }

    fn write_reg(&mut self, r: usize, v: u8) {
        let fields = self.clock_fields();
        if fields.iter().any(|(i, _)| *i == r) {
            // The guest sets the clock: keep the difference from the host clock.
            let mut cur: Vec<(usize, u32)> = fields.to_vec();
            for f in cur.iter_mut() {
                if f.0 == r {
                    f.1 = self.decode(v);
                } else {
                    f.1 = self.decode(self.encode(f.1));
                }
            }
            let get = |i: usize| cur.iter().find(|f| f.0 == i).map(|f| f.1).unwrap_or(0);
            let year = i64::from(get(REG_CENTURY)) * 100 + i64::from(get(REG_YEAR));
            let days =
                days_from_civil(year, get(REG_MONTH).clamp(1, 12), get(REG_DAY).clamp(1, 31));
            let t = days * 86_400
                + i64::from(get(REG_HOURS)) * 3600
                + i64::from(get(REG_MINUTES)) * 60
                + i64::from(get(REG_SECONDS));
            self.offset = t - (self.now)();
            return;
        }
        match r {
            REG_A => self.nvram[REG_A] = v & 0x7F,
            REG_B => self.nvram[REG_B] = v,
            REG_C | REG_D => {}
            _ => {
                if let Some(b) = self.nvram.get_mut(r) {
                    *b = v;
                }
            }
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(b) = data.first_mut() else { return };
        *b = match offset {
            0 => self.index | if self.nmi_disabled { 0x80 } else { 0 },
            1 => self.read_reg(usize::from(self.index)),
            _ => 0xFF,
        };
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            0 => {
                self.nmi_disabled = v & 0x80 != 0;
                self.index = v & 0x7F;
            }
            1 => self.write_reg(usize::from(self.index), v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-25 10:20:30 UTC, a Wednesday.
    fn fixed() -> i64 {
        1_795_602_030
    }

    fn rd(c: &mut Cmos, r: u8) -> u8 {
        c.write(0x70, 0, &[r]);
        let mut b = [0u8];
        c.read(0x70, 1, &mut b);
        b[0]
    }

    #[test]
    fn calendar_math() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(days_from_civil(2000, 2, 29)), (2000, 2, 29));
        assert_eq!(
            days_from_civil(2026, 11, 25) * 86_400 + 10 * 3600 + 20 * 60 + 30,
            fixed()
        );
    }

    #[test]
    fn clock_in_bcd_and_binary() {
        let mut c = Cmos::with_clock(64 << 20, 0, fixed);
        assert_eq!(rd(&mut c, 0x00), 0x30);
        assert_eq!(rd(&mut c, 0x02), 0x20);
        assert_eq!(rd(&mut c, 0x04), 0x10);
        assert_eq!(rd(&mut c, 0x07), 0x25);
        assert_eq!(rd(&mut c, 0x08), 0x11);
        assert_eq!(rd(&mut c, 0x09), 0x26);
        assert_eq!(rd(&mut c, 0x32), 0x20);
        assert_eq!(rd(&mut c, 0x06), 4, "Wednesday is day 4 (Sunday = 1)");
        c.write(0x70, 0, &[0x0B]);
        c.write(0x70, 1, &[B_24H | B_BINARY]);
        assert_eq!(rd(&mut c, 0x09), 26);
        // Guest sets the year to 2030: the offset sticks.
        c.write(0x70, 0, &[0x09]);
        c.write(0x70, 1, &[30]);
        assert_eq!(rd(&mut c, 0x09), 30);
        assert_eq!(rd(&mut c, 0x08), 11);
        assert_eq!(rd(&mut c, 0x0D), 0x80);
    }

    #[test]
    fn memory_size_registers_and_nmi_mask() {
        // 3 GiB below 4 GiB and 2 GiB above.
        let mut c = Cmos::with_clock(3 << 30, 2 << 30, fixed);
        let above16 = ((3u64 << 30) - (16 << 20)) >> 16;
        assert_eq!(
            u64::from(rd(&mut c, 0x34)) | (u64::from(rd(&mut c, 0x35)) << 8),
            above16
        );
        let high = u64::from(rd(&mut c, 0x5B))
            | (u64::from(rd(&mut c, 0x5C)) << 8)
            | (u64::from(rd(&mut c, 0x5D)) << 16);
        assert_eq!(high, (2u64 << 30) >> 16);
        assert_eq!((rd(&mut c, 0x18), rd(&mut c, 0x17)), (0xFF, 0xFF));
        c.write(0x70, 0, &[0x80 | 0x0F]);
        assert!(c.nmi_disabled());
        c.write(0x70, 0, &[0x0F]);
        assert!(!c.nmi_disabled());
        let mut c = Cmos::with_clock(64 << 20, 0, fixed);
        assert_eq!((rd(&mut c, 0x34), rd(&mut c, 0x35)), (0x00, 0x03));
    }
}
