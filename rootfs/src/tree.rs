//! The root filesystem tree of each profile, assembled in a directory.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::BuildError;

fn io(what: &str) -> impl Fn(std::io::Error) -> BuildError + '_ {
    move |e| BuildError::Step(format!("{what}: {e}"))
}

/// Whether an ELF file asks for a dynamic loader (has a PT_INTERP).
pub fn is_dynamic(path: &Path) -> std::io::Result<bool> {
    let data = std::fs::read(path)?;
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return Ok(false);
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[o..o + 8]);
        u64::from_le_bytes(b) as usize
    };
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
    Ok((0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= data.len()
            && u32::from_le_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]]) == 3
    }))
}

const DIRS: [&str; 14] = [
    "bin", "sbin", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "run", "tmp", "root",
    "sessions", "mnt", "var",
];

fn write(root: &Path, rel: &str, text: &str) -> Result<(), BuildError> {
    std::fs::write(root.join(rel), text).map_err(io(rel))
}

fn common_files(root: &Path, agent: &Path) -> Result<(), BuildError> {
    for d in DIRS {
        std::fs::create_dir_all(root.join(d)).map_err(io(d))?;
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .map_err(io("tmp"))?;
    let init = root.join("sbin/init");
    let _ = std::fs::remove_file(&init);
    std::fs::copy(agent, &init).map_err(io("copying the agent"))?;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))
        .map_err(io("sbin/init"))?;
    write(root, "etc/hostname", "cowork\n")?;
    write(
        root,
        "etc/hosts",
        "127.0.0.1 localhost cowork\n::1 localhost\n",
    )?;
    Ok(())
}

/// The agent and busybox-static: what tests and benchmarks boot.
pub fn minimal(root: &Path, agent: &Path, busybox: &Path) -> Result<(), BuildError> {
    common_files(root, agent)?;
    std::fs::copy(busybox, root.join("bin/busybox")).map_err(io("copying busybox"))?;
    std::fs::set_permissions(
        root.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o755),
    )
    .map_err(io("bin/busybox"))?;
    let list = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(io("busybox --list-full"))?;
    let mut applets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    applets.sort();
    for rel in applets {
        let link = root.join(&rel);
        if rel.is_empty() || rel.contains("..") || link.exists() || rel == "sbin/init" {
            continue;
        }
        if let Some(dir) = link.parent() {
            std::fs::create_dir_all(dir).map_err(io(&rel))?;
        }
        std::os::unix::fs::symlink("/bin/busybox", &link).map_err(io(&rel))?;
    }
    write(
        root,
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    write(root, "etc/group", "root:x:0:\nnogroup:x:65534:\n")?;
    Ok(())
}

/// Debian bookworm minbase plus what a coding agent expects to find.
pub fn standard(root: &Path, agent: &Path, mirror: &str) -> Result<(), BuildError> {
    if !nix_is_root() {
        return Err(BuildError::NeedsRoot(
            "the standard profile runs debootstrap, which needs root: run `sudo make image PROFILE=standard` (the minimal profile builds without root)".into(),
        ));
    }
    let status = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            "--include=bash,coreutils,git,curl,ca-certificates,python3,ripgrep",
            "bookworm",
        ])
        .arg(root)
        .arg(mirror)
        .status()
        .map_err(io("debootstrap"))?;
    if !status.success() {
        return Err(BuildError::Step(format!("debootstrap failed ({status})")));
    }
    // No logs, caches or machine identity in a reproducible image.
    for rel in [
        "var/cache/apt",
        "var/lib/apt/lists",
        "var/log",
        "etc/machine-id",
        "var/lib/dbus/machine-id",
        "debootstrap",
    ] {
        let p = root.join(rel);
        if p.is_dir() {
            let _ = std::fs::remove_dir_all(&p);
            let _ = std::fs::create_dir_all(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
    common_files(root, agent)
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}
