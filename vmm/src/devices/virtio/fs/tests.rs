//! FUSE requests through the device on a mock queue, against real host
//! directories: what the guest's virtiofs driver sends, and what a hostile
//! guest could.

use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, EntryOut, InHeader, InitIn, LinkIn, MkdirIn, Opcode, OpenIn, OpenOut, OutHeader,
    ReadIn, RenameIn, SetattrIn, WriteIn,
};
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::{Fs, Shares, TAG};
use crate::devices::virtio::VirtioDevice;

const REQ: u64 = 0x10_0000;
const REPLY: u64 = 0x20_0000;
const ROOT: u64 = 1;
/// Where the high-priority queue's rings are.
const HIPRIO: u64 = 0x8_0000;

struct Guest {
    mem: &'static GuestMemoryMmap,
    vq: MockSplitQueue<'static, GuestMemoryMmap>,
    /// The high-priority queue (0): FORGET and BATCH_FORGET, no replies.
    hiprio: MockSplitQueue<'static, GuestMemoryMmap>,
    queues: Vec<Queue>,
    dev: Fs,
    seen: u16,
    unique: u64,
    /// Where requests are written in guest memory.
    req: u64,
    /// The caller's ids in each request's header.
    uid: u32,
    gid: u32,
}

fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
}

impl Guest {
    /// OPEN with `flags`: the file handle, or the errno.
    fn open(&mut self, node: u64, flags: i32) -> Result<u64, i32> {
        let o = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        let (out, p) = self.call(Opcode::Open as u32, node, o.as_slice());
        if out.error != 0 {
            return Err(-out.error);
        }
        Ok(OpenOut::from_slice(&p[..std::mem::size_of::<OpenOut>()])
            .map(|o| o.fh)
            .unwrap_or_default())
    }

