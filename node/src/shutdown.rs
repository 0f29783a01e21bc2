//! Signals: SIGINT stops at once (clients get 1001 and reconnect with
//! backoff); SIGTERM drains first, so a rolling restart moves every room
//! whole (clients get 4001 and reconnect at once to the new owner).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
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
    let code = tokio::select! {
        _ = term.recv() => { drain(&node).await; close::ROOM_MOVED }
        _ = int.recv() => close::GOING_AWAY,
        _ = node.shutdown.cancelled() => return,
    };
    tracing::info!(node = %node.id, code, "closing remaining clients");
    node.placement.close_all(code);
    node.shutdown.cancel();
}

/// Fails `/healthz`, then waits until a balancer's view routes nothing here
/// and the moved rooms' clients have left, or until `drain_timeout_ms`.
async fn drain(node: &Node) {
    node.draining.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_millis(node.settings.drain_timeout_ms);
    tracing::info!(node = %node.id, timeout_ms = node.settings.drain_timeout_ms, "draining");
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while Instant::now() < deadline {
        tick.tick().await;
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
