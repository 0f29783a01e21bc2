//! `rtt`: each connection is alone in its room and sends a message, then
//! waits for that message to come back through the room. With `--rate` the
//! sends are due at fixed intervals; a reply that arrives after the next
//! send was due delays that send, and its latency (measured from when it
//! was *due*) includes the delay, so a stall shows in full.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

use super::{join_all, micros, spawn_paced, Ctx};
use crate::cli::RttArgs;
use crate::client;
use crate::protocol::Incoming;
use crate::stamp;
use crate::stats::{Counters, SeqTracker};

pub async fn run(ctx: Arc<Ctx>, args: &RttArgs, ramp: f64) {
    let t = ctx.timeline;
    let mut tasks = JoinSet::new();
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    spawn_paced(
        &ctx,
        &mut tasks,
        args.conns,
        t.measure_end,
        |g| ctx.ramp_at(g, ramp),
        |g, at| {
            let conn = Conn {
                id: g,
                connect_at: at,
                // Spread the connections' phases over one interval.
                first: t.measure_start
                    + interval.map_or(Duration::ZERO, |i| i.mul_f64(g as f64 / args.conns as f64)),
                interval,
                payload: args.payload,
                timeout: args.timeout,
            };
            Some(conn.run(ctx.clone()))
        },
    )
    .await;
    join_all(&mut tasks, t.hard_end).await;
}

struct Conn {
    id: u64,
    connect_at: Instant,
    first: Instant,
    interval: Option<Duration>,
    payload: usize,
    timeout: Duration,
}

/// How waiting for one reply ended.
enum Reply {
    Back,
    TimedOut,
    Gone,
}

impl Conn {
    async fn run(self, ctx: Arc<Ctx>) {
        let c = &ctx.counters;
        let t = ctx.timeline;
        tokio::time::sleep_until(self.connect_at.into()).await;
        let (meeting, user) = (ctx.meeting(self.id), format!("u{}", self.id));
        let Some(conn) = ctx.connect_counted(&meeting, &user, true).await else {
            return;
        };
        Counters::inc(&c.connected);
        Counters::inc(&c.open);
        ctx.connect_latency
            .record(self.id, micros(self.connect_at.elapsed()));
        let mut seqs = SeqTracker::default();
        if let Some(seq) = conn.welcome_seq {
            seqs.welcome(seq);
            Counters::inc(&c.frames);
        }
        let (mut tx, mut rx) = (conn.tx, conn.rx);
        let protocol = ctx.endpoint.protocol;

        let mut gone = false;
        for k in 0u64.. {
            let intended = match self.interval {
                Some(i) => {
                    self.first + Duration::from_nanos((i.as_nanos() as u64).saturating_mul(k))
                }
                None if k == 0 => self.first,
                None => Instant::now(),
            };
            if intended >= t.measure_end {
                break;
            }
            tokio::time::sleep_until(intended.into()).await;
            // Behind schedule past the window's end: the rest was due but
            // will not be sent (each would only time out in the drain).
            if Instant::now() >= t.measure_end {
                if let Some(i) = self.interval {
                    let left = (t.measure_end - intended)
                        .as_nanos()
                        .div_ceil(i.as_nanos().max(1));
                    Counters::add(&c.unsent, left as u64);
                }
                break;
            }
            let intended_nanos = t.unix_nanos_at(intended);
            let text = stamp::make(intended_nanos, self.payload);
            if let Err(e) = tx.send(protocol, &text).await {
                Counters::inc(&c.send_errors);
                ctx.errors.note(format!("{e:#}"));
                gone = true;
                break;
            }
            Counters::inc(&c.sent);
            let give_up = (Instant::now() + self.timeout).min(t.drain_end);
            let reply = loop {
                let frame = match tokio::time::timeout_at(give_up.into(), rx.next()).await {
                    Err(_) => break Reply::TimedOut,
                    Ok(Some(Ok(frame))) => frame,
                    Ok(Some(Err(e))) => {
                        ctx.errors.note(format!("{e:#}"));
                        break Reply::Gone;
                    }
                    Ok(None) => {
                        ctx.errors.note("the server closed a connection early");
                        break Reply::Gone;
                    }
                };
                Counters::inc(&c.frames);
                match protocol.decode(frame.as_str()) {
                    Incoming::Message { seq, text } => {
                        if let Some(seq) = seq {
                            seqs.event(seq, true);
                        }
                        match stamp::parse(&text) {
                            Some(s) if s == intended_nanos => {
                                Counters::inc(&c.received);
                                ctx.latency.record(self.id, stamp::latency_us(s));
                                break Reply::Back;
                            }
                            // An earlier message that had timed out.
                            _ => Counters::inc(&c.late),
                        }
                    }
                    Incoming::Event { seq } => seqs.event(seq, false),
                    Incoming::Error { code } => {
                        Counters::inc(&c.server_errors);
                        ctx.errors.note(format!("server error frame: {code}"));
                    }
                    Incoming::Moved => break Reply::Gone,
                    Incoming::Welcome { .. } | Incoming::Other => {}
                }
            };
            match reply {
                Reply::Back => {}
                Reply::TimedOut => Counters::inc(&c.timeouts),
                Reply::Gone => {
                    Counters::inc(&c.timeouts);
                    gone = true;
                    break;
                }
            }
        }
        if gone {
            Counters::inc(&c.dropped);
        }
        Counters::add(&c.seq_gaps, seqs.gaps);
        Counters::add(&c.duplicates, seqs.duplicates);
        Counters::dec(&c.open);
        if !gone {
            client::close(tx, rx).await;
        }
    }
}
