//! SPC-4 commands of the disk: REQUEST SENSE, INQUIRY and VPD pages, REPORT
//! SUPPORTED OPERATION CODES / TASK MANAGEMENT FUNCTIONS, READ/WRITE BUFFER,
//! LOG SENSE, SEND DIAGNOSTIC.

use crate::cdb::{find, has_service_actions, Cdb, Needs, OpInfo, OPCODES};
use crate::nexus::PortName;
use crate::sense::codes;

use super::{
    Ctx, Disk, Fail, Res, ECHO_BUFFER_CAPACITY, MAX_COMPARE_AND_WRITE_BLOCKS, MAX_TRANSFER_BYTES,
    MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS,
};

/// Version descriptors of standard INQUIRY data: SAM-5, SPC-4, SBC-3.
const VERSION_DESCRIPTORS: [u16; 3] = [0x00A0, 0x0460, 0x04C0];

/// Supported VPD pages, ascending.
pub(crate) const VPD_PAGES: [u8; 7] = [0x00, 0x80, 0x83, 0x86, 0xB0, 0xB1, 0xB2];

fn put_ascii(dst: &mut [u8], s: &str) {
    dst.fill(b' ');
    for (d, c) in dst.iter_mut().zip(s.bytes()) {
        *d = c;
    }
}

