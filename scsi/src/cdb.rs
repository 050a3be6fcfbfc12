//! The opcode table and CDB parsing.
//!
//! One table ([`OPCODES`]) describes every command the emulated disk knows:
//! its operation code and service action, its CDB length and SPC-4 "CDB usage
//! data" bitmap (which bits the device server looks at), where its ALLOCATION
//! LENGTH and PARAMETER LIST LENGTH fields are, its reservation class and
//! whether a pending unit attention stops it. The same table drives parsing
//! (length, service action, reserved bits), the dispatcher (allocation length
//! truncation, data-out size), reservation checks and REPORT SUPPORTED
//! OPERATION CODES.

use crate::pr::PrAccess;
use crate::sense::{codes, Sense};

/// Every command of the table, as a tag the dispatcher matches on.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cmd {
    TestUnitReady,
    RequestSense,
    FormatUnit,
    Read6,
    Write6,
    Inquiry,
    ModeSelect6,
    Reserve6,
    Release6,
    ModeSense6,
    StartStopUnit,
    SendDiagnostic,
    PreventAllowMediumRemoval,
    ReadCapacity10,
    Read10,
    Write10,
    WriteAndVerify10,
    Verify10,
    SynchronizeCache10,
    WriteBuffer,
    ReadBuffer,
    WriteSame10,
    Unmap,
    LogSense,
    ModeSelect10,
    Reserve10,
    Release10,
    ModeSense10,
    PersistentReserveIn,
    PersistentReserveOut,
    Read16,
    CompareAndWrite,
    Write16,
    WriteAndVerify16,
    Verify16,
    SynchronizeCache16,
    WriteSame16,
    ReadCapacity16,
    GetLbaStatus,
    ReportLuns,
    ReportSupportedOpcodes,
    ReportSupportedTmfs,
    Read12,
    Write12,
}

/// Whether a pending unit attention is reported instead of executing the
/// command (SPC-4 / SAM-5 5.14: INQUIRY, REPORT LUNS and REQUEST SENSE are
/// exempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UaRule {
    /// A pending unit attention is reported (and cleared) instead.
    Report,
    /// Executes with a unit attention pending, without clearing it.
    Exempt,
}

/// A logical-unit feature a command depends on; a unit without it answers
/// INVALID COMMAND OPERATION CODE and leaves the command out of REPORT
/// SUPPORTED OPERATION CODES.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Always supported.
    Nothing,
    /// Logical block provisioning (UNMAP).
    Discard,
    /// A reservation state (PERSISTENT RESERVE IN/OUT, RESERVE/RELEASE).
    Reservations,
}

/// A field of a CDB: byte offset and size in bytes (big-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Offset of the first byte.
    pub offset: u8,
    /// Size in bytes (1..=4).
    pub size: u8,
}

const fn f(offset: u8, size: u8) -> Option<Field> {
    Some(Field { offset, size })
}

/// One row of the opcode table.
#[derive(Debug)]
pub struct OpInfo {
    /// The command.
    pub cmd: Cmd,
    /// Name, for logs.
    pub name: &'static str,
    /// Operation code.
    pub opcode: u8,
    /// Service action (low 5 bits of byte 1), for opcodes that have them.
    pub sa: Option<u8>,
    /// CDB usage data (SPC-4 6.35.3): one byte per CDB byte, bits the device
    /// server evaluates. Its length is the CDB length. Bits clear here must
    /// be zero in a CDB (except the vendor bits of the CONTROL byte).
    pub usage: &'static [u8],
    /// The bits `usage` leaves clear (and the CONTROL byte's ignored bits
    /// do not cover), one byte per CDB byte, zero past the CDB's end and
    /// for the operation code: a CDB with none of them set has no reserved
    /// bit set (one 16-byte test instead of a loop over the bytes).
    pub forbidden: [u8; 16],
    /// Reservation class (SPC-4 table 43, SBC-4 table 13).
    pub access: PrAccess,
    /// ALLOCATION LENGTH field: data-in is truncated to it.
    pub alloc_len: Option<Field>,
    /// PARAMETER LIST LENGTH field: data-out carries that many bytes.
    pub param_len: Option<Field>,
    /// Unit attention handling.
    pub ua: UaRule,
    /// Feature the command needs.
    pub needs: Needs,
}

