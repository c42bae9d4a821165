//! virtio-fs in the helper's own process: the FUSE server is
//! fuse-backend-rs's (`Server` over a `Vfs` with one `PassthroughFs` per
//! share), never one of ours. One device, tag [`TAG`], carries every
//! share: a share is mounted into the Vfs at `/<name>` while the VM runs
//! (virtio-mmio devices cannot be added after boot), and the guest agent
//! bind-mounts that directory where the session wants it.
//!
//! What the library does not do, a layer around each share's file system
//! does ([`share_fs`]): read-only shares refuse every mutating operation
//! from the arguments the server already parsed (so `ro` holds whatever
//! the guest mounts with, or rewrites in its memory meanwhile), owners can
//! be mapped onto the session's guest user, and FIFOs and device nodes
//! cannot be opened, and the protected objects of a read-write share (files
//! a host program later runs or obeys) cannot be changed.

mod budget;
mod device;
mod protected;
mod share_fs;
mod shares;

pub use budget::FdBudget;
pub use device::{Fs, VIRTIO_ID_FS};
pub use protected::{FileId, Protected};
pub use shares::{ShareError, Shares};

/// The device's tag: what the guest mounts (`mount -t virtiofs cowork`).
pub const TAG: &str = "cowork";

#[cfg(test)]
mod tests;
