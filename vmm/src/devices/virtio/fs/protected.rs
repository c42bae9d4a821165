//! Host objects in a read-write share that the guest may read but never
//! change: files and folders a program on the host later runs or obeys
//! (git hooks, shell start-up files, ...; the caller decides which). They
//! are named by identity (device and inode), taken by the caller when the
//! share is made, not by path: a path is what the guest can rename, an
//! inode the server reaches through the descriptor it already holds.

use std::collections::HashSet;

/// A host object's identity: its device and inode numbers, as stat(2)
/// reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(st: &libc::stat64) -> FileId {
        FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

/// What a share keeps from the guest's changes. Empty: nothing (a share
/// with no protected objects, or protection turned off).
#[derive(Debug, Clone, Default)]
pub struct Protected {
    /// Objects that may not change, nor (for a folder) its entries: the
    /// caller lists a protected folder's whole contents here too, since
    /// a file inside is reached by its own inode, not through the folder.
    pub objects: HashSet<FileId>,
    /// Folders on the way from the share's root to a protected object:
    /// they may not be renamed or removed (or replaced by a rename onto
    /// them), so the path the host program later follows still leads to
    /// the protected object rather than to a folder the guest made.
    pub ancestors: HashSet<FileId>,
    /// Repositories' git folders (a `.git`, a submodule's folder under
    /// `.git/modules`): [`GIT_DIR_RESERVED`] names may not be made in them.
    pub git_dirs: HashSet<FileId>,
}

/// Names git obeys in a git folder that a guest could otherwise add where
/// they are missing: `commondir` points git at another folder's config and
/// hooks, `config.worktree` is read as config when the repository enables
/// it, and a missing `config` or `hooks` would be read once made. Those
/// already there are protected objects themselves.
pub const GIT_DIR_RESERVED: &[&[u8]] = &[b"commondir", b"config", b"config.worktree", b"hooks"];

impl Protected {
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.ancestors.is_empty() && self.git_dirs.is_empty()
    }
}
