//! Local processes for the backends that run sessions as host processes
//! (host, bwrap): each spawn becomes its own process group whose stdout and
//! stderr flow to the event bus as text, in order, followed by exactly one
//! `exit` event once all output has been published.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cowork_backend::signal::signal_name;
use cowork_backend::utf8::Utf8Stream;
use cowork_backend::wire::{encode_output_frame, OutputKind};
use cowork_backend::{BackendError, Event, EventBus, ProcessStatus, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};

/// At most this many processes run at once per helper.
pub const MAX_PROCESSES: usize = 512;
/// Exit statuses remembered for `isProcessRunning` after a process ends.
const FINISHED_KEPT: usize = 4096;
/// Read size for stderr (a pipe holds 64 KiB by default).
const CHUNK: usize = 64 * 1024;
/// stdout carries the conversation and bulk output: its pipe is grown to
/// this (the unprivileged limit, fs.pipe-max-size, is 1 MiB by default)
/// and read in [`STDOUT_CHUNK`]s, so a fast writer costs a quarter of the
/// reads and events. A read returns what is there: a line written alone
/// still goes out at once. The buffer's pages are touched only as far as
/// output fills them.
const STDOUT_PIPE: i32 = 1 << 20;
const STDOUT_CHUNK: usize = 256 * 1024;
/// Once the process has exited, output still flowing is read to the end;
/// a pipe kept open but idle this long by a grandchild is abandoned.
const IDLE_AFTER_EXIT: Duration = Duration::from_millis(500);
/// Queued stdin writes per process.
const STDIN_QUEUE: usize = 64;
/// How long `stop_all` waits after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// What to run: already resolved to host terms by the backend.
pub struct Launch {
    pub id: String,
    pub session: String,
    pub program: PathBuf,
    pub args: Vec<std::ffi::OsString>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub signals: SignalRoute,
    /// A file in which the process records how its payload ended (see
    /// [`parse_exit_record`]); it wins over the process's own status.
    pub exit_record: Option<PathBuf>,
    /// Kept alive while the process runs (e.g. its egress listener).
    pub guard: Option<Box<dyn std::any::Any + Send>>,
    /// Descriptors the program inherits, at the same numbers (bwrap's
    /// `--bind-fd`). Every other descriptor of the helper is close-on-exec;
    /// these are closed in the helper once the program has started.
    pub pass_fds: Vec<OwnedFd>,
}

/// How `kill` reaches the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalRoute {
    /// Signal the whole process group.
    Group,
    /// The group leader is bwrap; the program runs under the sandbox's
    /// pid 1 (our `sandbox-init`, bwrap's child), which forwards signals to
    /// it. SIGKILL goes to the group: bwrap dies and its
    /// `--die-with-parent` takes the whole pid namespace with it.
    SandboxInit,
}

/// Sends `sig` the way `route` says. A sandbox's init gets every signal to
/// forward to its program; SIGKILL goes to the init (which takes the pid
/// namespace down) and to bwrap's group as well.
fn deliver(pgid: Pid, route: SignalRoute, sig: Signal) -> nix::Result<()> {
    if route == SignalRoute::SandboxInit {
        if let Some(init) = children_of(pgid).into_iter().next() {
            let sent = nix::sys::signal::kill(init, sig);
            if sig != Signal::SIGKILL {
                return sent;
            }
        }
    }
    killpg(pgid, sig)
}

/// Reads an exit record: `exit N` or `signal NAME`. A sandbox's init writes
/// one because bwrap can only pass on an exit code, not a signal.
pub fn parse_exit_record(text: &str) -> Option<(Option<i32>, Option<String>)> {
    let (kind, value) = text.trim().split_once(' ')?;
    match kind {
        "exit" => Some((Some(value.parse().ok()?), None)),
        "signal" if value.starts_with("SIG") && value.len() < 16 => {
            Some((None, Some(value.to_string())))
        }
        _ => None,
    }
}

/// The longest exit record read back; a real one is under 20 bytes.
const EXIT_RECORD_LIMIT: u64 = 64;

