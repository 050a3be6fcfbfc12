//! Property test: whatever CDB a guest sends and whatever the host answers
//! (status byte, host/driver bytes, errno, sense and data of any length), the
//! passthrough unit neither panics nor overruns the guest's buffers, and a
//! host failure never comes back as GOOD.

use std::io::{self, Cursor};
use std::sync::Arc;

use proptest::prelude::*;
use scsi::nexus::{ItNexus, PortName, TargetPort};
use scsi::sense::Status;
use scsi::sgio::{FakeReply, FakeSg, PassthroughConfig, PassthroughLu, PassthroughOutcome};
use scsi::target::{DataIn, DataOut, Request, TaskAttr};

#[derive(Debug, Clone)]
struct Reply {
    errno: Option<i32>,
    status: u8,
    host: u16,
    driver: u16,
    data: Vec<u8>,
    sense: Vec<u8>,
}

fn reply() -> impl Strategy<Value = Reply> {
    (
        prop_oneof![
            3 => Just(None),
            1 => prop::sample::select(vec![libc::EIO, libc::ENODEV, libc::EAGAIN, libc::EDOM, libc::EPERM, libc::ETIMEDOUT]).prop_map(Some),
        ],
        prop_oneof![Just(0u8), Just(2), Just(0x18), Just(8), any::<u8>()],
        prop_oneof![3 => Just(0u16), 1 => 0u16..0x20, 1 => any::<u16>()],
        prop_oneof![3 => Just(0u16), 1 => 0u16..0x10, 1 => any::<u16>()],
        prop::collection::vec(any::<u8>(), 0..700),
        prop::collection::vec(any::<u8>(), 0..130),
    )
        .prop_map(|(errno, status, host, driver, data, sense)| Reply {
            errno,
            status,
            host,
            driver,
            data,
            sense,
        })
}

fn cdb() -> impl Strategy<Value = Vec<u8>> {
    let interesting = prop::sample::select(vec![
        0x00u8, 0x03, 0x12, 0x1A, 0x15, 0x25, 0x28, 0x2A, 0x35, 0x3B, 0x5A, 0x55, 0x5E, 0x5F, 0x7F,
        0x88, 0x8A, 0x9E, 0xA0, 0xA8, 0xAA, 0x16, 0x04, 0xC5,
    ]);
    (interesting, prop::collection::vec(any::<u8>(), 0..34)).prop_map(|(op, mut rest)| {
        rest.insert(0, op);
        rest
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn any_command_any_answer(
        cdb in cdb(),
        r in reply(),
        out_len in 0usize..600,
        in_len in 0usize..1200,
        max in prop_oneof![Just(None), (1u32..4).prop_map(|k| Some(k * 512))],
        identity in any::<bool>(),
        mask in any::<bool>(),
    ) {
        let rr = r.clone();
        let fake = FakeSg::new(move |_| match rr.errno {
            Some(e) => Err(io::Error::from_raw_os_error(e)),
            None => Ok(FakeReply {
                status: rr.status,
                host_status: rr.host,
                driver_status: rr.driver,
                data_in: rr.data.clone(),
                data_out_taken: None,
                sense: rr.sense.clone(),
                duration_ms: 1,
            }),
        });
        let mut cfg = PassthroughConfig {
            has_rawio: Some(true),
            max_transfer_bytes: max,
            ..Default::default()
        };
        if identity {
            cfg.set("vendor", "ARB").unwrap();
            cfg.set("serial", "S1").unwrap();
            cfg.set("naa", "6001405000000001").unwrap();
        }
        if mask {
            cfg.set("hide-mode-pages", "08").unwrap();
        }
        let lu = PassthroughLu::with_transport(Arc::new(fake), "prop", cfg).unwrap();
        let n = ItNexus {
            initiator: "naa.5001405000000aaa".parse().unwrap(),
            target: TargetPort { relative_id: 1, name: PortName::Naa([0x50, 1, 0x40, 0x50, 0, 0, 0, 1]) },
        };
        let mut reader = Cursor::new(vec![0x5Au8; out_len]);
        let mut sink: Vec<u8> = Vec::new();
        let req = Request { nexus: &n, lun: 0, tag: 9, attr: TaskAttr::Simple, cdb: &cdb };
        let res = lu.execute_outcome(
            &req,
            DataOut { reader: &mut reader, len: out_len },
            DataIn { writer: &mut sink, len: in_len },
        );
        let Ok(o) = res else { return Ok(()); };
        prop_assert!(sink.len() <= in_len);
        match &o {
            PassthroughOutcome::Completed(resp) => {
                prop_assert_eq!(resp.data_in_len, sink.len());
                prop_assert!(resp.data_out_len <= out_len);
                prop_assert!(resp.sense.len() <= 96);
                // Answered without the device: REPORT LUNS, emulated VPD pages.
                let local = cdb[0] == 0xA0
                    || (identity
                        && cdb[0] == 0x12
                        && cdb.get(1).is_some_and(|b| b & 1 == 1)
                        && matches!(cdb.get(2), Some(0x80 | 0x83)));
                let host_trouble = r.errno.is_some() || r.host != 0;
                if resp.status == Status::Good && !local {
                    prop_assert!(
                        !host_trouble,
                        "GOOD despite errno {:?} / host byte {:#x}", r.errno, r.host
                    );
                }
            }
            PassthroughOutcome::HostFailed { .. } => {
                prop_assert_ne!(o.clone().into_response().status, Status::Good);
            }
        }
    }
}
