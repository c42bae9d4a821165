//! A real Claude Code turn through the helper protocol, as the app drives
//! it: installSdk, spawn `/usr/local/bin/claude` with the stream-json
//! flags and an OAuth token, a user message through writeStdin, stdout
//! events until the `result` line. The model is a mock of the Messages API
//! on the host's loopback (`cowork_microvm::agent_turn::mock_api`) that has
//! the agent run one Bash command in the shared folder.
//!
//! Needs the pinned CLI (`tests/agent/fetch-claude.sh` fetches it from
//! npm into ~/.cache) and, for the bwrap tests, a working bubblewrap. When
//! one is missing the test runner lists the test as ignored, with the
//! reason (build.rs); under CI it fails instead, so CI cannot pass without
//! running the turn.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use cowork_microvm::agent_turn::{self, conversation, mock_api, mock_api::MockApi};
use serde_json::{json, Value};

/// How long one turn may take (the CLI's first start reads ~370 MB).
const TURN: Duration = Duration::from_secs(120);

/// The cached CLI's SDK directory, fetching it when absent.
fn sdk(test: &str) -> Option<PathBuf> {
    if let Some(s) = agent_turn::cached_sdk() {
        return Some(s);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/agent/fetch-claude.sh");
    let out = Command::new(&script).output();
    match out {
        Ok(o) if o.status.success() => agent_turn::cached_sdk().or_else(|| {
            require(
                false,
                test,
                "fetch-claude.sh succeeded but the CLI is not in the cache",
            );
            None
        }),
        Ok(o) => {
            let why = format!(
                "cannot fetch the Claude Code CLI ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
            require(false, test, &why);
            None
        }
        Err(e) => {
            require(
                false,
                test,
                &format!("cannot run {}: {e}", script.display()),
            );
            None
        }
    }
}

fn loopback(test: &str) -> Option<(String, std::net::Ipv4Addr)> {
    let r = agent_turn::loopback_name();
    if r.is_none() {
        require(
            false,
            test,
            "neither this machine's host name nor localhost.localdomain resolves to loopback only",
        );
    }
    r
}

fn bwrap_usable(test: &str) -> bool {
    let ok = Command::new("bwrap")
        .args(["--ro-bind", "/", "/", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        require(
            false,
            test,
            "bubblewrap is not installed or cannot create namespaces here",
        );
    }
    ok
}

/// What one turn produced.
#[derive(Debug, Default)]
struct Turn {
    /// stdout, split into lines.
    lines: Vec<String>,
    stderr: String,
    /// The `result` line, if one came.
    result: Option<Value>,
    exit: Option<Value>,
    first_line: Option<Duration>,
    /// Tool permission requests answered.
    approvals: usize,
    to_result: Option<Duration>,
}

struct Setup<'a> {
    h: &'a Helper,
    sdk: &'a Path,
    host: &'a str,
    port: u16,
    allowed: Vec<String>,
    prompt: String,
}

/// Runs one turn on `setup.h` with the shared folder `work` as the
/// working folder.
fn turn(s: &Setup) -> Turn {
    let mut ev = s.h.subscribe();
    let p = s.h.started();
    s.h.mkdir(conversation::WORK_MOUNT);
    agent_turn::stage_sdk(s.sdk, &s.h.home).unwrap();
    p.ok("installSdk", conversation::install_sdk());
    let base_url = format!("http://{}:{}", s.host, s.port);
    let t0 = Instant::now();
    p.ok(
        "spawn",
        conversation::spawn("agent", "s1", &base_url, &s.allowed),
    );
    let user = conversation::user_line(&s.prompt);
    p.ok("writeStdin", json!({"id": "agent", "data": user}));
    let mut t = Turn::default();
    let mut partial = String::new();
    while t.result.is_none() && t.exit.is_none() {
        assert!(t0.elapsed() < TURN, "no result within {TURN:?}: {t:?}");
        let e = ev.next();
        if e["id"] != "agent" {
            continue;
        }
        match e["type"].as_str().unwrap_or("") {
            "stdout" => {
                t.first_line.get_or_insert_with(|| t0.elapsed());
                partial += e["data"].as_str().unwrap_or("");
                for line in conversation::take_lines(&mut partial) {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if v["type"] == "result" {
                            t.to_result = Some(t0.elapsed());
                            t.result = Some(v);
                        } else if let Some(reply) = conversation::permission_reply(&v) {
                            t.approvals += 1;
                            p.ok("writeStdin", json!({"id": "agent", "data": reply}));
                        }
                    }
                    t.lines.push(line);
                }
            }
            "stderr" => t.stderr += e["data"].as_str().unwrap_or(""),
            "exit" => t.exit = Some(e),
            _ => {}
        }
    }
    // The CLI waits for the next message: end the conversation as the app
    // does when a session closes.
    if t.exit.is_none() {
        p.ok(
            "writeStdin",
            json!({"id": "agent", "data": "", "eof": true}),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while t.exit.is_none() && Instant::now() < deadline {
            let e = ev.next();
            if e["id"] == "agent" && e["type"] == "exit" {
                t.exit = Some(e);
            }
        }
        if t.exit.is_none() {
            p.ok("kill", json!({"id": "agent", "signal": "SIGKILL"}));
        }
    }
    eprintln!(
        "turn: first stdout line after {:?}, result after {:?}",
        t.first_line, t.to_result
    );
    t
}

fn assert_success(t: &Turn, mock: &MockApi, h: &Helper) {
    let r = t
        .result
        .as_ref()
        .unwrap_or_else(|| panic!("no result line: {t:?}\nmock saw {:?}", mock.requests()));
    let seen: Vec<(String, String, &str)> = mock
        .requests()
        .into_iter()
        .map(|s| (s.method, s.path, s.answered))
        .collect();
    assert_eq!(r["subtype"], "success", "{r}\n{t:?}");
    assert_eq!(r["is_error"], false, "{r}\nmock saw {seen:?}");
    assert_eq!(r["result"], mock_api::FINAL_TEXT, "{r}");
    assert_eq!(t.approvals, 1, "one permission request, for Bash");
    let seen = mock.requests();
    assert!(
        seen.iter().any(|s| s.answered == "tool_use"),
        "the mock never asked for the tool: {seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.answered == "final"),
        "the tool result never reached the mock: {seen:?}"
    );
    let schema = seen
        .iter()
        .find_map(|s| s.bash_schema.clone())
        .expect("the Bash tool was advertised");
    assert_eq!(
        schema["properties"]["command"]["type"], "string",
        "{schema}"
    );
    assert_eq!(
        std::fs::read_to_string(h.home.join("work/proof.txt")).unwrap_or_default(),
        "agent-was-here\n",
        "proof.txt in the shared folder; stdout:\n{}",
        t.lines.join("\n")
    );
}

fn prompt() -> String {
    "Write the proof file.".into()
}

#[test]
#[cfg_attr(
    not(has_npm),
    ignore = "needs npm (it fetches the pinned Claude Code CLI)"
)]
fn turn_on_host() {
    let test = "turn_on_host";
    let (Some(sdk), Some((host, ip))) = (sdk(test), loopback(test)) else {
        return;
    };
    let mock = MockApi::start(ip).unwrap();
    let h = Helper::start();
    let t = turn(&Setup {
        h: &h,
        sdk: &sdk,
        host: &host,
        port: mock.port(),
        allowed: vec![host.clone()],
        prompt: prompt(),
    });
    assert_success(&t, &mock, &h);
}

