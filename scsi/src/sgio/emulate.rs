//! What the passthrough unit answers itself, or rewrites, on top of the
//! device: REPORT LUNS from our own LUN map, a user-chosen identity in
//! INQUIRY / VPD 0x80 / VPD 0x83, and mode pages hidden from the guest.

use std::sync::{Arc, RwLock};

use crate::sense::{codes, Sense};
use crate::target::Lun;

/// The LUNs the guest's target exposes, shared with whoever hot-plugs.
#[derive(Debug, Clone)]
pub struct LunMap(Arc<RwLock<Vec<Lun>>>);

impl LunMap {
    /// A map with these LUNs.
    pub fn new(luns: Vec<Lun>) -> Self {
        LunMap(Arc::new(RwLock::new(luns)))
    }
    /// Replace the LUN list.
    pub fn set(&self, luns: Vec<Lun>) {
        if let Ok(mut g) = self.0.write() {
            *g = luns;
        }
    }
    /// The LUNs, sorted, without duplicates.
    pub fn luns(&self) -> Vec<Lun> {
        let mut v = self.0.read().map(|g| g.clone()).unwrap_or_default();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// SAM-5 8-byte LUN for a single-level LUN: peripheral addressing below 256,
/// flat addressing above.
pub fn encode_lun(lun: Lun) -> [u8; 8] {
    let [hi, lo] = lun.to_be_bytes();
    if lun < 256 {
        [0, lo, 0, 0, 0, 0, 0, 0]
    } else {
        [0x40 | (hi & 0x3F), lo, 0, 0, 0, 0, 0, 0]
    }
}

/// REPORT LUNS (SPC-4 6.33): parameter data for `cdb`, or the sense to
/// answer with. The caller truncates to ALLOCATION LENGTH.
pub fn report_luns(cdb: &[u8], luns: &[Lun]) -> Result<Vec<u8>, Sense> {
    // SELECT REPORT byte 2: 00h all, 01h well-known only, 02h all.
    let select = cdb.get(2).copied().unwrap_or(0);
    let alloc = cdb
        .get(6..10)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0);
    if alloc < 16 {
        return Err(codes::INVALID_FIELD_IN_CDB.in_cdb(6, None));
    }
    let list: &[Lun] = match select {
        0x00 | 0x02 => luns,
        0x01 => &[],
        _ => return Err(codes::INVALID_FIELD_IN_CDB.in_cdb(2, Some(7))),
    };
    let len = u32::try_from(list.len() * 8).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(8 + list.len() * 8);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    for &l in list {
        out.extend_from_slice(&encode_lun(l));
    }
    Ok(out)
}

/// An identity presented instead of the device's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// T10 VENDOR IDENTIFICATION (≤ 8 ASCII bytes, space padded).
    pub vendor: Option<String>,
    /// PRODUCT IDENTIFICATION (≤ 16).
    pub product: Option<String>,
    /// PRODUCT REVISION LEVEL (≤ 4).
    pub revision: Option<String>,
    /// UNIT SERIAL NUMBER (VPD 0x80), emulated when set.
    pub serial: Option<String>,
    /// NAA designator (VPD 0x83, 8 bytes, NAA type in the top nibble),
    /// emulated when set.
    pub naa: Option<u64>,
}

fn put_ascii(dst: &mut [u8], s: &str) {
    for (i, d) in dst.iter_mut().enumerate() {
        *d = s
            .as_bytes()
            .get(i)
            .copied()
            .filter(|c| c.is_ascii_graphic() || *c == b' ')
            .unwrap_or(b' ');
    }
}

impl Identity {
    /// Whether the INQUIRY for `page` (None: standard data) is emulated or
    /// rewritten.
    pub fn touches(&self, page: Option<u8>) -> bool {
        match page {
            None => self.vendor.is_some() || self.product.is_some() || self.revision.is_some(),
            Some(0x00) => self.serial.is_some() || self.naa.is_some(),
            Some(0x80) => self.serial.is_some(),
            Some(0x83) => self.naa.is_some(),
            Some(_) => false,
        }
    }

    /// Rewrite standard INQUIRY data in place (only the bytes present).
    pub fn rewrite_standard(&self, data: &mut [u8]) {
        let fields: [(&Option<String>, std::ops::Range<usize>); 3] = [
            (&self.vendor, 8..16),
            (&self.product, 16..32),
            (&self.revision, 32..36),
        ];
        for (v, r) in fields {
            if let (Some(s), Some(dst)) = (v, data.get_mut(r)) {
                put_ascii(dst, s);
            }
        }
    }

