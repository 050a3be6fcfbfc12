//! CDB helpers for passthrough: command lengths, and READ/WRITE(10/12/16)
//! parsing and patching for splitting transfers larger than the host path
//! accepts.

use crate::target::TransportError;

/// Largest CDB we pass through (variable-length CDBs beyond this are refused).
pub const MAX_CDB_LEN: usize = 32;

/// The length of the command's CDB, from its operation code group (SPC-4
/// 4.2.5.1). `None` for group 3 reserved opcodes (0x60..=0x7E).
/// Variable-length (0x7F) CDBs are 8 + ADDITIONAL CDB LENGTH bytes; vendor
/// groups 6 and 7 have no defined length and take what the transport gave
/// (at most 16 bytes).
pub fn cdb_len(cdb: &[u8]) -> Result<Option<usize>, TransportError> {
    let op = *cdb.first().ok_or(TransportError::EmptyCdb)?;
    let need = match op >> 5 {
        0 => 6,
        1 | 2 => 10,
        3 if op == 0x7F => {
            let add = usize::from(*cdb.get(7).ok_or(TransportError::CdbTooShort {
                opcode: op,
                got: cdb.len(),
                need: 8,
            })?);
            8 + add
        }
        3 => return Ok(None),
        4 => 16,
        5 => 12,
        _ => cdb.len().min(16),
    };
    if cdb.len() < need {
        return Err(TransportError::CdbTooShort {
            opcode: op,
            got: cdb.len(),
            need,
        });
    }
    Ok(Some(need))
}

/// Which READ/WRITE form a CDB is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RwForm {
    /// READ(10) / WRITE(10): LBA bytes 2..6, length bytes 7..9.
    Ten,
    /// READ(12) / WRITE(12): LBA bytes 2..6, length bytes 6..10.
    Twelve,
    /// READ(16) / WRITE(16): LBA bytes 2..10, length bytes 10..14.
    Sixteen,
}

/// A parsed READ/WRITE(10/12/16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RwCdb {
    /// The form.
    pub form: RwForm,
    /// WRITE (data-out) rather than READ (data-in).
    pub write: bool,
    /// First LBA.
    pub lba: u64,
    /// TRANSFER LENGTH in logical blocks.
    pub blocks: u32,
}

fn be(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
}

/// Parse a READ/WRITE(10/12/16) CDB (already checked for length).
pub fn parse_rw(cdb: &[u8]) -> Option<RwCdb> {
    let (form, write) = match *cdb.first()? {
        0x28 => (RwForm::Ten, false),
        0x2A => (RwForm::Ten, true),
        0xA8 => (RwForm::Twelve, false),
        0xAA => (RwForm::Twelve, true),
        0x88 => (RwForm::Sixteen, false),
        0x8A => (RwForm::Sixteen, true),
        _ => return None,
    };
    let (lba, blocks) = match form {
        RwForm::Ten => (be(cdb.get(2..6)?), be(cdb.get(7..9)?)),
        RwForm::Twelve => (be(cdb.get(2..6)?), be(cdb.get(6..10)?)),
        RwForm::Sixteen => (be(cdb.get(2..10)?), be(cdb.get(10..14)?)),
    };
    Some(RwCdb {
        form,
        write,
        lba,
        blocks: u32::try_from(blocks).ok()?,
    })
}

/// Write `lba` and `blocks` into a copy of a READ/WRITE CDB of `form`.
/// Returns `None` when they do not fit the form's fields.
pub fn patch_rw(cdb: &[u8], form: RwForm, lba: u64, blocks: u32) -> Option<Vec<u8>> {
    let mut c = cdb.to_vec();
    match form {
        RwForm::Ten => {
            let lba = u32::try_from(lba).ok()?;
            let n = u16::try_from(blocks).ok()?;
            c.get_mut(2..6)?.copy_from_slice(&lba.to_be_bytes());
            c.get_mut(7..9)?.copy_from_slice(&n.to_be_bytes());
        }
        RwForm::Twelve => {
            let lba = u32::try_from(lba).ok()?;
            c.get_mut(2..6)?.copy_from_slice(&lba.to_be_bytes());
            c.get_mut(6..10)?.copy_from_slice(&blocks.to_be_bytes());
        }
        RwForm::Sixteen => {
            c.get_mut(2..10)?.copy_from_slice(&lba.to_be_bytes());
            c.get_mut(10..14)?.copy_from_slice(&blocks.to_be_bytes());
        }
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_by_group() {
        assert_eq!(cdb_len(&[0x12, 0, 0, 0, 36, 0]).unwrap(), Some(6));
        assert_eq!(cdb_len(&[0x28; 32]).unwrap(), Some(10));
        assert_eq!(cdb_len(&[0x88; 16]).unwrap(), Some(16));
        assert_eq!(cdb_len(&[0xA8; 12]).unwrap(), Some(12));
        assert_eq!(cdb_len(&[0x60; 16]).unwrap(), None);
        let mut var = [0u8; 32];
        var[0] = 0x7F;
        var[7] = 0x18; // 8 + 24 = 32
        assert_eq!(cdb_len(&var).unwrap(), Some(32));
        assert!(matches!(
            cdb_len(&[0x28, 0, 0]),
            Err(TransportError::CdbTooShort {
                opcode: 0x28,
                got: 3,
                need: 10
            })
        ));
        assert!(matches!(cdb_len(&[]), Err(TransportError::EmptyCdb)));
    }

    #[test]
    fn rw_round_trip() {
        // WRITE(16), FUA, LBA 0x1_0000_0000, 0x800 blocks.
        let c = [0x8A, 0x08, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x08, 0x00, 0, 0];
        let p = parse_rw(&c).unwrap();
        assert_eq!(
            p,
            RwCdb {
                form: RwForm::Sixteen,
                write: true,
                lba: 0x1_0000_0000,
                blocks: 0x800
            }
        );
        let q = patch_rw(&c, p.form, 0x1_0000_0400, 0x400).unwrap();
        assert_eq!(
            q,
            vec![0x8A, 0x08, 0, 0, 0, 1, 0, 0, 0x04, 0, 0, 0, 0x04, 0x00, 0, 0]
        );
        // READ(10) cannot take an LBA past 32 bits.
        assert_eq!(patch_rw(&[0x28; 10], RwForm::Ten, 1 << 32, 1), None);
    }
}
