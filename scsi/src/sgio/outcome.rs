//! From an SG_IO completion to what the guest sees.
//!
//! A command either reached the device and came back with a SCSI status
//! (GOOD, CHECK CONDITION with the device's own sense, RESERVATION CONFLICT,
//! BUSY, …): that is [`PassthroughOutcome::Completed`] and is handed to the
//! guest byte for byte. Or the host could not deliver it (timeout, reset,
//! lost path, unplugged device, ioctl errno): that is
//! [`PassthroughOutcome::HostFailed`], which [`crate::ScsiTarget::execute`]
//! returns as [`TransportError::Delivery`] and the virtio-scsi transport
//! turns into a non-OK virtio response (the column below;
//! [`PassthroughOutcome::virtio_response`] gives the same), and which is
//! never GOOD even for a transport that can only carry a SCSI status
//! ([`PassthroughOutcome::into_response`]).
//!
//! | host condition                                   | [`HostFailure`]     | virtio response   | SCSI fallback                |
//! |--------------------------------------------------|---------------------|-------------------|------------------------------|
//! | `DID_TIME_OUT`, `DRIVER_TIMEOUT`, `ETIMEDOUT`     | `Timeout`           | BUSY (retried)    | CHECK CONDITION B/2E/02      |
//! | `DID_BUS_BUSY`, `DID_SOFT_ERROR`, `DID_IMM_RETRY`, `DID_REQUEUE`, `EAGAIN`/`EBUSY`/`EINTR`/`ENOMEM` | `Busy` | BUSY | BUSY |
//! | `DID_RESET`                                      | `Reset`             | RESET             | CHECK CONDITION 6/29/00      |
//! | `DID_ABORT`                                      | `Aborted`           | ABORTED           | CHECK CONDITION B/00/00      |
//! | `DID_NO_CONNECT`, `DID_TRANSPORT_DISRUPTED`, `DID_TRANSPORT_FAILFAST`, `DID_TRANSPORT_MARGINAL` | `TransportFailure` | TRANSPORT_FAILURE | CHECK CONDITION B/08/00 |
//! | `DID_BAD_TARGET`                                 | `BadTarget`         | BAD_TARGET        | CHECK CONDITION 4/3E/01      |
//! | `ENODEV`, `ENXIO` (device unplugged)              | `DeviceGone`        | BAD_TARGET        | CHECK CONDITION 4/3E/01      |
//! | `DID_TARGET_FAILURE`                             | `TargetFailure`     | TARGET_FAILURE    | CHECK CONDITION 4/44/00      |
//! | `DID_NEXUS_FAILURE` (status not RESERVATION CONFLICT) | `NexusFailure` | NEXUS_FAILURE     | CHECK CONDITION B/29/07      |
//! | `DID_ERROR`, `DID_PARITY`, other host bytes, driver byte errors, `EIO`, other errno | `Failure` | FAILURE | CHECK CONDITION B/00/06 |
//! | guest buffer smaller than the CDB's transfer     | `Overrun`           | OVERRUN           | CHECK CONDITION B/4B/00      |
//!
//! Special cases that stay SCSI answers: a RESERVATION CONFLICT status with
//! `DID_NEXUS_FAILURE` (older kernels' `scsi_decide_disposition` set that host
//! byte on every reservation conflict) is RESERVATION CONFLICT; `EDOM` (sg's
//! queue is full) is TASK SET FULL; `EPERM`/`EACCES` (the kernel's SG_IO
//! command filter, no CAP_SYS_RAWIO) is CHECK CONDITION 5/20/00 so the guest
//! stops using the command.
//!
//! Timeouts map to BUSY rather than ABORTED (QEMU's choice): Linux guests
//! complete a `DID_ABORT` command with an error without retrying, while both
//! Linux (`DID_BUS_BUSY`) and Windows vioscsi (`SRB_STATUS_BUSY`) retry BUSY.

use std::io;

use crate::sense::{codes, Sense, SenseKey, Status};
use crate::target::{DeliveryFailure, Response, TransportError};

use super::transport::{did, SgCompletion, DRIVER_SENSE, DRIVER_TIMEOUT};