    /// Rewrite the SUPPORTED VPD PAGES page so it lists the pages we emulate.
    pub fn rewrite_supported_pages(&self, data: &[u8]) -> Vec<u8> {
        let pdt = data.first().copied().unwrap_or(0);
        let n = usize::from(u16::from_be_bytes([
            data.get(2).copied().unwrap_or(0),
            data.get(3).copied().unwrap_or(0),
        ]));
        let mut pages: Vec<u8> = data.iter().skip(4).take(n).copied().collect();
        pages.push(0x00);
        if self.serial.is_some() {
            pages.push(0x80);
        }
        if self.naa.is_some() {
            pages.push(0x83);
        }
        pages.sort_unstable();
        pages.dedup();
        let mut out = vec![pdt, 0x00];
        out.extend_from_slice(&u16::try_from(pages.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&pages);
        out
    }

    /// VPD 0x80 UNIT SERIAL NUMBER.
    pub fn serial_page(&self, pdt: u8) -> Option<Vec<u8>> {
        let s = self.serial.as_ref()?;
        let bytes: Vec<u8> = s
            .bytes()
            .filter(|c| c.is_ascii_graphic() || *c == b' ')
            .take(251)
            .collect();
        let mut out = vec![pdt, 0x80, 0, u8::try_from(bytes.len()).unwrap_or(0)];
        out.extend_from_slice(&bytes);
        Some(out)
    }

    /// VPD 0x83 DEVICE IDENTIFICATION: an NAA designator for the logical
    /// unit, and a T10 vendor ID designator (vendor + serial or NAA).
    pub fn device_id_page(&self, pdt: u8) -> Option<Vec<u8>> {
        let naa = self.naa?;
        let mut body = vec![0x01, 0x03, 0x00, 0x08]; // binary, LU, NAA, 8 bytes
        body.extend_from_slice(&naa.to_be_bytes());
        let mut t10 = [b' '; 8];
        put_ascii(&mut t10, self.vendor.as_deref().unwrap_or("ARBITER"));
        let mut vs = t10.to_vec();
        match &self.serial {
            Some(s) => vs.extend(s.bytes().filter(|c| c.is_ascii_graphic()).take(64)),
            None => vs.extend_from_slice(format!("{naa:016x}").as_bytes()),
        }
        body.extend_from_slice(&[0x02, 0x01, 0x00, u8::try_from(vs.len()).unwrap_or(0)]);
        body.extend_from_slice(&vs);
        let mut out = vec![pdt, 0x83];
        out.extend_from_slice(&u16::try_from(body.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&body);
        Some(out)
    }
}

/// Mode pages hidden from the guest: MODE SENSE of a hidden page is refused,
/// "all pages" answers have them removed, and MODE SELECT parameter lists
/// containing them are refused (so a guest cannot change a setting the
/// device shares with other hosts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModeMask {
    /// Page codes (0x00..=0x3E) to hide, with all their subpages.
    pub hide: Vec<u8>,
}

/// MODE SENSE header length: 4 for MODE SENSE(6), 8 for (10).
fn header_len(ten: bool) -> usize {
    if ten {
        8
    } else {
        4
    }
}

/// Walk the mode pages after the header and block descriptors of mode
/// parameter data; returns (page code, start, end) per page.
/// One mode page: (page code, start, end).
type PageSpan = (u8, usize, usize);

fn pages(data: &[u8], ten: bool) -> Option<(usize, Vec<PageSpan>)> {
    let hl = header_len(ten);
    let bdl = if ten {
        usize::from(u16::from_be_bytes([*data.get(6)?, *data.get(7)?]))
    } else {
        usize::from(*data.get(3)?)
    };
    let mut at = hl + bdl;
    let mut out = Vec::new();
    while at + 2 <= data.len() {
        let code = data[at] & 0x3F;
        let spf = data[at] & 0x40 != 0;
        let len = if spf {
            4 + usize::from(u16::from_be_bytes([*data.get(at + 2)?, *data.get(at + 3)?]))
        } else {
            2 + usize::from(data[at + 1])
        };
        let end = (at + len).min(data.len());
        out.push((code, at, end));
        at = end;
    }
    Some((hl + bdl, out))
}

impl ModeMask {
    /// Whether `page` is hidden.
    pub fn hides(&self, page: u8) -> bool {
        self.hide.contains(&(page & 0x3F))
    }

    /// Check a MODE SENSE CDB: the sense to answer with if it asks for a
    /// hidden page.
    pub fn check_sense_cdb(&self, cdb: &[u8]) -> Option<Sense> {
        let page = cdb.get(2)? & 0x3F;
        // PAGE CODE: byte 2, bits 5..0.
        (page != 0x3F && self.hides(page)).then(|| codes::INVALID_FIELD_IN_CDB.in_cdb(2, Some(5)))
    }

    /// Remove hidden pages from full MODE SENSE parameter data and fix the
    /// MODE DATA LENGTH.
    pub fn strip(&self, data: &[u8], ten: bool) -> Vec<u8> {
        let Some((first, list)) = pages(data, ten) else {
            return data.to_vec();
        };
        let mut out = data[..first.min(data.len())].to_vec();
        for (code, s, e) in list {
            if !self.hides(code) {
                out.extend_from_slice(&data[s..e]);
            }
        }
        if ten {
            let l = u16::try_from(out.len().saturating_sub(2)).unwrap_or(u16::MAX);
            if out.len() >= 2 {
                out[0..2].copy_from_slice(&l.to_be_bytes());
            }
        } else if !out.is_empty() {
            out[0] = u8::try_from(out.len() - 1).unwrap_or(u8::MAX);
        }
        out
    }

    /// Check a MODE SELECT parameter list: the sense to answer with if it
    /// carries a hidden page (pointing at the page's first byte).
    pub fn check_select(&self, params: &[u8], ten: bool) -> Option<Sense> {
        let (_, list) = pages(params, ten)?;
        list.into_iter()
            .find(|(c, _, _)| self.hides(*c))
            .map(|(_, s, _)| {
                codes::INVALID_FIELD_IN_PARAM_LIST
                    .in_param(u16::try_from(s).unwrap_or(u16::MAX), Some(5))
            })
    }
}
