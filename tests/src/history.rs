//! An operation log of a test run, and the checker that judges it.
//!
//! Every client of a test ([`crate::recorder`]) writes what it did and what
//! it saw into one shared [`History`]: each connect attempt, each `welcome`,
//! each room event, each end of a connection, each publish and each ack.
//! A poller writes what the nodes said they held (`GET /control/rooms`).
//! After the run, [`History::check`] replays the log per meeting and returns
//! a [`Verdict`]: the rule breaks it found, with evidence, and per-step
//! numbers (time until every client was back, joiner waits, deliveries).
//!
//! Why a log and not assertions inside the clients: the properties that
//! matter (one live room per meeting, every acknowledged publish delivered)
//! are about several clients and nodes at once, and a violation is only
//! useful with its evidence: who saw what, when, at which seq.
//!
//! The rules (see `check.rs` for the exact reasoning):
//! - **(a) one live room**: at no instant were two rooms of a meeting live
//!   on two nodes: from the node samples, and from the clients (two
//!   incarnations whose messages were stamped during overlapping times);
//! - **(b) one history**: within an incarnation every member saw the same
//!   event at each seq, and no member saw a gap or a repeat within a
//!   connection or across a resume that said `recovered: true`;
//! - **(c) no silent loss**: every acknowledged publish reached every
//!   member that was in the meeting from before the publish was sent until
//!   after it was acknowledged, and stayed (still connected at the end, or
//!   told of its loss with `recovered: false`);
//! - **(d) honest `recovered: false`**: only for a meeting whose node the
//!   test declared ([`History::memory_lost`]) as having lost its memory
//!   before that resume.
//!
//! Times are [`Stamp`]s: a monotonic clock read under the log's lock, so
//! the log is in time order. Tests build small synthetic histories with
//! [`History::manual`] and [`History::set_now`].

mod check;

pub use check::{Rule, StepReport, Summary, Verdict, Violation};

use roompin_shared::control::RoomInfo;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A point in the run: time since the history started.
pub type Stamp = Duration;

/// Index of a client in its history.
pub type ClientId = u32;

/// An interned string (meeting, node or room id) of one history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sym(u32);

/// What a client is; the checker holds each kind to what it promises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientKind {
    /// A WebSocket member that stays in its meeting.
    WsMember,
    /// An SSE member that stays in its meeting.
    SseMember,
    /// A member that leaves and rejoins (fresh, without `since`) on a timer.
    Churner,
    /// Publishes over `POST /messages`, to any meeting.
    Publisher,
}

impl ClientKind {
    /// Members that promise to stay: their convergence is measured.
    pub fn stays(self) -> bool {
        matches!(self, ClientKind::WsMember | ClientKind::SseMember)
    }

    fn label(self) -> &'static str {
        match self {
            ClientKind::WsMember => "ws",
            ClientKind::SseMember => "sse",
            ClientKind::Churner => "churn",
            ClientKind::Publisher => "pub",
        }
    }
}

/// Which member route a connect attempt used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Ws,
    Sse,
}

/// The room events of docs/PROTOCOL.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Message,
    Join,
    Leave,
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// A WebSocket close frame with this code.
    Closed(u16),
    /// SSE: the stream's last event was `moved`.
    Moved,
    /// The connection broke without a close (or a client-side timeout).
    Dropped,
    /// The client left on purpose (a churner's leave, or the test's stop).
    Left,
}

/// One recorded operation of a client.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A connect attempt through balancer `balancer` (an index into the
    /// client's list), resuming from `(since, since_room)` if set.
    Connect {
        balancer: usize,
        route: Route,
        since: Option<(u64, Sym)>,
    },
    /// The attempt got no `welcome` (refused, timed out, bad status).
    ConnectFailed {
        reason: String,
    },
    Welcome {
        node: Sym,
        room: Sym,
        seq: u64,
        recovered: Option<bool>,
    },
    /// A room event, counted in `room` (the connection's `welcome.room`).
    /// `digest` is a hash of its JSON text; `ts_ms` the node's `ts` of a
    /// message; `tag` the publish tag its text carries, if any.
    Event {
        room: Sym,
        seq: u64,
        kind: EventKind,
        digest: u64,
        ts_ms: Option<u64>,
        tag: Option<u64>,
    },
    Ended(End),
    PublishSent {
        tag: u64,
    },
    /// A publish was accepted: a `202` (HTTP) or the echo of the client's
    /// own message (WebSocket), at `seq` of incarnation `room`.
    PublishAcked {
        tag: u64,
        room: Sym,
        seq: u64,
    },
    PublishFailed {
        tag: u64,
        reason: String,
    },
}

