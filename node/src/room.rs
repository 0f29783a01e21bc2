//! One meeting's room: its members, its seq and its recent history.
//!
//! Everything that must be ordered happens under the room's lock, which is
//! never held across an await: seq assignment, history append, and the
//! `try_send` into each member's bounded queue. So every member sees the
//! same events in the same order, and a slow member never stalls the others
//! (its queue overflows and it is dropped with 4002, to resume with `since`).

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

use crate::event::{Event, Kick};
use crate::history::Budget;
use crate::metrics::Metrics;
use roompin_shared::control::Handoff;
use roompin_shared::protocol::{close, ServerEvent};
use roompin_shared::MeetingId;

/// A member's end of the room: where its events go and how to kick it.
pub struct MemberHandle {
    pub conn_id: Arc<str>,
    pub user: Arc<str>,
    pub tx: mpsc::Sender<Arc<Event>>,
    pub kick: Arc<Kick>,
}

/// The room was closed (its meeting moved away); look it up again.
#[derive(Debug)]
pub struct Closed;

/// Where a reconnecting member left off.
#[derive(Clone, Copy, Debug)]
pub struct Resume<'a> {
    /// The last seq it saw.
    pub since: u64,
    /// The incarnation that seq belongs to, if the client said.
    pub room: Option<&'a str>,
}

/// What a new member gets before the live stream.
pub struct Joined {
    pub welcome: Arc<Event>,
    /// History after `since`, oldest first.
    pub replay: Vec<Arc<Event>>,
}

pub struct Room {
    pub meeting_id: MeetingId,
    node_id: Arc<str>,
    history_events: usize,
    budget: Arc<Budget>,
    metrics: Metrics,
    state: Mutex<State>,
}

struct State {
    /// The room's incarnation id: see `ServerEvent::Welcome::room`.
    incarnation: Arc<str>,
    seq: u64,
    members: Vec<MemberHandle>,
    history: VecDeque<Arc<Event>>,
    history_bytes: usize,
    empty_since: Option<Instant>,
    closed: bool,
}

impl Room {
    pub fn new(
        meeting_id: MeetingId,
        node_id: Arc<str>,
        history_events: usize,
        budget: Arc<Budget>,
        metrics: Metrics,
    ) -> Room {
        Room {
            meeting_id,
            node_id,
            history_events,
            budget,
            metrics,
            state: Mutex::new(State {
                incarnation: Arc::from(format!("{:016x}", rand::random::<u64>())),
                seq: 0,
                members: Vec::new(),
                history: VecDeque::new(),
                history_bytes: 0,
                empty_since: Some(Instant::now()),
                closed: false,
            }),
        }
    }

