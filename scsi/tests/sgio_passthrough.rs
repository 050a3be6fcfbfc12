//! The SG_IO passthrough unit against the fake SG transport: direction,
//! sense copy, residuals, splitting, host/driver status classes, timeouts,
//! the command filter, REPORT LUNS / identity / mode-page emulation and
//! reservation routing. Raw CDB bytes in, exact bytes out.

use std::io::{self, Cursor};
use std::sync::{Arc, Mutex};

use scsi::nexus::{ItNexus, PortName, TargetPort};
use scsi::pr::{PrAccess, PrOutcome, Reservations};
use scsi::sense::{codes, Sense, Status};
use scsi::sgio::filter::OpcodeList;
use scsi::sgio::outcome::HostDetail;
use scsi::sgio::transport::{did, DRIVER_TIMEOUT};
use scsi::sgio::{
    FakeCall, FakeReply, FakeSg, FilterConfig, HostFailure, Identity, LunMap, ModeMask,
    PassthroughConfig, PassthroughLu, PassthroughOutcome, PrRouting, SgDir, SgioError,
    VirtioResponse,
};
use scsi::target::{DataIn, DataOut, Request, TaskAttr, TaskMgmt, TmfResponse};

fn nexus(init: &str) -> ItNexus {
    ItNexus {
        initiator: init.parse().unwrap(),
        target: TargetPort {
            relative_id: 1,
            name: PortName::Naa(*b"\x50\x01\x40\x50\x00\x00\x00\x01"),
        },
    }
}

fn node_a() -> ItNexus {
    nexus("naa.5001405000000aaa")
}
fn node_b() -> ItNexus {
    nexus("naa.5001405000000bbb")
}

/// Standard INQUIRY data of the fake device (36 bytes).
fn std_inquiry() -> Vec<u8> {
    let mut d = vec![
        0x00, 0x00, 0x06, 0x02, 31, 0x00, 0x00, 0x02, // disk, SPC-4, len 31, CMDQUE
    ];
    d.extend_from_slice(b"LIO-ORG ");
    d.extend_from_slice(b"shared0         ");
    d.extend_from_slice(b"4.0 ");
    d
}

/// A fake disk: answers standard INQUIRY, READ CAPACITY(16) (block size
/// `bs`) and VPD B0 (MAXIMUM TRANSFER LENGTH `vpd_max` blocks) itself and
/// hands everything else to `f`.
fn model(
    bs: u32,
    vpd_max: u32,
    mut f: impl FnMut(&FakeCall) -> io::Result<FakeReply> + Send + 'static,
) -> impl FnMut(&FakeCall) -> io::Result<FakeReply> + Send + 'static {
    move |c: &FakeCall| match (c.cdb[0], c.cdb.get(1).copied(), c.cdb.get(2).copied()) {
        (0x12, Some(0), _) => Ok(FakeReply::good(std_inquiry())),
        (0x12, Some(1), Some(0xB0)) => {
            let mut p = vec![0u8; 0x40];
            p[1] = 0xB0;
            p[3] = 0x3C;
            p[8..12].copy_from_slice(&vpd_max.to_be_bytes());
            Ok(FakeReply::good(p))
        }
        (0x9E, Some(0x10), _) => {
            let mut p = vec![0u8; 32];
            p[0..8].copy_from_slice(&0xFFFFu64.to_be_bytes());
            p[8..12].copy_from_slice(&bs.to_be_bytes());
            Ok(FakeReply::good(p))
        }
        _ => f(c),
    }
}

fn open(fake: FakeSg, cfg: PassthroughConfig) -> (Arc<FakeSg>, PassthroughLu) {
    let fake = Arc::new(fake);
    let lu = PassthroughLu::with_transport(fake.clone(), "fake0", cfg).unwrap();
    fake.clear_calls();
    (fake, lu)
}

fn cfg() -> PassthroughConfig {
    PassthroughConfig {
        has_rawio: Some(true),
        ..Default::default()
    }
}

