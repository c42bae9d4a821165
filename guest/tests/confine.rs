//! The real confinement code, end to end, as root but harmless to the
//! machine running it: the agent runs under `unshare --mount --pid --ipc
//! --net --fork --propagation private` (its mounts, and its sessions' namespaces made
//! from them, are its own) with every path of its layout under a test
//! directory (the hidden `--confine-test-root`). Without root or unshare
//! the tests show as ignored (build.rs), and fail under CI.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Agent;
use cowork_guest::wire::{GuestMsg, HostMsg};

/// Why this machine cannot run the test, if it cannot.
fn cannot_run() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root".into());
    }
    let ok = Command::new("unshare")
        .args(["--mount", "--pid", "--uts", "--ipc", "--net", "--fork"])
        .args(["--propagation", "private", "true"])
        .status();
    match ok {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("unshare --mount --pid fails here ({s})")),
        Err(e) => Some(format!("no unshare: {e}")),
    }
}

/// True (after saying why) when this machine cannot run `test`, which
/// build.rs found it could; fails instead under CI.
fn skip_unless_able(test: &str) -> bool {
    match cannot_run() {
        Some(why) => !common::require(false, test, &why),
        None => false,
    }
}

struct Confined {
    a: Agent,
    root: std::path::PathBuf,
}

impl Confined {
    fn start() -> Confined {
        // Not under /tmp: each session gets its own /tmp over it, which
        // would hide the layout (a checkout under /tmp has its target
        // there too).
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let base = if base.starts_with("/tmp") {
            Path::new("/var/tmp")
        } else {
            base
        };
        let tmp = tempfile::Builder::new()
            .prefix("confine")
            .tempdir_in(base)
            .unwrap();
        // Session users must reach their directories under it.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = tmp.path().to_path_buf();
        // Started with an OOM score of 500 (raising needs no privilege),
        // which its children inherit: a session's process must put itself
        // back to 0 (in the VM the agent's is -1000; lowering it needs
        // CAP_SYS_RESOURCE, which a container's root may lack).
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo 500 > /proc/self/oom_score_adj && exec \"$@\"",
            "sh",
        ]);
        cmd.arg("unshare");
        // Its own host name, IPC and network too: nothing of the machine's
        // to touch (nor to share with the sessions by mistake: each has
        // its own). Its own /proc too: `endSession` scans it for the
        // session's processes, which must be this agent's alone.
        cmd.args(["--mount", "--pid", "--uts", "--ipc", "--net", "--fork"])
            .args(["--propagation", "private", "--mount-proc"])
            .arg(env!("CARGO_BIN_EXE_cowork-guest"))
            .arg("--confine-test-root")
            .arg(&root)
            // The host's egress proxy, for the tests that stand in for it.
            .arg("--egress-unix")
            .arg(root.join("egress.sock"));
        Confined {
            a: Agent::start_with(cmd, tmp),
            root,
        }
    }

    fn sessions(&self) -> std::path::PathBuf {
        self.root.join("sessions")
    }

    /// Runs a shell command as root in the agent's mount namespace (as the
    /// host's mounts of shares would be made there).
    fn in_agent_ns(&self, script: &str) {
        let st = Command::new("nsenter")
            .arg("-t")
            .arg(self.a.child.id().to_string())
            .args(["-m", "sh", "-ec", script])
            .status()
            .unwrap();
        assert!(st.success(), "{script}");
    }

    fn user(&mut self, req: u64, session: &str) -> u32 {
        self.a.send(
            &HostMsg::SessionUser {
                req,
                session: session.into(),
            },
            &[],
        );
        match self.a.recv() {
            (GuestMsg::Json { req: r }, p) if r == req => {
                let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
                assert_eq!(v["uid"], v["gid"]);
                v["uid"].as_u64().unwrap() as u32
            }
            other => panic!("{other:?}"),
        }
    }

    fn spawn(&mut self, id: &str, session: Option<&str>, script: &str) {
        let root = self.sessions();
        self.a.send(
            &HostMsg::Spawn {
                id: id.into(),
                command: "/bin/sh".into(),
                args: vec![
                    "-c".into(),
                    script.into(),
                    "sh".into(),
                    root.to_string_lossy().into(),
                    self.root.join("fs").to_string_lossy().into(),
                ],
                env: vec![("PATH".into(), "/usr/bin:/bin".into())],
                cwd: None,
                session: session.map(Into::into),
            },
            &[],
        );
    }

    /// Output of `id` up to a line `until` (or its exit), within 20 s.
    fn read_until(&mut self, id: &str, until: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        self.a
            .s
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut out = String::new();
        while Instant::now() < deadline {
            match self.a.recv() {
                (GuestMsg::Stdout { id: i } | GuestMsg::Stderr { id: i }, p) if i == id => {
                    out.push_str(&String::from_utf8_lossy(&p));
                    if out.lines().any(|l| l == until) {
                        return out;
                    }
                }
                (GuestMsg::Exit { id: i, .. }, _) if i == id => return out,
                (GuestMsg::SpawnFailed { id: i, error }, _) if i == id => {
                    panic!("{id}: {error}")
                }
                _ => {}
            }
        }
        panic!("{id}: no {until:?} in time; got {out}")
    }
}

