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
        let lapsed = lapsed(&node, now);
        let ended = || ended(&node, now);
        if lapsed && !fenced {
            node.metrics.fences.inc();
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

/// Renews a lease that a view found lapsed ([`Renewal::AfterLapse`]),
/// after closing the rooms open from before the lapse. Why here and not
/// only in the watcher: a node paused past its lease may have been written
/// off, and peers may have opened its meetings meanwhile. When it wakes, a
/// view push queued during the pause can be read before the watcher's
/// tick; had it renewed the lease, the watcher would never see it lapsed,
/// and the old rooms would serve again beside the peers' (the 5 s pause
/// fault test caught a poll answered by both).
///
/// Two views read at the same wake both get here; the second finds the
/// lease renewed by the first and closes nothing.
///
/// [`Renewal::AfterLapse`]: crate::lease::Renewal::AfterLapse
pub fn renew_after_lapse(node: &Node, now: Instant) {
    if lapsed(node, now) {
        // The watcher had not seen this lapse: a fence of an instant.
        if node.metrics.fenced.get() == 0 {
            node.metrics.fences.inc();
        }
        let closed = node
            .placement
            .freeze_all(close::GOING_AWAY, ended(node, now));
        if closed > 0 {
            tracing::warn!(node = %node.id, rooms = closed, "a view arrived after the lease had lapsed (paused or cut off): fenced before renewing it; rooms closed");
        }
    }
    node.ownership.lease.resume();
}

/// Whether a node that is part of a cluster has outlived its lease.
fn lapsed(node: &Node, now: Instant) -> bool {
    !node.alone() && !node.ownership.lease.holds(now)
}

/// When the lease ended (at most `now`).
fn ended(node: &Node, now: Instant) -> Instant {
    node.ownership.lease.end().unwrap_or(now).min(now)
}