/// [`OpInfo::forbidden`] for a usage bitmap (at most 16 bytes).
const fn forbidden_bits(usage: &[u8]) -> [u8; 16] {
    let mut m = [0u8; 16];
    let mut i = 1;
    while i < usage.len() && i < 16 {
        let ignored = if i + 1 == usage.len() { 0xC2 } else { 0 };
        m[i] = !usage[i] & !ignored;
        i += 1;
    }
    m
}

/// OR of `bytes[i] & mask[i]` over the bytes (4..=16 of them), read as two
/// overlapping words; `None` for other lengths.
#[inline]
fn bad_bits(bytes: &[u8], mask: &[u8; 16]) -> Option<u64> {
    fn word<const N: usize>(s: &[u8], at: usize) -> Option<[u8; N]> {
        s.get(at..at + N)?.try_into().ok()
    }
    let n = bytes.len();
    if n >= 8 {
        let lo = u64::from_ne_bytes(word(bytes, 0)?) & u64::from_ne_bytes(word(mask, 0)?);
        let hi = u64::from_ne_bytes(word(bytes, n - 8)?) & u64::from_ne_bytes(word(mask, n - 8)?);
        Some(lo | hi)
    } else {
        let lo = u32::from_ne_bytes(word(bytes, 0)?) & u32::from_ne_bytes(word(mask, 0)?);
        let hi = u32::from_ne_bytes(word(bytes, n.checked_sub(4)?)?)
            & u32::from_ne_bytes(word(mask, n - 4)?);
        Some(u64::from(lo | hi))
    }
}

use Cmd::*;
use PrAccess::{Allowed, PrOut, Read as Rd, Scsi2, Write as Wr};

macro_rules! op {
    ($cmd:expr, $name:expr, $op:expr, $sa:expr, $usage:expr, $acc:expr, $al:expr, $pl:expr) => {
        op!(
            $cmd,
            $name,
            $op,
            $sa,
            $usage,
            $acc,
            $al,
            $pl,
            UaRule::Report,
            Needs::Nothing
        )
    };
    ($cmd:expr, $name:expr, $op:expr, $sa:expr, $usage:expr, $acc:expr, $al:expr, $pl:expr, $ua:expr, $needs:expr) => {
        OpInfo {
            cmd: $cmd,
            name: $name,
            opcode: $op,
            sa: $sa,
            usage: $usage,
            forbidden: forbidden_bits($usage),
            access: $acc,
            alloc_len: $al,
            param_len: $pl,
            ua: $ua,
            needs: $needs,
        }
    };
}

/// PERSISTENT RESERVE IN service actions (READ KEYS, READ RESERVATION,
/// REPORT CAPABILITIES, READ FULL STATUS).
const PR_IN_SAS: [u8; 4] = [0, 1, 2, 3];
const PR_OUT_SAS: [u8; 8] = [0, 1, 2, 3, 4, 5, 6, 7];

const PR_IN_USAGE: &[u8] = &[0x5E, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0];
const PR_OUT_USAGE: &[u8] = &[0x5F, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0];

macro_rules! pr_in {
    ($sa:expr, $name:expr) => {
        op!(
            PersistentReserveIn,
            $name,
            0x5E,
            Some($sa),
            PR_IN_USAGE,
            Allowed,
            f(7, 2),
            None,
            UaRule::Report,
            Needs::Reservations
        )
    };
}
macro_rules! pr_out {
    ($sa:expr, $name:expr) => {
        op!(
            PersistentReserveOut,
            $name,
            0x5F,
            Some($sa),
            PR_OUT_USAGE,
            PrOut,
            None,
            f(5, 4),
            UaRule::Report,
            Needs::Reservations
        )
    };
}

