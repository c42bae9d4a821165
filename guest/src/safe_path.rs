//! Opening directories and files below a directory the agent trusts,
//! never following a symbolic link a session could have planted.
//!
//! The agent is root in the VM's root mount namespace, and everything
//! under `/sessions/<name>` is the session's to rearrange at any moment (it
//! owns the directory: it can rename `mnt` away and put a symbolic link in
//! its place between any two system calls of ours). So the agent never
//! hands such a path to a call that resolves it: it walks down from a
//! directory it trusts one component at a time (`openat` with `O_NOFOLLOW`,
//! holding each directory by descriptor), makes what is missing with
//! `mkdirat` below the descriptor it holds, and acts on the final
//! descriptor (`/proc/self/fd/N`, which resolves to that very directory).

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::libc;
use nix::sys::stat::{fstat, mkdirat, Mode};

/// What to do with a missing directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Refuse: everything must exist.
    No,
    /// Make it (mode 0755, the umask applies), owned by root.
    Root,
    /// Make it (mode 0755) and give it to this uid and gid.
    Owned(u32, u32),
}

/// A directory held without opening it for reading, never through a
/// symbolic link (`O_DIRECTORY` with `O_NOFOLLOW` fails on one).
fn dir_flags() -> OFlag {
    OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC
}

fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open call and nothing
    // else holds it: the OwnedFd is its only owner and closes it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `/proc/self/fd/N` for `fd`: a path naming exactly what the descriptor
/// holds, for the calls (mount, umount2) that take no descriptor.
pub fn fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// The components of `rel`, each a plain name: an absolute path, `.` and
/// `..` are refused (empty components, from doubled slashes, are skipped).
pub fn names(rel: &Path) -> Result<Vec<&OsStr>, String> {
    let bytes = rel.as_os_str().as_bytes();
    if bytes.first() == Some(&b'/') {
        return Err(format!("{} is not relative", rel.display()));
    }
    let mut out = Vec::new();
    for part in bytes.split(|b| *b == b'/').filter(|p| !p.is_empty()) {
        if part == b"." || part == b".." || part.contains(&0) {
            return Err(format!("bad component in {}", rel.display()));
        }
        out.push(OsStr::from_bytes(part));
    }
    Ok(out)
}

/// Opens `base` itself: a path of the agent's own (the sessions root,
/// `/run`), resolved as it is.
pub fn open_base(base: &Path) -> Result<OwnedFd, String> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    nix::fcntl::open(base, flags, Mode::empty())
        .map(own)
        .map_err(|e| format!("{}: {e}", base.display()))
}

/// Opens directory `rel` below `base`, refusing any symbolic link or `..`
/// on the way, making missing directories as `create` says.
pub fn open_dir(base: &Path, rel: &Path, create: Create) -> Result<OwnedFd, String> {
    walk(open_base(base)?, rel, create, &|_| {})
}

/// [`open_dir`] from a directory already held.
pub fn walk(
    mut dir: OwnedFd,
    rel: &Path,
    create: Create,
    after_mkdir: &dyn Fn(&OsStr),
) -> Result<OwnedFd, String> {
    for name in names(rel)? {
        dir = child(dir.as_fd(), name, create, after_mkdir)
            .map_err(|e| format!("{}: {e}", rel.display()))?;
    }
    Ok(dir)
}

/// Opens directory `name` in `dir` (never a symbolic link), made first when
/// missing and `create` allows. `after_mkdir` runs between making it and
/// opening it (tests put a race there).
pub fn child(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    create: Create,
    after_mkdir: &dyn Fn(&OsStr),
) -> Result<OwnedFd, String> {
    let shown = Path::new(name).display();
    // Twice: someone else making it between our look and our mkdir is no
    // failure, it is then opened as it is.
    for _ in 0..2 {
        match openat(Some(dir.as_raw_fd()), name, dir_flags(), Mode::empty()) {
            Ok(fd) => {
                let fd = own(fd);
                let st = fstat(fd.as_raw_fd()).map_err(|e| format!("{shown}: {e}"))?;
                if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                    return Err(format!("{shown} is not a directory"));
                }
                return Ok(fd);
            }
            Err(Errno::ENOENT) if create != Create::No => {}
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return Err(format!(
                    "{shown} is a symbolic link or not a directory: refused"
                ))
            }
            Err(e) => return Err(format!("{shown}: {e}")),
        }
        match mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o755)) {
            Ok(()) => {
                after_mkdir(name);
                return made(dir, name, create);
            }
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(format!("mkdir {shown}: {e}")),
        }
    }
    Err(format!("{shown} keeps changing: refused"))
}

