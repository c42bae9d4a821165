//! Backends that run sessions as processes on this machine: `host` (no
//! isolation) and `bwrap` (a bubblewrap sandbox with deny-by-default
//! egress). They share the process table in [`process`] and the backend in
//! [`local`].

pub mod bwrap;
pub mod host;
pub mod local;
pub mod process;

pub use local::{HostDirs, Isolation, LocalBackend};
