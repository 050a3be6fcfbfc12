//! The pure persistent-reservation state machine of one logical unit
//! (SPC-4 5.7 and 6.15/6.16), with SCSI-2 RESERVE/RELEASE and compatible
//! reservation handling (SPC-4 5.7.3, CRH = 1).
//!
//! [`PrState`] knows nothing about files or processes: [`super::shared`]
//! loads it from the state file, applies one command and stores it back.
//! [`MemoryPr`] wraps it in a mutex for logical units whose PR state lives in
//! one process only.
//!
//! # Rules implemented (all verified against SPC-4 r37 text quoted by LIO's
//! `target_core_pr.c` and the SPDK/tgt implementations)
//!
//! * Registrations are kept per I_T nexus ([`RegistrantId`]); a registration
//!   made with ALL_TG_PT = 1 has no target port and covers every I_T nexus of
//!   that initiator port. An I_T nexus' own (exact) registration wins over a
//!   wildcard one.
//! * PRgeneration is incremented by every successful REGISTER, REGISTER AND
//!   IGNORE EXISTING KEY, CLEAR, PREEMPT, PREEMPT AND ABORT and REGISTER AND
//!   MOVE, and by nothing else (not by RESERVE, RELEASE, nor by the no-op
//!   REGISTER of an unregistered nexus with a zero SERVICE ACTION RESERVATION
//!   KEY, nor by any command that ends in an error).
//! * Conflicts ([`PrState::conflicts`]) follow SPC-4 table 43 / SBC-4 table 13
//!   with the [`PrAccess`] classes: the holder is never in conflict; under
//!   Write Exclusive reads pass and writes conflict for everybody else; under
//!   Exclusive Access both conflict for everybody else (registered or not);
//!   under the registrants-only and all-registrants types registrants may read
//!   and write, and non-registrants may read under the Write Exclusive
//!   variants only.
//! * A SCSI-2 reservation (RESERVE(6)/(10)) held by some nexus makes Read and
//!   Write commands of every other nexus conflict, and every PERSISTENT
//!   RESERVE IN/OUT of every nexus conflict (SPC-2 5.5.1). `Allowed` commands
//!   (INQUIRY, REPORT LUNS, REQUEST SENSE, ... TEST UNIT READY, READ CAPACITY)
//!   pass; SPC-2 lists only INQUIRY, LOG SENSE, RELEASE, REPORT LUNS and
//!   REQUEST SENSE, so TEST UNIT READY and READ CAPACITY passing is a
//!   deliberate relaxation (the [`PrAccess`] classes do not separate them).
//! * Error codes where SPC-4 leaves a choice or implementations differ follow
//!   LIO: a TRANSPORTID PARAMETER DATA LENGTH (SPEC_I_PT) or TransportID
//!   length (REGISTER AND MOVE) that does not match the parameter list is
//!   INVALID FIELD IN PARAMETER LIST; SPEC_I_PT naming an I_T nexus that is
//!   already registered is INVALID FIELD IN PARAMETER LIST; REGISTER AND
//!   MOVE without a reservation is INVALID FIELD IN CDB, from a non-holder or
//!   under an all-registrants type RESERVATION CONFLICT. A REGISTER AND MOVE
//!   destination that is already registered gets the SERVICE ACTION
//!   RESERVATION KEY as its key ("associate the key with the destination").
//! * PREEMPT that does not preempt the reservation removes every
//!   registration with the SERVICE ACTION RESERVATION KEY, the issuing
//!   nexus' own included if its key matches (SPC-4 5.7.11.4.4); PREEMPT of
//!   the holder keeps the issuing nexus' registration; a changed type raises
//!   RESERVATIONS RELEASED for the remaining registrants (5.7.11.4.3 f).
//! * Unit attentions go to the registrants SPC-4 names (never to the nexus
//!   whose command raised them, never to unregistered nexuses). A unit
//!   attention for an ALL_TG_PT registrant is reported once, to the first of
//!   its I_T nexuses that asks (not once per target port).
//! * With any registration present, RESERVE/RELEASE complete with GOOD and no
//!   effect from the PR holder or from a registrant under a registrants-only /
//!   all-registrants reservation, and conflict otherwise (SPC-4 5.7.3).

use super::{PrAccess, PrOutcome};
use crate::nexus::{ItNexus, PortName, TargetPort};
use crate::sense::{codes, Sense};

/// Most registrations one logical unit keeps (beyond: INSUFFICIENT
/// REGISTRATION RESOURCES).
pub const MAX_REGISTRATIONS: usize = 256;
/// Most pending unit attentions kept per logical unit (the oldest are
/// dropped beyond this; each nexus keeps at most one of each kind).
pub const MAX_PENDING_UAS: usize = 1024;

/// PERSISTENT RESERVE OUT operation code.
pub const PR_OUT_OPCODE: u8 = 0x5F;
/// PERSISTENT RESERVE IN operation code.
pub const PR_IN_OPCODE: u8 = 0x5E;

