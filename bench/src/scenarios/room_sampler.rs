//! Samples every node's live rooms (`/control/rooms`) while a membership
//! change runs, to tell whether a meeting was ever live on two nodes at
//! once: a split as the nodes see it.
//!
//! Why beside the clients' own view: a client learns that its room closed
//! only when it reads the 4001 close frame. With thousands of members
//! reconnecting on one client core, a member may read its close a few tens
//! of milliseconds after a room-mate, kicked at the same instant, was
//! already welcomed at the new node. The clients then sit on two nodes,
//! though the old room had closed before the new one opened. The scenario
//! reports both; only two live rooms make a split.
//!
//! A poll answers at one unknown instant between its send and its receipt.
//! Consecutive polls of one node that list the same room form a run, surely
//! live from the first poll's receipt to the last poll's send. Two runs of
//! one meeting on two nodes are a split if those spans overlap, or if a
//! poll of one lies wholly inside the other's span (the same reasoning as
//! the end-to-end checker, tests/src/history/check.rs). Two single polls
//! around a handoff prove nothing and are not counted.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use roompin_shared::control::{RoomsReport, ROOMS_PATH};

/// One poll of one node: meeting → incarnation, or `None` if it failed.
struct Poll {
    sent: Instant,
    received: Instant,
    rooms: Option<HashMap<String, String>>,
}

/// What the polls showed.
#[derive(Debug, Default)]
pub struct Splits {
    /// Meetings seen live on two nodes at once.
    pub meetings: HashSet<String>,
    /// The longest proven overlap (zero when only an instant is proven).
    pub longest: Duration,
    pub polls: usize,
    pub failed_polls: usize,
}

pub struct Sampler {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Poll>>>,
}

/// Starts polling `nodes` every `every` with the control token.
pub fn start(nodes: &[SocketAddr], token: &str, every: Duration) -> Sampler {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = nodes
        .iter()
        .map(|&addr| {
            let stop = stop.clone();
            let token = token.to_owned();
            tokio::spawn(async move {
                let mut polls = Vec::new();
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let sent = Instant::now();
                    let token = token.clone();
                    let rooms = tokio::task::spawn_blocking(move || rooms_of(addr, &token))
                        .await
                        .ok()
                        .flatten();
                    polls.push(Poll {
                        sent,
                        received: Instant::now(),
                        rooms,
                    });
                }
                polls
            })
        })
        .collect();
    Sampler { stop, tasks }
}

fn rooms_of(addr: SocketAddr, token: &str) -> Option<HashMap<String, String>> {
    let auth = format!("Bearer {token}");
    let (status, body) =
        crate::procs::http_get_with(addr, ROOMS_PATH, &[("Authorization", &auth)]).ok()?;
    if status != 200 {
        return None;
    }
    let report: RoomsReport = serde_json::from_str(&body).ok()?;
    Some(
        report
            .rooms
            .into_iter()
            .map(|r| (r.meeting_id, r.room))
            .collect(),
    )
}

impl Sampler {
    /// Stops polling and judges what was seen.
    pub async fn finish(self) -> Splits {
        self.stop.store(true, Ordering::Relaxed);
        let mut by_node = Vec::new();
        for t in self.tasks {
            by_node.push(t.await.unwrap_or_default());
        }
        judge(&by_node)
    }
}

/// A room seen in consecutive polls of one node.
#[derive(Clone, Copy)]
struct Run {
    node: usize,
    /// Indexes of its first and last poll.
    first: usize,
    last: usize,
}

