//! virtio devices on the MMIO transport (virtio 1.x, split queues through
//! virtio-queue). Memory reaches a device only at activation, as in
//! Firecracker. Queue work runs on the VM's event loop when the guest
//! notifies a queue (an ioeventfd, so the vCPU does not wait for it), and
//! a device with a backend of its own (vsock's sockets) is woken there too.

pub mod block;
pub mod event_loop;
pub mod fs;
pub mod mmio;
pub mod rng;
pub mod vsock;

use std::os::fd::RawFd;

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
    /// Processes what the driver made available on queue `index` (every
    /// queue is passed: a device may answer on another one); true when
    /// the driver should be interrupted.
    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool;
    /// A descriptor the event loop watches for work that starts outside
    /// the guest (a socket with data for it).
    fn backend_fd(&self) -> Option<RawFd> {
        None
    }
    /// The backend descriptor is ready. `queues` is empty until the driver
    /// has finished setting the device up: the device must still consume
    /// its readiness (and keep the work for later) so the loop does not spin.
    fn process_backend(&mut self, _queues: &mut [Queue], _mem: &GuestMemoryMmap) -> bool {
        false
    }
    /// The driver reset the device: forget every guest-facing state.
    fn reset(&mut self) {}
}

/// Copies the window `offset..offset + data.len()` of a device's config
/// space into `data`; what lies outside it reads as zeros.
pub fn read_config_window(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = offset
            .checked_add(i as u64)
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| config.get(at).copied())
            .unwrap_or(0);
    }
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
