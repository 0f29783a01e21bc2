//! One meeting's room: its members, its seq and its recent history.
//!
//! Everything that must be ordered happens under the room's lock, which is
//! never held across an await: seq assignment, history append, and the
//! `try_send` into each member's bounded queue. So every member sees the
//! same events in the same order, and a slow member never stalls the others
//! (its queue overflows and it is dropped with 4002, to resume with `since`).
//!
//! The history itself, and the node-wide budget it is kept within, are
//! `history.rs`'s business: the room appends, replays and releases, and
//! after each change, with its lock released, lets the pool settle.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

use crate::event::{Event, Kick};
use crate::history::{History, Holder, Locking, Pool};
use crate::lease::Lease;
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

/// The room is closed (its meeting is moving or moved away, or the node
/// lost the control plane and fenced itself); look it up again.
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

/// What every room of a node shares: where its events are counted and
/// bounded, and the lease that lets it serve.
#[derive(Clone)]
pub struct RoomEnv {
    pub node_id: Arc<str>,
    /// The node's history budget, which every room's history draws on.
    pub history: Arc<Pool>,
    pub metrics: Metrics,
    /// A room serves (joins, publishes) only while the node's lease holds:
    /// checked on every operation, so that a process that was paused past
    /// its lease cannot act on a room before its fence task runs.
    pub lease: Arc<Lease>,
}

/// Which retained events a (re)joining member is sent before the live stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    Nothing,
    /// Every retained event with a seq above this one.
    After(u64),
    /// Every retained event: the client's seqs count in another incarnation.
    All,
}

/// The resume rules of docs/PROTOCOL.md ("Resuming"): what to replay, and
/// `recovered` (absent when the client did not resume). `oldest` is the seq
/// of the oldest retained event, if any.
///
/// - A resume from another incarnation (`since_room` differs) says nothing
///   about this numbering: replay all, `recovered: false`.
/// - Otherwise nothing was lost when `since` is not ahead of the room and
///   the history reaches back to `since + 1` (or there is nothing after
///   `since` to hold).
pub fn resume_rule(
    resume: Option<Resume<'_>>,
    incarnation: &str,
    seq: u64,
    oldest: Option<u64>,
) -> (Replay, Option<bool>) {
    match resume {
        None => (Replay::Nothing, None),
        Some(r) if r.room.is_some_and(|room| room != incarnation) => (Replay::All, Some(false)),
        Some(Resume { since, .. }) => {
            let oldest = oldest.unwrap_or(seq + 1);
            let recovered = since <= seq && oldest <= since + 1;
            (Replay::After(since), Some(recovered))
        }
    }
}

pub struct Room {
    pub meeting_id: MeetingId,
    env: RoomEnv,
    /// Shared with the history pool (weakly), whose sweep takes this lock
    /// to evict from this room's history.
    state: Arc<Mutex<State>>,
}

struct State {
    /// The room's incarnation id: see `ServerEvent::Welcome::room`.
    incarnation: Arc<str>,
    seq: u64,
    members: Vec<MemberHandle>,
    history: History,
    empty_since: Option<Instant>,
    closed: bool,
    /// Members that left while the room was not serving, announced if it
    /// reopens.
    leaves_held: Vec<MemberHandle>,
}

/// The sweep reaches a room's history under the room's own lock.
impl Holder for Mutex<State> {
    fn with_history(&self, locking: Locking, f: &mut dyn FnMut(&mut History)) -> bool {
        let guard = match locking {
            Locking::Wait => Some(self.lock()),
            Locking::Try => self.try_lock(),
        };
        guard.map(|mut st| f(&mut st.history)).is_some()
    }
}

impl Room {
    /// A room that starts afresh: a new incarnation, seq 0, no history.
    pub fn new(meeting_id: MeetingId, env: RoomEnv) -> Room {
        let incarnation = Arc::from(format!("{:016x}", rand::random::<u64>()));
        Room::with(meeting_id, env, incarnation, 0)
    }

