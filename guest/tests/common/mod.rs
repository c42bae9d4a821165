//! The test host's end of the agent protocol, shared by the test files.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

// Not every test file checks prerequisites.
#[allow(dead_code)]
#[path = "../../../prerequisites/require.rs"]
mod prerequisite;
#[allow(unused_imports)]
pub use prerequisite::require;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command};
use std::time::Duration;

use cowork_guest::wire::{self, GuestMsg, HostMsg};

pub struct Agent {
    pub child: Child,
    pub s: UnixStream,
    pub _tmp: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    /// The agent run by hand (nothing confined), its sessions in a new
    /// temporary directory.
    #[allow(dead_code)] // not every test file uses every helper
    pub fn start() -> Agent {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("sessions")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cowork-guest"));
        cmd.arg("--sessions-root").arg(tmp.path().join("sessions"));
        Agent::start_with(cmd, tmp)
    }

    /// Runs `cmd` (the agent, or something that runs it, with its own
    /// arguments) adding `--unix <tmp>/host.sock`, and takes its hello.
    pub fn start_with(mut cmd: Command, tmp: tempfile::TempDir) -> Agent {
        let path = tmp.path().join("host.sock");
        let l = UnixListener::bind(&path).unwrap();
        let child = cmd.arg("--unix").arg(&path).spawn().unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut a = Agent {
            child,
            s,
            _tmp: tmp,
        };
        match a.recv().0 {
            GuestMsg::Hello { version, agent, .. } => {
                assert_eq!(version, wire::PROTOCOL_VERSION);
                assert!(agent.starts_with("cowork-guest"));
            }
            other => panic!("expected hello, got {other:?}"),
        }
        a
    }

    #[allow(dead_code)]
    pub fn send(&mut self, m: &HostMsg, payload: &[u8]) {
        self.s
            .write_all(&wire::encode(m, payload).unwrap())
            .unwrap();
    }

    #[allow(dead_code)]
    pub fn recv(&mut self) -> (GuestMsg, Vec<u8>) {
        self.try_recv().expect("agent closed the connection")
    }

    #[allow(dead_code)]
    pub fn try_recv(&mut self) -> Option<(GuestMsg, Vec<u8>)> {
        let mut len = [0u8; 4];
        self.s.read_exact(&mut len).ok()?;
        let n = wire::check_len(u32::from_be_bytes(len)).unwrap();
        let mut body = vec![0u8; n];
        self.s.read_exact(&mut body).unwrap();
        let (m, p): (GuestMsg, &[u8]) = wire::decode(&body).unwrap();
        Some((m, p.to_vec()))
    }

    #[allow(dead_code)]
    pub fn spawn(&mut self, id: &str, cmd: &str, args: &[&str]) {
        self.send(
            &HostMsg::Spawn {
                id: id.into(),
                command: cmd.into(),
                args: args.iter().map(|s| s.to_string()).collect(),
                env: vec![("PATH".into(), "/usr/bin:/bin".into())],
                cwd: None,
                session: None,
            },
            &[],
        );
    }

    /// stdout, stderr and (code, signal) of `id`, checking nothing of it
    /// comes after its exit.
    #[allow(dead_code)]
    pub fn collect(&mut self, id: &str) -> (Vec<u8>, Vec<u8>, Option<i32>, Option<i32>) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            match self.recv() {
                (GuestMsg::Stdout { id: i }, p) if i == id => out.extend(p),
                (GuestMsg::Stderr { id: i }, p) if i == id => err.extend(p),
                (
                    GuestMsg::Exit {
                        id: i,
                        code,
                        signal,
                        ..
                    },
                    _,
                ) if i == id => return (out, err, code, signal),
                _ => {}
            }
        }
    }
}