const PROBE: &str = r#"
echo uid=$(id -u) gid=$(id -g) groups=$(id -G)
echo home=$HOME pwd=$(pwd)
echo sessions=$(ls -A "$1")
cat "$1/b/secret" 2>/dev/null && echo LEAK-secret || echo secret-hidden
echo owners=$(stat -c %u /proc/[0-9]* | sort -u)
echo cmdline=$(wc -c < /proc/cmdline)
touch "$1/a/mnt/ro/new" 2>/dev/null && echo LEAK-wrote-ro || echo ro-refused
echo share=$(cat "$1/a/mnt/ro/file")
echo fs=$(ls -A "$2")
touch "$1/a/own" && echo own-ok
echo tmp=$(ls -A /tmp)
echo 1 > /sys/kernel/mm/ksm/run 2>/dev/null && echo LEAK-sys || echo sys-ro
echo done
"#;

#[test]
#[cfg_attr(
    not(all(has_root, has_unshare)),
    ignore = "needs root and util-linux unshare"
)]
fn a_session_sees_only_itself() {
    if skip_unless_able("a_session_sees_only_itself") {
        return;
    }
    let mut c = Confined::start();
    let ua = c.user(1, "a");
    let ub = c.user(2, "b");
    assert!(ua >= 20000 && ub >= 20000 && ua != ub, "{ua} {ub}");
    assert_eq!(c.user(3, "a"), ua, "stable");
    let s = c.sessions();
    std::fs::write(s.join("b/secret"), b"b's").unwrap();
    std::fs::create_dir_all(c.root.join("src-ro")).unwrap();
    std::fs::write(c.root.join("src-ro/file"), b"shared").unwrap();
    std::fs::write(c.root.join("fs/whole-device"), b"x").unwrap();
    let ro = s.join("a/mnt/ro");
    c.in_agent_ns(&format!(
        "mkdir -p {ro} && mount --bind {src} {ro} && mount -o remount,bind,ro {ro}",
        ro = ro.display(),
        src = c.root.join("src-ro").display()
    ));

    // Without a session, in a confining agent, nothing runs.
    c.spawn("none", None, "true");
    assert!(matches!(c.a.recv().0, GuestMsg::SpawnFailed { .. }));

    c.spawn("bsleep", Some("b"), "sleep 30");
    c.spawn("probe", Some("a"), PROBE);
    let out = c.read_until("probe", "done");
    let want = [
        format!("uid={ua} gid={ua} groups={ua}"),
        format!("home={0} pwd={0}", s.join("a").display()),
        "sessions=a".into(),
        "secret-hidden".into(),
        format!("owners={ua}"),
        "cmdline=0".into(),
        "ro-refused".into(),
        "share=shared".into(),
        "fs=".into(),
        "own-ok".into(),
        "tmp=".into(),
        "sys-ro".into(),
    ];
    for w in want {
        assert!(out.lines().any(|l| l == w), "missing {w:?} in:\n{out}");
    }
    assert!(!out.contains("LEAK"), "{out}");
    // The agent's view is untouched by the session's.
    assert!(s.join("b/secret").exists());
    assert_eq!(
        std::fs::metadata(s.join("a/own"))
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap(),
        ua
    );
}

