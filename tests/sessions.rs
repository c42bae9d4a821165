//! Sessions on the host backend, end to end through the socket: output,
//! exit codes, signals, stdin, process groups, guest-path translation, the
//! token, the SDK and session data.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn exit_codes_and_status() {
    let h = Helper::start();
    let mut ev = h.subscribe();
    let p = h.started();
    p.ok("spawn", sh("e", "exit 42"));
    let o = ev.until_exit("e");
    assert_eq!(o.exit, json!({"type": "exit", "id": "e", "exitCode": 42}));
    assert_eq!(
        p.ok("isProcessRunning", json!({"id": "e"})),
        json!({"running": false, "exitCode": 42})
    );
    assert_eq!(
        p.ok("isProcessRunning", json!({"id": "never"})),
        json!({"running": false})
    );
    assert!(p
        .err("spawn", spawn_params("m", "s1", "/no/such/program", &[]))
        .contains("cannot start"));
}

#[test]
fn twenty_concurrent_sessions_deliver_every_line_in_order() {
    let h = Helper::start();
    let mut ev = h.subscribe();
    let p = h.started();
    const N: usize = 20;
    const LINES: usize = 2000;
    for i in 0..N {
        let script = format!("i=0; while [ $i -lt {LINES} ]; do echo \"p{i} $i\"; i=$((i+1)); done; echo done{i} >&2");
        p.ok(
            "spawn",
            spawn_params(
                &format!("p{i}"),
                &format!("sess{i}"),
                "/bin/sh",
                &["-c", &script],
            ),
        );
    }
    let mut out = vec![String::new(); N];
    let mut err = vec![String::new(); N];
    let mut exited = [false; N];
    while exited.iter().any(|e| !e) {
        let e = ev.next();
        let Some(id) = e["id"]
            .as_str()
            .and_then(|s| s.strip_prefix('p'))
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        match e["type"].as_str().unwrap() {
            "stdout" => {
                assert!(!exited[id], "output after exit");
                out[id] += e["data"].as_str().unwrap();
            }
            "stderr" => err[id] += e["data"].as_str().unwrap(),
            "exit" => {
                assert_eq!(e["exitCode"], 0);
                exited[id] = true;
            }
            _ => {}
        }
    }
    for i in 0..N {
        let expected: String = (0..LINES).map(|n| format!("p{i} {n}\n")).collect();
        assert!(
            out[i] == expected,
            "process {i}: output differs ({} vs {} bytes)",
            out[i].len(),
            expected.len()
        );
        assert_eq!(err[i], format!("done{i}\n"));
    }
}

#[test]
fn sixty_four_mib_of_output_arrive_intact() {
    let h = Helper::start();
    let mut ev = h.subscribe();
    let p = h.started();
    // Deterministic, multi-byte text so a split character would show.
    let line = "0123456789 abcdefghijklmnopqrstuvwxyz ÄÖÜ € ✓ 🦀\n";
    let mut content = String::with_capacity(64 << 20);
    let mut n = 0u64;
    while content.len() < 64 << 20 {
        content.push_str(&format!("{n:08} {line}"));
        n += 1;
    }
    let file = h.home.join("big.txt");
    std::fs::write(&file, &content).unwrap();
    p.ok(
        "spawn",
        spawn_params("big", "s1", "/bin/cat", &[file.to_str().unwrap()]),
    );
    let o = ev.until_exit("big");
    assert_eq!(o.stdout.len(), content.len(), "bytes lost or added");
    assert!(o.stdout == content, "content differs");
    assert_eq!(o.exit["exitCode"], 0);
}

#[test]
fn signals_by_name_and_number() {
    let h = Helper::start();
    let mut ev = h.subscribe();
    let p = h.started();
    for (id, sig, name) in [
        ("k1", json!("SIGKILL"), "SIGKILL"),
        ("k2", json!(15), "SIGTERM"),
        ("k3", json!("int"), "SIGINT"),
        ("k4", json!("9"), "SIGKILL"),
    ] {
        p.ok("spawn", spawn_params(id, "s1", "/bin/sleep", &["30"]));
        p.ok("kill", json!({"id": id, "signal": sig}));
        let o = ev.until_exit(id);
        assert_eq!(o.exit["signal"], name, "{o:?}");
        assert!(o.exit.get("exitCode").is_none());
    }
}

