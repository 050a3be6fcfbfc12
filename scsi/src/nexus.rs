//! I_T nexus identities (SAM-5 4.6): which initiator port talks to which
//! target port. Persistent reservations, unit attentions and SCSI-2
//! reservations are all kept per I_T nexus.

use std::fmt;
use std::str::FromStr;

/// SCSI transport protocol identifiers (SPC-4 table 362).
pub const PROTOCOL_ISCSI: u8 = 0x5;
/// SAS serial SCSI protocol.
pub const PROTOCOL_SAS: u8 = 0x6;

/// The name of a SCSI port, initiator or target.
///
/// Written as `naa.` + 16 hex digits (an 8-byte NAA name, which is also a SAS
/// address) or as an iSCSI name (`iqn.…` / `eui.…`). Windows' vioscsi reports
/// its adapter as SAS, so NAA names are the default.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortName {
    /// An 8-byte NAA name / SAS address.
    Naa([u8; 8]),
    /// An iSCSI name (`iqn.` or `eui.` form), at most 223 bytes.
    Iscsi(String),
}

/// Why a port name could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortNameError {
    /// `naa.` names need exactly 16 hex digits.
    #[error("NAA port name must be 'naa.' followed by 16 hex digits: {0:?}")]
    BadNaa(String),
    /// iSCSI names are limited to 223 bytes of lower-case ASCII without spaces.
    #[error("iSCSI port name must start with 'iqn.' or 'eui.', be ASCII without spaces and at most 223 bytes: {0:?}")]
    BadIscsi(String),
    /// Neither form.
    #[error("port name must start with 'naa.', 'iqn.' or 'eui.': {0:?}")]
    UnknownForm(String),
}

impl PortName {
    /// The SCSI transport protocol identifier this name belongs to.
    pub fn protocol_id(&self) -> u8 {
        match self {
            PortName::Naa(_) => PROTOCOL_SAS,
            PortName::Iscsi(_) => PROTOCOL_ISCSI,
        }
    }

    /// The TransportID (SPC-4 7.6.4) that names this port in PERSISTENT
    /// RESERVE IN READ FULL STATUS and PERSISTENT RESERVE OUT parameter lists.
    ///
    /// SAS: 24 bytes, format 0, SAS address in bytes 4..12.
    /// iSCSI: format 0, name NUL-terminated and padded to a multiple of 4.
    pub fn transport_id(&self) -> Vec<u8> {
        match self {
            PortName::Naa(addr) => {
                let mut t = vec![0u8; 24];
                t[0] = PROTOCOL_SAS;
                t[4..12].copy_from_slice(addr);
                t
            }
            PortName::Iscsi(name) => {
                let mut body = name.as_bytes().to_vec();
                body.push(0);
                while body.len() % 4 != 0 {
                    body.push(0);
                }
                let mut t = vec![PROTOCOL_ISCSI, 0];
                let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
                t.extend_from_slice(&len.to_be_bytes());
                t.extend_from_slice(&body);
                t
            }
        }
    }

    /// Parse a TransportID from a parameter list. Returns the name and the
    /// number of bytes the TransportID occupies, or `None` if it is malformed
    /// or of a protocol we do not speak.
    pub fn from_transport_id(b: &[u8]) -> Option<(PortName, usize)> {
        let first = *b.first()?;
        match (first >> 6, first & 0x0F) {
            (0, PROTOCOL_SAS) => {
                let addr: [u8; 8] = b.get(4..12)?.try_into().ok()?;
                (b.len() >= 24).then_some((PortName::Naa(addr), 24))
            }
            (0, PROTOCOL_ISCSI) => {
                let len = usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?]));
                if len < 4 || len % 4 != 0 {
                    return None;
                }
                let body = b.get(4..4 + len)?;
                let end = body.iter().position(|&c| c == 0)?;
                let name = std::str::from_utf8(&body[..end]).ok()?;
                let name = name.parse::<PortName>().ok()?;
                Some((name, 4 + len))
            }
            _ => None,
        }
    }

    /// A stable NAA IEEE Registered name derived from arbitrary text (a VM
    /// name plus controller index, say): used when the user gives none.
    /// NAA 5 with an IEEE company ID of 0 and a 36-bit hash of the text.
    pub fn derived_naa(text: &str) -> PortName {
        let h = fnv1a64(text.as_bytes());
        let mut v = (0x5u64 << 60) | (h & 0x0000_000F_FFFF_FFFF);
        // Keep the company ID field (bits 59..36) zero: locally derived.
        v &= !(0x00FF_FFFF_u64 << 36);
        PortName::Naa(v.to_be_bytes())
    }
}

