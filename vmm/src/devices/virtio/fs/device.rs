//! The virtio-fs device (virtio 1.2, 5.11): a high-priority queue and one
//! request queue, each chain one FUSE request and its reply buffers.

use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::api::Vfs;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{ByteValued, GuestMemoryMmap};

use super::Shares;
use crate::devices::virtio::{drain_queue, VirtioDevice};

pub const VIRTIO_ID_FS: u32 = 26;
const QUEUE_SIZES: [u16; 2] = [64, 256];
const TAG_LEN: usize = 36;

pub struct Fs {
    tag: [u8; TAG_LEN],
    server: Server<Arc<Vfs>>,
    shares: Arc<Shares>,
}

impl Fs {
    pub fn new(tag: &str, shares: Arc<Shares>) -> Fs {
        let mut t = [0u8; TAG_LEN];
        for (d, s) in t.iter_mut().zip(tag.bytes()) {
            *d = s;
        }
        Fs {
            tag: t,
            server: Server::new(shares.vfs.clone()),
            shares,
        }
    }

    /// The errno to answer with instead of passing the request on: a
    /// mutating request on a read-only share.
    fn refused(
        &self,
        chain: &DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> Option<(u64, i32)> {
        let mut r = Reader::from_descriptor_chain(mem, chain.clone()).ok()?;
        let h: InHeader = r.read_obj().ok()?;
        let ro = |node: u64| self.shares.node_read_only(node);
        // The first `skip` bytes of the body, then a u64 or u32 field.
        let mut body_u64 = |skip: usize| -> Option<u64> {
            let mut pad = vec![0u8; skip];
            std::io::Read::read_exact(&mut r, &mut pad).ok()?;
            r.read_obj::<u64>().ok()
        };
        const O_ACCMODE: u64 = libc::O_ACCMODE as u64;
        let op = h.opcode;
        let is = |o: Opcode| op == o as u32;
        let mutating = if is(Opcode::Setattr)
            || is(Opcode::Symlink)
            || is(Opcode::Mknod)
            || is(Opcode::Mkdir)
            || is(Opcode::Unlink)
            || is(Opcode::Rmdir)
            || is(Opcode::Write)
            || is(Opcode::Setxattr)
            || is(Opcode::Removexattr)
            || is(Opcode::Create)
            || is(Opcode::Fallocate)
            || is(Opcode::Ioctl)
        {
            ro(h.nodeid)
        } else if is(Opcode::Rename) || is(Opcode::Rename2) || is(Opcode::Link) {
            // RenameIn/LinkIn start with the other node id.
            ro(h.nodeid) || body_u64(0).is_some_and(ro)
        } else if is(Opcode::Open) {
            // OpenIn: flags (u32), then open_flags.
            body_u64(0).is_some_and(|f| {
                let flags = f & 0xffff_ffff;
                (flags & O_ACCMODE != libc::O_RDONLY as u64 || flags & libc::O_TRUNC as u64 != 0)
                    && ro(h.nodeid)
            })
        } else if is(Opcode::CopyFileRange) {
            // CopyFileRangeIn: fh_in, off_in, nodeid_out.
            body_u64(16).is_some_and(ro)
        } else {
            false
        };
        mutating.then_some((h.unique, libc::EROFS))
    }

    /// Serves one request; the bytes written into the chain.
    fn serve(&self, chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> u32 {
        if let Some((unique, errno)) = self.refused(&chain, mem) {
            let Ok(mut w) = VirtioFsWriter::new(mem, chain) else {
                return 0;
            };
            let out = OutHeader {
                len: std::mem::size_of::<OutHeader>() as u32,
                error: -errno,
                unique,
            };
            return match std::io::Write::write_all(&mut w, out.as_slice()) {
                Ok(()) => out.len,
                Err(_) => 0,
            };
        }
        let (Ok(r), Ok(w)) = (
            Reader::from_descriptor_chain(mem, chain.clone()),
            VirtioFsWriter::new(mem, chain),
        ) else {
            return 0;
        };
        match self.server.handle_message(r, w.into(), None, None) {
            Ok(n) => n as u32,
            Err(e) => {
                tracing::debug!("virtio-fs: request failed: {e}");
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
