//! Random command sequences from several nexuses: the file-backed shared
//! state (two openers, one per "process") answers exactly like the in-memory
//! state machine, and SPC-4 invariants hold after every command.

mod pr_common;

use pr_common::*;
use proptest::prelude::*;
use scsi::pr::{MemoryPr, PrAccess, Reservations, SharedPr};

#[derive(Debug, Clone)]
enum Op {
    Out {
        who: u8,
        sa: u8,
        ty: u8,
        rk: u8,
        sark: u8,
        flags: u8,
    },
    In {
        who: u8,
        sa: u8,
    },
    Scsi2 {
        who: u8,
        reserve: bool,
    },
    Ua {
        who: u8,
    },
    Reset,
    Loss {
        who: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..3, 0u8..9, prop_oneof![Just(1u8), Just(3), Just(5), Just(6), Just(7), Just(8), Just(2)],
              0u8..4, 0u8..4, prop_oneof![Just(0u8), Just(1), Just(4)])
            .prop_map(|(who, sa, ty, rk, sark, flags)| Op::Out { who, sa, ty, rk, sark, flags }),
        2 => (0u8..3, 0u8..5).prop_map(|(who, sa)| Op::In { who, sa }),
        1 => (0u8..3, any::<bool>()).prop_map(|(who, reserve)| Op::Scsi2 { who, reserve }),
        2 => (0u8..3).prop_map(|who| Op::Ua { who }),
        1 => Just(Op::Reset),
        1 => (0u8..3).prop_map(|who| Op::Loss { who }),
    ]
}

/// Keys 0..3 map to 0 (no key) and three distinct keys.
fn key(k: u8) -> u64 {
    match k {
        0 => 0,
        k => 0x4B00_0000_0000_0000 | u64::from(k),
    }
}

fn apply(pr: &dyn Reservations, o: &Op) -> (u8, Vec<u8>, Vec<u8>) {
    let r = match *o {
        Op::Out {
            who,
            sa,
            ty,
            rk,
            sark,
            flags,
        } => {
            let n = node(who + 1);
            pr.reserve_out(&n, &out_cdb(sa, ty, 24), &plist(key(rk), key(sark), flags))
        }
        Op::In { who, sa } => pr.reserve_in(&node(who + 1), &in_cdb(sa)),
        Op::Scsi2 { who, reserve } => {
            let n = node(who + 1);
            if reserve {
                pr.scsi2_reserve(&n)
            } else {
                pr.scsi2_release(&n)
            }
        }
        Op::Ua { who } => {
            let u = pr.take_unit_attentions(&node(who + 1));
            return (0xFF, u.iter().flat_map(|s| s.to_fixed()).collect(), vec![]);
        }
        Op::Reset => {
            pr.lu_reset();
            return (0xFE, vec![], vec![]);
        }
        Op::Loss { who } => {
            pr.nexus_loss(&node(who + 1));
            return (0xFD, vec![], vec![]);
        }
    };
    let (s, sense) = bytes(&r);
    (s, sense, r.data)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn shared_state_answers_like_the_state_machine(ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("d.pr");
        let mem = MemoryPr::new();
        let p1 = SharedPr::open_unshared(&base).unwrap();
        let p2 = SharedPr::open_unshared(&base).unwrap();
        let mut last_generation = 0u32;
        for (i, o) in ops.iter().enumerate() {
            // Alternate the opener the command goes through.
            let shared: &dyn Reservations = if i % 2 == 0 { &p1 } else { &p2 };
            let want = apply(&mem, o);
            let got = apply(shared, o);
            prop_assert_eq!(&got, &want, "op {} {:?}", i, o);
            let s = mem.snapshot();
            prop_assert_eq!(&p1.snapshot(), &s);
            prop_assert_eq!(&p2.snapshot(), &s);
            // Invariants: a non-all-registrants holder is registered; keys
            // are never zero; PRgeneration only grows, by at most one.
            if let Some(r) = &s.reservation {
                if !r.ty.all_registrants() {
                    prop_assert!(s.registrations.iter().any(|g| g.id == r.holder));
                } else {
                    prop_assert!(!s.registrations.is_empty());
                }
            }
            prop_assert!(s.registrations.iter().all(|g| g.key != 0));
            prop_assert!(s.generation == last_generation || s.generation == last_generation + 1);
            last_generation = s.generation;
            // SCSI-2 and persistent reservations never coexist.
            prop_assert!(s.scsi2.is_none() || (s.registrations.is_empty() && s.reservation.is_none()));
            // The data-path view agrees too.
            for w in 0..3u8 {
                let n = node(w + 1);
                for a in [PrAccess::Read, PrAccess::Write, PrAccess::PrOut] {
                    prop_assert_eq!(shared.conflicts(&n, a), mem.conflicts(&n, a));
                }
            }
        }
    }
}
