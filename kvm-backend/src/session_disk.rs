//! The per-profile session disk: a sparse file with ext4 inside, made once
//! and kept, so session data survives stopVM/startVM and helper restarts,
//! as the macOS app's `sessiondata.img` does.

use std::path::{Path, PathBuf};

use cowork_backend::{BackendError, Result};

use crate::unavailable;

/// The disk's apparent size (a sparse file: it takes what is used).
pub const SESSION_DISK_BYTES: u64 = 16 << 30;

/// The disk of a desktop profile (`configure`'s `userDataName`): the
/// unnamed profile keeps the original file name.
pub fn path_for(data: &Path, profile: Option<&str>) -> PathBuf {
    match profile {
        None => data.join("sessiondata.img"),
        Some(p) => data.join(format!("sessiondata-{p}.img")),
    }
}

/// The host's mke2fs (e2fsprogs'), found where Debian keeps it.
fn mke2fs() -> PathBuf {
    ["/usr/sbin/mke2fs", "/sbin/mke2fs"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("mke2fs"))
}

/// Makes the disk at `path` unless it exists: formatted under a temporary
/// name and renamed, so a half-made disk is never booted.
pub fn ensure(path: &Path) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    let tmp = path.with_extension("img.new");
    let f = std::fs::File::create(&tmp)
        .map_err(|e| BackendError::io(format!("cannot create {}", tmp.display()), e))?;
    f.set_len(SESSION_DISK_BYTES)
        .map_err(|e| BackendError::io(format!("cannot size {}", tmp.display()), e))?;
    drop(f);
    let out = std::process::Command::new(mke2fs())
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "cowork-sessions",
            "-E",
            // Lazy inode tables and journal: the guest's kernel finishes
            // them in the background; zeroing them here would make the
            // first startVM write hundreds of MiB.
            "root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1",
        ])
        .arg(&tmp)
        .output();
    match out {
        Ok(o) if o.status.success() => std::fs::rename(&tmp, path)
            .map_err(|e| BackendError::io(format!("cannot create {}", path.display()), e)),
        Ok(o) => {
            let _ = std::fs::remove_file(&tmp);
            Err(unavailable(format!(
                "mke2fs could not format the session disk: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(unavailable(format!(
                "cannot run mke2fs to make the session disk ({e}); install e2fsprogs"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_disk_per_profile() {
        let d = Path::new("/data");
        assert_eq!(path_for(d, None), Path::new("/data/sessiondata.img"));
        assert_eq!(
            path_for(d, Some("work")),
            Path::new("/data/sessiondata-work.img")
        );
        assert_ne!(path_for(d, Some("a")), path_for(d, Some("b")));
    }
}
