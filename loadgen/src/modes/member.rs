//! One room member's life: connect at its appointed time, maybe publish,
//! read and check every frame until it is time to leave, report to its
//! room's tally, close.
//!
//! Reading and publishing are separate tasks: a publisher sends at its
//! intended times whatever the reader is doing (open loop), and stamps each
//! message with the *intended* time, so a send that had to wait (a full
//! socket, a slow HTTP answer) shows up as latency instead of vanishing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{micros, Ctx};
use crate::client::{self, Tx};
use crate::protocol::Incoming;
use crate::stamp;
use crate::stats::{Counters, SeqTracker};

/// Fixed-rate sends from `first` (inclusive) to `end` (exclusive).
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub first: Instant,
    pub interval: Duration,
    pub end: Instant,
}

impl Schedule {
    /// The k-th intended send time, or `None` once past the end.
    fn at(&self, k: u64) -> Option<Instant> {
        let offset = self.interval.as_nanos().saturating_mul(k as u128);
        let t = self.first + Duration::from_nanos(u64::try_from(offset).ok()?);
        (t < self.end).then_some(t)
    }
}

#[derive(Debug, Clone)]
pub struct MemberSpec {
    /// Global connection index: unique per run, used as the user name and to
    /// pick a histogram shard.
    pub id: u64,
    pub room: u64,
    pub user: String,
    pub connect_at: Instant,
    pub leave_at: Instant,
    pub schedule: Option<Schedule>,
    /// Messages sent as soon as the member is in (churn).
    pub burst: u64,
    pub payload: usize,
    /// A member ready by this instant and never dropped counts as steady
    /// (connected for the whole window); `None` for short-lived members.
    pub steady_by: Option<Instant>,
}

impl MemberSpec {
    pub fn publishes(&self) -> bool {
        self.schedule.is_some() || self.burst > 0
    }
}

/// What a publisher hands back when its schedule is done.
struct Published {
    tx: Tx,
    sent: u64,
    max_seq: u64,
}

pub async fn run(ctx: Arc<Ctx>, spec: MemberSpec) {
    let c = &ctx.counters;
    tokio::time::sleep_until(spec.connect_at.into()).await;
    let meeting = ctx.meeting(spec.room);
    let Some(conn) = ctx
        .connect_counted(&meeting, &spec.user, spec.publishes())
        .await
    else {
        return;
    };
    let ready_at = Instant::now();
    Counters::inc(&c.connected);
    Counters::inc(&c.open);
    ctx.connect_latency.record(
        spec.id,
        micros(ready_at.saturating_duration_since(spec.connect_at)),
    );

    let mut seqs = SeqTracker::default();
    if let Some(seq) = conn.welcome_seq {
        seqs.welcome(seq);
        Counters::inc(&c.frames);
    }
    let (tx, mut rx) = (conn.tx, conn.rx);
    let (mut tx, publisher) = if spec.publishes() {
        let job = publish(ctx.clone(), spec.clone(), tx);
        (None, Some(tokio::spawn(job)))
    } else {
        (Some(tx), None)
    };

    let mut received = 0u64;
    let mut ended_early = false;
    // One timer for the whole life, not one per frame: at high fan-out the
    // timer wheel was a visible share of the loadgen's CPU.
    let leave = tokio::time::sleep_until(spec.leave_at.into());
    tokio::pin!(leave);
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut leave => break,
            next = rx.next() => next,
        };
        let frame = match next {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                ctx.errors.note(format!("{e:#}"));
                ended_early = true;
                break;
            }
            None => {
                ctx.errors.note("the server closed a connection early");
                ended_early = true;
                break;
            }
        };
        Counters::inc(&c.frames);
        match ctx.endpoint.protocol.decode(frame.as_str()) {
            Incoming::Message { seq, text } => {
                received += 1;
                Counters::inc(&c.received);
                if let Some(seq) = seq {
                    seqs.event(seq, true);
                }
                if let Some(intended) = stamp::parse(&text) {
                    ctx.latency.record(spec.id, stamp::latency_us(intended));
                }
            }
            Incoming::Event { seq } => seqs.event(seq, false),
            Incoming::Error { code } => {
                Counters::inc(&c.server_errors);
                ctx.errors.note(format!("server error frame: {code}"));
            }
            Incoming::Moved => {
                ctx.errors.note("the room moved (SSE `moved` event)");
                ended_early = true;
                break;
            }
            Incoming::Welcome { .. } | Incoming::Other => {}
        }
    }
    if ended_early {
        Counters::inc(&c.dropped);
    }
    Counters::add(&c.seq_gaps, seqs.gaps);
    Counters::add(&c.duplicates, seqs.duplicates);

    let (mut sent, mut max_seq) = (0, 0);
    if let Some(job) = publisher {
        // The schedule ended before the drain did; this wait is short, but
        // bounded all the same.
        if let Ok(Ok(p)) = tokio::time::timeout_at(ctx.timeline.hard_end.into(), job).await {
            (sent, max_seq) = (p.sent, p.max_seq);
            tx = Some(p.tx);
        }
    }
    let steady = !ended_early && spec.steady_by.is_some_and(|by| ready_at <= by);
    ctx.rooms.update(spec.room, |t| {
        t.sent += sent;
        t.max_message_seq = t.max_message_seq.max(max_seq).max(seqs.last_message);
        if steady {
            t.steady += 1;
            t.steady_received += received;
            t.steady_gaps += seqs.gaps;
            *t.last_seqs.entry(seqs.last).or_default() += 1;
        }
    });
    Counters::dec(&c.open);
    if let Some(tx) = tx {
        if !ended_early {
            client::close(tx, rx).await;
        }
    }
}

