//! The agent: serves the host's requests on one connection. It runs
//! processes (each in its own process group), streams their output as raw
//! bytes in order and then their exit, reads files, mounts shares (in the
//! VM), and answers pings. Everything from the host is untrusted: a frame
//! that cannot be decoded gets an `Error` reply, a broken stream ends the
//! connection, and nothing panics.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::stdin_queue::{Refused, StdinQueue, STDIN_LIMIT};
use crate::wire::{self, GuestMsg, HostMsg, PROTOCOL_VERSION};

const CHUNK: usize = 64 * 1024;
/// Frames queued for the host; producers wait when it is full.
const OUT_QUEUE: usize = 64;
const MAX_PROCESSES: usize = 1024;
/// After a process exits, a pipe a grandchild keeps open but silent this
/// long is abandoned so the exit is not held back.
const IDLE_AFTER_EXIT: Duration = Duration::from_millis(500);
/// How long a request doing file system work may take before it fails.
const SLOW_REQUEST: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Config {
    /// Upper bound on `readFile`, whatever the host asks.
    pub read_file_limit: u64,
    /// Running as the VM's agent: mounts and per-process cgroups are ours.
    pub in_vm: bool,
    /// Where session directories live (the session disk in the VM).
    pub sessions_root: std::path::PathBuf,
    /// Confine each process to its session (its own user and view of the
    /// file system; see [`crate::confine`]): always in the VM, where a
    /// spawn must then name its session. `None` run by hand.
    pub confine: Option<crate::confine::Layout>,
    /// Each session's network and IPC namespaces and egress listener
    /// (shared by every connection of the agent); with `confine`.
    pub namespaces: Option<Arc<crate::session_ns::Registry>>,
    /// The per-boot token from the kernel command line, said in the hello
    /// so the host knows it is the agent; empty run by hand.
    pub token: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The host asked for a shutdown.
    Shutdown,
    /// The connection ended or broke.
    Disconnected,
}

type Out = mpsc::Sender<Vec<u8>>;

async fn send(out: &Out, msg: &GuestMsg, payload: &[u8]) {
    match wire::encode(msg, payload) {
        Ok(f) => {
            let _ = out.send(f).await;
        }
        Err(e) => {
            let _ = wire::encode(
                &GuestMsg::Error {
                    message: e.to_string(),
                },
                &[],
            )
            .map(|f| out.try_send(f));
        }
    }
}

async fn send_error(out: &Out, message: impl Into<String>) {
    send(
        out,
        &GuestMsg::Error {
            message: message.into(),
        },
        &[],
    )
    .await;
}

struct Proc {
    pgid: Pid,
    stdin: Option<StdinQueue>,
    /// The session it was started for (`EndSession` ends it with it).
    session: Option<String>,
}

#[derive(Clone, Default)]
struct Procs(Arc<Mutex<HashMap<String, Proc>>>);

impl Procs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Proc>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kill_all(&self, sig: Signal) {
        for p in self.lock().values() {
            let _ = killpg(p.pgid, sig);
        }
    }

    /// Signals the process groups started for `session`; how many.
    fn kill_session(&self, session: &str, sig: Signal) -> usize {
        let table = self.lock();
        let mine = table
            .values()
            .filter(|p| p.session.as_deref() == Some(session));
        let mut n = 0;
        for p in mine {
            let _ = killpg(p.pgid, sig);
            n += 1;
        }
        n
    }

    fn count_session(&self, session: &str) -> usize {
        let table = self.lock();
        table
            .values()
            .filter(|p| p.session.as_deref() == Some(session))
            .count()
    }
}

