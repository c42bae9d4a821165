//! Removing trees a session can write to, as a more privileged process
//! (the user's helper, or root in the guest) without being steered by it:
//! every directory is opened relative to its parent's descriptor with
//! `O_NOFOLLOW`, so a symlink the session planted anywhere in the path is
//! removed (as a link) rather than followed, and nothing on another file
//! system (a shared folder mounted inside) is entered or removed.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// Deeper trees are refused (and left as they are) rather than walked: a
/// session can nest directories as deep as it likes.
pub const MAX_DEPTH: usize = 256;

fn io(e: nix::Error) -> std::io::Error {
    std::io::Error::from(e)
}

/// Opens the directory `name` in `parent` (a trusted path when `parent` is
/// `None`), never through a symlink.
pub fn open_dir(parent: Option<&OwnedFd>, name: &Path) -> std::io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(parent.map(|p| p.as_raw_fd()), name, flags, Mode::empty()).map_err(io)?;
    // SAFETY: openat returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What `name` in `parent` is, without following a symlink.
pub fn stat_at(parent: &OwnedFd, name: &OsStr) -> std::io::Result<FileStat> {
    fstatat(
        Some(parent.as_raw_fd()),
        name,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(io)
}

pub fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// The device `dir` is on: removal stays on it.
pub fn device(dir: &OwnedFd) -> std::io::Result<u64> {
    Ok(fstat(dir.as_raw_fd()).map_err(io)?.st_dev)
}

/// The names in `dir` (not `.` and `..`).
pub fn entries(dir: &OwnedFd) -> std::io::Result<Vec<std::ffi::OsString>> {
    let own = nix::unistd::dup(dir.as_raw_fd()).map_err(io)?;
    let mut d = nix::dir::Dir::from_fd(own).map_err(io)?;
    let mut names = Vec::new();
    for e in d.iter() {
        let e = e.map_err(io)?;
        let name = e.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

/// Removes `name` from `parent` and, for a directory, everything in it;
/// the bytes it held. A symlink is removed, never followed; a directory on
/// another device than `dev` (a mount point) is an error and stays.
pub fn remove_at(parent: &OwnedFd, name: &OsStr, dev: u64) -> std::io::Result<u64> {
    remove_depth(parent, name, dev, 0)
}

fn remove_depth(parent: &OwnedFd, name: &OsStr, dev: u64, depth: usize) -> std::io::Result<u64> {
    let st = stat_at(parent, name)?;
    let size = u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512);
    if !is_dir(&st) {
        unlinkat(Some(parent.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir).map_err(io)?;
        return Ok(size);
    }
    if st.st_dev != dev {
        return Err(std::io::Error::other(format!(
            "{} is another file system (a mounted folder); left alone",
            Path::new(name).display()
        )));
    }
    if depth >= MAX_DEPTH {
        return Err(std::io::Error::other(format!(
            "more than {MAX_DEPTH} directories deep; left alone"
        )));
    }
    let dir = open_dir(Some(parent), Path::new(name))?;
    // The directory opened is the one examined (not swapped in between).
    let opened = fstat(dir.as_raw_fd()).map_err(io)?;
    if opened.st_dev != st.st_dev || opened.st_ino != st.st_ino {
        return Err(std::io::Error::other("changed while being removed"));
    }
    let mut freed = size;
    let mut first_error = None;
    for e in entries(&dir)? {
        match remove_depth(&dir, &e, dev, depth + 1) {
            Ok(n) => freed += n,
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }
    if let Some(err) = first_error {
        return Err(err);
    }
    unlinkat(Some(parent.as_raw_fd()), name, UnlinkatFlags::RemoveDir).map_err(io)?;
    Ok(freed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_are_removed_not_followed_and_mounts_are_left() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::create_dir_all(victim.join("deep")).unwrap();
        std::fs::write(victim.join("deep/precious"), "x").unwrap();
        let tree = t.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/f"), vec![0u8; 10_000]).unwrap();
        std::os::unix::fs::symlink(&victim, tree.join("a/link")).unwrap();
        std::os::unix::fs::symlink(victim.join("deep/precious"), tree.join("file-link")).unwrap();
        let root = open_dir(None, t.path()).unwrap();
        let dev = device(&root).unwrap();
        remove_at(&root, OsStr::new("tree"), dev).unwrap();
        assert!(!tree.exists());
        assert!(
            victim.join("deep/precious").exists(),
            "the link's target stays"
        );
    }

    #[test]
    fn a_symlinked_parent_is_not_entered() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("other/keep")).unwrap();
        std::fs::create_dir_all(t.path().join("mine")).unwrap();
        // The session made its cache directory a link to another session's.
        std::os::unix::fs::symlink(t.path().join("other"), t.path().join("mine/.cache")).unwrap();
        let root = open_dir(None, t.path()).unwrap();
        let mine = open_dir(Some(&root), Path::new("mine")).unwrap();
        assert!(open_dir(Some(&mine), Path::new(".cache")).is_err());
        assert!(t.path().join("other/keep").exists());
    }

    #[test]
    fn depth_is_bounded() {
        let t = tempfile::tempdir().unwrap();
        let mut p = t.path().join("d");
        for _ in 0..(MAX_DEPTH + 2) {
            p.push("x");
        }
        std::fs::create_dir_all(&p).unwrap();
        let root = open_dir(None, t.path()).unwrap();
        let dev = device(&root).unwrap();
        assert!(remove_at(&root, OsStr::new("d"), dev).is_err());
    }
}