fn bwrap_helper() -> Helper {
    Helper::start_with(|c| {
        c.env("COWORK_MICROVM_BACKEND", "bwrap");
    })
}

#[test]
#[cfg_attr(
    not(all(has_npm, has_bwrap)),
    ignore = "needs npm (it fetches the pinned Claude Code CLI) and a bubblewrap that can create namespaces"
)]
fn turn_on_bwrap_through_the_egress_proxy() {
    let test = "turn_on_bwrap_through_the_egress_proxy";
    if !bwrap_usable(test) {
        return;
    }
    let (Some(sdk), Some((host, ip))) = (sdk(test), loopback(test)) else {
        return;
    };
    let mock = MockApi::start(ip).unwrap();
    let h = bwrap_helper();
    let t = turn(&Setup {
        h: &h,
        sdk: &sdk,
        host: &host,
        port: mock.port(),
        allowed: vec![host.clone()],
        prompt: prompt(),
    });
    assert_success(&t, &mock, &h);
}

/// Without the mock's name in allowedDomains the proxy refuses: the turn
/// ends in an API error and the mock sees nothing.
#[test]
#[cfg_attr(
    not(all(has_npm, has_bwrap)),
    ignore = "needs npm (it fetches the pinned Claude Code CLI) and a bubblewrap that can create namespaces"
)]
fn bwrap_turn_without_the_domain_is_refused_at_the_proxy() {
    let test = "bwrap_turn_without_the_domain_is_refused_at_the_proxy";
    if !bwrap_usable(test) {
        return;
    }
    let (Some(sdk), Some((host, ip))) = (sdk(test), loopback(test)) else {
        return;
    };
    let mock = MockApi::start(ip).unwrap();
    let h = bwrap_helper();
    let t = turn(&Setup {
        h: &h,
        sdk: &sdk,
        host: &host,
        port: mock.port(),
        allowed: vec!["api.anthropic.com".into()],
        prompt: prompt(),
    });
    let failed = match (&t.result, &t.exit) {
        (Some(r), _) => r["is_error"] == true,
        (None, Some(e)) => e["exitCode"] != 0,
        (None, None) => false,
    };
    assert!(failed, "the turn should fail: {t:?}");
    assert!(mock.requests().is_empty(), "{:?}", mock.requests());
    assert!(!h.home.join("work/proof.txt").exists());
    let said = t.result.as_ref().map(|r| r["result"].to_string());
    assert!(
        said.as_deref()
            .is_some_and(|s| s.contains("not in this session's allowed domains")),
        "the CLI should report the proxy's refusal: {said:?}"
    );
}

