//! Test support: a fake SCSI target that records every command and TMF and
//! serves tiny disks whose every byte names its target, LUN and block, so
//! a command routed to the wrong place cannot return the expected data.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use scsi::sense::codes;
use scsi::target::{DataIn, DataOut, Request, Response, TaskAttr, TransportError};
use scsi::{ItNexus, Lun, ScsiTarget, Sense, Status, TaskMgmt, TmfResponse};

/// Block size of the fake disks.
pub const FAKE_BLOCK: usize = 512;
/// Blocks per fake disk.
pub const FAKE_BLOCKS: usize = 8;
/// Vendor opcode that answers CHECK CONDITION with 120 bytes of sense.
pub const OP_LONG_SENSE: u8 = 0xC0;
/// Vendor opcode that moves `cdb[4]` bytes of 0xAB data-in, then ends with
/// TASK ABORTED (as a command cut short by a TMF) and some sense bytes the
/// transport must not pass on.
pub const OP_TASK_ABORTED: u8 = 0xC1;

/// The byte at `offset` of block `lba` of the fake disk `target`/`lun`.
pub fn fake_byte(target: u8, lun: Lun, lba: usize, offset: usize) -> u8 {
    let l = lun.to_le_bytes();
    let v = usize::from(target) * 31 + usize::from(l[0]) * 7 + usize::from(l[1]) * 13 + lba * 3;
    u8::try_from((v + offset) % 251).unwrap_or(0)
}

/// One recorded command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Nexus it came on.
    pub nexus: ItNexus,
    /// LUN.
    pub lun: Lun,
    /// Tag.
    pub tag: u64,
    /// Task attribute.
    pub attr: TaskAttr,
    /// CDB bytes as received.
    pub cdb: Vec<u8>,
    /// Data-out capacity offered.
    pub data_out_len: usize,
    /// Data-in capacity offered.
    pub data_in_len: usize,
}

/// A fake target (see the module documentation).
#[derive(Debug)]
pub struct FakeTarget {
    id: u8,
    disks: Mutex<BTreeMap<Lun, Vec<u8>>>,
    /// Every command, in order.
    pub commands: Mutex<Vec<Recorded>>,
    /// Every TMF: (nexus, lun, function).
    pub tmfs: Mutex<Vec<(ItNexus, Lun, TaskMgmt)>>,
    /// What TMFs answer.
    pub tmf_answer: Mutex<TmfResponse>,
    /// Pending unit attentions per (initiator name, lun).
    pub unit_attentions: Mutex<HashMap<(String, Lun), Sense>>,
    /// When set, every command fails with this service delivery failure
    /// (as a passthrough LU answers when the host path fails), after
    /// `data_in_len` bytes of data-in.
    pub delivery_failure: Mutex<Option<(scsi::DeliveryFailure, usize)>>,
}

impl FakeTarget {
    /// Target number `id` (used in the disk contents) with these LUNs.
    pub fn new(id: u8, luns: &[Lun]) -> Self {
        let disks = luns
            .iter()
            .map(|&l| {
                let d = (0..FAKE_BLOCK * FAKE_BLOCKS)
                    .map(|i| fake_byte(id, l, i / FAKE_BLOCK, i % FAKE_BLOCK))
                    .collect();
                (l, d)
            })
            .collect();
        FakeTarget {
            id,
            disks: Mutex::new(disks),
            commands: Mutex::new(Vec::new()),
            tmfs: Mutex::new(Vec::new()),
            tmf_answer: Mutex::new(TmfResponse::Complete),
            unit_attentions: Mutex::new(HashMap::new()),
            delivery_failure: Mutex::new(None),
        }
    }

    /// A copy of a disk's contents.
    pub fn disk(&self, lun: Lun) -> Option<Vec<u8>> {
        self.disks.lock().unwrap().get(&lun).cloned()
    }

    /// Add a LUN (hot-plug).
    pub fn add_lun(&self, lun: Lun) {
        let d = (0..FAKE_BLOCK * FAKE_BLOCKS)
            .map(|i| fake_byte(self.id, lun, i / FAKE_BLOCK, i % FAKE_BLOCK))
            .collect();
        self.disks.lock().unwrap().insert(lun, d);
    }

    fn check(sense: Sense) -> Response {
        Response {
            status: Status::CheckCondition,
            sense: sense.to_fixed().to_vec(),
            data_in_len: 0,
            data_out_len: 0,
        }
    }
}

