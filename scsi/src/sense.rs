//! SCSI status codes and sense data (SPC-4 4.5): the one place where sense
//! keys, additional sense codes and both sense formats are defined.

/// SAM-5 status byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// 0x00: the command completed.
    Good = 0x00,
    /// 0x02: sense data describes the failure.
    CheckCondition = 0x02,
    /// 0x04: PRE-FETCH found the range in cache (unused by disks here).
    ConditionMet = 0x04,
    /// 0x08: the logical unit is busy.
    Busy = 0x08,
    /// 0x18: the command conflicts with a reservation.
    ReservationConflict = 0x18,
    /// 0x28: the task set is full.
    TaskSetFull = 0x28,
    /// 0x30: ACA is active.
    AcaActive = 0x30,
    /// 0x40: the command was aborted by another I_T nexus.
    TaskAborted = 0x40,
}

/// Sense key (SPC-4 table 48).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SenseKey {
    /// 0x0
    NoSense = 0x0,
    /// 0x1
    RecoveredError = 0x1,
    /// 0x2
    NotReady = 0x2,
    /// 0x3
    MediumError = 0x3,
    /// 0x4
    HardwareError = 0x4,
    /// 0x5
    IllegalRequest = 0x5,
    /// 0x6
    UnitAttention = 0x6,
    /// 0x7
    DataProtect = 0x7,
    /// 0x8
    BlankCheck = 0x8,
    /// 0xB
    AbortedCommand = 0xB,
    /// 0xE
    Miscompare = 0xE,
}

/// Sense-key-specific information (SPC-4 4.5.2.4): for ILLEGAL REQUEST, which
/// byte (and bit) of the CDB or of the parameter list is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FieldPointer {
    /// true: the field is in the CDB; false: in the parameter list (data-out).
    pub in_cdb: bool,
    /// Byte offset of the field.
    pub byte: u16,
    /// Bit of the field, if the error is narrowed to one bit.
    pub bit: Option<u8>,
}

/// One sense condition: key, additional sense code and qualifier, plus the
/// optional INFORMATION field and sense-key-specific field pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sense {
    /// Sense key.
    pub key: SenseKey,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
    /// INFORMATION field (e.g. the first bad LBA), with VALID set when present.
    pub info: Option<u64>,
    /// Sense-key-specific field pointer (ILLEGAL REQUEST only).
    pub field: Option<FieldPointer>,
}

/// Response codes for current errors.
const FIXED_CURRENT: u8 = 0x70;
const DESCRIPTOR_CURRENT: u8 = 0x72;

/// Length of fixed-format sense data we produce.
pub const FIXED_SENSE_LEN: usize = 18;

impl Sense {
    /// A sense condition without INFORMATION or field pointer.
    pub const fn new(key: SenseKey, asc: u8, ascq: u8) -> Self {
        Sense {
            key,
            asc,
            ascq,
            info: None,
            field: None,
        }
    }

    /// The same condition with the INFORMATION field set.
    pub const fn with_info(mut self, info: u64) -> Self {
        self.info = Some(info);
        self
    }

    /// The same condition pointing at CDB byte `byte` (and optionally `bit`).
    pub const fn in_cdb(mut self, byte: u16, bit: Option<u8>) -> Self {
        self.field = Some(FieldPointer {
            in_cdb: true,
            byte,
            bit,
        });
        self
    }

    /// The same condition pointing at parameter-list byte `byte` (and bit).
    pub const fn in_param(mut self, byte: u16, bit: Option<u8>) -> Self {
        self.field = Some(FieldPointer {
            in_cdb: false,
            byte,
            bit,
        });
        self
    }

    /// (key, asc, ascq), handy in tests and logs.
    pub const fn triple(&self) -> (u8, u8, u8) {
        (self.key as u8, self.asc, self.ascq)
    }

    fn sks_bytes(&self) -> Option<[u8; 3]> {
        let f = self.field?;
        let mut b0 = 0x80; // SKSV
        if f.in_cdb {
            b0 |= 0x40; // C/D
        }
        if let Some(bit) = f.bit {
            b0 |= 0x08 | (bit & 0x7); // BPV + bit pointer
        }
        let [hi, lo] = f.byte.to_be_bytes();
        Some([b0, hi, lo])
    }

    /// Fixed-format sense data (response code 0x70), 18 bytes.
    pub fn to_fixed(&self) -> [u8; FIXED_SENSE_LEN] {
        let mut b = [0u8; FIXED_SENSE_LEN];
        b[0] = FIXED_CURRENT;
        b[2] = self.key as u8;
        if let Some(info) = self.info {
            // The fixed format has 4 bytes of INFORMATION; VALID only if it fits.
            if let Ok(v) = u32::try_from(info) {
                b[0] |= 0x80;
                b[3..7].copy_from_slice(&v.to_be_bytes());
            }
        }
        b[7] = 10; // additional sense length: FIXED_SENSE_LEN - 8
        b[12] = self.asc;
        b[13] = self.ascq;
        if let Some(sks) = self.sks_bytes() {
            b[15..18].copy_from_slice(&sks);
        }
        b
    }

