//! Shared rig for the disk/target integration tests: raw CDBs in, exact
//! bytes out, through the public `ScsiTarget` API only.
#![allow(dead_code)]

use std::io::{self, IoSlice, IoSliceMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use scsi::backend::{BlockBackend, Extent, MemBackend};
use scsi::pr::{PrAccess, PrOutcome, Reservations};
use scsi::target::TaskAttr;
use scsi::{
    DataIn, DataOut, Disk, DiskConfig, DiskIdentity, EmulatedTarget, ItNexus, PortName, Request,
    ScsiTarget, Sense, Status, TargetPort,
};

/// The target port every test nexus reaches.
pub const TARGET_PORT: [u8; 8] = [0x50, 0x01, 0x40, 0x5A, 0x00, 0x00, 0x00, 0x01];

/// Initiator `i` on relative target port 1.
pub fn nexus(i: u8) -> ItNexus {
    ItNexus {
        initiator: PortName::Naa([0x50, 0, 0, 0, 0, 0, 0, i]),
        target: TargetPort {
            relative_id: 1,
            name: PortName::Naa(TARGET_PORT),
        },
    }
}

/// Result of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    pub status: Status,
    pub sense: Vec<u8>,
    pub data: Vec<u8>,
    pub data_out_len: usize,
}

impl Out {
    /// (key, asc, ascq) of fixed or descriptor sense.
    pub fn triple(&self) -> Option<(u8, u8, u8)> {
        match self.sense.first()? & 0x7F {
            0x70 => Some((self.sense[2] & 0x0F, self.sense[12], self.sense[13])),
            0x72 => Some((self.sense[1] & 0x0F, self.sense[2], self.sense[3])),
            _ => None,
        }
    }

    #[track_caller]
    pub fn good(&self) -> &[u8] {
        assert_eq!(self.status, Status::Good, "sense {:02x?}", self.sense);
        assert!(self.sense.is_empty());
        &self.data
    }

    #[track_caller]
    pub fn check(&self, key: u8, asc: u8, ascq: u8) {
        assert_eq!(self.status, Status::CheckCondition);
        assert_eq!(
            self.triple(),
            Some((key, asc, ascq)),
            "sense {:02x?}",
            self.sense
        );
        assert!(self.data.is_empty());
    }
}

static TAG: AtomicU64 = AtomicU64::new(1);

/// Run `cdb` on `lun` from `nexus` with `data_out` and a data-in buffer of
/// `din` bytes.
pub fn run(
    t: &dyn ScsiTarget,
    n: &ItNexus,
    lun: u16,
    cdb: &[u8],
    data_out: &[u8],
    din: usize,
) -> Out {
    run_tag(
        t,
        n,
        lun,
        TAG.fetch_add(1, Ordering::Relaxed),
        cdb,
        data_out,
        din,
    )
}

pub fn run_tag(
    t: &dyn ScsiTarget,
    n: &ItNexus,
    lun: u16,
    tag: u64,
    cdb: &[u8],
    data_out: &[u8],
    din: usize,
) -> Out {
    let mut src = data_out;
    let mut sink: Vec<u8> = Vec::new();
    let req = Request {
        nexus: n,
        lun,
        tag,
        attr: TaskAttr::Simple,
        cdb,
    };
    let r = t
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
    assert_eq!(r.data_in_len, sink.len());
    Out {
        status: r.status,
        sense: r.sense,
        data: sink,
        data_out_len: r.data_out_len,
    }
}

/// Sector `i` of the test image holds byte `i % 251` everywhere.
pub fn pattern(bytes: usize, bs: usize) -> Vec<u8> {
    (0..bytes)
        .map(|i| u8::try_from((i / bs) % 251).unwrap())
        .collect()
}

pub fn identity() -> DiskIdentity {
    DiskIdentity::from_naa([
        0x60, 0xA4, 0x15, 0x20, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xAA, 0xBB,
        0xCC,
    ])
    .unwrap()
}

pub fn config() -> DiskConfig {
    let mut c = DiskConfig::new(identity());
    c.serial = Some("SER123".into());
    c
}

/// A target with one disk at LUN 0.
pub struct Rig {
    pub target: EmulatedTarget,
    pub mem: Arc<MemBackend>,
    pub disk: Arc<Disk>,
    pub n: ItNexus,
}

impl Rig {
    pub fn new() -> Rig {
        Self::with(config(), 1 << 20, None)
    }

    pub fn with(cfg: DiskConfig, size: usize, pr: Option<Arc<dyn Reservations>>) -> Rig {
        let bs = usize::try_from(cfg.block_size).unwrap();
        let mem = Arc::new(MemBackend::from_vec(pattern(size, bs)));
        let disk = Arc::new(Disk::new(cfg, mem.clone(), pr).unwrap());
        let target = EmulatedTarget::new().with_lun(0, disk.clone()).unwrap();
        Rig {
            target,
            mem,
            disk,
            n: nexus(1),
        }
    }

    /// Like `new`, with the POWER ON unit attention of nexus 1 consumed.
    pub fn ready() -> Rig {
        let r = Self::new();
        r.clear_ua(&r.n);
        r
    }

