//! The virtio-fs device (virtio 1.2, 5.11): a high-priority queue and one
//! request queue, each chain one FUSE request and its reply buffers.

use std::sync::Arc;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::api::Vfs;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::GuestMemoryMmap;

use super::Shares;
use crate::devices::virtio::{drain_queue, VirtioDevice};

pub const VIRTIO_ID_FS: u32 = 26;
const QUEUE_SIZES: [u16; 2] = [64, 256];
const TAG_LEN: usize = 36;

pub struct Fs {
    tag: [u8; TAG_LEN],
    server: Server<Arc<Vfs>>,
    /// Keeps the shares (and their file systems) alive with the device.
    _shares: Arc<Shares>,
}

impl Fs {
    pub fn new(tag: &str, shares: Arc<Shares>) -> Fs {
        let mut t = [0u8; TAG_LEN];
        for (d, s) in t.iter_mut().zip(tag.bytes()) {
            *d = s;
        }
        // The open-file limit may have been lifted since the shares were
        // made.
        shares.budget.refresh();
        Fs {
            tag: t,
            server: Server::new(shares.vfs.clone()),
            _shares: shares,
        }
    }

    /// Serves one request; the bytes written into the chain.
    fn serve(&self, chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> u32 {
        // No decision here on the request's bytes: they stay in guest
        // memory, which the guest can rewrite while we serve. Policy is
        // the share's file system's (share_fs.rs), on the parsed copy.
        let (Ok(r), Ok(w)) = (
            Reader::from_descriptor_chain(mem, chain.clone()),
            VirtioFsWriter::new(mem, chain),
        ) else {
            return 0;
        };
        match self.server.handle_message(r, w.into(), None, None) {
            Ok(n) => n as u32,
            Err(e) => {
                crate::guest_log!(debug, "virtio-fs-request", "virtio-fs: request failed: {e}");
                0
            }
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_fs_config { u8 tag[36]; le32 num_request_queues; }
        let mut cfg = [0u8; TAG_LEN + 4];
        cfg[..TAG_LEN].copy_from_slice(&self.tag);
        cfg[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        crate::devices::virtio::read_config_window(&cfg, offset, data);
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        let Some(q) = queues.get_mut(index) else {
            return false;
        };
        drain_queue(q, mem, |chain| self.serve(chain, mem))
    }
}