fn judge(by_node: &[Vec<Poll>]) -> Splits {
    let mut out = Splits {
        polls: by_node.iter().map(Vec::len).sum(),
        failed_polls: by_node
            .iter()
            .flatten()
            .filter(|p| p.rooms.is_none())
            .count(),
        ..Splits::default()
    };
    // meeting → runs on every node.
    let mut runs: HashMap<&str, Vec<Run>> = HashMap::new();
    for (node, polls) in by_node.iter().enumerate() {
        // meeting → (room, first poll) of the run in progress.
        let mut open: HashMap<&str, (&str, usize)> = HashMap::new();
        for (i, p) in polls.iter().enumerate() {
            let Some(rooms) = &p.rooms else {
                // A failed poll ends every run: nothing is known across it.
                for (m, (_, first)) in open.drain() {
                    runs.entry(m).or_default().push(Run {
                        node,
                        first,
                        last: i - 1,
                    });
                }
                continue;
            };
            open.retain(|m, (room, first)| {
                let same = rooms.get(*m).is_some_and(|r| r == room);
                if !same {
                    runs.entry(m).or_default().push(Run {
                        node,
                        first: *first,
                        last: i - 1,
                    });
                }
                same
            });
            for (m, r) in rooms {
                open.entry(m.as_str()).or_insert((r.as_str(), i));
            }
        }
        for (m, (_, first)) in open {
            runs.entry(m).or_default().push(Run {
                node,
                first,
                last: polls.len() - 1,
            });
        }
    }
    let span = |r: &Run| {
        let polls = &by_node[r.node];
        (polls[r.first].received, polls[r.last].sent)
    };
    // Some poll of `q` answered inside `r`'s sure span.
    let inside = |r: &Run, q: &Run| {
        let (lo, hi) = span(r);
        by_node[q.node][q.first..=q.last]
            .iter()
            .any(|p| lo <= p.sent && p.received <= hi)
    };
    for (meeting, runs) in &runs {
        for (i, r) in runs.iter().enumerate() {
            for q in &runs[i + 1..] {
                if q.node == r.node {
                    continue;
                }
                let ((rlo, rhi), (qlo, qhi)) = (span(r), span(q));
                let (lo, hi) = (rlo.max(qlo), rhi.min(qhi));
                if lo < hi {
                    out.longest = out.longest.max(hi - lo);
                    out.meetings.insert(meeting.to_string());
                } else if inside(r, q) || inside(q, r) {
                    out.meetings.insert(meeting.to_string());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls every 10 ms answering at once; `rooms[k]` is what poll k saw.
    fn polls(t0: Instant, offset_ms: u64, rooms: &[Option<&[(&str, &str)]>]) -> Vec<Poll> {
        rooms
            .iter()
            .enumerate()
            .map(|(k, r)| {
                let sent = t0 + Duration::from_millis(offset_ms + 10 * k as u64);
                Poll {
                    sent,
                    received: sent + Duration::from_millis(1),
                    rooms: r.map(|r| {
                        r.iter()
                            .map(|(m, i)| (m.to_string(), i.to_string()))
                            .collect()
                    }),
                }
            })
            .collect()
    }

    #[test]
    fn only_proven_overlaps_are_splits() {
        let t0 = Instant::now();
        let m: &[(&str, &str)] = &[("m", "r1")];
        let none: &[(&str, &str)] = &[];
        #[rustfmt::skip]
        let cases: Vec<(Vec<Poll>, Vec<Poll>, bool, &str)> = vec![
            (polls(t0, 0, &[Some(m), Some(m), Some(none), Some(none)]),
             polls(t0, 5, &[Some(none), Some(none), Some(m), Some(m)]), false,
             "a handoff between polls: never both"),
            (polls(t0, 0, &[Some(m), Some(m), Some(m), Some(m)]),
             polls(t0, 5, &[Some(none), Some(m), Some(m), Some(none)]), true,
             "both live across several polls"),
            (polls(t0, 0, &[Some(m), Some(m), Some(m), Some(none)]),
             polls(t0, 5, &[Some(none), Some(m), Some(none), Some(none)]), true,
             "one poll of b inside a's sure span"),
            (polls(t0, 0, &[Some(m), Some(none)]),
             polls(t0, 5, &[Some(m), Some(none)]), false,
             "two single polls prove nothing"),
            (polls(t0, 0, &[Some(m), None, Some(m)]),
             polls(t0, 5, &[Some(none), Some(m), Some(none)]), false,
             "a failed poll breaks the run: nothing known across it"),
        ];
        for (a, b, split, why) in cases {
            let s = judge(&[a, b]);
            assert_eq!(s.meetings.contains("m"), split, "{why}");
        }
    }
}
