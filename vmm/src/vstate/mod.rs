//! Live KVM state: the VM (memory slots, irqchip, PIT, GSI routes) and the vCPUs.

pub mod hyperv;
pub mod memory;
pub mod vcpu;
pub mod vm;
