//! The control channel from balancers to nodes: who owns which meeting.
//!
//! A node cannot see the ring on its own, so each balancer pushes its view
//! (`POST /control/view`) whenever the view changes and every
//! `push_interval_ms` besides. A node evicts a room once every fresh view
//! (one per balancer) says another node owns it: it hands the room's history
//! to the new owner (`POST /control/handoff`) and then closes the room's
//! clients with 4001, so they reconnect through the balancer, land on the new
//! owner, and resume with `since`. Waiting for all balancers to agree keeps a
//! room from bouncing while two of them briefly disagree (one has seen a
//! health change a check earlier than the other).

use crate::ring::{Member, Ring};
use serde::{Deserialize, Serialize};

/// Bearer token header of both control endpoints.
pub const AUTHORIZATION: &str = "authorization";
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
    /// The balancer that sent it.
    pub source: String,
    /// Bumped by any change of members, weights or health.
    pub epoch: u64,
    pub vnodes: u32,
    /// Every configured member, healthy or not.
    pub members: Vec<Member>,
    /// Ids of the members that currently own meetings.
    pub healthy: Vec<String>,
    /// How often the balancer re-sends its view. A node forgets a view it
    /// has not heard again for three intervals (its balancer is gone).
    #[serde(default = "default_push_interval_ms")]
    pub push_interval_ms: u64,
}

fn default_push_interval_ms() -> u64 {
    2000
}

impl RingView {
    /// The ring of owners: the configured members minus the unhealthy ones.
    pub fn owner_ring(&self) -> Ring {
        Ring::new(self.members.clone(), self.vnodes).without(|m| !self.healthy.contains(&m.id))
    }
}

/// A room's history, sent by its old owner to its new one before the old
/// owner closes the room's clients.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Handoff {
    pub meeting_id: String,
    /// The room's incarnation, kept by the new owner.
    #[serde(default)]
    pub room: String,
    /// The room's last seq; the new owner continues from it.
    pub seq: u64,
    /// The retained events, oldest first, as the JSON text sent to clients.
    pub events: Vec<String>,
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

/// Path of the rooms report.
pub const ROOMS_PATH: &str = "/control/rooms";
/// Path of the view push.
pub const VIEW_PATH: &str = "/control/view";
/// Path of the history handoff.
pub const HANDOFF_PATH: &str = "/control/handoff";
