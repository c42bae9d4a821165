//! Every user-controlled bind of a sandbox, opened as a descriptor
//! (cowork_backend::resolve) at launch: the SDK folder, the session's
//! shares and the user's own binds. A read-write share is followed by its
//! protected paths (cowork_backend::protected), each opened beneath the
//! share's own descriptor and bound read-only over itself.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use cowork_backend::api::MountMode;
use cowork_backend::paths::HostMount;
use cowork_backend::protected::{self, Protection};
use cowork_backend::resolve::{open_beneath_fd, open_host_path};
use cowork_backend::{BackendError, Result};

use super::sandbox::FdBind;
use super::user_config::UserMounts;

/// Protected paths bound per launch at most. Each is a descriptor and two
/// bwrap arguments; a share that would take the count beyond (hundreds of
/// repositories) is bound read-only whole instead, with a log line.
pub const MAX_PROTECTED_BINDS: usize = 512;

/// The binds, in mount order, and the descriptors bwrap inherits for them.
#[derive(Default)]
pub struct Binds {
    pub binds: Vec<FdBind>,
    pub fds: Vec<OwnedFd>,
    protected: usize,
}

impl Binds {
    fn push(&mut self, fd: OwnedFd, dest: PathBuf, ro: bool) {
        self.binds.push(FdBind {
            fd: fd.as_raw_fd(),
            dest,
            ro,
        });
        self.fds.push(fd);
    }

    /// The share at `root` (already pushed) gets each of its existing
    /// protected paths bound read-only over itself at `dest`. A path that
    /// no longer resolves beneath the share without a symlink (the session
    /// changed it since the search) is skipped: bwrap then has nothing of
    /// the session's choosing to mount. Any other failure to open one
    /// (out of descriptors, say) fails the spawn rather than leave the
    /// path writable. Returns false, having bound nothing, when the share
    /// holds more than can be searched or bound: the caller then shares it
    /// read-only whole rather than leave some protected paths writable.
    fn protect(&mut self, root: &OwnedFd, dest: &Path, shown: &Path) -> Result<bool> {
        // The search walks the share through its descriptor's /proc link,
        // so it looks at the folder that is mounted, not at whatever the
        // path names now.
        let found = protected::find(Path::new(&format!("/proc/self/fd/{}", root.as_raw_fd())));
        if let Some(why) = &found.incomplete {
            protected::read_only_instead(shown, why);
            return Ok(false);
        }
        let mut fds = Vec::new();
        for rel in found.paths {
            if self.protected + fds.len() == MAX_PROTECTED_BINDS {
                protected::read_only_instead(
                    shown,
                    &format!(
                        "this session's folders hold over {MAX_PROTECTED_BINDS} protected paths"
                    ),
                );
                return Ok(false);
            }
            match open_beneath_fd(root.as_fd(), &rel, false) {
                Ok(fd) => fds.push((fd, rel)),
                Err(e) if gone(&e) => {}
                Err(e) => {
                    return Err(BackendError::io(
                        format!(
                            "cannot open the protected path {}",
                            shown.join(&rel).display()
                        ),
                        e,
                    ))
                }
            }
        }
        self.protected += fds.len();
        for (fd, rel) in fds {
            self.push(fd, dest.join(&rel), true);
        }
        Ok(true)
    }

    /// A writable bind, pushed last, and the protection that follows it:
    /// read-only whole instead.
    fn share(
        &mut self,
        fd: OwnedFd,
        dest: PathBuf,
        shown: &Path,
        protection: Protection,
    ) -> Result<()> {
        let root =
            match protection {
                Protection::On => Some(fd.try_clone().map_err(|e| {
                    BackendError::io(format!("cannot share {}", shown.display()), e)
                })?),
                Protection::Off => None,
            };
        self.push(fd, dest.clone(), false);
        if let Some(root) = root {
            if !self.protect(&root, &dest, shown)? {
                if let Some(last) = self.binds.last_mut() {
                    last.ro = true;
                }
            }
        }
        Ok(())
    }
}

/// The protected path is no longer there to protect: removed, or a
/// symlink (or a non-folder) put on its way since the search.
fn gone(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::ENOENT | nix::libc::ELOOP | nix::libc::ENOTDIR | nix::libc::EXDEV)
    )
}

