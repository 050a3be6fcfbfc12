//! The passthrough logical unit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use crate::emulated::LogicalUnit;
use crate::nexus::ItNexus;
use crate::pr::{PrAccess, PrOutcome, Reservations};
use crate::sense::{codes, Sense, Status};
use crate::target::{
    DataIn, DataOut, Lun, Request, Response, ScsiTarget, TaskMgmt, TmfResponse, TransportError,
};
use crate::unit_attention::UaQueue;

use super::cdb::{cdb_len, parse_rw, patch_rw, RwCdb, RwForm, MAX_CDB_LEN};
use super::emulate::{report_luns, Identity, LunMap, ModeMask};
use super::filter::{CommandFilter, FilterConfig};
use super::outcome::{
    classify_completion, classify_errno, status_from_byte, Classified, HostDetail, HostFailure,
    PassthroughOutcome,
};
use super::prhelper::{PrHelperClient, PR_HELPER_DATA_SIZE};
use super::transport::{
    has_cap_sys_rawio, SgData, SgDevice, SgRequest, SgTransport, SENSE_BUF_LEN,
};
use super::SgioError;

/// Our own cap on one SG_IO buffer (and on a READ/WRITE chunk when the host
/// reports no limit).
pub const MAX_BUFFER_BYTES: usize = 32 << 20;
/// Largest PERSISTENT RESERVE OUT parameter list taken for pr=emulated.
pub const MAX_PR_OUT_PARAMS: usize = 64 << 10;

/// Where PERSISTENT RESERVE IN/OUT (and RESERVE/RELEASE) go, per disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrRouting {
    /// `pr=passthrough`: to the device through SG_IO (needs CAP_SYS_RAWIO;
    /// each VM must be its own initiator on the storage).
    Passthrough,
    /// `pr=emulated`: to the caller's [`Reservations`] state; other commands
    /// are checked against it before they reach the device.
    Emulated,
    /// `pr=helper:/path`: PR IN/OUT through qemu-pr-helper's socket.
    Helper(PathBuf),
}

impl FromStr for PrRouting {
    type Err = SgioError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v = s.strip_prefix("pr=").unwrap_or(s);
        match v {
            "passthrough" => Ok(PrRouting::Passthrough),
            "emulated" => Ok(PrRouting::Emulated),
            _ => match v.strip_prefix("helper:") {
                Some(p) if p.starts_with('/') => Ok(PrRouting::Helper(PathBuf::from(p))),
                _ => Err(SgioError::BadOption(
                    s.to_owned(),
                    "expected pr=passthrough, pr=emulated or pr=helper:/absolute/socket",
                )),
            },
        }
    }
}

/// Options of one passthrough disk.
#[derive(Debug, Clone)]
pub struct PassthroughConfig {
    /// Reservation routing.
    pub pr: PrRouting,
    /// The shared PR state for [`PrRouting::Emulated`].
    pub reservations: Option<Arc<dyn Reservations>>,
    /// Command filter adjustments.
    pub filter: FilterConfig,
    /// Identity to present instead of the device's.
    pub identity: Option<Identity>,
    /// Mode pages to hide.
    pub mode_mask: Option<ModeMask>,
    /// LUNs REPORT LUNS lists (default: only the addressed LUN).
    pub lun_map: Option<LunMap>,
    /// SG_IO timeout per command, milliseconds.
    pub timeout_ms: u32,
    /// Largest transfer per SG_IO (default: BLKSECTGET and VPD B0).
    pub max_transfer_bytes: Option<u32>,
    /// Logical block size (default: READ CAPACITY).
    pub block_size: Option<u32>,
    /// Whether we hold CAP_SYS_RAWIO (default: ask the kernel).
    pub has_rawio: Option<bool>,
}

impl Default for PassthroughConfig {
    fn default() -> Self {
        PassthroughConfig {
            pr: PrRouting::Passthrough,
            reservations: None,
            filter: FilterConfig::default(),
            identity: None,
            mode_mask: None,
            lun_map: None,
            timeout_ms: 30_000,
            max_transfer_bytes: None,
            block_size: None,
            has_rawio: None,
        }
    }
}

