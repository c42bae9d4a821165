//! Probes what the root package's integration tests need (bubblewrap that
//! can create namespaces, root, the guest image, QEMU, ...) and sets a
//! `has_*` cfg for each prerequisite present; see prerequisites/probes.rs
//! for how tests use them and why CI sets them all.
//!
//! Nothing here affects the helper itself: only `#[cfg_attr]`s in tests/
//! read these cfgs.

use std::path::{Path, PathBuf};

include!("prerequisites/probes.rs");

/// Whether the kernel cache (rootfs/build-kernel.sh's) holds a vmlinux.
fn cached_kernel() -> bool {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let cache = env("COWORK_VM_CACHE_DIR").or_else(|| {
        env("XDG_CACHE_HOME")
            .or_else(|| env("HOME").map(|h| h.join(".cache")))
            .map(|c| c.join("cowork-microvm"))
    });
    cache
        .and_then(|c| std::fs::read_dir(c.join("kernel")).ok())
        .is_some_and(|rd| rd.flatten().any(|e| e.path().join("vmlinux").is_file()))
}

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=prerequisites/probes.rs");
    println!("cargo::rerun-if-env-changed=COWORK_VM_IMAGE_DIR");
    println!("cargo::rerun-if-env-changed=COWORK_VM_CACHE_DIR");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let image =
        std::env::var_os("COWORK_VM_IMAGE_DIR").map(|d| PathBuf::from(d).join("manifest.json"));
    let agent = manifest_dir.join("target/x86_64-unknown-linux-gnu/release/cowork-guest");
    if let Some(m) = &image {
        watch(m);
    }
    watch(&agent);
    set_cfgs(&[
        // bwrap runs and can create namespaces
        (
            "has_bwrap",
            succeeds("bwrap", &["--ro-bind", "/", "/", "true"]),
        ),
        // tests run as root (mounts, other uids)
        ("has_root", is_root()),
        // $COWORK_VM_IMAGE_DIR holds a built image
        ("has_image", image.as_deref().is_some_and(Path::is_file)),
        ("has_qemu", on_path("qemu-system-x86_64")),
        // cpio on PATH (the nested harness)
        ("has_cpio", on_path("cpio")),
        ("has_python3", on_path("python3")),
        // npm fetches the pinned Claude Code CLI (tests/agent_turn.rs)
        ("has_npm", on_path("npm")),
        // the static guest agent (`make agent`)
        ("has_static_agent", agent.is_file()),
        // dpkg-deb and dpkg to build and install the .deb (`make deb`)
        (
            "has_deb_tools",
            on_path("dpkg-deb") && on_path("dpkg") && on_path("make"),
        ),
        // a guest kernel in the kernel cache (`make deb` packages it)
        ("has_guest_kernel", cached_kernel()),
        (
            "has_rootfs_tools",
            on_path("mke2fs") && on_path("debugfs") && Path::new("/bin/busybox").exists(),
        ),
    ]);
}
