//! How many descriptors the FUSE passthrough may hold for the guest.
//!
//! `PassthroughFs` keeps a descriptor per inode the guest has looked up
//! (until the guest forgets it) and one per open handle. The guest decides
//! how many: left alone, a guest that looks up or opens enough files drives
//! the whole helper process to EMFILE, and then the helper's own work
//! (accepting app connections, the session disk, the egress proxy) fails.
//! One budget, shared by every share of a VM, caps what the guest can make
//! the server hold; past it new lookups and opens get ENFILE. The layer
//! that counts is [`super::share_fs`]; this is only the counter.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Descriptors kept for the helper itself when the budget comes from the
/// open-file limit (at most half the limit, for very low limits).
pub const RESERVE: usize = 1024;

pub struct FdBudget {
    limit: AtomicUsize,
    used: AtomicUsize,
    /// Set by [`FdBudget::fixed`]: [`FdBudget::refresh`] leaves it alone.
    fixed: AtomicBool,
}

/// The budget the current soft `RLIMIT_NOFILE` leaves after [`RESERVE`].
pub fn from_rlimit() -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    // Unknown limit: the kernel's usual default soft limit.
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    soft.saturating_sub(RESERVE.min(soft / 2))
}

impl FdBudget {
    /// A budget from the open-file limit now ([`from_rlimit`]).
    pub fn from_limit() -> FdBudget {
        FdBudget {
            limit: AtomicUsize::new(from_rlimit()),
            used: AtomicUsize::new(0),
            fixed: AtomicBool::new(false),
        }
    }

    /// A budget of exactly `limit` descriptors.
    pub fn fixed(limit: usize) -> FdBudget {
        FdBudget {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
            fixed: AtomicBool::new(true),
        }
    }

    /// Recomputes a budget that came from the open-file limit (the kvm
    /// backend lifts the limit after making the shares, before the VM).
    pub fn refresh(&self) {
        if !self.fixed.load(Ordering::Relaxed) {
            self.limit.store(from_rlimit(), Ordering::Relaxed);
        }
    }

    /// Takes one descriptor; ENFILE when the budget is spent.
    pub fn take(&self) -> io::Result<()> {
        let limit = self.limit.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < limit).then_some(used + 1)
            })
            .map(|_| ())
            .map_err(|_| io::Error::from_raw_os_error(libc::ENFILE))
    }

    /// Returns `n` descriptors the server no longer holds.
    pub fn give_back(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
    }

    /// Descriptors held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_up_to_the_limit_and_frees_again() {
        let b = FdBudget::fixed(2);
        assert!(b.take().is_ok());
        assert!(b.take().is_ok());
        let e = b.take().err().and_then(|e| e.raw_os_error());
        assert_eq!(e, Some(libc::ENFILE));
        b.give_back(1);
        assert!(b.take().is_ok());
        b.give_back(10);
        assert_eq!(b.used(), 0, "never below zero");
        b.refresh();
        assert_eq!(b.limit(), 2, "a fixed budget stays");
    }

    #[test]
    fn the_rlimit_budget_leaves_a_reserve() {
        let b = from_rlimit();
        let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .unwrap_or((1024, 1024));
        let soft = usize::try_from(soft).unwrap_or(usize::MAX);
        assert!(b < soft && b >= soft / 2, "{b} of {soft}");
    }
}
