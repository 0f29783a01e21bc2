//! Rules every HTTP request must pass, in front of the router: the ones a
//! handler cannot see or should not have to. The balancer answers the same
//! requests with the same statuses (docs/PROTOCOL.md, "HTTP statuses").
//!
//! - exactly one `Host` header (RFC 9112 3.2), else 400;
//! - a request body whose framing is broken (a chunk size that is not hex,
//!   chunk data longer than its size) gets 400, whatever the handler made
//!   of the read error: `POST /messages` used to call any failed read
//!   "over the limit" (413);
//! - an upgrade that carries `Content-Length` or `Transfer-Encoding` gets
//!   400: an upgrade has no body, and one that claims one is how a request
//!   is smuggled past a proxy into the tunnel;
//! - an absolute-form target whose authority differs from `Host` gets 400.
//!
//! An absolute-form target (`GET http://host/websocket?… HTTP/1.1`) needs
//! no rule: hyper parses it, and the router routes by its path.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use std::sync::{Arc, OnceLock};

pub async fn rules(req: Request, next: Next) -> Response {
    match req.headers().get_all(header::HOST).iter().count() {
        0 => return (StatusCode::BAD_REQUEST, "missing Host header\n").into_response(),
        1 => {}
        _ => return (StatusCode::BAD_REQUEST, "more than one Host header\n").into_response(),
    }
    if let Some(refusal) = head_refusal(&req) {
        return (StatusCode::BAD_REQUEST, refusal).into_response();
    }
    let broken = Arc::new(OnceLock::new());
    let seen = broken.clone();
    let req = req.map(|body| {
        Body::new(body.map_err(move |e| {
            let _ = seen.set(chain(&e));
            e
        }))
    });
    let response = next.run(req).await;
    match broken.get() {
        Some(e) => (
            StatusCode::BAD_REQUEST,
            format!("malformed request body: {e}\n"),
        )
            .into_response(),
        None => response,
    }
}

/// The head rules that need no body: the same words as the balancer's
/// (balancer/src/head.rs).
fn head_refusal(req: &Request) -> Option<&'static str> {
    let headers = req.headers();
    let has_body = headers.contains_key(header::CONTENT_LENGTH)
        || headers.contains_key(header::TRANSFER_ENCODING);
    if headers.contains_key(header::UPGRADE) && has_body {
        return Some("an upgrade request must not carry Content-Length or Transfer-Encoding\n");
    }
    if let (Some(authority), Some(host)) = (req.uri().authority(), headers.get(header::HOST)) {
        let host = host.to_str().unwrap_or("").trim();
        if !host.eq_ignore_ascii_case(authority.as_str()) {
            return Some("Host header differs from the request target\n");
        }
    }
    None
}

/// An error and its causes: hyper's own words ("error reading a body from
/// connection") do not say what was wrong with it.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut last = out.clone();
    let mut cause = e.source();
    while let Some(c) = cause {
        // Wrappers (axum's error around hyper's) repeat their inner words.
        let words = c.to_string();
        if words != last {
            out.push_str(": ");
            out.push_str(&words);
            last = words;
        }
        cause = c.source();
    }
    out
}
