//! Mounting and unmounting the host's shares, by descriptor.
//!
//! A share goes to `/sessions/<name>/mnt/<m>` (the session's) or to
//! [`SDK_TARGET`] (every session's). The agent's mounts propagate into
//! every session's view, and the session owns `/sessions/<name>`, so the
//! target is never resolved as a path: it is opened with
//! [`crate::safe_path`] (no symbolic link, no `..`) and mount(2) and
//! umount2(2) are given `/proc/self/fd/N`, which names that very
//! directory. A session that swaps `mnt` for a link to someone else's
//! directory gets a refusal, not a share mounted (or unmounted) there.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::fstat;

use crate::confine::Layout;
use crate::safe_path::{self, Create};

/// Where the host mounts the SDK, read-only, for every session: not under
/// any session's control (sessions cannot write `/run`).
pub const SDK_TARGET: &str = "/run/cowork/sdk";

/// A target split into a directory the agent trusts, the directories below
/// it, and the mount point's own name.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    base: PathBuf,
    parent: PathBuf,
    name: OsString,
}

fn plain(what: &str, s: &str) -> Result<(), String> {
    cowork_backend::session_data::validate_name("name", s).map_err(|e| format!("{what}: {e}"))
}

/// `path` as a [`Target`]: [`SDK_TARGET`], or exactly
/// `<sessions root>/<session>/mnt/<mount>` with plain names.
fn target(layout: &Layout, path: &str) -> Result<Target, String> {
    if path == SDK_TARGET {
        return Ok(Target {
            base: PathBuf::from("/run"),
            parent: PathBuf::from("cowork"),
            name: OsString::from("sdk"),
        });
    }
    let bad = || {
        format!(
            "{path}: a share goes to {}/<session>/mnt/<name> or {SDK_TARGET}",
            layout.sessions_root.display()
        )
    };
    let rel = Path::new(path)
        .strip_prefix(&layout.sessions_root)
        .map_err(|_| bad())?;
    let rel = rel.to_str().ok_or_else(bad)?;
    let parts: Vec<&str> = rel.split('/').collect();
    let [session, "mnt", m] = parts[..] else {
        return Err(bad());
    };
    plain("session", session)?;
    plain("mount", m)?;
    Ok(Target {
        base: layout.sessions_root.clone(),
        parent: Path::new(session).join("mnt"),
        name: OsString::from(m),
    })
}

fn same_dir(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
    match (fstat(a.as_raw_fd()), fstat(b.as_raw_fd())) {
        (Ok(a), Ok(b)) => (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino),
        _ => false,
    }
}

/// Mounts virtio-fs `tag` at `path`, or only its directory `subdir` (the
/// device mounted whole once under the layout's `fs_root`, that directory
/// bound from there).
pub fn mount_share(
    layout: &Layout,
    tag: &str,
    subdir: Option<&str>,
    path: &str,
    read_only: bool,
) -> Result<(), String> {
    let t = target(layout, path)?;
    plain("tag", tag)?;
    let base = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let parent = safe_path::open_dir(&t.base, &t.parent, Create::Root)?;
    let at = safe_path::child(parent.as_fd(), &t.name, Create::Root, &|_| {})
        .map_err(|e| format!("{path}: {e}"))?;
    let at_path = safe_path::fd_path(at.as_fd());
    let Some(sub) = subdir else {
        let flags = if read_only {
            base | MsFlags::MS_RDONLY
        } else {
            base
        };
        return mount(
            Some(tag),
            at_path.as_str(),
            Some("virtiofs"),
            flags,
            None::<&str>,
        )
        .map_err(|e| format!("mount share {tag} on {path}: {e}"));
    };
    plain("share", sub)?;
    let whole = layout.fs_root.join(tag);
    if !whole.join(sub).exists() {
        std::fs::create_dir_all(&whole).map_err(|e| format!("mkdir {}: {e}", whole.display()))?;
        // Already mounted is fine: another share of the same device.
        match mount(Some(tag), &whole, Some("virtiofs"), base, None::<&str>) {
            Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => return Err(format!("mount {tag} on {}: {e}", whole.display())),
        }
    }
    let from = safe_path::open_dir(&whole, Path::new(sub), Create::No)?;
    let from_path = safe_path::fd_path(from.as_fd());
    mount(
        Some(from_path.as_str()),
        at_path.as_str(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("bind {} on {path}: {e}", whole.join(sub).display()))?;
    if read_only {
        remount_read_only(parent.as_fd(), &t.name, from.as_fd(), base)
            .map_err(|e| format!("read-only remount of {path}: {e}"))?;
    }
    Ok(())
}

/// A bind mount takes read-only only on a remount, and the remount wants
/// the mount itself: `at` (opened before) holds the directory under it, so
/// the mount point is opened again from its parent, which now crosses into
/// the new mount; it must be the share's directory. If it cannot be made
/// read-only the bind is taken away again (the device refuses writes to a
/// read-only share anyway).
fn remount_read_only(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    from: BorrowedFd<'_>,
    base: MsFlags,
) -> Result<(), String> {
    let top: OwnedFd = safe_path::child(parent, name, Create::No, &|_| {})?;
    if !same_dir(top.as_fd(), from) {
        return Err("the mount point moved: refused".into());
    }
    let top_path = safe_path::fd_path(top.as_fd());
    let flags = base | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    if let Err(e) = mount(
        None::<&str>,
        top_path.as_str(),
        None::<&str>,
        flags,
        None::<&str>,
    ) {
        let _ = umount2(top_path.as_str(), MntFlags::MNT_DETACH);
        return Err(e.to_string());
    }
    Ok(())
}

/// Unmounts the share at `path` (a target as for [`mount_share`]), lazily:
/// it leaves every session's copy (by propagation) even while one of its
/// processes is inside.
pub fn unmount_share(layout: &Layout, path: &str) -> Result<(), String> {
    let t = target(layout, path)?;
    let parent = safe_path::open_dir(&t.base, &t.parent, Create::No)?;
    // Opening the mount point by name from its parent crosses into what is
    // mounted there: the descriptor holds the mount's root.
    let top = safe_path::child(parent.as_fd(), &t.name, Create::No, &|_| {})
        .map_err(|e| format!("{path}: {e}"))?;
    umount2(
        safe_path::fd_path(top.as_fd()).as_str(),
        MntFlags::MNT_DETACH,
    )
    .map_err(|e| format!("umount {path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_have_one_shape() {
        let l = Layout::vm();
        assert_eq!(
            target(&l, "/sessions/a/mnt/proj").unwrap(),
            Target {
                base: "/sessions".into(),
                parent: "a/mnt".into(),
                name: "proj".into(),
            }
        );
        assert_eq!(target(&l, SDK_TARGET).unwrap().base, Path::new("/run"));
        // A doubled slash after the root names the same place.
        assert_eq!(
            target(&l, "/sessions//a/mnt/x").unwrap().parent,
            Path::new("a/mnt")
        );
        for bad in [
            "/sessions/a/mnt",
            "/sessions/a/mnt/",
            "/sessions/a/mnt/x/y",
            "/sessions/a/other/x",
            "/sessions/../mnt/x",
            "/sessions/a/mnt/..",
            "/sessions/a/./mnt/x",
            "/sessions/a/mnt//x",
            "/run/cowork/sdk/x",
            "/usr/local/bin",
            "sessions/a/mnt/x",
        ] {
            assert!(target(&l, bad).is_err(), "{bad}");
        }
    }
}