/// Standard INQUIRY data (96 bytes) with the given PERIPHERAL QUALIFIER and
/// DEVICE TYPE byte.
pub fn standard_inquiry(pq_type: u8, vendor: &str, product: &str, revision: &str) -> Vec<u8> {
    let mut b = vec![0u8; 96];
    b[0] = pq_type;
    b[2] = 0x06; // VERSION: SPC-4
    b[3] = 0x12; // HISUP | RESPONSE DATA FORMAT 2
    b[4] = 96 - 5; // ADDITIONAL LENGTH
    b[7] = 0x02; // CMDQUE
    put_ascii(&mut b[8..16], vendor);
    put_ascii(&mut b[16..32], product);
    put_ascii(&mut b[32..36], revision);
    for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
        b[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    b
}

fn be16(n: usize) -> [u8; 2] {
    u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes()
}

fn be32(n: u64) -> [u8; 4] {
    u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes()
}

/// The designator of a target port name (association 1 = target port).
fn target_port_designator(name: &PortName) -> Vec<u8> {
    let proto = name.protocol_id() << 4;
    match name {
        PortName::Naa(addr) => {
            // PIV | assoc target port | NAA, binary.
            let mut d = vec![proto | 0x01, 0x80 | 0x10 | 0x03, 0, 8];
            d.extend_from_slice(addr);
            d
        }
        PortName::Iscsi(s) => {
            // SCSI name string, UTF-8, NUL-terminated, padded to 4.
            let mut body = s.as_bytes().to_vec();
            body.push(0);
            while body.len() % 4 != 0 {
                body.push(0);
            }
            let mut d = vec![proto | 0x03, 0x80 | 0x10 | 0x08, 0];
            d.push(u8::try_from(body.len()).unwrap_or(252));
            d.extend_from_slice(&body);
            d
        }
    }
}

impl Disk {
    fn supports(&self, o: &OpInfo) -> bool {
        match o.needs {
            Needs::Nothing => true,
            Needs::Discard => self.discard,
            Needs::Reservations => self.pr.is_some(),
        }
    }

    pub(super) fn request_sense(&self, ctx: &mut Ctx<'_, '_, '_>) -> Res {
        let desc = ctx.cdb.bit(1, 0);
        let ua = ctx.task.nexus.with(|s| s.ua.pop());
        Ok(ua.unwrap_or(codes::NO_SENSE).encode(desc))
    }

    pub(super) fn inquiry(&self, ctx: &mut Ctx<'_, '_, '_>) -> Res {
        let evpd = ctx.cdb.bit(1, 0);
        let page = ctx.cdb.byte(2);
        if !evpd {
            if page != 0 {
                return Err(codes::INVALID_FIELD_IN_CDB.in_cdb(2, None).into());
            }
            return Ok(standard_inquiry(
                0x00,
                &self.cfg.vendor,
                &self.cfg.product,
                &self.cfg.revision,
            ));
        }
        let body = match page {
            0x00 => VPD_PAGES.to_vec(),
            0x80 => self.serial.as_bytes().to_vec(),
            0x83 => self.device_identification(ctx.nexus),
            0x86 => {
                let mut b = vec![0u8; 60];
                b[1] = 0x07; // HEADSUP | ORDSUP | SIMPSUP
                b[2] = 0x01; // V_SUP: volatile write cache
                b[3] = 0x01; // LUICLR
                b
            }
            0xB0 => self.block_limits(),
            0xB1 => {
                let mut b = vec![0u8; 60];
                b[0..2].copy_from_slice(&self.cfg.rotation_rate.to_be_bytes());
                b
            }
            0xB2 => {
                let mut b = vec![0u8; 4];
                if self.discard {
                    b[1] = 0x80 | 0x40 | 0x20 | 0x04; // LBPU LBPWS LBPWS10, LBPRZ = 1
                    b[2] = 0x02; // PROVISIONING TYPE: thin
                }
                b
            }
            _ => return Err(codes::INVALID_FIELD_IN_CDB.in_cdb(2, None).into()),
        };
        let mut out = vec![0x00, page];
        out.extend_from_slice(&be16(body.len()));
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// VPD 0x83 designators (after the 4-byte header).
    fn device_identification(&self, nexus: &crate::nexus::ItNexus) -> Vec<u8> {
        let mut d = Vec::with_capacity(96);
        // NAA IEEE Registered Extended, LU association, binary.
        d.extend_from_slice(&[0x01, 0x03, 0x00, 0x10]);
        d.extend_from_slice(&self.cfg.identity.naa());
        // T10 vendor ID: vendor (8, padded) + unit serial number, ASCII.
        let mut t10 = [b' '; 8].to_vec();
        put_ascii(&mut t10, &self.cfg.vendor);
        t10.extend_from_slice(self.serial.as_bytes());
        t10.truncate(252);
        d.extend_from_slice(&[0x02, 0x01, 0x00, u8::try_from(t10.len()).unwrap_or(252)]);
        d.extend_from_slice(&t10);
        // Relative target port identifier (PIV, target port association).
        let proto = nexus.target.name.protocol_id() << 4;
        d.extend_from_slice(&[proto | 0x01, 0x80 | 0x10 | 0x04, 0x00, 0x04, 0x00, 0x00]);
        d.extend_from_slice(&nexus.target.relative_id.to_be_bytes());
        // Target port name.
        d.extend_from_slice(&target_port_designator(&nexus.target.name));
        d
    }

    fn block_limits(&self) -> Vec<u8> {
        let bs = u64::from(self.cfg.block_size);
        let mut b = vec![0u8; 60];
        b[0] = 0x01; // WSNZ: WRITE SAME with NUMBER OF LOGICAL BLOCKS 0 is refused
        b[1] = MAX_COMPARE_AND_WRITE_BLOCKS;
        let gran = 1u16 << self.cfg.physical_block_exponent.min(15);
        b[2..4].copy_from_slice(&gran.to_be_bytes());
        b[4..8].copy_from_slice(&be32(MAX_TRANSFER_BYTES / bs));
        if self.discard {
            b[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
            b[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
            b[24..28].copy_from_slice(&be32((4096 / bs).max(1)));
            b[28..32].copy_from_slice(&0x8000_0000u32.to_be_bytes()); // UGAVALID, alignment 0
        }
        b[32..40].copy_from_slice(&u64::from(MAX_UNMAP_BLOCKS).to_be_bytes());
        b
    }

    pub(super) fn report_opcodes(&self, ctx: &mut Ctx<'_, '_, '_>) -> Res {
        let c = &ctx.cdb;
        let rctd = c.bit(2, 7);
        let options = c.byte(2) & 0x07;
        let timeouts: &[u8] = &[0x00, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 30];
        let op = c.byte(3);
        let sa = c.be(4, 2);
        if options == 0 {
            let mut out = vec![0u8; 4];
            for o in OPCODES.iter().filter(|o| self.supports(o)) {
                let sa = o.sa.unwrap_or(0);
                let flags = u8::from(o.sa.is_some()) | (u8::from(rctd) << 1);
                out.extend_from_slice(&[o.opcode, 0, 0, sa, 0, flags]);
                out.extend_from_slice(&be16(o.usage.len()));
                if rctd {
                    out.extend_from_slice(timeouts);
                }
            }
            let len = be32(u64::try_from(out.len() - 4).unwrap_or(0));
            out[..4].copy_from_slice(&len);
            return Ok(out);
        }
        let found = match options {
            1 => {
                if has_service_actions(op) {
                    return Err(codes::INVALID_FIELD_IN_CDB.in_cdb(3, None).into());
                }
                find(op, None)
            }
            2 => {
                if !has_service_actions(op) {
                    return Err(codes::INVALID_FIELD_IN_CDB.in_cdb(3, None).into());
                }
                u8::try_from(sa).ok().and_then(|sa| find(op, Some(sa)))
            }
            3 => {
                if has_service_actions(op) {
                    u8::try_from(sa).ok().and_then(|sa| find(op, Some(sa)))
                } else if sa == 0 {
                    find(op, None)
                } else {
                    None
                }
            }
            _ => return Err(codes::INVALID_FIELD_IN_CDB.in_cdb(2, Some(2)).into()),
        };
        let found = found.filter(|o| self.supports(o));
        let mut out = vec![0u8; 4];
        match found {
            Some(o) => {
                out[1] = 0x03 | (u8::from(rctd) << 7); // SUPPORT: supported as the standard says
                out[2..4].copy_from_slice(&be16(o.usage.len()));
                out.extend_from_slice(o.usage);
                if rctd {
                    out.extend_from_slice(timeouts);
                }
            }
            None => out[1] = 0x01, // SUPPORT: not supported
        }
        Ok(out)
    }

    pub(super) fn read_buffer(&self, ctx: &mut Ctx<'_, '_, '_>) -> Res {
        let c = &ctx.cdb;
        let mode = c.byte(1) & 0x1F;
        let (id, offset) = (c.byte(2), c.be(3, 3));
        match mode {
            // Descriptor of data buffer `id`: we have none (capacity 0).
            0x03 => Ok(vec![0, 0, 0, 0]),
            0x0A => {
                if id != 0 || offset != 0 {
                    return Err(codes::INVALID_FIELD_IN_CDB.in_cdb(2, None).into());
                }
                ctx.task
                    .nexus
                    .lock()
                    .echo
                    .clone()
                    .ok_or(Fail::Check(codes::COMMAND_SEQUENCE_ERROR))
            }
            // Echo buffer descriptor: EBOS 0, BUFFER CAPACITY.
            0x0B => Ok(vec![0, 0, 0x10, 0x00]),
            _ => Err(codes::INVALID_FIELD_IN_CDB.in_cdb(1, Some(4)).into()),
        }
    }

    pub(super) fn write_buffer(&self, ctx: &mut Ctx<'_, '_, '_>) -> Res {
        let c = ctx.cdb;
        let mode = c.byte(1) & 0x1F;
        if mode != 0x0A {
            return Err(codes::INVALID_FIELD_IN_CDB.in_cdb(1, Some(4)).into());
        }
        if c.byte(2) != 0 || c.be(3, 3) != 0 {
            return Err(codes::INVALID_FIELD_IN_CDB.in_cdb(2, None).into());
        }
        let len = c.be(6, 3);
        if len > u64::try_from(ECHO_BUFFER_CAPACITY).unwrap_or(0) {
            return Err(codes::INVALID_FIELD_IN_CDB.in_cdb(6, None).into());
        }
        let data = ctx.params()?;
        ctx.task.nexus.lock().echo = Some(data);
        Ok(Vec::new())
    }

    pub(super) fn send_diagnostic(&self, ctx: &mut Ctx<'_, '_, '_>) -> Res {
        let c = &ctx.cdb;
        let code = c.byte(1) >> 5;
        let selftest = c.bit(1, 2);
        let plen = c.be(3, 2);
        if plen != 0 {
            // No diagnostic pages are supported.
            return Err(codes::INVALID_FIELD_IN_CDB.in_cdb(3, None).into());
        }
        match (selftest, code) {
            (true, 0) | (false, 1 | 2 | 5 | 6) => self.self_test(),
            (false, 0 | 4) => Ok(Vec::new()),
            (true, _) => Err(codes::INVALID_FIELD_IN_CDB.in_cdb(1, Some(7)).into()),
            (false, _) => Err(codes::INVALID_FIELD_IN_CDB.in_cdb(1, Some(7)).into()),
        }
    }

    /// The self-test: the backend answers its size and reads back the first
    /// and last logical blocks.
    fn self_test(&self) -> Res {
        let bs = usize::try_from(self.cfg.block_size).unwrap_or(512);
        let mut buf = vec![0u8; bs];
        let ok = self.backend.size().is_ok() && {
            let blocks = self.blocks();
            blocks == 0
                || (self.backend.read_at(&mut buf, 0).is_ok()
                    && self
                        .backend
                        .read_at(&mut buf, (blocks - 1) * u64::from(self.cfg.block_size))
                        .is_ok())
        };
        if ok {
            Ok(Vec::new())
        } else {
            Err(codes::SELF_TEST_FAILED.into())
        }
    }
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS.
pub(crate) fn report_tmfs(c: &Cdb<'_>) -> Vec<u8> {
    // ATS ATSS CTSS LURS QTS | QAES QTSS ITNRS; CACAS, TRS, WAKES clear.
    let mut b = vec![0x80 | 0x40 | 0x10 | 0x08 | 0x04, 0x04 | 0x02 | 0x01, 0, 0];
    if c.bit(2, 7) {
        // REPTD: extended format with ADDITIONAL DATA LENGTH 0x0C and no
        // timeout values (TMFTMOV 0).
        b[3] = 0x0C;
        b.extend_from_slice(&[0u8; 12]);
    }
    b
}

/// LOG SENSE: only the supported-pages pages.
pub(crate) fn log_sense(c: &Cdb<'_>) -> Res {
    let page = c.byte(2) & 0x3F;
    let subpage = c.byte(3);
    match (page, subpage) {
        (0x00, 0x00) => Ok(vec![0x00, 0x00, 0x00, 0x01, 0x00]),
        (0x00, 0xFF) => Ok(vec![0x40, 0xFF, 0x00, 0x04, 0x00, 0x00, 0x00, 0xFF]),
        (_, 0x00) => Err(codes::INVALID_FIELD_IN_CDB.in_cdb(2, Some(5)).into()),
        _ => Err(codes::INVALID_FIELD_IN_CDB.in_cdb(3, None).into()),
    }
}
