//! The gate in front of the member routes (`/websocket`, `/sse`,
//! `/messages`): the join token (`[auth]`) and the node's session and room
//! limits, checked before any upgrade, stream or placement decision.
//!
//! A request whose parameters are bad passes through untouched: its
//! handler answers the 400, so the order a client sees is parameters (400),
//! token (401/403), limits (503), then the handler's own checks (426, 421).
//! What the gate let through travels to the handler in the request's
//! extensions as an [`Admission`]: the user the token names, and the
//! session's slot, which the session keeps until it ends.
//!
//! Requests another node forwarded (`x-roompin-relayed-by`) carry the
//! client's own token and are checked the same way.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

use crate::limits::{room_allowed, Slot, Slots};
use crate::node::{unavailable, Node};
use crate::params::JoinParams;
use roompin_shared::auth::{token_from, Failure, Refusal, Verifier};
use roompin_shared::control::AUTHORIZATION;

/// The `limit` label of `roompin_node_limit_refusals_total`.
pub const LIMIT_CONNECTIONS: &str = "connections";
pub const LIMIT_ROOMS: &str = "rooms";
pub const LIMIT_SOCKETS: &str = "sockets";
pub const LIMITS: [&str; 3] = [LIMIT_CONNECTIONS, LIMIT_ROOMS, LIMIT_SOCKETS];

pub struct Guard {
    node: Arc<Node>,
    /// `None` without `[auth]`: every request passes the token check.
    verifier: Option<Verifier>,
    sessions: Arc<Slots>,
}

/// What the gate let through, for the handler.
#[derive(Clone, Debug, Default)]
pub struct Admission {
    /// The token's `sub`, which replaces the `user` parameter.
    pub user: Option<String>,
    /// A WebSocket's or SSE stream's place under `max_connections`.
    pub slot: Option<Slot>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    WebSocket,
    Sse,
    Messages,
}

impl Guard {
    /// Loads the `[auth]` keys (public key paths already absolute, see
    /// `main.rs`); a bad key file stops the node at start.
    pub fn new(node: Arc<Node>) -> anyhow::Result<Arc<Guard>> {
        let verifier = node
            .settings
            .auth
            .as_ref()
            .map(|auth| Verifier::new(auth, std::path::Path::new("")))
            .transpose()?;
        let sessions = Slots::new(node.settings.max_connections);
        Ok(Arc::new(Guard {
            node,
            verifier,
            sessions,
        }))
    }

    fn refuse_token(&self, refusal: Refusal) -> Response {
        self.node
            .metrics
            .auth_failures
            .with_label_values(&[refusal.failure.label()])
            .inc();
        let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::UNAUTHORIZED);
        let mut resp = (status, format!("{}\n", refusal.message)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750 3: how to authenticate.
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"roompin\""),
            );
        }
        resp
    }

    fn refuse_limit(&self, limit: &'static str, why: String) -> Response {
        self.node
            .metrics
            .limit_refusals
            .with_label_values(&[limit])
            .inc();
        unavailable(&why)
    }
}

fn route(req: &Request) -> Option<Route> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/websocket") => Some(Route::WebSocket),
        (&Method::GET, "/sse") => Some(Route::Sse),
        (&Method::POST, "/messages") => Some(Route::Messages),
        _ => None,
    }
}

/// The middleware (`axum::middleware::from_fn_with_state`).
pub async fn members(State(guard): State<Arc<Guard>>, mut req: Request, next: Next) -> Response {
    let Some(route) = route(&req) else {
        return next.run(req).await;
    };
    let Ok(params) = JoinParams::parse(req.uri().query()) else {
        return next.run(req).await;
    };
    let mut admission = Admission::default();
    if let Some(verifier) = &guard.verifier {
        let authorization = req
            .headers()
            .get_all(AUTHORIZATION)
            .iter()
            .map(|v| v.as_bytes());
        let checked = token_from(req.uri().query(), authorization).and_then(|token| {
            verifier.verify(
                token.as_deref(),
                params.meeting_id.as_str(),
                params.user.as_deref(),
            )
        });
        match checked {
            Ok(identity) => admission.user = Some(identity.user),
            Err(refusal) => return guard.refuse_token(refusal),
        }
    }
    let node = &guard.node;
    if route != Route::Messages {
        match guard.sessions.take() {
            Some(slot) => admission.slot = Some(slot),
            None => {
                let why = format!(
                    "this node holds its limit of {} connections (max_connections); retry later or elsewhere\n",
                    guard.sessions.max()
                );
                return guard.refuse_limit(LIMIT_CONNECTIONS, why);
            }
        }
    }
    let exists = node.placement.live(&params.meeting_id).is_some();
    if !room_allowed(node.metrics.rooms.get(), node.settings.max_rooms, exists) {
        let why = format!(
            "this node holds its limit of {} rooms (max_rooms) and cannot open another; retry later\n",
            node.settings.max_rooms
        );
        return guard.refuse_limit(LIMIT_ROOMS, why);
    }
    req.extensions_mut().insert(admission);
    next.run(req).await
}

/// The handler's side: applies the token's user to `params` and hands
/// over the session's slot.
pub fn admitted(req: &Request, params: &mut JoinParams) -> Option<Slot> {
    let admission = req.extensions().get::<Admission>()?;
    if let Some(user) = &admission.user {
        params.user = Some(user.clone());
    }
    admission.slot.clone()
}

/// `POST /messages`: a body's `user` must be the token's too. The refusal
/// (403), counted as `wrong_user`, if it is not.
pub fn body_user_refusal(
    metrics: &crate::metrics::Metrics,
    admission: Option<&Admission>,
    body_user: Option<&str>,
) -> Option<Response> {
    let why = body_user_matches(admission, body_user).err()?;
    metrics
        .auth_failures
        .with_label_values(&[Failure::WrongUser.label()])
        .inc();
    Some((StatusCode::FORBIDDEN, why).into_response())
}

fn body_user_matches(admission: Option<&Admission>, body_user: Option<&str>) -> Result<(), String> {
    match (admission.and_then(|a| a.user.as_deref()), body_user) {
        (Some(sub), Some(user)) if sub != user => Err(format!(
            "body `user` {user:?} differs from the join token's `sub`; leave it out\n"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_user_must_match_the_token() {
        let with = |user: Option<&str>| Admission {
            user: user.map(str::to_owned),
            slot: None,
        };
        let status =
            |a: Option<&Admission>, body: Option<&str>| body_user_matches(a, body).map_err(|_| 403);
        assert_eq!(status(None, Some("anyone")), Ok(()));
        assert_eq!(status(Some(&with(None)), Some("anyone")), Ok(()));
        assert_eq!(status(Some(&with(Some("ann"))), None), Ok(()));
        assert_eq!(status(Some(&with(Some("ann"))), Some("ann")), Ok(()));
        assert_eq!(status(Some(&with(Some("ann"))), Some("bob")), Err(403));
    }
}