/// Ends `session`: SIGKILL to the process groups the agent started for it
/// and (confined) to every process running as its user, until none is left
/// or [`session_end::END_WITHIN`] passes; then waits (within the same time)
/// for the records of those processes to go, as their supervisors report
/// their exits.
fn end_session(
    procs: &Procs,
    layout: Option<&crate::confine::Layout>,
    namespaces: Option<&crate::session_ns::Registry>,
    session: &str,
) -> Result<(), String> {
    use crate::session_end::{kill_uid, END_WITHIN};
    cowork_backend::session_data::validate_name("session", session).map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + END_WITHIN;
    procs.kill_session(session, Signal::SIGKILL);
    // Its namespaces and egress listener go whatever happens below: a
    // process that survived the kill keeps its namespaces alive itself,
    // and the session's next process gets new ones.
    if let Some(ns) = namespaces {
        ns.end(session);
    }
    if let Some(l) = layout {
        // No directory, no user: nothing can run as it (uids are never
        // given again, see confine).
        if let Some(uid) = crate::confine::existing_session_user(&l.sessions_root, session)? {
            kill_uid("/proc", uid, END_WITHIN)?;
        }
    }
    loop {
        // A group may have gained a member between the kill and its exit.
        if procs.kill_session(session, Signal::SIGKILL) == 0 {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            let n = procs.count_session(session);
            return Err(format!(
                "{n} process(es) of session {session:?} still running after {}s",
                END_WITHIN.as_secs_f32()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Serves one connection until the host asks for shutdown or goes away.
pub async fn serve<S>(stream: S, cfg: Config) -> End
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (out, mut rx) = mpsc::channel::<Vec<u8>>(OUT_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if wr.write_all(&f).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let hello = GuestMsg::Hello {
        version: PROTOCOL_VERSION,
        agent: format!("cowork-guest {}", env!("CARGO_PKG_VERSION")),
        token: cfg.token.clone(),
    };
    send(&out, &hello, &[]).await;
    let procs = Procs::default();
    let end = loop {
        let body = match wire::read_frame(&mut rd).await {
            Ok(Some(Ok(b))) => b,
            Ok(Some(Err(e))) => {
                // The stream's framing can no longer be trusted.
                send_error(&out, e.to_string()).await;
                break End::Disconnected;
            }
            Ok(None) | Err(_) => break End::Disconnected,
        };
        let (msg, payload) = match wire::decode::<HostMsg>(&body) {
            Ok(m) => m,
            Err(e) => {
                send_error(&out, e.to_string()).await;
                continue;
            }
        };
        if handle(msg, payload, &out, &procs, &cfg).await {
            break End::Shutdown;
        }
    };
    // Nobody is left to report to: end every process.
    procs.kill_all(Signal::SIGKILL);
    drop(out);
    let _ = writer.await;
    end
}

/// Handles one message; true when it was `Shutdown`.
async fn handle(msg: HostMsg, payload: &[u8], out: &Out, procs: &Procs, cfg: &Config) -> bool {
    match msg {
        HostMsg::Spawn {
            id,
            command,
            args,
            env,
            cwd,
            session,
        } => {
            let how = Launch {
                command: &command,
                args: &args,
                env,
                cwd: cwd.as_deref(),
                session: session.as_deref(),
            };
            match spawn(&id, how, out, procs, cfg) {
                Ok(supervisor) => {
                    // Spawned is queued before the supervisor can queue any
                    // of the process's output.
                    send(out, &GuestMsg::Spawned { id }, &[]).await;
                    tokio::spawn(supervisor);
                }
                Err(error) => send(out, &GuestMsg::SpawnFailed { id, error }, &[]).await,
            }
        }
        HostMsg::Stdin { id } => {
            // Never waits on the process: queued now or refused now.
            let res = match procs.lock().get(&id) {
                Some(Proc { stdin: Some(q), .. }) => q.push(payload),
                Some(_) => Err(Refused::Closed),
                None => Err(Refused::Closed),
            };
            match res {
                Ok(()) => {}
                Err(Refused::Full { queued }) => {
                    let n = payload.len();
                    let msg = format!(
                        "stdin of {id:?}: {n} bytes dropped, {queued} bytes already wait \
                         for the process to read (limit {STDIN_LIMIT})"
                    );
                    send_error(out, msg).await
                }
                Err(Refused::Closed) => {
                    let msg =
                        format!("stdin of {id:?}: no such running process, or its stdin is closed");
                    send_error(out, msg).await
                }
            }
        }
        HostMsg::CloseStdin { id } => {
            if let Some(p) = procs.lock().get_mut(&id) {
                p.stdin = None;
            }
        }
        HostMsg::Kill { id, signal } => {
            let pgid = procs.lock().get(&id).map(|p| p.pgid);
            let result = match (pgid, Signal::try_from(signal)) {
                (Some(pg), Ok(sig)) => killpg(pg, sig).map_err(|e| e.to_string()),
                (None, _) => Err(format!("no running process {id:?}")),
                (_, Err(_)) => Err(format!("bad signal {signal}")),
            };
            if let Err(message) = result {
                send_error(out, message).await;
            }
        }
        HostMsg::ReadFile {
            req,
            path,
            limit,
            session,
        } => {
            let limit = limit.min(cfg.read_file_limit);
            let layout = cfg.confine.clone();
            answer_later(out, req, move || {
                let file = match &layout {
                    // Run by hand: the host's own files, as the host's user.
                    None => open_for_reading(&path),
                    Some(l) => open_in_session(l, session.as_deref(), &path),
                }?;
                read_limited(file, &path, limit).map(Answer::File)
            });
        }
        HostMsg::Mount {
            req,
            tag,
            subdir,
            path,
            read_only,
        } => {
            let layout = cfg.confine.clone();
            answer_later(out, req, move || {
                let Some(l) = layout else {
                    return Err("mounting shares needs the agent to run in the VM".into());
                };
                crate::shares::mount_share(&l, &tag, subdir.as_deref(), &path, read_only)
                    .map(|()| Answer::Done)
            });
        }
        HostMsg::Unmount { req, path } => {
            let layout = cfg.confine.clone();
            answer_later(out, req, move || {
                let Some(l) = layout else {
                    return Err("unmounting shares needs the agent to run in the VM".into());
                };
                crate::shares::unmount_share(&l, &path).map(|()| Answer::Done)
            });
        }
        HostMsg::EndSession { req, session } => {
            let procs = procs.clone();
            let layout = cfg.confine.clone();
            let namespaces = cfg.namespaces.clone();
            answer_later(out, req, move || {
                end_session(&procs, layout.as_ref(), namespaces.as_deref(), &session)
                    .map(|()| Answer::Done)
            });
        }
        HostMsg::Ping { req } => send(out, &GuestMsg::Pong { req }, &[]).await,
        HostMsg::SessionUser { req, session } => {
            let layout = cfg.confine.clone();
            answer_later(out, req, move || {
                let (uid, gid) = match layout {
                    Some(l) => crate::confine::session_user(&l.sessions_root, &session)?,
                    // Unconfined, every process runs as the agent's user.
                    None => (
                        nix::unistd::getuid().as_raw(),
                        nix::unistd::getgid().as_raw(),
                    ),
                };
                let json = serde_json::json!({"uid": uid, "gid": gid});
                Ok(Answer::Json(json.to_string().into_bytes()))
            });
        }
        HostMsg::Sessions { req, op, args } => {
            let root = cfg.sessions_root.clone();
            answer_later(out, req, move || {
                sessions(root, &op, args).map(Answer::Json)
            });
        }
        HostMsg::Shutdown => return true,
    }
    false
}

/// The session disk's bookkeeping (the same rules as the host backends'),
/// its result as JSON.
fn sessions(
    root: std::path::PathBuf,
    op: &str,
    args: serde_json::Value,
) -> Result<Vec<u8>, String> {
    use cowork_backend::api::PruneRequest;
    use cowork_backend::session_data::SessionStore;
    use std::collections::HashSet;
    let store = SessionStore::new(root);
    let active: HashSet<String> =
        serde_json::from_value(args["active"].clone()).unwrap_or_default();
    let json = match op {
        "diskInfo" => {
            let low = args["lowWater"].as_u64().unwrap_or(0);
            serde_json::to_vec(&store.disk_info(low, &active).map_err(|e| e.to_string())?)
        }
        "delete" => {
            let names: Vec<String> = serde_json::from_value(args["names"].clone())
                .map_err(|e| format!("delete: names: {e}"))?;
            // A directory with a share still mounted in it is not deleted:
            // that would delete the user's files through the share.
            let mounted = mounted(&store)?;
            let (refused, names): (Vec<String>, Vec<String>) =
                names.into_iter().partition(|n| mounted.contains(n));
            let mut res = store.delete(&names, &active);
            for name in refused {
                let why = "a share is still mounted in it; unmount it first";
                res.errors.insert(name, why.to_string());
            }
            serde_json::to_vec(&res)
        }
        "prune" => {
            let req: PruneRequest = serde_json::from_value(args["request"].clone())
                .map_err(|e| format!("prune: request: {e}"))?;
            // Sessions with a mount in them are left alone, as active ones.
            let mut keep = active;
            keep.extend(mounted(&store)?);
            serde_json::to_vec(&store.prune(&req, &keep).map_err(|e| e.to_string())?)
        }
        other => return Err(format!("unknown session-disk operation {other:?}")),
    };
    json.map_err(|e| e.to_string())
}

/// The sessions of `store` with anything mounted at or below their
/// directory in the agent's namespace.
fn mounted(
    store: &cowork_backend::session_data::SessionStore,
) -> Result<std::collections::HashSet<String>, String> {
    crate::mountinfo::mounted_sessions_now(store.root())
}

/// A request's successful answer.
enum Answer {
    Done,
    File(Vec<u8>),
    Json(Vec<u8>),
}

/// Runs `work` (file system work that may block: a stalled virtio-fs
/// device, a slow disk) on the blocking pool and answers `req` from a task
/// of its own, so the request loop goes on at once. Past [`SLOW_REQUEST`]
/// the request fails (the blocked thread is left to finish or not).
fn answer_later<F>(out: &Out, req: u64, work: F)
where
    F: FnOnce() -> Result<Answer, String> + Send + 'static,
{
    let out = out.clone();
    tokio::spawn(async move {
        let res = tokio::time::timeout(SLOW_REQUEST, tokio::task::spawn_blocking(work)).await;
        let res = match res {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(format!("request failed: {e}")),
            Err(_) => Err(format!("no answer within {}s", SLOW_REQUEST.as_secs())),
        };
        match res {
            Ok(Answer::Done) => send(&out, &GuestMsg::Done { req }, &[]).await,
            Ok(Answer::File(content)) => send(&out, &GuestMsg::File { req }, &content).await,
            Ok(Answer::Json(json)) => send(&out, &GuestMsg::Json { req }, &json).await,
            Err(error) => send(&out, &GuestMsg::Failed { req, error }, &[]).await,
        }
    });
}

/// What to run, as the host asked.
struct Launch<'a> {
    command: &'a str,
    args: &'a [String],
    env: Vec<(String, String)>,
    cwd: Option<&'a str>,
    session: Option<&'a str>,
}

fn spawn(
    id: &str,
    how: Launch<'_>,
    out: &Out,
    procs: &Procs,
    cfg: &Config,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, String> {
    let Launch {
        command,
        args,
        env,
        cwd,
        session,
    } = how;
    if id.is_empty() || id.len() > 256 {
        return Err("process id must be 1-256 characters".into());
    }
    let mut table = procs.lock();
    if table.contains_key(id) {
        return Err(format!("a process with id {id:?} is already running"));
    }
    if table.len() >= MAX_PROCESSES {
        return Err(format!("at most {MAX_PROCESSES} processes may run at once"));
    }
    let mut cmd = tokio::process::Command::new(command);
    let has_home = env.iter().any(|(k, _)| k == "HOME");
    cmd.args(args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: runs in the child between fork and exec; `reset_in_child`
    // makes only system calls on static data (no allocation, no locks).
    // First, while the child is still root where the agent is.
    unsafe {
        cmd.pre_exec(crate::oom::reset_in_child);
    }
    // In the VM, into its cgroup before anything else runs in it (limits
    // and OOM accounting; a cgroup that cannot be made is no reason to
    // refuse the process).
    let cgroup = if cfg.in_vm {
        if let Some(name) = session {
            cowork_backend::session_data::validate_name("session", name)
                .map_err(|e| e.to_string())?;
        }
        match vm_cgroups().for_process(session, id) {
            Ok(cg) => Some(std::sync::Arc::new(cg)),
            Err(e) => {
                eprintln!("cowork-guest: no cgroup for {id:?}: {e}");
                None
            }
        }
    } else {
        None
    };
    if let Some(cg) = &cgroup {
        let cg = cg.clone();
        // SAFETY: runs in the child between fork and exec; `join_in_child`
        // makes only system calls on data made before the fork. Before the
        // confinement below, which drops the privilege to move itself.
        unsafe {
            cmd.pre_exec(move || cg.join_in_child());
        }
    }
    if let Some(layout) = &cfg.confine {
        let Some(name) = session else {
            return Err("a process must belong to a session".into());
        };
        let mut plan = crate::confine::Plan::new(layout, name, cwd)?;
        // Confined, never in the agent's network and IPC namespaces: a
        // session that cannot have its own gets no process.
        let Some(namespaces) = &cfg.namespaces else {
            return Err("confined processes need their session's namespaces".into());
        };
        plan.namespaces = Some(namespaces.for_session(name)?);
        if !has_home {
            cmd.env("HOME", layout.sessions_root.join(name));
        }
        // SAFETY: the closure runs in the child between fork and exec;
        // `Plan::apply` makes only system calls on data prepared before
        // the fork (no allocation, no locks), which is what is safe there.
        // (The working directory is set by it too, inside the new view:
        // `current_dir` would be entered before the view exists.)
        unsafe {
            cmd.pre_exec(move || plan.apply());
        }
    } else if let Some(dir) = cwd {
        // A session's own directory on the session disk is made on first
        // use; anything else must exist.
        if dir.starts_with(&format!("{}/", crate::init::SESSION_ROOT)) {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {dir}: {e}"))?;
        }
        cmd.current_dir(dir);
    }
    let cgroup = cgroup.map(|c| c.dir.clone());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            if let Some(dir) = &cgroup {
                let _ = std::fs::remove_dir(dir);
            }
            return Err(format!("cannot start {command}: {e}"));
        }
    };
    let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
    let stdin = child
        .stdin
        .take()
        .map(|w| StdinQueue::start(w, STDIN_LIMIT));
    table.insert(
        id.to_string(),
        Proc {
            pgid: Pid::from_raw(pid),
            stdin,
            session: session.map(str::to_owned),
        },
    );
    drop(table);
    Ok(supervise(
        id.to_string(),
        Pid::from_raw(pid),
        child,
        cgroup,
        out.clone(),
        procs.clone(),
    ))
}

/// The VM's session cgroups, set up on first use.
fn vm_cgroups() -> &'static crate::cgroups::Cgroups {
    static CG: std::sync::OnceLock<crate::cgroups::Cgroups> = std::sync::OnceLock::new();
    CG.get_or_init(crate::cgroups::Cgroups::vm)
}

async fn pump(
    pipe: Option<impl AsyncRead + Unpin>,
    id: &str,
    stderr: bool,
    out: &Out,
    seen: &std::sync::atomic::AtomicU64,
) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        seen.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        let id = id.to_string();
        let msg = if stderr {
            GuestMsg::Stderr { id }
        } else {
            GuestMsg::Stdout { id }
        };
        send(out, &msg, &buf[..n]).await;
    }
}

async fn supervise(
    id: String,
    pgid: Pid,
    mut child: tokio::process::Child,
    cgroup: Option<PathBuf>,
    out: Out,
    procs: Procs,
) {
    let seen = std::sync::atomic::AtomicU64::new(0);
    let (so, se) = (child.stdout.take(), child.stderr.take());
    let readers = async {
        tokio::join!(
            pump(so, &id, false, &out, &seen),
            pump(se, &id, true, &out, &seen)
        )
    };
    tokio::pin!(readers);
    let mut done = false;
    let status = tokio::select! {
        _ = &mut readers => { done = true; child.wait().await }
        st = child.wait() => st,
    };
    while !done {
        let before = seen.load(std::sync::atomic::Ordering::Relaxed);
        done = tokio::time::timeout(IDLE_AFTER_EXIT, &mut readers)
            .await
            .is_ok()
            || seen.load(std::sync::atomic::Ordering::Relaxed) == before;
    }
    let (code, signal) = match status {
        Ok(st) => (st.code(), st.signal()),
        Err(_) => (None, None),
    };
    let oom_kill_count = cgroup.as_deref().and_then(crate::cgroups::oom_kills);
    if let Some(dir) = &cgroup {
        let _ = std::fs::remove_dir(dir);
    }
    {
        // Only this process's record: after an `EndSession` the id may
        // already name a new process.
        let mut table = procs.lock();
        if table.get(&id).is_some_and(|p| p.pgid == pgid) {
            table.remove(&id);
        }
    }
    let id = id.clone();
    send(
        &out,
        &GuestMsg::Exit {
            id,
            code,
            signal,
            oom_kill_count,
        },
        &[],
    )
    .await;
}

/// Flags for opening a file to read: a FIFO or device must not block the
/// open, nor become the agent's terminal.
fn read_flags() -> nix::fcntl::OFlag {
    use nix::fcntl::OFlag;
    OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY
}

fn open_for_reading(path: &str) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(read_flags().bits())
        .open(path)
        .map_err(|e| format!("cannot open {path}: {e}"))
}

