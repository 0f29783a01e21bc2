//! Closes every room when the node's lease ends (see `lease.rs`): a node
//! that has heard from no balancer for a while may have been written off by
//! the rest of the cluster, whose members are then free to open its
//! meetings afresh, so it must not go on serving them. Their history is
//! kept a while (`Placement::freeze_all`): once a balancer is heard again,
//! a meeting that no peer opened meanwhile reopens with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::node::Node;
use roompin_shared::protocol::close;

/// How often the lease is looked at.
const TICK: Duration = Duration::from_millis(100);

pub async fn watch(node: Arc<Node>) {
    let mut tick = tokio::time::interval(TICK);
    let mut fenced = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = node.shutdown.cancelled() => return,
        }
        let now = Instant::now();
        let lapsed = !node.alone() && !node.ownership.lease.holds(now);
        let ended = || node.ownership.lease.end().unwrap_or(now).min(now);
        if lapsed && !fenced {
            let closed = node.placement.freeze_all(close::GOING_AWAY, ended());
            tracing::warn!(node = %node.id, rooms = closed, "no fresh view of any balancer: fenced; rooms closed, none opened until a balancer is heard again");
        } else if !lapsed && fenced {
            tracing::info!(node = %node.id, "a balancer's view arrived: serving again");
        }
        if lapsed != fenced {
            node.metrics.fenced.set(i64::from(lapsed));
            fenced = lapsed;
        }
        if lapsed && node.placement.holds_rooms() {
            node.placement.freeze_all(close::GOING_AWAY, ended());
        }
    }
}
