//! Drives the built `cowork-microvm` binary over its socket, with a client
//! written independently of the helper's own (plain blocking std I/O), so a
//! bug in one is not mirrored in the other.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_cowork-microvm");
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub struct Helper {
    pub child: Child,
    pub tmp: tempfile::TempDir,
    pub home: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub data: PathBuf,
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn command(tmp: &Path) -> Command {
    let home = tmp.join("home");
    let mut c = Command::new(BIN);
    c.env("HOME", &home)
        .env("XDG_RUNTIME_DIR", tmp.join("run"))
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("COWORK_VM_LOG_FILE", tmp.join("helper.log"))
        .env("COWORK_VM_DATA_DIR", tmp.join("data"))
        .env("COWORK_MICROVM_BACKEND", "host")
        .env_remove("COWORK_VM_BACKEND")
        .env_remove("COWORK_VM_DEBUG")
        .stdin(Stdio::null());
    c
}

impl Helper {
    pub fn start() -> Helper {
        Self::start_with(|_| {})
    }

    pub fn start_with(configure: impl FnOnce(&mut Command)) -> Helper {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let home = home.canonicalize().unwrap();
        let socket = tmp.path().join("run/claude-cowork-vm.sock");
        let mut cmd = command(tmp.path());
        cmd.arg("-socket")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        configure(&mut cmd);
        let child = cmd.spawn().unwrap();
        let h = Helper {
            child,
            log: tmp.path().join("helper.log"),
            data: tmp.path().join("data"),
            home,
            socket,
            tmp,
        };
        h.wait_listening();
        h
    }

    pub fn wait_listening(&self) {
        let start = Instant::now();
        while UnixStream::connect(&self.socket).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "helper never listened"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn conn(&self) -> Conn {
        Conn::new(UnixStream::connect(&self.socket).unwrap())
    }

    /// A one-shot request on its own connection.
    pub fn one_shot(&self, method: &str, params: Value) -> Value {
        let mut c = self.conn();
        c.send(&json!({"method": method, "params": params}));
        c.recv().expect("reply")
    }

    /// A pipe that has been configured and a started session environment.
    pub fn started(&self) -> Pipe {
        let p = Pipe::new(self.conn());
        p.ok(
            "configure",
            json!({"userDataName": "test", "userDataRoot": "/x", "sessionOnly": true}),
        );
        p.ok("startVM", json!({}));
        p
    }

    pub fn subscribe(&self) -> Events {
        let mut c = self.conn();
        c.send(&json!({"method": "subscribeEvents", "params": {"userDataName": "t", "userDataRoot": "/x"}}));
        assert_eq!(c.recv().unwrap(), json!({"success": true}));
        Events { conn: c }
    }

    /// Still answering a fresh connection.
    pub fn assert_alive(&self) {
        let r = self.one_shot("isRunning", json!({}));
        assert_eq!(r["success"], true, "helper stopped serving: {r}");
    }

    pub fn child_alive(&self) -> bool {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), None).is_ok()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.home.join(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

pub struct Conn {
    pub s: UnixStream,
}

impl Conn {
    pub fn new(s: UnixStream) -> Conn {
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        Conn { s }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    pub fn send_body(&mut self, body: &[u8]) {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        self.send_raw(&f);
    }

    pub fn send(&mut self, v: &Value) {
        self.send_body(&serde_json::to_vec(v).unwrap());
    }

    /// The next frame, or None when the helper closed the connection.
    pub fn recv(&mut self) -> Option<Value> {
        let mut len = [0u8; 4];
        self.s.read_exact(&mut len).ok()?;
        let n = u32::from_be_bytes(len) as usize;
        assert!(n <= 10 * 1024 * 1024, "helper sent an oversized frame");
        let mut body = vec![0u8; n];
        self.s.read_exact(&mut body).unwrap();
        Some(serde_json::from_slice(&body).expect("helper sent invalid JSON"))
    }

    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

/// A persistent pipe with numbered requests.
pub struct Pipe {
    pub conn: std::sync::Mutex<Conn>,
    next: std::sync::atomic::AtomicU64,
}

impl Pipe {
    pub fn new(conn: Conn) -> Pipe {
        Pipe {
            conn: std::sync::Mutex::new(conn),
            next: 1.into(),
        }
    }

    pub fn send(&self, method: &str, params: Value) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.conn
            .lock()
            .unwrap()
            .send(&json!({"method": method, "id": id, "params": params}));
        id
    }

    /// Calls and returns the whole reply (replies on a pipe arrive in order
    /// here because we wait for each).
    pub fn call(&self, method: &str, params: Value) -> Value {
        let id = self.send(method, params);
        let r = self.conn.lock().unwrap().recv().expect("reply");
        assert_eq!(r["id"], id, "reply to another request: {r}");
        r
    }

    pub fn ok(&self, method: &str, params: Value) -> Value {
        let r = self.call(method, params.clone());
        assert_eq!(r["success"], true, "{method} {params} failed: {r}");
        r["result"].clone()
    }

    pub fn err(&self, method: &str, params: Value) -> String {
        let r = self.call(method, params.clone());
        assert_eq!(r["success"], false, "{method} {params} should fail: {r}");
        r["error"].as_str().unwrap().to_string()
    }
}

pub struct Events {
    pub conn: Conn,
}

/// What one process produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub exit: Value,
    /// Output events seen after the exit event (must stay 0).
    pub late: usize,
}

impl Events {
    pub fn next(&mut self) -> Value {
        self.conn.recv().expect("event stream closed")
    }

    /// Collects output of `id` until its exit event.
    pub fn until_exit(&mut self, id: &str) -> Outcome {
        let mut o = Outcome::default();
        loop {
            let e = self.next();
            if e["id"] != id {
                continue;
            }
            match e["type"].as_str().unwrap() {
                "stdout" => o.stdout += e["data"].as_str().unwrap(),
                "stderr" => o.stderr += e["data"].as_str().unwrap(),
                "exit" => {
                    o.exit = e;
                    return o;
                }
                _ => {}
            }
        }
    }
}

/// Waits (at most 20 s) until something accepts on `path`.
pub fn wait_for_socket(path: &Path) {
    let start = Instant::now();
    while UnixStream::connect(path).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nothing ever listened on {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn spawn_params(id: &str, session: &str, cmd: &str, args: &[&str]) -> Value {
    json!({"id": id, "name": session, "command": cmd, "args": args, "isResume": false})
}

pub fn sh(id: &str, script: &str) -> Value {
    spawn_params(id, "s1", "/bin/sh", &["-c", script])
}

pub fn is_root() -> bool {
    nix::unistd::getuid().is_root()
}

#[path = "../../prerequisites/require.rs"]
mod prerequisite;
// Not every test file checks prerequisites.
#[allow(unused_imports)]
pub use prerequisite::{in_ci, optional_part, require};

/// Process `pid`'s resident memory in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A stand-in for the Claude Code binary in `<home>/<subpath>/<version>/`:
/// prints how it was started (`$0`, each argument), which `claude` PATH
/// finds, whether it can write next to itself, and `$FAKE_ENV`.
pub fn fake_claude(home: &Path, subpath: &str, version: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = home.join(subpath).join(version);
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("claude");
    std::fs::write(
        &bin,
        "#!/bin/sh\necho \"0=$0\"\nfor a in \"$@\"; do echo \"arg=$a\"; done\n\
         echo \"path=$(command -v claude)\"\n\
         if touch \"${0%/*}/w\" 2>/dev/null; then echo sdk=rw; else echo sdk=ro; fi\n\
         echo \"env=${FAKE_ENV-unset}\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// The spawn the app sends for the agent.
pub fn agent_spawn(id: &str, session: &str, args: &[&str]) -> Value {
    spawn_params(id, session, "/usr/local/bin/claude", args)
}
