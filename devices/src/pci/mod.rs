//! PCI: configuration space, MSI-X, the device trait, the configuration
//! mechanism #1 root at 0xCF8/0xCFC and the i440FX/PIIX functions.

pub mod configuration;
pub mod device;
pub mod intx;
pub mod msix;
pub mod root;
pub mod testdev;

pub use configuration::{BarInfo, BarKind, BarMove, PciConfiguration, PciIds};
pub use device::PciDevice;
pub use msix::MsixConfig;
pub use root::{PciAddress, PciRoot};
