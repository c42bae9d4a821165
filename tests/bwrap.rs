//! The bwrap backend end to end: the sandbox's layout, its network (none
//! but the egress proxy), process teardown, and the user's mount config.
//! Needs a working bubblewrap (`.ci/run` installs Debian's); without one
//! the tests are ignored, with the reason (build.rs).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn bwrap_usable(test: &str) -> bool {
    let ok = std::process::Command::new("bwrap")
        .args(["--ro-bind", "/", "/", "true"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    require(
        ok,
        test,
        "bubblewrap is not installed or cannot create namespaces here",
    )
}

fn bwrap_helper() -> Helper {
    Helper::start_with(|c| {
        c.env("COWORK_MICROVM_BACKEND", "bwrap");
    })
}

fn mounts(h: &Helper) -> serde_json::Value {
    h.mkdir("proj");
    h.mkdir("docs");
    json!({"proj": {"path": "proj", "mode": "rw"}, "docs": {"path": "docs", "mode": "ro"}})
}

#[test]
#[cfg_attr(
    not(has_bwrap),
    ignore = "bubblewrap is not installed or cannot create namespaces here"
)]
fn sandbox_layout_hides_home_and_enforces_modes() {
    if !bwrap_usable("sandbox_layout_hides_home_and_enforces_modes") {
        return;
    }
    let h = bwrap_helper();
    let mut ev = h.subscribe();
    let p = h.started();
    std::fs::write(h.home.join("secret.txt"), "top secret").unwrap();
    let m = mounts(&h);
    std::fs::write(h.home.join("docs/readme"), "doc").unwrap();
    let script = r#"
pwd
ls -A /sessions/s1/mnt | tr '\n' ' '; echo
if [ -e "$HOME/secret.txt" ]; then echo home-visible; else echo home-invisible; fi
ls -A "$HOME" | wc -l
echo written > new.txt
cat ../docs/readme; echo
if echo x > ../docs/x 2>/dev/null; then echo ro-writable; else echo ro-refused; fi
if unshare -U true 2>/dev/null; then echo userns-allowed; else echo userns-refused; fi
hostname
"#;
    p.ok("spawn", json!({"id": "l", "name": "s1", "command": "/bin/sh", "args": ["-c", script], "cwd": "/sessions/s1", "additionalMounts": m}));
    let o = ev.until_exit("l");
    assert_eq!(
        o.stdout,
        "/sessions/s1/mnt/proj\ndocs proj \nhome-invisible\n0\ndoc\nro-refused\nuserns-refused\ncowork\n",
        "{o:?}"
    );
    assert_eq!(
        std::fs::read_to_string(h.home.join("proj/new.txt")).unwrap(),
        "written\n"
    );
    assert!(!h.home.join("docs/x").exists());
}

/// A tiny HTTP server on the host's loopback answering every request.
fn upstream() -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(false).unwrap();
    let t = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nupstream-ok",
            );
            if Instant::now() > deadline || buf.starts_with(b"QUIT") {
                break;
            }
        }
    });
    (port, t)
}

#[test]
#[cfg_attr(
    not(has_bwrap),
    ignore = "bubblewrap is not installed or cannot create namespaces here"
)]
fn network_is_the_egress_proxy_and_nothing_else() {
    if !bwrap_usable("network_is_the_egress_proxy_and_nothing_else") {
        return;
    }
    let h = bwrap_helper();
    let mut ev = h.subscribe();
    let p = h.started();
    let (port, server) = upstream();
    let script = format!(
        r#"
import os, socket, urllib.request
for k in ("no_proxy", "NO_PROXY"):
    os.environ.pop(k, None)
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3)
    print("direct-connected")
except OSError:
    print("direct-refused")
print(urllib.request.urlopen("http://localhost:{port}/x", timeout=10).read().decode())
try:
    urllib.request.urlopen("http://example.com/", timeout=10)
    print("other-allowed")
except urllib.error.HTTPError as e:
    print("other", e.code)
s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
s.sendall(b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n")
print(s.recv(12).decode())
"#
    );
    p.ok("spawn", json!({"id": "n", "name": "s1", "command": "python3", "args": ["-c", script], "allowedDomains": ["localhost"]}));
    let o = ev.until_exit("n");
    assert_eq!(
        o.stdout, "direct-refused\nupstream-ok\nother 403\nHTTP/1.1 403\n",
        "{o:?}"
    );
    // No allowedDomains at all: no egress at all.
    p.ok("spawn", json!({"id": "n2", "name": "s1", "command": "python3", "args": ["-c", format!(
        "import os,urllib.request\nos.environ.pop('no_proxy',None);os.environ.pop('NO_PROXY',None)\ntry:\n urllib.request.urlopen('http://localhost:{port}/')\nexcept urllib.error.HTTPError as e: print(e.code)")]}));
    assert_eq!(ev.until_exit("n2").stdout, "403\n");
    assert!(
        h.log_text().contains("egress denied: example.com"),
        "denials are logged with the host"
    );
    let _ =
        std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| s.write_all(b"QUIT"));
    let _ = server.join();
}

