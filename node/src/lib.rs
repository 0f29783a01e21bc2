//! `roompin-node` as a library: the chat node's rooms, sessions, ownership
//! and control channel. The binary (`main.rs`) only parses the command line
//! and starts [`serve`]; keeping the logic here lets its decisions be tested
//! in-process. See docs/ARCHITECTURE.md.

pub mod claim;
pub mod control;
pub mod event;
pub mod fence;
pub mod history;
pub mod http;
pub mod lease;
pub mod liveness;
pub mod metrics;
pub mod mover;
pub mod node;
pub mod ownership;
pub mod params;
pub mod peers;
pub mod placement;
pub mod publish;
pub mod relay;
pub mod room;
pub mod shutdown;
pub mod sse;
pub mod writer;
pub mod ws;

use anyhow::Context;
use axum::serve::ListenerExt;
use std::net::SocketAddr;
use std::time::Duration;

use roompin_shared::config::NodeConfig;

/// Runs a node until it is stopped (SIGTERM drains, SIGINT stops at once).
pub async fn serve(id: String, listen: SocketAddr, settings: NodeConfig) -> anyhow::Result<()> {
    let metrics = metrics::Metrics::register()?;
    let room_idle = Duration::from_millis(settings.room_idle_ms);
    let (node, move_orders) = node::Node::new(id, listen, settings, metrics);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(node = %node.id, %listen, control = node.settings.control_token.is_some(), "roompin-node started");

    node.tasks.spawn(reap(node.clone(), room_idle));
    node.tasks.spawn(mover::run(node.clone(), move_orders));
    node.tasks.spawn(fence::watch(node.clone()));
    node.tasks.spawn(shutdown::on_signals(node.clone()));

    let user_timeout = Duration::from_millis(node.settings.tcp_user_timeout_ms);
    let listener = listener.tap_io(move |tcp| {
        let sock = socket2::SockRef::from(&*tcp);
        if let Err(e) = tcp
            .set_nodelay(true)
            .and_then(|()| sock.set_tcp_user_timeout(Some(user_timeout)))
        {
            tracing::debug!(error = %e, "cannot set socket options");
        }
    });
    let stop = node.shutdown.clone();
    axum::serve(listener, http::router(node.clone()))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    node.tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), node.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some sessions did not end within 5 s");
    }
    tracing::info!(node = %node.id, "roompin-node stopped");
    Ok(())
}

/// Drops rooms that have been empty for `idle`, and expired tombstones and
/// hints, until shutdown.
async fn reap(node: std::sync::Arc<node::Node>, idle: Duration) {
    let mut tick =
        tokio::time::interval((idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5)));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = node.shutdown.cancelled() => return,
        }
        node.placement.reap(idle, std::time::Instant::now());
    }
}
