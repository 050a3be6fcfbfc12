//! ACPI hardware: the PIIX4 power-management function.

pub mod pm;

pub use pm::Piix4Pm;
