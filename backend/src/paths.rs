//! Host paths the client names (mount sources, the SDK directory) and the
//! guest paths (`/sessions/<name>/mnt/<mount>/...`) a host-path-space
//! backend has to translate. Every translation stays inside the mount it
//! names: `..` is resolved lexically and symlinks are resolved on the host
//! before the containment check.

use std::path::{Component, Path, PathBuf};

use crate::api::MountMode;
use crate::error::{BackendError, Result};

/// Mounts the app adds for files it hands over (`uploads`) or collects
/// (`outputs`): never the working folder (helper-protocol.md).
pub const NOT_WORKING_FOLDERS: [&str; 2] = ["uploads", "outputs"];

/// Never mountable, nor anything under them (besides `/` itself).
const FORBIDDEN_TREES: [&str; 3] = ["/proc", "/dev", "/sys"];

/// Where a share comes from on the host, already canonical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMount {
    pub host: PathBuf,
    pub mode: MountMode,
}

/// Joins `rest` onto `base` lexically: `.` dropped, `..` pops, and popping
/// past `base` is `None`.
pub fn join_within(base: &Path, rest: &str) -> Option<PathBuf> {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in Path::new(rest).components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    let mut out = base.to_path_buf();
    out.extend(parts);
    Some(out)
}

/// Canonicalizes the deepest existing ancestor of `p` and appends the rest,
/// so a path that does not exist yet still has its symlinks resolved.
pub fn canonicalize_lenient(p: &Path) -> std::io::Result<PathBuf> {
    let mut existing = p.to_path_buf();
    let mut tail = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(mut c) => {
                c.extend(tail.iter().rev());
                return Ok(c);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let Some(name) = existing.file_name().map(|n| n.to_os_string()) else {
                    return Err(e);
                };
                tail.push(name);
                if !existing.pop() {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Resolves a host path as the client writes it: absolute, root-relative
/// (`home/alice/project`, i.e. `path.relative('/', abs)`) or home-relative
/// (`.config/...`). Root-relative wins when it lands inside the home
/// directory, which is the only place mount sources may be.
pub fn resolve_host_path(home: &Path, p: &str) -> Result<PathBuf> {
    let bad = |reason: &str| BackendError::PathNotAllowed {
        path: p.to_string(),
        reason: reason.to_string(),
    };
    if p.is_empty() || p.contains('\0') {
        return Err(bad("empty or contains NUL"));
    }
    let root_rel = join_within(Path::new("/"), p).ok_or_else(|| bad("'..' climbs above /"))?;
    if p.starts_with('/') || root_rel.starts_with(home) {
        return Ok(root_rel);
    }
    join_within(home, p).ok_or_else(|| bad("'..' climbs out of the home directory"))
}

/// A regular file someone may execute.
pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Checks a mount source: not `/`, `/proc`, `/dev`, `/sys` or under them,
/// inside `home` once symlinks are resolved, and reached through no
/// symlink inside `home` (a session with a writable folder could have made
/// one there, turning a later mount of a subfolder into a mount of, say,
/// `~/.ssh`). Returns the canonical path.
pub fn validate_mount_source(home: &Path, source: &Path) -> Result<PathBuf> {
    let shown = source.display().to_string();
    if let Some(link) = symlink_below(home, source) {
        return Err(BackendError::PathNotAllowed {
            path: shown,
            reason: format!(
                "{} is a symbolic link; a folder inside the home directory is shared only by its real path",
                link.display()
            ),
        });
    }
    let canon = canonicalize_lenient(source)
        .map_err(|e| BackendError::io(format!("cannot resolve {shown}"), e))?;
    if let Some(reason) = forbidden_reason(&canon) {
        return Err(BackendError::PathNotAllowed {
            path: shown,
            reason,
        });
    }
    let home = canonicalize_lenient(home)
        .map_err(|e| BackendError::io("cannot resolve the home directory", e))?;
    if !canon.starts_with(&home) {
        return Err(BackendError::PathNotAllowed {
            path: shown,
            reason: format!(
                "resolves to {} outside the home directory {}",
                canon.display(),
                home.display()
            ),
        });
    }
    Ok(canon)
}

/// The first symlink among `source`'s components below `home` (as given,
/// or canonical), if any.
fn symlink_below(home: &Path, source: &Path) -> Option<PathBuf> {
    let canon_home = canonicalize_lenient(home).ok();
    let (base, rel) = source
        .strip_prefix(home)
        .map(|r| (home.to_path_buf(), r))
        .ok()
        .or_else(|| {
            let h = canon_home.as_deref()?;
            source.strip_prefix(h).ok().map(|r| (h.to_path_buf(), r))
        })?;
    let mut p = base;
    for c in rel.components() {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => return Some(p),
            Ok(_) => {}
            // Not there yet: it will be made as a directory.
            Err(_) => return None,
        }
    }
    None
}

/// Why a canonical path may never be mounted, if it may not.
pub fn forbidden_reason(canon: &Path) -> Option<String> {
    if canon == Path::new("/") {
        return Some("/ is never mountable".into());
    }
    FORBIDDEN_TREES
        .iter()
        .find(|t| canon.starts_with(t))
        .map(|t| format!("{t} and everything under it are never mountable"))
}

/// `rest` joined under a canonical `root`, refusing `..` that climbs out and
/// symlinks that lead out.
pub fn contained_join(root: &Path, rest: &str, shown: &str, mount: &str) -> Result<PathBuf> {
    let escape = || BackendError::Escape {
        path: shown.to_string(),
        mount: mount.to_string(),
    };
    let joined = join_within(root, rest).ok_or_else(escape)?;
    let canon = canonicalize_lenient(&joined)
        .map_err(|e| BackendError::io(format!("cannot resolve {shown}"), e))?;
    if !canon.starts_with(root) {
        return Err(escape());
    }
    Ok(canon)
}

/// The parts of a guest path under `/sessions/`.
#[derive(Debug, PartialEq, Eq)]
pub struct GuestPath<'a> {
    pub session: &'a str,
    pub place: GuestPlace<'a>,
    /// Written as `//sessions/...`.
    pub doubled: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum GuestPlace<'a> {
    /// `/sessions/<name>`
    SessionRoot,
    /// `/sessions/<name>/mnt`
    MountDir,
    /// `/sessions/<name>/mnt/<mount>/<rest>`
    Mount { name: &'a str, rest: &'a str },
    /// `/sessions/<name>/<rest>` outside `mnt`
    Session { rest: &'a str },
}

/// Recognizes `/sessions/...` and the client's occasional `//sessions/...`.
pub fn parse_guest_path(p: &str) -> Option<GuestPath<'_>> {
    let trimmed = p.trim_start_matches('/');
    let slashes = p.len() - trimmed.len();
    if slashes == 0 {
        return None;
    }
    let after = trimmed.strip_prefix("sessions/")?;
    let (session, rest) = after.split_once('/').unwrap_or((after, ""));
    if session.is_empty() {
        return None;
    }
    let rest = rest.trim_start_matches('/');
    let place = if rest.is_empty() {
        GuestPlace::SessionRoot
    } else if let Some(m) = rest.strip_prefix("mnt") {
        if m.is_empty() || m == "/" {
            GuestPlace::MountDir
        } else if let Some(m) = m.strip_prefix('/') {
            let (name, rest) = m.split_once('/').unwrap_or((m, ""));
            GuestPlace::Mount { name, rest }
        } else {
            GuestPlace::Session { rest }
        }
    } else {
        GuestPlace::Session { rest }
    };
    Some(GuestPath {
        session,
        place,
        doubled: slashes >= 2,
    })
}

/// One session's view from the host: its data directory and its shares.
pub struct SessionPaths<'a> {
    pub name: &'a str,
    pub dir: &'a Path,
    /// In the order the client gave them.
    pub mounts: &'a [(String, HostMount)],
}

