//! Opening a share's source once, as a descriptor, with no symlink on the
//! way. A session with a read-write share can replace any folder in it by
//! a symlink at any moment; a path that was checked and then handed to
//! another program (bwrap, a file server) would be resolved again later,
//! through whatever the session planted there in between. A descriptor
//! opened here names the object that was checked, whatever happens to the
//! path afterwards, so backends pass descriptors on, never the path.
//!
//! Resolution uses `openat2(2)` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS
//! | RESOLVE_NO_MAGICLINKS` from a descriptor of the base folder (the home
//! directory, or a share's root). On a kernel without `openat2` (before
//! 5.6) the same is done one component at a time with `openat(O_NOFOLLOW)`,
//! each step relative to the folder opened by the step before.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::libc;

use crate::error::{BackendError, Result};
use crate::paths::{canonicalize_lenient, validate_mount_source};

/// Opens `rel`, a path relative to `home` (`""` is `home` itself), as an
/// `O_PATH` descriptor, refusing a symlink anywhere on the way, at its end,
/// or a `..` that climbs out. `want_dir` asks for a directory
/// (`O_DIRECTORY`); otherwise the object may be of any type. The home
/// directory itself is opened by its path as given (a session cannot
/// replace it: at most it has a share inside it). The descriptor is
/// close-on-exec; a backend hands it on explicitly.
///
/// Both backends resolve every mount source through this: bwrap binds the
/// descriptor (`--bind-fd`), the kvm backend serves files beneath it.
pub fn open_beneath(home: &Path, rel: &Path, want_dir: bool) -> Result<OwnedFd> {
    let base = open_dir(home).map_err(|e| {
        BackendError::io(
            format!("cannot open the home directory {}", home.display()),
            e,
        )
    })?;
    open_beneath_fd(base.as_fd(), rel, want_dir).map_err(|e| refusal(&home.join(rel), e))
}

/// [`open_beneath`] from an already open folder (a share's root), with the
/// plain I/O error: `ELOOP` for a symlink on the way, `EXDEV` for a path
/// that leaves `root`, `ENOENT` for one that is not there.
pub fn open_beneath_fd(root: BorrowedFd<'_>, rel: &Path, want_dir: bool) -> io::Result<OwnedFd> {
    let rel_c = relative_cstring(rel)?;
    // No O_NOFOLLOW: with O_PATH it would open a final symlink itself
    // instead of letting RESOLVE_NO_SYMLINKS refuse it.
    let mut flags = libc::O_PATH | libc::O_CLOEXEC;
    if want_dir {
        flags |= libc::O_DIRECTORY;
    }
    let fd = match openat2(root, &rel_c, flags) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => walk(root, rel, want_dir, false)?,
        other => other?,
    };
    not_a_symlink(fd)
}

