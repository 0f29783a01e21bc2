//! What a worker measures, and how the parent adds workers together.
//!
//! Counters are atomics, bumped from every connection task. Latencies go
//! into sharded HdrHistograms (a histogram per connection would cost ~200 KB
//! each). A worker's [`Partial`] is plain JSON with the histograms in
//! base64'd V2 serialisation, so merging across processes loses nothing.

use anyhow::Context;
use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Declares the counter set twice: as atomics for the hot path and as a plain
/// serialisable snapshot.
macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        pub struct Counters { $(pub $name: AtomicU64,)* }

        #[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
        pub struct Counts { $($(#[$doc])* #[serde(default)] pub $name: u64,)* }

        impl Counters {
            pub fn snapshot(&self) -> Counts {
                Counts { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl Counts {
            pub fn add(&mut self, o: &Counts) {
                $(self.$name += o.$name;)*
            }
        }
    };
}

counters! {
    /// Connection attempts started.
    attempted,
    /// Connections that got through the handshake (and welcome).
    connected,
    /// Attempts that failed or timed out.
    failed,
    /// Connections the server ended before we meant to close them.
    dropped,
    /// Connections open right now (a gauge).
    open,
    /// Messages handed to the transport without error.
    sent,
    /// Sends that failed (connection gone, HTTP error).
    send_errors,
    /// Sends due in the window that were not made by its end (the sender
    /// fell behind, or its connection failed).
    unsent,
    /// Chat messages received, all members together.
    received,
    /// Every frame or SSE event received, including welcome/join/leave.
    frames,
    /// `error` frames from the server.
    server_errors,
    /// Seqs skipped (each skipped seq counts once per member).
    seq_gaps,
    /// Seqs seen again, or going backwards.
    duplicates,
    /// Round trips not back within --timeout.
    timeouts,
    /// Messages that came back after their round trip had timed out.
    late,
    /// Churn connections not started because the socket budget was full.
    skipped,
    /// Storm: connections back (welcome received) after the storm.
    reconnected,
    /// Storm: reconnects that failed or timed out.
    reconnect_failed,
    /// This process's CPU over the window and drain, in ms (set once, at
    /// the end; summed over workers).
    cpu_window_ms,
}

impl Counters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(c: &AtomicU64, n: u64) {
        if n > 0 {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }
    pub fn dec(c: &AtomicU64) {
        c.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Highest value a histogram keeps exactly: one hour in microseconds.
/// Anything slower is clamped to it (and that run has bigger problems).
const MAX_US: u64 = 3_600_000_000;
const SHARDS: usize = 16;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("constant histogram bounds are valid")
}

/// Latency samples in microseconds from many tasks. A task records into the
/// shard its id picks, so the locks are almost never contended.
pub struct Recorder {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            shards: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
        }
    }
}

impl Recorder {
    pub fn record(&self, task: u64, us: u64) {
        let shard = &self.shards[(task as usize) % SHARDS];
        let mut h = shard.lock().unwrap_or_else(|e| e.into_inner());
        h.saturating_record(us.clamp(1, MAX_US));
    }

    pub fn merged(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.shards {
            let h = shard.lock().unwrap_or_else(|e| e.into_inner());
            // Same bounds everywhere, so adding cannot fail.
            let _ = all.add(&*h);
        }
        all
    }
}

pub fn encode_histogram(h: &Histogram<u64>) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .map_err(|e| anyhow::anyhow!("cannot serialise a histogram: {e:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(buf))
}

pub fn decode_histogram(s: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .context("a worker's histogram is not base64")?;
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| anyhow::anyhow!("a worker's histogram does not deserialise: {e:?}"))
}

/// Checks one member's view of its room: from the welcome on, every seq
/// exactly once and in order.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    next: Option<u64>,
    /// Highest seq seen (welcome seq included).
    pub last: u64,
    /// Highest seq of a chat message seen.
    pub last_message: u64,
    pub gaps: u64,
    pub duplicates: u64,
}

impl SeqTracker {
    pub fn welcome(&mut self, seq: u64) {
        self.next = Some(seq + 1);
        self.last = seq;
    }

    pub fn event(&mut self, seq: u64, is_message: bool) {
        if is_message {
            self.last_message = self.last_message.max(seq);
        }
        match self.next {
            None => self.next = Some(seq + 1),
            Some(n) if seq == n => self.next = Some(n + 1),
            Some(n) if seq > n => {
                self.gaps += seq - n;
                self.next = Some(seq + 1);
            }
            Some(_) => self.duplicates += 1,
        }
        self.last = self.last.max(seq);
    }
}

/// One room, summed over the members (possibly in several workers) that
/// were in it for the whole window ("steady" members): what lets the parent
/// find messages lost at the tail, which no later seq reveals, and count
/// loss for protocols without seqs.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoomTally {
    /// Messages published into the room.
    #[serde(default)]
    pub sent: u64,
    /// Highest message seq anyone saw (or a POST returned).
    #[serde(default)]
    pub max_message_seq: u64,
    /// Members connected before the window and still there after the drain.
    #[serde(default)]
    pub steady: u64,
    /// Messages those steady members received.
    #[serde(default)]
    pub steady_received: u64,
    /// Seq gaps those steady members saw.
    #[serde(default)]
    pub steady_gaps: u64,
    /// How many steady members ended on each last seq (usually one entry).
    #[serde(default)]
    pub last_seqs: BTreeMap<u64, u64>,
}

impl RoomTally {
    pub fn add(&mut self, o: &RoomTally) {
        self.sent += o.sent;
        self.max_message_seq = self.max_message_seq.max(o.max_message_seq);
        self.steady += o.steady;
        self.steady_received += o.steady_received;
        self.steady_gaps += o.steady_gaps;
        for (seq, n) in &o.last_seqs {
            *self.last_seqs.entry(*seq).or_default() += n;
        }
    }

    /// Seqs at the end of the stream that steady members never saw, which
    /// no later seq reveals as a gap. Two lower bounds, the larger wins:
    /// seqs after each member's last one up to the room's last message seq
    /// that *anyone* saw (blind when the whole room is behind), and messages
    /// published but not received that the gaps do not already explain.
    pub fn tail_lost(&self) -> u64 {
        let by_seq: u64 = self
            .last_seqs
            .iter()
            .map(|(last, n)| self.max_message_seq.saturating_sub(*last) * n)
            .sum();
        let by_count = self.shortfall().saturating_sub(self.steady_gaps);
        by_seq.max(by_count)
    }

    /// What steady members should have received between them.
    pub fn expected(&self) -> u64 {
        self.sent * self.steady
    }

    /// Messages steady members should have received and did not.
    pub fn shortfall(&self) -> u64 {
        self.expected().saturating_sub(self.steady_received)
    }

    /// Messages steady members received beyond what was published.
    pub fn surplus(&self) -> u64 {
        self.steady_received.saturating_sub(self.expected())
    }
}

/// The rooms of one worker, updated once per member or publisher at its end.
#[derive(Default)]
pub struct Rooms(Mutex<BTreeMap<u64, RoomTally>>);

impl Rooms {
    pub fn update(&self, room: u64, f: impl FnOnce(&mut RoomTally)) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry(room).or_default());
    }

    pub fn take(&self) -> BTreeMap<u64, RoomTally> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Errors by message, for the report: enough to tell "connection refused"
