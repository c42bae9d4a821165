//! A client of the helper socket, as the desktop app uses it: a persistent
//! pipe with numbered requests, and an event subscription. `run` and
//! `bench` drive the helper through it, so they exercise the real protocol.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cowork_backend::wire::encode_frame;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::oneshot;

use crate::protocol::{read_frame, read_frame_into};

/// The app gives up on a request after 30 s; so do we.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("the helper said: {0}")]
    Remote(String),
    #[error("{0} timed out")]
    Timeout(String),
    #[error("the helper closed the connection")]
    Closed,
    #[error("protocol error: {0}")]
    Protocol(String),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

pub struct Client {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
}

async fn connect(path: &Path) -> Result<UnixStream, ClientError> {
    UnixStream::connect(path)
        .await
        .map_err(|source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        })
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let (rd, wr) = connect(path).await?.into_split();
        let pending: Pending = Arc::default();
        tokio::spawn(read_replies(rd, pending.clone()));
        Ok(Client {
            writer: tokio::sync::Mutex::new(wr),
            pending,
            next_id: AtomicU64::new(1),
        })
    }

    /// Sends one request and waits for its reply's `result`.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let frame = encode_frame(&json!({"method": method, "id": id, "params": params}))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.writer
            .lock()
            .await
            .write_all(&frame)
            .await
            .map_err(|_| ClientError::Closed)?;
        let reply = match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(v)) => v,
            Ok(Err(_)) => return Err(ClientError::Closed),
            Err(_) => {
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                return Err(ClientError::Timeout(method.to_string()));
            }
        };
        into_result(reply)
    }
}

fn into_result(mut reply: Value) -> Result<Value, ClientError> {
    if reply.get("success") == Some(&Value::Bool(true)) {
        Ok(reply
            .get_mut("result")
            .map(Value::take)
            .unwrap_or(json!({})))
    } else {
        let msg = reply
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("request failed");
        Err(ClientError::Remote(msg.to_string()))
    }
}

async fn read_replies(mut rd: OwnedReadHalf, pending: Pending) {
    while let Ok(Some(body)) = read_frame(&mut rd).await {
        let Ok(reply) = serde_json::from_slice::<Value>(&body) else {
            continue;
        };
        let Some(id) = reply.get("id").and_then(Value::as_u64) else {
            continue;
        };
        let tx = pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some(tx) = tx {
            let _ = tx.send(reply);
        }
    }
    // Dropping the senders wakes every waiting call with `Closed`.
    pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// One request on its own connection, as the app's one-shot calls do.
pub async fn one_shot(path: &Path, method: &str, params: Value) -> Result<Value, ClientError> {
    let mut s = connect(path).await?;
    let frame = encode_frame(&json!({"method": method, "params": params}))
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    s.write_all(&frame).await.map_err(|_| ClientError::Closed)?;
    let body = tokio::time::timeout(CALL_TIMEOUT, read_frame(&mut s))
        .await
        .map_err(|_| ClientError::Timeout(method.to_string()))?
        .map_err(|e| ClientError::Protocol(e.to_string()))?
        .ok_or(ClientError::Closed)?;
    into_result(serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(e.to_string()))?)
}

/// An event as a subscriber receives it; fields absent from a type stay
/// `None`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientEvent {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub id: Option<Value>,
    #[serde(default)]
    pub data: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

impl ClientEvent {
    pub fn is_for(&self, id: &str) -> bool {
        self.id.as_ref().and_then(Value::as_str) == Some(id)
    }
}

pub struct EventStream {
    rd: OwnedReadHalf,
    _wr: OwnedWriteHalf,
    /// The last frame's body, its room kept for the next one.
    buf: Vec<u8>,
}

impl EventStream {
    pub async fn subscribe(path: &Path) -> Result<EventStream, ClientError> {
        let (mut rd, mut wr) = connect(path).await?.into_split();
        let frame = encode_frame(&json!({"method": "subscribeEvents", "params": {}}))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        wr.write_all(&frame)
            .await
            .map_err(|_| ClientError::Closed)?;
        let ack = read_frame(&mut rd)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .ok_or(ClientError::Closed)?;
        let ack: Value =
            serde_json::from_slice(&ack).map_err(|e| ClientError::Protocol(e.to_string()))?;
        into_result(ack)?;
        Ok(EventStream {
            rd,
            _wr: wr,
            buf: Vec::new(),
        })
    }

    pub async fn next(&mut self) -> Result<ClientEvent, ClientError> {
        let more = read_frame_into(&mut self.rd, &mut self.buf)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        if !more {
            return Err(ClientError::Closed);
        }
        serde_json::from_slice(&self.buf).map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

/// `cowork-microvm call`: one request on its own connection, the result
/// printed as JSON; the helper's error on stderr and exit code 1.
pub fn call_main(socket: &Path, method: &str, params: &str) -> anyhow::Result<i32> {
    let params: Value =
        serde_json::from_str(params).map_err(|e| anyhow::anyhow!("params are not JSON: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match rt.block_on(one_shot(socket, method, params)) {
        Ok(v) => {
            println!("{v}");
            Ok(0)
        }
        Err(e) => {
            eprintln!("cowork-microvm: {e}");
            Ok(1)
        }
    }
}
