//! `/control/*`: the balancers' and the peers' channel to this node (types
//! in `roompin_shared::control`). Authenticated by the shared bearer token,
//! which is checked before a byte of the body is read; every body is
//! capped. Off when the node has no token.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Instant;

use crate::fence;
use crate::lease::Renewal;
use crate::node::Node;
use roompin_shared::control::{
    bearer_matches, AbortReply, AbortRequest, HandoffAck, HandoffBatch, HandoffOutcome, Holding,
    PublishBatch, PublishReply, Published, Refusal, RingView, RoomInfo, RoomsReport, ViewAck,
    WhereReply, WhereRequest, AUTHORIZATION,
};
use roompin_shared::protocol::check_user;
use roompin_shared::MeetingId;

/// Body caps. A handoff batch is sent in chunks of a few MiB, but one room
/// may hold up to `history_events` × `max_message_bytes` on its own.
const VIEW_LIMIT: usize = 1 << 20;
const WHERE_LIMIT: usize = 1 << 20;
const HANDOFF_LIMIT: usize = 128 << 20;
const ABORT_LIMIT: usize = 64 << 10;
const PUBLISH_LIMIT: usize = 16 << 20;

/// The `reason` label of `roompin_node_control_refusals_total`.
pub const REFUSALS: [&str; 4] = ["unauthorized", "disabled", "too_large", "bad_body"];

fn refuse(node: &Node, reason: &'static str, status: StatusCode, text: String) -> Response {
    node.metrics
        .control_refusals
        .with_label_values(&[reason])
        .inc();
    (status, text).into_response()
}

/// Why a control request is refused, or `None` if it is authorized. Only
/// the headers are looked at: an unauthenticated body is never read.
fn refusal(node: &Node, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &node.settings.control_token else {
        let reason = "control endpoint disabled: this node has no control_token\n";
        return Some(refuse(
            node,
            "disabled",
            StatusCode::FORBIDDEN,
            reason.into(),
        ));
    };
    // Compared in constant time, so the token cannot be guessed byte by
    // byte.
    let ok = bearer_matches(headers.get(AUTHORIZATION).map(|v| v.as_bytes()), token);
    (!ok).then(|| {
        let reason = "missing or wrong bearer token\n";
        refuse(
            node,
            "unauthorized",
            StatusCode::UNAUTHORIZED,
            reason.into(),
        )
    })
}

