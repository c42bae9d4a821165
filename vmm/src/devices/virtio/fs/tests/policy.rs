//! What a share promises (share_fs.rs), through the device: read-only
//! against every mutating request and against a guest rewriting its
//! request meanwhile, owner mapping, and opens that could block.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{
    AccessIn, Direntplus, FallocateIn, IoctlIn, MkdirIn, MknodIn, OpenOut, ReleaseIn, Rename2In,
    SetxattrIn,
};

use super::*;

const FATTR_MODE: u32 = 1 << 0;
const FATTR_UID: u32 = 1 << 1;
const FATTR_GID: u32 = 1 << 2;
const FATTR_SIZE: u32 = 1 << 3;
/// A second request area, away from the one a racing thread rewrites.
const SIDE: u64 = 0x30_0000;

impl Guest {
    fn entry(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        let (out, p) = self.call(Opcode::Lookup as u32, parent, &cstr(name));
        if out.error != 0 {
            return Err(-out.error);
        }
        EntryOut::from_slice(&p[..std::mem::size_of::<EntryOut>()])
            .copied()
            .ok_or(libc::EIO)
    }

    fn release(&mut self, node: u64, fh: u64) {
        let r = ReleaseIn {
            fh,
            ..Default::default()
        };
        self.call(Opcode::Release as u32, node, r.as_slice());
    }

    pub(super) fn errno(&mut self, opcode: Opcode, node: u64, body: &[u8]) -> i32 {
        -self.call(opcode as u32, node, body).0.error
    }
}

/// Everything about a tree that a write could change.
pub(super) fn snapshot(dir: &Path) -> Vec<(String, u32, u64, i64, Vec<u8>)> {
    let mut all = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let data = if m.is_file() {
                std::fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            if m.is_dir() {
                todo.push(e.path());
            }
            all.push((
                e.path().display().to_string(),
                m.mode(),
                m.len(),
                m.mtime_nsec() + m.mtime() * 1_000_000_000,
                data,
            ));
        }
    }
    all.sort();
    all
}

fn ro_tree() -> tempfile::TempDir {
    let ro = tempfile::tempdir().unwrap();
    std::fs::write(ro.path().join("keep.txt"), b"precious").unwrap();
    std::fs::create_dir(ro.path().join("d")).unwrap();
    ro
}

