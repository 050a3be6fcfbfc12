//! SBC-4 commands: READ/WRITE (6/10/12/16), WRITE AND VERIFY, VERIFY, READ
//! CAPACITY, SYNCHRONIZE CACHE, UNMAP, WRITE SAME, COMPARE AND WRITE, GET LBA
//! STATUS, START STOP UNIT, FORMAT UNIT.

use std::io;
use std::sync::atomic::Ordering;

use crate::cdb::{Cdb, Cmd};
use crate::sense::codes;
use crate::target::TransportError;

use super::{
    recycle_buffer, take_buffer, Ctx, Disk, Fail, Res, MAX_COMPARE_AND_WRITE_BLOCKS,
    MAX_TRANSFER_BYTES, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS,
};

/// LBA and block count of a block command, and where its count field is.
#[derive(Debug, Clone, Copy)]
struct Range {
    lba: u64,
    n: u64,
    n_at: u16,
}

fn decode(c: &Cdb<'_>) -> Range {
    match c.cmd() {
        Cmd::Read6 | Cmd::Write6 => {
            let n = u64::from(c.byte(4));
            Range {
                lba: c.be(1, 3) & 0x1F_FFFF,
                // TRANSFER LENGTH 0 means 256 blocks in the 6-byte CDBs.
                n: if n == 0 { 256 } else { n },
                n_at: 4,
            }
        }
        Cmd::Read12 | Cmd::Write12 => Range {
            lba: c.be(2, 4),
            n: c.be(6, 4),
            n_at: 6,
        },
        Cmd::Read16
        | Cmd::Write16
        | Cmd::WriteAndVerify16
        | Cmd::Verify16
        | Cmd::SynchronizeCache16
        | Cmd::WriteSame16 => Range {
            lba: c.be(2, 8),
            n: c.be(10, 4),
            n_at: 10,
        },
        // The 10-byte forms.
        _ => Range {
            lba: c.be(2, 4),
            n: c.be(7, 2),
            n_at: 7,
        },
    }
}

