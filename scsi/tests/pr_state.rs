//! The SPC-4 persistent reservation state machine, driven through the
//! `Reservations` interface with raw CDBs and parameter lists and checked
//! byte for byte.

mod pr_common;

use pr_common::*;
use scsi::pr::{MemoryPr, PrAccess, Reservations};

fn inv_field_cdb(byte: u8, bit: u8) -> Vec<u8> {
    // SKSV | C/D | BPV | bit, field pointer
    check(0x05, 0x24, 0x00, [0xC8 | bit, 0x00, byte])
}

fn inv_field_param(byte: u8, bit: Option<u8>) -> Vec<u8> {
    let b0 = 0x80 | bit.map_or(0, |b| 0x08 | b); // SKSV | BPV | bit
    check(0x05, 0x26, 0x00, [b0, 0x00, byte])
}

fn plle() -> Vec<u8> {
    check(0x05, 0x1A, 0x00, [0, 0, 0])
}

// ---------------------------------------------------------------------------
// Conflict table: every PrAccess class x every type x holder/registrant/non.

#[test]
fn conflict_table_every_class_type_and_role() {
    // Expected (Read, Write) conflicts for holder, registered non-holder,
    // non-registered, per type — SPC-4 table 43 / SBC-4 table 13.
    #[rustfmt::skip]
    let table: [(u8, [(bool, bool); 3]); 6] = [
        //        holder          registrant      not registered
        (WE,    [(false, false), (false, true),  (false, true)]),
        (EA,    [(false, false), (true, true),   (true, true)]),
        (WE_RO, [(false, false), (false, false), (false, true)]),
        (EA_RO, [(false, false), (false, false), (true, true)]),
        (WE_AR, [(false, false), (false, false), (false, true)]),
        (EA_AR, [(false, false), (false, false), (true, true)]),
    ];
    for (ty, rows) in table {
        let pr = MemoryPr::new();
        let (h, r, u) = (node(1), node(2), node(3));
        expect(&out(&pr, &h, REGISTER, 0, 0, 0x11), GOOD.0, GOOD.1);
        expect(&out(&pr, &r, REGISTER, 0, 0, 0x22), GOOD.0, GOOD.1);
        expect(&out(&pr, &h, RESERVE, ty, 0x11, 0), GOOD.0, GOOD.1);
        for (who, (read, write)) in [(&h, rows[0]), (&r, rows[1]), (&u, rows[2])] {
            assert_eq!(
                pr.conflicts(who, PrAccess::Read),
                read,
                "type {ty} read {who}"
            );
            assert_eq!(
                pr.conflicts(who, PrAccess::Write),
                write,
                "type {ty} write {who}"
            );
            for always in [PrAccess::Allowed, PrAccess::PrOut, PrAccess::Scsi2] {
                assert!(!pr.conflicts(who, always), "type {ty} {always:?} {who}");
            }
        }
    }
    // No reservation: nothing conflicts, registered or not.
    let pr = MemoryPr::new();
    expect(&out(&pr, &node(1), REGISTER, 0, 0, 0x11), 0, &[]);
    for n in [node(1), node(2)] {
        for a in [
            PrAccess::Allowed,
            PrAccess::Read,
            PrAccess::Write,
            PrAccess::PrOut,
            PrAccess::Scsi2,
        ] {
            assert!(!pr.conflicts(&n, a));
        }
    }
}

#[test]
fn all_tg_pt_registration_covers_every_port_of_the_initiator() {
    let pr = MemoryPr::new();
    let p = plist(0, 0xAB, 0x04); // ALL_TG_PT
    expect(
        &pr.reserve_out(&node(1), &out_cdb(REGISTER, 0, 24), &p),
        0,
        &[],
    );
    expect(&out(&pr, &node_port2(1), RESERVE, EA, 0xAB, 0), 0, &[]);
    // The holder registration is the ALL_TG_PT one: both ports hold.
    assert!(!pr.conflicts(&node(1), PrAccess::Write));
    assert!(!pr.conflicts(&node_port2(1), PrAccess::Write));
    assert!(pr.conflicts(&node(2), PrAccess::Read));
    // READ FULL STATUS: one descriptor, ALL_TG_PT | R_HOLDER, rel id 0.
    let d = pr.reserve_in(&node(2), &in_cdb(3)).data;
    assert_eq!(&d[4..8], &[0, 0, 0, 48]);
    assert_eq!(&d[8 + 12..8 + 14], &[0x03, EA]);
    assert_eq!(&d[8 + 18..8 + 20], &[0, 0]);
}

// ---------------------------------------------------------------------------
// CDB and parameter list decoding.