impl PassthroughConfig {
    /// Apply one `key=value` option of a passthrough disk specification
    /// (what a command line or config file gives):
    ///
    /// | key | value |
    /// |---|---|
    /// | `pr` | `passthrough`, `emulated`, `helper:/absolute/socket` |
    /// | `allow`, `deny` | opcode list, `3b+04` (added to the filter lists) |
    /// | `hide-mode-pages` | page code list, `08+1c` |
    /// | `vendor`, `product`, `revision`, `serial` | identity text |
    /// | `naa` | 16 hex digits (VPD 0x83 NAA designator) |
    /// | `timeout-ms`, `max-transfer`, `block-size` | decimal |
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), SgioError> {
        let bad = |why| SgioError::BadOption(format!("{key}={value}"), why);
        let num = |why| value.parse::<u32>().map_err(|_| bad(why));
        match key {
            "pr" => self.pr = value.parse()?,
            "allow" => self
                .filter
                .allow
                .extend(value.parse::<super::filter::OpcodeList>()?.0),
            "deny" => self
                .filter
                .deny
                .extend(value.parse::<super::filter::OpcodeList>()?.0),
            "hide-mode-pages" => {
                let pages = value.parse::<super::filter::OpcodeList>()?.0;
                if pages.iter().any(|&p| p >= 0x3F) {
                    return Err(bad("mode page codes are 00..3e"));
                }
                self.mode_mask
                    .get_or_insert_with(ModeMask::default)
                    .hide
                    .extend(pages);
            }
            "vendor" | "product" | "revision" | "serial" => {
                let max = match key {
                    "vendor" => 8,
                    "product" => 16,
                    "revision" => 4,
                    _ => 251,
                };
                if value.len() > max || !value.bytes().all(|c| c.is_ascii_graphic() || c == b' ') {
                    return Err(bad(
                        "identity text must be printable ASCII within the field",
                    ));
                }
                let id = self.identity.get_or_insert_with(Identity::default);
                let slot = match key {
                    "vendor" => &mut id.vendor,
                    "product" => &mut id.product,
                    "revision" => &mut id.revision,
                    _ => &mut id.serial,
                };
                *slot = Some(value.to_owned());
            }
            "naa" => {
                let hex = value.strip_prefix("naa.").unwrap_or(value);
                let v = u64::from_str_radix(hex, 16)
                    .ok()
                    .filter(|v| hex.len() == 16 && matches!(v >> 60, 2 | 3 | 5 | 6))
                    .ok_or_else(|| bad("naa is 16 hex digits starting with 2, 3, 5 or 6"))?;
                self.identity.get_or_insert_with(Identity::default).naa = Some(v);
            }
            "timeout-ms" => self.timeout_ms = num("timeout-ms is a number of milliseconds")?,
            "max-transfer" => {
                self.max_transfer_bytes = Some(num("max-transfer is a number of bytes")?)
            }
            "block-size" => self.block_size = Some(num("block-size is a number of bytes")?),
            _ => return Err(bad("unknown passthrough option")),
        }
        Ok(())
    }
}

#[derive(Debug)]
enum PrBackend {
    Passthrough,
    Emulated(Arc<dyn Reservations>),
    Helper(PrHelperClient),
}

/// A logical unit backed by a real SCSI device.
#[derive(Debug)]
pub struct PassthroughLu {
    name: String,
    t: Arc<dyn SgTransport>,
    pr: PrBackend,
    filter: CommandFilter,
    identity: Option<Identity>,
    mode_mask: Option<ModeMask>,
    lun_map: Option<LunMap>,
    timeout_ms: u32,
    block_size: Option<u32>,
    max_bytes: Option<u32>,
    pdt: u8,
    /// Unit attentions we raise ourselves (LU reset, target-raised ones,
    /// pr=emulated's), per nexus seen. The device's own unit attentions
    /// pass through in its responses.
    ua: Mutex<HashMap<ItNexus, UaQueue>>,
    inflight: Mutex<HashMap<ItNexus, Vec<u64>>>,
}

const INQUIRY: u8 = 0x12;
const REQUEST_SENSE: u8 = 0x03;
const REPORT_LUNS: u8 = 0xA0;
const MODE_SENSE_6: u8 = 0x1A;
const MODE_SENSE_10: u8 = 0x5A;
const MODE_SELECT_6: u8 = 0x15;
const MODE_SELECT_10: u8 = 0x55;
const PR_IN: u8 = 0x5E;
const PR_OUT: u8 = 0x5F;

fn be16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([
        b.get(at).copied().unwrap_or(0),
        b.get(at + 1).copied().unwrap_or(0),
    ]))
}

fn be32(b: &[u8], at: usize) -> usize {
    let v = u32::from_be_bytes([
        b.get(at).copied().unwrap_or(0),
        b.get(at + 1).copied().unwrap_or(0),
        b.get(at + 2).copied().unwrap_or(0),
        b.get(at + 3).copied().unwrap_or(0),
    ]);
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// The reservation class of an arbitrary opcode (SPC-4 table 43, SBC-4
/// table 13), for pr=emulated. Unknown commands count as writes.
pub fn pr_access(cdb: &[u8]) -> PrAccess {
    let op = cdb.first().copied().unwrap_or(0);
    let sa = cdb.get(1).copied().unwrap_or(0) & 0x1F;
    match op {
        0x00 | INQUIRY | REQUEST_SENSE | REPORT_LUNS | 0x25 | 0x4D | PR_IN => PrAccess::Allowed,
        0x9E if sa == 0x10 => PrAccess::Allowed, // READ CAPACITY(16)
        0xA3 => PrAccess::Allowed,               // MAINTENANCE IN (report opcodes, TPGs, TMFs)
        0x08 | 0x28 | 0xA8 | 0x88 => PrAccess::Read, // READ(6/10/12/16)
        0x2F | 0xAF | 0x8F => PrAccess::Read,    // VERIFY
        MODE_SENSE_6 | MODE_SENSE_10 | 0x3C | 0x37 | 0xB7 | 0x34 | 0x90 | 0x84 | 0x9E | 0x1C => {
            PrAccess::Read
        }
        PR_OUT => PrAccess::PrOut,
        0x16 | 0x17 | 0x56 | 0x57 => PrAccess::Scsi2,
        _ => PrAccess::Write,
    }
}

/// Commands a pending unit attention does not stop (SAM-5 5.14).
fn ua_exempt(op: u8) -> bool {
    matches!(op, INQUIRY | REPORT_LUNS | REQUEST_SENSE)
}

struct Inflight<'a> {
    lu: &'a PassthroughLu,
    nexus: &'a ItNexus,
    tag: u64,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.lu.inflight.lock() {
            if let Some(v) = m.get_mut(self.nexus) {
                if let Some(i) = v.iter().position(|&t| t == self.tag) {
                    v.swap_remove(i);
                }
                if v.is_empty() {
                    m.remove(self.nexus);
                }
            }
        }
    }
}

