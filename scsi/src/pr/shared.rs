//! Persistent-reservation state shared by every process that opens a disk.
//!
//! A disk image `disk.img` used by several VM processes (and by several
//! controllers — I_T nexuses — inside each) has exactly one PR state. It
//! lives in files next to the image (or next to a configured base path):
//!
//! | file              | role                                                      |
//! |-------------------|-----------------------------------------------------------|
//! | `disk.img.pr`       | the state ([`PrState`] + disk UUID), replaced atomically |
//! | `disk.img.pr.tmp`   | the next state while it is being written                  |
//! | `disk.img.pr.lock`  | 16 KiB: `flock(LOCK_EX)` = the update lock; mmap: bytes 0..8 the shared version counter, 8..16 the abort epoch, then one 64-byte abort-fence slot per process |
//! | `disk.img.pr.users` | every opener holds `flock(LOCK_SH)` on it while it has the disk open |
//!
//! The base path is `canonicalize(image) + ".pr"` ([`SharedPr::open`]) or one
//! given in the configuration ([`SharedPr::open_at`]).
//!
//! # Rules
//! * **Updates** (PR OUT, RESERVE/RELEASE, taking a unit attention, resets)
//!   run with an in-process mutex and `flock(LOCK_EX)` on `.pr.lock`: read
//!   `.pr`, apply the command to the [`PrState`], and only if the state
//!   changed write `.pr.tmp`, `rename` it over `.pr`, then store the new
//!   version into the shared counter (release ordering). `rename` is atomic,
//!   so a process killed at any instant (kill -9) leaves either the old or
//!   the new file, never a torn one; a leftover `.pr.tmp` is overwritten by
//!   the next writer (only the lock holder ever writes it).
//! * **Durability**: when APTPL is (or was) active, the temporary file and
//!   the directory are `fsync`ed around the rename, so registrations persist
//!   through power loss. Without APTPL nothing must survive a power loss, so
//!   no fsync is done (that is what keeps a PR OUT round trip in the tens of
//!   microseconds); atomicity against process death does not need it.
//! * **Readers** (the data path: [`Reservations::conflicts`], PR IN,
//!   unit-attention polling) never take the file lock: they load the shared
//!   version counter (acquire) and use the state cached by this thread (a
//!   thread-local copy) or else by this process if it was read at that
//!   version; otherwise they re-read `.pr` (consistent thanks to the atomic
//!   rename) and cache it under the version loaded *before* the read. So a
//!   command costs one atomic load and a thread-local lookup, and I/O
//!   threads share no written cache line while the state does not change.
//! * **Version**: the file carries the version it was written with; a writer
//!   uses `max(file, counter) + 1`. A writer killed between its rename and
//!   its counter store leaves the counter behind the file; the next update or
//!   open repairs it (readers may use the previous state until then).
//! * **Users and power loss**: each opener holds a shared flock on
//!   `.pr.users` for as long as the disk is open; the kernel drops it when
//!   the process dies, however it dies. Under the update lock, an opener that
//!   can take `LOCK_EX | LOCK_NB` on `.pr.users` is the only user — it is the
//!   first one after all others went away — and so is a closer that can take
//!   it on close: either then drops everything that does not persist
//!   ([`PrState::power_loss`]: the SCSI-2 reservation and pending unit
//!   attentions always; registrations, the reservation and PRgeneration
//!   unless APTPL is set). Within one process, [`SharedPr::open`] returns the
//!   same object for the same disk, so the process counts as one user.
//! * **PREEMPT AND ABORT** across processes: the abort fence of
//!   [`super::fence`]. The state's [`super::state::AbortLog`] records the
//!   preempted registrants per abort epoch; the epoch is published in the
//!   mmap (bytes 8..16) after the state file; each open [`SharedPr`] owns one
//!   of 255 slots (64 bytes from byte 64: two in-flight counters), claimed
//!   under the update lock by taking an OFD write lock (`F_OFD_SETLK`) on the
//!   slot's first byte. The lock dies with its process, so a PREEMPT AND
//!   ABORT waiting for a slot's writes skips slots whose lock is gone
//!   (`F_OFD_GETLK`), and the next opener resets them. A 256th concurrent
//!   opener of one disk is refused ([`SharedPrError::TooManyUsers`]). The
//!   update that records a new epoch publishes it and waits for the writes
//!   of the previous epoch before releasing the update lock; an update that
//!   finds the file's epoch ahead of the mmap (a writer killed in between)
//!   publishes it first.
//! * **Unit attentions** for nexuses in other processes are stored in the
//!   state file and taken (removed under the lock) by the process that owns
//!   the nexus, on its next command.
//! * **Identity**: the first opener creates a random 16-byte UUID stored in
//!   the state file header; it is never dropped (not even by a power-loss
//!   drop), so every process and every restart sees the same identity
//!   ([`SharedPr::disk_uuid`]; VPD page 0x83 derives the logical unit's NAA 6
//!   name from it with `crate::DiskIdentity::from_uuid`).
//!   Deleting the `.pr` file gives the disk a new identity.
//!
//! # File format of `.pr` (all integers big-endian)
//! ```text
//! 0   8  magic "ARBITPR1"
//! 8   8  version (update counter)
//! 16 16  disk UUID
//! 32  4  payload length N
//! 36  N  payload
//! 36+N 8 FNV-1a 64 of bytes 0..36+N
//! payload: generation u32, aptpl u8,
//!          registrations: count u32, then { key u64, id }
//!          reservation: u8 present, then { id (holder), type u8 }
//!          scsi2: u8 present, then { port name, target port }
//!          unit attentions: count u32, then { id, asc u8, ascq u8 }
//!          [only when an abort epoch exists: abort epoch u64, floor u64,
//!           count u32, then { epoch u64, id }]
//! id         = port name, u8 has-target, [target port]
//! target port = relative id u16, port name
//! port name  = u16 length, TransportID (SPC-4 7.6.4)
//! ```
//! Never delete `.pr.lock` or `.pr.users` while a process has the disk open.
//! The files are created with mode 0660: VM processes of different users
//! can share a disk if they share a group (and the directory allows it).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use super::fence::{self, IoPass, ABORT_WAIT};
use super::state::{AbortLog, PendingUa, PrOutResult, PrState, PrType, RegistrantId, Registration};
use super::state::{MAX_ABORT_RECORDS, MAX_PENDING_UAS, MAX_REGISTRATIONS};
use super::{PrAccess, PrOutcome, Reservations};
use crate::nexus::{fnv1a64, ItNexus, PortName, TargetPort};
use crate::sense::{codes, Sense};

