//! Claim rounds: before a node opens a room for a meeting it has none of, it
//! asks every peer it knows what they have of the meeting, and opens the
//! room only if nobody holds it, nobody is handing it over, and nobody who
//! wins ties is opening it too. Otherwise the meeting's members are
//! forwarded to the holder, or wait for the handoff coming here.
//!
//! [`decide_round`] is the rule, tested in-process; [`run`] is the actor
//! that asks (through `peers`) and reports to `placement`.

use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::node::Node;
use crate::peers::Answer;
use crate::placement::{wins_tie, RoundOutcome};
use roompin_shared::control::{Holding, NodeRef};
use roompin_shared::MeetingId;

/// A peer's answer counts only if it comes within this time of the
/// question; a later one is treated as no answer. Tombstones live far
/// longer (`placement::TOMBSTONE_TTL`), so an answer in time reflects any
/// handoff that happened before it.
pub const ANSWER_TIMEOUT: Duration = Duration::from_millis(750);
/// A claim round (and so a joiner's wait) gives up after this.
pub const CLAIM_DEADLINE: Duration = Duration::from_millis(1800);
/// A holder's answer surely postdates a handoff it got this long before
/// another peer reported it (answers older than `ANSWER_TIMEOUT` are not
/// taken), so its "absent" then means it lost the room, not that the
/// handoff had not arrived yet.
const SETTLED: Duration = Duration::from_millis(1000);
/// Pause before asking again when the answers were not decisive.
const RETRY_PAUSE: Duration = Duration::from_millis(40);
/// Pause before asking again while a handoff to this node is on its way.
const AWAIT_PAUSE: Duration = Duration::from_millis(150);

/// Judges one round's answers.
///
/// - `yielded`: a peer that wins ties asked about the meeting during the
///   round; it may be opening the room, so this round must not.
/// - A live room anywhere wins: forward to it.
/// - A handoff on its way here: wait for it.
/// - A handoff on its way elsewhere, or one that landed elsewhere a moment
///   ago on a peer that said "absent" (its answer may predate the
///   handoff), or on a node this one did not ask: ask again. A receiver
///   that said "absent" well after the handoff has lost the room (it
///   restarted), and one that refused the connection is not running.
/// - A peer that wins ties and is opening it: ask again (by then it is live).
/// - A peer that did not answer may hold the room, unless the balancers'
///   reports show it has surely fenced itself (`fenced`). A refused
///   connection means no process, so no room.
/// - Otherwise nobody has it: open it.
pub fn decide_round(
    me: &str,
    answers: &[(NodeRef, Answer)],
    yielded: bool,
    fenced: impl Fn(&str) -> bool,
) -> RoundOutcome {
    if yielded {
        return RoundOutcome::Retry("a peer that wins ties is opening it");
    }
    if let Some((peer, _)) = answers
        .iter()
        .find(|(_, a)| *a == Answer::Holding(Holding::Live))
    {
        return RoundOutcome::Relay(peer.clone());
    }
    let said: HashMap<&str, &Answer> = answers.iter().map(|(p, a)| (p.id.as_str(), a)).collect();
    let mut incoming = false;
    for (peer, answer) in answers {
        match answer {
            Answer::Holding(Holding::Absent | Holding::Fenced)
            | Answer::Refused
            | Answer::Forgot => {}
            Answer::Holding(Holding::Live) => {}
            Answer::Holding(Holding::Moving { to }) if to.id == me => incoming = true,
            Answer::Holding(Holding::Moving { .. }) => {
                return RoundOutcome::Retry("a handoff to another node is in flight")
            }
            Answer::Holding(Holding::Moved { to, .. }) if to.id == me => {}
            Answer::Holding(Holding::Moved { to, age_ms }) => match said.get(to.id.as_str()) {
                Some(Answer::Refused) => {}
                Some(Answer::Holding(Holding::Absent | Holding::Fenced) | Answer::Forgot)
                    if Duration::from_millis(*age_ms) >= SETTLED => {}
                _ => return RoundOutcome::Retry("a handoff just landed on another node"),
            },
            Answer::Holding(Holding::Acquiring { .. }) if wins_tie(&peer.id, me) => {
                return RoundOutcome::Retry("a peer that wins ties is opening it")
            }
            Answer::Holding(Holding::Acquiring { .. }) => {}
            Answer::Unknown if fenced(&peer.id) => {}
            Answer::Unknown => return RoundOutcome::Retry("a peer did not answer"),
        }
    }
    if incoming {
        RoundOutcome::AwaitHandoff
    } else {
        RoundOutcome::Create
    }
}

