//! The bubblewrap backend's parts: the probe, the user's extra mounts, the
//! environment it inherits, the sandbox command line, and `sandbox-init`, the sandbox's pid 1.

pub mod binds;
pub mod env;
pub mod init;
pub mod probe;
pub mod runtime_dir;
pub mod sandbox;
pub mod user_config;

pub use sandbox::BwrapSetup;