/// A share mounted after a process started appears in it at once, and an
/// unmount takes it away.
#[test]
#[cfg_attr(
    not(all(has_root, has_unshare)),
    ignore = "needs root and util-linux unshare"
)]
fn shares_come_and_go_in_running_sessions() {
    if skip_unless_able("shares_come_and_go_in_running_sessions") {
        return;
    }
    let mut c = Confined::start();
    c.user(1, "a");
    let late = c.sessions().join("a/mnt/late");
    std::fs::create_dir_all(c.root.join("src-late")).unwrap();
    std::fs::write(c.root.join("src-late/marker"), b"m").unwrap();
    c.in_agent_ns(&format!("mkdir -p {}", late.display()));
    c.spawn(
        "w",
        Some("a"),
        r#"m="$1/a/mnt/late/marker"
        echo waiting
        while [ ! -e "$m" ]; do sleep 0.1; done; echo saw-late
        while [ -e "$m" ]; do sleep 0.1; done; echo gone-late"#,
    );
    c.read_until("w", "waiting");
    c.in_agent_ns(&format!(
        "mount --bind {} {}",
        c.root.join("src-late").display(),
        late.display()
    ));
    c.read_until("w", "saw-late");
    c.a.send(
        &HostMsg::Unmount {
            req: 7,
            path: late.to_string_lossy().into(),
        },
        &[],
    );
    let out = c.read_until("w", "gone-late");
    assert!(out.contains("gone-late"), "{out}");
    assert!(!Path::new(&late).join("marker").exists());
}

impl Confined {
    /// The answer to request `req`, skipping other frames (process output).
    fn answer(&mut self, req: u64) -> (GuestMsg, Vec<u8>) {
        loop {
            let (m, p) = self.a.recv();
            match &m {
                GuestMsg::Done { req: r }
                | GuestMsg::File { req: r }
                | GuestMsg::Failed { req: r, .. }
                | GuestMsg::Json { req: r }
                    if *r == req =>
                {
                    return (m, p)
                }
                _ => {}
            }
        }
    }

    fn mount(&mut self, req: u64, sub: &str, path: &Path, read_only: bool) -> GuestMsg {
        self.a.send(
            &HostMsg::Mount {
                req,
                tag: "tag".into(),
                subdir: Some(sub.into()),
                path: path.to_string_lossy().into(),
                read_only,
            },
            &[],
        );
        self.answer(req).0
    }

    fn unmount(&mut self, req: u64, path: &Path) -> GuestMsg {
        self.a.send(
            &HostMsg::Unmount {
                req,
                path: path.to_string_lossy().into(),
            },
            &[],
        );
        self.answer(req).0
    }

    fn read_file(&mut self, req: u64, session: Option<&str>, path: &Path) -> (GuestMsg, Vec<u8>) {
        self.a.send(
            &HostMsg::ReadFile {
                req,
                path: path.to_string_lossy().into(),
                limit: 1024,
                session: session.map(Into::into),
            },
            &[],
        );
        self.answer(req)
    }

    /// Runs `script` as session `session` to its end; its output.
    fn run_as(&mut self, id: &str, session: &str, script: &str) -> String {
        self.spawn(id, Some(session), script);
        self.read_until(id, "\u{0}never")
    }

