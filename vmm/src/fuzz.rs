//! Entry points for the fuzz targets (`fuzz/`, cargo-fuzz) and their
//! regression tests: arbitrary bytes become descriptor chains a malicious
//! guest driver could post, and a device processes them. Only built with
//! the `fuzzing` feature.
//!
//! Input layout, read front to back until it runs out: a chain count
//! byte, then per chain a descriptor count byte and per descriptor a
//! 2-byte length, a flags byte (bit 0 device-writable, bit 1 an address
//! taken from the next 8 input bytes instead of a valid slot) and, for
//! driver-readable descriptors, up to `length` bytes of content.

use std::sync::Arc;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::virtio::block::Block;
use crate::devices::virtio::fs::{Fs, Shares, TAG};
use crate::devices::virtio::vsock::{Vsock, GUEST_CID};
use crate::devices::virtio::VirtioDevice;

/// Queues, then 16 slots of 64 KiB for descriptor contents.
const MEM_BYTES: usize = 2 << 20;
const QUEUE_LEN: u16 = 16;
const SLOTS: u64 = 0x10_0000;
const SLOT_BYTES: u64 = 0x1_0000;
const MAX_CHAINS: u8 = 8;
const MAX_DESCRIPTORS: u8 = 4;

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.byte()?, self.byte()?]))
    }

    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let got = self.take(8);
        b[..got.len()].copy_from_slice(got);
        u64::from_le_bytes(b)
    }
}

/// Guest memory and one mock queue per device queue, the chains of `data`
/// posted on queue `target`.
struct Driver {
    mem: &'static GuestMemoryMmap,
    mocks: Vec<MockSplitQueue<'static, GuestMemoryMmap>>,
    queues: Vec<Queue>,
    next: Vec<u16>,
}

impl Driver {
    fn new(queue_count: usize) -> Option<Driver> {
        // Leaked once per process: the mock queues borrow it for 'static.
        thread_local! {
            static MEM: Option<&'static GuestMemoryMmap> =
                GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_BYTES)])
                    .ok()
                    .map(|m| &*Box::leak(Box::new(m)));
        }
        let mem = MEM.with(|m| *m)?;
        // Nothing of an earlier input may be seen by this one: a crash must
        // reproduce from its own bytes.
        mem.write_slice(&vec![0u8; MEM_BYTES], GuestAddress(0))
            .ok()?;
        let mut mocks = Vec::new();
        let mut queues = Vec::new();
        for q in 0..queue_count {
            let mock = MockSplitQueue::create(mem, GuestAddress(q as u64 * 0x4000), QUEUE_LEN);
            queues.push(mock.create_queue().ok()?);
            mocks.push(mock);
        }
        Some(Driver {
            mem,
            mocks,
            queues,
            next: vec![0; queue_count],
        })
    }

    /// Posts every chain described by `data` on queue `target`.
    fn post(&mut self, target: usize, data: &[u8]) {
        let mut c = Cursor(data);
        let chains = c.byte().unwrap_or(0) % (MAX_CHAINS + 1);
        for _ in 0..chains {
            let Some(n) = c.byte().map(|n| n % MAX_DESCRIPTORS + 1) else {
                return;
            };
            self.post_chain(target, n, &mut c);
        }
    }

    fn post_chain(&mut self, target: usize, n: u8, c: &mut Cursor<'_>) {
        let first = self.next[target];
        let mut chain = Vec::new();
        for i in 0..n as u16 {
            let (Some(len), Some(flags)) = (c.u16(), c.byte()) else {
                break;
            };
            let slot = (first + i) % QUEUE_LEN;
            let mut addr = SLOTS + slot as u64 * SLOT_BYTES;
            let len = (len as u64).min(SLOT_BYTES) as u32;
            let writable = flags & 1 != 0;
            if flags & 2 != 0 {
                addr = c.u64();
            } else if !writable {
                let content = c.take(len as usize);
                let _ = self.mem.write_slice(content, GuestAddress(addr));
            }
            let mut f = if writable { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 < n as u16 {
                f |= VRING_DESC_F_NEXT;
            }
            let next = (slot + 1) % QUEUE_LEN;
            chain.push(RawDescriptor::from(SplitDescriptor::new(
                addr, len, f as u16, next,
            )));
        }
        if chain.is_empty() {
            return;
        }
        if let Some(last) = chain.last_mut() {
            let d = SplitDescriptor::from(*last);
            *last = RawDescriptor::from(SplitDescriptor::new(
                d.addr().0,
                d.len(),
                d.flags() & !(VRING_DESC_F_NEXT as u16),
                0,
            ));
        }
        if self.mocks[target]
            .add_desc_chains(&chain, first % QUEUE_LEN)
            .is_ok()
        {
            self.next[target] = first.wrapping_add(chain.len() as u16);
        }
    }

    fn run(&mut self, dev: &mut dyn VirtioDevice, index: usize) {
        dev.process_queue(index, &mut self.queues, self.mem);
    }
}

