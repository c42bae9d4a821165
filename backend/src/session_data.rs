//! Per-session data directories on the host and the session-disk methods
//! (`getSessionsDiskInfo`, `deleteSessionDirs`, `pruneSessionCaches`) that
//! report and prune them with real figures.
//!
//! Layout: `<root>/<session>/` with `tmp/` (the session's TMPDIR) and
//! `.cache/` (the session's XDG cache), the two things pruning may remove.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::api::{DeleteResult, DiskInfo, PruneRequest, PruneResult, SessionDiskEntry};
use crate::error::{BackendError, Result};
use crate::tree;

pub const TMP_DIR: &str = "tmp";
pub const CACHE_DIR: &str = ".cache";

/// A session or profile name used as one path component.
pub fn validate_name(what: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@+".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(BackendError::invalid(
            what,
            format!("{name:?}: use 1-128 characters from A-Z a-z 0-9 . _ - @ +"),
        ))
    }
}

#[derive(Debug, Clone)]
pub struct SessionStore {
    root: PathBuf,
}

impl SessionStore {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dir(&self, name: &str) -> Result<PathBuf> {
        validate_name("session name", name)?;
        Ok(self.root.join(name))
    }

    /// Creates the session's directories (mode 0700) and returns its path.
    pub fn ensure(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir(name)?;
        for sub in [TMP_DIR, CACHE_DIR] {
            create_private_dir(&dir.join(sub))?;
        }
        Ok(dir)
    }

    fn names(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut names: Vec<String> = rd
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| validate_name("session name", n).is_ok())
            .collect();
        names.sort();
        names
    }

    pub fn disk_info(&self, low_water: u64, active: &HashSet<String>) -> Result<DiskInfo> {
        std::fs::create_dir_all(&self.root)
            .map_err(|e| BackendError::io(format!("cannot create {}", self.root.display()), e))?;
        let (total_bytes, free_bytes) = fs_space(&self.root)?;
        let sessions = self
            .names()
            .into_iter()
            .map(|name| {
                let dir = self.root.join(&name);
                let usage = tree_usage(&dir, None);
                SessionDiskEntry {
                    active: active.contains(&name),
                    size_bytes: usage.bytes,
                    last_modified_ms: usage.newest_ms,
                    name,
                }
            })
            .collect();
        Ok(DiskInfo {
            total_bytes,
            free_bytes,
            low_water: free_bytes < low_water,
            sessions,
        })
    }

    pub fn delete(&self, names: &[String], active: &HashSet<String>) -> DeleteResult {
        let mut res = DeleteResult::default();
        for name in names {
            let outcome = self.dir(name).and_then(|dir| {
                if active.contains(name) {
                    return Err(BackendError::invalid(
                        "session",
                        "it has running processes; kill them first",
                    ));
                }
                // By descriptor from the store's root: no symlink the
                // session planted is followed, no mounted folder entered.
                let root = tree::open_dir(None, &self.root)
                    .map_err(|e| BackendError::io("no session directories", e))?;
                let dev = tree::device(&root)
                    .map_err(|e| BackendError::io("no session directories", e))?;
                match tree::stat_at(&root, std::ffi::OsStr::new(name)) {
                    Ok(st) if tree::is_dir(&st) => {
                        tree::remove_at(&root, std::ffi::OsStr::new(name), dev)
                            .map(|_| ())
                            .map_err(|e| {
                                BackendError::io(format!("cannot delete {}", dir.display()), e)
                            })
                    }
                    Ok(_) => Err(BackendError::invalid("session", "not a directory")),
                    Err(e) => Err(BackendError::io("no such session directory", e)),
                }
            });
            match outcome {
                Ok(()) => res.deleted.push(name.clone()),
                Err(e) => {
                    res.errors.insert(name.clone(), e.to_string());
                }
            }
        }
        res
    }

    pub fn prune(&self, req: &PruneRequest, active: &HashSet<String>) -> Result<PruneResult> {
        let mut res = PruneResult::default();
        let names = self.names();
        if let Some(threshold) = req.only_if_free_bytes_below {
            let (_, free) = fs_space(&self.root)?;
            if free >= threshold {
                res.skipped_sessions = names;
                return Ok(res);
            }
        }
        let tmp_age = Duration::from_secs(req.session_tmp_older_than_seconds.unwrap_or(0));
        for name in names {
            if active.contains(&name) {
                res.skipped_sessions.push(name);
                continue;
            }
            let mut freed = 0;
            let mut errors = Vec::new();
            freed += remove_contents(&self.root, &name, CACHE_DIR, None, &mut errors);
            if req.include_session_tmp.unwrap_or(false) {
                let cutoff = SystemTime::now().checked_sub(tmp_age);
                freed += remove_contents(&self.root, &name, TMP_DIR, cutoff, &mut errors);
            }
            if !errors.is_empty() {
                res.errors.insert(name.clone(), errors.join("; "));
            }
            if freed > 0 {
                res.pruned_sessions.push(name);
            } else {
                res.skipped_sessions.push(name);
            }
            res.freed_bytes += freed;
        }
        Ok(res)
    }
}

pub fn create_private_dir(p: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .map_err(|e| BackendError::io(format!("cannot create {}", p.display()), e))
}

/// (total, available to this user) bytes of the filesystem holding `p`.
pub fn fs_space(p: &Path) -> Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(p)
        .map_err(|e| BackendError::io(format!("statvfs {}", p.display()), e.into()))?;
    let frag = st.fragment_size().max(1) as u64;
    Ok((
        (st.blocks() as u64).saturating_mul(frag),
        (st.blocks_available() as u64).saturating_mul(frag),
    ))
}

