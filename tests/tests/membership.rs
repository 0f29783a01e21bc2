//! Membership changes without split rooms (issue 4): 300 meetings × 3
//! members that reconnect by the protocol's rules, behind two balancers that
//! watch the same TOML. After every change, each meeting must be whole again
//! (all its open connections on one node, the node its route names), its
//! messages must reach every member, and meetings whose owner did not change
//! must not have been disturbed at all.

use roompin_tests::cluster::{BalancerProc, Cluster, ClusterOptions};
use roompin_tests::process::{free_port, loopback, NodeProc};
use roompin_tests::traffic::{
    agree_on_routes, assert_same_routes, assert_undisturbed, moved, owners_are, Traffic,
};
use roompin_tests::{metric, PATIENCE};
use std::time::{Duration, Instant};

const MEETINGS: usize = 300;

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

    let traffic = Traffic::start(b, MEETINGS);
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