    /// A share directory of the (stand-in) virtio-fs device, with a
    /// marker file: the agent binds it from `<root>/fs/tag/<sub>`, as in
    /// the VM from the device mounted whole.
    fn device_dir(&self, sub: &str) {
        let d = self.root.join("fs/tag").join(sub);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("marker"), sub).unwrap();
    }
}

/// A session that replaces its `mnt` by a symbolic link gets neither a
/// share mounted where the link points nor someone else's share unmounted.
#[test]
#[cfg_attr(
    not(all(has_root, has_unshare)),
    ignore = "needs root and util-linux unshare"
)]
fn shares_never_follow_a_sessions_links() {
    if skip_unless_able("shares_never_follow_a_sessions_links") {
        return;
    }
    let mut c = Confined::start();
    c.user(1, "a");
    c.user(2, "b");
    let s = c.sessions();
    c.device_dir("s1");
    c.device_dir("s2");
    // Mounting works, read-only too, by descriptor.
    assert_eq!(
        c.mount(3, "s1", &s.join("a/mnt/ok"), true),
        GuestMsg::Done { req: 3 }
    );
    assert_eq!(
        c.mount(4, "s2", &s.join("b/mnt/theirs"), false),
        GuestMsg::Done { req: 4 }
    );
    let ok = s.join("a/mnt/ok");
    c.in_agent_ns(&format!(
        "test -e {ok}/marker && ! touch {ok}/new 2>/dev/null",
        ok = ok.display()
    ));
    let outside = c.root.join("outside");
    std::fs::create_dir_all(outside.join("m")).unwrap();
    std::fs::set_permissions(&c.root, std::fs::Permissions::from_mode(0o755)).unwrap();

    // The session moves its shares' directory away (it owns the parent)
    // and puts a link in its place.
    let out = c.run_as(
        "swap",
        "a",
        &format!(
            r#"mv "$1/a/mnt" "$1/a/mnt.old" && ln -s {} "$1/a/mnt" && echo swapped"#,
            outside.display()
        ),
    );
    assert!(out.contains("swapped"), "{out}");
    for (req, m) in [(5, "m"), (6, "new")] {
        let r = c.mount(req, "s1", &s.join("a/mnt").join(m), false);
        assert!(matches!(r, GuestMsg::Failed { .. }), "{m}: {r:?}");
    }
    assert!(
        !outside.join("new").exists(),
        "nothing made through the link"
    );
    c.in_agent_ns(&format!(
        "test ! -e {0}/m/marker && ! mountpoint -q {0}/m",
        outside.display()
    ));

    // Now pointing at session b's shares: unmounting "its own" must not
    // unmount b's.
    let out = c.run_as(
        "swap2",
        "a",
        r#"rm "$1/a/mnt" && ln -s "$1/b/mnt" "$1/a/mnt" && echo swapped"#,
    );
    assert!(out.contains("swapped"), "{out}");
    let r = c.unmount(7, &s.join("a/mnt/theirs"));
    assert!(matches!(r, GuestMsg::Failed { .. }), "{r:?}");
    c.in_agent_ns(&format!("test -e {}/b/mnt/theirs/marker", s.display()));
    // Its real share, reached without a link, still goes.
    let out = c.run_as(
        "swap3",
        "a",
        r#"rm "$1/a/mnt" && mv "$1/a/mnt.old" "$1/a/mnt" && echo back"#,
    );
    assert!(out.contains("back"), "{out}");
    assert_eq!(c.unmount(8, &ok), GuestMsg::Done { req: 8 });
    c.in_agent_ns(&format!("test ! -e {}/marker", ok.display()));
}

