//! The in-process VMM on rust-vmm crates.
//!
//! Not written yet: the VMM-core issue fills this crate. Until then the
//! helper's backend selection reports the kvm backend as unavailable.
