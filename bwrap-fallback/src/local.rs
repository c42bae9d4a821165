//! The backends whose sessions are processes on this machine: `host` (no
//! isolation; see [`crate::host`]) and `bwrap` (a bubblewrap sandbox; see
//! [`crate::bwrap`]). Everything but the launch itself is shared: the
//! session table and mounts, the SDK, the token, session data, egress
//! reachability.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use cowork_backend::api::*;
use cowork_backend::paths::{canonicalize_lenient, resolve_host_path, HostMount, SessionPaths};
use cowork_backend::resolve::open_mount_source;
use cowork_backend::session_data::{validate_name, SessionStore};
use cowork_backend::{BackendError, Event, EventBus, NetworkStatus, Result};
use nix::sys::signal::Signal;

use crate::bwrap::BwrapSetup;
use crate::process::ProcessTable;

/// readFile returns at most this much: the reply must fit in one frame.
pub const READ_FILE_LIMIT: u64 = 4 * 1024 * 1024;
const DEFAULT_PROFILE: &str = "default";

/// Where a process backend keeps things on the host.
#[derive(Debug, Clone)]
pub struct HostDirs {
    pub home: PathBuf,
    /// The helper's data directory (`$XDG_DATA_HOME/cowork-microvm`).
    pub data: PathBuf,
    /// Whether the protected paths of read-write mounts stay read-only.
    pub protection: cowork_backend::protected::Protection,
}

#[derive(Default)]
struct Session {
    mounts: Vec<(String, HostMount)>,
}

struct State {
    running: bool,
    profile: String,
    sessions: HashMap<String, Session>,
    sdk: Option<PathBuf>,
    token: Option<String>,
}

/// What stands between a session and the machine.
#[derive(Clone)]
pub enum Isolation {
    Host,
    Bwrap(BwrapSetup),
}

pub struct LocalBackend {
    isolation: Isolation,
    dirs: HostDirs,
    bus: EventBus,
    procs: ProcessTable,
    state: Mutex<State>,
}