/// The token first, then at most `limit` bytes of body, then JSON. A
/// `Content-Length` over the limit is refused before a byte is read.
async fn authorized<T: DeserializeOwned>(
    node: &Node,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<T, Response> {
    if let Some(refusal) = refusal(node, headers) {
        return Err(refusal);
    }
    let too_large = || {
        let reason = format!("body over the limit of {limit} bytes, or unreadable\n");
        refuse(node, "too_large", StatusCode::PAYLOAD_TOO_LARGE, reason)
    };
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    serde_json::from_slice(&bytes).map_err(|e| {
        let reason = format!("body is not the expected JSON: {e}\n");
        refuse(node, "bad_body", StatusCode::BAD_REQUEST, reason)
    })
}

/// A balancer's new ownership view. Rooms that no fresh view names this
/// node for any more start moving; the answer says how many.
pub async fn view(State(node): State<Arc<Node>>, headers: HeaderMap, body: Body) -> Response {
    let view: RingView = match authorized(&node, &headers, body, VIEW_LIMIT).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let now = Instant::now();
    let (epoch, source) = (view.epoch, view.source.clone());
    let renewal = node.ownership.apply(view, now);
    if renewal == Some(Renewal::AfterLapse) {
        fence::renew_after_lapse(&node, now);
    }
    let applied = renewal.is_some();
    // Re-checked on every push, not only on new epochs: a view that went
    // stale (its balancer stopped) may be what kept a room here.
    let moving = if applied {
        let orders = node.placement.start_moves(&node.ownership.snapshot(), now);
        node.send_moves(orders)
    } else {
        0
    };
    tracing::debug!(%source, epoch, applied, moving, "ring view received");
    Json(ViewAck {
        applied,
        epoch,
        moving: moving as u64,
    })
    .into_response()
}

/// A peer asks what this node has of some meetings.
pub async fn where_is(State(node): State<Arc<Node>>, headers: HeaderMap, body: Body) -> Response {
    let ask: WhereRequest = match authorized(&node, &headers, body, WHERE_LIMIT).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let now = Instant::now();
    let views = node.ownership.snapshot();
    let mut orders = Vec::new();
    let answers = ask
        .meetings
        .iter()
        .map(|m| match MeetingId::parse(m, "meeting_id") {
            Ok(meeting) => {
                let (holding, order) = node
                    .placement
                    .answer_where(&meeting, &ask.from, &views, now);
                orders.extend(order);
                holding
            }
            Err(_) => Holding::Absent,
        })
        .collect();
    node.send_moves(orders);
    Json(WhereReply {
        node: node.id.to_string(),
        memory_ms: Some(node.placement.memory(now).as_millis() as u64),
        answers,
    })
    .into_response()
}

/// Rooms handed over by a peer.
pub async fn handoff(State(node): State<Arc<Node>>, headers: HeaderMap, body: Body) -> Response {
    let batch: HandoffBatch = match authorized(&node, &headers, body, HANDOFF_LIMIT).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let now = Instant::now();
    node.placement.note_contact(&batch.from, now);
    let ask = node.ask(now);
    // A batch from this very node came by an address that leads back here
    // (a peer's listen address, 0.0.0.0): nothing moved, so the sender
    // keeps its rooms.
    let from_self = *batch.from.id == *node.id;
    if from_self {
        tracing::error!(node = %node.id, rooms = batch.rooms.len(), "a handoff from this node reached itself; refused, the rooms stay open");
    }
    let outcomes: Vec<HandoffOutcome> = batch
        .rooms
        .iter()
        .map(|h| {
            let outcome = if from_self {
                HandoffOutcome::Refused {
                    reason: Refusal::Invalid,
                }
            } else {
                node.placement.adopt(h, ask)
            };
            let label = match &outcome {
                HandoffOutcome::Adopted => "adopted",
                HandoffOutcome::Duplicate => "duplicate",
                HandoffOutcome::Refused { reason } => reason.as_str(),
            };
            node.metrics
                .handoffs
                .with_label_values(&["received", label])
                .inc();
            match &outcome {
                HandoffOutcome::Refused { .. } => {
                    tracing::warn!(meeting = %h.meeting_id, from = %batch.from.id, to = %node.id, outcome = label, "handoff refused")
                }
                _ => {
                    tracing::info!(meeting = %h.meeting_id, from = %batch.from.id, to = %node.id, seq = h.seq, events = h.events.len(), outcome = label, "room adopted")
                }
            }
            outcome
        })
        .collect();
    Json(HandoffAck { outcomes }).into_response()
}

/// A peer that lost the answer to a handoff asks whether it landed.
pub async fn abort(State(node): State<Arc<Node>>, headers: HeaderMap, body: Body) -> Response {
    let ask: AbortRequest = match authorized(&node, &headers, body, ABORT_LIMIT).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Ok(meeting) = MeetingId::parse(&ask.meeting_id, "meeting_id") else {
        return (StatusCode::BAD_REQUEST, "bad meeting_id\n").into_response();
    };
    let adopted = node.placement.abort(&meeting, &ask.room, Instant::now());
    tracing::info!(meeting = %meeting, from = %ask.from.id, adopted, "handoff settled");
    Json(AbortReply { adopted }).into_response()
}

/// Messages that reached a room while it was on its way here.
pub async fn publish(State(node): State<Arc<Node>>, headers: HeaderMap, body: Body) -> Response {
    let batch: PublishBatch = match authorized(&node, &headers, body, PUBLISH_LIMIT).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut results = Vec::with_capacity(batch.publishes.len());
    for p in &batch.publishes {
        let meeting = MeetingId::parse(&p.meeting_id, "meeting_id")
            .ok()
            .filter(|_| check_user(&p.user).is_ok());
        let outcome = match meeting {
            Some(m) => crate::publish::deliver(&node, &m, &p.user, &p.text, batch.hops).await,
            None => None,
        };
        results.push(match outcome {
            Some((seq, room)) => Published::Ok { seq, room },
            None => Published::NotHere,
        });
    }
    Json(PublishReply { results }).into_response()
}

/// Every live room of this node, for operators and tests.
pub async fn rooms(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refusal(&node, &headers) {
        return refusal;
    }
    let mut rooms: Vec<RoomInfo> = node
        .placement
        .live_rooms()
        .iter()
        .map(|r| r.info())
        .collect();
    rooms.sort_by(|a, b| a.meeting_id.cmp(&b.meeting_id));
    Json(RoomsReport {
        node: node.id.to_string(),
        rooms,
    })
    .into_response()
}