/// from "too many open files" without a log. Only the first few distinct
/// messages are kept; the rest are counted under [`OTHER_ERRORS`].
#[derive(Default)]
pub struct ErrorSamples(Mutex<BTreeMap<String, u64>>);

const MAX_KINDS: usize = 12;
pub const OTHER_ERRORS: &str = "(other errors)";

fn count_error(map: &mut BTreeMap<String, u64>, what: String, n: u64) {
    if map.len() < MAX_KINDS || map.contains_key(&what) {
        *map.entry(what).or_default() += n;
    } else {
        *map.entry(OTHER_ERRORS.to_owned()).or_default() += n;
    }
}

impl ErrorSamples {
    pub fn note(&self, what: impl std::fmt::Display) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        count_error(&mut map, what.to_string(), 1);
    }

    pub fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// One worker's result, as it prints it for the parent.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Partial {
    pub counts: Counts,
    /// The mode's main latency (delivery, round trip or connect), base64 V2.
    pub latency: String,
    /// Intended connect time to ready (welcome, or handshake for plain).
    pub connect_latency: String,
    pub rooms: BTreeMap<u64, RoomTally>,
    /// Error message → how often.
    pub errors: BTreeMap<String, u64>,
}

/// Everything the workers measured, added up.
pub struct Merged {
    pub counts: Counts,
    pub latency: Histogram<u64>,
    pub connect_latency: Histogram<u64>,
    pub rooms: BTreeMap<u64, RoomTally>,
    pub errors: BTreeMap<String, u64>,
}