impl LocalBackend {
    pub fn new(isolation: Isolation, dirs: HostDirs, bus: EventBus) -> Self {
        Self {
            isolation,
            procs: ProcessTable::new(bus.clone()),
            dirs,
            bus,
            state: Mutex::new(State {
                running: false,
                profile: DEFAULT_PROFILE.into(),
                sessions: HashMap::new(),
                sdk: None,
                token: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn store(&self) -> SessionStore {
        let profile = self.lock().profile.clone();
        SessionStore::new(
            self.dirs
                .data
                .join("profiles")
                .join(profile)
                .join("sessions"),
        )
    }

    fn resolve_mount(&self, name: &str, path: &str) -> Result<PathBuf> {
        validate_name("mount name", name)?;
        let source = resolve_host_path(&self.dirs.home, path)?;
        repair_self_symlink(&source);
        // Checked, created when missing and opened with no symlink on the
        // way; a launch opens it the same way again (bwrap/binds.rs), so a
        // link planted in between is refused there too.
        let (canon, _fd) = open_mount_source(&self.dirs.home, &source, true)?;
        Ok(canon)
    }

    /// Resolves `additionalMounts`, replacing same-named shares of the
    /// session; refused ones are reported, not fatal.
    fn merge_mounts(
        &self,
        session: &str,
        requested: &[(String, MountSpec)],
    ) -> (Vec<(String, HostMount)>, Vec<FailedMount>) {
        let mut failed = Vec::new();
        let mut fresh = Vec::new();
        for (name, spec) in requested {
            match self.resolve_mount(name, &spec.path) {
                Ok(host) => fresh.push((
                    name.clone(),
                    HostMount {
                        host,
                        mode: spec.mode.unwrap_or_default(),
                    },
                )),
                Err(e) => failed.push(FailedMount {
                    name: name.clone(),
                    path: spec.path.clone(),
                    reason: e.to_string(),
                }),
            }
        }
        let mut st = self.lock();
        let sess = st.sessions.entry(session.to_string()).or_default();
        for (name, m) in fresh {
            sess.mounts.retain(|(n, _)| *n != name);
            sess.mounts.push((name, m));
        }
        (sess.mounts.clone(), failed)
    }

    /// The host file readFile may read: inside the home directory or one of
    /// the session's shares, after symlinks.
    fn readable_path(&self, session: &str, path: &str) -> Result<PathBuf> {
        // Copied out so the path resolution below (file system I/O) runs
        // without the state lock.
        let mounts = self
            .lock()
            .sessions
            .get(session)
            .map(|s| s.mounts.clone())
            .unwrap_or_default();
        let dir = self.store().dir(session)?;
        let sp = SessionPaths {
            name: session,
            dir: &dir,
            mounts: &mounts,
        };
        let host = match sp.translate(path)? {
            Some(p) => p,
            None if path.starts_with('/') => PathBuf::from(path),
            None => resolve_host_path(&self.dirs.home, path)?,
        };
        let canon = canonicalize_lenient(&host)
            .map_err(|e| BackendError::io(format!("cannot resolve {path}"), e))?;
        let home = canonicalize_lenient(&self.dirs.home)
            .map_err(|e| BackendError::io("cannot resolve the home directory", e))?;
        let allowed = canon.starts_with(&home)
            || canon.starts_with(&dir)
            || mounts.iter().any(|(_, m)| canon.starts_with(&m.host));
        if !allowed {
            return Err(BackendError::PathNotAllowed {
                path: path.to_string(),
                reason: "readFile reads only the home directory and the session's shares".into(),
            });
        }
        Ok(canon)
    }
}

/// A mount source that is a symlink to itself (left behind by an earlier
/// failed set-up) can never resolve: remove it so the directory can be made.
fn repair_self_symlink(p: &Path) {
    let Ok(target) = std::fs::read_link(p) else {
        return;
    };
    let resolved = match p.parent() {
        Some(dir) if target.is_relative() => dir.join(&target),
        _ => target,
    };
    if resolved == p {
        tracing::info!("removing self-referential symlink {}", p.display());
        let _ = std::fs::remove_file(p);
    }
}

fn check_id(what: &'static str, v: &str) -> Result<()> {
    if v.is_empty() || v.len() > 256 {
        return Err(BackendError::invalid(what, "must be 1-256 characters"));
    }
    Ok(())
}

#[async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        match self.isolation {
            Isolation::Host => "host",
            Isolation::Bwrap(_) => "bwrap",
        }
    }

    async fn configure(&self, config: &VmConfig) -> Result<()> {
        if let Some(name) = &config.user_data_name {
            validate_name("userDataName", name)?;
            self.lock().profile = name.clone();
        }
        Ok(())
    }

    async fn create_vm(&self, _request: CreateRequest) -> Result<()> {
        // Nothing to create: the host is the environment.
        Ok(())
    }

    async fn start(&self, request: StartRequest) -> Result<()> {
        if let Isolation::Bwrap(_) = self.isolation {
            // bwrap may have become unusable since the helper started.
            let probe = tokio::task::spawn_blocking(crate::bwrap::probe::probe)
                .await
                .map_err(|e| BackendError::invalid("bwrap probe", e.to_string()))?;
            if !probe.usable {
                let fix = probe
                    .fix
                    .map(|f| format!(" (fix: {f})"))
                    .unwrap_or_default();
                return Err(BackendError::Unavailable {
                    backend: "bwrap".into(),
                    reason: format!("{}{fix}", probe.detail),
                });
            }
        }
        let was = std::mem::replace(&mut self.lock().running, true);
        if !was {
            if let Isolation::Host = self.isolation {
                tracing::warn!("host backend: sessions run WITHOUT isolation and with unrestricted network access");
            }
            self.bus
                .publish(&Event::NetworkStatus {
                    status: NetworkStatus::Connected,
                })
                .await;
        }
        match request.api_probe_url {
            Some(url) => {
                let bus = self.bus.clone();
                tokio::spawn(async move {
                    let ok = cowork_egress::probe::api_reachable(&url).await;
                    let status = if ok { "reachable" } else { "unreachable" };
                    tracing::info!("API probe: {status}");
                    bus.publish(&Event::ApiReachability {
                        status: status.into(),
                    })
                    .await;
                });
            }
            // The app stays on "starting" until it hears a reachability;
            // with nothing to probe, the honest answer is "unknown".
            None => {
                self.bus
                    .publish(&Event::ApiReachability {
                        status: "unknown".into(),
                    })
                    .await
            }
        }
        Ok(())
    }

    async fn stop(&self) -> Result<()> {
        self.procs.stop_all().await;
        let was = std::mem::replace(&mut self.lock().running, false);
        if was {
            self.bus
                .publish(&Event::NetworkStatus {
                    status: NetworkStatus::Disconnected,
                })
                .await;
        }
        Ok(())
    }

    fn is_running(&self) -> bool {
        self.lock().running
    }

    fn is_guest_connected(&self) -> bool {
        self.lock().running
    }

    async fn spawn(&self, req: SpawnRequest) -> Result<SpawnResult> {
        check_id("id", &req.id)?;
        validate_name("session name", &req.name)?;
        if req.command.is_empty() {
            return Err(BackendError::invalid("command", "must not be empty"));
        }
        if !self.is_running() {
            return Err(BackendError::NotRunning);
        }
        let (mounts, failed_mounts) = self.merge_mounts(&req.name, &req.additional_mounts);
        let dir = self.store().ensure(&req.name)?;
        let (token, sdk) = {
            let st = self.lock();
            (
                req.oauth_token.clone().or_else(|| st.token.clone()),
                st.sdk.clone(),
            )
        };
        // The helper's whole environment. The host backend passes it all on:
        // its process runs as the user with the user's files and network
        // anyway, and behaves like a command from the user's shell. The
        // bwrap launch keeps only a short list of it (bwrap/env.rs).
        let base: Vec<(String, String)> = std::env::vars().collect();
        // Building a launch reads the disk (the shares' protected paths, up
        // to 50,000 entries each; the user's config): off the async
        // threads, so other sessions' output keeps flowing meanwhile.
        let (isolation, dirs) = (self.isolation.clone(), self.dirs.clone());
        let (launch, req) = tokio::task::spawn_blocking(move || {
            let sp = SessionPaths {
                name: &req.name,
                dir: &dir,
                mounts: &mounts,
            };
            let launch = match &isolation {
                Isolation::Host => {
                    crate::host::launch(&sp, &req, base, token.as_deref(), sdk.as_deref())
                }
                Isolation::Bwrap(setup) => {
                    setup.launch(&sp, &req, &dirs, base, token.as_deref(), sdk.as_deref())
                }
            };
            launch.map(|l| (l, req))
        })
        .await
        .map_err(|e| BackendError::invalid("spawn", format!("preparing the launch: {e}")))??;
        // stopVM may have run while the launch was built.
        if !self.is_running() {
            return Err(BackendError::NotRunning);
        }
        tracing::info!(process = %req.id, session = %req.name, backend = self.name(), command = %req.command, "spawn");
        self.procs.spawn(launch)?;
        Ok(SpawnResult { failed_mounts })
    }

    async fn kill(&self, id: &str, signal: Signal) -> Result<()> {
        self.procs.kill(id, signal)
    }

    async fn write_stdin(&self, id: &str, data: String, eof: bool) -> Result<()> {
        self.procs.write_stdin(id, data, eof).await
    }

    fn process_status(&self, id: &str) -> Result<ProcessStatus> {
        self.procs.status(id)
    }

    async fn read_file(&self, session: &str, path: &str) -> Result<String> {
        validate_name("processName", session)?;
        let file = self.readable_path(session, path)?;
        tokio::task::spawn_blocking(move || read_limited(&file))
            .await
            .map_err(|e| BackendError::invalid("readFile", e.to_string()))?
    }

    async fn mount_path(&self, req: MountPathRequest) -> Result<MountPathResult> {
        let session = match self.procs.session_of(&req.process_id) {
            Some(s) => s,
            None if self.lock().sessions.contains_key(&req.process_id) => req.process_id.clone(),
            None => return Err(BackendError::NoSuchProcess(req.process_id)),
        };
        let spec = MountSpec {
            path: req.subpath.clone(),
            mode: req.mode,
        };
        let (_, failed) = self.merge_mounts(&session, &[(req.mount_name.clone(), spec)]);
        if let Some(f) = failed.into_iter().next() {
            return Err(BackendError::PathNotAllowed {
                path: f.path,
                reason: f.reason,
            });
        }
        Ok(MountPathResult {
            guest_path: format!("/sessions/{session}/mnt/{}", req.mount_name),
        })
    }

    async fn install_sdk(&self, sdk_subpath: &str, version: &str) -> Result<()> {
        validate_name("version", version)?;
        let dir = resolve_host_path(&self.dirs.home, sdk_subpath)?;
        let bin = cowork_backend::agent::sdk_binary(&dir.join(version))?;
        tracing::info!(sdk = %bin.display(), "SDK installed");
        self.lock().sdk = Some(bin);
        Ok(())
    }

    fn add_oauth_token(&self, token: String) {
        self.lock().token = Some(token);
    }

    async fn sessions_disk_info(&self, low_water_bytes: u64) -> Result<DiskInfo> {
        let (store, active) = (self.store(), self.procs.active_sessions());
        blocking(move || store.disk_info(low_water_bytes, &active)).await
    }

    async fn delete_session_dirs(&self, names: Vec<String>) -> Result<DeleteResult> {
        let (store, active) = (self.store(), self.procs.active_sessions());
        let res = blocking(move || Ok(store.delete(&names, &active))).await?;
        let mut st = self.lock();
        for n in &res.deleted {
            st.sessions.remove(n);
        }
        Ok(res)
    }

    async fn prune_session_caches(&self, req: PruneRequest) -> Result<PruneResult> {
        let (store, active) = (self.store(), self.procs.active_sessions());
        blocking(move || store.prune(&req, &active)).await
    }

    async fn send_guest_response(
        &self,
        id: &str,
        _result_json: Option<String>,
        _error: Option<String>,
    ) -> Result<()> {
        // Host sessions have no guest to ask the app anything.
        Err(BackendError::NoPendingRequest(id.to_string()))
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackendError::invalid("task", e.to_string()))?
}

fn read_limited(path: &Path) -> Result<String> {
    use std::io::Read;
    let shown = || path.display().to_string();
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: a FIFO planted by a session must not park a thread forever.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(|e| BackendError::io(format!("cannot open {}", shown()), e))?;
    let meta = f.metadata().map_err(|e| BackendError::io(shown(), e))?;
    if !meta.is_file() {
        return Err(BackendError::invalid(
            "readFile",
            format!("{} is not a regular file", shown()),
        ));
    }
    if meta.len() > READ_FILE_LIMIT {
        return Err(BackendError::FileTooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
            limit: READ_FILE_LIMIT,
        });
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    f.take(READ_FILE_LIMIT + 1)
        .read_to_end(&mut buf)
        .map_err(|e| BackendError::io(format!("cannot read {}", shown()), e))?;
    if buf.len() as u64 > READ_FILE_LIMIT {
        return Err(BackendError::FileTooLarge {
            path: path.to_path_buf(),
            size: buf.len() as u64,
            limit: READ_FILE_LIMIT,
        });
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