impl ScsiTarget for FakeTarget {
    fn execute(
        &self,
        req: &Request<'_>,
        data_out: DataOut<'_>,
        data_in: DataIn<'_>,
    ) -> Result<Response, TransportError> {
        self.commands.lock().unwrap().push(Recorded {
            nexus: req.nexus.clone(),
            lun: req.lun,
            tag: req.tag,
            attr: req.attr,
            cdb: req.cdb.to_vec(),
            data_out_len: data_out.len,
            data_in_len: data_in.len,
        });
        let op = *req.cdb.first().ok_or(TransportError::EmptyCdb)?;
        if let Some((failure, n)) = *self.delivery_failure.lock().unwrap() {
            let n = n.min(data_in.len);
            data_in
                .writer
                .write_all(&vec![0xEE; n])
                .map_err(TransportError::DataIn)?;
            return Err(TransportError::Delivery {
                failure,
                data_in_len: n,
                data_out_len: 0,
            });
        }
        let mut disks = self.disks.lock().unwrap();
        let Some(disk) = disks.get_mut(&req.lun) else {
            if op == 0x12 {
                // INQUIRY to a missing LUN: peripheral qualifier 3, type 1Fh.
                let mut inq = [0u8; 36];
                inq[0] = 0x7F;
                let n = inq.len().min(data_in.len);
                data_in
                    .writer
                    .write_all(&inq[..n])
                    .map_err(TransportError::DataIn)?;
                return Ok(Response {
                    status: Status::Good,
                    sense: vec![],
                    data_in_len: n,
                    data_out_len: 0,
                });
            }
            return Ok(Self::check(codes::LUN_NOT_SUPPORTED));
        };
        let rw10 = |cdb: &[u8]| -> Option<(usize, usize)> {
            let lba = u32::from_be_bytes(cdb.get(2..6)?.try_into().ok()?);
            let n = u16::from_be_bytes(cdb.get(7..9)?.try_into().ok()?);
            let lba = usize::try_from(lba).ok()?;
            let n = usize::from(n);
            (lba + n <= FAKE_BLOCKS).then_some((lba * FAKE_BLOCK, n * FAKE_BLOCK))
        };
        match op {
            0x00 => Ok(Response {
                status: Status::Good,
                sense: vec![],
                data_in_len: 0,
                data_out_len: 0,
            }),
            0x12 => {
                let mut inq = [0u8; 36];
                inq[2] = 0x06; // SPC-4
                inq[3] = 0x02;
                inq[4] = 31;
                inq[8..16].copy_from_slice(b"FAKE    ");
                inq[16] = b'T';
                inq[17] = b'0' + self.id % 10;
                inq[18] = b'L';
                inq[19] = b'0' + u8::try_from(req.lun % 10).unwrap_or(0);
                let n = inq.len().min(data_in.len);
                data_in
                    .writer
                    .write_all(&inq[..n])
                    .map_err(TransportError::DataIn)?;
                Ok(Response {
                    status: Status::Good,
                    sense: vec![],
                    data_in_len: n,
                    data_out_len: 0,
                })
            }
            0x28 => {
                let Some((off, len)) = rw10(req.cdb) else {
                    return Ok(Self::check(codes::LBA_OUT_OF_RANGE));
                };
                let n = len.min(data_in.len);
                // In place, as the emulated disk moves medium data.
                let src = &disk[off..off + n];
                data_in
                    .writer
                    .write_in_place(n, &mut |bufs| {
                        let mut at = 0;
                        for b in bufs.iter_mut() {
                            let l = b.len();
                            b.copy_from_slice(&src[at..at + l]);
                            at += l;
                        }
                        Ok(())
                    })
                    .map_err(TransportError::DataIn)?;
                Ok(Response {
                    status: Status::Good,
                    sense: vec![],
                    data_in_len: n,
                    data_out_len: 0,
                })
            }
            0x2A => {
                let Some((off, len)) = rw10(req.cdb) else {
                    return Ok(Self::check(codes::LBA_OUT_OF_RANGE));
                };
                let n = len.min(data_out.len);
                let dst = &mut disk[off..off + n];
                data_out
                    .reader
                    .read_in_place(n, &mut |bufs| {
                        let mut at = 0;
                        for b in bufs {
                            dst[at..at + b.len()].copy_from_slice(b);
                            at += b.len();
                        }
                        Ok(())
                    })
                    .map_err(TransportError::DataOut)?;
                Ok(Response {
                    status: Status::Good,
                    sense: vec![],
                    data_in_len: 0,
                    data_out_len: n,
                })
            }
            OP_TASK_ABORTED => {
                let n = usize::from(req.cdb.get(4).copied().unwrap_or(0)).min(data_in.len);
                data_in
                    .writer
                    .write_all(&vec![0xAB; n])
                    .map_err(TransportError::DataIn)?;
                Ok(Response {
                    status: Status::TaskAborted,
                    sense: vec![0x70, 0, 0x0B],
                    data_in_len: n,
                    data_out_len: 0,
                })
            }
            OP_LONG_SENSE => Ok(Response {
                status: Status::CheckCondition,
                sense: (0..120u8).collect(),
                data_in_len: 0,
                data_out_len: 0,
            }),
            _ => Ok(Self::check(codes::INVALID_OPCODE)),
        }
    }

