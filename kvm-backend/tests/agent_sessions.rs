//! The kvm backend's session logic, driven through the backend API against
//! the real guest agent run as a process over a Unix socket
//! (`Machine::AgentProcess`): everything but the VM itself, on any
//! machine, in seconds. The nested harness (tests/nested.rs) runs the same
//! logic in a real VM.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use cowork_backend::api::{Backend, MountPathRequest, PruneRequest, SpawnRequest, StartRequest};
use cowork_backend::bus::Subscription;
use cowork_backend::{BackendError, EventBus};
use cowork_kvm_backend::{KvmBackend, KvmConfig, Machine};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// The agent binary built beside this test (cargo builds every workspace
/// binary for `cargo test --workspace`; built here when run alone).
fn agent_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("cowork-guest");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = std::process::Command::new(cargo)
            .args(["build", "-p", "cowork-guest", "--bin", "cowork-guest"])
            .status()
            .unwrap();
        assert!(st.success(), "cannot build the guest agent");
    }
    assert!(bin.exists(), "no guest agent at {}", bin.display());
    bin
}

struct Fixture {
    backend: KvmBackend,
    events: Subscription,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        // Short: the agent's socket path must fit sun_path.
        let dir = tempfile::Builder::new()
            .prefix("kvmb")
            .tempdir_in("/tmp")
            .unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let bus = EventBus::new();
        let events = bus.subscribe();
        let backend = KvmBackend::new(
            KvmConfig {
                images: dir.path().join("images"),
                data: dir.path().join("d"),
                home,
                machine: Machine::AgentProcess { agent: agent_bin() },
                protection: Default::default(),
            },
            bus,
        );
        Fixture {
            backend,
            events,
            dir,
        }
    }

    async fn started() -> Fixture {
        let f = Fixture::new();
        f.backend.start(StartRequest::default()).await.unwrap();
        f
    }

    /// The session's directory where the agent keeps sessions (out of the
    /// VM: under its --sessions-root).
    fn session_dir(&self, name: &str) -> PathBuf {
        let d = self.dir.path().join("d/sessions-default").join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    async fn spawn(&self, id: &str, session: &str, script: &str) {
        let cwd = self.session_dir(session);
        let req: SpawnRequest = serde_json::from_value(json!({
            "id": id, "name": session, "command": "/bin/sh",
            "args": ["-c", script], "cwd": cwd,
        }))
        .unwrap();
        self.backend.spawn(req).await.unwrap();
    }

    /// Events until `id`'s exit: (stdout, exit event).
    async fn collect(&mut self, id: &str) -> (String, Value) {
        let mut out = String::new();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(20), self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("no exit for {id} within 20 s; stdout so far {out:?}"))
                .unwrap();
            let ev: Value = serde_json::from_slice(&frame[4..]).unwrap();
            if ev["id"] != id {
                continue;
            }
            match ev["type"].as_str() {
                Some("stdout") => out.push_str(ev["data"].as_str().unwrap()),
                Some("exit") => return (out, ev),
                _ => {}
            }
        }
    }

    /// The agent processes serving this fixture (found by its data dir).
    fn agent_pids(&self) -> Vec<i32> {
        let needle = self.dir.path().join("d").display().to_string();
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'));
            if cmd.contains("--sessions-root") && cmd.contains(&needle) && !zombie {
                pids.push(pid);
            }
        }
        pids
    }
}

fn is_no_such_process(e: &BackendError) -> bool {
    matches!(e, BackendError::NoSuchProcess(_))
}

#[tokio::test]
async fn spawn_stdin_exit_and_kill() {
    let mut f = Fixture::started().await;
    f.spawn("p1", "sa", "read x; echo got $x; exit 3").await;
    f.backend
        .write_stdin("p1", "hi\n".into(), true)
        .await
        .unwrap();
    let (out, exit) = f.collect("p1").await;
    assert_eq!(out, "got hi\n");
    assert_eq!(exit["exitCode"], 3);
    f.spawn("p2", "sa", "exec sleep 30").await;
    assert!(f.backend.process_status("p2").unwrap().running);
    f.backend.kill("p2", Signal::SIGTERM).await.unwrap();
    let (_, exit) = f.collect("p2").await;
    assert_eq!(exit["signal"], "SIGTERM");
    assert!(is_no_such_process(
        &f.backend.kill("nope", Signal::SIGTERM).await.unwrap_err()
    ));
    f.backend.stop().await.unwrap();
}

