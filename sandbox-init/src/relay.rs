//! The relay from the sandbox's loopback proxy port to the egress proxy's
//! Unix socket: one accepting thread, and two small threads per
//! connection copying each way with a fixed buffer. Threads rather than an
//! event loop keep the binary free of an async runtime; the count is
//! capped so a session cannot make pid 1 create threads without bound.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Pause after a failed accept (EMFILE when the session has used up its
/// descriptors, ENOBUFS...): doubling from the first to the last, reset by
/// a successful accept. Retrying at once would spin pid 1 on a core while
/// the condition lasts.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Connections relayed at once; one more is closed on accept. Far above
/// what a session's HTTP clients keep open, far below what would exhaust
/// threads or memory (two threads each).
pub const MAX_CONNECTIONS: usize = 256;

/// The copying threads need little stack: their buffer is on the heap.
const THREAD_STACK: usize = 64 * 1024;
const COPY_BUFFER: usize = 16 * 1024;

pub fn next_backoff(current: Duration) -> Duration {
    (current * 2).clamp(ACCEPT_BACKOFF_FIRST, ACCEPT_BACKOFF_MAX)
}

/// Binds `listen` and relays its connections to `proxy` from a background
/// thread. A failure is reported on stderr and the sandbox runs on without
/// network, as before.
pub fn start(listen: &str, proxy: &Path) {
    // An address literal only: no name lookup in pid 1.
    let bound = listen
        .parse::<SocketAddr>()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
        .and_then(TcpListener::bind);
    let listener = match bound {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cowork sandbox: egress proxy unavailable on {listen}: {e}");
            return;
        }
    };
    let proxy = proxy.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("relay".into())
        .stack_size(THREAD_STACK)
        .spawn(move || accept_loop(&listener, &proxy));
    if let Err(e) = spawned {
        eprintln!("cowork sandbox: egress proxy unavailable on {listen}: {e}");
    }
}

fn accept_loop(listener: &TcpListener, proxy: &Path) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut pause = Duration::ZERO;
    loop {
        let tcp = match listener.accept() {
            Ok((tcp, _)) => {
                pause = Duration::ZERO;
                tcp
            }
            Err(_) => {
                pause = next_backoff(pause);
                std::thread::sleep(pause);
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            continue; // dropping `tcp` closes it
        }
        let slot = Slot(Arc::clone(&active));
        let proxy = proxy.to_path_buf();
        // On failure the closure, with `tcp` and `slot`, is dropped: the
        // connection closes and its count is returned.
        let _ = std::thread::Builder::new()
            .stack_size(THREAD_STACK)
            .spawn(move || relay(tcp, &proxy, slot));
    }
}

/// One connection's place in the count, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn relay(tcp: TcpStream, proxy: &PathBuf, _slot: Slot) {
    let Ok(unix) = UnixStream::connect(proxy) else {
        return;
    };
    let (Ok(tcp_in), Ok(unix_out)) = (tcp.try_clone(), unix.try_clone()) else {
        return;
    };
    let upstream = std::thread::Builder::new()
        .stack_size(THREAD_STACK)
        .spawn(move || pump(tcp_in, unix_out, |s| s.shutdown(Shutdown::Write)));
    pump(unix, tcp, |s| s.shutdown(Shutdown::Write));
    if let Ok(t) = upstream {
        let _ = t.join();
    }
}

/// Copies `from` to `to` until end of file or an error, then shuts down
/// `to`'s writing side so the peer sees the end too (what an HTTP client
/// half-closing a tunnel expects).
fn pump<R: Read, W: Write>(mut from: R, mut to: W, close: impl FnOnce(&W) -> io::Result<()>) {
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let Some(chunk) = buf.get(..n) else { break };
        if to.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = close(&to);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_back_off() {
        let mut d = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..10 {
            d = next_backoff(d);
            seen.push(d.as_millis());
        }
        assert_eq!(seen, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
    }

    #[test]
    fn relays_both_ways_and_passes_the_half_close() {
        let dir = std::env::temp_dir().join(format!("sandbox-init-relay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let sock = dir.join("proxy.sock");
        let _ = std::fs::remove_file(&sock);
        let upstream = std::os::unix::net::UnixListener::bind(&sock).expect("bind unix");
        // Port 0: any free port; the relay's own listener is made the same
        // way `start` makes it.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let addr = listener.local_addr().expect("addr");
        let proxy = sock.clone();
        std::thread::spawn(move || accept_loop(&listener, &proxy));
        let mut client = TcpStream::connect(addr).expect("connect");
        client.write_all(b"ping").expect("write");
        client.shutdown(Shutdown::Write).expect("half close");
        let (mut server, _) = upstream.accept().expect("accept unix");
        let mut got = Vec::new();
        server
            .read_to_end(&mut got)
            .expect("read to the half close");
        assert_eq!(got, b"ping");
        server.write_all(b"pong").expect("reply");
        drop(server);
        let mut back = Vec::new();
        client.read_to_end(&mut back).expect("read reply");
        assert_eq!(back, b"pong");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
