//! A rolling restart of every node, one at a time, under traffic (issue 4):
//! each node drains on SIGTERM, exits 0 and comes back, and every meeting
//! stays whole, with its history following it from node to node.

use roompin_tests::cluster::{BalancerProc, Cluster, ClusterOptions};
use roompin_tests::process::{free_port, loopback, NodeProc};
use roompin_tests::traffic::{assert_same_routes, owners_are, Traffic};
use std::time::{Duration, Instant};

/// A rolling restart: SIGTERM each node in turn, wait for it to drain and
/// exit 0, start it again, and check that every meeting is whole after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_keeps_every_meeting_whole() {
    let options = ClusterOptions {
        node_toml: "drain_timeout_ms = 8000\n".into(),
        ..Default::default()
    };
    let mut cluster = Cluster::start(options).await;
    let (public, admin) = (loopback(free_port()), loopback(free_port()));
    let second = BalancerProc::start(cluster.balancer.config.clone(), public, admin).await;
    let traffic = Traffic::start([&cluster.balancer, &second], 150);
    let routes0 = traffic
        .converge(
            [&cluster.balancer, &second],
            Instant::now(),
            "rolling: start",
        )
        .await;
    let ids = ["node-a", "node-b", "node-c"];
    for (i, id) in ids.iter().enumerate() {
        let t = Instant::now();
        cluster.nodes[i]
            .proc
            .signal(nix::sys::signal::Signal::SIGTERM);
        let others: Vec<&str> = ids.iter().copied().filter(|o| o != id).collect();
        owners_are([&cluster.balancer, &second], &others).await;
        let status = cluster.nodes[i]
            .proc
            .wait_exit(Duration::from_secs(15))
            .await;
        assert!(
            status.is_some_and(|s| s.success()),
            "{id} did not drain and exit 0: {status:?}"
        );
        traffic
            .converge(
                [&cluster.balancer, &second],
                t,
                &format!("rolling: {id} drained"),
            )
            .await;
        let node = &cluster.nodes[i];
        let restarted = NodeProc::start_on(id, node.addr, node.options.clone()).await;
        cluster.nodes[i] = restarted;
        owners_are([&cluster.balancer, &second], &ids).await;
        let routes = traffic
            .converge(
                [&cluster.balancer, &second],
                t,
                &format!("rolling: {id} back"),
            )
            .await;
        assert_same_routes(&routes, &routes0, &format!("rolling: {id} back"));
        traffic
            .messages_reach_everyone(&format!("rolling-{id}"))
            .await;
    }
    traffic.assert_no_duplicates();
    // A drained node hands each room's history to its new owner, so every
    // member resumed where it left off: no gap, and never `recovered: false`.
    for (meeting, states) in traffic.meetings.iter().zip(traffic.states()) {
        for s in states {
            assert_eq!(
                (s.not_recovered, s.gaps),
                (0, 0),
                "{meeting}: history did not follow the room: {s:?}"
            );
        }
    }
}