    /// Descriptor-format sense data (response code 0x72) with an INFORMATION
    /// descriptor and a sense-key-specific descriptor when present.
    pub fn to_descriptor(&self) -> Vec<u8> {
        let mut b = vec![
            DESCRIPTOR_CURRENT,
            self.key as u8,
            self.asc,
            self.ascq,
            0,
            0,
            0,
            0,
        ];
        if let Some(info) = self.info {
            // Information descriptor: type 0, length 0x0A, VALID, 8-byte field.
            b.extend_from_slice(&[0x00, 0x0A, 0x80, 0x00]);
            b.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(sks) = self.sks_bytes() {
            // Sense key specific descriptor: type 2, length 6.
            b.extend_from_slice(&[0x02, 0x06, 0x00, 0x00, sks[0], sks[1], sks[2], 0x00]);
        }
        let additional = b.len() - 8;
        b[7] = u8::try_from(additional).unwrap_or(u8::MAX);
        b
    }

    /// Encode in the format the initiator asked for (D_SENSE in the control
    /// mode page selects descriptor format).
    pub fn encode(&self, descriptor: bool) -> Vec<u8> {
        if descriptor {
            self.to_descriptor()
        } else {
            self.to_fixed().to_vec()
        }
    }
}

/// Named sense conditions used across the crate (SPC-4 annex D).
pub mod codes {
    use super::{Sense, SenseKey::*};

    /// 0/00/00 NO ADDITIONAL SENSE INFORMATION
    pub const NO_SENSE: Sense = Sense::new(NoSense, 0x00, 0x00);
    /// 5/20/00 INVALID COMMAND OPERATION CODE
    pub const INVALID_OPCODE: Sense = Sense::new(IllegalRequest, 0x20, 0x00);
    /// 5/24/00 INVALID FIELD IN CDB
    pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(IllegalRequest, 0x24, 0x00);
    /// 5/26/00 INVALID FIELD IN PARAMETER LIST
    pub const INVALID_FIELD_IN_PARAM_LIST: Sense = Sense::new(IllegalRequest, 0x26, 0x00);
    /// 5/26/04 INVALID RELEASE OF PERSISTENT RESERVATION
    pub const INVALID_RELEASE_OF_PR: Sense = Sense::new(IllegalRequest, 0x26, 0x04);
    /// 5/1A/00 PARAMETER LIST LENGTH ERROR
    pub const PARAM_LIST_LENGTH_ERROR: Sense = Sense::new(IllegalRequest, 0x1A, 0x00);
    /// 5/21/00 LOGICAL BLOCK ADDRESS OUT OF RANGE
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(IllegalRequest, 0x21, 0x00);
    /// 5/25/00 LOGICAL UNIT NOT SUPPORTED
    pub const LUN_NOT_SUPPORTED: Sense = Sense::new(IllegalRequest, 0x25, 0x00);
    /// 5/55/02 INSUFFICIENT RESERVATION RESOURCES
    pub const INSUFFICIENT_RESERVATION_RESOURCES: Sense = Sense::new(IllegalRequest, 0x55, 0x02);
    /// 5/55/04 INSUFFICIENT REGISTRATION RESOURCES
    pub const INSUFFICIENT_REGISTRATION_RESOURCES: Sense = Sense::new(IllegalRequest, 0x55, 0x04);
    /// 5/39/00 SAVING PARAMETERS NOT SUPPORTED
    pub const SAVING_PARAMS_NOT_SUPPORTED: Sense = Sense::new(IllegalRequest, 0x39, 0x00);
    /// 5/2C/00 COMMAND SEQUENCE ERROR
    pub const COMMAND_SEQUENCE_ERROR: Sense = Sense::new(IllegalRequest, 0x2C, 0x00);
    /// 7/27/00 WRITE PROTECTED
    pub const WRITE_PROTECTED: Sense = Sense::new(DataProtect, 0x27, 0x00);
    /// 3/11/00 UNRECOVERED READ ERROR
    pub const UNRECOVERED_READ_ERROR: Sense = Sense::new(MediumError, 0x11, 0x00);
    /// 3/0C/00 WRITE ERROR
    pub const WRITE_ERROR: Sense = Sense::new(MediumError, 0x0C, 0x00);
    /// E/1D/00 MISCOMPARE DURING VERIFY OPERATION
    pub const MISCOMPARE_DURING_VERIFY: Sense = Sense::new(Miscompare, 0x1D, 0x00);
    /// 4/44/00 INTERNAL TARGET FAILURE
    pub const INTERNAL_TARGET_FAILURE: Sense = Sense::new(HardwareError, 0x44, 0x00);
    /// B/00/00 aborted command, no additional information
    pub const ABORTED_COMMAND: Sense = Sense::new(AbortedCommand, 0x00, 0x00);
    /// 6/29/00 POWER ON, RESET, OR BUS DEVICE RESET OCCURRED
    pub const POWER_ON_RESET: Sense = Sense::new(UnitAttention, 0x29, 0x00);
    /// 6/29/03 BUS DEVICE RESET FUNCTION OCCURRED
    pub const BUS_DEVICE_RESET: Sense = Sense::new(UnitAttention, 0x29, 0x03);
    /// 6/29/07 I_T NEXUS LOSS OCCURRED
    pub const I_T_NEXUS_LOSS: Sense = Sense::new(UnitAttention, 0x29, 0x07);
    /// 6/2A/01 MODE PARAMETERS CHANGED
    pub const MODE_PARAMETERS_CHANGED: Sense = Sense::new(UnitAttention, 0x2A, 0x01);
    /// 6/2A/03 RESERVATIONS PREEMPTED
    pub const RESERVATIONS_PREEMPTED: Sense = Sense::new(UnitAttention, 0x2A, 0x03);
    /// 6/2A/04 RESERVATIONS RELEASED
    pub const RESERVATIONS_RELEASED: Sense = Sense::new(UnitAttention, 0x2A, 0x04);
    /// 6/2A/05 REGISTRATIONS PREEMPTED
    pub const REGISTRATIONS_PREEMPTED: Sense = Sense::new(UnitAttention, 0x2A, 0x05);
    /// 6/2A/09 CAPACITY DATA HAS CHANGED
    pub const CAPACITY_DATA_CHANGED: Sense = Sense::new(UnitAttention, 0x2A, 0x09);
    /// 6/3F/0E REPORTED LUNS DATA HAS CHANGED
    pub const REPORTED_LUNS_DATA_CHANGED: Sense = Sense::new(UnitAttention, 0x3F, 0x0E);
    /// 6/2F/00 COMMANDS CLEARED BY ANOTHER INITIATOR
    pub const COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: Sense = Sense::new(UnitAttention, 0x2F, 0x00);
    /// B/4E/00 OVERLAPPED COMMANDS ATTEMPTED (a tag reused while outstanding)
    pub const OVERLAPPED_COMMANDS: Sense = Sense::new(AbortedCommand, 0x4E, 0x00);
    /// 4/3E/03 LOGICAL UNIT FAILED SELF-TEST
    pub const SELF_TEST_FAILED: Sense = Sense::new(HardwareError, 0x3E, 0x03);
    /// 6/29/01 POWER ON OCCURRED
    pub const POWER_ON_OCCURRED: Sense = Sense::new(UnitAttention, 0x29, 0x01);
    /// 2/04/00 LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE
    pub const NOT_READY: Sense = Sense::new(NotReady, 0x04, 0x00);
}

#[cfg(test)]
mod tests {
    use super::codes::*;