/// `fd` back, unless it names a symlink (`ELOOP`).
fn not_a_symlink(fd: OwnedFd) -> io::Result<OwnedFd> {
    let file = std::fs::File::from(fd);
    if file.metadata()?.file_type().is_symlink() {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    Ok(file.into())
}

/// Creates the folders of `rel` below `home` that do not exist yet (as
/// `mkdir -p` would, but never through a symlink) and opens the last one
/// as [`open_beneath`] does.
pub fn create_dirs_beneath(home: &Path, rel: &Path) -> Result<OwnedFd> {
    let base = open_dir(home).map_err(|e| {
        BackendError::io(
            format!("cannot open the home directory {}", home.display()),
            e,
        )
    })?;
    walk(base.as_fd(), rel, true, true).map_err(|e| refusal(&home.join(rel), e))
}

/// A mount source as every backend takes it: checked by
/// [`validate_mount_source`] (inside `home`, not `/`, `/proc`, `/dev`,
/// `/sys`, no symlink below `home`), created as a folder when missing and
/// `create` is set, then opened by [`open_beneath`], which holds the last
/// two rules against anything changed since the check. Returns the
/// canonical path (for messages and guest-path translation) and the
/// descriptor (for the mount itself).
pub fn open_mount_source(home: &Path, source: &Path, create: bool) -> Result<(PathBuf, OwnedFd)> {
    let canon = validate_mount_source(home, source)?;
    let rel = relative_to_home(home, &canon).ok_or_else(|| BackendError::PathNotAllowed {
        path: source.display().to_string(),
        reason: "outside the home directory".into(),
    })?;
    let fd = match open_beneath(home, &rel, false) {
        Err(BackendError::Io { source: e, .. })
            if create && e.kind() == io::ErrorKind::NotFound =>
        {
            create_dirs_beneath(home, &rel)?
        }
        other => other?,
    };
    Ok((canon, fd))
}

/// `path` relative to `home` (as given or canonical), lexically, if it is
/// inside it: what [`open_beneath`] takes.
pub fn relative_to_home(home: &Path, path: &Path) -> Option<PathBuf> {
    let canon_home = canonicalize_lenient(home).ok();
    let rel = path
        .strip_prefix(home)
        .ok()
        .or_else(|| path.strip_prefix(canon_home.as_deref()?).ok())?;
    rel.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        .then(|| rel.to_path_buf())
}

/// Opens a host path a backend was given: inside the home directory through
/// [`open_beneath`] (so no symlink there is followed), elsewhere (a
/// read-only system folder the user named) by its canonical path, opened
/// with no symlink allowed so that what was resolved is what is opened.
pub fn open_host_path(home: &Path, path: &Path, want_dir: bool) -> Result<OwnedFd> {
    // Callers pass resolved paths; a `..` would make the lexical test
    // below meaningless.
    if path.components().any(|c| c == Component::ParentDir) || !path.is_absolute() {
        return Err(BackendError::PathNotAllowed {
            path: path.display().to_string(),
            reason: "not an absolute path without '..'".into(),
        });
    }
    if let Some(rel) = relative_to_home(home, path) {
        return open_beneath(home, &rel, want_dir);
    }
    let canon = path
        .canonicalize()
        .map_err(|e| BackendError::io(format!("cannot resolve {}", path.display()), e))?;
    let root = open_dir(Path::new("/")).map_err(|e| BackendError::io("cannot open /", e))?;
    let rel = canon.strip_prefix("/").unwrap_or(&canon);
    open_beneath_fd(root.as_fd(), rel, want_dir).map_err(|e| refusal(&canon, e))
}

/// The error a caller shows for a refused resolution.
fn refusal(shown: &Path, e: io::Error) -> BackendError {
    let reason = match e.raw_os_error() {
        Some(libc::ELOOP) => {
            "a symbolic link is on the way; a folder is shared only by its real path"
        }
        Some(libc::EXDEV) => "it leads outside the folder it must stay in",
        _ => return BackendError::io(format!("cannot open {}", shown.display()), e),
    };
    BackendError::PathNotAllowed {
        path: shown.display().to_string(),
        reason: reason.into(),
    }
}

fn open_dir(p: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(p)?;
    Ok(f.into())
}

/// `rel` as a C string for `openat2`, `.` when empty; only plain names
/// (and `.`) are accepted, so nothing climbs or starts at `/`.
fn relative_cstring(rel: &Path) -> io::Result<CString> {
    let mut out: Vec<u8> = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(n.as_bytes());
            }
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(io::Error::from_raw_os_error(libc::EXDEV))
            }
        }
    }
    if out.is_empty() {
        out.push(b'.');
    }
    CString::new(out).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Lookups an `openat2` retries after a concurrent rename before it gives
/// up with EAGAIN.
const MAX_RACES: u32 = 64;

fn openat2(dir: BorrowedFd<'_>, path: &CString, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: open_how is three integers (libc marks it non-exhaustive, so
    // it cannot be built with a literal); all zeroes is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // A session renaming in a loop could otherwise keep the lookup racing
    // (EAGAIN) for as long as it likes.
    let mut races = 0;
    loop {
        // SAFETY: `path` is a NUL-terminated string and `how` a fully
        // initialised open_how, both alive for the call; the size passed is
        // that of the struct given. The kernel only reads them.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if r >= 0 {
            let fd = libc::c_int::try_from(r).map_err(|_| io::Error::other("fd out of range"))?;
            // SAFETY: the kernel just returned this descriptor to us; nothing
            // else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        // EAGAIN: a rename raced the lookup (RESOLVE_BENEATH is strict).
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) if races < MAX_RACES => races += 1,
            _ => return Err(e),
        }
    }
}

fn openat(dir: BorrowedFd<'_>, name: &OsStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c =
        CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is NUL-terminated and alive for the call; `dir` is an
    // open descriptor borrowed for its duration.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn mkdirat(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let c =
        CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is NUL-terminated and alive for the call; `dir` is open.
    let r = unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o777) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One component at a time from `root`: each opened `O_NOFOLLOW` relative
