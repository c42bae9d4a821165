//! virtio-rng: entropy for the guest from the host's getrandom(2), so the
//! guest's CRNG is seeded at once instead of waiting on jitter.

use std::io::Write;

use virtio_queue::{Queue, Writer};
use vm_memory::GuestMemoryMmap;

use super::VirtioDevice;

pub const VIRTIO_ID_RNG: u32 = 4;
const QUEUE_SIZE: u16 = 64;
/// At most this much entropy per request, whatever the guest asks.
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Default)]
pub struct Rng;

fn fill(buf: &mut [u8]) -> bool {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: getrandom writes at most `len` bytes into the live buffer
        // slice it is given.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n <= 0 {
            return false;
        }
        done += n as usize;
    }
    true
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        let Some(queue) = queues.get_mut(index) else {
            return false;
        };
        super::drain_queue(queue, mem, |chain| match Writer::new(mem, chain) {
            Ok(mut w) => {
                let mut buf = vec![0u8; w.available_bytes().min(MAX_REQUEST)];
                if fill(&mut buf) && w.write_all(&buf).is_ok() {
                    buf.len() as u32
                } else {
                    0
                }
            }
            Err(_) => 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn fills_writable_buffers_and_skips_readable_ones() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let d = |addr, len, flags: u32| {
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, 0))
        };
        vq.build_desc_chain(&[d(0x10_0000, 4096, VRING_DESC_F_WRITE)])
            .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut rng = Rng;
        assert!(rng.process_queue(0, std::slice::from_mut(&mut q), &mem));
        assert_eq!(vq.used().ring().ref_at(0).unwrap().load().len(), 4096);
        let mut got = vec![0u8; 4096];
        mem.read_slice(&mut got, GuestAddress(0x10_0000)).unwrap();
        assert!(
            got.iter().filter(|b| **b == 0).count() < 200,
            "looks random"
        );

        // A read-only buffer gets nothing and is still returned.
        let vq = MockSplitQueue::new(&mem, 16);
        vq.build_desc_chain(&[d(0x20_0000, 64, 0)]).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        rng.process_queue(0, std::slice::from_mut(&mut q), &mem);
        assert_eq!(vq.used().ring().ref_at(0).unwrap().load().len(), 0);
    }
}
