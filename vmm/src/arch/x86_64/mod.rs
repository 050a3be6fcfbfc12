//! x86-64: the guest physical layout, boot protocols, CPUID and the boot
//! vCPU's register state.

pub mod bzimage;
pub mod cpuid;
pub mod hyperv;
pub mod layout;
pub mod mptable;
pub mod pvh;
pub mod regs;