/// An operation with its time, client and meeting.
#[derive(Clone, Debug)]
pub struct Entry {
    pub at: Stamp,
    pub client: ClientId,
    pub meeting: Sym,
    pub op: Op,
}

/// A client as registered.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    pub kind: ClientKind,
    /// The meeting of a member (a publisher's is empty).
    pub meeting: Sym,
    pub name: String,
}

/// One room of a node sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampledRoom {
    pub meeting: Sym,
    pub room: Sym,
    pub seq: u64,
    pub members: u32,
}

/// One poll of a node's `/control/rooms`: it was sent at `sent`, answered
/// at `received`, and the node's answer reflects one instant in between.
/// `rooms` is `None` when the poll failed or timed out.
#[derive(Clone, Debug)]
pub struct NodeSample {
    pub node: Sym,
    pub sent: Stamp,
    pub received: Stamp,
    pub rooms: Option<Vec<SampledRoom>>,
}

/// A declared loss of a node's memory: it was killed, or cut off long
/// enough that it must have dropped its rooms, between `from` and `to`
/// (`to` is when the memory was surely gone).
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryLoss {
    pub node: String,
    pub from: Stamp,
    pub to: Stamp,
}

/// Everything recorded, in time order (a snapshot the checker reads).
#[derive(Clone, Debug, Default)]
pub struct Log {
    names: Vec<String>,
    ids: HashMap<String, Sym>,
    pub clients: Vec<ClientInfo>,
    pub entries: Vec<Entry>,
    pub samples: Vec<NodeSample>,
    /// Step markers: from each stamp on, the run is in that step.
    pub steps: Vec<(Stamp, String)>,
    pub losses: Vec<MemoryLoss>,
    /// Set by [`History::finish`]; later records are ignored.
    pub finished: Option<Stamp>,
    /// Unix time (ms) at stamp zero, to place a message's `ts` (0 for a
    /// manual clock).
    pub unix_start_ms: u64,
}

impl Log {
    fn sym(&mut self, s: &str) -> Sym {
        if let Some(&sym) = self.ids.get(s) {
            return sym;
        }
        let sym = Sym(self.names.len() as u32);
        self.names.push(s.to_owned());
        self.ids.insert(s.to_owned(), sym);
        sym
    }

    /// The string of an interned id.
    pub fn name(&self, sym: Sym) -> &str {
        self.names
            .get(sym.0 as usize)
            .map(String::as_str)
            .unwrap_or("?")
    }

    /// The interned id of a string, if it was ever recorded.
    pub fn lookup(&self, s: &str) -> Option<Sym> {
        self.ids.get(s).copied()
    }

    /// A client's display name, e.g. `ws3@mtg-004`.
    pub fn client_name(&self, id: ClientId) -> &str {
        self.clients
            .get(id as usize)
            .map(|c| c.name.as_str())
            .unwrap_or("?")
    }
}

enum Clock {
    Real(Instant),
    /// Synthetic histories: time is what the test last set.
    Manual(AtomicU64),
}

/// The shared log of one test run. Cheap to record into from hundreds of
/// client tasks: one short lock per operation.
pub struct History {
    clock: Clock,
    tags: AtomicU64,
    log: Mutex<Log>,
}

impl History {
    /// A history on the real monotonic clock, starting now.
    pub fn new() -> Arc<History> {
        Arc::new(History {
            clock: Clock::Real(Instant::now()),
            tags: AtomicU64::new(1),
            log: Mutex::new(Log {
                unix_start_ms: unix_ms(),
                ..Log::default()
            }),
        })
    }

    /// A history whose clock only moves by [`History::set_now`], for
    /// synthetic histories in table tests.
    pub fn manual() -> Arc<History> {
        Arc::new(History {
            clock: Clock::Manual(AtomicU64::new(0)),
            tags: AtomicU64::new(1),
            log: Mutex::new(Log::default()),
        })
    }

    /// Sets a manual clock (ignored on a real one).
    pub fn set_now(&self, at: Stamp) {
        if let Clock::Manual(t) = &self.clock {
            t.store(at.as_micros() as u64, Ordering::SeqCst);
        }
    }

    /// Time since the history started.
    pub fn now(&self) -> Stamp {
        match &self.clock {
            Clock::Real(start) => start.elapsed(),
            Clock::Manual(t) => Duration::from_micros(t.load(Ordering::SeqCst)),
        }
    }

