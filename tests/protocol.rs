//! The socket contract: connection modes, replies, events, bad input, and
//! the socket's own rules (permissions, stale files, a second helper, peers
//! of another uid).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn one_shot_request_has_no_id_and_closes() {
    let h = Helper::start();
    let mut c = h.conn();
    c.send(&json!({"method": "isRunning", "params": {}}));
    assert_eq!(
        c.recv().unwrap(),
        json!({"success": true, "result": {"running": false}})
    );
    c.s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(c.is_closed());
}

#[test]
fn every_method_answers_with_the_documented_shape() {
    let h = Helper::start();
    let p = Pipe::new(h.conn());
    let empty = json!({});
    assert_eq!(
        p.ok("configure", json!({"userDataName": "p", "userDataRoot": "/r", "networkDrives": [], "memoryMB": 2048, "cpuCount": 2, "smolBinPath": "/x", "logDir": "/l", "virtiofsdPath": "/v", "firmwareCodePath": "/f", "firmwareVarsTemplatePath": "/t"})),
        empty
    );
    assert_eq!(p.ok("isRunning", empty.clone()), json!({"running": false}));
    assert_eq!(
        p.ok("isGuestConnected", empty.clone()),
        json!({"connected": false})
    );
    assert_eq!(
        p.ok("createVM", json!({"bundlePath": "/b", "diskSizeGB": 10})),
        empty
    );
    assert_eq!(p.ok("startVM", json!({"bundlePath": "/b", "memoryGB": 4, "cpuCount": 2, "apiProbeURL": "https://api.anthropic.com"})), empty);
    assert_eq!(p.ok("isRunning", empty.clone()), json!({"running": true}));
    assert_eq!(
        p.ok("isGuestConnected", empty.clone()),
        json!({"connected": true})
    );
    assert_eq!(p.ok("setDebugLogging", json!({"enabled": true})), empty);
    assert_eq!(p.ok("addApprovedOauthToken", json!({"token": "t"})), empty);
    assert_eq!(
        p.ok("getNetworkDrives", empty.clone()),
        json!({"drives": []})
    );
    h.mkdir("proj");
    let spawn = p.ok("spawn", json!({"id": "a", "name": "s1", "command": "/bin/cat", "args": [], "isResume": false,
        "cwd": "/sessions/s1", "env": {"X": "1"}, "additionalMounts": {"proj": {"path": "proj", "mode": "rw"}},
        "allowedDomains": [], "oneShot": false, "mountSkeletonHome": false}));
    assert_eq!(spawn, empty, "no failedMounts when none failed");
    assert_eq!(
        p.ok("isProcessRunning", json!({"id": "a"})),
        json!({"running": true})
    );
    assert_eq!(p.ok("writeStdin", json!({"id": "a", "data": "x"})), empty);
    h.mkdir("extra");
    assert_eq!(
        p.ok(
            "mountPath",
            json!({"processId": "a", "subpath": "extra", "mountName": "extra", "mode": "ro"})
        ),
        json!({"guestPath": "/sessions/s1/mnt/extra"})
    );
    std::fs::write(h.home.join("proj/r.txt"), "content").unwrap();
    assert_eq!(
        p.ok(
            "readFile",
            json!({"processName": "s1", "filePath": "/sessions/s1/mnt/proj/r.txt"})
        ),
        json!({"content": "content"})
    );
    assert_eq!(p.ok("kill", json!({"id": "a", "signal": "SIGKILL"})), empty);
    let info = p.ok("getSessionsDiskInfo", json!({"lowWaterBytes": 0}));
    assert!(info["totalBytes"].as_u64().unwrap() > 0 && info["freeBytes"].as_u64().is_some());
    assert!(info["sessions"].is_array());
    let del = p.ok("deleteSessionDirs", json!({"names": ["nope"]}));
    assert_eq!(del["deleted"], json!([]));
    assert!(del["errors"]["nope"].is_string());
    let pr = p.ok("pruneSessionCaches", json!({"onlyIfFreeBytesBelow": 0, "includeSessionTmp": true, "sessionTmpOlderThanSeconds": 60}));
    for k in ["prunedSessions", "skippedSessions", "freedBytes", "errors"] {
        assert!(pr.get(k).is_some(), "{k} missing from {pr}");
    }
    // No pending request with that id: success, as both reference peers.
    assert_eq!(
        p.ok("sendGuestResponse", json!({"id": "g1", "resultJson": "{}"})),
        empty
    );
    let sdk = h.mkdir(".sdk/1.2.3");
    std::fs::write(sdk.join("claude"), "#!/bin/sh\necho sdk\n").unwrap();
    std::fs::set_permissions(sdk.join("claude"), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        p.ok(
            "installSdk",
            json!({"sdkSubpath": ".sdk", "version": "1.2.3"})
        ),
        empty
    );
    assert_eq!(p.ok("stopVM", empty.clone()), empty);
    assert_eq!(p.ok("isRunning", empty), json!({"running": false}));
    assert!(p
        .err("bogusMethod", json!({}))
        .starts_with("Unknown method:"));
}

