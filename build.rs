//! Probes what the root package's integration tests need (bubblewrap that
//! can create namespaces, root, the guest image, QEMU, ...) and sets a
//! `has_*` cfg for each prerequisite present; see prerequisites/probes.rs
//! for how tests use them and why CI sets them all.
//!
//! Nothing here affects the helper itself: only `#[cfg_attr]`s in tests/
//! read these cfgs.

use std::path::{Path, PathBuf};

include!("prerequisites/probes.rs");

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=prerequisites/probes.rs");
    println!("cargo::rerun-if-env-changed=COWORK_VM_IMAGE_DIR");
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
        // the static guest agent (`make agent`)
        ("has_static_agent", agent.is_file()),
        (
            "has_rootfs_tools",
            on_path("mke2fs") && on_path("debugfs") && Path::new("/bin/busybox").exists(),
        ),
    ]);
}
