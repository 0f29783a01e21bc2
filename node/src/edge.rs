//! Rules every HTTP request must pass, in front of the router: the ones a
//! handler cannot see or should not have to. The balancer answers the same
//! requests with the same statuses (docs/PROTOCOL.md, "HTTP statuses").
//!
//! - exactly one `Host` header (RFC 9112 3.2), else 400;
//! - a request body whose framing is broken (a chunk size that is not hex,
//!   chunk data longer than its size) gets 400, whatever the handler made
//!   of the read error: `POST /messages` used to call any failed read
//!   "over the limit" (413).
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
