//! virtio-blk: the read-only rootfs and the read-write session disk.

pub mod device;
mod request;

pub use device::Block;
pub use request::{RequestType, Status};

pub const SECTOR_SIZE: u64 = 512;
pub const VIRTIO_ID_BLOCK: u32 = 2;
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// The ID string `GET_ID` returns is at most this long.
pub const ID_BYTES: usize = 20;
pub const QUEUE_SIZE: u16 = 256;
