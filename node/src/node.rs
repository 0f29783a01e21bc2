//! The node's shared state, handed to every HTTP handler and session, and
//! the one admission path every member request (join or publish) takes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::claim::{self, CLAIM_DEADLINE};
use crate::history::Pool;
use crate::metrics::Metrics;
use crate::ownership::Ownership;
use crate::params::routed_by;
use crate::peers::Peers;
use crate::placement::{Admission, Ask, MoveOrder, Placement, Refused, MOVING};
use crate::room::{Joined, MemberHandle, Resume, Room, RoomEnv};
use crate::tasks;
use roompin_shared::config::NodeConfig;
use roompin_shared::control::{NodeRef, RELAYED_HEADER, RELAY_HOPS_HEADER};
use roompin_shared::MeetingId;

pub struct Node {
    pub id: Arc<str>,
    /// This node as its peers reach it.
    pub me: NodeRef,
    pub settings: NodeConfig,
    /// Where each meeting's room is.
    pub placement: Placement,
    /// What the balancers say, and the lease it grants.
    pub ownership: Ownership,
    pub peers: Arc<Peers>,
    /// Rooms closed for a move, on their way to the mover.
    pub moves: mpsc::UnboundedSender<MoveOrder>,
    pub metrics: Metrics,
    /// Set on SIGTERM: `/healthz` answers 503 so the balancer routes away.
    pub draining: AtomicBool,
    /// Cancelled when the node stops; every long-lived task watches it.
    pub shutdown: CancellationToken,
    /// Every session and background task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    next_conn: AtomicU64,
}

/// Where a member request goes, once admitted.
pub enum Admitted {
    Here(Arc<Room>),
    /// Forward it to the holder of the meeting's room.
    Relay(NodeRef),
    Refused(Response),
}

impl Node {
    /// The node, and the receiving end of its move orders for `mover::run`.
    pub fn new(
        id: String,
        listen: SocketAddr,
        settings: NodeConfig,
        metrics: Metrics,
    ) -> (Arc<Node>, mpsc::UnboundedReceiver<MoveOrder>) {
        let id: Arc<str> = Arc::from(id);
        let me = NodeRef {
            id: id.to_string(),
            addr: listen.to_string(),
        };
        let ownership = Ownership::new(&id);
        let env = RoomEnv {
            node_id: id.clone(),
            history: Arc::new(Pool::new(
                settings.history_events,
                settings.history_bytes,
                metrics.history(),
            )),
            metrics: metrics.clone(),
            lease: ownership.lease.clone(),
        };
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (moves, orders) = mpsc::unbounded_channel();
        let node = Arc::new(Node {
            placement: Placement::new(me.clone(), env),
            peers: Peers::new(
                me.clone(),
                settings.control_token.clone(),
                tasks.clone(),
                metrics.task_panics.clone(),
                shutdown.clone(),
            ),
            me,
            ownership,
            moves,
            id,
            settings,
            metrics,
            draining: AtomicBool::new(false),
            shutdown,
            tasks,
            next_conn: AtomicU64::new(1),
        });
        (node, orders)
    }