/// Result of one SG_IO, with data accounting.
struct Io {
    class: Classified,
    /// Bytes transferred (dxfer_len − resid), 0 on host failure.
    moved: usize,
}

impl PassthroughLu {
    /// Open a device node with `cfg`.
    pub fn open(path: &Path, cfg: PassthroughConfig) -> Result<Self, SgioError> {
        let dev = SgDevice::open(path)?;
        Self::with_transport(Arc::new(dev), &path.display().to_string(), cfg)
    }

    /// Build a unit over any transport (the real device or [`super::FakeSg`]).
    /// Checks the reservation routing now (CAP_SYS_RAWIO for pr=passthrough,
    /// a reachable helper for pr=helper) and probes the block size and
    /// transfer limits (standard INQUIRY, READ CAPACITY(16)/(10), VPD B0).
    pub fn with_transport(
        t: Arc<dyn SgTransport>,
        name: &str,
        cfg: PassthroughConfig,
    ) -> Result<Self, SgioError> {
        let pr = match &cfg.pr {
            PrRouting::Passthrough => {
                if !cfg.has_rawio.unwrap_or_else(has_cap_sys_rawio) {
                    return Err(SgioError::NeedsRawIo(name.to_owned()));
                }
                PrBackend::Passthrough
            }
            PrRouting::Emulated => PrBackend::Emulated(
                cfg.reservations
                    .clone()
                    .ok_or(SgioError::EmulatedNeedsState)?,
            ),
            PrRouting::Helper(path) => {
                if t.fd().is_none() {
                    return Err(SgioError::HelperNeedsFd);
                }
                let client = PrHelperClient::connect(path).map_err(|source| SgioError::Helper {
                    path: path.display().to_string(),
                    source,
                })?;
                PrBackend::Helper(client)
            }
        };
        let mut lu = PassthroughLu {
            name: name.to_owned(),
            t,
            pr,
            filter: CommandFilter::new(&cfg.filter),
            identity: cfg.identity,
            mode_mask: cfg.mode_mask,
            lun_map: cfg.lun_map,
            timeout_ms: cfg.timeout_ms,
            block_size: cfg.block_size,
            max_bytes: None,
            pdt: 0,
            ua: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
        };
        lu.probe(cfg.max_transfer_bytes);
        Ok(lu)
    }

