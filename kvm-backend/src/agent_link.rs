//! The helper's end of the guest agent's channel (guest/src/wire.rs): one
//! stream over vsock, requests written by a single writer task, everything
//! the agent sends read by a single reader task that turns process output
//! into protocol events and completes waiting requests. When the stream
//! ends (guest death, agent crash) every process still running gets an
//! exit event, then the network is reported down.
//!
//! Any process in the guest can open a vsock connection to the host, so
//! the agent proves itself in its hello with the per-boot token only PID 1
//! could read from the kernel command line; every request has a deadline,
//! so a guest that stops reading stalls no caller for long.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cowork_backend::api::ProcessStatus;
use cowork_backend::utf8::Utf8Stream;
use cowork_backend::wire::{encode_output_frame, OutputKind};
use cowork_backend::{Event, EventBus, NetworkStatus};
use cowork_guest::wire::{self, GuestMsg, HostMsg};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

/// How long a request waits for the agent's answer: under the app's own
/// 30 s, so it hears why.
const REPLY_LIMIT: Duration = Duration::from_secs(25);
/// How long a frame may wait for room in the queue to the agent (a guest
/// that stops reading fills it).
const SEND_LIMIT: Duration = Duration::from_secs(10);
/// Frames queued for the agent before writers wait.
const OUT_QUEUE: usize = 256;
/// The most of a guest-chosen string a log line carries.
const SHOWN_CHARS: usize = 200;
/// Processes (running or ended) remembered per agent connection.
const KNOWN_PROCESSES: usize = 4096;
/// stdin is passed on in pieces of at most this much (under one frame).
const STDIN_PIECE: usize = 1024 * 1024;

#[derive(Debug)]
pub enum Reply {
    File(Vec<u8>),
    Json(Vec<u8>),
    Done,
    Pong,
    Failed(String),
}

struct Proc {
    running: bool,
    exit_code: Option<i32>,
    stdout: Utf8Stream,
    stderr: Utf8Stream,
}

#[derive(Default)]
struct Waiting {
    replies: HashMap<u64, oneshot::Sender<Reply>>,
    spawns: HashMap<String, oneshot::Sender<Result<(), String>>>,
}

pub struct AgentLink {
    out: mpsc::Sender<Vec<u8>>,
    waiting: Mutex<Waiting>,
    procs: Mutex<HashMap<String, Proc>>,
    next_req: AtomicU64,
    alive: AtomicBool,
    pub agent: String,
    /// Woken whenever a process ends, so its session's resources can go.
    exited: Arc<tokio::sync::Notify>,
}

/// A guest-chosen string as the log shows it: at most [`SHOWN_CHARS`].
pub(crate) fn shown(s: &str) -> &str {
    s.char_indices()
        .nth(SHOWN_CHARS)
        .map_or(s, |(i, _)| &s[..i])
}

/// Compares two tokens in time independent of where they differ.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn read_msg(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<(GuestMsg, Vec<u8>), String> {
    let body = match wire::read_frame(r).await {
        Ok(Some(Ok(b))) => b,
        Ok(Some(Err(e))) => return Err(e.to_string()),
        Ok(None) => return Err("the agent closed its channel".into()),
        Err(e) => return Err(e.to_string()),
    };
    let (msg, payload) = wire::decode::<GuestMsg>(&body).map_err(|e| e.to_string())?;
    Ok((msg, payload.to_vec()))
}

