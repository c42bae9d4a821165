//! The nested end-to-end harness (tests/nested/e2e-nested.sh): an outer
//! machine under QEMU-TCG with emulated SVM loads Debian's kvm modules, and
//! inside it the helper boots this project's kernel and minimal rootfs with
//! its own VMM (then QEMU boots the same guest, for comparison), and the
//! helper protocol's startVM/isRunning/stopVM run against the kvm backend.
//! Needs the image (`make image`, COWORK_VM_IMAGE_DIR) and qemu-system-x86.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::require;

#[test]
#[cfg_attr(
    not(has_image),
    ignore = "no guest image; run `make image` and set COWORK_VM_IMAGE_DIR"
)]
#[cfg_attr(
    all(has_image, not(all(has_qemu, has_cpio))),
    ignore = "needs qemu-system-x86 and cpio"
)]
fn helper_boots_the_guest_with_its_own_vmm_inside_nested_kvm() {
    let test = "nested harness";
    let images = std::env::var_os("COWORK_VM_IMAGE_DIR")
        .map(PathBuf::from)
        .filter(|d| d.join("manifest.json").is_file());
    if !require(
        images.is_some(),
        test,
        "no guest image; run `make image` and set COWORK_VM_IMAGE_DIR",
    ) {
        return;
    }
    let Some(images) = images else { return };
    let have = |t: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !require(
        have("qemu-system-x86_64") && have("cpio"),
        test,
        "needs qemu-system-x86 and cpio",
    ) {
        return;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/nested/e2e-nested.sh");
    let tmp = tempfile::tempdir().unwrap();
    let result = tmp.path().join("result.json");
    let out = Command::new("bash")
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_cowork-microvm"))
        .arg(&images)
        .arg(&result)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "harness failed:\n{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap();
    eprintln!("nested (emulated timings): {r}");
    assert_eq!(r["vmm"]["ready"], true, "the agent started under our VMM");
    assert!(
        r["vmm"]["bootTimerMs"].as_f64().is_some(),
        "the boot timer fired: {r}"
    );
    assert_eq!(
        r["protocol"]["startVM"], "{}",
        "startVM on the kvm backend: {r}"
    );
    assert_eq!(r["protocol"]["isRunning"], r#"{"running":true}"#);
    assert_eq!(r["protocol"]["isRunningAfterStop"], r#"{"running":false}"#);
    // The agent's channel is our virtio-vsock device.
    assert_eq!(r["vmm"]["agentConnected"], true, "hello over vsock: {r}");
    assert_eq!(
        r["protocol"]["isGuestConnected"], r#"{"connected":true}"#,
        "the kvm backend's agent channel: {r}"
    );
    assert!(
        r["vmm"]["agentShutdownMs"].as_f64().is_some(),
        "the agent shut the guest down when asked: {r}"
    );
    // Sessions in the VM through the agent, as `run` drives them.
    let s = &r["sessions"];
    assert_eq!(
        s["echo"], "hello-from-vm cowork rc=3",
        "spawn, output, exit code: {r}"
    );
    assert_eq!(s["stdin"], "piped-in", "stdin and its end: {r}");
    assert_eq!(s["bulk"], "16777216", "16 MiB of output, complete: {r}");
    assert_eq!(
        s["home"], "host-invisible",
        "the host's files are not in the VM: {r}"
    );
    assert_eq!(
        s["cpus"], "2",
        "cpuCount 2: the guest finds both vCPUs in the MP table: {r}"
    );
    assert_eq!(
        s["diskInfo"], r#""name":"e2e""#,
        "the session disk's sessions, from the guest: {r}"
    );
    assert_eq!(
        s["rw"], "from-host /sessions/e2e/mnt/proj from-vm",
        "a rw share over virtio-fs, as the working directory, written through: {r}"
    );
    assert_eq!(
        s["ro"], "precious refused precious",
        "a ro share refuses writes: {r}"
    );
    assert_eq!(
        s["egressAllowed"], "upstream-ok",
        "an allowed domain through the proxy over vsock: {r}"
    );
    assert_eq!(s["egressRefused"], "refused", "a domain not allowed: {r}");
    assert_eq!(
        s["egressDirect"], "no-route",
        "no network but the proxy: {r}"
    );
    // Shared-folder work through our virtio-fs (figures, reported; QEMU
    // with Debian's virtiofsd beside it when it could run).
    let ours = r["sharedFolder"]["ours"].as_str().unwrap_or("");
    assert_eq!(
        ours.matches('s').count(),
        3,
        "untar, ls -lR and rm -rf timed on a share: {r}"
    );
    // The benchmark inside, with the QEMU + virtiofsd reference row beside
    // ours (figures reported, not gated).
    let rows = r["bench"]["results"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let row = |name: &str| rows.iter().find(|b| b["backend"] == name).cloned();
    let kvm = row("kvm").unwrap_or_default();
    assert!(
        kvm["spawnExitMs"]["median"].as_f64().is_some(),
        "the bench measured the kvm backend: {r}"
    );
    if !r["qemu"].is_null() {
        let qemu = row("qemu").unwrap_or_default();
        assert!(
            qemu["files"]["untarS"].as_f64().is_some(),
            "the bench's QEMU + virtiofsd reference row: {r}"
        );
    }
    if !r["qemu"].is_null() {
        let theirs = r["sharedFolder"]["qemuVirtiofsd"].as_str().unwrap_or("");
        assert_eq!(
            theirs.matches('s').count(),
            3,
            "the same work under QEMU with Debian's virtiofsd: {r}"
        );
    }
    assert_eq!(
        s["persisted"], "kept",
        "the session disk outlives the helper: {r}"
    );
    assert_eq!(
        s["restart"], "{} {} back",
        "stopVM and startVM again after the helper's restart: {r}"
    );
    assert_eq!(
        s["killed"], r#"{"running":false}"#,
        "kill through the agent: {r}"
    );
    assert!(
        s["readFile"].as_str().unwrap_or("").contains("kept"),
        "readFile through the agent: {r}"
    );
    // Hardened isolation between two sessions on one helper.
    assert_eq!(
        r["protocol"]["firstStartVM"], "{}",
        "the first startVM under serve, seccomp enforced, output to a log: {r}"
    );
    assert_eq!(
        s["aPrivate"], "secret-a",
        "session a's folder is shared: {r}"
    );
    let confined = s["confined"].as_str().unwrap_or("");
    let field = |k: &str| {
        confined
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .unwrap_or("?")
            .to_string()
    };
    let uid: u32 = field("uid").parse().unwrap_or(0);
    assert!(
        uid >= 1000,
        "session b runs as its own unprivileged user: {confined}"
    );
    assert!(
        confined.contains("no-a-file"),
        "b cannot read a's folder: {confined}"
    );
    assert!(
        !field("sessions").split(',').any(|n| n == "sa"),
        "b does not see a's session directory: {confined}"
    );
    assert_eq!(
        field("credentials"),
        "1",
        "b sees only its own egress credential: {confined}"
    );
    assert_eq!(
        field("fsroot"),
        "0",
        "the virtio-fs root is out of b's reach: {confined}"
    );
    assert_eq!(
        field("token"),
        "0",
        "the agent token is not in b's /proc/cmdline: {confined}"
    );
    assert_eq!(
        field("dmesg"),
        "0",
        "nor in the kernel log b can read: {confined}"
    );
    assert_eq!(
        field("ro"),
        "refused",
        "b cannot write its read-only folder: {confined}"
    );
    assert_eq!(
        s["roHost"], "precious-b",
        "the read-only file is unchanged on the host: {r}"
    );
    assert_eq!(
        field("init"),
        "safe",
        "PID 1 is out of b's reach: {confined}"
    );
    assert_eq!(
        field("sysrq"),
        "refused",
        "b cannot crash the guest: {confined}"
    );
    let forged = s["afterForged"].as_str().unwrap_or("");
    assert!(
        forged.starts_with(r#"{"connected":true} agent-still-serves"#),
        "a session connecting as the agent changes nothing: {r}"
    );
    let refused: u32 = forged
        .rsplit(' ')
        .next()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    assert!(
        refused >= 1,
        "the forged agent connection was refused and logged: {r}"
    );
}
