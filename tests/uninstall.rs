//! `uninstall --purge`: lists, asks (or needs --yes off a terminal),
//! refuses while a helper answers, removes every file of ours and nothing
//! else of the user's.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::process::Command;

use common::Helper;

/// The helper with only HOME and the runtime directory set, so every path
/// is its default under HOME.
fn user(tmp: &Path, home: &Path) -> Command {
    let mut c = Command::new(common::BIN);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", tmp.join("run"))
        .stdin(std::process::Stdio::null());
    c
}

#[test]
fn purge_removes_ours_only_and_asks_first() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let ours = [
        ".local/share/cowork-microvm/images/img-1-1/manifest.json",
        ".local/share/cowork-microvm/sessions.ext4",
        ".cache/cowork-microvm/kernel/k/vmlinux",
        ".config/cowork-microvm/config.json",
        ".config/Claude/logs/cowork_vm_daemon.log",
        ".config/Claude/logs/cowork_vm_daemon.log.1",
    ];
    let theirs = [
        ".config/Claude/config.json",
        ".config/Claude/logs/main.log",
        ".local/share/other/file",
        ".cache/other",
    ];
    for f in ours.iter().chain(&theirs) {
        let p = home.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, f).unwrap();
    }
    // Not on a terminal and no --yes: refused, nothing removed.
    let out = user(t.path(), &home)
        .args(["uninstall", "--purge"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(".cache/cowork-microvm"),
        "lists first: {text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert!(ours.iter().all(|f| home.join(f).exists()));

    let out = user(t.path(), &home)
        .args(["uninstall", "--purge", "--yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ours {
        assert!(!home.join(f).exists(), "{f} is left");
    }
    for f in theirs {
        assert!(home.join(f).exists(), "{f} was removed");
    }
    assert!(!home.join(".local/share/cowork-microvm").exists());
    assert!(!home.join(".config/cowork-microvm").exists());
}

#[test]
fn purge_refuses_while_a_helper_runs() {
    let h = Helper::start();
    let data = h.home.join(".cache/cowork-microvm/x");
    std::fs::create_dir_all(data.parent().unwrap()).unwrap();
    std::fs::write(&data, b"x").unwrap();
    // The same runtime directory as the running helper's socket.
    let out = user(h.tmp.path(), &h.home)
        .args(["uninstall", "--purge", "--yes"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a helper is running"), "{err}");
    assert!(data.exists());
}