    fn probe(&mut self, user_max: Option<u32>) {
        // Standard INQUIRY: peripheral qualifier / device type for the VPD
        // pages we may emulate.
        let (c, d) = self.fetch(&[INQUIRY, 0, 0, 0, 36, 0], 36);
        if matches!(c, Classified::Scsi(Status::Good, _)) {
            self.pdt = d.first().copied().unwrap_or(0);
        }
        if self.block_size.is_none() {
            // READ CAPACITY(16), allocation length 32; retried once in case
            // a pending unit attention answers first.
            let rc16 = [0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
            for _ in 0..2 {
                let (c, d) = self.fetch(&rc16, 32);
                if matches!(c, Classified::Scsi(Status::Good, _)) && d.len() >= 12 {
                    self.block_size = u32::try_from(be32(&d, 8)).ok().filter(|&b| b > 0);
                    break;
                }
            }
            if self.block_size.is_none() {
                let (c, d) = self.fetch(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
                if matches!(c, Classified::Scsi(Status::Good, _)) && d.len() >= 8 {
                    self.block_size = u32::try_from(be32(&d, 4)).ok().filter(|&b| b > 0);
                }
            }
        }
        // VPD B0 BLOCK LIMITS: MAXIMUM TRANSFER LENGTH, bytes 8..12, blocks.
        let mut vpd_max = None;
        let (c, d) = self.fetch(&[INQUIRY, 0x01, 0xB0, 0x00, 0x40, 0], 0x40);
        if matches!(c, Classified::Scsi(Status::Good, _)) && d.len() >= 12 && d[1] == 0xB0 {
            let blocks = be32(&d, 8);
            if let (true, Some(bs)) = (blocks > 0, self.block_size) {
                vpd_max = u32::try_from(blocks.saturating_mul(usize::try_from(bs).unwrap_or(0)))
                    .ok()
                    .or(Some(u32::MAX));
            }
        }
        self.max_bytes = [user_max, self.t.max_transfer_bytes(), vpd_max]
            .into_iter()
            .flatten()
            .min();
        log::info!(
            "passthrough {}: block size {:?}, max transfer {:?} bytes",
            self.name,
            self.block_size,
            self.max_bytes
        );
    }

    /// Logical block size found at open (or configured).
    pub fn block_size(&self) -> Option<u32> {
        self.block_size
    }

    /// Largest transfer per SG_IO (None: no limit known).
    pub fn max_transfer_bytes(&self) -> Option<u32> {
        self.max_bytes
    }

    /// One SG_IO.
    fn io(&self, cdb: &[u8], data: SgData<'_>, sense: &mut [u8]) -> Io {
        let len = data.len();
        let r = self.t.submit(SgRequest {
            cdb,
            data,
            sense,
            timeout_ms: self.timeout_ms,
        });
        match r {
            Err(e) => {
                let class = classify_errno(&e);
                if let Classified::Host(f, _) = &class {
                    log::error!(
                        "passthrough {}: SG_IO opcode {:#04x}: {e} -> {f:?}",
                        self.name,
                        cdb[0]
                    );
                } else {
                    log::warn!(
                        "passthrough {}: SG_IO opcode {:#04x}: {e}",
                        self.name,
                        cdb[0]
                    );
                }
                Io { class, moved: 0 }
            }
            Ok(c) => {
                let class = classify_completion(&c, sense);
                let resid = usize::try_from(c.resid.max(0)).unwrap_or(0);
                let moved = match class {
                    Classified::Scsi(..) => len.saturating_sub(resid),
                    Classified::Host(f, _) => {
                        log::error!(
                            "passthrough {}: opcode {:#04x}: host {:#x} driver {:#x} -> {f:?}",
                            self.name,
                            cdb[0],
                            c.host_status,
                            c.driver_status
                        );
                        0
                    }
                };
                Io { class, moved }
            }
        }
    }

    /// A data-in command into an internal buffer of `len` bytes.
    fn fetch(&self, cdb: &[u8], len: usize) -> (Classified, Vec<u8>) {
        let mut buf = vec![0u8; len];
        let mut sense = [0u8; SENSE_BUF_LEN];
        let io = self.io(cdb, SgData::FromDevice(&mut buf), &mut sense);
        buf.truncate(io.moved);
        (io.class, buf)
    }

    fn finish(class: Classified, data_in_len: usize, data_out_len: usize) -> PassthroughOutcome {
        match class {
            Classified::Scsi(status, sense) => PassthroughOutcome::Completed(Response {
                status,
                sense,
                data_in_len,
                data_out_len,
            }),
            Classified::Host(failure, detail) => PassthroughOutcome::HostFailed {
                failure,
                detail,
                data_in_len,
                data_out_len,
            },
        }
    }

    fn deliver(data: &[u8], limit: usize, din: DataIn<'_>) -> Result<usize, TransportError> {
        let n = data.len().min(limit).min(din.len);
        din.writer
            .write_all(&data[..n])
            .map_err(TransportError::DataIn)?;
        Ok(n)
    }

    fn take(dout: DataOut<'_>, n: usize) -> Result<Vec<u8>, TransportError> {
        let mut v = vec![0u8; n];
        dout.reader
            .read_exact(&mut v)
            .map_err(TransportError::DataOut)?;
        Ok(v)
    }

    /// Execute one command: the device's (or our emulation's) SCSI
    /// [`Response`], or, when the host could not complete it,
    /// [`TransportError::Delivery`] naming the failure so that the transport
    /// answers with its own code (virtio-scsi: BUSY, RESET, TRANSPORT_FAILURE,
    /// ...; see [`PassthroughOutcome::into_result`]).
    pub fn execute(
        &self,
        req: &Request<'_>,
        data_out: DataOut<'_>,
        data_in: DataIn<'_>,
    ) -> Result<Response, TransportError> {
        self.execute_outcome(req, data_out, data_in)?.into_result()
    }

    /// Execute one command; the outcome says which virtio-scsi response to
    /// send ([`PassthroughOutcome::virtio_response`]).
    pub fn execute_outcome(
        &self,
        req: &Request<'_>,
        data_out: DataOut<'_>,
        data_in: DataIn<'_>,
    ) -> Result<PassthroughOutcome, TransportError> {
        let len = match cdb_len(req.cdb)? {
            Some(l) if l <= MAX_CDB_LEN => l,
            _ => return Ok(PassthroughOutcome::check(codes::INVALID_OPCODE)),
        };
        let cdb = &req.cdb[..len];
        let op = cdb[0];
        if let Some(s) = self.filter.check(cdb) {
            log::warn!(
                "passthrough {}: blocked opcode {op:#04x} from {} ({:02x?})",
                self.name,
                req.nexus,
                cdb
            );
            return Ok(PassthroughOutcome::check(s));
        }
        if let Ok(mut m) = self.inflight.lock() {
            m.entry(req.nexus.clone()).or_default().push(req.tag);
        }
        let _guard = Inflight {
            lu: self,
            nexus: req.nexus,
            tag: req.tag,
        };

        if !ua_exempt(op) {
            if let Some(ua) = self.next_ua(req.nexus) {
                return Ok(PassthroughOutcome::check(ua));
            }
        } else if op == REQUEST_SENSE {
            // SPC-4 5.14: REQUEST SENSE reports (and clears) a pending unit
            // attention as its parameter data, fixed format, status GOOD.
            if let Some(ua) = self.next_ua(req.nexus) {
                let n = Self::deliver(&ua.to_fixed(), usize::from(cdb[4]), data_in)?;
                return Ok(Self::finish(
                    Classified::Scsi(Status::Good, Vec::new()),
                    n,
                    0,
                ));
            }
        }
        if let PrBackend::Emulated(r) = &self.pr {
            match op {
                PR_IN => return Self::pr_outcome(r.reserve_in(req.nexus, cdb), cdb, data_in),
                PR_OUT => {
                    let plen = be32(cdb, 5);
                    if plen > MAX_PR_OUT_PARAMS {
                        return Ok(PassthroughOutcome::check(codes::PARAM_LIST_LENGTH_ERROR));
                    }
                    if plen > data_out.len {
                        return Ok(PassthroughOutcome::local(HostFailure::Overrun));
                    }
                    let params = Self::take(data_out, plen)?;
                    let out = r.reserve_out(req.nexus, cdb, &params);
                    let mut o = Self::pr_outcome(out, cdb, data_in)?;
                    if let PassthroughOutcome::Completed(resp) = &mut o {
                        resp.data_out_len = plen;
                    }
                    return Ok(o);
                }
                0x16 | 0x56 => return Self::pr_outcome(r.scsi2_reserve(req.nexus), cdb, data_in),
                0x17 | 0x57 => return Self::pr_outcome(r.scsi2_release(req.nexus), cdb, data_in),
                _ => {
                    if r.conflicts(req.nexus, pr_access(cdb)) {
                        return Ok(PassthroughOutcome::scsi(Status::ReservationConflict, None));
                    }
                }
            }
        }
        if let PrBackend::Helper(h) = &self.pr {
            if op == PR_IN || op == PR_OUT {
                return self.helper_pr(h, cdb, data_out, data_in);
            }
        }
        match op {
            REPORT_LUNS => {
                let luns = self
                    .lun_map
                    .as_ref()
                    .map(LunMap::luns)
                    .unwrap_or_else(|| vec![req.lun]);
                return match report_luns(cdb, &luns) {
                    Ok(d) => {
                        let n = Self::deliver(&d, be32(cdb, 6), data_in)?;
                        Ok(Self::finish(
                            Classified::Scsi(Status::Good, Vec::new()),
                            n,
                            0,
                        ))
                    }
                    Err(s) => Ok(PassthroughOutcome::check(s)),
                };
            }
            INQUIRY => {
                if let Some(id) = &self.identity {
                    let page = (cdb[1] & 1 == 1).then_some(cdb[2]);
                    if id.touches(page) {
                        return self.inquiry(id, page, cdb, data_in);
                    }
                }
            }
            MODE_SENSE_6 | MODE_SENSE_10 => {
                if let Some(m) = &self.mode_mask {
                    return self.mode_sense(m, cdb, data_in);
                }
            }
            MODE_SELECT_6 | MODE_SELECT_10 => {
                if let Some(m) = &self.mode_mask {
                    return self.mode_select(m, cdb, data_out);
                }
            }
            _ => {}
        }
        if let Some(rw) = parse_rw(cdb) {
            return self.read_write(cdb, rw, data_out, data_in);
        }
        self.plain(cdb, data_out, data_in)
    }

    /// Any command: the guest's buffers decide direction and length.
    fn plain(
        &self,
        cdb: &[u8],
        data_out: DataOut<'_>,
        data_in: DataIn<'_>,
    ) -> Result<PassthroughOutcome, TransportError> {
        let mut sense = [0u8; SENSE_BUF_LEN];
        if data_out.len > 0 && data_in.len > 0 {
            // Bidirectional commands are not offered (no VIRTIO_SCSI_F_INOUT).
            return Ok(PassthroughOutcome::local(HostFailure::Failure));
        }
        if data_out.len > 0 {
            let n = data_out.len.min(MAX_BUFFER_BYTES);
            let buf = Self::take(data_out, n)?;
            let io = self.io(cdb, SgData::ToDevice(&buf), &mut sense);
            return Ok(Self::finish(io.class, 0, io.moved));
        }
        if data_in.len > 0 {
            let n = data_in.len.min(MAX_BUFFER_BYTES);
            let mut buf = vec![0u8; n];
            let io = self.io(cdb, SgData::FromDevice(&mut buf), &mut sense);
            let written = match io.class {
                Classified::Scsi(..) => Self::deliver(&buf[..io.moved], usize::MAX, data_in)?,
                Classified::Host(..) => 0,
            };
            return Ok(Self::finish(io.class, written, 0));
        }
        let io = self.io(cdb, SgData::None, &mut sense);
        Ok(Self::finish(io.class, 0, 0))
    }

    /// READ/WRITE(10/12/16), split into chunks of at most the host limit.
    fn read_write(
        &self,
        cdb: &[u8],
        rw: RwCdb,
        data_out: DataOut<'_>,
        data_in: DataIn<'_>,
    ) -> Result<PassthroughOutcome, TransportError> {
        let buf_len = if rw.write { data_out.len } else { data_in.len };
        let bs = match self.block_size {
            Some(b) => usize::try_from(b).unwrap_or(0),
            // Unknown block size: infer it when the buffer is an exact
            // multiple, else pass the command as it is.
            None if rw.blocks > 0 && buf_len % usize::try_from(rw.blocks).unwrap_or(1) == 0 => {
                buf_len / usize::try_from(rw.blocks).unwrap_or(1)
            }
            None => 0,
        };
        if bs == 0 || rw.blocks == 0 {
            return self.plain(cdb, data_out, data_in);
        }
        let blocks = usize::try_from(rw.blocks).unwrap_or(usize::MAX);
        let Some(total) = blocks.checked_mul(bs) else {
            return Ok(PassthroughOutcome::local(HostFailure::Overrun));
        };
        if buf_len < total {
            return Ok(PassthroughOutcome::local(HostFailure::Overrun));
        }
        let limit = self
            .max_bytes
            .map(|m| usize::try_from(m).unwrap_or(usize::MAX))
            .unwrap_or(MAX_BUFFER_BYTES)
            .min(MAX_BUFFER_BYTES);
        let per = (limit / bs).max(1);
        let lba_fits = match rw.form {
            RwForm::Ten | RwForm::Twelve => rw.lba + u64::from(rw.blocks) <= 1 << 32,
            RwForm::Sixteen => rw.lba.checked_add(u64::from(rw.blocks)).is_some(),
        };
        if !lba_fits {
            // Out of range for the form anyway: let the device answer.
            return self.plain(cdb, data_out, data_in);
        }
        let mut done = 0usize;
        let (mut din_total, mut dout_total) = (0usize, 0usize);
        let mut sense = [0u8; SENSE_BUF_LEN];
        let mut buf = vec![0u8; per.min(blocks) * bs];
        while done < blocks {
            let n = per.min(blocks - done);
            let lba = rw.lba + u64::try_from(done).unwrap_or(u64::MAX);
            let chunk_cdb = if n == blocks {
                cdb.to_vec()
            } else {
                match patch_rw(cdb, rw.form, lba, u32::try_from(n).unwrap_or(u32::MAX)) {
                    Some(c) => c,
                    None => return Ok(PassthroughOutcome::check(codes::LBA_OUT_OF_RANGE)),
                }
            };
            let bytes = n * bs;
            let chunk = &mut buf[..bytes];
            let io = if rw.write {
                data_out
                    .reader
                    .read_exact(chunk)
                    .map_err(TransportError::DataOut)?;
                let io = self.io(&chunk_cdb, SgData::ToDevice(chunk), &mut sense);
                dout_total += io.moved;
                io
            } else {
                let io = self.io(&chunk_cdb, SgData::FromDevice(chunk), &mut sense);
                if matches!(io.class, Classified::Scsi(..)) {
                    data_in
                        .writer
                        .write_all(&chunk[..io.moved])
                        .map_err(TransportError::DataIn)?;
                    din_total += io.moved;
                }
                io
            };
            match io.class {
                Classified::Scsi(Status::Good, _) if io.moved == bytes => {}
                other => return Ok(Self::finish(other, din_total, dout_total)),
            }
            done += n;
        }
        Ok(Self::finish(
            Classified::Scsi(Status::Good, Vec::new()),
            din_total,
            dout_total,
        ))
    }

    fn inquiry(
        &self,
        id: &Identity,
        page: Option<u8>,
        cdb: &[u8],
        data_in: DataIn<'_>,
    ) -> Result<PassthroughOutcome, TransportError> {
        let alloc = be16(cdb, 3);
        let good = Classified::Scsi(Status::Good, Vec::new());
        let emulated = match page {
            Some(0x80) => id.serial_page(self.pdt),
            Some(0x83) => id.device_id_page(self.pdt),
            _ => None,
        };
        if let Some(d) = emulated {
            let n = Self::deliver(&d, alloc, data_in)?;
            return Ok(Self::finish(good, n, 0));
        }
        // Fetch the whole page from the device, rewrite, then truncate.
        let mut c = cdb.to_vec();
        c[3..5].copy_from_slice(&255u16.to_be_bytes());
        let (class, mut d) = self.fetch(&c, 255);
        if !matches!(class, Classified::Scsi(Status::Good, _)) {
            return Ok(Self::finish(class, 0, 0));
        }
        let d = match page {
            None => {
                id.rewrite_standard(&mut d);
                d
            }
            _ => id.rewrite_supported_pages(&d),
        };
        let n = Self::deliver(&d, alloc, data_in)?;
        Ok(Self::finish(good, n, 0))
    }

    fn mode_sense(
        &self,
        m: &ModeMask,
        cdb: &[u8],
        data_in: DataIn<'_>,
    ) -> Result<PassthroughOutcome, TransportError> {
        if let Some(s) = m.check_sense_cdb(cdb) {
            return Ok(PassthroughOutcome::check(s));
        }
        let ten = cdb[0] == MODE_SENSE_10;
        let (alloc, full) = if ten {
            (be16(cdb, 7), 0xFFFF)
        } else {
            (usize::from(cdb[4]), 0xFF)
        };
        let mut c = cdb.to_vec();
        if ten {
            c[7..9].copy_from_slice(&0xFFFFu16.to_be_bytes());
        } else {
            c[4] = 0xFF;
        }
        let (class, d) = self.fetch(&c, full);
        if !matches!(class, Classified::Scsi(Status::Good, _)) {
            return Ok(Self::finish(class, 0, 0));
        }
        let stripped = m.strip(&d, ten);
        let n = Self::deliver(&stripped, alloc, data_in)?;
        Ok(Self::finish(
            Classified::Scsi(Status::Good, Vec::new()),
            n,
            0,
        ))
    }

    fn mode_select(
        &self,
        m: &ModeMask,
        cdb: &[u8],
        data_out: DataOut<'_>,
    ) -> Result<PassthroughOutcome, TransportError> {
        let ten = cdb[0] == MODE_SELECT_10;
        let plen = if ten {
            be16(cdb, 7)
        } else {
            usize::from(cdb[4])
        };
        if plen > data_out.len {
            return Ok(PassthroughOutcome::local(HostFailure::Overrun));
        }
        let params = Self::take(data_out, plen)?;
        if let Some(s) = m.check_select(&params, ten) {
            return Ok(PassthroughOutcome::check(s));
        }
        let mut sense = [0u8; SENSE_BUF_LEN];
        let data = if params.is_empty() {
            SgData::None
        } else {
            SgData::ToDevice(&params)
        };
        let io = self.io(cdb, data, &mut sense);
        Ok(Self::finish(io.class, 0, io.moved))
    }

    fn pr_outcome(
        out: PrOutcome,
        cdb: &[u8],
        data_in: DataIn<'_>,
    ) -> Result<PassthroughOutcome, TransportError> {
        let n = if out.status == Status::Good && !out.data.is_empty() {
            Self::deliver(&out.data, be16(cdb, 7), data_in)?
        } else {
            0
        };
        Ok(PassthroughOutcome::Completed(Response {
            status: out.status,
            sense: out.sense.map(|s| s.to_fixed().to_vec()).unwrap_or_default(),
            data_in_len: n,
            data_out_len: 0,
        }))
    }

    fn helper_pr(
        &self,
        h: &PrHelperClient,
        cdb: &[u8],
        data_out: DataOut<'_>,
        data_in: DataIn<'_>,
    ) -> Result<PassthroughOutcome, TransportError> {
        let Some(fd) = self.t.fd() else {
            return Ok(PassthroughOutcome::local(HostFailure::Failure));
        };
        let params = if cdb[0] == PR_OUT {
            let plen = be32(cdb, 5);
            if plen > PR_HELPER_DATA_SIZE {
                return Ok(PassthroughOutcome::check(
                    codes::PARAM_LIST_LENGTH_ERROR.in_cdb(5, None),
                ));
            }
            if plen > data_out.len {
                return Ok(PassthroughOutcome::local(HostFailure::Overrun));
            }
            Self::take(data_out, plen)?
        } else {
            Vec::new()
        };
        match h.execute(fd, cdb, &params) {
            Ok(reply) => {
                let Some(status) = status_from_byte(reply.status) else {
                    return Ok(PassthroughOutcome::local(HostFailure::Failure));
                };
                let n = Self::deliver(&reply.data, be16(cdb, 7), data_in)?;
                Ok(PassthroughOutcome::Completed(Response {
                    status,
                    sense: reply.sense,
                    data_in_len: n,
                    data_out_len: params.len(),
                }))
            }
            Err(e) => {
                log::error!(
                    "passthrough {}: qemu-pr-helper at {}: {e}",
                    self.name,
                    h.path().display()
                );
                Ok(PassthroughOutcome::HostFailed {
                    failure: HostFailure::TransportFailure,
                    detail: HostDetail::Local,
                    data_in_len: 0,
                    data_out_len: 0,
                })
            }
        }
    }

    /// Run `f` on `nexus`'s unit attention queue, after merging the ones
    /// pr=emulated's state raised for it.
    fn with_ua<T>(&self, nexus: &ItNexus, f: impl FnOnce(&mut UaQueue) -> T) -> Option<T> {
        let fresh = match &self.pr {
            PrBackend::Emulated(r) => r.take_unit_attentions(nexus),
            _ => Vec::new(),
        };
        let mut m = self.ua.lock().ok()?;
        let q = m.entry(nexus.clone()).or_insert_with(UaQueue::empty);
        for s in fresh {
            q.push(s);
        }
        Some(f(q))
    }

    /// The next unit attention for `nexus`, consuming it.
    fn next_ua(&self, nexus: &ItNexus) -> Option<Sense> {
        self.with_ua(nexus, UaQueue::pop).flatten()
    }

    /// The unit attention we would report to `nexus` next, without
    /// consuming it. (A device's own unit attentions are only known when a
    /// command returns them.)
    pub fn pending_unit_attention(&self, nexus: &ItNexus) -> Option<Sense> {
        self.with_ua(nexus, |q| q.peek().copied()).flatten()
    }

    /// Establish `ua` for every I_T nexus that has used this unit.
    pub fn raise_unit_attention(&self, ua: Sense) {
        if let Ok(mut m) = self.ua.lock() {
            for q in m.values_mut() {
                q.push(ua);
            }
        }
    }

    fn in_flight(&self, nexus: &ItNexus, tag: Option<u64>) -> bool {
        self.inflight
            .lock()
            .map(|m| {
                m.get(nexus)
                    .is_some_and(|v| tag.is_none_or(|t| v.contains(&t)))
            })
            .unwrap_or(false)
    }

    /// A task management function. Commands already inside SG_IO cannot be
    /// called back, so aborting one that is in flight is REJECTED (the guest
    /// escalates); resets are not sent to the shared device (that would
    /// abort other hosts' commands and drop their SCSI-2 reservations), but
    /// pr=emulated state is reset as SAM-5 says.
    pub fn task_mgmt(&self, nexus: &ItNexus, tmf: TaskMgmt) -> TmfResponse {
        match tmf {
            TaskMgmt::AbortTask(tag) => {
                if self.in_flight(nexus, Some(tag)) {
                    TmfResponse::Rejected
                } else {
                    TmfResponse::Complete
                }
            }
            TaskMgmt::AbortTaskSet | TaskMgmt::ClearTaskSet => {
                if self.in_flight(nexus, None) {
                    TmfResponse::Rejected
                } else {
                    TmfResponse::Complete
                }
            }
            TaskMgmt::ClearAca => TmfResponse::Rejected,
            TaskMgmt::LogicalUnitReset => {
                if let PrBackend::Emulated(r) = &self.pr {
                    r.lu_reset();
                }
                // SAM-5: a LOGICAL UNIT RESET raises 29/03 for every nexus.
                self.with_ua(nexus, |_| ());
                self.raise_unit_attention(codes::BUS_DEVICE_RESET);
                TmfResponse::Complete
            }
            TaskMgmt::ItNexusReset => {
                if let PrBackend::Emulated(r) = &self.pr {
                    r.nexus_loss(nexus);
                }
                self.with_ua(nexus, |q| q.push(codes::I_T_NEXUS_LOSS));
                TmfResponse::Complete
            }
            TaskMgmt::QueryTask(tag) => {
                if self.in_flight(nexus, Some(tag)) {
                    TmfResponse::Succeeded
                } else {
                    TmfResponse::Complete
                }
            }
            TaskMgmt::QueryTaskSet => {
                if self.in_flight(nexus, None) {
                    TmfResponse::Succeeded
                } else {
                    TmfResponse::Complete
                }
            }
            TaskMgmt::QueryAsyncEvent => {
                if self.pending_unit_attention(nexus).is_some() {
                    TmfResponse::Succeeded
                } else {
                    TmfResponse::Complete
                }
            }
        }
    }
}

impl LogicalUnit for PassthroughLu {
    fn execute(
        &self,
        req: &Request<'_>,
        data_out: DataOut<'_>,
        data_in: DataIn<'_>,
    ) -> Result<Response, TransportError> {
        PassthroughLu::execute(self, req, data_out, data_in)
    }

    fn task_mgmt(&self, nexus: &ItNexus, tmf: TaskMgmt) -> TmfResponse {
        PassthroughLu::task_mgmt(self, nexus, tmf)
    }

    fn pending_unit_attention(&self, nexus: &ItNexus) -> Option<Sense> {
        PassthroughLu::pending_unit_attention(self, nexus)
    }

    fn raise_unit_attention(&self, ua: Sense) {
        PassthroughLu::raise_unit_attention(self, ua)
    }
}

/// A one-LUN [`ScsiTarget`] around a [`PassthroughLu`], for wiring a
/// passthrough disk straight to a transport.
#[derive(Debug)]
pub struct PassthroughTarget {
    lun: Lun,
    lu: Arc<PassthroughLu>,
}

impl PassthroughTarget {
    /// `lu` at `lun`.
    pub fn new(lun: Lun, lu: Arc<PassthroughLu>) -> Self {
        PassthroughTarget { lun, lu }
    }

    /// The unit.
    pub fn lu(&self) -> &Arc<PassthroughLu> {
        &self.lu
    }
}

impl ScsiTarget for PassthroughTarget {
    fn execute(
        &self,
        req: &Request<'_>,
        data_out: DataOut<'_>,
        data_in: DataIn<'_>,
    ) -> Result<Response, TransportError> {
        if req.lun != self.lun && req.cdb.first() != Some(&REPORT_LUNS) {
            cdb_len(req.cdb)?;
            return Ok(PassthroughOutcome::check(codes::LUN_NOT_SUPPORTED).into_response());
        }
        self.lu.execute(req, data_out, data_in)
    }

    fn task_mgmt(&self, nexus: &ItNexus, lun: Lun, tmf: TaskMgmt) -> TmfResponse {
        if lun != self.lun {
            return TmfResponse::IncorrectLun;
        }
        self.lu.task_mgmt(nexus, tmf)
    }

    fn has_lun(&self, lun: Lun) -> bool {
        lun == self.lun
    }

    fn pending_unit_attention(&self, nexus: &ItNexus, lun: Lun) -> Option<Sense> {
        (lun == self.lun)
            .then(|| self.lu.pending_unit_attention(nexus))
            .flatten()
    }
}