/// PERSISTENT RESERVE OUT service actions (SPC-4 table 171).
pub mod out_sa {
    /// REGISTER
    pub const REGISTER: u8 = 0x00;
    /// RESERVE
    pub const RESERVE: u8 = 0x01;
    /// RELEASE
    pub const RELEASE: u8 = 0x02;
    /// CLEAR
    pub const CLEAR: u8 = 0x03;
    /// PREEMPT
    pub const PREEMPT: u8 = 0x04;
    /// PREEMPT AND ABORT
    pub const PREEMPT_AND_ABORT: u8 = 0x05;
    /// REGISTER AND IGNORE EXISTING KEY
    pub const REGISTER_AND_IGNORE: u8 = 0x06;
    /// REGISTER AND MOVE
    pub const REGISTER_AND_MOVE: u8 = 0x07;
}

/// PERSISTENT RESERVE IN service actions (SPC-4 table 159).
pub mod in_sa {
    /// READ KEYS
    pub const READ_KEYS: u8 = 0x00;
    /// READ RESERVATION
    pub const READ_RESERVATION: u8 = 0x01;
    /// REPORT CAPABILITIES
    pub const REPORT_CAPABILITIES: u8 = 0x02;
    /// READ FULL STATUS
    pub const READ_FULL_STATUS: u8 = 0x03;
}

/// Persistent reservation type (SPC-4 table 164), scope LU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PrType {
    /// 1h Write Exclusive.
    WriteExclusive = 1,
    /// 3h Exclusive Access.
    ExclusiveAccess = 3,
    /// 5h Write Exclusive – Registrants Only.
    WriteExclusiveRegistrantsOnly = 5,
    /// 6h Exclusive Access – Registrants Only.
    ExclusiveAccessRegistrantsOnly = 6,
    /// 7h Write Exclusive – All Registrants.
    WriteExclusiveAllRegistrants = 7,
    /// 8h Exclusive Access – All Registrants.
    ExclusiveAccessAllRegistrants = 8,
}

impl PrType {
    /// All six types, in code order.
    pub const ALL: [PrType; 6] = [
        PrType::WriteExclusive,
        PrType::ExclusiveAccess,
        PrType::WriteExclusiveRegistrantsOnly,
        PrType::ExclusiveAccessRegistrantsOnly,
        PrType::WriteExclusiveAllRegistrants,
        PrType::ExclusiveAccessAllRegistrants,
    ];

    /// The type for a TYPE field value, if valid.
    pub fn from_code(code: u8) -> Option<PrType> {
        PrType::ALL.into_iter().find(|t| *t as u8 == code)
    }

    /// The TYPE field value.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// An all-registrants type: every registrant is a holder.
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// A registrants-only type.
    pub fn registrants_only(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveRegistrantsOnly | PrType::ExclusiveAccessRegistrantsOnly
        )
    }

    /// An Exclusive Access variant (reads conflict for non-registrants).
    pub fn exclusive_access(self) -> bool {
        matches!(
            self,
            PrType::ExclusiveAccess
                | PrType::ExclusiveAccessRegistrantsOnly
                | PrType::ExclusiveAccessAllRegistrants
        )
    }
}

/// Who a registration (or a pending unit attention) belongs to: an initiator
/// port and, unless registered with ALL_TG_PT = 1, one target port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegistrantId {
    /// The initiator port.
    pub initiator: PortName,
    /// The target port; `None` = every target port (ALL_TG_PT).
    pub target: Option<TargetPort>,
}

impl RegistrantId {
    /// The registrant id of exactly this I_T nexus.
    pub fn exact(nexus: &ItNexus) -> Self {
        RegistrantId {
            initiator: nexus.initiator.clone(),
            target: Some(nexus.target.clone()),
        }
    }

    /// Whether `nexus` is one of the I_T nexuses this id names.
    pub fn covers(&self, nexus: &ItNexus) -> bool {
        self.initiator == nexus.initiator && self.target.as_ref().is_none_or(|t| *t == nexus.target)
    }
}

/// One registration: an I_T nexus (or all of an initiator's) and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Whose registration.
    pub id: RegistrantId,
    /// The reservation key (never zero).
    pub key: u64,
}

/// The persistent reservation, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The registration holding it (for all-registrants types: the one that
    /// established it; every registrant is a holder then).
    pub holder: RegistrantId,
    /// Its type (the scope is always LU).
    pub ty: PrType,
}

/// A unit attention waiting for an I_T nexus (or every nexus of an
/// initiator, for ALL_TG_PT registrants).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUa {
    /// Whom it is for.
    pub to: RegistrantId,
    /// Additional sense code (0x2A).
    pub asc: u8,
    /// Qualifier (03, 04, 05).
    pub ascq: u8,
}

/// The complete reservation state of one logical unit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PrState {
    /// PRgeneration (SPC-4 6.15.2), a wrapping 32-bit counter.
    pub generation: u32,
    /// Activate Persist Through Power Loss: the APTPL bit of the last
    /// successful REGISTER, REGISTER AND IGNORE EXISTING KEY or REGISTER AND
    /// MOVE (the no-op REGISTER of an unregistered nexus with a zero key does
    /// not count).
    pub aptpl: bool,
    /// Registrations in the order they were made.
    pub registrations: Vec<Registration>,
    /// The persistent reservation.
    pub reservation: Option<Reservation>,
    /// The SCSI-2 (RESERVE(6)/(10)) reservation holder.
    pub scsi2: Option<ItNexus>,
    /// Unit attentions raised for other nexuses, oldest first.
    pub pending_ua: Vec<PendingUa>,
    /// Which registrants PREEMPT AND ABORT preempted, by abort epoch: what
    /// lets every process decide whether one of its outstanding commands was
    /// aborted (see [`super::fence`]).
    pub aborts: AbortLog,
}

