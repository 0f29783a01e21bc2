//! The recorder and the checker on today's code, on loopback: 20 meetings ×
//! (3 WebSocket members + 1 SSE member + 1 churner) plus a publisher, behind
//! two balancers that share one TOML (as tests/tests/membership.rs runs
//! them), for 10 s with no membership change. Nothing in this run may break
//! a rule, so the checker's verdict must be clean; and the run must have
//! done the work that makes a clean verdict mean something.

use roompin_tests::cluster::{BalancerProc, Cluster, ClusterOptions, TOKEN};
use roompin_tests::history::{History, Op, Rule};
use roompin_tests::process::{free_port, loopback};
use roompin_tests::recorder::{meeting_ids, Clients, NodePoller};
use roompin_tests::PATIENCE;
use std::time::Duration;
use tokio::runtime::Handle;

const MEETINGS: usize = 20;
const RUN: Duration = Duration::from_secs(10);
const PUBLISH_PER_SECOND: f64 = 20.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_cluster_gives_a_clean_verdict() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let (public, admin) = (loopback(free_port()), loopback(free_port()));
    let second = BalancerProc::start(cluster.balancer.config.clone(), public, admin).await;

    let history = History::new();
    let nodes: Vec<(String, String)> = cluster
        .nodes
        .iter()
        .map(|n| (n.id.clone(), n.url("")))
        .collect();
    let poller = NodePoller::spawn(
        &history,
        &nodes,
        TOKEN,
        Duration::from_millis(50),
        &Handle::current(),
    );
    let balancers = vec![cluster.balancer.url(""), second.url("")];
    let clients = Clients::new(&history, balancers, Handle::current());
    let meetings = meeting_ids(MEETINGS);
    clients.populate(&meetings, 3, 1, 1);
    roompin_tests::eventually(PATIENCE, "every staying member welcomed", || async {
        let p = history.presence();
        (p.total == MEETINGS * 4 && p.all_connected()).then_some(())
    })
    .await;

    history.step("steady");
    clients.publisher(&meetings, PUBLISH_PER_SECOND);
    // The workload's length, not a synchronisation: the checker judges
    // whatever happened in it.
    tokio::time::sleep(RUN).await;
    clients.stop_publishers();
    let settled = history.settle(PATIENCE).await;
    history.finish();
    clients.stop();
    poller.stop();

    let verdict = history.check();
    println!("{verdict}");
    assert!(settled, "deliveries did not settle:\n{verdict}");
    verdict.assert_clean();

    let s = &verdict.summary;
    let steady = verdict.steps.last().expect("a steady step");
    assert_eq!(steady.name, "steady");
    assert_eq!(s.meetings, MEETINGS);
    // The publisher ran at its rate, and every publish was acknowledged
    // and delivered to all four staying members and the churners present.
    let want = (PUBLISH_PER_SECOND * RUN.as_secs_f64() * 0.8) as usize;
    assert!(
        s.acks >= want,
        "only {} of ~{want} publishes acknowledged",
        s.acks
    );
    assert_eq!(s.publish_failures, 0, "{verdict}");
    assert!(s.expected >= s.acks * 4, "{verdict}");
    assert_eq!(s.delivered, s.expected, "{verdict}");
    // Churners left and rejoined about once a second each, and every
    // rejoin got its welcome.
    assert!(steady.joins >= MEETINGS * 5, "{verdict}");
    assert_eq!(steady.failed_joins, 0, "{verdict}");
    assert_eq!(
        steady.disrupted, 0,
        "no staying member was disturbed: {verdict}"
    );
    // The nodes were sampled all along, and never held a meeting twice.
    let polls = nodes.len() * (RUN.as_millis() / 50) as usize / 2;
    assert!(
        s.samples >= polls,
        "only {} node samples: {verdict}",
        s.samples
    );
    assert_eq!(s.failed_samples, 0, "{verdict}");
    assert_eq!((s.splits, s.not_recovered, s.duplicated), (0, 0, 0));
}

/// The other side: a live run that breaks a rule must be caught. kill -9 of
/// a node makes its meetings resume with `recovered: false`; undeclared,
/// that is a violation with evidence, and declared as a memory loss it is
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeclared_node_kill_is_caught() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let history = History::new();
    let nodes: Vec<(String, String)> = cluster
        .nodes
        .iter()
        .map(|n| (n.id.clone(), n.url("")))
        .collect();
    let poller = NodePoller::spawn(
        &history,
        &nodes,
        TOKEN,
        Duration::from_millis(50),
        &Handle::current(),
    );
    let clients = Clients::new(&history, vec![cluster.balancer.url("")], Handle::current());
    let meetings = meeting_ids(12);
    clients.populate(&meetings, 2, 1, 0);
    roompin_tests::eventually(PATIENCE, "every member welcomed", || async {
        let p = history.presence();
        (p.total == 36 && p.all_connected()).then_some(())
    })
    .await;
    clients.publisher(&meetings, 20.0);
    // Kill the node that holds the first meeting once it has messages.
    let victim = cluster.balancer.route(&meetings[0]).await.expect("route");
    roompin_tests::eventually(PATIENCE, "the victim's members in", || async {
        (history.presence().on(&victim) > 0).then_some(())
    })
    .await;
    roompin_tests::eventually(PATIENCE, "20 publishes acknowledged", || async {
        let acks = history
            .snapshot()
            .entries
            .iter()
            .filter(|e| matches!(e.op, Op::PublishAcked { .. }))
            .count();
        (acks >= 20).then_some(())
    })
    .await;
    history.step("kill");
    let killed_at = history.now();
    let i = cluster
        .nodes
        .iter()
        .position(|n| n.id == victim)
        .expect("victim");
    cluster.nodes[i].proc.kill9();
    roompin_tests::eventually(PATIENCE, "every member back on a survivor", || async {
        let p = history.presence();
        (p.all_connected() && p.on(&victim) == 0).then_some(())
    })
    .await;
    clients.stop_publishers();
    history.settle(PATIENCE).await;
    history.finish();
    clients.stop();
    poller.stop();

    let verdict = history.check();
    println!("undeclared:\n{verdict}");
    let unjustified = verdict.count(Rule::UnjustifiedNotRecovered);
    assert!(unjustified >= 1, "the kill went unnoticed:\n{verdict}");
    assert_eq!(
        unjustified,
        verdict.violations.len(),
        "only the undeclared loss is wrong:\n{verdict}"
    );
    let first = verdict.first().expect("a violation");
    assert!(first.evidence.contains(&victim), "{first}");
    assert!(verdict.steps.last().is_some_and(|s| s.disrupted > 0));

    history.memory_lost(&victim, killed_at, history.now());
    let verdict = history.check();
    println!("declared:\n{verdict}");
    verdict.assert_clean();
    assert!(verdict.summary.not_recovered >= 1);
}