/// B/2E/02 COMMAND TIMEOUT DURING PROCESSING.
pub const COMMAND_TIMEOUT: Sense = Sense::new(SenseKey::AbortedCommand, 0x2E, 0x02);
/// B/08/00 LOGICAL UNIT COMMUNICATION FAILURE.
pub const LUN_COMMUNICATION_FAILURE: Sense = Sense::new(SenseKey::AbortedCommand, 0x08, 0x00);
/// 4/3E/01 LOGICAL UNIT FAILURE.
pub const LOGICAL_UNIT_FAILURE: Sense = Sense::new(SenseKey::HardwareError, 0x3E, 0x01);
/// B/29/07 I_T NEXUS LOSS OCCURRED (aborted command).
pub const NEXUS_LOSS_ABORTED: Sense = Sense::new(SenseKey::AbortedCommand, 0x29, 0x07);
/// B/00/06 I/O PROCESS TERMINATED.
pub const IO_PROCESS_TERMINATED: Sense = Sense::new(SenseKey::AbortedCommand, 0x00, 0x06);
/// B/4B/00 DATA PHASE ERROR.
pub const DATA_PHASE_ERROR: Sense = Sense::new(SenseKey::AbortedCommand, 0x4B, 0x00);

/// virtio-scsi command response codes (virtio 1.2, 5.6.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum VirtioResponse {
    /// VIRTIO_SCSI_S_OK: status and sense are valid.
    Ok = 0,
    /// VIRTIO_SCSI_S_OVERRUN.
    Overrun = 1,
    /// VIRTIO_SCSI_S_ABORTED.
    Aborted = 2,
    /// VIRTIO_SCSI_S_BAD_TARGET.
    BadTarget = 3,
    /// VIRTIO_SCSI_S_RESET.
    Reset = 4,
    /// VIRTIO_SCSI_S_BUSY.
    Busy = 5,
    /// VIRTIO_SCSI_S_TRANSPORT_FAILURE.
    TransportFailure = 6,
    /// VIRTIO_SCSI_S_TARGET_FAILURE.
    TargetFailure = 7,
    /// VIRTIO_SCSI_S_NEXUS_FAILURE.
    NexusFailure = 8,
    /// VIRTIO_SCSI_S_FAILURE.
    Failure = 9,
}

/// Why the host could not complete a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostFailure {
    /// The command timed out on the host.
    Timeout,
    /// The host path is busy; try again.
    Busy,
    /// The host adapter or target was reset.
    Reset,
    /// The command was aborted on the host.
    Aborted,
    /// The path to the device is down (or flapping).
    TransportFailure,
    /// The host says the target does not exist.
    BadTarget,
    /// The device node is gone (unplugged, ENODEV/ENXIO).
    DeviceGone,
    /// Permanent target failure.
    TargetFailure,
    /// The I_T nexus failed.
    NexusFailure,
    /// The guest's buffers are smaller than the CDB's transfer.
    Overrun,
    /// Any other host error (EIO, DID_ERROR, …).
    Failure,
}

impl HostFailure {
    /// The virtio-scsi response for this failure.
    pub fn virtio_response(self) -> VirtioResponse {
        match self {
            HostFailure::Timeout | HostFailure::Busy => VirtioResponse::Busy,
            HostFailure::Reset => VirtioResponse::Reset,
            HostFailure::Aborted => VirtioResponse::Aborted,
            HostFailure::TransportFailure => VirtioResponse::TransportFailure,
            HostFailure::BadTarget | HostFailure::DeviceGone => VirtioResponse::BadTarget,
            HostFailure::TargetFailure => VirtioResponse::TargetFailure,
            HostFailure::NexusFailure => VirtioResponse::NexusFailure,
            HostFailure::Overrun => VirtioResponse::Overrun,
            HostFailure::Failure => VirtioResponse::Failure,
        }
    }

    /// The transport-neutral failure carried by [`TransportError::Delivery`].
    pub fn delivery_failure(self) -> DeliveryFailure {
        match self {
            HostFailure::Timeout => DeliveryFailure::Timeout,
            HostFailure::Busy => DeliveryFailure::Busy,
            HostFailure::Reset => DeliveryFailure::Reset,
            HostFailure::Aborted => DeliveryFailure::Aborted,
            HostFailure::TransportFailure => DeliveryFailure::TransportFailure,
            HostFailure::BadTarget | HostFailure::DeviceGone => DeliveryFailure::BadTarget,
            HostFailure::TargetFailure => DeliveryFailure::TargetFailure,
            HostFailure::NexusFailure => DeliveryFailure::NexusFailure,
            HostFailure::Overrun => DeliveryFailure::Overrun,
            HostFailure::Failure => DeliveryFailure::Failure,
        }
    }

