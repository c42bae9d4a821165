//! How many proxy conversations one session has open, so a session that
//! opens connections without end (or tunnels to a host that never closes)
//! uses up its own share and not every session's. The count lives with the
//! session's policy: every connection of a session serves with a clone of
//! it, and the clones share this.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
struct Shared {
    open: AtomicUsize,
    /// Whether the session's first refusal has been logged: a client
    /// retrying in a loop would otherwise flood the log.
    refusal_logged: AtomicBool,
}

#[derive(Debug, Clone, Default)]
pub struct Conversations(Arc<Shared>);

/// One open conversation; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Conversations {
    /// A slot, or `None` when the session already has `cap` open.
    pub fn try_open(&self, cap: usize) -> Option<Slot> {
        self.0
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.0.clone()))
    }

    pub fn open(&self) -> usize {
        self.0.open.load(Ordering::Acquire)
    }

    /// True the first time only: the caller logs the refusal then.
    pub fn first_refusal(&self) -> bool {
        !self.0.refusal_logged.swap(true, Ordering::AcqRel)
    }
}

/// The count carries no policy meaning: two policies with the same entries
/// are equal however busy their sessions are.
impl PartialEq for Conversations {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Conversations {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_shared_and_released() {
        let c = Conversations::default();
        let a = c.try_open(2).expect("first");
        let b = c.clone().try_open(2).expect("clones share the count");
        assert!(c.try_open(2).is_none(), "at the cap");
        assert_eq!(c.open(), 2);
        drop(a);
        let again = c.try_open(2);
        assert!(again.is_some(), "a dropped slot is free again");
        drop((b, again));
        assert_eq!(c.open(), 0);
        assert!(c.first_refusal());
        assert!(!c.clone().first_refusal(), "logged once per session");
    }
}