/// Opens every bind of one launch. A share of the session that no longer
/// opens (a symlink was planted on its path since it was added) fails the
/// spawn with the reason; a bad bind of the user's own config is skipped
/// with a log line, as the rest of that file is.
pub fn open(
    home: &Path,
    session: &str,
    mounts: &[(String, HostMount)],
    sdk_dir: Option<&Path>,
    user: &UserMounts,
    protection: Protection,
) -> Result<Binds> {
    let mut b = Binds::default();
    if let Some(sdk) = sdk_dir {
        b.push(open_host_path(home, sdk, true)?, sdk.to_path_buf(), true);
    }
    let mnt = PathBuf::from(format!("/sessions/{session}/mnt"));
    for (name, m) in mounts {
        let fd =
            open_host_path(home, &m.host, false).map_err(|e| BackendError::PathNotAllowed {
                path: m.host.display().to_string(),
                reason: format!("mount {name:?} no longer opens: {e}"),
            })?;
        let dest = mnt.join(name);
        if m.mode == MountMode::Ro {
            b.push(fd, dest, true);
        } else {
            b.share(fd, dest, &m.host, protection)?;
        }
    }
    for (list, rw) in [(&user.ro, false), (&user.rw, true)] {
        for (src, dst) in list {
            let fd = match open_host_path(home, src, false) {
                Ok(fd) => fd,
                Err(e) => {
                    tracing::warn!("coworkBwrapMounts: {}: {e}; ignored", src.display());
                    continue;
                }
            };
            if rw {
                b.share(fd, dst.clone(), src, protection)?;
            } else {
                b.push(fd, dst.clone(), true);
            }
        }
    }
    Ok(b)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
mod tests {
    use super::*;

    fn share(home: &Path, name: &str, mode: MountMode) -> (String, HostMount) {
        (
            name.to_string(),
            HostMount {
                host: home.join(name),
                mode,
            },
        )
    }

    fn dests(b: &Binds) -> Vec<(String, bool)> {
        b.binds
            .iter()
            .map(|x| (x.dest.display().to_string(), x.ro))
            .collect()
    }

    #[test]
    fn read_write_shares_are_followed_by_their_protected_paths() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().canonicalize().unwrap();
        for d in ["rw/.git/hooks", "ro/.git/hooks", "sdk"] {
            std::fs::create_dir_all(home.join(d)).unwrap();
        }
        std::fs::write(home.join("rw/.bashrc"), "").unwrap();
        std::fs::write(home.join("ro/.bashrc"), "").unwrap();
        let mounts = [
            share(&home, "rw", MountMode::Rw),
            share(&home, "ro", MountMode::Ro),
        ];
        let user = UserMounts::default();
        let b = open(
            &home,
            "s",
            &mounts,
            Some(&home.join("sdk")),
            &user,
            Protection::On,
        )
        .unwrap();
        assert_eq!(
            dests(&b),
            [
                (home.join("sdk").display().to_string(), true),
                ("/sessions/s/mnt/rw".into(), false),
                ("/sessions/s/mnt/rw/.git/hooks".into(), true),
                ("/sessions/s/mnt/rw/.bashrc".into(), true),
                ("/sessions/s/mnt/ro".into(), true),
            ]
        );
        assert_eq!(b.fds.len(), b.binds.len());
        let off = open(&home, "s", &mounts, None, &user, Protection::Off).unwrap();
        assert_eq!(off.binds.len(), 2);
    }

    #[test]
    fn a_share_with_more_protected_paths_than_can_be_bound_is_read_only_whole() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().canonicalize().unwrap();
        std::fs::create_dir_all(home.join("few/.git/hooks")).unwrap();
        for i in 0..=MAX_PROTECTED_BINDS {
            let d = home.join(format!("many/r{i}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(".bashrc"), "").unwrap();
        }
        let mounts = [
            share(&home, "few", MountMode::Rw),
            share(&home, "many", MountMode::Rw),
        ];
        let user = UserMounts::default();
        let b = open(&home, "s", &mounts, None, &user, Protection::On).unwrap();
        assert_eq!(
            dests(&b),
            [
                ("/sessions/s/mnt/few".into(), false),
                ("/sessions/s/mnt/few/.git/hooks".into(), true),
                ("/sessions/s/mnt/many".into(), true),
            ]
        );
        assert_eq!(b.fds.len(), b.binds.len());
    }

    #[test]
    fn a_share_reached_through_a_planted_link_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().canonicalize().unwrap();
        std::fs::create_dir_all(home.join("proj")).unwrap();
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        let mounts = [share(&home, "proj/sub", MountMode::Rw)];
        // Checked when it was a folder, swapped for a link before the spawn.
        std::os::unix::fs::symlink(home.join(".ssh"), home.join("proj/sub")).unwrap();
        let e = open(
            &home,
            "s",
            &mounts,
            None,
            &UserMounts::default(),
            Protection::On,
        );
        assert!(
            matches!(e, Err(BackendError::PathNotAllowed { .. })),
            "{:?}",
            e.map(|b| dests(&b))
        );
    }
}