impl AgentLink {
    /// Takes a fresh stream from the agent: reads its hello (within
    /// `limit`), which must carry `token`, then serves it until it ends.
    pub async fn accept(
        stream: UnixStream,
        bus: EventBus,
        limit: Duration,
        token: &str,
        exited: Arc<tokio::sync::Notify>,
    ) -> Result<Arc<AgentLink>, String> {
        let (mut rd, mut wr) = stream.into_split();
        let hello = tokio::time::timeout(limit, read_msg(&mut rd))
            .await
            .map_err(|_| "the agent sent no hello".to_string())??;
        let agent = match hello.0 {
            GuestMsg::Hello {
                version,
                agent,
                token: t,
            } if version == wire::PROTOCOL_VERSION => {
                if !same_token(&t, token) {
                    return Err("the hello did not carry this boot's agent token".into());
                }
                agent
            }
            GuestMsg::Hello { version, .. } => {
                return Err(format!(
                    "the agent speaks protocol {version}, this helper {}; rebuild the image (cowork-microvm image build)",
                    wire::PROTOCOL_VERSION
                ))
            }
            other => return Err(format!("the agent's first message was not a hello: {other:?}")),
        };
        let (out, mut queue) = mpsc::channel::<Vec<u8>>(OUT_QUEUE);
        tokio::spawn(async move {
            while let Some(frame) = queue.recv().await {
                if wr.write_all(&frame).await.is_err() {
                    break;
                }
            }
        });
        let link = Arc::new(AgentLink {
            out,
            waiting: Mutex::default(),
            procs: Mutex::default(),
            next_req: AtomicU64::new(1),
            alive: AtomicBool::new(true),
            agent,
            exited,
        });
        let reader = link.clone();
        tokio::spawn(async move {
            // Where output is framed (encode_output_frame), kept across
            // messages.
            let mut scratch = Vec::new();
            loop {
                match read_msg(&mut rd).await {
                    Ok((msg, payload)) => reader.on_message(msg, payload, &bus, &mut scratch).await,
                    Err(e) => {
                        tracing::info!("agent channel ended: {e}");
                        break;
                    }
                }
            }
            reader.ended(&bus).await;
        });
        Ok(link)
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    async fn send(&self, msg: &HostMsg, payload: &[u8]) -> Result<(), String> {
        let frame = wire::encode(msg, payload).map_err(|e| e.to_string())?;
        if !self.is_alive() {
            return Err("the guest agent is not connected".into());
        }
        match tokio::time::timeout(SEND_LIMIT, self.out.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("the guest agent is not connected".into()),
            Err(_) => Err(format!(
                "the guest agent has not read its channel for {}s",
                SEND_LIMIT.as_secs()
            )),
        }
    }

    async fn on_message(
        &self,
        msg: GuestMsg,
        payload: Vec<u8>,
        bus: &EventBus,
        scratch: &mut Vec<u8>,
    ) {
        let reply = |req: u64, r: Reply| {
            if let Some(tx) = lock(&self.waiting).replies.remove(&req) {
                let _ = tx.send(r);
            }
        };
        let is_out = matches!(msg, GuestMsg::Stdout { .. });
        match msg {
            GuestMsg::Hello { .. } => {}
            GuestMsg::Spawned { id } => {
                if let Some(tx) = lock(&self.waiting).spawns.remove(&id) {
                    let _ = tx.send(Ok(()));
                }
            }
            GuestMsg::SpawnFailed { id, error } => {
                lock(&self.procs).remove(&id);
                if let Some(tx) = lock(&self.waiting).spawns.remove(&id) {
                    let _ = tx.send(Err(error));
                }
            }
            GuestMsg::Stdout { id } | GuestMsg::Stderr { id } => {
                // Framed straight from the payload (no copy of the text
                // in the common case), under the lock that orders the
                // stream's decoding.
                let frame = {
                    let mut procs = lock(&self.procs);
                    let Some(p) = procs.get_mut(&id) else { return };
                    let (text, kind) = if is_out {
                        (p.stdout.decode(&payload), OutputKind::Stdout)
                    } else {
                        (p.stderr.decode(&payload), OutputKind::Stderr)
                    };
                    if text.is_empty() {
                        return;
                    }
                    encode_output_frame(kind, &id, &text, scratch)
                };
                match frame {
                    Ok(frame) => bus.publish_output(frame).await,
                    // A guest's frame of control characters can escape
                    // past the event limit: dropped, with this line.
                    Err(e) => tracing::warn!(process = %id, "output dropped: {e}"),
                }
            }
            GuestMsg::Exit {
                id,
                code,
                signal,
                oom_kill_count,
            } => {
                // Only a process of ours that runs can end, and only once:
                // the guest does not get to invent exits.
                let tails = lock(&self.procs)
                    .get_mut(&id)
                    .filter(|p| p.running)
                    .map(|p| {
                        p.running = false;
                        p.exit_code = code;
                        (p.stdout.finish(), p.stderr.finish())
                    });
                let Some((out, err)) = tails else { return };
                {
                    if !out.is_empty() {
                        bus.publish(&Event::Stdout {
                            id: id.clone(),
                            data: out,
                        })
                        .await;
                    }
                    if !err.is_empty() {
                        bus.publish(&Event::Stderr {
                            id: id.clone(),
                            data: err,
                        })
                        .await;
                    }
                }
                bus.publish(&Event::Exit {
                    id,
                    exit_code: code,
                    signal: signal.map(cowork_backend::signal::signal_name),
                    oom_kill_count,
                })
                .await;
                self.exited.notify_one();
            }
            GuestMsg::File { req } => reply(req, Reply::File(payload)),
            GuestMsg::Done { req } => reply(req, Reply::Done),
            GuestMsg::Pong { req } => reply(req, Reply::Pong),
            GuestMsg::Json { req } => reply(req, Reply::Json(payload)),
            GuestMsg::Failed { req, error } => reply(req, Reply::Failed(error)),
            GuestMsg::Error { message } => cowork_vmm::guest_log!(
                warn,
                "guest agent error",
                "guest agent: {}",
                shown(&message)
            ),
        }
    }

    /// The channel is gone: every running process ends (killed with the
    /// guest, as far as anyone can tell), then the network is down.
    async fn ended(&self, bus: &EventBus) {
        self.alive.store(false, Ordering::SeqCst);
        *lock(&self.waiting) = Waiting::default();
        let ended: Vec<String> = lock(&self.procs)
            .iter_mut()
            .filter(|(_, p)| p.running)
            .map(|(id, p)| {
                p.running = false;
                id.clone()
            })
            .collect();
        for id in ended {
            bus.publish(&Event::Exit {
                id,
                exit_code: None,
                signal: Some("SIGKILL".into()),
                oom_kill_count: None,
            })
            .await;
        }
        self.exited.notify_one();
        bus.publish(&Event::NetworkStatus {
            status: NetworkStatus::Disconnected,
        })
        .await;
    }

    /// Starts a process in the guest; returns once the agent has.
    pub async fn spawn(
        &self,
        id: &str,
        command: String,
        args: Vec<String>,
        env: Vec<(String, String)>,
        cwd: Option<String>,
        session: Option<String>,
    ) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        {
            let mut procs = lock(&self.procs);
            if procs.get(id).is_some_and(|p| p.running) {
                return Err(format!("process {id:?} is already running"));
            }
            if procs.len() >= KNOWN_PROCESSES {
                // Ended processes are remembered for isProcessRunning, but
                // not without bound.
                procs.retain(|_, p| p.running);
            }
            procs.insert(
                id.to_string(),
                Proc {
                    running: true,
                    exit_code: None,
                    stdout: Utf8Stream::default(),
                    stderr: Utf8Stream::default(),
                },
            );
            lock(&self.waiting).spawns.insert(id.to_string(), tx);
        }
        let msg = HostMsg::Spawn {
            id: id.to_string(),
            command,
            args,
            env,
            cwd,
            session,
        };
        let sent = self.send(&msg, &[]).await;
        let result = match sent {
            Ok(()) => tokio::time::timeout(REPLY_LIMIT, rx)
                .await
                .map_err(|_| "the guest agent did not answer".to_string())
                .and_then(|r| r.map_err(|_| "the guest agent went away".to_string()))
                .and_then(|r| r),
            Err(e) => Err(e),
        };
        if result.is_err() {
            lock(&self.procs).remove(id);
            lock(&self.waiting).spawns.remove(id);
        }
        result
    }