/// Running `sleep` processes whose argument contains `marker`.
fn processes_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| {
                    let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                    args.first().is_some_and(|a| a.ends_with(b"sleep"))
                        && args
                            .get(1)
                            .is_some_and(|a| String::from_utf8_lossy(a).contains(marker))
                })
                .unwrap_or(false)
        })
        .count()
}

fn wait_gone(marker: &str) {
    let t0 = Instant::now();
    while processes_with(marker) > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "processes with {marker} survived"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[cfg_attr(
    not(has_bwrap),
    ignore = "bubblewrap is not installed or cannot create namespaces here"
)]
fn killed_and_stopped_sessions_leave_no_process_behind() {
    if !bwrap_usable("killed_and_stopped_sessions_leave_no_process_behind") {
        return;
    }
    let h = bwrap_helper();
    let mut ev = h.subscribe();
    let p = h.started();
    // A grandchild in the background, a child that ignores SIGTERM.
    p.ok(
        "spawn",
        sh("k", "sleep 7771001 & trap '' TERM; sleep 7771002; wait"),
    );
    let t0 = Instant::now();
    while processes_with("777100") < 2 {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    p.ok("kill", json!({"id": "k", "signal": "SIGKILL"}));
    assert_eq!(ev.until_exit("k").exit["signal"], "SIGKILL");
    wait_gone("777100");

    p.ok(
        "spawn",
        sh("t", "sleep 7772001 & trap '' TERM; sleep 7772002; wait"),
    );
    let t0 = Instant::now();
    while processes_with("777200") < 2 {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    p.ok("stopVM", json!({}));
    ev.until_exit("t");
    wait_gone("777200");
}

#[test]
#[cfg_attr(
    not(has_bwrap),
    ignore = "bubblewrap is not installed or cannot create namespaces here"
)]
fn signals_exit_codes_stdin_and_token_in_the_sandbox() {
    if !bwrap_usable("signals_exit_codes_stdin_and_token_in_the_sandbox") {
        return;
    }
    let h = bwrap_helper();
    let mut ev = h.subscribe();
    let p = h.started();
    p.ok("spawn", sh("e", "exit 42"));
    assert_eq!(ev.until_exit("e").exit["exitCode"], 42);
    p.ok("spawn", spawn_params("s", "s1", "/bin/sleep", &["30"]));
    std::thread::sleep(Duration::from_millis(300));
    p.ok("kill", json!({"id": "s", "signal": "SIGTERM"}));
    let o = ev.until_exit("s");
    assert_eq!(
        o.exit["signal"], "SIGTERM",
        "forwarded to the program, reported as a signal: {o:?}"
    );
    p.ok("spawn", spawn_params("c", "s1", "/bin/cat", &[]));
    p.ok(
        "writeStdin",
        json!({"id": "c", "data": "through the sandbox\n", "eof": true}),
    );
    assert_eq!(ev.until_exit("c").stdout, "through the sandbox\n");
    let mut s = sh(
        "tok",
        "echo \"$CLAUDE_CODE_OAUTH_TOKEN $TERM ${CLAUDECODE-unset} $HTTPS_PROXY\"",
    );
    s["oauthToken"] = json!("sandbox-SECRET-1");
    s["env"] = json!({"CLAUDECODE": "1"});
    p.ok("spawn", s);
    assert_eq!(
        ev.until_exit("tok").stdout,
        "sandbox-SECRET-1 xterm-256color unset http://127.0.0.1:3128\n"
    );
    assert!(!h.log_text().contains("SECRET"));
}

/// The sandbox's pid 1 is the small init built beside the helper (not the
/// helper re-run), and the command it starts has no signal blocked (the
/// init blocks the ones it forwards, and must not pass that mask on).
#[test]
#[cfg_attr(
    not(has_bwrap),
    ignore = "bubblewrap is not installed or cannot create namespaces here"
)]
fn the_small_init_is_pid_1_and_unblocks_signals_for_the_command() {
    if !bwrap_usable("the_small_init_is_pid_1_and_unblocks_signals_for_the_command") {
        return;
    }
    // cargo builds the package's binaries for its integration tests.
    let init = std::path::Path::new(env!("CARGO_BIN_EXE_cowork-microvm-sandbox-init"));
    assert!(init.is_file());
    let h = bwrap_helper();
    let mut ev = h.subscribe();
    let p = h.started();
    p.ok(
        "spawn",
        spawn_params("i", "s1", "/bin/readlink", &["/proc/1/exe"]),
    );
    let o = ev.until_exit("i");
    assert_eq!(o.stdout, "/run/cowork/sandbox-init\n", "{o:?}");
    // Not through sh, which may reset the mask itself.
    p.ok(
        "spawn",
        spawn_params("m", "s1", "/bin/grep", &["^SigBlk", "/proc/self/status"]),
    );
    let o = ev.until_exit("m");
    assert_eq!(o.stdout, "SigBlk:\t0000000000000000\n", "{o:?}");
    assert!(
        h.log_text().contains("bwrap: sandbox init"),
        "{}",
        h.log_text()
    );
}

