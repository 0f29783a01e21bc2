//! The control channel: balancers tell nodes who owns which meeting, and
//! nodes agree among themselves where each meeting's one live room is.
//!
//! **Views.** A node cannot see the ring on its own, so each balancer pushes
//! its view (`POST /control/view`, answered with a [`ViewAck`]) whenever the
//! view changes and every `push_interval_ms` besides. Views say who *should*
//! hold a meeting; they never create or destroy a room by themselves.
//!
//! **One live room.** Which node *does* hold a meeting is decided between the
//! nodes, so that balancers whose views disagree (an edit that lands on one
//! balancer a second before the other, health checks that see a node leave
//! at different ticks) can never make two nodes open a room for the same
//! meeting:
//! - a room moves only by a handoff ([`HandoffBatch`], answered per room
//!   with a [`HandoffOutcome`]) from the node that holds it, and the holder
//!   gives it away only once no current view names it (fresh, and not
//!   behind another balancer's later config edit: [`RingView::config_ms`]);
//! - a node that has no room for a meeting asks every peer it knows where
//!   the room is ([`WhereRequest`] / [`WhereReply`]) before it opens one,
//!   and joins or forwards to the holder instead if there is one;
//! - a handoff whose answer was lost is settled by asking its receiver
//!   ([`AbortRequest`] / [`AbortReply`]), never by guessing.
//!
//! docs/ARCHITECTURE.md explains why this is safe, and `model/` checks it.

use crate::ring::{Member, Ring};
use serde::{Deserialize, Serialize};

/// Bearer token header of the control endpoints.
pub const AUTHORIZATION: &str = "authorization";
/// Whether an `Authorization` value is `Bearer <token>` for the control
/// `token`. Both sides are hashed with SHA-256 and the digests compared in
/// constant time (`subtle`): the time taken says nothing about how many
/// leading bytes were right, nor about the token's length, so the token
/// cannot be found byte by byte over the network. The scheme is
/// case-insensitive (RFC 9110 11.1).
pub fn bearer_matches(authorization: Option<&[u8]>, token: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let Some(value) = authorization else {
        return false;
    };
    let Some((scheme, sent)) = value.split_at_checked(7) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    let sent = Sha256::digest(sent);
    let expected = Sha256::digest(token.as_bytes());
    bool::from(sent.as_slice().ct_eq(expected.as_slice()))
}

/// Set by the balancer on each proxied request: which balancer routed it...
pub const BALANCER_HEADER: &str = "x-roompin-balancer";
/// ...and the epoch of the view it routed by. A node refuses a request for a
/// meeting it does not own only when its own view from that balancer is at
/// least this new, so a node that has not heard of a change yet never turns
/// away the clients the change sends it.
pub const EPOCH_HEADER: &str = "x-roompin-epoch";
/// ...and, on a retry, the comma-separated ids of the nodes that refused the
/// connection. The node judges ownership on the ring without them, as the
/// balancer did, instead of refusing what the balancer rightly sent it
/// while the dead owner is not yet marked unhealthy.
pub const SKIPPED_HEADER: &str = "x-roompin-skipped";
/// Set by a node that forwards a member's request to the node holding the
/// meeting's room. The holder serves it if it holds the room, and otherwise
/// refuses it (503) rather than forwarding it again.
pub const RELAYED_HEADER: &str = "x-roompin-relayed-by";
/// ...and how many nodes have forwarded it so far. A node that handed the
/// room on a moment ago forwards it once more, to where the room went, up
/// to a limit (`MAX_RELAY_HOPS`).
pub const RELAY_HOPS_HEADER: &str = "x-roompin-relay-hops";
/// Forwards of one request, at most.
pub const MAX_RELAY_HOPS: u8 = 3;

/// Path of the view push.
pub const VIEW_PATH: &str = "/control/view";
/// Path of the question "where is this meeting's room?".
pub const WHERE_PATH: &str = "/control/where";
/// Path of the room handoff.
pub const HANDOFF_PATH: &str = "/control/handoff";
/// Path of the settlement of a handoff whose answer was lost.
pub const ABORT_PATH: &str = "/control/abort";
/// Path of publishes forwarded to a room's new holder.
pub const PUBLISH_PATH: &str = "/control/publish";
/// Path of the rooms report.
pub const ROOMS_PATH: &str = "/control/rooms";

/// How a proxied request was routed, as its headers say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutedBy<'a> {
    pub source: &'a str,
    pub epoch: u64,
    pub skipped: Vec<&'a str>,
}

