//! Closing relays nobody uses: a tunnel to a host that never answers and a
//! client that never sends would otherwise hold its slot (and two sockets)
//! forever. Streams are wrapped so every byte moved either way stamps one
//! shared clock; a watchdog ends the relay once the clock is older than the
//! limit.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When bytes last moved, in milliseconds since the relay began.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::AcqRel);
    }

    fn quiet_for(&self) -> Duration {
        let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Acquire));
        Instant::now().saturating_duration_since(last)
    }

    /// Returns once nothing has moved for `limit`.
    pub async fn idle(&self, limit: Duration) {
        loop {
            let quiet = self.quiet_for();
            if quiet >= limit {
                return;
            }
            tokio::time::sleep(limit - quiet).await;
        }
    }
}

impl Default for Activity {
    fn default() -> Activity {
        Activity::new()
    }
}

/// A stream that stamps `activity` whenever bytes pass through it.
pub struct Stamped<'a, S> {
    inner: S,
    activity: &'a Activity,
}

impl<'a, S> Stamped<'a, S> {
    pub fn new(inner: S, activity: &'a Activity) -> Stamped<'a, S> {
        Stamped { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stamped<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stamped<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn traffic_either_way_postpones_idleness() {
        let activity = Activity::new();
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = Stamped::new(a, &activity);
        let limit = Duration::from_secs(60);
        tokio::time::sleep(Duration::from_secs(50)).await;
        a.write_all(b"x").await.unwrap();
        tokio::time::sleep(Duration::from_secs(50)).await;
        b.write_all(b"y").await.unwrap();
        let mut one = [0u8; 1];
        a.read_exact(&mut one).await.unwrap();
        let began = Instant::now();
        activity.idle(limit).await;
        assert_eq!(
            began.elapsed(),
            limit,
            "idle a full limit after the last byte"
        );
    }
}
