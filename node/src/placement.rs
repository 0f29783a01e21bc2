//! Where each meeting's room is, as far as this node knows, and the rules
//! that keep every meeting to one live room across all nodes, whatever the
//! balancers' views say (docs/ARCHITECTURE.md, "A membership change (one
//! live room)").
//!
//! Each meeting this node has dealt with lately has a [`Slot`]:
//! - `Live`: the room is open here and serves its members;
//! - `Acquiring`: a claim round (`claim.rs`) is asking every peer whether it
//!   holds the room; requests for the meeting wait meanwhile;
//! - `Moving`: the room is closed and its handoff on its way to a peer
//!   (`mover.rs`); requests wait, publishes are queued and passed on;
//! - `Moved`: a tombstone, kept long after a handoff landed, so that a peer
//!   asking during the move learns where the room went;
//! - `Elsewhere`: a claim round found the room on a peer; members are
//!   forwarded there for a short while before the next round.
//!
//! Beside the slots, the history of rooms closed by a fence is kept for a
//! while ([`Frozen`]): a node that was paused or cut off past its lease
//! closes its rooms, but if no peer opened the meeting meanwhile, the
//! claim round that opens it again reopens it with its history, so its
//! members resume with `recovered: true`.
//!
//! The table decides and changes slots under one lock, never across an
//! await; the network work is done by `claim`, `mover` and `relay`, which
//! report back here.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::futures::OwnedNotified;
use tokio::sync::{oneshot, Notify};

use crate::ownership::{Misrouted, Views};
use crate::room::{Room, RoomEnv};
use roompin_shared::control::{Handoff, HandoffOutcome, Holding, NodeRef, Refusal, MAX_RELAY_HOPS};
use roompin_shared::protocol::close;
use roompin_shared::MeetingId;

/// How long a tombstone answers "moved to X". Longer than any claim round
/// can take (a round trusts no answer older than `claim::ANSWER_TIMEOUT`),
/// which is what makes a tombstone's answer safe; and long enough that a
/// handoff settled late (`AbortRequest`) finds it.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(60);
/// How long members are forwarded to the holder a round found, before the
/// next request asks again.
pub const ELSEWHERE_TTL: Duration = Duration::from_secs(1);
/// After a refused handoff, how long before the room is offered again.
pub const MOVE_RETRY: Duration = Duration::from_secs(1);
/// A room adopted here stays at least this long. Its sender moved it by a
/// view that may not have reached this node yet (pushes reach the nodes
/// one after another); without the pause, this node could judge by the
/// older view and send the room straight back.
pub const ADOPTED_STAYS: Duration = Duration::from_millis(500);
/// How long the history of a room closed by a fence is kept for reopening,
/// at most: well inside `TOMBSTONE_TTL` (a peer that took the meeting over
/// and handed it on still says so), and never longer than rooms stay open
/// empty (`room_idle_ms`), so a room a peer opened meanwhile cannot have
/// come and gone unseen (see [`Placement::reap`]).
pub const FROZEN_TTL: Duration = Duration::from_secs(30);
/// Publishes queued for a room in transit, at most.
pub const QUEUE_LIMIT: usize = 4096;

/// A publish that reached a room in transit; its outcome is sent back if
/// someone waits for it (an HTTP publish waits for its seq).
pub struct Queued {
    pub user: String,
    pub text: String,
    pub reply: Option<oneshot::Sender<Option<(u64, String)>>>,
}

impl Queued {
    /// Reports the outcome to whoever waits (nobody, for a WebSocket frame).
    pub fn resolve(self, outcome: Option<(u64, String)>) {
        if let Some(reply) = self.reply {
            let _ = reply.send(outcome);
        }
    }
}

pub enum Slot {
    Live {
        room: Arc<Room>,
        /// A refused handoff is not retried before this.
        no_move_before: Option<Instant>,
    },
    Acquiring {
        round: u64,
        /// A peer that wins ties asked about the meeting meanwhile: this
        /// round must not open the room (see `claim::decide_round`).
        yielded: bool,
    },
    Moving {
        /// Which move this is: an answer to an older one is not this one's.
        id: u64,
        to: NodeRef,
        room: Arc<Room>,
        queued: Vec<Queued>,
        since: Instant,
    },
    Moved {
        to: NodeRef,
        /// The incarnation handed over.
        room: Arc<str>,
        at: Instant,
    },
    Elsewhere {
        holder: NodeRef,
        until: Instant,
    },
}

/// The history of a room closed by a fence, kept in case nobody opened the
/// meeting meanwhile.
struct Frozen {
    handoff: Handoff,
    /// When the lease ended: peers may have written this node off since.
    lapsed: Instant,
}

struct Entry {
    slot: Slot,
    /// Woken on every change of `slot`.
    changed: Arc<Notify>,
}

/// A wait for a meeting's slot to change.
pub struct Waiter(Pin<Box<OwnedNotified>>);

impl Waiter {
    fn on(notify: &Arc<Notify>) -> Waiter {
        let mut n = Box::pin(notify.clone().notified_owned());
        n.as_mut().enable();
        Waiter(n)
    }

    pub async fn changed(self) {
        self.0.await
    }
}

/// What a request for a meeting should do now.
pub enum Admission {
    Serve(Arc<Room>),
    /// Forward it to the node holding the room.
    Relay(NodeRef),
    /// Wait for the slot to change, then ask again.
    Wait(Waiter),
    /// Start a claim round with this id, then wait.
    Acquire(u64, Waiter),
    Refuse(Refused),
}

pub enum Refused {
    Misrouted(Misrouted),
    /// 503 with this reason.
    Unavailable(&'static str),
}

/// What the rules need to know about the request and the node.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ask {
    /// Forwarded by a peer: serve it from a live room, or pass it on to
    /// where the room went (while `hops` allow); never open a room for it.
    pub relayed: bool,
    /// How many nodes forwarded it so far.
    pub hops: u8,
    /// The node serves alone (no control plane): open rooms on demand.
    pub alone: bool,
    /// No fresh balancer view: open no room.
    pub fenced: bool,
    pub draining: bool,
}

/// A slot, summarised for [`admission_rule`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Has {
    Nothing,
    Live,
    /// Acquiring or Moving: about to change.
    InFlux,
    /// A fresh hint that a peer holds it.
    Elsewhere,
    /// A tombstone: this node handed it to a peer a moment ago.
    Moved,
}

/// What [`admission_rule`] says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    Serve,
    Wait,
    Relay,
    Create,
    Acquire,
    Refuse(&'static str),
    Misrouted,
}

pub const NOT_HERE: &str =
    "this node does not hold the meeting's room; retry through the balancer\n";
pub const FENCED: &str =
    "this node has lost contact with every balancer and serves no meeting until it hears from one; retry shortly\n";