const MAGIC: &[u8; 8] = b"ARBITPR1";
const HEADER: usize = 36;
const LOCK_FILE_LEN: usize = 16384;
/// Offset of the abort epoch in the mmap of `.pr.lock`.
const EPOCH_OFF: usize = 8;
/// Offset of the first abort-fence slot; each slot is one cache line.
const SLOTS_OFF: usize = 64;
const SLOT_LEN: usize = 64;
/// Processes (open [`SharedPr`]s) one disk can have at once.
const SLOTS: usize = (LOCK_FILE_LEN - SLOTS_OFF) / SLOT_LEN;

/// Why the shared PR state could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum SharedPrError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The state file is not a valid state (bad magic, checksum or content).
    #[error("PR state file {0} is corrupt: {1}")]
    Corrupt(PathBuf, &'static str),
    /// Every abort-fence slot of the disk is owned by a live opener.
    #[error("{0}: more than {SLOTS} processes have this disk open")]
    TooManyUsers(PathBuf),
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SharedPrError + 'a {
    move |source| SharedPrError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A shared 8-byte counter in the mmap of `.pr.lock`.
#[derive(Debug)]
struct SharedCounter {
    ptr: *mut libc::c_void,
}

// SAFETY: the mapping is only accessed through `AtomicU64` operations and is
// unmapped once, in Drop, when no other reference exists.
unsafe impl Send for SharedCounter {}
// SAFETY: as above: all shared accesses are atomic.
unsafe impl Sync for SharedCounter {}

impl SharedCounter {
    fn map(file: &File, path: &Path) -> Result<Self, SharedPrError> {
        // SAFETY: a fresh shared mapping of LOCK_FILE_LEN bytes of a file we
        // made at least that long; the kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LOCK_FILE_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io_err("mmap", path)(std::io::Error::last_os_error()));
        }
        Ok(SharedCounter { ptr })
    }

    fn atomic(&self) -> &AtomicU64 {
        self.at(0)
    }

    /// The 8-byte word at byte `off` (a multiple of 8 below LOCK_FILE_LEN).
    fn at(&self, off: usize) -> &AtomicU64 {
        assert!(off % 8 == 0 && off + 8 <= LOCK_FILE_LEN);
        // SAFETY: `ptr` is page aligned and `off` a multiple of 8, so the
        // word is 8-byte aligned; it lies inside the LOCK_FILE_LEN mapped
        // bytes, which live as long as `self`; every access to them, in any
        // process, is atomic.
        unsafe { &*(self.ptr.cast::<u8>().add(off).cast::<AtomicU64>()) }
    }

    fn epoch(&self) -> &AtomicU64 {
        self.at(EPOCH_OFF)
    }

    /// The two in-flight counters of slot `i` (< SLOTS).
    fn slot(&self, i: usize) -> &[AtomicU64; 2] {
        let off = SLOTS_OFF + i * SLOT_LEN;
        assert!(i < SLOTS);
        // SAFETY: 16 bytes at a 64-byte aligned offset inside the mapping,
        // accessed only atomically; [AtomicU64; 2] has the layout of two
        // consecutive AtomicU64 words.
        unsafe { &*(self.ptr.cast::<u8>().add(off).cast::<[AtomicU64; 2]>()) }
    }
}