/// readFile for a session reads inside that session's directory only: a
/// link there to another session's file is refused.
#[test]
#[cfg_attr(
    not(all(has_root, has_unshare)),
    ignore = "needs root and util-linux unshare"
)]
fn read_file_stays_in_the_session() {
    if skip_unless_able("read_file_stays_in_the_session") {
        return;
    }
    let mut c = Confined::start();
    c.user(1, "a");
    c.user(2, "b");
    let s = c.sessions();
    std::fs::write(s.join("b/secret"), b"b's").unwrap();
    let out = c.run_as(
        "links",
        "a",
        r#"cd "$1/a" && echo mine > own && ln -s own rel && ln -s "$1/b/secret" stolen &&
        ln -s ../b/secret escape && echo linked"#,
    );
    assert!(out.contains("linked"), "{out}");
    let (m, p) = c.read_file(1, Some("a"), &s.join("a/own"));
    assert_eq!(
        (m, p.as_slice()),
        (GuestMsg::File { req: 1 }, &b"mine\n"[..])
    );
    let (m, p) = c.read_file(2, Some("a"), &s.join("a/rel"));
    assert_eq!(
        (m, p.as_slice()),
        (GuestMsg::File { req: 2 }, &b"mine\n"[..])
    );
    for (req, session, path) in [
        (3, Some("a"), "a/stolen"),
        (4, Some("a"), "a/escape"),
        (5, Some("a"), "b/secret"),
        (6, Some("a"), "a/../b/secret"),
        (7, None, "a/own"),
        (8, Some("../b"), "b/secret"),
    ] {
        let (m, p) = c.read_file(req, session, &s.join(path));
        assert!(matches!(m, GuestMsg::Failed { .. }), "{path}: {m:?}");
        assert!(p.is_empty());
    }
}

/// A spawn's cwd inside the session's directory is made there and given
/// to the session; one through a link the session planted is refused.
#[test]
#[cfg_attr(
    not(all(has_root, has_unshare)),
    ignore = "needs root and util-linux unshare"
)]
fn a_cwd_is_never_made_through_a_link() {
    if skip_unless_able("a_cwd_is_never_made_through_a_link") {
        return;
    }
    let mut c = Confined::start();
    let ua = c.user(1, "a");
    let s = c.sessions();
    let outside = c.root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let out = c.run_as(
        "plant",
        "a",
        &format!(r#"ln -s {} "$1/a/work" && echo planted"#, outside.display()),
    );
    assert!(out.contains("planted"), "{out}");
    let spawn_in = |c: &mut Confined, id: &str, cwd: &Path| {
        c.a.send(
            &HostMsg::Spawn {
                id: id.into(),
                command: "/bin/pwd".into(),
                args: vec![],
                env: vec![],
                cwd: Some(cwd.to_string_lossy().into()),
                session: Some("a".into()),
            },
            &[],
        );
    };
    spawn_in(&mut c, "bad", &s.join("a/work/sub"));
    loop {
        match c.a.recv().0 {
            GuestMsg::SpawnFailed { id, .. } if id == "bad" => break,
            GuestMsg::Spawned { id } if id == "bad" => panic!("spawned through a link"),
            _ => {}
        }
    }
    assert!(!outside.join("sub").exists());
    // A cwd elsewhere is entered as the session's user, not as root: a
    // directory only root may enter is refused.
    let private = c.root.join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    spawn_in(&mut c, "root-only", &private);
    loop {
        match c.a.recv().0 {
            GuestMsg::SpawnFailed { id, .. } if id == "root-only" => break,
            GuestMsg::Spawned { id } if id == "root-only" => panic!("entered as root"),
            _ => {}
        }
    }
    let good = s.join("a/new/deeper");
    spawn_in(&mut c, "good", &good);
    let out = c.read_until("good", &good.to_string_lossy());
    assert!(out.contains(&*good.to_string_lossy()), "{out}");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&good).unwrap());
    assert_eq!(owner, ua);
}

