//! Which meetings this node owns, as the balancers last told it, and what
//! it does when that changes: hand each lost room's history to its new
//! owner, then close the room's clients with 4001.

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::node::Node;
use crate::room::Room;
use roompin_shared::control::{Handoff, RingView, RoutedBy, AUTHORIZATION, HANDOFF_PATH};
use roompin_shared::protocol::close;
use roompin_shared::{MeetingId, Ring};

/// A view, the owner ring built from it, and when it was last heard.
pub struct View {
    pub view: RingView,
    pub ring: Ring,
    received: Instant,
}

impl View {
    /// A balancer re-sends its view every `push_interval_ms`; one not heard
    /// for three intervals has stopped (or lost us) and no longer counts.
    fn is_fresh(&self) -> bool {
        self.received.elapsed()
            < Duration::from_millis(self.view.push_interval_ms.saturating_mul(3))
    }
}

/// The meeting belongs to another node.
pub struct Misrouted {
    pub owner: String,
    pub epoch: u64,
    pub source: String,
}

impl std::fmt::Display for Misrouted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this meeting is owned by node {} (ring epoch {} of balancer {}); connect through the balancer",
            self.owner, self.epoch, self.source
        )
    }
}

/// How long a new owner may take to answer before its rooms stay here.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

pub struct Ownership {
    node_id: String,
    /// The latest view of each balancer.
    by_source: Mutex<HashMap<String, Arc<View>>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Ownership {
    pub fn new(node_id: String) -> Ownership {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        Ownership {
            node_id,
            by_source: Mutex::new(HashMap::new()),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Stores a balancer's view unless an older one overtook a newer one in
    /// flight. A repeat of the same epoch refreshes it. Returns whether it
    /// was taken.
    pub fn apply(&self, view: RingView) -> bool {
        let mut by_source = self.by_source.lock();
        if by_source
            .get(&view.source)
            .is_some_and(|v| v.view.epoch > view.epoch)
        {
            return false;
        }
        let view = Arc::new(View {
            ring: view.owner_ring(),
            view,
            received: Instant::now(),
        });
        by_source.insert(view.view.source.clone(), view);
        true
    }

    /// The fresh views, one per balancer.
    fn fresh(&self) -> Vec<Arc<View>> {
        self.by_source
            .lock()
            .values()
            .filter(|v| v.is_fresh())
            .cloned()
            .collect()
    }

    /// Refuses a meeting that a view says another node owns. A request the
    /// balancer routed by epoch N is refused only if this node's view from
    /// that balancer is at least N (a node that has not heard of a change yet
    /// trusts the balancer), judged on the ring without the nodes the
    /// balancer skipped because they refused. A direct request is refused
    /// only when every fresh view names another owner.
    pub fn check(
        &self,
        meeting: &MeetingId,
        routed_by: Option<RoutedBy<'_>>,
    ) -> Result<(), Misrouted> {
        let views = match &routed_by {
            Some(r) => match self.by_source.lock().get(r.source) {
                Some(v) if v.view.epoch >= r.epoch => vec![v.clone()],
                _ => return Ok(()),
            },
            None => self.fresh(),
        };
        let skipped = routed_by.map(|r| r.skipped).unwrap_or_default();
        let views: Vec<Arc<View>> = if skipped.is_empty() {
            views
        } else {
            views
                .iter()
                .map(|v| {
                    let ring = v.ring.without(|m| skipped.contains(&m.id.as_str()));
                    Arc::new(View {
                        view: v.view.clone(),
                        ring,
                        received: v.received,
                    })
                })
                .collect()
        };
        match self.other_owner(&views, meeting.as_str()) {
            Some((owner, view)) => Err(Misrouted {
                owner: owner.to_owned(),
                epoch: view.view.epoch,
                source: view.view.source.clone(),
            }),
            None => Ok(()),
        }
    }

    /// The owner another node has under every view, with the newest view,
    /// or `None` if any view keeps the meeting here (or has no owner).
    fn other_owner<'v>(
        &self,
        views: &'v [Arc<View>],
        meeting: &str,
    ) -> Option<(&'v str, &'v View)> {
        let mut newest: Option<(&str, &View)> = None;
        for v in views {
            let owner = v.ring.owner(meeting)?;
            if owner.id == self.node_id {
                return None;
            }
            if newest.is_none_or(|(_, n)| v.received > n.received) {
                newest = Some((owner.id.as_str(), v));
            }
        }
        newest
    }

    /// Whether any balancer's view is fresh.
    pub fn has_views(&self) -> bool {
        !self.fresh().is_empty()
    }

    /// Whether every fresh view routes nothing to this node any more.
    pub fn routed_away(&self) -> bool {
        let views = self.fresh();
        !views.is_empty()
            && views
                .iter()
                .all(|v| !v.view.healthy.contains(&self.node_id))
    }

    /// Moves every room that all fresh views give to another node, if that
    /// node answers; returns how many moved.
    ///
    /// A view can still name an owner that has just died (the balancer has
    /// not noticed yet, and sent this node the dead owner's clients with
    /// `x-roompin-skipped`). Handing a room to it would fail and bounce the
    /// room's clients for nothing, so each target is probed first, once per
    /// round; a room whose owner does not answer stays until the next push.
    pub async fn evict_lost_rooms(&self, node: &Arc<Node>) -> usize {
        let views = self.fresh();
        if views.is_empty() {
            return 0;
        }
        let mut by_owner: HashMap<String, (String, Vec<Arc<Room>>)> = HashMap::new();
        for room in node.rooms.all() {
            let Some((owner_id, view)) = self.other_owner(&views, room.meeting_id.as_str()) else {
                continue;
            };
            let Some(member) = view.view.members.iter().find(|m| m.id == owner_id) else {
                continue;
            };
            by_owner
                .entry(member.id.clone())
                .or_insert_with(|| (member.addr.clone(), Vec::new()))
                .1
                .push(room);
        }
        let probes = by_owner.into_values().map(|(addr, rooms)| async move {
            let up = self.answers(&addr).await;
            (addr, rooms, up)
        });
        let mut moved = 0;
        for (addr, rooms, up) in futures_util::future::join_all(probes).await {
            if !up {
                tracing::warn!(%addr, rooms = rooms.len(), "new owner does not answer; keeping its rooms for now");
                continue;
            }
            for room in rooms {
                moved += usize::from(self.move_room(node, &room, &addr));
            }
        }
        moved
    }

    /// Returns false if the room was already moved by a concurrent push.
    fn move_room(&self, node: &Arc<Node>, room: &Arc<Room>, addr: &str) -> bool {
        let Some((handoff, members)) = room.close_for_move() else {
            return false;
        };
        node.rooms.remove(room);
        node.metrics.rooms_moved.inc();
        tracing::info!(meeting = %room.meeting_id, to = %addr, members = members.len(), "room moved");
        let (node, addr) = (node.clone(), addr.to_owned());
        node.tasks.clone().spawn(async move {
            node.ownership.send_handoff(&node, &addr, &handoff).await;
            for m in members {
                m.kick.kick(close::ROOM_MOVED);
            }
        });
        true
    }

    /// Whether the node at `addr` answers `/healthz` with 200.
    async fn answers(&self, addr: &str) -> bool {
        let Ok(req) =
            http::Request::get(format!("http://{addr}/healthz")).body(Full::new(Bytes::new()))
        else {
            return false;
        };
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, self.client.request(req)).await,
            Ok(Ok(resp)) if resp.status().is_success()
        )
    }

    /// Best effort: the clients are moved either way; without history the
    /// new owner starts the room afresh and resuming clients see
    /// `recovered: false`.
    async fn send_handoff(&self, node: &Node, addr: &str, handoff: &Handoff) {
        let result = self.post_handoff(node, addr, handoff).await;
        let label = if result.is_ok() { "ok" } else { "error" };
        node.metrics
            .handoffs
            .with_label_values(&["sent", label])
            .inc();
        if let Err(e) = result {
            tracing::warn!(meeting = %handoff.meeting_id, %addr, error = %e, "history handoff failed");
        }
    }

    async fn post_handoff(&self, node: &Node, addr: &str, handoff: &Handoff) -> anyhow::Result<()> {
        let body = serde_json::to_vec(handoff)?;
        let mut req = http::Request::post(format!("http://{addr}{HANDOFF_PATH}"))
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(token) = &node.settings.control_token {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req.body(Full::new(Bytes::from(body)))?;
        let resp = tokio::time::timeout(Duration::from_secs(2), self.client.request(req)).await??;
        anyhow::ensure!(
            resp.status().is_success(),
            "new owner answered {}",
            resp.status()
        );
        Ok(())
    }
}