/// An OFD lock request on the first byte of fence slot `i`.
fn slot_lock_request(i: usize, ty: libc::c_int) -> libc::flock {
    // SAFETY: `flock` is a plain C struct for which all-zero bytes are a
    // valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::c_short::try_from(ty).unwrap_or(0);
    fl.l_whence = libc::c_short::try_from(libc::SEEK_SET).unwrap_or(0);
    fl.l_start = libc::off_t::try_from(SLOTS_OFF + i * SLOT_LEN).unwrap_or(0);
    fl.l_len = 1;
    fl
}

/// Try to own slot `i` with an OFD write lock through `file`.
fn try_claim_slot(file: &File, i: usize) -> bool {
    let mut fl = slot_lock_request(i, libc::F_WRLCK);
    // SAFETY: fcntl on a descriptor we own with a valid flock struct.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) == 0 }
}

/// Whether some other open file description holds slot `i` (its owner
/// lives). Errors count as alive (wait rather than skip).
fn slot_alive(file: &File, i: usize) -> bool {
    let mut fl = slot_lock_request(i, libc::F_WRLCK);
    // SAFETY: fcntl on a descriptor we own with a valid flock struct.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    r != 0 || fl.l_type != libc::c_short::try_from(libc::F_UNLCK).unwrap_or(2)
}

/// Publish abort epoch `new` (already in the state file) and wait until the
/// live slots' writes of the previous epoch are over. Call with the update
/// lock held. `own` is the caller's slot (alive by definition).
fn publish_epoch(counter: &SharedCounter, file: &File, own: Option<usize>, new: u64) {
    let old = counter.epoch().load(Ordering::SeqCst);
    if old >= new {
        return;
    }
    counter.epoch().store(new, Ordering::SeqCst);
    let busy = || {
        (0..SLOTS).any(|i| {
            fence::parity(counter.slot(i), old).load(Ordering::SeqCst) != 0
                && (own == Some(i) || slot_alive(file, i))
        })
    };
    if !fence::drain(ABORT_WAIT, busy) {
        log::warn!("PREEMPT AND ABORT: writes in flight did not finish in {ABORT_WAIT:?}");
    }
}

impl Drop for SharedCounter {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `map`; no reference to it
        // outlives `self`.
        unsafe {
            libc::munmap(self.ptr, LOCK_FILE_LEN);
        }
    }
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let r = unsafe { libc::flock(file.as_raw_fd(), op) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Holds `flock(LOCK_EX)` on the lock file until dropped.
struct ExLock<'a>(&'a File);

impl<'a> ExLock<'a> {
    fn take(file: &'a File, path: &Path) -> Result<Self, SharedPrError> {
        flock(file, libc::LOCK_EX).map_err(io_err("flock", path))?;
        Ok(ExLock(file))
    }
}

impl Drop for ExLock<'_> {
    fn drop(&mut self) {
        let _ = flock(self.0, libc::LOCK_UN);
    }
}

#[derive(Debug)]
struct Cached {
    version: u64,
    state: Arc<PrState>,
}

/// Source of [`SharedPr`] ids for the per-thread caches.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// How many disks' states one thread caches before starting afresh.
const LOCAL_CACHE_MAX: usize = 64;

thread_local! {
    /// Per-thread copies of the cached states: (SharedPr id, version, state).
    /// The data path reads these without touching any shared cache line
    /// except the version counter.
    static LOCAL: RefCell<Vec<(u64, u64, Arc<PrState>)>> = const { RefCell::new(Vec::new()) };
}

