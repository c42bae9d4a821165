//! Fan-out of events to every subscriber connection.
//!
//! Policy (documented in docs/protocol.md): each subscriber has a queue of
//! [`QUEUE_FRAMES`] frames. Publishing waits for room, which slows the
//! producing process down to the pace of its readers instead of dropping
//! output; a subscriber whose queue stays full for [`SLOW_SUBSCRIBER`] is
//! disconnected (the app re-subscribes 1-5 s later), so one stuck reader can
//! neither grow the helper's memory nor stop the others for long.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::event::Event;
use crate::wire::encode_frame;

/// With output read in 64 KiB chunks, about 4 MiB per subscriber.
pub const QUEUE_FRAMES: usize = 64;
pub const SLOW_SUBSCRIBER: Duration = Duration::from_secs(10);

#[derive(Clone, Default)]
pub struct EventBus {
    inner: Arc<Mutex<Subscribers>>,
}

#[derive(Default)]
struct Subscribers {
    next_id: u64,
    list: Vec<(u64, mpsc::Sender<Bytes>)>,
}

/// One subscriber's end: frames ready to write to its connection.
pub struct Subscription {
    id: u64,
    rx: mpsc::Receiver<Bytes>,
    bus: Weak<Mutex<Subscribers>>,
}

impl Subscription {
    /// The next framed event; `None` once the bus dropped this subscriber.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            remove(&bus, self.id);
        }
    }
}

fn remove(bus: &Mutex<Subscribers>, id: u64) {
    let mut subs = bus.lock().unwrap_or_else(|e| e.into_inner());
    subs.list.retain(|(sid, _)| *sid != id);
}

impl EventBus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn subscribe(&self) -> Subscription {
        let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
        let mut subs = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        subs.next_id += 1;
        let id = subs.next_id;
        subs.list.push((id, tx));
        Subscription {
            id,
            rx,
            bus: Arc::downgrade(&self.inner),
        }
    }

    pub fn subscriber_count(&self) -> usize {
        let subs = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        subs.list.len()
    }

    /// Sends `event` to every subscriber, in publication order per caller.
    /// Returns once every subscriber has it queued or has been dropped.
    pub async fn publish(&self, event: &Event) {
        let frame = match encode_frame(event) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("event dropped: {e}");
                return;
            }
        };
        let targets: Vec<(u64, mpsc::Sender<Bytes>)> = {
            let subs = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            subs.list.clone()
        };
        // Serve every subscriber with room first, so a slow one delays only
        // itself for this event.
        let mut full = Vec::new();
        for (id, tx) in targets {
            match tx.try_send(frame.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(f)) => full.push((id, tx, f)),
                Err(mpsc::error::TrySendError::Closed(_)) => remove(&self.inner, id),
            }
        }
        for (id, tx, f) in full {
            if tx.send_timeout(f, SLOW_SUBSCRIBER).await.is_err() {
                tracing::warn!(
                    subscriber = id,
                    "event subscriber did not read for {}s; disconnecting it",
                    SLOW_SUBSCRIBER.as_secs()
                );
                remove(&self.inner, id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: usize) -> Event {
        Event::Stdout {
            id: "p".into(),
            data: n.to_string(),
        }
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_event_in_order() {
        let bus = EventBus::new();
        let mut a = bus.subscribe();
        let mut b = bus.subscribe();
        for n in 0..10 {
            bus.publish(&ev(n)).await;
        }
        for sub in [&mut a, &mut b] {
            for n in 0..10 {
                let f = sub.recv().await.unwrap();
                let v: serde_json::Value = serde_json::from_slice(&f[4..]).unwrap();
                assert_eq!(v["data"], n.to_string());
            }
        }
    }

    #[tokio::test]
    async fn dropped_subscription_is_forgotten() {
        let bus = EventBus::new();
        let a = bus.subscribe();
        assert_eq!(bus.subscriber_count(), 1);
        drop(a);
        assert_eq!(bus.subscriber_count(), 0);
        bus.publish(&ev(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn stuck_subscriber_is_disconnected_and_others_keep_receiving() {
        let bus = EventBus::new();
        let mut stuck = bus.subscribe();
        let mut live = bus.subscribe();
        let reader = tokio::spawn(async move {
            let mut n = 0;
            while live.recv().await.is_some() {
                n += 1;
                if n == QUEUE_FRAMES + 10 {
                    break;
                }
            }
            n
        });
        for n in 0..QUEUE_FRAMES + 10 {
            bus.publish(&ev(n)).await;
        }
        assert_eq!(reader.await.unwrap(), QUEUE_FRAMES + 10);
        assert_eq!(
            bus.subscriber_count(),
            0,
            "stuck one dropped, live one ended"
        );
        let mut got = 0;
        while stuck.recv().await.is_some() {
            got += 1;
        }
        assert_eq!(got, QUEUE_FRAMES, "stuck subscriber keeps only what fitted");
    }
}