#[test]
fn slow_request_does_not_hold_up_a_fast_one_on_the_same_pipe() {
    let h = Helper::start();
    let p = h.started();
    // A process that ignores SIGTERM makes stopVM wait for its SIGKILL.
    p.ok("spawn", sh("stubborn", "trap '' TERM; sleep 30"));
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let slow = p.send("stopVM", json!({}));
    let fast = p.send("isRunning", json!({}));
    let mut c = p.conn.lock().unwrap();
    let first = c.recv().unwrap();
    let fast_at = t0.elapsed();
    let second = c.recv().unwrap();
    let slow_at = t0.elapsed();
    assert_eq!(first["id"], fast, "the fast reply came first");
    assert_eq!(second["id"], slow);
    assert_eq!(second["success"], true);
    assert!(fast_at < slow_at, "fast {fast_at:?} slow {slow_at:?}");
}

#[test]
fn every_subscriber_gets_every_event() {
    let h = Helper::start();
    let mut a = h.subscribe();
    let mut b = h.subscribe();
    let p = h.started();
    p.ok("spawn", sh("p", "echo one; echo two >&2; exit 5"));
    for ev in [&mut a, &mut b] {
        let o = ev.until_exit("p");
        assert_eq!((o.stdout.as_str(), o.stderr.as_str()), ("one\n", "two\n"));
        assert_eq!(o.exit["exitCode"], 5);
    }
}

#[test]
fn network_status_follows_the_environment() {
    let h = Helper::start();
    let mut ev = h.subscribe();
    let p = h.started();
    assert_eq!(
        ev.next(),
        json!({"type": "networkStatus", "status": "connected"})
    );
    // No apiProbeURL: nothing to probe, but the app waits for an answer.
    assert_eq!(
        ev.next(),
        json!({"type": "apiReachability", "status": "unknown"})
    );
    p.ok("stopVM", json!({}));
    assert_eq!(
        ev.next(),
        json!({"type": "networkStatus", "status": "disconnected"})
    );
}

/// The app sends `startVM` and `subscribeEvents` at the same moment on two
/// connections; a subscription that lands after the start still hears how
/// it went, before any live event.
#[test]
fn a_late_subscriber_gets_the_start_state_replayed() {
    let h = Helper::start();
    let p = h.started();
    std::thread::sleep(Duration::from_millis(150));
    let mut late = h.subscribe();
    assert_eq!(
        late.next(),
        json!({"type": "networkStatus", "status": "connected"})
    );
    assert_eq!(
        late.next(),
        json!({"type": "apiReachability", "status": "unknown"})
    );
    // Live events follow; output is never replayed to a later subscriber.
    p.ok("spawn", sh("p", "echo live"));
    assert_eq!(late.next()["data"], "live\n");
    assert_eq!(late.until_exit("p").exit["exitCode"], 0);
    let mut later = h.subscribe();
    p.ok("spawn", sh("q", "echo next"));
    assert_eq!(later.next()["type"], "networkStatus");
    assert_eq!(later.next()["type"], "apiReachability");
    let third = later.next();
    assert_eq!(third["id"], "q", "p's output or exit was replayed: {third}");

    // After a stop nothing stale is replayed: the next start's events are
    // the first a new subscriber sees.
    p.ok("stopVM", json!({}));
    let mut after_stop = h.subscribe();
    p.ok("startVM", json!({}));
    assert_eq!(
        after_stop.next(),
        json!({"type": "networkStatus", "status": "connected"})
    );
}

