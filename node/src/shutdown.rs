//! Signals: SIGINT stops at once (clients get 1001 and reconnect with
//! backoff); SIGTERM drains first, so a rolling restart moves every room
//! whole (clients get 4001 and reconnect at once to the new owner). A
//! SIGINT during a drain cuts the drain short.
//!
//! The end is two steps. First every room is closed, which kicks its
//! members with the code. Then `Node::shutdown` is cancelled: the listener
//! stops, HTTP connections finish, and every session watches that token,
//! so one that upgraded after the rooms were closed (it was already on its
//! way) still ends with the same code instead of being cut off.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::Instant;

use crate::node::Node;
use roompin_shared::protocol::close;

pub async fn on_signals(node: Arc<Node>) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => drain(&node, &mut int).await,
        _ = int.recv() => {}
        _ = node.shutdown.cancelled() => return,
    };
    let code = close_code(&node);
    tracing::info!(node = %node.id, code, "closing remaining clients");
    node.placement.close_all(code);
    node.shutdown.cancel();
}

/// The code a session ends with when the node stops: 4001 after a drain
/// (its room has moved, or will be found on the next owner), 1001 on
/// SIGINT.
pub fn close_code(node: &Node) -> u16 {
    if node.is_draining() {
        close::ROOM_MOVED
    } else {
        close::GOING_AWAY
    }
}

/// Fails `/healthz`, then waits until a balancer's view routes nothing here
/// and the moved rooms' clients have left, or until `drain_timeout_ms`, or
/// a SIGINT.
async fn drain(node: &Node, int: &mut Signal) {
    node.draining.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_millis(node.settings.drain_timeout_ms);
    tracing::info!(node = %node.id, timeout_ms = node.settings.drain_timeout_ms, "draining");
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while Instant::now() < deadline {
        tokio::select! {
            _ = tick.tick() => {}
            _ = int.recv() => {
                tracing::info!(node = %node.id, "SIGINT: drain cut short");
                return;
            }
        }
        // Without any balancer view (a standalone node) there is nobody to
        // wait for: done once the clients are gone.
        let now = std::time::Instant::now();
        let views = node.ownership.snapshot();
        if node.metrics.open_connections() == 0
            && !node.placement.holds_rooms()
            && (views.routed_away(now) || !views.has_fresh(now))
        {
            tracing::info!(node = %node.id, "drained: no clients, and no balancer routes here");
            return;
        }
    }
    tracing::warn!(node = %node.id, connections = node.metrics.open_connections(), "drain timed out");
}
