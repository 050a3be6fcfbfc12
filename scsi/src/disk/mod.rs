//! The emulated disk logical unit (SPC-4 + SBC-4 over a [`BlockBackend`]).
//!
//! Command path (one call = one command, from any request-queue thread):
//! 1. the CDB is looked up in [`crate::cdb::OPCODES`] (length, service
//!    action); a short CDB is a transport error;
//! 2. the I_T nexus is registered (a new one starts with 6/29/00) and the
//!    reservation state's unit attentions are merged in; unless the command
//!    is INQUIRY, REPORT LUNS or REQUEST SENSE, a pending unit attention is
//!    reported (and cleared) instead of executing it; the tag joins the
//!    task set (a tag already outstanding: 0B/4E/00);
//! 3. unsupported commands (UNMAP without discard, PR without a reservation
//!    state) get 5/20/00; reserved CDB bits 5/24/00 with a field pointer;
//! 4. [`Reservations::conflicts`] with the command's `PrAccess` (answers
//!    cached per nexus while the state version is unchanged): RESERVATION
//!    CONFLICT, no sense; a command that changes the medium then passes the
//!    abort fence ([`Reservations::enter_io`], held until its handler
//!    returns): TASK ABORTED without touching the medium if a PREEMPT AND
//!    ABORT of any process preempted its nexus since it entered the task set;
//! 5. the handler runs; data-in is truncated once to ALLOCATION LENGTH and
//!    the initiator's buffer; sense uses descriptor format when D_SENSE is
//!    set in the control mode page;
//! 6. the tag leaves the task set; a command aborted meanwhile (ABORT TASK,
//!    ABORT TASK SET, CLEAR TASK SET, LU reset, I_T nexus reset, PREEMPT AND
//!    ABORT of this or another process: [`Reservations::aborted_since`])
//!    answers `Status::TaskAborted` with no data, and the TMF returns once it
//!    has.
//!
//! Medium I/O is positional and lock-free except for COMPARE AND WRITE,
//! which excludes the LU's other writes while it compares and writes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use crate::backend::BlockBackend;
use crate::cdb::{self, Cdb, Cmd, Needs, ParseError, UaRule};
use crate::datain::{complete_data_in, read_data_out_into};
use crate::emulated::LogicalUnit;
use crate::nexus::{ItNexus, PortName};
use crate::pr::{NexusPrCache, PrOutcome, Reservations};
use crate::sense::{codes, Sense, Status};
use crate::target::{DataIn, DataOut, Request, Response, TaskMgmt, TmfResponse, TransportError};
use crate::unit_attention::UaQueue;
use tasks::{Overlap, Place, TaskSet};

mod identity;
mod mode;
mod sbc;
pub(crate) mod spc;
mod tasks;

pub use identity::{DiskIdentity, IdentityError, DEFAULT_COMPANY_ID};

/// Largest transfer of one READ/WRITE/VERIFY (reported in VPD 0xB0).
pub const MAX_TRANSFER_BYTES: u64 = 32 << 20;
/// Largest range of one UNMAP descriptor / WRITE SAME, in logical blocks.
pub const MAX_UNMAP_BLOCKS: u32 = 1 << 22;
/// Most UNMAP block descriptors per command.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// Most logical blocks of one COMPARE AND WRITE.
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 64;
/// Capacity of the echo buffer (READ/WRITE BUFFER mode 0x0A).
pub const ECHO_BUFFER_CAPACITY: usize = 4096;
/// Longest parameter list accepted by commands that take one.
const MAX_PARAM_LIST: u64 = 1 << 20;
/// How long a TMF waits for aborted commands still executing on other queues.
const ABORT_WAIT: Duration = Duration::from_secs(10);

/// Why a disk configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// Logical block size other than 512 or 4096.
    #[error("logical block size must be 512 or 4096, not {0}")]
    BlockSize(u32),
    /// Physical block exponent too large.
    #[error("physical block exponent {0} is larger than 15")]
    PhysicalExponent(u8),
    /// INQUIRY strings too long or not printable ASCII.
    #[error("{field} must be printable ASCII of at most {max} bytes: {value:?}")]
    InquiryString {
        /// Which field.
        field: &'static str,
        /// Its limit.
        max: usize,
        /// The value.
        value: String,
    },
    /// Backend size query failed.
    #[error("cannot read the backend size: {0}")]
    Size(#[source] std::io::Error),
}

