//! The descriptor budget (budget.rs, counted in share_fs.rs): a guest that
//! looks up or opens more than the budget gets ENFILE for new inodes and
//! handles, keeps what it already has, and gets room back by forgetting
//! (on the high-priority queue, where the guest sends FORGET) or releasing.

use fuse_backend_rs::abi::fuse_abi::{BatchForgetIn, ForgetIn, ForgetOne, ReleaseIn};

use super::*;

/// A request on the high-priority queue; FORGETs get no reply, so all
/// there is to check is that the chain was used.
impl Guest {
    fn hiprio(&mut self, opcode: Opcode, nodeid: u64, body: &[u8]) {
        self.unique += 1;
        let h = InHeader {
            len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
            opcode: opcode as u32,
            unique: self.unique,
            nodeid,
            ..Default::default()
        };
        let request = [h.as_slice(), body].concat();
        self.mem
            .write_slice(&request, GuestAddress(self.req))
            .unwrap();
        let avail = self.hiprio.avail_addr();
        let idx: u16 = self.mem.read_obj(avail.unchecked_add(2)).unwrap();
        self.hiprio
            .desc_table()
            .store(0, desc(self.req, request.len() as u32, 0, 0))
            .unwrap();
        self.mem
            .write_obj(0u16, avail.unchecked_add(4 + u64::from(idx % 16) * 2))
            .unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), avail.unchecked_add(2))
            .unwrap();
        self.dev.process_queue(0, &mut self.queues, self.mem);
        let used: u16 = self
            .mem
            .read_obj(self.hiprio.used_addr().unchecked_add(2))
            .unwrap();
        assert_eq!(used, idx.wrapping_add(1), "the hiprio request was served");
    }

    fn forget(&mut self, node: u64, nlookup: u64) {
        self.hiprio(Opcode::Forget, node, ForgetIn { nlookup }.as_slice());
    }
}

fn tree(files: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..files {
        std::fs::write(dir.path().join(format!("f{i}")), b"x").unwrap();
    }
    dir
}

#[test]
fn lookups_past_the_budget_get_enfile_until_forgotten() {
    let dir = tree(8);
    let shares = Arc::new(Shares::with_fd_budget(3));
    let name = shares.add(dir.path(), false, None).unwrap();
    let mut g = Guest::new(shares.clone());
    let root = g.lookup(ROOT, &name).unwrap();
    assert_eq!(shares.fd_budget().used(), 0, "the share's root is free");

    let f0 = g.lookup(root, "f0").unwrap();
    let f1 = g.lookup(root, "f1").unwrap();
    let f2 = g.lookup(root, "f2").unwrap();
    assert_eq!(shares.fd_budget().used(), 3);
    assert_eq!(g.lookup(root, "f3"), Err(libc::ENFILE), "a new inode");
    assert_eq!(
        g.open(f0, libc::O_RDONLY),
        Err(libc::ENFILE),
        "a new handle"
    );
    // What the guest has keeps working: looking it up again (as the kernel
    // does to revalidate) costs nothing.
    assert_eq!(g.lookup(root, "f0"), Ok(f0), "a known inode");
    let (out, _) = g.call(Opcode::Getattr as u32, f1, &[0u8; 16]);
    assert_eq!(out.error, 0);

    // f0 was looked up twice: one FORGET of one lookup frees nothing.
    g.forget(f0, 1);
    assert_eq!(g.lookup(root, "f3"), Err(libc::ENFILE));
    g.forget(f0, 1);
    assert_eq!(shares.fd_budget().used(), 2);
    let f3 = g.lookup(root, "f3").unwrap();
    assert_eq!(g.lookup(root, "f4"), Err(libc::ENFILE));

    // BATCH_FORGET frees two; then an open handle takes one and its
    // release gives it back.
    let batch = BatchForgetIn { count: 2, dummy: 0 };
    let one = |nodeid| ForgetOne { nodeid, nlookup: 1 };
    g.hiprio(
        Opcode::BatchForget,
        0,
        &[batch.as_slice(), one(f1).as_slice(), one(f2).as_slice()].concat(),
    );
    assert_eq!(shares.fd_budget().used(), 1);
    let fh = g.open(f3, libc::O_RDONLY).unwrap();
    let _f4 = g.lookup(root, "f4").unwrap();
    assert_eq!(g.lookup(root, "f5"), Err(libc::ENFILE));
    let r = ReleaseIn {
        fh,
        ..Default::default()
    };
    g.call(Opcode::Release as u32, f3, r.as_slice());
    assert!(g.lookup(root, "f5").is_ok(), "the released handle's room");
    assert_eq!(shares.fd_budget().used(), 3);

    // Removing the share closes everything it held.
    shares.remove(&name);
    drop(g);
    assert_eq!(shares.fd_budget().used(), 0);
}

#[test]
fn creating_past_the_budget_changes_nothing_on_the_host() {
    let dir = tree(1);
    let shares = Arc::new(Shares::with_fd_budget(1));
    let name = shares.add(dir.path(), false, None).unwrap();
    let mut g = Guest::new(shares.clone());
    let root = g.lookup(ROOT, &name).unwrap();
    let _f0 = g.lookup(root, "f0").unwrap();
    assert_eq!(g.create(root, "new"), libc::ENFILE);
    assert!(!dir.path().join("new").exists(), "no file made");
    let mkdir = MkdirIn {
        mode: 0o755,
        umask: 0,
    };
    let (out, _) = g.call(
        Opcode::Mkdir as u32,
        root,
        &[mkdir.as_slice(), &cstr("d")].concat(),
    );
    assert_eq!(-out.error, libc::ENFILE);
    assert!(!dir.path().join("d").exists(), "no directory made");
}

/// A guest's DESTROY makes the library import its shares again, which
/// clears the process's umask: the helper's own files would be made
/// world-writable afterwards.
#[test]
fn destroy_leaves_the_umask_alone() {
    let dir = tree(1);
    let shares = Arc::new(Shares::with_fd_budget(8));
    let name = shares.add(dir.path(), false, None).unwrap();
    let mut g = Guest::new(shares.clone());
    let root = g.lookup(ROOT, &name).unwrap();
    let _f0 = g.lookup(root, "f0").unwrap();
    // SAFETY: umask(2) only swaps the process's mask; read and put back.
    let before = unsafe { libc::umask(0o022) };
    // SAFETY: as above.
    unsafe { libc::umask(before) };
    let _ = g.raw(
        InHeader {
            len: std::mem::size_of::<InHeader>() as u32,
            opcode: Opcode::Destroy as u32,
            unique: 1000,
            ..Default::default()
        }
        .as_slice(),
    );
    // SAFETY: as above.
    let after = unsafe { libc::umask(before) };
    assert_eq!(after, before, "the umask after DESTROY");
    assert_eq!(shares.fd_budget().used(), 0, "DESTROY drops every inode");
}