/// The PR state of one disk, shared through files with every other process
/// that opens the disk (see the module documentation for the rules).
#[derive(Debug)]
pub struct SharedPr {
    base: PathBuf,
    lock_path: PathBuf,
    lock_file: File,
    users_file: Mutex<Option<File>>,
    counter: SharedCounter,
    update: Mutex<()>,
    cache: RwLock<Cached>,
    id: u64,
    uuid: [u8; 16],
    ports: Mutex<Vec<TargetPort>>,
    /// This opener's abort-fence slot.
    slot: usize,
}

type Registry = Mutex<HashMap<PathBuf, Weak<SharedPr>>>;

fn registry() -> &'static Registry {
    static R: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    R.get_or_init(Default::default)
}

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut s = base.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn random_uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    let ok = File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut u))
        .is_ok();
    if !ok {
        // Fall back on time and pid: unique enough for a local identity.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let h1 = fnv1a64(&t.to_le_bytes());
        let h2 = fnv1a64(
            &[
                h1.to_le_bytes(),
                u64::from(std::process::id()).to_le_bytes(),
            ]
            .concat(),
        );
        u[..8].copy_from_slice(&h1.to_be_bytes());
        u[8..].copy_from_slice(&h2.to_be_bytes());
    }
    u[6] = (u[6] & 0x0F) | 0x40; // version 4
    u[8] = (u[8] & 0x3F) | 0x80; // RFC 4122 variant
    u
}

impl SharedPr {
    /// Open the shared PR state of the disk image `image`: base path
    /// `canonicalize(image) + ".pr"` (so every path naming the same image
    /// reaches the same state). Within a process the same disk yields the
    /// same object.
    pub fn open(image: &Path) -> Result<Arc<SharedPr>, SharedPrError> {
        let canon = image
            .canonicalize()
            .map_err(io_err("canonicalize", image))?;
        Self::open_at(&with_suffix(&canon, ".pr"))
    }

    /// Open the shared PR state whose files are `base`, `base.lock`,
    /// `base.users` (a path given in the configuration). Within a process
    /// the same base yields the same object.
    pub fn open_at(base: &Path) -> Result<Arc<SharedPr>, SharedPrError> {
        let key = match (base.parent(), base.file_name()) {
            (Some(dir), Some(name)) if !dir.as_os_str().is_empty() => dir
                .canonicalize()
                .map_err(io_err("canonicalize", dir))?
                .join(name),
            _ => base.to_path_buf(),
        };
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = reg.get(&key).and_then(Weak::upgrade) {
            return Ok(existing);
        }
        let pr = Arc::new(Self::open_unshared(&key)?);
        reg.retain(|_, w| w.strong_count() > 0);
        reg.insert(key, Arc::downgrade(&pr));
        Ok(pr)
    }

