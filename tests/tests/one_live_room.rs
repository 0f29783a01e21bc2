//! One live room per meeting behind two balancers whose edits land a second
//! apart (issue 9). Three nodes plus a fourth, 100 meetings, each with 3
//! WebSocket members and 1 SSE member that stay and 1 member that leaves
//! and rejoins every second; every (re)connect goes through a balancer
//! picked at random, and a publisher POSTs through either. Each step edits
//! one balancer's TOML and the other's 1 s later (the skew is the
//! workload: config management never updates every machine at once): add
//! node-d, re-weight it, remove it; then SIGTERM-drain node-c (each
//! balancer sees its 503 at its own probe tick) and restart it.
//!
//! The nodes are sampled every 50 ms, and the recorded history is judged by
//! tests/src/history.rs: no meeting is ever open on two nodes, no
//! acknowledged publish is lost, no seq hole or duplicate, no
//! `recovered: false`, and every joiner gets its welcome within 2 s.
//!
//! A second test kills a node with -9: its meetings start afresh elsewhere
//! (`recovered: false`, once per member), and no other meeting notices.

use roompin_shared::control::RoomsReport;
use roompin_tests::cluster::{BalancerProc, Cluster, ClusterOptions, TOKEN};
use roompin_tests::history::{History, Op};
use roompin_tests::process::{free_port, loopback, NodeProc};
use roompin_tests::recorder::{meeting_ids, Clients, NodePoller};
use roompin_tests::PATIENCE;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

const MEETINGS: usize = 100;
const SKEW: Duration = Duration::from_secs(1);
const JOIN_WAIT_MAX: Duration = Duration::from_secs(2);
const CONVERGE_WITHIN: Duration = Duration::from_secs(15);

/// A balancer with its own TOML, as on its own machine.
struct Edge {
    proc: BalancerProc,
    config: PathBuf,
    public: SocketAddr,
    admin: SocketAddr,
}

impl Edge {
    async fn start(name: &str, cluster: &Cluster, nodes: &[&NodeProc]) -> Edge {
        let (public, admin) = (loopback(free_port()), loopback(free_port()));
        let config = cluster
            .balancer
            .config
            .with_file_name(format!("{name}-{}.toml", admin.port()));
        write(&config, cluster, public, admin, nodes, &[]);
        Edge {
            proc: BalancerProc::start(config.clone(), public, admin).await,
            config,
            public,
            admin,
        }
    }

    /// Rewrites this balancer's TOML (atomically, as an editor would).
    fn write(&self, cluster: &Cluster, nodes: &[&NodeProc], weights: &[(&str, u32)]) {
        write(
            &self.config,
            cluster,
            self.public,
            self.admin,
            nodes,
            weights,
        );
    }
}

/// The base URLs of these nodes.
fn urls(nodes: &[NodeProc]) -> Vec<String> {
    nodes.iter().map(|n| n.url("")).collect()
}

fn write(
    config: &std::path::Path,
    cluster: &Cluster,
    public: SocketAddr,
    admin: SocketAddr,
    nodes: &[&NodeProc],
    weights: &[(&str, u32)],
) {
    {
        let mut toml = Cluster::toml_for(&cluster.options, public, admin, nodes);
        for (id, w) in weights {
            toml = toml.replacen(
                &format!("id = \"{id}\"\n"),
                &format!("id = \"{id}\"\nweight = {w}\n"),
                1,
            );
        }
        let tmp = config.with_extension("tmp");
        std::fs::write(&tmp, &toml).expect("write config");
        std::fs::rename(&tmp, config).expect("replace config");
    }
}