/// The opcode table, sorted by (opcode, service action).
#[rustfmt::skip]
pub static OPCODES: &[OpInfo] = &[
    op!(TestUnitReady, "TEST UNIT READY", 0x00, None, &[0x00, 0, 0, 0, 0, 0], Allowed, None, None),
    op!(RequestSense, "REQUEST SENSE", 0x03, None, &[0x03, 0x01, 0, 0, 0xFF, 0], Allowed, f(4, 1), None, UaRule::Exempt, Needs::Nothing),
    op!(FormatUnit, "FORMAT UNIT", 0x04, None, &[0x04, 0x3F, 0, 0, 0, 0], Wr, None, None),
    op!(Read6, "READ(6)", 0x08, None, &[0x08, 0x1F, 0xFF, 0xFF, 0xFF, 0], Rd, None, None),
    op!(Write6, "WRITE(6)", 0x0A, None, &[0x0A, 0x1F, 0xFF, 0xFF, 0xFF, 0], Wr, None, None),
    op!(Inquiry, "INQUIRY", 0x12, None, &[0x12, 0x01, 0xFF, 0xFF, 0xFF, 0], Allowed, f(3, 2), None, UaRule::Exempt, Needs::Nothing),
    op!(ModeSelect6, "MODE SELECT(6)", 0x15, None, &[0x15, 0x11, 0, 0, 0xFF, 0], Wr, None, f(4, 1)),
    op!(Reserve6, "RESERVE(6)", 0x16, None, &[0x16, 0, 0, 0, 0, 0], Scsi2, None, None, UaRule::Report, Needs::Reservations),
    op!(Release6, "RELEASE(6)", 0x17, None, &[0x17, 0, 0, 0, 0, 0], Scsi2, None, None, UaRule::Report, Needs::Reservations),
    op!(ModeSense6, "MODE SENSE(6)", 0x1A, None, &[0x1A, 0x08, 0xFF, 0xFF, 0xFF, 0], Rd, f(4, 1), None),
    op!(StartStopUnit, "START STOP UNIT", 0x1B, None, &[0x1B, 0x01, 0, 0x0F, 0xF7, 0], Wr, None, None),
    op!(SendDiagnostic, "SEND DIAGNOSTIC", 0x1D, None, &[0x1D, 0xF7, 0, 0xFF, 0xFF, 0], Wr, None, f(3, 2)),
    op!(PreventAllowMediumRemoval, "PREVENT ALLOW MEDIUM REMOVAL", 0x1E, None, &[0x1E, 0, 0, 0, 0x03, 0], Wr, None, None),
    op!(ReadCapacity10, "READ CAPACITY(10)", 0x25, None, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], Allowed, None, None),
    op!(Read10, "READ(10)", 0x28, None, &[0x28, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0], Rd, None, None),
    op!(Write10, "WRITE(10)", 0x2A, None, &[0x2A, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0], Wr, None, None),
    op!(WriteAndVerify10, "WRITE AND VERIFY(10)", 0x2E, None, &[0x2E, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0], Wr, None, None),
    op!(Verify10, "VERIFY(10)", 0x2F, None, &[0x2F, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0], Rd, None, None),
    op!(SynchronizeCache10, "SYNCHRONIZE CACHE(10)", 0x35, None, &[0x35, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0], Wr, None, None),
    op!(WriteBuffer, "WRITE BUFFER", 0x3B, None, &[0x3B, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0], Wr, None, f(6, 3)),
    op!(ReadBuffer, "READ BUFFER", 0x3C, None, &[0x3C, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0], Rd, f(6, 3), None),
    op!(WriteSame10, "WRITE SAME(10)", 0x41, None, &[0x41, 0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0], Wr, None, None),
    op!(Unmap, "UNMAP", 0x42, None, &[0x42, 0, 0, 0, 0, 0, 0x1F, 0xFF, 0xFF, 0], Wr, None, f(7, 2), UaRule::Report, Needs::Discard),
    op!(LogSense, "LOG SENSE", 0x4D, None, &[0x4D, 0, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0], Allowed, f(7, 2), None),
    op!(ModeSelect10, "MODE SELECT(10)", 0x55, None, &[0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0], Wr, None, f(7, 2)),
    op!(Reserve10, "RESERVE(10)", 0x56, None, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], Scsi2, None, None, UaRule::Report, Needs::Reservations),
    op!(Release10, "RELEASE(10)", 0x57, None, &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0], Scsi2, None, None, UaRule::Report, Needs::Reservations),
    op!(ModeSense10, "MODE SENSE(10)", 0x5A, None, &[0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0], Rd, f(7, 2), None),
    pr_in!(PR_IN_SAS[0], "PERSISTENT RESERVE IN/READ KEYS"),
    pr_in!(PR_IN_SAS[1], "PERSISTENT RESERVE IN/READ RESERVATION"),
    pr_in!(PR_IN_SAS[2], "PERSISTENT RESERVE IN/REPORT CAPABILITIES"),
    pr_in!(PR_IN_SAS[3], "PERSISTENT RESERVE IN/READ FULL STATUS"),
    pr_out!(PR_OUT_SAS[0], "PERSISTENT RESERVE OUT/REGISTER"),
    pr_out!(PR_OUT_SAS[1], "PERSISTENT RESERVE OUT/RESERVE"),
    pr_out!(PR_OUT_SAS[2], "PERSISTENT RESERVE OUT/RELEASE"),
    pr_out!(PR_OUT_SAS[3], "PERSISTENT RESERVE OUT/CLEAR"),
    pr_out!(PR_OUT_SAS[4], "PERSISTENT RESERVE OUT/PREEMPT"),
    pr_out!(PR_OUT_SAS[5], "PERSISTENT RESERVE OUT/PREEMPT AND ABORT"),
    pr_out!(PR_OUT_SAS[6], "PERSISTENT RESERVE OUT/REGISTER AND IGNORE EXISTING KEY"),
    pr_out!(PR_OUT_SAS[7], "PERSISTENT RESERVE OUT/REGISTER AND MOVE"),
    op!(Read16, "READ(16)", 0x88, None, &[0x88, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0], Rd, None, None),
    op!(CompareAndWrite, "COMPARE AND WRITE", 0x89, None, &[0x89, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0x1F, 0], Wr, None, None),
    op!(Write16, "WRITE(16)", 0x8A, None, &[0x8A, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0], Wr, None, None),
    op!(WriteAndVerify16, "WRITE AND VERIFY(16)", 0x8E, None, &[0x8E, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0], Wr, None, None),
    op!(Verify16, "VERIFY(16)", 0x8F, None, &[0x8F, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0], Rd, None, None),
    op!(SynchronizeCache16, "SYNCHRONIZE CACHE(16)", 0x91, None, &[0x91, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0], Wr, None, None),
    op!(WriteSame16, "WRITE SAME(16)", 0x93, None, &[0x93, 0x09, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0], Wr, None, None),
    op!(ReadCapacity16, "READ CAPACITY(16)", 0x9E, Some(0x10), &[0x9E, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0], Allowed, f(10, 4), None),
    op!(GetLbaStatus, "GET LBA STATUS", 0x9E, Some(0x12), &[0x9E, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0], Rd, f(10, 4), None),
    op!(ReportLuns, "REPORT LUNS", 0xA0, None, &[0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0], Allowed, f(6, 4), None, UaRule::Exempt, Needs::Nothing),
    op!(ReportSupportedOpcodes, "REPORT SUPPORTED OPERATION CODES", 0xA3, Some(0x0C), &[0xA3, 0x1F, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0], Allowed, f(6, 4), None),
    op!(ReportSupportedTmfs, "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS", 0xA3, Some(0x0D), &[0xA3, 0x1F, 0x80, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0], Allowed, f(6, 4), None),
    op!(Read12, "READ(12)", 0xA8, None, &[0xA8, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0], Rd, None, None),
    op!(Write12, "WRITE(12)", 0xAA, None, &[0xAA, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0], Wr, None, None),
];

