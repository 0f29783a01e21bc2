//! The checker: replays a [`Log`] client by client and meeting by meeting,
//! and judges rules (a) to (d) of the module doc of `history.rs`.
//!
//! It decides only; it never talks to the network. Everything it concludes
//! is from the log, and it errs on the side of *not* reporting what the log
//! cannot prove: a violation always comes with evidence that shows it.
//!
//! **(a) from node samples.** A poll answers at one unknown instant between
//! its `sent` and `received` stamps. Consecutive successful polls of one node
//! that list the same room form a *run*; the room was surely live on that
//! node from the first poll's answer to the last poll's send (assuming it did
//! not leave and come back with the same incarnation between two polls 50 ms
//! apart). A split is two runs of one meeting on two nodes whose sure spans
//! overlap, or a poll window of one that lies inside the other's sure span.
//! Two single polls taken around a handoff prove nothing, and are not
//! reported.
//!
//! **(a) from clients.** A message's `ts` is the node's clock when it took
//! its seq (all processes share one machine's clock). Two incarnations of one
//! meeting whose message stamps interleave both took publishes during
//! overlapping times: a split, however late the events were delivered.
//!
//! **(b).** Per client: after a fresh welcome the next event must be
//! `welcome.seq + 1`; after a `recovered: true` resume from `since` it must
//! be `since + 1`; then +1 each. After `recovered: false` the first event
//! may be anything (the replay starts where history does). The first digest
//! seen at each (meeting, incarnation, seq) is the reference for all others.
//!
//! **(c).** A *stint* is a member's stay in one incarnation: from a fresh
//! (or `recovered: false`) welcome through every `recovered: true` resume,
//! until it leaves, is told of a loss (`recovered: false`), or the run ends.
//! An acknowledged publish is expected at a member whose stint began before
//! the publish was sent and lasted past its ack, and that stayed: still
//! connected at the end, or told. Not received: a told member's loss is
//! allowed (rule (d) judges the telling); a loss on a node whose memory was
//! declared lost around the ack is excused; any other is a silent loss.
//!
//! **(d).** A `recovered: false` is justified when a node that held the
//! incarnation the client resumed from (seen in samples or welcomes) was
//! declared to have lost its memory, from a time before that welcome.

use super::{fmt_stamp, ClientId, ClientKind, End, EventKind, Log, Op, Stamp, Sym};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

/// How long before a declared memory loss an ack may still be lost: its
/// event may have been on its way to the members when the node went.
const IN_FLIGHT: Duration = Duration::from_secs(1);

/// The rule a violation breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// (a) two live rooms of one meeting at one instant.
    Split,
    /// (b) two members saw different events at one seq of one incarnation.
    Diverged,
    /// (b) a seq was skipped within a connection or across a resume that
    /// said `recovered: true`.
    Gap,
    /// (b) a seq came again, or went backwards.
    Duplicate,
    /// (b) `recovered: true` from another incarnation than `since_room`.
    RecoveredAcrossRooms,
    /// (c) an acknowledged publish never reached a member that stayed, and
    /// the member was never told.
    SilentLoss,
    /// (c) the event at an acknowledged seq is not the acknowledged message.
    AckMismatch,
    /// (d) `recovered: false` where no node was declared to lose its memory.
    UnjustifiedNotRecovered,
    /// The recorder broke its own rules: a harness bug, not the system's.
    ClientBug,
}

/// One rule break with what shows it.
#[derive(Clone, Debug)]
pub struct Violation {
    pub rule: Rule,
    pub meeting: String,
    /// When it happened (or was first visible).
    pub at: Stamp,
    /// Which clients or nodes, which times, which seqs.
    pub evidence: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:?}] meeting {} at {}: {}",
            self.rule,
            self.meeting,
            fmt_stamp(self.at),
            self.evidence
        )
    }
}

/// Totals over the whole run.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub meetings: usize,
    pub clients: BTreeMap<&'static str, usize>,
    pub connects: usize,
    pub failed_connects: usize,
    pub events: usize,
    pub publishes: usize,
    pub acks: usize,
    pub publish_failures: usize,
    pub samples: usize,
    pub failed_samples: usize,
    /// (ack, member) pairs rule (c) expects.
    pub expected: usize,
    pub delivered: usize,
    /// Not delivered, and the member was told (`recovered: false`).
    pub lost_told: usize,
    /// Not delivered, on a node declared to have lost its memory.
    pub lost_excused: usize,
    /// Not delivered, not told, not excused (each is a violation at the end
    /// of a run; while it runs, deliveries still in flight).
    pub silent_losses: usize,
    /// Room events a member received more than once.
    pub duplicated: usize,
    pub not_recovered: usize,
    pub splits: usize,
    /// The longest split proven, if any.
    pub longest_split: Option<Duration>,
}

/// The numbers of one step of the test.
#[derive(Clone, Debug, Default)]
pub struct StepReport {
    pub name: String,
    pub from: Stamp,
    pub to: Stamp,
    /// Staying members whose connection ended during the step.
    pub disrupted: usize,
    /// Time from the step's start until every disrupted member had its
    /// welcome again; `None` if one never came back.
    pub back_in_meeting: Option<Duration>,
    /// Disrupted members that never came back.
    pub never_back: usize,
    /// Connect attempts that began in the step, and those of them without a
    /// welcome.
    pub joins: usize,
    pub failed_joins: usize,
    /// Connect → welcome of the attempts that got one.
    pub join_wait_p99: Duration,
    pub join_wait_max: Duration,
    /// Which attempt waited longest: client, when it connected.
    pub slowest_join: Option<String>,
    /// Rule (c) outcomes of the publishes acknowledged in the step.
    pub delivered: usize,
    pub lost: usize,
    pub duplicated: usize,
    /// Publish sent → member received, for the delivered ones.
    pub delivery_p99: Duration,
    pub delivery_max: Duration,
    pub splits: usize,
}

/// What the checker concluded.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    /// Every violation, earliest first.
    pub violations: Vec<Violation>,
    pub summary: Summary,
    pub steps: Vec<StepReport>,
}

impl Verdict {
    /// No violation at all.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// How many violations break `rule`.
    pub fn count(&self, rule: Rule) -> usize {
        self.violations.iter().filter(|v| v.rule == rule).count()
    }

    /// The earliest violation.
    pub fn first(&self) -> Option<&Violation> {
        self.violations.first()
    }

    /// Panics with the whole report unless the run was clean.
    pub fn assert_clean(&self) {
        assert!(self.is_clean(), "the history has violations:\n{self}");
    }
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.summary;
        let clients: Vec<String> = s.clients.iter().map(|(k, n)| format!("{n} {k}")).collect();
        writeln!(
            f,
            "history: {} meetings, clients {}, {} connects ({} failed), {} events, {} publishes ({} acked, {} failed), {} node samples ({} failed)",
            s.meetings,
            clients.join(" + "),
            s.connects,
            s.failed_connects,
            s.events,
            s.publishes,
            s.acks,
            s.publish_failures,
            s.samples,
            s.failed_samples
        )?;
        writeln!(
            f,
            "deliveries: {} expected, {} delivered, {} lost ({} told, {} excused, {} silent), {} duplicated; recovered:false {}; splits {}{}",
            s.expected,
            s.delivered,
            s.lost_told + s.lost_excused + s.silent_losses,
            s.lost_told,
            s.lost_excused,
            s.silent_losses,
            s.duplicated,
            s.not_recovered,
            s.splits,
            s.longest_split
                .map(|d| format!(" (longest {})", ms(d)))
                .unwrap_or_default()
        )?;
        for st in &self.steps {
            let back = match st.back_in_meeting {
                Some(d) => ms(d),
                None => format!("NEVER ({} not back)", st.never_back),
            };
            writeln!(
                f,
                "step {:?} {}..{}: back in meeting after {back} ({} disrupted); joiner wait p99 {} max {} ({} joins, {} failed{}); delivered {} lost {} duplicated {}; delivery p99 {} max {}; splits {}",
                st.name,
                fmt_stamp(st.from),
                fmt_stamp(st.to),
                st.disrupted,
                ms(st.join_wait_p99),
                ms(st.join_wait_max),
                st.joins,
                st.failed_joins,
                st.slowest_join
                    .as_ref()
                    .map(|s| format!("; slowest: {s}"))
                    .unwrap_or_default(),
                st.delivered,
                st.lost,
                st.duplicated,
                ms(st.delivery_p99),
                ms(st.delivery_max),
                st.splits
            )?;
        }
        match self.first() {
            None => write!(f, "verdict: clean (0 violations)"),
            Some(first) => {
                let mut by_rule: BTreeMap<Rule, usize> = BTreeMap::new();
                for v in &self.violations {
                    *by_rule.entry(v.rule).or_default() += 1;
                }
                let counts: Vec<String> =
                    by_rule.iter().map(|(r, n)| format!("{r:?} {n}")).collect();
                write!(
                    f,
                    "verdict: {} violations ({}); the first:\n  {first}",
                    self.violations.len(),
                    counts.join(", ")
                )
            }
        }
    }
}

