//! Which meetings this node owns, as the balancers last told it, and what
//! it does when that changes: hand each lost room's history to its new
//! owner, then close the room's clients with 4001.

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::node::Node;
use roompin_shared::control::{Handoff, RingView, AUTHORIZATION, HANDOFF_PATH};
use roompin_shared::protocol::close;
use roompin_shared::{MeetingId, Ring};

/// A view and the owner ring built from it.
pub struct View {
    pub view: RingView,
    pub ring: Ring,
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

pub struct Ownership {
    node_id: String,
    by_source: Mutex<HashMap<String, Arc<View>>>,
    latest: ArcSwapOption<View>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Ownership {
    pub fn new(node_id: String) -> Ownership {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        Ownership {
            node_id,
            by_source: Mutex::new(HashMap::new()),
            latest: ArcSwapOption::empty(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Stores a view if it is newer than the last from its balancer.
    pub fn apply(&self, view: RingView) -> Option<Arc<View>> {
        let mut by_source = self.by_source.lock();
        if by_source
            .get(&view.source)
            .is_some_and(|v| v.view.epoch >= view.epoch)
        {
            return None;
        }
        let view = Arc::new(View {
            ring: view.owner_ring(),
            view,
        });
        by_source.insert(view.view.source.clone(), view.clone());
        self.latest.store(Some(view.clone()));
        Some(view)
    }

    /// Refuses a meeting that a view says another node owns. A request the
    /// balancer routed by epoch N is refused only if this node's view from
    /// that balancer is at least N: a node that has not heard of a change
    /// yet trusts the balancer. A direct request is judged by the latest view.
    pub fn check(
        &self,
        meeting: &MeetingId,
        routed_by: Option<(&str, u64)>,
    ) -> Result<(), Misrouted> {
        let view = match routed_by {
            Some((source, epoch)) => {
                match self
                    .by_source
                    .lock()
                    .get(source)
                    .filter(|v| v.view.epoch >= epoch)
                {
                    Some(v) => v.clone(),
                    None => return Ok(()),
                }
            }
            None => match self.latest.load_full() {
                Some(v) => v,
                None => return Ok(()),
            },
        };
        match view.ring.owner(meeting.as_str()) {
            Some(owner) if owner.id != self.node_id => Err(Misrouted {
                owner: owner.id.clone(),
                epoch: view.view.epoch,
                source: view.view.source.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Whether the latest view routes nothing to this node any more.
    pub fn routed_away(&self) -> bool {
        self.latest
            .load()
            .as_ref()
            .is_some_and(|v| !v.view.healthy.contains(&self.node_id))
    }

    /// Moves every room whose owner under `view` is another node; returns
    /// how many moved.
    pub fn evict_lost_rooms(&self, node: &Arc<Node>, view: &View) -> usize {
        let mut moved = 0;
        for room in node.rooms.all() {
            let Some(owner) = view.ring.owner(room.meeting_id.as_str()) else {
                continue;
            };
            if owner.id == self.node_id {
                continue;
            }
            let (handoff, members) = room.close_for_move();
            node.rooms.remove(&room);
            moved += 1;
            node.metrics.rooms_moved.inc();
            tracing::info!(meeting = %room.meeting_id, to = %owner.id, members = members.len(), "room moved");
            let (node, addr) = (node.clone(), owner.addr.clone());
            node.tasks.clone().spawn(async move {
                node.ownership.send_handoff(&node, &addr, &handoff).await;
                for m in members {
                    m.kick.kick(close::ROOM_MOVED);
                }
            });
        }
        moved
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
