//! Arbiter's test support: the freestanding test guests and the helpers that
//! boot them with the `arbiter` binary.
//!
//! * [`guests`]: where the guests built by `tests/guests/build.sh` live, and
//!   the integer-only check of their machine code.
//! * [`vm`]: run `arbiter` on a guest with a timeout and collect its serial
//!   output and exit status.
//! * [`kvm`]: what this host's `/dev/kvm` can run, so tests skip with a reason.
//! * [`lab`]: boot real guests (Linux, OVMF) with arbiter or QEMU, directly
//!   on a host with VMX/SVM or nested in a lab host under QEMU's TCG.

pub mod guests;
pub mod kvm;
pub mod lab;
pub mod vm;
