//! Which host objects of a read-write share the file server keeps from the
//! guest ([`cowork_vmm::devices::virtio::fs::Protected`]): the protected
//! paths [`cowork_backend::protected::find`] finds under the share's root,
//! each opened again beneath the root one component at a time without
//! following a symlink, and taken by identity (device and inode). A
//! protected folder's whole contents are taken too (the server sees a file
//! inside by its own inode, not through the folder), and so are the folders
//! on the way from the root, which the server then refuses to rename or
//! remove. Whatever no longer resolves (removed or swapped for a symlink
//! since the search) is skipped: it is not there to protect. Anything else
//! that keeps an object from being taken (no descriptor left, no
//! permission, a folder nested deeper than [`MAX_CONTENT_DEPTH`]) fails
//! closed: the share is then exported read-only whole.

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use cowork_backend::protected::{self, MAX_ENTRIES};
use cowork_vmm::devices::virtio::fs::{FileId, Protected};
use nix::dir::Dir;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};

/// How deep inside a protected folder its contents are taken (one open
/// descriptor per level while walking); a deeper one makes the share
/// read-only whole.
const MAX_CONTENT_DEPTH: usize = 16;

/// The protected objects under `root` (a directory the caller resolved),
/// as the file server takes them; `None` when they cannot all be taken
/// (the search or the protected folders' contents exceed the entry
/// budget): the caller then exports the share read-only whole. Reads the
/// tree, so it blocks.
/// `shown` names the folder in the log.
pub fn take(root: &Path, shown: &Path) -> Option<Protected> {
    take_within(root, shown, MAX_ENTRIES)
}

fn take_within(root: &Path, shown: &Path, max_entries: usize) -> Option<Protected> {
    let mut out = Protected::default();
    let found = protected::find_within(root, max_entries);
    if let Some(why) = &found.incomplete {
        protected::read_only_instead(shown, why);
        return None;
    }
    if found.paths.is_empty() {
        return Some(out);
    }
    // The share's root could not be opened again: nothing can be taken,
    // so nothing is shared writable.
    let Ok(root_fd) = open_at(None, root.as_os_str(), OFlag::O_DIRECTORY) else {
        protected::read_only_instead(shown, "its folder could not be opened again");
        return None;
    };
    let mut budget = max_entries;
    for rel in &found.paths {
        if let Err(why) = take_one(&root_fd, rel, &mut out, &mut budget) {
            protected::read_only_instead(shown, &why);
            return None;
        }
    }
    if budget == 0 {
        protected::read_only_instead(
            shown,
            &format!("its protected folders hold over {max_entries} entries"),
        );
        return None;
    }
    Some(out)
}

/// Why an object could not be taken, for the log; the share then goes
/// read-only whole.
type Incomplete = String;

/// Whether a failed open or stat means the object is simply not there (any
/// more) as a plain file or folder: removed, or a component swapped for a
/// symlink or a non-folder since the search. Everything else (EMFILE,
/// EACCES, EIO, ...) leaves it unknown, which must not pass as absent.
fn is_absent(e: nix::Error) -> bool {
    matches!(
        e,
        nix::Error::ENOENT | nix::Error::ELOOP | nix::Error::ENOTDIR
    )
}

/// `Ok(None)` for an absent object (see [`is_absent`]), an error for one
/// that could not be looked at.
fn present<T>(r: nix::Result<T>, what: &Path) -> Result<Option<T>, Incomplete> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_absent(e) => Ok(None),
        Err(e) => Err(format!("{} could not be examined: {e}", what.display())),
    }
}

/// Opens `name` beneath `dir` (or the path itself, with no `dir`) as an
/// `O_PATH` descriptor, never following a symlink at its end.
fn open_at(dir: Option<&OwnedFd>, name: &OsStr, extra: OFlag) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | extra;
    let fd = openat(dir.map(|d| d.as_raw_fd()), name, flags, Mode::empty())?;
    // SAFETY: openat just returned this descriptor, and nothing else owns
    // it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn id(st: &FileStat) -> FileId {
    FileId {
        dev: st.st_dev,
        ino: st.st_ino,
    }
}

fn is_dir(st: &FileStat) -> bool {
    st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits()
}