#[derive(Default)]
struct Usage {
    bytes: u64,
    newest_ms: u64,
}

fn mtime_ms(m: &std::fs::Metadata) -> u64 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Disk usage (allocated blocks) of a tree, never following symlinks.
/// With `older_than`, only entries last modified before it count.
fn tree_usage(p: &Path, older_than: Option<SystemTime>) -> Usage {
    use std::os::unix::fs::MetadataExt;
    let mut u = Usage::default();
    let mut stack = vec![p.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let counts = older_than.is_none_or(|cut| m.modified().map(|t| t < cut).unwrap_or(false));
        if counts {
            u.bytes += m.blocks() * 512;
            u.newest_ms = u.newest_ms.max(mtime_ms(&m));
        }
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&path) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    u
}

/// Removes the entries of `<root>/<session>/<sub>` (not the directory
/// itself), only those last modified before `cutoff` when given; the bytes
/// freed. Every step is by descriptor without following symlinks, and
/// nothing on another file system is entered: a session that turns its
/// cache into a link to another session's directory, or to a shared
/// folder, gets its link removed, nothing else.
fn remove_contents(
    root: &Path,
    session: &str,
    sub: &str,
    cutoff: Option<SystemTime>,
    errors: &mut Vec<String>,
) -> u64 {
    let opened = tree::open_dir(None, root).and_then(|r| {
        let dev = tree::device(&r)?;
        let s = tree::open_dir(Some(&r), Path::new(session))?;
        let d = tree::open_dir(Some(&s), Path::new(sub))?;
        Ok((d, dev))
    });
    let Ok((dir, dev)) = opened else {
        return 0;
    };
    let Ok(names) = tree::entries(&dir) else {
        return 0;
    };
    let mut freed = 0;
    for name in names {
        if let Some(cut) = cutoff {
            let Ok(st) = tree::stat_at(&dir, &name) else {
                continue;
            };
            let modified =
                UNIX_EPOCH + Duration::from_secs(u64::try_from(st.st_mtime).unwrap_or(0));
            if modified >= cut {
                continue;
            }
        }
        match tree::remove_at(&dir, &name, dev) {
            Ok(n) => freed += n,
            Err(e) => errors.push(format!(
                "{session}/{sub}/{}: {e}",
                Path::new(&name).display()
            )),
        }
    }
    freed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_components() {
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_name("n", bad).is_err(), "{bad:?}");
        }
        assert!(validate_name("n", "brave-turing_1.2").is_ok());
    }

    #[test]
    fn report_delete_and_prune() {
        let t = tempfile::tempdir().unwrap();
        let store = SessionStore::new(t.path().join("sessions"));
        let a = store.ensure("a").unwrap();
        store.ensure("b").unwrap();
        std::fs::write(a.join(CACHE_DIR).join("blob"), vec![1u8; 100_000]).unwrap();
        std::fs::write(a.join(TMP_DIR).join("t"), vec![1u8; 50_000]).unwrap();
        let info = store.disk_info(0, &HashSet::new()).unwrap();
        assert!(info.total_bytes > 0 && info.free_bytes > 0);
        assert_eq!(info.sessions.len(), 2);
        assert!(info.sessions[0].size_bytes >= 150_000);

        let pr = store
            .prune(
                &PruneRequest {
                    include_session_tmp: Some(true),
                    ..Default::default()
                },
                &HashSet::new(),
            )
            .unwrap();
        assert_eq!(pr.pruned_sessions, vec!["a".to_string()]);
        assert!(pr.freed_bytes >= 150_000);
        assert!(a.join(CACHE_DIR).is_dir(), "the cache dir itself stays");

        let skip = store
            .prune(
                &PruneRequest {
                    only_if_free_bytes_below: Some(1),
                    ..Default::default()
                },
                &HashSet::new(),
            )
            .unwrap();
        assert_eq!(skip.skipped_sessions.len(), 2);

        let active: HashSet<String> = ["b".to_string()].into();
        let del = store.delete(
            &["a".into(), "b".into(), "../x".into(), "zz".into()],
            &active,
        );
        assert_eq!(del.deleted, vec!["a".to_string()]);
        assert_eq!(del.errors.len(), 3);
        assert!(!a.exists());
    }

    #[test]
    fn a_session_cannot_steer_prune_or_delete_elsewhere() {
        let t = tempfile::tempdir().unwrap();
        let store = SessionStore::new(t.path().join("sessions"));
        let a = store.ensure("a").unwrap();
        let b = store.ensure("b").unwrap();
        std::fs::write(b.join(CACHE_DIR).join("b-cache"), "b").unwrap();
        std::fs::write(b.join("work"), "b's work").unwrap();
        // a turns its cache and tmp into links to b's directory and to the
        // store itself.
        std::fs::remove_dir(a.join(CACHE_DIR)).unwrap();
        std::os::unix::fs::symlink(&b, a.join(CACHE_DIR)).unwrap();
        std::fs::remove_dir(a.join(TMP_DIR)).unwrap();
        std::os::unix::fs::symlink(store.root(), a.join(TMP_DIR)).unwrap();
        let active: HashSet<String> = ["b".to_string()].into();
        store
            .prune(
                &PruneRequest {
                    include_session_tmp: Some(true),
                    ..Default::default()
                },
                &active,
            )
            .unwrap();
        assert!(b.join("work").exists(), "prune followed a's link into b");
        assert!(b.join(CACHE_DIR).join("b-cache").exists());
        // Deleting a removes its links, not what they point at.
        let del = store.delete(&["a".into()], &HashSet::new());
        assert_eq!(del.deleted, ["a"], "{del:?}");
        assert!(b.join("work").exists(), "delete followed a's link into b");
    }
}