    /// The room another node handed over: its incarnation, its seq and its
    /// retained history, so that resuming clients see `recovered: true`.
    /// Events that do not parse, claim a seq past the handoff's, or are not
    /// in rising seq order are dropped (the sender's history is trusted no
    /// further than that; replay relies on the order).
    ///
    /// It does not settle the pool (it is built under the placement lock);
    /// its first member's join does.
    pub fn from_handoff(meeting_id: MeetingId, env: RoomEnv, handoff: &Handoff) -> Room {
        let room = Room::with(
            meeting_id,
            env,
            Arc::from(handoff.room.as_str()),
            handoff.seq,
        );
        {
            let mut st = room.state.lock();
            let mut last = 0;
            for json in &handoff.events {
                let Ok(event) = serde_json::from_str::<ServerEvent>(json) else {
                    continue;
                };
                let Some(seq) = event.seq().filter(|s| *s <= handoff.seq && *s > last) else {
                    continue;
                };
                last = seq;
                st.history
                    .append(Event::from_json(seq, event.kind(), json.clone()));
            }
        }
        room
    }

    fn with(meeting_id: MeetingId, env: RoomEnv, incarnation: Arc<str>, seq: u64) -> Room {
        let state = Arc::new_cyclic(|me: &Weak<Mutex<State>>| {
            let holder: Weak<dyn Holder> = me.clone();
            Mutex::new(State {
                incarnation,
                seq,
                members: Vec::new(),
                history: History::new(&env.history, holder),
                empty_since: Some(Instant::now()),
                closed: false,
                leaves_held: Vec::new(),
            })
        });
        Room {
            meeting_id,
            env,
            state,
        }
    }

    /// Whether the room may serve now: not closed, and the lease holds.
    fn serving(&self, st: &State) -> bool {
        !st.closed && self.env.lease.holds(Instant::now())
    }

    /// The room's incarnation.
    pub fn incarnation(&self) -> Arc<str> {
        self.state.lock().incarnation.clone()
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
        let joined = self.join_locked(member, resume);
        self.env.history.settle();
        joined
    }

