//! Updating the guest image while a VM uses the old one: `image build`
//! writes a new versioned image and switches `current` to it, keeps the old
//! one while a VM holds it (the shared lock the kvm backend's boot takes,
//! `cowork_rootfs::store::InUse`), and removes it once released, by
//! `image prune` or the next build. The session disk, in the data
//! directory, is untouched throughout.
//!
//! No VM boots here (this machine's /dev/kvm is PVM-backed): the test holds
//! the lock itself, exactly as boot_vm does.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::require;
use cowork_rootfs::store;

fn static_agent() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/x86_64-unknown-linux-gnu/release/cowork-guest")
}

fn helper(tmp: &Path) -> Command {
    let mut c = common::command(tmp);
    c.env("COWORK_VM_IMAGE_DIR", tmp.join("images"))
        .env("COWORK_VM_CACHE_DIR", tmp.join("cache"));
    c
}

fn build(tmp: &Path) -> String {
    let out = helper(tmp)
        .args([
            "image",
            "build",
            "--profile",
            "minimal",
            "--no-kernel",
            "--agent",
        ])
        .arg(static_agent())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "image build failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn listed(tmp: &Path) -> Vec<serde_json::Value> {
    let out = helper(tmp)
        .args(["image", "list", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
#[cfg_attr(not(has_static_agent), ignore = "no static agent; run `make agent`")]
#[cfg_attr(
    all(has_static_agent, not(has_rootfs_tools)),
    ignore = "needs e2fsprogs and busybox-static"
)]
fn an_image_in_use_survives_an_update_until_released() {
    let test = "an_image_in_use_survives_an_update_until_released";
    if !require(
        static_agent().is_file(),
        test,
        "no static agent; run `make agent`",
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let tmp = t.path();
    let root = tmp.join("images");
    // A session disk where the kvm backend keeps it: the data directory.
    let disk = tmp.join("data/sessions.ext4");
    std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
    std::fs::write(&disk, b"session data").unwrap();

    build(tmp);
    let old = store::resolve(&root);
    assert_ne!(old, root, "a build without --out makes a versioned image");
    assert!(old.join("rootfs-minimal.ext4").is_file());
    // What boot_vm does: lock the resolved current image.
    let vm = store::InUse::take(&old).unwrap();

    let out = build(tmp);
    let new = store::resolve(&root);
    assert_ne!(new, old, "current names the new image");
    assert!(out.contains("kept old image"), "{out}");
    assert!(
        old.join("rootfs-minimal.ext4").is_file(),
        "the old image is kept while in use"
    );
    assert!(cowork_rootfs::manifest::verify_dir(&new).is_ok());
    let l = listed(tmp);
    assert_eq!(l.len(), 2, "{l:?}");
    let entry = |dir: &Path| {
        l.iter()
            .find(|e| e["path"].as_str() == dir.to_str())
            .unwrap()
            .clone()
    };
    assert_eq!(entry(&old)["inUse"], true);
    assert_eq!(entry(&old)["current"], false);
    assert_eq!(entry(&new)["current"], true);
    assert_eq!(
        entry(&new)["wireVersion"],
        cowork_guest::wire::PROTOCOL_VERSION
    );

    // Prune while the VM still runs: kept.
    let out = helper(tmp).args(["image", "prune"]).output().unwrap();
    assert!(out.status.success());
    assert!(old.is_dir());

    // The VM stops; prune removes the old image, not the current one.
    drop(vm);
    let out = helper(tmp).args(["image", "prune"]).output().unwrap();
    assert!(out.status.success());
    assert!(!old.exists(), "the released old image is pruned");
    assert!(new.is_dir() && store::resolve(&root) == new);

    // And the next build removes the previous image by itself.
    build(tmp);
    let newest = store::resolve(&root);
    assert_ne!(newest, new);
    assert!(!new.exists(), "a build prunes the images no VM holds");
    assert_eq!(listed(tmp).len(), 1);
    assert_eq!(std::fs::read(&disk).unwrap(), b"session data");
}