    pub async fn write_stdin(&self, id: &str, data: &[u8], eof: bool) -> Result<(), String> {
        if !lock(&self.procs).get(id).is_some_and(|p| p.running) {
            return Err(format!("no running process {id:?}"));
        }
        for piece in data.chunks(STDIN_PIECE) {
            self.send(&HostMsg::Stdin { id: id.into() }, piece).await?;
        }
        if eof {
            self.send(&HostMsg::CloseStdin { id: id.into() }, &[])
                .await?;
        }
        Ok(())
    }

    pub async fn kill(&self, id: &str, signal: i32) -> Result<(), String> {
        if !lock(&self.procs).get(id).is_some_and(|p| p.running) {
            return Err(format!("no running process {id:?}"));
        }
        self.send(
            &HostMsg::Kill {
                id: id.into(),
                signal,
            },
            &[],
        )
        .await
    }

    pub fn status(&self, id: &str) -> Option<ProcessStatus> {
        lock(&self.procs).get(id).map(|p| ProcessStatus {
            running: p.running,
            exit_code: p.exit_code,
        })
    }

    pub fn running_ids(&self) -> Vec<String> {
        lock(&self.procs)
            .iter()
            .filter(|(_, p)| p.running)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// A request answered by `req`: readFile, mount, unmount, ping.
    pub async fn request(&self, make: impl FnOnce(u64) -> HostMsg) -> Result<Reply, String> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).replies.insert(req, tx);
        if let Err(e) = self.send(&make(req), &[]).await {
            lock(&self.waiting).replies.remove(&req);
            return Err(e);
        }
        let r = tokio::time::timeout(REPLY_LIMIT, rx).await;
        lock(&self.waiting).replies.remove(&req);
        match r {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err("the guest agent went away".into()),
            Err(_) => Err("the guest agent did not answer".into()),
        }
    }

    /// Asks the agent to end every process and power the guest off.
    pub async fn shutdown(&self) -> Result<(), String> {
        self.send(&HostMsg::Shutdown, &[]).await
    }
}
