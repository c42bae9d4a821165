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

/// The Debian release the standard profile is made from.
pub const STANDARD_SUITE: &str = "bookworm";

/// What the standard profile adds to Debian's essential set: what a coding
/// agent (the Claude Code CLI, a glibc executable) and its tools expect.
pub const STANDARD_PACKAGES: [&str; 8] = [
    "bash",
    "ca-certificates",
    "coreutils",
    "curl",
    "git",
    "procps",
    "python3",
    "ripgrep",
];

/// Documentation that only takes room in a read-only image; licences stay.
const DPKG_EXCLUDES: [&str; 5] = [
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
];

/// The apt sources of the standard profile: the release, its updates and
/// its security fixes, from `mirror` (`.../debian`) and its `-security`
/// sibling.
pub fn standard_sources(mirror: &str) -> Vec<String> {
    let m = mirror.trim_end_matches('/');
    vec![
        format!("deb {m} {STANDARD_SUITE} main"),
        format!("deb {m} {STANDARD_SUITE}-updates main"),
        format!("deb {m}-security {STANDARD_SUITE}-security main"),
    ]
}

/// Debian bookworm (the essential set, no apt: the image is read-only and
/// sessions are not root) plus [`STANDARD_PACKAGES`], made by mmdebstrap,
/// which gives the same tree from the same package versions when
/// SOURCE_DATE_EPOCH is set.
pub fn standard(
    root: &Path,
    agent: &Path,
    sources: &[String],
    epoch: u64,
) -> Result<(), BuildError> {
    if !nix_is_root() {
        return Err(BuildError::NeedsRoot(
            "the standard profile runs mmdebstrap in root mode, which needs root: run `sudo cowork-microvm image build` \
             (the image goes to your home and is yours; `sudo make image` in a source tree), or build \
             `--profile minimal`, which needs no root. Unprivileged \
             `mmdebstrap --mode=unshare` can only hand over a tarball, and making the ext4 image \
             from one needs e2fsprogs 1.47.1 or newer (mke2fs -d TARBALL)"
                .into(),
        ));
    }
    let mut cmd = Command::new("mmdebstrap");
    cmd.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("LC_ALL", "C.UTF-8")
        .args(["--mode=root", "--format=directory", "--variant=essential"])
        .arg(format!("--include={}", STANDARD_PACKAGES.join(",")));
    for opt in DPKG_EXCLUDES {
        cmd.arg(format!("--dpkgopt={opt}"));
    }
    // The host's resolv.conf and hostname would make the tree depend on
    // the build machine.
    cmd.arg("--customize-hook=rm -f \"$1/etc/resolv.conf\" \"$1/etc/hostname\"")
        .arg(STANDARD_SUITE)
        .arg(root)
        .args(sources);
    let status = cmd.status().map_err(io("mmdebstrap"))?;
    if !status.success() {
        return Err(BuildError::Step(format!("mmdebstrap failed ({status})")));
    }
    // No logs, caches or machine identity in a reproducible image.
    for rel in [
        "var/cache/apt",
        "var/lib/apt/lists",
        "var/log",
        "etc/machine-id",
        "var/lib/dbus/machine-id",
    ] {
        let p = root.join(rel);
        if p.is_dir() {
            let _ = std::fs::remove_dir_all(&p);
            let _ = std::fs::create_dir_all(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
    // Every file is owned by root in the image (ext4.rs), so a setuid or
    // setgid bit (su, newgrp, unix_chkpwd) would mean root; sessions run
    // with no_new_privs anyway, and need none of them.
    strip_setid(root)?;
    // The app spawns /usr/local/bin/claude there (the kvm backend mounts
    // the SDK over it), and sessions get a UTF-8 locale (C.UTF-8 is in
    // libc-bin; this file is for tools that read it, the host still passes
    // LANG).
    std::fs::create_dir_all(root.join("usr/local/bin")).map_err(io("usr/local/bin"))?;
    write(root, "etc/default/locale", "LANG=C.UTF-8\n")?;
    common_files(root, agent)
}

fn strip_setid(dir: &Path) -> Result<(), BuildError> {
    let rd = std::fs::read_dir(dir).map_err(io("reading the tree"))?;
    for entry in rd {
        let entry = entry.map_err(io("reading the tree"))?;
        let meta = std::fs::symlink_metadata(entry.path()).map_err(io("reading the tree"))?;
        if meta.is_dir() {
            strip_setid(&entry.path())?;
        } else if meta.is_file() && meta.permissions().mode() & 0o6000 != 0 {
            let mode = meta.permissions().mode() & !0o6000;
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))
                .map_err(io("clearing setuid bits"))?;
        }
    }
    Ok(())
}

/// Every package in the tree at `root`, as sorted `name=version` lines.
pub fn packages(root: &Path) -> Result<Vec<String>, BuildError> {
    let out = Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args([
            "-W",
            "-f=${db:Status-Status} ${binary:Package}=${Version}\n",
        ])
        .output()
        .map_err(io("dpkg-query"))?;
    if !out.status.success() {
        return Err(BuildError::Step(format!(
            "dpkg-query failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut list: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("installed "))
        .map(str::to_string)
        .collect();
    list.sort();
    Ok(list)
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}
