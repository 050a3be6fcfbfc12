//! Arbiter's device models: PC platform and legacy devices, PCI, the virtio
//! PCI transport and the virtio-scsi controller. Devices see guest memory
//! through vm-memory and raise interrupts through small traits; KVM itself
//! stays in the `vmm` crate.

pub mod acpi;
pub mod bus;
pub mod firmware;
pub mod interrupt;
pub mod legacy;
pub mod lifecycle;
pub mod pci;
pub mod virtio;
