//! [`EmulatedTarget`]: a SCSI target device with a map of logical units.
//!
//! The target answers REPORT LUNS itself (for any LUN), answers commands to
//! absent LUNs (INQUIRY: peripheral qualifier 3, type 0x1F; REQUEST SENSE:
//! LOGICAL UNIT NOT SUPPORTED as data; anything else CHECK CONDITION 5/25/00),
//! and hands every other command to the addressed [`LogicalUnit`].
//!
//! ```
//! use std::sync::Arc;
//! use scsi::{Disk, DiskConfig, DiskIdentity, EmulatedTarget, FileBackend, FileOptions};
//! use scsi::{DataIn, DataOut, ItNexus, PortName, Request, ScsiTarget, Status, TargetPort};
//!
//! # let img = tempfile::NamedTempFile::new().unwrap();
//! # img.as_file().set_len(1 << 20).unwrap();
//! # let path = img.path();
//! // One disk: its identity must be the same wherever the disk is opened.
//! let identity = DiskIdentity::parse("6b8f1c2e-0d3a-4c55-9e1f-2a7b3c4d5e6f").unwrap();
//! let backend = Arc::new(FileBackend::open(path, FileOptions { shared: true, ..Default::default() }).unwrap());
//! let disk = Disk::new(DiskConfig::new(identity), backend, None /* or Some(reservations) */).unwrap();
//! let target = EmulatedTarget::new().with_lun(0, Arc::new(disk)).unwrap();
//!
//! let nexus = ItNexus {
//!     initiator: "naa.5000000000000001".parse().unwrap(),
//!     target: TargetPort { relative_id: 1, name: "naa.5001405000000001".parse().unwrap() },
//! };
//! let cdb = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]; // READ CAPACITY(10)
//! let mut data = Vec::new();
//! let mut run = |data: &mut Vec<u8>| {
//!     let req = Request { nexus: &nexus, lun: 0, tag: 1, attr: Default::default(), cdb: &cdb };
//!     let mut none: &[u8] = &[];
//!     target.execute(&req, DataOut { reader: &mut none, len: 0 }, DataIn { writer: data, len: 8 }).unwrap()
//! };
//! // The first command of a new I_T nexus reports POWER ON, RESET (6/29/00).
//! assert_eq!(run(&mut data).status, Status::CheckCondition);
//! let r = run(&mut data);
//! assert_eq!(r.status, Status::Good);
//! assert_eq!(data, [0, 0, 0x07, 0xFF, 0, 0, 0x02, 0x00]); // 2048 blocks of 512
//! # let _ = PortName::derived_naa("x");
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use crate::cdb::{self, Cmd, ParseError};
use crate::datain::complete_data_in;
use crate::disk::spc::standard_inquiry;
use crate::nexus::ItNexus;
use crate::sense::{codes, Sense, Status};
use crate::target::{
    DataIn, DataOut, Lun, Request, Response, ScsiTarget, TaskMgmt, TmfResponse, TransportError,
};

/// One logical unit behind the target. Same contract as [`ScsiTarget`], for
/// one LUN: safe to call from several queues at once.
pub trait LogicalUnit: Send + Sync + std::fmt::Debug {
    /// Execute one command addressed to this unit.
    fn execute(
        &self,
        req: &Request<'_>,
        data_out: DataOut<'_>,
        data_in: DataIn<'_>,
    ) -> Result<Response, TransportError>;

    /// Task management for `nexus` on this unit. For I_T NEXUS RESET the
    /// target calls every unit.
    fn task_mgmt(&self, nexus: &ItNexus, tmf: TaskMgmt) -> TmfResponse;

    /// The unit attention the next command from `nexus` would report.
    fn pending_unit_attention(&self, nexus: &ItNexus) -> Option<Sense>;

    /// Establish a unit attention for every I_T nexus (e.g. REPORTED LUNS
    /// DATA HAS CHANGED).
    fn raise_unit_attention(&self, ua: Sense);