    /// A publish tag unique in this history (see [`tag_text`]).
    pub fn next_tag(&self) -> u64 {
        self.tags.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        // A panicking recorder task must not take the checker down with it.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a client and returns the handle it records through.
    /// `meeting` is the member's meeting ("" for a publisher).
    pub fn client(self: &Arc<Self>, kind: ClientKind, meeting: &str) -> ClientLog {
        let mut log = self.lock();
        let id = log.clients.len() as ClientId;
        let meeting_sym = log.sym(meeting);
        let name = if meeting.is_empty() {
            format!("{}{id}", kind.label())
        } else {
            format!("{}{id}@{meeting}", kind.label())
        };
        log.clients.push(ClientInfo {
            kind,
            meeting: meeting_sym,
            name,
        });
        ClientLog {
            history: self.clone(),
            id,
        }
    }

    fn record(&self, client: ClientId, meeting: Option<&str>, op: impl FnOnce(&mut Log) -> Op) {
        let mut log = self.lock();
        if log.finished.is_some() {
            return;
        }
        // Stamped under the lock, so entries are in time order.
        let at = self.now();
        let meeting = match meeting {
            Some(m) => log.sym(m),
            None => log
                .clients
                .get(client as usize)
                .map(|c| c.meeting)
                .unwrap_or(Sym(0)),
        };
        let op = op(&mut log);
        log.entries.push(Entry {
            at,
            client,
            meeting,
            op,
        });
    }

    /// Records one poll of a node's rooms (`None`: it failed).
    pub fn node_sample(
        &self,
        node: &str,
        sent: Stamp,
        received: Stamp,
        rooms: Option<&[RoomInfo]>,
    ) {
        let mut log = self.lock();
        if log.finished.is_some() {
            return;
        }
        let node = log.sym(node);
        let rooms = rooms.map(|rooms| {
            rooms
                .iter()
                .map(|r| SampledRoom {
                    meeting: log.sym(&r.meeting_id),
                    room: log.sym(&r.room),
                    seq: r.seq,
                    members: r.members as u32,
                })
                .collect()
        });
        log.samples.push(NodeSample {
            node,
            sent,
            received,
            rooms,
        });
    }

    /// Marks the start of a step of the test (e.g. "add node-d"); the
    /// verdict reports each step's numbers. Before the first mark the run is
    /// in a step called "start".
    pub fn step(&self, name: &str) {
        let mut log = self.lock();
        let at = self.now();
        log.steps.push((at, name.to_owned()));
    }

    /// Declares that `node` lost its memory between `from` and `to`:
    /// `recovered: false` for its meetings after `from` is then expected,
    /// and so is the loss of what it acknowledged before `to`.
    pub fn memory_lost(&self, node: &str, from: Stamp, to: Stamp) {
        self.lock().losses.push(MemoryLoss {
            node: node.to_owned(),
            from,
            to,
        });
    }

    /// Ends the recording: what clients record afterwards is ignored, and
    /// connections still open count as open at the end.
    pub fn finish(&self) {
        let mut log = self.lock();
        if log.finished.is_none() {
            log.finished = Some(self.now());
        }
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> Log {
        self.lock().clone()
    }

    /// Judges the run (see the module doc). Call it after [`History::finish`]
    /// (or it judges what was recorded so far, with open connections open).
    pub fn check(&self) -> Verdict {
        let log = self.snapshot();
        let end = log.finished.unwrap_or_else(|| self.now());
        check::check(&log, end)
    }

    /// Acknowledged publishes that a member still connected now should have
    /// received but has not (yet). A test waits for 0 before it finishes, so
    /// that deliveries in flight are not judged lost.
    pub fn pending_deliveries(&self) -> usize {
        let log = self.snapshot();
        let end = log.finished.unwrap_or_else(|| self.now());
        check::silent_losses(&log, end)
    }

    /// Waits (polling every 100 ms) until [`History::pending_deliveries`] is
    /// 0; false if it is not within `within`. A test stops its publishers,
    /// settles, then finishes, so that only real losses are judged.
    pub async fn settle(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.pending_deliveries() == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Where the staying members (WebSocket and SSE) are now: how many
    /// there are, how many have a welcomed, open connection, and on which
    /// nodes. A test waits on this (e.g. "all connected, none on node-b").
    pub fn presence(&self) -> Presence {
        let log = self.lock();
        let mut open: Vec<Option<Sym>> = vec![None; log.clients.len()];
        for e in &log.entries {
            let Some(state) = open.get_mut(e.client as usize) else {
                continue;
            };
            match e.op {
                Op::Welcome { node, .. } => *state = Some(node),
                Op::Connect { .. } | Op::ConnectFailed { .. } | Op::Ended(_) => *state = None,
                _ => {}
            }
        }
        let mut p = Presence::default();
        for (i, c) in log.clients.iter().enumerate() {
            if !c.kind.stays() {
                continue;
            }
            p.total += 1;
            if let Some(node) = open[i] {
                p.connected += 1;
                *p.on_node.entry(log.name(node).to_owned()).or_default() += 1;
            }
        }
        p
    }
}

/// Where the staying members are now (see [`History::presence`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Presence {
    pub total: usize,
    pub connected: usize,
    /// Connected members per node id.
    pub on_node: HashMap<String, usize>,
}

impl Presence {
    /// Every staying member is connected.
    pub fn all_connected(&self) -> bool {
        self.connected == self.total
    }

    /// Connected members on `node`.
    pub fn on(&self, node: &str) -> usize {
        self.on_node.get(node).copied().unwrap_or(0)
    }
}

/// A client's handle on the history: everything it records goes through it.
#[derive(Clone)]
pub struct ClientLog {
    history: Arc<History>,
    id: ClientId,
}

impl ClientLog {
    /// The client's index in the log (its name is `<kind><id>@<meeting>`).
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// The history it records into.
    pub fn history(&self) -> &Arc<History> {
        &self.history
    }

    /// A connect attempt through balancer `balancer`, resuming from
    /// `(since, since_room)` if set.
    pub fn connect(&self, balancer: usize, route: Route, since: Option<(u64, &str)>) {
        self.history.record(self.id, None, |log| Op::Connect {
            balancer,
            route,
            since: since.map(|(seq, room)| (seq, log.sym(room))),
        });
    }

    /// The current attempt got no welcome.
    pub fn connect_failed(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.history
            .record(self.id, None, |_| Op::ConnectFailed { reason });
    }

    /// The `welcome` of the current attempt.
    pub fn welcome(&self, node: &str, room: &str, seq: u64, recovered: Option<bool>) {
        self.history.record(self.id, None, |log| Op::Welcome {
            node: log.sym(node),
            room: log.sym(room),
            seq,
            recovered,
        });
    }

    /// A room event received on a connection whose welcome named `room`;
    /// `json` is the frame's text exactly as received.
    pub fn event(
        &self,
        room: &str,
        seq: u64,
        kind: EventKind,
        json: &str,
        ts_ms: Option<u64>,
        tag: Option<u64>,
    ) {
        let digest = digest(json);
        self.history.record(self.id, None, |log| Op::Event {
            room: log.sym(room),
            seq,
            kind,
            digest,
            ts_ms,
            tag,
        });
    }

    /// The current connection ended.
    pub fn ended(&self, end: End) {
        self.history.record(self.id, None, |_| Op::Ended(end));
    }

    /// A publish of [`tag_text`]`(tag)` to `meeting` is on its way.
    pub fn publish_sent(&self, meeting: &str, tag: u64) {
        self.history
            .record(self.id, Some(meeting), |_| Op::PublishSent { tag });
    }

    /// The publish was accepted as `seq` of incarnation `room`.
    pub fn publish_acked(&self, meeting: &str, tag: u64, room: &str, seq: u64) {
        self.history
            .record(self.id, Some(meeting), |log| Op::PublishAcked {
                tag,
                room: log.sym(room),
                seq,
            });
    }

    /// The publish was refused or got no answer.
    pub fn publish_failed(&self, meeting: &str, tag: u64, reason: impl Into<String>) {
        let reason = reason.into();
        self.history
            .record(self.id, Some(meeting), |_| Op::PublishFailed {
                tag,
                reason,
            });
    }
}

/// The digest the log keeps of an event's JSON: equal texts, equal digests
/// (`DefaultHasher::new` has fixed keys).
pub fn digest(json: &str) -> u64 {
    let mut h = DefaultHasher::new();
    json.hash(&mut h);
    h.finish()
}

/// The text a publish carries, so that receivers can name it: `t<tag>`.
pub fn tag_text(tag: u64) -> String {
    format!("t{tag}")
}

/// The tag of a message text written by [`tag_text`].
pub fn parse_tag(text: &str) -> Option<u64> {
    text.strip_prefix('t')?.parse().ok()
}

/// Unix time in milliseconds (to compare with a message's `ts`).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A stamp as seconds with milliseconds, e.g. `12.345s`.
pub fn fmt_stamp(at: Stamp) -> String {
    format!("{:.3}s", at.as_secs_f64())
}