impl Merged {
    pub fn from_partials(parts: &[Partial]) -> anyhow::Result<Merged> {
        let mut m = Merged {
            counts: Counts::default(),
            latency: new_histogram(),
            connect_latency: new_histogram(),
            rooms: BTreeMap::new(),
            errors: BTreeMap::new(),
        };
        for p in parts {
            m.counts.add(&p.counts);
            m.latency
                .add(decode_histogram(&p.latency)?)
                .map_err(|e| anyhow::anyhow!("cannot merge histograms: {e:?}"))?;
            m.connect_latency
                .add(decode_histogram(&p.connect_latency)?)
                .map_err(|e| anyhow::anyhow!("cannot merge histograms: {e:?}"))?;
            for (room, t) in &p.rooms {
                m.rooms.entry(*room).or_default().add(t);
            }
            for (e, n) in &p.errors {
                count_error(&mut m.errors, e.clone(), *n);
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_tracking() {
        let mut t = SeqTracker::default();
        t.welcome(4);
        t.event(5, false);
        t.event(6, true);
        t.event(9, true); // 7 and 8 missing
        t.event(9, true); // again
        t.event(10, false);
        assert_eq!(
            (t.gaps, t.duplicates, t.last, t.last_message),
            (2, 1, 10, 9)
        );
    }

    #[test]
    fn rooms_find_the_tail() {
        let mut a = RoomTally {
            sent: 10,
            max_message_seq: 12,
            steady: 2,
            steady_received: 20,
            steady_gaps: 0,
            last_seqs: [(12, 2)].into(),
        };
        let b = RoomTally {
            sent: 0,
            max_message_seq: 14,
            steady: 1,
            steady_received: 9,
            steady_gaps: 0,
            last_seqs: [(13, 1)].into(),
        };
        a.add(&b);
        // By seq: members on 12 miss 13 and 14, the one on 13 misses 14.
        assert_eq!(a.tail_lost(), 2 * 2 + 1);
        assert_eq!(a.expected(), 30);
        // The whole room behind: nobody saw the last 4 messages, so only
        // the count shows them.
        let behind = RoomTally {
            sent: 10,
            max_message_seq: 6,
            steady: 2,
            steady_received: 12,
            steady_gaps: 0,
            last_seqs: [(6, 2)].into(),
        };
        assert_eq!(behind.tail_lost(), 8);
    }

    #[test]
    fn partials_merge() -> anyhow::Result<()> {
        let one = |vals: &[u64]| -> anyhow::Result<Partial> {
            let r = Recorder::default();
            for (i, v) in vals.iter().enumerate() {
                r.record(i as u64, *v);
            }
            let counts = Counts {
                sent: vals.len() as u64,
                ..Default::default()
            };
            Ok(Partial {
                counts,
                latency: encode_histogram(&r.merged())?,
                connect_latency: encode_histogram(&new_histogram())?,
                ..Default::default()
            })
        };
        let m = Merged::from_partials(&[one(&[100, 200])?, one(&[5000])?])?;
        assert_eq!(m.counts.sent, 3);
        assert_eq!(m.latency.len(), 3);
        assert!(m.latency.max() >= 4990);
        Ok(())
    }
}