/// Waits until both balancers own with exactly `ids`.
async fn owners_are(edges: &[&Edge], ids: &[&str], step: &str) {
    let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    want.sort();
    roompin_tests::eventually(
        PATIENCE,
        &format!("[{step}] both balancers own with {want:?}"),
        || async {
            for e in edges {
                if e.proc.owners().await.ok()? != want {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

/// The owner of every meeting under a balancer's `/ring`.
async fn routes(b: &BalancerProc, meetings: &[String]) -> Option<HashMap<String, String>> {
    Some(roompin_tests::traffic::routes(
        &b.ring().await.ok()?,
        meetings,
    ))
}

async fn rooms(node: &str) -> Option<RoomsReport> {
    let resp = reqwest::Client::new()
        .get(format!("{node}/control/rooms"))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()?;
    resp.json().await.ok()
}

/// Waits until both balancers agree on every meeting's owner, every room
/// is live on its owner and nowhere else, and every staying member is
/// connected. Returns how long after `since` that was.
async fn converge(
    history: &History,
    edges: &[&Edge],
    nodes: &[String],
    meetings: &[String],
    since: Instant,
    step: &str,
) -> Duration {
    let deadline = Instant::now() + CONVERGE_WITHIN;
    loop {
        let why = not_converged(history, edges, nodes, meetings).await;
        let Some(why) = why else {
            let took = since.elapsed();
            println!(
                "[{step}] converged {:.2} s after the last edit",
                took.as_secs_f64()
            );
            return took;
        };
        assert!(
            Instant::now() < deadline,
            "[{step}] not converged after {CONVERGE_WITHIN:?}: {why}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Why the cluster is not converged yet, if it is not.
async fn not_converged(
    history: &History,
    edges: &[&Edge],
    nodes: &[String],
    meetings: &[String],
) -> Option<String> {
    let p = history.presence();
    if !p.all_connected() {
        return Some(format!(
            "{} of {} staying members connected",
            p.connected, p.total
        ));
    }
    let r0 = routes(&edges[0].proc, meetings).await;
    let r1 = routes(&edges[1].proc, meetings).await;
    let (Some(want), true) = (r0.clone(), r0 == r1) else {
        return Some("the balancers disagree on owners".into());
    };
    let mut held: HashMap<String, HashSet<String>> = HashMap::new();
    for n in nodes {
        if let Some(report) = rooms(n).await {
            for room in report.rooms.into_iter().filter(|r| r.members > 0) {
                held.entry(room.meeting_id)
                    .or_default()
                    .insert(report.node.clone());
            }
        }
    }
    let wrong: Vec<String> = meetings
        .iter()
        .filter(|m| {
            !held
                .get(*m)
                .is_some_and(|on| on.len() == 1 && want.get(*m).is_some_and(|o| on.contains(o)))
        })
        .map(|m| format!("{m}: on {:?}, owner {:?}", held.get(m), want.get(m)))
        .collect();
    (!wrong.is_empty()).then(|| {
        format!(
            "{} meetings not on their owner, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(3)]
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_live_room_through_skewed_edits_drains_and_failback() {
    let options = ClusterOptions {
        node_toml: "drain_timeout_ms = 8000\n".into(),
        ..Default::default()
    };
    let mut cluster = Cluster::start(options).await;
    let d = cluster.add_node("node-d").await;
    // The harness's own balancer would keep pushing the old view (and a
    // room stays where any fresh view keeps it): this test runs its own two.
    cluster.balancer.proc.kill9();
    let abc: Vec<&NodeProc> = cluster.nodes[..3].iter().collect();
    let b1 = Edge::start("b1", &cluster, &abc).await;
    let b2 = Edge::start("b2", &cluster, &abc).await;

    let history = History::new();
    let poll: Vec<(String, String)> = cluster
        .nodes
        .iter()
        .map(|n| (n.id.clone(), n.url("")))
        .collect();
    let poller = NodePoller::spawn(
        &history,
        &poll,
        TOKEN,
        Duration::from_millis(50),
        &Handle::current(),
    );
    let clients = Clients::new(
        &history,
        vec![b1.proc.url(""), b2.proc.url("")],
        Handle::current(),
    );
    let meetings = meeting_ids(MEETINGS);
    clients.populate(&meetings, 3, 1, 1);
    roompin_tests::eventually(PATIENCE, "every staying member welcomed", || async {
        let p = history.presence();
        (p.total == MEETINGS * 4 && p.all_connected()).then_some(())
    })
    .await;
    clients.publisher(&meetings, 40.0);
    let edges = [&b1, &b2];
    // Every node, running or not (a stopped one reports nothing).
    let all = urls(&cluster.nodes);
    converge(&history, &edges, &all, &meetings, Instant::now(), "start").await;

    // Each edit lands on b1, then on b2 a second later.
    type Edit = (&'static str, Vec<usize>, Vec<(&'static str, u32)>);
    let edits: [Edit; 3] = [
        ("add node-d", vec![0, 1, 2, d], vec![]),
        ("re-weight node-d", vec![0, 1, 2, d], vec![("node-d", 2)]),
        ("remove node-d", vec![0, 1, 2], vec![]),
    ];
    let mut convergence = Vec::new();
    for (step, members, weights) in edits {
        history.step(step);
        let nodes: Vec<&NodeProc> = members.iter().map(|&i| &cluster.nodes[i]).collect();
        b1.write(&cluster, &nodes, &weights);
        tokio::time::sleep(SKEW).await;
        b2.write(&cluster, &nodes, &weights);
        let last_edit = Instant::now();
        let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
        owners_are(&edges, &ids, step).await;
        let took = converge(&history, &edges, &all, &meetings, last_edit, step).await;
        convergence.push((step, took));
    }

    // SIGTERM node-c: it drains (503), each balancer drops it at its own
    // probe tick, and its rooms move whole; then it comes back (failback).
    history.step("drain node-c");
    let t = Instant::now();
    cluster.nodes[2]
        .proc
        .signal(nix::sys::signal::Signal::SIGTERM);
    let status = cluster.nodes[2]
        .proc
        .wait_exit(Duration::from_secs(15))
        .await;
    assert!(
        status.is_some_and(|s| s.success()),
        "node-c did not drain and exit 0: {status:?}"
    );
    owners_are(&edges, &["node-a", "node-b"], "drain node-c").await;
    let took = converge(&history, &edges, &all, &meetings, t, "drain node-c").await;
    convergence.push(("drain node-c", took));
    history.step("restart node-c");
    let t = Instant::now();
    let (addr, options) = (cluster.nodes[2].addr, cluster.nodes[2].options.clone());
    cluster.nodes[2] = NodeProc::start_on("node-c", addr, options).await;
    owners_are(&edges, &["node-a", "node-b", "node-c"], "restart node-c").await;
    let took = converge(&history, &edges, &all, &meetings, t, "restart node-c").await;
    convergence.push(("restart node-c", took));

    clients.stop_publishers();
    let settled = history.settle(PATIENCE).await;
    history.finish();
    clients.stop();
    poller.stop();
    let verdict = history.check();
    println!("{verdict}");
    let log = history.snapshot();
    for e in &log.entries {
        match &e.op {
            Op::PublishFailed { reason, .. } => println!("publish failed at {:?}: {reason}", e.at),
            Op::ConnectFailed { reason } => println!(
                "connect failed ({}) at {:?}: {reason}",
                log.client_name(e.client),
                e.at
            ),
            _ => {}
        }
    }
    for st in &verdict.steps {
        println!(
            "[{}] joiner wait p99 {:?} max {:?}; delivered {} lost {} duplicated {}",
            st.name, st.join_wait_p99, st.join_wait_max, st.delivered, st.lost, st.duplicated
        );
    }
    for (step, took) in &convergence {
        println!("[{step}] convergence {:.2} s", took.as_secs_f64());
    }
    assert!(settled, "deliveries did not settle:\n{verdict}");
    verdict.assert_clean();
    let s = &verdict.summary;
    assert_eq!(
        (s.splits, s.not_recovered, s.duplicated),
        (0, 0, 0),
        "{verdict}"
    );
    assert!(s.acks > 150, "the publisher ran: {verdict}");
    assert_eq!(s.publish_failures, 0, "a publish was refused: {verdict}");
    for st in &verdict.steps {
        assert!(
            st.join_wait_max <= JOIN_WAIT_MAX,
            "[{}] a joiner waited {:?} for its welcome",
            st.name,
            st.join_wait_max
        );
        assert_eq!(st.failed_joins, 0, "[{}] a join failed: {verdict}", st.name);
    }
    // Rooms did move (the steps were not no-ops).
    let moved = history
        .snapshot()
        .entries
        .iter()
        .filter(|e| matches!(e.op, Op::Ended(_)))
        .count();
    assert!(moved > MEETINGS, "hardly anyone reconnected: {moved}");
}

/// kill -9 of a node: its meetings start afresh on the survivors, each
/// member told once with `recovered: false`; every other meeting keeps its
/// room (the same incarnation, on the same node) and its members never
/// notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_only_its_own_meetings() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let history = History::new();
    let poll: Vec<(String, String)> = cluster
        .nodes
        .iter()
        .map(|n| (n.id.clone(), n.url("")))
        .collect();
    let poller = NodePoller::spawn(
        &history,
        &poll,
        TOKEN,
        Duration::from_millis(50),
        &Handle::current(),
    );
    let clients = Clients::new(&history, vec![cluster.balancer.url("")], Handle::current());
    let meetings = meeting_ids(30);
    clients.populate(&meetings, 3, 0, 0);
    roompin_tests::eventually(PATIENCE, "every member welcomed", || async {
        let p = history.presence();
        (p.total == 90 && p.all_connected()).then_some(())
    })
    .await;
    clients.publisher(&meetings, 20.0);
    let before = routes(&cluster.balancer, &meetings).await.expect("routes");
    let victim = "node-b";
    let rooms_before: HashMap<String, String> = {
        let mut m = HashMap::new();
        for n in &cluster.nodes {
            for r in rooms(&n.url("")).await.expect("rooms").rooms {
                m.insert(r.meeting_id, r.room);
            }
        }
        m
    };
    roompin_tests::eventually(PATIENCE, "some publishes acknowledged", || async {
        let acks = history
            .snapshot()
            .entries
            .iter()
            .filter(|e| matches!(e.op, Op::PublishAcked { .. }))
            .count();
        (acks >= 20).then_some(())
    })
    .await;

    history.step("kill -9 node-b");
    let killed_at = history.now();
    let i = cluster
        .nodes
        .iter()
        .position(|n| n.id == victim)
        .expect("node-b");
    cluster.nodes[i].proc.kill9();
    roompin_tests::eventually(PATIENCE, "every member back on a survivor", || async {
        let p = history.presence();
        (p.all_connected() && p.on(victim) == 0).then_some(())
    })
    .await;
    clients.stop_publishers();
    history.settle(PATIENCE).await;
    history.memory_lost(victim, killed_at, history.now());
    history.finish();
    clients.stop();
    poller.stop();
    let verdict = history.check();
    println!("{verdict}");
    verdict.assert_clean();

    // Only node-b's meetings restarted, each member told once.
    let log = history.snapshot();
    let mut told: HashMap<String, usize> = HashMap::new();
    for e in &log.entries {
        if let Op::Welcome {
            recovered: Some(false),
            ..
        } = e.op
        {
            *told.entry(log.name(e.meeting).to_owned()).or_default() += 1;
        }
    }
    let lost: Vec<&String> = meetings.iter().filter(|m| before[*m] == victim).collect();
    assert!(!lost.is_empty(), "node-b held no meeting");
    for m in &meetings {
        let n = told.get(m).copied().unwrap_or(0);
        if before[m] == victim {
            assert_eq!(n, 3, "{m}: each of its 3 members is told once");
        } else {
            assert_eq!(n, 0, "{m} was not on node-b but lost its history");
        }
    }
    for n in cluster.nodes.iter().filter(|n| n.id != victim) {
        for r in rooms(&n.url("")).await.expect("rooms").rooms {
            if before[&r.meeting_id] != victim {
                assert_eq!(
                    Some(&r.room),
                    rooms_before.get(&r.meeting_id),
                    "{}: an untouched meeting got a new room",
                    r.meeting_id
                );
            }
        }
    }
    let steps = &verdict.steps;
    let kill = steps.last().expect("the kill step");
    assert_eq!(
        kill.disrupted,
        lost.len() * 3,
        "only node-b's members reconnected"
    );
}
