//! The guest's end of egress: a TCP listener on each session's own
//! loopback ([`crate::wire::EGRESS_LISTEN`], made by
//! [`crate::session_ns`]) whose every connection is forwarded to the
//! host's egress proxy (over vsock in the VM; over a Unix socket when the
//! agent runs on the host for tests).

use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_vsock::{VsockAddr, VsockStream};

/// Where the host side of a channel is.
#[derive(Debug, Clone)]
pub enum HostEnd {
    Vsock { cid: u32, port: u32 },
    Unix(PathBuf),
}

/// A connected channel to the host, whichever transport it is.
pub enum Channel {
    Vsock(VsockStream),
    Unix(tokio::net::UnixStream),
}

impl HostEnd {
    pub async fn connect(&self) -> std::io::Result<Channel> {
        match self {
            HostEnd::Vsock { cid, port } => VsockStream::connect(VsockAddr::new(*cid, *port))
                .await
                .map(Channel::Vsock),
            HostEnd::Unix(p) => tokio::net::UnixStream::connect(p).await.map(Channel::Unix),
        }
    }
}

/// Accepts on `listener` for ever, forwarding each connection to `host`.
/// Never returns (the task serving a session's listener is aborted when
/// the session ends): a failed accept (EMFILE, ENOMEM: something a
/// session can cause) is logged and retried after a pause. A forwarder
/// that stopped would leave the port free for a process to listen on and
/// collect proxy credentials (which is also why the port is a privileged
/// one, see [`crate::wire::EGRESS_LISTEN`]). Each session's listener is
/// in that session's own network namespace ([`crate::session_ns`]).
pub async fn serve(listener: TcpListener, host: HostEnd) -> std::convert::Infallible {
    let mut backoff = Backoff::default();
    accept_for_ever(
        || listener.accept(),
        &mut backoff,
        |tcp| {
            let host = host.clone();
            tokio::spawn(async move {
                let mut tcp = tcp.0;
                let res = match host.connect().await {
                    Ok(Channel::Vsock(mut v)) => {
                        tokio::io::copy_bidirectional(&mut tcp, &mut v).await
                    }
                    Ok(Channel::Unix(mut u)) => {
                        tokio::io::copy_bidirectional(&mut tcp, &mut u).await
                    }
                    Err(e) => Err(e),
                };
                drop(res);
            });
        },
    )
    .await
}

/// The accept loop, apart so that its handling of errors can be tested.
async fn accept_for_ever<T, F, Fut>(
    mut accept: F,
    backoff: &mut Backoff,
    mut serve: impl FnMut(T),
) -> std::convert::Infallible
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    loop {
        match accept().await {
            Ok(conn) => {
                backoff.reset();
                serve(conn);
            }
            Err(e) => backoff.failed("egress forwarder: accept", &e).await,
        }
    }
}

/// Pauses after failures (10 ms doubling to 1 s) and logs a bounded
/// number of them: a session provoking errors must not fill the log.
#[derive(Debug)]
struct Backoff {
    first: Duration,
    max: Duration,
    delay: Duration,
    logged: u32,
    suppressed: u64,
}

const FIRST_DELAY: Duration = Duration::from_millis(10);
const MAX_DELAY: Duration = Duration::from_secs(1);
/// Failures logged in a row before the rest are only counted.
const LOG_IN_A_ROW: u32 = 5;

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(FIRST_DELAY, MAX_DELAY)
    }
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            delay: first,
            logged: 0,
            suppressed: 0,
        }
    }

    async fn failed(&mut self, what: &str, e: &std::io::Error) {
        if self.logged < LOG_IN_A_ROW {
            self.logged += 1;
            eprintln!("cowork-guest: {what}: {e} (retrying)");
        } else {
            self.suppressed += 1;
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(self.max);
    }

    fn reset(&mut self) {
        if self.suppressed > 0 {
            eprintln!(
                "cowork-guest: {} more failures before it recovered",
                self.suppressed
            );
        }
        *self = Backoff::new(self.first, self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> Backoff {
        Backoff::new(Duration::from_millis(1), Duration::from_millis(4))
    }

    #[tokio::test]
    async fn accept_errors_never_end_the_forwarder() {
        let mut calls = 0u32;
        let mut served = Vec::new();
        let mut backoff = quick();
        let run = accept_for_ever(
            || {
                calls += 1;
                let n = calls;
                async move {
                    if n <= 20 {
                        Err(std::io::Error::from_raw_os_error(nix::libc::EMFILE))
                    } else if n <= 25 {
                        Ok(n)
                    } else {
                        // No more connections: the loop waits (for ever).
                        std::future::pending().await
                    }
                }
            },
            &mut backoff,
            |n| served.push(n),
        );
        // Twenty failures in a row, then connections are served again.
        let _ = tokio::time::timeout(Duration::from_millis(500), run).await;
        assert_eq!(served, [21, 22, 23, 24, 25]);
    }

    #[test]
    fn backoff_is_bounded() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut b = quick();
        let e = std::io::Error::from_raw_os_error(nix::libc::ENOMEM);
        rt.block_on(async {
            for _ in 0..100 {
                b.failed("test", &e).await;
            }
        });
        assert_eq!(b.delay, Duration::from_millis(4));
        assert_eq!(b.logged, LOG_IN_A_ROW);
        assert_eq!(b.suppressed, 95);
    }
}