/// Configuration of an emulated disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// World-wide identity (VPD 0x83 NAA designator), identical wherever the
    /// same disk is opened.
    pub identity: DiskIdentity,
    /// T10 VENDOR IDENTIFICATION (≤ 8 ASCII).
    pub vendor: String,
    /// PRODUCT IDENTIFICATION (≤ 16 ASCII).
    pub product: String,
    /// PRODUCT REVISION LEVEL (≤ 4 ASCII).
    pub revision: String,
    /// Unit serial number (VPD 0x80); default derived from the identity.
    pub serial: Option<String>,
    /// Logical block size: 512 or 4096.
    pub block_size: u32,
    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (3 for 512e on 4 KiB).
    pub physical_block_exponent: u8,
    /// Write protected.
    pub read_only: bool,
    /// MEDIUM ROTATION RATE in VPD 0xB1 (1 = non-rotating, 0 = not reported).
    pub rotation_rate: u16,
    /// Offer UNMAP / thin provisioning when the backend can discard.
    pub unmap: bool,
    /// Initial (default) WCE: write-back cache enabled.
    pub write_cache: bool,
}

impl DiskConfig {
    /// Defaults: 512-byte blocks, writable, UNMAP on, write cache on.
    pub fn new(identity: DiskIdentity) -> Self {
        DiskConfig {
            identity,
            vendor: "ARBITER".into(),
            product: "VIRTUAL DISK".into(),
            revision: "0001".into(),
            serial: None,
            block_size: 512,
            physical_block_exponent: 0,
            read_only: false,
            rotation_rate: 1,
            unmap: true,
            write_cache: true,
        }
    }

