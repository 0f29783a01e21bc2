//! The public listener's application: a Pingora `ServerApp` that reads
//! every request head itself (`read_head.rs`, `head.rs`) and then either
//! tunnels a WebSocket upgrade (`websocket.rs`) or hands the request, its
//! bytes put back (`replay.rs`), to Pingora's `HttpProxy` with the
//! balancer's `ProxyHttp` (`proxy.rs`). A kept-alive connection comes back
//! here after each request, so every request of it passes the same edge
//! checks and every upgrade on it is tunnelled here, never by `HttpProxy`.
//!
//! Before any of that, a connection takes a place under `max_connections`
//! (`capacity.rs`), and a member request passes the gate (`gate.rs`:
//! `Origin` and the join token), so nothing refused reaches a node.
//!
//! It works on Pingora's `Stream`, whatever the transport under it: the
//! same service takes Pingora's TLS listener (`tls.rs`). An HTTP/2
//! connection (TLS with ALPN h2) would go to `HttpProxy` whole, past the
//! gate, so `tls.rs` offers no ALPN.

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

use crate::capacity::{Admit, Capacity, Slot};
use crate::gate::{Asked, Counted, Gate};
use crate::head::{self, Inspected, Kind};
use crate::metrics::Metrics;
use crate::outcome::Outcome;
use crate::proxy::Proxy;
use crate::read_head::{read_head, Deadline, NoHead};
use crate::replay::Replayed;
use crate::respond;
use crate::route::{self, Refusal, Route};
use crate::routing::Membership;
use crate::tunnels::Tunnels;
use crate::websocket;

/// How long a kept-alive connection may wait for its next request: Pingora's
/// own default for HTTP/1.1 keep-alive.
const KEEPALIVE: Duration = Duration::from_secs(60);

pub struct Front {
    pub http: Arc<HttpProxy<Proxy>>,
    pub membership: Arc<Membership>,
    pub metrics: Metrics,
    pub tunnels: Arc<Tunnels>,
    /// Swapped whole by a config reload.
    pub gate: Arc<ArcSwap<Gate>>,
    pub capacity: Arc<Capacity>,
}

/// How long a refusal at the cap may take to write before the connection
/// is dropped anyway.
const FULL_ANSWER: Duration = Duration::from_millis(500);
/// How long a refused connection may take to start its request. A 503
/// written before the client has sent anything is, to an HTTP client, a
/// message on an idle connection, not the answer to its request (hyper
/// reports `UnexpectedMessage`), so the refusal waits for the first bytes.
const FULL_WAIT: Duration = Duration::from_millis(200);

#[async_trait]
impl ServerApp for Front {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let slot = match self.capacity.admit() {
            Admit::Admitted(slot) => slot,
            Admit::Full(refusing) => {
                if let Some(_refusing) = refusing {
                    Box::pin(self.full(stream)).await;
                }
                return None;
            }
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let _slot = slot;
            return ServerApp::process_new(&self.http, stream, shutdown).await;
        }
        // The handshake phase is boxed so that it does not size the tunnel's
        // task: a tunnel keeps nothing of it.
        Box::pin(self.serve(stream, slot, shutdown)).await;
        None
    }

    async fn cleanup(&self) {
        let cut = self.tunnels.cut_all();
        if cut > 0 {
            tracing::info!(tunnels = cut, "shutdown: open tunnels ended");
        }
        ServerApp::cleanup(&*self.http).await;
    }
}

