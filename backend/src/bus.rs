//! Fan-out of events to every subscriber connection.
//!
//! Policy (documented in docs/protocol.md): each subscriber has a queue of
//! [`QUEUE_FRAMES`] frames. Publishing waits for room, which slows the
//! producing process down to the pace of its readers instead of dropping
//! output; a subscriber whose queue stays full for [`SLOW_SUBSCRIBER`] is
//! disconnected (the app re-subscribes 1-5 s later), so one stuck reader can
//! neither grow the helper's memory nor stop the others for long.
//!
//! The app subscribes and starts the environment at the same moment, on two
//! connections, so a subscription often arrives after the start events were
//! published. The bus therefore keeps the latest state-like events (see
//! [`Retained`]) and replays them to each new subscriber before anything
//! live.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::event::Event;
use crate::wire::encode_frame;

/// With output read in 64 KiB chunks, about 4 MiB per subscriber.
pub const QUEUE_FRAMES: usize = 64;
pub const SLOW_SUBSCRIBER: Duration = Duration::from_secs(10);
/// `startupStep`s kept for replay; a start has a handful (two per stage),
/// so this only bounds a backend gone wrong. Together with the network and
/// reachability events the replay always fits in a fresh queue.
pub const RETAINED_STEPS: usize = 32;
const _: () = assert!(RETAINED_STEPS + 2 <= QUEUE_FRAMES);

#[derive(Clone, Default)]
pub struct EventBus {
    inner: Arc<Mutex<Subscribers>>,
}

#[derive(Default)]
struct Subscribers {
    next_id: u64,
    list: Vec<(u64, mpsc::Sender<Bytes>)>,
    retained: Retained,
}

/// What a late subscriber needs to know about the current run: the last
/// `networkStatus`, the last `apiReachability` and the `startupStep`s of
/// the current start, in publication order. Process output and exits are
/// not state and are never kept.
#[derive(Default)]
struct Retained {
    frames: Vec<(Kept, Bytes)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kept {
    Network,
    Reachability,
    Step,
}

impl Retained {
    fn record(&mut self, event: &Event, frame: &Bytes) {
        let kind = match event {
            Event::NetworkStatus { .. } => Kept::Network,
            Event::ApiReachability { .. } => Kept::Reachability,
            Event::StartupStep { .. } => Kept::Step,
            _ => return,
        };
        if kind == Kept::Step {
            let steps = self.frames.iter().filter(|(k, _)| *k == Kept::Step).count();
            if steps >= RETAINED_STEPS {
                if let Some(i) = self.frames.iter().position(|(k, _)| *k == Kept::Step) {
                    self.frames.remove(i);
                }
            }
        } else {
            // Only the latest value of a state matters.
            self.frames.retain(|(k, _)| *k != kind);
        }
        self.frames.push((kind, frame.clone()));
    }
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

    /// A new subscriber; its queue already holds the retained state, so the
    /// replay comes before any live event. Both happen under the bus lock,
    /// so an event is either in the replay or delivered live, never both or
    /// neither.
    pub fn subscribe(&self) -> Subscription {
        let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
        let mut subs = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for (_, frame) in &subs.retained.frames {
            // Cannot fail: the queue is fresh and larger than the replay.
            let _ = tx.try_send(frame.clone());
        }
        subs.next_id += 1;
        let id = subs.next_id;
        subs.list.push((id, tx));
        Subscription {
            id,
            rx,
            bus: Arc::downgrade(&self.inner),
        }
    }

    /// A new start begins: the previous start's steps no longer describe
    /// anything (network and reachability stay until they change).
    pub fn start_began(&self) {
        let mut subs = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        subs.retained.frames.retain(|(k, _)| *k != Kept::Step);
    }

    /// The environment stopped: a later subscriber is told nothing, as by a
    /// helper that never started (those already subscribed saw the stop).
    pub fn forget_state(&self) {
        let mut subs = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        subs.retained.frames.clear();
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
            let mut subs = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            subs.retained.record(event, &frame);
            subs.list.clone()
        };
        self.deliver(targets, frame).await;
    }

    /// Sends an event framed by the caller (process output, from
    /// [`crate::wire::encode_output_frame`]) as [`publish`](Self::publish)
    /// does. Output is not state: nothing is retained.
    pub async fn publish_output(&self, frame: Bytes) {
        let targets = {
            let subs = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            subs.list.clone()
        };
        self.deliver(targets, frame).await;
    }

    async fn deliver(&self, targets: Vec<(u64, mpsc::Sender<Bytes>)>, frame: Bytes) {
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

    fn net(up: bool) -> Event {
        Event::NetworkStatus {
            status: if up {
                crate::NetworkStatus::Connected
            } else {
                crate::NetworkStatus::Disconnected
            },
        }
    }

    fn step(name: &str, status: &str) -> Event {
        Event::StartupStep {
            step: name.into(),
            status: status.into(),
        }
    }

    fn reach(status: &str) -> Event {
        Event::ApiReachability {
            status: status.into(),
        }
    }

    /// Whatever is queued now, decoded.
    fn drain(sub: &mut Subscription) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while let Ok(f) = sub.rx.try_recv() {
            out.push(serde_json::from_slice(&f[4..]).unwrap());
        }
        out
    }

    fn as_value(e: &Event) -> serde_json::Value {
        serde_json::to_value(e).unwrap()
    }

    #[tokio::test]
    async fn late_subscriber_gets_the_start_state_in_order_but_no_output() {
        let bus = EventBus::new();
        bus.start_began();
        for e in [
            step("boot", "started"),
            net(false),
            ev(1),
            step("boot", "completed"),
            net(true),
            reach("unknown"),
            reach("reachable"),
        ] {
            bus.publish(&e).await;
        }
        let mut late = bus.subscribe();
        let want: Vec<_> = [
            step("boot", "started"),
            step("boot", "completed"),
            net(true),
            reach("reachable"),
        ]
        .iter()
        .map(as_value)
        .collect();
        assert_eq!(drain(&mut late), want);
        // Live events follow the replay, once each.
        bus.publish(&ev(2)).await;
        assert_eq!(drain(&mut late), vec![as_value(&ev(2))]);
    }

    #[tokio::test]
    async fn a_new_start_drops_old_steps_and_a_stop_drops_everything() {
        let bus = EventBus::new();
        bus.publish(&step("old", "completed")).await;
        bus.publish(&net(true)).await;
        bus.start_began();
        bus.publish(&step("new", "started")).await;
        let mut a = bus.subscribe();
        assert_eq!(
            drain(&mut a),
            vec![as_value(&net(true)), as_value(&step("new", "started"))]
        );
        bus.forget_state();
        let mut b = bus.subscribe();
        assert!(drain(&mut b).is_empty());
    }

    #[tokio::test]
    async fn retained_steps_are_bounded() {
        let bus = EventBus::new();
        bus.publish(&net(true)).await;
        for n in 0..RETAINED_STEPS * 3 {
            bus.publish(&step(&n.to_string(), "started")).await;
        }
        bus.publish(&reach("unreachable")).await;
        let mut late = bus.subscribe();
        let got = drain(&mut late);
        assert_eq!(got.len(), RETAINED_STEPS + 2);
        assert_eq!(got[0], as_value(&net(true)));
        assert_eq!(
            got[1]["step"],
            (RETAINED_STEPS * 2).to_string(),
            "oldest dropped"
        );
        assert_eq!(got[RETAINED_STEPS + 1], as_value(&reach("unreachable")));
    }
}