/// A user message of more than 1 MiB, one stdin line, reaches the model
/// intact.
#[test]
#[cfg_attr(
    not(all(has_npm, has_bwrap)),
    ignore = "needs npm (it fetches the pinned Claude Code CLI) and a bubblewrap that can create namespaces"
)]
fn large_user_message_passes_intact_on_bwrap() {
    let test = "large_user_message_passes_intact_on_bwrap";
    if !bwrap_usable(test) {
        return;
    }
    let (Some(sdk), Some((host, ip))) = (sdk(test), loopback(test)) else {
        return;
    };
    let mock = MockApi::start(ip).unwrap();
    let h = bwrap_helper();
    let mut big = prompt();
    big.push(' ');
    while big.len() < 1024 * 1024 + 17 {
        big.push_str("lorem ipsum dolor sit amet ");
    }
    let t = turn(&Setup {
        h: &h,
        sdk: &sdk,
        host: &host,
        port: mock.port(),
        allowed: vec![host.clone()],
        prompt: big.clone(),
    });
    assert_success(&t, &mock, &h);
    let seen = mock.requests();
    let main = seen
        .iter()
        .find(|s| s.answered == "tool_use")
        .expect("the main request");
    assert!(
        main.first_texts.contains(&big),
        "the prompt arrived altered: text blocks of {:?} bytes",
        main.first_texts.iter().map(String::len).collect::<Vec<_>>()
    );
}

/// The same turn on bwrap with the helper, its client and the agent all
/// running as an unprivileged user (uid 65534 through setpriv, with a HOME
/// it owns): this test, as root, re-runs the test binary for
/// `unprivileged_bwrap_turn_inner` that way.
#[test]
#[cfg_attr(
    not(all(has_npm, has_bwrap, has_root)),
    ignore = "needs npm (it fetches the pinned Claude Code CLI), a bubblewrap that can create namespaces, and root (to run it as uid 65534)"
)]
fn turn_on_bwrap_unprivileged() {
    use std::os::unix::fs::chown;
    let test = "turn_on_bwrap_unprivileged";
    if !require(
        is_root(),
        test,
        "not root; the other bwrap tests already run unprivileged",
    ) {
        return;
    }
    if !bwrap_usable(test) {
        return;
    }
    let Some(sdk) = sdk(test) else {
        return;
    };
    if !Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        require(false, test, "setpriv (util-linux) is not installed");
        return;
    }
    // A directory the user owns, with a copy of the CLI it owns (so the
    // inner test can hard-link it into its helper's home).
    let stage = tempfile::tempdir().unwrap();
    let bin_dir = stage.path().join("sdk").join(agent_turn::CLI_VERSION);
    for d in [
        stage.path().join("home"),
        stage.path().join("tmp"),
        bin_dir.clone(),
    ] {
        std::fs::create_dir_all(&d).unwrap();
    }
    let cached = sdk.join(agent_turn::CLI_VERSION).join("claude");
    let bin = bin_dir.join("claude");
    std::fs::copy(&cached, &bin).unwrap();
    for d in [
        stage.path().to_path_buf(),
        stage.path().join("home"),
        stage.path().join("tmp"),
        stage.path().join("sdk"),
        bin_dir,
        bin,
    ] {
        chown(&d, Some(65534), Some(65534)).unwrap();
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "unprivileged_bwrap_turn_inner",
            "--ignored",
            "--nocapture",
        ])
        .env("COWORK_AGENT_TURN_SDK", stage.path().join("sdk"))
        .env("HOME", stage.path().join("home"))
        .env("TMPDIR", stage.path().join("tmp"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("1 passed"),
        "the inner test did not run: {text}"
    );
    assert!(!text.contains("SKIP"), "{text}");
}

#[test]
#[ignore = "run as uid 65534 by turn_on_bwrap_unprivileged"]
fn unprivileged_bwrap_turn_inner() {
    let test = "unprivileged_bwrap_turn_inner";
    // `--include-ignored` runs this directly too: only the outer test's
    // run (which sets the SDK directory) is meaningful.
    let Some(sdk) = std::env::var_os("COWORK_AGENT_TURN_SDK").map(PathBuf::from) else {
        panic!("{test}: only turn_on_bwrap_unprivileged runs it (as uid 65534, with the SDK set)");
    };
    assert!(!is_root(), "{test} runs as an unprivileged user");
    let Some((host, ip)) = loopback(test) else {
        return;
    };
    let mock = MockApi::start(ip).unwrap();
    let h = bwrap_helper();
    let t = turn(&Setup {
        h: &h,
        sdk: &sdk,
        host: &host,
        port: mock.port(),
        allowed: vec![host.clone()],
        prompt: prompt(),
    });
    assert_success(&t, &mock, &h);
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(h.home.join("work/proof.txt"))
        .unwrap()
        .uid();
    assert_eq!(owner, nix::unistd::getuid().as_raw(), "proof.txt's owner");
}