#[test]
fn every_mutating_request_on_a_read_only_share_is_erofs() {
    let ro = ro_tree();
    let before = snapshot(ro.path());
    let shares = Arc::new(Shares::new());
    let name = shares.add(ro.path(), true, None).unwrap();
    let mut g = Guest::new(shares);
    let root = g.lookup(ROOT, &name).unwrap();
    let keep = g.lookup(root, "keep.txt").unwrap();
    let fh = g.open(keep, libc::O_RDONLY).expect("reading is allowed");

    let create = CreateIn {
        flags: libc::O_WRONLY as u32,
        mode: 0o644,
        ..Default::default()
    };
    let mkdir = MkdirIn {
        mode: 0o755,
        umask: 0,
    };
    let mknod = MknodIn {
        mode: libc::S_IFREG | 0o644,
        ..Default::default()
    };
    let setattr = |valid: u32, size: u64, mode: u32| SetattrIn {
        valid,
        size,
        mode,
        ..Default::default()
    };
    let write = WriteIn {
        fh,
        size: 3,
        ..Default::default()
    };
    let falloc = FallocateIn {
        fh,
        length: 4096,
        ..Default::default()
    };
    let xattr = SetxattrIn { size: 1, flags: 0 };
    let ioctl = IoctlIn {
        fh,
        ..Default::default()
    };
    let rename2 = Rename2In {
        newdir: root,
        flags: 0,
        padding: 0,
    };
    let cases: Vec<(&str, Opcode, u64, Vec<u8>)> = vec![
        (
            "create",
            Opcode::Create,
            root,
            [create.as_slice(), &cstr("new")].concat(),
        ),
        (
            "mkdir",
            Opcode::Mkdir,
            root,
            [mkdir.as_slice(), &cstr("new")].concat(),
        ),
        (
            "mknod",
            Opcode::Mknod,
            root,
            [mknod.as_slice(), &cstr("new")].concat(),
        ),
        (
            "symlink",
            Opcode::Symlink,
            root,
            [cstr("new"), cstr("keep.txt")].concat(),
        ),
        (
            "link",
            Opcode::Link,
            root,
            [LinkIn { oldnodeid: keep }.as_slice(), &cstr("new")].concat(),
        ),
        ("unlink", Opcode::Unlink, root, cstr("keep.txt")),
        ("rmdir", Opcode::Rmdir, root, cstr("d")),
        (
            "rename",
            Opcode::Rename,
            root,
            [
                RenameIn { newdir: root }.as_slice(),
                &cstr("keep.txt"),
                &cstr("x"),
            ]
            .concat(),
        ),
        (
            "rename2",
            Opcode::Rename2,
            root,
            [rename2.as_slice(), &cstr("keep.txt"), &cstr("x")].concat(),
        ),
        (
            "truncate",
            Opcode::Setattr,
            keep,
            setattr(FATTR_SIZE, 0, 0).as_slice().to_vec(),
        ),
        (
            "chmod",
            Opcode::Setattr,
            keep,
            setattr(FATTR_MODE, 0, 0o777).as_slice().to_vec(),
        ),
        (
            "write",
            Opcode::Write,
            keep,
            [write.as_slice(), b"bad"].concat(),
        ),
        (
            "fallocate",
            Opcode::Fallocate,
            keep,
            falloc.as_slice().to_vec(),
        ),
        (
            "setxattr",
            Opcode::Setxattr,
            keep,
            [xattr.as_slice(), &cstr("user.x"), b"v"].concat(),
        ),
        ("removexattr", Opcode::Removexattr, keep, cstr("user.x")),
        (
            "access W_OK",
            Opcode::Access,
            keep,
            AccessIn {
                mask: libc::W_OK as u32,
                padding: 0,
            }
            .as_slice()
            .to_vec(),
        ),
    ];
    for (what, op, node, body) in cases {
        assert_eq!(g.errno(op, node, &body), libc::EROFS, "{what}");
    }
    // The Vfs answers ioctls itself (ENOTTY) before the share sees them;
    // the share would refuse them too.
    let errno = g.errno(Opcode::Ioctl, keep, ioctl.as_slice());
    assert!(
        [libc::EROFS, libc::ENOTTY].contains(&errno),
        "ioctl: {errno}"
    );
    for flags in [
        libc::O_WRONLY,
        libc::O_RDWR,
        libc::O_RDONLY | libc::O_TRUNC,
        libc::O_ACCMODE,
    ] {
        assert_eq!(g.open(keep, flags), Err(libc::EROFS), "open {flags:#o}");
    }
    assert_eq!(
        snapshot(ro.path()),
        before,
        "the read-only tree is unchanged"
    );
    // Reading still works afterwards.
    let r = ReadIn {
        fh,
        size: 100,
        ..Default::default()
    };
    let (out, data) = g.call(Opcode::Read as u32, keep, r.as_slice());
    assert_eq!((out.error, data.as_slice()), (0, &b"precious"[..]));
}

/// Serves `request` over and over while another thread keeps writing `a`
/// and `b` in turn at `offset` of it in guest memory; true if `changed`
/// ever holds. `after` sees each reply (to release what was opened).
fn race(
    g: &mut Guest,
    request: &[u8],
    offset: u64,
    (a, b): (u64, u64),
    changed: impl Fn() -> bool,
    mut after: impl FnMut(&mut Guest, &OutHeader, &[u8]),
) -> bool {
    /// Stops the rewriting thread however the serving side ends (a
    /// panic included: the scope joins it before unwinding on).
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = AtomicBool::new(false);
    let mem = g.mem;
    let field = GuestAddress(g.req + offset);
    std::thread::scope(|s| {
        let _stop = Stop(&stop);
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let _ = mem.write_obj(a, field);
                let _ = mem.write_obj(b, field);
            }
        });
        let start = Instant::now();
        let mut hit = false;
        while start.elapsed() < Duration::from_millis(1500) {
            if let Some((out, payload)) = g.raw(request) {
                g.req = SIDE;
                after(g, &out, &payload);
                g.req = REQ;
            }
            if changed() {
                hit = true;
                break;
            }
        }
        hit
    })
}

fn header(opcode: Opcode, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let h = InHeader {
        len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
        opcode: opcode as u32,
        unique: 1 << 40,
        nodeid,
        pid: 1,
        ..Default::default()
    };
    [h.as_slice(), body].concat()
}

