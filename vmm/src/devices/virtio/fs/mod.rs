//! virtio-fs in the helper's own process: the FUSE server is
//! fuse-backend-rs's (`Server` over a `Vfs` with one `PassthroughFs` per
//! share), never one of ours. One device, tag [`TAG`], carries every
//! share: a share is mounted into the Vfs at `/<name>` while the VM runs
//! (virtio-mmio devices cannot be added after boot), and the guest agent
//! bind-mounts that directory where the session wants it.
//!
//! What the library does not do, the device does: read-only shares refuse
//! every mutating request before it reaches the library (by the share
//! index the Vfs puts in each node id's top byte), so `ro` holds whatever
//! the guest mounts with.

mod device;
mod shares;

pub use device::{Fs, VIRTIO_ID_FS};
pub use shares::{ShareError, Shares};

/// The device's tag: what the guest mounts (`mount -t virtiofs cowork`).
pub const TAG: &str = "cowork";

#[cfg(test)]
mod tests;