#[test]
fn a_late_subscriber_gets_the_probe_result() {
    let h = Helper::start();
    let mut early = h.subscribe();
    let p = Pipe::new(h.conn());
    // Nothing listens on port 1: the probe ends quickly, unreachable.
    p.ok("startVM", json!({"apiProbeURL": "http://127.0.0.1:1/"}));
    loop {
        let e = early.next();
        if e["type"] == "apiReachability" {
            assert_eq!(e["status"], "unreachable");
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut late = h.subscribe();
    assert_eq!(
        late.next(),
        json!({"type": "networkStatus", "status": "connected"})
    );
    let r = late.next();
    assert_eq!(r["type"], "apiReachability");
    assert!(
        [
            "unknown",
            "reachable",
            "probably_unreachable",
            "unreachable"
        ]
        .contains(&r["status"].as_str().unwrap()),
        "{r}"
    );
    assert_eq!(r["status"], "unreachable");
}

/// Sends `bytes` raw on a fresh connection; returns the reply if any.
fn poke(h: &Helper, bytes: &[u8]) -> Option<serde_json::Value> {
    let mut c = h.conn();
    c.send_raw(bytes);
    let _ = c.s.shutdown(std::net::Shutdown::Write);
    c.recv()
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

#[test]
fn malformed_input_gets_an_error_and_the_helper_keeps_serving() {
    let h = Helper::start();
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "length over 10 MiB",
            (10 * 1024 * 1024 + 1u32).to_be_bytes().to_vec(),
        ),
        ("length 0xffffffff", vec![0xff; 4]),
        ("empty body", framed(b"")),
        ("not JSON", framed(b"hello there")),
        ("invalid UTF-8", framed(b"{\"method\":\"\xff\xfe\"}")),
        ("JSON array", framed(b"[1,2,3]")),
        ("JSON string", framed(b"\"isRunning\"")),
        ("JSON number", framed(b"42")),
        ("JSON null", framed(b"null")),
        ("no method", framed(br#"{"params":{}}"#)),
        ("method not a string", framed(br#"{"method":7}"#)),
        (
            "params not an object",
            framed(br#"{"method":"isRunning","params":"x"}"#),
        ),
        (
            "id is an object",
            framed(br#"{"method":"isRunning","id":{"a":1}}"#),
        ),
        ("deeply nested JSON", framed(deep.as_bytes())),
        (
            "unknown method",
            framed(br#"{"method":"formatDisk","params":{}}"#),
        ),
        (
            "spawn without id",
            framed(br#"{"method":"spawn","params":{"name":"s","command":"x"}}"#),
        ),
        (
            "spawn args not an array",
            framed(br#"{"method":"spawn","params":{"id":"1","name":"s","command":"x","args":5}}"#),
        ),
        (
            "kill with a bogus signal",
            framed(br#"{"method":"kill","params":{"id":"1","signal":"SIGFOO"}}"#),
        ),
        (
            "memoryMB overflowing",
            framed(br#"{"method":"configure","params":{"memoryMB":1e400}}"#),
        ),
        (
            "profile name escaping",
            framed(br#"{"method":"configure","params":{"userDataName":"../../etc"}}"#),
        ),
        (
            "deleteSessionDirs with numbers",
            framed(br#"{"method":"deleteSessionDirs","params":{"names":[1,2]}}"#),
        ),
        (
            "writeStdin with numeric data",
            framed(br#"{"method":"writeStdin","params":{"id":"ghost","data":7}}"#),
        ),
        (
            "readFile outside home",
            framed(
                br#"{"method":"readFile","params":{"processName":"s","filePath":"/etc/passwd"}}"#,
            ),
        ),
        (
            "setDebugLogging not bool",
            framed(br#"{"method":"setDebugLogging","params":{"enabled":"yes"}}"#),
        ),
    ];
    assert!(cases.len() >= 15);
    for (what, bytes) in cases {
        let reply = poke(&h, &bytes).unwrap_or_else(|| panic!("{what}: no reply"));
        assert_eq!(reply["success"], false, "{what}: {reply}");
        let msg = reply["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error text: {reply}"));
        assert!(!msg.is_empty(), "{what}");
        h.assert_alive();
    }
    // A frame cut short, then the peer leaves: at most an error, no harm.
    if let Some(r) = poke(&h, &[0, 0, 0, 50, b'{']) {
        assert_eq!(r["success"], false, "{r}");
    }
    h.assert_alive();
    // Garbage after a good request on a pipe: the good one is answered.
    let mut c = h.conn();
    c.send(&json!({"method": "isRunning", "id": 1}));
    c.send_raw(&[0xff, 0xff, 0xff, 0xff]);
    let first = c.recv().unwrap();
    assert_eq!(
        (first["id"].clone(), first["success"].clone()),
        (json!(1), json!(true))
    );
    assert_eq!(c.recv().unwrap()["success"], false);
    assert!(c.is_closed(), "stream that cannot be trusted is closed");
    h.assert_alive();
    assert!(h.child_alive());
}

#[test]
fn half_sent_frame_does_not_block_other_clients() {
    let h = Helper::start();
    let mut stalled = h.conn();
    stalled.send_raw(&[0, 0, 1, 0, b'{', b'"']);
    let t0 = Instant::now();
    for _ in 0..20 {
        h.assert_alive();
    }
    assert!(t0.elapsed() < Duration::from_secs(20));
    let p = h.started();
    p.ok("spawn", sh("x", "echo still"));
    drop(stalled);
}

#[test]
fn socket_is_private_and_stale_files_are_replaced() {
    use std::os::unix::fs::FileTypeExt;
    let h = Helper::start();
    let meta = std::fs::metadata(&h.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let dir = std::fs::metadata(h.socket.parent().unwrap()).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o700);

    // A second helper on the same path refuses, with a clear message.
    let out = command(h.tmp.path())
        .arg("-socket")
        .arg(&h.socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already serving"),
        "{out:?}"
    );
    h.assert_alive();

    // A stale socket file (nothing listening) is replaced.
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("run/stale.sock");
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let mut c = command(tmp.path())
        .arg("-socket")
        .arg(&sock)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_socket(&sock);
    // SIGTERM ends it cleanly and removes the socket.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(c.wait().unwrap().success());
    assert!(!sock.exists());

    // A symlink at the path is refused.
    let link = tmp.path().join("run/link.sock");
    std::os::unix::fs::symlink(&h.socket, &link).unwrap();
    let out = command(tmp.path())
        .arg("-socket")
        .arg(&link)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("symbolic link"));
}

#[test]
fn community_launcher_form_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("home")).unwrap();
    let sock = tmp.path().join("run/c.sock");
    let mut c = command(tmp.path())
        .arg("/usr/lib/claude-desktop/cowork-vm-service.js")
        .arg("-socket")
        .arg(&sock)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_socket(&sock);
    let _ = c.kill();
    let _ = c.wait();
}

#[test]
#[cfg_attr(not(has_root), ignore = "needs root to connect as another uid")]
#[cfg_attr(all(has_root, not(has_python3)), ignore = "needs python3")]
fn another_uid_is_refused_by_peer_credentials() {
    let test = "another_uid_is_refused_by_peer_credentials";
    if !require(is_root(), test, "needs root to connect as another uid") {
        return;
    }
    let h = Helper::start();
    // Open the directory and socket up so only SO_PEERCRED stands in the way.
    let dir = h.socket.parent().unwrap();
    for p in [h.tmp.path(), dir, h.socket.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let script = r#"
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
body = b'{"method":"isRunning","params":{}}'
try:
    s.sendall(struct.pack(">I", len(body)) + body)
    print("reply" if s.recv(4) else "closed")
except (BrokenPipeError, ConnectionResetError):
    print("closed")
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&h.socket)
        .uid(65534)
        .gid(65534)
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            require(false, test, &format!("cannot run python3: {e}"));
            return;
        }
    };
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "closed",
        "{out:?}"
    );
    h.assert_alive();
    let t0 = Instant::now();
    while !h.log_text().contains("uid 65534") {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "refusal not logged: {}",
            h.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
