//! Property tests over the CDB parser and dispatcher: any CDB, any data-out,
//! any allocation length and data-in size, on a shared target (so state such
//! as unit attentions, mode pages and echo buffers carries across cases).
//! Bounded case counts keep it to seconds in CI.

mod disk_common;

use disk_common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use scsi::cdb::{self, OPCODES};
use scsi::pr::Reservations;
use scsi::target::{TaskAttr, TaskMgmt};
use scsi::{DataIn, DataOut, Disk, EmulatedTarget, Request, ScsiTarget, Status, TransportError};
use std::sync::Arc;

/// Case count: the CI default, or `SCSI_FUZZ_CASES` for longer local runs.
fn cases(default: u32) -> u32 {
    std::env::var("SCSI_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn target() -> EmulatedTarget {
    let pr: Arc<dyn Reservations> = Arc::new(FakePr::default());
    let small = Arc::new(scsi::MemBackend::from_vec(pattern(64 << 10, 512)));
    let mut cfg4k = config();
    cfg4k.block_size = 4096;
    cfg4k.physical_block_exponent = 0;
    let big = Arc::new(scsi::MemBackend::new(256 << 10));
    EmulatedTarget::new()
        .with_lun(0, Arc::new(Disk::new(config(), small, Some(pr)).unwrap()))
        .unwrap()
        .with_lun(1, Arc::new(Disk::new(cfg4k, big, None).unwrap()))
        .unwrap()
}

/// Bytes that are mostly zero: small LBAs and lengths hit the medium.
fn sparse_bytes(len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![6 => Just(0u8), 2 => 0u8..8, 2 => any::<u8>()],
        len,
    )
}

/// A CDB: random bytes, or a table opcode (with its service action) followed
/// by sparse or random bytes, sometimes cut short.
fn cdb_strategy() -> impl Strategy<Value = Vec<u8>> {
    let table = (
        0..OPCODES.len(),
        sparse_bytes(32),
        1usize..=32,
        any::<bool>(),
    )
        .prop_map(|(i, mut rest, cut, exact)| {
            let o = &OPCODES[i];
            rest[0] = o.opcode;
            if let Some(sa) = o.sa {
                rest[1] = (rest[1] & 0xE0) | sa;
            }
            let len = if exact { o.usage.len() } else { cut };
            rest.truncate(len);
            rest
        });
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..33),
        5 => table,
    ]
}

fn check_sense(s: &[u8]) {
    assert!(!s.is_empty(), "CHECK CONDITION without sense");
    match s[0] & 0x7F {
        0x70 => {
            assert_eq!(s.len(), 18);
            assert_eq!(usize::from(s[7]) + 8, s.len());
            assert_ne!(s[2] & 0x0F, 0, "sense key NO SENSE with CHECK CONDITION");
        }
        0x72 => {
            assert_eq!(usize::from(s[7]) + 8, s.len());
            assert_ne!(s[1] & 0x0F, 0);
        }
        other => panic!("bad response code {other:#x}"),
    }
}

fn exec(t: &EmulatedTarget, lun: u16, tag: u64, cdb: &[u8], dout: &[u8], din: usize, nx: u8) {
    let n = nexus(nx);
    let mut src = dout;
    let mut sink = Vec::new();
    let req = Request {
        nexus: &n,
        lun,
        tag,
        attr: TaskAttr::Simple,
        cdb,
    };
    let r = t.execute(
        &req,
        DataOut {
            reader: &mut src,
            len: dout.len(),
        },
        DataIn {
            writer: &mut sink,
            len: din,
        },
    );
    match r {
        Ok(resp) => {
            assert_eq!(resp.data_in_len, sink.len());
            assert!(resp.data_in_len <= din);
            assert!(resp.data_out_len <= dout.len());
            if let Ok(c) = cdb::lookup(cdb) {
                if let Some(al) = c.alloc_len() {
                    assert!(
                        u64::try_from(resp.data_in_len).unwrap() <= al,
                        "{}",
                        c.info.name
                    );
                }
            }
            match resp.status {
                Status::Good => assert!(resp.sense.is_empty()),
                Status::CheckCondition => {
                    check_sense(&resp.sense);
                    assert_eq!(resp.data_in_len, 0);
                }
                Status::ReservationConflict | Status::TaskAborted => {
                    assert!(resp.sense.is_empty());
                    assert_eq!(resp.data_in_len, 0);
                }
                other => panic!("unexpected status {other:?}"),
            }
        }
        Err(TransportError::EmptyCdb) => assert!(cdb.is_empty()),
        Err(TransportError::CdbTooShort { got, need, .. }) => {
            assert_eq!(got, cdb.len());
            assert!(need > got);
        }
        Err(TransportError::DataOut(_)) => {}
        Err(e) => panic!("unexpected transport error {e}"),
    }
}

#[test]
fn any_cdb_any_data_never_panics_and_answers_well_formed() {
    let t = target();
    let mut runner = TestRunner::new(Config {
        cases: cases(2500),
        failure_persistence: None,
        ..Config::default()
    });
    let strat = (
        cdb_strategy(),
        prop_oneof![3 => sparse_bytes(64), 1 => prop::collection::vec(any::<u8>(), 0..5000)],
        prop_oneof![Just(0usize), 0usize..64, 0usize..70_000],
        0u16..3,
        0u8..3,
    );
    let tag = std::sync::atomic::AtomicU64::new(0);
    runner
        .run(&strat, |(cdb, dout, din, lun, nx)| {
            let tag = tag.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            exec(&t, lun, tag, &cdb, &dout, din, nx);
            Ok(())
        })
        .unwrap();
}

#[test]
fn commands_interleaved_with_task_management() {
    let t = target();
    let mut runner = TestRunner::new(Config {
        cases: cases(800),
        failure_persistence: None,
        ..Config::default()
    });
    let tmf = prop_oneof![
        (0u64..4).prop_map(TaskMgmt::AbortTask),
        Just(TaskMgmt::AbortTaskSet),
        Just(TaskMgmt::ClearTaskSet),
        Just(TaskMgmt::ClearAca),
        Just(TaskMgmt::LogicalUnitReset),
        Just(TaskMgmt::ItNexusReset),
        (0u64..4).prop_map(TaskMgmt::QueryTask),
        Just(TaskMgmt::QueryTaskSet),
        Just(TaskMgmt::QueryAsyncEvent),
    ];
    let strat = (
        cdb_strategy(),
        sparse_bytes(600),
        0usize..5000,
        0u16..3,
        prop::option::of(tmf),
    );
    runner
        .run(&strat, |(cdb, dout, din, lun, tmf)| {
            if let Some(f) = tmf {
                let _ = t.task_mgmt(&nexus(1), lun, f);
            }
            exec(&t, lun, 1, &cdb, &dout, din, 1);
            Ok(())
        })
        .unwrap();
}
