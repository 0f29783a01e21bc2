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
use roompin_shared::control::ForwardedPublish;
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
            node.metrics.events_received.inc();
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
    match node
        .placement
        .route_publish(&room.meeting_id, from, text, true)
    {
        PublishRoute::Here(now_live) => now_live
            .publish(from, text)
            .ok()
            .map(|(seq, inc)| (seq, inc.to_string())),
        PublishRoute::Queued(Some(outcome)) => tokio::time::timeout(MOVE_WAIT, outcome)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten(),
        PublishRoute::Queued(None) | PublishRoute::NotHere => None,
        PublishRoute::Moved(to) => {
            let one = vec![forwarded(&room.meeting_id, from, text)];
            match node.peers.forward(&to, one).await {
                Ok(results) => match results.into_iter().next() {
                    Some(roompin_shared::control::Published::Ok { seq, room }) => Some((seq, room)),
                    _ => None,
                },
                Err(_) => None,
            }
        }
    }
}

/// A WebSocket member's message: into its room, or, if the room is in
/// transit or just moved, on to the room's next holder. False when it
/// could not be accepted at all (the client gets a `room_moved` error).
pub fn from_member(node: &Arc<Node>, room: &Room, user: &str, text: &str) -> bool {
    if room.publish(user, text).is_ok() {
        node.metrics.events_received.inc();
        return true;
    }
    match node
        .placement
        .route_publish(&room.meeting_id, user, text, false)
    {
        PublishRoute::Here(now_live) => {
            let ok = now_live.publish(user, text).is_ok();
            if ok {
                node.metrics.events_received.inc();
            }
            ok
        }
        PublishRoute::Queued(_) => true,
        PublishRoute::Moved(to) => {
            let one = vec![forwarded(&room.meeting_id, user, text)];
            let n = node.clone();
            node.tasks.spawn(async move {
                if let Err(e) = n.peers.forward(&to, one).await {
                    tracing::warn!(to = %to.id, error = %e, "could not pass on a message sent during a move");
                }
            });
            true
        }
        PublishRoute::NotHere => false,
    }
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