/// Takes `rel` (relative to `root`) and the folders on its way, if every
/// component is a plain name and none is a symlink.
fn take_one(
    root: &OwnedFd,
    rel: &Path,
    out: &mut Protected,
    budget: &mut usize,
) -> Result<(), Incomplete> {
    let names: Vec<&OsStr> = rel
        .components()
        .map_while(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    // The search only yields plain relative paths: anything else cannot be
    // taken, and so is not passed over as if it had been.
    let Some((last, dirs)) = names.split_last() else {
        return Err(format!("{:?} is not a path beneath the share", rel));
    };
    if names.len() != rel.components().count() {
        return Err(format!("{:?} is not a path beneath the share", rel));
    }
    let root_st = fstat(root.as_raw_fd()).map_err(|e| format!("the share's root: {e}"))?;
    let mut ancestors = vec![id(&root_st)];
    let mut at: Option<OwnedFd> = None;
    for name in dirs {
        // O_DIRECTORY with O_NOFOLLOW: a symlink on the way fails here.
        let opened = open_at(Some(at.as_ref().unwrap_or(root)), name, OFlag::O_DIRECTORY);
        let Some(fd) = present(opened, rel)? else {
            return Ok(());
        };
        let st = fstat(fd.as_raw_fd()).map_err(|e| format!("{}: {e}", rel.display()))?;
        ancestors.push(id(&st));
        at = Some(fd);
    }
    let parent = at.as_ref().unwrap_or(root);
    let Some(fd) = present(open_at(Some(parent), last, OFlag::empty()), rel)? else {
        return Ok(());
    };
    let st = fstat(fd.as_raw_fd()).map_err(|e| format!("{}: {e}", rel.display()))?;
    if st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFLNK.bits() {
        return Ok(());
    }
    // The folder holding a repository's config or hooks is its git folder:
    // git would obey names made there (see GIT_DIR_RESERVED).
    let in_git = rel.components().any(|c| c.as_os_str() == ".git");
    if in_git && (*last == "config" || *last == "hooks") {
        out.git_dirs.extend(ancestors.last().copied());
    }
    out.ancestors.extend(ancestors);
    out.objects.insert(id(&st));
    if is_dir(&st) {
        take_contents(&fd, rel, 0, out, budget)?;
    }
    Ok(())
}

/// Takes everything inside the folder `dir`, depth first (so at most
/// [`MAX_CONTENT_DEPTH`] descriptors are open), within `budget` entries.
/// `path` (relative to the share) names `dir` in the log.
fn take_contents(
    dir: &OwnedFd,
    path: &Path,
    depth: usize,
    out: &mut Protected,
    budget: &mut usize,
) -> Result<(), Incomplete> {
    if depth >= MAX_CONTENT_DEPTH {
        return Err(format!(
            "{} nests folders deeper than {MAX_CONTENT_DEPTH}",
            path.display()
        ));
    }
    // An O_PATH descriptor cannot be listed: "." beneath it opens the same
    // folder for reading.
    let listing = Dir::openat(
        Some(dir.as_raw_fd()),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    );
    let Some(mut listing) = present(listing, path)? else {
        return Ok(());
    };
    let mut subdirs = Vec::new();
    for entry in listing.iter() {
        let entry = entry.map_err(|e| format!("{} could not be listed: {e}", path.display()))?;
        let name: &CStr = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        if *budget == 0 {
            return Ok(());
        }
        *budget -= 1;
        let name_os = OsStr::from_bytes(name.to_bytes());
        let st = fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW);
        let Some(st) = present(st, &path.join(name_os))? else {
            continue;
        };
        out.objects.insert(id(&st));
        if is_dir(&st) {
            subdirs.push(name_os.to_owned());
        }
    }
    drop(listing);
    for name in subdirs {
        let sub = path.join(&name);
        if let Some(fd) = present(open_at(Some(dir), &name, OFlag::O_DIRECTORY), &sub)? {
            take_contents(&fd, &sub, depth + 1, out, budget)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn ids(root: &Path, rels: &[&str]) -> std::collections::HashSet<FileId> {
        rels.iter()
            .map(|r| {
                let m = std::fs::symlink_metadata(root.join(r)).unwrap();
                FileId {
                    dev: m.dev(),
                    ino: m.ino(),
                }
            })
            .collect()
    }

    fn write(root: &Path, rel: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn takes_protected_objects_their_contents_and_the_folders_above() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(r, ".git/config");
        write(r, ".git/HEAD");
        write(r, ".git/hooks/pre-commit");
        write(r, ".git/hooks/lib/helper.sh");
        write(r, "sub/.bashrc");
        write(r, "src/main.rs");
        let p = take(r, r).unwrap();
        assert_eq!(
            p.objects,
            ids(
                r,
                &[
                    ".git/config",
                    ".git/hooks",
                    ".git/hooks/pre-commit",
                    ".git/hooks/lib",
                    ".git/hooks/lib/helper.sh",
                    "sub/.bashrc",
                ]
            )
        );
        assert_eq!(p.ancestors, ids(r, &["", ".git", "sub"]));
        // The repository's git folder, where a new commondir is refused.
        assert_eq!(p.git_dirs, ids(r, &[".git"]));
    }

    #[test]
    fn symlinks_are_not_taken_nor_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "hooks/pre-commit");
        write(outside.path(), "rc");
        let r = d.path();
        std::fs::create_dir(r.join(".git")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("hooks"), r.join(".git/hooks")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("rc"), r.join(".bashrc")).unwrap();
        let p = take(r, r).unwrap();
        assert!(p.is_empty(), "{p:?}");
        // A symlink inside a protected folder is itself taken (it cannot
        // be changed), what it points to is not.
        write(r, ".vscode/settings.json");
        std::os::unix::fs::symlink(outside.path().join("rc"), r.join(".vscode/tasks.json"))
            .unwrap();
        let p = take(r, r).unwrap();
        assert_eq!(
            p.objects,
            ids(
                r,
                &[".vscode", ".vscode/settings.json", ".vscode/tasks.json"]
            )
        );
        assert!(!p
            .objects
            .contains(&ids(outside.path(), &["rc"]).into_iter().next().unwrap()));
    }

    #[test]
    fn nothing_protected_is_empty() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "src/main.rs");
        assert!(take(d.path(), d.path()).unwrap().is_empty());
    }

    #[test]
    fn what_cannot_all_be_taken_is_refused_whole() {
        // The search itself runs out.
        let d = tempfile::tempdir().unwrap();
        for i in 0..20 {
            write(d.path(), &format!("r{i}/.bashrc"));
        }
        assert!(take_within(d.path(), d.path(), 10).is_none());
        assert!(take_within(d.path(), d.path(), 100).is_some());
        // A protected folder holds more than the budget.
        let d = tempfile::tempdir().unwrap();
        for i in 0..30 {
            write(d.path(), &format!(".vscode/f{i}"));
        }
        assert!(take_within(d.path(), d.path(), 20).is_none());
        assert_eq!(
            take_within(d.path(), d.path(), 100).unwrap().objects.len(),
            31
        );
    }

    #[test]
    fn contents_nested_too_deep_to_take_make_the_share_read_only() {
        let d = tempfile::tempdir().unwrap();
        let deep: String = (0..MAX_CONTENT_DEPTH).map(|i| format!("/d{i}")).collect();
        write(d.path(), &format!(".git/hooks{deep}/post-checkout"));
        assert!(take(d.path(), d.path()).is_none());
        // One level less is taken whole, down to the last file.
        let d = tempfile::tempdir().unwrap();
        let shallower: String = (1..MAX_CONTENT_DEPTH).map(|i| format!("/d{i}")).collect();
        write(d.path(), &format!(".git/hooks{shallower}/post-checkout"));
        let p = take(d.path(), d.path()).unwrap();
        let file = format!(".git/hooks{shallower}/post-checkout");
        assert!(p.objects.is_superset(&ids(d.path(), &[file.as_str()])));
    }

    #[test]
    fn only_absence_counts_as_nothing_to_take() {
        assert!(is_absent(nix::Error::ENOENT));
        assert!(is_absent(nix::Error::ELOOP));
        assert!(!is_absent(nix::Error::EMFILE));
        assert!(!is_absent(nix::Error::EACCES));
        let gone = present::<()>(Err(nix::Error::ENOENT), Path::new("x"));
        assert_eq!(gone, Ok(None));
        assert!(present::<()>(Err(nix::Error::EMFILE), Path::new("x")).is_err());
    }
}
