//! The passthrough unit on real SCSI devices. Needs a host with SCSI:
//!
//! * `ARBITER_SG_DEVICE_A=/dev/sgN` (or `/dev/sdX`): a scratch LUN — its
//!   block 0..64 are read, and written only when the reservation test
//!   expects RESERVATION CONFLICT (so nothing is written on success);
//! * `ARBITER_SG_DEVICE_B=/dev/sgM`: the same LUN reached through a second
//!   initiator port (LIO tcm_loop with two WWPNs, two iSCSI sessions, NPIV),
//!   for the reservation test;
//! * CAP_SYS_RAWIO (root) for pr=passthrough, or `ARBITER_PR_HELPER_SOCK`
//!   pointing at a running qemu-pr-helper for pr=helper.
//!
//! resources/sgio-passthrough.md has the commands that set this up.
//! Without the variables every test prints SKIPPED and returns.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use scsi::nexus::{ItNexus, PortName, TargetPort};
use scsi::sense::Status;
use scsi::sgio::{PassthroughConfig, PassthroughLu, PassthroughOutcome, PrRouting, VirtioResponse};
use scsi::target::{DataIn, DataOut, Request, TaskAttr};

fn device(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).map(PathBuf::from)
}

fn routing() -> PrRouting {
    match std::env::var_os("ARBITER_PR_HELPER_SOCK") {
        Some(p) => PrRouting::Helper(PathBuf::from(p)),
        None => PrRouting::Passthrough,
    }
}

fn open(path: &Path, max: Option<u32>) -> PassthroughLu {
    PassthroughLu::open(
        path,
        PassthroughConfig {
            pr: routing(),
            max_transfer_bytes: max,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn nexus() -> ItNexus {
    ItNexus {
        initiator: "naa.5001405000000aaa".parse().unwrap(),
        target: TargetPort {
            relative_id: 1,
            name: PortName::Naa([0x50, 1, 0x40, 0x50, 0, 0, 0, 1]),
        },
    }
}

fn run(lu: &PassthroughLu, cdb: &[u8], out: &[u8], in_len: usize) -> (PassthroughOutcome, Vec<u8>) {
    let n = nexus();
    let mut reader = Cursor::new(out.to_vec());
    let mut sink: Vec<u8> = Vec::new();
    let req = Request {
        nexus: &n,
        lun: 0,
        tag: 1,
        attr: TaskAttr::Simple,
        cdb,
    };
    let o = lu
        .execute_outcome(
            &req,
            DataOut {
                reader: &mut reader,
                len: out.len(),
            },
            DataIn {
                writer: &mut sink,
                len: in_len,
            },
        )
        .unwrap();
    (o, sink)
}

fn status(o: &PassthroughOutcome) -> Status {
    match o {
        PassthroughOutcome::Completed(r) => r.status,
        other => panic!("host failure: {other:?}"),
    }
}

#[test]
fn real_device_inquiry_and_split_reads_match_unsplit() {
    let Some(a) = device("ARBITER_SG_DEVICE_A") else {
        println!("SKIPPED real_device_inquiry_and_split_reads_match_unsplit: ARBITER_SG_DEVICE_A not set");
        return;
    };
    let whole = open(&a, None);
    let bs = whole.block_size().expect("READ CAPACITY gave a block size");
    let (o, d) = run(&whole, &[0x12, 0, 0, 0, 36, 0], &[], 36); // INQUIRY
    assert_eq!(status(&o), Status::Good);
    assert_eq!(d.len(), 36);
    // READ(10) LBA 0, 64 blocks, unsplit versus split at 4 KiB.
    let blocks = 64usize;
    let cdb = [0x28, 0, 0, 0, 0, 0, 0, 0, 64, 0];
    let (o, one) = run(&whole, &cdb, &[], blocks * bs as usize);
    assert_eq!(status(&o), Status::Good);
    let split = open(&a, Some(4096));
    assert_eq!(
        split.max_transfer_bytes(),
        Some(4096.min(whole.max_transfer_bytes().unwrap_or(4096)))
    );
    let (o, many) = run(&split, &cdb, &[], blocks * bs as usize);
    assert_eq!(status(&o), Status::Good);
    assert_eq!(one, many);
}

#[test]
fn real_device_reservation_conflict_reaches_the_other_initiator() {
    let (Some(a), Some(b)) = (device("ARBITER_SG_DEVICE_A"), device("ARBITER_SG_DEVICE_B")) else {
        println!(
            "SKIPPED real_device_reservation_conflict_reaches_the_other_initiator: \
             ARBITER_SG_DEVICE_A and ARBITER_SG_DEVICE_B (two initiator ports to one LUN) not set"
        );
        return;
    };
    let la = open(&a, None);
    let lb = open(&b, None);
    let bs = la.block_size().unwrap_or(512) as usize;
    let key = |k: u64| {
        let mut p = [0u8; 24];
        p[8..16].copy_from_slice(&k.to_be_bytes()); // SERVICE ACTION RESERVATION KEY
        p
    };
    // REGISTER AND IGNORE EXISTING KEY: A with 0xA1, B with 0xB1.
    let reg = [0x5F, 0x06, 0x00, 0, 0, 0, 0, 0, 24, 0];
    assert_eq!(status(&run(&la, &reg, &key(0xA1), 0).0), Status::Good);
    assert_eq!(status(&run(&lb, &reg, &key(0xB1), 0).0), Status::Good);
    // A: RESERVE, scope LU, type 1 (WRITE EXCLUSIVE), key 0xA1.
    let mut res = [0u8; 24];
    res[0..8].copy_from_slice(&0xA1u64.to_be_bytes());
    let (o, _) = run(&la, &[0x5F, 0x01, 0x01, 0, 0, 0, 0, 0, 24, 0], &res, 0);
    assert_eq!(status(&o), Status::Good);
    // B: WRITE(10) LBA 0, 1 block -> RESERVATION CONFLICT, as a SCSI status
    // with virtio response OK (not a host failure, not GOOD).
    let (o, _) = run(&lb, &[0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0], &vec![0u8; bs], 0);
    assert_eq!(o.virtio_response(), VirtioResponse::Ok);
    let conflict = status(&o);
    // B: READ KEYS sees both keys.
    let (o, d) = run(&lb, &[0x5E, 0x00, 0, 0, 0, 0, 0, 0x01, 0x00, 0], &[], 256);
    assert_eq!(status(&o), Status::Good);
    // Clean up before asserting: A clears everything.
    let mut clr = [0u8; 24];
    clr[0..8].copy_from_slice(&0xA1u64.to_be_bytes());
    let (o, _) = run(&la, &[0x5F, 0x03, 0, 0, 0, 0, 0, 0, 24, 0], &clr, 0);
    assert_eq!(status(&o), Status::Good);
    assert_eq!(conflict, Status::ReservationConflict);
    let n = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
    assert_eq!(n, 16, "two 8-byte keys");
    let keys: Vec<u64> = d[8..24]
        .chunks(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect();
    assert!(keys.contains(&0xA1) && keys.contains(&0xB1), "{keys:x?}");
}