/// Whether `opcode` has service actions in our table.
pub fn has_service_actions(opcode: u8) -> bool {
    OPCODES.iter().any(|o| o.opcode == opcode && o.sa.is_some())
}

/// The row for (opcode, service action); `sa` is ignored for opcodes
/// without service actions.
pub fn find(opcode: u8, sa: Option<u8>) -> Option<&'static OpInfo> {
    OPCODES
        .iter()
        .find(|o| o.opcode == opcode && (o.sa.is_none() || o.sa == sa))
}

/// Why a CDB could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The CDB buffer is empty.
    #[error("empty CDB")]
    Empty,
    /// The CDB buffer is shorter than the command needs (a transport error).
    #[error("CDB of {got} bytes for opcode {opcode:#04x} that needs {need}")]
    TooShort {
        /// Operation code.
        opcode: u8,
        /// Bytes available.
        got: usize,
        /// Bytes required.
        need: usize,
    },
    /// Unknown operation code (5/20/00).
    #[error("invalid operation code {0:#04x}")]
    InvalidOpcode(u8),
    /// A field of the CDB is invalid (5/24/00 with a field pointer).
    #[error("invalid field in CDB at byte {byte}")]
    InvalidField {
        /// Byte of the CDB.
        byte: u16,
        /// Bit, when known.
        bit: Option<u8>,
    },
}

