//! The passthrough command filter: commands a guest must not send to a LUN
//! that other hosts share, because they can brick it (microcode download),
//! wipe it (FORMAT UNIT, SANITIZE, ATA SECURITY ERASE through ATA
//! PASS-THROUGH) or change it for everyone (target port group states,
//! self-tests that take it offline, copies to other LUNs of the array).
//! Blocked commands are answered CHECK CONDITION, ILLEGAL REQUEST: INVALID
//! COMMAND OPERATION CODE for a blocked opcode, INVALID FIELD IN CDB (with a
//! field pointer) when only some modes of an opcode are blocked.

use std::str::FromStr;

use crate::sense::{codes, Sense};

use super::SgioError;

/// FORMAT UNIT.
pub const FORMAT_UNIT: u8 = 0x04;
/// REASSIGN BLOCKS.
pub const REASSIGN_BLOCKS: u8 = 0x07;
/// SEND DIAGNOSTIC.
pub const SEND_DIAGNOSTIC: u8 = 0x1D;
/// FORMAT WITH PRESET.
pub const FORMAT_WITH_PRESET: u8 = 0x38;
/// WRITE BUFFER.
pub const WRITE_BUFFER: u8 = 0x3B;
/// WRITE LONG(10).
pub const WRITE_LONG_10: u8 = 0x3F;
/// SANITIZE.
pub const SANITIZE: u8 = 0x48;
/// EXTENDED COPY / third-party copy out (POPULATE TOKEN, WRITE USING TOKEN).
pub const THIRD_PARTY_COPY_OUT: u8 = 0x83;
/// ATA PASS-THROUGH(16).
pub const ATA_PASS_THROUGH_16: u8 = 0x85;
/// SERVICE ACTION OUT(16) (WRITE LONG(16) is service action 0x11).
pub const SERVICE_ACTION_OUT_16: u8 = 0x9F;
/// ATA PASS-THROUGH(12).
pub const ATA_PASS_THROUGH_12: u8 = 0xA1;
/// MAINTENANCE OUT (SET TARGET PORT GROUPS, SET DEVICE IDENTIFIER, …).
pub const MAINTENANCE_OUT: u8 = 0xA4;
/// SECURITY PROTOCOL OUT.
pub const SECURITY_PROTOCOL_OUT: u8 = 0xB5;

/// Opcodes blocked whole by default (vendor-specific 0xC0..=0xFF too).
pub const DEFAULT_DENIED: &[u8] = &[
    FORMAT_UNIT,
    REASSIGN_BLOCKS,
    SEND_DIAGNOSTIC,
    FORMAT_WITH_PRESET,
    WRITE_LONG_10,
    SANITIZE,
    THIRD_PARTY_COPY_OUT,
    ATA_PASS_THROUGH_16,
    ATA_PASS_THROUGH_12,
    MAINTENANCE_OUT,
    SECURITY_PROTOCOL_OUT,
];

/// WRITE BUFFER modes that download or activate microcode (SPC-4 table 220:
/// 04h, 05h, 06h, 07h, 0Dh, 0Eh, 0Fh).
pub const MICROCODE_MODES: &[u8] = &[0x04, 0x05, 0x06, 0x07, 0x0D, 0x0E, 0x0F];

/// User configuration of the filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterConfig {
    /// Opcodes let through even though blocked by default (every mode of
    /// WRITE BUFFER / SERVICE ACTION OUT(16) when those are listed).
    pub allow: Vec<u8>,
    /// Extra opcodes to block.
    pub deny: Vec<u8>,
}

/// A list of opcodes written `0x3b+0x04`, `3b:04` or `3b,04` (hex, `0x`
/// optional).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpcodeList(pub Vec<u8>);

impl FromStr for OpcodeList {
    type Err = SgioError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut v = Vec::new();
        for part in s.split([',', ':', '+']).filter(|p| !p.trim().is_empty()) {
            let t = part.trim();
            let hex = t
                .strip_prefix("0x")
                .or_else(|| t.strip_prefix("0X"))
                .unwrap_or(t);
            let op = u8::from_str_radix(hex, 16)
                .map_err(|_| SgioError::BadOption(s.to_owned(), "opcodes are hex bytes"))?;
            v.push(op);
        }
        Ok(OpcodeList(v))
    }
}

/// The compiled filter.
#[derive(Debug, Clone)]
pub struct CommandFilter {
    allow: [bool; 256],
    deny: [bool; 256],
}

impl Default for CommandFilter {
    fn default() -> Self {
        Self::new(&FilterConfig::default())
    }
}

impl CommandFilter {
    /// The default filter adjusted by `cfg`.
    pub fn new(cfg: &FilterConfig) -> Self {
        let mut deny = [false; 256];
        for &op in DEFAULT_DENIED {
            deny[usize::from(op)] = true;
        }
        for op in 0xC0..=0xFFu8 {
            deny[usize::from(op)] = true;
        }
        for &op in &cfg.deny {
            deny[usize::from(op)] = true;
        }
        let mut allow = [false; 256];
        for &op in &cfg.allow {
            allow[usize::from(op)] = true;
            deny[usize::from(op)] = false;
        }
        CommandFilter { allow, deny }
    }

    /// `None` if `cdb` may go to the device, else the sense to answer with.
    pub fn check(&self, cdb: &[u8]) -> Option<Sense> {
        let op = *cdb.first()?;
        if self.allow[usize::from(op)] {
            return None;
        }
        if self.deny[usize::from(op)] {
            return Some(codes::INVALID_OPCODE);
        }
        match op {
            WRITE_BUFFER => {
                let mode = cdb.get(1).copied().unwrap_or(0) & 0x1F;
                // MODE field: byte 1, bits 4..0.
                MICROCODE_MODES
                    .contains(&mode)
                    .then(|| codes::INVALID_FIELD_IN_CDB.in_cdb(1, Some(4)))
            }
            SERVICE_ACTION_OUT_16 => {
                let sa = cdb.get(1).copied().unwrap_or(0) & 0x1F;
                // WRITE LONG(16): SERVICE ACTION byte 1, bits 4..0.
                (sa == 0x11).then(|| codes::INVALID_FIELD_IN_CDB.in_cdb(1, Some(4)))
            }
            _ => None,
        }
    }
}
