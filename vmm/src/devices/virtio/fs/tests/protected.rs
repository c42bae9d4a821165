//! Protected objects in a read-write share (share_fs.rs, protected.rs):
//! every change to them, inside a protected folder, or to a folder on the
//! way to them is EROFS, while the rest of the share stays writable; with
//! no protected objects the same requests pass.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use fuse_backend_rs::abi::fuse_abi::{MkdirIn, Rename2In, SetxattrIn};

use super::super::{FileId, Protected};
use super::*;

const FATTR_MODE: u32 = 1 << 0;
const FATTR_SIZE: u32 = 1 << 3;

/// A repository-like tree: `.git/config`, `.git/hooks` (a folder, with
/// `pre-commit` in it) and `.bashrc` are protected, `.git/HEAD`, `src` and
/// the symlink `.git/config.worktree` are not.
fn tree() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    std::fs::create_dir_all(r.join(".git/hooks")).unwrap();
    std::fs::create_dir_all(r.join("src")).unwrap();
    for (f, data) in [
        (".git/config", "[core]\n"),
        (".git/hooks/pre-commit", "#!/bin/sh\n"),
        (".git/HEAD", "ref: refs/heads/main\n"),
        (".bashrc", "PS1=x\n"),
        ("src/main.rs", "fn main() {}\n"),
    ] {
        std::fs::write(r.join(f), data).unwrap();
    }
    // A name git obeys, present as a symlink (never protected itself).
    std::os::unix::fs::symlink("../src", r.join(".git/config.worktree")).unwrap();
    d
}

fn id(p: &Path) -> FileId {
    let m = std::fs::symlink_metadata(p).unwrap();
    FileId {
        dev: m.dev(),
        ino: m.ino(),
    }
}

/// What the kvm backend hands the share for [`tree`].
fn protected(r: &Path) -> Protected {
    Protected {
        objects: [
            ".git/config",
            ".git/hooks",
            ".git/hooks/pre-commit",
            ".bashrc",
        ]
        .iter()
        .map(|p| id(&r.join(p)))
        .collect(),
        ancestors: [id(r), id(&r.join(".git"))].into_iter().collect(),
        git_dirs: [id(&r.join(".git"))].into_iter().collect(),
    }
}

/// Node ids of the tree's objects, looked up as the guest would.
struct Nodes {
    root: u64,
    git: u64,
    config: u64,
    hooks: u64,
    pre_commit: u64,
}

/// A fresh tree shared (protected or not), and the guest's node ids.
fn share(protect: bool) -> (tempfile::TempDir, Guest, Nodes) {
    let d = tree();
    let shares = Arc::new(Shares::new());
    let set = if protect {
        protected(d.path())
    } else {
        Protected::default()
    };
    let name = shares.add_protected(d.path(), false, None, set).unwrap();
    let mut g = Guest::new(shares);
    let root = g.lookup(ROOT, &name).unwrap();
    let git = g.lookup(root, ".git").unwrap();
    let config = g.lookup(git, "config").unwrap();
    let hooks = g.lookup(git, "hooks").unwrap();
    let pre_commit = g.lookup(hooks, "pre-commit").unwrap();
    let n = Nodes {
        root,
        git,
        config,
        hooks,
        pre_commit,
    };
    (d, g, n)
}

fn rename(g: &mut Guest, from: (u64, &str), to: (u64, &str), flags: u32) -> i32 {
    let r = Rename2In {
        newdir: to.0,
        flags,
        padding: 0,
    };
    g.errno(
        Opcode::Rename2,
        from.0,
        &[r.as_slice(), &cstr(from.1), &cstr(to.1)].concat(),
    )
}

fn mkdir(g: &mut Guest, parent: u64, name: &str) -> i32 {
    let m = MkdirIn {
        mode: 0o755,
        umask: 0,
    };
    g.errno(Opcode::Mkdir, parent, &[m.as_slice(), &cstr(name)].concat())
}

fn setattr(g: &mut Guest, node: u64, valid: u32, mode: u32) -> i32 {
    let s = SetattrIn {
        valid,
        size: 0,
        mode,
        ..Default::default()
    };
    g.errno(Opcode::Setattr, node, s.as_slice())
}