#[test]
fn pr_out_cdb_and_parameter_list_decoding() {
    let pr = MemoryPr::new();
    let a = node(1);
    #[rustfmt::skip]
    let cdb = [
        0x5F,       // PERSISTENT RESERVE OUT
        0x06,       // REGISTER AND IGNORE EXISTING KEY
        0x00,       // scope/type ignored
        0x00, 0x00, // reserved
        0x00, 0x00, 0x00, 0x18, // PARAMETER LIST LENGTH 24
        0x00,       // CONTROL
    ];
    #[rustfmt::skip]
    let params = [
        0, 0, 0, 0, 0, 0, 0, 0,             // RESERVATION KEY (ignored)
        0x12, 0x34, 0, 0, 0, 0, 0xAB, 0xCD, // SERVICE ACTION RESERVATION KEY
        0, 0, 0, 0,                         // obsolete
        0x01,                               // APTPL
        0x00,                               // reserved
        0x00, 0x00,                         // obsolete
    ];
    expect(&pr.reserve_out(&a, &cdb, &params), 0, &[]);
    assert_eq!(read_keys(&pr, &a), (1, vec![0x1234_0000_0000_ABCD]));
    assert!(pr.snapshot().aptpl);

    // RESERVE, scope LU, type Exclusive Access.
    #[rustfmt::skip]
    let reserve = [
        0x5F, 0x01, // PERSISTENT RESERVE OUT, RESERVE
        0x03,       // SCOPE 0 (LU) | TYPE 3 (Exclusive Access)
        0x00, 0x00, 0x00, 0x00, 0x00, 0x18, // reserved, PARAMETER LIST LENGTH 24
        0x00,       // CONTROL
    ];
    let mut p = plist(0x1234_0000_0000_ABCD, 0, 0);
    expect(&pr.reserve_out(&a, &reserve, &p), 0, &[]);
    assert!(pr.conflicts(&node(2), PrAccess::Read));

    // Service action 8 (REPLACE LOST RESERVATION, SPC-5) is not supported.
    let bad_sa = [0x5F, 0x08, 0x00, 0, 0, 0, 0, 0, 0x18, 0];
    expect(&pr.reserve_out(&a, &bad_sa, &p), 0x02, &inv_field_cdb(1, 4));

    // Parameter list length 23 and 25 for a non-SPEC_I_PT service action.
    let short = [0x5F, 0x01, 0x03, 0, 0, 0, 0, 0, 0x17, 0];
    expect(&pr.reserve_out(&a, &short, &p[..23]), 0x02, &plle());
    p.push(0);
    let long = [0x5F, 0x01, 0x03, 0, 0, 0, 0, 0, 0x19, 0];
    expect(&pr.reserve_out(&a, &long, &p), 0x02, &plle());

    // SPEC_I_PT with RESERVE: INVALID FIELD IN PARAMETER LIST, byte 20 bit 3.
    let p = plist(0x1234_0000_0000_ABCD, 0, 0x08);
    expect(
        &pr.reserve_out(&a, &reserve, &p),
        0x02,
        &inv_field_param(20, Some(3)),
    );

    // Scope 1 (obsolete extent) and type 2 (obsolete) are invalid.
    let pr2 = MemoryPr::new();
    expect(&out(&pr2, &a, REGISTER, 0, 0, 7), 0, &[]);
    expect(
        &out(&pr2, &a, RESERVE, 0x11, 7, 0),
        0x02,
        &inv_field_cdb(2, 7),
    );
    expect(
        &out(&pr2, &a, RESERVE, 0x02, 7, 0),
        0x02,
        &inv_field_cdb(2, 3),
    );
}