    fn task_mgmt(&self, nexus: &ItNexus, lun: Lun, tmf: TaskMgmt) -> TmfResponse {
        self.tmfs.lock().unwrap().push((nexus.clone(), lun, tmf));
        *self.tmf_answer.lock().unwrap()
    }

    fn has_lun(&self, lun: Lun) -> bool {
        self.disks.lock().unwrap().contains_key(&lun)
    }

    fn pending_unit_attention(&self, nexus: &ItNexus, lun: Lun) -> Option<Sense> {
        self.unit_attentions
            .lock()
            .unwrap()
            .get(&(nexus.initiator.to_string(), lun))
            .copied()
    }
}

/// A [`VirtioInterrupt`](crate::virtio::VirtioInterrupt) that records what
/// the device signalled.
#[derive(Debug, Default)]
pub struct RecordingInterrupt {
    /// Interrupts in order.
    pub fired: Mutex<Vec<crate::virtio::InterruptType>>,
    /// Set when the device asked for a reset.
    pub needs_reset: std::sync::atomic::AtomicBool,
}

impl RecordingInterrupt {
    /// Whether DEVICE_NEEDS_RESET was requested.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl crate::virtio::VirtioInterrupt for RecordingInterrupt {
    fn trigger(&self, ty: crate::virtio::InterruptType) {
        self.fired.lock().unwrap().push(ty);
    }
    fn set_needs_reset(&self) {
        self.needs_reset
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// An MSI group that records routes and deliveries.
#[derive(Debug)]
pub struct RecordingMsi {
    /// (message, masked) per vector.
    pub routes: Mutex<Vec<(crate::interrupt::MsiMessage, bool)>>,
    /// Delivered vectors in order.
    pub fired: Mutex<Vec<u16>>,
}

impl RecordingMsi {
    /// `n` vectors.
    pub fn new(n: u16) -> std::sync::Arc<Self> {
        std::sync::Arc::new(RecordingMsi {
            routes: Mutex::new(vec![
                (crate::interrupt::MsiMessage::default(), true);
                usize::from(n)
            ]),
            fired: Mutex::new(Vec::new()),
        })
    }
}

impl crate::interrupt::MsiInterruptGroup for RecordingMsi {
    fn len(&self) -> u16 {
        u16::try_from(self.routes.lock().unwrap().len()).unwrap_or(u16::MAX)
    }
    fn update(
        &self,
        vector: u16,
        msg: crate::interrupt::MsiMessage,
        masked: bool,
    ) -> Result<(), crate::interrupt::InterruptError> {
        let mut r = self.routes.lock().unwrap();
        let e = r
            .get_mut(usize::from(vector))
            .ok_or(crate::interrupt::InterruptError::BadVector(vector))?;
        *e = (msg, masked);
        Ok(())
    }
    fn trigger(&self, vector: u16) -> Result<(), crate::interrupt::InterruptError> {
        self.fired.lock().unwrap().push(vector);
        Ok(())
    }
    fn notifier(&self, _vector: u16) -> Option<vmm_sys_util::eventfd::EventFd> {
        None
    }
}

/// An INTx line that records its level changes.
#[derive(Debug, Default)]
pub struct RecordingLine {
    /// Levels set, in order.
    pub levels: Mutex<Vec<bool>>,
}

impl RecordingLine {
    /// The current level.
    pub fn level(&self) -> bool {
        self.levels.lock().unwrap().last().copied().unwrap_or(false)
    }
}

impl crate::interrupt::InterruptLine for RecordingLine {
    fn trigger(&self) -> Result<(), crate::interrupt::InterruptError> {
        Ok(())
    }
    fn set_level(&self, high: bool) -> Result<(), crate::interrupt::InterruptError> {
        self.levels.lock().unwrap().push(high);
        Ok(())
    }
}