/// One connect attempt and what became of it.
struct Session {
    client: ClientId,
    start: Stamp,
    welcome: Option<Stamp>,
    end: Option<(Stamp, End)>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum StintEnd {
    Told(Stamp),
    Left(Stamp),
    /// Ended without a promise: a fresh rejoin, or a broken resume.
    Broken(Stamp),
    Open {
        connected: bool,
    },
}

#[derive(Clone, Copy, Debug)]
struct Stint {
    room: Sym,
    node: Sym,
    start: Stamp,
    end: StintEnd,
}

struct Ack {
    client: ClientId,
    meeting: Sym,
    tag: u64,
    room: Sym,
    seq: u64,
    sent: Stamp,
    acked: Stamp,
}

struct SeqSeen {
    digest: u64,
    client: ClientId,
    at: Stamp,
    tag: Option<u64>,
}

struct MessageSeen {
    ts_ms: u64,
    seq: u64,
    client: ClientId,
    at: Stamp,
}

struct NotRecovered {
    client: ClientId,
    meeting: Sym,
    at: Stamp,
    since: Option<(u64, Sym)>,
    node: Sym,
    room: Sym,
}

struct Receipt {
    first: Stamp,
}

/// A run of consecutive polls of one node that list one room.
#[derive(Clone, Copy)]
struct Run {
    node: Sym,
    meeting: Sym,
    room: Sym,
    first: (Stamp, Stamp),
    last: (Stamp, Stamp),
    polls: usize,
    seq_first: u64,
    seq_last: u64,
}

impl Run {
    /// Where the room was surely live on the node.
    fn sure(&self) -> Option<(Stamp, Stamp)> {
        (self.polls >= 2 && self.first.1 < self.last.0).then_some((self.first.1, self.last.0))
    }

    fn describe(&self, log: &Log) -> String {
        let span = match self.sure() {
            Some((a, b)) => format!("surely live {}..{}", fmt_stamp(a), fmt_stamp(b)),
            None => format!(
                "seen in one poll {}..{}",
                fmt_stamp(self.first.0),
                fmt_stamp(self.first.1)
            ),
        };
        format!(
            "{} held room {} (seq {}..{}, {} polls, {span})",
            log.name(self.node),
            log.name(self.room),
            self.seq_first,
            self.seq_last,
            self.polls
        )
    }
}

/// What two runs prove about their overlap.
enum Overlap {
    /// Both rooms were surely live over this span.
    Span(Stamp, Stamp),
    /// One poll of one room was answered at an instant inside this window,
    /// all of which the other room was surely live.
    Instant(Stamp, Stamp),
}

/// The overlap two runs prove, if any.
fn proven_overlap(r: &Run, q: &Run) -> Option<Overlap> {
    if let (Some(a), Some(b)) = (r.sure(), q.sure()) {
        let (lo, hi) = (a.0.max(b.0), a.1.min(b.1));
        if lo < hi {
            return Some(Overlap::Span(lo, hi));
        }
    }
    for (x, y) in [(r, q), (q, r)] {
        let Some(sure) = x.sure() else { continue };
        for w in [y.first, y.last] {
            if sure.0 <= w.0 && w.1 <= sure.1 {
                return Some(Overlap::Instant(w.0, w.1));
            }
        }
    }
    None
}

struct Checker<'a> {
    log: &'a Log,
    end: Stamp,
    violations: Vec<Violation>,
    summary: Summary,
    sessions: Vec<Session>,
    /// Per client, in time order.
    stints: HashMap<ClientId, Vec<Stint>>,
    receipts: HashMap<(ClientId, Sym, u64), Receipt>,
    /// When a member got an event it had already.
    duplicates: Vec<Stamp>,
    at_seq: HashMap<(Sym, Sym, u64), SeqSeen>,
    messages: HashMap<Sym, HashMap<Sym, Vec<MessageSeen>>>,
    acks: Vec<Ack>,
    not_recovered: Vec<NotRecovered>,
    /// (meeting, room) → node → first and last time seen holding it.
    holders: HashMap<(Sym, Sym), HashMap<Sym, (Stamp, Stamp)>>,
    /// Per delivered (ack, member): when its ack came, how long it took.
    deliveries: Vec<(Stamp, Duration)>,
    /// Per lost (ack, member): when its ack came.
    losses: Vec<Stamp>,
    runs: Vec<Run>,
}

pub(super) fn check(log: &Log, end: Stamp) -> Verdict {
    let mut c = Checker::new(log, end);
    c.clients();
    c.samples();
    c.splits_from_samples();
    c.splits_from_clients();
    c.deliveries();
    c.not_recovered();
    c.violations.sort_by_key(|v| v.at);
    let steps = c.steps();
    c.totals();
    Verdict {
        violations: c.violations,
        summary: c.summary,
        steps,
    }
}

/// Rule (c)'s silent losses only: what [`super::History::pending_deliveries`]
/// polls, without the cost of the other rules.
pub(super) fn silent_losses(log: &Log, end: Stamp) -> usize {
    let mut c = Checker::new(log, end);
    c.clients();
    // The holders, which excuse losses on nodes declared to lose memory.
    c.samples();
    c.deliveries();
    c.summary.silent_losses
}

impl<'a> Checker<'a> {
    fn new(log: &'a Log, end: Stamp) -> Checker<'a> {
        Checker {
            log,
            end,
            violations: Vec::new(),
            summary: Summary::default(),
            sessions: Vec::new(),
            stints: HashMap::new(),
            receipts: HashMap::new(),
            duplicates: Vec::new(),
            at_seq: HashMap::new(),
            messages: HashMap::new(),
            acks: Vec::new(),
            not_recovered: Vec::new(),
            holders: HashMap::new(),
            deliveries: Vec::new(),
            losses: Vec::new(),
            runs: Vec::new(),
        }
    }
}

/// What the per-client replay tracks.
#[derive(Default)]
struct ClientState {
    session: Option<usize>,
    since_sent: Option<(u64, Sym)>,
    /// The incarnation and seq the client last saw.
    last: Option<(Sym, u64)>,
    /// The next event may have any seq (after `recovered: false`).
    free: bool,
    stint: Option<Stint>,
    /// For evidence: when the current connection got its welcome, and the
    /// resume it made.
    welcomed: Option<(Stamp, u64, Option<u64>)>,
    sent: HashMap<u64, Stamp>,
}

impl<'a> Checker<'a> {
    fn violation(&mut self, rule: Rule, meeting: Sym, at: Stamp, evidence: String) {
        self.violations.push(Violation {
            rule,
            meeting: self.log.name(meeting).to_owned(),
            at,
            evidence,
        });
    }

