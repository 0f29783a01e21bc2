//! The node's HTTP surface, all on one listener.

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use prometheus::{Encoder, TextEncoder};
use std::sync::Arc;

use crate::node::Node;
use crate::{control, publish, sse, ws};
use roompin_shared::control::{
    ABORT_PATH, HANDOFF_PATH, PUBLISH_PATH, ROOMS_PATH, VIEW_PATH, WHERE_PATH,
};

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/websocket", get(ws::upgrade))
        .route("/sse", get(sse::stream))
        .route("/messages", post(publish::publish))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(VIEW_PATH, post(control::view))
        .route(WHERE_PATH, post(control::where_is))
        .route(HANDOFF_PATH, post(control::handoff))
        .route(ABORT_PATH, post(control::abort))
        .route(PUBLISH_PATH, post(control::publish))
        .route(ROOMS_PATH, get(control::rooms))
        .fallback(not_found)
        .with_state(node)
}

/// 200 while serving; 503 while draining, so the balancer routes away.
async fn healthz(State(node): State<Arc<Node>>) -> Response {
    if node.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::OK, "ok").into_response()
    }
}

/// The registered metrics, plus the members-per-room histogram, which is
/// sampled from the live rooms right now (see `metrics::room_members`),
/// with the allocator's counts read just before (`heap`).
async fn metrics(State(node): State<Arc<Node>>) -> Response {
    crate::heap::sample(&node.metrics.heap_bytes);
    let mut families = prometheus::gather();
    let sizes = node
        .placement
        .live_rooms()
        .iter()
        .map(|r| r.info().members)
        .collect::<Vec<_>>();
    let encoded = crate::metrics::room_members(sizes).and_then(|rooms| {
        families.extend(rooms);
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out).map(|()| out)
    });
    match encoded {
        Ok(out) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], out).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn not_found(uri: Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("no route for {}\n", uri.path()),
    )
        .into_response()
}
