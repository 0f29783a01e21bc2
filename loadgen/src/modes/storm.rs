//! `storm`: open C connections (K per room) and hold them. When the window
//! opens, every connection is dropped at once, without a close handshake,
//! the way clients lose theirs when a node fails; `--gap` later all of them
//! reconnect at once. That is when a chat balancer is busiest: thousands of
//! handshakes, routes and upstream connects in the same instant.
//!
//! `latency` is each reconnect's time from the storm's instant to its
//! welcome, so its maximum is how long the storm took to clear;
//! `connections.reconnected` and `reconnect_failed` count the outcome.

use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinSet;

use super::{join_all, micros, spawn_paced, Ctx};
use crate::cli::StormArgs;
use crate::client::{self, Conn};
use crate::stats::Counters;

pub async fn run(ctx: Arc<Ctx>, args: &StormArgs, ramp: f64) {
    let t = ctx.timeline;
    let per_room = args.per_room.max(1);
    let storm_at = t.measure_start + args.gap;
    let mut tasks = JoinSet::new();
    spawn_paced(
        &ctx,
        &mut tasks,
        args.conns,
        t.measure_start,
        |g| ctx.ramp_at(g, ramp),
        |g, at| {
            let ctx = ctx.clone();
            Some(async move {
                let room = g / per_room;
                let user = format!("u{g}");
                member(ctx, g, room, user, at, storm_at).await
            })
        },
    )
    .await;
    join_all(&mut tasks, t.hard_end).await;
}

async fn member(
    ctx: Arc<Ctx>,
    id: u64,
    room: u64,
    user: String,
    connect_at: Instant,
    storm_at: Instant,
) {
    let c = &ctx.counters;
    let t = ctx.timeline;
    let meeting = ctx.meeting(room);
    tokio::time::sleep_until(connect_at.into()).await;
    let Some(conn) = ctx.connect_counted(&meeting, &user, false).await else {
        return;
    };
    Counters::inc(&c.connected);
    Counters::inc(&c.open);
    ctx.connect_latency.record(
        id,
        micros(Instant::now().saturating_duration_since(connect_at)),
    );
    let held = hold(&ctx, conn, t.measure_start).await;
    Counters::dec(&c.open);
    if held.is_none() {
        Counters::inc(&c.dropped);
        return;
    }
    // Dropped: the socket closes, no close frame (as a failure would).
    drop(held);

    tokio::time::sleep_until(storm_at.into()).await;
    let Some(conn) = ctx.connect_counted(&meeting, &user, false).await else {
        Counters::inc(&c.reconnect_failed);
        return;
    };
    ctx.latency.record(
        id,
        micros(Instant::now().saturating_duration_since(storm_at)),
    );
    Counters::inc(&c.reconnected);
    Counters::inc(&c.connected);
    Counters::inc(&c.open);
    let held = hold(&ctx, conn, t.drain_end).await;
    Counters::dec(&c.open);
    match held {
        Some(conn) => client::close(conn.tx, conn.rx).await,
        None => Counters::inc(&c.dropped),
    }
}

/// Reads (and drops) frames until `until`; `None` if the server ended the
/// connection first.
async fn hold(ctx: &Ctx, mut conn: Conn, until: Instant) -> Option<Conn> {
    let deadline = tokio::time::sleep_until(until.into());
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            biased;
            _ = &mut deadline => return Some(conn),
            next = conn.rx.next() => match next {
                Some(Ok(_)) => Counters::inc(&ctx.counters.frames),
                Some(Err(e)) => {
                    ctx.errors.note(format!("{e:#}"));
                    return None;
                }
                None => {
                    ctx.errors.note("the server closed a connection early");
                    return None;
                }
            },
        }
    }
}
