//! Remembers which hosts a policy has refused, so each is logged once per
//! session rather than once per request (a looping client would otherwise
//! flood the log). Bounded: a session naming endless distinct hosts fills
//! the set once, then further new hosts go unlogged (with one note).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Distinct refused hosts remembered (and so logged) per policy.
const MAX_REMEMBERED: usize = 64;

/// Shared by every clone of one policy: a clone serves one connection of
/// the same session.
#[derive(Debug, Clone, Default)]
pub struct DenialLog {
    seen: Arc<Mutex<HashSet<String>>>,
}

/// What to log for a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstTime {
    /// Not refused before: log it.
    Yes,
    /// The set just became full: log that further hosts go unlogged.
    Full,
    /// Already logged, or the set is full.
    No,
}

impl DenialLog {
    pub fn record(&self, host: &str) -> FirstTime {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(host) {
            return FirstTime::No;
        }
        match seen.len() {
            n if n < MAX_REMEMBERED => {
                seen.insert(host.to_string());
                FirstTime::Yes
            }
            MAX_REMEMBERED => {
                // One past the limit: an empty-name marker makes the note
                // appear once.
                seen.insert(String::new());
                FirstTime::Full
            }
            _ => FirstTime::No,
        }
    }
}

/// The log carries no policy meaning: two policies with the same entries
/// are equal whatever they have refused.
impl PartialEq for DenialLog {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for DenialLog {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_host_and_bounded() {
        let log = DenialLog::default();
        assert_eq!(log.record("a.test"), FirstTime::Yes);
        assert_eq!(log.record("a.test"), FirstTime::No);
        assert_eq!(log.clone().record("a.test"), FirstTime::No, "clones share");
        for i in 1..MAX_REMEMBERED {
            assert_eq!(log.record(&format!("h{i}")), FirstTime::Yes);
        }
        assert_eq!(log.record("one.more"), FirstTime::Full);
        assert_eq!(log.record("and.another"), FirstTime::No);
        assert_eq!(log.seen.lock().unwrap().len(), MAX_REMEMBERED + 1);
    }
}