/// The helper's environment (the desktop app's: API keys, tokens) stays
/// out of the sandbox; the spawn's own `env` gets in.
#[test]
#[cfg_attr(
    not(has_bwrap),
    ignore = "bubblewrap is not installed or cannot create namespaces here"
)]
fn helper_environment_does_not_reach_the_sandbox() {
    if !bwrap_usable("helper_environment_does_not_reach_the_sandbox") {
        return;
    }
    let h = Helper::start_with(|c| {
        c.env("COWORK_MICROVM_BACKEND", "bwrap")
            .env("COWORK_TEST_SECRET", "s3cret")
            .env("GITHUB_TOKEN", "ghp_s3cret")
            .env("LC_TIME", "C");
    });
    let mut ev = h.subscribe();
    let p = h.started();
    let mut s = spawn_params("env", "s1", "/usr/bin/env", &[]);
    s["env"] = json!({"FROM_SPAWN": "yes"});
    p.ok("spawn", s);
    let out = ev.until_exit("env").stdout;
    let keys: Vec<&str> = out.lines().filter_map(|l| l.split('=').next()).collect();
    assert!(!out.contains("s3cret"), "{out}");
    assert!(out.lines().any(|l| l == "FROM_SPAWN=yes"), "{out}");
    assert!(out.lines().any(|l| l == "LC_TIME=C"), "{out}");
    for k in ["HOME", "TMPDIR", "HTTPS_PROXY", "PATH"] {
        assert!(keys.contains(&k), "{k} missing: {out}");
    }
    for k in [
        "XDG_RUNTIME_DIR",
        "COWORK_VM_LOG_FILE",
        "COWORK_MICROVM_BACKEND",
    ] {
        assert!(!keys.contains(&k), "{k} leaked: {out}");
    }
}