    fn new(shares: Arc<Shares>) -> Guest {
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap(),
        ));
        let vq = MockSplitQueue::create(mem, GuestAddress(0), 16);
        let hiprio = MockSplitQueue::create(mem, GuestAddress(HIPRIO), 16);
        let queues = vec![hiprio.create_queue().unwrap(), vq.create_queue().unwrap()];
        let mut g = Guest {
            mem,
            vq,
            hiprio,
            queues,
            dev: Fs::new(TAG, shares),
            seen: 0,
            unique: 0,
            req: REQ,
            uid: 0,
            gid: 0,
        };
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 1 << 20,
            flags: 0,
        };
        let (out, _) = g.call(
            Opcode::Init as u32,
            0,
            &[init.as_slice(), &[0u8; 48]].concat(),
        );
        assert_eq!(out.error, 0, "INIT");
        g
    }

    /// Sends raw request bytes; the reply header (if any) and payload.
    fn raw(&mut self, request: &[u8]) -> Option<(OutHeader, Vec<u8>)> {
        self.mem
            .write_slice(request, GuestAddress(self.req))
            .unwrap();
        let chain = [
            desc(self.req, request.len() as u32, 1, 1),
            desc(REPLY, 1 << 16, VRING_DESC_F_WRITE, 0),
        ];
        // By hand: the mock's add_desc_chains does not wrap the avail
        // ring, so past 16 requests it writes beyond it.
        for (i, d) in chain.iter().enumerate() {
            self.vq.desc_table().store(i as u16, *d).unwrap();
        }
        let avail = self.vq.avail_addr();
        let idx: u16 = self.mem.read_obj(avail.unchecked_add(2)).unwrap();
        self.mem
            .write_obj(0u16, avail.unchecked_add(4 + u64::from(idx % 16) * 2))
            .unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), avail.unchecked_add(2))
            .unwrap();
        self.dev.process_queue(1, &mut self.queues, self.mem);
        let e = self
            .vq
            .used()
            .ring()
            .ref_at((self.seen % 16) as usize)
            .unwrap()
            .load();
        self.seen = self.seen.wrapping_add(1);
        if (e.len() as usize) < std::mem::size_of::<OutHeader>() {
            return None;
        }
        let out: OutHeader = self.mem.read_obj(GuestAddress(REPLY)).unwrap();
        assert_eq!(out.len, e.len(), "reply length as used");
        let mut payload = vec![0u8; e.len() as usize - std::mem::size_of::<OutHeader>()];
        self.mem
            .read_slice(&mut payload, GuestAddress(REPLY + 16))
            .unwrap();
        Some((out, payload))
    }

    fn call(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> (OutHeader, Vec<u8>) {
        self.unique += 1;
        let h = InHeader {
            len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
            opcode,
            unique: self.unique,
            nodeid,
            uid: self.uid,
            gid: self.gid,
            pid: 1,
            padding: 0,
        };
        let (out, payload) = self.raw(&[h.as_slice(), body].concat()).expect("a reply");
        assert_eq!(out.unique, self.unique);
        (out, payload)
    }

    fn lookup(&mut self, parent: u64, name: &str) -> Result<u64, i32> {
        let (out, p) = self.call(Opcode::Lookup as u32, parent, &cstr(name));
        if out.error != 0 {
            return Err(-out.error);
        }
        let mut e = EntryOut::default();
        e.as_mut_slice()
            .copy_from_slice(&p[..std::mem::size_of::<EntryOut>()]);
        Ok(e.nodeid)
    }

    fn create(&mut self, parent: u64, name: &str) -> i32 {
        let c = CreateIn {
            flags: libc::O_WRONLY as u32 | libc::O_CREAT as u32,
            mode: 0o644,
            umask: 0,
            fuse_flags: 0,
        };
        -self
            .call(
                Opcode::Create as u32,
                parent,
                &[c.as_slice(), &cstr(name)].concat(),
            )
            .0
            .error
    }
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

mod budget;
mod policy;
mod protected;

/// The kvm backend imports a folder through the descriptor it opened when
/// it checked the path (`/proc/self/fd/N/.`): a session that swaps a
/// folder on the path for a symlink between the check and the import
/// changes nothing the guest sees.
#[test]
fn a_share_imported_through_its_descriptor_keeps_its_folder() {
    use std::os::fd::AsRawFd;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    std::fs::create_dir_all(h.join("proj/work")).unwrap();
    std::fs::create_dir_all(h.join("secret/work")).unwrap();
    std::fs::write(h.join("proj/work/mine.txt"), b"mine").unwrap();
    std::fs::write(h.join("secret/work/key"), b"private").unwrap();
    let checked = std::fs::File::open(h.join("proj/work")).unwrap();
    // The session's swap: the folder on the way moved, a symlink in its
    // place.
    std::fs::rename(h.join("proj"), h.join("moved")).unwrap();
    std::os::unix::fs::symlink(h.join("secret"), h.join("proj")).unwrap();
    let shares = Arc::new(Shares::new());
    let via = std::path::PathBuf::from(format!("/proc/self/fd/{}/.", checked.as_raw_fd()));
    let name = shares.add(&via, false, None).unwrap();
    drop(checked);
    let mut g = Guest::new(shares);
    let root = g.lookup(ROOT, &name).unwrap();
    assert!(g.lookup(root, "mine.txt").is_ok(), "the checked folder");
    assert_eq!(
        g.lookup(root, "key"),
        Err(libc::ENOENT),
        "not the symlink's"
    );
}

#[test]
fn shares_read_write_and_read_only() {
    let rw = tempfile::tempdir().unwrap();
    let ro = tempfile::tempdir().unwrap();
    std::fs::write(ro.path().join("keep.txt"), b"precious").unwrap();
    let shares = Arc::new(Shares::new());
    let rw_name = shares.add(rw.path(), false, None).unwrap();
    let ro_name = shares.add(ro.path(), true, None).unwrap();
    let mut g = Guest::new(shares.clone());

    let rw_root = g.lookup(ROOT, &rw_name).unwrap();
    assert_eq!(g.create(rw_root, "new.txt"), 0, "create in a rw share");
    assert!(rw.path().join("new.txt").exists());
    let mkdir = MkdirIn {
        mode: 0o755,
        umask: 0,
    };
    let (out, _) = g.call(
        Opcode::Mkdir as u32,
        rw_root,
        &[mkdir.as_slice(), &cstr("d")].concat(),
    );
    assert_eq!(out.error, 0);
    assert!(rw.path().join("d").is_dir());

    // Every mutating request on the ro share is refused by the device.
    let ro_root = g.lookup(ROOT, &ro_name).unwrap();
    let keep = g.lookup(ro_root, "keep.txt").unwrap();
    assert_eq!(g.create(ro_root, "x"), libc::EROFS);
    let (out, _) = g.call(
        Opcode::Mkdir as u32,
        ro_root,
        &[mkdir.as_slice(), &cstr("d")].concat(),
    );
    assert_eq!(-out.error, libc::EROFS);
    let (out, _) = g.call(Opcode::Unlink as u32, ro_root, &cstr("keep.txt"));
    assert_eq!(-out.error, libc::EROFS);
    let setattr = SetattrIn {
        valid: 1 << 3, // FATTR_SIZE
        size: 0,
        ..Default::default()
    };
    let (out, _) = g.call(Opcode::Setattr as u32, keep, setattr.as_slice());
    assert_eq!(-out.error, libc::EROFS, "truncate");
    let w = WriteIn {
        size: 3,
        ..Default::default()
    };
    let (out, _) = g.call(Opcode::Write as u32, keep, &[w.as_slice(), b"bad"].concat());
    assert_eq!(-out.error, libc::EROFS);
    let open = |flags: i32| OpenIn {
        flags: flags as u32,
        fuse_flags: 0,
    };
    let (out, _) = g.call(Opcode::Open as u32, keep, open(libc::O_RDWR).as_slice());
    assert_eq!(-out.error, libc::EROFS, "open for writing");
    let (out, opened) = g.call(Opcode::Open as u32, keep, open(libc::O_RDONLY).as_slice());
    assert_eq!(out.error, 0, "open for reading passes");
    let fh = u64::from_le_bytes(opened[..8].try_into().unwrap());
    // Renames out of and into the ro share: the Vfs refuses any rename
    // across shares (EINVAL); inside it, the share's EROFS.
    let into = RenameIn { newdir: ro_root };
    let (out, _) = g.call(
        Opcode::Rename as u32,
        rw_root,
        &[into.as_slice(), &cstr("new.txt"), &cstr("moved")].concat(),
    );
    assert_eq!(-out.error, libc::EINVAL, "rename into ro");
    let out_of = RenameIn { newdir: rw_root };
    let (out, _) = g.call(
        Opcode::Rename as u32,
        ro_root,
        &[out_of.as_slice(), &cstr("keep.txt"), &cstr("stolen")].concat(),
    );
    assert_eq!(-out.error, libc::EINVAL, "rename out of ro");
    let link = LinkIn { oldnodeid: keep };
    let (out, _) = g.call(
        Opcode::Link as u32,
        rw_root,
        &[link.as_slice(), &cstr("hardlink")].concat(),
    );
    assert_eq!(-out.error, libc::EINVAL, "link out of ro");
    assert!(!rw.path().join("hardlink").exists());
    assert!(rw.path().join("new.txt").exists());
    assert_eq!(
        std::fs::read(ro.path().join("keep.txt")).unwrap(),
        b"precious"
    );

    // Reading from the ro share works.
    let r = ReadIn {
        fh,
        size: 100,
        ..Default::default()
    };
    let (out, data) = g.call(Opcode::Read as u32, keep, r.as_slice());
    assert_eq!(out.error, 0);
    assert_eq!(data, b"precious");

    // Removing a share makes it vanish.
    shares.remove(&ro_name);
    if let Ok(dir) = g.lookup(ROOT, &ro_name) {
        assert!(
            g.lookup(dir, "keep.txt").is_err(),
            "an unshared folder's files vanish"
        );
    }
    assert_eq!(shares.count(), 1);
}

#[test]
fn escapes_bad_inodes_and_malformed_requests() {
    let outer = tempfile::tempdir().unwrap();
    let inner = outer.path().join("share");
    std::fs::create_dir(&inner).unwrap();
    std::os::unix::fs::symlink("/etc", inner.join("link")).unwrap();
    let shares = Arc::new(Shares::new());
    let name = shares.add(&inner, false, None).unwrap();
    let mut g = Guest::new(shares);
    let root = g.lookup(ROOT, &name).unwrap();

    // ".." at the share's root stays in the share; names with ".." or "/"
    // are refused; nothing appears outside.
    if let Ok(up) = g.lookup(root, "..") {
        assert!(
            g.lookup(up, "share").is_err(),
            "'..' must not reach the parent"
        );
    }
    assert_ne!(g.create(root, "../escaped"), 0);
    assert_ne!(g.create(root, "a/b"), 0);
    let mv = RenameIn { newdir: root };
    std::fs::write(inner.join("f"), b"x").unwrap();
    let (out, _) = g.call(
        Opcode::Rename as u32,
        root,
        &[mv.as_slice(), &cstr("f"), &cstr("../escaped")].concat(),
    );
    assert_ne!(out.error, 0);
    assert!(
        !outer.path().join("escaped").exists(),
        "nothing outside the share"
    );
    // A symlink pointing out is a symlink, never followed by the server.
    let link = g.lookup(root, "link").unwrap();
    assert!(g.lookup(link, "passwd").is_err());

    // Made-up node ids, a huge read, a request shorter than its header,
    // a header claiming more than was sent: answers or nothing, no panic.
    let (out, _) = g.call(Opcode::Getattr as u32, 0xdead_beef, &[0u8; 16]);
    assert_ne!(out.error, 0);
    let (out, _) = g.call(Opcode::Getattr as u32, 0x7f << 56 | 5, &[0u8; 16]);
    assert_ne!(out.error, 0);
    let r = ReadIn {
        size: u32::MAX,
        ..Default::default()
    };
    let (out, _) = g.call(Opcode::Read as u32, root, r.as_slice());
    assert_ne!(out.error, 0, "a directory read with an absurd size fails");
    assert!(g.raw(&[1, 2, 3]).is_none());
    let lying = InHeader {
        len: 4096,
        opcode: Opcode::Lookup as u32,
        unique: 99,
        nodeid: root,
        ..Default::default()
    };
    let _ = g.raw(lying.as_slice());
    let _ = g.call(9999, root, &[]);
    // Still serving.
    assert!(g.lookup(ROOT, &name).is_ok());
}
