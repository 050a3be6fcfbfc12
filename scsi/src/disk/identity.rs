//! The identity of a disk: the NAA IEEE Registered Extended name reported in
//! VPD page 0x83 and the serial number of VPD page 0x80.
//!
//! Two VMs (or two controllers) that open the same shared disk must report
//! the same identity, and two different disks must not: so the identity comes
//! from the caller (a configured WWN or UUID, or the shared-disk state's
//! persisted UUID), never from anything local to one VM.

use crate::nexus::fnv1a64;

/// The IEEE Company ID (CID) put in derived NAA names: a CID has the
/// locally-administered ("X") bit of the first octet set, so it never
/// collides with an OUI assigned to a manufacturer.
pub const DEFAULT_COMPANY_ID: u32 = 0x0A_41_52;

/// Why an identity string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Neither `naa.6` + 31 hex digits nor a UUID.
    #[error("disk identity must be 'naa.6' followed by 31 hex digits, or a UUID: {0:?}")]
    Syntax(String),
    /// A 16-byte NAA name must use NAA 6 (IEEE Registered Extended).
    #[error("16-byte NAA name must start with NAA 6")]
    NotNaa6,
}

/// A logical unit's world-wide identity: a 16-byte NAA 6 (IEEE Registered
/// Extended) name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DiskIdentity {
    naa: [u8; 16],
}

impl DiskIdentity {
    /// Use a complete NAA 6 name (first nibble 6).
    pub fn from_naa(naa: [u8; 16]) -> Result<Self, IdentityError> {
        if naa[0] >> 4 != 6 {
            return Err(IdentityError::NotNaa6);
        }
        Ok(DiskIdentity { naa })
    }

    /// NAA 6 with [`DEFAULT_COMPANY_ID`] and the 100 low bits of `uuid` as
    /// VENDOR SPECIFIC IDENTIFIER (36 bits) and its EXTENSION (64 bits).
    pub fn from_uuid(uuid: [u8; 16]) -> Self {
        Self::from_uuid_with_company(uuid, DEFAULT_COMPANY_ID)
    }

    /// As [`DiskIdentity::from_uuid`] with an explicit 24-bit company ID.
    pub fn from_uuid_with_company(uuid: [u8; 16], company_id: u32) -> Self {
        let low100 = u128::from_be_bytes(uuid) & ((1u128 << 100) - 1);
        let v = (6u128 << 124) | (u128::from(company_id & 0x00FF_FFFF) << 100) | low100;
        DiskIdentity {
            naa: v.to_be_bytes(),
        }
    }

    /// A stable identity derived from text that names the disk identically
    /// everywhere it is opened (a user-given WWN or disk name). Different
    /// texts give different identities (with overwhelming probability).
    pub fn from_text(text: &str) -> Self {
        let a = fnv1a64(text.as_bytes());
        let mut salted = b"arbiter-disk:".to_vec();
        salted.extend_from_slice(text.as_bytes());
        let b = fnv1a64(&salted);
        let mut uuid = [0u8; 16];
        uuid[..8].copy_from_slice(&a.to_be_bytes());
        uuid[8..].copy_from_slice(&b.to_be_bytes());
        Self::from_uuid(uuid)
    }

    /// Parse `naa.6` + 31 hex digits, or a UUID (`8-4-4-4-12` hex digits).
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        let err = || IdentityError::Syntax(s.to_owned());
        if let Some(hex) = s.strip_prefix("naa.") {
            if hex.len() != 32 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(err());
            }
            let v = u128::from_str_radix(hex, 16).map_err(|_| err())?;
            return Self::from_naa(v.to_be_bytes());
        }
        let groups: Vec<&str> = s.split('-').collect();
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lens != [8, 4, 4, 4, 12] {
            return Err(err());
        }
        let hex: String = groups.concat();
        if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(err());
        }
        let v = u128::from_str_radix(&hex, 16).map_err(|_| err())?;
        Ok(Self::from_uuid(v.to_be_bytes()))
    }

    /// The 16-byte NAA designator.
    pub fn naa(&self) -> [u8; 16] {
        self.naa
    }

    /// A default unit serial number: the 100-bit vendor-specific part in hex
    /// (25 characters), unique per identity.
    pub fn default_serial(&self) -> String {
        let v = u128::from_be_bytes(self.naa) & ((1u128 << 100) - 1);
        format!("{v:025x}")
    }
}

impl std::fmt::Display for DiskIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "naa.{:032x}", u128::from_be_bytes(self.naa))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_layout() {
        let id = DiskIdentity::from_uuid([0xFF; 16]);
        // NAA 6 | CID 0A4152 | 100 bits of ones.
        assert_eq!(
            id.naa(),
            [
                0x60, 0xA4, 0x15, 0x2F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                0xFF, 0xFF
            ]
        );
        assert_eq!(id.default_serial(), "fffffffffffffffffffffffff");
    }

    #[test]
    fn parse_forms_and_round_trip() {
        let id = DiskIdentity::parse("naa.60a4152000000000000000000000abcd").unwrap();
        assert_eq!(id.to_string(), "naa.60a4152000000000000000000000abcd");
        assert_eq!(DiskIdentity::parse(&id.to_string()).unwrap(), id);
        let u = DiskIdentity::parse("123e4567-e89b-12d3-a456-426614174000").unwrap();
        assert_eq!(u.naa()[0] >> 4, 6);
        assert_eq!(&u.naa()[13..], &[0x17, 0x40, 0x00]);
        assert_eq!(
            DiskIdentity::parse("naa.50a4152000000000000000000000abcd"),
            Err(IdentityError::NotNaa6)
        );
        assert!(DiskIdentity::parse("naa.60").is_err());
        assert!(DiskIdentity::parse("not-a-uuid").is_err());
    }

    #[test]
    fn text_identities_are_stable_and_distinct() {
        let a = DiskIdentity::from_text("/srv/cluster/quorum.img");
        assert_eq!(a, DiskIdentity::from_text("/srv/cluster/quorum.img"));
        assert_ne!(a, DiskIdentity::from_text("/srv/cluster/data.img"));
        assert_ne!(
            a.default_serial(),
            DiskIdentity::from_text("x").default_serial()
        );
    }
}