/// virtio-vsock: `data` as packets on the TX queue (after receive buffers
/// are posted), with a host listener on port 1024 to connect to.
pub fn vsock(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else { return };
    let uds = dir.path().join("v.sock");
    let Ok(mut dev) = Vsock::new(GUEST_CID, &uds) else {
        return;
    };
    let _listener = std::os::unix::net::UnixListener::bind(
        crate::devices::virtio::vsock::host_port_path(&uds, 1024),
    );
    let Some(mut d) = Driver::new(3) else { return };
    d.post(
        0,
        &[
            4, 0, 0, 0x10, 1, 0, 0, 0x10, 1, 0, 0, 0x10, 1, 0, 0, 0x10, 1,
        ],
    );
    d.run(&mut dev, 0);
    d.post(1, data);
    d.run(&mut dev, 1);
    let (queues, mem) = (&mut d.queues, d.mem);
    dev.process_backend(queues, mem);
    d.run(&mut dev, 0);
}

/// virtio-blk: `data` as requests on a 64 KiB writable disk.
pub fn block(data: &[u8]) {
    let Ok(file) = tempfile::NamedTempFile::new() else {
        return;
    };
    if file.as_file().set_len(64 << 10).is_err() {
        return;
    }
    let Ok(mut dev) = Block::open(file.path(), false, "fuzz") else {
        return;
    };
    let Some(mut d) = Driver::new(1) else { return };
    d.post(0, data);
    d.run(&mut dev, 0);
}

/// virtio-fs: `data` as FUSE requests on the request queue, after INIT,
/// with one read-write and one read-only share.
pub fn fs(data: &[u8]) {
    let (Ok(rw), Ok(ro)) = (tempfile::tempdir(), tempfile::tempdir()) else {
        return;
    };
    let keep = ro.path().join("keep.txt");
    if std::fs::write(&keep, b"precious").is_err() {
        return;
    }
    let shares = Arc::new(Shares::new());
    if shares.add(rw.path(), false, None).is_err() || shares.add(ro.path(), true, None).is_err() {
        return;
    }
    let mut dev = Fs::new(TAG, shares);
    let Some(mut d) = Driver::new(2) else { return };
    d.post(1, &init_request());
    d.run(&mut dev, 1);
    d.post(1, data);
    d.run(&mut dev, 1);
    // The finding this target exists for: a write through a read-only
    // share. Panicking is how a fuzz target reports it.
    let kept = std::fs::read(&keep).ok();
    assert_eq!(
        kept.as_deref(),
        Some(&b"precious"[..]),
        "a request changed a file in a read-only share"
    );
    let listed = std::fs::read_dir(ro.path()).map(|d| d.count()).ok();
    assert_eq!(listed, Some(1), "a request changed a read-only share");
}

/// One chain: FUSE INIT 7.31, then a reply buffer.
fn init_request() -> Vec<u8> {
    const INIT: u32 = 26;
    let mut req = Vec::new();
    let len: u32 = 40 + 64;
    req.extend_from_slice(&len.to_le_bytes());
    req.extend_from_slice(&INIT.to_le_bytes());
    req.extend_from_slice(&1u64.to_le_bytes()); // unique
    req.extend_from_slice(&0u64.to_le_bytes()); // nodeid
    req.extend_from_slice(&[0u8; 16]); // uid, gid, pid, padding
    req.extend_from_slice(&7u32.to_le_bytes());
    req.extend_from_slice(&31u32.to_le_bytes());
    req.extend_from_slice(&(1u32 << 20).to_le_bytes());
    req.extend_from_slice(&[0u8; 52]);
    let mut chain = vec![1, 1];
    chain.extend_from_slice(&(req.len() as u16).to_le_bytes());
    chain.push(0);
    chain.extend_from_slice(&req);
    chain.extend_from_slice(&0x1000u16.to_le_bytes());
    chain.push(1);
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_are_built_from_bytes_and_processed() {
        // A readable header chain for each device, then nonsense: neither
        // may panic, and every descriptor count and flag combination parses.
        for data in [
            &[][..],
            &[1, 0, 44, 0, 0][..],
            &[8, 3, 0xff, 0xff, 3, 1, 2, 3][..],
        ] {
            vsock(data);
            block(data);
            fs(data);
        }
    }
}