/// Sends the burst, then the schedule; stops at the first failed send (the
/// reader will see the connection end and count it).
///
/// Nothing is sent once the window has closed: a publisher that fell behind
/// abandons the sends still due (counted as `unsent`), so every message that
/// was sent had the whole drain to arrive, and a shortfall is the server's.
async fn publish(ctx: Arc<Ctx>, spec: MemberSpec, mut tx: Tx) -> Published {
    let c = &ctx.counters;
    let protocol = ctx.endpoint.protocol;
    let window_end = ctx.timeline.measure_end;
    let mut out = Published {
        tx: client::Tx::Listen,
        sent: 0,
        max_seq: 0,
    };
    let burst = (0..spec.burst).map(|_| None);
    let scheduled = spec
        .schedule
        .into_iter()
        .flat_map(|s| (0..).map_while(move |k| s.at(k)))
        .map(Some);
    let mut sends = burst.chain(scheduled);
    for intended in sends.by_ref() {
        if let Some(at) = intended {
            tokio::time::sleep_until(at.into()).await;
        }
        if Instant::now() >= window_end {
            Counters::inc(&c.unsent);
            break;
        }
        let stamp_nanos = match intended {
            Some(at) => ctx.timeline.unix_nanos_at(at),
            None => stamp::unix_nanos(),
        };
        let text = stamp::make(stamp_nanos, spec.payload);
        match tx.send(protocol, &text).await {
            Ok(seq) => {
                out.sent += 1;
                Counters::inc(&c.sent);
                out.max_seq = out.max_seq.max(seq.unwrap_or(0));
            }
            Err(e) => {
                Counters::inc(&c.send_errors);
                ctx.errors.note(format!("{e:#}"));
                break;
            }
        }
    }
    // Whatever is left of the schedule was due but never sent.
    Counters::add(&c.unsent, sends.count() as u64);
    out.tx = tx;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_bounded() {
        let now = Instant::now();
        let s = Schedule {
            first: now,
            interval: Duration::from_millis(100),
            end: now + Duration::from_millis(350),
        };
        let n = (0..).map_while(|k| s.at(k)).count();
        assert_eq!(n, 4);
    }
}
