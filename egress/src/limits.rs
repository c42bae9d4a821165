//! The proxy's resource limits, which a hostile session must not be able to
//! run down for the others (docs/egress.md, "Limits"). Constants are the
//! limits in use; [`Limits`] carries them so tests can shorten the clocks.

use std::time::Duration;

/// Connections whose request head has not been read yet, all sessions
/// together: before the head there is no credential to tell them apart.
pub const MAX_UNIDENTIFIED: usize = 256;
/// Conversations one session (one credential, one policy) may have open.
pub const MAX_PER_SESSION: usize = 64;
/// The whole request head must arrive within this, however it trickles in.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(10);
/// A tunnel or forwarded exchange with no bytes either way for this long
/// is closed on both sides.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub unidentified: usize,
    pub per_session: usize,
    pub head_deadline: Duration,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            unidentified: MAX_UNIDENTIFIED,
            per_session: MAX_PER_SESSION,
            head_deadline: HEAD_DEADLINE,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}
