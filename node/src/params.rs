//! The query parameters of the member routes (`/websocket`, `/sse`,
//! `/messages`), validated before any upgrade or stream starts.

use axum::http::{HeaderMap, StatusCode};
use roompin_shared::control::{RoutedBy, BALANCER_HEADER, EPOCH_HEADER, SKIPPED_HEADER};
use roompin_shared::meeting_id::query_param;
use roompin_shared::protocol::{check_room, check_user, MEETING_PARAM};
use roompin_shared::MeetingId;

use crate::room::Resume;

pub struct JoinParams {
    pub meeting_id: MeetingId,
    pub user: Option<String>,
    pub since: Option<u64>,
    /// The incarnation `since` belongs to (`welcome.room`).
    pub room: Option<String>,
}

pub type Refusal = (StatusCode, String);

fn bad(reason: impl Into<String>) -> Refusal {
    (StatusCode::BAD_REQUEST, reason.into())
}

impl JoinParams {
    pub fn parse(query: Option<&str>) -> Result<JoinParams, Refusal> {
        let meeting_id =
            MeetingId::from_query(query, MEETING_PARAM).map_err(|e| bad(e.to_string()))?;
        let user = query_param(query, "user").map_err(|e| bad(e.to_string()))?;
        let user = user.map(|u| validate_user(&u)).transpose()?;
        let since = query_param(query, "since").map_err(|e| bad(e.to_string()))?;
        let since = since
            .map(|s| {
                s.parse::<u64>()
                    .map_err(|_| bad(format!("`since` must be a whole number, got {s:?}")))
            })
            .transpose()?;
        let room = query_param(query, "since_room").map_err(|e| bad(e.to_string()))?;
        let room = room
            .map(|r| check_room(&r).map(|()| r.into_owned()).map_err(bad))
            .transpose()?;
        Ok(JoinParams {
            meeting_id,
            user,
            since,
            room,
        })
    }

    /// Where the client left off, if it is resuming.
    pub fn resume(&self) -> Option<Resume<'_>> {
        self.since.map(|since| Resume {
            since,
            room: self.room.as_deref(),
        })
    }
}

/// The shared `user` rule, as a 400.
pub fn validate_user(user: &str) -> Result<String, Refusal> {
    check_user(user).map_err(bad)?;
    Ok(user.to_owned())
}

/// How a proxied request was routed, if a balancer routed it.
pub fn routed_by(headers: &HeaderMap) -> Option<RoutedBy<'_>> {
    let source = headers.get(BALANCER_HEADER)?.to_str().ok()?;
    let epoch = headers.get(EPOCH_HEADER)?.to_str().ok()?.parse().ok()?;
    let skipped = headers
        .get(SKIPPED_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Some(RoutedBy {
        source,
        epoch,
        skipped,
    })
}
