//! Is a WebSocket client still there? The reader notes every frame it gets
//! (pongs included); at each ping tick the writer asks how long the client
//! has been quiet and acts on the verdict.
//!
//! Quiet time is measured on the monotonic clock (`Instant`), never on the
//! wall clock: an NTP step forward would otherwise make every idle client
//! look dead at once (a 4003 reconnect storm), and a step back would hide
//! dead peers. `SystemTime` is only for the `ts` that clients see.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// When the client was last heard from, shared by a session's reader
/// (which notes frames) and writer (which pings and judges).
pub struct Liveness {
    /// The session's start; the other fields count milliseconds from here.
    base: Instant,
    last_ms: AtomicU64,
}

impl Liveness {
    /// A client that has just connected counts as heard from.
    pub fn new() -> Liveness {
        Liveness {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Notes that a frame arrived now.
    pub fn seen(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// How long the client has sent nothing.
    pub fn quiet(&self) -> Duration {
        let last = self.last_ms.load(Ordering::Relaxed);
        Duration::from_millis(self.now_ms().saturating_sub(last))
    }

    /// Milliseconds since the session started: a mark to compare frames with.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a frame arrived at or after `mark` (a `now_ms`).
    pub fn heard_since(&self, mark: u64) -> bool {
        self.last_ms.load(Ordering::Relaxed) >= mark
    }
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new()
    }
}

/// What the writer does at a ping tick.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The client spoke within the last interval: nothing to do.
    Alive,
    /// Quiet for an interval or more: ping it.
    Ping,
    /// It left the previous tick's ping unanswered: close with 4003.
    Dead,
}

/// The rule of docs/PROTOCOL.md ("Pings"): ping a client that has been
/// quiet for `interval`; drop it if that ping is still unanswered at the
/// next tick, one interval later. So a silent client goes after 2 to 3
/// intervals.
///
/// Judging by the ping, not by quiet time alone, matters: a client that
/// answers every ping is pinged every other tick and is then quiet for
/// almost two intervals; a rule of "quiet for more than two intervals"
/// dropped it whenever a tick ran a millisecond late.
pub fn verdict(quiet: Duration, interval: Duration, unanswered_ping: bool) -> Verdict {
    if unanswered_ping {
        Verdict::Dead
    } else if quiet >= interval {
        Verdict::Ping
    } else {
        Verdict::Alive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ping_rule() {
        let i = Duration::from_millis(1000);
        let ms = Duration::from_millis;
        for (quiet, unanswered, want) in [
            (ms(0), false, Verdict::Alive),
            (ms(999), false, Verdict::Alive),
            (ms(1000), false, Verdict::Ping),
            // An answered ping two intervals ago, and a tick a bit late.
            (ms(2001), false, Verdict::Ping),
            (Duration::MAX, false, Verdict::Ping),
            (ms(1000), true, Verdict::Dead),
            (ms(2001), true, Verdict::Dead),
        ] {
            assert_eq!(verdict(quiet, i, unanswered), want, "quiet {quiet:?}");
        }
    }

    /// Quiet time follows the monotonic clock the runtime steps (the wall
    /// clock is never read; tests/tests/node_liveness.rs steps it under the
    /// real binary).
    #[tokio::test(start_paused = true)]
    async fn quiet_time_is_monotonic_time_since_the_last_frame() {
        let live = Liveness::new();
        assert_eq!(live.quiet(), Duration::ZERO);
        tokio::time::advance(Duration::from_millis(2500)).await;
        assert_eq!(live.quiet(), Duration::from_millis(2500));
        let ping = live.now_ms();
        assert!(!live.heard_since(ping));
        tokio::time::advance(Duration::from_millis(3)).await;
        live.seen();
        assert!(live.heard_since(ping));
        assert_eq!(live.quiet(), Duration::ZERO);
        tokio::time::advance(Duration::from_millis(700)).await;
        assert_eq!(live.quiet(), Duration::from_millis(700));
    }
}