/// Both reference peers answer these for an id that is not running (never
/// spawned, or already ended) with success and do nothing: the client sends
/// them racing a process's exit.
#[test]
fn requests_for_unknown_or_ended_processes_succeed_and_do_nothing() {
    let h = Helper::start();
    let mut ev = h.subscribe();
    let p = h.started();
    p.ok("spawn", sh("done", "exit 3"));
    assert_eq!(ev.until_exit("done").exit["exitCode"], 3);
    let empty = json!({});
    for id in ["done", "ghost"] {
        assert_eq!(p.ok("kill", json!({"id": id, "signal": "SIGKILL"})), empty);
        assert_eq!(p.ok("kill", json!({"id": id})), empty);
        assert_eq!(p.ok("writeStdin", json!({"id": id, "data": "x\n"})), empty);
        assert_eq!(
            p.ok("sendGuestResponse", json!({"id": id, "error": "nope"})),
            empty
        );
    }
    assert_eq!(
        p.ok("isProcessRunning", json!({"id": "ghost"})),
        json!({"running": false})
    );
    assert_eq!(
        p.ok("isProcessRunning", json!({"id": "done"})),
        json!({"running": false, "exitCode": 3})
    );
    // Bad params are still errors, not silently accepted.
    assert!(p
        .err("kill", json!({"id": "ghost", "signal": "SIGNOPE"}))
        .contains("signal"));
    assert!(p.err("writeStdin", json!({"id": "ghost"})).contains("data"));
}

#[test]
fn stdin_is_delivered_and_can_be_closed() {
    let h = Helper::start();
    let mut ev = h.subscribe();
    let p = h.started();
    p.ok("spawn", spawn_params("c", "s1", "/bin/cat", &[]));
    p.ok("writeStdin", json!({"id": "c", "data": "hello\n"}));
    p.ok("writeStdin", json!({"id": "c", "data": "wörld\n"}));
    p.ok("writeStdin", json!({"id": "c", "data": "", "eof": true}));
    let o = ev.until_exit("c");
    assert_eq!(o.stdout, "hello\nwörld\n");
    assert_eq!(o.exit["exitCode"], 0);
}