impl ParseError {
    /// The sense data for SCSI-level parse errors (`None` for transport
    /// errors).
    pub fn sense(&self) -> Option<Sense> {
        match *self {
            ParseError::Empty | ParseError::TooShort { .. } => None,
            ParseError::InvalidOpcode(_) => Some(codes::INVALID_OPCODE.in_cdb(0, None)),
            ParseError::InvalidField { byte, bit } => {
                Some(codes::INVALID_FIELD_IN_CDB.in_cdb(byte, bit))
            }
        }
    }
}

/// A CDB matched against the table: the row plus the CDB bytes, sliced to
/// exactly the command's length.
#[derive(Debug, Clone, Copy)]
pub struct Cdb<'a> {
    /// The table row.
    pub info: &'static OpInfo,
    /// Exactly `info.usage.len()` bytes.
    pub bytes: &'a [u8],
}

/// Find the command of `cdb` in the table and check its length. Reserved
/// bits are checked separately by [`Cdb::check_reserved`], because a pending
/// unit attention is reported before field errors.
/// The first [`OPCODES`] entry of `opcode`, through an index by opcode
/// (built on first use): a command touches one table entry instead of
/// scanning the entries before it (cache lines that a 4 KiB copy between
/// two commands may have evicted).
fn first_entry(opcode: u8) -> Option<&'static OpInfo> {
    static INDEX: std::sync::OnceLock<[u16; 256]> = std::sync::OnceLock::new();
    let index = INDEX.get_or_init(|| {
        let mut t = [u16::MAX; 256];
        // Backwards, so that the first entry of an opcode wins.
        for (i, o) in OPCODES.iter().enumerate().rev() {
            t[usize::from(o.opcode)] = u16::try_from(i).unwrap_or(u16::MAX);
        }
        t
    });
    OPCODES.get(usize::from(index[usize::from(opcode)]))
}

pub fn lookup(cdb: &[u8]) -> Result<Cdb<'_>, ParseError> {
    let opcode = *cdb.first().ok_or(ParseError::Empty)?;
    let first = first_entry(opcode).ok_or(ParseError::InvalidOpcode(opcode))?;
    let need = first.usage.len();
    if cdb.len() < need {
        return Err(ParseError::TooShort {
            opcode,
            got: cdb.len(),
            need,
        });
    }
    let info = if first.sa.is_some() {
        let sa = cdb[1] & 0x1F;
        find(opcode, Some(sa)).ok_or(ParseError::InvalidField {
            byte: 1,
            bit: Some(4),
        })?
    } else {
        first
    };
    Ok(Cdb {
        info,
        bytes: &cdb[..need],
    })
}

