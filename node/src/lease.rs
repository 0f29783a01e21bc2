//! The node's lease on its rooms.
//!
//! A node in a cluster holds rooms only while it hears from the control
//! plane: each balancer view it applies extends the lease to when that view
//! stops being fresh (`FRESH_PUSHES` push intervals). A node cut off from
//! every balancer therefore stops serving on its own, by a deadline its
//! peers can compute from the balancers' `unreachable` reports, and only
//! then may its meetings start afresh elsewhere. A node that has never
//! received a view (no control token, or not yet pushed to) serves alone and
//! its lease never ends.
//!
//! The lease is checked on every room operation, not only by a timer, so a
//! process that was paused (SIGSTOP, a stalled VM) past its lease refuses the
//! frames waiting in its sockets the moment it wakes up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const FOREVER: u64 = u64::MAX;

pub struct Lease {
    base: Instant,
    /// Milliseconds after `base` until which the lease holds.
    until_ms: AtomicU64,
}

impl Lease {
    /// A lease that never ends (a node serving alone).
    pub fn forever() -> Lease {
        Lease {
            base: Instant::now(),
            until_ms: AtomicU64::new(FOREVER),
        }
    }

    /// A lease that has ended already (for tests).
    pub fn expired() -> Lease {
        Lease {
            base: Instant::now(),
            until_ms: AtomicU64::new(0),
        }
    }

    /// Whether the lease holds at `now`.
    pub fn holds(&self, now: Instant) -> bool {
        let until = self.until_ms.load(Ordering::Acquire);
        until == FOREVER || (now.saturating_duration_since(self.base).as_millis() as u64) < until
    }

    /// Sets the end of the lease (`None`: it ended).
    pub fn set(&self, until: Option<Instant>) {
        let ms = until.map_or(0, |t| {
            t.saturating_duration_since(self.base).as_millis() as u64
        });
        self.until_ms.store(ms, Ordering::Release);
    }

    /// When it ended or ends, if it is bounded.
    pub fn end(&self) -> Option<Instant> {
        let until = self.until_ms.load(Ordering::Acquire);
        (until != FOREVER).then(|| self.base + Duration::from_millis(until))
    }

    /// How long it still holds, if it is bounded.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        let until = self.until_ms.load(Ordering::Acquire);
        (until != FOREVER).then(|| {
            let elapsed = now.saturating_duration_since(self.base).as_millis() as u64;
            Duration::from_millis(until.saturating_sub(elapsed))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_holds_until_its_end() {
        let lease = Lease::forever();
        let now = Instant::now();
        assert!(lease.holds(now + Duration::from_secs(1_000_000)));
        lease.set(Some(now + Duration::from_millis(500)));
        assert!(lease.holds(now));
        assert!(lease.holds(now + Duration::from_millis(400)));
        assert!(!lease.holds(now + Duration::from_millis(600)));
        lease.set(None);
        assert!(!lease.holds(now));
        assert!(!Lease::expired().holds(Instant::now()));
    }
}
