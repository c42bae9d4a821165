//! Bounds on log lines a guest can cause: at most [`PER_SECOND`] messages
//! per call site per second, the rest counted and reported as "K
//! suppressed" with the next message let through. A guest sending
//! malformed packets in a loop must not fill the helper's log (or spend
//! its CPU formatting lines).
//!
//! Use [`guest_log!`](crate::guest_log) at every site a guest can trigger.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Messages per site per second.
pub const PER_SECOND: u32 = 10;
const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` messages from this site were dropped since the
    /// last one logged.
    Log {
        suppressed: u64,
    },
    Drop,
}

#[derive(Default)]
struct Site {
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

/// Per-site counters. Keys are call sites (`&'static str`), so the map is
/// bounded by the code, not by the guest.
#[derive(Default)]
pub struct Limiter {
    sites: Mutex<HashMap<&'static str, Site>>,
}

impl Limiter {
    pub fn check(&self, key: &'static str, now: Instant) -> Verdict {
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        let site = sites.entry(key).or_default();
        let expired = site
            .window_start
            .is_none_or(|s| now.saturating_duration_since(s) >= WINDOW);
        if expired {
            site.window_start = Some(now);
            site.in_window = 0;
        }
        if site.in_window >= PER_SECOND {
            site.suppressed = site.suppressed.saturating_add(1);
            return Verdict::Drop;
        }
        site.in_window += 1;
        Verdict::Log {
            suppressed: std::mem::take(&mut site.suppressed),
        }
    }
}

/// The process's limiter (every VM's devices share it: the bound is on the
/// helper's log).
pub fn check(key: &'static str) -> Verdict {
    static LIMITER: LazyLock<Limiter> = LazyLock::new(Limiter::default);
    LIMITER.check(key, Instant::now())
}

/// `guest_log!(warn|debug, "key", "format", args...)`: a rate-limited
/// `tracing` event for something a guest can trigger at will.
#[macro_export]
macro_rules! guest_log {
    ($level:ident, $key:expr, $($arg:tt)+) => {
        if let $crate::log_limit::Verdict::Log { suppressed } = $crate::log_limit::check($key) {
            if suppressed > 0 {
                tracing::$level!("{}: {} similar messages suppressed", $key, suppressed);
            }
            tracing::$level!($($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_limit_and_summarised() {
        let l = Limiter::default();
        let t0 = Instant::now();
        let logged = (0..1000)
            .filter(|_| l.check("flood", t0) != Verdict::Drop)
            .count();
        assert_eq!(logged, PER_SECOND as usize, "one second's worth");
        // Another site is not held up by the flood.
        assert_eq!(l.check("other", t0), Verdict::Log { suppressed: 0 });
        // The next window's first message carries the count.
        let t1 = t0 + WINDOW;
        assert_eq!(l.check("flood", t1), Verdict::Log { suppressed: 990 });
        assert_eq!(l.check("flood", t1), Verdict::Log { suppressed: 0 });
    }

    #[test]
    fn the_macro_logs_without_panicking() {
        for i in 0..100 {
            crate::guest_log!(debug, "test-site", "message {i}");
        }
    }
}
