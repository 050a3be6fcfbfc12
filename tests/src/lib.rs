//! Arbiter's test support: the freestanding test guests and the helpers that
//! boot them with the `arbiter` binary.
//!
//! * [`guests`]: where the guests built by `tests/guests/build.sh` live, and
//!   the integer-only check of their machine code.
//! * [`vm`]: run `arbiter` on a guest with a timeout and collect its serial
//!   output and exit status.
//! * [`kvm`]: what this host's `/dev/kvm` can run, so tests skip with a reason.

pub mod guests;
pub mod kvm;
pub mod vm;
