//! `roompin-node` as a library: the chat node's rooms, sessions, ownership
//! and control channel. The binary (`main.rs`) only parses the command line
//! and starts [`serve`]; keeping the logic here lets its decisions be tested
//! in-process. See docs/ARCHITECTURE.md.

pub mod claim;
pub mod control;
pub mod deadline;
pub mod edge;
pub mod event;
pub mod fence;
pub mod guard;
pub mod heap;
pub mod history;
pub mod http;
pub mod lease;
pub mod limits;
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
pub mod sockets;
pub mod sse;
pub mod tasks;
pub mod writer;
pub mod ws;

use anyhow::Context;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

use roompin_shared::config::NodeConfig;

/// How long a stopping node waits for its sessions to end. Each session
/// bounds its own closing handshake well below this (`ws.rs`).
const STOP_CAP: Duration = Duration::from_secs(5);

/// The listen queue: connections the kernel has accepted and the node not
/// yet taken. A move sends hundreds of members to one node within a second
/// (their reconnects, and forwards from peers); tokio's default of 1,024
/// overflowed in the bench, and the kernel drops a SYN that finds the
/// queue full, so that member's connect stalls for the 1 s SYN retry. The
/// kernel caps this at `net.core.somaxconn` (4,096 by default).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the node's listener with [`LISTEN_BACKLOG`].
fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std and tokio do: a restarted node rebinds while old
    // connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Runs a node until it is stopped (SIGTERM drains, SIGINT stops at once).
pub async fn serve(id: String, listen: SocketAddr, settings: NodeConfig) -> anyhow::Result<()> {
    let metrics = metrics::Metrics::register()?;
    for task in tasks::ALL {
        metrics.task_panics.with_label_values(&[task]);
    }
    let room_idle = Duration::from_millis(settings.room_idle_ms);
    let (node, move_orders) = node::Node::new(id, listen, settings, metrics);
    // Loads the [auth] keys: a bad key file stops the node here.
    let guard = guard::Guard::new(node.clone())?;
    let listener = bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(node = %node.id, %listen, control = node.settings.control_token.is_some(), "roompin-node started");

    let none = tracing::Span::none;
    tasks::spawn(&node, tasks::REAPER, none(), reap(node.clone(), room_idle));
    tasks::spawn(
        &node,
        tasks::MOVER,
        none(),
        mover::run(node.clone(), move_orders),
    );
    tasks::spawn(&node, tasks::FENCE, none(), fence::watch(node.clone()));
    tasks::spawn(
        &node,
        tasks::SIGNALS,
        none(),
        shutdown::on_signals(node.clone()),
    );

    // Outermost last: the body deadline, then the HTTP rules, then the
    // token and limits of the member routes.
    let body_deadline = Arc::new(deadline::BodyDeadline {
        timeout: limits::ms(node.settings.request_body_timeout_ms),
        metrics: node.metrics.clone(),
    });
    let app = http::router(node.clone())
        .layer(axum::middleware::from_fn_with_state(guard, guard::members))
        .layer(axum::middleware::from_fn(edge::rules))
        .layer(axum::middleware::from_fn_with_state(
            body_deadline,
            deadline::body,
        ));
    let cap = sockets::cap(node.settings.max_sockets, sockets::fd_limit());
    if cap < node.settings.max_sockets {
        tracing::warn!(
            max_sockets = node.settings.max_sockets,
            cap,
            "max_sockets is above the descriptor limit less a reserve; holding to {cap}"
        );
    }
    let sockets = sockets::Sockets::new(
        cap,
        node.metrics.sockets.clone(),
        node.metrics.socket_evictions.clone(),
    );
    accept(&node, listener, app, sockets).await;

    node.tasks.close();
    if tokio::time::timeout(STOP_CAP, node.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            tasks = node.tasks.len(),
            "some sessions did not end within {STOP_CAP:?}"
        );
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

/// Accepts connections until the node stops. Each connection is a task on
/// the node's tracker, so shutdown waits for it (and for the SSE streams
/// it carries), and a panic in any handler is counted. Each is counted
/// against `max_sockets` (`sockets.rs`) and held to the head, body and
/// keep-alive deadlines.
async fn accept(
    node: &Arc<node::Node>,
    listener: TcpListener,
    app: axum::Router,
    sockets: Arc<sockets::Sockets>,
) {
    let s = &node.settings;
    let user_timeout = Duration::from_millis(s.tcp_user_timeout_ms);
    let keep_alive = limits::ms(s.keep_alive_timeout_ms);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        // Whole heads, from the connection's start or the last response:
        // one byte a minute does not keep a head open.
        .header_read_timeout(limits::ms(s.request_head_timeout_ms))
        .max_buf_size(s.max_request_head_bytes)
        .max_headers(s.max_request_headers);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    on_accept_error(node, e).await;
                    continue;
                }
            },
            _ = node.shutdown.cancelled() => return,
        };
        let conn = match sockets.admit() {
            sockets::Admit::Open(conn) => conn,
            sockets::Admit::Refuse => {
                node.metrics
                    .limit_refusals
                    .with_label_values(&[guard::LIMIT_SOCKETS])
                    .inc();
                sockets::refuse(&tcp, sockets.max());
                continue;
            }
        };
        configure(&tcp, user_timeout);
        let inner = TowerToHyperService::new(app.clone());
        let tracked = conn.clone();
        let service = hyper::service::service_fn(move |req| {
            let busy = tracked.begin();
            let response = hyper::service::Service::call(&inner, req);
            async move { response.await.map(|r| busy.finish(r)) }
        });
        let io = TokioIo::new(conn.wrap(tcp));
        let stop = node.shutdown.clone();
        let http = http.clone();
        let metrics = node.metrics.clone();
        tasks::spawn(node, tasks::CONNECTION, tracing::Span::none(), async move {
            let served = http.serve_connection(io, service).with_upgrades();
            tokio::pin!(served);
            let done = tokio::select! {
                done = served.as_mut() => done,
                _ = stop.cancelled() => {
                    // Ends the connection after the request in flight (an
                    // SSE stream ends with its session).
                    served.as_mut().graceful_shutdown();
                    served.await
                }
                // Dropping the connection closes its socket.
                _ = conn.evicted() => return,
                _ = conn.kept_alive_for(keep_alive) => {
                    metrics.http_timeouts.with_label_values(&[deadline::PHASE_KEEP_ALIVE]).inc();
                    return;
                }
            };
            if let Err(e) = done {
                if e.is_timeout() {
                    metrics
                        .http_timeouts
                        .with_label_values(&[deadline::PHASE_HEAD])
                        .inc();
                }
                tracing::debug!(error = %e, "http connection ended");
            }
        });
    }
}

fn configure(tcp: &TcpStream, user_timeout: Duration) {
    let sock = socket2::SockRef::from(tcp);
    if let Err(e) = tcp
        .set_nodelay(true)
        .and_then(|()| sock.set_tcp_user_timeout(Some(user_timeout)))
    {
        tracing::debug!(error = %e, "cannot set socket options");
    }
}

/// A connection that failed before it was accepted is the client's
/// business; anything else (out of file descriptors) is the node's, and
/// retrying at once would spin.
async fn on_accept_error(node: &node::Node, e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "cannot accept connections; retrying in 1 s");
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        _ = node.shutdown.cancelled() => {}
    }
}
