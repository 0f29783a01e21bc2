//! Many meetings of reconnecting members, for tests that change the
//! cluster under traffic and then check that every meeting is whole.

use roompin_shared::{Member as RingMember, Ring};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::cluster::BalancerProc;
use crate::reconnect::{Member, MemberState};
use crate::PATIENCE;

pub const CONVERGE_WITHIN: Duration = Duration::from_secs(15);

pub struct Traffic {
    pub meetings: Vec<String>,
    /// Three members per meeting, alternating between the two balancers.
    pub members: Vec<Vec<Member>>,
}

/// Owners per meeting as a balancer's `/ring` says, computed with the
/// shared ring (the two-balancer test pins that this equals `/route`).
pub fn routes(ring: &Value, meetings: &[String]) -> HashMap<String, String> {
    let members = ring["members"].as_array().cloned().unwrap_or_default();
    let all: Vec<RingMember> = members
        .iter()
        .map(|m| RingMember {
            id: m["id"].as_str().unwrap_or_default().to_owned(),
            addr: m["addr"].as_str().unwrap_or_default().to_owned(),
            weight: m["weight"].as_u64().unwrap_or(1) as u32,
        })
        .collect();
    let owners: HashSet<String> = members
        .iter()
        .filter(|m| m["owner"] == true)
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect();
    let vnodes = ring["vnodes"].as_u64().unwrap_or(0) as u32;
    let ring = Ring::new(all, vnodes).without(|m| !owners.contains(&m.id));
    meetings
        .iter()
        .map(|m| {
            (
                m.clone(),
                ring.owner(m).map(|o| o.id.clone()).unwrap_or_default(),
            )
        })
        .collect()
}

impl Traffic {
    /// `meetings` meetings of three members each.
    pub fn start(balancers: [&BalancerProc; 2], meetings: usize) -> Traffic {
        let meetings: Vec<String> = (0..meetings).map(|i| format!("mtg-{i:03}")).collect();
        let members = meetings
            .iter()
            .map(|m| {
                (0..3)
                    .map(|u| Member::spawn(&balancers[u % 2].ws_base(), m, &format!("u{u}")))
                    .collect()
            })
            .collect();
        Traffic { meetings, members }
    }

    pub fn states(&self) -> Vec<Vec<MemberState>> {
        self.members
            .iter()
            .map(|ms| ms.iter().map(Member::state).collect())
            .collect()
    }

    /// Meetings not whole under `routes`: some member not connected, or on
    /// another node than the route.
    pub fn split(&self, routes: &HashMap<String, String>) -> Vec<String> {
        let mut out = Vec::new();
        for (meeting, members) in self.meetings.iter().zip(&self.members) {
            let want = routes.get(meeting).map(String::as_str).unwrap_or("");
            if members
                .iter()
                .map(Member::state)
                .any(|s| !s.connected || s.node != want)
            {
                out.push(meeting.clone());
            }
        }
        out
    }

    /// Waits until both balancers agree on owners and every meeting is whole
    /// on its route; returns the routes and how long it took.
    pub async fn converge(
        &self,
        b: [&BalancerProc; 2],
        since: Instant,
        step: &str,
    ) -> HashMap<String, String> {
        let deadline = Instant::now() + CONVERGE_WITHIN;
        loop {
            let (r0, r1) = (b[0].ring().await, b[1].ring().await);
            if let (Ok(r0), Ok(r1)) = (r0, r1) {
                let (routes0, routes1) = (routes(&r0, &self.meetings), routes(&r1, &self.meetings));
                if routes0 == routes1 && self.split(&routes0).is_empty() {
                    println!("[{step}] converged in {:?}", since.elapsed());
                    return routes0;
                }
                if Instant::now() > deadline {
                    let split = self.split(&routes0);
                    panic!("[{step}] not converged after {CONVERGE_WITHIN:?}: balancers agree: {}, {} meetings not whole, e.g. {:?}",
                        routes0 == routes1, split.len(), split.iter().take(3).map(|m| (m, self.nodes_of(m))).collect::<Vec<_>>());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn nodes_of(&self, meeting: &str) -> Vec<(bool, String)> {
        let i = self.meetings.iter().position(|m| m == meeting).unwrap_or(0);
        self.members[i]
            .iter()
            .map(|m| m.state())
            .map(|s| (s.connected, s.node))
            .collect()
    }

    /// Every meeting's first member sends a message; all three get it.
    pub async fn messages_reach_everyone(&self, step: &str) {
        for (i, members) in self.members.iter().enumerate() {
            members[0].send(&format!("{step}/{i}"));
        }
        crate::eventually(
            PATIENCE,
            &format!("[{step}] messages delivered"),
            || async {
                let missing = self
                    .members
                    .iter()
                    .enumerate()
                    .filter(|(i, ms)| {
                        ms.iter()
                            .any(|m| !m.state().texts.contains(&format!("{step}/{i}")))
                    })
                    .count();
                (missing == 0).then_some(())
            },
        )
        .await;
    }

    pub fn disconnects(&self) -> Vec<u32> {
        self.states()
            .iter()
            .map(|ms| ms.iter().map(|s| s.disconnects).sum())
            .collect()
    }

    /// No member ever saw a duplicate, and no gap without a `recovered:false`.
    pub fn assert_no_duplicates(&self) {
        for (meeting, states) in self.meetings.iter().zip(self.states()) {
            for s in states {
                assert_eq!(s.duplicates, 0, "{meeting}: duplicate events {s:?}");
            }
        }
    }
}

/// Meetings whose owner differs between two route maps.
pub fn moved(before: &HashMap<String, String>, after: &HashMap<String, String>) -> Vec<String> {
    before
        .iter()
        .filter(|(m, n)| after.get(*m) != Some(*n))
        .map(|(m, _)| m.clone())
        .collect()
}

/// Meetings not in `moved` had no disconnect between the two snapshots.
pub fn assert_undisturbed(t: &Traffic, before: &[u32], moved: &[String], step: &str) {
    let after = t.disconnects();
    let moved: HashSet<&String> = moved.iter().collect();
    for (i, meeting) in t.meetings.iter().enumerate() {
        if !moved.contains(meeting) {
            assert_eq!(
                after[i], before[i],
                "[{step}] {meeting} did not move but its members reconnected"
            );
        }
    }
}

/// Waits until both balancers show exactly these owners.
pub async fn owners_are(b: [&BalancerProc; 2], ids: &[&str]) {
    let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    want.sort();
    crate::eventually(
        PATIENCE,
        &format!("both balancers own with {want:?}"),
        || async {
            for balancer in b {
                if balancer.owners().await.ok()? != want {
                    return None;
                }
            }
            Some(())
        },
    )
    .await
}

/// Asserts two route maps are equal, naming a few differences if not.
pub fn assert_same_routes(
    got: &HashMap<String, String>,
    want: &HashMap<String, String>,
    step: &str,
) {
    let diff = moved(want, got);
    assert!(
        diff.is_empty(),
        "[{step}] {} meetings differ, e.g. {:?}",
        diff.len(),
        diff.iter()
            .take(5)
            .map(|m| (m, want.get(m), got.get(m)))
            .collect::<Vec<_>>()
    );
}

pub async fn agree_on_routes(b: [&BalancerProc; 2], step: &str) {
    for i in 0..1000 {
        let meeting = format!("agree-{i}");
        let (r0, r1) = (
            b[0].route(&meeting).await.expect("route"),
            b[1].route(&meeting).await.expect("route"),
        );
        assert_eq!(r0, r1, "[{step}] balancers disagree on {meeting}");
    }
}