    /// A connection id unique within this node's lifetime: `<node>.<n>`.
    pub fn next_conn_id(&self) -> Arc<str> {
        let n = self.next_conn.fetch_add(1, Ordering::Relaxed);
        Arc::from(format!("{}.{n}", self.id))
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether this node serves alone: it has no control token, or no
    /// balancer has ever sent it a view. It then opens rooms on demand, as
    /// a single chat server would.
    pub fn alone(&self) -> bool {
        self.settings.control_token.is_none() || !self.ownership.in_cluster()
    }

    /// The node's state, as the placement rules need it.
    pub fn ask(&self, now: Instant) -> Ask {
        let alone = self.alone();
        Ask {
            relayed: false,
            hops: 0,
            alone,
            fenced: !alone && !self.ownership.lease.holds(now),
            draining: self.is_draining(),
        }
    }

    /// Every peer a claim round asks: the nodes the views name, and the
    /// nodes that talked to this one lately.
    pub fn peers_to_ask(&self, now: Instant) -> Vec<NodeRef> {
        let mut peers: BTreeMap<String, NodeRef> = BTreeMap::new();
        for p in self.placement.contacts() {
            peers.insert(p.id.clone(), p);
        }
        for p in self.ownership.snapshot().peers(now) {
            peers.insert(p.id.clone(), p);
        }
        peers.remove(self.id.as_ref());
        peers.into_values().collect()
    }

    /// Hands closed rooms to the mover.
    pub fn send_moves(&self, orders: Vec<MoveOrder>) -> usize {
        let n = orders.len();
        for o in orders {
            let _ = self.moves.send(o);
        }
        n
    }

    /// Admits a member request for `meeting`: the room it joins or
    /// publishes into here, the peer to forward it to, or a refusal (421
    /// naming the owner, or 503 with `Retry-After`). A request for a meeting
    /// in flux waits, for at most the claim deadline: a joiner during a move
    /// gets its welcome late, never a second room.
    pub async fn admit(self: &Arc<Self>, meeting: &MeetingId, headers: &HeaderMap) -> Admitted {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + CLAIM_DEADLINE + Duration::from_millis(100);
        let relayed = headers.contains_key(RELAYED_HEADER);
        let hops = headers
            .get(RELAY_HOPS_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u8>().ok())
            .unwrap_or(u8::from(relayed));
        let routed = routed_by(headers);
        loop {
            let now = Instant::now();
            let mut ask = self.ask(now);
            ask.relayed = relayed;
            ask.hops = hops;
            let admission = self.placement.admit(
                meeting,
                ask,
                || {
                    self.ownership
                        .snapshot()
                        .check(meeting, routed.as_ref(), now)
                        .err()
                },
                now,
            );
            let wait = match admission {
                Admission::Serve(room) => {
                    self.metrics
                        .admission_seconds
                        .observe(started.elapsed().as_secs_f64());
                    return Admitted::Here(room);
                }
                Admission::Relay(holder) => return Admitted::Relay(holder),
                Admission::Wait(w) => w,
                Admission::Acquire(round, w) => {
                    tasks::spawn(
                        self,
                        tasks::CLAIM,
                        tracing::Span::none(),
                        claim::run(self.clone(), meeting.clone(), round),
                    );
                    w
                }
                Admission::Refuse(Refused::Misrouted(m)) => {
                    self.metrics.misrouted.inc();
                    return Admitted::Refused(
                        (StatusCode::MISDIRECTED_REQUEST, m.to_string()).into_response(),
                    );
                }
                Admission::Refuse(Refused::Unavailable(why)) => {
                    return Admitted::Refused(unavailable(why))
                }
            };
            tokio::select! {
                _ = wait.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return Admitted::Refused(unavailable(MOVING)),
                _ = self.shutdown.cancelled() => return Admitted::Refused(unavailable(MOVING)),
            }
        }
    }

    /// Joins the room a request was admitted to; if that room closed in the
    /// meantime (it moved), the meeting's live room here if there is one.
    pub fn join(
        &self,
        room: Arc<Room>,
        member: MemberHandle,
        resume: Option<Resume<'_>>,
    ) -> Result<(Arc<Room>, Joined), MemberHandle> {
        let member = match room.join(member, resume) {
            Ok(joined) => return Ok((room, joined)),
            Err(back) => back,
        };
        match self.placement.live(&room.meeting_id) {
            Some(now_live) if !Arc::ptr_eq(&now_live, &room) => {
                let joined = now_live.join(member, resume)?;
                Ok((now_live, joined))
            }
            _ => Err(member),
        }
    }
}

/// A 503 with a reason, and `Retry-After: 1`.
pub fn unavailable(why: &str) -> Response {
    let mut resp = (StatusCode::SERVICE_UNAVAILABLE, why.to_owned()).into_response();
    resp.headers_mut()
        .insert("retry-after", HeaderValue::from_static("1"));
    resp
}