#[test]
fn a_guest_rewriting_its_request_cannot_write_a_read_only_share() {
    let rw = tempfile::tempdir().unwrap();
    std::fs::write(rw.path().join("scratch"), b"anything").unwrap();
    let ro = ro_tree();
    let shares = Arc::new(Shares::new());
    let rw_name = shares.add(rw.path(), false, None).unwrap();
    let ro_name = shares.add(ro.path(), true, None).unwrap();
    let mut g = Guest::new(shares);
    let rw_root = g.lookup(ROOT, &rw_name).unwrap();
    let scratch = g.lookup(rw_root, "scratch").unwrap();
    let ro_root = g.lookup(ROOT, &ro_name).unwrap();
    let keep = g.lookup(ro_root, "keep.txt").unwrap();
    let keep_path = ro.path().join("keep.txt");
    let changed = || std::fs::read(&keep_path).map_or(true, |d| d != b"precious");

    // A truncate whose node id flips between a rw file and the ro one.
    let truncate = SetattrIn {
        valid: FATTR_SIZE,
        size: 0,
        ..Default::default()
    };
    let request = header(Opcode::Setattr, scratch, truncate.as_slice());
    let nodeid_at = std::mem::offset_of!(InHeader, nodeid) as u64;
    assert!(
        !race(
            &mut g,
            &request,
            nodeid_at,
            (scratch, keep),
            changed,
            |_, _, _| {}
        ),
        "truncated the ro file by flipping the node id"
    );

    // An open of the ro file whose flags flip from reading to truncating.
    let open = OpenIn {
        flags: libc::O_RDONLY as u32,
        fuse_flags: 0,
    };
    let request = header(Opcode::Open, keep, open.as_slice());
    let flags_at = std::mem::size_of::<InHeader>() as u64;
    let truncating = (libc::O_WRONLY | libc::O_TRUNC) as u64;
    // The u64 covers flags and fuse_flags (0): little-endian, flags first.
    assert!(
        !race(
            &mut g,
            &request,
            flags_at,
            (libc::O_RDONLY as u64, truncating),
            changed,
            |g, out, payload| {
                if out.error == 0 {
                    if let Some(o) = OpenOut::from_slice(&payload[..16]) {
                        let fh = o.fh;
                        g.release(keep, fh);
                    }
                }
            }
        ),
        "truncated the ro file by flipping the open flags"
    );
    assert_eq!(std::fs::read(&keep_path).unwrap(), b"precious");
}

#[test]
fn owner_mapping_shows_the_session_user_and_creates_as_the_helper() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let shares = Arc::new(Shares::new());
    let name = shares.add(dir.path(), false, Some((4242, 4343))).unwrap();
    let mut g = Guest::new(shares);
    // The session's user in the guest.
    g.uid = 4242;
    g.gid = 4343;
    let owner = |e: &EntryOut| (e.attr.uid, e.attr.gid);
    let root = g.entry(ROOT, &name).unwrap();
    assert_eq!(owner(&root), (4242, 4343), "the share's root");
    let f = g.entry(root.nodeid, "f").unwrap();
    assert_eq!(owner(&f), (4242, 4343), "an existing file");

    // SAFETY: geteuid/getegid only read the process's ids.
    let me = unsafe { (libc::geteuid(), libc::getegid()) };
    assert_eq!(
        g.create(root.nodeid, "new"),
        0,
        "create as the session user"
    );
    let host = std::fs::metadata(dir.path().join("new")).unwrap();
    assert_eq!((host.uid(), host.gid()), me, "created as the helper");
    let made = g.entry(root.nodeid, "new").unwrap();
    assert_eq!(owner(&made), (4242, 4343));
    let mkdir = MkdirIn {
        mode: 0o755,
        umask: 0,
    };
    let (out, p) = g.call(
        Opcode::Mkdir as u32,
        root.nodeid,
        &[mkdir.as_slice(), &cstr("d")].concat(),
    );
    assert_eq!(out.error, 0);
    let d = EntryOut::from_slice(&p[..std::mem::size_of::<EntryOut>()]).unwrap();
    assert_eq!(owner(d), (4242, 4343), "a new directory's entry");
    let host = std::fs::metadata(dir.path().join("d")).unwrap();
    assert_eq!((host.uid(), host.gid()), me);

    // chown: to the mapped owner a no-op, to anyone else refused.
    let chown = |uid: u32, gid: u32| SetattrIn {
        valid: FATTR_UID | FATTR_GID,
        uid,
        gid,
        ..Default::default()
    };
    let (out, p) = g.call(
        Opcode::Setattr as u32,
        made.nodeid,
        chown(4242, 4343).as_slice(),
    );
    assert_eq!(out.error, 0, "chown to the mapped owner");
    let attr: &fuse_backend_rs::abi::fuse_abi::AttrOut =
        fuse_backend_rs::abi::fuse_abi::AttrOut::from_slice(&p).unwrap();
    assert_eq!((attr.attr.uid, attr.attr.gid), (4242, 4343));
    assert_eq!(
        g.errno(Opcode::Setattr, made.nodeid, chown(0, 0).as_slice()),
        libc::EPERM
    );
    assert_eq!(
        g.errno(Opcode::Setattr, made.nodeid, chown(4242, 0).as_slice()),
        libc::EPERM
    );

    // READDIRPLUS entries show the mapped owner too.
    let (out, p) = g.call(
        Opcode::Opendir as u32,
        root.nodeid,
        OpenIn::default().as_slice(),
    );
    assert_eq!(out.error, 0);
    let fh = OpenOut::from_slice(&p[..16]).unwrap().fh;
    let r = ReadIn {
        fh,
        size: 4096,
        ..Default::default()
    };
    let (out, p) = g.call(Opcode::Readdirplus as u32, root.nodeid, r.as_slice());
    assert_eq!(out.error, 0);
    let mut at = 0;
    let mut seen = 0;
    while let Some(e) = p
        .get(at..at + std::mem::size_of::<Direntplus>())
        .and_then(Direntplus::from_slice)
    {
        assert_eq!(owner(&e.entry_out), (4242, 4343), "readdirplus entry");
        seen += 1;
        let len = std::mem::size_of::<Direntplus>() + e.dirent.namelen as usize;
        at += len.next_multiple_of(8);
    }
    assert!(seen >= 3, "f, new and d at least ({seen})");
}