fn miscompare_at(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

impl Disk {
    fn bs(&self) -> u64 {
        u64::from(self.cfg.block_size)
    }

    /// LBA OUT OF RANGE unless [lba, lba+n) lies within the capacity (checked
    /// again against the backend before failing, to notice growth).
    fn check_range(&self, lba: u64, n: u64) -> Result<(), Fail> {
        let ok = |blocks: u64| lba.checked_add(n).is_some_and(|end| end <= blocks);
        if ok(self.blocks()) || (self.check_resize() && ok(self.blocks())) {
            Ok(())
        } else {
            Err(codes::LBA_OUT_OF_RANGE.into())
        }
    }

    /// Bytes of `n` blocks, refusing transfers above the block limits.
    fn transfer_bytes(&self, r: &Range) -> Result<usize, Fail> {
        let bytes = r.n.saturating_mul(self.bs());
        if bytes > MAX_TRANSFER_BYTES {
            return Err(codes::INVALID_FIELD_IN_CDB.in_cdb(r.n_at, None).into());
        }
        Ok(usize::try_from(bytes).unwrap_or(usize::MAX))
    }

    fn read_blocks(&self, lba: u64, len: usize) -> Res {
        let mut buf = take_buffer(len);
        self.backend
            .read_at(&mut buf, lba * self.bs())
            .map_err(|e| {
                log::warn!("disk {}: read at LBA {lba} failed: {e}", self.cfg.identity);
                codes::UNRECOVERED_READ_ERROR.with_info(lba)
            })?;
        Ok(buf)
    }

    fn write_blocks(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), Fail> {
        let fua = fua || !self.mode.wce.load(Ordering::Relaxed);
        let _shared = self.caw.read().unwrap_or_else(|e| e.into_inner());
        self.backend
            .write_at(data, lba * self.bs(), fua)
            .map_err(|e| {
                log::warn!("disk {}: write at LBA {lba} failed: {e}", self.cfg.identity);
                codes::WRITE_ERROR.with_info(lba).into()
            })
    }

    pub(super) fn read(&self, ctx: &mut Ctx<'_, '_, '_>) -> Res {
        let r = decode(&ctx.cdb);
        let len = self.transfer_bytes(&r)?;
        self.check_range(r.lba, r.n)?;
        if r.n == 0 {
            return Ok(Vec::new());
        }
        if len > ctx.data_in.len {
            // The initiator's buffer is shorter than the transfer: read it
            // all (a medium error anywhere fails the command), deliver what
            // fits.
            return self.read_blocks(r.lba, len);
        }
        self.read_in_place(ctx, r.lba, len)
    }

    /// Read `len` bytes at `lba` straight into the data-in buffer. The
    /// command leaves the task set before the bytes count as transferred,
    /// so an aborted command (here or, by PREEMPT AND ABORT, in another
    /// process) transfers none.
    fn read_in_place(&self, ctx: &mut Ctx<'_, '_, '_>, lba: u64, len: usize) -> Res {
        let offset = lba * self.bs();
        let (nexus, task, since, cmd) = (ctx.nexus, ctx.task, ctx.since, ctx.cdb.cmd());
        let mut medium = None;
        let mut ended = None;
        let res = ctx.data_in.writer.write_in_place(len, &mut |bufs| {
            if let Err(e) = self.backend.read_vectored_at(bufs, offset) {
                medium = Some(e);
                return Err(io::Error::other("medium error"));
            }
            let aborted = self.end(task) | self.preempted_since(nexus, since, Some(cmd));
            ended = Some(aborted);
            if aborted {
                Err(io::Error::other("command aborted"))
            } else {
                Ok(())
            }
        });
        ctx.ended = ended;
        if let Some(e) = medium {
            log::warn!("disk {}: read at LBA {lba} failed: {e}", self.cfg.identity);
            return Err(codes::UNRECOVERED_READ_ERROR.with_info(lba).into());
        }
        if ended == Some(true) {
            return Ok(Vec::new());
        }
        res.map_err(TransportError::DataIn)?;
        ctx.in_place = Some(len);
        Ok(Vec::new())
    }

    /// Write `len` bytes of data-out at `lba` straight from the data-out
    /// buffer.
    fn write_in_place(
        &self,
        ctx: &mut Ctx<'_, '_, '_>,
        lba: u64,
        len: usize,
        fua: bool,
    ) -> Result<(), Fail> {
        if len > ctx.data_out.len {
            return Err(TransportError::DataOut(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "command needs {len} bytes of data-out, buffer has {}",
                    ctx.data_out.len
                ),
            ))
            .into());
        }
        let fua = fua || !self.mode.wce.load(Ordering::Relaxed);
        let offset = lba * self.bs();
        let mut medium = None;
        let res = {
            let _shared = self.caw.read().unwrap_or_else(|e| e.into_inner());
            ctx.data_out.reader.read_in_place(len, &mut |bufs| {
                self.backend
                    .write_vectored_at(bufs, offset, fua)
                    .map_err(|e| {
                        medium = Some(e);
                        io::Error::other("medium error")
                    })
            })
        };
        if let Some(e) = medium {
            // The data-out was transferred; the medium refused it.
            ctx.data_out.len -= len;
            ctx.out_used += len;
            log::warn!("disk {}: write at LBA {lba} failed: {e}", self.cfg.identity);
            return Err(codes::WRITE_ERROR.with_info(lba).into());
        }
        res.map_err(TransportError::DataOut)?;
        ctx.data_out.len -= len;
        ctx.out_used += len;
        Ok(())
    }

    pub(super) fn write(&self, ctx: &mut Ctx<'_, '_, '_>, verify: bool) -> Res {
        if self.cfg.read_only {
            return Err(codes::WRITE_PROTECTED.into());
        }
        let r = decode(&ctx.cdb);
        if verify && ctx.cdb.bit(1, 2) {
            // BYTCHK 10b/11b are not defined for WRITE AND VERIFY.
            return Err(codes::INVALID_FIELD_IN_CDB.in_cdb(1, Some(2)).into());
        }
        let len = self.transfer_bytes(&r)?;
        self.check_range(r.lba, r.n)?;
        if r.n == 0 {
            return Ok(Vec::new());
        }
        if !verify {
            self.write_in_place(ctx, r.lba, len, ctx.cdb.bit(1, 3))?;
            return Ok(Vec::new());
        }
        let data = ctx.read_out(len)?;
        self.write_blocks(r.lba, &data, ctx.cdb.bit(1, 3))?;
        let back = self.read_blocks(r.lba, len)?;
        if let Some(at) = miscompare_at(&back, &data) {
            let info = u64::try_from(at).unwrap_or(0);
            return Err(codes::MISCOMPARE_DURING_VERIFY.with_info(info).into());
        }
        recycle_buffer(data);
        Ok(Vec::new())
    }

    pub(super) fn verify(&self, ctx: &mut Ctx<'_, '_, '_>) -> Res {
        let r = decode(&ctx.cdb);
        let bytchk = (ctx.cdb.byte(1) >> 1) & 0x03;
        if bytchk == 2 {
            return Err(codes::INVALID_FIELD_IN_CDB.in_cdb(1, Some(2)).into());
        }
        let len = self.transfer_bytes(&r)?;
        self.check_range(r.lba, r.n)?;
        if r.n == 0 {
            return Ok(Vec::new());
        }
        let expected = match bytchk {
            0 => None,
            1 => Some(ctx.read_out(len)?),
            _ => {
                // BYTCHK 11b: one block compared against every block.
                let one = ctx.read_out(usize::try_from(self.bs()).unwrap_or(512))?;
                Some(one.repeat(usize::try_from(r.n).unwrap_or(0)))
            }
        };
        let medium = self.read_blocks(r.lba, len)?;
        if let Some(exp) = expected {
            if let Some(at) = miscompare_at(&medium, &exp) {
                let info = if bytchk == 1 {
                    at
                } else {
                    at % usize::try_from(self.bs()).unwrap_or(512)
                };
                let info = u64::try_from(info).unwrap_or(0);
                return Err(codes::MISCOMPARE_DURING_VERIFY.with_info(info).into());
            }
        }
        Ok(Vec::new())
    }

    pub(super) fn read_capacity10(&self) -> Vec<u8> {
        let last = self.blocks().saturating_sub(1);
        let mut out = u32::try_from(last)
            .unwrap_or(u32::MAX)
            .to_be_bytes()
            .to_vec();
        out.extend_from_slice(&self.cfg.block_size.to_be_bytes());
        out
    }

    pub(super) fn read_capacity16(&self) -> Vec<u8> {
        let mut out = vec![0u8; 32];
        out[0..8].copy_from_slice(&self.blocks().saturating_sub(1).to_be_bytes());
        out[8..12].copy_from_slice(&self.cfg.block_size.to_be_bytes());
        out[13] = self.cfg.physical_block_exponent & 0x0F;
        if self.discard {
            out[14] = 0x80 | 0x40; // LBPME | LBPRZ
        }
        out
    }

    pub(super) fn synchronize_cache(&self, ctx: &mut Ctx<'_, '_, '_>) -> Res {
        let r = decode(&ctx.cdb);
        self.check_range(r.lba, r.n)?;
        self.backend.flush().map_err(|e| {
            log::warn!("disk {}: flush failed: {e}", self.cfg.identity);
            Fail::Check(codes::WRITE_ERROR)
        })?;
        Ok(Vec::new())
    }

    fn discard_blocks(&self, lba: u64, n: u64) -> Result<(), Fail> {
        let _shared = self.caw.read().unwrap_or_else(|e| e.into_inner());
        self.backend
            .discard(lba * self.bs(), n * self.bs())
            .map_err(|e| {
                log::warn!(
                    "disk {}: discard at LBA {lba} failed: {e}",
                    self.cfg.identity
                );
                codes::WRITE_ERROR.with_info(lba).into()
            })
    }

    pub(super) fn unmap(&self, ctx: &mut Ctx<'_, '_, '_>) -> Res {
        if self.cfg.read_only {
            return Err(codes::WRITE_PROTECTED.into());
        }
        let p = ctx.params()?;
        if p.is_empty() {
            return Ok(Vec::new());
        }
        if p.len() < 8 {
            return Err(codes::PARAM_LIST_LENGTH_ERROR.into());
        }
        let bd_len = usize::from(u16::from_be_bytes([p[2], p[3]]));
        let count = bd_len.min(p.len() - 8) / 16;
        if count > usize::try_from(MAX_UNMAP_DESCRIPTORS).unwrap_or(0) {
            return Err(codes::INVALID_FIELD_IN_PARAM_LIST.in_param(2, None).into());
        }
        let mut ranges = Vec::with_capacity(count);
        for d in p[8..8 + count * 16].chunks_exact(16) {
            let lba = u64::from_be_bytes(d[0..8].try_into().unwrap_or([0; 8]));
            let n = u64::from(u32::from_be_bytes([d[8], d[9], d[10], d[11]]));
            if n > u64::from(MAX_UNMAP_BLOCKS) {
                return Err(codes::INVALID_FIELD_IN_PARAM_LIST.in_param(2, None).into());
            }
            self.check_range(lba, n)?;
            ranges.push((lba, n));
        }
        for (lba, n) in ranges {
            self.discard_blocks(lba, n)?;
        }
        Ok(Vec::new())
    }

    pub(super) fn write_same(&self, ctx: &mut Ctx<'_, '_, '_>) -> Res {
        if self.cfg.read_only {
            return Err(codes::WRITE_PROTECTED.into());
        }
        let r = decode(&ctx.cdb);
        let unmap = ctx.cdb.bit(1, 3);
        let ndob = ctx.cdb.cmd() == Cmd::WriteSame16 && ctx.cdb.bit(1, 0);
        if r.n == 0 || r.n > u64::from(MAX_UNMAP_BLOCKS) {
            // WSNZ = 1, and MAXIMUM WRITE SAME LENGTH.
            return Err(codes::INVALID_FIELD_IN_CDB.in_cdb(r.n_at, None).into());
        }
        self.check_range(r.lba, r.n)?;
        let bs = usize::try_from(self.bs()).unwrap_or(512);
        let block = if ndob {
            vec![0u8; bs]
        } else {
            ctx.read_out(bs)?
        };
        if unmap && self.discard && block.iter().all(|&b| b == 0) {
            return self.discard_blocks(r.lba, r.n).map(|()| Vec::new());
        }
        let per_chunk = (1u64 << 20) / self.bs();
        let chunk = block.repeat(usize::try_from(per_chunk.min(r.n)).unwrap_or(1));
        let mut lba = r.lba;
        let end = r.lba + r.n;
        while lba < end {
            let k = per_chunk.min(end - lba);
            let bytes = usize::try_from(k * self.bs()).unwrap_or(chunk.len());
            self.write_blocks(lba, &chunk[..bytes], false)?;
            lba += k;
        }
        Ok(Vec::new())
    }

    pub(super) fn compare_and_write(&self, ctx: &mut Ctx<'_, '_, '_>) -> Res {
        if self.cfg.read_only {
            return Err(codes::WRITE_PROTECTED.into());
        }
        let lba = ctx.cdb.be(2, 8);
        let n = ctx.cdb.byte(13);
        if n > MAX_COMPARE_AND_WRITE_BLOCKS {
            return Err(codes::INVALID_FIELD_IN_CDB.in_cdb(13, None).into());
        }
        let n = u64::from(n);
        self.check_range(lba, n)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let len = usize::try_from(n * self.bs()).unwrap_or(0);
        let data = ctx.read_out(2 * len)?;
        let (verify, write) = data.split_at(len);
        let fua = ctx.cdb.bit(1, 3) || !self.mode.wce.load(Ordering::Relaxed);
        // Exclusive: no other write of this LU runs between compare and write.
        let _excl = self.caw.write().unwrap_or_else(|e| e.into_inner());
        let cur = self.read_blocks(lba, len)?;
        if let Some(at) = miscompare_at(&cur, verify) {
            let info = u64::try_from(at).unwrap_or(0);
            return Err(codes::MISCOMPARE_DURING_VERIFY.with_info(info).into());
        }
        self.backend
            .write_at(write, lba * self.bs(), fua)
            .map_err(|e| {
                log::warn!("disk {}: write at LBA {lba} failed: {e}", self.cfg.identity);
                Fail::Check(codes::WRITE_ERROR.with_info(lba))
            })?;
        Ok(Vec::new())
    }

    pub(super) fn get_lba_status(&self, ctx: &mut Ctx<'_, '_, '_>) -> Res {
        let mut lba = ctx.cdb.be(2, 8);
        let alloc = ctx.cdb.be(10, 4);
        let blocks = self.blocks();
        if lba >= blocks {
            return Err(codes::LBA_OUT_OF_RANGE.into());
        }
        let max_desc = (alloc.saturating_sub(8) / 16).clamp(1, 64);
        let bs = self.bs();
        let mut out = vec![0u8; 8];
        let mut count = 0;
        while lba < blocks && count < max_desc {
            let ext = self
                .backend
                .extent(lba * bs, (blocks - lba) * bs)
                .map_err(|_| codes::UNRECOVERED_READ_ERROR.with_info(lba))?;
            let n = (ext.len / bs).clamp(1, (blocks - lba).min(u64::from(u32::MAX)));
            out.extend_from_slice(&lba.to_be_bytes());
            out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(&[u8::from(!ext.mapped), 0, 0, 0]);
            lba += n;
            count += 1;
        }
        let len = u32::try_from(out.len() - 4).unwrap_or(u32::MAX);
        out[0..4].copy_from_slice(&len.to_be_bytes());
        Ok(out)
    }

    pub(super) fn start_stop(&self, ctx: &mut Ctx<'_, '_, '_>) -> Res {
        let b4 = ctx.cdb.byte(4);
        let power = b4 >> 4;
        if !matches!(power, 0x0 | 0x1 | 0x2 | 0x3 | 0x7 | 0xA | 0xB) {
            return Err(codes::INVALID_FIELD_IN_CDB.in_cdb(4, Some(7)).into());
        }
        let start = b4 & 0x01 != 0;
        let no_flush = b4 & 0x04 != 0;
        if power == 0 && !start && !no_flush {
            self.backend
                .flush()
                .map_err(|_| Fail::Check(codes::WRITE_ERROR))?;
        }
        Ok(Vec::new())
    }

    pub(super) fn format_unit(&self, ctx: &mut Ctx<'_, '_, '_>) -> Res {
        if self.cfg.read_only {
            return Err(codes::WRITE_PROTECTED.into());
        }
        let fmtdata = ctx.cdb.bit(1, 4);
        let longlist = ctx.cdb.bit(1, 5);
        if fmtdata {
            let h = ctx.read_out(if longlist { 8 } else { 4 })?;
            let bad = |byte: u16, bit: Option<u8>| -> Fail {
                codes::INVALID_FIELD_IN_PARAM_LIST
                    .in_param(byte, bit)
                    .into()
            };
            if h[0] & 0x07 != 0 {
                return Err(bad(0, Some(2))); // PROTECTION FIELD USAGE
            }
            let fov = h[1] & 0x80 != 0;
            if !fov && h[1] & 0x70 != 0 {
                return Err(bad(1, Some(6))); // DPRY/DCRT/STPF need FOV
            }
            if h[1] & 0x08 != 0 {
                return Err(bad(1, Some(3))); // IP: no initialization pattern
            }
            let (dll, at) = if longlist {
                (u32::from_be_bytes([h[4], h[5], h[6], h[7]]), 4)
            } else {
                (u32::from(u16::from_be_bytes([h[2], h[3]])), 2)
            };
            if dll != 0 {
                return Err(bad(at, None)); // no defect lists
            }
        }
        Ok(Vec::new())
    }
}