    /// The SCSI status and sense for a transport that cannot carry a virtio
    /// response. Never GOOD.
    pub fn scsi_fallback(self) -> (Status, Option<Sense>) {
        let check = |s| (Status::CheckCondition, Some(s));
        match self {
            HostFailure::Timeout => check(COMMAND_TIMEOUT),
            HostFailure::Busy => (Status::Busy, None),
            HostFailure::Reset => check(codes::POWER_ON_RESET),
            HostFailure::Aborted => check(codes::ABORTED_COMMAND),
            HostFailure::TransportFailure => check(LUN_COMMUNICATION_FAILURE),
            HostFailure::BadTarget | HostFailure::DeviceGone => check(LOGICAL_UNIT_FAILURE),
            HostFailure::TargetFailure => check(codes::INTERNAL_TARGET_FAILURE),
            HostFailure::NexusFailure => check(NEXUS_LOSS_ABORTED),
            HostFailure::Overrun => check(DATA_PHASE_ERROR),
            HostFailure::Failure => check(IO_PROCESS_TERMINATED),
        }
    }
}

/// Where a host failure came from, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostDetail {
    /// The ioctl failed with this errno.
    Errno(i32),
    /// The ioctl succeeded with these host/driver bytes.
    Status {
        /// `host_status`.
        host: u16,
        /// `driver_status`.
        driver: u16,
    },
    /// Found by us before or after the ioctl (overrun, helper trouble).
    Local,
}

/// The result of one passthrough command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassthroughOutcome {
    /// The device (or our emulation) answered with a SCSI status: virtio
    /// response OK, status and sense as given.
    Completed(Response),
    /// The host could not complete the command.
    HostFailed {
        /// The failure class.
        failure: HostFailure,
        /// Where it came from.
        detail: HostDetail,
        /// Bytes written to data-in before the failure.
        data_in_len: usize,
        /// Bytes taken from data-out before the failure.
        data_out_len: usize,
    },
}

impl PassthroughOutcome {
    /// The virtio-scsi response code.
    pub fn virtio_response(&self) -> VirtioResponse {
        match self {
            PassthroughOutcome::Completed(_) => VirtioResponse::Ok,
            PassthroughOutcome::HostFailed { failure, .. } => failure.virtio_response(),
        }
    }

    /// What [`crate::ScsiTarget::execute`] returns: the SCSI [`Response`]
    /// of a completed command, [`TransportError::Delivery`] for a host
    /// failure (the transport's own failure code reaches the initiator).
    pub fn into_result(self) -> Result<Response, TransportError> {
        match self {
            PassthroughOutcome::Completed(r) => Ok(r),
            PassthroughOutcome::HostFailed {
                failure,
                data_in_len,
                data_out_len,
                ..
            } => Err(TransportError::Delivery {
                failure: failure.delivery_failure(),
                data_in_len,
                data_out_len,
            }),
        }
    }

    /// Collapse into a SCSI [`Response`] (host failures get their SCSI
    /// fallback, fixed-format sense), for a transport that can only carry a
    /// SCSI status. Never GOOD for a host failure.
    pub fn into_response(self) -> Response {
        match self {
            PassthroughOutcome::Completed(r) => r,
            PassthroughOutcome::HostFailed {
                failure,
                data_in_len,
                data_out_len,
                ..
            } => {
                let (status, sense) = failure.scsi_fallback();
                Response {
                    status,
                    sense: sense.map(|s| s.to_fixed().to_vec()).unwrap_or_default(),
                    data_in_len,
                    data_out_len,
                }
            }
        }
    }

    /// A completed command with `status` and fixed-format `sense`.
    pub fn scsi(status: Status, sense: Option<Sense>) -> Self {
        PassthroughOutcome::Completed(Response {
            status,
            sense: sense.map(|s| s.to_fixed().to_vec()).unwrap_or_default(),
            data_in_len: 0,
            data_out_len: 0,
        })
    }

    /// CHECK CONDITION with `sense`.
    pub fn check(sense: Sense) -> Self {
        Self::scsi(Status::CheckCondition, Some(sense))
    }

    /// A local host failure with nothing transferred.
    pub fn local(failure: HostFailure) -> Self {
        PassthroughOutcome::HostFailed {
            failure,
            detail: HostDetail::Local,
            data_in_len: 0,
            data_out_len: 0,
        }
    }
}

