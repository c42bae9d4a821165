//! The guest image: reproducible rootfs builds, manifest checks, and the
//! kernel and minimal rootfs booting to the agent under plain emulation
//! (QEMU TCG, `-M microvm`, the rootfs on virtio-blk).
//!
//! `.ci/run` builds the image first (`make image IMAGE_DIR=target/images`)
//! and points COWORK_VM_IMAGE_DIR at it; without one (or without QEMU,
//! the static agent, the rootfs tools) these tests are ignored, with the
//! reason (build.rs).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{require, BIN};

fn image_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("COWORK_VM_IMAGE_DIR").map(PathBuf::from)?;
    dir.join("manifest.json").is_file().then_some(dir)
}

fn static_agent() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/x86_64-unknown-linux-gnu/release/cowork-guest");
    p.is_file().then_some(p)
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
#[cfg_attr(
    not(has_static_agent),
    ignore = "no static agent; run `make agent` (or `make image`)"
)]
#[cfg_attr(
    all(has_static_agent, not(has_rootfs_tools)),
    ignore = "needs e2fsprogs and busybox-static"
)]
fn minimal_rootfs_builds_reproducibly() {
    let test = "minimal_rootfs_builds_reproducibly";
    let agent = static_agent();
    if !require(agent.is_some(), test, "no static agent; run `make agent`") {
        return;
    }
    let tools = have("mke2fs") && have("debugfs") && Path::new("/bin/busybox").exists();
    if !require(tools, test, "needs e2fsprogs and busybox-static") {
        return;
    }
    let Some(agent) = agent else { return };
    let t = tempfile::tempdir().unwrap();
    let mut hashes = Vec::new();
    for run in ["a", "b"] {
        let out = t.path().join(run);
        let st = Command::new(BIN)
            .args([
                "image",
                "build",
                "--no-kernel",
                "--profile",
                "minimal",
                "--agent",
            ])
            .arg(&agent)
            .arg("--out")
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success());
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        // The busybox it was made with is recorded, and the rootfs inputs
        // are keyed by profile (several profiles share one directory).
        assert!(
            m["packages"]["minimal"][0]
                .as_str()
                .is_some_and(|p| p.starts_with("busybox-static=")),
            "{m}"
        );
        assert!(m["inputs"]["minimal.agentSha256"].is_string(), "{m}");
        assert_eq!(m["profile"], "minimal");
        hashes.push(
            m["artifacts"]["rootfs-minimal.ext4"]["sha256"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        std::thread::sleep(Duration::from_millis(1100)); // a different wall-clock second
    }
    assert_eq!(
        hashes[0], hashes[1],
        "two builds from the same inputs differ"
    );

    // A second build into the same directory is a cache hit.
    let out = t.path().join("a");
    let t0 = Instant::now();
    let o = Command::new(BIN)
        .args([
            "image",
            "build",
            "--no-kernel",
            "--profile",
            "minimal",
            "--agent",
        ])
        .arg(&agent)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("rootfs-minimal.ext4: up to date"),
        "{o:?}"
    );
    eprintln!("cached rebuild took {:?}", t0.elapsed());

    // A corrupted artifact is refused, naming it and both hashes.
    let img = out.join("rootfs-minimal.ext4");
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[5000] ^= 0xff;
    std::fs::write(&img, bytes).unwrap();
    let o = Command::new(BIN)
        .args(["image", "verify", "--dir"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("rootfs-minimal.ext4") && err.contains(&hashes[0]) && err.contains("found"),
        "{err}"
    );

    // A dynamically linked agent is refused with the way out.
    let o = Command::new(BIN)
        .args([
            "image",
            "build",
            "--no-kernel",
            "--profile",
            "minimal",
            "--agent",
            env!("CARGO_BIN_EXE_cowork-microvm"),
            "--out",
        ])
        .arg(t.path().join("c"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("dynamically linked"),
        "{o:?}"
    );
}

#[test]
#[cfg_attr(
    not(has_image),
    ignore = "no image; run `make image` and set COWORK_VM_IMAGE_DIR"
)]
#[cfg_attr(
    all(has_image, not(has_qemu)),
    ignore = "qemu-system-x86 is not installed"
)]
fn kernel_and_rootfs_boot_to_the_agent_under_qemu() {
    let test = "kernel_and_rootfs_boot_to_the_agent_under_qemu";
    let dir = image_dir();
    if !require(
        dir.is_some(),
        test,
        "no image; run `make image` and set COWORK_VM_IMAGE_DIR",
    ) {
        return;
    }
    if !require(
        have("qemu-system-x86_64"),
        test,
        "qemu-system-x86 is not installed",
    ) {
        return;
    }
    let Some(dir) = dir else { return };
    let verify = Command::new(BIN)
        .args(["image", "verify", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    let t0 = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-M",
            "microvm,acpi=off",
            "-cpu",
            "max",
            "-m",
            "256",
            "-smp",
            "1",
        ])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
            "-kernel",
        ])
        .arg(dir.join("vmlinux"))
        .args([
            "-append",
            "console=ttyS0 root=/dev/vda ro rootfstype=ext4 init=/sbin/init reboot=t panic=-1",
        ])
        .arg("-drive")
        .arg(format!(
            "id=root,file={},format=raw,if=none,readonly=on",
            dir.join("rootfs-minimal.ext4").display()
        ))
        .args(["-device", "virtio-blk-device,drive=root"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = qemu.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut console = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            console.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&console).contains("cowork-guest: ready") {
                let _ = tx.send((true, console.clone()));
                return;
            }
        }
        let _ = tx.send((false, console));
    });
    let result = rx.recv_timeout(Duration::from_secs(300));
    let _ = qemu.kill();
    let _ = qemu.wait();
    let (ready, console) = result.expect("no ready line within 300 s");
    let text = String::from_utf8_lossy(&console);
    assert!(ready, "the agent never said ready; console:\n{text}");
    eprintln!(
        "guest agent ready {:?} after QEMU (TCG, emulated) started",
        t0.elapsed()
    );
}

#[test]
fn guest_and_vmm_agree_on_the_boot_timer() {
    assert_eq!(
        cowork_guest::wire::BOOT_TIMER_PORT,
        cowork_vmm::layout::BOOT_TIMER_PORT
    );
    assert_eq!(
        cowork_guest::wire::BOOT_TIMER_MAGIC,
        cowork_vmm::layout::BOOT_TIMER_MAGIC
    );
}