    fn name(&self, c: ClientId) -> &'a str {
        self.log.client_name(c)
    }

    fn hold(&mut self, meeting: Sym, room: Sym, node: Sym, at: Stamp) {
        let span = self
            .holders
            .entry((meeting, room))
            .or_default()
            .entry(node)
            .or_insert((at, at));
        span.0 = span.0.min(at);
        span.1 = span.1.max(at);
    }

    fn close_stint(&mut self, client: ClientId, st: &mut ClientState, end: StintEnd) {
        if let Some(mut stint) = st.stint.take() {
            stint.end = end;
            self.stints.entry(client).or_default().push(stint);
        }
    }

    fn open_stint(
        &mut self,
        client: ClientId,
        st: &mut ClientState,
        at: Stamp,
        (room, node): (Sym, Sym),
    ) {
        self.close_stint(client, st, StintEnd::Broken(at));
        st.stint = Some(Stint {
            room,
            node,
            start: at,
            end: StintEnd::Open { connected: false },
        });
    }

    /// Replays every client's own operations: sessions, stints, (b), and the
    /// raw material of (a), (c) and (d).
    fn clients(&mut self) {
        let log = self.log;
        let mut per_client: Vec<Vec<usize>> = vec![Vec::new(); log.clients.len()];
        for (i, e) in log.entries.iter().enumerate() {
            if let Some(list) = per_client.get_mut(e.client as usize) {
                list.push(i);
            }
        }
        for (client, list) in per_client.iter().enumerate() {
            let client = client as ClientId;
            let mut st = ClientState::default();
            for &i in list {
                self.client_op(client, &mut st, i);
            }
            let connected = st
                .session
                .and_then(|i| self.sessions.get(i))
                .is_some_and(|s| s.welcome.is_some() && s.end.is_none());
            self.close_stint(client, &mut st, StintEnd::Open { connected });
        }
    }