/// Most records an [`AbortLog`] keeps; the oldest epochs are dropped beyond.
pub const MAX_ABORT_RECORDS: usize = 256;

/// The PREEMPT AND ABORT history of a logical unit.
///
/// Each successful PREEMPT AND ABORT that preempted someone takes the next
/// abort epoch (`epoch + 1`) and records every preempted registrant under it.
/// A command remembers the epoch current when it entered its task set
/// (`since`); it has been aborted if a record with a later epoch covers its
/// I_T nexus ([`AbortLog::aborted`]). Old epochs are dropped beyond
/// [`MAX_ABORT_RECORDS`] records; `floor` is the newest dropped epoch, and a
/// command older than it counts as aborted (its answer is unknown, so the
/// safe one is given).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AbortLog {
    /// The newest abort epoch (0 = no PREEMPT AND ABORT ever).
    pub epoch: u64,
    /// Every epoch up to this one was dropped from `records`.
    pub floor: u64,
    /// (epoch, preempted registrant), oldest first.
    pub records: Vec<(u64, RegistrantId)>,
}

impl AbortLog {
    /// Record one PREEMPT AND ABORT that preempted `ids`; returns its epoch.
    pub fn push(&mut self, ids: &[RegistrantId]) -> u64 {
        self.epoch += 1;
        for id in ids {
            self.records.push((self.epoch, id.clone()));
        }
        while self.records.len() > MAX_ABORT_RECORDS {
            let oldest = self.records[0].0;
            self.records.retain(|r| r.0 != oldest);
            self.floor = oldest;
        }
        self.epoch
    }

    /// Whether a command of `nexus` that entered the task set at abort
    /// epoch `since` was aborted by a later PREEMPT AND ABORT.
    pub fn aborted(&self, nexus: &ItNexus, since: u64) -> bool {
        if since >= self.epoch {
            return false;
        }
        if since < self.floor {
            return true;
        }
        self.records
            .iter()
            .any(|(e, id)| *e > since && id.covers(nexus))
    }
}

/// What a PERSISTENT RESERVE OUT did besides its status: which nexuses the
/// caller must abort the tasks of (PREEMPT AND ABORT, SPC-4 5.7.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrOutResult {
    /// Status, sense.
    pub outcome: PrOutcome,
    /// For a successful PREEMPT AND ABORT: the registrants whose registration
    /// was preempted. Every outstanding command of every I_T nexus that one of
    /// these ids [`covers`](RegistrantId::covers) — except the PERSISTENT
    /// RESERVE OUT command itself — must be aborted by the caller (task
    /// management path). Empty for every other service action.
    pub abort: Vec<RegistrantId>,
}

impl PrOutResult {
    fn plain(outcome: PrOutcome) -> Self {
        PrOutResult {
            outcome,
            abort: Vec::new(),
        }
    }
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_be_bytes(a)
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_be_bytes(a)
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        a.copy_from_slice(s);
    }
    u16::from_be_bytes(a)
}

fn check(s: Sense) -> PrOutResult {
    PrOutResult::plain(PrOutcome::check(s))
}

fn conflict() -> PrOutResult {
    PrOutResult::plain(PrOutcome::conflict())
}

fn good() -> PrOutResult {
    PrOutResult::plain(PrOutcome::good())
}

impl PrState {
    /// Index of the registration that applies to `nexus`: its own one, else
    /// an ALL_TG_PT one of its initiator.
    pub fn find_reg(&self, nexus: &ItNexus) -> Option<usize> {
        let exact = self.registrations.iter().position(|r| {
            r.id.initiator == nexus.initiator && r.id.target.as_ref() == Some(&nexus.target)
        });
        exact.or_else(|| {
            self.registrations
                .iter()
                .position(|r| r.id.initiator == nexus.initiator && r.id.target.is_none())
        })
    }

    /// Whether `nexus` is registered.
    pub fn is_registered(&self, nexus: &ItNexus) -> bool {
        self.find_reg(nexus).is_some()
    }

    /// Whether `nexus` holds the persistent reservation (SPC-4 5.7.10).
    pub fn is_holder(&self, nexus: &ItNexus) -> bool {
        match &self.reservation {
            None => false,
            Some(r) if r.ty.all_registrants() => self.is_registered(nexus),
            Some(r) => self
                .find_reg(nexus)
                .is_some_and(|i| self.registrations[i].id == r.holder),
        }
    }

    /// Whether any persistent reservation state exists (CRH decisions).
    fn pr_active(&self) -> bool {
        !self.registrations.is_empty() || self.reservation.is_some()
    }