    pub fn clear_ua(&self, n: &ItNexus) {
        for _ in 0..8 {
            if run(&self.target, n, 0, &[0x00, 0, 0, 0, 0, 0], &[], 0).status == Status::Good {
                return;
            }
        }
        panic!("unit attentions do not clear");
    }

    pub fn cmd(&self, cdb: &[u8], data_out: &[u8], din: usize) -> Out {
        run(&self.target, &self.n, 0, cdb, data_out, din)
    }
}

/// A backend that reports a huge size and reads zeros (capacity tests).
#[derive(Debug)]
pub struct HugeBackend(pub u64);

impl BlockBackend for HugeBackend {
    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], _o: u64) -> io::Result<()> {
        bufs.iter_mut().for_each(|b| b.fill(0));
        Ok(())
    }
    fn write_vectored_at(&self, _b: &[IoSlice<'_>], _o: u64, _f: bool) -> io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn discard(&self, _o: u64, _l: u64) -> io::Result<()> {
        Ok(())
    }
    fn supports_discard(&self) -> bool {
        false
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0)
    }
    fn is_shared(&self) -> bool {
        false
    }
}

/// A backend whose reads block until `open()` is called (for TMF tests).
#[derive(Debug)]
pub struct GateBackend {
    pub inner: MemBackend,
    gate: Mutex<(bool, u32)>,
    cv: Condvar,
}

impl GateBackend {
    pub fn new(size: usize) -> Self {
        GateBackend {
            inner: MemBackend::new(size),
            gate: Mutex::new((false, 0)),
            cv: Condvar::new(),
        }
    }
    /// Let blocked reads go.
    pub fn open(&self) {
        self.gate.lock().unwrap().0 = true;
        self.cv.notify_all();
    }
    /// Wait until `n` reads are blocked at the gate.
    pub fn wait_blocked(&self, n: u32) {
        let mut g = self.gate.lock().unwrap();
        while g.1 < n {
            g = self.cv.wait(g).unwrap();
        }
    }
}

impl BlockBackend for GateBackend {
    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], o: u64) -> io::Result<()> {
        let mut g = self.gate.lock().unwrap();
        g.1 += 1;
        self.cv.notify_all();
        while !g.0 {
            g = self.cv.wait(g).unwrap();
        }
        drop(g);
        self.inner.read_vectored_at(bufs, o)
    }
    fn write_vectored_at(&self, b: &[IoSlice<'_>], o: u64, f: bool) -> io::Result<()> {
        self.inner.write_vectored_at(b, o, f)
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn discard(&self, o: u64, l: u64) -> io::Result<()> {
        self.inner.discard(o, l)
    }
    fn supports_discard(&self) -> bool {
        true
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn is_shared(&self) -> bool {
        false
    }
    fn extent(&self, o: u64, l: u64) -> io::Result<Extent> {
        self.inner.extent(o, l)
    }
}

/// A scripted `Reservations` that records what the LU asked.
#[derive(Debug, Default)]
pub struct FakePr {
    pub conflict_for: Mutex<Vec<(ItNexus, PrAccess)>>,
    pub calls: Mutex<Vec<String>>,
    pub pending: Mutex<Vec<(ItNexus, Sense)>>,
}

impl FakePr {
    fn log(&self, s: String) {
        self.calls.lock().unwrap().push(s);
    }
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Reservations for FakePr {
    fn conflicts(&self, nexus: &ItNexus, access: PrAccess) -> bool {
        self.conflict_for
            .lock()
            .unwrap()
            .iter()
            .any(|(n, a)| n == nexus && *a == access)
    }
    fn reserve_out(&self, _n: &ItNexus, cdb: &[u8], params: &[u8]) -> PrOutcome {
        self.log(format!(
            "out sa={} cdb={} params={:02x?}",
            cdb[1] & 0x1F,
            cdb.len(),
            params
        ));
        if params.len() != 24 {
            return PrOutcome::check(scsi::sense::codes::PARAM_LIST_LENGTH_ERROR);
        }
        PrOutcome::good()
    }
    fn reserve_in(&self, _n: &ItNexus, cdb: &[u8]) -> PrOutcome {
        self.log(format!("in sa={}", cdb[1] & 0x1F));
        // READ KEYS: generation 5, one key 0x1122334455667788.
        PrOutcome::data(vec![
            0, 0, 0, 5, 0, 0, 0, 8, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88,
        ])
    }
    fn scsi2_reserve(&self, n: &ItNexus) -> PrOutcome {
        self.log(format!("reserve {}", n.initiator));
        PrOutcome::good()
    }
    fn scsi2_release(&self, n: &ItNexus) -> PrOutcome {
        self.log(format!("release {}", n.initiator));
        PrOutcome::good()
    }
    fn take_unit_attentions(&self, nexus: &ItNexus) -> Vec<Sense> {
        let mut p = self.pending.lock().unwrap();
        let (mine, rest): (Vec<_>, Vec<_>) = p.drain(..).partition(|(n, _)| n == nexus);
        *p = rest;
        mine.into_iter().map(|(_, s)| s).collect()
    }
    fn lu_reset(&self) {
        self.log("lu_reset".into());
    }
    fn nexus_loss(&self, n: &ItNexus) {
        self.log(format!("nexus_loss {}", n.initiator));
    }
}