#[test]
#[cfg_attr(
    not(has_bwrap),
    ignore = "bubblewrap is not installed or cannot create namespaces here"
)]
fn refused_mounts_are_listed_and_the_session_still_starts() {
    if !bwrap_usable("refused_mounts_are_listed_and_the_session_still_starts") {
        return;
    }
    let h = bwrap_helper();
    let mut ev = h.subscribe();
    let p = h.started();
    h.mkdir("ok");
    std::os::unix::fs::symlink("/etc", h.home.join("etc-link")).unwrap();
    // A self-referential symlink at a mount source is repaired.
    std::os::unix::fs::symlink(h.home.join("loop"), h.home.join("loop")).unwrap();
    let r = p.ok("spawn", json!({"id": "f", "name": "s1", "command": "/bin/sh", "args": ["-c", "ls /sessions/s1/mnt | tr '\\n' ' '"],
        "additionalMounts": {"ok": {"path": "ok"}, "sys": {"path": "/sys"}, "etc": {"path": "etc-link"},
                             "esc": {"path": "ok/../../../../etc"}, "loop": {"path": "loop"}}}));
    let mut failed: Vec<&str> = r["failedMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    failed.sort();
    assert_eq!(failed, ["esc", "etc", "sys"], "{r}");
    assert_eq!(ev.until_exit("f").stdout, "loop ok ");
    assert!(h.home.join("loop").is_dir());
}

#[test]
#[cfg_attr(
    not(has_bwrap),
    ignore = "bubblewrap is not installed or cannot create namespaces here"
)]
fn user_mount_config_is_applied_and_bad_config_ignored() {
    if !bwrap_usable("user_mount_config_is_applied_and_bad_config_ignored") {
        return;
    }
    let h = bwrap_helper();
    let mut ev = h.subscribe();
    let p = h.started();
    let extra = h.mkdir("extra");
    std::fs::write(extra.join("e.txt"), "extra!").unwrap();
    h.mkdir(".config/Claude");
    let cfg = h
        .home
        .join(".config/Claude/claude_desktop_linux_config.json");
    std::fs::write(
        &cfg,
        json!({"preferences": {"coworkBwrapMounts": {
            "additionalROBinds": [{"src": extra, "dst": "/opt/extra"}, "/proc/self"],
        }}})
        .to_string(),
    )
    .unwrap();
    p.ok(
        "spawn",
        sh(
            "u",
            "cat /opt/extra/e.txt; echo; touch /opt/extra/w 2>/dev/null || echo ro",
        ),
    );
    assert_eq!(ev.until_exit("u").stdout, "extra!\nro\n");
    assert!(
        h.log_text().contains("/proc/self"),
        "the refused entry is named in the log"
    );
    std::fs::write(&cfg, "{broken").unwrap();
    p.ok("spawn", sh("u2", "echo fine"));
    assert_eq!(ev.until_exit("u2").stdout, "fine\n");
    assert!(h.log_text().contains("not valid JSON"));
}

#[test]
#[cfg_attr(
    not(has_bwrap),
    ignore = "bubblewrap is not installed or cannot create namespaces here"
)]
fn api_reachability_is_probed_after_start() {
    if !bwrap_usable("api_reachability_is_probed_after_start") {
        return;
    }
    let h = bwrap_helper();
    let mut ev = h.subscribe();
    let p = Pipe::new(h.conn());
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    p.ok(
        "startVM",
        json!({"apiProbeURL": format!("http://127.0.0.1:{port}/v1")}),
    );
    let seen: Vec<_> = (0..2).map(|_| ev.next()).collect();
    assert!(
        seen.contains(&json!({"type": "networkStatus", "status": "connected"})),
        "{seen:?}"
    );
    assert!(
        seen.contains(&json!({"type": "apiReachability", "status": "reachable"})),
        "{seen:?}"
    );
    drop(l);
    p.ok("stopVM", json!({}));
    assert_eq!(
        ev.next(),
        json!({"type": "networkStatus", "status": "disconnected"})
    );
    p.ok(
        "startVM",
        json!({"apiProbeURL": format!("http://127.0.0.1:{port}/v1")}),
    );
    let seen: Vec<_> = (0..2).map(|_| ev.next()).collect();
    assert!(
        seen.contains(&json!({"type": "apiReachability", "status": "unreachable"})),
        "{seen:?}"
    );
}

