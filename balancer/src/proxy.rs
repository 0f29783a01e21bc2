//! Everything on the public listener but a WebSocket upgrade (which the
//! front tunnels itself, `websocket.rs`): a Pingora `ProxyHttp` that pins
//! SSE streams and publishes to their meeting's owner node, and serves the
//! page and the 404s.
//!
//! `request_filter` validates the meeting id (with the same code the nodes
//! use, through `route.rs`) and picks the owner from the routing snapshot;
//! nothing is proxied for a bad request. A refused connection marks the
//! node suspect and the request is retried on the next owner of the ring.

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::Digest;
use pingora::proxy::{ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::outcome::Outcome;
use crate::page;
use crate::route::{self, Plan, Route};
use crate::routing::Membership;
use roompin_shared::control::{BALANCER_HEADER, EPOCH_HEADER, SKIPPED_HEADER};
use roompin_shared::Member;

/// Connecting to a node on the same network should take milliseconds; a
/// node that does not answer in this time is treated like one that refused.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Proxy {
    pub membership: Arc<Membership>,
    pub metrics: Metrics,
}

/// Per-request state.
pub struct Ctx {
    route: Route,
    plan: Option<Plan>,
    upstream: Option<Member>,
    epoch: u64,
    /// Nodes that refused this request, skipped on retry.
    refused: Vec<String>,
    /// Counted in a per-upstream gauge while it is open: until `logging`,
    /// or until the stream's task is cut (`Tunnels`), which drops the ctx
    /// without `logging`.
    open: Option<Open>,
    started: Instant,
    /// When `upstream_peer` handed Pingora the peer: a fresh connection's
    /// connect time is measured from here to `connected_to_upstream`.
    connecting: Option<Instant>,
    /// The connect failed for want of a local resource (`shortage.rs`).
    short: bool,
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            route: Route::Other,
            plan: None,
            upstream: None,
            epoch: 0,
            refused: Vec::new(),
            open: None,
            started: Instant::now(),
            connecting: None,
            short: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let uri = session.req_header().uri.clone();
        ctx.route = Route::of(uri.path());
        match ctx.route {
            Route::Page => {
                page::serve(session).await?;
                return Ok(true);
            }
            Route::Other => {
                let reason = format!(
                    "no route for {}: use /websocket, /sse or /messages\n",
                    uri.path()
                );
                respond(session, 404, &reason).await?;
                return Ok(true);
            }
            _ => {}
        }
        let routing = self.membership.routing();
        let plan = match route::plan(&routing, uri.query()) {
            Ok(p) => p,
            Err(r) => {
                respond(session, r.status, &r.reason).await?;
                return Ok(true);
            }
        };
        ctx.upstream = Some(plan.owner.clone());
        ctx.epoch = plan.epoch;
        ctx.plan = Some(plan);
        if matches!(ctx.route, Route::WebSocket | Route::Sse) {
            // Pingora's default 60 s downstream read timeout also applies to
            // upgraded and streaming connections. They live for hours; the
            // node's pings and heartbeats find dead peers instead.
            session.set_read_timeout(None);
            session.set_write_timeout(None);
        }
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        if let (false, Some(plan)) = (ctx.refused.is_empty(), &ctx.plan) {
            // A retry: the next candidate of the ring that has not refused.
            let routing = self.membership.routing();
            ctx.upstream =
                route::next_owner(&routing, plan.meeting.as_str(), &ctx.refused).cloned();
            ctx.epoch = routing.epoch;
        }
        let Some(upstream) = &ctx.upstream else {
            return Err(Error::explain(
                ErrorType::ConnectRefused,
                "every healthy chat node refused the connection",
            ));
        };
        let mut peer = HttpPeer::new(upstream.addr.as_str(), false, String::new());
        peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
        ctx.connecting = Some(Instant::now());
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // A pooled connection took no connect: only fresh ones are timed.
        if let (false, Some(at), Some(upstream)) = (reused, ctx.connecting.take(), &ctx.upstream) {
            self.metrics
                .upstream_connect_seconds
                .with_label_values(&[&upstream.id])
                .observe(at.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(plan) = &ctx.plan {
            // Origin-form to the node, also for an absolute-form request
            // (`GET http://host/sse?...`), plus `meeting_id` if the
            // balancer hashed another parameter.
            let target = route::upstream_target(request.uri.path(), request.uri.query(), plan);
            let uri = target
                .parse()
                .map_err(|e| Error::because(ErrorType::InternalError, "rewriting the target", e))?;
            request.set_uri(uri);
        }
        let routing = self.membership.routing();
        request.insert_header(BALANCER_HEADER, routing.balancer_id.as_str())?;
        request.insert_header(EPOCH_HEADER, ctx.epoch.to_string())?;
        // Only this balancer may say which nodes it skipped: a client's own
        // header would let it steer a node's ownership check.
        if ctx.refused.is_empty() {
            request.remove_header(SKIPPED_HEADER);
        } else {
            request.insert_header(SKIPPED_HEADER, ctx.refused.join(","))?;
        }
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            request.insert_header("x-forwarded-for", addr.ip().to_string())?;
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if crate::shortage::is_local(e.root_cause()) {
            // Our shortage, not the node's failure: the node stays trusted
            // and no other node is tried (it would fail the same way).
            tracing::warn!(error = %e, "no local resource to connect to a chat node");
            self.metrics
                .local_shortages
                .with_label_values(&["connect"])
                .inc();
            ctx.short = true;
            e.set_retry(false);
            return e;
        }
        if let Some(upstream) = ctx.upstream.take() {
            tracing::warn!(upstream = %upstream.id, error = %e, "connection to chat node failed; trying the next");
            self.metrics
                .upstream_errors
                .with_label_values(&[&upstream.id])
                .inc();
            self.membership.suspect(&upstream.id);
            ctx.refused.push(upstream.id);
            let others = self.membership.routing().owners.members().len();
            e.set_retry(ctx.refused.len() < others);
        }
        e
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(upstream) = &ctx.upstream else {
            return Ok(());
        };
        let gauge = match (ctx.route, response.status.as_u16()) {
            (Route::WebSocket, 101) => &self.metrics.connections,
            (Route::Sse, 200) => &self.metrics.streams,
            _ => return Ok(()),
        };
        let gauge = gauge.with_label_values(&[&upstream.id]);
        gauge.inc();
        ctx.open = Some(Open(gauge));
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Ctx,
    ) -> pingora::proxy::FailToProxy {
        let malformed = matches!(e.etype().as_str(), "InvalidChunk" | "InvalidHTTPHeader");
        let code = match e.esource() {
            _ if ctx.short => 503,
            pingora::ErrorSource::Upstream => 502,
            // A body that is not what its head says (a malformed chunk):
            // the client's fault, and it gets told.
            pingora::ErrorSource::Downstream if malformed => 400,
            pingora::ErrorSource::Downstream => 0,
            _ => 500,
        };
        if code == 503 {
            if session.response_written().is_none() {
                let reason = "the balancer is short of resources: try again shortly\n";
                let _ = respond(session, 503, reason).await;
            }
        } else if code == 400 {
            if session.response_written().is_none() {
                let reason = format!("malformed request body: {}\n", e.etype().as_str());
                let _ = respond(session, 400, &reason).await;
            }
        } else if code > 0 {
            if let Some(upstream) = &ctx.upstream {
                self.metrics
                    .upstream_errors
                    .with_label_values(&[&upstream.id])
                    .inc();
            }
            // A tunnel or stream that has started (101, or an SSE 200) just
            // ends: an error text now would land inside its data.
            if session.response_written().is_none() {
                let reason = format!("chat node unavailable: {}\n", e.etype().as_str());
                let _ = respond(session, code, &reason).await;
            }
        }
        pingora::proxy::FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        ctx.open = None;
        let outcome = Outcome {
            route: ctx.route,
            meeting: ctx.plan.as_ref().map(|p| p.meeting.as_str().to_owned()),
            node: ctx.upstream.as_ref().map(|u| u.id.clone()),
            status: session.response_written().map_or(0, |r| r.status.as_u16()),
            started: ctx.started,
        };
        outcome.record(&self.metrics, e.map(|e| e.to_string()).as_deref());
    }
}

/// An open proxied stream's place in its gauge, given back on drop.
pub struct Open(prometheus::IntGauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A plain-text response with a reason, ending the request.
pub async fn respond(session: &mut Session, status: u16, body: &str) -> Result<()> {
    let mut header = ResponseHeader::build(status, Some(3))?;
    header.insert_header("content-type", "text/plain; charset=utf-8")?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header("cache-control", "no-store")?;
    session.set_keepalive(None);
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::from(body.to_owned())), true)
        .await
}