    fn join_locked(
        &self,
        member: MemberHandle,
        resume: Option<Resume<'_>>,
    ) -> Result<Joined, MemberHandle> {
        let mut st = self.state.lock();
        if !self.serving(&st) {
            return Err(member);
        }
        let oldest = st.history.oldest_seq();
        let (replay, recovered) = resume_rule(resume, &st.incarnation, st.seq, oldest);
        let replay = match replay {
            Replay::Nothing => Vec::new(),
            Replay::All => st.history.all(),
            Replay::After(since) => st.history.after(since),
        };
        let welcome = Event::new(&ServerEvent::Welcome {
            meeting_id: self.meeting_id.to_string(),
            node: self.env.node_id.to_string(),
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
    ///
    /// A room that is not serving (closed for a move, or fenced) takes no
    /// seq for it: its handoff is on its way, and an event here would give
    /// a seq the new holder gives to another event. The leave is announced
    /// if the room reopens, and dropped if it moved (its members rejoin the
    /// new holder, and those gone never left there).
    pub fn leave(&self, conn_id: &str) {
        {
            let mut st = self.state.lock();
            if let Some(pos) = st.members.iter().position(|m| &*m.conn_id == conn_id) {
                let gone = st.members.swap_remove(pos);
                if self.serving(&st) {
                    self.announce_leave(&mut st, &gone);
                } else {
                    st.leaves_held.push(gone);
                }
            }
        }
        self.env.history.settle();
    }

    /// Broadcasts a chat message; returns its seq and the incarnation it
    /// counts in.
    pub fn publish(&self, from: &str, text: &str) -> Result<(u64, Arc<str>), Closed> {
        let published = self.publish_locked(from, text);
        self.env.history.settle();
        published
    }

    fn publish_locked(&self, from: &str, text: &str) -> Result<(u64, Arc<str>), Closed> {
        let mut st = self.state.lock();
        if !self.serving(&st) {
            return Err(Closed);
        }
        st.seq += 1;
        let seq = st.seq;
        let event = ServerEvent::Message {
            meeting_id: self.meeting_id.to_string(),
            seq,
            from: from.to_owned(),
            text: text.to_owned(),
            ts: unix_ms(),
        };
        // The broadcast may drop slow consumers, whose leaves take the next
        // seqs: the message's own seq is the one taken above.
        self.broadcast(&mut st, &event);
        self.env.metrics.events_received.inc();
        Ok((seq, st.incarnation.clone()))
    }

    /// Whether the room serves now (open, and the node's lease holds).
    pub fn is_serving(&self) -> bool {
        self.serving(&self.state.lock())
    }

    /// Closes the room for a move: from now on nobody joins or publishes
    /// here (publishes wait for the move's outcome instead). The members
    /// stay connected: once the new holder has adopted the returned handoff
    /// they are sent on with [`Room::close_all`] (4001); if it refused, the room
    /// [`Room::reopen`]s and they never notice. `None` if the room was
    /// closed already.
    pub fn close_for_move(&self) -> Option<Handoff> {
        let mut st = self.state.lock();
        if st.closed {
            return None;
        }
        st.closed = true;
        Some(Handoff {
            meeting_id: self.meeting_id.to_string(),
            room: st.incarnation.to_string(),
            seq: st.seq,
            events: st.history.snapshot(),
        })
    }

    /// Undoes [`Room::close_for_move`] after a refused handoff.
    pub fn reopen(&self) {
        let mut st = self.state.lock();
        st.closed = false;
        for gone in std::mem::take(&mut st.leaves_held) {
            self.announce_leave(&mut st, &gone);
        }
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

    /// Sends every member away with `code`, keeping the room's history: a
    /// room about to be handed over sends its members on first, so that no
    /// client sees two nodes at once; they wait at the new holder until the
    /// handoff lands. If the room reopens instead, they find it again.
    pub fn send_members_away(&self, code: u16) {
        let mut st = self.state.lock();
        for m in st.members.drain(..) {
            m.kick.kick(code);
        }
        if st.empty_since.is_none() {
            st.empty_since = Some(Instant::now());
        }
    }

    /// Closes the room for good, kicks everyone with `code`, and frees its
    /// history: a move that landed (4001), node shutdown (1001), a fence.
    pub fn close_all(&self, code: u16) {
        let mut st = self.state.lock();
        st.closed = true;
        for m in st.members.drain(..) {
            m.kick.kick(code);
        }
        st.history.release();
    }

    /// True when the room has had no members for at least `idle`; it is
    /// then closed, so a racing join looks the meeting up again.
    pub fn close_if_idle(&self, idle: std::time::Duration) -> bool {
        let mut st = self.state.lock();
        let expired = st.members.is_empty() && st.empty_since.is_some_and(|t| t.elapsed() >= idle);
        if expired {
            st.closed = true;
            st.history.release();
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
            self.env.metrics.slow_consumers.inc();
            let leave = self.leave_event(st, &m);
            self.deliver(st, &leave, &mut gone);
        }
    }

    /// Queues `event` to every member; moves those whose queue is full to
    /// `gone`.
    fn deliver(&self, st: &mut State, event: &ServerEvent, gone: &mut VecDeque<MemberHandle>) {
        let event = Event::new(event);
        st.history.append(event.clone());
        let started = Instant::now();
        let mut slow = Vec::new();
        for (i, m) in st.members.iter().enumerate() {
            if m.tx.try_send(event.clone()).is_err() {
                slow.push(i);
            }
        }
        self.env
            .metrics
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
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::history::HistoryMetrics;
    use std::sync::OnceLock;

    fn metrics() -> Metrics {
        static M: OnceLock<Metrics> = OnceLock::new();
        M.get_or_init(|| Metrics::register().expect("metrics register once"))
            .clone()
    }

    pub(crate) fn env(history_bytes: usize) -> RoomEnv {
        RoomEnv {
            node_id: Arc::from("n"),
            history: Arc::new(Pool::new(
                10_000,
                history_bytes,
                HistoryMetrics::unregistered(),
            )),
            metrics: metrics(),
            lease: Arc::new(Lease::forever()),
        }
    }

    #[test]
    fn resume_rules() {
        let r = |since, room| Some(Resume { since, room });
        #[rustfmt::skip]
        type Case = (Option<Resume<'static>>, u64, Option<u64>, Replay, Option<bool>);
        let cases: Vec<Case> = vec![
            // resume, room seq, oldest retained, replay, recovered
            (None, 10, Some(1), Replay::Nothing, None),
            (r(10, None), 10, Some(1), Replay::After(10), Some(true)),
            (r(4, Some("inc")), 10, Some(1), Replay::After(4), Some(true)),
            (r(4, None), 10, Some(5), Replay::After(4), Some(true)),
            (r(4, None), 10, Some(6), Replay::After(4), Some(false)),
            (r(0, None), 0, None, Replay::After(0), Some(true)),
            (r(10, None), 10, None, Replay::After(10), Some(true)),
            (r(7, None), 10, None, Replay::After(7), Some(false)),
            (r(11, None), 10, Some(1), Replay::After(11), Some(false)),
            (r(3, Some("other")), 10, Some(1), Replay::All, Some(false)),
        ];
        for (resume, seq, oldest, replay, recovered) in cases {
            assert_eq!(
                resume_rule(resume, "inc", seq, oldest),
                (replay, recovered),
                "{resume:?} seq {seq} oldest {oldest:?}"
            );
        }
    }

    fn member(i: usize, queue: usize) -> (MemberHandle, Arc<Kick>, mpsc::Receiver<Arc<Event>>) {
        let (tx, rx) = mpsc::channel(queue);
        let kick = Arc::new(Kick::default());
        let m = MemberHandle {
            conn_id: Arc::from(format!("c{i}").as_str()),
            user: Arc::from("u"),
            tx,
            kick: kick.clone(),
        };
        (m, kick, rx)
    }

    fn meeting(id: &str) -> MeetingId {
        MeetingId::parse(id, "meeting_id").expect("valid id")
    }

    /// A handed-over room continues its incarnation and seq, and a member
    /// that resumes from before the move gets exactly what it missed.
    #[test]
    fn a_room_built_from_a_handoff_resumes_with_recovered_true() {
        let old = Room::new(meeting("moving"), env(1 << 20));
        let (m, _k, _rx) = member(0, 64);
        assert!(old.join(m, None).is_ok());
        for i in 0..5 {
            assert!(old.publish("u", &format!("m{i}")).is_ok());
        }
        let handoff = old.close_for_move().expect("open room closes");
        assert!(old.close_for_move().is_none(), "closing twice");
        assert!(old.publish("u", "late").is_err(), "a closed room publishes");
        let new = Room::from_handoff(meeting("moving"), env(1 << 20), &handoff);
        assert_eq!(new.incarnation().as_ref(), handoff.room.as_str());
        let (m, _k, _rx) = member(1, 64);
        let resume = Resume {
            since: 3,
            room: Some(&handoff.room),
        };
        let joined = new.join(m, Some(resume)).ok().expect("joins");
        let seqs: Vec<u64> = joined.replay.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![4, 5, 6]);
        assert!(joined.welcome.json.as_str().contains("\"recovered\":true"));
        old.reopen();
        assert!(old.publish("u", "after a refused handoff").is_ok());
    }

    /// A member that leaves a room in transit takes no seq there (the new
    /// holder numbers on from the handoff); if the room reopens, its leave
    /// is announced then.
    #[test]
    fn a_room_in_transit_numbers_nothing() {
        let room = Room::new(meeting("transit"), env(1 << 20));
        let (a, _ka, mut rx) = member(0, 64);
        let (b, _kb, _rxb) = member(1, 64);
        assert!(room.join(a, None).is_ok());
        assert!(room.join(b, None).is_ok());
        let handoff = room.close_for_move().expect("closes");
        room.leave("c1");
        assert_eq!(
            room.info().seq,
            handoff.seq,
            "a leave took a seq in transit"
        );
        while rx.try_recv().is_ok() {}
        room.reopen();
        let leave = rx.try_recv().expect("the held leave, on reopening");
        assert_eq!((leave.kind, leave.seq), ("leave", handoff.seq + 1));
    }

    /// The issue this policy fixes: on a node whose history budget busy
    /// rooms filled, a room that starts after still keeps its history, and
    /// its member resumes a short drop with `recovered: true`.
    #[test]
    fn a_new_room_on_a_full_node_resumes_with_recovered_true() {
        let e = env(64 << 10);
        let busy: Vec<Room> = (0..4)
            .map(|i| Room::new(meeting(&format!("busy{i}")), e.clone()))
            .collect();
        let mut keep = Vec::new();
        for (i, room) in busy.iter().enumerate() {
            let (m, _k, rx) = member(i, 4096);
            assert!(room.join(m, None).is_ok());
            keep.push(rx);
            for n in 0..500 {
                assert!(room.publish("u", &format!("{n:0>200}")).is_ok());
            }
        }
        assert!(
            e.history.used() > (60 << 10),
            "the busy rooms filled the node"
        );
        let new = Room::new(meeting("new"), e.clone());
        let (m, _k, _rx) = member(9, 64);
        assert!(new.join(m, None).is_ok());
        for n in 0..3 {
            assert!(new.publish("u", &format!("{n:0>200}")).is_ok());
        }
        new.leave("c9");
        let (m, _k, _rx) = member(10, 64);
        let resume = Resume {
            since: 4,
            room: Some(&new.incarnation()),
        };
        let joined = new.join(m, Some(resume)).ok().expect("joins");
        assert!(
            joined.welcome.json.as_str().contains("\"recovered\":true"),
            "{}",
            joined.welcome.json.as_str()
        );
        let seqs: Vec<u64> = joined.replay.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![5], "the replay is the member's own leave");
        // All of it is still there, in fact: the busy rooms' oldest went.
        assert_eq!(new.state.lock().history.oldest_seq(), Some(1));
        assert!(e.history.used() <= 64 << 10);
    }

    /// A handoff's events are kept only in rising seq order and up to its
    /// seq: replay and `recovered` rely on the order.
    #[test]
    fn a_handoff_keeps_only_rising_seqs_up_to_its_own() {
        let msg = |seq| {
            ServerEvent::Message {
                meeting_id: "h".into(),
                seq,
                from: "u".into(),
                text: "t".into(),
                ts: 0,
            }
            .to_json()
        };
        let handoff = Handoff {
            meeting_id: "h".into(),
            room: "0123456789abcdef".into(),
            seq: 6,
            events: vec![
                msg(3),
                msg(2),
                "not json".into(),
                msg(4),
                msg(4),
                msg(6),
                msg(9),
            ],
        };
        let room = Room::from_handoff(meeting("h"), env(1 << 20), &handoff);
        let seqs: Vec<u64> = room
            .state
            .lock()
            .history
            .all()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![3, 4, 6]);
    }

    /// A message that overflows slow members takes its seq before their
    /// leaves take theirs: the seq a publisher is told is the message's.
    #[test]
    fn a_publish_answers_its_own_seq_when_it_drops_slow_members() {
        let room = Room::new(meeting("slow"), env(1 << 20));
        let (fast, _k, mut fast_rx) = member(0, 64);
        let (slow, slow_kick, _slow_rx) = member(1, 2);
        assert!(room.join(fast, None).is_ok());
        assert!(room.join(slow, None).is_ok());
        // The slow member's queue holds its own join and one more.
        let (seq, _) = room.publish("u", "one").expect("publishes");
        let (seq2, _) = room.publish("u", "two").expect("publishes");
        assert!(slow_kick.code().is_some(), "the slow member was dropped");
        let mut message_seqs = Vec::new();
        while let Ok(e) = fast_rx.try_recv() {
            if e.kind == "message" {
                message_seqs.push(e.seq);
            }
        }
        assert_eq!(message_seqs, vec![seq, seq2]);
    }

    #[test]
    fn a_room_whose_lease_lapsed_refuses_joins_and_publishes() {
        let mut e = env(1 << 20);
        e.lease = Arc::new(Lease::expired());
        let room = Room::new(meeting("fenced"), e);
        let (m, _k, _rx) = member(0, 8);
        assert!(room.join(m, None).is_err());
        assert!(room.publish("u", "x").is_err());
    }

    /// Members that never read, with queues of 1 to 5 events: joins
    /// overflow several at once, and their leaves overflow others in turn.
    /// This used to panic (a nested drop invalidated the outer loop's
    /// indices).
    #[test]
    fn a_cascade_of_slow_consumers_neither_panics_nor_skips_a_seq() {
        let room = Room::new(meeting("cascade"), env(1 << 20));
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
        let seqs: Vec<u64> = st.history.all().iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=st.seq).collect::<Vec<_>>(),
            "seqs must be gapless"
        );
        // 200 joins and one leave per kicked member.
        assert_eq!(st.seq as usize, 200 + kicked);
    }
}