/// Opens `path` for `session`, confined: the agent reads as root, so the
/// session must not point it (by a symbolic link in its own directory) at
/// another session's files or the system's. The path must be inside the
/// session's directory and is opened beneath it.
fn open_in_session(
    layout: &crate::confine::Layout,
    session: Option<&str>,
    path: &str,
) -> Result<std::fs::File, String> {
    let Some(session) = session else {
        return Err(format!("cannot read {path}: no session named"));
    };
    cowork_backend::session_data::validate_name("session", session).map_err(|e| e.to_string())?;
    let own = layout.sessions_root.join(session);
    let rel = Path::new(path)
        .strip_prefix(&own)
        .map_err(|_| format!("cannot read {path}: not in {}", own.display()))?;
    let no = crate::safe_path::Create::No;
    let dir = crate::safe_path::open_dir(&layout.sessions_root, Path::new(session), no)?;
    use std::os::fd::AsFd;
    crate::safe_path::open_file_beneath(dir.as_fd(), rel, read_flags())
        .map(std::fs::File::from)
        .map_err(|e| format!("cannot open {path}: {e}"))
}

fn read_limited(f: std::fs::File, shown: &str, limit: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let meta = f.metadata().map_err(|e| format!("{shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    if meta.len() > limit {
        return Err(format!(
            "{shown} is {} bytes, over the {limit}-byte limit",
            meta.len()
        ));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if buf.len() as u64 > limit {
        return Err(format!("{shown} grew past the {limit}-byte limit"));
    }
    Ok(buf)
}
