//! Reservations: SPC-4 persistent reservations and SCSI-2 RESERVE/RELEASE,
//! one state per disk, shared by every I_T nexus of every process that opens
//! the disk.
//!
//! The logical units (`crate::disk`, `crate::sgio` with emulated PR) call
//! [`Reservations`]:
//! * before executing any command: [`Reservations::conflicts`] with the command's
//!   [`PrAccess`] class (from the opcode table): RESERVATION CONFLICT if due;
//! * for PERSISTENT RESERVE IN/OUT, RESERVE(6/10), RELEASE(6/10);
//! * to collect unit attentions that reservation actions of *other* nexuses
//!   (possibly in other processes) raised for this nexus;
//! * on LOGICAL UNIT RESET and I_T nexus loss.
//!
//! Implementations:
//! * [`state::PrState`]: the pure SPC-4 state machine (every PR OUT service
//!   action, every PR IN service action, the conflict table, SCSI-2
//!   reservations with compatible reservation handling, unit attentions,
//!   PRgeneration); [`MemoryPr`] wraps it for a disk only this process uses.
//! * [`SharedPr`]: the same state shared by every process that opens the
//!   disk, through `<image>.pr` / `.pr.lock` / `.pr.users` beside the image:
//!   `SharedPr::open(image_path)` (or `SharedPr::open_at(configured_base)`)
//!   returns an `Arc<SharedPr>` usable as `Arc<dyn Reservations>`; its
//!   [`SharedPr::disk_uuid`] feeds VPD page 0x83 through
//!   `DiskIdentity::from_uuid`. The file format and the locking, caching and
//!   last-user rules are documented in [`shared`].
//! * PREEMPT AND ABORT: call [`Reservations::reserve_out_with_aborts`]; its
//!   [`PrOutResult::abort`] names the preempted registrants whose commands
//!   the logical unit marks aborted in its own task set. Commands of every
//!   process (this one included) are stopped by the abort fence ([`fence`]):
//!   a logical unit takes [`Reservations::abort_epoch`] when a command enters
//!   its task set, holds a [`Reservations::enter_io`] pass around every
//!   command that changes the medium, and asks
//!   [`Reservations::aborted_since`] when a command completes. [`fence`]
//!   states the guarantee exactly. (`crate::disk` does all three; the SG_IO
//!   passthrough logical unit with emulated PR does not take passes yet.)

pub mod fence;
pub mod shared;
pub mod state;

pub use fence::IoPass;
pub use shared::{SharedPr, SharedPrError};
pub use state::{AbortLog, MemoryPr, PrOutResult, PrState, PrType, RegistrantId};

use crate::nexus::ItNexus;
use crate::sense::{Sense, Status};

/// How a command interacts with reservations: the row it falls in of SPC-4
/// table 43 ("SPC commands that are allowed in the presence of various
/// reservations") and SBC-4 table 13.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrAccess {
    /// Allowed from every nexus under every reservation: INQUIRY, REPORT LUNS,
    /// REQUEST SENSE, TEST UNIT READY, READ CAPACITY(10/16), LOG SENSE,
    /// PERSISTENT RESERVE IN, REPORT SUPPORTED OPERATION CODES / TMFs.
    Allowed,
    /// Reads the medium or device state (READ*, VERIFY*, MODE SENSE, READ
    /// BUFFER, GET LBA STATUS, ...): conflicts for non-holders under
    /// Exclusive Access types, per SPC-4 table 43.
    Read,
    /// Changes the medium or device state (WRITE*, UNMAP, WRITE SAME, COMPARE
    /// AND WRITE, SYNCHRONIZE CACHE, MODE SELECT, FORMAT UNIT, WRITE BUFFER,
    /// START STOP UNIT, SEND DIAGNOSTIC, PREVENT ALLOW MEDIUM REMOVAL, ...).
    Write,
    /// PERSISTENT RESERVE OUT: checked by the service action itself.
    PrOut,
    /// RESERVE(6/10) / RELEASE(6/10): checked by the SCSI-2 rules and, when
    /// persistent reservations exist, by SPC-4 "compatible reservation handling".
    Scsi2,
}

