//! Message text that carries its own intended send time:
//! `"<unix_nanos>:<padding>"`. Every recipient computes the latency from it
//! on receipt, so no sender-side bookkeeping is needed and fan-out latency is
//! measured at every member, not just the publisher.

use std::time::{SystemTime, UNIX_EPOCH};

/// The wall clock in nanoseconds since the Unix epoch. Sender and recipients
/// must share a clock (one machine, or well-synchronised machines).
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A message text of `len` bytes (or just the stamp if `len` is shorter).
pub fn make(intended_unix_nanos: u64, len: usize) -> String {
    let mut text = format!("{intended_unix_nanos}:");
    if text.len() < len {
        text.extend(std::iter::repeat_n('x', len - text.len()));
    }
    text
}

/// The intended send time in a text made by [`make`], if it is one.
pub fn parse(text: &str) -> Option<u64> {
    let (digits, _) = text.split_once(':')?;
    digits.parse().ok()
}

/// Microseconds from `intended` to now (0 if the clocks disagree).
pub fn latency_us(intended_unix_nanos: u64) -> u64 {
    unix_nanos().saturating_sub(intended_unix_nanos) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = make(1_700_000_000_123_456_789, 64);
        assert_eq!(t.len(), 64);
        assert_eq!(parse(&t), Some(1_700_000_000_123_456_789));
        assert_eq!(make(5, 0), "5:");
        assert_eq!(parse("hello"), None);
        assert_eq!(parse("x:1"), None);
    }
}