pub const DRAINING: &str = "this node is draining; retry through the balancer\n";
pub const MOVING: &str = "the meeting is moving between nodes; retry shortly\n";

/// The admission rules, in order. `misrouted` is asked only when it
/// matters (it costs ring lookups).
///
/// 1. A live room serves, whoever routed the request: serving at the holder
///    never splits a meeting.
/// 2. A slot about to change (a claim round or a move) is waited for.
/// 3. A forwarded request is served from a live room, or passed on to
///    where the room went (a hint or a tombstone), up to `MAX_RELAY_HOPS`;
///    a node never opens a room for it.
/// 4. A node serving alone opens rooms on demand.
/// 5. A fenced node opens nothing; neither does a draining one.
/// 6. A request the views say belongs to another node gets 421, unless
///    this node knows where the room is (it handed it on a moment ago, or
///    a round found it): it follows the room.
/// 7. A peer a recent round found holding the room gets the request.
/// 8. Otherwise a claim round asks every peer before any room opens.
pub fn admission_rule(has: Has, ask: Ask, misrouted: impl FnOnce() -> bool) -> Rule {
    match has {
        Has::Live => return Rule::Serve,
        Has::InFlux => return Rule::Wait,
        _ => {}
    }
    if ask.relayed {
        return if ask.hops < MAX_RELAY_HOPS && matches!(has, Has::Elsewhere | Has::Moved) {
            Rule::Relay
        } else {
            Rule::Refuse(NOT_HERE)
        };
    }
    if ask.alone {
        return Rule::Create;
    }
    if ask.fenced {
        return Rule::Refuse(FENCED);
    }
    if ask.draining {
        return if has == Has::Elsewhere {
            Rule::Relay
        } else {
            Rule::Refuse(DRAINING)
        };
    }
    if misrouted() {
        // This node handed the room on a moment ago, or a claim round just
        // found its holder: follow it (one hop) rather than send a client
        // that already waited out the move back to a balancer that routed
        // it here by an older view, to reconnect after a backoff.
        return if matches!(has, Has::Moved | Has::Elsewhere) {
            Rule::Relay
        } else {
            Rule::Misrouted
        };
    }
    if has == Has::Elsewhere {
        return Rule::Relay;
    }
    Rule::Acquire
}

/// A room closed for a move, for the mover to send.
pub struct MoveOrder {
    pub id: u64,
    pub meeting: MeetingId,
    /// The closed room, whose members the mover sends on.
    pub room: Arc<Room>,
    pub to: NodeRef,
    pub handoff: Handoff,
    pub started: Instant,
}

/// How a handoff ended, as the mover saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveResult {
    /// The receiver holds the room now: send the members on.
    Landed,
    /// The receiver holds another room of the meeting: send the members
    /// there too, and keep no second room here.
    Conflict,
    /// Not adopted, and never will be: reopen the room here.
    Reopen,
    /// Nobody can say whether a peer holds it (its receiver is gone and the
    /// room may have moved on): close it here; the meeting restarts.
    Drop,
}

/// What the mover must do after [`Placement::finish_move`].
pub struct MoveEffects {
    /// Close this room with 4001: its members reconnect to the new holder.
    pub kick: Option<Arc<Room>>,
    /// Pass these on to the new holder.
    pub forward: Vec<Queued>,
}

/// Where a publish for a meeting goes.
pub enum PublishRoute {
    Here(Arc<Room>),
    /// Queued with the room in transit; the receiver (if asked for) gets
    /// the outcome.
    Queued(Option<oneshot::Receiver<Option<(u64, String)>>>),
    /// Handed to this node a moment ago.
    Moved(NodeRef),
    NotHere,
}

/// How a claim round ended, as `claim::decide_round` judged its answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoundOutcome {
    /// Nobody holds the room: open it here.
    Create,
    /// This peer holds it.
    Relay(NodeRef),
    /// Its holder is handing it here: wait for the handoff.
    AwaitHandoff,
    /// Not decidable yet; ask again shortly.
    Retry(&'static str),
}

pub struct Placement {
    me: NodeRef,
    env: RoomEnv,
    map: Mutex<HashMap<MeetingId, Entry>>,
    /// Handoffs this node promised never to adopt (`AbortRequest`).
    aborted: Mutex<HashMap<(MeetingId, String), Instant>>,
    /// Nodes that talked to this one lately: asked too, though no view
    /// names them.
    contacts: Mutex<HashMap<String, (NodeRef, Instant)>>,
    /// Rooms closed by a fence, by meeting.
    frozen: Mutex<HashMap<MeetingId, Frozen>>,
    /// When this table began: it knows nothing of what came before
    /// (`WhereReply::memory_ms`).
    started: Instant,
    rounds: AtomicU64,
}

impl Placement {
    pub fn new(me: NodeRef, env: RoomEnv) -> Placement {
        Placement {
            me,
            env,
            map: Mutex::new(HashMap::new()),
            aborted: Mutex::new(HashMap::new()),
            contacts: Mutex::new(HashMap::new()),
            frozen: Mutex::new(HashMap::new()),
            started: Instant::now(),
            rounds: AtomicU64::new(1),
        }
    }

    pub fn me(&self) -> &NodeRef {
        &self.me
    }

