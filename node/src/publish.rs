//! Publishing: `POST /messages?meeting_id=X` for clients that only listen
//! over SSE (or servers that only talk), and the messages WebSocket members
//! send. A publish that finds its room in transit to another node is not
//! refused: it is queued with the room and passed on to the new holder.

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;
use std::time::Duration;

use crate::node::{unavailable, Admitted, Node};
use crate::params::{validate_user, JoinParams};
use crate::placement::{PublishRoute, MOVING};
use crate::relay;
use crate::room::Room;
use roompin_shared::control::{ForwardedPublish, Published};
use roompin_shared::protocol::{PublishAccepted, PublishRequest};
use roompin_shared::MeetingId;

/// How long an HTTP publish waits for the outcome of a move it met.
const MOVE_WAIT: Duration = Duration::from_secs(3);

pub async fn publish(State(node): State<Arc<Node>>, req: Request) -> Response {
    let params = match JoinParams::parse(req.uri().query()) {
        Ok(p) => p,
        Err(refusal) => return refusal.into_response(),
    };
    let (parts, body) = req.into_parts();
    let limit = node.settings.max_message_bytes;
    // A declared length over the cap is refused before any of the body is
    // read: waiting for 2 MB only to throw it away helps nobody.
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        let reason = format!("body is over the limit of {limit} bytes\n");
        return (StatusCode::PAYLOAD_TOO_LARGE, reason).into_response();
    }
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(body) => body,
        Err(_) => {
            let reason = format!("body is over the limit of {limit} bytes\n");
            return (StatusCode::PAYLOAD_TOO_LARGE, reason).into_response();
        }
    };
    let request = match parse(&body) {
        Ok(r) => r,
        Err(refusal) => return refusal.into_response(),
    };
    let room = match node.admit(&params.meeting_id, &parts.headers).await {
        Admitted::Here(room) => room,
        Admitted::Relay(holder) => return relay::publish(&node, &holder, &parts, body).await,
        Admitted::Refused(refusal) => return refusal,
    };
    let from = request
        .user
        .or_else(|| params.user.clone())
        .unwrap_or_else(|| "http".to_owned());
    match into_room(&node, &room, &from, &request.text).await {
        Some((seq, room)) => {
            (StatusCode::ACCEPTED, Json(PublishAccepted { seq, room })).into_response()
        }
        None => unavailable(MOVING),
    }
}

/// Publishes into `room`, or wherever the meeting's room is now if it
/// moved since: the outcome is the seq and incarnation, once known.
async fn into_room(node: &Arc<Node>, room: &Room, from: &str, text: &str) -> Option<(u64, String)> {
    if let Ok((seq, inc)) = room.publish(from, text) {
        return Some((seq, inc.to_string()));
    }
    deliver(node, &room.meeting_id, from, text, 0).await
}

/// Forwards along tombstones at most this many times.
const MAX_HOPS: u8 = 3;

/// Delivers a publish to wherever the meeting's room is, as far as this
/// node can tell: into its live room here; queued with the room while it is
/// in transit, until the new holder has it; or on to the node it was handed
/// to. `None` when it did not land (the sender must be told it was not
/// delivered, never that it was).
pub async fn deliver(
    node: &Arc<Node>,
    meeting: &MeetingId,
    user: &str,
    text: &str,
    hops: u8,
) -> Option<(u64, String)> {
    match node.placement.route_publish(meeting, user, text, true) {
        PublishRoute::Here(room) => room
            .publish(user, text)
            .ok()
            .map(|(seq, inc)| (seq, inc.to_string())),
        PublishRoute::Queued(Some(outcome)) => tokio::time::timeout(MOVE_WAIT, outcome)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten(),
        PublishRoute::Moved(to) if hops < MAX_HOPS => {
            let one = vec![forwarded(meeting, user, text)];
            match node.peers.forward(&to, one, hops + 1).await {
                Ok(results) => match results.into_iter().next() {
                    Some(Published::Ok { seq, room }) => Some((seq, room)),
                    _ => None,
                },
                Err(e) => {
                    tracing::debug!(meeting = %meeting, to = %to.id, error = %e, "could not pass a publish on");
                    None
                }
            }
        }
        PublishRoute::Queued(None) | PublishRoute::Moved(_) | PublishRoute::NotHere => None,
    }
}

/// A WebSocket member's message: into its room, or, if the room is in
/// transit or just moved, to wherever it is. False when it did not land
/// (the client gets a `room_moved` error and resends after reconnecting).
pub async fn from_member(node: &Arc<Node>, room: &Room, user: &str, text: &str) -> bool {
    room.publish(user, text).is_ok()
        || deliver(node, &room.meeting_id, user, text, 0)
            .await
            .is_some()
}

fn forwarded(meeting: &MeetingId, user: &str, text: &str) -> ForwardedPublish {
    ForwardedPublish {
        meeting_id: meeting.to_string(),
        user: user.to_owned(),
        text: text.to_owned(),
    }
}

fn parse(body: &Bytes) -> Result<PublishRequest, (StatusCode, String)> {
    let bad = |r: String| (StatusCode::BAD_REQUEST, r);
    let mut request: PublishRequest = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "body must be JSON {{\"text\": \"…\", \"user\": \"…\"}}: {e}\n"
        ))
    })?;
    if let Some(user) = request.user.take() {
        request.user = Some(validate_user(&user)?);
    }
    Ok(request)
}
