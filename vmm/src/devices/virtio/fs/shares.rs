//! The folders exported to the guest, added and removed while it runs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use fuse_backend_rs::api::{Vfs, VfsOptions};
use fuse_backend_rs::passthrough::{Config, PassthroughFs};

use super::budget::FdBudget;
use super::protected::Protected;
use super::share_fs::{Policy, ShareFs};

/// The Vfs numbers its file systems with a byte; keep well inside it.
pub const MAX_SHARES: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("{0} is not a directory")]
    NotADirectory(String),
    #[error("at most {MAX_SHARES} folders can be shared with one VM")]
    TooMany,
    #[error("cannot share {0}: {1}")]
    Backend(String, String),
}

pub struct Shares {
    pub(super) vfs: Arc<Vfs>,
    names: Mutex<HashMap<String, u8>>,
    next: Mutex<u64>,
    /// Descriptors the FUSE server may hold for the guest, across every
    /// share (see [`FdBudget`]).
    pub(super) budget: Arc<FdBudget>,
}

impl Default for Shares {
    fn default() -> Self {
        Self::new()
    }
}

impl Shares {
    /// Shares whose descriptor budget is the open-file limit less a
    /// reserve for the helper ([`super::budget::from_rlimit`]), computed
    /// now and again when the VM's device is made (the kvm backend lifts
    /// the limit in between).
    pub fn new() -> Shares {
        Self::with_budget(FdBudget::from_limit())
    }

    /// Shares whose FUSE server holds at most `limit` descriptors for the
    /// guest (inodes it knows plus handles it has open).
    pub fn with_fd_budget(limit: usize) -> Shares {
        Self::with_budget(FdBudget::fixed(limit))
    }

    fn with_budget(budget: FdBudget) -> Shares {
        Shares {
            vfs: Arc::new(Vfs::new(VfsOptions::default())),
            names: Mutex::default(),
            next: Mutex::new(1),
            budget: Arc::new(budget),
        }
    }

    /// The descriptor budget: how much of it the guest holds, and its size.
    pub fn fd_budget(&self) -> &FdBudget {
        &self.budget
    }

    /// Exports `dir`; the name the guest finds it under in the device.
    /// `read_only`: nothing in it may change, whatever the guest sends.
    /// `owner`: `Some((uid, gid))` shows every file as owned by that guest
    /// user and serves the share as the helper's own user (files the guest
    /// creates belong to the helper's uid on the host); `None` reports host
    /// owners and serves each request as the guest caller's uid/gid.
    pub fn add(
        &self,
        dir: &Path,
        read_only: bool,
        owner: Option<(u32, u32)>,
    ) -> Result<String, ShareError> {
        self.add_protected(dir, read_only, owner, Protected::default())
    }

    /// [`Shares::add`], keeping `protected`'s objects in the share from
    /// any change the guest asks for (see [`Protected`]; the caller
    /// takes their identities beneath `dir` just before).
    pub fn add_protected(
        &self,
        dir: &Path,
        read_only: bool,
        owner: Option<(u32, u32)>,
        protected: Protected,
    ) -> Result<String, ShareError> {
        let shown = dir.display().to_string();
        if !dir.is_dir() {
            return Err(ShareError::NotADirectory(shown));
        }
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if names.len() >= MAX_SHARES {
            return Err(ShareError::TooMany);
        }
        let cfg = Config {
            root_dir: shown.clone(),
            // The Vfs in front checks names ("..", "/"); importing through
            // it is what the library expects then (see virtio-fs notes).
            do_import: false,
            xattr: false,
            ..Default::default()
        };
        let fs = PassthroughFs::<()>::new(cfg)
            .map_err(|e| ShareError::Backend(shown.clone(), e.to_string()))?;
        // import() sets the whole process's umask to 0; the helper's own
        // files keep theirs.
        // SAFETY: umask(2) only swaps the process's mask.
        let umask = unsafe { libc::umask(0o077) };
        let imported = fs.import();
        // SAFETY: as above.
        unsafe { libc::umask(umask) };
        imported.map_err(|e| ShareError::Backend(shown.clone(), e.to_string()))?;
        let name = {
            let mut n = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let name = format!("s{n}");
            *n += 1;
            name
        };
        let index = self
            .vfs
            .mount(
                Box::new(ShareFs::new(
                    fs,
                    Policy { read_only, owner },
                    protected,
                    self.budget.clone(),
                )),
                &format!("/{name}"),
            )
            .map_err(|e| ShareError::Backend(shown, format!("{e:?}")))?;
        names.insert(name.clone(), index);
        Ok(name)
    }

    /// Stops exporting a share (the guest sees it vanish).
    pub fn remove(&self, name: &str) {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if names.remove(name).is_some() {
            let _ = self.vfs.umount(&format!("/{name}"));
        }
    }

    pub fn count(&self) -> usize {
        self.names.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