    /// The reservation key of the holder (0 for all-registrants types).
    pub fn holder_key(&self) -> Option<u64> {
        let r = self.reservation.as_ref()?;
        if r.ty.all_registrants() {
            return Some(0);
        }
        self.registrations
            .iter()
            .find(|g| g.id == r.holder)
            .map(|g| g.key)
    }

    /// SPC-4 table 43 / SBC-4 table 13 plus SPC-2 reservations: whether a
    /// command of class `access` from `nexus` gets RESERVATION CONFLICT.
    pub fn conflicts(&self, nexus: &ItNexus, access: PrAccess) -> bool {
        if let Some(h) = &self.scsi2 {
            let other = h != nexus;
            match access {
                PrAccess::Allowed | PrAccess::Scsi2 => {}
                // SPC-2: every PR IN/OUT conflicts with a SCSI-2 reservation.
                PrAccess::PrOut => return true,
                PrAccess::Read | PrAccess::Write => {
                    if other {
                        return true;
                    }
                }
            }
        }
        let Some(res) = &self.reservation else {
            return false;
        };
        match access {
            PrAccess::Allowed | PrAccess::PrOut | PrAccess::Scsi2 => false,
            PrAccess::Read | PrAccess::Write => {
                let reg = self.find_reg(nexus);
                let registered = reg.is_some();
                let holder = match reg {
                    Some(_) if res.ty.all_registrants() => true,
                    Some(i) => self.registrations[i].id == res.holder,
                    None => false,
                };
                if holder {
                    return false;
                }
                match (res.ty, access) {
                    (PrType::WriteExclusive, PrAccess::Read) => false,
                    (PrType::WriteExclusive | PrType::ExclusiveAccess, _) => true,
                    (t, PrAccess::Read) if !t.exclusive_access() => false,
                    _ => !registered,
                }
            }
        }
    }

    fn push_ua(&mut self, to: RegistrantId, sense: Sense) {
        let (asc, ascq) = (sense.asc, sense.ascq);
        if self
            .pending_ua
            .iter()
            .any(|u| u.to == to && u.asc == asc && u.ascq == ascq)
        {
            return;
        }
        if self.pending_ua.len() >= MAX_PENDING_UAS {
            self.pending_ua.remove(0);
        }
        self.pending_ua.push(PendingUa { to, asc, ascq });
    }

    /// Whether a unit attention waits for `nexus`.
    pub fn has_ua_for(&self, nexus: &ItNexus) -> bool {
        self.pending_ua.iter().any(|u| u.to.covers(nexus))
    }

    /// Remove and return the unit attentions waiting for `nexus`, oldest
    /// first.
    pub fn take_ua(&mut self, nexus: &ItNexus) -> Vec<Sense> {
        let mut out = Vec::new();
        self.pending_ua.retain(|u| {
            if u.to.covers(nexus) {
                out.push(Sense::new(
                    crate::sense::SenseKey::UnitAttention,
                    u.asc,
                    u.ascq,
                ));
                false
            } else {
                true
            }
        });
        out
    }

