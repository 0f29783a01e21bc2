//! The phases of a run, as instants every worker process agrees on.
//!
//! The parent picks `t0` (Unix ms) and hands it to each worker, which maps it
//! onto its own monotonic clock. From there every phase boundary is a pure
//! function of the command line, so workers never need to talk to each other.

use std::time::{Duration, Instant};

use crate::stamp::unix_nanos;

#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    /// Ramp starts.
    pub t0: Instant,
    t0_unix_nanos: u64,
    /// All ramped connections should be open; settling starts.
    pub ramp_end: Instant,
    /// The measured window: publishing, churning, holding.
    pub measure_start: Instant,
    pub measure_end: Instant,
    /// Reading stops; connections close.
    pub drain_end: Instant,
    /// Nothing of the run may outlive this.
    pub hard_end: Instant,
}

/// Time allowed for closing connections after the drain.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
pub struct Phases {
    pub ramp: Duration,
    pub settle: Duration,
    pub measure: Duration,
    pub drain: Duration,
}

impl Timeline {
    pub fn new(t0_unix_ms: u64, p: Phases) -> Timeline {
        let now = Instant::now();
        let now_unix = unix_nanos();
        let t0_unix_nanos = t0_unix_ms.saturating_mul(1_000_000);
        // t0 may be slightly in the past (a worker started late) or future.
        let t0 = if t0_unix_nanos >= now_unix {
            now + Duration::from_nanos(t0_unix_nanos - now_unix)
        } else {
            now.checked_sub(Duration::from_nanos(now_unix - t0_unix_nanos))
                .unwrap_or(now)
        };
        let ramp_end = t0 + p.ramp;
        let measure_start = ramp_end + p.settle;
        let measure_end = measure_start + p.measure;
        let drain_end = measure_end + p.drain;
        Timeline {
            t0,
            t0_unix_nanos,
            ramp_end,
            measure_start,
            measure_end,
            drain_end,
            hard_end: drain_end + CLOSE_GRACE,
        }
    }

    /// The Unix time (ns) of an instant of this run; used to stamp messages
    /// with their *intended* send time rather than the time they left.
    pub fn unix_nanos_at(&self, at: Instant) -> u64 {
        match at.checked_duration_since(self.t0) {
            Some(d) => self.t0_unix_nanos + d.as_nanos() as u64,
            None => self
                .t0_unix_nanos
                .saturating_sub(self.t0.duration_since(at).as_nanos() as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_each_other() {
        let p = Phases {
            ramp: Duration::from_secs(1),
            settle: Duration::from_secs(2),
            measure: Duration::from_secs(3),
            drain: Duration::from_secs(4),
        };
        let t0 = unix_nanos() / 1_000_000 + 50;
        let t = Timeline::new(t0, p);
        assert_eq!(t.measure_start - t.t0, Duration::from_secs(3));
        assert_eq!(t.drain_end - t.measure_end, Duration::from_secs(4));
        let at = t.t0 + Duration::from_millis(1500);
        assert_eq!(t.unix_nanos_at(at), t0 * 1_000_000 + 1_500_000_000);
    }
}