/// Opens the directory just made as `name` in `dir` and, for
/// [`Create::Owned`], gives it away through the descriptor. Whatever is
/// there now must still be what mkdirat made: an empty root-owned
/// directory on the same file system (not, say, a root-owned directory of
/// the session's renamed into its place, which is not to be given away).
fn made(dir: BorrowedFd<'_>, name: &OsStr, create: Create) -> Result<OwnedFd, String> {
    let shown = Path::new(name).display();
    let fd = openat(Some(dir.as_raw_fd()), name, dir_flags(), Mode::empty())
        .map(own)
        .map_err(|e| format!("{shown} changed after mkdir ({e}): refused"))?;
    let st = fstat(fd.as_raw_fd()).map_err(|e| format!("{shown}: {e}"))?;
    let parent = fstat(dir.as_raw_fd()).map_err(|e| format!("{shown}: {e}"))?;
    let fresh = st.st_mode & libc::S_IFMT == libc::S_IFDIR
        && st.st_uid == 0
        && st.st_nlink == 2
        && st.st_dev == parent.st_dev;
    if !fresh {
        return Err(format!("{shown} changed after mkdir: refused"));
    }
    if let Create::Owned(uid, gid) = create {
        // SAFETY: `fd` is a live descriptor and the path a NUL-terminated
        // empty string; with AT_EMPTY_PATH the call changes the owner of
        // what `fd` holds and touches no memory of ours.
        let r =
            unsafe { libc::fchownat(fd.as_raw_fd(), c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH) };
        if r < 0 {
            return Err(format!(
                "chown {shown}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(fd)
}

/// Opens file `rel` below `dir` with `flags` (`O_CLOEXEC` added): symbolic
/// links are followed only while they stay below `dir` (no absolute ones,
/// no escape by `..`, no `/proc` magic links); mounts below it are crossed.
/// Without openat2 (kernel before 5.6) no symbolic link is followed at all.
pub fn open_file_beneath(dir: BorrowedFd<'_>, rel: &Path, flags: OFlag) -> Result<OwnedFd, String> {
    let shown = rel.display();
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(dir.as_raw_fd(), rel, how) {
        Ok(fd) => Ok(own(fd)),
        Err(Errno::EXDEV | Errno::ELOOP) => Err(format!(
            "{shown} leads out of the directory it must stay in: refused"
        )),
        Err(Errno::ENOSYS) => open_file_strict(dir, rel, flags),
        Err(e) => Err(format!("{shown}: {e}")),
    }
}

/// The fallback of [`open_file_beneath`]: no symbolic link anywhere.
fn open_file_strict(dir: BorrowedFd<'_>, rel: &Path, flags: OFlag) -> Result<OwnedFd, String> {
    let shown = rel.display();
    let mut parts = names(rel)?;
    let Some(last) = parts.pop() else {
        return Err(format!("{shown}: no file named"));
    };
    let mut at = dir.try_clone_to_owned().map_err(|e| e.to_string())?;
    for name in parts {
        at = child(at.as_fd(), name, Create::No, &|_| {}).map_err(|e| format!("{shown}: {e}"))?;
    }
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(Some(at.as_raw_fd()), last, flags, Mode::empty()) {
        Ok(fd) => Ok(own(fd)),
        Err(Errno::ELOOP) => Err(format!("{shown} is a symbolic link: refused")),
        Err(e) => Err(format!("{shown}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt};

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn components_must_be_plain_names() {
        assert_eq!(names(Path::new("a//b/")).unwrap(), ["a", "b"]);
        assert!(names(Path::new("")).unwrap().is_empty());
        for bad in ["/a", "a/../b", "..", "a/./b"] {
            assert!(names(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_walk_makes_and_opens_directories() {
        let t = tmp();
        assert!(open_dir(t.path(), Path::new("a/b"), Create::No).is_err());
        let fd = open_dir(t.path(), Path::new("a/b/c"), Create::Root).unwrap();
        assert!(t.path().join("a/b/c").is_dir());
        let st = fstat(fd.as_raw_fd()).unwrap();
        let m = std::fs::metadata(t.path().join("a/b/c")).unwrap();
        assert_eq!((st.st_dev, st.st_ino), (m.dev(), m.ino()));
        // Existing directories are opened as they are.
        open_dir(t.path(), Path::new("a/b/c"), Create::No).unwrap();
        open_dir(t.path(), Path::new("a/b/c"), Create::Root).unwrap();
        // A file is not a directory.
        std::fs::write(t.path().join("a/f"), b"").unwrap();
        assert!(open_dir(t.path(), Path::new("a/f"), Create::Root).is_err());
        assert!(open_dir(t.path(), Path::new("a/../a"), Create::No).is_err());
    }

    #[test]
    fn a_symbolic_link_is_never_followed() {
        let t = tmp();
        let outside = t.path().join("outside");
        std::fs::create_dir_all(outside.join("x")).unwrap();
        std::fs::create_dir(t.path().join("base")).unwrap();
        symlink(&outside, t.path().join("base/link")).unwrap();
        symlink("../outside", t.path().join("base/rel")).unwrap();
        for rel in ["link", "link/x", "link/new", "rel/x"] {
            for create in [Create::No, Create::Root] {
                let r = open_dir(&t.path().join("base"), Path::new(rel), create);
                assert!(r.is_err(), "{rel} {create:?}");
            }
        }
        assert!(!outside.join("new").exists(), "nothing made through it");
    }

    /// The session swaps the directory just made for a symbolic link
    /// before the walk opens it: the walk refuses instead of going on (and
    /// making the rest, and giving it away) wherever the link points.
    #[test]
    fn a_racing_swap_cannot_redirect_the_walk() {
        let t = tmp();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let base = t.path().join("base");
        std::fs::create_dir(&base).unwrap();
        let swap = |name: &OsStr| {
            if name == "work" {
                std::fs::remove_dir(base.join("work")).unwrap();
                symlink(&outside, base.join("work")).unwrap();
            }
        };
        let r = walk(
            open_base(&base).unwrap(),
            Path::new("work/deep"),
            Create::Root,
            &swap,
        );
        assert!(r.is_err(), "{r:?}");
        assert!(!outside.join("deep").exists());
        // A directory of someone else's renamed into the place is not
        // given away either.
        let planted = |name: &OsStr| {
            if name == "w2" {
                std::fs::remove_dir(base.join("w2")).unwrap();
                std::fs::create_dir_all(base.join("w2/full")).unwrap();
            }
        };
        let r = walk(
            open_base(&base).unwrap(),
            Path::new("w2"),
            Create::Root,
            &planted,
        );
        assert!(r.is_err(), "{r:?}");
    }

    #[test]
    #[cfg_attr(not(has_root), ignore = "chown needs root")]
    fn made_directories_are_given_away() {
        if !crate::prerequisite::require(
            nix::unistd::geteuid().is_root(),
            "made_directories_are_given_away",
            "chown needs root",
        ) {
            return;
        }
        let t = tmp();
        std::fs::create_dir(t.path().join("old")).unwrap();
        open_dir(
            t.path(),
            Path::new("old/new/newer"),
            Create::Owned(4242, 4343),
        )
        .unwrap();
        let owner = |p: &str| {
            let m = std::fs::metadata(t.path().join(p)).unwrap();
            (m.uid(), m.gid())
        };
        assert_eq!(owner("old"), (0, 0), "existing ones are left alone");
        assert_eq!(owner("old/new"), (4242, 4343));
        assert_eq!(owner("old/new/newer"), (4242, 4343));
    }

    #[test]
    fn files_open_beneath_their_directory_only() {
        let t = tmp();
        let d = t.path().join("d");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/f"), b"in").unwrap();
        std::fs::write(t.path().join("secret"), b"out").unwrap();
        symlink("sub/f", d.join("inside")).unwrap();
        symlink(t.path().join("secret"), d.join("absolute")).unwrap();
        symlink("../secret", d.join("escape")).unwrap();
        symlink("/proc/self/root/etc/hostname", d.join("magic")).unwrap();
        let dir = open_base(&d).unwrap();
        let read = |rel: &str| {
            open_file_beneath(dir.as_fd(), Path::new(rel), OFlag::O_RDONLY).map(|fd| {
                std::fs::read_to_string(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap()
            })
        };
        assert_eq!(read("sub/f").unwrap(), "in");
        assert_eq!(read("inside").unwrap(), "in");
        for bad in ["absolute", "escape", "../secret", "magic", "/etc/hostname"] {
            assert!(read(bad).is_err(), "{bad}");
        }
        // The fallback follows no link at all.
        let strict = |rel: &str| open_file_strict(dir.as_fd(), Path::new(rel), OFlag::O_RDONLY);
        assert!(strict("sub/f").is_ok());
        assert!(strict("inside").is_err());
        assert!(strict("escape").is_err());
    }
}