#[tokio::test]
async fn running_sessions_are_neither_deleted_nor_pruned() {
    let mut f = Fixture::started().await;
    f.spawn("busy", "sa", "exec sleep 30").await;
    std::fs::write(f.session_dir("sa").join("work"), "precious").unwrap();
    f.session_dir("idle");
    let res = f
        .backend
        .delete_session_dirs(vec!["sa".into(), "idle".into()])
        .await
        .unwrap();
    assert_eq!(res.deleted, ["idle"]);
    assert!(res.errors.contains_key("sa"), "{res:?}");
    assert!(f.session_dir("sa").join("work").exists());
    let pruned = f
        .backend
        .prune_session_caches(PruneRequest::default())
        .await
        .unwrap();
    assert!(
        !pruned.pruned_sessions.contains(&"sa".to_string()),
        "{pruned:?}"
    );
    assert!(f.session_dir("sa").join("work").exists());
    // Once its process is gone the session may go.
    f.backend.kill("busy", Signal::SIGKILL).await.unwrap();
    f.collect("busy").await;
    let res = f
        .backend
        .delete_session_dirs(vec!["sa".into()])
        .await
        .unwrap();
    assert_eq!(res.deleted, ["sa"], "{res:?}");
    f.backend.stop().await.unwrap();
}

#[tokio::test]
async fn mount_path_finds_the_running_process_session() {
    let f = Fixture::started().await;
    f.spawn("p", "sa", "exec sleep 30").await;
    std::fs::create_dir_all(f.dir.path().join("home/extra")).unwrap();
    let req = |id: &str| MountPathRequest {
        process_id: id.into(),
        subpath: "extra".into(),
        mount_name: "extra".into(),
        mode: None,
    };
    let err = f.backend.mount_path(req("nope")).await.unwrap_err();
    assert!(is_no_such_process(&err), "{err}");
    // Out of the VM the agent cannot mount: the refusal is the agent's,
    // for the right session, not "no such process".
    let err = f.backend.mount_path(req("p")).await.unwrap_err();
    assert!(!is_no_such_process(&err), "{err}");
    assert!(err.to_string().contains("VM"), "{err}");
    f.backend.stop().await.unwrap();
}

#[tokio::test]
async fn a_process_that_never_reads_stdin_stalls_only_itself() {
    let mut f = Fixture::started().await;
    f.spawn("deaf", "sa", "exec sleep 30").await;
    // More pieces than the agent's per-process queue had slots for, in all
    // well under any byte bound.
    let piece = "x".repeat(64 << 10);
    for _ in 0..200 {
        // Accepted or refused, but never held: the agent keeps serving.
        let _ = tokio::time::timeout(
            Duration::from_secs(15),
            f.backend.write_stdin("deaf", piece.clone(), false),
        )
        .await
        .expect("writeStdin to a process that does not read must not hang");
    }
    let started = std::time::Instant::now();
    f.spawn("other", "sb", "echo still here").await;
    let (out, _) = f.collect("other").await;
    assert_eq!(out, "still here\n");
    assert!(started.elapsed() < Duration::from_secs(15));
    f.backend.stop().await.unwrap();
}

/// A hello on the agent port: what any guest process could send.
async fn forged_hello(sock: &Path, token: &str) -> bool {
    use cowork_guest::wire::{self, GuestMsg};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(sock).await.unwrap();
    let hello = GuestMsg::Hello {
        version: wire::PROTOCOL_VERSION,
        agent: "impostor".into(),
        token: token.into(),
    };
    s.write_all(&wire::encode(&hello, &[]).unwrap())
        .await
        .unwrap();
    // Refused: the helper closes the connection without a word.
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn only_the_agent_with_the_boot_token_is_served() {
    let mut f = Fixture::started().await;
    let sock = f.dir.path().join("d/v.sock_1024");
    assert!(
        forged_hello(&sock, "").await,
        "a hello without the token was kept"
    );
    assert!(forged_hello(&sock, "0123456789abcdef0123456789abcdef").await);
    // The real agent still serves.
    f.spawn("p", "sa", "echo ok").await;
    assert_eq!(f.collect("p").await.0, "ok\n");
    f.backend.stop().await.unwrap();
}

#[tokio::test]
async fn start_and_stop_are_serialized() {
    let f = Fixture::new();
    let (a, b) = tokio::join!(
        f.backend.start(StartRequest::default()),
        f.backend.start(StartRequest::default())
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(f.agent_pids().len(), 1, "two starts, one guest");
    let (stopped, started) =
        tokio::join!(f.backend.stop(), f.backend.start(StartRequest::default()));
    stopped.unwrap();
    started.unwrap();
    // Whatever the order, the state says what runs.
    let running = f.backend.is_running();
    assert_eq!(f.agent_pids().len(), usize::from(running));
    f.backend.stop().await.unwrap();
    assert!(!f.backend.is_running());
    assert!(f.agent_pids().is_empty(), "stopVM left a guest running");
}

#[tokio::test]
async fn the_guest_ending_ends_its_processes_and_the_next_start_works() {
    let mut f = Fixture::started().await;
    f.spawn("p", "sa", "exec sleep 30").await;
    for pid in f.agent_pids() {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    }
    let (_, exit) = f.collect("p").await;
    assert_eq!(exit["signal"], "SIGKILL");
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while f.backend.is_running() && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!f.backend.is_running());
    f.backend.start(StartRequest::default()).await.unwrap();
    f.spawn("q", "sa", "echo again").await;
    assert_eq!(f.collect("q").await.0, "again\n");
    f.backend.stop().await.unwrap();
}
