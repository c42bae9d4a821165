//! Deny-by-default network egress: a host-side HTTP proxy whose policy is
//! each spawn's `allowedDomains`. [`proxy`] speaks HTTP over any stream;
//! [`listener`] offers it on a per-process Unix socket (bound into a bwrap
//! sandbox); the kvm backend offers the same over vsock. Used by both
//! sandboxes (bwrap and kvm), so it lives in a crate of its own.

pub mod address;
pub mod conversations;
pub mod denials;
pub mod dial;
pub mod idle;
pub mod limits;
pub mod listener;
pub mod policy;
pub mod probe;
pub mod proxy;

pub use policy::Policy;
