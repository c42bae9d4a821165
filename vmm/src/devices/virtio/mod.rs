//! virtio devices on the MMIO transport (virtio 1.x, split queues through
//! virtio-queue). Memory reaches a device only at activation, as in
//! Firecracker; queue work runs when the guest notifies a queue.

pub mod block;
pub mod mmio;
pub mod rng;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device status bits (virtio 1.x, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const FAILED: u32 = 128;
}

pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    fn features(&self) -> u64;
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Processes what the driver made available on queue `index`; true
    /// when the driver should be interrupted.
    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool;
}

/// Serves what the driver made available on `queue`, one chain at a time
/// (`serve` returns the bytes it wrote into the chain), at most one pass
/// over the ring so a guest that keeps refilling it cannot hold the vCPU;
/// true when the driver should be interrupted.
pub fn drain_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut serve: impl FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> bool {
    let mut used_any = false;
    for _ in 0..queue.size() {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        let len = serve(chain);
        if queue.add_used(mem, head, len).is_err() {
            break;
        }
        used_any = true;
    }
    used_any && queue.needs_notification(mem).unwrap_or(true)
}