    /// Open the state at `base` as a separate user, bypassing the in-process
    /// sharing of [`Self::open_at`] (tests use it to play several processes).
    pub fn open_unshared(base: &Path) -> Result<SharedPr, SharedPrError> {
        let lock_path = with_suffix(base, ".lock");
        let users_path = with_suffix(base, ".users");
        let open_rw = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o660)
                .open(p)
                .map_err(io_err("open", p))
        };
        let lock_file = open_rw(&lock_path)?;
        let len = lock_file
            .metadata()
            .map_err(io_err("stat", &lock_path))?
            .len();
        let want = u64::try_from(LOCK_FILE_LEN).unwrap_or(u64::MAX);
        if len < want {
            lock_file
                .set_len(want)
                .map_err(io_err("truncate", &lock_path))?;
        }
        let counter = SharedCounter::map(&lock_file, &lock_path)?;
        let users_file = open_rw(&users_path)?;

        let guard = ExLock::take(&lock_file, &lock_path)?;
        let first = flock(&users_file, libc::LOCK_EX | libc::LOCK_NB).is_ok();
        let loaded = match read_state_file(base) {
            Ok(l) => l,
            Err(SharedPrError::Corrupt(p, why)) => {
                log::warn!(
                    "PR state {} is corrupt ({why}); starting empty",
                    p.display()
                );
                None
            }
            Err(e) => return Err(e),
        };
        let (file_version, uuid, mut state) = match loaded {
            Some((v, u, s)) => (v, u, s),
            None => (0, random_uuid(), PrState::default()),
        };
        let cur = counter.atomic().load(Ordering::Acquire);
        let mut version = file_version.max(cur);
        let before = state.clone();
        if first {
            state.power_loss();
        }
        let missing = file_version == 0;
        if missing || state != before {
            version += 1;
            write_state_file(base, version, &uuid, &state, state.aptpl || before.aptpl)?;
        }
        counter.atomic().store(version, Ordering::Release);
        let Some(slot) = (0..SLOTS).find(|&i| try_claim_slot(&lock_file, i)) else {
            return Err(SharedPrError::TooManyUsers(base.to_path_buf()));
        };
        // The previous owner (if any) is gone: its counts mean nothing.
        for c in counter.slot(slot) {
            c.store(0, Ordering::SeqCst);
        }
        publish_epoch(&counter, &lock_file, Some(slot), state.aborts.epoch);
        // Convert to the shared "I am a user" lock (cannot block: only a
        // holder of the update lock ever takes LOCK_EX on the users file).
        flock(&users_file, libc::LOCK_SH).map_err(io_err("flock", &users_path))?;
        drop(guard);

        Ok(SharedPr {
            base: base.to_path_buf(),
            lock_path,
            lock_file,
            users_file: Mutex::new(Some(users_file)),
            counter,
            update: Mutex::new(()),
            cache: RwLock::new(Cached {
                version,
                state: Arc::new(state),
            }),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            uuid,
            ports: Mutex::new(Vec::new()),
            slot,
        })
    }

    /// The disk's persisted 16-byte identity (a random RFC 4122 v4 UUID made
    /// by the first process that ever opened the disk, stored in the `.pr`
    /// header). `DiskIdentity::from_uuid(pr.disk_uuid())` makes the VPD page
    /// 0x83 NAA designator from it, identical from every process.
    pub fn disk_uuid(&self) -> [u8; 16] {
        self.uuid
    }

    /// The base path of the state files.
    pub fn base_path(&self) -> &Path {
        &self.base
    }

    /// Make `port` known as a target port of this disk, so REGISTER AND MOVE
    /// may name it by relative target port identifier. Ports that PR OUT
    /// commands arrive through are recorded automatically.
    pub fn add_target_port(&self, port: TargetPort) {
        let mut p = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        if !p.contains(&port) {
            p.push(port);
        }
    }

    /// The current state (re-read if another process changed it).
    pub fn snapshot(&self) -> PrState {
        self.with_state(PrState::clone)
    }

    /// The current shared version counter.
    pub fn version(&self) -> u64 {
        self.counter.atomic().load(Ordering::Acquire)
    }

    /// Run `f` on the current state without taking the file lock: the
    /// thread's own copy when it is at the current version, else the
    /// process' copy, else the file.
    fn with_state<R>(&self, f: impl FnOnce(&PrState) -> R) -> R {
        let v = self.counter.atomic().load(Ordering::Acquire);
        let hit = LOCAL.with(|l| {
            let l = l.borrow();
            match l.iter().find(|e| e.0 == self.id && e.1 == v) {
                Some(e) => Ok(f(&e.2)),
                None => Err(f),
            }
        });
        let f = match hit {
            Ok(r) => return r,
            Err(f) => f,
        };
        let (version, state) = self.process_state(v);
        LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            if let Some(e) = l.iter_mut().find(|e| e.0 == self.id) {
                e.1 = version;
                e.2 = Arc::clone(&state);
            } else {
                if l.len() >= LOCAL_CACHE_MAX {
                    l.clear();
                }
                l.push((self.id, version, Arc::clone(&state)));
            }
        });
        f(&state)
    }

    /// The process-wide cached state at version `v` (re-read from the file
    /// if older), with the version it is valid for.
    fn process_state(&self, v: u64) -> (u64, Arc<PrState>) {
        {
            let c = self.cache.read().unwrap_or_else(|e| e.into_inner());
            if c.version == v {
                return (v, Arc::clone(&c.state));
            }
        }
        match read_state_file(&self.base) {
            Ok(Some((_, _, state))) => {
                let state = Arc::new(state);
                let mut c = self.cache.write().unwrap_or_else(|e| e.into_inner());
                *c = Cached {
                    version: v,
                    state: Arc::clone(&state),
                };
                (v, state)
            }
            other => {
                if let Err(e) = other {
                    log::error!("reading PR state: {e}; using the cached state");
                }
                let c = self.cache.read().unwrap_or_else(|e| e.into_inner());
                (c.version, Arc::clone(&c.state))
            }
        }
    }

    /// Apply `f` to the state under the update lock and publish the result.
    /// Returns `f`'s result and the version now current.
    pub fn update<R>(&self, f: impl FnOnce(&mut PrState) -> R) -> Result<(R, u64), SharedPrError> {
        let _inproc = self.update.lock().unwrap_or_else(|e| e.into_inner());
        let _flock = ExLock::take(&self.lock_file, &self.lock_path)?;
        let (file_version, mut state) = match read_state_file(&self.base) {
            Ok(Some((v, _, s))) => (v, s),
            Ok(None) => (0, PrState::default()),
            Err(SharedPrError::Corrupt(p, why)) => {
                log::warn!("PR state {} is corrupt ({why}); rewriting", p.display());
                (0, PrState::default())
            }
            Err(e) => return Err(e),
        };
        if state.aborts.epoch > self.counter.epoch().load(Ordering::SeqCst) {
            // A writer died between its rename and publishing its epoch.
            publish_epoch(
                &self.counter,
                &self.lock_file,
                Some(self.slot),
                state.aborts.epoch,
            );
        }
        let before = state.clone();
        let r = f(&mut state);
        let counter = self.counter.atomic();
        let mut version = file_version.max(counter.load(Ordering::Acquire));
        if state != before || file_version == 0 {
            version += 1;
            write_state_file(
                &self.base,
                version,
                &self.uuid,
                &state,
                state.aptpl || before.aptpl,
            )?;
        }
        counter.store(version, Ordering::Release);
        let epoch = state.aborts.epoch;
        {
            let mut c = self.cache.write().unwrap_or_else(|e| e.into_inner());
            *c = Cached {
                version,
                state: Arc::new(state),
            };
        }
        if epoch > before.aborts.epoch {
            // A PREEMPT AND ABORT: publish its epoch, and wait for the
            // writes already in flight, before the update lock is released
            // (so aborts publish and wait one at a time).
            publish_epoch(&self.counter, &self.lock_file, Some(self.slot), epoch);
        }
        Ok((r, version))
    }

    /// PERSISTENT RESERVE OUT, also returning the version it produced (tests
    /// use it to order arbitration across processes).
    pub fn reserve_out_versioned(
        &self,
        nexus: &ItNexus,
        cdb: &[u8],
        params: &[u8],
    ) -> (PrOutResult, u64) {
        self.add_target_port(nexus.target.clone());
        let ports = self.ports.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match self.update(|s| s.pr_out(nexus, cdb, params, &ports)) {
            Ok(r) => r,
            Err(e) => {
                log::error!("PR OUT: {e}");
                (
                    PrOutResult {
                        outcome: PrOutcome::check(codes::INTERNAL_TARGET_FAILURE),
                        abort: Vec::new(),
                    },
                    self.version(),
                )
            }
        }
    }

    fn update_outcome(&self, f: impl FnOnce(&mut PrState) -> PrOutcome) -> PrOutcome {
        match self.update(f) {
            Ok((o, _)) => o,
            Err(e) => {
                log::error!("PR update: {e}");
                PrOutcome::check(codes::INTERNAL_TARGET_FAILURE)
            }
        }
    }
}

