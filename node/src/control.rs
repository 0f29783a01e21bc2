//! `/control/*`: the balancers' channel to this node (see
//! `roompin_shared::control`). Authenticated by a shared bearer token; off
//! when the node has none.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::Arc;

use crate::node::Node;
use roompin_shared::control::{Handoff, RingView, RoomInfo, RoomsReport, AUTHORIZATION};
use roompin_shared::MeetingId;

/// Why a control request is refused, or `None` if it is authorized.
fn refusal(node: &Node, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &node.settings.control_token else {
        let reason = "control endpoint disabled: this node has no control_token\n";
        return Some((StatusCode::FORBIDDEN, reason).into_response());
    };
    let sent = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compare in constant time, so the token cannot be guessed byte by byte.
    let ok = sent.is_some_and(|s| {
        s.len() == token.len()
            && s.bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    (!ok).then(|| (StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response())
}

/// A balancer's new ownership view. Rooms this node no longer owns move.
pub async fn view(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Json(view): Json<RingView>,
) -> Response {
    if let Some(refusal) = refusal(&node, &headers) {
        return refusal;
    }
    let (epoch, source) = (view.epoch, view.source.clone());
    let applied = node.ownership.apply(view);
    // Re-checked on every push, not only on new epochs: a view that went
    // stale (its balancer stopped) may be what kept a room here.
    let moved = if applied {
        node.ownership.evict_lost_rooms(&node).await
    } else {
        0
    };
    tracing::debug!(%source, epoch, applied, moved, "ring view received");
    Json(json!({ "applied": applied, "epoch": epoch, "moved": moved })).into_response()
}

/// Every live room of this node, for operators and tests.
pub async fn rooms(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refusal(&node, &headers) {
        return refusal;
    }
    let mut rooms: Vec<RoomInfo> = node.rooms.all().iter().map(|r| r.info()).collect();
    rooms.sort_by(|a, b| a.meeting_id.cmp(&b.meeting_id));
    Json(RoomsReport {
        node: node.id.to_string(),
        rooms,
    })
    .into_response()
}

/// A room's history from its previous owner.
pub async fn handoff(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Json(h): Json<Handoff>,
) -> Response {
    if let Some(refusal) = refusal(&node, &headers) {
        return refusal;
    }
    let meeting = match MeetingId::parse(&h.meeting_id, "meeting_id") {
        Ok(m) => m,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let adopted = node.rooms.get_or_create(&meeting).adopt(&h);
    let label = if adopted { "adopted" } else { "conflict" };
    node.metrics
        .handoffs
        .with_label_values(&["received", label])
        .inc();
    tracing::info!(meeting = %meeting, seq = h.seq, events = h.events.len(), adopted, "history handoff received");
    Json(json!({ "adopted": adopted })).into_response()
}
