//! Forwards a member's request to the node that holds its meeting's room.
//!
//! While balancers disagree (an edit that reached one of them first, a node
//! that one of them cannot reach), a request can land on a node that does
//! not hold the meeting. Opening a second room there would split the
//! meeting, so the node passes the request on to the holder that a claim
//! round found, and relays the answer back: the bytes of an upgraded
//! WebSocket, the stream of an SSE member, or a publish's 202. The holder
//! serves a forwarded request only from its live room and never forwards it
//! again (`RELAYED_HEADER`).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;

use crate::node::{unavailable, Node};
use crate::tasks;
use roompin_shared::control::{
    NodeRef, BALANCER_HEADER, EPOCH_HEADER, RELAYED_HEADER, RELAY_HOPS_HEADER, SKIPPED_HEADER,
};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// A holder that does not answer a forwarded request in this time is
/// treated as unavailable.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// The answer to a forwarded request that is not an upgrade or a stream.
const ANSWER_LIMIT: usize = 64 * 1024;

/// The request's headers as the holder should see them: marked as
/// forwarded by this node (one hop more), without the routing balancer's
/// headers (the holder serves from its live room whoever routed it).
fn forwarded_headers(node: &Node, headers: &HeaderMap) -> HeaderMap {
    let hops = headers
        .get(RELAY_HOPS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u8>().ok())
        .unwrap_or(0);
    let mut out = headers.clone();
    for h in [BALANCER_HEADER, EPOCH_HEADER, SKIPPED_HEADER] {
        out.remove(h);
    }
    if let Ok(v) = HeaderValue::from_str(&node.id) {
        out.insert(RELAYED_HEADER, v);
    }
    out.insert(
        RELAY_HOPS_HEADER,
        HeaderValue::from(u16::from(hops.saturating_add(1))),
    );
    out
}

fn target(holder: &NodeRef, req: &Request) -> String {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    format!("http://{}{path}", holder.addr)
}

/// Forwards a WebSocket upgrade and, once the holder answers 101, copies
/// bytes both ways until either side closes.
pub async fn websocket(node: &Arc<Node>, holder: &NodeRef, mut req: Request) -> Response {
    node.metrics.relayed.with_label_values(&["websocket"]).inc();
    let client_upgrade = hyper::upgrade::on(&mut req);
    let connect = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(&holder.addr),
    );
    let stream = match connect.await {
        Ok(Ok(s)) => s,
        _ => {
            tracing::info!(holder = %holder.id, "cannot reach the room's holder to forward a websocket");
            return unavailable("the node holding this meeting cannot be reached; retry\n");
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(x) => x,
        Err(_) => return unavailable("the node holding this meeting cannot be reached; retry\n"),
    };
    tasks::spawn(node, tasks::RELAY, tracing::Span::none(), async move {
        let _ = conn.with_upgrades().await;
    });
    let mut forward = http::Request::builder().method(req.method().clone()).uri(
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
    );
    if let Some(h) = forward.headers_mut() {
        *h = forwarded_headers(node, req.headers());
    }
    let Ok(forward) = forward.body(Full::new(Bytes::new())) else {
        return unavailable("cannot forward this request\n");
    };
    let resp = match tokio::time::timeout(ANSWER_TIMEOUT, sender.send_request(forward)).await {
        Ok(Ok(r)) => r,
        _ => {
            tracing::info!(holder = %holder.id, "the room's holder did not answer a forwarded websocket");
            return unavailable("the node holding this meeting did not answer; retry\n");
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        tracing::info!(holder = %holder.id, status = resp.status().as_u16(), "the room's holder refused a forwarded websocket");
        return buffered(resp).await;
    }
    let mut out = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    if let Some(h) = out.headers_mut() {
        *h = resp.headers().clone();
    }
    let holder_upgrade = hyper::upgrade::on(resp);
    let shutdown = node.shutdown.clone();
    tasks::spawn(node, tasks::RELAY, tracing::Span::none(), async move {
        let (Ok(client), Ok(holder)) = (client_upgrade.await, holder_upgrade.await) else {
            return;
        };
        let (mut client, mut holder) = (TokioIo::new(client), TokioIo::new(holder));
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut holder) => {}
            // The holder's session ends its clients itself on shutdown; this
            // node's relays end with it.
            _ = shutdown.cancelled() => {}
        }
    });
    out.body(Body::empty())
        .unwrap_or_else(|_| unavailable("cannot forward this request\n"))
}

/// Forwards an SSE request and streams the holder's answer back.
pub async fn sse(node: &Arc<Node>, holder: &NodeRef, req: Request) -> Response {
    node.metrics.relayed.with_label_values(&["sse"]).inc();
    let mut forward = http::Request::get(target(holder, &req));
    if let Some(h) = forward.headers_mut() {
        *h = forwarded_headers(node, req.headers());
    }
    let Ok(forward) = forward.body(Full::new(Bytes::new())) else {
        return unavailable("cannot forward this request\n");
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, node.peers.client().request(forward)).await {
        Ok(Ok(resp)) => {
            let (parts, body) = resp.into_parts();
            Response::from_parts(parts, Body::new(body))
        }
        _ => unavailable("the node holding this meeting did not answer; retry\n"),
    }
}

/// Forwards a publish (its body already read) and returns the holder's
/// answer.
pub async fn publish(
    node: &Arc<Node>,
    holder: &NodeRef,
    req: &http::request::Parts,
    body: Bytes,
) -> Response {
    node.metrics.relayed.with_label_values(&["messages"]).inc();
    let path = req
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/messages");
    let mut forward = http::Request::post(format!("http://{}{path}", holder.addr));
    if let Some(h) = forward.headers_mut() {
        *h = forwarded_headers(node, &req.headers);
    }
    let Ok(forward) = forward.body(Full::new(body)) else {
        return unavailable("cannot forward this request\n");
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, node.peers.client().request(forward)).await {
        Ok(Ok(resp)) => buffered(resp).await,
        _ => unavailable("the node holding this meeting did not answer; retry\n"),
    }
}

/// The holder's answer, read whole (it is short: a status with a reason).
async fn buffered(resp: http::Response<hyper::body::Incoming>) -> Response {
    let (parts, body) = resp.into_parts();
    let limited = http_body_util::Limited::new(body, ANSWER_LIMIT);
    match tokio::time::timeout(ANSWER_TIMEOUT, limited.collect()).await {
        Ok(Ok(b)) => Response::from_parts(parts, Body::from(b.to_bytes())),
        _ => unavailable("the node holding this meeting did not answer; retry\n"),
    }
}
