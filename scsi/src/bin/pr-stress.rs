//! `pr-stress BASE WORKER ITERATIONS LOG`: one process of the multi-process
//! persistent-reservation test (scsi/tests/pr_multiprocess.rs).
//!
//! The worker opens the shared PR state at BASE and, ITERATIONS times,
//! arbitrates for the disk the way cluster nodes do: REGISTER AND IGNORE
//! EXISTING KEY, READ RESERVATION, then RESERVE (Exclusive Access) when free
//! or PREEMPT the holder's key, and now and then RELEASE. Every iteration it
//! checks, on one snapshot (READ FULL STATUS), that at most one registrant is
//! the holder. A second "bystander" I_T nexus of the worker keeps a
//! registration whose key it changes every few iterations with REGISTER
//! (RK = its current key): nobody else ever preempts bystander keys, so a
//! conflict or a missing key there means an update was lost.
//!
//! LOG gets one line per event, written unbuffered so that kill -9 loses
//! nothing already reported: `win VERSION` when a RESERVE or PREEMPT made
//! this worker the holder (VERSION = the state version that change
//! produced), `by KEY MILLIS` after each bystander key change (MILLIS = Unix
//! time in ms), `done`.
//!
//! Exit status: 0 done, 2 bystander registration lost, 3 more than one
//! holder seen, 4 unexpected status, 5 usage / I/O error.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use scsi::pr::{PrAccess, Reservations, SharedPr};
use scsi::{ItNexus, PortName, TargetPort};

fn out_cdb(sa: u8, ty: u8) -> [u8; 10] {
    // PERSISTENT RESERVE OUT, service action, LU scope | type, 24 bytes.
    [0x5F, sa, ty, 0, 0, 0, 0, 0, 24, 0]
}

fn plist(rk: u64, sark: u64) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[..8].copy_from_slice(&rk.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    p
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn nexus(kind: u8, w: u8) -> ItNexus {
    ItNexus {
        initiator: PortName::Naa([0x50, 0, 0, 0, 0, 0, kind, w]),
        target: TargetPort {
            relative_id: 1,
            name: PortName::Naa([0x60, 0, 0, 0, 0, 0, 0, w]),
        },
    }
}

fn fail(code: u8, what: &str) -> ExitCode {
    eprintln!("pr-stress: {what}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let parsed = (
        args.get(1).map(PathBuf::from),
        args.get(2).and_then(|s| s.parse::<u8>().ok()),
        args.get(3).and_then(|s| s.parse::<u32>().ok()),
        args.get(4).map(PathBuf::from),
    );
    let (Some(base), Some(w), Some(iterations), Some(log_path)) = parsed else {
        return fail(5, "usage: pr-stress BASE WORKER ITERATIONS LOG");
    };
    let mut log = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
    {
        Ok(f) => f,
        Err(e) => return fail(5, &format!("log: {e}")),
    };
    let pr = match SharedPr::open_at(&base) {
        Ok(p) => p,
        Err(e) => return fail(5, &format!("open: {e}")),
    };
    let arb = nexus(0x0B, w);
    let by = nexus(0x0C, w);
    let my_key = 0xA000_0000_0000_0000 | u64::from(w);
    let mut by_key = 0xB000_0000_0000_0000 | (u64::from(w) << 32);
    // The bystander registers once.
    let o = pr.reserve_out(&by, &out_cdb(0x06, 0), &plist(0, by_key));
    if o.status as u8 != 0 {
        return fail(4, &format!("bystander register: {o:?}"));
    }
    let _ = writeln!(log, "by {by_key} {}", now_ms());

    for i in 0..iterations {
        let _ = pr.take_unit_attentions(&arb);
        let o = pr.reserve_out(&arb, &out_cdb(0x06, 0), &plist(0, my_key));
        if o.status as u8 != 0 {
            return fail(4, &format!("register: {o:?}"));
        }
        let rr = pr.reserve_in(&arb, &[0x5E, 0x01, 0, 0, 0, 0, 0, 0x10, 0, 0]);
        let holder = (rr.data.len() >= 24).then(|| {
            let mut k = [0u8; 8];
            k.copy_from_slice(&rr.data[8..16]);
            u64::from_be_bytes(k)
        });
        // RESERVE when free, PREEMPT the holder's key otherwise, RELEASE own
        // reservation every third iteration.
        let (sa, sark) = match holder {
            None => (0x01, 0),
            Some(k) if k == my_key => (if i % 3 == 0 { 0x02 } else { 0xFF }, 0),
            Some(k) => (0x04, k),
        };
        if sa != 0xFF {
            let cdb = out_cdb(sa, 0x03);
            let params = plist(my_key, sark);
            let r = pr.update(|s| {
                let before = s.is_holder(&arb);
                let r = s.pr_out(&arb, &cdb, &params, &[]);
                (r, before, s.is_holder(&arb))
            });
            let Ok(((r, before, after), version)) = r else {
                return fail(5, "state update failed");
            };
            let st = r.outcome.status as u8;
            if st != 0 && st != 0x18 {
                return fail(4, &format!("PR OUT {sa}: {r:?}"));
            }
            if after && !before {
                let _ = writeln!(log, "win {version}");
            }
        }
        // One snapshot: at most one holder among the registrants, and when a
        // holder exists it is the only one the data path lets write.
        let fs = pr.reserve_in(&arb, &[0x5E, 0x03, 0, 0, 0, 0, 0, 0x10, 0, 0]);
        let mut at = 8;
        let mut holders = 0;
        while at + 24 <= fs.data.len() {
            holders += usize::from(fs.data[at + 12] & 1);
            let add = u32::from_be_bytes([
                fs.data[at + 20],
                fs.data[at + 21],
                fs.data[at + 22],
                fs.data[at + 23],
            ]);
            at += 24 + usize::try_from(add).unwrap_or(usize::MAX / 2);
        }
        if holders > 1 {
            return fail(3, &format!("{holders} holders in one snapshot"));
        }
        let _ = pr.conflicts(&arb, PrAccess::Write);
        if i % 8 == 7 {
            let next = by_key + 1;
            let o = pr.reserve_out(&by, &out_cdb(0x00, 0), &plist(by_key, next));
            if o.status as u8 != 0 {
                return fail(2, &format!("bystander key {by_key:#x} lost: {o:?}"));
            }
            by_key = next;
            let _ = writeln!(log, "by {by_key} {}", now_ms());
            let keys = pr.reserve_in(&by, &[0x5E, 0x00, 0, 0, 0, 0, 0, 0x10, 0, 0]);
            let present = keys
                .data
                .get(8..)
                .unwrap_or_default()
                .chunks_exact(8)
                .any(|c| {
                    let mut k = [0u8; 8];
                    k.copy_from_slice(c);
                    u64::from_be_bytes(k) == by_key
                });
            if !present {
                return fail(2, &format!("bystander key {by_key:#x} missing"));
            }
        }
    }
    let _ = writeln!(log, "done");
    ExitCode::SUCCESS
}