/// to the previous one, and refused if it is a symlink (`O_PATH |
/// O_NOFOLLOW` opens the link itself rather than failing). With `create`,
/// missing folders are made on the way.
fn walk(root: BorrowedFd<'_>, rel: &Path, want_dir: bool, create: bool) -> io::Result<OwnedFd> {
    let names: Vec<&OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(Ok(n)),
            Component::CurDir => None,
            _ => Some(Err(io::Error::from_raw_os_error(libc::EXDEV))),
        })
        .collect::<io::Result<_>>()?;
    let mut cur = openat(
        root,
        OsStr::new("."),
        libc::O_PATH | libc::O_CLOEXEC | libc::O_DIRECTORY,
    )?;
    for (i, name) in names.iter().enumerate() {
        let last = i + 1 == names.len();
        let mut flags = libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW;
        if !last || want_dir {
            flags |= libc::O_DIRECTORY;
        }
        let next = match openat(cur.as_fd(), name, flags) {
            Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => {
                match mkdirat(cur.as_fd(), name) {
                    Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
                    _ => openat(cur.as_fd(), name, flags | libc::O_DIRECTORY)?,
                }
            }
            // O_DIRECTORY | O_NOFOLLOW on a symlink: say what it is.
            Err(e)
                if e.raw_os_error() == Some(libc::ENOTDIR) && is_symlink_at(cur.as_fd(), name) =>
            {
                return Err(io::Error::from_raw_os_error(libc::ELOOP))
            }
            other => other?,
        };
        cur = not_a_symlink(next)?;
    }
    Ok(cur)
}

fn is_symlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    openat(dir, name, libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .and_then(|fd| std::fs::File::from(fd).metadata())
        .is_ok_and(|m| m.file_type().is_symlink())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
mod tests {
    use super::*;

    /// The folder a descriptor names, through /proc.
    fn target(fd: &OwnedFd) -> PathBuf {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap()
    }

    fn tree() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().canonicalize().unwrap().join("home");
        std::fs::create_dir_all(home.join("proj/sub")).unwrap();
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        std::fs::write(home.join("proj/file"), "x").unwrap();
        std::os::unix::fs::symlink(home.join(".ssh"), home.join("proj/link")).unwrap();
        std::os::unix::fs::symlink("/etc", home.join("etc")).unwrap();
        (t, home)
    }

    #[test]
    fn opens_real_paths_and_refuses_links_and_escapes() {
        let (_t, home) = tree();
        let fd = open_beneath(&home, Path::new("proj/sub"), true).unwrap();
        assert_eq!(target(&fd), home.join("proj/sub"));
        assert_eq!(
            target(&open_beneath(&home, Path::new(""), true).unwrap()),
            home
        );
        assert!(open_beneath(&home, Path::new("proj/file"), false).is_ok());
        assert!(open_beneath(&home, Path::new("proj/file"), true).is_err());
        for bad in ["proj/link", "proj/link/x", "etc", "proj/../../x", "/etc"] {
            let e = open_beneath(&home, Path::new(bad), false);
            assert!(
                matches!(e, Err(BackendError::PathNotAllowed { .. })),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn the_component_walk_refuses_the_same() {
        let (_t, home) = tree();
        let base = open_dir(&home).unwrap();
        let fd = walk(base.as_fd(), Path::new("proj/sub"), true, false).unwrap();
        assert_eq!(target(&fd), home.join("proj/sub"));
        for (bad, want_dir) in [
            ("proj/link", true),
            ("proj/link", false),
            ("proj/link/x", false),
            ("etc", false),
        ] {
            let e = walk(base.as_fd(), Path::new(bad), want_dir, false).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{bad}");
        }
        assert!(walk(base.as_fd(), Path::new("../x"), false, false).is_err());
    }

    #[test]
    fn created_folders_never_go_through_a_link() {
        let (_t, home) = tree();
        let fd = create_dirs_beneath(&home, Path::new("new/deeper")).unwrap();
        assert_eq!(target(&fd), home.join("new/deeper"));
        assert!(create_dirs_beneath(&home, Path::new("proj/link/planted")).is_err());
        assert!(!home.join(".ssh/planted").exists());
        let (canon, fd) = open_mount_source(&home, &home.join("made/here"), true).unwrap();
        assert_eq!(canon, home.join("made/here"));
        assert_eq!(target(&fd), canon);
        assert!(open_mount_source(&home, &home.join("proj/link"), true).is_err());
        assert!(open_mount_source(&home, Path::new("/usr"), false).is_err());
    }

    #[test]
    fn paths_outside_home_open_by_their_real_path() {
        let (_t, home) = tree();
        let fd = open_host_path(&home, Path::new("/usr"), true).unwrap();
        assert!(open_host_path(&home, Path::new("/usr/../etc"), true).is_err());
        assert_eq!(target(&fd), Path::new("/usr"));
        assert_eq!(
            relative_to_home(&home, &home.join("proj/sub")),
            Some(PathBuf::from("proj/sub"))
        );
        assert_eq!(relative_to_home(&home, Path::new("/usr")), None);
        assert!(open_host_path(&home, &home.join("proj/link"), true).is_err());
    }
}
