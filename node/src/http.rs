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

async fn metrics() -> Response {
    let mut out = Vec::new();
    match TextEncoder::new().encode(&prometheus::gather(), &mut out) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], out).into_response(),
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