/// How one SG_IO call ended, before data accounting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// A SCSI status with the device's sense bytes.
    Scsi(Status, Vec<u8>),
    /// A host failure.
    Host(HostFailure, HostDetail),
}

/// Map a SCSI status byte to [`Status`]; `None` for values SAM-5 does not
/// define for a device server (INTERMEDIATE, COMMAND TERMINATED, …).
pub fn status_from_byte(b: u8) -> Option<Status> {
    Some(match b {
        0x00 => Status::Good,
        0x02 => Status::CheckCondition,
        0x04 => Status::ConditionMet,
        0x08 => Status::Busy,
        0x18 => Status::ReservationConflict,
        0x28 => Status::TaskSetFull,
        0x30 => Status::AcaActive,
        0x40 => Status::TaskAborted,
        _ => return None,
    })
}

/// Classify an ioctl errno.
pub fn classify_errno(err: &io::Error) -> Classified {
    let errno = err.raw_os_error().unwrap_or(libc::EIO);
    let host = |f| Classified::Host(f, HostDetail::Errno(errno));
    match errno {
        libc::ENODEV | libc::ENXIO => host(HostFailure::DeviceGone),
        libc::EAGAIN | libc::EBUSY | libc::EINTR | libc::ENOMEM => host(HostFailure::Busy),
        libc::ETIMEDOUT => host(HostFailure::Timeout),
        libc::EDOM => Classified::Scsi(Status::TaskSetFull, Vec::new()),
        libc::EPERM | libc::EACCES => Classified::Scsi(
            Status::CheckCondition,
            codes::INVALID_OPCODE.to_fixed().to_vec(),
        ),
        _ => host(HostFailure::Failure),
    }
}

/// Classify a completed SG_IO request; `sense` is the sense buffer
/// (its first `c.sense_len` bytes are valid).
pub fn classify_completion(c: &SgCompletion, sense: &[u8]) -> Classified {
    let sense_bytes = || sense[..usize::from(c.sense_len).min(sense.len())].to_vec();
    let host = |f| {
        Classified::Host(
            f,
            HostDetail::Status {
                host: c.host_status,
                driver: c.driver_status,
            },
        )
    };
    // Older kernels flag every RESERVATION CONFLICT with DID_NEXUS_FAILURE:
    // the device did answer, and the guest must see the status.
    if c.status == Status::ReservationConflict as u8
        && matches!(c.host_status, did::OK | did::NEXUS_FAILURE)
    {
        return Classified::Scsi(Status::ReservationConflict, sense_bytes());
    }
    match c.host_status {
        did::OK => {}
        did::BUS_BUSY | did::SOFT_ERROR | did::IMM_RETRY | did::REQUEUE => {
            return host(HostFailure::Busy)
        }
        did::TIME_OUT => return host(HostFailure::Timeout),
        did::RESET => return host(HostFailure::Reset),
        did::ABORT => return host(HostFailure::Aborted),
        did::NO_CONNECT
        | did::TRANSPORT_DISRUPTED
        | did::TRANSPORT_FAILFAST
        | did::TRANSPORT_MARGINAL => return host(HostFailure::TransportFailure),
        did::BAD_TARGET => return host(HostFailure::BadTarget),
        did::TARGET_FAILURE => return host(HostFailure::TargetFailure),
        did::NEXUS_FAILURE => return host(HostFailure::NexusFailure),
        _ => return host(HostFailure::Failure),
    }
    // Driver byte: DRIVER_SENSE only says sense was collected.
    match c.driver_status & !DRIVER_SENSE & 0x0f {
        0 => {}
        DRIVER_TIMEOUT => return host(HostFailure::Timeout),
        1 | 2 => return host(HostFailure::Busy), // DRIVER_BUSY, DRIVER_SOFT
        _ => return host(HostFailure::Failure),  // MEDIA, ERROR, INVALID, HARD
    }
    match status_from_byte(c.status) {
        Some(Status::Good) if c.driver_status & DRIVER_SENSE != 0 && c.sense_len > 0 => {
            // Sense without a status (old HBAs): the device did report a
            // condition; pass it as CHECK CONDITION rather than dropping it.
            Classified::Scsi(Status::CheckCondition, sense_bytes())
        }
        Some(Status::Good) => Classified::Scsi(Status::Good, Vec::new()),
        Some(s) => Classified::Scsi(s, sense_bytes()),
        None => host(HostFailure::Failure),
    }
}
