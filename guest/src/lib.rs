//! The guest agent (PID 1 in the VM) and the host<->guest wire types.
//!
//! Not written yet: the guest-side issue fills this crate.