impl<'a> Cdb<'a> {
    /// Check that every bit the usage data marks unused is zero (the
    /// CONTROL byte's vendor bits 7..6 and obsolete FLAG bit 1 excepted).
    pub fn check_reserved(&self) -> Result<(), ParseError> {
        // Fast path: two overlapping word loads of the CDB and of the mask
        // cover every byte (CDBs are 6..=16 bytes); no copy, so no store
        // to forward.
        if let Some(bytes) = self.bytes.get(..self.info.usage.len()) {
            if bad_bits(bytes, &self.info.forbidden) == Some(0) {
                return Ok(());
            }
        }
        let last = self
            .bytes
            .len()
            .min(self.info.usage.len())
            .saturating_sub(1);
        let bad_at = |i: usize| {
            let ignored = if i == last { 0xC2 } else { 0 };
            let usage = self.info.usage.get(i).copied().unwrap_or(0);
            self.byte(i) & !usage & !ignored
        };
        // Fast path: no reserved bit set anywhere.
        if (1..=last).all(|i| bad_at(i) == 0) {
            return Ok(());
        }
        for i in 1..=last {
            let bad = bad_at(i);
            if bad != 0 {
                let bit = u8::try_from(7 - bad.leading_zeros()).unwrap_or(7);
                return Err(ParseError::InvalidField {
                    byte: u16::try_from(i).unwrap_or(u16::MAX),
                    bit: Some(bit),
                });
            }
        }
        Ok(())
    }

    /// The command.
    pub fn cmd(&self) -> Cmd {
        self.info.cmd
    }

    /// Byte `i` (0 past the end: never panics).
    pub fn byte(&self, i: usize) -> u8 {
        self.bytes.get(i).copied().unwrap_or(0)
    }

    /// Bit `bit` of byte `i`.
    pub fn bit(&self, i: usize, bit: u8) -> bool {
        self.byte(i) & (1 << (bit & 7)) != 0
    }

    /// Big-endian unsigned field of `size` bytes at `offset` (size ≤ 8).
    pub fn be(&self, offset: usize, size: usize) -> u64 {
        match self.bytes.get(offset..offset.saturating_add(size)) {
            Some(b) => b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)),
            None => (offset..offset.saturating_add(size))
                .fold(0u64, |acc, i| (acc << 8) | u64::from(self.byte(i))),
        }
    }

    /// The value of a table field.
    pub fn field(&self, field: Field) -> u64 {
        self.be(usize::from(field.offset), usize::from(field.size))
    }

    /// ALLOCATION LENGTH, for commands that have one.
    pub fn alloc_len(&self) -> Option<u64> {
        self.info.alloc_len.map(|f| self.field(f))
    }

    /// PARAMETER LIST LENGTH, for commands that have one.
    pub fn param_len(&self) -> Option<u64> {
        self.info.param_len.map(|f| self.field(f))
    }
}