    /// How far back this table's answers reach.
    pub fn memory(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// How long ago the lease ended under the meeting's frozen room, if a
    /// fence closed one: a claim round then asks peers to vouch for that
    /// long (`peers::Answer::Forgot`).
    pub fn frozen_for(&self, meeting: &MeetingId, now: Instant) -> Option<Duration> {
        self.frozen
            .lock()
            .get(meeting)
            .map(|f| now.saturating_duration_since(f.lapsed))
    }

    /// Drops a frozen room: a claim round's answers do not show that no
    /// peer opened the meeting since the fence.
    pub fn forget_frozen(&self, meeting: &MeetingId) {
        self.frozen.lock().remove(meeting);
    }

    /// What a member request (join or publish) for `meeting` should do.
    pub fn admit(
        &self,
        meeting: &MeetingId,
        ask: Ask,
        misrouted: impl FnOnce() -> Option<Misrouted>,
        now: Instant,
    ) -> Admission {
        let mut map = self.map.lock();
        let has = match map.get(meeting).map(|e| &e.slot) {
            Some(Slot::Live { .. }) => Has::Live,
            Some(Slot::Acquiring { .. } | Slot::Moving { .. }) => Has::InFlux,
            Some(Slot::Elsewhere { until, .. }) if *until > now => Has::Elsewhere,
            Some(Slot::Moved { at, .. }) if now.saturating_duration_since(*at) < TOMBSTONE_TTL => {
                Has::Moved
            }
            _ => Has::Nothing,
        };
        let mut wrong = None;
        let rule = admission_rule(has, ask, || {
            wrong = misrouted();
            wrong.is_some()
        });
        match rule {
            Rule::Serve => match map.get(meeting).map(|e| &e.slot) {
                Some(Slot::Live { room, .. }) => Admission::Serve(room.clone()),
                _ => Admission::Refuse(Refused::Unavailable(MOVING)),
            },
            Rule::Wait => match map.get(meeting) {
                Some(e) => Admission::Wait(Waiter::on(&e.changed)),
                None => Admission::Refuse(Refused::Unavailable(MOVING)),
            },
            Rule::Relay => match map.get(meeting).map(|e| &e.slot) {
                Some(Slot::Elsewhere { holder, .. }) => Admission::Relay(holder.clone()),
                Some(Slot::Moved { to, .. }) => Admission::Relay(to.clone()),
                _ => Admission::Refuse(Refused::Unavailable(MOVING)),
            },
            Rule::Create => {
                let room = Arc::new(Room::new(meeting.clone(), self.env.clone()));
                self.set(
                    &mut map,
                    meeting,
                    Slot::Live {
                        room: room.clone(),
                        no_move_before: None,
                    },
                );
                Admission::Serve(room)
            }
            Rule::Acquire => {
                let round = self.rounds.fetch_add(1, Ordering::Relaxed);
                let changed = self.set(
                    &mut map,
                    meeting,
                    Slot::Acquiring {
                        round,
                        yielded: false,
                    },
                );
                Admission::Acquire(round, Waiter::on(&changed))
            }
            Rule::Refuse(reason) => Admission::Refuse(Refused::Unavailable(reason)),
            Rule::Misrouted => match wrong {
                Some(m) => Admission::Refuse(Refused::Misrouted(m)),
                None => Admission::Refuse(Refused::Unavailable(MOVING)),
            },
        }
    }

    /// The meeting's live room, if it is open here.
    pub fn live(&self, meeting: &MeetingId) -> Option<Arc<Room>> {
        match self.map.lock().get(meeting).map(|e| &e.slot) {
            Some(Slot::Live { room, .. }) => Some(room.clone()),
            _ => None,
        }
    }

    /// Answers a peer that wants to hold `meeting` and asks what this node
    /// has of it. A live room that no fresh view names this node for any
    /// more is handed over at once (to the asker if a view names it): its
    /// move order is returned for the mover. A claim round of this node's
    /// own for the meeting yields if the asker wins ties.
    pub fn answer_where(
        &self,
        meeting: &MeetingId,
        asker: &NodeRef,
        views: &Views,
        now: Instant,
    ) -> (Holding, Option<MoveOrder>) {
        self.note_contact(asker, now);
        let mut map = self.map.lock();
        let Some(entry) = map.get_mut(meeting) else {
            let frozen = self.frozen.lock().contains_key(meeting);
            return (
                if frozen {
                    Holding::Fenced
                } else {
                    Holding::Absent
                },
                None,
            );
        };
        match &mut entry.slot {
            Slot::Live { no_move_before, .. } => {
                if no_move_before.is_some_and(|t| t > now) {
                    return (Holding::Live, None);
                }
                let Some(target) = views.move_target(meeting.as_str(), now) else {
                    return (Holding::Live, None);
                };
                // To the asker if a view names it, at the views' address
                // for it, never the one it gave (its listen address).
                let to = views
                    .named(meeting.as_str(), &asker.id, now)
                    .unwrap_or(target);
                match self.close_for_move(&mut map, meeting, to.clone(), now) {
                    Some(order) => (Holding::Moving { to }, Some(order)),
                    None => (Holding::Live, None),
                }
            }
            Slot::Acquiring { yielded, .. } => {
                if wins_tie(&asker.id, &self.me.id) {
                    *yielded = true;
                }
                let fenced = self.frozen.lock().contains_key(meeting);
                (Holding::Acquiring { fenced }, None)
            }
            Slot::Moving { to, .. } => (Holding::Moving { to: to.clone() }, None),
            Slot::Moved { to, at, .. } if now.saturating_duration_since(*at) < TOMBSTONE_TTL => (
                Holding::Moved {
                    to: to.clone(),
                    age_ms: now.saturating_duration_since(*at).as_millis() as u64,
                },
                None,
            ),
            _ => (Holding::Absent, None),
        }
    }

    /// Closes every live room that should leave under `views`, for the
    /// mover to send.
    pub fn start_moves(&self, views: &Views, now: Instant) -> Vec<MoveOrder> {
        let mut map = self.map.lock();
        let leaving: Vec<(MeetingId, NodeRef)> = map
            .iter()
            .filter_map(|(m, e)| match &e.slot {
                Slot::Live { no_move_before, .. } if !no_move_before.is_some_and(|t| t > now) => {
                    views.move_target(m.as_str(), now).map(|to| (m.clone(), to))
                }
                _ => None,
            })
            .collect();
        leaving
            .into_iter()
            .filter_map(|(m, to)| self.close_for_move(&mut map, &m, to, now))
            .collect()
    }

    fn close_for_move(
        &self,
        map: &mut HashMap<MeetingId, Entry>,
        meeting: &MeetingId,
        to: NodeRef,
        now: Instant,
    ) -> Option<MoveOrder> {
        let Some(Slot::Live { room, .. }) = map.get(meeting).map(|e| &e.slot) else {
            return None;
        };
        let room = room.clone();
        let handoff = room.close_for_move()?;
        let id = self.rounds.fetch_add(1, Ordering::Relaxed);
        self.set(
            map,
            meeting,
            Slot::Moving {
                id,
                to: to.clone(),
                room: room.clone(),
                queued: Vec::new(),
                since: now,
            },
        );
        Some(MoveOrder {
            id,
            meeting: meeting.clone(),
            room,
            to,
            handoff,
            started: now,
        })
    }

    /// Applies how move `id` of `meeting` ended (nothing, if the slot has
    /// moved on since: the room came back, or another move started).
    pub fn finish_move(
        &self,
        meeting: &MeetingId,
        id: u64,
        result: MoveResult,
        now: Instant,
    ) -> MoveEffects {
        let mut map = self.map.lock();
        let none = MoveEffects {
            kick: None,
            forward: Vec::new(),
        };
        let Some(entry) = map.get_mut(meeting) else {
            return none;
        };
        if !matches!(entry.slot, Slot::Moving { id: current, .. } if current == id) {
            return none;
        }
        let placeholder = Slot::Acquiring {
            round: 0,
            yielded: false,
        };
        let Slot::Moving {
            to, room, queued, ..
        } = std::mem::replace(&mut entry.slot, placeholder)
        else {
            return none;
        };
        match result {
            MoveResult::Landed | MoveResult::Conflict => {
                let slot = if result == MoveResult::Landed {
                    Slot::Moved {
                        to,
                        room: room.incarnation(),
                        at: now,
                    }
                } else {
                    Slot::Elsewhere {
                        holder: to,
                        until: now + ELSEWHERE_TTL,
                    }
                };
                self.set(&mut map, meeting, slot);
                MoveEffects {
                    kick: Some(room),
                    forward: queued,
                }
            }
            MoveResult::Reopen => {
                room.reopen();
                for q in queued {
                    let outcome = room.publish(&q.user, &q.text).ok();
                    q.resolve(outcome.map(|(seq, r)| (seq, r.to_string())));
                }
                self.set(
                    &mut map,
                    meeting,
                    Slot::Live {
                        room,
                        no_move_before: Some(now + MOVE_RETRY),
                    },
                );
                none
            }
            MoveResult::Drop => {
                for q in queued {
                    q.resolve(None);
                }
                self.remove(&mut map, meeting);
                MoveEffects {
                    kick: Some(room),
                    forward: Vec::new(),
                }
            }
        }
    }

    /// Where a publish for `meeting` goes when it is not simply served by
    /// a live room a session already has: into the live room, queued with
    /// the room in transit, or on to where the room just went.
    pub fn route_publish(
        &self,
        meeting: &MeetingId,
        user: &str,
        text: &str,
        reply: bool,
    ) -> PublishRoute {
        let mut map = self.map.lock();
        match map.get_mut(meeting).map(|e| &mut e.slot) {
            Some(Slot::Live { room, .. }) => PublishRoute::Here(room.clone()),
            Some(Slot::Moving { queued, .. }) if queued.len() < QUEUE_LIMIT => {
                let (tx, rx) = if reply {
                    let (tx, rx) = oneshot::channel();
                    (Some(tx), Some(rx))
                } else {
                    (None, None)
                };
                queued.push(Queued {
                    user: user.to_owned(),
                    text: text.to_owned(),
                    reply: tx,
                });
                PublishRoute::Queued(rx)
            }
            Some(Slot::Moved { to, .. }) => PublishRoute::Moved(to.clone()),
            _ => PublishRoute::NotHere,
        }
    }

    /// Takes a handed-over room, unless that could make a second live room.
    pub fn adopt(&self, handoff: &Handoff, ask: Ask) -> HandoffOutcome {
        let refused = |reason| HandoffOutcome::Refused { reason };
        let Ok(meeting) = MeetingId::parse(&handoff.meeting_id, "meeting_id") else {
            return refused(Refusal::Invalid);
        };
        if roompin_shared::protocol::check_room(&handoff.room).is_err() {
            return refused(Refusal::Invalid);
        }
        // A peer held the meeting after this node: a frozen room is stale.
        self.forget_frozen(&meeting);
        if self
            .aborted
            .lock()
            .contains_key(&(meeting.clone(), handoff.room.clone()))
        {
            return refused(Refusal::Aborted);
        }
        if ask.draining {
            return refused(Refusal::Draining);
        }
        if ask.fenced {
            return refused(Refusal::Fenced);
        }
        let mut map = self.map.lock();
        match map.get(&meeting).map(|e| &e.slot) {
            Some(Slot::Live { room, .. }) => {
                if *room.incarnation() == *handoff.room {
                    HandoffOutcome::Duplicate
                } else {
                    refused(Refusal::Conflict)
                }
            }
            Some(Slot::Moving { room, .. }) if *room.incarnation() != *handoff.room => {
                refused(Refusal::Conflict)
            }
            // Our own room, handed on and back before our handoff's answer
            // came: that handoff landed, and the room returns with what was
            // added there. Adopt it; its members here reconnect to it, and
            // what was queued here goes into it.
            Some(Slot::Moving { .. }) => {
                let room = Arc::new(Room::from_handoff(
                    meeting.clone(),
                    self.env.clone(),
                    handoff,
                ));
                let live = Slot::Live {
                    room: room.clone(),
                    no_move_before: None,
                };
                let old = map.get_mut(&meeting).map(|e| {
                    std::mem::replace(
                        &mut e.slot,
                        Slot::Elsewhere {
                            holder: self.me.clone(),
                            until: Instant::now(),
                        },
                    )
                });
                self.set(&mut map, &meeting, live);
                if let Some(Slot::Moving {
                    room: closed,
                    queued,
                    ..
                }) = old
                {
                    closed.close_all(MOVED);
                    for q in queued {
                        let outcome = room.publish(&q.user, &q.text).ok();
                        q.resolve(outcome.map(|(seq, r)| (seq, r.to_string())));
                    }
                }
                HandoffOutcome::Adopted
            }
            _ => {
                let room = Arc::new(Room::from_handoff(
                    meeting.clone(),
                    self.env.clone(),
                    handoff,
                ));
                self.set(
                    &mut map,
                    &meeting,
                    Slot::Live {
                        room,
                        no_move_before: Some(Instant::now() + ADOPTED_STAYS),
                    },
                );
                HandoffOutcome::Adopted
            }
        }
    }

    /// Settles a handoff whose sender lost the answer: whether this node
    /// adopted that room (it holds it, is moving it, or moved it on), and
    /// if not, a promise never to.
    pub fn abort(&self, meeting: &MeetingId, room: &str, now: Instant) -> bool {
        let map = self.map.lock();
        let adopted = match map.get(meeting).map(|e| &e.slot) {
            Some(Slot::Live { room: r, .. } | Slot::Moving { room: r, .. }) => {
                *r.incarnation() == *room
            }
            Some(Slot::Moved { room: r, .. }) => **r == *room,
            _ => false,
        };
        if !adopted {
            self.aborted
                .lock()
                .insert((meeting.clone(), room.to_owned()), now);
        }
        adopted
    }

    /// Whether a claim round's answers may still be applied, and whether a
    /// peer that wins ties asked meanwhile (which is then cleared).
    pub fn take_yielded(&self, meeting: &MeetingId, round: u64) -> Option<bool> {
        let mut map = self.map.lock();
        match map.get_mut(meeting).map(|e| &mut e.slot) {
            Some(Slot::Acquiring { round: r, yielded }) if *r == round => {
                Some(std::mem::take(yielded))
            }
            _ => None,
        }
    }

    /// Applies a claim round's outcome. Returns false when the round is
    /// over (decided, or overtaken by a handoff or a fence).
    pub fn finish_round(
        &self,
        meeting: &MeetingId,
        round: u64,
        outcome: &RoundOutcome,
        ask: Ask,
        now: Instant,
    ) -> bool {
        let mut map = self.map.lock();
        if !matches!(map.get(meeting).map(|e| &e.slot), Some(Slot::Acquiring { round: r, .. }) if *r == round)
        {
            return false;
        }
        match outcome {
            RoundOutcome::Create if ask.fenced || ask.draining => {
                self.remove(&mut map, meeting);
                false
            }
            RoundOutcome::Create => {
                let room = match self.frozen.lock().remove(meeting) {
                    Some(f) => {
                        tracing::info!(meeting = %meeting, room = %f.handoff.room, seq = f.handoff.seq, "reopened the room a fence closed: no peer opened the meeting meanwhile");
                        Room::from_handoff(meeting.clone(), self.env.clone(), &f.handoff)
                    }
                    None => Room::new(meeting.clone(), self.env.clone()),
                };
                let room = Arc::new(room);
                self.set(
                    &mut map,
                    meeting,
                    Slot::Live {
                        room,
                        no_move_before: None,
                    },
                );
                false
            }
            RoundOutcome::Relay(holder) => {
                self.set(
                    &mut map,
                    meeting,
                    Slot::Elsewhere {
                        holder: holder.clone(),
                        until: now + ELSEWHERE_TTL,
                    },
                );
                false
            }
            RoundOutcome::AwaitHandoff | RoundOutcome::Retry(_) => true,
        }
    }

    /// Ends a claim round that ran out of time; its waiters give up.
    pub fn give_up(&self, meeting: &MeetingId, round: u64) {
        let mut map = self.map.lock();
        if matches!(map.get(meeting).map(|e| &e.slot), Some(Slot::Acquiring { round: r, .. }) if *r == round)
        {
            self.remove(&mut map, meeting);
        }
    }

    /// Closes every room for a fence whose lease ended at `lapsed` (as
    /// `close_all` does), keeping each live room's history for a claim
    /// round that may reopen it (`finish_round`).
    pub fn freeze_all(&self, code: u16, lapsed: Instant) -> usize {
        let live: Vec<(MeetingId, Handoff)> = self
            .map
            .lock()
            .iter()
            .filter_map(|(m, e)| match &e.slot {
                Slot::Live { room, .. } => room.close_for_move().map(|h| (m.clone(), h)),
                _ => None,
            })
            .collect();
        let mut frozen = self.frozen.lock();
        for (m, handoff) in live {
            frozen.insert(m, Frozen { handoff, lapsed });
        }
        drop(frozen);
        self.close_all(code)
    }

    /// Closes every room and forgets what is in flux: for a fence (1001),
    /// and for shutdown. Tombstones stay, so peers still learn where rooms
    /// went.
    pub fn close_all(&self, code: u16) -> usize {
        let mut map = self.map.lock();
        let meetings: Vec<MeetingId> = map
            .iter()
            .filter(|(_, e)| !matches!(e.slot, Slot::Moved { .. }))
            .map(|(m, _)| m.clone())
            .collect();
        let mut closed = 0;
        for m in meetings {
            if let Some(entry) = map.get_mut(&m) {
                let slot = std::mem::replace(
                    &mut entry.slot,
                    Slot::Acquiring {
                        round: 0,
                        yielded: false,
                    },
                );
                match slot {
                    Slot::Live { room, .. } => {
                        room.close_all(code);
                        closed += 1;
                    }
                    Slot::Moving { room, queued, .. } => {
                        room.close_all(code);
                        queued.into_iter().for_each(|q| q.resolve(None));
                        closed += 1;
                    }
                    _ => {}
                }
            }
            self.remove(&mut map, &m);
        }
        closed
    }

    /// Every live room that serves now (a room whose lease lapsed is not
    /// live, though the fence has not closed it yet).
    pub fn live_rooms(&self) -> Vec<Arc<Room>> {
        self.map
            .lock()
            .values()
            .filter_map(|e| match &e.slot {
                Slot::Live { room, .. } if room.is_serving() => Some(room.clone()),
                _ => None,
            })
            .collect()
    }

    /// Whether any room is live or in transit here.
    pub fn holds_rooms(&self) -> bool {
        self.map
            .lock()
            .values()
            .any(|e| matches!(e.slot, Slot::Live { .. } | Slot::Moving { .. }))
    }

    /// Drops rooms empty for `idle`, and expired tombstones, hints,
    /// promises and frozen rooms. A frozen room lasts no longer than `idle`
    /// either: a room a peer opened for the meeting after this node's lease
    /// ended lives at least that long, so while the frozen room lasts, a
    /// claim round still finds that one (or its tombstone, or its holder's
    /// restart).
    pub fn reap(&self, idle: Duration, now: Instant) {
        let keep = FROZEN_TTL.min(idle);
        self.frozen
            .lock()
            .retain(|_, f| now.saturating_duration_since(f.lapsed) < keep);
        let mut map = self.map.lock();
        let expired: Vec<MeetingId> = map
            .iter()
            .filter(|(_, e)| match &e.slot {
                Slot::Live { room, .. } => room.close_if_idle(idle),
                Slot::Moved { at, .. } => now.saturating_duration_since(*at) >= TOMBSTONE_TTL,
                Slot::Elsewhere { until, .. } => *until <= now,
                _ => false,
            })
            .map(|(m, _)| m.clone())
            .collect();
        for m in expired {
            self.remove(&mut map, &m);
        }
        drop(map);
        self.aborted
            .lock()
            .retain(|_, at| now.saturating_duration_since(*at) < TOMBSTONE_TTL);
        self.contacts
            .lock()
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < TOMBSTONE_TTL);
    }