#[test]
fn stop_kills_whole_process_groups() {
    let h = Helper::start();
    let mut ev = h.subscribe();
    let p = h.started();
    p.ok("spawn", sh("g", "sleep 1000 & echo $!; wait"));
    let mut pid = String::new();
    while !pid.ends_with('\n') {
        let e = ev.next();
        if e["id"] == "g" && e["type"] == "stdout" {
            pid += e["data"].as_str().unwrap();
        }
    }
    let grandchild = format!("/proc/{}", pid.trim());
    assert!(std::path::Path::new(&grandchild).exists());
    p.ok("stopVM", json!({}));
    let o = ev.until_exit("g");
    assert!(o.exit["signal"].is_string(), "{o:?}");
    let t0 = Instant::now();
    while std::fs::read_to_string(format!("{grandchild}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "grandchild survived stopVM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(p.err("spawn", sh("after", "true")).contains("startVM"));
}

#[test]
fn guest_paths_are_translated_and_never_escape() {
    let h = Helper::start();
    let mut ev = h.subscribe();
    let p = h.started();
    let proj = h.mkdir("work/proj");
    h.mkdir("work/secret");
    h.mkdir(".claude");
    std::os::unix::fs::symlink("/etc", proj.join("etc-link")).unwrap();
    let mounts = json!({
        ".claude": {"path": ".claude", "mode": "rw"},
        "uploads": {"path": "work/proj", "mode": "ro"},
        "proj": {"path": h.home.join("work/proj").strip_prefix("/").unwrap().to_str().unwrap()},
    });
    let script = r#"pwd; printf '%s\n' "$@"; echo "$CLAUDE_CONFIG_DIR""#;
    p.ok("spawn", json!({
        "id": "t", "name": "s1", "command": "/bin/sh",
        "args": ["-c", script, "sh", "--add-dir", "/sessions/s1/mnt/proj/a", "//sessions/s1/mnt/claude",
                 "--allowedTools", "Read(//sessions/s1/mnt/proj/**),Bash(ls:*)", "/sessions/s1/mnt/proj"],
        "cwd": "/sessions/s1",
        "env": {"CLAUDE_CONFIG_DIR": "/sessions/s1/mnt/.claude"},
        "additionalMounts": mounts,
    }));
    let o = ev.until_exit("t");
    let home = h.home.display();
    assert_eq!(
        o.stdout,
        format!(
            "{home}/work/proj\n--add-dir\n{home}/work/proj/a\n{home}/.claude\n--allowedTools\nRead(/{home}/work/proj/**),Bash(ls:*)\n/sessions/s1/mnt/proj\n{home}/.claude\n"
        ),
        "{o:?}"
    );
    let base = json!({"id": "x", "name": "s1", "command": "/bin/true", "additionalMounts": mounts});
    let with = |k: &str, v: serde_json::Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    for bad in [
        with("cwd", json!("/sessions/s1/mnt/proj/../secret")),
        with("cwd", json!("/sessions/s1/mnt/proj/etc-link")),
        with("cwd", json!("/sessions/s1/mnt/nomount")),
        with("cwd", json!("/sessions/other/mnt/proj")),
        with(
            "args",
            json!(["--add-dir", "/sessions/s1/mnt/proj/../../.."]),
        ),
        with(
            "args",
            json!(["--plugin-dir=/sessions/s1/mnt/proj/etc-link/x"]),
        ),
        with(
            "args",
            json!([
                "--disallowedTools",
                "Edit(//sessions/s1/mnt/proj/../secret/**)"
            ]),
        ),
        with(
            "env",
            json!({"CLAUDE_COWORK_MEMORY_PATH_OVERRIDE": "/sessions/s1/mnt/.claude/../../x"}),
        ),
    ] {
        let e = p.err("spawn", bad.clone());
        assert!(
            e.contains("escapes") || e.contains("does not have") || e.contains("not allowed"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn mounts_outside_home_are_refused_and_reported() {
    let h = Helper::start();
    let mut ev = h.subscribe();
    let p = h.started();
    h.mkdir("ok");
    std::os::unix::fs::symlink("/etc", h.home.join("etc-link")).unwrap();
    let r = p.ok(
        "spawn",
        json!({
            "id": "m", "name": "s1", "command": "/bin/true",
            "additionalMounts": {
                "ok": {"path": "ok"},
                "root": {"path": "/"},
                "proc": {"path": "/proc"},
                "etc": {"path": "etc-link"},
                "up": {"path": "../../etc"},
                "new": {"path": "made/by/spawn"},
            },
        }),
    );
    let mut failed: Vec<&str> = r["failedMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    failed.sort();
    assert_eq!(failed, ["etc", "proc", "root", "up"], "{r}");
    assert!(
        h.home.join("made/by/spawn").is_dir(),
        "missing mount source created"
    );
    ev.until_exit("m");
}

#[test]
fn token_reaches_the_session_and_never_the_log() {
    let h = Helper::start();
    let mut ev = h.subscribe();
    let p = h.started();
    p.ok("setDebugLogging", json!({"enabled": true}));
    let show = "echo \"tok=${CLAUDE_CODE_OAUTH_TOKEN-unset} term=$TERM cc=${CLAUDECODE-unset} e=${ELECTRON_RUN_AS_NODE-unset}\"";
    p.ok(
        "addApprovedOauthToken",
        json!({"token": "approved-SECRET-111"}),
    );
    p.ok("spawn", sh("a", show));
    assert_eq!(
        ev.until_exit("a").stdout,
        "tok=approved-SECRET-111 term=xterm-256color cc=unset e=unset\n"
    );
    let mut s = sh("b", show);
    s["oauthToken"] = json!("spawn-SECRET-222");
    s["env"] = json!({"CLAUDECODE": "1", "ELECTRON_RUN_AS_NODE": "1", "OTHER": "env-SECRET-333"});
    p.ok("spawn", s);
    assert_eq!(
        ev.until_exit("b").stdout,
        "tok=spawn-SECRET-222 term=xterm-256color cc=unset e=unset\n"
    );
    let mut s = sh("c", show);
    s["oauthToken"] = json!("spawn-SECRET-222");
    s["env"] = json!({"CLAUDE_CODE_OAUTH_TOKEN": ""});
    p.ok("spawn", s);
    assert_eq!(
        ev.until_exit("c").stdout,
        "tok= term=xterm-256color cc=unset e=unset\n"
    );
    p.ok("stopVM", json!({}));
    let log = h.log_text();
    assert!(log.contains("DEBUG"), "debug logging took effect: {log}");
    assert!(!log.contains("SECRET"), "a secret reached the log:\n{log}");
}

#[test]
fn sdk_binary_runs_for_claude() {
    let h = Helper::start();
    let mut ev = h.subscribe();
    let p = h.started();
    let dir = h.mkdir(".local/share/claude-sdk/2.0.1");
    std::fs::write(dir.join("claude"), "#!/bin/sh\necho \"sdk $*\"\n").unwrap();
    std::fs::set_permissions(dir.join("claude"), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(p
        .err(
            "installSdk",
            json!({"sdkSubpath": ".local/share/claude-sdk", "version": "9.9"})
        )
        .contains("does not exist"));
    assert!(p
        .err(
            "installSdk",
            json!({"sdkSubpath": ".local/share/claude-sdk", "version": "../x"})
        )
        .contains("version"));
    let root_rel = h.home.join(".local/share/claude-sdk");
    p.ok(
        "installSdk",
        json!({"sdkSubpath": root_rel.strip_prefix("/").unwrap(), "version": "2.0.1"}),
    );
    p.ok(
        "spawn",
        spawn_params("c", "s1", "claude", &["--print", "hi"]),
    );
    assert_eq!(ev.until_exit("c").stdout, "sdk --print hi\n");
}

#[test]
fn read_file_is_limited_to_home_and_mounts() {
    let h = Helper::start();
    let p = h.started();
    h.mkdir("proj");
    std::fs::write(h.home.join("proj/a.txt"), "A").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", h.home.join("proj/pw")).unwrap();
    p.ok("spawn", json!({"id": "r", "name": "s1", "command": "/bin/true", "additionalMounts": {"proj": {"path": "proj"}}}));
    let read = |path: &str| p.call("readFile", json!({"processName": "s1", "filePath": path}));
    assert_eq!(
        read("/sessions/s1/mnt/proj/a.txt")["result"]["content"],
        "A"
    );
    assert_eq!(
        read(h.home.join("proj/a.txt").to_str().unwrap())["result"]["content"],
        "A"
    );
    for bad in [
        "/etc/passwd",
        "/sessions/s1/mnt/proj/pw",
        "/sessions/s1/mnt/proj/../../x",
        "/proc/self/environ",
    ] {
        assert_eq!(read(bad)["success"], false, "{bad}");
    }
    std::fs::write(h.home.join("proj/big"), vec![b'x'; 5 << 20]).unwrap();
    assert!(read("/sessions/s1/mnt/proj/big")["error"]
        .as_str()
        .unwrap()
        .contains("limit"));
    nix::unistd::mkfifo(
        &h.home.join("proj/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    assert!(read("/sessions/s1/mnt/proj/fifo")["error"]
        .as_str()
        .unwrap()
        .contains("not a regular file"));
}

#[test]
fn session_disk_methods_report_and_prune_real_data() {
    let h = Helper::start();
    let mut ev = h.subscribe();
    let p = h.started();
    p.ok(
        "spawn",
        sh("w", "head -c 300000 /dev/zero > \"$TMPDIR/blob\""),
    );
    ev.until_exit("w");
    let info = p.ok("getSessionsDiskInfo", json!({"lowWaterBytes": 1u64 << 60}));
    assert_eq!(info["lowWater"], true);
    let s = &info["sessions"][0];
    assert_eq!(s["name"], "s1");
    assert!(s["sizeBytes"].as_u64().unwrap() >= 300_000, "{info}");
    let pr = p.ok("pruneSessionCaches", json!({"onlyIfFreeBytesBelow": 1u64 << 60, "includeSessionTmp": true, "sessionTmpOlderThanSeconds": 0}));
    assert_eq!(pr["prunedSessions"], json!(["s1"]), "{pr}");
    assert!(pr["freedBytes"].as_u64().unwrap() >= 300_000);
    let del = p.ok("deleteSessionDirs", json!({"names": ["s1", "../etc"]}));
    assert_eq!(del["deleted"], json!(["s1"]));
    assert!(del["errors"]["../etc"].is_string());
    assert_eq!(
        p.ok("getSessionsDiskInfo", json!({}))["sessions"],
        json!([])
    );
}

#[test]
fn mount_path_adds_a_share_to_a_running_session() {
    let h = Helper::start();
    let mut ev = h.subscribe();
    let p = h.started();
    h.mkdir("later");
    std::fs::write(h.home.join("later/f"), "late").unwrap();
    p.ok("spawn", spawn_params("l", "s1", "/bin/cat", &[]));
    p.ok(
        "mountPath",
        json!({"processId": "l", "subpath": "later", "mountName": "later", "mode": "ro"}),
    );
    assert!(p
        .err(
            "mountPath",
            json!({"processId": "l", "subpath": "../../etc", "mountName": "x", "mode": "ro"})
        )
        .contains("not allowed"));
    assert!(p
        .err(
            "mountPath",
            json!({"processId": "ghost", "subpath": "later", "mountName": "x"})
        )
        .contains("no process"));
    p.ok(
        "spawn",
        spawn_params("r", "s1", "/bin/cat", &["/sessions/s1/mnt/later/f"]),
    );
    // Arguments are not paths to translate unless a flag says so:
    let o = ev.until_exit("r");
    assert_eq!(o.exit["exitCode"], 1, "{o:?}");
    p.ok("spawn", json!({"id": "r2", "name": "s1", "command": "/bin/cat", "args": ["f"], "cwd": "/sessions/s1/mnt/later"}));
    assert_eq!(ev.until_exit("r2").stdout, "late");
    p.ok("kill", json!({"id": "l", "signal": "SIGKILL"}));
}

#[test]
fn working_folder_is_the_first_plain_mount_in_the_clients_order() {
    let h = Helper::start();
    let mut ev = h.subscribe();
    let _p = h.started();
    h.mkdir("zeta");
    h.mkdir("alpha");
    h.mkdir("up");
    // Raw JSON: a map built in the test would sort the keys.
    let body = br#"{"method":"spawn","id":9,"params":{"id":"o","name":"s1","command":"/bin/pwd","cwd":"/sessions/s1",
        "additionalMounts":{".hidden":{"path":"up"},"uploads":{"path":"up"},"zeta":{"path":"zeta"},"alpha":{"path":"alpha"}}}}"#;
    let mut c = h.conn();
    c.send_body(body);
    assert_eq!(c.recv().unwrap()["success"], true);
    assert_eq!(
        ev.until_exit("o").stdout,
        format!("{}/zeta\n", h.home.display())
    );
}

/// With plugins configured the app adds `.cowork-lib` (ro),
/// `.cowork-perm-req` (rw) and `.cowork-perm-resp` (ro), and `uploads` and
/// `outputs`: all shared, none the working folder, with or without a cwd.
#[test]
fn plugin_and_file_drop_mounts_are_never_the_working_folder() {
    let h = Helper::start();
    let mut ev = h.subscribe();
    let _p = h.started();
    for d in ["lib", "req", "resp", "up", "out", "proj"] {
        h.mkdir(&format!("plug/{d}"));
    }
    let mounts = r#"{"outputs":{"path":"plug/out","mode":"rw"},"uploads":{"path":"plug/up","mode":"rw"},
        ".cowork-lib":{"path":"plug/lib","mode":"ro"},".cowork-perm-req":{"path":"plug/req","mode":"rw"},
        ".cowork-perm-resp":{"path":"plug/resp","mode":"ro"},"proj":{"path":"plug/proj","mode":"rw"}}"#;
    for (id, cwd) in [("w1", r#","cwd":"/sessions/s1""#), ("w2", "")] {
        // Raw JSON: a map built in the test would sort the keys.
        let body = format!(
            r#"{{"method":"spawn","id":1,"params":{{"id":"{id}","name":"s1","command":"/bin/pwd"{cwd},
            "additionalMounts":{mounts}}}}}"#
        );
        let mut c = h.conn();
        c.send_body(body.as_bytes());
        let r = c.recv().unwrap();
        assert_eq!(r["success"], true, "{r}");
        assert!(r["result"].get("failedMounts").is_none(), "{r}");
        let o = ev.until_exit(id);
        assert_eq!(
            o.stdout,
            format!("{}/plug/proj\n", h.home.display()),
            "{o:?}"
        );
    }
}

/// The app spawns the agent as `/usr/local/bin/claude`; the host runs the
/// binary installSdk named, and refuses (saying what to do) before that.
#[test]
fn the_agent_command_runs_the_installed_sdk() {
    let h = Helper::start();
    let mut ev = h.subscribe();
    let p = h.started();
    let e = p.err("spawn", agent_spawn("a0", "s1", &["-p", "hi"]));
    assert!(e.contains("call installSdk"), "{e}");
    let bin = fake_claude(&h.home, ".local/share/claude-sdk", "2.1.328");
    p.ok(
        "installSdk",
        json!({"sdkSubpath": ".local/share/claude-sdk", "version": "2.1.328"}),
    );
    for (id, command) in [("a1", "/usr/local/bin/claude"), ("a2", "claude")] {
        let mut req = agent_spawn(id, "s1", &["-p", "two words"]);
        req["command"] = json!(command);
        p.ok("spawn", req);
        let o = ev.until_exit(id);
        let bin = bin.display();
        assert_eq!(
            o.stdout,
            format!("0={bin}\narg=-p\narg=two words\npath={bin}\nsdk=rw\nenv=unset\n"),
            "{o:?}"
        );
        assert_eq!(o.exit["exitCode"], 0);
    }
    // Other commands are untouched.
    p.ok("spawn", spawn_params("o", "s1", "/bin/echo", &["plain"]));
    assert_eq!(ev.until_exit("o").stdout, "plain\n");
}