/// Run `cdb` from `n` with `out` as data-out and a data-in buffer of
/// `in_len` bytes; returns the outcome and the data-in bytes written.
fn run(
    lu: &PassthroughLu,
    n: &ItNexus,
    cdb: &[u8],
    out: &[u8],
    in_len: usize,
) -> (PassthroughOutcome, Vec<u8>) {
    let mut reader = Cursor::new(out.to_vec());
    let mut sink: Vec<u8> = Vec::new();
    let req = Request {
        nexus: n,
        lun: 0,
        tag: 7,
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

fn completed(o: &PassthroughOutcome) -> &scsi::target::Response {
    match o {
        PassthroughOutcome::Completed(r) => r,
        other => panic!("expected a SCSI completion, got {other:?}"),
    }
}

const INVALID_OPCODE_SENSE: [u8; 18] = [
    0x70, 0, 0x05, 0, 0, 0, 0, 10, // current, ILLEGAL REQUEST, additional length 10
    0, 0, 0, 0, 0x20, 0x00, 0, 0, 0, 0, // ASC 20 ASCQ 00, no SKS
];

#[test]
fn direction_follows_the_guest_buffers() {
    let (fake, lu) = open(
        FakeSg::new(model(512, 0, |_| Ok(FakeReply::good(Vec::new())))),
        PassthroughConfig {
            block_size: Some(512),
            ..cfg()
        },
    );
    // TEST UNIT READY: no data.
    let (o, _) = run(&lu, &node_a(), &[0x00, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(completed(&o).status, Status::Good);
    // WRITE(10) LBA 0x20, 1 block: data-out, exactly the 512 bytes given.
    let block: Vec<u8> = (0..512u32)
        .map(|i| u8::try_from(i % 251).unwrap())
        .collect();
    let (o, _) = run(
        &lu,
        &node_a(),
        &[0x2A, 0x00, 0, 0, 0, 0x20, 0, 0x00, 0x01, 0x00], // WRITE(10) LBA 0x20, len 1
        &block,
        0,
    );
    assert_eq!(completed(&o).data_out_len, 512);
    // INQUIRY, allocation length 36: data-in.
    let (o, d) = run(&lu, &node_a(), &[0x12, 0, 0, 0, 36, 0], &[], 36);
    assert_eq!(d, std_inquiry());
    assert_eq!(completed(&o).data_in_len, 36);
    let calls = fake.calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].cdb, vec![0x00, 0, 0, 0, 0, 0]);
    assert_eq!((calls[0].dir, calls[0].dxfer_len), (SgDir::None, 0));
    assert_eq!(calls[1].dir, SgDir::ToDevice);
    assert_eq!(calls[1].data_out, block);
    assert_eq!(calls[2].dir, SgDir::FromDevice);
    assert_eq!(calls[2].dxfer_len, 36);
    // A 96-byte sense buffer goes with every request.
    assert!(calls.iter().all(|c| c.sense_cap == 96));
}

#[test]
fn check_condition_sense_reaches_the_guest_byte_for_byte() {
    // MEDIUM ERROR, UNRECOVERED READ ERROR, INFORMATION = LBA 0x1234, plus
    // vendor bytes the device appends: all must arrive unchanged.
    let sense = vec![
        0xF0, 0, 0x03, 0, 0, 0x12, 0x34, 14, // VALID, MEDIUM ERROR, INFO 0x1234, len 14
        0, 0, 0, 0, 0x11, 0x00, 0, 0, 0, 0, 0xDE, 0xAD, 0xBE, 0xEF, // 11/00 + vendor
    ];
    let s2 = sense.clone();
    let (_, lu) = open(
        FakeSg::new(model(512, 0, move |_| {
            Ok(FakeReply::status(0x02, s2.clone()))
        })),
        PassthroughConfig {
            block_size: Some(512),
            ..cfg()
        },
    );
    let (o, d) = run(
        &lu,
        &node_a(),
        &[0x28, 0, 0, 0, 0x12, 0x34, 0, 0, 1, 0], // READ(10) LBA 0x1234, 1 block
        &[],
        512,
    );
    assert_eq!(o.virtio_response(), VirtioResponse::Ok);
    let r = completed(&o);
    assert_eq!(r.status, Status::CheckCondition);
    assert_eq!(r.sense, sense);
    assert!(d.is_empty() || d.len() == r.data_in_len);
}

#[test]
fn reservation_conflict_is_passed_even_with_did_nexus_failure() {
    for host in [did::OK, did::NEXUS_FAILURE] {
        let (_, lu) = open(
            FakeSg::new(model(512, 0, move |_| {
                Ok(FakeReply {
                    status: 0x18,
                    host_status: host,
                    ..Default::default()
                })
            })),
            PassthroughConfig {
                block_size: Some(512),
                ..cfg()
            },
        );
        let (o, _) = run(
            &lu,
            &node_b(),
            &[0x2A, 0, 0, 0, 0, 0x08, 0, 0, 1, 0], // WRITE(10) LBA 8, 1 block
            &[0u8; 512],
            0,
        );
        assert_eq!(o.virtio_response(), VirtioResponse::Ok, "host {host:#x}");
        let r = completed(&o);
        assert_eq!(r.status, Status::ReservationConflict);
        assert!(r.sense.is_empty());
    }
}

#[test]
fn unit_attention_in_descriptor_format_is_unchanged() {
    let ua = vec![0x72, 0x06, 0x2A, 0x03, 0, 0, 0, 0]; // RESERVATIONS PREEMPTED, descriptor
    let u2 = ua.clone();
    let (_, lu) = open(
        FakeSg::new(model(512, 0, move |_| {
            Ok(FakeReply::status(0x02, u2.clone()))
        })),
        cfg(),
    );
    let (o, _) = run(&lu, &node_a(), &[0x00, 0, 0, 0, 0, 0], &[], 0); // TEST UNIT READY
    let r = completed(&o);
    assert_eq!((r.status, r.sense.clone()), (Status::CheckCondition, ua));
}

#[test]
fn residuals_are_reported() {
    let (_, lu) = open(
        FakeSg::new(model(512, 0, |c| match c.cdb[0] {
            // MODE SENSE(6): the device returns 12 bytes of a 0xFF buffer.
            0x1A => Ok(FakeReply::good(vec![
                11, 0, 0, 0, 0x08, 0x06, 0x04, 0, 0, 0, 0, 0,
            ])),
            // UNMAP: the device takes only the 8-byte header of 24.
            0x42 => Ok(FakeReply {
                data_out_taken: Some(8),
                ..Default::default()
            }),
            _ => Ok(FakeReply::good(Vec::new())),
        })),
        cfg(),
    );
    let (o, d) = run(&lu, &node_a(), &[0x1A, 0x08, 0x3F, 0, 0xFF, 0], &[], 0xFF);
    assert_eq!(completed(&o).data_in_len, 12);
    assert_eq!(d, vec![11, 0, 0, 0, 0x08, 0x06, 0x04, 0, 0, 0, 0, 0]);
    let unmap = [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]; // UNMAP, parameter list length 24
    let (o, _) = run(&lu, &node_a(), &unmap, &[0u8; 24], 0);
    assert_eq!(completed(&o).data_out_len, 8);
}

fn lba_len(c: &FakeCall) -> (u64, u32) {
    match c.cdb[0] {
        0x28 | 0x2A => (
            u64::from(u32::from_be_bytes(c.cdb[2..6].try_into().unwrap())),
            u32::from(u16::from_be_bytes(c.cdb[7..9].try_into().unwrap())),
        ),
        0xA8 | 0xAA => (
            u64::from(u32::from_be_bytes(c.cdb[2..6].try_into().unwrap())),
            u32::from_be_bytes(c.cdb[6..10].try_into().unwrap()),
        ),
        _ => (
            u64::from_be_bytes(c.cdb[2..10].try_into().unwrap()),
            u32::from_be_bytes(c.cdb[10..14].try_into().unwrap()),
        ),
    }
}

/// A disk whose block `lba` holds bytes `(lba + i) as u8`.
fn pattern_reply(c: &FakeCall) -> io::Result<FakeReply> {
    if !matches!(c.cdb[0], 0x28 | 0x2A | 0xA8 | 0xAA | 0x88 | 0x8A) {
        return Ok(FakeReply::default());
    }
    let (lba, n) = lba_len(c);
    let mut d = Vec::new();
    for b in 0..u64::from(n) {
        d.extend((0..512u64).map(|i| u8::try_from((lba + b + i) % 256).unwrap()));
    }
    Ok(FakeReply::good(d))
}

#[test]
fn reads_larger_than_blksectget_are_split_with_patched_cdbs() {
    // BLKSECTGET: 4 KiB = 8 blocks of 512.
    let (fake, lu) = open(
        FakeSg::new(model(512, 0, pattern_reply)).with_max_transfer(4096),
        cfg(),
    );
    assert_eq!(lu.block_size(), Some(512));
    assert_eq!(lu.max_transfer_bytes(), Some(4096));
    // READ(10), FUA, LBA 0x100, 20 blocks, GROUP NUMBER 3.
    let cdb = [0x28, 0x08, 0, 0, 0x01, 0x00, 0x03, 0x00, 20, 0];
    let (o, d) = run(&lu, &node_a(), &cdb, &[], 20 * 512);
    let r = completed(&o);
    assert_eq!((r.status, r.data_in_len), (Status::Good, 20 * 512));
    let mut expect = Vec::new();
    for b in 0..20u64 {
        expect.extend((0..512u64).map(|i| u8::try_from((0x100 + b + i) % 256).unwrap()));
    }
    assert_eq!(d, expect);
    let cdbs: Vec<Vec<u8>> = fake.calls().into_iter().map(|c| c.cdb).collect();
    assert_eq!(
        cdbs,
        vec![
            vec![0x28, 0x08, 0, 0, 0x01, 0x00, 0x03, 0x00, 8, 0], // LBA 0x100, 8 blocks
            vec![0x28, 0x08, 0, 0, 0x01, 0x08, 0x03, 0x00, 8, 0], // LBA 0x108, 8 blocks
            vec![0x28, 0x08, 0, 0, 0x01, 0x10, 0x03, 0x00, 4, 0], // LBA 0x110, 4 blocks
        ]
    );
}

#[test]
fn writes_are_split_by_vpd_b0_and_keep_their_flags() {
    // VPD B0 says 4 blocks (2 KiB) even though BLKSECTGET allows 64 KiB.
    let written = Arc::new(Mutex::new(Vec::<(Vec<u8>, Vec<u8>)>::new()));
    let w2 = written.clone();
    let (_, lu) = open(
        FakeSg::new(model(512, 4, move |c| {
            w2.lock().unwrap().push((c.cdb.clone(), c.data_out.clone()));
            Ok(FakeReply::default())
        }))
        .with_max_transfer(65536),
        cfg(),
    );
    assert_eq!(lu.max_transfer_bytes(), Some(2048));
    // WRITE(16), FUA, LBA 0x1_0000_0002, 6 blocks.
    let cdb = [0x8A, 0x08, 0, 0, 0, 0x01, 0, 0, 0, 0x02, 0, 0, 0, 6, 0, 0];
    let data: Vec<u8> = (0..6 * 512u32)
        .map(|i| u8::try_from(i / 512).unwrap())
        .collect();
    let (o, _) = run(&lu, &node_a(), &cdb, &data, 0);
    assert_eq!(completed(&o).data_out_len, 6 * 512);
    let w = written.lock().unwrap();
    assert_eq!(w.len(), 2);
    assert_eq!(
        w[0].0,
        vec![0x8A, 0x08, 0, 0, 0, 0x01, 0, 0, 0, 0x02, 0, 0, 0, 4, 0, 0]
    );
    assert_eq!(
        w[1].0,
        vec![0x8A, 0x08, 0, 0, 0, 0x01, 0, 0, 0, 0x06, 0, 0, 0, 2, 0, 0]
    );
    assert_eq!(w[0].1, data[..2048].to_vec());
    assert_eq!(w[1].1, data[2048..].to_vec());
}

#[test]
fn a_failing_chunk_stops_the_split_with_its_sense_and_summed_residual() {
    let sense = vec![
        0xF0, 0, 0x03, 0, 0, 0, 0x0A, 10, 0, 0, 0, 0, 0x11, 0x00, 0, 0, 0,
        0, // 3/11/00 at LBA 10
    ];
    let s2 = sense.clone();
    let (fake, lu) = open(
        FakeSg::new(model(512, 0, move |c| {
            let (lba, _) = lba_len(c);
            if lba == 8 {
                // The second chunk reads 2 blocks, then fails.
                Ok(FakeReply {
                    status: 0x02,
                    sense: s2.clone(),
                    data_in: vec![0x55; 1024],
                    ..Default::default()
                })
            } else {
                pattern_reply(c)
            }
        }))
        .with_max_transfer(4096),
        cfg(),
    );
    // READ(12) LBA 0, 24 blocks: chunks at 0 and 8; the third never goes.
    let cdb = [0xA8, 0, 0, 0, 0, 0, 0, 0, 0, 24, 0, 0];
    let (o, d) = run(&lu, &node_a(), &cdb, &[], 24 * 512);
    let r = completed(&o);
    assert_eq!(r.status, Status::CheckCondition);
    assert_eq!(r.sense, sense);
    assert_eq!(r.data_in_len, 8 * 512 + 1024);
    assert_eq!(d.len(), 8 * 512 + 1024);
    let cdbs: Vec<Vec<u8>> = fake.calls().into_iter().map(|c| c.cdb).collect();
    assert_eq!(
        cdbs,
        vec![
            vec![0xA8, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0],
            vec![0xA8, 0, 0, 0, 0, 8, 0, 0, 0, 8, 0, 0],
        ]
    );
}

#[test]
fn a_guest_buffer_shorter_than_the_transfer_is_an_overrun() {
    let (fake, lu) = open(FakeSg::new(model(512, 0, pattern_reply)), cfg());
    // READ(10) LBA 0, 4 blocks into a 1024-byte buffer.
    let (o, _) = run(
        &lu,
        &node_a(),
        &[0x28, 0, 0, 0, 0, 0, 0, 0, 4, 0],
        &[],
        1024,
    );
    assert_eq!(o.virtio_response(), VirtioResponse::Overrun);
    assert!(fake.calls().is_empty());
    let r = o.into_response();
    assert_eq!(r.status, Status::CheckCondition);
    assert_eq!(
        r.sense,
        vec![0x70, 0, 0x0B, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x4B, 0x00, 0, 0, 0, 0]
    );
}

/// Every host byte class, the driver timeout, and the errno classes.
#[test]
fn host_and_driver_status_classes_map_to_retryable_virtio_responses() {
    type Case = (u16, u16, HostFailure, VirtioResponse, Status, &'static [u8]);
    let cases: &[Case] = &[
        (
            did::TIME_OUT,
            0,
            HostFailure::Timeout,
            VirtioResponse::Busy,
            Status::CheckCondition,
            &[0x0B, 0x2E, 0x02],
        ),
        (
            0,
            DRIVER_TIMEOUT,
            HostFailure::Timeout,
            VirtioResponse::Busy,
            Status::CheckCondition,
            &[0x0B, 0x2E, 0x02],
        ),
        (
            did::BUS_BUSY,
            0,
            HostFailure::Busy,
            VirtioResponse::Busy,
            Status::Busy,
            &[],
        ),
        (
            did::SOFT_ERROR,
            0,
            HostFailure::Busy,
            VirtioResponse::Busy,
            Status::Busy,
            &[],
        ),
        (
            did::IMM_RETRY,
            0,
            HostFailure::Busy,
            VirtioResponse::Busy,
            Status::Busy,
            &[],
        ),
        (
            did::REQUEUE,
            0,
            HostFailure::Busy,
            VirtioResponse::Busy,
            Status::Busy,
            &[],
        ),
        (
            did::RESET,
            0,
            HostFailure::Reset,
            VirtioResponse::Reset,
            Status::CheckCondition,
            &[0x06, 0x29, 0x00],
        ),
        (
            did::ABORT,
            0,
            HostFailure::Aborted,
            VirtioResponse::Aborted,
            Status::CheckCondition,
            &[0x0B, 0x00, 0x00],
        ),
        (
            did::NO_CONNECT,
            0,
            HostFailure::TransportFailure,
            VirtioResponse::TransportFailure,
            Status::CheckCondition,
            &[0x0B, 0x08, 0x00],
        ),
        (
            did::TRANSPORT_DISRUPTED,
            0,
            HostFailure::TransportFailure,
            VirtioResponse::TransportFailure,
            Status::CheckCondition,
            &[0x0B, 0x08, 0x00],
        ),
        (
            did::TRANSPORT_FAILFAST,
            0,
            HostFailure::TransportFailure,
            VirtioResponse::TransportFailure,
            Status::CheckCondition,
            &[0x0B, 0x08, 0x00],
        ),
        (
            did::TRANSPORT_MARGINAL,
            0,
            HostFailure::TransportFailure,
            VirtioResponse::TransportFailure,
            Status::CheckCondition,
            &[0x0B, 0x08, 0x00],
        ),
        (
            did::BAD_TARGET,
            0,
            HostFailure::BadTarget,
            VirtioResponse::BadTarget,
            Status::CheckCondition,
            &[0x04, 0x3E, 0x01],
        ),
        (
            did::TARGET_FAILURE,
            0,
            HostFailure::TargetFailure,
            VirtioResponse::TargetFailure,
            Status::CheckCondition,
            &[0x04, 0x44, 0x00],
        ),
        (
            did::NEXUS_FAILURE,
            0,
            HostFailure::NexusFailure,
            VirtioResponse::NexusFailure,
            Status::CheckCondition,
            &[0x0B, 0x29, 0x07],
        ),
        (
            did::ERROR,
            0,
            HostFailure::Failure,
            VirtioResponse::Failure,
            Status::CheckCondition,
            &[0x0B, 0x00, 0x06],
        ),
        (
            did::PARITY,
            0,
            HostFailure::Failure,
            VirtioResponse::Failure,
            Status::CheckCondition,
            &[0x0B, 0x00, 0x06],
        ),
        (
            did::BAD_INTR,
            0,
            HostFailure::Failure,
            VirtioResponse::Failure,
            Status::CheckCondition,
            &[0x0B, 0x00, 0x06],
        ),
        (
            did::PASSTHROUGH,
            0,
            HostFailure::Failure,
            VirtioResponse::Failure,
            Status::CheckCondition,
            &[0x0B, 0x00, 0x06],
        ),
        (
            did::ALLOC_FAILURE,
            0,
            HostFailure::Failure,
            VirtioResponse::Failure,
            Status::CheckCondition,
            &[0x0B, 0x00, 0x06],
        ),
        (
            did::MEDIUM_ERROR,
            0,
            HostFailure::Failure,
            VirtioResponse::Failure,
            Status::CheckCondition,
            &[0x0B, 0x00, 0x06],
        ),
        (
            0x7F,
            0,
            HostFailure::Failure,
            VirtioResponse::Failure,
            Status::CheckCondition,
            &[0x0B, 0x00, 0x06],
        ),
        (
            0,
            0x01,
            HostFailure::Busy,
            VirtioResponse::Busy,
            Status::Busy,
            &[],
        ), // DRIVER_BUSY
        (
            0,
            0x04,
            HostFailure::Failure,
            VirtioResponse::Failure,
            Status::CheckCondition,
            &[0x0B, 0x00, 0x06],
        ), // DRIVER_ERROR
        (
            0,
            0x07,
            HostFailure::Failure,
            VirtioResponse::Failure,
            Status::CheckCondition,
            &[0x0B, 0x00, 0x06],
        ), // DRIVER_HARD
    ];
    for &(host, driver, failure, virtio, status, kcq) in cases {
        let (_, lu) = open(
            FakeSg::new(model(512, 0, move |_| {
                Ok(FakeReply {
                    host_status: host,
                    driver_status: driver,
                    data_in: vec![0xEE; 512],
                    ..Default::default()
                })
            })),
            PassthroughConfig {
                block_size: Some(512),
                ..cfg()
            },
        );
        let (o, d) = run(&lu, &node_a(), &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[], 512);
        let what = format!("host {host:#x} driver {driver:#x}");
        match &o {
            PassthroughOutcome::HostFailed {
                failure: f,
                detail,
                data_in_len,
                ..
            } => {
                assert_eq!(*f, failure, "{what}");
                assert_eq!(*detail, HostDetail::Status { host, driver }, "{what}");
                assert_eq!(*data_in_len, 0, "{what}");
            }
            other => panic!("{what}: {other:?}"),
        }
        assert!(d.is_empty(), "{what}: no data from a failed command");
        assert_eq!(o.virtio_response(), virtio, "{what}");
        let r = o.into_response();
        assert_eq!(r.status, status, "{what}");
        assert_ne!(r.status, Status::Good, "{what}");
        if kcq.is_empty() {
            assert!(r.sense.is_empty(), "{what}");
        } else {
            assert_eq!(
                (r.sense[2], r.sense[12], r.sense[13]),
                (kcq[0], kcq[1], kcq[2]),
                "{what}"
            );
        }
    }
}

/// What the transport gets from `execute` (the ScsiTarget / LogicalUnit
/// path): a host failure is `Err(TransportError::Delivery)` naming it, so
/// that virtio-scsi answers with its own response code (BUSY for a timeout,
/// RESET, ...) instead of a made-up SCSI status; a device answer, even a
/// CHECK CONDITION or RESERVATION CONFLICT, stays `Ok` byte for byte.
#[test]
fn execute_reports_host_failures_as_service_delivery_failures() {
    use scsi::emulated::{EmulatedTarget, LogicalUnit};
    use scsi::target::{ScsiTarget, TransportError};
    use scsi::DeliveryFailure;
    let cases: &[(u16, i32, Option<DeliveryFailure>)] = &[
        (did::TIME_OUT, 0, Some(DeliveryFailure::Timeout)),
        (did::RESET, 0, Some(DeliveryFailure::Reset)),
        (did::BUS_BUSY, 0, Some(DeliveryFailure::Busy)),
        (
            did::TRANSPORT_DISRUPTED,
            0,
            Some(DeliveryFailure::TransportFailure),
        ),
        (0, libc::ENODEV, Some(DeliveryFailure::BadTarget)),
        (0, libc::EIO, Some(DeliveryFailure::Failure)),
        (0, 0, None),
    ];
    for &(host, errno, want) in cases {
        let (_, lu) = open(
            FakeSg::new(model(512, 0, move |_| {
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(errno));
                }
                Ok(FakeReply {
                    host_status: host,
                    // RESERVATION CONFLICT from the device when the host path is fine.
                    status: if host == 0 { 0x18 } else { 0 },
                    data_in: vec![0xEE; 512],
                    ..Default::default()
                })
            })),
            PassthroughConfig {
                block_size: Some(512),
                ..cfg()
            },
        );
        let target = EmulatedTarget::new()
            .with_lun(0, Arc::new(lu) as Arc<dyn LogicalUnit>)
            .unwrap();
        let n = node_a();
        let mut reader = Cursor::new(Vec::new());
        let mut sink: Vec<u8> = Vec::new();
        let req = Request {
            nexus: &n,
            lun: 0,
            tag: 9,
            attr: TaskAttr::Simple,
            // READ(10) LBA 0, 1 block
            cdb: &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        };
        let r = target.execute(
            &req,
            DataOut {
                reader: &mut reader,
                len: 0,
            },
            DataIn {
                writer: &mut sink,
                len: 512,
            },
        );
        let what = format!("host {host:#x} errno {errno}");
        match (want, r) {
            (
                Some(w),
                Err(TransportError::Delivery {
                    failure,
                    data_in_len,
                    data_out_len,
                }),
            ) => {
                assert_eq!((failure, data_in_len, data_out_len), (w, 0, 0), "{what}");
                assert!(sink.is_empty(), "{what}");
            }
            (None, Ok(r)) => {
                assert_eq!(
                    (r.status, r.sense.len()),
                    (Status::ReservationConflict, 0),
                    "{what}"
                );
            }
            (w, r) => panic!("{what}: expected {w:?}, got {r:?}"),
        }
    }
}

#[test]
fn host_errnos_never_become_good() {
    let cases: &[(i32, Option<HostFailure>, VirtioResponse, Status)] = &[
        (
            libc::EIO,
            Some(HostFailure::Failure),
            VirtioResponse::Failure,
            Status::CheckCondition,
        ),
        (
            libc::ENODEV,
            Some(HostFailure::DeviceGone),
            VirtioResponse::BadTarget,
            Status::CheckCondition,
        ),
        (
            libc::ENXIO,
            Some(HostFailure::DeviceGone),
            VirtioResponse::BadTarget,
            Status::CheckCondition,
        ),
        (
            libc::EAGAIN,
            Some(HostFailure::Busy),
            VirtioResponse::Busy,
            Status::Busy,
        ),
        (
            libc::EINTR,
            Some(HostFailure::Busy),
            VirtioResponse::Busy,
            Status::Busy,
        ),
        (
            libc::ENOMEM,
            Some(HostFailure::Busy),
            VirtioResponse::Busy,
            Status::Busy,
        ),
        (
            libc::ETIMEDOUT,
            Some(HostFailure::Timeout),
            VirtioResponse::Busy,
            Status::CheckCondition,
        ),
        (
            libc::EINVAL,
            Some(HostFailure::Failure),
            VirtioResponse::Failure,
            Status::CheckCondition,
        ),
        // sg queue full: TASK SET FULL; kernel command filter: INVALID OPCODE.
        (libc::EDOM, None, VirtioResponse::Ok, Status::TaskSetFull),
        (
            libc::EPERM,
            None,
            VirtioResponse::Ok,
            Status::CheckCondition,
        ),
    ];
    for &(errno, failure, virtio, status) in cases {
        let (_, lu) = open(
            FakeSg::new(model(512, 0, move |_| {
                Err(io::Error::from_raw_os_error(errno))
            })),
            PassthroughConfig {
                block_size: Some(512),
                ..cfg()
            },
        );
        let (o, _) = run(&lu, &node_a(), &[0x00, 0, 0, 0, 0, 0], &[], 0);
        if let Some(f) = failure {
            assert_eq!(
                o,
                PassthroughOutcome::HostFailed {
                    failure: f,
                    detail: HostDetail::Errno(errno),
                    data_in_len: 0,
                    data_out_len: 0
                },
                "errno {errno}"
            );
        }
        assert_eq!(o.virtio_response(), virtio, "errno {errno}");
        let r = o.into_response();
        assert_eq!(r.status, status, "errno {errno}");
        if errno == libc::EPERM {
            assert_eq!(r.sense, INVALID_OPCODE_SENSE.to_vec());
        }
    }
}

#[test]
fn the_configured_timeout_goes_to_sg_io_and_a_timeout_is_retried() {
    let (fake, lu) = open(
        FakeSg::new(model(512, 0, |_| Ok(FakeReply::host(did::TIME_OUT)))),
        PassthroughConfig {
            timeout_ms: 12_345,
            ..cfg()
        },
    );
    let (o, _) = run(&lu, &node_a(), &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0); // SYNC CACHE(10)
    assert_eq!(o.virtio_response(), VirtioResponse::Busy);
    assert_eq!(
        o.into_response().sense,
        vec![0x70, 0, 0x0B, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x2E, 0x02, 0, 0, 0, 0]
    );
    assert_eq!(fake.calls()[0].timeout_ms, 12_345);
}

#[test]
fn the_filter_blocks_bricking_and_wiping_commands_by_default() {
    let (fake, lu) = open(
        FakeSg::new(model(512, 0, |_| Ok(FakeReply::default()))),
        cfg(),
    );
    let blocked: &[&[u8]] = &[
        &[0x04, 0x10, 0, 0, 0, 0],                   // FORMAT UNIT, FMTDATA
        &[0x48, 0x02, 0, 0, 0, 0, 0, 0, 0, 0],       // SANITIZE, BLOCK ERASE
        &[0xB5, 0xEF, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], // SECURITY PROTOCOL OUT
        &[0x85, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xF4, 0], // ATA PT(16) SECURITY ERASE
        &[0xA1, 0x08, 0, 0, 0, 0, 0, 0, 0xF4, 0, 0, 0], // ATA PT(12)
        &[0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], // SET TARGET PORT GROUPS
        &[0x1D, 0x04, 0, 0, 0, 0],                   // SEND DIAGNOSTIC, SELFTEST
        &[0x07, 0, 0, 0, 0, 0],                      // REASSIGN BLOCKS
        &[0x3F, 0, 0, 0, 0, 0, 0, 0, 0, 0],          // WRITE LONG(10)
        &[0x83, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], // POPULATE TOKEN
        &[0xC1, 0, 0, 0, 0, 0, 0, 0, 0, 0],          // vendor specific
    ];
    for cdb in blocked {
        let (o, _) = run(&lu, &node_a(), cdb, &[], 0);
        let r = completed(&o);
        assert_eq!(r.status, Status::CheckCondition, "{cdb:02x?}");
        assert_eq!(r.sense, INVALID_OPCODE_SENSE.to_vec(), "{cdb:02x?}");
    }
    // WRITE BUFFER mode 05h (download microcode, save, activate): INVALID
    // FIELD IN CDB pointing at byte 1, bit 4 (the MODE field).
    let microcode_sense = vec![
        0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0x00, 0, // 5/24/00
        0xCC, 0x00, 0x01, // SKSV | C/D | BPV | bit 4, byte 1
    ];
    for mode in [0x04, 0x05, 0x06, 0x07, 0x0D, 0x0E, 0x0F] {
        let (o, _) = run(
            &lu,
            &node_a(),
            &[0x3B, mode, 0, 0, 0, 0, 0, 0x10, 0, 0],
            &[0; 4096],
            0,
        );
        assert_eq!(completed(&o).sense, microcode_sense, "mode {mode:#x}");
    }
    // WRITE LONG(16) (SERVICE ACTION OUT(16) / 11h) likewise.
    let (o, _) = run(
        &lu,
        &node_a(),
        &[0x9F, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[],
        0,
    );
    assert_eq!(completed(&o).sense, microcode_sense);
    assert!(
        fake.calls().is_empty(),
        "nothing blocked reached the device"
    );
    // WRITE BUFFER mode 02h (data) is harmless and goes through.
    let (o, _) = run(
        &lu,
        &node_a(),
        &[0x3B, 0x02, 0, 0, 0, 0, 0, 0, 0x10, 0],
        &[0xAB; 16],
        0,
    );
    assert_eq!(completed(&o).status, Status::Good);
    assert_eq!(fake.calls().len(), 1);
}

#[test]
fn the_filter_allow_and_deny_lists() {
    let allow: OpcodeList = "0x04+3b".parse().unwrap();
    let deny: OpcodeList = "15,0x55".parse().unwrap();
    assert!("zz".parse::<OpcodeList>().is_err());
    let (fake, lu) = open(
        FakeSg::new(model(512, 0, |_| Ok(FakeReply::default()))),
        PassthroughConfig {
            filter: FilterConfig {
                allow: allow.0,
                deny: deny.0,
            },
            ..cfg()
        },
    );
    // Allowed now: FORMAT UNIT and WRITE BUFFER microcode download.
    let (o, _) = run(&lu, &node_a(), &[0x04, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(completed(&o).status, Status::Good);
    let (o, _) = run(
        &lu,
        &node_a(),
        &[0x3B, 0x05, 0, 0, 0, 0, 0, 0, 0x04, 0],
        &[1, 2, 3, 4],
        0,
    );
    assert_eq!(completed(&o).status, Status::Good);
    assert_eq!(fake.calls().len(), 2);
    // Denied now: MODE SELECT(6)/(10).
    let (o, _) = run(&lu, &node_a(), &[0x15, 0x10, 0, 0, 12, 0], &[0; 12], 0);
    assert_eq!(completed(&o).sense, INVALID_OPCODE_SENSE.to_vec());
    assert_eq!(fake.calls().len(), 2);
}

#[test]
fn report_luns_is_answered_from_our_lun_map() {
    let (fake, lu) = open(
        FakeSg::new(model(512, 0, |_| Ok(FakeReply::default()))),
        PassthroughConfig {
            lun_map: Some(LunMap::new(vec![300, 0, 2])),
            ..cfg()
        },
    );
    let (o, d) = run(
        &lu,
        &node_a(),
        &[0xA0, 0, 0x00, 0, 0, 0, 0, 0, 0x01, 0, 0, 0],
        &[],
        256,
    );
    assert_eq!(
        d,
        vec![
            0, 0, 0, 24, 0, 0, 0, 0, // LUN LIST LENGTH 24
            0, 0, 0, 0, 0, 0, 0, 0, // LUN 0
            0, 2, 0, 0, 0, 0, 0, 0, // LUN 2, peripheral addressing
            0x41, 0x2C, 0, 0, 0, 0, 0, 0, // LUN 300, flat addressing
        ]
    );
    assert_eq!(completed(&o).data_in_len, 32);
    // ALLOCATION LENGTH 16: truncated, LUN LIST LENGTH still says 24.
    let (_, d) = run(
        &lu,
        &node_a(),
        &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0],
        &[],
        256,
    );
    assert_eq!(d, vec![0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    // ALLOCATION LENGTH 8 (< 16): INVALID FIELD IN CDB at byte 6.
    let (o, _) = run(
        &lu,
        &node_a(),
        &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0],
        &[],
        256,
    );
    assert_eq!(
        completed(&o).sense,
        vec![0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0xC0, 0, 6]
    );
    assert!(
        fake.calls().is_empty(),
        "REPORT LUNS never reaches the device"
    );
}

#[test]
fn inquiry_and_vpd_identity_rewriting() {
    let (_, lu) = open(
        FakeSg::new(model(512, 0, |c| match (c.cdb[1], c.cdb[2]) {
            // Supported VPD pages of the device: 00, 83, B0.
            (1, 0x00) => Ok(FakeReply::good(vec![0, 0, 0, 3, 0x00, 0x83, 0xB0])),
            _ => Ok(FakeReply::default()),
        })),
        PassthroughConfig {
            identity: Some(Identity {
                vendor: Some("ARBITER".into()),
                product: Some("cluster-disk".into()),
                revision: None,
                serial: Some("SN42".into()),
                naa: Some(0x6001_4050_0000_0042),
            }),
            ..cfg()
        },
    );
    // Standard INQUIRY, allocation length 36.
    let (_, d) = run(&lu, &node_a(), &[0x12, 0, 0, 0, 36, 0], &[], 36);
    let mut expect = std_inquiry();
    expect[8..16].copy_from_slice(b"ARBITER ");
    expect[16..32].copy_from_slice(b"cluster-disk    ");
    assert_eq!(d, expect);
    // VPD 0x80.
    let (_, d) = run(&lu, &node_a(), &[0x12, 1, 0x80, 0, 0xFF, 0], &[], 255);
    assert_eq!(d, vec![0, 0x80, 0, 4, b'S', b'N', b'4', b'2']);
    // VPD 0x83: NAA designator + T10 vendor ID designator.
    let (_, d) = run(&lu, &node_a(), &[0x12, 1, 0x83, 0, 0xFF, 0], &[], 255);
    let mut e = vec![0, 0x83, 0, 28];
    e.extend_from_slice(&[
        0x01, 0x03, 0x00, 0x08, 0x60, 0x01, 0x40, 0x50, 0, 0, 0, 0x42,
    ]);
    e.extend_from_slice(&[0x02, 0x01, 0x00, 12]);
    e.extend_from_slice(b"ARBITER SN42");
    assert_eq!(d, e);
    // VPD 0x00 gains 0x80.
    let (_, d) = run(&lu, &node_a(), &[0x12, 1, 0x00, 0, 0xFF, 0], &[], 255);
    assert_eq!(d, vec![0, 0, 0, 4, 0x00, 0x80, 0x83, 0xB0]);
    // Allocation length 6 truncates an emulated page.
    let (o, d) = run(&lu, &node_a(), &[0x12, 1, 0x83, 0, 6, 0], &[], 255);
    assert_eq!(d, vec![0, 0x83, 0, 28, 0x01, 0x03]);
    assert_eq!(completed(&o).data_in_len, 6);
}

/// MODE SENSE(6) data: header, one 8-byte block descriptor, pages 08h
/// (caching, 20 bytes), 0Ah (control, 12 bytes), 1Ch (IE, 12 bytes).
fn mode_data() -> Vec<u8> {
    let mut d = vec![0, 0, 0x10, 8, 0, 0, 0, 0, 0, 0, 2, 0];
    d.extend_from_slice(&[
        0x88, 18, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    d.extend_from_slice(&[0x8A, 10, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    d.extend_from_slice(&[0x9C, 10, 0x08, 0x06, 0, 0, 0, 0, 0, 0, 0, 0]);
    d[0] = u8::try_from(d.len() - 1).unwrap();
    d
}

#[test]
fn mode_page_masking() {
    let (fake, lu) = open(
        FakeSg::new(model(512, 0, |c| match c.cdb[0] {
            0x1A => Ok(FakeReply::good(mode_data())),
            _ => Ok(FakeReply::default()),
        })),
        PassthroughConfig {
            mode_mask: Some(ModeMask {
                hide: vec![0x08, 0x1C],
            }),
            ..cfg()
        },
    );
    // MODE SENSE(6), all pages, allocation length 0xFF.
    let (o, d) = run(&lu, &node_a(), &[0x1A, 0, 0x3F, 0, 0xFF, 0], &[], 0xFF);
    assert_eq!(
        d,
        vec![
            23, 0, 0x10, 8, // MODE DATA LENGTH 23, WP clear, DPOFUA, 8-byte descriptor
            0, 0, 0, 0, 0, 0, 2, 0, // block descriptor
            0x8A, 10, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, // control page only
        ]
    );
    assert_eq!(completed(&o).data_in_len, 24);
    // The device was asked for everything (allocation length 0xFF).
    assert_eq!(fake.calls()[0].cdb, vec![0x1A, 0, 0x3F, 0, 0xFF, 0]);
    // MODE SENSE(6) of hidden page 1Ch: INVALID FIELD IN CDB, byte 2 bit 5.
    let (o, _) = run(&lu, &node_a(), &[0x1A, 0, 0x1C, 0, 0xFF, 0], &[], 0xFF);
    assert_eq!(
        completed(&o).sense,
        vec![0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0xCD, 0, 2]
    );
    // MODE SELECT(6) carrying the caching page: INVALID FIELD IN PARAMETER
    // LIST pointing at the page (byte 4, bit 5).
    let params = [
        0, 0, 0, 0, 0x08, 18, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let (o, _) = run(&lu, &node_a(), &[0x15, 0x10, 0, 0, 24, 0], &params, 0);
    assert_eq!(
        completed(&o).sense,
        vec![0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x26, 0, 0, 0x8D, 0, 4]
    );
    assert_eq!(fake.calls().len(), 1, "neither reached the device");
    // MODE SELECT(6) with the control page goes through with its bytes.
    let ok = [0, 0, 0, 0, 0x0A, 10, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let (o, _) = run(&lu, &node_a(), &[0x15, 0x10, 0, 0, 16, 0], &ok, 0);
    assert_eq!(completed(&o).data_out_len, 16);
    assert_eq!(fake.calls()[1].data_out, ok.to_vec());
}

#[test]
fn pr_passthrough_without_cap_sys_rawio_fails_at_open() {
    let fake = Arc::new(FakeSg::new(|_| Ok(FakeReply::default())));
    let err = PassthroughLu::with_transport(
        fake.clone(),
        "/dev/sg3",
        PassthroughConfig {
            has_rawio: Some(false),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, SgioError::NeedsRawIo(_)));
    let msg = err.to_string();
    assert!(msg.contains("/dev/sg3") && msg.contains("CAP_SYS_RAWIO") && msg.contains("pr=helper"));
    assert!(fake.calls().is_empty(), "nothing was sent before failing");
    // pr=helper to a socket nobody listens on fails at open too.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let err = PassthroughLu::with_transport(
        Arc::new(
            FakeSg::new(|_| Ok(FakeReply::default())).with_file(tempfile::tempfile().unwrap()),
        ),
        "/dev/sg3",
        PassthroughConfig {
            pr: PrRouting::Helper(sock),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, SgioError::Helper { .. }), "{err}");
    // pr=emulated without a state.
    assert!(matches!(
        PassthroughLu::with_transport(
            Arc::new(FakeSg::new(|_| Ok(FakeReply::default()))),
            "x",
            PassthroughConfig {
                pr: PrRouting::Emulated,
                ..Default::default()
            }
        ),
        Err(SgioError::EmulatedNeedsState)
    ));
}

#[test]
fn pr_routing_parses() {
    assert_eq!(
        "pr=passthrough".parse::<PrRouting>().unwrap(),
        PrRouting::Passthrough
    );
    assert_eq!(
        "emulated".parse::<PrRouting>().unwrap(),
        PrRouting::Emulated
    );
    assert_eq!(
        "pr=helper:/run/qemu-pr-helper.sock"
            .parse::<PrRouting>()
            .unwrap(),
        PrRouting::Helper("/run/qemu-pr-helper.sock".into())
    );
    assert!("pr=helper:relative.sock".parse::<PrRouting>().is_err());
    assert!("pr=magic".parse::<PrRouting>().is_err());
}

#[test]
fn pr_passthrough_sends_pr_in_and_out_to_the_device() {
    let (fake, lu) = open(
        FakeSg::new(model(512, 0, |c| match c.cdb[0] {
            0x5E => Ok(FakeReply::good(vec![
                0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0x11,
            ])),
            _ => Ok(FakeReply::default()),
        })),
        cfg(),
    );
    // PR OUT REGISTER AND IGNORE EXISTING KEY, 24-byte list, SA KEY 0x11.
    let mut params = [0u8; 24];
    params[15] = 0x11;
    let (o, _) = run(
        &lu,
        &node_a(),
        &[0x5F, 0x06, 0, 0, 0, 0, 0, 0, 24, 0],
        &params,
        0,
    );
    assert_eq!(completed(&o).data_out_len, 24);
    // PR IN READ KEYS, allocation length 0x2000.
    let (_, d) = run(
        &lu,
        &node_a(),
        &[0x5E, 0x00, 0, 0, 0, 0, 0, 0x20, 0x00, 0],
        &[],
        0x2000,
    );
    assert_eq!(d, vec![0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0x11]);
    let calls = fake.calls();
    assert_eq!(
        (calls[0].dir, calls[0].data_out.clone()),
        (SgDir::ToDevice, params.to_vec())
    );
    assert_eq!(
        (calls[1].dir, calls[1].dxfer_len),
        (SgDir::FromDevice, 0x2000)
    );
}

/// A reservation state that records what the unit asks of it.
#[derive(Debug, Default)]
struct TestPr {
    holder: Mutex<Option<ItNexus>>,
    log: Mutex<Vec<String>>,
    uas: Mutex<Vec<(ItNexus, Sense)>>,
}

impl Reservations for TestPr {
    fn conflicts(&self, nexus: &ItNexus, access: PrAccess) -> bool {
        let h = self.holder.lock().unwrap();
        h.as_ref().is_some_and(|h| h != nexus) && access != PrAccess::Allowed
    }
    fn reserve_out(&self, nexus: &ItNexus, cdb: &[u8], params: &[u8]) -> PrOutcome {
        self.log
            .lock()
            .unwrap()
            .push(format!("out {cdb:02x?} {params:02x?}"));
        if cdb[1] & 0x1F == 0x01 {
            *self.holder.lock().unwrap() = Some(nexus.clone());
        }
        PrOutcome::good()
    }
    fn reserve_in(&self, _nexus: &ItNexus, _cdb: &[u8]) -> PrOutcome {
        PrOutcome::data(vec![0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0xAA])
    }
    fn scsi2_reserve(&self, _nexus: &ItNexus) -> PrOutcome {
        PrOutcome::conflict()
    }
    fn scsi2_release(&self, _nexus: &ItNexus) -> PrOutcome {
        PrOutcome::good()
    }
    fn take_unit_attentions(&self, nexus: &ItNexus) -> Vec<Sense> {
        let mut u = self.uas.lock().unwrap();
        let (mine, rest): (Vec<_>, Vec<_>) = u.drain(..).partition(|(n, _)| n == nexus);
        *u = rest;
        mine.into_iter().map(|(_, s)| s).collect()
    }
    fn lu_reset(&self) {
        self.log.lock().unwrap().push("lu_reset".into());
    }
    fn nexus_loss(&self, nexus: &ItNexus) {
        self.log.lock().unwrap().push(format!("nexus_loss {nexus}"));
    }
}

#[test]
fn pr_emulated_routes_reservations_to_the_shared_state() {
    let state = Arc::new(TestPr::default());
    let (fake, lu) = open(
        FakeSg::new(model(512, 0, pattern_reply)),
        PassthroughConfig {
            pr: PrRouting::Emulated,
            reservations: Some(state.clone()),
            has_rawio: Some(false), // not needed for pr=emulated
            ..Default::default()
        },
    );
    // Node A: PR OUT RESERVE, type 5 (WE-RO), key 0xAA.
    let mut params = [0u8; 24];
    params[7] = 0xAA;
    let (o, _) = run(
        &lu,
        &node_a(),
        &[0x5F, 0x01, 0x05, 0, 0, 0, 0, 0, 24, 0],
        &params,
        0,
    );
    let r = completed(&o);
    assert_eq!((r.status, r.data_out_len), (Status::Good, 24));
    assert_eq!(
        state.log.lock().unwrap()[0],
        format!(
            "out {:02x?} {:02x?}",
            [0x5F, 0x01, 0x05, 0, 0, 0, 0, 0, 24, 0],
            params
        )
    );
    // PR IN READ KEYS, allocation length 12: truncated.
    let (o, d) = run(&lu, &node_b(), &[0x5E, 0, 0, 0, 0, 0, 0, 0, 12, 0], &[], 64);
    assert_eq!(d, vec![0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0]);
    assert_eq!(completed(&o).data_in_len, 12);
    // Node B's READ conflicts and never reaches the device.
    let (o, _) = run(&lu, &node_b(), &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[], 512);
    assert_eq!(completed(&o).status, Status::ReservationConflict);
    // Node A reads through.
    let (o, _) = run(&lu, &node_a(), &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[], 512);
    assert_eq!(completed(&o).data_in_len, 512);
    // RESERVE(6) goes to the state (which says conflict).
    let (o, _) = run(&lu, &node_b(), &[0x16, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(completed(&o).status, Status::ReservationConflict);
    let cdbs: Vec<u8> = fake.calls().iter().map(|c| c.cdb[0]).collect();
    assert_eq!(cdbs, vec![0x28], "only node A's READ reached the device");
    // A unit attention raised by the state is reported once, fixed format,
    // before the next non-exempt command; INQUIRY is exempt.
    state
        .uas
        .lock()
        .unwrap()
        .push((node_b(), codes::RESERVATIONS_PREEMPTED));
    let (o, _) = run(&lu, &node_b(), &[0x12, 0, 0, 0, 36, 0], &[], 36);
    assert_eq!(completed(&o).status, Status::Good);
    assert_eq!(
        lu.pending_unit_attention(&node_b()),
        Some(codes::RESERVATIONS_PREEMPTED)
    );
    let (o, _) = run(&lu, &node_b(), &[0x00, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(
        completed(&o).sense,
        vec![0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x2A, 0x03, 0, 0, 0, 0]
    );
    assert_eq!(lu.pending_unit_attention(&node_b()), None);
    // TMFs reach the state.
    assert_eq!(
        lu.task_mgmt(&node_b(), TaskMgmt::ItNexusReset),
        TmfResponse::Complete
    );
    assert_eq!(
        lu.task_mgmt(&node_a(), TaskMgmt::LogicalUnitReset),
        TmfResponse::Complete
    );
    assert_eq!(
        lu.task_mgmt(&node_a(), TaskMgmt::QueryAsyncEvent),
        TmfResponse::Succeeded
    );
    let log = state.log.lock().unwrap();
    assert!(log.iter().any(|l| l == "lu_reset"));
    assert!(log
        .iter()
        .any(|l| l.starts_with("nexus_loss naa.5001405000000bbb")));
}

#[test]
fn task_management_without_commands_in_flight() {
    let (_, lu) = open(FakeSg::new(model(512, 0, pattern_reply)), cfg());
    assert_eq!(
        lu.task_mgmt(&node_a(), TaskMgmt::AbortTask(7)),
        TmfResponse::Complete
    );
    assert_eq!(
        lu.task_mgmt(&node_a(), TaskMgmt::QueryTask(7)),
        TmfResponse::Complete
    );
    assert_eq!(
        lu.task_mgmt(&node_a(), TaskMgmt::QueryTaskSet),
        TmfResponse::Complete
    );
    assert_eq!(
        lu.task_mgmt(&node_a(), TaskMgmt::ClearAca),
        TmfResponse::Rejected
    );
    assert_eq!(
        lu.task_mgmt(&node_a(), TaskMgmt::QueryAsyncEvent),
        TmfResponse::Complete
    );
}

#[test]
fn short_and_oversized_cdbs() {
    let (fake, lu) = open(FakeSg::new(model(512, 0, pattern_reply)), cfg());
    let mut reader = Cursor::new(Vec::new());
    let mut sink: Vec<u8> = Vec::new();
    let n = node_a();
    let req = Request {
        nexus: &n,
        lun: 0,
        tag: 1,
        attr: TaskAttr::Simple,
        cdb: &[0x28, 0, 0],
    };
    let e = lu
        .execute(
            &req,
            DataOut {
                reader: &mut reader,
                len: 0,
            },
            DataIn {
                writer: &mut sink,
                len: 0,
            },
        )
        .unwrap_err();
    assert!(matches!(
        e,
        scsi::target::TransportError::CdbTooShort {
            opcode: 0x28,
            got: 3,
            need: 10
        }
    ));
    // A reserved group-3 opcode is refused without reaching the device.
    let (o, _) = run(&lu, &node_a(), &[0x61, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(completed(&o).sense, INVALID_OPCODE_SENSE.to_vec());
    assert!(fake.calls().is_empty());
}

#[test]
fn raised_unit_attentions_and_the_logical_unit_adapter() {
    use scsi::emulated::{EmulatedTarget, LogicalUnit};
    use scsi::target::ScsiTarget;
    let (fake, lu) = open(FakeSg::new(model(512, 0, pattern_reply)), cfg());
    let lu = Arc::new(lu);
    let target = EmulatedTarget::new()
        .with_lun(0, lu.clone() as Arc<dyn LogicalUnit>)
        .unwrap();
    let a = node_a();
    let exec = |cdb: &[u8], in_len: usize| {
        let mut reader = Cursor::new(Vec::new());
        let mut sink: Vec<u8> = Vec::new();
        let req = Request {
            nexus: &a,
            lun: 0,
            tag: 3,
            attr: TaskAttr::Simple,
            cdb,
        };
        let r = target
            .execute(
                &req,
                DataOut {
                    reader: &mut reader,
                    len: 0,
                },
                DataIn {
                    writer: &mut sink,
                    len: in_len,
                },
            )
            .unwrap();
        (r, sink)
    };
    // Through the target: READ(10) LBA 3, 1 block reaches the device.
    let (r, d) = exec(&[0x28, 0, 0, 0, 0, 3, 0, 0, 1, 0], 512);
    assert_eq!((r.status, r.data_in_len), (Status::Good, 512));
    assert_eq!(d[0], 3);
    assert_eq!(fake.calls().len(), 1);
    // A unit attention raised on the unit (e.g. REPORTED LUNS DATA HAS
    // CHANGED) is reported once, before the next non-exempt command,
    // without reaching the device; INQUIRY is exempt and does not clear it.
    LogicalUnit::raise_unit_attention(lu.as_ref(), codes::REPORTED_LUNS_DATA_CHANGED);
    assert_eq!(
        target.pending_unit_attention(&a, 0),
        Some(codes::REPORTED_LUNS_DATA_CHANGED)
    );
    let (r, _) = exec(&[0x12, 0, 0, 0, 36, 0], 36);
    assert_eq!(r.status, Status::Good);
    let (r, _) = exec(&[0x00, 0, 0, 0, 0, 0], 0);
    assert_eq!(
        (r.status, r.sense),
        (
            Status::CheckCondition,
            vec![0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x3F, 0x0E, 0, 0, 0, 0]
        )
    );
    let (r, _) = exec(&[0x00, 0, 0, 0, 0, 0], 0);
    assert_eq!(r.status, Status::Good);
    // 2 INQUIRY/TUR went to the device after the READ; the UA'd TUR did not.
    assert_eq!(
        fake.calls().iter().map(|c| c.cdb[0]).collect::<Vec<_>>(),
        vec![0x28, 0x12, 0x00]
    );
    // I_T NEXUS RESET raises 29/07 for that nexus.
    assert_eq!(
        target.task_mgmt(&a, 0, TaskMgmt::ItNexusReset),
        TmfResponse::Complete
    );
    let (r, _) = exec(&[0x00, 0, 0, 0, 0, 0], 0);
    assert_eq!((r.sense[2], r.sense[12], r.sense[13]), (0x06, 0x29, 0x07));
}

#[test]
fn odd_completions_never_pass_as_good() {
    // A status byte SAM-5 does not define for a device server (22h, the
    // obsolete COMMAND TERMINATED) is a host failure.
    let (_, lu) = open(
        FakeSg::new(model(512, 0, |c| match c.cdb[0] {
            0x00 => Ok(FakeReply::status(0x22, Vec::new())),
            // GOOD status byte but sense collected (an HBA that leaves the
            // status empty): reported as CHECK CONDITION with that sense.
            0x35 => Ok(FakeReply::status(
                0x00,
                vec![
                    0x70, 0, 0x02, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x04, 0x01, 0, 0, 0, 0,
                ],
            )),
            _ => Ok(FakeReply::default()),
        })),
        cfg(),
    );
    let (o, _) = run(&lu, &node_a(), &[0x00, 0, 0, 0, 0, 0], &[], 0); // TEST UNIT READY
    assert_eq!(o.virtio_response(), VirtioResponse::Failure);
    let (o, _) = run(&lu, &node_a(), &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0); // SYNC CACHE(10)
    let r = completed(&o);
    assert_eq!(r.status, Status::CheckCondition);
    assert_eq!(
        r.sense,
        vec![0x70, 0, 0x02, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x04, 0x01, 0, 0, 0, 0]
    );
    // Data in both directions (no VIRTIO_SCSI_F_INOUT) is refused locally.
    let (o, _) = run(&lu, &node_a(), &[0x1C, 0, 0, 0, 16, 0], &[1, 2, 3], 16);
    assert_eq!(o.virtio_response(), VirtioResponse::Failure);
}

#[test]
fn reads_past_the_forms_lba_range_are_not_split() {
    let (fake, lu) = open(
        FakeSg::new(model(512, 0, |_| {
            Ok(FakeReply::status(
                0x02,
                vec![
                    0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0x00, 0, 0, 0, 0,
                ],
            ))
        }))
        .with_max_transfer(4096),
        cfg(),
    );
    // READ(10) LBA FFFFFFF8h, 16 blocks: the last chunk's LBA would not fit
    // 32 bits, so the command goes as it is and the device answers.
    let cdb = [0x28, 0, 0xFF, 0xFF, 0xFF, 0xF8, 0, 0, 16, 0];
    let (o, _) = run(&lu, &node_a(), &cdb, &[], 16 * 512);
    let r = completed(&o);
    assert_eq!((r.status, r.sense[12]), (Status::CheckCondition, 0x21));
    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].cdb, cdb.to_vec());
}

#[test]
fn the_block_size_is_inferred_when_read_capacity_fails() {
    let (fake, lu) = open(
        FakeSg::new(|c| match c.cdb[0] {
            0x28 => pattern_reply(c),
            // INQUIRY, READ CAPACITY: not supported by this "device".
            _ => Ok(FakeReply::status(0x02, INVALID_OPCODE_SENSE.to_vec())),
        })
        .with_max_transfer(1024),
        cfg(),
    );
    assert_eq!(lu.block_size(), None);
    // READ(10) LBA 0, 4 blocks into 2048 bytes: 512-byte blocks, 2 chunks.
    let (o, d) = run(
        &lu,
        &node_a(),
        &[0x28, 0, 0, 0, 0, 0, 0, 0, 4, 0],
        &[],
        2048,
    );
    assert_eq!(completed(&o).data_in_len, 2048);
    assert_eq!(d[512], 1);
    let cdbs: Vec<Vec<u8>> = fake.calls().into_iter().map(|c| c.cdb).collect();
    assert_eq!(
        cdbs,
        vec![
            vec![0x28, 0, 0, 0, 0, 0, 0, 0, 2, 0],
            vec![0x28, 0, 0, 0, 0, 2, 0, 0, 2, 0],
        ]
    );
}

#[test]
fn config_options() {
    let mut c = PassthroughConfig::default();
    for (k, v) in [
        ("pr", "helper:/run/arbiter/pr.sock"),
        ("allow", "3b"),
        ("deny", "15+55"),
        ("hide-mode-pages", "08+1c"),
        ("vendor", "ARBITER"),
        ("product", "shared0"),
        ("serial", "SN 1"),
        ("naa", "naa.6001405000000042"),
        ("timeout-ms", "60000"),
        ("max-transfer", "1048576"),
        ("block-size", "4096"),
    ] {
        c.set(k, v).unwrap_or_else(|e| panic!("{k}={v}: {e}"));
    }
    assert_eq!(c.pr, PrRouting::Helper("/run/arbiter/pr.sock".into()));
    assert_eq!(
        c.filter,
        FilterConfig {
            allow: vec![0x3B],
            deny: vec![0x15, 0x55]
        }
    );
    assert_eq!(
        c.mode_mask,
        Some(ModeMask {
            hide: vec![0x08, 0x1C]
        })
    );
    let id = c.identity.clone().unwrap();
    assert_eq!(
        (
            id.vendor.as_deref(),
            id.product.as_deref(),
            id.serial.as_deref(),
            id.naa
        ),
        (
            Some("ARBITER"),
            Some("shared0"),
            Some("SN 1"),
            Some(0x6001_4050_0000_0042)
        )
    );
    assert_eq!(
        (c.timeout_ms, c.max_transfer_bytes, c.block_size),
        (60000, Some(1 << 20), Some(4096))
    );
    for (k, v) in [
        ("vendor", "TOO-LONG-VENDOR"),
        ("naa", "1234"),
        ("naa", "7001405000000042"),
        ("hide-mode-pages", "3f"),
        ("timeout-ms", "soon"),
        ("pr", "helper:rel"),
        ("colour", "red"),
    ] {
        assert!(c.set(k, v).is_err(), "{k}={v}");
    }
}

#[test]
fn pr_emulated_with_the_shared_pr_state_of_two_processes() {
    use scsi::pr::shared::SharedPr;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("shared0.pr");
    // Two Arbiter processes on one host share a raw device: two units, two
    // transports, one PR state file opened separately by each.
    let mk = || {
        let state: Arc<dyn Reservations> = Arc::new(SharedPr::open_unshared(&base).unwrap());
        open(
            FakeSg::new(model(512, 0, pattern_reply)),
            PassthroughConfig {
                pr: PrRouting::Emulated,
                reservations: Some(state),
                has_rawio: Some(false),
                ..Default::default()
            },
        )
    };
    let (fa, la) = mk();
    let (fb, lb) = mk();
    let (a, b) = (node_a(), node_b());
    // Clear the power-on unit attentions a new nexus may report.
    for (lu, n) in [(&la, &a), (&lb, &b)] {
        for _ in 0..3 {
            run(lu, n, &[0x00, 0, 0, 0, 0, 0], &[], 0);
        }
    }
    let key_params = |key: u64, sa_key: u64| {
        let mut p = [0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes()); // RESERVATION KEY
        p[8..16].copy_from_slice(&sa_key.to_be_bytes()); // SERVICE ACTION RESERVATION KEY
        p
    };
    let good = |o: PassthroughOutcome| assert_eq!(completed(&o).status, Status::Good, "{o:?}");
    // REGISTER AND IGNORE EXISTING KEY: A 0xA1, B 0xB1.
    let reg = [0x5F, 0x06, 0x00, 0, 0, 0, 0, 0, 24, 0];
    good(run(&la, &a, &reg, &key_params(0, 0xA1), 0).0);
    good(run(&lb, &b, &reg, &key_params(0, 0xB1), 0).0);
    // A: RESERVE, WRITE EXCLUSIVE (type 1).
    good(
        run(
            &la,
            &a,
            &[0x5F, 0x01, 0x01, 0, 0, 0, 0, 0, 24, 0],
            &key_params(0xA1, 0),
            0,
        )
        .0,
    );
    fa.clear_calls();
    fb.clear_calls();
    // B: WRITE(10) conflicts without reaching the device; READ(10) passes.
    let (o, _) = run(&lb, &b, &[0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[0u8; 512], 0);
    assert_eq!(completed(&o).status, Status::ReservationConflict);
    assert!(fb.calls().is_empty());
    let (o, _) = run(&lb, &b, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[], 512);
    assert_eq!(completed(&o).data_in_len, 512);
    assert_eq!(fb.calls().len(), 1);
    // A writes.
    let (o, _) = run(&la, &a, &[0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[0u8; 512], 0);
    assert_eq!(completed(&o).data_out_len, 512);
    // A: PREEMPT B (SA 04h, type 1, SA key 0xB1): B's next command reports
    // REGISTRATIONS PREEMPTED, then B is no longer a registrant.
    good(
        run(
            &la,
            &a,
            &[0x5F, 0x04, 0x01, 0, 0, 0, 0, 0, 24, 0],
            &key_params(0xA1, 0xB1),
            0,
        )
        .0,
    );
    let (o, _) = run(&lb, &b, &[0x00, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(
        completed(&o).sense,
        vec![0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x2A, 0x05, 0, 0, 0, 0]
    );
    // READ KEYS from B (allocation length 32): one key left, 0xA1.
    let (o, d) = run(&lb, &b, &[0x5E, 0x00, 0, 0, 0, 0, 0, 0, 32, 0], &[], 32);
    assert_eq!(completed(&o).status, Status::Good);
    assert_eq!(&d[4..], &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0xA1]);
    // PR commands never reached either device.
    assert!(fa
        .calls()
        .iter()
        .chain(fb.calls().iter())
        .all(|c| c.cdb[0] != 0x5E && c.cdb[0] != 0x5F));
}

#[test]
fn request_sense_reports_and_clears_our_unit_attention() {
    let (fake, lu) = open(
        FakeSg::new(model(512, 0, |_| {
            Ok(FakeReply::good(vec![0x70, 0, 0, 0, 0, 0, 0, 10]))
        })),
        cfg(),
    );
    let a = node_a();
    run(&lu, &a, &[0x00, 0, 0, 0, 0, 0], &[], 0); // the nexus is now known
    lu.raise_unit_attention(codes::MODE_PARAMETERS_CHANGED);
    fake.clear_calls();
    // REQUEST SENSE, allocation length 252: the unit attention as data.
    let (o, d) = run(&lu, &a, &[0x03, 0, 0, 0, 252, 0], &[], 252);
    assert_eq!(completed(&o).status, Status::Good);
    assert_eq!(
        d,
        vec![0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x2A, 0x01, 0, 0, 0, 0]
    );
    assert!(fake.calls().is_empty());
    // Cleared: the next REQUEST SENSE goes to the device.
    let (_, d) = run(&lu, &a, &[0x03, 0, 0, 0, 252, 0], &[], 252);
    assert_eq!(d, vec![0x70, 0, 0, 0, 0, 0, 0, 10]);
    assert_eq!(fake.calls().len(), 1);
    // And TEST UNIT READY is GOOD.
    let (o, _) = run(&lu, &a, &[0x00, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(completed(&o).status, Status::Good);
}
