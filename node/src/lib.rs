//! `roompin-node` as a library: the chat node's rooms, sessions, ownership
//! and control channel. The binary (`main.rs`) only parses the command line
//! and starts [`serve`]; keeping the logic here lets its decisions be tested
//! in-process. See docs/ARCHITECTURE.md.

pub mod control;
pub mod event;
pub mod history;
pub mod http;
pub mod metrics;
pub mod node;
pub mod ownership;
pub mod params;
pub mod publish;
pub mod room;
pub mod rooms;
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
    let node = node::Node::new(id, settings, metrics);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(node = %node.id, %listen, control = node.settings.control_token.is_some(), "roompin-node started");

    let reaper = node.clone();
    node.tasks.spawn(async move {
        reaper
            .rooms
            .reap_idle(room_idle, reaper.shutdown.clone())
            .await
    });
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
