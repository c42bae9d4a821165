//! Backends that run sessions as processes on the host: `host` (no
//! isolation) now, bubblewrap in its own issue. Both share the process
//! table in [`process`].

pub mod host;
pub mod process;

pub use host::{HostBackend, HostDirs};
