//! Starting a VM's vCPU threads all or none.
//!
//! Every thread is spawned and prepares itself (its seccomp filter) behind
//! a gate; only when all of them are ready is the gate opened and do they
//! run the guest. If one cannot be spawned or prepared, the gate is
//! closed instead: the threads already started return without running
//! anything and are joined before the error is returned, so a VM whose
//! vCPU N fails has never run vCPUs 0..N, and no thread outlives it to use
//! its memory.

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Open (`Some(true)`), closed (`Some(false)`) or not decided (`None`).
#[derive(Default)]
struct Gate {
    state: Mutex<Option<bool>>,
    decided: Condvar,
}

impl Gate {
    fn decide(&self, open: bool) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(open);
        self.decided.notify_all();
    }

    /// Waits for the decision; true when the thread may run.
    fn wait(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(open) = *state {
                return open;
            }
            state = self.decided.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

pub type Thread = JoinHandle<Result<(), String>>;

/// Starts a thread named `name` per item: each runs `prepare` on its item,
/// then, once every thread has prepared, `run`. On the first failure
/// (spawning, or a `prepare`) no `run` happens and every started thread is
/// joined before the error is returned.
pub fn start_all<T: Send + 'static>(
    items: Vec<(String, T)>,
    prepare: impl Fn(&T) -> Result<(), String> + Clone + Send + 'static,
    run: impl Fn(T) -> Result<(), String> + Clone + Send + 'static,
) -> Result<Vec<Thread>, String> {
    let gate = Arc::new(Gate::default());
    let mut threads = Vec::with_capacity(items.len());
    let mut failure = None;
    for (name, item) in items {
        let (ready_tx, ready) = mpsc::sync_channel(1);
        let (prepare, run, gate_seen) = (prepare.clone(), run.clone(), gate.clone());
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let prepared = prepare(&item);
                let ok = prepared.is_ok();
                let _ = ready_tx.send(prepared);
                if ok && gate_seen.wait() {
                    run(item)
                } else {
                    Ok(())
                }
            });
        let thread = match spawned {
            Ok(t) => t,
            Err(e) => {
                failure = Some(format!("{name}: cannot start its thread: {e}"));
                break;
            }
        };
        threads.push(thread);
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure = Some(format!("{name}: {e}"));
                break;
            }
            Err(_) => {
                failure = Some(format!("{name}: its thread ended while preparing"));
                break;
            }
        }
    }
    match failure {
        None => {
            gate.decide(true);
            Ok(threads)
        }
        Some(e) => {
            gate.decide(false);
            for t in threads {
                let _ = t.join();
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn items(n: usize) -> Vec<(String, usize)> {
        (0..n).map(|i| (format!("test-vcpu{i}"), i)).collect()
    }

    #[test]
    fn a_later_failure_runs_nothing_and_leaves_no_thread() {
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        // Every thread holds a clone of `prepare`, so of this too: once they
        // have all ended, the test's is the only one left.
        let alive = Arc::new(());
        let held = alive.clone();
        let started = start_all(
            items(4),
            // vCPU 2 fails to prepare (as a refused seccomp filter would).
            move |i: &usize| {
                let _ = &held;
                if *i == 2 {
                    Err("no filter".into())
                } else {
                    Ok(())
                }
            },
            move |_| {
                r.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
        );
        let err = started.err().unwrap_or_default();
        assert!(
            err.contains("test-vcpu2") && err.contains("no filter"),
            "{err}"
        );
        assert_eq!(ran.load(Ordering::SeqCst), 0, "no vCPU ran");
        assert_eq!(Arc::strong_count(&alive), 1, "every thread has ended");
    }

    #[test]
    fn all_prepared_then_all_run() {
        let prepared = Arc::new(AtomicUsize::new(0));
        let p = prepared.clone();
        let threads = start_all(
            items(3),
            move |_: &usize| {
                p.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
            {
                let p = prepared.clone();
                move |_| {
                    // Every thread had prepared before any ran.
                    if p.load(Ordering::SeqCst) == 3 {
                        Ok(())
                    } else {
                        Err("ran before all were ready".into())
                    }
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(threads.len(), 3);
        for t in threads {
            assert_eq!(t.join().ok(), Some(Ok(())));
        }
    }
}
