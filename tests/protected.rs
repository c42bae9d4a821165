//! Shares on bwrap as a session can attack them: a symlink planted in a
//! read-write share must not redirect a later mount, and the protected
//! paths of a read-write share (git hooks and config, shell start-up
//! files, .mcp.json, ...) refuse writes while the rest of the folder takes
//! them, unless the helper's config says `"protectedPaths": false`. Each
//! runs as the invoking user, and as root once more as uid 65534.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::json;

const NEEDS_BWRAP: &str = "bubblewrap is not installed or cannot create namespaces here";

fn bwrap_usable(test: &str) -> bool {
    let ok = Command::new("bwrap")
        .args(["--ro-bind", "/", "/", "true"])
        .status()
        .is_ok_and(|s| s.success());
    require(ok, test, NEEDS_BWRAP)
}

fn has_git(test: &str) -> bool {
    let ok = Command::new("git")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    require(ok, test, "git is not installed")
}

/// A bwrap helper; `config` is written as its own config file
/// (`$XDG_CONFIG_HOME/cowork-microvm/config.json`, under the test's HOME)
/// before it starts.
fn bwrap_helper(config: Option<serde_json::Value>) -> Helper {
    Helper::start_with(|c| {
        c.env("COWORK_MICROVM_BACKEND", "bwrap");
        if let Some(cfg) = config {
            let dir = c
                .get_envs()
                .find(|(k, _)| *k == "XDG_CONFIG_HOME")
                .and_then(|(_, v)| v)
                .map(|v| Path::new(v).join("cowork-microvm"))
                .unwrap();
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        }
    })
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

/// ~/proj: a git repository with one commit, a .bashrc and a .mcp.json.
fn project(h: &Helper) -> std::path::PathBuf {
    let proj = h.mkdir("proj");
    std::fs::write(proj.join("file.txt"), "one\n").unwrap();
    std::fs::write(proj.join(".bashrc"), "# rc\n").unwrap();
    std::fs::write(proj.join(".mcp.json"), "{}\n").unwrap();
    std::fs::create_dir_all(proj.join(".claude")).unwrap();
    std::fs::write(proj.join(".claude/settings.json"), "{}\n").unwrap();
    // A checkout whose .git is a file naming its git folder.
    std::fs::create_dir_all(proj.join("wt")).unwrap();
    std::fs::write(proj.join("wt/.git"), "gitdir: ../.git\n").unwrap();
    git(&proj, &["init", "-q"]);
    std::fs::create_dir_all(proj.join(".git/hooks")).unwrap();
    git(&proj, &["add", "file.txt"]);
    git(&proj, &["commit", "-qm", "first"]);
    proj
}

/// Tries each write inside the session and prints `what=written` or
/// `what=refused`.
const WRITES: &str = r#"
try() { if sh -c "$2" >/dev/null 2>&1; then echo "$1=written"; else echo "$1=refused"; fi; }
G="git -c user.name=a -c user.email=b -c init.defaultBranch=main"
try config 'echo x >> .git/config'
try hook 'echo x > .git/hooks/pre-commit'
try bashrc 'echo x >> .bashrc'
try mcp 'rm .mcp.json'
try settings 'echo x > .claude/settings.json'
try gitfile 'echo "gitdir: /tmp" > wt/.git'
try new 'echo new > new.txt'
try edit 'echo two >> file.txt'
try commit "$G commit -qam second"
try init "$G init -q sub && cd sub && $G commit -q --allow-empty -m x"
"#;

fn spawn_writes(h: &Helper, id: &str) -> String {
    let mut ev = h.subscribe();
    let p = h.started();
    p.ok(
        "spawn",
        json!({"id": id, "name": "s1", "command": "/bin/sh", "args": ["-c", WRITES],
               "cwd": "/sessions/s1", "env": {"GIT_CONFIG_NOSYSTEM": "1"},
               "additionalMounts": {"proj": {"path": "proj", "mode": "rw"}}}),
    );
    let o = ev.until_exit(id);
    assert_eq!(o.exit["exitCode"], 0, "{o:?}");
    o.stdout
}

#[test]
#[cfg_attr(
    not(has_bwrap),
    ignore = "bubblewrap is not installed or cannot create namespaces here"
)]
fn protected_paths_refuse_writes_and_the_rest_of_the_folder_takes_them() {
    let test = "protected_paths_refuse_writes_and_the_rest_of_the_folder_takes_them";
    if !bwrap_usable(test) || !has_git(test) {
        return;
    }
    let h = bwrap_helper(None);
    let proj = project(&h);
    let config_before = std::fs::read(proj.join(".git/config")).unwrap();
    let out = spawn_writes(&h, "w");
    assert_eq!(
        out,
        "config=refused\nhook=refused\nbashrc=refused\nmcp=refused\n\
         settings=refused\ngitfile=refused\nnew=written\nedit=written\ncommit=written\ninit=written\n"
    );
    assert_eq!(
        std::fs::read(proj.join(".git/config")).unwrap(),
        config_before
    );
    assert!(!proj.join(".git/hooks/pre-commit").exists());
    assert_eq!(
        std::fs::read_to_string(proj.join(".bashrc")).unwrap(),
        "# rc\n"
    );
    assert!(proj.join(".mcp.json").exists());
    assert_eq!(
        std::fs::read_to_string(proj.join("wt/.git")).unwrap(),
        "gitdir: ../.git\n"
    );
    assert_eq!(
        std::fs::read_to_string(proj.join("new.txt")).unwrap(),
        "new\n"
    );
    assert!(proj.join("sub/.git/HEAD").exists());
    let log = Command::new("git")
        .args(["log", "--format=%s"])
        .current_dir(&proj)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&log.stdout), "second\nfirst\n");
}

