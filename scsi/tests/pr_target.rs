//! Windows cluster arbitration end to end: two "VMs" (two `EmulatedTarget`s,
//! each with its own `Disk` over the same shared PR state, as two VM
//! processes opening one image would have), raw CDBs in through the
//! `ScsiTarget` API, exact status / sense / data bytes out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use scsi::pr::{Reservations, SharedPr};
use scsi::target::TaskAttr;
use scsi::{
    DataIn, DataOut, Disk, DiskConfig, DiskIdentity, EmulatedTarget, ItNexus, MemBackend, PortName,
    Request, ScsiTarget, Status, TargetPort,
};

static TAG: AtomicU64 = AtomicU64::new(1);

/// Node `i`: its own initiator port and its own controller's target port.
fn node(i: u8) -> ItNexus {
    ItNexus {
        initiator: PortName::Naa([0x50, 0, 0, 0, 0, 0, 0x0A, i]),
        target: TargetPort {
            relative_id: 1,
            name: PortName::Naa([0x60, 0, 0, 0, 0, 0, 0, i]),
        },
    }
}

struct Vm {
    target: EmulatedTarget,
    n: ItNexus,
}

impl Vm {
    fn new(i: u8, pr: Arc<SharedPr>, image: Arc<MemBackend>) -> Vm {
        let identity = DiskIdentity::from_uuid(pr.disk_uuid());
        let disk = Disk::new(
            DiskConfig::new(identity),
            image,
            Some(pr as Arc<dyn Reservations>),
        )
        .unwrap();
        let target = EmulatedTarget::new().with_lun(0, Arc::new(disk)).unwrap();
        let vm = Vm { target, n: node(i) };
        // Consume the power-on unit attention.
        for _ in 0..4 {
            if vm.cmd(&[0x00, 0, 0, 0, 0, 0], &[], 0).0 == Status::Good {
                return vm;
            }
        }
        panic!("unit attentions do not clear");
    }

    /// (status, sense, data-in) of one command.
    fn cmd(&self, cdb: &[u8], data_out: &[u8], din: usize) -> (Status, Vec<u8>, Vec<u8>) {
        let mut src = data_out;
        let mut sink = Vec::new();
        let req = Request {
            nexus: &self.n,
            lun: 0,
            tag: TAG.fetch_add(1, Ordering::Relaxed),
            attr: TaskAttr::Simple,
            cdb,
        };
        let r = self
            .target
            .execute(
                &req,
                DataOut {
                    reader: &mut src,
                    len: data_out.len(),
                },
                DataIn {
                    writer: &mut sink,
                    len: din,
                },
            )
            .expect("transport error");
        (r.status, r.sense, sink)
    }
}

fn params(rk: u64, sark: u64) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&rk.to_be_bytes()); // RESERVATION KEY
    p.extend_from_slice(&sark.to_be_bytes()); // SERVICE ACTION RESERVATION KEY
    p.extend_from_slice(&[0; 8]); // obsolete, flags 0, reserved, obsolete
    p
}

#[rustfmt::skip]
const REG_IGNORE: [u8; 10] = [
    0x5F, 0x06, // PERSISTENT RESERVE OUT, REGISTER AND IGNORE EXISTING KEY
    0x00, 0, 0, // scope/type ignored, reserved
    0, 0, 0, 24, // PARAMETER LIST LENGTH 24
    0x00,       // CONTROL
];
#[rustfmt::skip]
const RESERVE_WE_RO: [u8; 10] = [
    0x5F, 0x01, // PERSISTENT RESERVE OUT, RESERVE
    0x05, 0, 0, // LU scope | Write Exclusive - Registrants Only
    0, 0, 0, 24, 0x00,
];
#[rustfmt::skip]
const PREEMPT_WE_RO: [u8; 10] = [
    0x5F, 0x04, // PERSISTENT RESERVE OUT, PREEMPT
    0x05, 0, 0, // LU scope | WE-RO
    0, 0, 0, 24, 0x00,
];
#[rustfmt::skip]
const CLEAR: [u8; 10] = [0x5F, 0x03, 0, 0, 0, 0, 0, 0, 24, 0];
#[rustfmt::skip]
const READ_RESERVATION: [u8; 10] = [
    0x5E, 0x01, // PERSISTENT RESERVE IN, READ RESERVATION
    0, 0, 0, 0, 0, // reserved
    0x00, 0x18, // ALLOCATION LENGTH 24
    0x00,       // CONTROL
];
#[rustfmt::skip]
const WRITE10: [u8; 10] = [
    0x2A, 0x00, // WRITE(10)
    0, 0, 0, 8, // LBA 8
    0x00,       // group
    0x00, 0x01, // 1 block
    0x00,
];
#[rustfmt::skip]
const READ10: [u8; 10] = [0x28, 0x00, 0, 0, 0, 8, 0x00, 0x00, 0x01, 0x00];