impl PrAccess {
    /// Every class, in [`PrAccess::bit`] order.
    pub const ALL: [PrAccess; 5] = [
        PrAccess::Allowed,
        PrAccess::Read,
        PrAccess::Write,
        PrAccess::PrOut,
        PrAccess::Scsi2,
    ];

    /// This class' bit in a conflict mask ([`NexusPrCache`]).
    pub fn bit(self) -> u8 {
        match self {
            PrAccess::Allowed => 1,
            PrAccess::Read => 2,
            PrAccess::Write => 4,
            PrAccess::PrOut => 8,
            PrAccess::Scsi2 => 16,
        }
    }
}

/// What a logical unit remembers per I_T nexus so that, while the
/// reservation state does not change ([`Reservations::state_version`]), a
/// command makes no reservation call at all: the unit attentions were
/// already taken and the conflict answers are known.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NexusPrCache {
    /// The state version the answers were taken at.
    version: Option<u64>,
    /// Conflict mask ([`PrAccess::bit`]) at `version`.
    conflicts: u8,
}

impl NexusPrCache {
    /// At the start of a command of `nexus`: hand the unit attentions the
    /// reservation state holds for it to `push` (oldest first), and return
    /// the conflict mask ([`PrAccess::bit`]) valid for this command, or
    /// `None` when `pr` has no version (ask [`Reservations::conflicts`]).
    pub fn refresh(
        &mut self,
        pr: &dyn Reservations,
        nexus: &ItNexus,
        mut push: impl FnMut(Sense),
    ) -> Option<u8> {
        // Loaded before asking: answers are never older than the version
        // they are kept under, so a change made meanwhile is seen next time.
        let v = pr.state_version();
        if v.is_some() && v == self.version {
            return Some(self.conflicts);
        }
        for ua in pr.take_unit_attentions(nexus) {
            push(ua);
        }
        let v = v?;
        self.conflicts = PrAccess::ALL
            .iter()
            .filter(|&&a| pr.conflicts(nexus, a))
            .fold(0, |m, &a| m | a.bit());
        self.version = Some(v);
        Some(self.conflicts)
    }
}

/// The outcome of a reservation command: a status with optional sense
/// (encoded by the caller in the initiator's sense format), and data-in bytes
/// for PERSISTENT RESERVE IN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrOutcome {
    /// GOOD, CHECK CONDITION or RESERVATION CONFLICT.
    pub status: Status,
    /// Sense for CHECK CONDITION.
    pub sense: Option<Sense>,
    /// Data-in (PR IN), before ALLOCATION LENGTH truncation.
    pub data: Vec<u8>,
}

impl PrOutcome {
    /// GOOD with no data.
    pub fn good() -> Self {
        PrOutcome {
            status: Status::Good,
            sense: None,
            data: Vec::new(),
        }
    }
    /// GOOD with data-in.
    pub fn data(data: Vec<u8>) -> Self {
        PrOutcome {
            status: Status::Good,
            sense: None,
            data,
        }
    }
    /// RESERVATION CONFLICT.
    pub fn conflict() -> Self {
        PrOutcome {
            status: Status::ReservationConflict,
            sense: None,
            data: Vec::new(),
        }
    }
    /// CHECK CONDITION with `sense`.
    pub fn check(sense: Sense) -> Self {
        PrOutcome {
            status: Status::CheckCondition,
            sense: Some(sense),
            data: Vec::new(),
        }
    }
}

/// Reservation state of one logical unit, as seen by the LU's command path.
/// Implementations are shared between queues (and, through a state file,
/// between processes), hence `&self` and `Send + Sync`.
pub trait Reservations: Send + Sync + std::fmt::Debug {
    /// Whether a command of class `access` from `nexus` conflicts with the
    /// current reservations (persistent or SCSI-2). `true` = answer
    /// RESERVATION CONFLICT without executing it.
    fn conflicts(&self, nexus: &ItNexus, access: PrAccess) -> bool;

