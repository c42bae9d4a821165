//! A process's stdin as a queue bounded in bytes, so the request loop never
//! waits on a process: data is accepted at once or refused at once. A
//! process that never reads its stdin holds at most [`STDIN_LIMIT`] bytes
//! of the agent's memory and stalls nobody else.

use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Bytes a process may have waiting for it to read.
pub const STDIN_LIMIT: usize = 16 * 1024 * 1024;

/// The agent's end of one process's stdin.
#[derive(Clone)]
pub struct StdinQueue {
    tx: mpsc::UnboundedSender<(Vec<u8>, OwnedSemaphorePermit)>,
    /// One permit per queued byte: the bound the unbounded channel lacks.
    bytes: Arc<Semaphore>,
    limit: usize,
}

/// Why data was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Over the byte bound: the process is not reading fast enough.
    Full { queued: usize },
    /// The process's stdin is gone (it exited or closed it).
    Closed,
}

impl StdinQueue {
    /// Starts the task that feeds `pipe` and returns its queue. The task
    /// ends (closing the pipe) when every sender is dropped or a write
    /// fails.
    pub fn start<W: AsyncWrite + Unpin + Send + 'static>(mut pipe: W, limit: usize) -> StdinQueue {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Vec<u8>, OwnedSemaphorePermit)>();
        tokio::spawn(async move {
            while let Some((data, permit)) = rx.recv().await {
                let ok = pipe.write_all(&data).await.is_ok();
                // The bytes leave the queue once written (or dropped).
                drop(permit);
                if !ok {
                    break;
                }
            }
        });
        let limit = limit.min(Semaphore::MAX_PERMITS);
        StdinQueue {
            tx,
            bytes: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// Queues `data` without waiting, or refuses all of it.
    pub fn push(&self, data: &[u8]) -> Result<(), Refused> {
        if data.is_empty() {
            return Ok(());
        }
        if self.tx.is_closed() {
            return Err(Refused::Closed);
        }
        let n = u32::try_from(data.len()).map_err(|_| self.full())?;
        let permit = Arc::clone(&self.bytes)
            .try_acquire_many_owned(n)
            .map_err(|_| self.full())?;
        self.tx
            .send((data.to_vec(), permit))
            .map_err(|_| Refused::Closed)
    }

    fn full(&self) -> Refused {
        Refused::Full {
            queued: self.limit.saturating_sub(self.bytes.available_permits()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_over_the_bound_and_frees_what_was_written() {
        // A pipe nobody reads: its 64-byte buffer fills and the writer
        // waits, so the queue holds the rest.
        let (w, mut r) = tokio::io::duplex(64);
        let q = StdinQueue::start(w, 1000);
        assert_eq!(q.push(&[1; 600]), Ok(()));
        assert!(matches!(q.push(&[2; 600]), Err(Refused::Full { .. })));
        assert_eq!(q.push(&[]), Ok(()));
        // Reading drains the queue and makes room again.
        let mut got = vec![0u8; 600];
        tokio::io::AsyncReadExt::read_exact(&mut r, &mut got)
            .await
            .expect("read");
        assert!(got.iter().all(|b| *b == 1));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(q.push(&[3; 600]), Ok(()));
    }

    #[tokio::test]
    async fn a_closed_pipe_is_reported() {
        let (w, r) = tokio::io::duplex(64);
        drop(r);
        let q = StdinQueue::start(w, 1000);
        let _ = q.push(b"x");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(q.push(b"y"), Err(Refused::Closed));
    }
}