/// Reads the exit record at `path`, at most [`EXIT_RECORD_LIMIT`] bytes.
/// The file is bound writable into the sandbox, so the session may have
/// filled it with anything: an oversized one is ignored, not read.
pub fn read_exit_record(path: &Path) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // O_NOFOLLOW, O_NONBLOCK: the helper made a plain file; anything else
    // there is not read, and a FIFO must not park the thread.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut buf = Vec::new();
    f.take(EXIT_RECORD_LIMIT + 1).read_to_end(&mut buf).ok()?;
    if buf.len() as u64 > EXIT_RECORD_LIMIT {
        return None;
    }
    String::from_utf8(buf).ok()
}

/// The direct children of `pid`, from /proc.
fn children_of(pid: Pid) -> Vec<Pid> {
    let task = format!("/proc/{pid}/task/{pid}/children");
    if let Ok(list) = std::fs::read_to_string(task) {
        return list
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .map(Pid::from_raw)
            .collect();
    }
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|st| {
                    st.rsplit_once(')')
                        .map(|(_, r)| r.split_whitespace().nth(1).map(str::to_string))
                })
                .flatten()
                .and_then(|pp| pp.parse::<i32>().ok())
                == Some(pid.as_raw())
        })
        .map(Pid::from_raw)
        .collect()
}

enum StdinMsg {
    Data(String),
    Eof,
}

struct Running {
    session: String,
    pgid: Pid,
    signals: SignalRoute,
    stdin: mpsc::Sender<StdinMsg>,
    _guard: Option<Box<dyn std::any::Any + Send>>,
}

#[derive(Default)]
struct Table {
    running: HashMap<String, Running>,
    finished: HashMap<String, Option<i32>>,
    finished_order: VecDeque<String>,
}

#[derive(Clone)]
pub struct ProcessTable {
    bus: EventBus,
    table: Arc<Mutex<Table>>,
    changed: Arc<Notify>,
}

