//! Binding the helper socket the way the app expects to find it: parent
//! directory 0700, socket 0600, a stale file from a crashed predecessor
//! replaced, a live helper never displaced, and never a half-set-up socket
//! at the path (we bind under a temporary name and rename into place).

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use tokio::net::UnixListener;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "another cowork-microvm is already serving {0}; stop it first or use another -socket path"
    )]
    AlreadyServing(PathBuf),
    #[error("{0} is a symbolic link; refusing to use it as the socket path")]
    Symlink(PathBuf),
    #[error("{0} exists and is not a socket; move it away or choose another -socket path")]
    NotASocket(PathBuf),
    #[error("socket path {0} is too long (a Unix socket path has at most 107 bytes)")]
    TooLong(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BindError {
    let context = context.into();
    move |source| BindError::Io { context, source }
}

/// A bound socket and the lock that keeps a second helper off its path.
pub struct BoundSocket {
    pub listener: UnixListener,
    pub path: PathBuf,
    inode: u64,
    lock_path: PathBuf,
    _lock: Flock<File>,
}

impl BoundSocket {
    /// Removes the socket file if it is still ours.
    pub fn cleanup(&self) {
        if std::fs::symlink_metadata(&self.path).map(|m| m.ino()).ok() == Some(self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// Problems with the socket directory that the app would refuse.
pub fn dir_problems(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    match std::fs::symlink_metadata(dir) {
        Ok(m) => {
            if !m.is_dir() {
                out.push(format!("{} is not a directory", dir.display()));
            } else {
                if m.uid() != nix::unistd::getuid().as_raw() {
                    out.push(format!(
                        "{} is owned by uid {}, not by you",
                        dir.display(),
                        m.uid()
                    ));
                }
                let mode = m.permissions().mode();
                if mode & 0o1002 == 0o1002 {
                    out.push(format!(
                        "{} is a shared directory; the app wants a private one (fix: run under a login session so XDG_RUNTIME_DIR is set, or pass -socket with a path in a 0700 directory)",
                        dir.display()
                    ));
                } else if mode & 0o077 != 0 {
                    out.push(format!(
                        "{} has mode {:o}; the app wants 0700 (fix: chmod 700 {})",
                        dir.display(),
                        m.permissions().mode() & 0o7777,
                        dir.display()
                    ));
                }
            }
        }
        Err(_) => out.push(format!(
            "{} does not exist yet (it is created 0700 on start)",
            dir.display()
        )),
    }
    out
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

pub fn bind(path: &Path) -> Result<BoundSocket, BindError> {
    if path.as_os_str().len() > 100 {
        // Leaves room for the temporary suffix within sun_path's 108 bytes.
        return Err(BindError::TooLong(path.to_path_buf()));
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(format!(
                "cannot create socket directory {}",
                dir.display()
            )))?;
    }
    for p in dir_problems(dir) {
        tracing::warn!("socket directory: {p}");
    }

    let lock_path = with_suffix(path, ".lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io(format!("cannot open {}", lock_path.display())))?;
    let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
        .map_err(|_| BindError::AlreadyServing(path.to_path_buf()))?;

    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => return Err(BindError::Symlink(path.to_path_buf())),
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(BindError::AlreadyServing(path.to_path_buf()));
            }
            tracing::info!("removing stale socket {}", path.display());
        }
        Ok(_) => return Err(BindError::NotASocket(path.to_path_buf())),
        Err(_) => {}
    }

    let tmp = with_suffix(path, &format!(".{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener =
        UnixListener::bind(&tmp).map_err(io(format!("cannot bind {}", tmp.display())))?;
    let setup = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = setup {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(format!("cannot put the socket at {}", path.display()))(
            e,
        ));
    }
    let inode = std::fs::symlink_metadata(path)
        .map(|m| m.ino())
        .unwrap_or(0);
    Ok(BoundSocket {
        listener,
        path: path.to_path_buf(),
        inode,
        lock_path,
        _lock: lock,
    })
}