    #[test]
    fn fixed_format_invalid_field_with_pointer() {
        let s = INVALID_FIELD_IN_CDB.in_cdb(2, Some(5));
        assert_eq!(
            s.to_fixed(),
            [
                0x70,
                0,
                0x05,
                0,
                0,
                0,
                0,
                10, // response code, key, info (invalid), additional length
                0,
                0,
                0,
                0, // command-specific information
                0x24,
                0x00,
                0, // ASC, ASCQ, FRU
                0xC8 | 5,
                0x00,
                0x02, // SKSV | C/D | BPV | bit 5, field pointer 2
            ]
        );
    }

    #[test]
    fn fixed_format_with_info() {
        let s = UNRECOVERED_READ_ERROR.with_info(0x1234);
        assert_eq!(
            s.to_fixed(),
            [0xF0, 0, 0x03, 0, 0, 0x12, 0x34, 10, 0, 0, 0, 0, 0x11, 0x00, 0, 0, 0, 0]
        );
        // An LBA past 32 bits does not fit the fixed format: VALID stays clear.
        let big = UNRECOVERED_READ_ERROR.with_info(1 << 40).to_fixed();
        assert_eq!(big[0], 0x70);
        assert_eq!(&big[3..7], &[0, 0, 0, 0]);
    }

    #[test]
    fn descriptor_format() {
        assert_eq!(
            RESERVATIONS_PREEMPTED.to_descriptor(),
            vec![0x72, 0x06, 0x2A, 0x03, 0, 0, 0, 0]
        );
        assert_eq!(
            UNRECOVERED_READ_ERROR.with_info(1 << 40).to_descriptor(),
            vec![
                0x72, 0x03, 0x11, 0x00, 0, 0, 0, 12, // header, additional length 12
                0x00, 0x0A, 0x80, 0x00, 0, 0, 1, 0, 0, 0, 0, 0, // information descriptor
            ]
        );
        assert_eq!(
            PARAM_LIST_LENGTH_ERROR.in_param(20, None).to_descriptor(),
            vec![0x72, 0x05, 0x1A, 0x00, 0, 0, 0, 8, 0x02, 0x06, 0, 0, 0x80, 0x00, 20, 0]
        );
    }
}
