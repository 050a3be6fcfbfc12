//! SG_IO passthrough: a logical unit that hands the guest's commands to a
//! real SCSI device (`/dev/sgN`, `/dev/sdX`, a dm-multipath node) so that the
//! device's status and sense data — RESERVATION CONFLICT, CHECK CONDITION,
//! unit attentions — reach the guest unchanged.
//!
//! Layers, bottom up:
//! * [`transport`]: the [`SgTransport`] trait (one `sg_io_hdr` request), its
//!   real implementation [`SgDevice`] over `ioctl(fd, SG_IO, …)` and the
//!   scriptable [`FakeSg`] used by the tests;
//! * [`outcome`]: how a completion (SCSI status, `host_status`,
//!   `driver_status`, `resid`, errno) becomes a [`PassthroughOutcome`], and
//!   how that maps to a virtio-scsi response ([`VirtioResponse`]) or, for a
//!   transport that only carries SCSI status, to a never-GOOD SCSI answer;
//! * [`filter`]: the default-deny list of commands that can brick or wipe a
//!   shared device, with a configurable allow-list;
//! * [`cdb`]: CDB lengths, READ/WRITE(10/12/16) parsing and LBA/length
//!   patching for splitting large transfers;
//! * [`emulate`]: REPORT LUNS from our LUN map, INQUIRY / VPD 0x80 / 0x83
//!   identity rewriting, mode-page masking;
//! * [`prhelper`]: a client for the qemu-pr-helper socket protocol;
//! * [`lu`]: [`PassthroughLu`], tying it all together, with the per-disk
//!   reservation routing ([`PrRouting`]).

pub mod cdb;
pub mod emulate;
pub mod filter;
pub mod lu;
pub mod outcome;
pub mod prhelper;
pub mod transport;

pub use emulate::{Identity, LunMap, ModeMask};
pub use filter::{CommandFilter, FilterConfig};
pub use lu::{PassthroughConfig, PassthroughLu, PassthroughTarget, PrRouting};
pub use outcome::{HostFailure, PassthroughOutcome, VirtioResponse};
pub use prhelper::{PrHelperClient, PrHelperError, PrHelperReply};
pub use transport::{
    has_cap_sys_rawio, FakeCall, FakeReply, FakeSg, SgCompletion, SgData, SgDevice, SgDir,
    SgRequest, SgTransport,
};

/// Errors opening or configuring a passthrough unit (never a per-command
/// error: those become SCSI or virtio responses).
#[derive(Debug, thiserror::Error)]
pub enum SgioError {
    /// The device node could not be opened.
    #[error("cannot open SCSI device {path}: {source}")]
    Open {
        /// The path given.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The path is neither a character (sg) nor a block (sd, dm) device.
    #[error("{0} is not a SCSI generic or block device node")]
    NotADevice(String),
    /// `pr=passthrough` needs CAP_SYS_RAWIO: Linux only lets privileged
    /// programs send PERSISTENT RESERVE IN/OUT through SG_IO.
    #[error(
        "pr=passthrough on {0} needs CAP_SYS_RAWIO (Linux refuses PERSISTENT RESERVE IN/OUT \
         through SG_IO otherwise): run with that capability, or use \
         pr=helper:/path/to/qemu-pr-helper.sock, or pr=emulated"
    )]
    NeedsRawIo(String),
    /// `pr=helper:…` but the helper could not be reached or spoke no
    /// protocol we know.
    #[error("pr=helper:{path}: {source}")]
    Helper {
        /// Socket path.
        path: String,
        /// What went wrong.
        #[source]
        source: PrHelperError,
    },
    /// `pr=helper:…` needs a device file descriptor to hand to the helper.
    #[error("pr=helper needs a transport backed by a file descriptor")]
    HelperNeedsFd,
    /// `pr=emulated` without a reservation state.
    #[error("pr=emulated needs a reservation state (Arc<dyn Reservations>)")]
    EmulatedNeedsState,
    /// A configuration string could not be parsed.
    #[error("bad passthrough option {0:?}: {1}")]
    BadOption(String, &'static str),
}
