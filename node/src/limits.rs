//! The node's limits, as decisions: how fast one WebSocket client may send
//! (a token bucket per connection), and how many sessions the node holds at
//! once (slots that a session keeps until it ends). They only decide;
//! `guard.rs` and `ws.rs` act on what they say. docs/SECURITY.md lists them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket, so a client's first burst passes.
    pub fn new(rate: u32, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate.max(1)),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What to do with one frame from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// Within the limit: handle it.
    Pass,
    /// Over the limit: do not publish it (a message gets a `rate_limited`
    /// error frame).
    Refuse,
    /// Over the limit `close_after` times in a row: close with 1008.
    Close,
}

/// A client's rate limit: every frame it sends (text, binary, ping, pong)
/// takes a token, so that a flood of pings costs as much as one of
/// messages.
#[derive(Debug, Clone)]
pub struct RateLimit {
    bucket: TokenBucket,
    over_in_row: u32,
    close_after: u32,
}

impl RateLimit {
    pub fn new(per_second: u32, burst: u32, close_after: u32, now: Instant) -> RateLimit {
        RateLimit {
            bucket: TokenBucket::new(per_second, burst, now),
            over_in_row: 0,
            close_after: close_after.max(1),
        }
    }

    pub fn check(&mut self, now: Instant) -> Rate {
        if self.bucket.take(now) {
            self.over_in_row = 0;
            return Rate::Pass;
        }
        self.over_in_row = self.over_in_row.saturating_add(1);
        if self.over_in_row >= self.close_after {
            Rate::Close
        } else {
            Rate::Refuse
        }
    }
}

/// A fixed number of places, taken at admission and held by the session
/// until it ends: checking a count and joining later would let a burst of
/// upgrades through together.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    used: AtomicUsize,
}

/// One taken place; dropping the last clone gives it back. (Clone, so that
/// it can travel in a request's extensions to the session.)
#[derive(Debug, Clone)]
pub struct Slot(#[allow(dead_code)] Arc<Release>);

#[derive(Debug)]
struct Release(Arc<Slots>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slots {
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max,
            used: AtomicUsize::new(0),
        })
    }

    /// A place, or `None` when all `max` are taken.
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::new(Release(self.clone()))))
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// Whether a request that would open a room may: only below `max_rooms`.
/// A request for a room the node already holds always may.
pub fn room_allowed(rooms: i64, max_rooms: usize, room_exists: bool) -> bool {
    room_exists || usize::try_from(rooms).unwrap_or(0) < max_rooms
}

/// Milliseconds as a `Duration`, for the settings.
pub fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn a_bucket_lets_a_burst_through_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3, t0);
        let taken: Vec<bool> = (0..5).map(|_| b.take(t0)).collect();
        assert_eq!(taken, [true, true, true, false, false]);
        // 100 ms at 10/s is one token; 50 ms more is half of one.
        assert!(b.take(at(t0, 100)));
        assert!(!b.take(at(t0, 150)));
        assert!(b.take(at(t0, 200)));
        // A long pause refills to the burst, not beyond.
        let later = at(t0, 60_000);
        assert_eq!((0..4).filter(|_| b.take(later)).count(), 3);
        // A clock that goes back takes nothing and gives nothing.
        assert!(!b.take(t0));
    }

    #[test]
    fn a_flood_is_refused_then_closed_and_a_pause_forgives() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(1, 2, 3, t0);
        let verdicts: Vec<Rate> = (0..6).map(|_| r.check(t0)).collect();
        use Rate::*;
        assert_eq!(verdicts, [Pass, Pass, Refuse, Refuse, Close, Close]);
        let mut r = RateLimit::new(1, 1, 3, t0);
        assert_eq!(r.check(t0), Pass);
        assert_eq!(r.check(t0), Refuse);
        assert_eq!(r.check(t0), Refuse);
        // A frame within the limit resets the count in a row.
        assert_eq!(r.check(at(t0, 1000)), Pass);
        assert_eq!(r.check(at(t0, 1000)), Refuse);
        assert_eq!(r.check(at(t0, 1000)), Refuse);
        assert_eq!(r.check(at(t0, 1000)), Close);
    }

    #[test]
    fn ten_thousand_pings_are_not_free() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(20, 40, 100, t0);
        // All within one second.
        let verdicts: Vec<Rate> = (0..10_000u64).map(|i| r.check(at(t0, i / 10))).collect();
        let passed = verdicts.iter().filter(|v| **v == Rate::Pass).count();
        assert!((40..=70).contains(&passed), "{passed} passed");
        let first_close = verdicts.iter().position(|v| *v == Rate::Close);
        assert!(first_close.is_some_and(|i| i < 200), "{first_close:?}");
    }

    #[test]
    fn slots_are_given_back_when_the_last_holder_goes() {
        let slots = Slots::new(2);
        let a = slots.take().expect("first");
        let b = slots.take().expect("second");
        assert!(slots.take().is_none());
        let a2 = a.clone();
        drop(a);
        assert!(slots.take().is_none(), "a clone still holds it");
        drop(a2);
        let c = slots.take().expect("given back");
        assert_eq!(slots.used(), 2);
        drop((b, c));
        assert_eq!(slots.used(), 0);
    }

    #[test]
    fn rooms_are_capped_only_for_new_ones() {
        for (rooms, max, exists, allowed) in [
            (0, 1, false, true),
            (1, 1, false, false),
            (1, 1, true, true),
            (5, 10, false, true),
            (10, 10, true, true),
            (11, 10, false, false),
            (-1, 10, false, true),
        ] {
            assert_eq!(
                room_allowed(rooms, max, exists),
                allowed,
                "{rooms} {max} {exists}"
            );
        }
    }
}
