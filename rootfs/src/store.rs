//! The image store: each build goes into its own directory under the images
//! root (`<root>/<id>/`) and `<root>/current`, a symlink, names the one to
//! boot. Switching replaces the symlink with rename(2), so a reader sees
//! either the old image or the new one, never a half-written directory.
//!
//! A running VM holds a shared flock on the directory it booted
//! ([`InUse`]); [`prune`] removes an image only when it can take the lock
//! exclusively, so an image a VM still reads is never deleted under it.
//!
//! A root without `current` but with a manifest of its own is the flat
//! layout `image build --out DIR` (and older releases) write; [`resolve`]
//! returns it unchanged.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::manifest::Manifest;

/// The symlink naming the image to boot.
pub const CURRENT: &str = "current";
/// Versioned directories start with this; anything else in the root is
/// not ours to list or prune.
const PREFIX: &str = "img-";

/// The directory to boot from `root`: the target of `current` when there
/// is one (resolved, so a VM locks and reads the directory itself, not
/// the symlink a later build replaces), else `root` itself.
pub fn resolve(root: &Path) -> PathBuf {
    let link = root.join(CURRENT);
    match std::fs::read_link(&link) {
        // Only a plain name in the root is followed: a link elsewhere was
        // not written by us.
        Ok(target) if is_version_name(&target) => root.join(target),
        _ => root.to_path_buf(),
    }
}

fn is_version_name(p: &Path) -> bool {
    p.components().count() == 1
        && p.to_str()
            .is_some_and(|s| s.starts_with(PREFIX) && !s.contains('/') && s != PREFIX)
}

/// A fresh, empty directory for the next build: `img-<unix seconds>-<pid>`
/// (sorts by age; the pid keeps two builds in the same second apart).
pub fn new_version(root: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(root)?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut n = 0u32;
    loop {
        let name = if n == 0 {
            format!("{PREFIX}{secs}-{}", std::process::id())
        } else {
            format!("{PREFIX}{secs}-{}-{n}", std::process::id())
        };
        let dir = root.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Points `current` at `dir` (a directory in `root`) atomically: a new
/// symlink beside it, renamed over the old one.
pub fn switch(root: &Path, dir: &Path) -> std::io::Result<()> {
    let name = dir
        .file_name()
        .filter(|n| is_version_name(Path::new(n)))
        .ok_or_else(|| {
            std::io::Error::other(format!("{} is not an image version", dir.display()))
        })?;
    let tmp = root.join(format!(".{CURRENT}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(name, &tmp)?;
    std::fs::rename(&tmp, root.join(CURRENT)).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// A shared lock on an image directory, held while a VM runs from it.
#[derive(Debug)]
pub struct InUse {
    _lock: Flock<File>,
}

impl InUse {
    /// Takes the lock without waiting: fails while a prune is removing
    /// `dir` (it holds the lock exclusively) or when `dir` is gone.
    pub fn take(dir: &Path) -> std::io::Result<InUse> {
        let f = File::open(dir)?;
        let lock = Flock::lock(f, FlockArg::LockSharedNonblock)
            .map_err(|(_, e)| std::io::Error::from(e))?;
        Ok(InUse { _lock: lock })
    }
}

/// Whether a VM holds `dir` (its lock cannot be taken exclusively now).
pub fn in_use(dir: &Path) -> bool {
    match File::open(dir) {
        Ok(f) => Flock::lock(f, FlockArg::LockExclusiveNonblock).is_err(),
        Err(_) => false,
    }
}

/// One image directory of the store.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub id: String,
    pub path: PathBuf,
    pub current: bool,
    pub in_use: bool,
    /// Bytes of its files (apparent sizes).
    pub size: u64,
    /// The profile its manifest names, if it has a readable one.
    pub profile: Option<String>,
    pub wire_version: Option<u32>,
}

/// Every versioned image in `root`, oldest first.
pub fn list(root: &Path) -> std::io::Result<Vec<Entry>> {
    let current = std::fs::read_link(root.join(CURRENT)).ok();
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        let name = e.file_name();
        if !is_version_name(Path::new(&name)) || !e.file_type()?.is_dir() {
            continue;
        }
        let path = e.path();
        let manifest = Manifest::load(&path).ok();
        out.push(Entry {
            id: name.to_string_lossy().into_owned(),
            current: current.as_deref() == Some(Path::new(&name)),
            in_use: in_use(&path),
            size: dir_size(&path),
            profile: manifest.as_ref().map(|m| m.profile.clone()),
            wire_version: manifest.and_then(|m| m.wire_version),
            path,
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// What [`prune`] did.
#[derive(Debug, Default)]
pub struct Pruned {
    pub removed: Vec<PathBuf>,
    /// Old images kept because a VM still runs from them.
    pub kept_in_use: Vec<PathBuf>,
}

/// Removes every versioned image but the current one, except those a VM
/// holds (and one a build is still writing: the build holds it the same
/// way). Each is removed under its exclusive lock, so a VM cannot start
/// from it meanwhile.
pub fn prune(root: &Path) -> std::io::Result<Pruned> {
    let mut done = Pruned::default();
    for e in list(root)? {
        if e.current {
            continue;
        }
        let f = File::open(&e.path)?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(_held) => {
                std::fs::remove_dir_all(&e.path)?;
                done.removed.push(e.path);
            }
            Err(_) => done.kept_in_use.push(e.path),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_resolve_and_prune_respect_the_lock() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        assert_eq!(resolve(root), root);
        let a = new_version(root).unwrap();
        switch(root, &a).unwrap();
        assert_eq!(resolve(root), a);
        let held = InUse::take(&resolve(root)).unwrap();
        let b = new_version(root).unwrap();
        assert_ne!(a, b);
        switch(root, &b).unwrap();
        assert_eq!(resolve(root), b);
        let listed = list(root).unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().any(|e| e.path == a && e.in_use && !e.current));
        assert!(listed.iter().any(|e| e.path == b && e.current && !e.in_use));
        let p = prune(root).unwrap();
        assert!(p.removed.is_empty() && p.kept_in_use == std::slice::from_ref(&a));
        assert!(a.is_dir());
        drop(held);
        let p = prune(root).unwrap();
        assert_eq!(p.removed, std::slice::from_ref(&a));
        assert!(!a.exists() && b.is_dir());
    }

    #[test]
    fn a_foreign_current_link_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", t.path().join(CURRENT)).unwrap();
        assert_eq!(resolve(t.path()), t.path());
        assert!(switch(t.path(), Path::new("/etc")).is_err());
    }
}