    /// Clear pending unit attentions with this ASC/ASCQ for `nexus` (REPORT
    /// LUNS clears REPORTED LUNS DATA HAS CHANGED). The default does nothing.
    fn clear_unit_attention(&self, _nexus: &ItNexus, _asc: u8, _ascq: u8) {}
}

/// Why a LUN could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LunError {
    /// LUNs are 0..=16383.
    #[error("LUN {0} is out of range (0..=16383)")]
    OutOfRange(Lun),
    /// Already present.
    #[error("LUN {0} is already in use")]
    InUse(Lun),
}

/// Highest single-level LUN.
pub const MAX_LUN: Lun = 16383;

/// Source of LUN map versions, unique across every target of the process.
static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

/// A cached unit: (LUN map version, LUN, unit).
type CachedUnit = (u64, Lun, Arc<dyn LogicalUnit>);

thread_local! {
    /// The logical unit this thread's last command went to, with the LUN
    /// map version it was looked up in: consecutive commands of a queue
    /// thread to the same LU skip the map's lock (two atomic operations, a
    /// measurable part of a 4 KiB read).
    static LAST_LU: RefCell<Option<CachedUnit>> = const { RefCell::new(None) };
}

/// A target device with logical units.
#[derive(Debug)]
pub struct EmulatedTarget {
    luns: RwLock<BTreeMap<Lun, Arc<dyn LogicalUnit>>>,
    /// Version of `luns`, changed (to a process-wide unique value) with it.
    version: AtomicU64,
}

impl Default for EmulatedTarget {
    fn default() -> Self {
        EmulatedTarget {
            luns: RwLock::default(),
            version: AtomicU64::new(NEXT_VERSION.fetch_add(1, Ordering::Relaxed)),
        }
    }
}

impl EmulatedTarget {
    /// A target without logical units.
    pub fn new() -> Self {
        Self::default()
    }

    /// Mark the LUN map changed (called with its write lock held).
    fn bump_version(&self) {
        let v = NEXT_VERSION.fetch_add(1, Ordering::Relaxed);
        self.version.store(v, Ordering::Release);
    }

    /// The unit at `lun` for a command, with the map version it is valid
    /// for: taken from this thread's cache when the map has not changed
    /// since, else looked up. Give it back with [`Self::cache_unit`].
    fn unit_for_command(&self, lun: Lun) -> Option<(u64, Arc<dyn LogicalUnit>)> {
        let version = self.version.load(Ordering::Acquire);
        let cached = LAST_LU
            .try_with(|c| match c.try_borrow_mut().ok()?.take() {
                Some((v, l, lu)) if v == version && l == lun => Some((v, lu)),
                _ => None,
            })
            .ok()
            .flatten();
        if cached.is_some() {
            return cached;
        }
        let m = self.map();
        let version = self.version.load(Ordering::Acquire);
        m.get(&lun).map(|lu| (version, lu.clone()))
    }