impl Drop for SharedPr {
    fn drop(&mut self) {
        let _inproc = self.update.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(_flock) = ExLock::take(&self.lock_file, &self.lock_path) else {
            return;
        };
        let users = self
            .users_file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(users) = users else { return };
        // Converting our shared lock: succeeds only if nobody else holds one.
        if flock(&users, libc::LOCK_EX | libc::LOCK_NB).is_ok() {
            if let Ok(Some((v, uuid, mut state))) = read_state_file(&self.base) {
                let before = state.clone();
                state.power_loss();
                if state != before {
                    let version = v.max(self.counter.atomic().load(Ordering::Acquire)) + 1;
                    if write_state_file(&self.base, version, &uuid, &state, before.aptpl).is_ok() {
                        self.counter.atomic().store(version, Ordering::Release);
                    }
                }
            }
        }
        drop(users);
    }
}

impl Reservations for SharedPr {
    fn conflicts(&self, nexus: &ItNexus, access: PrAccess) -> bool {
        self.with_state(|s| s.conflicts(nexus, access))
    }

    fn reserve_out(&self, nexus: &ItNexus, cdb: &[u8], params: &[u8]) -> PrOutcome {
        self.reserve_out_versioned(nexus, cdb, params).0.outcome
    }

    fn reserve_out_with_aborts(&self, nexus: &ItNexus, cdb: &[u8], params: &[u8]) -> PrOutResult {
        self.reserve_out_versioned(nexus, cdb, params).0
    }

    fn reserve_in(&self, nexus: &ItNexus, cdb: &[u8]) -> PrOutcome {
        self.with_state(|s| s.pr_in(nexus, cdb))
    }

    fn scsi2_reserve(&self, nexus: &ItNexus) -> PrOutcome {
        self.update_outcome(|s| s.scsi2_reserve(nexus))
    }

    fn scsi2_release(&self, nexus: &ItNexus) -> PrOutcome {
        self.update_outcome(|s| s.scsi2_release(nexus))
    }