    fn client_op(&mut self, client: ClientId, st: &mut ClientState, i: usize) {
        let log = self.log;
        let e = &log.entries[i];
        let (at, meeting) = (e.at, e.meeting);
        match &e.op {
            Op::Connect { since, .. } => {
                if let Some(s) = st.session.and_then(|i| self.sessions.get_mut(i)) {
                    if s.end.is_none() {
                        s.end = Some((at, End::Dropped));
                    }
                }
                self.sessions.push(Session {
                    client,
                    start: at,
                    welcome: None,
                    end: None,
                });
                st.session = Some(self.sessions.len() - 1);
                st.since_sent = *since;
            }
            Op::ConnectFailed { .. } => {
                if let Some(s) = st.session.and_then(|i| self.sessions.get_mut(i)) {
                    s.end = Some((at, End::Dropped));
                }
            }
            Op::Welcome {
                node,
                room,
                seq,
                recovered,
            } => self.welcome(client, st, meeting, at, *node, *room, *seq, *recovered),
            Op::Event {
                room,
                seq,
                kind,
                digest,
                ts_ms,
                tag,
            } => {
                self.summary.events += 1;
                self.event(client, st, meeting, at, *room, *seq, *digest, *tag);
                if let (EventKind::Message, Some(ts_ms)) = (kind, ts_ms) {
                    self.messages
                        .entry(meeting)
                        .or_default()
                        .entry(*room)
                        .or_default()
                        .push(MessageSeen {
                            ts_ms: *ts_ms,
                            seq: *seq,
                            client,
                            at,
                        });
                }
            }
            Op::Ended(end) => {
                if let Some(s) = st.session.and_then(|i| self.sessions.get_mut(i)) {
                    if s.end.is_none() {
                        s.end = Some((at, *end));
                    }
                }
                if *end == End::Left {
                    self.close_stint(client, st, StintEnd::Left(at));
                    st.last = None;
                }
            }
            Op::PublishSent { tag } => {
                self.summary.publishes += 1;
                st.sent.insert(*tag, at);
            }
            Op::PublishAcked { tag, room, seq } => {
                let sent = st.sent.get(tag).copied().unwrap_or(at);
                self.acks.push(Ack {
                    client,
                    meeting,
                    tag: *tag,
                    room: *room,
                    seq: *seq,
                    sent,
                    acked: at,
                });
            }
            Op::PublishFailed { .. } => self.summary.publish_failures += 1,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn welcome(
        &mut self,
        client: ClientId,
        st: &mut ClientState,
        meeting: Sym,
        at: Stamp,
        node: Sym,
        room: Sym,
        seq: u64,
        recovered: Option<bool>,
    ) {
        if let Some(s) = st.session.and_then(|i| self.sessions.get_mut(i)) {
            s.welcome = Some(at);
        }
        self.hold(meeting, room, node, at);
        let since = st.since_sent.map(|(s, _)| s);
        st.welcomed = Some((at, seq, since));
        let who = self.name(client);
        let log = self.log;
        match (recovered, st.since_sent) {
            (None, _) | (Some(true), None) => {
                if recovered.is_some() {
                    self.violation(
                        Rule::ClientBug,
                        meeting,
                        at,
                        format!("{who} got recovered:true without resuming"),
                    );
                }
                self.open_stint(client, st, at, (room, node));
                st.last = Some((room, seq));
                st.free = false;
            }
            (Some(true), Some((since, since_room))) if since_room != room => {
                self.violation(
                    Rule::RecoveredAcrossRooms,
                    meeting,
                    at,
                    format!(
                        "{who} resumed from seq {since} of room {} and {} answered recovered:true in room {} (seq {seq})",
                        log.name(since_room),
                        log.name(node),
                        log.name(room)
                    ),
                );
                self.open_stint(client, st, at, (room, node));
                st.last = Some((room, seq));
                st.free = true;
            }
            (Some(true), Some((since, since_room))) => {
                if st.last != Some((since_room, since)) {
                    let had = st
                        .last
                        .map(|(r, s)| format!("seq {s} of room {}", log.name(r)))
                        .unwrap_or_else(|| "nothing".into());
                    self.violation(
                        Rule::ClientBug,
                        meeting,
                        at,
                        format!("{who} resumed from seq {since} but had seen {had}"),
                    );
                }
                if st.stint.is_none() {
                    self.open_stint(client, st, at, (room, node));
                }
                st.last = Some((room, since));
                st.free = false;
            }
            (Some(false), since_sent) => {
                self.not_recovered.push(NotRecovered {
                    client,
                    meeting,
                    at,
                    since: since_sent,
                    node,
                    room,
                });
                self.close_stint(client, st, StintEnd::Told(at));
                self.open_stint(client, st, at, (room, node));
                st.last = Some((room, seq));
                st.free = true;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &mut self,
        client: ClientId,
        st: &mut ClientState,
        meeting: Sym,
        at: Stamp,
        room: Sym,
        seq: u64,
        digest: u64,
        tag: Option<u64>,
    ) {
        let log = self.log;
        let who = self.name(client);
        let seen = self.at_seq.entry((meeting, room, seq)).or_insert(SeqSeen {
            digest,
            client,
            at,
            tag,
        });
        if seen.digest != digest {
            let (first, first_at) = (seen.client, seen.at);
            let evidence = format!(
                "seq {seq} of room {}: {} saw one event at {}, {who} another at {}",
                log.name(room),
                self.name(first),
                fmt_stamp(first_at),
                fmt_stamp(at)
            );
            self.violation(Rule::Diverged, meeting, at, evidence);
        }
        let context = || match st.welcomed {
            Some((w_at, w_seq, Some(since))) => format!(
                "after a resume from seq {since} answered at {} (welcome seq {w_seq})",
                fmt_stamp(w_at)
            ),
            Some((w_at, w_seq, None)) => {
                format!(
                    "on a connection welcomed at {} with seq {w_seq}",
                    fmt_stamp(w_at)
                )
            }
            None => "before any welcome".into(),
        };
        if st.free {
            st.free = false;
        } else {
            match st.last {
                Some((last_room, last)) if last_room == room => {
                    if seq > last + 1 {
                        let evidence = format!(
                            "{who} got seq {seq} of room {} after seq {last} {}: {} missing",
                            log.name(room),
                            context(),
                            seq - last - 1
                        );
                        self.violation(Rule::Gap, meeting, at, evidence);
                    } else if seq <= last {
                        let evidence = format!(
                            "{who} got seq {seq} of room {} after seq {last} {}",
                            log.name(room),
                            context()
                        );
                        self.violation(Rule::Duplicate, meeting, at, evidence);
                    }
                }
                _ => {
                    let evidence = format!(
                        "{who} recorded seq {seq} of room {} while tracking {}",
                        log.name(room),
                        st.last
                            .map(|(r, s)| format!("seq {s} of room {}", log.name(r)))
                            .unwrap_or_else(|| "nothing".into())
                    );
                    self.violation(Rule::ClientBug, meeting, at, evidence);
                }
            }
        }
        st.last = Some((room, seq));
        match self.receipts.entry((client, room, seq)) {
            std::collections::hash_map::Entry::Occupied(_) => self.duplicates.push(at),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Receipt { first: at });
            }
        }
    }

    /// Node samples: runs for (a), and from them the holders.
    fn samples(&mut self) {
        let log = self.log;
        let mut by_node: HashMap<Sym, Vec<usize>> = HashMap::new();
        for (i, s) in log.samples.iter().enumerate() {
            by_node.entry(s.node).or_default().push(i);
        }
        let mut nodes: Vec<_> = by_node.into_iter().collect();
        nodes.sort_by_key(|(n, _)| *n);
        for (node, mut list) in nodes {
            list.sort_by_key(|&i| log.samples[i].sent);
            // Open runs by meeting, with the poll that last extended them.
            let mut open: HashMap<Sym, (Run, usize)> = HashMap::new();
            for (k, i) in list.into_iter().enumerate() {
                let s = &log.samples[i];
                self.summary.samples += 1;
                let Some(rooms) = &s.rooms else {
                    self.summary.failed_samples += 1;
                    self.runs.extend(open.drain().map(|(_, (r, _))| r));
                    continue;
                };
                let window = (s.sent, s.received);
                for r in rooms {
                    match open.get_mut(&r.meeting) {
                        Some((run, seen)) if run.room == r.room => {
                            run.last = window;
                            run.polls += 1;
                            run.seq_last = r.seq;
                            *seen = k;
                        }
                        _ => {
                            let run = Run {
                                node,
                                meeting: r.meeting,
                                room: r.room,
                                first: window,
                                last: window,
                                polls: 1,
                                seq_first: r.seq,
                                seq_last: r.seq,
                            };
                            if let Some((old, _)) = open.insert(r.meeting, (run, k)) {
                                self.runs.push(old);
                            }
                        }
                    }
                }
                let runs = &mut self.runs;
                open.retain(|_, (run, seen)| {
                    let listed = *seen == k;
                    if !listed {
                        runs.push(*run);
                    }
                    listed
                });
            }
            self.runs.extend(open.drain().map(|(_, (r, _))| r));
        }
        let mid = |(a, b): (Stamp, Stamp)| a + b.saturating_sub(a) / 2;
        for r in std::mem::take(&mut self.runs) {
            self.hold(r.meeting, r.room, r.node, mid(r.first));
            self.hold(r.meeting, r.room, r.node, mid(r.last));
            self.runs.push(r);
        }
    }

    fn splits_from_samples(&mut self) {
        let mut by_meeting: HashMap<Sym, Vec<Run>> = HashMap::new();
        for r in &self.runs {
            by_meeting.entry(r.meeting).or_default().push(*r);
        }
        let mut meetings: Vec<_> = by_meeting.into_iter().collect();
        meetings.sort_by_key(|(m, _)| *m);
        for (meeting, mut runs) in meetings {
            runs.sort_by_key(|r| r.first.0);
            for (i, r) in runs.iter().enumerate() {
                for q in &runs[i + 1..] {
                    if q.first.0 > r.last.1 {
                        break;
                    }
                    if q.node == r.node {
                        continue;
                    }
                    let Some(overlap) = proven_overlap(r, q) else {
                        continue;
                    };
                    let (lo, length, how_long) = match overlap {
                        Overlap::Span(lo, hi) => {
                            (lo, hi - lo, format!("for at least {}", ms(hi - lo)))
                        }
                        Overlap::Instant(lo, hi) => (
                            lo,
                            Duration::ZERO,
                            format!("at an instant in {}..{}", fmt_stamp(lo), fmt_stamp(hi)),
                        ),
                    };
                    self.summary.splits += 1;
                    self.summary.longest_split = self.summary.longest_split.max(Some(length));
                    let evidence = format!(
                        "two live rooms {how_long}: {} while {}",
                        r.describe(self.log),
                        q.describe(self.log)
                    );
                    self.violation(Rule::Split, meeting, lo, evidence);
                }
            }
        }
    }

    /// (a) from clients: incarnations whose message stamps interleave.
    fn splits_from_clients(&mut self) {
        let log = self.log;
        let unix0 = log.unix_start_ms;
        let rel = |ts: u64| format!("{:+.3}s", (ts as f64 - unix0 as f64) / 1000.0);
        let mut found = Vec::new();
        let mut meetings: Vec<_> = self.messages.iter().collect();
        meetings.sort_by_key(|(m, _)| **m);
        for (meeting, rooms) in meetings {
            let mut spans: Vec<(Sym, &MessageSeen, &MessageSeen)> = Vec::new();
            for (room, seen) in rooms {
                let (Some(lo), Some(hi)) = (
                    seen.iter().min_by_key(|m| m.ts_ms),
                    seen.iter().max_by_key(|m| m.ts_ms),
                ) else {
                    continue;
                };
                spans.push((*room, lo, hi));
            }
            spans.sort_by_key(|(room, lo, _)| (lo.ts_ms, *room));
            for (i, (ra, alo, ahi)) in spans.iter().enumerate() {
                for (rb, blo, bhi) in &spans[i + 1..] {
                    if !(alo.ts_ms < bhi.ts_ms && blo.ts_ms < ahi.ts_ms) {
                        continue;
                    }
                    let evidence = format!(
                        "room {} took messages stamped {} (seq {}, seen by {}) to {} (seq {}, seen by {}), and room {} one stamped {} (seq {}, seen by {} at {}) in between",
                        log.name(*ra),
                        rel(alo.ts_ms),
                        alo.seq,
                        self.name(alo.client),
                        rel(ahi.ts_ms),
                        ahi.seq,
                        self.name(ahi.client),
                        log.name(*rb),
                        rel(blo.ts_ms),
                        blo.seq,
                        self.name(blo.client),
                        fmt_stamp(blo.at)
                    );
                    found.push((*meeting, blo.at.min(ahi.at), evidence));
                }
            }
        }
        for (meeting, at, evidence) in found {
            self.summary.splits += 1;
            self.violation(Rule::Split, meeting, at, evidence);
        }
    }

    /// The node that held `room` of `meeting` around `at`.
    fn holder_at(&self, meeting: Sym, room: Sym, at: Stamp) -> Option<Sym> {
        let holders = self.holders.get(&(meeting, room))?;
        let covering = holders
            .iter()
            .filter(|(_, (a, b))| *a <= at && at <= *b)
            .map(|(n, _)| *n)
            .min();
        covering.or_else(|| {
            holders
                .iter()
                .min_by_key(|(_, (a, b))| {
                    if *b < at {
                        at - *b
                    } else {
                        a.saturating_sub(at)
                    }
                })
                .map(|(n, _)| *n)
        })
    }

    /// (c): every ack against every member that stayed.
    fn deliveries(&mut self) {
        let log = self.log;
        let mut members: HashMap<Sym, Vec<ClientId>> = HashMap::new();
        for (id, c) in log.clients.iter().enumerate() {
            if c.kind != ClientKind::Publisher {
                members.entry(c.meeting).or_default().push(id as ClientId);
            }
        }
        let mut by_seq: HashMap<(Sym, Sym, u64), (u64, ClientId)> = HashMap::new();
        let acks = std::mem::take(&mut self.acks);
        for ack in &acks {
            self.summary.acks += 1;
            let who = self.name(ack.client);
            match by_seq.get(&(ack.meeting, ack.room, ack.seq)) {
                Some((tag, other)) if *tag != ack.tag => {
                    let evidence = format!(
                        "seq {} of room {} was acknowledged to {} for publish {tag} and to {who} for publish {}",
                        ack.seq,
                        log.name(ack.room),
                        self.name(*other),
                        ack.tag
                    );
                    self.violation(Rule::AckMismatch, ack.meeting, ack.acked, evidence);
                }
                _ => {
                    by_seq.insert((ack.meeting, ack.room, ack.seq), (ack.tag, ack.client));
                }
            }
            if let Some(seen) = self.at_seq.get(&(ack.meeting, ack.room, ack.seq)) {
                if seen.tag != Some(ack.tag) {
                    let evidence = format!(
                        "{who}'s publish {} was acknowledged at seq {} of room {}, but {} saw {} there at {}",
                        ack.tag,
                        ack.seq,
                        log.name(ack.room),
                        self.name(seen.client),
                        seen.tag
                            .map(|t| format!("publish {t}"))
                            .unwrap_or_else(|| "another event".into()),
                        fmt_stamp(seen.at)
                    );
                    self.violation(Rule::AckMismatch, ack.meeting, ack.acked, evidence);
                }
            }
            let Some(list) = members.get(&ack.meeting) else {
                continue;
            };
            for &m in list {
                let Some(stint) = self.stint_at(m, ack.sent) else {
                    continue;
                };
                let told = match stint.end {
                    StintEnd::Told(t) if t > ack.acked => true,
                    StintEnd::Open { connected: true } => false,
                    _ => continue,
                };
                self.summary.expected += 1;
                if let Some(r) = self.receipts.get(&(m, ack.room, ack.seq)) {
                    self.summary.delivered += 1;
                    self.deliveries
                        .push((ack.acked, r.first.saturating_sub(ack.sent)));
                    continue;
                }
                self.losses.push(ack.acked);
                if told {
                    self.summary.lost_told += 1;
                } else if self.excused(ack) {
                    self.summary.lost_excused += 1;
                } else {
                    self.summary.silent_losses += 1;
                    let evidence = format!(
                        "{who}'s publish {} (sent {}, acknowledged {} as seq {} of room {}) never reached {}, in the meeting since {} (joined room {} on {}) and connected at the end, never told",
                        ack.tag,
                        fmt_stamp(ack.sent),
                        fmt_stamp(ack.acked),
                        ack.seq,
                        log.name(ack.room),
                        self.name(m),
                        fmt_stamp(stint.start),
                        log.name(stint.room),
                        log.name(stint.node)
                    );
                    self.violation(Rule::SilentLoss, ack.meeting, ack.acked, evidence);
                }
            }
        }
        self.acks = acks;
    }

    /// The member's stint that began before `at`, if it lasted past it.
    fn stint_at(&self, client: ClientId, at: Stamp) -> Option<Stint> {
        let stints = self.stints.get(&client)?;
        let i = stints.partition_point(|s| s.start < at);
        let s = *stints.get(i.checked_sub(1)?)?;
        let over = match s.end {
            StintEnd::Told(t) | StintEnd::Left(t) | StintEnd::Broken(t) => t > at,
            StintEnd::Open { .. } => true,
        };
        over.then_some(s)
    }

    /// Whether a declared memory loss of the ack's node covers it.
    fn excused(&self, ack: &Ack) -> bool {
        let Some(node) = self.holder_at(ack.meeting, ack.room, ack.acked) else {
            return false;
        };
        let node = self.log.name(node);
        self.log
            .losses
            .iter()
            .any(|w| w.node == node && w.from <= ack.acked + IN_FLIGHT && ack.sent <= w.to)
    }

    /// (d): every `recovered: false` against the declared memory losses.
    fn not_recovered(&mut self) {
        let log = self.log;
        let list = std::mem::take(&mut self.not_recovered);
        for nr in &list {
            self.summary.not_recovered += 1;
            let who = self.name(nr.client);
            let Some((since, since_room)) = nr.since else {
                let evidence = format!("{who} got recovered:false without resuming");
                self.violation(Rule::ClientBug, nr.meeting, nr.at, evidence);
                continue;
            };
            let holders = self.holders.get(&(nr.meeting, since_room));
            let justified = log.losses.iter().any(|w| {
                w.from <= nr.at
                    && log.lookup(&w.node).is_some_and(|node| {
                        holders
                            .and_then(|h| h.get(&node))
                            .is_some_and(|(first, _)| *first <= w.to)
                    })
            });
            if justified {
                continue;
            }
            let mut held: Vec<String> = holders
                .map(|h| {
                    h.iter()
                        .map(|(n, (a, b))| {
                            format!("{} {}..{}", log.name(*n), fmt_stamp(*a), fmt_stamp(*b))
                        })
                        .collect()
                })
                .unwrap_or_default();
            held.sort();
            let declared: Vec<String> = log
                .losses
                .iter()
                .map(|w| format!("{} {}..{}", w.node, fmt_stamp(w.from), fmt_stamp(w.to)))
                .collect();
            let evidence = format!(
                "{who} resumed from seq {since} of room {} (held by: {}) and {} answered recovered:false in room {}; declared memory losses: {}",
                log.name(since_room),
                if held.is_empty() { "no one seen".into() } else { held.join(", ") },
                log.name(nr.node),
                log.name(nr.room),
                if declared.is_empty() { "none".into() } else { declared.join(", ") }
            );
            self.violation(Rule::UnjustifiedNotRecovered, nr.meeting, nr.at, evidence);
        }
        self.not_recovered = list;
    }

    fn steps(&self) -> Vec<StepReport> {
        let log = self.log;
        let mut marks: Vec<(Stamp, String)> = log.steps.clone();
        if marks.first().is_none_or(|(at, _)| !at.is_zero()) {
            marks.insert(0, (Stamp::ZERO, "start".into()));
        }
        let mut by_client: HashMap<ClientId, Vec<&Session>> = HashMap::new();
        for s in &self.sessions {
            by_client.entry(s.client).or_default().push(s);
        }
        let mut out = Vec::new();
        for (k, (from, name)) in marks.iter().enumerate() {
            let from = *from;
            let to = marks.get(k + 1).map_or(self.end, |(t, _)| *t).max(from);
            let inside = |t: Stamp| from <= t && t < to;
            let mut st = StepReport {
                name: name.clone(),
                from,
                to,
                back_in_meeting: Some(Duration::ZERO),
                ..Default::default()
            };
            for (client, sessions) in &by_client {
                let stays = log
                    .clients
                    .get(*client as usize)
                    .is_some_and(|c| c.kind.stays());
                if !stays {
                    continue;
                }
                let Some(last_end) = sessions
                    .iter()
                    .filter_map(|s| s.end)
                    .filter(|(t, end)| inside(*t) && *end != End::Left)
                    .map(|(t, _)| t)
                    .max()
                else {
                    continue;
                };
                st.disrupted += 1;
                let back = sessions
                    .iter()
                    .filter(|s| s.start >= last_end)
                    .find_map(|s| s.welcome);
                match (back, st.back_in_meeting) {
                    (Some(t), Some(cur)) => st.back_in_meeting = Some(cur.max(t - from)),
                    (Some(_), None) => {}
                    (None, _) => {
                        st.never_back += 1;
                        st.back_in_meeting = None;
                    }
                }
            }
            let mut waits: Vec<Duration> = Vec::new();
            let mut slowest: Option<(Duration, &Session)> = None;
            // An attempt still waiting for its welcome when the history
            // ended neither joined nor failed.
            let decided = |s: &&Session| s.welcome.is_some() || s.end.is_some();
            for s in self
                .sessions
                .iter()
                .filter(|s| inside(s.start))
                .filter(decided)
            {
                st.joins += 1;
                match s.welcome {
                    Some(w) => {
                        waits.push(w - s.start);
                        if slowest.is_none_or(|(d, _)| w - s.start > d) {
                            slowest = Some((w - s.start, s));
                        }
                    }
                    None => st.failed_joins += 1,
                }
            }
            st.slowest_join = slowest.map(|(d, s)| {
                format!(
                    "{} at {} waited {}",
                    self.name(s.client),
                    fmt_stamp(s.start),
                    ms(d)
                )
            });
            (st.join_wait_p99, st.join_wait_max) = p99_max(&mut waits);
            let mut lat: Vec<Duration> = self
                .deliveries
                .iter()
                .filter(|(t, _)| inside(*t))
                .map(|(_, d)| *d)
                .collect();
            st.delivered = lat.len();
            (st.delivery_p99, st.delivery_max) = p99_max(&mut lat);
            st.lost = self.losses.iter().filter(|t| inside(**t)).count();
            st.duplicated = self.duplicates.iter().filter(|t| inside(**t)).count();
            st.splits = self
                .violations
                .iter()
                .filter(|v| v.rule == Rule::Split && inside(v.at))
                .count();
            out.push(st);
        }
        out
    }

    fn totals(&mut self) {
        let log = self.log;
        let mut meetings = std::collections::HashSet::new();
        for c in &log.clients {
            *self.summary.clients.entry(c.kind.label()).or_default() += 1;
            if c.kind != ClientKind::Publisher {
                meetings.insert(c.meeting);
            }
        }
        self.summary.meetings = meetings.len();
        self.summary.connects = self.sessions.len();
        self.summary.failed_connects = self.sessions.iter().filter(|s| s.welcome.is_none()).count();
        self.summary.duplicated = self.duplicates.len();
    }
}

/// The 99th percentile and the maximum (zero for none).
fn p99_max(v: &mut [Duration]) -> (Duration, Duration) {
    if v.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    v.sort();
    let rank = (v.len() * 99).div_ceil(100).max(1);
    (v[rank - 1], v[v.len() - 1])
}

#[cfg(test)]
mod tests {
    //! Small synthetic histories, each with one kind of violation (or none).
    use super::super::{ClientKind, ClientLog, EventKind, History, Route};
    use super::Rule;
    use std::sync::Arc;
    use std::time::Duration;

    fn t(h: &History, ms: u64) {
        h.set_now(Duration::from_millis(ms));
    }

    /// The JSON of a room event, the same for every receiver.
    fn json(room: &str, seq: u64, tag: Option<u64>) -> String {
        format!("{room}/{seq}/{tag:?}")
    }

    fn join(c: &ClientLog, node: &str, room: &str, seq: u64) {
        c.connect(0, Route::Ws, None);
        c.welcome(node, room, seq, None);
    }

    #[allow(clippy::too_many_arguments)]
    fn resume(
        c: &ClientLog,
        since: u64,
        since_room: &str,
        node: &str,
        room: &str,
        seq: u64,
        recovered: bool,
    ) {
        c.connect(1, Route::Ws, Some((since, since_room)));
        c.welcome(node, room, seq, Some(recovered));
    }

    fn ev(c: &ClientLog, room: &str, seq: u64) {
        c.event(
            room,
            seq,
            EventKind::Join,
            &json(room, seq, None),
            None,
            None,
        );
    }

    fn msg(c: &ClientLog, room: &str, seq: u64, tag: u64, ts_ms: u64) {
        let json = json(room, seq, Some(tag));
        c.event(room, seq, EventKind::Message, &json, Some(ts_ms), Some(tag));
    }

    /// Publish `tag` to m1, sent and acknowledged at `(sent, acked)` ms as
    /// `(room, seq)`.
    fn publish(
        h: &History,
        p: &ClientLog,
        tag: u64,
        (room, seq): (&str, u64),
        (sent, acked): (u64, u64),
    ) {
        let meeting = "m1";
        t(h, sent);
        p.publish_sent(meeting, tag);
        t(h, acked);
        p.publish_acked(meeting, tag, room, seq);
    }

    fn sample(h: &History, node: &str, sent: u64, rooms: &[(&str, &str)]) {
        let rooms: Vec<roompin_shared::control::RoomInfo> = rooms
            .iter()
            .map(|(m, r)| roompin_shared::control::RoomInfo {
                meeting_id: m.to_string(),
                room: r.to_string(),
                seq: 1,
                members: 1,
            })
            .collect();
        h.node_sample(
            node,
            Duration::from_millis(sent),
            Duration::from_millis(sent + 2),
            Some(&rooms),
        );
    }

    /// Two members of m1 on room R, a publish acknowledged as seq 3 that
    /// both receive, and a clean handoff from node-a to node-b.
    fn clean() -> (Arc<History>, ClientLog, ClientLog, ClientLog) {
        let h = History::manual();
        let a = h.client(ClientKind::WsMember, "m1");
        let b = h.client(ClientKind::SseMember, "m1");
        let p = h.client(ClientKind::Publisher, "");
        t(&h, 10);
        join(&a, "node-a", "R", 0);
        ev(&a, "R", 1);
        t(&h, 20);
        join(&b, "node-a", "R", 1);
        ev(&a, "R", 2);
        ev(&b, "R", 2);
        publish(&h, &p, 7, ("R", 3), (30, 35));
        t(&h, 33);
        msg(&a, "R", 3, 7, 1033);
        msg(&b, "R", 3, 7, 1033);
        for (i, sent) in [0, 50, 100].into_iter().enumerate() {
            t(&h, 200 + i as u64);
            sample(&h, "node-a", sent, &[("m1", "R")]);
        }
        t(&h, 210);
        sample(&h, "node-a", 150, &[]);
        sample(&h, "node-b", 103, &[("m1", "R")]);
        sample(&h, "node-b", 153, &[("m1", "R")]);
        (h, a, b, p)
    }

    #[test]
    fn a_clean_history_is_clean() {
        let (h, ..) = clean();
        t(&h, 300);
        h.finish();
        let v = h.check();
        assert!(v.is_clean(), "{v}");
        assert_eq!(v.summary.expected, 2);
        assert_eq!(v.summary.delivered, 2);
        assert_eq!(v.summary.splits, 0);
        assert_eq!(v.steps.len(), 1);
        assert_eq!(v.steps[0].joins, 2);
        assert_eq!(v.steps[0].join_wait_max, Duration::ZERO);
    }

    #[test]
    fn two_nodes_listing_a_meeting_over_several_polls_is_a_split() {
        let (h, ..) = clean();
        t(&h, 220);
        // node-c lists m1 at 60 and 110: during node-a's sure span 2..100
        // and node-b's 105..153.
        sample(&h, "node-c", 60, &[("m1", "X")]);
        sample(&h, "node-c", 110, &[("m1", "X")]);
        t(&h, 300);
        h.finish();
        let v = h.check();
        assert_eq!(v.count(Rule::Split), 2, "{v}");
        assert_eq!(v.summary.longest_split, Some(Duration::from_millis(38)));
        let first = v.first().expect("a violation");
        assert!(first.evidence.contains("node-a held room R"), "{first}");
        assert!(first.evidence.contains("node-c held room X"), "{first}");
        assert!(v.to_string().contains("[Split] meeting m1"), "{v}");
    }

    #[test]
    fn one_poll_inside_another_nodes_sure_span_is_a_split_at_an_instant() {
        let h = History::manual();
        t(&h, 500);
        for sent in [0, 50, 100] {
            sample(&h, "node-a", sent, &[("m1", "R")]);
        }
        sample(&h, "node-b", 60, &[("m1", "S")]);
        sample(&h, "node-b", 110, &[]);
        h.finish();
        let v = h.check();
        assert_eq!(v.count(Rule::Split), 1, "{v}");
        assert!(
            v.violations[0]
                .evidence
                .contains("at an instant in 0.060s..0.062s"),
            "{v}"
        );
    }

    #[test]
    fn one_poll_each_around_a_handoff_proves_nothing() {
        let h = History::manual();
        t(&h, 100);
        // node-a's last poll and node-b's first overlap in time, but each
        // room was seen once: the handoff may lie between the two answers.
        sample(&h, "node-a", 0, &[("m1", "R")]);
        sample(&h, "node-a", 50, &[]);
        sample(&h, "node-b", 1, &[("m1", "R")]);
        sample(&h, "node-b", 51, &[("m1", "R")]);
        h.finish();
        let v = h.check();
        assert!(v.is_clean(), "{v}");
    }

    #[test]
    fn a_paused_node_breaks_its_runs() {
        let h = History::manual();
        t(&h, 500);
        sample(&h, "node-a", 0, &[("m1", "R")]);
        // The poll at 50 timed out: node-a may have dropped R meanwhile.
        h.node_sample(
            "node-a",
            Duration::from_millis(50),
            Duration::from_millis(350),
            None,
        );
        sample(&h, "node-a", 400, &[("m1", "R")]);
        sample(&h, "node-b", 100, &[("m1", "S")]);
        sample(&h, "node-b", 150, &[]);
        h.finish();
        let v = h.check();
        assert!(v.is_clean(), "{v}");
        assert_eq!(v.summary.failed_samples, 1);
    }

    #[test]
    fn interleaved_message_stamps_of_two_incarnations_are_a_split() {
        let h = History::manual();
        let a = h.client(ClientKind::WsMember, "m1");
        let b = h.client(ClientKind::WsMember, "m1");
        t(&h, 10);
        join(&a, "node-a", "R1", 0);
        join(&b, "node-b", "R2", 0);
        t(&h, 20);
        msg(&a, "R1", 1, 1, 1000);
        t(&h, 30);
        msg(&b, "R2", 1, 2, 1100);
        t(&h, 40);
        msg(&a, "R1", 2, 3, 1300);
        h.finish();
        let v = h.check();
        assert_eq!(v.count(Rule::Split), 1, "{v}");
        assert!(v.violations[0].evidence.contains("room R2"), "{v}");
    }

    #[test]
    fn successive_incarnations_are_no_split() {
        let h = History::manual();
        let a = h.client(ClientKind::WsMember, "m1");
        t(&h, 10);
        join(&a, "node-a", "R1", 0);
        msg(&a, "R1", 1, 1, 1000);
        msg(&a, "R1", 2, 2, 1100);
        t(&h, 20);
        a.ended(super::End::Dropped);
        h.memory_lost(
            "node-a",
            Duration::from_millis(15),
            Duration::from_millis(15),
        );
        resume(&a, 2, "R1", "node-b", "R2", 0, false);
        msg(&a, "R2", 1, 3, 1100);
        msg(&a, "R2", 2, 4, 1200);
        h.finish();
        let v = h.check();
        assert!(v.is_clean(), "{v}");
    }

    #[test]
    fn two_members_seeing_different_events_at_one_seq_diverge() {
        let h = History::manual();
        let a = h.client(ClientKind::WsMember, "m1");
        let b = h.client(ClientKind::WsMember, "m1");
        t(&h, 10);
        join(&a, "node-a", "R", 0);
        join(&b, "node-a", "R", 0);
        a.event("R", 1, EventKind::Join, "one", None, None);
        t(&h, 11);
        b.event("R", 1, EventKind::Join, "another", None, None);
        h.finish();
        let v = h.check();
        assert_eq!(v.count(Rule::Diverged), 1, "{v}");
        assert_eq!(v.violations.len(), 1, "{v}");
    }

    #[test]
    fn a_skipped_seq_within_a_connection_is_a_gap() {
        let h = History::manual();
        let a = h.client(ClientKind::WsMember, "m1");
        t(&h, 10);
        join(&a, "node-a", "R", 4);
        ev(&a, "R", 5);
        t(&h, 20);
        ev(&a, "R", 7);
        h.finish();
        let v = h.check();
        assert_eq!(v.count(Rule::Gap), 1, "{v}");
        assert!(v.violations[0].evidence.contains("seq 7"), "{v}");
        assert!(v.violations[0].evidence.contains("1 missing"), "{v}");
    }

    #[test]
    fn the_first_event_after_a_fresh_welcome_is_its_seq_plus_one() {
        let h = History::manual();
        let a = h.client(ClientKind::WsMember, "m1");
        t(&h, 10);
        join(&a, "node-a", "R", 4);
        ev(&a, "R", 6);
        h.finish();
        assert_eq!(h.check().count(Rule::Gap), 1);
    }

    #[test]
    fn a_skipped_seq_across_a_recovered_resume_is_a_gap() {
        let h = History::manual();
        let a = h.client(ClientKind::WsMember, "m1");
        t(&h, 10);
        join(&a, "node-a", "R", 0);
        ev(&a, "R", 1);
        ev(&a, "R", 2);
        a.ended(super::End::Closed(4001));
        t(&h, 20);
        resume(&a, 2, "R", "node-b", "R", 5, true);
        ev(&a, "R", 4);
        h.finish();
        let v = h.check();
        assert_eq!(v.count(Rule::Gap), 1, "{v}");
        assert!(
            v.violations[0].evidence.contains("resume from seq 2"),
            "{v}"
        );
    }

    #[test]
    fn a_repeated_seq_is_a_duplicate() {
        let h = History::manual();
        let a = h.client(ClientKind::WsMember, "m1");
        t(&h, 10);
        join(&a, "node-a", "R", 0);
        ev(&a, "R", 1);
        ev(&a, "R", 2);
        ev(&a, "R", 2);
        h.finish();
        let v = h.check();
        assert_eq!(v.count(Rule::Duplicate), 1, "{v}");
        assert_eq!(v.summary.duplicated, 1);
    }

    #[test]
    fn recovered_true_from_another_incarnation_is_flagged() {
        let h = History::manual();
        let a = h.client(ClientKind::WsMember, "m1");
        t(&h, 10);
        join(&a, "node-a", "R1", 0);
        ev(&a, "R1", 1);
        a.ended(super::End::Dropped);
        resume(&a, 1, "R1", "node-b", "R2", 3, true);
        h.finish();
        let v = h.check();
        assert_eq!(v.count(Rule::RecoveredAcrossRooms), 1, "{v}");
    }

    /// A member of room R on node-a whose resume is answered
    /// `recovered: false` in a new room S, after a replay that starts at 1.
    fn told(loss: bool) -> Arc<History> {
        let h = History::manual();
        let a = h.client(ClientKind::WsMember, "m1");
        let p = h.client(ClientKind::Publisher, "");
        t(&h, 10);
        join(&a, "node-a", "R", 0);
        ev(&a, "R", 1);
        publish(&h, &p, 9, ("R", 2), (20, 25));
        t(&h, 26);
        a.ended(super::End::Dropped);
        if loss {
            h.memory_lost(
                "node-a",
                Duration::from_millis(26),
                Duration::from_millis(26),
            );
        }
        t(&h, 40);
        resume(&a, 1, "R", "node-b", "S", 3, false);
        ev(&a, "S", 1);
        ev(&a, "S", 2);
        ev(&a, "S", 3);
        ev(&a, "S", 4);
        h.finish();
        h
    }

    #[test]
    fn recovered_false_after_a_declared_memory_loss_is_fine() {
        let v = told(true).check();
        assert!(v.is_clean(), "{v}");
        assert_eq!(v.summary.not_recovered, 1);
        assert_eq!(v.summary.lost_told, 1);
        assert_eq!(v.summary.expected, 1);
    }

    #[test]
    fn recovered_false_without_a_memory_loss_is_flagged() {
        let v = told(false).check();
        assert_eq!(v.count(Rule::UnjustifiedNotRecovered), 1, "{v}");
        assert_eq!(v.violations.len(), 1, "{v}");
        let e = &v.violations[0].evidence;
        assert!(e.contains("held by: node-a"), "{e}");
        assert!(e.contains("declared memory losses: none"), "{e}");
    }

    #[test]
    fn a_memory_loss_declared_after_the_resume_does_not_justify_it() {
        let h = told(false);
        h.memory_lost(
            "node-a",
            Duration::from_millis(41),
            Duration::from_millis(41),
        );
        assert_eq!(h.check().count(Rule::UnjustifiedNotRecovered), 1);
    }

    /// A publish acknowledged at seq 3 of R that member `b` never receives;
    /// `b` stays connected to the end.
    fn lost() -> Arc<History> {
        let (h, a, b, p) = clean();
        publish(&h, &p, 8, ("R", 4), (40, 45));
        t(&h, 46);
        msg(&a, "R", 4, 8, 1046);
        let _ = b;
        h
    }

    #[test]
    fn an_acknowledged_publish_a_member_never_got_is_a_silent_loss() {
        let h = lost();
        t(&h, 300);
        // Still in flight: a test waits for this to drop to 0 first.
        assert_eq!(h.pending_deliveries(), 1);
        h.finish();
        let v = h.check();
        assert_eq!(v.count(Rule::SilentLoss), 1, "{v}");
        let e = &v.violations[0].evidence;
        assert!(e.contains("publish 8"), "{e}");
        assert!(e.contains("seq 4 of room R"), "{e}");
        assert!(e.contains("sse1@m1"), "{e}");
    }

    #[test]
    fn a_loss_on_a_node_that_lost_its_memory_is_excused() {
        let h = lost();
        h.memory_lost(
            "node-a",
            Duration::from_millis(46),
            Duration::from_millis(500),
        );
        t(&h, 300);
        h.finish();
        let v = h.check();
        assert!(v.is_clean(), "{v}");
        assert_eq!(v.summary.lost_excused, 1);
    }

    #[test]
    fn a_member_that_left_or_came_late_is_not_owed_the_publish() {
        let h = History::manual();
        let a = h.client(ClientKind::Churner, "m1");
        let late = h.client(ClientKind::WsMember, "m1");
        let p = h.client(ClientKind::Publisher, "");
        t(&h, 10);
        join(&a, "node-a", "R", 0);
        ev(&a, "R", 1);
        publish(&h, &p, 5, ("R", 3), (20, 30));
        t(&h, 25);
        a.ended(super::End::Left);
        // `late` joined after the publish was sent; its join is seq 2.
        join(&late, "node-a", "R", 1);
        ev(&late, "R", 2);
        t(&h, 26);
        msg(&late, "R", 3, 5, 1026);
        h.finish();
        let v = h.check();
        assert!(v.is_clean(), "{v}");
        assert_eq!(v.summary.expected, 0);
    }

    #[test]
    fn an_ack_whose_seq_holds_another_message_is_a_mismatch() {
        let (h, a, _, p) = clean();
        publish(&h, &p, 11, ("R", 3), (60, 61));
        let _ = a;
        h.finish();
        let v = h.check();
        assert_eq!(v.count(Rule::AckMismatch), 2, "{v}");
    }

    #[test]
    fn steps_report_convergence_and_joiner_waits() {
        let h = History::manual();
        let a = h.client(ClientKind::WsMember, "m1");
        let b = h.client(ClientKind::WsMember, "m1");
        let c = h.client(ClientKind::Churner, "m1");
        t(&h, 10);
        join(&a, "node-a", "R", 0);
        ev(&a, "R", 1);
        t(&h, 20);
        join(&b, "node-a", "R", 1);
        ev(&a, "R", 2);
        ev(&b, "R", 2);
        t(&h, 900);
        h.step("move");
        t(&h, 1000);
        a.ended(super::End::Closed(4001));
        t(&h, 1100);
        a.connect(1, Route::Ws, Some((2, "R")));
        t(&h, 1500);
        a.welcome("node-b", "R", 2, Some(true));
        t(&h, 1600);
        c.connect(0, Route::Ws, None);
        t(&h, 1700);
        c.connect_failed("timed out");
        t(&h, 1800);
        b.ended(super::End::Dropped);
        t(&h, 2000);
        h.finish();
        let v = h.check();
        assert!(v.is_clean(), "{v}");
        assert_eq!(v.steps.len(), 2, "{v}");
        let (start, moved) = (&v.steps[0], &v.steps[1]);
        assert_eq!(start.name, "start");
        assert_eq!(start.disrupted, 0);
        assert_eq!(start.back_in_meeting, Some(Duration::ZERO));
        assert_eq!(moved.name, "move");
        assert_eq!(moved.disrupted, 2, "{v}");
        assert_eq!(moved.never_back, 1, "{v}");
        assert_eq!(moved.back_in_meeting, None, "b never came back");
        assert_eq!(moved.joins, 2);
        assert_eq!(moved.failed_joins, 1);
        assert_eq!(moved.join_wait_max, Duration::from_millis(400));
        assert_eq!(
            moved.slowest_join.as_deref(),
            Some("ws0@m1 at 1.100s waited 400ms")
        );
        assert!(v.to_string().contains("NEVER (1 not back)"), "{v}");
    }

    #[test]
    fn a_replay_after_recovered_false_may_repeat_seqs_but_they_are_counted() {
        let h = History::manual();
        let a = h.client(ClientKind::WsMember, "m1");
        t(&h, 10);
        join(&a, "node-a", "R", 0);
        for seq in 1..=5 {
            ev(&a, "R", seq);
        }
        a.ended(super::End::Dropped);
        h.memory_lost(
            "node-a",
            Duration::from_millis(10),
            Duration::from_millis(10),
        );
        t(&h, 20);
        // The history no longer reaches back to 6: the replay starts at 4.
        resume(&a, 5, "R", "node-a", "R", 7, false);
        for seq in 4..=8 {
            ev(&a, "R", seq);
        }
        h.finish();
        let v = h.check();
        assert!(v.is_clean(), "{v}");
        assert_eq!(v.summary.duplicated, 2);
    }

    #[test]
    fn a_client_resuming_from_another_seq_than_it_saw_is_a_harness_bug() {
        let h = History::manual();
        let a = h.client(ClientKind::WsMember, "m1");
        t(&h, 10);
        join(&a, "node-a", "R", 0);
        ev(&a, "R", 1);
        ev(&a, "R", 2);
        a.ended(super::End::Dropped);
        resume(&a, 1, "R", "node-a", "R", 2, true);
        ev(&a, "R", 2);
        h.finish();
        let v = h.check();
        assert_eq!(v.count(Rule::ClientBug), 1, "{v}");
        assert_eq!(v.violations.len(), 1, "{v}");
    }

    #[test]
    fn records_after_finish_are_ignored() {
        let h = History::manual();
        let a = h.client(ClientKind::WsMember, "m1");
        join(&a, "node-a", "R", 0);
        h.finish();
        ev(&a, "R", 5);
        assert!(h.check().is_clean());
    }
}
