//! cowork-microvm: the Cowork VM helper for Claude Desktop on Linux.
//!
//! The binary speaks the app's helper socket protocol ([`protocol`],
//! [`server`], [`dispatch`]) and runs sessions on the backend [`select`]
//! picks. [`client`] is the same protocol from the other side, used by
//! `run` and `bench`.

pub mod agent_turn;
pub mod app;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod dispatch;
pub mod doctor;
#[doc(hidden)]
pub mod fuzz;
pub mod image;
pub mod installed;
pub mod logging;
pub mod privileges;
pub mod protocol;
pub mod run;
pub mod select;
pub mod server;
pub mod unavailable;
pub mod uninstall;
pub mod vm_boot;
