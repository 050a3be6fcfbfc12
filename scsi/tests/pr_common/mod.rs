//! Helpers shared by the PR integration tests: nexuses, raw CDBs and
//! parameter lists, exact sense bytes.
#![allow(dead_code)]

use scsi::pr::{PrOutcome, Reservations};
use scsi::{ItNexus, PortName, TargetPort};

/// Node `i`'s I_T nexus: initiator naa.500000000000 0a 0i, reaching its own
/// target port (naa.600000000000000i, relative id 1). Every VM has its own
/// controller, hence its own target port.
pub fn node(i: u8) -> ItNexus {
    ItNexus {
        initiator: PortName::Naa([0x50, 0, 0, 0, 0, 0, 0x0A, i]),
        target: TargetPort {
            relative_id: 1,
            name: PortName::Naa([0x60, 0, 0, 0, 0, 0, 0, i]),
        },
    }
}

/// The same initiator as `node(i)` through a second target port (relative
/// id 2) of the same VM.
pub fn node_port2(i: u8) -> ItNexus {
    ItNexus {
        initiator: PortName::Naa([0x50, 0, 0, 0, 0, 0, 0x0A, i]),
        target: TargetPort {
            relative_id: 2,
            name: PortName::Naa([0x60, 0, 0, 0, 0, 0, 0x02, i]),
        },
    }
}

/// PERSISTENT RESERVE OUT CDB.
pub fn out_cdb(sa: u8, scope_type: u8, plen: usize) -> [u8; 10] {
    let l = u32::try_from(plen).unwrap().to_be_bytes();
    [
        0x5F,       // 0: PERSISTENT RESERVE OUT
        sa,         // 1: service action (bits 4..0)
        scope_type, // 2: SCOPE (7..4) | TYPE (3..0)
        0x00,       // 3: reserved
        0x00,       // 4: reserved
        l[0],       // 5: PARAMETER LIST LENGTH (MSB)
        l[1],       // 6
        l[2],       // 7
        l[3],       // 8: PARAMETER LIST LENGTH (LSB)
        0x00,       // 9: CONTROL
    ]
}

/// PERSISTENT RESERVE IN CDB with ALLOCATION LENGTH 0x1000.
pub fn in_cdb(sa: u8) -> [u8; 10] {
    [
        0x5E, // 0: PERSISTENT RESERVE IN
        sa,   // 1: service action
        0x00, // 2: reserved
        0x00, // 3
        0x00, // 4
        0x00, // 5
        0x00, // 6
        0x10, // 7: ALLOCATION LENGTH (MSB)
        0x00, // 8: ALLOCATION LENGTH (LSB)
        0x00, // 9: CONTROL
    ]
}

/// The basic 24-byte PR OUT parameter list.
pub fn plist(rk: u64, sark: u64, flags: u8) -> Vec<u8> {
    let mut p = Vec::with_capacity(24);
    p.extend_from_slice(&rk.to_be_bytes()); // 0..8: RESERVATION KEY
    p.extend_from_slice(&sark.to_be_bytes()); // 8..16: SERVICE ACTION RESERVATION KEY
    p.extend_from_slice(&[0, 0, 0, 0]); // 16..20: obsolete
    p.push(flags); // 20: SPEC_I_PT (3) | ALL_TG_PT (2) | APTPL (0)
    p.push(0); // 21: reserved
    p.extend_from_slice(&[0, 0]); // 22..24: obsolete
    p
}

pub const REGISTER: u8 = 0;
pub const RESERVE: u8 = 1;
pub const RELEASE: u8 = 2;
pub const CLEAR: u8 = 3;
pub const PREEMPT: u8 = 4;
pub const PREEMPT_AND_ABORT: u8 = 5;
pub const REG_IGNORE: u8 = 6;
pub const REG_MOVE: u8 = 7;

pub const WE: u8 = 1;
pub const EA: u8 = 3;
pub const WE_RO: u8 = 5;
pub const EA_RO: u8 = 6;
pub const WE_AR: u8 = 7;
pub const EA_AR: u8 = 8;

/// Run a 24-byte-parameter PR OUT.
pub fn out(pr: &dyn Reservations, n: &ItNexus, sa: u8, ty: u8, rk: u64, sark: u64) -> PrOutcome {
    pr.reserve_out(n, &out_cdb(sa, ty, 24), &plist(rk, sark, 0))
}

/// Status byte and fixed-format sense bytes of an outcome.
pub fn bytes(o: &PrOutcome) -> (u8, Vec<u8>) {
    (
        o.status as u8,
        o.sense.map(|s| s.to_fixed().to_vec()).unwrap_or_default(),
    )
}

pub const GOOD: (u8, &[u8]) = (0x00, &[]);
pub const CONFLICT: (u8, &[u8]) = (0x18, &[]);

/// Fixed sense for CHECK CONDITION: key, ASC, ASCQ and the 3 SKS bytes.
pub fn check(key: u8, asc: u8, ascq: u8, sks: [u8; 3]) -> Vec<u8> {
    vec![
        0x70, 0, key, 0, 0, 0, 0, 10, // response code, key, no INFORMATION, add. length
        0, 0, 0, 0, // command-specific information
        asc, ascq, 0, // ASC, ASCQ, FRU
        sks[0], sks[1], sks[2], // sense-key specific
    ]
}

/// Assert an outcome's status and sense bytes.
#[track_caller]
pub fn expect(o: &PrOutcome, status: u8, sense: &[u8]) {
    let (s, b) = bytes(o);
    assert_eq!((s, b.as_slice()), (status, sense), "outcome {o:?}");
}

/// The keys READ KEYS reports and PRgeneration.
pub fn read_keys(pr: &dyn Reservations, n: &ItNexus) -> (u32, Vec<u64>) {
    let o = pr.reserve_in(n, &in_cdb(0));
    assert_eq!(o.status as u8, 0);
    let d = o.data;
    let generation = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
    let len = u32::from_be_bytes([d[4], d[5], d[6], d[7]]) as usize;
    assert_eq!(d.len(), 8 + len);
    let keys = d[8..]
        .chunks(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect();
    (generation, keys)
}

/// UA (key, asc, ascq) triples taken for `n`.
pub fn uas(pr: &dyn Reservations, n: &ItNexus) -> Vec<(u8, u8, u8)> {
    pr.take_unit_attentions(n)
        .iter()
        .map(|s| s.triple())
        .collect()
}