/// `endSession` kills what the session left running, a daemon that left
/// the spawned process's group included, and nothing of another session;
/// a session's process is an ordinary OOM victim, not exempt as the agent.
#[test]
#[cfg_attr(
    not(all(has_root, has_unshare)),
    ignore = "needs root and util-linux unshare"
)]
fn end_session_kills_what_the_session_left() {
    if skip_unless_able("end_session_kills_what_the_session_left") {
        return;
    }
    let mut c = Confined::start();
    c.user(1, "a");
    c.user(2, "b");
    // A daemon in a session of its own, under a name to find it by.
    let out = c.run_as(
        "start",
        "a",
        r#"cp /bin/sleep ./lurker && setsid ./lurker 300 </dev/null >/dev/null 2>&1 &
        sleep 0.2; echo oom=$(cat /proc/self/oom_score_adj)"#,
    );
    assert!(out.contains("oom=0"), "{out}");
    c.spawn("along", Some("a"), "sleep 300");
    c.spawn("other", Some("b"), "echo up; sleep 300");
    c.read_until("other", "up");
    // Zombies are dead: left unreaped here, where the agent is PID 1 of
    // the test's namespace (in the VM, PID 1 reaps them).
    let comms = r#"for p in /proc/[0-9]*; do grep -q "^State:.Z" $p/status || cat $p/comm; done"#;
    assert!(c.run_as("before", "a", comms).contains("lurker"));

    c.a.send(
        &HostMsg::EndSession {
            req: 9,
            session: "a".into(),
        },
        &[],
    );
    let (answer, _) = c.answer(9);
    assert_eq!(answer, GuestMsg::Done { req: 9 });
    let after = c.run_as("after", "a", comms);
    assert!(!after.contains("lurker"), "{after}");
    assert!(!after.contains("sleep"), "{after}");
    // Another session's process runs on.
    assert!(c.run_as("b-after", "b", comms).contains("sleep"));
    // An unknown session is not an error: nothing runs as it.
    c.a.send(
        &HostMsg::EndSession {
            req: 10,
            session: "never".into(),
        },
        &[],
    );
    assert_eq!(c.answer(10).0, GuestMsg::Done { req: 10 });
}

/// A session directory with a share still mounted in it is not deleted
/// (that would delete the user's files through the share), nor pruned.
#[test]
#[cfg_attr(
    not(all(has_root, has_unshare)),
    ignore = "needs root and util-linux unshare"
)]
fn delete_refuses_a_session_with_a_mount() {
    if skip_unless_able("delete_refuses_a_session_with_a_mount") {
        return;
    }
    let mut c = Confined::start();
    c.user(1, "a");
    c.user(2, "gone");
    let src = c.root.join("user-files");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("precious"), b"p").unwrap();
    let m = c.sessions().join("a/mnt/work");
    c.in_agent_ns(&format!(
        "mkdir -p {m} && mount --bind {src} {m}",
        m = m.display(),
        src = src.display()
    ));
    c.a.send(
        &HostMsg::Sessions {
            req: 3,
            op: "delete".into(),
            args: serde_json::json!({"names": ["a", "gone"], "active": []}),
        },
        &[],
    );
    let (answer, json) = c.answer(3);
    assert_eq!(answer, GuestMsg::Json { req: 3 }, "{json:?}");
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["deleted"], serde_json::json!(["gone"]), "{v}");
    assert!(
        v["errors"]["a"].as_str().unwrap().contains("mounted"),
        "{v}"
    );
    assert!(src.join("precious").exists(), "the user's file survives");
    assert!(!c.sessions().join("gone").exists());
}

/// A server on 127.0.0.1 and on an abstract Unix socket name, answering
/// each connection with `a`.
const SERVER: &str = r#"
import select, socket
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("127.0.0.1", 40312)); t.listen()
u = socket.socket(socket.AF_UNIX); u.bind("\0cowork-ns-test"); u.listen()
print("listening", flush=True)
while True:
    for s in select.select([t, u], [], [])[0]:
        c = s.accept()[0]; c.sendall(b"a\n"); c.close()