/// Whether a round that creates the room may reopen the one this node's
/// fence closed: only if every peer answered, has no room (it may be
/// opening one: this round won the tie, and it will find this room), was
/// not fenced with one itself, and remembers back to the fence. A
/// peer that did not answer, is not running, or restarted since may have
/// held the meeting after this node was written off, and members who
/// resumed the old room would then be told `recovered: true` over events
/// they never saw. (A room a peer opened and dropped for idleness since
/// cannot hide here: a frozen room lasts no longer than rooms stay empty,
/// `placement::FROZEN_TTL`.)
pub fn reopens(answers: &[(NodeRef, Answer)]) -> bool {
    answers.iter().all(|(_, a)| {
        matches!(
            a,
            Answer::Holding(Holding::Absent | Holding::Acquiring { fenced: false })
        )
    })
}

/// Runs claim round `round` for `meeting` until it is decided, overtaken,
/// or out of time.
pub async fn run(node: Arc<Node>, meeting: MeetingId, round: u64) {
    let started = Instant::now();
    let deadline = started + CLAIM_DEADLINE;
    loop {
        let now = Instant::now();
        let peers = node.peers_to_ask(now);
        // A room this node's fence closed reopens only if every peer says
        // "absent" and remembers back to the fence (`reopens`).
        let vouch = node.placement.frozen_for(&meeting, now);
        let asks = peers
            .iter()
            .map(|p| node.peers.where_is(p, &meeting, vouch));
        let answers: Vec<(NodeRef, Answer)> = tokio::select! {
            a = futures_util::future::join_all(asks) => peers.iter().cloned().zip(a).collect(),
            _ = node.shutdown.cancelled() => return,
        };
        let Some(yielded) = node.placement.take_yielded(&meeting, round) else {
            return;
        };
        // A peer that names another node we did not ask gets that node asked
        // next time.
        for (_, a) in &answers {
            if let Answer::Holding(Holding::Moving { to } | Holding::Moved { to, .. }) = a {
                node.placement.note_contact(to, Instant::now());
            }
        }
        let now = Instant::now();
        let views = node.ownership.snapshot();
        let outcome = decide_round(&node.id, &answers, yielded, |p| views.known_fenced(p, now));
        let label = match &outcome {
            RoundOutcome::Create => "create",
            RoundOutcome::Relay(_) => "relay",
            RoundOutcome::AwaitHandoff => "await_handoff",
            RoundOutcome::Retry(_) => "retry",
        };
        node.metrics.claim_rounds.with_label_values(&[label]).inc();
        if outcome == RoundOutcome::Create && vouch.is_some() && !reopens(&answers) {
            node.placement.forget_frozen(&meeting);
        }
        if let RoundOutcome::Retry(why) = &outcome {
            tracing::debug!(meeting = %meeting, why, "claim round undecided");
        }
        if !node
            .placement
            .finish_round(&meeting, round, &outcome, node.ask(now), now)
        {
            if outcome == RoundOutcome::Create {
                tracing::debug!(meeting = %meeting, ms = started.elapsed().as_millis() as u64, "room opened after a claim round");
            }
            return;
        }
        let pause = match outcome {
            RoundOutcome::AwaitHandoff => AWAIT_PAUSE,
            _ => RETRY_PAUSE + Duration::from_millis(rand::rng().random_range(0..20)),
        };
        if Instant::now() + pause >= deadline {
            tracing::info!(meeting = %meeting, ?outcome, "claim round gave up; the meeting's joiners are told to retry");
            node.placement.give_up(&meeting, round);
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = node.shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(id: &str) -> NodeRef {
        NodeRef {
            id: id.into(),
            addr: format!("{id}.test:9001"),
        }
    }

    fn h(x: Holding) -> Answer {
        Answer::Holding(x)
    }

    #[test]
    fn round_rules() {
        let absent = || h(Holding::Absent);
        let moving = |to: &str| h(Holding::Moving { to: n(to) });
        let moved = |to: &str| {
            h(Holding::Moved {
                to: n(to),
                age_ms: 10,
            })
        };
        let moved_long_ago = |to: &str| {
            h(Holding::Moved {
                to: n(to),
                age_ms: 5_000,
            })
        };
        use RoundOutcome::*;
        // Node "b" asks "a" and "c"; "x" has surely fenced itself.
        #[rustfmt::skip]
        type Case = (Vec<(&'static str, Answer)>, bool, RoundOutcome, &'static str);
        let cases: Vec<Case> = vec![
            (
                vec![("a", absent()), ("c", absent())],
                false,
                Create,
                "nobody has it",
            ),
            (vec![], false, Create, "no peers"),
            (
                vec![("a", absent()), ("c", absent())],
                true,
                Retry("a peer that wins ties is opening it"),
                "yielded",
            ),
            (
                vec![("a", absent()), ("c", h(Holding::Live))],
                false,
                Relay(n("c")),
                "c holds it",
            ),
            (
                vec![("a", moving("b")), ("c", absent())],
                false,
                AwaitHandoff,
                "a hands it to b",
            ),
            (
                vec![("a", moving("c")), ("c", absent())],
                false,
                Retry("a handoff to another node is in flight"),
                "a hands it to c",
            ),
            (
                vec![("a", moved("c")), ("c", absent())],
                false,
                Retry("a handoff just landed on another node"),
                "c's answer may predate the handoff",
            ),
            (
                vec![("a", moved("c")), ("c", h(Holding::Live))],
                false,
                Relay(n("c")),
                "c holds it now",
            ),
            (
                vec![("a", moved("c")), ("c", Answer::Refused)],
                false,
                Create,
                "c died with it",
            ),
            (
                vec![("a", moved_long_ago("c")), ("c", absent())],
                false,
                Create,
                "c restarted since and lost it",
            ),
            (
                vec![("a", moved_long_ago("z"))],
                false,
                Retry("a handoff just landed on another node"),
                "z was not asked",
            ),
            (
                vec![("a", moved("b")), ("c", absent())],
                false,
                Create,
                "it was handed here, and this process does not have it",
            ),
            (
                vec![
                    ("a", h(Holding::Acquiring { fenced: false })),
                    ("c", absent()),
                ],
                false,
                Retry("a peer that wins ties is opening it"),
                "a wins ties",
            ),
            (
                vec![
                    ("a", absent()),
                    ("c", h(Holding::Acquiring { fenced: false })),
                ],
                false,
                Create,
                "c yields to b",
            ),
            (
                vec![("a", Answer::Refused), ("c", absent())],
                false,
                Create,
                "a is not running",
            ),
            (
                vec![("a", Answer::Unknown), ("c", absent())],
                false,
                Retry("a peer did not answer"),
                "a may hold it",
            ),
            (
                vec![("x", Answer::Unknown), ("c", absent())],
                false,
                Create,
                "x has fenced itself",
            ),
            (
                vec![("a", Answer::Forgot), ("c", absent())],
                false,
                Create,
                "a restarted since: it holds nothing",
            ),
            (
                vec![("a", h(Holding::Fenced)), ("c", absent())],
                false,
                Create,
                "a's fence closed its room: nothing is live",
            ),
        ];
        for (answers, yielded, want, why) in cases {
            let answers: Vec<(NodeRef, Answer)> =
                answers.into_iter().map(|(p, a)| (n(p), a)).collect();
            assert_eq!(
                decide_round("b", &answers, yielded, |p| p == "x"),
                want,
                "{why}"
            );
        }
    }

    /// A frozen room reopens only on answers that rule out every peer.
    #[test]
    fn a_frozen_room_reopens_only_if_every_peer_remembers_and_has_nothing() {
        let absent = || Answer::Holding(Holding::Absent);
        #[rustfmt::skip]
        let cases: Vec<(Vec<Answer>, bool, &str)> = vec![
            (vec![], true, "no peers"),
            (vec![absent(), absent()], true, "everyone remembers, nobody has it"),
            (vec![absent(), Answer::Forgot], false, "a peer restarted since the fence"),
            (vec![absent(), Answer::Refused], false, "a peer is down: it may have held it"),
            (vec![absent(), Answer::Unknown], false, "a peer did not answer"),
            (vec![Answer::Holding(Holding::Acquiring { fenced: false })], true,
                "a peer is opening it, and had none: it yields to this node or finds it"),
            (vec![Answer::Holding(Holding::Acquiring { fenced: true })], false,
                "a peer is opening it, and its fence closed one"),
            (vec![Answer::Holding(Holding::Fenced)], false, "a peer's fence closed one too"),
        ];
        for (answers, want, why) in cases {
            let answers: Vec<(NodeRef, Answer)> =
                answers.into_iter().map(|a| (n("p"), a)).collect();
            assert_eq!(reopens(&answers), want, "{why}");
        }
    }
}