    fn validate(&self) -> Result<(), DiskError> {
        if self.block_size != 512 && self.block_size != 4096 {
            return Err(DiskError::BlockSize(self.block_size));
        }
        if self.physical_block_exponent > 15 {
            return Err(DiskError::PhysicalExponent(self.physical_block_exponent));
        }
        for (field, max, value) in [
            ("vendor", 8, &self.vendor),
            ("product", 16, &self.product),
            ("revision", 4, &self.revision),
        ] {
            if value.len() > max || !value.bytes().all(|c| (0x20..0x7F).contains(&c)) {
                return Err(DiskError::InquiryString {
                    field,
                    max,
                    value: value.clone(),
                });
            }
        }
        if let Some(s) = &self.serial {
            if s.len() > 252 || !s.bytes().all(|c| (0x20..0x7F).contains(&c)) {
                return Err(DiskError::InquiryString {
                    field: "serial",
                    max: 252,
                    value: s.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Current values of the changeable mode parameters.
#[derive(Debug)]
struct ModeState {
    wce: AtomicBool,
    d_sense: AtomicBool,
}

/// A fast non-cryptographic hasher (the Fx rotate-multiply scheme) for the
/// task and nexus maps looked up twice per command. Keys are tags and port
/// names chosen by the transport; a guest crafting colliding tags could
/// only slow down its own commands.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

const FX_K: u64 = 0x517c_c1b7_2722_0a95;

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(FX_K);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(u64::try_from(i).unwrap_or(u64::MAX));
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// An I_T nexus as a map key: hashed on the initiator name and relative
/// target port only (cheap, and enough to spread real nexuses); equality is
/// the full `ItNexus` equality.
#[derive(Debug, Clone, Eq)]
#[repr(transparent)]
struct NexusKey(ItNexus);

impl NexusKey {
    fn of(n: &ItNexus) -> &NexusKey {
        // SAFETY: NexusKey is a #[repr(transparent)] wrapper around ItNexus,
        // so both have the same layout and the reference stays valid for the
        // same lifetime.
        unsafe { &*std::ptr::from_ref(n).cast::<NexusKey>() }
    }
}

impl PartialEq for NexusKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.target.relative_id == other.0.target.relative_id
            && self.0.initiator == other.0.initiator
            && self.0.target.name == other.0.target.name
    }
}

impl Hash for NexusKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        match &self.0.initiator {
            PortName::Naa(b) => h.write_u64(u64::from_ne_bytes(*b)),
            PortName::Iscsi(s) => h.write(s.as_bytes()),
        }
        h.write_u16(self.0.target.relative_id);
    }
}

/// Largest buffer kept for reuse per thread.
const SCRATCH_MAX: usize = 1 << 20;

thread_local! {
    /// A data buffer reused by the commands a queue thread executes, so the
    /// I/O path neither allocates nor zeroes per command.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `len` bytes (contents unspecified), from the thread's scratch
/// buffer when it is free.
pub(crate) fn take_buffer(len: usize) -> Vec<u8> {
    if len > SCRATCH_MAX {
        return vec![0; len];
    }
    let mut v = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    v.resize(len, 0);
    v
}

/// Return a buffer for reuse by the next command on this thread.
pub(crate) fn recycle_buffer(v: Vec<u8>) {
    if v.capacity() != 0 && v.capacity() <= SCRATCH_MAX {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            if v.capacity() > s.capacity() {
                *s = v;
            }
        });
    }
}

/// Per-I_T-nexus state of the logical unit. Commands reach it through a
/// per-thread cache ([`Disk::nexus`]) without the LU's lock; the task set
/// and the "unit attention pending" and reservation answer checks of the
/// command path are lock-free.
#[derive(Debug)]
struct Nexus {
    tasks: TaskSet,
    /// Whether `slow.ua` is not empty (kept in step under its lock).
    ua_pending: AtomicBool,
    /// The reservation state version `pr_conflicts` was taken at
    /// (`NO_VERSION`: none).
    pr_version: AtomicU64,
    /// Conflict mask (`PrAccess::bit`) at `pr_version` or later.
    pr_conflicts: AtomicU8,
    slow: Mutex<NexusSlow>,
}

/// The parts of a nexus' state that commands change rarely.
#[derive(Debug)]
struct NexusSlow {
    ua: UaQueue,
    /// Echo buffer (WRITE/READ BUFFER mode 0x0A).
    echo: Option<Vec<u8>>,
    /// Reservation answers while the reservation state is unchanged.
    pr: NexusPrCache,
}

/// `Nexus::pr_version` when no answer is kept.
const NO_VERSION: u64 = u64::MAX;

impl Nexus {
    fn new() -> Self {
        let ua = UaQueue::new_nexus();
        Nexus {
            tasks: TaskSet::default(),
            ua_pending: AtomicBool::new(!ua.is_empty()),
            pr_version: AtomicU64::new(NO_VERSION),
            pr_conflicts: AtomicU8::new(0),
            slow: Mutex::new(NexusSlow {
                ua,
                echo: None,
                pr: NexusPrCache::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, NexusSlow> {
        self.slow.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `f` on the rarely changed state, keeping `ua_pending` in step
    /// with its unit attention queue.
    #[inline(never)]
    fn with<R>(&self, f: impl FnOnce(&mut NexusSlow) -> R) -> R {
        let mut s = self.lock();
        let r = f(&mut s);
        self.ua_pending.store(!s.ua.is_empty(), Ordering::Release);
        r
    }
}

/// A command in its nexus' task set.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Task<'a> {
    nexus: &'a Nexus,
    tag: u64,
    place: Place,
}

#[derive(Debug, Default)]
struct LuState {
    /// Every nexus that ever sent a command; never removed while the disk
    /// lives (`Disk::nexus` hands out references to them).
    nexuses: FastMap<NexusKey, Arc<Nexus>>,
}

impl LuState {
    /// The state of `n`, registered if new.
    fn registered(&mut self, n: &ItNexus) -> &Arc<Nexus> {
        if !self.nexuses.contains_key(NexusKey::of(n)) {
            self.nexuses
                .insert(NexusKey(n.clone()), Arc::new(Nexus::new()));
        }
        &self.nexuses[NexusKey::of(n)]
    }
}

/// Source of `Disk::id`.
static NEXT_DISK_ID: AtomicU64 = AtomicU64::new(1);

/// A nexus state cached by a thread: (disk id, nexus, its state).
type CachedNexus = (u64, ItNexus, Arc<Nexus>);

thread_local! {
    /// The nexuses this thread's last commands came from, most recent
    /// first: a queue thread finds its nexus without the LU's lock or a
    /// hash.
    static NEXUSES: RefCell<[Option<CachedNexus>; 4]> =
        const { RefCell::new([None, None, None, None]) };
}

/// A command failed: CHECK CONDITION, another status, or a transport error.
#[derive(Debug)]
pub(crate) enum Fail {
    Check(Sense),
    Status(Status),
    Transport(TransportError),
}

impl From<Sense> for Fail {
    fn from(s: Sense) -> Self {
        Fail::Check(s)
    }
}

impl From<TransportError> for Fail {
    fn from(e: TransportError) -> Self {
        Fail::Transport(e)
    }
}

type Res = Result<Vec<u8>, Fail>;

/// Per-command context handed to the command handlers.
pub(crate) struct Ctx<'a, 'b, 'c> {
    pub nexus: &'a ItNexus,
    /// The command's tag (its entry in the task set).
    pub tag: u64,
    /// Its entry in the task set.
    pub task: Task<'a>,
    pub cdb: Cdb<'a>,
    pub data_out: &'b mut DataOut<'c>,
    pub out_used: usize,
    /// The data-in buffer, for handlers that move medium data straight into
    /// it ([`Ctx::in_place`] is then set and the handler returns no data).
    pub data_in: &'b mut DataIn<'c>,
    /// Bytes a handler wrote to data-in in place.
    pub in_place: Option<usize>,
    /// Set when the handler already took the command out of the task set:
    /// whether it had been aborted.
    pub ended: Option<bool>,
    /// The abort epoch the command entered the task set at.
    pub since: u64,
}

impl Ctx<'_, '_, '_> {
    /// Read `n` bytes of data-out.
    pub fn read_out(&mut self, n: usize) -> Result<Vec<u8>, Fail> {
        if n > self.data_out.len {
            // Refused before allocating `n` bytes.
            return Err(TransportError::DataOut(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "command needs {n} bytes of data-out, buffer has {}",
                    self.data_out.len
                ),
            ))
            .into());
        }
        let mut v = take_buffer(n);
        read_data_out_into(self.data_out, &mut v)?;
        self.data_out.len -= n;
        self.out_used += n;
        Ok(v)
    }