type Case = (&'static str, fn(&mut Guest, &Nodes) -> i32, Option<i32>);

/// Every change the tests make to protected things: its name, the request,
/// and its answer on an unprotected share (`None`: anything but EROFS,
/// where the host itself refuses it for another reason).
fn cases() -> Vec<Case> {
    vec![
        (
            "open config O_WRONLY",
            |g, n| g.open(n.config, libc::O_WRONLY).err().unwrap_or(0),
            Some(0),
        ),
        (
            "open config O_RDWR",
            |g, n| g.open(n.config, libc::O_RDWR).err().unwrap_or(0),
            Some(0),
        ),
        (
            "open config O_TRUNC",
            |g, n| {
                g.open(n.config, libc::O_RDONLY | libc::O_TRUNC)
                    .err()
                    .unwrap_or(0)
            },
            Some(0),
        ),
        (
            "open a hook for writing",
            |g, n| g.open(n.pre_commit, libc::O_RDWR).err().unwrap_or(0),
            Some(0),
        ),
        (
            "truncate config",
            |g, n| setattr(g, n.config, FATTR_SIZE, 0),
            Some(0),
        ),
        (
            "chmod a hook",
            |g, n| setattr(g, n.pre_commit, FATTR_MODE, 0o777),
            Some(0),
        ),
        (
            "chmod the hooks folder",
            |g, n| setattr(g, n.hooks, FATTR_MODE, 0o777),
            Some(0),
        ),
        (
            "write config",
            |g, n| {
                let w = WriteIn {
                    size: 3,
                    ..Default::default()
                };
                g.errno(Opcode::Write, n.config, &[w.as_slice(), b"bad"].concat())
            },
            None,
        ),
        (
            "setxattr config",
            |g, n| {
                let x = SetxattrIn { size: 1, flags: 0 };
                g.errno(
                    Opcode::Setxattr,
                    n.config,
                    &[x.as_slice(), &cstr("user.x"), b"v"].concat(),
                )
            },
            None,
        ),
        (
            "create over config",
            |g, n| g.create(n.git, "config"),
            Some(0),
        ),
        (
            "create .git/commondir",
            |g, n| g.create(n.git, "commondir"),
            Some(0),
        ),
        (
            "mkdir .git/commondir",
            |g, n| mkdir(g, n.git, "commondir"),
            Some(0),
        ),
        (
            "rename HEAD onto .git/config.worktree (a symlink there)",
            |g, n| rename(g, (n.git, "HEAD"), (n.git, "config.worktree"), 0),
            Some(0),
        ),
        (
            "rename HEAD onto .git/commondir",
            |g, n| rename(g, (n.git, "HEAD"), (n.git, "commondir"), 0),
            Some(0),
        ),
        (
            "create in hooks",
            |g, n| g.create(n.hooks, "post-checkout"),
            Some(0),
        ),
        ("mkdir in hooks", |g, n| mkdir(g, n.hooks, "d"), Some(0)),
        (
            "symlink in hooks",
            |g, n| {
                g.errno(
                    Opcode::Symlink,
                    n.hooks,
                    &[cstr("post-merge"), cstr("/tmp/x")].concat(),
                )
            },
            Some(0),
        ),
        (
            "unlink config",
            |g, n| g.errno(Opcode::Unlink, n.git, &cstr("config")),
            Some(0),
        ),
        (
            "unlink a hook",
            |g, n| g.errno(Opcode::Unlink, n.hooks, &cstr("pre-commit")),
            Some(0),
        ),
        (
            "unlink .bashrc",
            |g, n| g.errno(Opcode::Unlink, n.root, &cstr(".bashrc")),
            Some(0),
        ),
        (
            "hard link to config",
            |g, n| {
                let l = LinkIn {
                    oldnodeid: n.config,
                };
                g.errno(Opcode::Link, n.root, &[l.as_slice(), &cstr("cfg")].concat())
            },
            Some(0),
        ),
        (
            "rename config",
            |g, n| rename(g, (n.git, "config"), (n.git, "config.old"), 0),
            Some(0),
        ),
        (
            "rename a hook out",
            |g, n| rename(g, (n.hooks, "pre-commit"), (n.root, "x"), 0),
            Some(0),
        ),
        (
            "rename onto config",
            |g, n| rename(g, (n.git, "HEAD"), (n.git, "config"), 0),
            Some(0),
        ),
        (
            "rename into hooks",
            |g, n| rename(g, (n.git, "HEAD"), (n.hooks, "post-commit"), 0),
            Some(0),
        ),
        (
            "rename .git away",
            |g, n| rename(g, (n.root, ".git"), (n.root, ".git-old"), 0),
            Some(0),
        ),
        (
            "exchange .git with src",
            |g, n| rename(g, (n.root, "src"), (n.root, ".git"), libc::RENAME_EXCHANGE),
            Some(0),
        ),
        (
            "rename hooks away",
            |g, n| rename(g, (n.git, "hooks"), (n.git, "hooks.old"), 0),
            Some(0),
        ),
        (
            "rmdir .git",
            |g, n| g.errno(Opcode::Rmdir, n.root, &cstr(".git")),
            None,
        ),
    ]
}

#[test]
fn protected_objects_and_their_folders_cannot_change() {
    for (what, op, _) in cases() {
        let (d, mut g, n) = share(true);
        let before = super::policy::snapshot(d.path());
        assert_eq!(op(&mut g, &n), libc::EROFS, "{what}");
        assert_eq!(
            super::policy::snapshot(d.path()),
            before,
            "{what}: tree unchanged"
        );
    }
}

#[test]
fn without_protection_the_same_requests_pass() {
    for (what, op, off) in cases() {
        let (_d, mut g, n) = share(false);
        let errno = op(&mut g, &n);
        match off {
            Some(want) => assert_eq!(errno, want, "{what}"),
            None => assert_ne!(errno, libc::EROFS, "{what}"),
        }
    }
}

#[test]
fn the_rest_of_a_protected_share_stays_writable() {
    let (d, mut g, n) = share(true);
    let r = d.path();
    // Reading protected files is allowed.
    let fh = g.open(n.config, libc::O_RDONLY).expect("read config");
    let read = ReadIn {
        fh,
        size: 100,
        ..Default::default()
    };
    let (out, data) = g.call(Opcode::Read as u32, n.config, read.as_slice());
    assert_eq!((out.error, data.as_slice()), (0, &b"[core]\n"[..]));
    // A sibling in .git (an ancestor, not protected) is writable, and
    // entries can be made and renamed there (git's lock files).
    let head = g.lookup(n.git, "HEAD").unwrap();
    assert!(g.open(head, libc::O_RDWR).is_ok(), "HEAD is writable");
    assert_eq!(g.create(n.git, "index.lock"), 0);
    assert_eq!(
        rename(&mut g, (n.git, "index.lock"), (n.git, "index"), 0),
        0
    );
    assert!(r.join(".git/index").exists());
    // `mkdir -p .git/hooks` finds it there (EEXIST, not EROFS).
    assert_eq!(mkdir(&mut g, n.git, "hooks"), libc::EEXIST);
    // Elsewhere: new files and folders, edits, renames, removals.
    assert_eq!(g.create(n.root, "new.txt"), 0);
    assert_eq!(mkdir(&mut g, n.root, "build"), 0);
    let src = g.lookup(n.root, "src").unwrap();
    let main = g.lookup(src, "main.rs").unwrap();
    assert!(g.open(main, libc::O_WRONLY | libc::O_TRUNC).is_ok());
    assert_eq!(rename(&mut g, (n.root, "src"), (n.root, "lib"), 0), 0);
    assert_eq!(g.errno(Opcode::Unlink, n.root, &cstr("new.txt")), 0);
    assert!(r.join("lib/main.rs").exists() && r.join("build").is_dir());
    assert_eq!(std::fs::read(r.join(".git/config")).unwrap(), b"[core]\n");
}