/// One balancer's ownership view.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RingView {
    /// The balancer process that sent it (`<balancer_id>@<start ms>`).
    pub source: String,
    /// Bumped by any change of members, weights or health.
    pub epoch: u64,
    /// When the balancer's config file was written (Unix ms; 0: unknown).
    /// Two balancers whose configured members differ are mid-rollout of an
    /// edit: nodes take the view whose file was written later as the one
    /// the other will follow, and move rooms by it without waiting
    /// (node/src/ownership.rs, `Views::move_target`).
    #[serde(default)]
    pub config_ms: u64,
    pub vnodes: u32,
    /// Every configured member, healthy or not.
    pub members: Vec<Member>,
    /// Ids of the members that currently own meetings.
    pub healthy: Vec<String>,
    /// How often the balancer re-sends its view. A node forgets a view it
    /// has not heard again for three intervals (its balancer is gone).
    #[serde(default = "default_push_interval_ms")]
    pub push_interval_ms: u64,
    /// Members removed from the config recently, which still get views so
    /// that they hand their rooms over. Nodes ask them where rooms are too.
    #[serde(default)]
    pub departed: Vec<Member>,
    /// Members this balancer has not been able to reach lately, with how
    /// long ago a view of it last could have reached them. A node that gets
    /// no view at all fences itself (see [`FRESH_PUSHES`]), so once every
    /// balancer says a node has been out of reach longer than that, its
    /// rooms are closed, and its meetings may start afresh elsewhere.
    #[serde(default)]
    pub unreachable: Vec<Unreachable>,
}

/// See [`RingView::unreachable`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Unreachable {
    pub id: String,
    /// Milliseconds since the last push that may have reached it.
    pub for_ms: u64,
}

/// A view is fresh for this many push intervals. A node that holds no fresh
/// view of any balancer has lost the control plane and fences itself: it
/// closes its rooms and opens none, so that its meetings can safely start
/// again elsewhere.
pub const FRESH_PUSHES: u64 = 3;

fn default_push_interval_ms() -> u64 {
    2000
}

impl RingView {
    /// The ring of owners: the configured members minus the unhealthy ones.
    pub fn owner_ring(&self) -> Ring {
        Ring::new(self.members.clone(), self.vnodes).without(|m| !self.healthy.contains(&m.id))
    }

    /// How long this view stays fresh after it arrives.
    pub fn fresh_for_ms(&self) -> u64 {
        self.push_interval_ms.saturating_mul(FRESH_PUSHES)
    }
}

/// A node's answer to a view push.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ViewAck {
    /// False when a newer view of the same balancer was already applied.
    pub applied: bool,
    pub epoch: u64,
    /// Rooms this node started handing over because of this view.
    pub moving: u64,
}

/// A node as its peers reach it. A node's own (`from` in its requests)
/// carries its listen address, which may be `0.0.0.0`: peers send to the
/// address the balancers' views give for that id, and treat the one in
/// `from` as a hint only.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeRef {
    pub id: String,
    pub addr: String,
}

/// "Where are these meetings' rooms?", from a node that has none for them
/// and means to hold them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WhereRequest {
    /// The asking node; it wins a tie against a peer that is opening the
    /// same meeting if its id sorts first.
    pub from: NodeRef,
    pub meetings: Vec<String>,
}

/// The answers, in the order of [`WhereRequest::meetings`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WhereReply {
    pub node: String,
    pub answers: Vec<Holding>,
    /// How long the answering node's placement table has existed: an
    /// `absent` says nothing of what it held before (it restarted since).
    /// A node reopening a room its fence closed needs peers that remember
    /// back to the fence. `None` from nodes that do not say.
    #[serde(default)]
    pub memory_ms: Option<u64>,
}

/// What a node has of one meeting.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Holding {
    /// Nothing: no room, and it is not opening one.
    Absent,
    /// It holds the live room (members join it there, or are forwarded).
    Live,
    /// Its room is closed and on its way to `to`.
    Moving { to: NodeRef },
    /// It handed the room to `to`, `age_ms` ago (the receiver's own answer
    /// is trusted once it surely postdates that).
    Moved { to: NodeRef, age_ms: u64 },
    /// It is asking around itself, to open the room. `fenced`: it also
    /// keeps a room of the meeting that its fence closed (see `Fenced`).
    Acquiring {
        #[serde(default)]
        fenced: bool,
    },
    /// Nothing is live there, but it held a room of the meeting until its
    /// lease ended lately (a fence closed it, keeping its history). As good
    /// as `absent` for opening the room elsewhere; it only tells a node
    /// whose own fence closed the meeting's room that it cannot reopen it
    /// as if nothing had happened since.
    Fenced,
}

/// A room's history, sent by its old holder to its new one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Handoff {
    pub meeting_id: String,
    /// The room's incarnation, kept by the new holder.
    pub room: String,
    /// The room's last seq; the new holder continues from it.
    pub seq: u64,
    /// The retained events, oldest first, as the JSON text sent to clients.
    pub events: Vec<String>,
}

/// Rooms handed to one node at once (a membership change moves hundreds).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HandoffBatch {
    pub from: NodeRef,
    pub rooms: Vec<Handoff>,
}

/// The receiver's answer, one outcome per room in batch order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HandoffAck {
    pub outcomes: Vec<HandoffOutcome>,
}