/// CDB length implied by the group code of an operation code (SAM-5 5.2),
/// or `None` for reserved/vendor-specific groups.
pub fn group_cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcode_index_finds_the_first_entry_of_every_opcode() {
        for op in 0..=u8::MAX {
            let linear = OPCODES.iter().find(|o| o.opcode == op);
            assert_eq!(
                first_entry(op).map(std::ptr::from_ref),
                linear.map(std::ptr::from_ref),
                "opcode {op:#04x}"
            );
        }
    }

    #[test]
    fn table_is_consistent() {
        for (i, o) in OPCODES.iter().enumerate() {
            assert_eq!(o.usage[0], o.opcode, "{}", o.name);
            if let Some(len) = group_cdb_len(o.opcode) {
                assert_eq!(o.usage.len(), len, "{}", o.name);
            }
            if let Some(sa) = o.sa {
                assert_eq!(o.usage[1] & 0x1F, 0x1F, "{}", o.name);
                assert!(sa < 0x20);
            }
            for fld in [o.alloc_len, o.param_len].into_iter().flatten() {
                let end = usize::from(fld.offset + fld.size);
                assert!(end < o.usage.len(), "{}", o.name);
                for b in &o.usage[usize::from(fld.offset)..end] {
                    assert_eq!(*b, 0xFF, "{}", o.name);
                }
            }
            // Sorted by (opcode, sa), no duplicates.
            if let Some(next) = OPCODES.get(i + 1) {
                assert!((o.opcode, o.sa) < (next.opcode, next.sa), "{}", o.name);
            }
            // Control byte: nothing evaluated but NACA/LINK rejection.
            assert_eq!(*o.usage.last().unwrap(), 0, "{}", o.name);
        }
    }

    #[test]
    fn lookup_finds_service_actions_and_lengths() {
        // READ CAPACITY(16): opcode 0x9E, service action 0x10, 16 bytes.
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9E;
        cdb[1] = 0x10;
        cdb[13] = 32;
        let c = lookup(&cdb).unwrap();
        assert_eq!(c.cmd(), Cmd::ReadCapacity16);
        assert_eq!(c.alloc_len(), Some(32));
        // Unknown service action of a known opcode: invalid field, byte 1.
        cdb[1] = 0x11;
        assert_eq!(
            lookup(&cdb).unwrap_err(),
            ParseError::InvalidField {
                byte: 1,
                bit: Some(4)
            }
        );
        assert_eq!(
            lookup(&[0xFF, 0, 0, 0, 0, 0]).unwrap_err(),
            ParseError::InvalidOpcode(0xFF)
        );
        assert_eq!(
            lookup(&[0x28, 0, 0]).unwrap_err(),
            ParseError::TooShort {
                opcode: 0x28,
                got: 3,
                need: 10
            }
        );
        assert_eq!(lookup(&[]).unwrap_err(), ParseError::Empty);
        // A 32-byte transport buffer is sliced down to the CDB length.
        let mut long = [0u8; 32];
        long[0] = 0x28;
        assert_eq!(lookup(&long).unwrap().bytes.len(), 10);
    }

    #[test]
    fn reserved_bits_are_rejected_with_pointer() {
        // READ(10) with RDPROTECT = 1 (byte 1 bit 5): protection unsupported.
        let cdb = [0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0];
        let c = lookup(&cdb).unwrap();
        assert_eq!(
            c.check_reserved().unwrap_err(),
            ParseError::InvalidField {
                byte: 1,
                bit: Some(5)
            }
        );
        // NACA in the CONTROL byte: unsupported.
        let cdb = [0x00, 0, 0, 0, 0, 0x04];
        assert_eq!(
            lookup(&cdb).unwrap().check_reserved().unwrap_err(),
            ParseError::InvalidField {
                byte: 5,
                bit: Some(2)
            }
        );
        // Vendor bits of CONTROL are ignored.
        let cdb = [0x00, 0, 0, 0, 0, 0xC0];
        assert!(lookup(&cdb).unwrap().check_reserved().is_ok());
        // DPO and FUA are fine.
        let cdb = [0x28, 0x18, 0, 0, 0, 0, 0, 0, 1, 0];
        assert!(lookup(&cdb).unwrap().check_reserved().is_ok());
    }

    #[test]
    fn every_single_reserved_bit_of_every_command_is_found() {
        // For each row, a CDB with every used bit set (and the service
        // action of the row) passes; setting any one bit the usage data
        // leaves clear (CONTROL's vendor bits 7..6 and FLAG bit 1 excepted)
        // fails with that byte and bit.
        for o in OPCODES {
            let mut base: Vec<u8> = o.usage.to_vec();
            if let Some(sa) = o.sa {
                base[1] = (base[1] & !0x1F) | sa;
            }
            let c = lookup(&base).unwrap();
            assert_eq!(c.cmd(), o.cmd, "{}", o.name);
            assert!(c.check_reserved().is_ok(), "{}", o.name);
            let last = base.len() - 1;
            for i in 1..base.len() {
                for bit in 0..8u8 {
                    let m = 1u8 << bit;
                    let sa_bit = o.sa.is_some() && i == 1 && m & 0x1F != 0;
                    if base[i] & m != 0 || sa_bit || (i == last && m & 0xC2 != 0) {
                        continue;
                    }
                    let mut cdb = base.clone();
                    cdb[i] |= m;
                    let r = lookup(&cdb).and_then(|c| c.check_reserved());
                    assert_eq!(
                        r,
                        Err(ParseError::InvalidField {
                            byte: u16::try_from(i).unwrap(),
                            bit: Some(bit)
                        }),
                        "{} byte {i} bit {bit}",
                        o.name
                    );
                }
            }
        }
    }
}