    /// UA `sense` for every registrant except `except`.
    fn ua_to_registrants_except(&mut self, except: Option<&RegistrantId>, sense: Sense) {
        let ids: Vec<RegistrantId> = self
            .registrations
            .iter()
            .filter(|r| Some(&r.id) != except)
            .map(|r| r.id.clone())
            .collect();
        for id in ids {
            self.push_ua(id, sense);
        }
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// Remove the registration at `idx`, releasing the reservation as SPC-4
    /// 5.7.11.3 says for an unregistering holder. Returns its id.
    fn unregister(&mut self, idx: usize) -> RegistrantId {
        let reg = self.registrations.remove(idx);
        if let Some(res) = self.reservation.clone() {
            if res.ty.all_registrants() {
                // Held by all registrants: released with the last one.
                if self.registrations.is_empty() {
                    self.reservation = None;
                }
            } else if res.holder == reg.id {
                self.reservation = None;
                if res.ty.registrants_only() {
                    self.ua_to_registrants_except(None, codes::RESERVATIONS_RELEASED);
                }
            }
        }
        reg.id
    }

    /// SCSI-2 RESERVE(6)/(10).
    pub fn scsi2_reserve(&mut self, nexus: &ItNexus) -> PrOutcome {
        if self.pr_active() {
            return self.crh(nexus);
        }
        match &self.scsi2 {
            Some(h) if h != nexus => PrOutcome::conflict(),
            _ => {
                self.scsi2 = Some(nexus.clone());
                PrOutcome::good()
            }
        }
    }

    /// SCSI-2 RELEASE(6)/(10).
    pub fn scsi2_release(&mut self, nexus: &ItNexus) -> PrOutcome {
        if self.pr_active() {
            return self.crh(nexus);
        }
        if self.scsi2.as_ref() == Some(nexus) {
            self.scsi2 = None;
        }
        PrOutcome::good()
    }

    /// Compatible reservation handling: RESERVE/RELEASE while PR state
    /// exists.
    fn crh(&self, nexus: &ItNexus) -> PrOutcome {
        let ro_or_ar = self
            .reservation
            .as_ref()
            .is_some_and(|r| r.ty.registrants_only() || r.ty.all_registrants());
        if self.is_holder(nexus) || (ro_or_ar && self.is_registered(nexus)) {
            PrOutcome::good()
        } else {
            PrOutcome::conflict()
        }
    }

    /// LOGICAL UNIT RESET: the SCSI-2 reservation goes, PRs stay.
    pub fn lu_reset(&mut self) {
        self.scsi2 = None;
    }

    /// I_T nexus loss: a SCSI-2 reservation of `nexus` goes, PRs stay.
    pub fn nexus_loss(&mut self, nexus: &ItNexus) {
        if self.scsi2.as_ref() == Some(nexus) {
            self.scsi2 = None;
        }
    }

    /// Forget everything that does not persist through power loss: the SCSI-2
    /// reservation and unit attentions always; registrations, the reservation
    /// and PRgeneration unless APTPL is active.
    pub fn power_loss(&mut self) {
        self.scsi2 = None;
        self.pending_ua.clear();
        // No command outlives its process; the epoch keeps counting up.
        self.aborts.floor = self.aborts.epoch;
        self.aborts.records.clear();
        if !self.aptpl {
            self.registrations.clear();
            self.reservation = None;
            self.generation = 0;
        }
    }

    /// PERSISTENT RESERVE OUT. `cdb` is the 10-byte CDB, `params` the
    /// parameter list (PARAMETER LIST LENGTH bytes). `known_ports` are target
    /// ports the REGISTER AND MOVE RELATIVE TARGET PORT IDENTIFIER may name
    /// besides the one the command came through.
    pub fn pr_out(
        &mut self,
        nexus: &ItNexus,
        cdb: &[u8],
        params: &[u8],
        known_ports: &[TargetPort],
    ) -> PrOutResult {
        if self.scsi2.is_some() {
            return conflict();
        }
        if cdb.len() < 10 {
            return check(codes::INVALID_FIELD_IN_CDB.in_cdb(0, None));
        }
        let sa = cdb[1] & 0x1F;
        let scope = cdb[2] >> 4;
        let type_code = cdb[2] & 0x0F;
        if sa > out_sa::REGISTER_AND_MOVE {
            return check(codes::INVALID_FIELD_IN_CDB.in_cdb(1, Some(4)));
        }
        let plen = usize::try_from(be_u32(cdb, 5)).unwrap_or(usize::MAX);
        if plen < 24 || params.len() < plen {
            return check(codes::PARAM_LIST_LENGTH_ERROR);
        }
        let params = &params[..plen];
        let rk = be_u64(params, 0);
        let sark = be_u64(params, 8);
        if sa == out_sa::REGISTER_AND_MOVE {
            return self.register_and_move(nexus, rk, sark, params, known_ports);
        }
        let flags = params[20];
        let spec_i_pt = flags & 0x08 != 0;
        let all_tg_pt = flags & 0x04 != 0;
        let aptpl = flags & 0x01 != 0;
        if spec_i_pt && sa != out_sa::REGISTER {
            return check(codes::INVALID_FIELD_IN_PARAM_LIST.in_param(20, Some(3)));
        }
        if !spec_i_pt && plen != 24 {
            return check(codes::PARAM_LIST_LENGTH_ERROR);
        }
        match sa {
            out_sa::REGISTER | out_sa::REGISTER_AND_IGNORE => self.register(
                nexus,
                sa == out_sa::REGISTER_AND_IGNORE,
                rk,
                sark,
                spec_i_pt,
                all_tg_pt,
                aptpl,
                params,
            ),
            out_sa::RESERVE => self.reserve(nexus, rk, scope, type_code),
            out_sa::RELEASE => self.release(nexus, rk, scope, type_code),
            out_sa::CLEAR => self.clear(nexus, rk),
            _ => self.preempt(
                nexus,
                rk,
                sark,
                scope,
                type_code,
                sa == out_sa::PREEMPT_AND_ABORT,
            ),
        }
    }

    /// The registered key check shared by every service action but REGISTER
    /// AND IGNORE EXISTING KEY: the nexus' registration index, or a conflict.
    fn registered_with(&self, nexus: &ItNexus, rk: u64) -> Result<usize, PrOutResult> {
        match self.find_reg(nexus) {
            Some(i) if self.registrations[i].key == rk => Ok(i),
            _ => Err(conflict()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn register(
        &mut self,
        nexus: &ItNexus,
        ignore_key: bool,
        rk: u64,
        sark: u64,
        spec_i_pt: bool,
        all_tg_pt: bool,
        aptpl: bool,
        params: &[u8],
    ) -> PrOutResult {
        if let Some(i) = self.find_reg(nexus) {
            if !ignore_key && self.registrations[i].key != rk {
                return conflict();
            }
            if spec_i_pt {
                return check(codes::INVALID_FIELD_IN_CDB);
            }
            if sark == 0 {
                self.unregister(i);
            } else {
                self.registrations[i].key = sark;
            }
            // The last valid APTPL bit received decides persistence.
            self.aptpl = aptpl;
            self.bump();
            return good();
        }
        // Not registered.
        if !ignore_key && rk != 0 {
            return conflict();
        }
        if sark == 0 {
            // Nothing to register: GOOD, no change (SPC-4 table 50).
            return good();
        }
        let target = (!all_tg_pt).then(|| nexus.target.clone());
        let mut new = vec![RegistrantId {
            initiator: nexus.initiator.clone(),
            target: target.clone(),
        }];
        if spec_i_pt {
            // A TRANSPORTID PARAMETER DATA LENGTH that does not account for
            // exactly the rest of the list: INVALID FIELD IN PARAMETER LIST
            // (as LIO answers; SPC-4 names no specific code for it).
            let tpdl = usize::try_from(be_u32(params, 24)).unwrap_or(usize::MAX);
            if params.len() < 28 || tpdl.checked_add(28) != Some(params.len()) {
                return check(codes::INVALID_FIELD_IN_PARAM_LIST.in_param(24, None));
            }
            let mut at = 28;
            while at < params.len() {
                let Some((name, len)) = PortName::from_transport_id(&params[at..]) else {
                    return check(codes::INVALID_FIELD_IN_PARAM_LIST.in_param(pos16(at), None));
                };
                let id = RegistrantId {
                    initiator: name,
                    target: target.clone(),
                };
                let already = self.registrations.iter().any(|r| {
                    r.id.initiator == id.initiator
                        && (r.id.target.is_none()
                            || id.target.is_none()
                            || r.id.target == id.target)
                });
                if already {
                    return check(codes::INVALID_FIELD_IN_PARAM_LIST.in_param(pos16(at), None));
                }
                if !new.contains(&id) {
                    new.push(id);
                }
                at += len;
            }
        }
        if self.registrations.len() + new.len() > MAX_REGISTRATIONS {
            return check(codes::INSUFFICIENT_REGISTRATION_RESOURCES);
        }
        for id in new {
            self.registrations.push(Registration { id, key: sark });
        }
        self.aptpl = aptpl;
        self.bump();
        good()
    }

    fn reserve(&mut self, nexus: &ItNexus, rk: u64, scope: u8, type_code: u8) -> PrOutResult {
        let i = match self.registered_with(nexus, rk) {
            Ok(i) => i,
            Err(e) => return e,
        };
        if scope != 0 {
            return check(codes::INVALID_FIELD_IN_CDB.in_cdb(2, Some(7)));
        }
        let Some(ty) = PrType::from_code(type_code) else {
            return check(codes::INVALID_FIELD_IN_CDB.in_cdb(2, Some(3)));
        };
        match &self.reservation {
            None => {
                self.reservation = Some(Reservation {
                    holder: self.registrations[i].id.clone(),
                    ty,
                });
                good()
            }
            Some(r) if r.ty == ty && self.is_holder(nexus) => good(),
            Some(_) => conflict(),
        }
    }

    fn release(&mut self, nexus: &ItNexus, rk: u64, scope: u8, type_code: u8) -> PrOutResult {
        let i = match self.registered_with(nexus, rk) {
            Ok(i) => i,
            Err(e) => return e,
        };
        let Some(res) = self.reservation.clone() else {
            return good();
        };
        if !self.is_holder(nexus) {
            return good();
        }
        if scope != 0 || type_code != res.ty.code() {
            return check(codes::INVALID_RELEASE_OF_PR);
        }
        self.reservation = None;
        if res.ty.registrants_only() || res.ty.all_registrants() {
            let me = self.registrations[i].id.clone();
            self.ua_to_registrants_except(Some(&me), codes::RESERVATIONS_RELEASED);
        }
        good()
    }

    fn clear(&mut self, nexus: &ItNexus, rk: u64) -> PrOutResult {
        let i = match self.registered_with(nexus, rk) {
            Ok(i) => i,
            Err(e) => return e,
        };
        let me = self.registrations[i].id.clone();
        self.ua_to_registrants_except(Some(&me), codes::RESERVATIONS_PREEMPTED);
        self.registrations.clear();
        self.reservation = None;
        self.bump();
        good()
    }

    fn preempt(
        &mut self,
        nexus: &ItNexus,
        rk: u64,
        sark: u64,
        scope: u8,
        type_code: u8,
        abort: bool,
    ) -> PrOutResult {
        let i = match self.registered_with(nexus, rk) {
            Ok(i) => i,
            Err(e) => return e,
        };
        let me = self.registrations[i].id.clone();
        let res = self.reservation.clone();
        let all_reg = res.as_ref().is_some_and(|r| r.ty.all_registrants());
        if !all_reg && sark == 0 {
            return check(codes::INVALID_FIELD_IN_PARAM_LIST.in_param(8, None));
        }
        let preempts_reservation = match &res {
            Some(r) if r.ty.all_registrants() => sark == 0,
            Some(_) => self.holder_key() == Some(sark),
            None => false,
        };
        let removed: Vec<RegistrantId>;
        if let (true, Some(old)) = (preempts_reservation, res) {
            // SPC-4 5.7.11.4.3: preempting the persistent reservation.
            if scope != 0 {
                return check(codes::INVALID_FIELD_IN_CDB.in_cdb(2, Some(7)));
            }
            let Some(ty) = PrType::from_code(type_code) else {
                return check(codes::INVALID_FIELD_IN_CDB.in_cdb(2, Some(3)));
            };
            removed = self
                .registrations
                .iter()
                .filter(|r| r.id != me && (all_reg || r.key == sark))
                .map(|r| r.id.clone())
                .collect();
            self.registrations.retain(|r| !removed.contains(&r.id));
            for id in &removed {
                self.push_ua(id.clone(), codes::REGISTRATIONS_PREEMPTED);
            }
            self.reservation = Some(Reservation {
                holder: me.clone(),
                ty,
            });
            if ty != old.ty {
                self.ua_to_registrants_except(Some(&me), codes::RESERVATIONS_RELEASED);
            }
        } else {
            // SPC-4 5.7.11.4.4: removing registrations.
            removed = self
                .registrations
                .iter()
                .filter(|r| r.key == sark)
                .map(|r| r.id.clone())
                .collect();
            if removed.is_empty() {
                return conflict();
            }
            self.registrations.retain(|r| !removed.contains(&r.id));
            for id in &removed {
                if *id != me {
                    self.push_ua(id.clone(), codes::REGISTRATIONS_PREEMPTED);
                }
            }
            if all_reg && self.registrations.is_empty() {
                self.reservation = None;
            }
        }
        self.bump();
        if abort && !removed.is_empty() {
            self.aborts.push(&removed);
        }
        PrOutResult {
            outcome: PrOutcome::good(),
            abort: if abort { removed } else { Vec::new() },
        }
    }

    fn register_and_move(
        &mut self,
        nexus: &ItNexus,
        rk: u64,
        sark: u64,
        params: &[u8],
        known_ports: &[TargetPort],
    ) -> PrOutResult {
        let i = match self.registered_with(nexus, rk) {
            Ok(i) => i,
            Err(e) => return e,
        };
        // No reservation to move: INVALID FIELD IN CDB (SPC-4 5.7.8, as LIO).
        let Some(res) = self.reservation.clone() else {
            return check(codes::INVALID_FIELD_IN_CDB);
        };
        if res.ty.all_registrants() || !self.is_holder(nexus) {
            return conflict();
        }
        if sark == 0 {
            return check(codes::INVALID_FIELD_IN_PARAM_LIST.in_param(8, None));
        }
        let unreg = params[17] & 0x02 != 0;
        let aptpl = params[17] & 0x01 != 0;
        let rel = be_u16(params, 18);
        let tid_len = usize::try_from(be_u32(params, 20)).unwrap_or(usize::MAX);
        if tid_len.checked_add(24) != Some(params.len()) {
            return check(codes::INVALID_FIELD_IN_PARAM_LIST.in_param(20, None));
        }
        let Some((initiator, _)) = PortName::from_transport_id(&params[24..]) else {
            return check(codes::INVALID_FIELD_IN_PARAM_LIST.in_param(24, None));
        };
        let port = if rel == nexus.target.relative_id {
            Some(nexus.target.clone())
        } else {
            known_ports
                .iter()
                .chain(
                    self.registrations
                        .iter()
                        .filter_map(|r| r.id.target.as_ref()),
                )
                .find(|p| p.relative_id == rel)
                .cloned()
        };
        let Some(port) = port else {
            return check(codes::INVALID_FIELD_IN_PARAM_LIST.in_param(18, None));
        };
        let dest = ItNexus {
            initiator,
            target: port,
        };
        if dest == *nexus {
            return check(codes::INVALID_FIELD_IN_PARAM_LIST.in_param(24, None));
        }
        let dest_id = match self.find_reg(&dest) {
            Some(d) => {
                self.registrations[d].key = sark;
                self.registrations[d].id.clone()
            }
            None => {
                if self.registrations.len() >= MAX_REGISTRATIONS {
                    return check(codes::INSUFFICIENT_REGISTRATION_RESOURCES);
                }
                let id = RegistrantId::exact(&dest);
                self.registrations.push(Registration {
                    id: id.clone(),
                    key: sark,
                });
                id
            }
        };
        let me = self.registrations[i].id.clone();
        self.reservation = Some(Reservation {
            holder: dest_id,
            ty: res.ty,
        });
        if unreg {
            self.registrations.retain(|r| r.id != me);
        }
        self.aptpl = aptpl;
        self.bump();
        good()
    }

    /// PERSISTENT RESERVE IN (data before ALLOCATION LENGTH truncation).
    pub fn pr_in(&self, nexus: &ItNexus, cdb: &[u8]) -> PrOutcome {
        let _ = nexus;
        if self.scsi2.is_some() {
            return PrOutcome::conflict();
        }
        if cdb.len() < 10 {
            return PrOutcome::check(codes::INVALID_FIELD_IN_CDB.in_cdb(0, None));
        }
        let mut d = self.generation.to_be_bytes().to_vec();
        match cdb[1] & 0x1F {
            in_sa::READ_KEYS => {
                let keys: Vec<u8> = self
                    .registrations
                    .iter()
                    .flat_map(|r| r.key.to_be_bytes())
                    .collect();
                d.extend_from_slice(&len32(keys.len()));
                d.extend_from_slice(&keys);
            }
            in_sa::READ_RESERVATION => match (&self.reservation, self.holder_key()) {
                (Some(r), Some(key)) => {
                    d.extend_from_slice(&16u32.to_be_bytes());
                    d.extend_from_slice(&key.to_be_bytes());
                    d.extend_from_slice(&[0, 0, 0, 0]); // obsolete
                    d.push(0); // reserved
                    d.push(r.ty.code()); // scope 0 (LU) | type
                    d.extend_from_slice(&[0, 0]); // obsolete
                }
                _ => d.extend_from_slice(&[0, 0, 0, 0]),
            },
            in_sa::REPORT_CAPABILITIES => {
                d = vec![
                    0x00,
                    0x08, // LENGTH
                    // CRH | SIP_C | ATP_C | PTPL_C (RLR_C = 0)
                    0x10 | 0x08 | 0x04 | 0x01,
                    // TMV | ALLOW COMMANDS 011b | PTPL_A
                    0x80 | (0b011 << 4) | u8::from(self.aptpl),
                    // WR_EX_AR | EX_AC_RO | WR_EX_RO | EX_AC | WR_EX
                    0x80 | 0x40 | 0x20 | 0x08 | 0x02,
                    0x01, // EX_AC_AR
                    0x00,
                    0x00,
                ];
            }
            in_sa::READ_FULL_STATUS => {
                let mut body = Vec::new();
                for r in &self.registrations {
                    let holder = match &self.reservation {
                        Some(res) if res.ty.all_registrants() => true,
                        Some(res) => res.holder == r.id,
                        None => false,
                    };
                    body.extend_from_slice(&r.key.to_be_bytes());
                    body.extend_from_slice(&[0, 0, 0, 0]);
                    body.push(u8::from(r.id.target.is_none()) << 1 | u8::from(holder));
                    body.push(match (&self.reservation, holder) {
                        (Some(res), true) => res.ty.code(),
                        _ => 0,
                    });
                    body.extend_from_slice(&[0, 0, 0, 0]);
                    let rel = r.id.target.as_ref().map_or(0, |t| t.relative_id);
                    body.extend_from_slice(&rel.to_be_bytes());
                    let tid = r.id.initiator.transport_id();
                    body.extend_from_slice(&len32(tid.len()));
                    body.extend_from_slice(&tid);
                }
                d.extend_from_slice(&len32(body.len()));
                d.extend_from_slice(&body);
            }
            _ => return PrOutcome::check(codes::INVALID_FIELD_IN_CDB.in_cdb(1, Some(4))),
        }
        PrOutcome::data(d)
    }
}

fn len32(n: usize) -> [u8; 4] {
    u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes()
}

fn pos16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// Reservations of a logical unit that only this process uses: the state
/// machine behind a mutex, with an in-process abort fence. (Disks shared
/// between processes use [`super::shared::SharedPr`].)
#[derive(Debug, Default)]
pub struct MemoryPr {
    state: std::sync::Mutex<PrState>,
    fence: super::fence::LocalFence,
}

impl MemoryPr {
    /// Empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the current state (tests, diagnostics).
    pub fn snapshot(&self) -> PrState {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PrState> {
        // A panic while holding the lock cannot leave the state torn in a way
        // that matters more than losing it; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl super::Reservations for MemoryPr {
    fn conflicts(&self, nexus: &ItNexus, access: PrAccess) -> bool {
        self.lock().conflicts(nexus, access)
    }

    fn reserve_out(&self, nexus: &ItNexus, cdb: &[u8], params: &[u8]) -> PrOutcome {
        self.reserve_out_with_aborts(nexus, cdb, params).outcome
    }

    fn reserve_out_with_aborts(&self, nexus: &ItNexus, cdb: &[u8], params: &[u8]) -> PrOutResult {
        let mut s = self.lock();
        let r = s.pr_out(nexus, cdb, params, &[]);
        if !r.abort.is_empty() {
            // Still under the lock, so PREEMPT AND ABORTs publish and wait
            // one at a time.
            self.fence.publish_and_wait(s.aborts.epoch);
        }
        r
    }

    fn abort_epoch(&self) -> u64 {
        self.fence.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn enter_io(&self, nexus: &ItNexus, since: u64) -> Option<super::IoPass<'_>> {
        super::fence::enter(&self.fence.epoch, &self.fence.slot, since, |since| {
            self.lock().aborts.aborted(nexus, since)
        })
    }

    fn aborted_since(&self, nexus: &ItNexus, since: u64) -> bool {
        self.abort_epoch() != since && self.lock().aborts.aborted(nexus, since)
    }

    fn reserve_in(&self, nexus: &ItNexus, cdb: &[u8]) -> PrOutcome {
        self.lock().pr_in(nexus, cdb)
    }

    fn scsi2_reserve(&self, nexus: &ItNexus) -> PrOutcome {
        self.lock().scsi2_reserve(nexus)
    }

    fn scsi2_release(&self, nexus: &ItNexus) -> PrOutcome {
        self.lock().scsi2_release(nexus)
    }

    fn take_unit_attentions(&self, nexus: &ItNexus) -> Vec<Sense> {
        self.lock().take_ua(nexus)
    }

    fn lu_reset(&self) {
        self.lock().lu_reset();
    }

    fn nexus_loss(&self, nexus: &ItNexus) {
        self.lock().nexus_loss(nexus);
    }
}