    /// PERSISTENT RESERVE OUT: `cdb` is the whole CDB (10 bytes), `params` the
    /// data-out parameter list (exactly PARAMETER LIST LENGTH bytes).
    fn reserve_out(&self, nexus: &ItNexus, cdb: &[u8], params: &[u8]) -> PrOutcome;

    /// PERSISTENT RESERVE OUT, also returning which registrants' commands
    /// must be aborted: for a successful PREEMPT AND ABORT,
    /// [`PrOutResult::abort`] lists the preempted registrants; the caller
    /// aborts every outstanding command of every I_T nexus one of them
    /// [covers](RegistrantId::covers), except this PR OUT command itself.
    /// Logical units should call this instead of [`Self::reserve_out`].
    fn reserve_out_with_aborts(&self, nexus: &ItNexus, cdb: &[u8], params: &[u8]) -> PrOutResult {
        PrOutResult {
            outcome: self.reserve_out(nexus, cdb, params),
            abort: Vec::new(),
        }
    }

    /// A number that changes, in every process, whenever an answer of
    /// [`Self::conflicts`] or [`Self::take_unit_attentions`] may change: a
    /// logical unit may reuse the answers it got at the same number
    /// ([`NexusPrCache`]). `None` (the default): ask every time.
    fn state_version(&self) -> Option<u64> {
        None
    }

    /// The abort epoch now ([`fence`]): a logical unit reads it when a
    /// command enters its task set and hands it to [`Self::enter_io`] and
    /// [`Self::aborted_since`]. One atomic load.
    fn abort_epoch(&self) -> u64 {
        0
    }

    /// Before a command of `nexus` that changes the medium (it entered the
    /// task set at abort epoch `since`) touches it: `None` if a PREEMPT AND
    /// ABORT preempted the nexus since then (the command must end with TASK
    /// ABORTED and change nothing), else a pass to hold until its I/O is
    /// over.
    fn enter_io(&self, _nexus: &ItNexus, _since: u64) -> Option<IoPass<'_>> {
        Some(IoPass::unfenced())
    }

    /// When a command of `nexus` that entered the task set at abort epoch
    /// `since` completes: whether a PREEMPT AND ABORT preempted the nexus
    /// since then (it then answers TASK ABORTED). One atomic load unless an
    /// abort happened meanwhile.
    fn aborted_since(&self, _nexus: &ItNexus, _since: u64) -> bool {
        false
    }

    /// The persisted 16-byte identity of the disk this state belongs to (see
    /// [`SharedPr::disk_uuid`]), from which VPD page 0x83 may derive its NAA
    /// designator (`DiskIdentity::from_uuid`). `None` for in-memory state.
    fn disk_uuid(&self) -> Option<[u8; 16]> {
        None
    }

    /// PERSISTENT RESERVE IN: `cdb` is the whole CDB (10 bytes). The caller
    /// truncates the data to ALLOCATION LENGTH.
    fn reserve_in(&self, nexus: &ItNexus, cdb: &[u8]) -> PrOutcome;

    /// RESERVE(6)/(10) (SCSI-2, whole LU, no third-party).
    fn scsi2_reserve(&self, nexus: &ItNexus) -> PrOutcome;

    /// RELEASE(6)/(10) (SCSI-2).
    fn scsi2_release(&self, nexus: &ItNexus) -> PrOutcome;

    /// Unit attentions raised for `nexus` by reservation actions of other
    /// nexuses (2A/03, 2A/04, 2A/05), oldest first; taking them clears them.
    fn take_unit_attentions(&self, nexus: &ItNexus) -> Vec<Sense>;

    /// LOGICAL UNIT RESET: clears SCSI-2 reservations; PRs survive.
    fn lu_reset(&self);

    /// I_T nexus loss (I_T NEXUS RESET, controller reset, VM gone): clears a
    /// SCSI-2 reservation held by `nexus`; PRs survive.
    fn nexus_loss(&self, nexus: &ItNexus);
}
