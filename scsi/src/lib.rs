//! Arbiter's SCSI target.
//!
//! This crate knows nothing about virtio or KVM: a transport (the virtio-scsi
//! controller, a test, a fuzzer) hands it commands that arrive on an I_T
//! nexus for a LUN, with a CDB, a data-out source and a data-in sink, and gets
//! back a status, sense data and the amount of data transferred
//! ([`target::ScsiTarget`]).
//!
//! SCSI-level failures are `Ok` responses with CHECK CONDITION (or
//! RESERVATION CONFLICT) and sense; `Err` is only for transport failures
//! (the data buffers could not be read or written).

pub mod backend;
pub mod cdb;
pub mod datain;
pub mod disk;
pub mod emulated;
pub mod nexus;
pub mod pr;
pub mod sense;
pub mod sgio;
pub mod target;
pub mod unit_attention;

pub use backend::{BlockBackend, FileBackend, FileOptions, MemBackend};
pub use disk::{Disk, DiskConfig, DiskIdentity};
pub use emulated::{EmulatedTarget, LogicalUnit};
pub use nexus::{ItNexus, PortName, TargetPort};
pub use sense::{Sense, SenseKey, Status};
pub use target::{
    DataIn, DataInSink, DataOut, DataOutSource, DeliveryFailure, Lun, ReadSource, Request,
    Response, ScsiTarget, TaskMgmt, TmfResponse, TransportError, WriteSink,
};
