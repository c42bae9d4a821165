//! Probes what the root package's integration tests need (bubblewrap that
//! can create namespaces, root, the guest image, QEMU, ...) and sets a
//! `has_*` cfg for each prerequisite present. Tests whose prerequisite is
//! missing are marked `#[cfg_attr(not(has_x), ignore = "why")]`, so a
//! plain `cargo test` on a fresh machine counts them as ignored and says
//! why, instead of reporting them as passed.
//!
//! Under CI (`CI` set to anything but `false`/`0`/empty) every `has_*` cfg
//! is set: CI installs the prerequisites, so a missing one must fail the
//! test (tests/common's `require` panics there) rather than hide it.
//!
//! Nothing here affects the helper itself: only `#[cfg_attr]`s in tests/
//! read these cfgs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Every cfg this script may set, with what it means.
const CFGS: [&str; 8] = [
    "has_bwrap",        // bwrap runs and can create namespaces
    "has_root",         // tests run as root (mounts, other uids)
    "has_image",        // $COWORK_VM_IMAGE_DIR holds a built image
    "has_qemu",         // qemu-system-x86_64 on PATH
    "has_cpio",         // cpio on PATH (the nested harness)
    "has_python3",      // python3 on PATH
    "has_static_agent", // the static guest agent (`make agent`)
    "has_rootfs_tools", // mke2fs, debugfs and /bin/busybox
];

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| {
            let p = d.join(tool);
            std::fs::metadata(&p).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    })
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Reruns this script when `p` changes, but only if it exists: cargo
/// treats a missing watched path as always changed, which would rebuild
/// the package on every `cargo test`.
fn watch(p: &Path) {
    if p.exists() {
        println!("cargo::rerun-if-changed={}", p.display());
    }
}

fn main() {
    for cfg in CFGS {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    println!("cargo::rerun-if-changed=build.rs");
    for var in ["CI", "COWORK_VM_IMAGE_DIR", "PATH"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let image =
        std::env::var_os("COWORK_VM_IMAGE_DIR").map(|d| PathBuf::from(d).join("manifest.json"));
    let agent = manifest_dir.join("target/x86_64-unknown-linux-gnu/release/cowork-guest");
    if let Some(m) = &image {
        watch(m);
    }
    watch(&agent);
    let present = [
        (
            "has_bwrap",
            succeeds("bwrap", &["--ro-bind", "/", "/", "true"]),
        ),
        ("has_root", is_root()),
        ("has_image", image.as_deref().is_some_and(Path::is_file)),
        ("has_qemu", on_path("qemu-system-x86_64")),
        ("has_cpio", on_path("cpio")),
        ("has_python3", on_path("python3")),
        ("has_static_agent", agent.is_file()),
        (
            "has_rootfs_tools",
            on_path("mke2fs") && on_path("debugfs") && Path::new("/bin/busybox").exists(),
        ),
    ];
    for (cfg, ok) in present {
        if ok || ci {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
