//! The nested end-to-end harness (tests/nested/e2e-nested.sh): an outer
//! machine under QEMU-TCG with emulated SVM loads Debian's kvm modules, and
//! inside it the helper boots this project's kernel and minimal rootfs with
//! its own VMM (then QEMU boots the same guest, for comparison), and the
//! helper protocol's startVM/isRunning/stopVM run against the kvm backend.
//! Then, on the default (standard) image, one real Claude Code turn driven
//! as the app drives it (examples/agent_turn.rs) and one refused at the
//! proxy; and an image update under a running VM.
//! Needs the image (`make image`, COWORK_VM_IMAGE_DIR) and qemu-system-x86;
//! the agent turn also the pinned CLI (`make agent-cli`) and the image
//! update the static agent (`make agent`): under CI a missing one fails.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{optional_part, require};

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
    // Kept in the target directory: the harness copies the outer machine's
    // whole console beside it (nested.console.log), which is what tells a
    // failed run's story.
    let result = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nested.json");
    // The agent turn on the standard image: the agent_turn example (cargo
    // test builds examples beside the helper) and the pinned CLI.
    let helper = PathBuf::from(env!("CARGO_BIN_EXE_cowork-microvm"));
    let driver = helper
        .parent()
        .map(|d| d.join("examples/agent_turn"))
        .filter(|d| d.is_file());
    let sdk = cowork_microvm::agent_turn::cached_sdk();
    let standard = images.join("rootfs-standard.ext4").is_file()
        || images.join("current/rootfs-standard.ext4").is_file();
    let agent_turn = optional_part(
        driver.is_some() && sdk.is_some() && standard,
        test,
        "the agent turn needs the standard image (make image), the pinned CLI (make agent-cli) and the agent_turn example (cargo test builds it)",
    );
    let static_agent = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/x86_64-unknown-linux-gnu/release/cowork-guest");
    let update = optional_part(
        static_agent.is_file(),
        test,
        "the image update needs the static guest agent (make agent)",
    );
    let mut cmd = Command::new("bash");
    if let (true, Some(driver), Some(sdk)) = (agent_turn, &driver, &sdk) {
        cmd.env("NESTED_AGENT_DRIVER", driver)
            .env("NESTED_AGENT_SDK", sdk);
    }
    if update {
        cmd.env("NESTED_GUEST_AGENT", &static_agent);
    }
    let out = cmd
        .arg(&script)
        .arg(&helper)
        .arg(&images)
        .arg(&result)
        .output()
        .unwrap();
    eprintln!(
        "nested: the outer machine's console is in {}",
        result.with_extension("console.log").display()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "harness failed:\n{stderr}");
    // What a stuck or failed step left on the console (shown with a
    // failed assertion below; the whole console is in the file above).
    for line in stderr
        .lines()
        .filter(|l| l.contains("NESTED-DIAG") || l.contains("NESTED-WATCH"))
        .take(400)
    {
        eprintln!("{line}");
    }
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap();
    eprintln!("nested (emulated timings): {r}");
    eprintln!(
        "nested steps (s since the outer boot): {}; attempts: {}",
        r["steps"], r["attempts"]
    );
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
    // The benchmark inside (figures reported, not gated).
    let rows = r["bench"]["results"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let row = |name: &str| rows.iter().find(|b| b["backend"] == name).cloned();
    let kvm = row("kvm").unwrap_or_default();
    if r["benchStuck"] == true {
        // Under multi-threaded TCG the emulated machine stalls now and
        // then while inner VMs start and stop in a loop (the bench's cold
        // start); the protocol steps above start and stop the VM and are
        // gated. Said loudly, with the bench's progress in the console.
        eprintln!("WARNING nested: the bench did not finish in 600 s; no figures this run");
    } else {
        assert!(
            kvm["spawnExitMs"]["median"].as_f64().is_some(),
            "the bench measured the kvm backend: {r}"
        );
        assert!(
            kvm["files"]["untarS"].as_f64().is_some(),
            "shared-folder work through our virtio-fs (the bench's untar): {r}"
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
    if update {
        // issue 16: an image update while a VM runs from the old image.
        let u: Vec<&str> = r["imageUpdate"].as_str().unwrap_or("").split(' ').collect();
        assert_eq!(
            u,
            [
                "built",
                "before",
                "built",
                "new-dir",
                "old-kept",
                "before",
                "old-gone",
                "before",
                r#""inUse":true"#
            ],
            "build, a session (starting the VM); a second build while the VM runs \
             (a new image, the old one kept), the session unaffected; stopVM \
             removes the old image; the next session's startVM boots the new one and \
             the session disk is kept: {r}"
        );
    }
    if agent_turn {
        // issue 14: the real CLI on the default (standard) image.
        assert!(
            r["vmmStandard"]["bootTimerMs"].as_f64().is_some(),
            "the standard image boots under our VMM: {r}"
        );
        let a = &r["agentTurn"]["allowed"];
        assert_eq!(a["result"]["subtype"], "success", "the agent's turn: {r}");
        assert_eq!(a["result"]["is_error"], false, "{r}");
        assert_eq!(
            a["result"]["result"],
            cowork_microvm::agent_turn::mock_api::FINAL_TEXT,
            "{r}"
        );
        assert_eq!(a["approvals"], 1, "one permission request, for Bash: {r}");
        assert_eq!(
            a["proof"], "agent-was-here\n",
            "the Bash tool's file is in the shared host folder: {r}"
        );
        let tool = a["toolOutput"].as_str().unwrap_or("");
        assert!(
            tool.contains("Linux cowork ") && !tool.contains("cloud-amd64"),
            "the tool ran on the guest's kernel, not the outer machine's: {tool}"
        );
        let refused = &r["agentTurn"]["refused"];
        assert_eq!(refused["mockRequests"], 0, "the mock saw nothing: {r}");
        assert_eq!(refused["proofWritten"], false, "{r}");
        assert!(
            refused["result"]["result"]
                .as_str()
                .is_some_and(|t| t.contains("not in this session's allowed domains")),
            "the CLI reports the proxy's refusal: {r}"
        );
        assert_eq!(
            r["agentRefusalLogLines"], "1",
            "the helper logs the refused domain once: {r}"
        );
    }
}