impl ProcessTable {
    pub fn new(bus: EventBus) -> Self {
        Self {
            bus,
            table: Arc::default(),
            changed: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn spawn(&self, launch: Launch) -> Result<()> {
        let mut cmd = tokio::process::Command::new(&launch.program);
        cmd.args(&launch.args)
            .env_clear()
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&launch.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if !launch.pass_fds.is_empty() {
            let fds: Vec<RawFd> = launch.pass_fds.iter().map(AsRawFd::as_raw_fd).collect();
            // SAFETY: the closure runs in the forked child before exec and
            // only calls fcntl, which is async-signal-safe; it allocates
            // nothing (`fds` was built before the fork). The descriptors
            // are open: `launch.pass_fds` owns them until after the spawn.
            unsafe {
                cmd.pre_exec(move || {
                    for &fd in &fds {
                        // Clear FD_CLOEXEC on exactly these: the child keeps
                        // them across exec, the helper's copies stay
                        // close-on-exec for every other child.
                        if nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        // Hold the table lock across the fork so a duplicate id racing this
        // one cannot start a second process.
        let mut table = self.lock();
        if table.running.contains_key(&launch.id) {
            return Err(BackendError::DuplicateProcess(launch.id));
        }
        if table.running.len() >= MAX_PROCESSES {
            return Err(BackendError::TooManyProcesses(MAX_PROCESSES));
        }
        let mut child = cmd.spawn().map_err(|e| {
            BackendError::io(format!("cannot start {}", launch.program.display()), e)
        })?;
        // The child has its copies now.
        drop(launch.pass_fds);
        if let Some(out) = &child.stdout {
            // Best effort: a smaller pipe only means more reads.
            // SAFETY: fcntl on a descriptor `out` owns, for the duration.
            let _ =
                unsafe { nix::libc::fcntl(out.as_raw_fd(), nix::libc::F_SETPIPE_SZ, STDOUT_PIPE) };
        }
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        let (stdin_tx, stdin_rx) = mpsc::channel(STDIN_QUEUE);
        if let Some(stdin) = child.stdin.take() {
            tokio::spawn(feed_stdin(stdin, stdin_rx));
        }
        table.finished.remove(&launch.id);
        table.running.insert(
            launch.id.clone(),
            Running {
                session: launch.session,
                pgid: Pid::from_raw(pid),
                signals: launch.signals,
                stdin: stdin_tx,
                _guard: launch.guard,
            },
        );
        drop(table);
        tokio::spawn(self.clone().supervise(launch.id, child, launch.exit_record));
        Ok(())
    }

    async fn supervise(
        self,
        id: String,
        mut child: tokio::process::Child,
        exit_record: Option<PathBuf>,
    ) {
        let activity = Arc::new(Activity::default());
        let out = child.stdout.take();
        let err = child.stderr.take();
        let readers = async {
            tokio::join!(
                pump(&self.bus, &id, out, Stream::Stdout, &activity),
                pump(&self.bus, &id, err, Stream::Stderr, &activity),
            )
        };
        tokio::pin!(readers);
        let mut readers_done = false;
        let status = tokio::select! {
            _ = &mut readers => {
                readers_done = true;
                child.wait().await
            }
            st = child.wait() => st,
        };
        if !readers_done {
            // The process is gone; drain what it left, but do not wait for a
            // grandchild that keeps the pipe open and silent.
            loop {
                let before = activity.bytes.load(Ordering::Relaxed);
                match tokio::time::timeout(IDLE_AFTER_EXIT, &mut readers).await {
                    Ok(_) => break,
                    Err(_) => {
                        let idle = activity.bytes.load(Ordering::Relaxed) == before
                            && activity.publishing.load(Ordering::Relaxed) == 0;
                        if idle {
                            break;
                        }
                    }
                }
            }
        }
        let recorded = exit_record.as_ref().and_then(|p| {
            let text = read_exit_record(p);
            let _ = std::fs::remove_file(p);
            text.as_deref().and_then(parse_exit_record)
        });
        let (exit_code, signal) = match status {
            // Killed from outside (SIGKILL to the group): the record, if
            // any, is stale.
            Ok(st) if st.signal().is_some() => (None, st.signal().map(signal_name)),
            Ok(st) => recorded.unwrap_or((st.code(), None)),
            Err(e) => {
                tracing::warn!(process = %id, "waiting for the process failed: {e}");
                (None, None)
            }
        };
        self.bus
            .publish(&Event::Exit {
                id: id.clone(),
                exit_code,
                signal,
                oom_kill_count: None,
            })
            .await;
        {
            let mut t = self.lock();
            t.running.remove(&id);
            t.finished.insert(id.clone(), exit_code);
            t.finished_order.push_back(id.clone());
            while t.finished_order.len() > FINISHED_KEPT {
                if let Some(old) = t.finished_order.pop_front() {
                    if !t.running.contains_key(&old) {
                        t.finished.remove(&old);
                    }
                }
            }
        }
        self.changed.notify_waiters();
        if self.running_count() == 0 {
            release_free_memory();
        }
    }

    pub fn status(&self, id: &str) -> Result<ProcessStatus> {
        let t = self.lock();
        if t.running.contains_key(id) {
            return Ok(ProcessStatus {
                running: true,
                exit_code: None,
            });
        }
        match t.finished.get(id) {
            Some(code) => Ok(ProcessStatus {
                running: false,
                exit_code: *code,
            }),
            None => Err(BackendError::NoSuchProcess(id.to_string())),
        }
    }

    fn known(&self, id: &str, t: &Table) -> BackendError {
        if t.finished.contains_key(id) {
            BackendError::ProcessNotRunning(id.to_string())
        } else {
            BackendError::NoSuchProcess(id.to_string())
        }
    }

    /// Signals the process (see [`SignalRoute`]).
    pub fn kill(&self, id: &str, sig: Signal) -> Result<()> {
        let (pgid, route) = {
            let t = self.lock();
            let Some(p) = t.running.get(id) else {
                return Err(self.known(id, &t));
            };
            (p.pgid, p.signals)
        };
        deliver(pgid, route, sig).map_err(|e| BackendError::io(format!("kill {id}"), e.into()))
    }

    pub async fn write_stdin(&self, id: &str, data: String, eof: bool) -> Result<()> {
        let tx = {
            let t = self.lock();
            match t.running.get(id) {
                Some(p) => p.stdin.clone(),
                None => return Err(self.known(id, &t)),
            }
        };
        let closed = || BackendError::invalid("writeStdin", format!("stdin of {id:?} is closed"));
        if !data.is_empty() {
            tx.send(StdinMsg::Data(data)).await.map_err(|_| closed())?;
        }
        if eof {
            tx.send(StdinMsg::Eof).await.map_err(|_| closed())?;
        }
        Ok(())
    }

    /// The session a running process belongs to.
    pub fn session_of(&self, id: &str) -> Option<String> {
        self.lock().running.get(id).map(|p| p.session.clone())
    }

    pub fn active_sessions(&self) -> HashSet<String> {
        self.lock()
            .running
            .values()
            .map(|p| p.session.clone())
            .collect()
    }

    pub fn running_count(&self) -> usize {
        self.lock().running.len()
    }

    fn signal_all(&self, sig: Signal) {
        for p in self.lock().running.values() {
            let _ = deliver(p.pgid, p.signals, sig);
        }
    }

    async fn wait_empty(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            if self.running_count() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.running_count() == 0;
            }
        }
    }

    /// Ends every process group: SIGTERM, then SIGKILL for what is left, and
    /// waits for their exit events.
    pub async fn stop_all(&self) {
        if self.running_count() == 0 {
            return;
        }
        self.signal_all(Signal::SIGTERM);
        if !self.wait_empty(TERM_GRACE).await {
            self.signal_all(Signal::SIGKILL);
            self.wait_empty(TERM_GRACE).await;
        }
    }
}

#[derive(Default)]
struct Activity {
    bytes: AtomicU64,
    publishing: AtomicU64,
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

async fn pump(
    bus: &EventBus,
    id: &str,
    pipe: Option<impl AsyncRead + Unpin>,
    which: Stream,
    activity: &Activity,
) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![
        0u8;
        match which {
            Stream::Stdout => STDOUT_CHUNK,
            Stream::Stderr => CHUNK,
        }
    ];
    let mut text = Utf8Stream::default();
    let mut scratch = Vec::new();
    let kind = match which {
        Stream::Stdout => OutputKind::Stdout,
        Stream::Stderr => OutputKind::Stderr,
    };
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        let data = if n == 0 {
            Cow::Owned(text.finish())
        } else {
            activity.bytes.fetch_add(n as u64, Ordering::Relaxed);
            text.decode(&buf[..n])
        };
        if !data.is_empty() {
            // Framed straight from the read buffer: no copy of the text.
            match encode_output_frame(kind, id, &data, &mut scratch) {
                Ok(frame) => {
                    let busy = PublishGuard::new(&activity.publishing);
                    bus.publish_output(frame).await;
                    drop(busy);
                }
                // Cannot happen: a read is far below the frame limit.
                Err(e) => tracing::warn!(process = %id, "output dropped: {e}"),
            }
        }
        if n == 0 {
            return;
        }
    }
}

struct PublishGuard<'a>(&'a AtomicU64);

impl<'a> PublishGuard<'a> {
    fn new(c: &'a AtomicU64) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Self(c)
    }
}

impl Drop for PublishGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Hands memory freed by a burst of output back to the kernel once nothing
/// runs: glibc keeps freed heap in its arenas otherwise, and the helper's
/// resident size would stay at its peak for the rest of its life.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and releases glibc's own free lists; it
    // takes the allocator's locks and touches no memory of ours.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

async fn feed_stdin(mut stdin: tokio::process::ChildStdin, mut rx: mpsc::Receiver<StdinMsg>) {
    while let Some(msg) = rx.recv().await {
        match msg {
            StdinMsg::Data(d) => {
                if stdin.write_all(d.as_bytes()).await.is_err() {
                    break;
                }
            }
            StdinMsg::Eof => break,
        }
    }
    // Dropping `stdin` closes the pipe: the process sees end of file.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_records_are_read_bounded() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("status");
        std::fs::write(&p, "exit 3").unwrap();
        assert_eq!(read_exit_record(&p).as_deref(), Some("exit 3"));
        std::fs::write(&p, format!("exit 3{}", " ".repeat(1 << 20))).unwrap();
        assert_eq!(read_exit_record(&p), None, "oversized: ignored");
        std::fs::remove_file(&p).unwrap();
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(read_exit_record(&p), None, "a FIFO is not waited on");
        let link = t.path().join("link");
        std::fs::write(t.path().join("real"), "exit 1").unwrap();
        std::os::unix::fs::symlink(t.path().join("real"), &link).unwrap();
        assert_eq!(read_exit_record(&link), None, "symlinks are not followed");
    }

    #[test]
    fn exit_record_forms() {
        assert_eq!(parse_exit_record("exit 3\n"), Some((Some(3), None)));
        assert_eq!(
            parse_exit_record("signal SIGTERM"),
            Some((None, Some("SIGTERM".into())))
        );
        for bad in [
            "",
            "exit",
            "exit x",
            "signal TERM",
            "boom 1",
            "signal SIGAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(parse_exit_record(bad), None, "{bad}");
        }
    }
}