"#;

/// Connects to [`SERVER`]'s two sockets; says what it got.
const CLIENT: &str = r#"
import socket
def attempt(family, addr):
    s = socket.socket(family); s.settimeout(5)
    try:
        s.connect(addr)
        return s.recv(8).decode().strip() or "closed"
    except OSError as e:
        return "refused"
print("tcp=" + attempt(socket.AF_INET, ("127.0.0.1", 40312)))
print("abstract=" + attempt(socket.AF_UNIX, "\0cowork-ns-test"))
"#;

/// Runs [`CLIENT`], then reports the System V IPC objects it sees and its
/// network namespace.
fn probe_script() -> String {
    format!(
        r#"python3 -c '{CLIENT}'
echo shm=$(ipcs -m | grep -c '^0x')
echo msg=$(ipcs -q | grep -c '^0x')
echo net=$(readlink /proc/self/ns/net)
echo done"#
    )
}

fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
}

/// Two sessions cannot reach each other's loopback servers, abstract Unix
/// sockets or System V IPC objects; the processes of one session can.
/// Nor can a session take a privileged port or open them to itself.
#[test]
#[cfg_attr(
    not(all(has_root, has_unshare)),
    ignore = "needs root and util-linux unshare"
)]
fn sessions_have_their_own_network_and_ipc() {
    if skip_unless_able("sessions_have_their_own_network_and_ipc") {
        return;
    }
    if !common::require(
        Path::new("/usr/bin/python3").exists(),
        "sessions_have_their_own_network_and_ipc",
        "needs /usr/bin/python3",
    ) {
        return;
    }
    let mut c = Confined::start();
    // As in the VM, where PID 1 does it: the agent's own loopback is up,
    // so a session left in the agent's namespace would reach another's.
    agent_lo_up(&c);
    c.user(1, "a");
    c.user(2, "b");
    c.spawn("srv", Some("a"), &format!("exec python3 -c '{SERVER}'"));
    c.read_until("srv", "listening");
    let out = c.run_as("ipc", "a", "ipcmk -M 4096 && ipcmk -Q && echo made");
    assert!(out.contains("made"), "{out}");

    let mine = c.run_as("mine", "a", &probe_script());
    let theirs = c.run_as("theirs", "b", &probe_script());
    for (key, a, b) in [
        ("tcp=", "a", "refused"),
        ("abstract=", "a", "refused"),
        ("shm=", "1", "0"),
        ("msg=", "1", "0"),
    ] {
        assert_eq!(line(&mine, key), a, "session a's own, {key}\n{mine}");
        assert_eq!(line(&theirs, key), b, "session b, {key}\n{theirs}");
    }
    assert_ne!(line(&mine, "net="), line(&theirs, "net="));

    // The privileged ports stay privileged in the session's namespace,
    // whose sysctls it cannot change.
    let out = c.run_as(
        "ports",
        "a",
        r#"k=/proc/sys/net/ipv4/ip_unprivileged_port_start
        (echo 0 > $k) 2>/dev/null && echo LEAK-sysctl || echo sysctl-refused
        echo start=$(cat $k)
        python3 -c 'import socket; socket.socket().bind(("127.0.0.1", 313))' 2>/dev/null &&
            echo LEAK-bind || echo bind-refused"#,
    );
    for want in ["sysctl-refused", "start=1024", "bind-refused"] {
        assert!(out.lines().any(|l| l == want), "no {want} in:\n{out}");
    }
    assert!(!out.contains("LEAK"), "{out}");
}

/// Stands in for the host's egress proxy on `<root>/egress.sock`: answers
/// each connection's first line with `proxy-saw <line>`.
fn fake_proxy(root: &Path) -> std::thread::JoinHandle<()> {
    use std::io::{BufRead, Write};
    let l = std::os::unix::net::UnixListener::bind(root.join("egress.sock")).unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut first = String::new();
            let mut rd = std::io::BufReader::new(conn.try_clone().unwrap());
            if rd.read_line(&mut first).is_ok() {
                let _ = write!(conn, "proxy-saw {first}");
            }
        }
    })
}