impl SessionPaths<'_> {
    /// The mount a guest path names, forgiving the client's dropped or added
    /// leading dot (`.claude` vs `claude`).
    pub fn find_mount(&self, name: &str) -> Option<&(String, HostMount)> {
        let exact = self.mounts.iter().find(|(n, _)| n == name);
        exact.or_else(|| {
            let alt = match name.strip_prefix('.') {
                Some(bare) => bare.to_string(),
                None => format!(".{name}"),
            };
            self.mounts.iter().find(|(n, _)| *n == alt)
        })
    }

    /// The working folder for a `cwd` of `/sessions/<name>`: the first mount
    /// that is the user's own folder, i.e. whose name does not start with `.`
    /// (`.claude`, the plugin mounts `.cowork-lib`, `.cowork-perm-req`,
    /// `.cowork-perm-resp`, ...) and is not one of the app's file drops.
    pub fn working_mount(&self) -> Option<&(String, HostMount)> {
        self.mounts
            .iter()
            .find(|(n, _)| !n.starts_with('.') && !NOT_WORKING_FOLDERS.contains(&n.as_str()))
    }

    /// The host path for a guest path of this session; `Ok(None)` when `p`
    /// is not a guest path at all (so it is left as it is).
    pub fn translate(&self, p: &str) -> Result<Option<PathBuf>> {
        let Some(g) = parse_guest_path(p) else {
            return Ok(None);
        };
        if g.session != self.name {
            return Err(BackendError::PathNotAllowed {
                path: p.to_string(),
                reason: format!("it belongs to session {:?}, not {:?}", g.session, self.name),
            });
        }
        match g.place {
            GuestPlace::SessionRoot => Ok(Some(self.dir.to_path_buf())),
            GuestPlace::MountDir => Err(BackendError::PathNotAllowed {
                path: p.to_string(),
                reason: "the mount directory itself has no host counterpart".into(),
            }),
            GuestPlace::Mount { name, rest } => {
                let (mname, m) =
                    self.find_mount(name)
                        .ok_or_else(|| BackendError::UnknownMount {
                            path: p.to_string(),
                            mount: name.to_string(),
                            session: self.name.to_string(),
                        })?;
                contained_join(&m.host, rest, p, mname).map(Some)
            }
            GuestPlace::Session { rest } => contained_join(self.dir, rest, p, self.name).map(Some),
        }
    }

    /// Like [`Self::translate`], but a session root means the working mount,
    /// as the client intends for `cwd`.
    pub fn translate_cwd(&self, p: &str) -> Result<Option<PathBuf>> {
        match parse_guest_path(p) {
            Some(GuestPath {
                session,
                place: GuestPlace::SessionRoot,
                ..
            }) if session == self.name => Ok(Some(
                self.working_mount()
                    .map(|(_, m)| m.host.clone())
                    .unwrap_or_else(|| self.dir.to_path_buf()),
            )),
            _ => self.translate(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_forms() {
        let g = parse_guest_path("//sessions/s1/mnt/.claude/a/b").unwrap();
        assert!(g.doubled);
        assert_eq!(g.session, "s1");
        assert_eq!(
            g.place,
            GuestPlace::Mount {
                name: ".claude",
                rest: "a/b"
            }
        );
        assert_eq!(
            parse_guest_path("/sessions/s1").unwrap().place,
            GuestPlace::SessionRoot
        );
        assert_eq!(
            parse_guest_path("/sessions/s1/mnt").unwrap().place,
            GuestPlace::MountDir
        );
        assert_eq!(
            parse_guest_path("/sessions/s1/mntx/y").unwrap().place,
            GuestPlace::Session { rest: "mntx/y" }
        );
        assert!(parse_guest_path("sessions/s1").is_none());
        assert!(parse_guest_path("/home/a").is_none());
        assert!(parse_guest_path("/sessions/").is_none());
    }

    #[test]
    fn host_path_resolution() {
        let home = Path::new("/home/alice");
        assert_eq!(
            resolve_host_path(home, "home/alice/p").unwrap(),
            home.join("p")
        );
        assert_eq!(
            resolve_host_path(home, ".config/x").unwrap(),
            home.join(".config/x")
        );
        assert_eq!(
            resolve_host_path(home, "/opt/x").unwrap(),
            Path::new("/opt/x")
        );
        assert!(resolve_host_path(home, "../../etc").is_err());
        assert!(resolve_host_path(home, "").is_err());
    }

    #[test]
    fn mount_sources_stay_home() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("home");
        std::fs::create_dir_all(home.join("proj")).unwrap();
        std::os::unix::fs::symlink("/etc", home.join("etc-link")).unwrap();
        assert!(validate_mount_source(&home, &home.join("proj")).is_ok());
        // A link inside home, even to a folder inside home, is refused: a
        // session could have planted it in a folder it could write.
        std::fs::create_dir_all(home.join("secret")).unwrap();
        std::os::unix::fs::symlink(home.join("secret"), home.join("proj/sub")).unwrap();
        assert!(validate_mount_source(&home, &home.join("proj/sub")).is_err());
        assert!(validate_mount_source(&home, &home.join("proj/sub/deeper")).is_err());
        assert!(validate_mount_source(&home, &home.join("new/dir")).is_ok());
        for bad in [Path::new("/"), Path::new("/proc/self"), Path::new("/etc")] {
            assert!(validate_mount_source(&home, bad).is_err(), "{bad:?}");
        }
        assert!(validate_mount_source(&home, &home.join("etc-link")).is_err());
        assert!(validate_mount_source(&home, &home.join("proj/../../x")).is_err());
    }

    #[test]
    fn translation_never_escapes() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        let proj = root.join("proj");
        let cfg = root.join("cfg");
        std::fs::create_dir_all(proj.join("sub")).unwrap();
        std::fs::create_dir_all(&cfg).unwrap();
        std::os::unix::fs::symlink("/etc", proj.join("out")).unwrap();
        let mounts = vec![
            (
                ".claude".to_string(),
                HostMount {
                    host: cfg.clone(),
                    mode: MountMode::Rw,
                },
            ),
            (
                "proj".to_string(),
                HostMount {
                    host: proj.clone(),
                    mode: MountMode::Ro,
                },
            ),
        ];
        let sp = SessionPaths {
            name: "s",
            dir: &root,
            mounts: &mounts,
        };
        assert_eq!(
            sp.translate("/sessions/s/mnt/proj/sub").unwrap(),
            Some(proj.join("sub"))
        );
        assert_eq!(
            sp.translate("//sessions/s/mnt/claude").unwrap(),
            Some(cfg.clone())
        );
        assert_eq!(sp.translate_cwd("/sessions/s").unwrap(), Some(proj.clone()));
        assert_eq!(sp.translate("/tmp/x").unwrap(), None);
        for bad in [
            "/sessions/s/mnt/proj/../cfg",
            "/sessions/s/mnt/proj/sub/../../x",
            "/sessions/s/mnt/proj/out/passwd",
            "/sessions/s/mnt/nope/x",
            "/sessions/other/mnt/proj",
            "/sessions/s/../../etc",
        ] {
            assert!(sp.translate(bad).is_err(), "{bad}");
        }
    }
}