    /// Remembers a node that talked to this one.
    pub fn note_contact(&self, peer: &NodeRef, now: Instant) {
        // A peer listening on every interface gives `0.0.0.0:port` (or
        // `[::]:port`) as its address: asking there would ask oneself, so
        // such a peer is asked only at the address the views give it.
        let unreachable = peer
            .addr
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_unspecified());
        if peer.id != self.me.id && !unreachable {
            self.contacts
                .lock()
                .insert(peer.id.clone(), (peer.clone(), now));
        }
    }

    /// Nodes that talked to this one lately.
    pub fn contacts(&self) -> Vec<NodeRef> {
        self.contacts
            .lock()
            .values()
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Puts `slot` in place, keeps the rooms gauge right, and wakes the
    /// meeting's waiters. Returns the meeting's change notifier.
    fn set(
        &self,
        map: &mut HashMap<MeetingId, Entry>,
        meeting: &MeetingId,
        slot: Slot,
    ) -> Arc<Notify> {
        let live = matches!(slot, Slot::Live { .. });
        let entry = map.entry(meeting.clone()).or_insert_with(|| Entry {
            slot: Slot::Acquiring {
                round: 0,
                yielded: false,
            },
            changed: Arc::new(Notify::new()),
        });
        let was_live = matches!(entry.slot, Slot::Live { .. });
        entry.slot = slot;
        match (was_live, live) {
            (false, true) => self.env.metrics.rooms.inc(),
            (true, false) => self.env.metrics.rooms.dec(),
            _ => {}
        }
        entry.changed.notify_waiters();
        entry.changed.clone()
    }

    fn remove(&self, map: &mut HashMap<MeetingId, Entry>, meeting: &MeetingId) {
        if let Some(entry) = map.remove(meeting) {
            if matches!(entry.slot, Slot::Live { .. }) {
                self.env.metrics.rooms.dec();
            }
            entry.changed.notify_waiters();
        }
    }
}

