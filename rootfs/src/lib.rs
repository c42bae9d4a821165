//! Guest kernel configuration and the reproducible rootfs/image builder.
//!
//! Not written yet: the guest-side issue fills this crate.