    fn take_unit_attentions(&self, nexus: &ItNexus) -> Vec<Sense> {
        if !self.with_state(|s| s.has_ua_for(nexus)) {
            return Vec::new();
        }
        match self.update(|s| s.take_ua(nexus)) {
            Ok((v, _)) => v,
            Err(e) => {
                log::error!("taking unit attentions: {e}");
                Vec::new()
            }
        }
    }

    fn lu_reset(&self) {
        if self.with_state(|s| s.scsi2.is_some()) {
            if let Err(e) = self.update(|s| s.lu_reset()) {
                log::error!("LU reset of PR state: {e}");
            }
        }
    }

    fn nexus_loss(&self, nexus: &ItNexus) {
        if self.with_state(|s| s.scsi2.as_ref() == Some(nexus)) {
            if let Err(e) = self.update(|s| s.nexus_loss(nexus)) {
                log::error!("nexus loss in PR state: {e}");
            }
        }
    }

    fn disk_uuid(&self) -> Option<[u8; 16]> {
        Some(self.uuid)
    }

    fn state_version(&self) -> Option<u64> {
        // Every change of the state file stores a new version.
        Some(self.version())
    }

    fn abort_epoch(&self) -> u64 {
        self.counter.epoch().load(Ordering::SeqCst)
    }

    fn enter_io(&self, nexus: &ItNexus, since: u64) -> Option<IoPass<'_>> {
        fence::enter(
            self.counter.epoch(),
            self.counter.slot(self.slot),
            since,
            |since| self.with_state(|s| s.aborts.aborted(nexus, since)),
        )
    }

    fn aborted_since(&self, nexus: &ItNexus, since: u64) -> bool {
        self.abort_epoch() != since && self.with_state(|s| s.aborts.aborted(nexus, since))
    }
}

// ---------------------------------------------------------------------------
// Encoding.

/// Read and decode `base`: `None` if it does not exist.
pub fn read_state_file(base: &Path) -> Result<Option<(u64, [u8; 16], PrState)>, SharedPrError> {
    let bytes = match std::fs::read(base) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", base)(e)),
    };
    decode(&bytes)
        .map(Some)
        .map_err(|why| SharedPrError::Corrupt(base.to_path_buf(), why))
}

fn write_state_file(
    base: &Path,
    version: u64,
    uuid: &[u8; 16],
    state: &PrState,
    durable: bool,
) -> Result<(), SharedPrError> {
    let bytes = encode(version, uuid, state);
    let tmp = with_suffix(base, ".tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o660)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    f.write_all(&bytes).map_err(io_err("write", &tmp))?;
    if durable {
        f.sync_all().map_err(io_err("fsync", &tmp))?;
    }
    drop(f);
    std::fs::rename(&tmp, base).map_err(io_err("rename", base))?;
    if durable {
        if let Some(dir) = base.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("fsync", dir))?;
        }
    }
    Ok(())
}