/// Says `hello from $1` to the egress listener and prints the answer.
const EGRESS: &str = r#"
import socket, sys
s = socket.create_connection(("127.0.0.1", 312), timeout=10)
s.sendall(("hello from %s\n" % sys.argv[1]).encode())
print("egress=" + s.makefile().readline().strip())
"#;

/// The process ids of the agent: the child of the `unshare` the test ran.
fn agent_pid(c: &Confined) -> u32 {
    let id = c.a.child.id();
    let kids = std::fs::read_to_string(format!("/proc/{id}/task/{id}/children")).unwrap();
    kids.split_whitespace().next().unwrap().parse().unwrap()
}

/// Brings `lo` up in the agent's network namespace (SIOCGIFFLAGS, then
/// SIOCSIFFLAGS with IFF_UP).
fn agent_lo_up(c: &Confined) {
    const UP: &str = r#"
import fcntl, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, struct.pack("16sh", b"lo", 0))[:18])[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 1))
"#;
    let st = Command::new("nsenter")
        .arg("-t")
        .arg(agent_pid(c).to_string())
        .args(["-n", "/usr/bin/python3", "-c", UP])
        .status()
        .unwrap();
    assert!(st.success());
}

/// How many network namespaces the agent holds by descriptor.
fn held_netns(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|t| t.to_string_lossy().starts_with("net:["))
        .count()
}

/// Each session's own loopback has the egress listener, served by the
/// agent's forwarder; ending a session lets its namespaces go, and its
/// next process gets new ones (with a listener again).
#[test]
#[cfg_attr(
    not(all(has_root, has_unshare)),
    ignore = "needs root and util-linux unshare"
)]
fn egress_reaches_the_forwarder_from_each_session() {
    if skip_unless_able("egress_reaches_the_forwarder_from_each_session") {
        return;
    }
    if !common::require(
        Path::new("/usr/bin/python3").exists(),
        "egress_reaches_the_forwarder_from_each_session",
        "needs /usr/bin/python3",
    ) {
        return;
    }
    let mut c = Confined::start();
    c.user(1, "a");
    c.user(2, "b");
    let _proxy = fake_proxy(&c.root);
    let script = format!("python3 -c '{EGRESS}' $0; echo net=$(readlink /proc/self/ns/net)");
    let send = |c: &mut Confined, id: &str, session: &str| {
        c.a.send(
            &HostMsg::Spawn {
                id: id.into(),
                command: "/bin/sh".into(),
                args: vec!["-c".into(), script.clone(), session.into()],
                env: vec![("PATH".into(), "/usr/bin:/bin".into())],
                cwd: None,
                session: Some(session.into()),
            },
            &[],
        );
        let out = c.read_until(id, "\u{0}never");
        let want = format!("hello from {session}");
        assert_eq!(line(&out, "egress="), format!("proxy-saw {want}"), "{out}");
        line(&out, "net=").to_string()
    };
    let net_a = send(&mut c, "ea", "a");
    let net_b = send(&mut c, "eb", "b");
    assert_ne!(net_a, net_b);
    let agent = agent_pid(&c);
    assert_eq!(held_netns(agent), 2, "one per session");

    c.a.send(
        &HostMsg::EndSession {
            req: 5,
            session: "a".into(),
        },
        &[],
    );
    assert_eq!(c.answer(5).0, GuestMsg::Done { req: 5 });
    assert_eq!(held_netns(agent), 1, "a's namespaces let go");
    let net_a2 = send(&mut c, "ea2", "a");
    assert_ne!(net_a2, net_a, "a new pair for the session's next process");
    assert_eq!(held_netns(agent), 2);
}