#[test]
#[cfg_attr(
    not(has_bwrap),
    ignore = "bubblewrap is not installed or cannot create namespaces here"
)]
fn doctor_reports_bwrap_usable() {
    if !bwrap_usable("doctor_reports_bwrap_usable") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("home")).unwrap();
    let out = command(t.path())
        .env_remove("COWORK_MICROVM_BACKEND")
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["backend"], "bwrap", "{r}");
    assert_eq!(r["sandboxed"], true);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn forced_bwrap_without_bwrap_fails_start_with_the_fix() {
    let h = Helper::start_with(|c| {
        c.env("COWORK_MICROVM_BACKEND", "bwrap")
            .env("PATH", "/nonexistent");
    });
    let p = Pipe::new(h.conn());
    let e = p.err("startVM", json!({}));
    assert!(
        e.contains("bwrap is not installed") && e.contains("apt-get install bubblewrap"),
        "{e}"
    );
    assert_eq!(p.ok("isRunning", json!({})), json!({"running": false}));
    assert!(p.err("spawn", sh("x", "true")).contains("unavailable"));
}

/// In the sandbox the agent command runs the installed SDK from its real
/// path, which is bound read-only, and finds itself first on PATH.
#[test]
fn the_agent_command_runs_the_installed_sdk_read_only() {
    if !bwrap_usable("the_agent_command_runs_the_installed_sdk_read_only") {
        return;
    }
    let h = bwrap_helper();
    let mut ev = h.subscribe();
    let p = h.started();
    let e = p.err("spawn", agent_spawn("a0", "s1", &["-p", "hi"]));
    assert!(e.contains("call installSdk"), "{e}");
    let bin = fake_claude(&h.home, ".local/share/claude-sdk", "2.1.328");
    p.ok(
        "installSdk",
        json!({"sdkSubpath": ".local/share/claude-sdk", "version": "2.1.328"}),
    );
    p.ok(
        "spawn",
        agent_spawn("a1", "s1", &["--output-format", "stream-json"]),
    );
    let o = ev.until_exit("a1");
    let bin = bin.display();
    assert_eq!(
        o.stdout,
        format!("0={bin}\narg=--output-format\narg=stream-json\npath={bin}\nsdk=ro\nenv=unset\n"),
        "{o:?}"
    );
    assert_eq!(o.exit["exitCode"], 0);
}

/// The plugin mounts in the sandbox, with the modes the app gives them;
/// the working folder is the user's, not a plugin or file-drop mount.
#[test]
fn plugin_mounts_keep_their_modes_and_are_not_the_working_folder() {
    if !bwrap_usable("plugin_mounts_keep_their_modes_and_are_not_the_working_folder") {
        return;
    }
    let h = bwrap_helper();
    let mut ev = h.subscribe();
    let _p = h.started();
    for d in ["lib", "req", "resp", "up", "out", "proj"] {
        h.mkdir(&format!("plug/{d}"));
    }
    std::fs::write(h.home.join("plug/lib/tool.sh"), "lib\n").unwrap();
    let script = "pwd; m=/sessions/s1/mnt; cat $m/.cowork-lib/tool.sh; \
        for d in .cowork-lib .cowork-perm-req .cowork-perm-resp outputs; do \
        if touch $m/$d/x 2>/dev/null; then echo $d=rw; else echo $d=ro; fi; done";
    // Raw JSON: a map built in the test would sort the keys.
    let body = format!(
        r#"{{"method":"spawn","id":1,"params":{{"id":"w","name":"s1","command":"/bin/sh",
        "args":["-c",{}],"cwd":"/sessions/s1","additionalMounts":{{
        "outputs":{{"path":"plug/out","mode":"rw"}},"uploads":{{"path":"plug/up","mode":"rw"}},
        ".cowork-lib":{{"path":"plug/lib","mode":"ro"}},".cowork-perm-req":{{"path":"plug/req","mode":"rw"}},
        ".cowork-perm-resp":{{"path":"plug/resp","mode":"ro"}},"proj":{{"path":"plug/proj","mode":"rw"}}}}}}}}"#,
        serde_json::Value::String(script.into())
    );
    let mut c = h.conn();
    c.send_body(body.as_bytes());
    let r = c.recv().unwrap();
    assert_eq!(r["success"], true, "{r}");
    let o = ev.until_exit("w");
    assert_eq!(
        o.stdout,
        "/sessions/s1/mnt/proj\nlib\n.cowork-lib=ro\n.cowork-perm-req=rw\n.cowork-perm-resp=ro\noutputs=rw\n",
        "{o:?}"
    );
}
