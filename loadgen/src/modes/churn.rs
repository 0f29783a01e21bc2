//! `churn`: `base` members per room stay for the whole run and check that
//! the seqs of everyone else's joins, messages and leaves arrive complete;
//! meanwhile new connections arrive at a fixed rate, each sending a few
//! messages and leaving after `hold`.
//!
//! Arrivals are open loop: a slow connect does not delay the next one. To
//! stay bounded in sockets, an arrival is skipped (and counted) when the
//! process already holds its budget of churning connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

use super::member::{self, MemberSpec};
use super::{join_all, spawn_paced, Ctx};
use crate::cli::ChurnArgs;
use crate::stats::Counters;

/// Churning connection ids start here, above any base member's id.
const CHURN_ID_BASE: u64 = 1 << 40;

pub async fn run(ctx: Arc<Ctx>, args: &ChurnArgs, ramp: f64) {
    let t = ctx.timeline;
    let rooms = args.rooms.max(1);
    let mut tasks = JoinSet::new();

    let base = rooms * args.base;
    spawn_paced(
        &ctx,
        &mut tasks,
        base,
        t.measure_end,
        |g| ctx.ramp_at(g, ramp),
        |g, at| {
            let spec = MemberSpec {
                id: g,
                room: g % rooms,
                user: format!("u{g}"),
                connect_at: at,
                leave_at: t.drain_end,
                schedule: None,
                burst: 0,
                payload: 0,
                steady_by: Some(t.measure_start),
            };
            Some(member::run(ctx.clone(), spec))
        },
    )
    .await;

    // Arrivals: i-th at measure_start + i/rate, over the measured window.
    let arrivals = (t.measure_end - t.measure_start).as_secs_f64() * args.rate;
    let arrivals = arrivals.floor() as u64;
    let free = ctx
        .socket_budget
        .saturating_sub(ctx.counters.open.load(Ordering::Relaxed));
    let budget = free / ctx.endpoint.sockets_per_member(args.messages > 0);
    let in_flight = Arc::new(AtomicU64::new(0));
    spawn_paced(
        &ctx,
        &mut tasks,
        arrivals,
        t.measure_end,
        |i| t.measure_start + Duration::from_secs_f64(i as f64 / args.rate),
        |i, at| {
            if in_flight.load(Ordering::Relaxed) >= budget {
                Counters::inc(&ctx.counters.skipped);
                return None;
            }
            in_flight.fetch_add(1, Ordering::Relaxed);
            let spec = MemberSpec {
                id: CHURN_ID_BASE + i,
                room: i % rooms,
                user: format!("c{i}"),
                connect_at: at,
                leave_at: (at + args.hold).min(t.drain_end),
                schedule: None,
                burst: args.messages,
                payload: args.payload,
                steady_by: None,
            };
            let (ctx, in_flight) = (ctx.clone(), in_flight.clone());
            Some(async move {
                member::run(ctx, spec).await;
                in_flight.fetch_sub(1, Ordering::Relaxed);
            })
        },
    )
    .await;
    join_all(&mut tasks, t.hard_end).await;
}
