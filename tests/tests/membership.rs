//! Membership changes without split rooms (issue 4): 300 meetings × 3
//! members that reconnect by the protocol's rules, behind two balancers that
//! watch the same TOML. After every change, each meeting must be whole again
//! (all its open connections on one node, the node its route names), its
//! messages must reach every member, and meetings whose owner did not change
//! must not have been disturbed at all.

use roompin_shared::{Member as RingMember, Ring};
use roompin_tests::cluster::{BalancerProc, Cluster, ClusterOptions};
use roompin_tests::process::{free_port, loopback, NodeProc};
use roompin_tests::reconnect::{Member, MemberState};
use roompin_tests::{metric, PATIENCE};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const MEETINGS: usize = 300;
const CONVERGE_WITHIN: Duration = Duration::from_secs(15);

struct Traffic {
    meetings: Vec<String>,
    /// Three members per meeting, alternating between the two balancers.
    members: Vec<Vec<Member>>,
}

/// Owners per meeting as a balancer's `/ring` says, computed with the
/// shared ring (the two-balancer test pins that this equals `/route`).
fn routes(ring: &Value, meetings: &[String]) -> HashMap<String, String> {
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
    fn start(balancers: [&BalancerProc; 2]) -> Traffic {
        let meetings: Vec<String> = (0..MEETINGS).map(|i| format!("mtg-{i:03}")).collect();
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

    fn states(&self) -> Vec<Vec<MemberState>> {
        self.members
            .iter()
            .map(|ms| ms.iter().map(Member::state).collect())
            .collect()
    }

    /// Meetings not whole under `routes`: some member not connected, or on
    /// another node than the route.
    fn split(&self, routes: &HashMap<String, String>) -> Vec<String> {
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
    async fn converge(
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

    fn nodes_of(&self, meeting: &str) -> Vec<(bool, String)> {
        let i = self.meetings.iter().position(|m| m == meeting).unwrap_or(0);
        self.members[i]
            .iter()
            .map(|m| m.state())
            .map(|s| (s.connected, s.node))
            .collect()
    }

    /// Every meeting's first member sends a message; all three get it.
    async fn messages_reach_everyone(&self, step: &str) {
        for (i, members) in self.members.iter().enumerate() {
            members[0].send(&format!("{step}/{i}"));
        }
        roompin_tests::eventually(
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

    fn disconnects(&self) -> Vec<u32> {
        self.states()
            .iter()
            .map(|ms| ms.iter().map(|s| s.disconnects).sum())
            .collect()
    }

    /// No member ever saw a duplicate, and no gap without a `recovered:false`.
    fn assert_no_duplicates(&self) {
        for (meeting, states) in self.meetings.iter().zip(self.states()) {
            for s in states {
                assert_eq!(s.duplicates, 0, "{meeting}: duplicate events {s:?}");
            }
        }
    }
}

/// Meetings whose owner differs between two route maps.
fn moved(before: &HashMap<String, String>, after: &HashMap<String, String>) -> Vec<String> {
    before
        .iter()
        .filter(|(m, n)| after.get(*m) != Some(*n))
        .map(|(m, _)| m.clone())
        .collect()
}

/// Meetings not in `moved` had no disconnect between the two snapshots.
fn assert_undisturbed(t: &Traffic, before: &[u32], moved: &[String], step: &str) {
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
async fn owners_are(b: [&BalancerProc; 2], ids: &[&str]) {
    let mut want: Vec<&str> = ids.to_vec();
    want.sort();
    roompin_tests::eventually(
        PATIENCE,
        &format!("both balancers own with {want:?}"),
        || async {
            for balancer in b {
                let ring = balancer.ring().await.ok()?;
                let mut owners: Vec<String> = ring["members"]
                    .as_array()?
                    .iter()
                    .filter(|m| m["owner"] == true)
                    .filter_map(|m| m["id"].as_str().map(str::to_owned))
                    .collect();
                owners.sort();
                if owners != want {
                    return None;
                }
            }
            Some(())
        },
    )
    .await
}

/// Asserts two route maps are equal, naming a few differences if not.
fn assert_same_routes(got: &HashMap<String, String>, want: &HashMap<String, String>, step: &str) {
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

async fn agree_on_routes(b: [&BalancerProc; 2], step: &str) {
    for i in 0..1000 {
        let meeting = format!("agree-{i}");
        let (r0, r1) = (
            b[0].route(&meeting).await.expect("route"),
            b[1].route(&meeting).await.expect("route"),
        );
        assert_eq!(r0, r1, "[{step}] balancers disagree on {meeting}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meetings_stay_whole_through_every_membership_change() {
    let options = ClusterOptions {
        node_toml: "drain_timeout_ms = 8000\n".into(),
        ..Default::default()
    };
    let mut cluster = Cluster::start(options).await;
    let d = cluster.add_node("node-d").await;
    let (public, admin) = (loopback(free_port()), loopback(free_port()));
    let second = BalancerProc::start(cluster.balancer.config.clone(), public, admin).await;
    let b = [&cluster.balancer, &second];

    let traffic = Traffic::start(b);
    let routes0 = traffic.converge(b, Instant::now(), "start").await;
    traffic.messages_reach_everyone("start").await;

    // 1. Add node-d to the TOML under traffic.
    let before = traffic.disconnects();
    let t = Instant::now();
    cluster.write_config(&cluster.toml_with(&[0, 1, 2, d]));
    owners_are(b, &["node-a", "node-b", "node-c", "node-d"]).await;
    let routes1 = traffic.converge(b, t, "add node-d").await;
    let moved1 = moved(&routes0, &routes1);
    let share = moved1.len() as f64 / MEETINGS as f64;
    println!(
        "[add node-d] {} of {MEETINGS} meetings moved ({:.0}%)",
        moved1.len(),
        share * 100.0
    );
    assert!((0.15..=0.35).contains(&share), "{share} of meetings moved");
    assert!(
        moved1.iter().all(|m| routes1[m] == "node-d"),
        "a meeting moved between old nodes"
    );
    assert_undisturbed(&traffic, &before, &moved1, "add node-d");
    traffic.messages_reach_everyone("add").await;
    agree_on_routes(b, "add node-d").await;

    // 2. Remove node-d again: its meetings go back to their old owners.
    let before = traffic.disconnects();
    let t = Instant::now();
    cluster.write_config(&cluster.toml_with(&[0, 1, 2]));
    owners_are(b, &["node-a", "node-b", "node-c"]).await;
    let routes2 = traffic.converge(b, t, "remove node-d").await;
    assert_same_routes(
        &routes2,
        &routes0,
        "remove node-d: back to the previous owners",
    );
    assert_undisturbed(&traffic, &before, &moved1, "remove node-d");
    traffic.messages_reach_everyone("remove").await;
    agree_on_routes(b, "remove node-d").await;

    // 3. kill -9 node-b: its meetings are whole on the survivors within 5 s.
    let before = traffic.disconnects();
    let t = Instant::now();
    cluster.nodes[1].proc.kill9();
    owners_are(b, &["node-a", "node-c"]).await;
    let routes3 = traffic.converge(b, t, "kill -9 node-b").await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?} to recover from a dead node",
        t.elapsed()
    );
    let moved3 = moved(&routes0, &routes3);
    assert!(
        moved3.iter().all(|m| routes0[m] == "node-b"),
        "a meeting of a live node moved"
    );
    assert_undisturbed(&traffic, &before, &moved3, "kill -9 node-b");
    traffic.messages_reach_everyone("kill").await;
    agree_on_routes(b, "kill -9 node-b").await;

    // 4. Restart node-b: failback, and no split at any check afterwards.
    let t = Instant::now();
    let old = &cluster.nodes[1];
    let restarted = NodeProc::start_on("node-b", old.addr, old.options.clone()).await;
    cluster.nodes[1] = restarted;
    owners_are(b, &["node-a", "node-b", "node-c"]).await;
    let routes4 = traffic.converge(b, t, "restart node-b").await;
    assert_same_routes(&routes4, &routes0, "failback brings node-b's meetings home");
    for check in 0..10 {
        assert!(
            traffic.split(&routes4).is_empty(),
            "a meeting split after convergence (check {check})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    traffic.messages_reach_everyone("failback").await;
    agree_on_routes(b, "restart node-b").await;

    // 5. An invalid TOML is refused whole; a later valid edit applies.
    let errors = |text: &str| {
        metric(
            text,
            "roompin_balancer_config_reloads_total{result=\"error\"}",
        )
        .unwrap_or(0.0)
    };
    let (errors0, epoch0) = (errors(&b[0].metrics().await), b[0].epoch().await);
    let before = traffic.disconnects();
    cluster.write_config("listen = \"127.0.0.1:1\"\n[[upstream]\nid = ");
    roompin_tests::eventually(PATIENCE, "the reload error is counted", || async {
        (errors(&b[0].metrics().await) > errors0 && errors(&b[1].metrics().await) > 0.0)
            .then_some(())
    })
    .await;
    assert_eq!(
        b[0].epoch().await,
        epoch0,
        "an invalid config changed the ring"
    );
    let routes5 = traffic.converge(b, Instant::now(), "invalid TOML").await;
    assert_same_routes(&routes5, &routes0, "invalid TOML changes nothing");
    assert_undisturbed(&traffic, &before, &[], "invalid TOML");
    let t = Instant::now();
    let weighted =
        cluster
            .toml_with(&[0, 1, 2])
            .replacen("id = \"node-a\"", "id = \"node-a\"\nweight = 2", 1);
    cluster.write_config(&weighted);
    roompin_tests::eventually(PATIENCE, "the valid edit applies", || async {
        let ring = b[0].ring().await.ok()?;
        (ring["members"][0]["weight"] == 2).then_some(())
    })
    .await;
    let routes5b = traffic
        .converge(b, t, "valid edit after an invalid one")
        .await;
    assert!(
        moved(&routes0, &routes5b)
            .iter()
            .all(|m| routes5b[m] == "node-a"),
        "weight 2 for node-a moved other meetings"
    );
    agree_on_routes(b, "valid edit").await;

    // 6. SIGTERM a node: it drains, exits 0, and no meeting splits.
    let t = Instant::now();
    cluster.nodes[2]
        .proc
        .signal(nix::sys::signal::Signal::SIGTERM);
    owners_are(b, &["node-a", "node-b"]).await;
    let status = cluster.nodes[2]
        .proc
        .wait_exit(Duration::from_secs(15))
        .await;
    assert!(
        status.is_some_and(|s| s.success()),
        "node-c did not drain and exit 0: {status:?}"
    );
    println!("[SIGTERM node-c] exited after {:?}", t.elapsed());
    let routes6 = traffic.converge(b, t, "SIGTERM node-c").await;
    assert!(routes6.values().all(|n| n != "node-c"));
    traffic.messages_reach_everyone("drain").await;
    agree_on_routes(b, "SIGTERM node-c").await;

    traffic.assert_no_duplicates();
    let moved_total = metric(&b[0].metrics().await, "roompin_balancer_rooms_moved_total")
        .unwrap_or(0.0)
        + metric(&b[1].metrics().await, "roompin_balancer_rooms_moved_total").unwrap_or(0.0);
    assert!(moved_total > 0.0, "no balancer counted a moved room");
}
