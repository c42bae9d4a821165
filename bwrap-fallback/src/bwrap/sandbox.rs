//! The bubblewrap command line for one session process, and the launch
//! that runs it. The layout matches the community daemon's sandbox
//! (backends.md), then goes further: no network but the egress proxy, no
//! IPC/UTS/cgroup sharing, no new user namespaces inside.

use std::ffi::{OsStr, OsString};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use cowork_backend::agent::{agent_binary, prepend_path};
use cowork_backend::paths::{parse_guest_path, GuestPlace, SessionPaths};
use cowork_backend::spawn_env::session_env;
use cowork_backend::{BackendError, Result, SpawnRequest};

use super::user_config;
use crate::local::HostDirs;
use crate::process::{Launch, SignalRoute};
use cowork_egress::listener::EgressListener;
use cowork_egress::Policy;

/// Where the helper binary (the sandbox's pid 1 when the small init is
/// missing, see init.rs) and the proxy socket appear inside the sandbox.
pub const INIT_PATH: &str = "/run/cowork/cowork-microvm";
pub const PROXY_SOCKET: &str = "/run/cowork/egress.sock";
/// The forwarder's address on the sandbox's own loopback.
pub const PROXY_LISTEN: &str = "127.0.0.1:3128";

/// Host facts a sandbox is built from, gathered once.
#[derive(Debug, Clone)]
pub struct BwrapSetup {
    pub bwrap: PathBuf,
    /// This binary: the small init is looked for beside it, and it is run
    /// inside as `sandbox-init` when that is missing.
    pub helper_exe: PathBuf,
    /// Private directory for the per-process proxy sockets.
    pub runtime_dir: PathBuf,
    pub disable_userns: bool,
}

static NEXT_SOCKET: AtomicU64 = AtomicU64::new(1);

/// Appends each argument, whatever path or string type it is.
macro_rules! push {
    ($v:expr, $($x:expr),+ $(,)?) => {{
        $( $v.push(OsString::from(AsRef::<OsStr>::as_ref(&$x))); )+
    }};
}

/// `/bin`, `/lib`, ... as the host has them: the same symlink on merged-usr,
/// a read-only bind otherwise.
fn system_dirs(a: &mut Vec<OsString>, disabled: &[PathBuf]) {
    for dir in ["/usr", "/etc"] {
        if !disabled.iter().any(|d| d == Path::new(dir)) {
            push!(a, "--ro-bind", dir, dir);
        }
    }
    for dir in ["/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"] {
        let p = Path::new(dir);
        if disabled.iter().any(|d| d == p) {
            continue;
        }
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(p) {
                    push!(a, "--symlink", target, dir);
                }
            }
            Ok(m) if m.is_dir() => push!(a, "--ro-bind", dir, dir),
            _ => {}
        }
    }
}

/// The directory holding resolv.conf's target, when that lives under /run
/// (systemd-resolved): /run is a fresh tmpfs in the sandbox.
fn resolv_dir() -> Option<PathBuf> {
    let target = std::fs::canonicalize("/etc/resolv.conf").ok()?;
    let dir = target.parent()?.to_path_buf();
    dir.starts_with("/run").then_some(dir)
}

/// One bind of a user-controlled path, already opened (backend::resolve):
/// bwrap mounts the descriptor, never the path, so nothing a session
/// changes in a shared folder after the check decides what is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdBind {
    /// A descriptor [`crate::process::Launch::pass_fds`] hands to bwrap.
    pub fd: RawFd,
    pub dest: PathBuf,
    pub ro: bool,
}

pub struct SandboxPlan<'a> {
    pub session: &'a str,
    pub home: &'a Path,
    /// In mount order: the SDK folder, the session's shares (each
    /// read-write one followed by its protected paths, read-only), the
    /// user's own binds.
    pub binds: &'a [FdBind],
    pub proxy_socket: &'a Path,
    pub status_file: &'a Path,
    pub cwd: &'a str,
    pub disabled: &'a [PathBuf],
    pub program: &'a str,
    pub args: &'a [String],
}