    /// Adds a member. Its welcome carries the seq *before* its own join, and
    /// its own join event reaches it too, so from the welcome on it sees seqs
    /// rise by exactly one.
    ///
    /// A resume (`since`) from this incarnation replays what came after it;
    /// from another incarnation (`room` differs: the client's seqs count in a
    /// numbering this room does not share) it replays all retained history,
    /// with `recovered: false`. A closed room hands the member back, to join
    /// the room that replaced it.
    pub fn join(
        &self,
        member: MemberHandle,
        resume: Option<Resume<'_>>,
    ) -> Result<Joined, MemberHandle> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(member);
        }
        let (replay, recovered) = match resume {
            None => (Vec::new(), None),
            Some(r) if r.room.is_some_and(|room| room != &*st.incarnation) => {
                (st.history.iter().cloned().collect(), Some(false))
            }
            Some(Resume { since, .. }) => {
                let oldest = st.history.front().map_or(st.seq + 1, |e| e.seq);
                let recovered = since <= st.seq && oldest <= since + 1;
                let replay = st
                    .history
                    .iter()
                    .filter(|e| e.seq > since)
                    .cloned()
                    .collect();
                (replay, Some(recovered))
            }
        };
        let welcome = Event::new(&ServerEvent::Welcome {
            meeting_id: self.meeting_id.to_string(),
            node: self.node_id.to_string(),
            conn_id: member.conn_id.to_string(),
            room: st.incarnation.to_string(),
            seq: st.seq,
            members: st.members.len() + 1,
            recovered,
        });
        let (conn_id, user) = (member.conn_id.clone(), member.user.clone());
        st.members.push(member);
        st.empty_since = None;
        st.seq += 1;
        let join = ServerEvent::Join {
            meeting_id: self.meeting_id.to_string(),
            seq: st.seq,
            conn_id: conn_id.to_string(),
            user: user.to_string(),
            members: st.members.len(),
        };
        self.broadcast(&mut st, &join);
        Ok(Joined { welcome, replay })
    }

    /// Removes a member that left on its own (or was dropped by its session).
    pub fn leave(&self, conn_id: &str) {
        let mut st = self.state.lock();
        if let Some(pos) = st.members.iter().position(|m| &*m.conn_id == conn_id) {
            let gone = st.members.swap_remove(pos);
            self.announce_leave(&mut st, &gone);
        }
    }

    /// Broadcasts a chat message; returns its seq and the incarnation it
    /// counts in.
    pub fn publish(&self, from: &str, text: &str) -> Result<(u64, Arc<str>), Closed> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(Closed);
        }
        st.seq += 1;
        let event = ServerEvent::Message {
            meeting_id: self.meeting_id.to_string(),
            seq: st.seq,
            from: from.to_owned(),
            text: text.to_owned(),
            ts: unix_ms(),
        };
        self.broadcast(&mut st, &event);
        Ok((st.seq, st.incarnation.clone()))
    }

    /// Closes the room for a move: no one can join or publish any more. The
    /// caller sends the handoff to the new owner, then kicks the returned
    /// members with 4001, so they reconnect only once their history is there.
    /// `None` if the room was closed already (another push moved it).
    pub fn close_for_move(&self) -> Option<(Handoff, Vec<MemberHandle>)> {
        let mut st = self.state.lock();
        if st.closed {
            return None;
        }
        st.closed = true;
        let handoff = Handoff {
            meeting_id: self.meeting_id.to_string(),
            room: st.incarnation.to_string(),
            seq: st.seq,
            events: st
                .history
                .iter()
                .map(|e| e.json.as_str().to_owned())
                .collect(),
        };
        let members = std::mem::take(&mut st.members);
        self.release_history(&mut st);
        Some((handoff, members))
    }

    /// Takes over a moved room's seq and history, if this room has no events
    /// of its own yet (else a client that raced ahead already started a new
    /// numbering, which is kept). Returns whether it was adopted.
    pub fn adopt(&self, handoff: &Handoff) -> bool {
        let mut st = self.state.lock();
        if st.closed || st.seq > 0 || handoff.seq == 0 {
            return false;
        }
        st.seq = handoff.seq;
        if !handoff.room.is_empty() {
            st.incarnation = Arc::from(handoff.room.as_str());
        }
        for json in &handoff.events {
            let Ok(event) = serde_json::from_str::<ServerEvent>(json) else {
                continue;
            };
            let Some(seq) = event.seq().filter(|s| *s <= handoff.seq) else {
                continue;
            };
            self.remember(&mut st, Event::from_json(seq, event.kind(), json.clone()));
        }
        true
    }

    /// The room as `GET /control/rooms` reports it.
    pub fn info(&self) -> roompin_shared::control::RoomInfo {
        let st = self.state.lock();
        roompin_shared::control::RoomInfo {
            meeting_id: self.meeting_id.to_string(),
            room: st.incarnation.to_string(),
            seq: st.seq,
            members: st.members.len(),
        }
    }

    /// Closes the room and kicks everyone with `code` (node shutdown).
    pub fn close_all(&self, code: u16) {
        let mut st = self.state.lock();
        st.closed = true;
        for m in st.members.drain(..) {
            m.kick.kick(code);
        }
        self.release_history(&mut st);
    }

    /// True when the room has had no members for at least `idle`; it is
    /// then closed, so a racing join looks the meeting up again.
    pub fn close_if_idle(&self, idle: std::time::Duration) -> bool {
        let mut st = self.state.lock();
        let expired = st.members.is_empty() && st.empty_since.is_some_and(|t| t.elapsed() >= idle);
        if expired {
            st.closed = true;
            self.release_history(&mut st);
        }
        expired
    }

    /// Assigns nothing: the caller has set `st.seq` for this event already.
    /// A member whose queue overflows is dropped (4002), and its departure
    /// is itself an event, which may overflow others. Departures are
    /// announced from a queue, not by recursion: a nested drop used to
    /// invalidate the outer loop's indices (a panic under a join storm into
    /// a 1,000-member room), and a cascade could recurse a thousand deep.
    fn broadcast(&self, st: &mut State, event: &ServerEvent) {
        let mut gone = VecDeque::new();
        self.deliver(st, event, &mut gone);
        while let Some(m) = gone.pop_front() {
            m.kick.kick(close::SLOW_CONSUMER);
            self.metrics.slow_consumers.inc();
            let leave = self.leave_event(st, &m);
            self.deliver(st, &leave, &mut gone);
        }
    }

    /// Queues `event` to every member; moves those whose queue is full to
    /// `gone`.
    fn deliver(&self, st: &mut State, event: &ServerEvent, gone: &mut VecDeque<MemberHandle>) {
        let event = Event::new(event);
        self.remember(st, event.clone());
        let started = Instant::now();
        let mut slow = Vec::new();
        for (i, m) in st.members.iter().enumerate() {
            if m.tx.try_send(event.clone()).is_err() {
                slow.push(i);
            }
        }
        self.metrics
            .broadcast_seconds
            .observe(started.elapsed().as_secs_f64());
        // Last index first, so the indices still to remove stay valid.
        for i in slow.into_iter().rev() {
            gone.push_back(st.members.swap_remove(i));
        }
    }

    /// Takes the next seq for `gone`'s leave.
    fn leave_event(&self, st: &mut State, gone: &MemberHandle) -> ServerEvent {
        st.seq += 1;
        if st.members.is_empty() {
            st.empty_since = Some(Instant::now());
        }
        ServerEvent::Leave {
            meeting_id: self.meeting_id.to_string(),
            seq: st.seq,
            conn_id: gone.conn_id.to_string(),
            user: gone.user.to_string(),
            members: st.members.len(),
        }
    }

    fn announce_leave(&self, st: &mut State, gone: &MemberHandle) {
        let leave = self.leave_event(st, gone);
        self.broadcast(st, &leave);
    }

    /// Appends to history within the per-room count and the node's bytes.
    fn remember(&self, st: &mut State, event: Arc<Event>) {
        let cost = event.cost();
        while !st.history.is_empty()
            && (st.history.len() >= self.history_events || !self.budget.fits(cost))
        {
            if let Some(old) = st.history.pop_front() {
                st.history_bytes -= old.cost();
                self.budget.release(old.cost());
            }
        }
        if self.history_events > 0 && self.budget.take(cost) {
            st.history_bytes += cost;
            st.history.push_back(event);
        }
    }

    fn release_history(&self, st: &mut State) {
        self.budget.release(st.history_bytes);
        st.history_bytes = 0;
        st.history.clear();
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    fn metrics() -> Metrics {
        static M: OnceLock<Metrics> = OnceLock::new();
        M.get_or_init(|| Metrics::register().expect("metrics register once"))
            .clone()
    }

    /// Members that never read, with queues of 1 to 5 events: joins
    /// overflow several at once, and their leaves overflow others in turn.
    /// This used to panic (a nested drop invalidated the outer loop's
    /// indices).
    #[test]
    fn a_cascade_of_slow_consumers_neither_panics_nor_skips_a_seq() {
        let budget = Arc::new(Budget::new(1 << 20, metrics().history_bytes.clone()));
        let room = Room::new(
            MeetingId::parse("cascade", "meeting_id").expect("valid id"),
            Arc::from("n"),
            10_000,
            budget,
            metrics(),
        );
        let mut kicks = Vec::new();
        let mut receivers = Vec::new();
        for i in 0..200 {
            let (tx, rx) = mpsc::channel(1 + (i * 7) % 5);
            let kick = Arc::new(Kick::default());
            let member = MemberHandle {
                conn_id: Arc::from(format!("c{i}").as_str()),
                user: Arc::from("u"),
                tx,
                kick: kick.clone(),
            };
            assert!(room.join(member, None).is_ok());
            kicks.push(kick);
            receivers.push(rx);
        }
        let st = room.state.lock();
        let kicked = kicks.iter().filter(|k| k.code().is_some()).count();
        assert!(kicked > 0, "nobody overflowed");
        assert_eq!(kicked + st.members.len(), 200);
        assert!(kicks
            .iter()
            .filter_map(|k| k.code())
            .all(|c| c == close::SLOW_CONSUMER));
        let seqs: Vec<u64> = st.history.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=st.seq).collect::<Vec<_>>(),
            "seqs must be gapless"
        );
        // 200 joins and one leave per kicked member.
        assert_eq!(st.seq as usize, 200 + kicked);
    }
}
