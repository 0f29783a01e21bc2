//! `idle`: open C connections (K per room) and hold them, silent, until the
//! drain ends. What it measures is the server's cost of a connection at
//! rest (with `--pid`: RSS per connection) and whether every connect
//! succeeds and stays up; `latency` is the connect latency.

use std::sync::Arc;
use tokio::task::JoinSet;

use super::member::{self, MemberSpec};
use super::{join_all, spawn_paced, Ctx};
use crate::cli::IdleArgs;

pub async fn run(ctx: Arc<Ctx>, args: &IdleArgs, ramp: f64) {
    let t = ctx.timeline;
    let per_room = args.per_room.max(1);
    let mut tasks = JoinSet::new();
    spawn_paced(
        &ctx,
        &mut tasks,
        args.conns,
        t.measure_end,
        |g| ctx.ramp_at(g, ramp),
        |g, at| {
            let spec = MemberSpec {
                id: g,
                room: g / per_room,
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
    join_all(&mut tasks, t.hard_end).await;
}