impl BwrapSetup {
    /// The full bwrap argument list for `plan`.
    pub fn args(&self, plan: &SandboxPlan) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::with_capacity(64);
        push!(
            a,
            "--unshare-user",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts"
        );
        push!(
            a,
            "--unshare-cgroup-try",
            "--die-with-parent",
            "--new-session",
            "--as-pid-1"
        );
        if self.disable_userns {
            push!(a, "--disable-userns");
        }
        push!(a, "--hostname", "cowork", "--tmpfs", "/");
        system_dirs(&mut a, plan.disabled);
        push!(a, "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/run");
        if let Some(dir) = resolv_dir() {
            push!(a, "--ro-bind", dir, dir);
        }
        // An empty home: the real one stays invisible.
        push!(a, "--dir", plan.home);
        push!(a, "--dir", format!("/sessions/{}/mnt", plan.session));
        // In order: bwrap applies binds as listed, so a protected path's
        // read-only bind lands on top of the share that holds it.
        for b in plan.binds {
            let flag = if b.ro { "--ro-bind-fd" } else { "--bind-fd" };
            push!(a, flag, b.fd.to_string(), b.dest);
        }
        let init = super::init::locate(&self.helper_exe);
        let init_command = init.command();
        let init_path = init_command.first().map_or(Path::new(INIT_PATH), Path::new);
        push!(a, "--ro-bind", init.host_path(), init_path);
        push!(a, "--bind", plan.proxy_socket, PROXY_SOCKET);
        push!(a, "--bind", plan.status_file, super::init::STATUS_PATH);
        push!(a, "--chdir", plan.cwd, "--");
        a.extend(init_command);
        push!(a, "--proxy", PROXY_SOCKET, "--listen", PROXY_LISTEN, "--");
        push!(a, plan.program);
        a.extend(plan.args.iter().map(OsString::from));
        a
    }

    /// The guest-side working directory: a guest path as given (it exists
    /// in the sandbox), a session root meaning its working mount.
    fn cwd(sp: &SessionPaths, cwd: Option<&str>) -> Result<String> {
        let root = || match sp.working_mount() {
            Some((name, _)) => format!("/sessions/{}/mnt/{name}", sp.name),
            None => format!("/sessions/{}", sp.name),
        };
        let Some(c) = cwd.filter(|c| !c.is_empty()) else {
            return Ok(root());
        };
        let Some(g) = parse_guest_path(c) else {
            return Err(BackendError::PathNotAllowed {
                path: c.to_string(),
                reason: "the sandbox sees only /sessions/<name>/...: give a guest path".into(),
            });
        };
        // Validates: the mount exists and the path stays inside it.
        sp.translate(c)?;
        Ok(match g.place {
            GuestPlace::SessionRoot => root(),
            _ => format!("/{}", c.trim_start_matches('/')),
        })
    }

    /// The bwrap command for one process. `base` is the helper's
    /// environment: only what [`super::env::passes`] survives of it.
    pub fn launch(
        &self,
        sp: &SessionPaths,
        req: &SpawnRequest,
        dirs: &HostDirs,
        base: Vec<(String, String)>,
        token: Option<&str>,
        sdk: Option<&Path>,
    ) -> Result<Launch> {
        let home = dirs.home.as_path();
        let cwd = Self::cwd(sp, req.cwd.as_deref())?;
        // The agent runs by its real path: the SDK folder is bound read-only
        // at that same path, so the binary finds itself (/proc/self/exe),
        // and the folder goes first on PATH for a `claude` looked up by name.
        let agent = agent_binary(&req.command, sdk)?;
        let (policy, rejected) = Policy::new(req.allowed_domains.as_deref().unwrap_or(&[]));
        if !rejected.is_empty() {
            tracing::warn!(session = %req.name, "allowedDomains entries ignored: {}", rejected.join(", "));
        }
        super::runtime_dir::ensure(&self.runtime_dir)?;
        let n = NEXT_SOCKET.fetch_add(1, Ordering::Relaxed);
        let sock = self.runtime_dir.join(format!("p{n}.sock"));
        let status_file = self.runtime_dir.join(format!("p{n}.status"));
        std::fs::write(&status_file, "")
            .map_err(|e| BackendError::io(format!("cannot create {}", status_file.display()), e))?;
        let listener = EgressListener::bind(&sock, policy, req.name.clone()).map_err(|e| {
            BackendError::io(
                format!("cannot bind the egress proxy at {}", sock.display()),
                e,
            )
        })?;
        let (user, problems) = user_config::load(home);
        for p in problems {
            tracing::warn!("{p}");
        }
        let program = match agent {
            Some(bin) => bin.to_string_lossy().into_owned(),
            None => req.command.clone(),
        };
        let sdk_dir = sdk.and_then(Path::parent);
        let binds =
            super::binds::open(home, &req.name, sp.mounts, sdk_dir, &user, dirs.protection)?;
        let args = self.args(&SandboxPlan {
            session: &req.name,
            home,
            binds: &binds.binds,
            proxy_socket: &sock,
            status_file: &status_file,
            cwd: &cwd,
            disabled: &user.disabled,
            program: &program,
            args: &req.args,
        });
        let proxy = format!("http://{PROXY_LISTEN}");
        // Only an explicit list of the helper's variables: its environment
        // may hold the user's credentials (env.rs).
        let mut base = super::env::inherited(base);
        base.extend([
            ("HOME".into(), home.to_string_lossy().into_owned()),
            ("TMPDIR".into(), "/tmp".into()),
        ]);
        for k in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            base.push((k.into(), proxy.clone()));
        }
        base.push(("NO_PROXY".into(), "localhost,127.0.0.1".into()));
        base.push(("no_proxy".into(), "localhost,127.0.0.1".into()));
        if let Some(dir) = agent.and_then(Path::parent) {
            prepend_path(&mut base, dir);
        }
        let env = session_env(base, &req.env, token);
        Ok(Launch {
            id: req.id.clone(),
            session: req.name.clone(),
            program: self.bwrap.clone(),
            args,
            env: env.into_iter().collect(),
            cwd: PathBuf::from("/"),
            signals: SignalRoute::SandboxInit,
            exit_record: Some(status_file),
            guard: Some(Box::new(listener)),
            pass_fds: binds.fds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> BwrapSetup {
        BwrapSetup {
            bwrap: "/usr/bin/bwrap".into(),
            helper_exe: "/opt/cowork-microvm".into(),
            runtime_dir: "/run/user/1/c".into(),
            disable_userns: true,
        }
    }

    fn strs(v: &[OsString]) -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    fn has(args: &[String], seq: &[&str]) -> bool {
        args.windows(seq.len()).any(|w| w == seq)
    }

    #[test]
    fn layout_matches_the_protocol() {
        let binds = [
            FdBind {
                fd: 7,
                dest: "/home/a/.sdk/1.0".into(),
                ro: true,
            },
            FdBind {
                fd: 8,
                dest: "/sessions/s1/mnt/proj".into(),
                ro: false,
            },
            FdBind {
                fd: 9,
                dest: "/sessions/s1/mnt/proj/.bashrc".into(),
                ro: true,
            },
            FdBind {
                fd: 10,
                dest: "/sessions/s1/mnt/docs".into(),
                ro: true,
            },
        ];
        let a = strs(&setup().args(&SandboxPlan {
            session: "s1",
            home: Path::new("/home/a"),
            binds: &binds,
            proxy_socket: Path::new("/run/user/1/c/p1.sock"),
            status_file: Path::new("/run/user/1/c/p1.status"),
            cwd: "/sessions/s1/mnt/proj",
            disabled: &["/etc".into()],
            program: "claude",
            args: &["-p".into(), "hi".into()],
        }));
        for seq in [
            &["--unshare-net"][..],
            &["--disable-userns"],
            &["--die-with-parent"],
            &["--new-session"],
            &["--tmpfs", "/"],
            &["--ro-bind", "/usr", "/usr"],
            &["--dir", "/home/a"],
            &["--ro-bind-fd", "7", "/home/a/.sdk/1.0"],
            // The protected path's bind comes right after its share's.
            &[
                "--bind-fd",
                "8",
                "/sessions/s1/mnt/proj",
                "--ro-bind-fd",
                "9",
                "/sessions/s1/mnt/proj/.bashrc",
            ],
            &["--ro-bind-fd", "10", "/sessions/s1/mnt/docs"],
            &["--chdir", "/sessions/s1/mnt/proj"],
            &["--bind", "/run/user/1/c/p1.sock", PROXY_SOCKET],
            &[
                "sandbox-init",
                "--proxy",
                PROXY_SOCKET,
                "--listen",
                PROXY_LISTEN,
                "--",
                "claude",
                "-p",
                "hi",
            ],
        ] {
            assert!(has(&a, seq), "missing {seq:?} in {a:?}");
        }
        assert!(
            !has(&a, &["--ro-bind", "/etc", "/etc"]),
            "disabled default bind"
        );
        assert!(
            !a.iter().any(|x| x.starts_with("/home/a/proj")),
            "a share goes by descriptor, never by path: {a:?}"
        );
    }
}