/// 64-bit FNV-1a: a tiny, stable hash for derived identifiers.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl FromStr for PortName {
    type Err = PortNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(hex) = s.strip_prefix("naa.") {
            if hex.len() != 16 {
                return Err(PortNameError::BadNaa(s.to_owned()));
            }
            let v =
                u64::from_str_radix(hex, 16).map_err(|_| PortNameError::BadNaa(s.to_owned()))?;
            Ok(PortName::Naa(v.to_be_bytes()))
        } else if s.starts_with("iqn.") || s.starts_with("eui.") {
            if s.len() > 223 || !s.bytes().all(|c| c.is_ascii_graphic()) {
                return Err(PortNameError::BadIscsi(s.to_owned()));
            }
            Ok(PortName::Iscsi(s.to_owned()))
        } else {
            Err(PortNameError::UnknownForm(s.to_owned()))
        }
    }
}

impl fmt::Display for PortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortName::Naa(a) => write!(f, "naa.{:016x}", u64::from_be_bytes(*a)),
            PortName::Iscsi(s) => f.write_str(s),
        }
    }
}

/// A target port: its name and its relative target port identifier (1-based,
/// reported in VPD page 0x83 and in READ FULL STATUS).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetPort {
    /// Relative target port identifier, 1..=0xFFFF.
    pub relative_id: u16,
    /// Port name.
    pub name: PortName,
}

/// An I_T nexus: the pair (initiator port, target port).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItNexus {
    /// The initiator port (one per virtio-scsi controller, per VM).
    pub initiator: PortName,
    /// The target port the initiator reached.
    pub target: TargetPort,
}

impl fmt::Display for ItNexus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}->{}#{}",
            self.initiator, self.target.name, self.target.relative_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naa_round_trip_and_transport_id() {
        let p: PortName = "naa.5001405abcdef012".parse().unwrap();
        assert_eq!(p.to_string(), "naa.5001405abcdef012");
        let t = p.transport_id();
        assert_eq!(t.len(), 24);
        assert_eq!(
            &t[..12],
            &[0x06, 0, 0, 0, 0x50, 0x01, 0x40, 0x5a, 0xbc, 0xde, 0xf0, 0x12]
        );
        assert_eq!(PortName::from_transport_id(&t), Some((p, 24)));
    }

    #[test]
    fn iscsi_transport_id_is_padded() {
        let p: PortName = "iqn.2026-11.lab:node1".parse().unwrap();
        let t = p.transport_id();
        // 21 name bytes + NUL = 22, padded to 24; header 4.
        assert_eq!(&t[..4], &[0x05, 0, 0, 24]);
        assert_eq!(t.len(), 28);
        assert_eq!(PortName::from_transport_id(&t), Some((p, 28)));
    }

    #[test]
    fn bad_names_are_rejected() {
        assert!("naa.123".parse::<PortName>().is_err());
        assert!("naa.zz01405abcdef012".parse::<PortName>().is_err());
        assert!("wwn.1".parse::<PortName>().is_err());
        assert!("iqn.has space".parse::<PortName>().is_err());
        assert_eq!(PortName::from_transport_id(&[0x06, 0, 0]), None);
        assert_eq!(
            PortName::from_transport_id(&[0x05, 0, 0, 3, b'a', b'b', 0]),
            None
        );
    }

    #[test]
    fn derived_names_are_stable_and_distinct() {
        let a = PortName::derived_naa("node1/scsi0");
        assert_eq!(a, PortName::derived_naa("node1/scsi0"));
        assert_ne!(a, PortName::derived_naa("node2/scsi0"));
        let PortName::Naa(bytes) = a else { panic!() };
        assert_eq!(bytes[0] >> 4, 5);
    }
}