    /// Read the parameter list (PARAMETER LIST LENGTH bytes of data-out).
    pub fn params(&mut self) -> Result<Vec<u8>, Fail> {
        let n = self.cdb.param_len().unwrap_or(0);
        if n > MAX_PARAM_LIST {
            return Err(codes::PARAM_LIST_LENGTH_ERROR.into());
        }
        self.read_out(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

/// An emulated SBC disk.
#[derive(Debug)]
pub struct Disk {
    cfg: DiskConfig,
    serial: String,
    /// Unique in the process (keys the per-thread nexus cache).
    id: u64,
    backend: Arc<dyn BlockBackend>,
    pr: Option<Arc<dyn Reservations>>,
    discard: bool,
    blocks: AtomicU64,
    mode: ModeState,
    state: Mutex<LuState>,
    idle: Condvar,
    /// Shared by writes, exclusive for COMPARE AND WRITE (atomic per LU).
    caw: RwLock<()>,
}

impl Disk {
    /// A disk over `backend`; `pr` is the reservation state of the disk (or
    /// `None`: reservation commands are then not supported).
    pub fn new(
        cfg: DiskConfig,
        backend: Arc<dyn BlockBackend>,
        pr: Option<Arc<dyn Reservations>>,
    ) -> Result<Self, DiskError> {
        cfg.validate()?;
        let size = backend.size().map_err(DiskError::Size)?;
        let blocks = size / u64::from(cfg.block_size);
        let serial = cfg
            .serial
            .clone()
            .unwrap_or_else(|| cfg.identity.default_serial());
        let discard = cfg.unmap && !cfg.read_only && backend.supports_discard();
        Ok(Disk {
            mode: ModeState {
                wce: AtomicBool::new(cfg.write_cache),
                d_sense: AtomicBool::new(false),
            },
            cfg,
            serial,
            id: NEXT_DISK_ID.fetch_add(1, Ordering::Relaxed),
            backend,
            pr,
            discard,
            blocks: AtomicU64::new(blocks),
            state: Mutex::new(LuState::default()),
            idle: Condvar::new(),
            caw: RwLock::new(()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DiskConfig {
        &self.cfg
    }

    /// Capacity in logical blocks, as last seen.
    pub fn blocks(&self) -> u64 {
        self.blocks.load(Ordering::Relaxed)
    }

    /// Whether UNMAP / logical block provisioning is offered.
    pub fn thin_provisioned(&self) -> bool {
        self.discard
    }

    /// Look at the backend size again; if it changed, establish CAPACITY DATA
    /// HAS CHANGED (6/2A/09) for every I_T nexus. Returns whether it changed.
    pub fn check_resize(&self) -> bool {
        let Ok(size) = self.backend.size() else {
            return false;
        };
        let new = size / u64::from(self.cfg.block_size);
        let old = self.blocks.swap(new, Ordering::Relaxed);
        if old == new {
            return false;
        }
        log::info!(
            "disk {}: capacity {} -> {} blocks",
            self.cfg.identity,
            old,
            new
        );
        self.raise_ua_all(codes::CAPACITY_DATA_CHANGED, None);
        true
    }

    fn lock(&self) -> MutexGuard<'_, LuState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Establish `ua` for every known nexus except `except`.
    fn raise_ua_all(&self, ua: Sense, except: Option<&ItNexus>) {
        let st = self.lock();
        for (n, s) in st.nexuses.iter() {
            if Some(&n.0) != except {
                s.with(|s| s.ua.push(ua));
            }
        }
    }

    fn d_sense(&self) -> bool {
        self.mode.d_sense.load(Ordering::Relaxed)
    }

    fn response(&self, status: Status, sense: Option<Sense>, din: usize, dout: usize) -> Response {
        Response {
            status,
            sense: sense.map(|s| s.encode(self.d_sense())).unwrap_or_default(),
            data_in_len: din,
            data_out_len: dout,
        }
    }

    fn merge_pr_uas(&self, nexus: &ItNexus, st: &mut NexusSlow) {
        if let Some(pr) = &self.pr {
            for ua in pr.take_unit_attentions(nexus) {
                st.ua.push(ua);
            }
        }
    }

    /// The state of `n` (registered if new): from this thread's cache, else
    /// looked up under the LU's lock and cached.
    fn nexus(&self, n: &ItNexus) -> &Nexus {
        let hit = NEXUSES
            .try_with(|c| {
                let c = c.try_borrow().ok()?;
                c.iter()
                    .flatten()
                    .find(|(id, k, _)| *id == self.id && k == n)
                    .map(|(_, _, a)| Arc::as_ptr(a))
            })
            .ok()
            .flatten();
        let ptr = match hit {
            Some(p) => p,
            None => self.nexus_uncached(n),
        };
        // SAFETY: `ptr` points into an `Arc<Nexus>` held by this disk's
        // `state.nexuses` (the cache only holds nexuses of the disk with the
        // same unique id, and `registered` put this one there), and the disk
        // never removes a nexus from that map, so the `Nexus` lives at least
        // as long as `&self`.
        unsafe { &*ptr }
    }

    /// The state of `n` looked up under the LU's lock (registered if new),
    /// then cached for this thread.
    #[cold]
    #[inline(never)]
    fn nexus_uncached(&self, n: &ItNexus) -> *const Nexus {
        let arc = self.lock().registered(n).clone();
        let p = Arc::as_ptr(&arc);
        let _ = NEXUSES.try_with(|c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                c.rotate_right(1);
                c[0] = Some((self.id, n.clone(), arc));
            }
        });
        p
    }

    /// Reservation conflict mask for a command of `nexus` (`None`: ask
    /// the reservation state): the nexus' kept answer while the state
    /// version is unchanged, else refreshed (taking its unit attentions).
    fn pr_conflicts(pr: &dyn Reservations, nx: &Nexus, nexus: &ItNexus) -> Option<u8> {
        let v = pr.state_version();
        if let Some(v) = v {
            if nx.pr_version.load(Ordering::Acquire) == v {
                return Some(nx.pr_conflicts.load(Ordering::Acquire));
            }
        }
        nx.with(|s| {
            let NexusSlow { ua, pr: cache, .. } = s;
            let c = cache.refresh(pr, nexus, |u| ua.push(u));
            if let (Some(v), Some(c)) = (v, c) {
                // The mask may be newer than `v`, never older.
                nx.pr_version.store(NO_VERSION, Ordering::Release);
                nx.pr_conflicts.store(c, Ordering::Release);
                nx.pr_version.store(v, Ordering::Release);
            }
            c
        })
    }

    /// Register the command: report a pending unit attention instead of
    /// executing it (unless exempt), or refuse a tag already outstanding.
    /// Returns its task and the reservation conflict mask for the command
    /// (`PrAccess` bits; `None`: ask the reservation state).
    fn begin(&self, req: &Request<'_>, exempt: bool) -> Result<(Task<'_>, Option<u8>), Sense> {
        let nx = self.nexus(req.nexus);
        let conflicts = match &self.pr {
            Some(pr) => Self::pr_conflicts(pr.as_ref(), nx, req.nexus),
            None => Some(0),
        };
        if !exempt && nx.ua_pending.load(Ordering::Acquire) {
            if let Some(ua) = nx.with(|s| s.ua.pop()) {
                return Err(ua);
            }
        }
        match nx.tasks.insert(req.tag) {
            Ok(place) => Ok((
                Task {
                    nexus: nx,
                    tag: req.tag,
                    place,
                },
                conflicts,
            )),
            Err(Overlap) => {
                // Overlapped command: SAM-5 5.9.3 aborts the new one (and
                // the old one, which we let finish; its tag stays tracked).
                // A TMF may have marked the refused entry meanwhile.
                self.notify_idle();
                Err(codes::OVERLAPPED_COMMANDS)
            }
        }
    }

    /// Unregister the command; returns whether it was aborted meanwhile.
    fn end(&self, task: Task<'_>) -> bool {
        let aborted = task.nexus.tasks.remove(task.tag, task.place);
        if aborted {
            self.notify_idle();
        }
        aborted
    }

    /// Wake the task management functions waiting in `wait_aborted`.
    fn notify_idle(&self) {
        // Under the lock they check under: a task leaving just after a
        // check is seen by the next one.
        let _st = self.lock();
        self.idle.notify_all();
    }

    /// Whether a command (not the PERSISTENT RESERVE OUT that did it) that
    /// entered the task set at abort epoch `since` was preempted by a
    /// PREEMPT AND ABORT meanwhile, in any process.
    fn preempted_since(&self, nexus: &ItNexus, since: u64, cmd: Option<Cmd>) -> bool {
        cmd != Some(Cmd::PersistentReserveOut)
            && self
                .pr
                .as_ref()
                .is_some_and(|pr| pr.aborted_since(nexus, since))
    }

    /// Execute the command; `since` is the abort epoch it entered the task
    /// set at, `conflicts` the conflict mask `begin` found (if known).
    fn run(&self, ctx: &mut Ctx<'_, '_, '_>, since: u64, conflicts: Option<u8>) -> Res {
        let info = ctx.cdb.info;
        let supported = match info.needs {
            Needs::Nothing => true,
            Needs::Discard => self.discard,
            Needs::Reservations => self.pr.is_some(),
        };
        if !supported {
            return Err(codes::INVALID_OPCODE.in_cdb(0, None).into());
        }
        ctx.cdb
            .check_reserved()
            .map_err(|e| Fail::Check(e.sense().unwrap_or(codes::INVALID_FIELD_IN_CDB)))?;
        if let Some(pr) = &self.pr {
            let conflict = match conflicts {
                Some(mask) => mask & info.access.bit() != 0,
                None => pr.conflicts(ctx.nexus, info.access),
            };
            if conflict {
                return Err(Fail::Status(Status::ReservationConflict));
            }
        }
        // Held until the handler returned: a PREEMPT AND ABORT waits for it.
        let _pass = match &self.pr {
            Some(pr) if changes_medium(info.cmd) => Some(
                pr.enter_io(ctx.nexus, since)
                    .ok_or(Fail::Status(Status::TaskAborted))?,
            ),
            _ => None,
        };
        match info.cmd {
            Cmd::Read6 | Cmd::Read10 | Cmd::Read12 | Cmd::Read16 => self.read(ctx),
            Cmd::Write6 | Cmd::Write10 | Cmd::Write12 | Cmd::Write16 => self.write(ctx, false),
            _ => self.run_other(ctx),
        }
    }

    /// The commands other than READ and WRITE, kept out of line so that the
    /// I/O path's code stays compact.
    #[inline(never)]
    fn run_other(&self, ctx: &mut Ctx<'_, '_, '_>) -> Res {
        let info = ctx.cdb.info;
        match info.cmd {
            Cmd::TestUnitReady => Ok(Vec::new()),
            Cmd::RequestSense => self.request_sense(ctx),
            Cmd::Inquiry => self.inquiry(ctx),
            Cmd::ReportLuns => Err(codes::INTERNAL_TARGET_FAILURE.into()),
            Cmd::ModeSense6 | Cmd::ModeSense10 => self.mode_sense(ctx),
            Cmd::ModeSelect6 | Cmd::ModeSelect10 => self.mode_select(ctx),
            Cmd::ReportSupportedOpcodes => self.report_opcodes(ctx),
            Cmd::ReportSupportedTmfs => Ok(spc::report_tmfs(&ctx.cdb)),
            Cmd::ReadBuffer => self.read_buffer(ctx),
            Cmd::WriteBuffer => self.write_buffer(ctx),
            Cmd::LogSense => spc::log_sense(&ctx.cdb),
            Cmd::SendDiagnostic => self.send_diagnostic(ctx),
            Cmd::PersistentReserveIn => self.pr_call(|pr| pr.reserve_in(ctx.nexus, ctx.cdb.bytes)),
            Cmd::PersistentReserveOut => {
                let params = ctx.params()?;
                let mut preempted = Vec::new();
                let r = self.pr_call(|pr| {
                    let r = pr.reserve_out_with_aborts(ctx.nexus, ctx.cdb.bytes, &params);
                    preempted = r.abort;
                    r.outcome
                });
                if !preempted.is_empty() {
                    self.abort_preempted(ctx.nexus, ctx.tag, &preempted);
                }
                r
            }
            Cmd::Reserve6 | Cmd::Reserve10 => self.pr_call(|pr| pr.scsi2_reserve(ctx.nexus)),
            Cmd::Release6 | Cmd::Release10 => self.pr_call(|pr| pr.scsi2_release(ctx.nexus)),
            Cmd::Read6 | Cmd::Read10 | Cmd::Read12 | Cmd::Read16 => self.read(ctx),
            Cmd::Write6 | Cmd::Write10 | Cmd::Write12 | Cmd::Write16 => self.write(ctx, false),
            Cmd::WriteAndVerify10 | Cmd::WriteAndVerify16 => self.write(ctx, true),
            Cmd::Verify10 | Cmd::Verify16 => self.verify(ctx),
            Cmd::ReadCapacity10 => Ok(self.read_capacity10()),
            Cmd::ReadCapacity16 => Ok(self.read_capacity16()),
            Cmd::SynchronizeCache10 | Cmd::SynchronizeCache16 => self.synchronize_cache(ctx),
            Cmd::Unmap => self.unmap(ctx),
            Cmd::WriteSame10 | Cmd::WriteSame16 => self.write_same(ctx),
            Cmd::CompareAndWrite => self.compare_and_write(ctx),
            Cmd::GetLbaStatus => self.get_lba_status(ctx),
            Cmd::StartStopUnit => self.start_stop(ctx),
            Cmd::PreventAllowMediumRemoval => Ok(Vec::new()),
            Cmd::FormatUnit => self.format_unit(ctx),
        }
    }

    fn pr_call(&self, f: impl FnOnce(&dyn Reservations) -> PrOutcome) -> Res {
        let pr = self.pr.as_deref().ok_or(codes::INVALID_OPCODE)?;
        let out = f(pr);
        match (out.status, out.sense) {
            (Status::Good, _) => Ok(out.data),
            (Status::CheckCondition, Some(s)) => Err(Fail::Check(s)),
            (Status::CheckCondition, None) => Err(Fail::Check(codes::INTERNAL_TARGET_FAILURE)),
            (st, _) => Err(Fail::Status(st)),
        }
    }

    /// PREEMPT AND ABORT (SPC-4 5.7.11.5): every outstanding command of the
    /// preempted registrants' I_T nexuses on this logical unit is aborted,
    /// except the PERSISTENT RESERVE OUT doing it. The commands end with TASK
    /// ABORTED when they leave their queues; their nexuses learn of the
    /// preemption through the 2A/05 unit attention the reservation state
    /// raised. Marking them here makes QUERY TASK see them gone at once;
    /// what stops their writes, here and in other processes, is the abort
    /// fence (`crate::pr::fence`).
    fn abort_preempted(&self, me: &ItNexus, my_tag: u64, ids: &[crate::pr::RegistrantId]) {
        let st = self.lock();
        for (key, ns) in st.nexuses.iter() {
            if !ids.iter().any(|id| id.covers(&key.0)) {
                continue;
            }
            let mine = &key.0 == me;
            ns.tasks.abort(|tag| !(mine && tag == my_tag));
        }
    }

    /// Wait until no command of the nexuses selected by `which` is marked
    /// aborted any more (they finished on their queues), up to ABORT_WAIT.
    fn wait_aborted(&self, mut st: MutexGuard<'_, LuState>) {
        let deadline = Instant::now() + ABORT_WAIT;
        loop {
            let pending = st.nexuses.values().any(|ns| ns.tasks.any_aborted());
            if !pending {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                log::warn!("disk {}: aborted commands still running", self.cfg.identity);
                return;
            }
            st = match self.idle.wait_timeout(st, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    fn reset_mode(&self) {
        self.mode.wce.store(self.cfg.write_cache, Ordering::Relaxed);
        self.mode.d_sense.store(false, Ordering::Relaxed);
    }
}

/// Whether `cmd` changes the logical blocks: those commands pass the abort
/// fence (`crate::pr::fence`). Other WRITE-class commands (MODE SELECT,
/// WRITE BUFFER, SYNCHRONIZE CACHE, ...) change no data and may take the
/// LU's state lock while running, which a command waiting for the fence's
/// update lock can hold; they are only answered TASK ABORTED at completion.
fn changes_medium(cmd: Cmd) -> bool {
    matches!(
        cmd,
        Cmd::Write6
            | Cmd::Write10
            | Cmd::Write12
            | Cmd::Write16
            | Cmd::WriteAndVerify10
            | Cmd::WriteAndVerify16
            | Cmd::WriteSame10
            | Cmd::WriteSame16
            | Cmd::Unmap
            | Cmd::CompareAndWrite
            | Cmd::FormatUnit
    )
}

impl LogicalUnit for Disk {
    fn execute(
        &self,
        req: &Request<'_>,
        data_out: DataOut<'_>,
        data_in: DataIn<'_>,
    ) -> Result<Response, TransportError> {
        let parsed = match cdb::lookup(req.cdb) {
            Ok(c) => Ok(c),
            Err(ParseError::Empty) => return Err(TransportError::EmptyCdb),
            Err(ParseError::TooShort { opcode, got, need }) => {
                return Err(TransportError::CdbTooShort { opcode, got, need })
            }
            Err(e) => Err(e),
        };
        let (exempt, cmd) = match &parsed {
            Ok(c) => (c.info.ua == UaRule::Exempt, Some(c.cmd())),
            Err(_) => (false, None),
        };
        if matches!(
            cmd,
            Some(Cmd::TestUnitReady | Cmd::ReadCapacity10 | Cmd::ReadCapacity16)
        ) {
            self.check_resize();
        }
        let since = self.pr.as_ref().map_or(0, |pr| pr.abort_epoch());
        let (task, conflicts) = match self.begin(req, exempt) {
            Ok(c) => c,
            Err(sense) => return Ok(self.response(Status::CheckCondition, Some(sense), 0, 0)),
        };
        let cdb = match parsed {
            Ok(c) => c,
            Err(e) => {
                self.end(task);
                let sense = e.sense().unwrap_or(codes::INVALID_OPCODE);
                return Ok(self.response(Status::CheckCondition, Some(sense), 0, 0));
            }
        };
        // Both buffers reborrowed with one lifetime, for the context.
        let mut data_out = DataOut {
            reader: &mut *data_out.reader,
            len: data_out.len,
        };
        let mut data_in = DataIn {
            writer: &mut *data_in.writer,
            len: data_in.len,
        };
        let mut ctx = Ctx {
            nexus: req.nexus,
            tag: req.tag,
            task,
            cdb,
            data_out: &mut data_out,
            out_used: 0,
            data_in: &mut data_in,
            in_place: None,
            ended: None,
            since,
        };
        let result = self.run(&mut ctx, since, conflicts);
        let (used, in_place, ended) = (ctx.out_used, ctx.in_place, ctx.ended);
        let aborted =
            ended.unwrap_or_else(|| self.end(task)) || self.preempted_since(req.nexus, since, cmd);
        if aborted {
            return Ok(self.response(Status::TaskAborted, None, 0, used));
        }
        match result {
            Ok(data) => {
                let n = match in_place {
                    Some(n) => n,
                    None => complete_data_in(&data, cdb.alloc_len(), &mut data_in)?,
                };
                recycle_buffer(data);
                Ok(self.response(Status::Good, None, n, used))
            }
            Err(Fail::Check(s)) => Ok(self.response(Status::CheckCondition, Some(s), 0, used)),
            Err(Fail::Status(st)) => Ok(self.response(st, None, 0, used)),
            Err(Fail::Transport(e)) => Err(e),
        }
    }

    fn task_mgmt(&self, nexus: &ItNexus, tmf: TaskMgmt) -> TmfResponse {
        let mut st = self.lock();
        match tmf {
            TaskMgmt::AbortTask(tag) => {
                if let Some(ns) = st.nexuses.get(NexusKey::of(nexus)) {
                    ns.tasks.abort(|t| t == tag);
                }
                self.wait_aborted(st);
                TmfResponse::Complete
            }
            TaskMgmt::AbortTaskSet => {
                if let Some(ns) = st.nexuses.get(NexusKey::of(nexus)) {
                    ns.tasks.abort_all();
                }
                self.wait_aborted(st);
                TmfResponse::Complete
            }
            TaskMgmt::ClearTaskSet => {
                for (n, ns) in st.nexuses.iter() {
                    if ns.tasks.is_empty() {
                        continue;
                    }
                    ns.tasks.abort_all();
                    if &n.0 != nexus {
                        // TAS = 0: the other nexus learns through a UA.
                        ns.with(|s| s.ua.push(codes::COMMANDS_CLEARED_BY_ANOTHER_INITIATOR));
                    }
                }
                self.wait_aborted(st);
                TmfResponse::Complete
            }
            TaskMgmt::LogicalUnitReset => {
                for ns in st.nexuses.values() {
                    ns.tasks.abort_all();
                    ns.with(|s| {
                        s.ua.push(codes::BUS_DEVICE_RESET);
                        s.echo = None;
                    });
                }
                self.reset_mode();
                if let Some(pr) = &self.pr {
                    pr.lu_reset();
                }
                self.wait_aborted(st);
                TmfResponse::Complete
            }
            TaskMgmt::ItNexusReset => {
                let ns = st.registered(nexus);
                ns.tasks.abort_all();
                ns.with(|s| {
                    s.ua.push(codes::I_T_NEXUS_LOSS);
                    s.echo = None;
                });
                if let Some(pr) = &self.pr {
                    pr.nexus_loss(nexus);
                }
                self.wait_aborted(st);
                TmfResponse::Complete
            }
            TaskMgmt::QueryTask(tag) => {
                let live = st
                    .nexuses
                    .get(NexusKey::of(nexus))
                    .is_some_and(|ns| ns.tasks.is_live(tag));
                if live {
                    TmfResponse::Succeeded
                } else {
                    TmfResponse::Complete
                }
            }
            TaskMgmt::QueryTaskSet => {
                let any = st
                    .nexuses
                    .get(NexusKey::of(nexus))
                    .is_some_and(|ns| ns.tasks.any_live());
                if any {
                    TmfResponse::Succeeded
                } else {
                    TmfResponse::Complete
                }
            }
            TaskMgmt::QueryAsyncEvent => {
                let pending = st.registered(nexus).with(|s| {
                    self.merge_pr_uas(nexus, s);
                    !s.ua.is_empty()
                });
                if pending {
                    TmfResponse::Succeeded
                } else {
                    TmfResponse::Complete
                }
            }
            // NACA is not supported, so there is never an ACA to clear.
            TaskMgmt::ClearAca => TmfResponse::Rejected,
        }
    }

    fn pending_unit_attention(&self, nexus: &ItNexus) -> Option<Sense> {
        let ns = self.lock().registered(nexus).clone();
        ns.with(|s| {
            self.merge_pr_uas(nexus, s);
            s.ua.peek().copied()
        })
    }

    fn raise_unit_attention(&self, ua: Sense) {
        self.raise_ua_all(ua, None);
    }

    fn clear_unit_attention(&self, nexus: &ItNexus, asc: u8, ascq: u8) {
        let ns = self.lock().nexuses.get(NexusKey::of(nexus)).cloned();
        if let Some(ns) = ns {
            ns.with(|s| s.ua.clear(asc, ascq));
        }
    }
}
