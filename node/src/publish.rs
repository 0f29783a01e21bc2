//! `POST /messages?meeting_id=X`: publish over plain HTTP, for clients that
//! only listen over SSE (or servers that only talk).

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

use crate::node::Node;
use crate::params::{validate_user, JoinParams};
use roompin_shared::protocol::{PublishAccepted, PublishRequest};

/// How often a publish looks the room up again after finding it closed.
const ATTEMPTS: usize = 3;

pub async fn publish(State(node): State<Arc<Node>>, req: Request) -> Response {
    let params = match JoinParams::parse(req.uri().query()) {
        Ok(p) => p,
        Err(refusal) => return refusal.into_response(),
    };
    let (parts, body) = req.into_parts();
    if let Some(refusal) = node.misrouted(&params.meeting_id, &parts.headers) {
        return refusal;
    }
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
    let from = request
        .user
        .or_else(|| params.user.clone())
        .unwrap_or_else(|| "http".to_owned());
    for _ in 0..ATTEMPTS {
        let room = node.rooms.get_or_create(&params.meeting_id);
        match room.publish(&from, &request.text) {
            Ok((seq, room)) => {
                node.metrics.events_received.inc();
                let accepted = PublishAccepted {
                    seq,
                    room: room.to_string(),
                };
                return (StatusCode::ACCEPTED, Json(accepted)).into_response();
            }
            // The room closed under us. If it moved away (or the node is
            // stopping), a room made here now would swallow the message
            // unseen: refuse, so the client retries through the balancer.
            // If it only idled out, publish into a fresh one.
            Err(_) => {
                node.rooms.remove(&room);
                if node.is_draining() {
                    break;
                }
                if let Some(refusal) = node.misrouted(&params.meeting_id, &parts.headers) {
                    return refusal;
                }
            }
        }
    }
    moving()
}

fn moving() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "not published: the meeting is moving or the node is stopping; retry shortly\n",
    )
        .into_response()
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
