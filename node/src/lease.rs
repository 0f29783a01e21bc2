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
//!
//! A view that arrives once the lease has lapsed does not renew it at once:
//! the node may have been written off meanwhile and its meetings opened by
//! peers, so its old rooms must close first (`fence::renew_after_lapse`).
//! The renewal waits in `pending` until [`Lease::resume`], which the fence
//! calls once it has closed them. Otherwise a push read at the wake, before
//! the fence's next tick, would let the old rooms serve again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const FOREVER: u64 = u64::MAX;

pub struct Lease {
    base: Instant,
    /// Milliseconds after `base` until which the lease holds.
    until_ms: AtomicU64,
    /// A renewal that came after a lapse, held until the fence has closed
    /// the rooms (0: none).
    pending_ms: AtomicU64,
}

/// What [`Lease::set`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Renewal {
    /// The lease now ends where it was told.
    Done,
    /// The lease had lapsed: the renewal waits for the fence to close the
    /// old rooms and call [`Lease::resume`].
    AfterLapse,
}

impl Lease {
    /// A lease that never ends (a node serving alone).
    pub fn forever() -> Lease {
        Lease {
            base: Instant::now(),
            until_ms: AtomicU64::new(FOREVER),
            pending_ms: AtomicU64::new(0),
        }
    }

    /// A lease that has ended already (for tests).
    pub fn expired() -> Lease {
        Lease {
            base: Instant::now(),
            until_ms: AtomicU64::new(0),
            pending_ms: AtomicU64::new(0),
        }
    }

    /// Whether the lease holds at `now`.
    pub fn holds(&self, now: Instant) -> bool {
        let until = self.until_ms.load(Ordering::Acquire);
        until == FOREVER || (now.saturating_duration_since(self.base).as_millis() as u64) < until
    }

    /// Sets the end of the lease (`None`: it ended), as of `now`. A lease
    /// that had lapsed by `now` is not extended yet: see [`Renewal`].
    pub fn set(&self, until: Option<Instant>, now: Instant) -> Renewal {
        let ms = until.map_or(0, |t| self.ms(t));
        let current = self.until_ms.load(Ordering::Acquire);
        let lapsed = current != FOREVER && current <= self.ms(now);
        if lapsed && ms > current {
            self.pending_ms.fetch_max(ms, Ordering::AcqRel);
            return Renewal::AfterLapse;
        }
        self.until_ms.store(ms, Ordering::Release);
        Renewal::Done
    }

    /// Applies a renewal held since a lapse: the fence has closed the rooms
    /// that were open before it.
    pub fn resume(&self) {
        let pending = self.pending_ms.swap(0, Ordering::AcqRel);
        if pending > 0 {
            self.until_ms.fetch_max(pending, Ordering::AcqRel);
        }
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_millis() as u64
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
        assert_eq!(
            lease.set(Some(now + Duration::from_millis(500)), now),
            Renewal::Done
        );
        assert!(lease.holds(now));
        assert!(lease.holds(now + Duration::from_millis(400)));
        assert!(!lease.holds(now + Duration::from_millis(600)));
        assert_eq!(lease.set(None, now), Renewal::Done);
        assert!(!lease.holds(now));
        assert!(!Lease::expired().holds(Instant::now()));
    }

    /// A renewal after a lapse waits for the fence; one in time does not.
    #[test]
    fn a_renewal_after_a_lapse_waits_for_the_fence() {
        let ms = Duration::from_millis;
        // (lease ends at, renewed at, renewed to, renewal, holds at the
        // renewal before resume, holds there after resume, why)
        let cases = [
            (
                500,
                400,
                900,
                Renewal::Done,
                true,
                true,
                "in time: extended at once",
            ),
            (
                500,
                600,
                1100,
                Renewal::AfterLapse,
                false,
                true,
                "lapsed: held until the fence",
            ),
            (
                500,
                500,
                1000,
                Renewal::AfterLapse,
                false,
                true,
                "lapsed at its very end",
            ),
            (
                500,
                600,
                550,
                Renewal::AfterLapse,
                false,
                false,
                "held, and already past anyway",
            ),
            (
                500,
                400,
                300,
                Renewal::Done,
                false,
                false,
                "shortened, not held",
            ),
        ];
        for (end, at, to, renewal, before, after, why) in cases {
            let lease = Lease::forever();
            let t0 = lease.base;
            assert_eq!(lease.set(Some(t0 + ms(end)), t0), Renewal::Done, "{why}");
            let now = t0 + ms(at);
            assert_eq!(lease.set(Some(t0 + ms(to)), now), renewal, "{why}");
            assert_eq!(lease.holds(now), before, "{why}: before resume");
            lease.resume();
            assert_eq!(lease.holds(now), after, "{why}: after resume");
        }
    }

    #[test]
    fn held_renewals_resume_at_the_latest_and_only_once() {
        let lease = Lease::forever();
        let t0 = lease.base;
        let ms = Duration::from_millis;
        lease.set(Some(t0 + ms(100)), t0);
        let now = t0 + ms(200);
        assert_eq!(lease.set(Some(t0 + ms(900)), now), Renewal::AfterLapse);
        assert_eq!(lease.set(Some(t0 + ms(700)), now), Renewal::AfterLapse);
        lease.resume();
        assert!(lease.holds(t0 + ms(850)));
        assert!(!lease.holds(t0 + ms(950)));
        // Nothing is held any more: a second resume changes nothing.
        lease.resume();
        assert!(!lease.holds(t0 + ms(950)));
    }

    #[test]
    fn a_first_view_bounds_a_lease_that_never_ended() {
        let lease = Lease::forever();
        let now = Instant::now();
        assert_eq!(
            lease.set(Some(now + Duration::from_millis(300)), now),
            Renewal::Done
        );
        assert_eq!(
            lease.end(),
            Some(lease.base + Duration::from_millis(lease.ms(now) + 300))
        );
    }
}
