//! The contract between the cowork-microvm helper and its backends (host,
//! bwrap, kvm): the [`Backend`] trait, the events backends emit, and the
//! rules every backend shares: the spawn environment, guest-path
//! translation and mount validation, and per-session data on the host.

pub mod agent;
pub mod api;
pub mod args;
pub mod bus;
pub mod error;
pub mod event;
pub mod paths;
pub mod protected;
pub mod resolve;
pub mod session_data;
pub mod signal;
pub mod spawn_env;
pub mod tree;
pub mod utf8;
pub mod wire;

pub use api::*;
pub use bus::EventBus;
pub use error::{BackendError, Result};
pub use event::{Event, NetworkStatus};