impl Front {
    /// Every request of one connection, until it closes or is handed on.
    async fn serve(&self, mut stream: Stream, slot: Slot, shutdown: &ShutdownWatch) {
        let mut started = Instant::now();
        // Set once the connection has been kept alive after a request.
        let mut reused = false;
        let mut settings: Option<HttpPersistentSettings> = None;
        loop {
            let (max, head_timeout) = {
                let c = &self.membership.routing().config;
                (
                    c.max_request_head_bytes,
                    Duration::from_millis(c.request_head_timeout_ms),
                )
            };
            let deadline = match reused {
                false => Deadline::Whole((started + head_timeout).into()),
                true => Deadline::AfterIdle {
                    idle: (Instant::now() + KEEPALIVE).into(),
                    head: head_timeout,
                },
            };
            let mut watch = shutdown.clone();
            let stopping = async move {
                while !*watch.borrow_and_update() {
                    if watch.changed().await.is_err() {
                        break;
                    }
                }
            };
            // Waiting for a head, the connection may be closed to make room.
            let mut waiting = self.capacity.waiting();
            let read = tokio::select! {
                r = read_head(&mut stream, max, deadline, stopping) => r,
                _ = waiting.evicted() => return,
            };
            drop(waiting);
            let head = match read {
                Ok(h) => h,
                Err(e) => return self.no_head(stream, e, max, head_timeout, started).await,
            };
            if reused {
                started = Instant::now();
            }
            let req = match head::inspect(&head.buf[..head.head_len]) {
                Ok(req) => req,
                Err((route, r)) => return self.refuse(stream, route, r, started).await,
            };
            if let Err((route, r)) = self.pass_gate(&head.buf[..head.head_len], &req) {
                return self.refuse(stream, route, r, started).await;
            }
            if req.kind == Kind::WebSocket {
                return websocket::serve(self, stream, slot, head, req, started).await;
            }
            // Pingora's proxy serves it, from the bytes already read.
            let replayed: Stream = Box::new(Replayed::new(head.buf, stream));
            let mut session = ServerSession::new_http1(replayed);
            match settings.take() {
                Some(s) => s.apply_to_session(&mut session),
                None if reused => session.set_keepalive(Some(KEEPALIVE.as_secs())),
                None => {
                    session.set_keepalive(Some(KEEPALIVE.as_secs()));
                    session.set_keepalive_reuses_remaining(
                        self.http
                            .server_options()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            if *shutdown.borrow() {
                session.set_keepalive(None);
            }
            // An SSE stream is registered under its node, like a tunnel,
            // so that it ends when the node goes out of reach (`Tunnels`);
            // everything else is short and runs here.
            let sse_upstream = match req.route {
                Route::Sse => route::plan(&self.membership.routing(), req.query.as_deref())
                    .ok()
                    .map(|plan| plan.owner.id),
                _ => None,
            };
            let kept = match sse_upstream {
                Some(upstream) => {
                    let (http, shutdown) = (self.http.clone(), shutdown.clone());
                    let stream = async move { http.process_new_http(session, &shutdown).await };
                    self.tunnels.run(&upstream, stream).await.flatten()
                }
                None => self.http.process_new_http(session, shutdown).await,
            };
            let Some(kept) = kept else {
                return;
            };
            let (next, persistent) = kept.consume();
            let Some(next) = Replayed::unwrap(next) else {
                return;
            };
            stream = next;
            settings = persistent;
            reused = true;
        }
    }

    /// Over `max_connections` with nobody to evict: 503, said quickly.
    async fn full(&self, mut stream: Stream) {
        let reason = format!(
            "the balancer holds its limit of {} connections (max_connections); retry shortly\n",
            self.capacity.max()
        );
        let answer = respond::plain(503, &reason);
        let mut first = [0u8; 512];
        let _ = tokio::time::timeout(FULL_WAIT, stream.read(&mut first)).await;
        let _ = tokio::time::timeout(FULL_ANSWER, respond::and_close(&mut stream, &answer)).await;
    }

    /// The gate's verdict on a member request, counted when it refuses.
    fn pass_gate(&self, head: &[u8], req: &Inspected) -> Result<(), (Route, Refusal)> {
        let gate = self.gate.load();
        let mut headers = [httparse::EMPTY_HEADER; head::MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        // `inspect` parsed this very head already.
        if parsed.parse(head).is_err() {
            return Err((req.route, Refusal::new(400, "malformed request head\n")));
        }
        let named = |name: &str| -> Vec<&[u8]> {
            parsed
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
                .collect()
        };
        let asked = Asked {
            query: req.query.as_deref(),
            origin: named("origin"),
            authorization: named("authorization"),
        };
        gate.check(req.route, &asked).map_err(|d| {
            match d.counted {
                Counted::Auth(f) => self
                    .metrics
                    .auth_failures
                    .with_label_values(&[f.label()])
                    .inc(),
                Counted::Origin => self.metrics.origin_refusals.inc(),
                Counted::Request => {}
            }
            (req.route, Refusal::new(d.status, d.reason))
        })
    }

    /// No head: say why if there is anyone to tell, then close.
    async fn no_head(
        &self,
        stream: Stream,
        e: NoHead,
        max: usize,
        timeout: Duration,
        started: Instant,
    ) {
        let refusal = match e {
            NoHead::TooLarge => {
                Refusal::new(431, format!("request head larger than {max} bytes\n"))
            }
            NoHead::TimedOut { partial: true } => Refusal::new(
                408,
                format!(
                    "the request head did not arrive within {} ms\n",
                    timeout.as_millis()
                ),
            ),
            // Nothing started (an idle connection, a shutdown) or nobody
            // left to answer.
            NoHead::TimedOut { partial: false }
            | NoHead::Closed { .. }
            | NoHead::Shutdown
            | NoHead::Io(_) => return,
        };
        self.refuse(stream, Route::Other, refusal, started).await
    }

    async fn refuse(&self, mut stream: Stream, route: Route, r: Refusal, started: Instant) {
        let mut outcome = Outcome::new(route, started);
        outcome.status = r.status;
        outcome.record(&self.metrics, Some(r.reason.trim_end()));
        respond::and_close(&mut stream, &respond::plain(r.status, &r.reason)).await;
    }
}
