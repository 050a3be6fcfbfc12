//! PC legacy devices at fixed I/O ports.

pub mod cmos;
pub mod debug_exit;
pub mod debug_port;
pub mod i8042;
pub mod port92;
pub mod serial;

pub use cmos::Cmos;
pub use debug_exit::DebugExit;
pub use debug_port::DebugPort;
pub use i8042::I8042;
pub use port92::Port92;
pub use serial::Serial;