#[test]
#[cfg_attr(
    not(has_bwrap),
    ignore = "bubblewrap is not installed or cannot create namespaces here"
)]
fn protected_paths_false_in_the_config_lets_them_be_written() {
    let test = "protected_paths_false_in_the_config_lets_them_be_written";
    if !bwrap_usable(test) || !has_git(test) {
        return;
    }
    let h = bwrap_helper(Some(json!({"protectedPaths": false})));
    let proj = project(&h);
    let out = spawn_writes(&h, "w");
    assert!(out.contains("bashrc=written\n"), "{out}");
    assert!(out.contains("config=written\n"), "{out}");
    assert_eq!(
        std::fs::read_to_string(proj.join(".bashrc")).unwrap(),
        "# rc\nx\n"
    );
}

/// A session replaces a folder of its read-write share, already added as a
/// mount of its own, by a symlink to another folder of the home. The next
/// spawn must not see that folder through the mount.
#[test]
#[cfg_attr(
    not(has_bwrap),
    ignore = "bubblewrap is not installed or cannot create namespaces here"
)]
fn a_symlink_planted_in_a_share_does_not_redirect_a_later_mount() {
    let test = "a_symlink_planted_in_a_share_does_not_redirect_a_later_mount";
    if !bwrap_usable(test) {
        return;
    }
    let h = bwrap_helper(None);
    let mut ev = h.subscribe();
    let p = h.started();
    let secret = h.mkdir("secret");
    std::fs::write(secret.join("key"), "top secret").unwrap();
    h.mkdir("proj/sub");
    std::fs::write(h.home.join("proj/sub/mine"), "mine").unwrap();
    p.ok(
        "spawn",
        json!({"id": "a", "name": "s1", "command": "/bin/sh", "args": ["-c", "true"],
               "additionalMounts": {"proj": {"path": "proj", "mode": "rw"}}}),
    );
    ev.until_exit("a");
    p.ok(
        "mountPath",
        json!({"processId": "s1", "subpath": "proj/sub", "mountName": "sub", "mode": "rw"}),
    );
    // The session swaps the folder for a link to ~/secret (a host path).
    let plant = format!(
        "cd /sessions/s1/mnt/proj && rm -r sub && ln -s {} sub && echo planted",
        secret.display()
    );
    p.ok(
        "spawn",
        json!({"id": "b", "name": "s1", "command": "/bin/sh", "args": ["-c", plant]}),
    );
    assert_eq!(ev.until_exit("b").stdout, "planted\n");
    assert!(h.home.join("proj/sub").is_symlink());
    let r = p.call(
        "spawn",
        json!({"id": "c", "name": "s1", "command": "/bin/sh",
               "args": ["-c", "cat /sessions/s1/mnt/sub/key 2>/dev/null || echo unseen"]}),
    );
    if r["success"] == true {
        let o = ev.until_exit("c");
        assert!(!o.stdout.contains("top secret"), "{o:?}");
    } else {
        let e = r["error"].to_string();
        assert!(e.contains("symbolic link"), "{r}");
    }
    // A new mount through the link is refused as well.
    let e = p.err(
        "mountPath",
        json!({"processId": "s1", "subpath": "proj/sub", "mountName": "sub2", "mode": "rw"}),
    );
    assert!(e.contains("symbolic link"), "{e}");
}

/// The tests above again, with the helper, its client and the sandbox all
/// running as an unprivileged user (uid 65534 through setpriv, with a HOME
/// and TMPDIR it owns): this test, as root, re-runs the test binary for
/// each of them that way.
#[test]
#[cfg_attr(
    not(all(has_bwrap, has_root)),
    ignore = "needs a bubblewrap that can create namespaces, and root (to run the tests as uid 65534)"
)]
fn the_same_as_an_unprivileged_user() {
    use std::os::unix::fs::chown;
    let test = "the_same_as_an_unprivileged_user";
    if !require(
        is_root(),
        test,
        "not root: the tests above already ran unprivileged",
    ) || !bwrap_usable(test)
        || !has_git(test)
    {
        return;
    }
    if !Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        require(false, test, "setpriv (util-linux) is not installed");
        return;
    }
    let stage = tempfile::tempdir().unwrap();
    for d in ["", "home", "tmp"] {
        let p = stage.path().join(d);
        std::fs::create_dir_all(&p).unwrap();
        chown(&p, Some(65534), Some(65534)).unwrap();
    }
    for inner in [
        "protected_paths_refuse_writes_and_the_rest_of_the_folder_takes_them",
        "protected_paths_false_in_the_config_lets_them_be_written",
        "a_symlink_planted_in_a_share_does_not_redirect_a_later_mount",
    ] {
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
            .args(["--exact", inner, "--include-ignored", "--nocapture"])
            .env("HOME", stage.path().join("home"))
            .env("TMPDIR", stage.path().join("tmp"))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{inner}: {text}");
        assert!(text.contains("1 passed"), "{inner} did not run: {text}");
        assert!(!text.contains("SKIP"), "{inner}: {text}");
    }
}
