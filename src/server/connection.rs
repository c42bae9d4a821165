//! One client connection. Its first request decides what it is: an event
//! subscription, or a request stream (one-shot requests and persistent pipes
//! are served alike, each request in its own task so a slow one never holds
//! up a fast one; replies go out as they finish).

use std::sync::Arc;

use bytes::Bytes;
use cowork_backend::wire::encode_frame;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Semaphore};

use crate::dispatch::{dispatch, Helper};
use crate::protocol::{error_reply, ok_reply, parse_request, read_frame, FrameReadError, Request};

/// Requests one connection may have in flight; past that, reading pauses.
const IN_FLIGHT: usize = 64;
/// Replies queued for the writer.
const REPLY_QUEUE: usize = 64;

/// Methods whose params are secret: never logged, not even at debug.
fn quiet(method: &str) -> bool {
    matches!(method, "spawn" | "addApprovedOauthToken" | "writeStdin")
}

pub async fn serve(helper: Helper, stream: UnixStream, conn: u64) {
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == nix::unistd::getuid().as_raw() => {}
        Ok(cred) => {
            tracing::warn!(
                conn,
                "refused a connection from uid {} (only our own uid may connect)",
                cred.uid()
            );
            return;
        }
        Err(e) => {
            tracing::warn!(
                conn,
                "refused a connection whose peer cannot be identified: {e}"
            );
            return;
        }
    }
    let (mut rd, mut wr) = stream.into_split();
    let first = match read_frame(&mut rd).await {
        Ok(Some(body)) => body,
        Ok(None) => return,
        Err(e) => {
            reject(&mut wr, conn, &e).await;
            return;
        }
    };
    match parse_request(&first) {
        Ok(req) if req.method == "subscribeEvents" => subscription(helper, rd, wr, conn).await,
        first => requests(helper, rd, wr, conn, first).await,
    }
}

async fn write_value(wr: &mut OwnedWriteHalf, v: &Value) -> bool {
    match encode_frame(v) {
        Ok(f) => wr.write_all(&f).await.is_ok(),
        Err(_) => false,
    }
}

/// Answers a frame that broke the stream, then the connection is closed.
async fn reject(wr: &mut OwnedWriteHalf, conn: u64, e: &FrameReadError) {
    tracing::warn!(conn, "closing connection: {e}");
    if !matches!(e, FrameReadError::Io(_)) {
        let _ = write_value(wr, &error_reply(&e.to_string(), None)).await;
    }
}

async fn subscription(
    helper: Helper,
    mut rd: tokio::net::unix::OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    conn: u64,
) {
    let mut sub = helper.bus.subscribe();
    if !write_value(&mut wr, &json!({"success": true})).await {
        return;
    }
    tracing::debug!(conn, "event subscriber attached");
    // The client sends nothing more; reading only tells us when it leaves.
    let closed = async {
        loop {
            match read_frame(&mut rd).await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    };
    tokio::pin!(closed);
    loop {
        tokio::select! {
            frame = sub.recv() => match frame {
                Some(f) => if wr.write_all(&f).await.is_err() { break },
                None => break,
            },
            _ = &mut closed => break,
        }
    }
    tracing::debug!(conn, "event subscriber detached");
}

async fn requests(
    helper: Helper,
    mut rd: tokio::net::unix::OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    conn: u64,
    first: Result<Request, crate::protocol::RequestError>,
) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(REPLY_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if wr.write_all(&frame).await.is_err() {
                break;
            }
        }
        wr
    });
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut next = Some(first);
    let mut broken = None;
    loop {
        let parsed = match next.take() {
            Some(p) => p,
            None => match read_frame(&mut rd).await {
                Ok(Some(body)) => parse_request(&body),
                Ok(None) => break,
                Err(e) => {
                    broken = Some(e);
                    break;
                }
            },
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let tx = tx.clone();
        let helper = helper.clone();
        tokio::spawn(async move {
            let reply = match parsed {
                Ok(req) => {
                    if !quiet(&req.method) {
                        tracing::debug!(conn, method = %req.method, "request");
                    }
                    match dispatch(&helper, &req.method, req.params).await {
                        Ok(result) => ok_reply(result, req.id),
                        Err(msg) => {
                            tracing::debug!(conn, method = %req.method, "request failed: {msg}");
                            error_reply(&msg, req.id)
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(conn, "bad request: {}", e.message);
                    error_reply(&e.message, e.id)
                }
            };
            let frame =
                encode_frame(&reply).or_else(|e| encode_frame(&error_reply(&e.to_string(), None)));
            if let Ok(f) = frame {
                let _ = tx.send(f).await;
            }
            drop(permit);
        });
    }
    drop(tx);
    // Every reply still in flight goes out before the connection closes.
    if let Ok(mut wr) = writer.await {
        if let Some(e) = broken {
            reject(&mut wr, conn, &e).await;
        }
    }
}
