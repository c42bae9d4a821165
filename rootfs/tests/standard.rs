//! The standard profile built twice from scratch gives the same bytes, and
//! the image holds what sessions need. Needs root, mmdebstrap, e2fsprogs and
//! a Debian mirror (about 3-4 minutes): without them the test runner lists
//! it as ignored with the reason (build.rs), and under CI it fails instead,
//! so CI cannot pass without having run it.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[path = "../../prerequisites/require.rs"]
mod prerequisite;

use prerequisite::require;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cowork_rootfs::{build, manifest, BuildOptions, Profile, DEBIAN_MIRROR};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn mirror_reachable() -> bool {
    let host = DEBIAN_MIRROR
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    format!("{host}:80")
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(5)).is_ok())
}

/// Why this machine cannot run the test, if it cannot.
fn missing() -> Option<String> {
    let mut why = Vec::new();
    if std::fs::metadata("/proc/self").map(|m| m.uid()).ok() != Some(0) {
        why.push("root");
    }
    for tool in ["mmdebstrap", "mke2fs", "debugfs"] {
        if !have(tool) {
            why.push(tool);
        }
    }
    if !mirror_reachable() {
        why.push("a reachable Debian mirror");
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// `debugfs -R CMD image`'s output.
fn debugfs(image: &Path, cmd: &str) -> String {
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(cmd)
        .arg(image)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
#[cfg_attr(
    not(has_mmdebstrap),
    ignore = "needs root, mmdebstrap, mke2fs and debugfs (and a reachable Debian mirror)"
)]
fn standard_rootfs_is_reproducible_and_has_what_sessions_need() {
    let test = "standard_rootfs_is_reproducible_and_has_what_sessions_need";
    let why = missing();
    if !require(
        why.is_none(),
        test,
        &format!("needs {}", why.unwrap_or_default()),
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    // A stand-in agent: any file that is not a dynamic ELF will do for the
    // tree; what matters is that both builds get the same one.
    let agent = t.path().join("agent");
    std::fs::write(&agent, b"#!/bin/sh\n").unwrap();
    let mut built = Vec::new();
    for run in ["a", "b"] {
        let out = t.path().join(run);
        let t0 = Instant::now();
        let m = build(&BuildOptions {
            profiles: vec![Profile::Standard],
            out: out.clone(),
            agent: agent.clone(),
            kernel: false,
            cache: t.path().join("cache"),
            prebuilt_kernel: None,
            reuse_from: None,
            wire_version: None,
        })
        .unwrap();
        let a = &m.artifacts["rootfs-standard.ext4"];
        eprintln!(
            "standard rootfs build {run}: {:.0?}, {} bytes ({} MiB), {} packages",
            t0.elapsed(),
            a.size,
            a.size >> 20,
            m.packages["standard"].len()
        );
        assert_eq!(manifest::verify_dir(&out).unwrap(), m);
        built.push(m);
    }
    assert_eq!(
        built[0].artifacts, built[1].artifacts,
        "two standard builds differ; packages a: {:?} b: {:?}",
        built[0].packages, built[1].packages
    );
    assert_eq!(built[0].packages, built[1].packages);

    // Every package the profile asks for is recorded with its version.
    let packages = &built[0].packages["standard"];
    for want in cowork_rootfs::tree::STANDARD_PACKAGES {
        assert!(
            packages.iter().any(|p| p.starts_with(&format!("{want}="))),
            "{want} missing from {packages:?}"
        );
    }
    assert!(
        !packages.iter().any(|p| p.starts_with("apt=")),
        "{packages:?}"
    );

    // What sessions rely on, read from the image itself.
    let image = t.path().join("a/rootfs-standard.ext4");
    for path in [
        "/usr/local/bin",
        "/usr/lib/locale/C.utf8",
        "/usr/bin/git",
        "/usr/bin/rg",
        "/usr/bin/python3",
        "/etc/ssl/certs/ca-certificates.crt",
        "/sessions",
    ] {
        let s = debugfs(&image, &format!("stat {path}"));
        assert!(s.contains("Inode:"), "{path} missing: {s}");
    }
    assert!(debugfs(&image, "cat /etc/default/locale").contains("LANG=C.UTF-8"));
    assert!(debugfs(&image, "cat /sbin/init").starts_with("#!/bin/sh\n"));
    for gone in ["/etc/machine-id", "/etc/resolv.conf", "/var/log/dpkg.log"] {
        let s = debugfs(&image, &format!("stat {gone}"));
        assert!(!s.contains("Inode:"), "{gone} is in the image: {s}");
    }
    // No setuid or setgid file (everything is root's in the image).
    let su = debugfs(&image, "stat /usr/bin/su");
    let mode = su
        .split_whitespace()
        .skip_while(|w| *w != "Mode:")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let mode = u32::from_str_radix(&mode, 8).unwrap();
    assert_eq!(mode & 0o6000, 0, "su keeps its setuid bit: {su}");
}