/// Of two nodes opening the same meeting at once, the one whose id sorts
/// first goes on; the other yields and finds its room on the next round.
pub fn wins_tie(a: &str, b: &str) -> bool {
    a < b
}

/// The close code of members whose room moved.
pub const MOVED: u16 = close::ROOM_MOVED;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::tests::env;
    use roompin_shared::control::RingView;
    use roompin_shared::Member;

    fn node(id: &str) -> NodeRef {
        NodeRef {
            id: id.into(),
            addr: format!("{id}.test:9001"),
        }
    }

    fn mid(s: &str) -> MeetingId {
        MeetingId::parse(s, "meeting_id").expect("valid")
    }

    fn ask() -> Ask {
        Ask::default()
    }

    #[test]
    fn admission_rules() {
        let cluster = ask();
        let alone = Ask {
            alone: true,
            ..ask()
        };
        let relayed = Ask {
            relayed: true,
            hops: 1,
            ..ask()
        };
        let last_hop = Ask {
            relayed: true,
            hops: MAX_RELAY_HOPS,
            ..ask()
        };
        let fenced = Ask {
            fenced: true,
            ..ask()
        };
        let draining = Ask {
            draining: true,
            ..ask()
        };
        #[rustfmt::skip]
        let cases: Vec<(Has, Ask, bool, Rule, &str)> = vec![
            (Has::Live,      fenced,   true,  Rule::Serve,  "a live room serves, whoever routed it"),
            (Has::InFlux,    cluster,  false, Rule::Wait,   "a claim round or a move is waited for"),
            (Has::InFlux,    relayed,  false, Rule::Wait,   "even when forwarded"),
            (Has::Nothing,   relayed,  false, Rule::Refuse(NOT_HERE), "forwarded: never open a room"),
            (Has::Elsewhere, relayed,  false, Rule::Relay,  "forwarded on, to the holder a round found"),
            (Has::Moved,     relayed,  false, Rule::Relay,  "forwarded on, to where it was handed"),
            (Has::Moved,     last_hop, false, Rule::Refuse(NOT_HERE), "no more hops"),
            (Has::Moved,     cluster,  false, Rule::Acquire, "a tombstone is not where the room is for this node"),
            (Has::Nothing,   alone,    true,  Rule::Create, "alone: open on demand"),
            (Has::Nothing,   fenced,   false, Rule::Refuse(FENCED), "fenced: open nothing"),
            (Has::Nothing,   draining, false, Rule::Refuse(DRAINING), "draining: open nothing"),
            (Has::Elsewhere, draining, false, Rule::Relay,  "draining, but the holder is known"),
            (Has::Nothing,   cluster,  true,  Rule::Misrouted, "the views name another owner"),
            (Has::Elsewhere, cluster,  true,  Rule::Relay,  "the holder is known: follow it, no 421"),
            (Has::Moved,     cluster,  true,  Rule::Relay,  "handed on a moment ago: follow the room, no 421"),
            (Has::Elsewhere, cluster,  false, Rule::Relay,  "a round found the holder"),
            (Has::Nothing,   cluster,  false, Rule::Acquire, "ask every peer before opening"),
        ];
        for (has, a, misrouted, want, why) in cases {
            assert_eq!(admission_rule(has, a, || misrouted), want, "{why}");
        }
    }

    fn placement(me: &str) -> Placement {
        Placement::new(node(me), env(1 << 20))
    }

    fn views(me: &str, healthy: &[&str], now: Instant) -> Views {
        let mut v = Views::new(me);
        let members: Vec<Member> = ["a", "b", "c"]
            .iter()
            .map(|id| Member {
                id: id.to_string(),
                addr: format!("{id}.test:9001"),
                weight: 1,
            })
            .collect();
        v.apply(
            RingView {
                source: "b1".into(),
                epoch: 1,
                config_ms: 0,
                vnodes: 64,
                members,
                healthy: healthy.iter().map(|s| s.to_string()).collect(),
                push_interval_ms: 1000,
                departed: vec![],
                unreachable: vec![],
            },
            now,
        );
        v
    }

    fn acquire(p: &Placement, m: &MeetingId, now: Instant) -> u64 {
        match p.admit(m, ask(), || None, now) {
            Admission::Acquire(round, _) => round,
            _ => panic!("expected a claim round"),
        }
    }

    #[test]
    fn a_claim_round_opens_a_room_only_while_it_is_the_current_one() {
        let now = Instant::now();
        let p = placement("b");
        let m = mid("standup");
        let round = acquire(&p, &m, now);
        assert!(matches!(
            p.admit(&m, ask(), || None, now),
            Admission::Wait(_)
        ));
        assert_eq!(p.take_yielded(&m, round), Some(false));
        assert!(p.finish_round(&m, round, &RoundOutcome::Retry("x"), ask(), now));
        assert!(
            !p.finish_round(&m, round + 1, &RoundOutcome::Create, ask(), now),
            "a stale round"
        );
        assert!(p.live(&m).is_none());
        assert!(!p.finish_round(&m, round, &RoundOutcome::Create, ask(), now));
        assert!(p.live(&m).is_some());
        assert!(matches!(
            p.admit(&m, ask(), || None, now),
            Admission::Serve(_)
        ));
    }

    #[test]
    fn a_handoff_that_lands_during_a_claim_round_wins() {
        let now = Instant::now();
        let p = placement("b");
        let m = mid("standup");
        let round = acquire(&p, &m, now);
        let old = Room::new(m.clone(), env(1 << 20));
        for i in 0..3 {
            assert!(old.publish("u", &format!("m{i}")).is_ok());
        }
        let handoff = old.close_for_move().expect("closes");
        assert_eq!(p.adopt(&handoff, ask()), HandoffOutcome::Adopted);
        assert_eq!(p.adopt(&handoff, ask()), HandoffOutcome::Duplicate);
        // The round's own verdict comes too late to open another room.
        assert!(!p.finish_round(&m, round, &RoundOutcome::Create, ask(), now));
        let live = p.live(&m).expect("adopted");
        assert_eq!(live.incarnation(), old.incarnation());
        // Another incarnation of the same meeting is a conflict.
        let other = Room::new(m.clone(), env(1 << 20))
            .close_for_move()
            .expect("closes");
        assert_eq!(
            p.adopt(&other, ask()),
            HandoffOutcome::Refused {
                reason: Refusal::Conflict
            }
        );
    }

    #[test]
    fn handoffs_are_refused_while_draining_fenced_or_after_an_abort() {
        let now = Instant::now();
        let m = mid("standup");
        let h = Room::new(m.clone(), env(1 << 20))
            .close_for_move()
            .expect("closes");
        let p = placement("b");
        let refused = |reason| HandoffOutcome::Refused { reason };
        assert_eq!(
            p.adopt(
                &h,
                Ask {
                    draining: true,
                    ..ask()
                }
            ),
            refused(Refusal::Draining)
        );
        assert_eq!(
            p.adopt(
                &h,
                Ask {
                    fenced: true,
                    ..ask()
                }
            ),
            refused(Refusal::Fenced)
        );
        assert!(!p.abort(&m, &h.room, now), "never adopted");
        assert_eq!(
            p.adopt(&h, ask()),
            refused(Refusal::Aborted),
            "the promise holds"
        );
        let mut bad = h.clone();
        bad.meeting_id = "not valid!".into();
        assert_eq!(p.adopt(&bad, ask()), refused(Refusal::Invalid));
        // A node that adopted says so when asked.
        let q = placement("c");
        assert_eq!(q.adopt(&h, ask()), HandoffOutcome::Adopted);
        assert!(q.abort(&m, &h.room, now));
    }

    fn live_room(p: &Placement, m: &MeetingId, now: Instant) -> Arc<Room> {
        let round = acquire(p, m, now);
        assert!(!p.finish_round(m, round, &RoundOutcome::Create, ask(), now));
        p.live(m).expect("live")
    }

    /// A meeting owned by `a` with every node healthy.
    fn meeting_of_a(v: &Views, now: Instant) -> MeetingId {
        (0..10_000)
            .map(|i| mid(&format!("m{i}")))
            .find(|m| v.names(m.as_str(), "a", now))
            .expect("a meeting of a")
    }

    /// A peer's own `from` carries its listen address, which on most hosts
    /// is `0.0.0.0:port`: a handoff sent there lands back on the sender
    /// (the pause fault test caught a node adopting its own rooms). Rooms go
    /// to the address the views give, and such a peer is never a contact.
    #[test]
    fn rooms_go_to_the_views_address_of_a_peer_never_the_one_it_gave() {
        let now = Instant::now();
        let p = placement("a");
        let without_a = views("a", &["b", "c"], now);
        let m = meeting_of_a(&views("a", &["a", "b", "c"], now), now);
        live_room(&p, &m, now);
        let owner = without_a.move_target(m.as_str(), now).expect("an owner");
        let asker = NodeRef {
            id: owner.id.clone(),
            addr: "0.0.0.0:9001".into(),
        };
        let (h, order) = p.answer_where(&m, &asker, &without_a, now);
        assert_eq!(h, Holding::Moving { to: owner.clone() });
        let order = order.expect("a move order");
        assert_eq!(order.to.addr, format!("{}.test:9001", owner.id));
        assert!(p.contacts().is_empty(), "{:?}", p.contacts());
        // One that gives a reachable address is remembered.
        for (addr, kept) in [
            ("[::]:9001", false),
            ("10.0.0.7:9001", true),
            ("b.test:9001", true),
        ] {
            p.note_contact(
                &NodeRef {
                    id: "z".into(),
                    addr: addr.into(),
                },
                now,
            );
            assert_eq!(p.contacts().iter().any(|c| c.addr == addr), kept, "{addr}");
        }
    }

    #[test]
    fn a_holder_answers_live_while_a_fresh_view_names_it_and_hands_over_once_none_does() {
        let now = Instant::now();
        let p = placement("a");
        let all = views("a", &["a", "b", "c"], now);
        let m = meeting_of_a(&all, now);
        live_room(&p, &m, now);
        let (h, order) = p.answer_where(&m, &node("b"), &all, now);
        assert_eq!(h, Holding::Live);
        assert!(order.is_none());
        // a is out of the ring: hand over, to the asker if a view names it.
        let without_a = views("a", &["b", "c"], now);
        let asker = if without_a.names(m.as_str(), "b", now) {
            "b"
        } else {
            "c"
        };
        let (h, order) = p.answer_where(&m, &node(asker), &without_a, now);
        assert_eq!(h, Holding::Moving { to: node(asker) });
        let order = order.expect("a move order");
        assert_eq!(order.to, node(asker));
        // While the handoff is in flight: requests wait, publishes queue.
        assert!(matches!(
            p.admit(&m, ask(), || None, now),
            Admission::Wait(_)
        ));
        assert!(matches!(
            p.route_publish(&m, "u", "hi", false),
            PublishRoute::Queued(None)
        ));
        let (h, _) = p.answer_where(&m, &node("c"), &without_a, now);
        assert_eq!(h, Holding::Moving { to: node(asker) });
        assert!(
            p.finish_move(&m, order.id + 1, MoveResult::Landed, now)
                .kick
                .is_none(),
            "another move's answer"
        );
        let fx = p.finish_move(&m, order.id, MoveResult::Landed, now);
        assert!(fx.kick.is_some());
        assert_eq!(fx.forward.len(), 1, "the queued publish goes on");
        let (h, _) = p.answer_where(&m, &node("c"), &without_a, now);
        assert_eq!(
            h,
            Holding::Moved {
                to: node(asker),
                age_ms: 0
            }
        );
        assert!(
            p.abort(&m, &order.handoff.room, now),
            "a tombstone remembers"
        );
        let later = now + TOMBSTONE_TTL;
        assert_eq!(
            p.answer_where(&m, &node("c"), &without_a, later).0,
            Holding::Absent
        );
    }

    #[test]
    fn a_refused_handoff_reopens_the_room_and_publishes_what_was_queued() {
        let now = Instant::now();
        let p = placement("a");
        let all = views("a", &["a", "b", "c"], now);
        let m = meeting_of_a(&all, now);
        let room = live_room(&p, &m, now);
        let orders = p.start_moves(&views("a", &["b", "c"], now), now);
        assert_eq!(orders.len(), 1);
        let PublishRoute::Queued(Some(mut rx)) = p.route_publish(&m, "u", "queued", true) else {
            panic!("queued");
        };
        let fx = p.finish_move(&m, orders[0].id, MoveResult::Reopen, now);
        assert!(fx.kick.is_none());
        let published = rx
            .try_recv()
            .ok()
            .flatten()
            .expect("published after reopening");
        assert_eq!(published.0, 1);
        assert!(Arc::ptr_eq(&p.live(&m).expect("live again"), &room));
        // Not offered again at once.
        assert!(p.start_moves(&views("a", &["b", "c"], now), now).is_empty());
        let later = now + MOVE_RETRY;
        assert_eq!(
            p.start_moves(&views("a", &["b", "c"], later), later).len(),
            1
        );
    }

    /// A room handed on and straight back, before the answer to its first
    /// handoff came, is adopted (it landed), not refused as a conflict.
    #[test]
    fn a_room_that_comes_back_before_its_handoff_answer_is_adopted() {
        let now = Instant::now();
        let p = placement("a");
        let all = views("a", &["a", "b", "c"], now);
        let m = meeting_of_a(&all, now);
        let room = live_room(&p, &m, now);
        let orders = p.start_moves(&views("a", &["b", "c"], now), now);
        let order = &orders[0];
        let PublishRoute::Queued(Some(mut rx)) = p.route_publish(&m, "u", "queued", true) else {
            panic!("queued");
        };
        // The receiver added an event, then handed it back.
        let there = Room::from_handoff(m.clone(), env(1 << 20), &order.handoff);
        assert!(there.publish("v", "at b").is_ok());
        let back = there.close_for_move().expect("closes");
        assert_eq!(p.adopt(&back, ask()), HandoffOutcome::Adopted);
        let live = p.live(&m).expect("live again");
        assert!(!Arc::ptr_eq(&live, &room));
        assert_eq!(
            rx.try_recv().ok().flatten().map(|(seq, _)| seq),
            Some(back.seq + 1)
        );
        // The late answer to the first handoff changes nothing.
        assert!(p
            .finish_move(&m, order.id, MoveResult::Landed, now)
            .kick
            .is_none());
        assert!(p.live(&m).is_some());
        // Another incarnation arriving while moving is a conflict.
        let q = placement("a");
        live_room(&q, &m, now);
        q.start_moves(&views("a", &["b", "c"], now), now);
        let other = Room::new(m.clone(), env(1 << 20))
            .close_for_move()
            .expect("closes");
        assert_eq!(
            q.adopt(&other, ask()),
            HandoffOutcome::Refused {
                reason: Refusal::Conflict
            }
        );
    }

    #[test]
    fn a_claim_round_yields_to_a_peer_that_wins_ties() {
        let now = Instant::now();
        let all = views("b", &["a", "b", "c"], now);
        let m = mid("standup");
        let p = placement("b");
        let round = acquire(&p, &m, now);
        assert_eq!(
            p.answer_where(&m, &node("c"), &all, now).0,
            Holding::Acquiring { fenced: false }
        );
        assert_eq!(
            p.take_yielded(&m, round),
            Some(false),
            "c loses ties against b"
        );
        assert_eq!(
            p.answer_where(&m, &node("a"), &all, now).0,
            Holding::Acquiring { fenced: false }
        );
        assert_eq!(p.take_yielded(&m, round), Some(true), "a wins");
        assert_eq!(p.take_yielded(&m, round), Some(false), "taken once");
        let ids: Vec<String> = p.contacts().into_iter().map(|n| n.id).collect();
        assert_eq!(ids.len(), 2);
    }

    #[test]
    fn closing_everything_keeps_tombstones_and_frees_the_rest() {
        let now = Instant::now();
        let p = placement("a");
        let all = views("a", &["a", "b", "c"], now);
        let m = meeting_of_a(&all, now);
        live_room(&p, &m, now);
        let other = mid("zz-other");
        live_room(&p, &other, now);
        let orders = p.start_moves(&views("a", &["b", "c"], now), now);
        for o in &orders {
            p.finish_move(&o.meeting, o.id, MoveResult::Landed, now);
        }
        assert!(p.holds_rooms() == (orders.len() < 2));
        p.close_all(close::GOING_AWAY);
        assert!(!p.holds_rooms());
        assert!(p.live_rooms().is_empty());
        for o in &orders {
            assert!(matches!(
                p.answer_where(&o.meeting, &node("c"), &all, now).0,
                Holding::Moved { .. }
            ));
        }
    }

    /// A fence keeps its rooms' history: the claim round that opens the
    /// meeting again reopens the same incarnation, with what was published
    /// (whether it may is `claim::reopens`'s call); a handoff arriving, or
    /// the frozen time running out, forgets it, and the meeting then starts
    /// afresh. Asked meanwhile, the node says it was fenced with the room.
    #[test]
    fn a_fenced_room_reopens_with_its_history_until_a_peer_may_have_held_the_meeting() {
        let now = Instant::now();
        let all = views("a", &["a", "b", "c"], now);
        let fence = |p: &Placement, m: &MeetingId| {
            let room = live_room(p, m, now);
            let (seq, _) = room.publish("u", "hello").expect("published");
            assert_eq!(p.freeze_all(close::GOING_AWAY, now), 1);
            assert!(p.live(m).is_none(), "a fence closes the room");
            assert_eq!(p.frozen_for(m, now), Some(Duration::ZERO));
            (room.incarnation(), seq)
        };
        let reopened = |p: &Placement, m: &MeetingId| {
            let room = live_room(p, m, now);
            let h = room.close_for_move().expect("open");
            (Arc::<str>::from(h.room.as_str()), h.seq)
        };
        let m = mid("standup");

        let p = placement("a");
        let before = fence(&p, &m);
        assert_eq!(reopened(&p, &m), before, "nobody opened it meanwhile");
        assert_eq!(p.frozen_for(&m, now), None, "reopened once");

        let p = placement("a");
        let before = fence(&p, &m);
        assert_eq!(p.answer_where(&m, &node("b"), &all, now).0, Holding::Fenced);
        assert_eq!(reopened(&p, &m), before, "a question alone changes nothing");

        let p = placement("a");
        let before = fence(&p, &m);
        let other = placement("b");
        let h = live_room(&other, &m, now).close_for_move().expect("open");
        assert_eq!(p.adopt(&h, ask()), HandoffOutcome::Adopted);
        assert_eq!(
            p.live(&m).map(|r| r.incarnation()),
            Some(Arc::from(h.room.as_str()))
        );
        assert_ne!(Arc::<str>::from(h.room.as_str()), before.0);
        assert_eq!(p.frozen_for(&m, now), None, "b's room replaced it");

        let p = placement("a");
        fence(&p, &m);
        p.reap(
            Duration::from_secs(3600),
            now + FROZEN_TTL - Duration::from_millis(1),
        );
        assert!(p.frozen_for(&m, now).is_some());
        p.reap(Duration::from_secs(3600), now + FROZEN_TTL);
        assert_eq!(p.frozen_for(&m, now), None, "kept FROZEN_TTL at most");
        let p = placement("a");
        fence(&p, &m);
        p.reap(Duration::from_secs(5), now + Duration::from_secs(5));
        assert_eq!(
            p.frozen_for(&m, now),
            None,
            "and no longer than rooms stay empty"
        );
    }
}