const KEY_A: u64 = 0x0102_0304_0506_0708;
const KEY_B: u64 = 0x1112_1314_1516_1718;

#[test]
fn two_vms_arbitrate_through_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("shared.img.pr");
    // One image (the shared disk's data), two openers of its PR state.
    let image = Arc::new(MemBackend::from_vec(vec![0; 1 << 20]));
    let a = Vm::new(
        1,
        Arc::new(SharedPr::open_unshared(&base).unwrap()),
        image.clone(),
    );
    let b = Vm::new(2, Arc::new(SharedPr::open_unshared(&base).unwrap()), image);
    let sector = vec![0x77u8; 512];

    // Both VMs report the same LU identity in VPD 0x83.
    let vpd83 = [0x12, 0x01, 0x83, 0x00, 0xFF, 0x00]; // INQUIRY EVPD page 0x83
    let (sa, _, da) = a.cmd(&vpd83, &[], 255);
    let (sb, _, db) = b.cmd(&vpd83, &[], 255);
    assert_eq!((sa, sb), (Status::Good, Status::Good));
    // First designator: binary, LU association, NAA, 16 bytes; the same on
    // both VMs (the target port designators that follow differ: each VM has
    // its own controller).
    assert_eq!(&da[4..8], &[0x01, 0x03, 0x00, 0x10]);
    assert_eq!(da[8] >> 4, 6);
    assert_eq!(&da[..24], &db[..24]);

    // A: REGISTER AND IGNORE EXISTING KEY, RESERVE WE-RO.
    assert_eq!(a.cmd(&REG_IGNORE, &params(0, KEY_A), 0).0, Status::Good);
    assert_eq!(a.cmd(&RESERVE_WE_RO, &params(KEY_A, 0), 0).0, Status::Good);
    assert_eq!(a.cmd(&WRITE10, &sector, 0).0, Status::Good);

    // B, not registered: writes conflict (status 0x18, no sense), reads pass.
    let (st, sense, _) = b.cmd(&WRITE10, &sector, 0);
    assert_eq!((st as u8, sense.len()), (0x18, 0));
    let (st, _, data) = b.cmd(&READ10, &[], 512);
    assert_eq!((st, data), (Status::Good, sector.clone()));

    // B: READ RESERVATION sees A.
    let (st, _, data) = b.cmd(&READ_RESERVATION, &[], 24);
    assert_eq!(st, Status::Good);
    #[rustfmt::skip]
    assert_eq!(data, [
        0, 0, 0, 1,                   // PRgeneration
        0, 0, 0, 0x10,                // ADDITIONAL LENGTH
        1, 2, 3, 4, 5, 6, 7, 8,       // A's key
        0, 0, 0, 0, 0x00, 0x05, 0, 0, // LU scope | WE-RO
    ]);

    // B registers and preempts A.
    assert_eq!(b.cmd(&REG_IGNORE, &params(0, KEY_B), 0).0, Status::Good);
    assert_eq!(
        b.cmd(&PREEMPT_WE_RO, &params(KEY_B, KEY_A), 0).0,
        Status::Good
    );

    // A's next command: CHECK CONDITION, UNIT ATTENTION, REGISTRATIONS
    // PREEMPTED (fixed format).
    let (st, sense, _) = a.cmd(&WRITE10, &sector, 0);
    assert_eq!(st, Status::CheckCondition);
    #[rustfmt::skip]
    assert_eq!(sense, [
        0x70, 0, 0x06, 0, 0, 0, 0, 10, // current, UNIT ATTENTION, add. length 10
        0, 0, 0, 0,                    // command-specific
        0x2A, 0x05, 0,                 // REGISTRATIONS PREEMPTED
        0, 0, 0,                       // no SKS
    ]);
    // ... and then its writes conflict, its reads pass.
    assert_eq!(a.cmd(&WRITE10, &sector, 0).0 as u8, 0x18);
    assert_eq!(a.cmd(&READ10, &[], 512).0, Status::Good);
    // B owns the disk now.
    assert_eq!(b.cmd(&WRITE10, &sector, 0).0, Status::Good);

    // B clears; A (unregistered) gets no unit attention; everyone may write.
    assert_eq!(b.cmd(&CLEAR, &params(KEY_B, 0), 0).0, Status::Good);
    assert_eq!(a.cmd(&WRITE10, &sector, 0).0, Status::Good);
    assert_eq!(b.cmd(&WRITE10, &sector, 0).0, Status::Good);
}

