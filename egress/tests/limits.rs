//! The proxy's resource limits, end to end over a Unix socket as a VM's
//! shared transport uses it: one session at its cap must not starve
//! another, a slow request head is cut off and its slot freed, idle relays
//! are closed. Everything here talks to 127.0.0.1 only.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use cowork_egress::limits::Limits;
use cowork_egress::listener::serve_connections;
use cowork_egress::Policy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};

/// Generous bound for anything that should happen promptly.
const PATIENCE: Duration = Duration::from_secs(5);

/// A test's socket path, removed when the test ends, passed or not.
struct Socket(PathBuf);

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl AsRef<std::path::Path> for Socket {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

/// A proxy on a fresh socket: credential `tok1` and `tok2` are two
/// sessions, each allowed `entry`.
fn proxy(test: &str, entry: &str, limits: Limits) -> Socket {
    let path =
        std::env::temp_dir().join(format!("cowork-egress-{}-{test}.sock", std::process::id()));
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let one = Arc::new(Policy::new(&[entry.to_string()]).0);
    let two = Arc::new(Policy::new(&[entry.to_string()]).0);
    let choose = move |token: Option<&str>| match token {
        Some("tok1") => Some(one.clone()),
        Some("tok2") => Some(two.clone()),
        _ => None,
    };
    tokio::spawn(serve_connections(listener, choose, limits, "test".into()));
    Socket(path)
}

fn auth(token: &str) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("cowork:{token}"));
    format!("Proxy-Authorization: Basic {b}\r\n")
}

/// Sends `head` on a new connection and reads the first reply bytes.
async fn ask(path: &Socket, head: &str) -> (UnixStream, String) {
    let mut s = UnixStream::connect(path).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .expect("the proxy answers")
        .unwrap();
    (s, String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn connect(port: u16, token: &str) -> String {
    format!("CONNECT localhost:{port} HTTP/1.1\r\n{}\r\n", auth(token))
}

/// An upstream that accepts every connection and never says a word; it
/// closes a connection only once the proxy has closed its side.
async fn silent_upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut sink = [0u8; 256];
                while let Ok(1..) = s.read(&mut sink).await {}
            });
        }
    });
    port
}

/// Reads until the peer closes; `None` if it does not within `PATIENCE`.
async fn until_closed<S: AsyncReadExt + Unpin>(s: &mut S) -> Option<Duration> {
    let began = Instant::now();
    let mut sink = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut sink))
        .await
        .ok()
        .map(|_| began.elapsed())
}

#[tokio::test]
async fn a_session_at_its_cap_does_not_starve_another() {
    let port = silent_upstream().await;
    let limits = Limits {
        unidentified: 4,
        per_session: 4,
        ..Limits::default()
    };
    let path = proxy("cap", &format!("localhost:{port}"), limits);
    let mut held = Vec::new();
    for i in 0..4 {
        let (s, reply) = ask(&path, &connect(port, "tok1")).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "tunnel {i}: {reply}");
        held.push(s);
    }
    let (_, reply) = ask(&path, &connect(port, "tok1")).await;
    assert!(
        reply.starts_with("HTTP/1.1 429"),
        "one over the cap: {reply}"
    );
    assert!(reply.contains("already has 4 connections open"), "{reply}");
    assert!(
        reply.contains("\r\nX-Proxy-Error: too-many-connections\r\n"),
        "{reply}"
    );
    // The other session is unaffected, though the first holds as many
    // tunnels as there are slots for unidentified connections.
    let (_, reply) = ask(&path, &connect(port, "tok2")).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "other session: {reply}");
    // A closed tunnel gives its session a slot back.
    drop(held.pop());
    let began = Instant::now();
    loop {
        let (s, reply) = ask(&path, &connect(port, "tok1")).await;
        if reply.starts_with("HTTP/1.1 200") {
            held.push(s);
            break;
        }
        assert!(began.elapsed() < PATIENCE, "slot never freed: {reply}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_trickling_head_is_cut_at_the_deadline_and_its_slot_freed() {
    let port = silent_upstream().await;
    let deadline = Duration::from_millis(500);
    let limits = Limits {
        unidentified: 1,
        head_deadline: deadline,
        ..Limits::default()
    };
    let path = proxy("slowloris", &format!("localhost:{port}"), limits);
    let began = Instant::now();
    let slow = UnixStream::connect(&path).await.unwrap();
    let (mut slow_r, mut slow_w) = slow.into_split();
    // One byte every 50 ms of a head that never ends.
    let trickle = tokio::spawn(async move {
        while slow_w.write_all(b"X").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // The only unidentified slot is the slow client's: this one is let in
    // once it is cut off.
    let (_, reply) = ask(&path, &connect(port, "tok2")).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let served_after = began.elapsed();
    let mut reply = Vec::new();
    tokio::time::timeout(PATIENCE, slow_r.read_to_end(&mut reply))
        .await
        .expect("the slow client is cut off")
        .unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(
        served_after >= deadline && served_after < PATIENCE,
        "{served_after:?}"
    );
    trickle.abort();
}

/// An upstream for one connection that echoes what it gets and reports
/// when the proxy closed it.
async fn echo_upstream() -> (u16, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let h = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            if s.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    (port, h)
}

#[tokio::test]
async fn idle_tunnels_are_closed_on_both_sides() {
    let (port, upstream) = echo_upstream().await;
    let idle = Duration::from_millis(300);
    let limits = Limits {
        idle_timeout: idle,
        ..Limits::default()
    };
    let path = proxy("idle-tunnel", &format!("localhost:{port}"), limits);
    let (mut s, reply) = ask(&path, &connect(port, "tok1")).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // Traffic keeps it open well past the idle limit.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        tokio::time::timeout(PATIENCE, s.read_exact(&mut one))
            .await
            .expect("echo")
            .unwrap();
    }
    let quiet = until_closed(&mut s)
        .await
        .expect("an idle tunnel is closed to the client");
    assert!(quiet >= idle - Duration::from_millis(50), "{quiet:?}");
    tokio::time::timeout(PATIENCE, upstream)
        .await
        .expect("and to the upstream")
        .unwrap();
}

#[tokio::test]
async fn an_upstream_that_never_answers_a_forwarded_request_is_cut_off() {
    let port = silent_upstream().await;
    let limits = Limits {
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    // Plain http is forwarded to any port of an allowed host.
    let path = proxy("idle-forward", "localhost", limits);
    let mut s = UnixStream::connect(&path).await.unwrap();
    s.write_all(
        format!(
            "GET http://localhost:{port}/ HTTP/1.1\r\nHost: localhost\r\n{}\r\n",
            auth("tok1")
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert!(
        until_closed(&mut s).await.is_some(),
        "the exchange is closed once idle"
    );
}

/// A CONNECT is refused at ports the list does not name, and the refusal
/// reaches the client before any upstream connection.
#[tokio::test]
async fn tunnels_go_to_named_ports_only() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let path = proxy("ports", "localhost", Limits::default());
    let (_, reply) = ask(&path, &connect(port, "tok1")).await;
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    assert!(
        reply.contains("X-Proxy-Error: blocked-by-allowlist"),
        "{reply}"
    );
    assert!(reply.contains("ports 443 and 80 only"), "{reply}");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), l.accept())
            .await
            .is_err(),
        "no connection was attempted"
    );
    drop(l);
    let port = silent_upstream().await;
    let named = proxy(
        "ports-named",
        &format!("localhost:{port}"),
        Limits::default(),
    );
    let (_, reply) = ask(&named, &connect(port, "tok1")).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}