/// What became of one handed-over room.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum HandoffOutcome {
    /// The room is live on the receiver now, with its seq and history.
    Adopted,
    /// The receiver had adopted this very room already (a retry).
    Duplicate,
    /// Not adopted; the sender keeps the room.
    Refused { reason: Refusal },
}

/// Why a node refused a handoff.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// It holds another live room of that meeting: two rooms existed, which
    /// the protocol is meant to prevent; the sender closes its own.
    Conflict,
    /// It is draining.
    Draining,
    /// It has no fresh view of any balancer (fenced).
    Fenced,
    /// The sender settled this handoff as not adopted already.
    Aborted,
    /// The meeting id or the room is malformed.
    Invalid,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Conflict => "conflict",
            Refusal::Draining => "draining",
            Refusal::Fenced => "fenced",
            Refusal::Aborted => "aborted",
            Refusal::Invalid => "invalid",
        }
    }
}

/// "Did you adopt this room? If not, never do": sent by a handoff's sender
/// that did not get the answer, so that it knows whether to reopen the room.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AbortRequest {
    pub from: NodeRef,
    pub meeting_id: String,
    pub room: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AbortReply {
    /// True: the room is live there; false: it is not, and a late copy of
    /// the handoff will be refused.
    pub adopted: bool,
}

/// Messages that reached a room while it was in transit, passed on to its
/// new holder so that nobody has to resend them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PublishBatch {
    pub from: NodeRef,
    pub publishes: Vec<ForwardedPublish>,
    /// Nodes it passed through already: a node that handed the room on
    /// forwards it once more, along its tombstone, up to a limit.
    #[serde(default)]
    pub hops: u8,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ForwardedPublish {
    pub meeting_id: String,
    /// The sender's user name (`from` of the message event).
    pub user: String,
    pub text: String,
}

/// One result per forwarded publish, in batch order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PublishReply {
    pub results: Vec<Published>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Published {
    /// Published with this seq in this incarnation.
    Ok { seq: u64, room: String },
    /// The receiver does not hold the meeting's room.
    NotHere,
}

/// What a node holds, for operators and tests (`GET /control/rooms`, bearer
/// token): every live room with its incarnation, seq and member count.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RoomsReport {
    pub node: String,
    pub rooms: Vec<RoomInfo>,
}

/// One live room of a node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RoomInfo {
    pub meeting_id: String,
    /// The incarnation (`welcome.room`).
    pub room: String,
    pub seq: u64,
    pub members: usize,
}

#[cfg(test)]
mod tests {
    #[test]
    fn bearer_matches_only_the_exact_token() {
        let token = "s3cret-control-token";
        let cases: [(Option<&[u8]>, bool); 10] = [
            (Some(b"Bearer s3cret-control-token"), true),
            (Some(b"bearer s3cret-control-token"), true),
            (Some(b"BEARER s3cret-control-token"), true),
            (None, false),
            (Some(b""), false),
            (Some(b"Bearer "), false),
            (Some(b"Bearer s3cret-control-toke"), false),
            (Some(b"Bearer s3cret-control-token "), false),
            (Some(b"Basic s3cret-control-token"), false),
            (Some(b"s3cret-control-token"), false),
        ];
        for (value, want) in cases {
            assert_eq!(super::bearer_matches(value, token), want, "{value:?}");
        }
        assert!(!super::bearer_matches(Some(b"Bearer \xff\xfe"), token));
    }

    use super::*;

    /// The JSON shapes are the contract between processes of different
    /// builds: pin them.
    #[test]
    fn wire_shapes_are_stable() {
        let n = NodeRef {
            id: "node-b".into(),
            addr: "10.0.0.2:9001".into(),
        };
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (
                serde_json::to_value(Holding::Moving { to: n.clone() }).unwrap_or_default(),
                r#"{"state":"moving","to":{"addr":"10.0.0.2:9001","id":"node-b"}}"#,
            ),
            (
                serde_json::to_value(Holding::Absent).unwrap_or_default(),
                r#"{"state":"absent"}"#,
            ),
            (
                serde_json::to_value(HandoffOutcome::Refused {
                    reason: Refusal::Conflict,
                })
                .unwrap_or_default(),
                r#"{"outcome":"refused","reason":"conflict"}"#,
            ),
            (
                serde_json::to_value(Published::Ok {
                    seq: 4,
                    room: "ab".into(),
                })
                .unwrap_or_default(),
                r#"{"result":"ok","room":"ab","seq":4}"#,
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got.to_string(), want);
        }
    }

    #[test]
    fn an_old_view_without_the_new_fields_still_parses() {
        let v: RingView = serde_json::from_str(
            r#"{"source":"b@1","epoch":3,"vnodes":8,"members":[],"healthy":[]}"#,
        )
        .expect("parses");
        assert_eq!(v.push_interval_ms, 2000);
        assert!(v.departed.is_empty() && v.unreachable.is_empty());
        assert_eq!(v.fresh_for_ms(), 6000);
    }
}
