//! Backends that run sessions as processes on this machine: `host` (no
//! isolation) and `bwrap` (a bubblewrap sandbox with deny-by-default
//! egress). They share the process table in [`process`] and the backend in
//! [`local`]; [`egress`] is the proxy the VM backend reuses over vsock.

pub mod bwrap;
pub mod egress;
pub mod host;
pub mod local;
pub mod process;

pub use local::{HostDirs, Isolation, LocalBackend};
