//! The in-process microVM of cowork-microvm, on rust-vmm crates.

pub mod devices;
pub mod layout;
pub mod memory;