#[test]
fn three_vms_arbitrate_through_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("shared.img.pr");
    let image = Arc::new(MemBackend::from_vec(vec![0; 1 << 20]));
    let vms: Vec<Vm> = (1..=3)
        .map(|i| {
            let pr = Arc::new(SharedPr::open_unshared(&base).unwrap());
            Vm::new(i, pr, image.clone())
        })
        .collect();
    let (a, b, c) = (&vms[0], &vms[1], &vms[2]);
    let key = |i: u8| 0x00C0_FFEE_0000_0000u64 | u64::from(i);
    let sector = vec![0x33u8; 512];

    // A owns (WE-RO); B and C register; registrants may write under WE-RO.
    assert_eq!(a.cmd(&REG_IGNORE, &params(0, key(1)), 0).0, Status::Good);
    assert_eq!(a.cmd(&RESERVE_WE_RO, &params(key(1), 0), 0).0, Status::Good);
    for (vm, i) in [(b, 2), (c, 3)] {
        assert_eq!(vm.cmd(&WRITE10, &sector, 0).0 as u8, 0x18);
        assert_eq!(vm.cmd(&REG_IGNORE, &params(0, key(i)), 0).0, Status::Good);
        assert_eq!(vm.cmd(&WRITE10, &sector, 0).0, Status::Good);
    }
    // C reads the reservation: A's key, PRgeneration 3.
    let (_, _, data) = c.cmd(&READ_RESERVATION, &[], 24);
    assert_eq!(&data[..4], &[0, 0, 0, 3]);
    assert_eq!(&data[8..16], &key(1).to_be_bytes());
    // C preempts A: only A gets REGISTRATIONS PREEMPTED.
    assert_eq!(
        c.cmd(&PREEMPT_WE_RO, &params(key(3), key(1)), 0).0,
        Status::Good
    );
    let (st, sense, _) = a.cmd(&READ10, &[], 512);
    assert_eq!(
        (st, sense[2], sense[12], sense[13]),
        (Status::CheckCondition, 6, 0x2A, 0x05)
    );
    assert_eq!(a.cmd(&WRITE10, &sector, 0).0 as u8, 0x18);
    assert_eq!(b.cmd(&WRITE10, &sector, 0).0, Status::Good);
    // C clears: B (still registered) gets RESERVATIONS PREEMPTED; A does not.
    assert_eq!(c.cmd(&CLEAR, &params(key(3), 0), 0).0, Status::Good);
    let (st, sense, _) = b.cmd(&WRITE10, &sector, 0);
    #[rustfmt::skip]
    assert_eq!((st, sense), (Status::CheckCondition, vec![
        0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, // UNIT ATTENTION
        0x2A, 0x03, 0, 0, 0, 0,                    // RESERVATIONS PREEMPTED
    ]));
    for vm in &vms {
        assert_eq!(vm.cmd(&WRITE10, &sector, 0).0, Status::Good);
    }
}
