//! MODE SENSE(6)/(10) and MODE SELECT(6)/(10): the caching (0x08), control
//! (0x0A) and informational exceptions control (0x1C) pages.

use std::sync::atomic::Ordering;

use crate::cdb::Cmd;
use crate::sense::codes;

use super::{Ctx, Disk, Fail, Res};

/// Mode pages we have, ascending (the order of page code 0x3F).
const PAGES: [u8; 3] = [0x08, 0x0A, 0x1C];

/// Page control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pc {
    Current,
    Changeable,
    Default,
}

impl Disk {
    fn mode_page(&self, code: u8, pc: Pc) -> Vec<u8> {
        let (wce, d_sense) = match pc {
            Pc::Current => (
                self.mode.wce.load(Ordering::Relaxed),
                self.mode.d_sense.load(Ordering::Relaxed),
            ),
            Pc::Default => (self.cfg.write_cache, false),
            Pc::Changeable => (true, true),
        };
        let mut p = match code {
            0x08 => {
                let mut p = vec![0u8; 20];
                p[2] = if wce { 0x04 } else { 0 }; // WCE
                p
            }
            0x0A => {
                let mut p = vec![0u8; 12];
                p[2] = if d_sense { 0x04 } else { 0 }; // D_SENSE
                if pc != Pc::Changeable {
                    p[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
                    p[8] = 0xFF; // BUSY TIMEOUT PERIOD: unlimited
                    p[9] = 0xFF;
                }
                p
            }
            _ => {
                let mut p = vec![0u8; 12];
                if pc != Pc::Changeable {
                    p[2] = 0x08; // DEXCPT: no informational exceptions
                }
                p
            }
        };
        p[0] = code;
        p[1] = u8::try_from(p.len() - 2).unwrap_or(0);
        p
    }

    pub(super) fn mode_sense(&self, ctx: &mut Ctx<'_, '_, '_>) -> Res {
        let c = &ctx.cdb;
        let ten = c.cmd() == Cmd::ModeSense10;
        let dbd = c.bit(1, 3);
        let llbaa = ten && c.bit(1, 4);
        let pc = match c.byte(2) >> 6 {
            0 => Pc::Current,
            1 => Pc::Changeable,
            2 => Pc::Default,
            _ => return Err(codes::SAVING_PARAMS_NOT_SUPPORTED.into()),
        };
        let page = c.byte(2) & 0x3F;
        let subpage = c.byte(3);
        let pages: Vec<u8> = if page == 0x3F {
            if subpage != 0 && subpage != 0xFF {
                return Err(codes::INVALID_FIELD_IN_CDB.in_cdb(3, None).into());
            }
            PAGES.to_vec()
        } else if PAGES.contains(&page) {
            if subpage != 0 {
                return Err(codes::INVALID_FIELD_IN_CDB.in_cdb(3, None).into());
            }
            vec![page]
        } else {
            return Err(codes::INVALID_FIELD_IN_CDB.in_cdb(2, Some(5)).into());
        };
        let bs = self.cfg.block_size;
        let blocks = self.blocks();
        let bd: Vec<u8> = if dbd {
            Vec::new()
        } else if llbaa {
            let mut d = blocks.to_be_bytes().to_vec();
            d.extend_from_slice(&[0, 0, 0, 0]);
            d.extend_from_slice(&bs.to_be_bytes());
            d
        } else {
            let mut d = u32::try_from(blocks)
                .unwrap_or(u32::MAX)
                .to_be_bytes()
                .to_vec();
            d.push(0);
            d.extend_from_slice(&bs.to_be_bytes()[1..]);
            d
        };
        let dev_specific = if self.cfg.read_only { 0x80 } else { 0 } | 0x10; // WP, DPOFUA
        let mut out = if ten {
            let mut h = vec![0, 0, 0, dev_specific, u8::from(llbaa && !dbd), 0, 0, 0];
            h[6..8].copy_from_slice(&u16::try_from(bd.len()).unwrap_or(0).to_be_bytes());
            h
        } else {
            vec![0, 0, dev_specific, u8::try_from(bd.len()).unwrap_or(0)]
        };
        out.extend_from_slice(&bd);
        for p in pages {
            out.extend_from_slice(&self.mode_page(p, pc));
        }
        if ten {
            let len = u16::try_from(out.len() - 2).unwrap_or(u16::MAX);
            out[0..2].copy_from_slice(&len.to_be_bytes());
        } else {
            out[0] = u8::try_from(out.len() - 1).unwrap_or(u8::MAX);
        }
        Ok(out)
    }

    pub(super) fn mode_select(&self, ctx: &mut Ctx<'_, '_, '_>) -> Res {
        let ten = ctx.cdb.cmd() == Cmd::ModeSelect10;
        if !ctx.cdb.bit(1, 4) {
            // PF = 0: vendor-specific page format, not supported.
            return Err(codes::INVALID_FIELD_IN_CDB.in_cdb(1, Some(4)).into());
        }
        if ctx.cdb.bit(1, 0) {
            // SP: no saved pages.
            return Err(codes::INVALID_FIELD_IN_CDB.in_cdb(1, Some(0)).into());
        }
        let p = ctx.params()?;
        if p.is_empty() {
            return Ok(Vec::new());
        }
        let hdr = if ten { 8 } else { 4 };
        if p.len() < hdr {
            return Err(codes::PARAM_LIST_LENGTH_ERROR.into());
        }
        let (bdlen, longlba, bdlen_at) = if ten {
            (
                usize::from(u16::from_be_bytes([p[6], p[7]])),
                p[4] & 1 != 0,
                6u16,
            )
        } else {
            (usize::from(p[3]), false, 3u16)
        };
        let bad = |byte: usize, bit: Option<u8>| -> Fail {
            codes::INVALID_FIELD_IN_PARAM_LIST
                .in_param(u16::try_from(byte).unwrap_or(u16::MAX), bit)
                .into()
        };
        let expected_bd = if longlba { 16 } else { 8 };
        if bdlen != 0 && bdlen != expected_bd {
            return Err(bad(usize::from(bdlen_at), None));
        }
        if hdr + bdlen > p.len() {
            return Err(codes::PARAM_LIST_LENGTH_ERROR.into());
        }
        if bdlen != 0 {
            let d = &p[hdr..hdr + bdlen];
            let (nblocks, blen, blen_at) = if longlba {
                let n = u64::from_be_bytes(d[0..8].try_into().unwrap_or([0; 8]));
                (n, u32::from_be_bytes([d[12], d[13], d[14], d[15]]), 12)
            } else {
                let n = u64::from(u32::from_be_bytes([d[0], d[1], d[2], d[3]]));
                (n, u32::from_be_bytes([0, d[5], d[6], d[7]]), 5)
            };
            if blen != self.cfg.block_size {
                return Err(bad(hdr + blen_at, None));
            }
            let cur = self.blocks();
            let cur_reported = if longlba {
                cur
            } else {
                cur.min(u64::from(u32::MAX))
            };
            if nblocks != 0 && nblocks != cur_reported {
                return Err(bad(hdr, None));
            }
        }
        let mut wce = self.mode.wce.load(Ordering::Relaxed);
        let mut d_sense = self.mode.d_sense.load(Ordering::Relaxed);
        let mut pos = hdr + bdlen;
        while pos < p.len() {
            if pos + 2 > p.len() {
                return Err(codes::PARAM_LIST_LENGTH_ERROR.into());
            }
            if p[pos] & 0x40 != 0 {
                return Err(bad(pos, Some(6))); // SPF: no subpages
            }
            let code = p[pos] & 0x3F;
            if !PAGES.contains(&code) {
                return Err(bad(pos, Some(5)));
            }
            let cur = self.mode_page(code, Pc::Current);
            let mask = self.mode_page(code, Pc::Changeable);
            if usize::from(p[pos + 1]) != cur.len() - 2 {
                return Err(bad(pos + 1, None));
            }
            if pos + cur.len() > p.len() {
                return Err(codes::PARAM_LIST_LENGTH_ERROR.into());
            }
            let page = &p[pos..pos + cur.len()];
            for i in 2..cur.len() {
                let diff = (page[i] ^ cur[i]) & !mask[i];
                if diff != 0 {
                    let bit = u8::try_from(7 - diff.leading_zeros()).unwrap_or(7);
                    return Err(bad(pos + i, Some(bit)));
                }
            }
            match code {
                0x08 => wce = page[2] & 0x04 != 0,
                0x0A => d_sense = page[2] & 0x04 != 0,
                _ => {}
            }
            pos += cur.len();
        }
        if !wce && self.backend.flush().is_err() {
            // Turning the write cache off makes cached writes durable first.
            return Err(codes::WRITE_ERROR.into());
        }
        let old_wce = self.mode.wce.swap(wce, Ordering::Relaxed);
        let old_d = self.mode.d_sense.swap(d_sense, Ordering::Relaxed);
        if old_wce != wce || old_d != d_sense {
            self.raise_ua_all(codes::MODE_PARAMETERS_CHANGED, Some(ctx.nexus));
        }
        Ok(Vec::new())
    }
}