    /// Keep `lu` as this thread's last unit.
    fn cache_unit(version: u64, lun: Lun, lu: Arc<dyn LogicalUnit>) {
        let _ = LAST_LU.try_with(|c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                *c = Some((version, lun, lu));
            }
        });
    }

    /// Builder form of [`EmulatedTarget::add_lun`].
    pub fn with_lun(self, lun: Lun, lu: Arc<dyn LogicalUnit>) -> Result<Self, LunError> {
        self.add_lun(lun, lu)?;
        Ok(self)
    }

    fn map(&self) -> RwLockReadGuard<'_, BTreeMap<Lun, Arc<dyn LogicalUnit>>> {
        self.luns.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Add a logical unit (hot-plug): the other units report REPORTED LUNS
    /// DATA HAS CHANGED (6/3F/0E) to every nexus.
    pub fn add_lun(&self, lun: Lun, lu: Arc<dyn LogicalUnit>) -> Result<(), LunError> {
        if lun > MAX_LUN {
            return Err(LunError::OutOfRange(lun));
        }
        let mut m = self.luns.write().unwrap_or_else(|e| e.into_inner());
        if m.contains_key(&lun) {
            return Err(LunError::InUse(lun));
        }
        for other in m.values() {
            other.raise_unit_attention(codes::REPORTED_LUNS_DATA_CHANGED);
        }
        m.insert(lun, lu);
        self.bump_version();
        Ok(())
    }

    /// Remove a logical unit (hot-unplug); the remaining units report
    /// REPORTED LUNS DATA HAS CHANGED.
    pub fn remove_lun(&self, lun: Lun) -> Option<Arc<dyn LogicalUnit>> {
        let mut m = self.luns.write().unwrap_or_else(|e| e.into_inner());
        let lu = m.remove(&lun)?;
        self.bump_version();
        for other in m.values() {
            other.raise_unit_attention(codes::REPORTED_LUNS_DATA_CHANGED);
        }
        Some(lu)
    }

    /// The unit at `lun`.
    pub fn lun(&self, lun: Lun) -> Option<Arc<dyn LogicalUnit>> {
        self.map().get(&lun).cloned()
    }

    /// LUNs present, ascending.
    pub fn luns(&self) -> Vec<Lun> {
        self.map().keys().copied().collect()
    }

    fn check(sense: Sense) -> Response {
        Response {
            status: Status::CheckCondition,
            sense: sense.to_fixed().to_vec(),
            data_in_len: 0,
            data_out_len: 0,
        }
    }

    fn good(n: usize) -> Response {
        Response {
            status: Status::Good,
            sense: Vec::new(),
            data_in_len: n,
            data_out_len: 0,
        }
    }

    /// REPORT LUNS (SPC-4 6.33), answered by the target for any LUN.
    #[cold]
    #[inline(never)]
    fn report_luns(
        &self,
        c: &cdb::Cdb<'_>,
        data_in: &mut DataIn<'_>,
    ) -> Result<Response, TransportError> {
        if let Err(e) = c.check_reserved() {
            return Ok(Self::check(
                e.sense().unwrap_or(codes::INVALID_FIELD_IN_CDB),
            ));
        }
        let alloc = c.alloc_len().unwrap_or(0);
        if alloc < 16 {
            return Ok(Self::check(codes::INVALID_FIELD_IN_CDB.in_cdb(6, None)));
        }
        let luns: Vec<Lun> = match c.byte(2) {
            // All logical units (0), or all including well-known ones (2):
            // we have no well-known logical units.
            0x00 | 0x02 => self.luns(),
            // Well-known logical units only.
            0x01 => Vec::new(),
            _ => return Ok(Self::check(codes::INVALID_FIELD_IN_CDB.in_cdb(2, None))),
        };
        let mut out = vec![0u8; 8];
        let len = u32::try_from(luns.len() * 8).unwrap_or(u32::MAX);
        out[0..4].copy_from_slice(&len.to_be_bytes());
        for lun in luns {
            out.extend_from_slice(&encode_lun(lun));
        }
        let n = complete_data_in(&out, Some(alloc), data_in)?;
        Ok(Self::good(n))
    }

    /// A command to a LUN without a logical unit.
    #[cold]
    #[inline(never)]
    fn absent_lun(
        &self,
        c: &cdb::Cdb<'_>,
        data_in: &mut DataIn<'_>,
    ) -> Result<Response, TransportError> {
        if let Err(e) = c.check_reserved() {
            return Ok(Self::check(
                e.sense().unwrap_or(codes::INVALID_FIELD_IN_CDB),
            ));
        }
        let data = match c.cmd() {
            Cmd::Inquiry => {
                if c.bit(1, 0) {
                    // VPD: only the supported-pages page, with PQ 3.
                    if c.byte(2) != 0 {
                        return Ok(Self::check(codes::INVALID_FIELD_IN_CDB.in_cdb(2, None)));
                    }
                    vec![0x7F, 0x00, 0x00, 0x01, 0x00]
                } else {
                    if c.byte(2) != 0 {
                        return Ok(Self::check(codes::INVALID_FIELD_IN_CDB.in_cdb(2, None)));
                    }
                    standard_inquiry(0x7F, "", "", "")
                }
            }
            Cmd::RequestSense => codes::LUN_NOT_SUPPORTED.encode(c.bit(1, 0)),
            _ => return Ok(Self::check(codes::LUN_NOT_SUPPORTED)),
        };
        let n = complete_data_in(&data, c.alloc_len(), data_in)?;
        Ok(Self::good(n))
    }
}

