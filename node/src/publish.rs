//! `POST /messages?meeting_id=X`: publish over plain HTTP, for clients that
//! only listen over SSE (or servers that only talk).

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

use crate::node::Node;
use crate::params::{routed_by, validate_user, JoinParams};
use roompin_shared::protocol::{PublishAccepted, PublishRequest};

pub async fn publish(State(node): State<Arc<Node>>, req: Request) -> Response {
    let params = match JoinParams::parse(req.uri().query()) {
        Ok(p) => p,
        Err(refusal) => return refusal.into_response(),
    };
    if let Err(m) = node
        .ownership
        .check(&params.meeting_id, routed_by(req.headers()))
    {
        node.metrics.misrouted.inc();
        return (StatusCode::MISDIRECTED_REQUEST, m.to_string()).into_response();
    }
    let limit = node.settings.max_message_bytes;
    let body = match axum::body::to_bytes(req.into_body(), limit).await {
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
        .or(params.user)
        .unwrap_or_else(|| "http".to_owned());
    loop {
        let room = node.rooms.get_or_create(&params.meeting_id);
        match room.publish(&from, &request.text) {
            Ok(seq) => {
                node.metrics.events_received.inc();
                return (StatusCode::ACCEPTED, Json(PublishAccepted { seq })).into_response();
            }
            // The room closed under us (it moved or idled out): if it moved,
            // the ownership check refuses on the next request; retry once here.
            Err(_) => node.rooms.remove(&room),
        }
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
