//! The commands a person types: `run`, `doctor`, `bench`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::Write;
use std::process::Stdio;

use common::*;

fn tmp_home() -> (tempfile::TempDir, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let home = home.canonicalize().unwrap();
    (t, home)
}

#[test]
fn run_streams_output_forwards_stdin_and_returns_the_exit_code() {
    let (t, home) = tmp_home();
    let proj = home.join("proj");
    let docs = home.join("docs");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("d.txt"), "doc").unwrap();
    let mut child = command(t.path())
        .current_dir(&home)
        .args(["run", "--mount"])
        .arg(format!("{}:work", proj.display()))
        .arg("--mount")
        .arg(format!("{}:docs:ro", docs.display()))
        .args([
            "--",
            "sh",
            "-c",
            "pwd; read line; echo \"got $line\"; cat ../docs/d.txt; echo oops >&2; exit 7",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"typed\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\ngot typed\ndoc", proj.display())
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("oops"));
}

#[test]
fn run_defaults_to_the_current_directory_and_reports_signals() {
    let (t, home) = tmp_home();
    let here = home.join("here");
    std::fs::create_dir_all(&here).unwrap();
    let out = command(t.path())
        .current_dir(&here)
        .args(["run", "sh", "-c", "pwd; kill -9 $$"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(128 + 9), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", here.display())
    );
}

/// `run`'s in-process helper closes what it inherited, as `serve` does: a
/// descriptor a launcher left open does not reach the session.
#[test]
fn run_does_not_pass_inherited_descriptors_on() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (t, home) = tmp_home();
    let (keep, _other) = std::os::unix::net::UnixStream::pair().unwrap();
    let raw = keep.as_raw_fd();
    let mut cmd = command(t.path());
    // SAFETY: dup2 in the child before exec, to a fixed number and without
    // close-on-exec, as a careless launcher would leave it.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 42) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd
        .current_dir(&home)
        .args(["run", "--", "ls", "/proc/self/fd"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let fds = String::from_utf8_lossy(&out.stdout);
    assert!(!fds.lines().any(|l| l == "42"), "inherited: {fds}");
}

#[test]
fn run_refuses_bad_mount_specs_clearly() {
    let (t, home) = tmp_home();
    let out = command(t.path())
        .current_dir(&home)
        .args(["run", "--mount", "/nonexistent/x", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot resolve"),
        "{out:?}"
    );
    let out = command(t.path())
        .current_dir(&home)
        .args(["run", "--mount", ".:x:rx", "true"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mode must be ro or rw"),
        "{out:?}"
    );
}

#[test]
fn run_can_use_a_running_helper() {
    let h = Helper::start();
    let proj = h.mkdir("p");
    let out = command(h.tmp.path())
        .current_dir(&proj)
        .args(["run", "--socket"])
        .arg(&h.socket)
        .args(["--", "sh", "-c", "echo via-socket"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "via-socket\n",
        "{out:?}"
    );
    assert!(out.status.success());
    h.assert_alive();
}

#[test]
fn doctor_reports_backends_with_fixes() {
    let (t, _home) = tmp_home();
    let out = command(t.path())
        .env_remove("COWORK_MICROVM_BACKEND")
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("doctor --json prints JSON");
    let backends: Vec<&str> = report["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["backend"].as_str().unwrap())
        .collect();
    assert_eq!(backends, ["bwrap", "kvm", "host"]);
    let sandboxed = report["sandboxed"].as_bool().unwrap();
    assert_eq!(out.status.code(), Some(if sandboxed { 0 } else { 1 }));
    for p in report["probes"].as_array().unwrap() {
        if !p["usable"].as_bool().unwrap() {
            assert!(p["detail"].as_str().unwrap().len() > 10, "{p}");
        }
    }
    let text = command(t.path()).arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("Backend that will run:"), "{text}");

    // A broken config file is named, not fatal.
    let cfg = t.path().join("home/.config/cowork-microvm");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(cfg.join("config.json"), "{not json").unwrap();
    let out = command(t.path())
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["configProblems"][0]
            .as_str()
            .unwrap()
            .contains("not valid"),
        "{report}"
    );
}

#[test]
fn bench_quick_profile_writes_json() {
    let (t, _home) = tmp_home();
    let json_path = t.path().join("bench.json");
    let svg_path = t.path().join("bench.svg");
    let out = command(t.path())
        .args([
            "bench",
            "--quick",
            "--iterations",
            "5",
            "--output-mib",
            "2",
            "--backend",
            "host,bwrap,nonsense",
            "--json",
        ])
        .arg(&json_path)
        .arg("--svg")
        .arg(&svg_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results[0]["backend"], "host");
    assert_eq!(results[0]["spawnExitMs"]["samples"], 5);
    assert!(results[0]["stdoutMibS"]["median"].as_f64().unwrap() > 0.0);
    assert!(results[0]["helperRssKib"].as_u64().unwrap() > 0);
    assert!(
        results[1]["skipped"].is_string() || results[1]["spawnExitMs"]["samples"] == 5,
        "bwrap is measured, or skipped with a reason, never a zero: {}",
        results[1]
    );
    assert!(results[2]["skipped"].is_string());
    assert!(String::from_utf8_lossy(&out.stdout).contains("spawn→exit"));
    // The other scenarios, measured for real on the host backend.
    let host = &results[0];
    assert_eq!(host["concurrent"]["sessions"], 10);
    assert!(host["concurrent"]["mibS"].as_f64().unwrap() > 0.0);
    assert!(host["files"]["untarS"].as_f64().unwrap() > 0.0, "{host}");
    assert!(host["files"]["writeMibS"].as_f64().unwrap() > 0.0);
    assert!(host["coldStartMs"]["samples"].as_u64().unwrap() > 0);
    // The agent turn: measured (the CLI is cached in this HOME), or
    // skipped with the reason, never a zero.
    let agent = &host["agentTurn"];
    assert!(
        agent["skipped"].is_string() || agent["resultMs"]["samples"] == 2,
        "{agent}"
    );
    assert_eq!(doc["baseline"], "host");
    assert_eq!(doc["ratios"]["spawnExitMs"]["host"], 1.0);
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("spawn→exit"));
}

/// `run --sdk DIR -- claude ...` installs DIR as the SDK and runs it for the
/// agent command; `--env` reaches the session's environment.
#[test]
fn run_installs_an_sdk_and_passes_env() {
    let (t, home) = tmp_home();
    let here = home.join("here");
    std::fs::create_dir_all(&here).unwrap();
    let bin = fake_claude(&home, ".local/share/claude-sdk", "2.1.328");
    let out = command(t.path())
        .current_dir(&here)
        .args(["run", "--backend", "host", "--sdk"])
        .arg(bin.parent().unwrap())
        .args(["--env", "FAKE_ENV=a=b", "--", "claude", "-p", "hi"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let bin = bin.display();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("0={bin}\narg=-p\narg=hi\npath={bin}\nsdk=rw\nenv=a=b\n")
    );
    // A folder without `claude`, and a malformed --env, fail before anything runs.
    let out = command(t.path())
        .current_dir(&here)
        .args(["run", "--backend", "host", "--sdk"])
        .arg(&here)
        .args(["--", "claude"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no `claude`"),
        "{out:?}"
    );
    let out = command(t.path())
        .current_dir(&here)
        .args(["run", "--env", "NOEQUALS", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expected KEY=VALUE"),
        "{out:?}"
    );
}
