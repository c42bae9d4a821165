//! The tree as an ext4 image, byte for byte the same from the same tree:
//! fixed UUID and directory hash seed, every timestamp and owner set to
//! fixed values (mke2fs -d copies ctime and owners from the source, which
//! no build can control, so debugfs rewrites them), no journal.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::BuildError;

const UUID: &str = "6c6f7570-0000-4000-8000-636f776f726b";

fn tree_paths(root: &Path) -> Vec<String> {
    let mut out = vec!["/".to_string()];
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(root.join(&rel)) else {
            continue;
        };
        let mut names: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
        names.sort();
        for n in names {
            let child = rel.join(&n);
            out.push(format!("/{}", child.display()));
            if std::fs::symlink_metadata(root.join(&child))
                .map(|m| m.is_dir())
                .unwrap_or(false)
            {
                stack.push(child);
            }
        }
    }
    out.sort();
    out
}

fn tree_bytes(root: &Path) -> u64 {
    tree_paths(root)
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(root.join(p.trim_start_matches('/'))).ok())
        .map(|m| m.len() + 4096)
        .sum()
}

fn run(cmd: &mut Command, what: &str) -> Result<(), BuildError> {
    let out = cmd
        .output()
        .map_err(|e| BuildError::Step(format!("{what}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BuildError::Step(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Builds `image` from `root` with every time set to `epoch`.
pub fn make_image(root: &Path, image: &Path, epoch: u64, work: &Path) -> Result<(), BuildError> {
    // Room for metadata and a little growth; a whole number of MiB.
    let bytes = tree_bytes(root);
    let mib = (bytes * 13 / 10 / (1 << 20)) + 16;
    let _ = std::fs::remove_file(image);
    let fake_time = epoch.max(1).to_string();
    let mut mke2fs = Command::new("mke2fs");
    mke2fs
        .env("E2FSPROGS_FAKE_TIME", &fake_time)
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-O",
            "^has_journal",
            "-L",
            "cowork-root",
            "-U",
            UUID,
        ])
        .arg("-E")
        .arg(format!("hash_seed={UUID},root_owner=0:0"))
        .arg("-d")
        .arg(root)
        .arg(image)
        .arg(format!("{mib}M"));
    let out = crate::progress::run_writing(&mut mke2fs, image, bytes, "writing the ext4 image")
        .map_err(|e| BuildError::Step(format!("mke2fs: {e}")))?;
    if !out.status.success() {
        return Err(BuildError::Step(format!(
            "mke2fs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut cmds = String::new();
    for p in tree_paths(root) {
        for field in ["atime", "ctime", "mtime", "crtime"] {
            cmds.push_str(&format!("set_inode_field \"{p}\" {field} @{fake_time}\n"));
        }
        for field in ["uid", "gid"] {
            cmds.push_str(&format!("set_inode_field \"{p}\" {field} 0\n"));
        }
    }
    let cmd_file = work.join("debugfs.cmds");
    std::fs::write(&cmd_file, cmds)
        .map_err(|e| BuildError::Step(format!("debugfs commands: {e}")))?;
    let step = crate::progress::Step::start("fixing times and owners in the image (debugfs)");
    run(
        Command::new("debugfs")
            .env("E2FSPROGS_FAKE_TIME", &fake_time)
            .arg("-w")
            .arg("-f")
            .arg(&cmd_file)
            .arg(image),
        "debugfs",
    )?;
    step.done("ext4 image written");
    Ok(())
}