#[test]
fn pr_in_decoding_and_exact_data() {
    let pr = MemoryPr::new();
    let (a, b) = (node(1), node(2));
    // Empty: READ KEYS / READ RESERVATION / READ FULL STATUS.
    #[rustfmt::skip]
    let read_keys_cdb = [
        0x5E, 0x00, // PERSISTENT RESERVE IN, READ KEYS
        0, 0, 0, 0, 0, // reserved
        0x00, 0x08, // ALLOCATION LENGTH 8
        0x00,       // CONTROL
    ];
    assert_eq!(
        pr.reserve_in(&a, &read_keys_cdb).data,
        [0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(pr.reserve_in(&a, &in_cdb(1)).data, [0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(pr.reserve_in(&a, &in_cdb(3)).data, [0, 0, 0, 0, 0, 0, 0, 0]);
    #[rustfmt::skip]
    assert_eq!(pr.reserve_in(&a, &in_cdb(2)).data, [
        0x00, 0x08, // LENGTH
        0x1D,       // CRH | SIP_C | ATP_C | PTPL_C
        0xB0,       // TMV | ALLOW COMMANDS 011b | PTPL_A 0
        0xEA, 0x01, // WR_EX_AR EX_AC_RO WR_EX_RO EX_AC WR_EX | EX_AC_AR
        0x00, 0x00, // reserved
    ]);
    // Service action 4 does not exist.
    let o = pr.reserve_in(&a, &[0x5E, 0x04, 0, 0, 0, 0, 0, 0, 8, 0]);
    expect(&o, 0x02, &inv_field_cdb(1, 4));

    expect(&out(&pr, &a, REG_IGNORE, 0, 0, 0xA1), 0, &[]);
    expect(&out(&pr, &b, REGISTER, 0, 0, 0xB2), 0, &[]);
    expect(&out(&pr, &a, RESERVE, WE_RO, 0xA1, 0), 0, &[]);
    #[rustfmt::skip]
    assert_eq!(pr.reserve_in(&b, &in_cdb(0)).data, [
        0, 0, 0, 2,              // PRgeneration 2
        0, 0, 0, 16,             // ADDITIONAL LENGTH
        0, 0, 0, 0, 0, 0, 0, 0xA1, // key of A
        0, 0, 0, 0, 0, 0, 0, 0xB2, // key of B
    ]);
    #[rustfmt::skip]
    assert_eq!(pr.reserve_in(&b, &in_cdb(1)).data, [
        0, 0, 0, 2,              // PRgeneration
        0, 0, 0, 0x10,           // ADDITIONAL LENGTH 16
        0, 0, 0, 0, 0, 0, 0, 0xA1, // RESERVATION KEY of the holder
        0, 0, 0, 0,              // obsolete
        0x00,                    // reserved
        0x05,                    // SCOPE LU | TYPE WE-RO
        0, 0,                    // obsolete
    ]);
    let fs = pr.reserve_in(&b, &in_cdb(3)).data;
    let mut want = vec![0, 0, 0, 2, 0, 0, 0, 96];
    for (key, holder, ty, i) in [(0xA1u8, 1u8, WE_RO, 1u8), (0xB2, 0, 0, 2)] {
        #[rustfmt::skip]
        want.extend_from_slice(&[
            0, 0, 0, 0, 0, 0, 0, key, // RESERVATION KEY
            0, 0, 0, 0,               // reserved
            holder,                   // ALL_TG_PT 0 | R_HOLDER
            ty,                       // SCOPE | TYPE (holder only)
            0, 0, 0, 0,               // reserved
            0x00, 0x01,               // RELATIVE TARGET PORT IDENTIFIER
            0, 0, 0, 24,              // ADDITIONAL DESCRIPTOR LENGTH
            0x06, 0, 0, 0,            // SAS TransportID, format 0
            0x50, 0, 0, 0, 0, 0, 0x0A, i, // SAS address
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // reserved
        ]);
    }
    assert_eq!(fs, want);
}

// ---------------------------------------------------------------------------
// Service actions: success and error paths.

#[test]
fn register_paths() {
    let pr = MemoryPr::new();
    let (a, b) = (node(1), node(2));
    // Unregistered, RK != 0: conflict; SARK 0: GOOD, no change, no PRgeneration.
    expect(&out(&pr, &a, REGISTER, 0, 5, 6), CONFLICT.0, CONFLICT.1);
    expect(&out(&pr, &a, REGISTER, 0, 0, 0), 0, &[]);
    assert_eq!(read_keys(&pr, &a), (0, vec![]));
    // Register, re-register with a wrong key (conflict), change key.
    expect(&out(&pr, &a, REGISTER, 0, 0, 6), 0, &[]);
    expect(&out(&pr, &a, REGISTER, 0, 5, 7), CONFLICT.0, CONFLICT.1);
    expect(&out(&pr, &a, REGISTER, 0, 6, 7), 0, &[]);
    assert_eq!(read_keys(&pr, &a), (2, vec![7]));
    // REGISTER AND IGNORE EXISTING KEY ignores RK.
    expect(&out(&pr, &a, REG_IGNORE, 0, 0x999, 8), 0, &[]);
    expect(&out(&pr, &b, REG_IGNORE, 0, 0x999, 9), 0, &[]);
    assert_eq!(read_keys(&pr, &a), (4, vec![8, 9]));
    // SPEC_I_PT from a registered nexus: INVALID FIELD IN CDB.
    let p = spec_i_pt_params(8, 10, &[node(3)]);
    let o = pr.reserve_out(&a, &out_cdb(REGISTER, 0, p.len()), &p);
    expect(&o, 0x02, &check(0x05, 0x24, 0x00, [0, 0, 0]));
    // SPEC_I_PT with REGISTER AND IGNORE: INVALID FIELD IN PARAMETER LIST.
    let o = pr.reserve_out(&a, &out_cdb(REG_IGNORE, 0, p.len()), &p);
    expect(&o, 0x02, &inv_field_param(20, Some(3)));
    // Unregister with SARK 0.
    expect(&out(&pr, &a, REGISTER, 0, 8, 0), 0, &[]);
    assert_eq!(read_keys(&pr, &a), (5, vec![9]));
    assert_eq!(pr.snapshot().generation, 5);
}

fn spec_i_pt_params(rk: u64, sark: u64, others: &[scsi::ItNexus]) -> Vec<u8> {
    let mut p = plist(rk, sark, 0x08); // SPEC_I_PT
    let tids: Vec<u8> = others
        .iter()
        .flat_map(|n| n.initiator.transport_id())
        .collect();
    p.extend_from_slice(&u32::try_from(tids.len()).unwrap().to_be_bytes()); // TRANSPORTID PARAMETER DATA LENGTH
    p.extend_from_slice(&tids);
    p
}

#[test]
fn register_with_spec_i_pt() {
    let pr = MemoryPr::new();
    let a = node(1);
    let p = spec_i_pt_params(0, 0x77, &[node(2), node(3)]);
    assert_eq!(p.len(), 28 + 48);
    expect(
        &pr.reserve_out(&a, &out_cdb(REGISTER, 0, p.len()), &p),
        0,
        &[],
    );
    assert_eq!(read_keys(&pr, &a), (1, vec![0x77, 0x77, 0x77]));
    // Node 2's registration is on A's target port: node 2 through its own
    // port is not registered, through A's port it is.
    let via_a_port = scsi::ItNexus {
        initiator: node(2).initiator,
        target: a.target.clone(),
    };
    assert!(pr.snapshot().is_registered(&via_a_port));
    assert!(!pr.snapshot().is_registered(&node(2)));

    // Naming an already registered nexus: INVALID FIELD IN PARAMETER LIST at
    // the TransportID (byte 28).
    let pr = MemoryPr::new();
    expect(&out(&pr, &node(4), REGISTER, 0, 0, 1), 0, &[]);
    let n4_via_a = scsi::ItNexus {
        initiator: node(4).initiator,
        target: a.target.clone(),
    };
    expect(&out(&pr, &n4_via_a, REGISTER, 0, 0, 1), 0, &[]);
    let p = spec_i_pt_params(0, 0x77, &[node(4)]);
    let o = pr.reserve_out(&a, &out_cdb(REGISTER, 0, p.len()), &p);
    expect(&o, 0x02, &inv_field_param(28, None));
    // A malformed TransportID (protocol 0xF).
    let mut p = spec_i_pt_params(0, 0x77, &[node(2)]);
    p[28] = 0x0F;
    let o = pr.reserve_out(&a, &out_cdb(REGISTER, 0, p.len()), &p);
    expect(&o, 0x02, &inv_field_param(28, None));
    // TRANSPORTID PARAMETER DATA LENGTH disagreeing with the list.
    let mut p = spec_i_pt_params(0, 0x77, &[node(2)]);
    p[27] += 4;
    let o = pr.reserve_out(&a, &out_cdb(REGISTER, 0, p.len()), &p);
    expect(&o, 0x02, &inv_field_param(24, None));
    // SPEC_I_PT with a 24-byte list: no TRANSPORTID PARAMETER DATA LENGTH.
    let o = pr.reserve_out(&a, &out_cdb(REGISTER, 0, 24), &plist(0, 0x77, 0x08));
    expect(&o, 0x02, &inv_field_param(24, None));
    assert_eq!(read_keys(&pr, &a), (2, vec![1, 1]));
}

#[test]
fn register_resources_run_out() {
    let pr = MemoryPr::new();
    for i in 0..256u16 {
        let n = scsi::ItNexus {
            initiator: scsi::PortName::Naa([
                0x50,
                0,
                0,
                0,
                0,
                1,
                i.to_be_bytes()[0],
                i.to_be_bytes()[1],
            ]),
            target: node(1).target,
        };
        expect(&out(&pr, &n, REGISTER, 0, 0, 1), 0, &[]);
    }
    let o = out(&pr, &node(9), REGISTER, 0, 0, 1);
    expect(&o, 0x02, &check(0x05, 0x55, 0x04, [0, 0, 0]));
}

#[test]
fn reserve_paths() {
    let pr = MemoryPr::new();
    let (a, b, c) = (node(1), node(2), node(3));
    expect(&out(&pr, &a, RESERVE, WE, 0, 0), CONFLICT.0, CONFLICT.1); // unregistered
    expect(&out(&pr, &a, REGISTER, 0, 0, 0xA), 0, &[]);
    expect(&out(&pr, &b, REGISTER, 0, 0, 0xB), 0, &[]);
    expect(&out(&pr, &a, RESERVE, WE, 0xB, 0), CONFLICT.0, CONFLICT.1); // wrong key
    expect(&out(&pr, &a, RESERVE, WE, 0xA, 0), 0, &[]);
    expect(&out(&pr, &a, RESERVE, WE, 0xA, 0), 0, &[]); // same type again: GOOD
    expect(&out(&pr, &a, RESERVE, EA, 0xA, 0), CONFLICT.0, CONFLICT.1); // other type
    expect(&out(&pr, &b, RESERVE, WE, 0xB, 0), CONFLICT.0, CONFLICT.1); // not holder
    expect(&out(&pr, &c, RESERVE, WE, 0, 0), CONFLICT.0, CONFLICT.1);
    // RESERVE/RELEASE do not count in PRgeneration.
    assert_eq!(pr.snapshot().generation, 2);
    // All registrants: any registrant "reserves" the same type with GOOD.
    let pr = MemoryPr::new();
    expect(&out(&pr, &a, REGISTER, 0, 0, 0xA), 0, &[]);
    expect(&out(&pr, &b, REGISTER, 0, 0, 0xB), 0, &[]);
    expect(&out(&pr, &a, RESERVE, EA_AR, 0xA, 0), 0, &[]);
    expect(&out(&pr, &b, RESERVE, EA_AR, 0xB, 0), 0, &[]);
    expect(
        &out(&pr, &b, RESERVE, WE_AR, 0xB, 0),
        CONFLICT.0,
        CONFLICT.1,
    );
    // READ RESERVATION of an all-registrants reservation reports key 0.
    let d = pr.reserve_in(&c, &in_cdb(1)).data;
    assert_eq!(&d[8..16], &[0; 8]);
    assert_eq!(d[21], EA_AR);
}

#[test]
fn release_paths() {
    let pr = MemoryPr::new();
    let (a, b, c) = (node(1), node(2), node(3));
    expect(&out(&pr, &a, RELEASE, WE, 0, 0), CONFLICT.0, CONFLICT.1); // unregistered
    expect(&out(&pr, &a, REGISTER, 0, 0, 0xA), 0, &[]);
    expect(&out(&pr, &b, REGISTER, 0, 0, 0xB), 0, &[]);
    expect(&out(&pr, &c, REGISTER, 0, 0, 0xC), 0, &[]);
    expect(&out(&pr, &a, RELEASE, WE, 0xA, 0), 0, &[]); // nothing reserved
    expect(&out(&pr, &a, RESERVE, WE_RO, 0xA, 0), 0, &[]);
    expect(
        &out(&pr, &a, RELEASE, WE_RO, 0xB, 0),
        CONFLICT.0,
        CONFLICT.1,
    ); // wrong key
    expect(&out(&pr, &b, RELEASE, WE_RO, 0xB, 0), 0, &[]); // not holder: no-op
    assert!(pr.snapshot().reservation.is_some());
    // Holder with the wrong type: INVALID RELEASE OF PERSISTENT RESERVATION.
    let o = out(&pr, &a, RELEASE, EA_RO, 0xA, 0);
    expect(&o, 0x02, &check(0x05, 0x26, 0x04, [0, 0, 0]));
    let o = out(&pr, &a, RELEASE, 0x10 | WE_RO, 0xA, 0);
    expect(&o, 0x02, &check(0x05, 0x26, 0x04, [0, 0, 0]));
    expect(&out(&pr, &a, RELEASE, WE_RO, 0xA, 0), 0, &[]);
    assert!(pr.snapshot().reservation.is_none());
    // Registrants-only release: 2A/04 for the other registrants, not the holder.
    assert_eq!(uas(&pr, &a), vec![]);
    assert_eq!(uas(&pr, &b), vec![(6, 0x2A, 0x04)]);
    assert_eq!(uas(&pr, &c), vec![(6, 0x2A, 0x04)]);
    assert_eq!(uas(&pr, &b), vec![]); // taken once
                                      // Write Exclusive release: no unit attention.
    expect(&out(&pr, &a, RESERVE, WE, 0xA, 0), 0, &[]);
    expect(&out(&pr, &a, RELEASE, WE, 0xA, 0), 0, &[]);
    assert_eq!(uas(&pr, &b), vec![]);
    // All-registrants release by any registrant: 2A/04 for the others.
    expect(&out(&pr, &a, RESERVE, WE_AR, 0xA, 0), 0, &[]);
    expect(&out(&pr, &c, RELEASE, WE_AR, 0xC, 0), 0, &[]);
    assert_eq!(uas(&pr, &a), vec![(6, 0x2A, 0x04)]);
    assert_eq!(uas(&pr, &b), vec![(6, 0x2A, 0x04)]);
    assert_eq!(uas(&pr, &c), vec![]);
    assert_eq!(pr.snapshot().generation, 3);
}

#[test]
fn unregistering_holder_releases() {
    let pr = MemoryPr::new();
    let (a, b) = (node(1), node(2));
    expect(&out(&pr, &a, REGISTER, 0, 0, 0xA), 0, &[]);
    expect(&out(&pr, &b, REGISTER, 0, 0, 0xB), 0, &[]);
    expect(&out(&pr, &a, RESERVE, EA_RO, 0xA, 0), 0, &[]);
    expect(&out(&pr, &a, REGISTER, 0, 0xA, 0), 0, &[]);
    assert!(pr.snapshot().reservation.is_none());
    assert_eq!(uas(&pr, &b), vec![(6, 0x2A, 0x04)]);
    // Under Write Exclusive: released, no UA.
    expect(&out(&pr, &a, REGISTER, 0, 0, 0xA), 0, &[]);
    expect(&out(&pr, &a, RESERVE, WE, 0xA, 0), 0, &[]);
    expect(&out(&pr, &a, REG_IGNORE, 0, 0, 0), 0, &[]);
    assert!(pr.snapshot().reservation.is_none());
    assert_eq!(uas(&pr, &b), vec![]);
    // All registrants: kept until the last registrant leaves.
    expect(&out(&pr, &a, REGISTER, 0, 0, 0xA), 0, &[]);
    expect(&out(&pr, &a, RESERVE, WE_AR, 0xA, 0), 0, &[]);
    expect(&out(&pr, &a, REGISTER, 0, 0xA, 0), 0, &[]);
    assert!(pr.snapshot().reservation.is_some());
    assert!(!pr.conflicts(&b, PrAccess::Write));
    expect(&out(&pr, &b, REGISTER, 0, 0xB, 0), 0, &[]);
    assert!(pr.snapshot().reservation.is_none());
}

#[test]
fn clear_paths() {
    let pr = MemoryPr::new();
    let (a, b, c) = (node(1), node(2), node(3));
    expect(&out(&pr, &a, CLEAR, 0, 0, 0), CONFLICT.0, CONFLICT.1);
    expect(&out(&pr, &a, REGISTER, 0, 0, 0xA), 0, &[]);
    expect(&out(&pr, &b, REGISTER, 0, 0, 0xB), 0, &[]);
    expect(&out(&pr, &b, RESERVE, EA, 0xB, 0), 0, &[]);
    expect(&out(&pr, &a, CLEAR, 0, 0xB, 0), CONFLICT.0, CONFLICT.1);
    expect(&out(&pr, &c, CLEAR, 0, 0, 0), CONFLICT.0, CONFLICT.1);
    expect(&out(&pr, &a, CLEAR, 0, 0xA, 0), 0, &[]);
    assert_eq!(read_keys(&pr, &a), (3, vec![]));
    assert!(pr.snapshot().reservation.is_none());
    assert_eq!(uas(&pr, &b), vec![(6, 0x2A, 0x03)]);
    assert_eq!(uas(&pr, &a), vec![]);
    assert_eq!(uas(&pr, &c), vec![]);
}

#[test]
fn preempt_paths() {
    let pr = MemoryPr::new();
    let (a, b, c) = (node(1), node(2), node(3));
    expect(&out(&pr, &a, PREEMPT, WE, 0, 0xB), CONFLICT.0, CONFLICT.1); // unregistered
    expect(&out(&pr, &a, REGISTER, 0, 0, 0xA), 0, &[]);
    expect(&out(&pr, &b, REGISTER, 0, 0, 0xB), 0, &[]);
    expect(&out(&pr, &c, REGISTER, 0, 0, 0xB), 0, &[]); // same key as B
                                                        // SARK 0 without an all-registrants reservation.
    let o = out(&pr, &a, PREEMPT, WE, 0xA, 0);
    expect(&o, 0x02, &inv_field_param(8, None));
    // SARK matching nobody: conflict.
    expect(
        &out(&pr, &a, PREEMPT, WE, 0xA, 0x99),
        CONFLICT.0,
        CONFLICT.1,
    );
    // Wrong own key.
    expect(
        &out(&pr, &a, PREEMPT, WE, 0x99, 0xB),
        CONFLICT.0,
        CONFLICT.1,
    );
    assert_eq!(pr.snapshot().generation, 3);
    // No reservation: removes every registration with key B, type ignored.
    expect(&out(&pr, &a, PREEMPT, 0x0F, 0xA, 0xB), 0, &[]);
    assert_eq!(read_keys(&pr, &a), (4, vec![0xA]));
    assert!(pr.snapshot().reservation.is_none());
    assert_eq!(uas(&pr, &b), vec![(6, 0x2A, 0x05)]);
    assert_eq!(uas(&pr, &c), vec![(6, 0x2A, 0x05)]);
    assert_eq!(uas(&pr, &a), vec![]);
    // Preempting the holder: new reservation of the given type for A.
    expect(&out(&pr, &b, REGISTER, 0, 0, 0xB), 0, &[]);
    expect(&out(&pr, &c, REGISTER, 0, 0, 0xC), 0, &[]);
    expect(&out(&pr, &b, RESERVE, WE_RO, 0xB, 0), 0, &[]);
    // Invalid type only matters when a reservation is established.
    expect(
        &out(&pr, &a, PREEMPT, 0x02, 0xA, 0xB),
        0x02,
        &inv_field_cdb(2, 3),
    );
    expect(&out(&pr, &a, PREEMPT, EA_RO, 0xA, 0xB), 0, &[]);
    let s = pr.snapshot();
    assert_eq!(s.reservation.as_ref().map(|r| r.ty.code()), Some(EA_RO));
    assert!(s.is_holder(&a));
    assert_eq!(read_keys(&pr, &a), (7, vec![0xA, 0xC]));
    assert_eq!(uas(&pr, &b), vec![(6, 0x2A, 0x05)]);
    // C stayed registered; the type changed: RESERVATIONS RELEASED.
    assert_eq!(uas(&pr, &c), vec![(6, 0x2A, 0x04)]);
    assert!(pr.conflicts(&b, PrAccess::Read));
    // The holder preempting itself with the same type: no UA, stays holder.
    expect(&out(&pr, &a, PREEMPT, EA_RO, 0xA, 0xA), 0, &[]);
    assert!(pr.snapshot().is_holder(&a));
    assert_eq!(uas(&pr, &c), vec![]);
    assert_eq!(read_keys(&pr, &a), (8, vec![0xA, 0xC]));
}

#[test]
fn preempt_all_registrants() {
    let pr = MemoryPr::new();
    let (a, b, c) = (node(1), node(2), node(3));
    for (n, k) in [(&a, 0xA), (&b, 0xB), (&c, 0xC)] {
        expect(&out(&pr, n, REGISTER, 0, 0, k), 0, &[]);
    }
    expect(&out(&pr, &b, RESERVE, WE_AR, 0xB, 0), 0, &[]);
    // Non-zero SARK: only removes that registration; reservation stays.
    expect(&out(&pr, &a, PREEMPT, WE, 0xA, 0xC), 0, &[]);
    assert_eq!(
        pr.snapshot().reservation.as_ref().map(|r| r.ty.code()),
        Some(WE_AR)
    );
    assert_eq!(uas(&pr, &c), vec![(6, 0x2A, 0x05)]);
    // Zero SARK: removes every other registration, new reservation.
    expect(&out(&pr, &c, REGISTER, 0, 0, 0xC), 0, &[]);
    let r = pr.reserve_out_with_aborts(&a, &out_cdb(PREEMPT_AND_ABORT, EA, 24), &plist(0xA, 0, 0));
    expect(&r.outcome, 0, &[]);
    let mut aborted: Vec<_> = r.abort.iter().map(|id| id.initiator.clone()).collect();
    aborted.sort();
    assert_eq!(aborted, vec![b.initiator.clone(), c.initiator.clone()]);
    assert!(r.abort.iter().any(|id| id.covers(&b)));
    assert_eq!(read_keys(&pr, &a).1, vec![0xA]);
    assert_eq!(
        pr.snapshot().reservation.as_ref().map(|r| r.ty.code()),
        Some(EA)
    );
    assert_eq!(uas(&pr, &b), vec![(6, 0x2A, 0x05)]);
    assert!(pr.conflicts(&b, PrAccess::Read));
}

#[test]
fn preempt_and_abort_reports_preempted_only() {
    let pr = MemoryPr::new();
    let (a, b) = (node(1), node(2));
    expect(&out(&pr, &a, REGISTER, 0, 0, 0xA), 0, &[]);
    expect(&out(&pr, &b, REGISTER, 0, 0, 0xB), 0, &[]);
    expect(&out(&pr, &b, RESERVE, WE, 0xB, 0), 0, &[]);
    // Plain PREEMPT reports nothing to abort.
    let p = plist(0xA, 0xB, 0);
    let r = pr.reserve_out_with_aborts(&a, &out_cdb(PREEMPT, WE, 24), &p);
    expect(&r.outcome, 0, &[]);
    assert!(r.abort.is_empty());
    expect(&out(&pr, &b, REGISTER, 0, 0, 0xB), 0, &[]);
    let p = plist(0xA, 0xB, 0);
    let r = pr.reserve_out_with_aborts(&a, &out_cdb(PREEMPT_AND_ABORT, WE, 24), &p);
    expect(&r.outcome, 0, &[]);
    assert_eq!(r.abort.len(), 1);
    assert!(r.abort[0].covers(&b) && !r.abort[0].covers(&a));
    // A failed PREEMPT AND ABORT aborts nothing.
    let r = pr.reserve_out_with_aborts(&a, &out_cdb(PREEMPT_AND_ABORT, WE, 24), &p);
    expect(&r.outcome, CONFLICT.0, CONFLICT.1);
    assert!(r.abort.is_empty());
}

fn move_params(rk: u64, sark: u64, unreg_aptpl: u8, rel: u16, to: &scsi::ItNexus) -> Vec<u8> {
    let tid = to.initiator.transport_id();
    let mut p = Vec::new();
    p.extend_from_slice(&rk.to_be_bytes()); // 0..8 RESERVATION KEY
    p.extend_from_slice(&sark.to_be_bytes()); // 8..16 SERVICE ACTION RESERVATION KEY
    p.push(0); // 16 reserved
    p.push(unreg_aptpl); // 17: UNREG (1) | APTPL (0)
    p.extend_from_slice(&rel.to_be_bytes()); // 18..20 RELATIVE TARGET PORT IDENTIFIER
    p.extend_from_slice(&u32::try_from(tid.len()).unwrap().to_be_bytes()); // 20..24 TRANSPORTID PARAMETER DATA LENGTH
    p.extend_from_slice(&tid); // 24.. TransportID
    p
}

#[test]
fn register_and_move_paths() {
    let pr = MemoryPr::new();
    let (a, b, c) = (node(1), node(2), node(3));
    // B reached through A's target port (relative id 1).
    let b_via_a = scsi::ItNexus {
        initiator: b.initiator.clone(),
        target: a.target.clone(),
    };
    let mv = |n: &scsi::ItNexus, p: &[u8]| pr.reserve_out(n, &out_cdb(REG_MOVE, 0, p.len()), p);
    expect(
        &mv(&a, &move_params(0xA, 0xB, 0, 1, &b)),
        CONFLICT.0,
        CONFLICT.1,
    ); // unregistered
    expect(&out(&pr, &a, REGISTER, 0, 0, 0xA), 0, &[]);
    expect(&out(&pr, &c, REGISTER, 0, 0, 0xC), 0, &[]);
    // No reservation: INVALID FIELD IN CDB.
    let o = mv(&a, &move_params(0xA, 0xB, 0, 1, &b));
    expect(&o, 0x02, &check(0x05, 0x24, 0x00, [0, 0, 0]));
    expect(&out(&pr, &a, RESERVE, EA, 0xA, 0), 0, &[]);
    expect(
        &mv(&c, &move_params(0xC, 0xB, 0, 1, &b)),
        CONFLICT.0,
        CONFLICT.1,
    ); // not holder
    expect(
        &mv(&a, &move_params(0xF, 0xB, 0, 1, &b)),
        CONFLICT.0,
        CONFLICT.1,
    ); // wrong key
    let o = mv(&a, &move_params(0xA, 0, 0, 1, &b));
    expect(&o, 0x02, &inv_field_param(8, None)); // SARK 0
    let o = mv(&a, &move_params(0xA, 0xB, 0, 1, &a));
    expect(&o, 0x02, &inv_field_param(24, None)); // to itself
    let o = mv(&a, &move_params(0xA, 0xB, 0, 9, &b));
    expect(&o, 0x02, &inv_field_param(18, None)); // unknown port
    let mut p = move_params(0xA, 0xB, 0, 1, &b);
    p[23] = 20; // TransportID length disagrees with the list
    expect(&mv(&a, &p), 0x02, &inv_field_param(20, None));
    let o = pr.reserve_out(&a, &out_cdb(REG_MOVE, 0, 20), &[0; 20]);
    expect(&o, 0x02, &plle());
    assert_eq!(pr.snapshot().generation, 2);
    // Move to B via port 1, keeping A registered.
    expect(&mv(&a, &move_params(0xA, 0xB, 0, 1, &b)), 0, &[]);
    let s = pr.snapshot();
    assert!(s.is_holder(&b_via_a) && !s.is_holder(&a));
    assert_eq!(read_keys(&pr, &a), (3, vec![0xA, 0xC, 0xB]));
    assert!(pr.conflicts(&a, PrAccess::Read));
    // Move back to A with UNREG: B's registration goes.
    expect(&mv(&b_via_a, &move_params(0xB, 0xAA, 0x02, 1, &a)), 0, &[]);
    assert!(pr.snapshot().is_holder(&a));
    assert_eq!(read_keys(&pr, &a), (4, vec![0xAA, 0xC]));
    // All-registrants reservations cannot be moved.
    expect(&out(&pr, &a, RELEASE, EA, 0xAA, 0), 0, &[]);
    expect(&out(&pr, &a, RESERVE, WE_AR, 0xAA, 0), 0, &[]);
    expect(
        &mv(&a, &move_params(0xAA, 0xB, 0, 1, &b)),
        CONFLICT.0,
        CONFLICT.1,
    );
}

// ---------------------------------------------------------------------------
// SCSI-2 RESERVE/RELEASE and compatible reservation handling.

#[test]
fn scsi2_reservations_and_crh() {
    let pr = MemoryPr::new();
    let (a, b) = (node(1), node(2));
    expect(&pr.scsi2_reserve(&a), 0, &[]);
    expect(&pr.scsi2_reserve(&a), 0, &[]);
    expect(&pr.scsi2_reserve(&b), CONFLICT.0, CONFLICT.1);
    assert!(pr.conflicts(&b, PrAccess::Read));
    assert!(pr.conflicts(&b, PrAccess::Write));
    assert!(!pr.conflicts(&b, PrAccess::Allowed));
    assert!(!pr.conflicts(&a, PrAccess::Write));
    // PR IN / PR OUT conflict with a SCSI-2 reservation, whoever sends them.
    expect(&out(&pr, &a, REGISTER, 0, 0, 1), CONFLICT.0, CONFLICT.1);
    expect(&pr.reserve_in(&a, &in_cdb(0)), CONFLICT.0, CONFLICT.1);
    assert!(pr.conflicts(&a, PrAccess::PrOut));
    // RELEASE from a non-holder: GOOD, no effect.
    expect(&pr.scsi2_release(&b), 0, &[]);
    assert!(pr.conflicts(&b, PrAccess::Write));
    // Nexus loss of another nexus: nothing; of the holder: released.
    pr.nexus_loss(&b);
    assert!(pr.conflicts(&b, PrAccess::Write));
    pr.nexus_loss(&a);
    assert!(!pr.conflicts(&b, PrAccess::Write));
    // LU reset clears it too.
    expect(&pr.scsi2_reserve(&b), 0, &[]);
    pr.lu_reset();
    assert!(!pr.conflicts(&a, PrAccess::Write));
    expect(&pr.scsi2_reserve(&a), 0, &[]);
    expect(&pr.scsi2_release(&a), 0, &[]);
    assert!(!pr.conflicts(&b, PrAccess::Write));

    // With registrations: RESERVE/RELEASE from unregistered nexuses conflict.
    expect(&out(&pr, &a, REGISTER, 0, 0, 0xA), 0, &[]);
    expect(&pr.scsi2_reserve(&b), CONFLICT.0, CONFLICT.1);
    expect(&pr.scsi2_release(&b), CONFLICT.0, CONFLICT.1);
    // Registered but no reservation: conflict as well.
    expect(&pr.scsi2_reserve(&a), CONFLICT.0, CONFLICT.1);
    // The PR holder: GOOD, no SCSI-2 reservation made.
    expect(&out(&pr, &a, RESERVE, WE, 0xA, 0), 0, &[]);
    expect(&pr.scsi2_reserve(&a), 0, &[]);
    expect(&pr.scsi2_release(&a), 0, &[]);
    assert!(pr.snapshot().scsi2.is_none());
    // Registrant under registrants-only: GOOD, no effect.
    expect(&out(&pr, &b, REGISTER, 0, 0, 0xB), 0, &[]);
    expect(&pr.scsi2_reserve(&b), CONFLICT.0, CONFLICT.1); // WE: not holder
    expect(&out(&pr, &a, RELEASE, WE, 0xA, 0), 0, &[]);
    expect(&out(&pr, &a, RESERVE, WE_RO, 0xA, 0), 0, &[]);
    expect(&pr.scsi2_reserve(&b), 0, &[]);
    assert!(pr.snapshot().scsi2.is_none());
    // PRs survive LU reset and nexus loss.
    pr.lu_reset();
    pr.nexus_loss(&a);
    assert!(pr.snapshot().is_holder(&a));
}

// ---------------------------------------------------------------------------
// Windows failover cluster validation, replayed.

/// The arbitration of "Validate SCSI-3 Persistent Reservation" / "Validate
/// Disk Failover" between `nodes` (node 0 = A owns first, last = challenger).
pub fn windows_arbitration(prs: &[&dyn Reservations]) {
    let n = prs.len();
    let pr_of = |i: usize| prs[i];
    let nodes: Vec<_> = (1..=n).map(|i| node(u8::try_from(i).unwrap())).collect();
    let key = |i: usize| 0x1000_0000_0000_0000u64 | (i as u64 + 1);
    let (a, pa) = (&nodes[0], pr_of(0));
    // A: REGISTER AND IGNORE EXISTING KEY, RESERVE WE-RO.
    expect(&out(pa, a, REG_IGNORE, 0, 0, key(0)), 0, &[]);
    expect(&out(pa, a, RESERVE, WE_RO, key(0), 0), 0, &[]);
    // A holds: reads and writes pass.
    assert!(!pa.conflicts(a, PrAccess::Write));
    // Every other node: before registering, its writes conflict, reads pass.
    for (i, x) in nodes.iter().enumerate().skip(1) {
        let px = pr_of(i);
        assert!(px.conflicts(x, PrAccess::Write));
        assert!(!px.conflicts(x, PrAccess::Read));
        // READ RESERVATION from X sees A's key and WE-RO.
        #[rustfmt::skip]
        let want = [
            0, 0, 0, u8::try_from(i).unwrap(), // PRgeneration: A + (i - 1) registrations
            0, 0, 0, 0x10,             // ADDITIONAL LENGTH
            0x10, 0, 0, 0, 0, 0, 0, 1, // A's key
            0, 0, 0, 0, 0x00, 0x05, 0, 0, // obsolete, reserved, LU | WE-RO, obsolete
        ];
        assert_eq!(px.reserve_in(x, &in_cdb(1)).data, want);
        expect(&out(px, x, REG_IGNORE, 0, 0, key(i)), 0, &[]);
        // Registered under WE-RO: X may now write (registrants only).
        assert!(!px.conflicts(x, PrAccess::Write));
    }
    // The challenger (last node) preempts A's key.
    let (z, pz) = (&nodes[n - 1], pr_of(n - 1));
    expect(&out(pz, z, PREEMPT, WE_RO, key(n - 1), key(0)), 0, &[]);
    // A's next command gets REGISTRATIONS PREEMPTED, then its writes conflict.
    assert_eq!(uas(pa, a), vec![(6, 0x2A, 0x05)]);
    assert_eq!(uas(pa, a), vec![]);
    assert!(pa.conflicts(a, PrAccess::Write));
    assert!(!pa.conflicts(a, PrAccess::Read));
    // Nobody else lost anything and gets no UA (type unchanged).
    for (i, x) in nodes.iter().enumerate().skip(1) {
        assert_eq!(uas(pr_of(i), x), vec![]);
        assert!(!pr_of(i).conflicts(x, PrAccess::Write));
    }
    // A reads keys: its key is gone; the reservation is the challenger's.
    let (generation, keys) = read_keys(pa, a);
    assert_eq!(generation, u32::try_from(n).unwrap() + 1);
    assert_eq!(keys, (1..n).map(key).collect::<Vec<_>>());
    let d = pa.reserve_in(a, &in_cdb(1)).data;
    assert_eq!(&d[8..16], &key(n - 1).to_be_bytes());
    // A's stale key cannot do anything.
    expect(
        &out(pa, a, RESERVE, WE_RO, key(0), 0),
        CONFLICT.0,
        CONFLICT.1,
    );
    expect(&out(pa, a, CLEAR, 0, key(0), 0), CONFLICT.0, CONFLICT.1);
    // The challenger clears: everybody else registered gets 2A/03.
    expect(&out(pz, z, CLEAR, 0, key(n - 1), 0), 0, &[]);
    for (i, x) in nodes.iter().enumerate().take(n - 1).skip(1) {
        assert_eq!(uas(pr_of(i), x), vec![(6, 0x2A, 0x03)]);
    }
    assert_eq!(uas(pa, a), vec![]);
    assert_eq!(uas(pz, z), vec![]);
    assert_eq!(read_keys(pa, a), (u32::try_from(n).unwrap() + 2, vec![]));
    for (i, x) in nodes.iter().enumerate() {
        assert!(!pr_of(i).conflicts(x, PrAccess::Write));
    }
}

#[test]
fn windows_cluster_validation_two_nodes() {
    let pr = MemoryPr::new();
    windows_arbitration(&[&pr, &pr]);
}

#[test]
fn windows_cluster_validation_three_nodes() {
    let pr = MemoryPr::new();
    windows_arbitration(&[&pr, &pr, &pr]);
}

#[test]
fn prgeneration_counts_exactly_per_spc4() {
    let pr = MemoryPr::new();
    let (a, b, c) = (node(1), node(2), node(3));
    // (who, service action, type, RK, SARK, expected status, PRgeneration delta)
    #[rustfmt::skip]
    let steps: &[(&scsi::ItNexus, u8, u8, u64, u64, u8, u32)] = &[
        (&a, REGISTER,   0,     0,   0,   0x00, 0), // unregistered, SARK 0: no-op
        (&a, REGISTER,   0,     0,   0xA, 0x00, 1), // register
        (&a, REGISTER,   0,     0xA, 0xA, 0x00, 1), // same key again still counts
        (&a, REGISTER,   0,     0xB, 0xC, 0x18, 0), // conflict: no count
        (&b, REG_IGNORE, 0,     0,   0xB, 0x00, 1),
        (&a, RESERVE,    WE,    0xA, 0,   0x00, 0), // RESERVE never counts
        (&a, RELEASE,    WE,    0xA, 0,   0x00, 0), // nor RELEASE
        (&a, RESERVE,    EA,    0xA, 0,   0x00, 0),
        (&b, PREEMPT,    EA,    0xB, 0xA, 0x00, 1), // PREEMPT
        (&a, REG_IGNORE, 0,     0,   0xA, 0x00, 1),
        (&b, PREEMPT_AND_ABORT, EA, 0xB, 0xA, 0x00, 1),
        (&b, PREEMPT,    EA,    0xB, 0x77, 0x18, 0), // nobody has 0x77
        (&c, CLEAR,      0,     0,   0,   0x18, 0), // unregistered
        (&b, CLEAR,      0,     0xB, 0,   0x00, 1), // CLEAR
        (&b, REGISTER,   0,     0,   0xB, 0x00, 1),
        (&b, REGISTER,   0,     0xB, 0,   0x00, 1), // unregister counts
    ];
    let mut generation = 0u32;
    for (i, &(n, sa, ty, rk, sark, status, delta)) in steps.iter().enumerate() {
        let o = out(&pr, n, sa, ty, rk, sark);
        assert_eq!(o.status as u8, status, "step {i}: {o:?}");
        generation += delta;
        assert_eq!(read_keys(&pr, &a).0, generation, "step {i}");
    }
    // REGISTER AND MOVE counts.
    expect(&out(&pr, &a, REGISTER, 0, 0, 0xA), 0, &[]);
    expect(&out(&pr, &a, RESERVE, WE, 0xA, 0), 0, &[]);
    let b_via_a = scsi::ItNexus {
        initiator: b.initiator.clone(),
        target: a.target.clone(),
    };
    let p = move_params(0xA, 0xB, 0, 1, &b_via_a);
    expect(
        &pr.reserve_out(&a, &out_cdb(REG_MOVE, 0, p.len()), &p),
        0,
        &[],
    );
    assert_eq!(read_keys(&pr, &a).0, generation + 2);
}
