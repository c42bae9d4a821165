//! The private directory holding each sandboxed process's proxy socket and
//! status file. Without `XDG_RUNTIME_DIR` it lives under `/tmp` at a
//! predictable name (the helper's pid), so another local user could create
//! it first and then swap the socket or the status file: an existing
//! directory is used only when it is really ours.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use cowork_backend::{BackendError, Result};

/// Creates `dir` (mode 0700; its parent must exist), or checks that the
/// existing one is a real directory (not a symlink) owned by this user and
/// writable by no one else.
pub fn ensure(dir: &Path) -> Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(BackendError::io(
                format!("cannot create {}", dir.display()),
                e,
            ))
        }
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| BackendError::io(format!("cannot inspect {}", dir.display()), e))?;
    let refuse = |why: String| {
        Err(BackendError::Unavailable {
            backend: "bwrap".into(),
            reason: format!(
                "the runtime directory {} {why}; refusing to use it (remove it, or set XDG_RUNTIME_DIR)",
                dir.display()
            ),
        })
    };
    if !meta.is_dir() {
        return refuse("is not a directory".into());
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return refuse(format!("is owned by uid {}, not {me}", meta.uid()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return refuse(format!("has mode {mode:o}: others may write to it"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_and_refuses_foreign_or_open() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("rt");
        ensure(&d).unwrap();
        let m = std::fs::metadata(&d).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o700);
        ensure(&d).expect("our own existing directory is reused");

        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure(&d).unwrap_err().to_string();
        assert!(e.contains("others may write"), "{e}");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();

        let link = t.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(ensure(&link).is_err(), "a symlink is refused");

        let file = t.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(ensure(&file).is_err());
    }

    #[test]
    fn refuses_another_users_directory() {
        let t = tempfile::tempdir().unwrap();
        // As root, a directory given away; otherwise `/`, which is root's.
        let (d, owner) = if nix::unistd::geteuid().is_root() {
            let d = t.path().join("rt");
            std::fs::DirBuilder::new().mode(0o700).create(&d).unwrap();
            std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
            (d, 65534)
        } else {
            (std::path::PathBuf::from("/"), 0)
        };
        let e = ensure(&d).unwrap_err().to_string();
        assert!(e.contains(&format!("owned by uid {owner}")), "{e}");
    }
}
