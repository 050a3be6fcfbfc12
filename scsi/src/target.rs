//! The contract between a transport (virtio-scsi, tests, fuzzers) and the
//! SCSI target: SAM-5's "execute command" and "task management function"
//! procedure calls.

use std::io::{Read, Write};

use crate::nexus::ItNexus;
use crate::sense::Status;

/// A SAM-5 LUN as the transport decoded it: the single-level LUN number
/// (0..=16383, peripheral or flat addressing already stripped).
pub type Lun = u16;

/// Task attribute (SAM-5 8.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskAttr {
    /// SIMPLE
    #[default]
    Simple,
    /// ORDERED
    Ordered,
    /// HEAD OF QUEUE
    HeadOfQueue,
    /// ACA
    Aca,
}

/// One command as delivered by the transport.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The I_T nexus it arrived on.
    pub nexus: &'a ItNexus,
    /// The logical unit addressed.
    pub lun: Lun,
    /// Command identifier, unique per nexus while the command is outstanding
    /// (virtio-scsi's `tag`); ABORT TASK and QUERY TASK name commands by it.
    pub tag: u64,
    /// Task attribute.
    pub attr: TaskAttr,
    /// The CDB as received (the transport's CDB buffer may be longer than the
    /// command's CDB; trailing bytes are ignored).
    pub cdb: &'a [u8],
}

/// Data-out: what the initiator sends with the command.
#[derive(Debug)]
pub struct DataOut<'a> {
    /// Source of the bytes.
    pub reader: &'a mut dyn ReadDebug,
    /// How many bytes the initiator provided.
    pub len: usize,
}

/// Data-in: where the command's response data goes.
#[derive(Debug)]
pub struct DataIn<'a> {
    /// Sink for the bytes.
    pub writer: &'a mut dyn WriteDebug,
    /// How many bytes the initiator's buffer holds.
    pub len: usize,
}

/// `Read + Debug`, so the buffers can be debug-printed.
pub trait ReadDebug: Read + std::fmt::Debug {}
impl<T: Read + std::fmt::Debug> ReadDebug for T {}
/// `Write + Debug`, so the buffers can be debug-printed.
pub trait WriteDebug: Write + std::fmt::Debug {}
impl<T: Write + std::fmt::Debug> WriteDebug for T {}

/// The target's answer to a command that reached it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// SCSI status.
    pub status: Status,
    /// Sense data, already encoded in the format the initiator asked for
    /// (fixed or descriptor); empty when there is none.
    pub sense: Vec<u8>,
    /// Bytes written to data-in.
    pub data_in_len: usize,
    /// Bytes consumed from data-out.
    pub data_out_len: usize,
}

/// Transport-level failure: the command's buffers could not be used. A SCSI
/// error is never a `TransportError`.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Reading the data-out buffer failed.
    #[error("reading data-out failed: {0}")]
    DataOut(#[source] std::io::Error),
    /// Writing the data-in buffer failed.
    #[error("writing data-in failed: {0}")]
    DataIn(#[source] std::io::Error),
    /// The CDB buffer is shorter than the command's CDB length.
    #[error("CDB of {got} bytes is shorter than the {need} bytes opcode {opcode:#04x} needs")]
    CdbTooShort {
        /// Operation code.
        opcode: u8,
        /// Bytes available.
        got: usize,
        /// Bytes required.
        need: usize,
    },
    /// The CDB buffer is empty.
    #[error("empty CDB")]
    EmptyCdb,
}

/// Task management functions (SAM-5 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskMgmt {
    /// ABORT TASK: the command with this tag.
    AbortTask(u64),
    /// ABORT TASK SET: every command of this nexus on the LU.
    AbortTaskSet,
    /// CLEAR TASK SET: every command of every nexus on the LU.
    ClearTaskSet,
    /// CLEAR ACA.
    ClearAca,
    /// LOGICAL UNIT RESET.
    LogicalUnitReset,
    /// I_T NEXUS RESET (all LUs of the target, this nexus).
    ItNexusReset,
    /// QUERY TASK: is the command with this tag still in the task set?
    QueryTask(u64),
    /// QUERY TASK SET: does this nexus have commands in the task set?
    QueryTaskSet,
    /// QUERY ASYNCHRONOUS EVENT: is a unit attention pending for this nexus?
    QueryAsyncEvent,
}

/// Service responses of a task management function (SAM-5 7.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfResponse {
    /// FUNCTION COMPLETE.
    Complete,
    /// FUNCTION SUCCEEDED (QUERY functions: the thing asked about exists).
    Succeeded,
    /// FUNCTION REJECTED.
    Rejected,
    /// INCORRECT LOGICAL UNIT NUMBER.
    IncorrectLun,
}

/// A SCSI target device: a set of logical units behind one or more target
/// ports. Safe to call from several request queues at once.
pub trait ScsiTarget: Send + Sync {
    /// Execute one command. `Ok` carries the SCSI outcome (including CHECK
    /// CONDITION); `Err` only a transport failure.
    fn execute(
        &self,
        req: &Request<'_>,
        data_out: DataOut<'_>,
        data_in: DataIn<'_>,
    ) -> Result<Response, TransportError>;

    /// Perform a task management function for `nexus` on `lun`.
    fn task_mgmt(&self, nexus: &ItNexus, lun: Lun, tmf: TaskMgmt) -> TmfResponse;

    /// Whether `lun` exists (transports use it for hot-plug events and to
    /// answer TMFs with INCORRECT LUN).
    fn has_lun(&self, lun: Lun) -> bool;

    /// The unit attention condition pending for `nexus` on `lun`, if any,
    /// without consuming it (virtio-scsi PARAM_CHANGE events and QUERY
    /// ASYNCHRONOUS EVENT use it).
    fn pending_unit_attention(&self, nexus: &ItNexus, lun: Lun) -> Option<crate::sense::Sense>;
}
