//! Deny-by-default network egress: a host-side HTTP proxy whose policy is
//! each spawn's `allowedDomains`. [`proxy`] speaks HTTP over any stream;
//! [`listener`] offers it on a per-process Unix socket (bound into a bwrap
//! sandbox); the VM backend will offer the same over vsock.

pub mod listener;
pub mod policy;
pub mod probe;
pub mod proxy;

pub use policy::Policy;