fn put_name(out: &mut Vec<u8>, n: &PortName) {
    let t = n.transport_id();
    out.extend_from_slice(&u16::try_from(t.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&t);
}

fn put_port(out: &mut Vec<u8>, p: &TargetPort) {
    out.extend_from_slice(&p.relative_id.to_be_bytes());
    put_name(out, &p.name);
}

fn put_id(out: &mut Vec<u8>, id: &RegistrantId) {
    put_name(out, &id.initiator);
    match &id.target {
        Some(p) => {
            out.push(1);
            put_port(out, p);
        }
        None => out.push(0),
    }
}

fn put_count(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

/// Encode a state file image.
pub fn encode(version: u64, uuid: &[u8; 16], s: &PrState) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&s.generation.to_be_bytes());
    p.push(u8::from(s.aptpl));
    put_count(&mut p, s.registrations.len());
    for r in &s.registrations {
        p.extend_from_slice(&r.key.to_be_bytes());
        put_id(&mut p, &r.id);
    }
    match &s.reservation {
        Some(r) => {
            p.push(1);
            put_id(&mut p, &r.holder);
            p.push(r.ty.code());
        }
        None => p.push(0),
    }
    match &s.scsi2 {
        Some(n) => {
            p.push(1);
            put_name(&mut p, &n.initiator);
            put_port(&mut p, &n.target);
        }
        None => p.push(0),
    }
    put_count(&mut p, s.pending_ua.len());
    for u in &s.pending_ua {
        put_id(&mut p, &u.to);
        p.push(u.asc);
        p.push(u.ascq);
    }
    if s.aborts != AbortLog::default() {
        p.extend_from_slice(&s.aborts.epoch.to_be_bytes());
        p.extend_from_slice(&s.aborts.floor.to_be_bytes());
        put_count(&mut p, s.aborts.records.len());
        for (e, id) in &s.aborts.records {
            p.extend_from_slice(&e.to_be_bytes());
            put_id(&mut p, id);
        }
    }
    let mut out = Vec::with_capacity(HEADER + p.len() + 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(uuid);
    put_count(&mut out, p.len());
    out.extend_from_slice(&p);
    let sum = fnv1a64(&out);
    out.extend_from_slice(&sum.to_be_bytes());
    out
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

type DecodeResult<T> = Result<T, &'static str>;

impl Reader<'_> {
    fn take(&mut self, n: usize) -> DecodeResult<&[u8]> {
        let end = self.at.checked_add(n).ok_or("length overflow")?;
        let s = self.b.get(self.at..end).ok_or("truncated")?;
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> DecodeResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> DecodeResult<u16> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> DecodeResult<u32> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> DecodeResult<u64> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_be_bytes(a))
    }
    fn flag(&mut self) -> DecodeResult<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err("bad flag"),
        }
    }
    fn count(&mut self, max: usize) -> DecodeResult<usize> {
        let n = usize::try_from(self.u32()?).map_err(|_| "count")?;
        if n > max {
            return Err("count too large");
        }
        Ok(n)
    }
    fn name(&mut self) -> DecodeResult<PortName> {
        let len = usize::from(self.u16()?);
        let t = self.take(len)?;
        match PortName::from_transport_id(t) {
            Some((n, used)) if used == len => Ok(n),
            _ => Err("bad TransportID"),
        }
    }
    fn port(&mut self) -> DecodeResult<TargetPort> {
        let relative_id = self.u16()?;
        let name = self.name()?;
        Ok(TargetPort { relative_id, name })
    }
    fn id(&mut self) -> DecodeResult<RegistrantId> {
        let initiator = self.name()?;
        let target = if self.flag()? {
            Some(self.port()?)
        } else {
            None
        };
        Ok(RegistrantId { initiator, target })
    }
}

/// Decode a state file image: (version, UUID, state).
pub fn decode(b: &[u8]) -> DecodeResult<(u64, [u8; 16], PrState)> {
    if b.len() < HEADER + 8 || &b[..8] != MAGIC {
        return Err("bad magic");
    }
    let (body, sum) = b.split_at(b.len() - 8);
    let mut s8 = [0u8; 8];
    s8.copy_from_slice(sum);
    if fnv1a64(body) != u64::from_be_bytes(s8) {
        return Err("bad checksum");
    }
    let mut r = Reader { b: body, at: 8 };
    let version = r.u64()?;
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(r.take(16)?);
    let plen = usize::try_from(r.u32()?).map_err(|_| "length")?;
    if HEADER + plen != body.len() {
        return Err("bad payload length");
    }
    let mut s = PrState {
        generation: r.u32()?,
        aptpl: r.flag()?,
        ..PrState::default()
    };
    let n = r.count(MAX_REGISTRATIONS)?;
    for _ in 0..n {
        let key = r.u64()?;
        let id = r.id()?;
        s.registrations.push(Registration { id, key });
    }
    if r.flag()? {
        let holder = r.id()?;
        let ty = PrType::from_code(r.u8()?).ok_or("bad type")?;
        s.reservation = Some(super::state::Reservation { holder, ty });
    }
    if r.flag()? {
        let initiator = r.name()?;
        let target = r.port()?;
        s.scsi2 = Some(ItNexus { initiator, target });
    }
    let n = r.count(MAX_PENDING_UAS)?;
    for _ in 0..n {
        let to = r.id()?;
        let asc = r.u8()?;
        let ascq = r.u8()?;
        s.pending_ua.push(PendingUa { to, asc, ascq });
    }
    if r.at != body.len() {
        let epoch = r.u64()?;
        let floor = r.u64()?;
        let n = r.count(MAX_ABORT_RECORDS)?;
        let mut records = Vec::with_capacity(n);
        for _ in 0..n {
            let e = r.u64()?;
            if e <= floor || e > epoch {
                return Err("abort record outside its epochs");
            }
            records.push((e, r.id()?));
        }
        if floor > epoch {
            return Err("abort floor above the epoch");
        }
        s.aborts = AbortLog {
            epoch,
            floor,
            records,
        };
    }
    if r.at != body.len() {
        return Err("trailing bytes");
    }
    Ok((version, uuid, s))
}