/// The 8-byte LUN of REPORT LUNS: peripheral device addressing below 256,
/// flat space addressing above.
pub fn encode_lun(lun: Lun) -> [u8; 8] {
    let [hi, lo] = lun.to_be_bytes();
    if lun < 256 {
        [0, lo, 0, 0, 0, 0, 0, 0]
    } else {
        [0x40 | (hi & 0x3F), lo, 0, 0, 0, 0, 0, 0]
    }
}

impl ScsiTarget for EmulatedTarget {
    fn execute(
        &self,
        req: &Request<'_>,
        data_out: DataOut<'_>,
        mut data_in: DataIn<'_>,
    ) -> Result<Response, TransportError> {
        let parsed = cdb::lookup(req.cdb);
        match parsed {
            Err(ParseError::Empty) => return Err(TransportError::EmptyCdb),
            Err(ParseError::TooShort { opcode, got, need }) => {
                return Err(TransportError::CdbTooShort { opcode, got, need })
            }
            Ok(c) if c.cmd() == Cmd::ReportLuns => {
                let r = self.report_luns(&c, &mut data_in)?;
                if r.status == Status::Good {
                    // SPC-4: REPORT LUNS clears REPORTED LUNS DATA HAS CHANGED.
                    let ua = codes::REPORTED_LUNS_DATA_CHANGED;
                    for lu in self.map().values() {
                        lu.clear_unit_attention(req.nexus, ua.asc, ua.ascq);
                    }
                }
                return Ok(r);
            }
            _ => {}
        }
        // This thread's last unit, when the map has not changed since: the
        // command runs while the cache is borrowed (nothing moves in or out
        // of it); a nested command on the thread would find it borrowed and
        // take the map path.
        let version = self.version.load(Ordering::Acquire);
        let mut args = Some((data_out, data_in));
        let hit = LAST_LU
            .try_with(|c| {
                let c = c.try_borrow().ok()?;
                match &*c {
                    Some((v, l, lu)) if *v == version && *l == req.lun => {
                        let (dout, din) = args.take()?;
                        Some(lu.execute(req, dout, din))
                    }
                    _ => None,
                }
            })
            .ok()
            .flatten();
        if let Some(r) = hit {
            return r;
        }
        let Some((data_out, mut data_in)) = args else {
            // Unreachable: the arguments are only taken on a hit.
            return Ok(Self::check(codes::INTERNAL_TARGET_FAILURE));
        };
        match self.unit_for_command(req.lun) {
            Some((version, lu)) => {
                let r = lu.execute(req, data_out, data_in);
                Self::cache_unit(version, req.lun, lu);
                r
            }
            None => match parsed {
                Ok(c) => self.absent_lun(&c, &mut data_in),
                Err(_) => Ok(Self::check(codes::LUN_NOT_SUPPORTED)),
            },
        }
    }

    fn task_mgmt(&self, nexus: &ItNexus, lun: Lun, tmf: TaskMgmt) -> TmfResponse {
        let map = self.map();
        if tmf == TaskMgmt::ItNexusReset {
            for lu in map.values() {
                lu.task_mgmt(nexus, tmf);
            }
            return TmfResponse::Complete;
        }
        match map.get(&lun) {
            Some(lu) => lu.task_mgmt(nexus, tmf),
            None => TmfResponse::IncorrectLun,
        }
    }

    fn has_lun(&self, lun: Lun) -> bool {
        self.map().contains_key(&lun)
    }

    fn pending_unit_attention(&self, nexus: &ItNexus, lun: Lun) -> Option<Sense> {
        self.map().get(&lun)?.pending_unit_attention(nexus)
    }
}