/// Whether a root helper without owner mapping creates files as the
/// guest's uid (it does: the library switches credentials per request).
#[test]
#[cfg_attr(
    not(has_root),
    ignore = "needs root: an unprivileged helper cannot switch to the guest uid"
)]
fn without_owner_mapping_a_root_helper_creates_as_the_guest_uid() {
    // SAFETY: geteuid only reads the process's id.
    let root = unsafe { libc::geteuid() } == 0;
    if !crate::prerequisite::require(
        root,
        "without_owner_mapping_a_root_helper_creates_as_the_guest_uid",
        "needs root (an unprivileged helper cannot switch to the guest uid)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let shares = Arc::new(Shares::new());
    let name = shares.add(dir.path(), false, None).unwrap();
    let mut g = Guest::new(shares);
    let root = g.lookup(ROOT, &name).unwrap();
    g.uid = 4242;
    g.gid = 4343;
    assert_eq!(g.create(root, "new"), 0);
    let host = std::fs::metadata(dir.path().join("new")).unwrap();
    assert_eq!((host.uid(), host.gid()), (4242, 4343));
}

#[test]
fn opening_a_fifo_does_not_block_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let fifo =
        std::ffi::CString::new(dir.path().join("fifo").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo reads a valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let shares = Arc::new(Shares::new());
    let name = shares.add(dir.path(), false, None).unwrap();
    let (tx, rx) = mpsc::channel();
    // Detached: if the open blocks, the thread stays stuck and the test
    // fails on the timeout instead of hanging.
    std::thread::spawn(move || {
        let mut g = Guest::new(shares);
        let root = g.lookup(ROOT, &name).unwrap();
        let node = g.lookup(root, "fifo").unwrap();
        let read = g.open(node, libc::O_RDONLY);
        let write = g.open(node, libc::O_WRONLY);
        let _ = tx.send((read, write, g.lookup(ROOT, &name).is_ok()));
    });
    let (read, write, serving) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the device answered within 10 s");
    assert_eq!(read, Err(libc::ENXIO));
    assert_eq!(write, Err(libc::ENXIO));
    assert!(serving);
}

#[test]
fn device_nodes_are_not_made() {
    let dir = tempfile::tempdir().unwrap();
    let shares = Arc::new(Shares::new());
    let name = shares.add(dir.path(), false, None).unwrap();
    let mut g = Guest::new(shares);
    let root = g.lookup(ROOT, &name).unwrap();
    for kind in [libc::S_IFCHR, libc::S_IFBLK] {
        let mknod = MknodIn {
            mode: kind | 0o666,
            rdev: libc::makedev(1, 3) as u32,
            ..Default::default()
        };
        let body = [mknod.as_slice(), &cstr("dev")].concat();
        assert_eq!(g.errno(Opcode::Mknod, root, &body), libc::EPERM);
        assert!(!dir.path().join("dev").exists());
    }
}

/// A device node already in the folder (only root can make one) is not
/// opened.
#[test]
#[cfg_attr(not(has_root), ignore = "needs root to make a device node")]
fn host_device_nodes_are_not_opened() {
    let dir = tempfile::tempdir().unwrap();
    let null =
        std::ffi::CString::new(dir.path().join("null").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mknod reads a valid C string.
    let made = unsafe { libc::mknod(null.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    if !crate::prerequisite::require(
        made == 0,
        "host_device_nodes_are_not_opened",
        "mknod failed (it needs root)",
    ) {
        return;
    }
    let shares = Arc::new(Shares::new());
    let name = shares.add(dir.path(), false, None).unwrap();
    let mut g = Guest::new(shares);
    let root = g.lookup(ROOT, &name).unwrap();
    let node = g.lookup(root, "null").unwrap();
    assert_eq!(g.open(node, libc::O_RDONLY), Err(libc::ENXIO));
}
