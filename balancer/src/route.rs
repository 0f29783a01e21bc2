//! Which node a request goes to, or why it goes nowhere: the decision both
//! public paths share (the WebSocket tunnel in `websocket.rs` and Pingora's
//! `HttpProxy` in `proxy.rs`), so a meeting is validated and routed the same
//! way whichever path carries it.

use crate::routing::Routing;
use roompin_shared::meeting_id::query_param;
use roompin_shared::protocol::{MEETING_PARAM, NO_NODE_REASON};
use roompin_shared::{MeetingId, Member};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    WebSocket,
    Sse,
    Messages,
    Page,
    Other,
}

impl Route {
    pub fn of(path: &str) -> Route {
        match path {
            "/websocket" => Route::WebSocket,
            "/sse" => Route::Sse,
            "/messages" => Route::Messages,
            "/" | "/index.html" => Route::Page,
            _ => Route::Other,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Route::WebSocket => "websocket",
            Route::Sse => "sse",
            Route::Messages => "messages",
            Route::Page => "page",
            Route::Other => "other",
        }
    }
}

/// Where a valid meeting request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub meeting: MeetingId,
    pub owner: Member,
    /// The epoch of the routing snapshot the owner was taken from.
    pub epoch: u64,
    /// The hashed parameter is not `meeting_id`: add `meeting_id` upstream.
    pub forward_meeting: bool,
}

/// A request answered by the balancer itself, with a reason for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

impl Refusal {
    pub fn new(status: u16, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
        }
    }
}

/// Validates the meeting of a `/websocket`, `/sse` or `/messages` request
/// (with the same code the nodes use) and takes its owner from `routing`.
pub fn plan(routing: &Routing, query: Option<&str>) -> Result<Plan, Refusal> {
    let hash_param = &routing.config.hash_param;
    let meeting = MeetingId::from_query(query, hash_param)
        .map_err(|e| Refusal::new(400, format!("{e}\n")))?;
    // Nodes read `meeting_id`. When the balancer hashes another parameter,
    // it passes the value on under that name, and refuses a request whose
    // own `meeting_id` says something else.
    let mut forward_meeting = false;
    if hash_param != MEETING_PARAM {
        match query_param(query, MEETING_PARAM) {
            Ok(None) => forward_meeting = true,
            Ok(Some(m)) if m == meeting.as_str() => {}
            _ => {
                return Err(Refusal::new(
                    400,
                    format!("`{MEETING_PARAM}` and `{hash_param}` disagree\n"),
                ))
            }
        }
    }
    let Some(owner) = routing.owner(meeting.as_str()) else {
        return Err(Refusal::new(
            503,
            format!("{NO_NODE_REASON}: try again shortly\n"),
        ));
    };
    Ok(Plan {
        owner: owner.clone(),
        epoch: routing.epoch,
        meeting,
        forward_meeting,
    })
}

/// The next node to try once `refused` have refused the connection: the
/// first of the ring's candidates for the meeting that has not refused, on
/// the routing in force now (no ring is rebuilt).
pub fn next_owner<'a>(
    routing: &'a Routing,
    meeting: &str,
    refused: &[String],
) -> Option<&'a Member> {
    routing
        .owners
        .owner_skipping(meeting, |m| refused.contains(&m.id))
}

/// The origin-form target sent to a node: the client's path and query, plus
/// `meeting_id` when the balancer hashed another parameter. A meeting id is
/// unreserved characters only, so it needs no escaping.
pub fn upstream_target(path: &str, query: Option<&str>, plan: &Plan) -> String {
    match (query, plan.forward_meeting) {
        (Some(q), true) => format!("{path}?{q}&{MEETING_PARAM}={}", plan.meeting),
        (None, true) => format!("{path}?{MEETING_PARAM}={}", plan.meeting),
        (Some(q), false) => format!("{path}?{q}"),
        (None, false) => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::routing::Membership;
    use roompin_shared::config::BalancerConfig;
    use std::path::Path;

    fn routing(extra: &str) -> std::sync::Arc<Routing> {
        let toml = format!(
            "listen = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:2\"\nmoves = false\n{extra}\n\
             [[upstream]]\nid = \"a\"\naddr = \"127.0.0.1:3\"\n\
             [[upstream]]\nid = \"b\"\naddr = \"127.0.0.1:4\"\n"
        );
        let config = BalancerConfig::from_toml(Path::new("t.toml"), &toml).expect("config");
        let m = Membership::new(config, 0, Metrics::for_tests());
        for id in ["a", "b"] {
            m.record_check(id, crate::health::Check::Ok);
        }
        m.routing()
    }

    #[test]
    fn plans_and_refusals() {
        let r = routing("");
        let p = plan(&r, Some("meeting_id=standup&user=x")).expect("valid");
        assert_eq!(p.meeting.as_str(), "standup");
        assert_eq!(Some(&p.owner), r.owner("standup"));
        assert!(!p.forward_meeting);
        for (query, status, word) in [
            (None, 400, "missing"),
            (Some("meeting_id=a%20b"), 400, "character"),
            (Some("meeting_id=a&meeting_id=b"), 400, "more than once"),
        ] {
            let e = plan(&r, query).expect_err("refused");
            assert_eq!(e.status, status, "{query:?}");
            assert!(e.reason.contains(word), "{query:?}: {}", e.reason);
        }
    }

    #[test]
    fn another_hash_param_is_forwarded_or_must_agree() {
        let r = routing("hash_param = \"room\"");
        let p = plan(&r, Some("room=weekly")).expect("valid");
        assert!(p.forward_meeting);
        assert_eq!(
            upstream_target("/websocket", Some("room=weekly"), &p),
            "/websocket?room=weekly&meeting_id=weekly"
        );
        assert!(plan(&r, Some("room=weekly&meeting_id=weekly")).is_ok());
        let e = plan(&r, Some("room=a&meeting_id=b")).expect_err("disagree");
        assert!(e.reason.contains("disagree"), "{}", e.reason);
    }

    #[test]
    fn the_next_owner_skips_the_refused_and_runs_out() {
        let r = routing("");
        let owner = r.owner("m1").map(|m| m.id.clone()).unwrap_or_default();
        let next = next_owner(&r, "m1", std::slice::from_ref(&owner)).map(|m| m.id.clone());
        assert!(next.is_some() && next != Some(owner.clone()));
        let both = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(next_owner(&r, "m1", &both), None);
    }
}
