//! `fanout`: R rooms of M members; the first S members of each room also
//! publish at a fixed rate. Every member records the delivery latency of
//! every message, so one publish yields M samples.

use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

use super::member::{self, MemberSpec, Schedule};
use super::{join_all, spawn_paced, Ctx};
use crate::cli::FanoutArgs;

pub async fn run(ctx: Arc<Ctx>, args: &FanoutArgs, ramp: f64) {
    let t = ctx.timeline;
    let (rooms, members) = (args.rooms, args.members);
    let publishers = args.publishers.min(members);
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let mut tasks = JoinSet::new();
    // Member-major numbering: the ramp grows all rooms together, and the
    // publishers (members 0..S) connect first.
    let n = rooms * members;
    spawn_paced(
        &ctx,
        &mut tasks,
        n,
        t.measure_end,
        |g| ctx.ramp_at(g, ramp),
        |g, at| {
            let (room, m) = (g % rooms, g / rooms);
            // Spread publishers' phases over one interval so they do not all
            // fire in the same millisecond.
            let schedule = (m < publishers).then(|| Schedule {
                first: t.measure_start
                    + interval
                        .mul_f64((room * publishers + m) as f64 / (rooms * publishers) as f64),
                interval,
                end: t.measure_end,
            });
            let spec = MemberSpec {
                id: g,
                room,
                user: format!("u{g}"),
                connect_at: at,
                leave_at: t.drain_end,
                schedule,
                burst: 0,
                payload: args.payload,
                steady_by: Some(t.measure_start),
            };
            Some(member::run(ctx.clone(), spec))
        },
    )
    .await;
    join_all(&mut tasks, t.hard_end).await;
}
