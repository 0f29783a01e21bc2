//! Live config edits, health, and misrouted requests (issue 4), with a real
//! balancer and real nodes.

use roompin_tests::cluster::{BalancerProc, Cluster, ClusterOptions};
use roompin_tests::process::{free_port, loopback, target_dir};
use roompin_tests::{eventually, get, metric, WsClient, PATIENCE};
use std::time::{Duration, Instant};

fn reloads(text: &str, result: &str) -> f64 {
    metric(
        text,
        &format!("roompin_balancer_config_reloads_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Waits for the balancer's epoch to pass `epoch`; returns how long it took.
async fn epoch_after(b: &BalancerProc, epoch: u64) -> Duration {
    let t = Instant::now();
    eventually(PATIENCE, "a new ring epoch", || async {
        (b.epoch().await > epoch).then_some(())
    })
    .await;
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_apply_within_a_second_and_bad_edits_are_refused_whole() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let b = &cluster.balancer;

    // A file-watched edit: remove node-c.
    let epoch = b.epoch().await;
    cluster.write_config(&cluster.toml_with(&[0, 1]));
    let took = epoch_after(b, epoch).await;
    println!("file edit applied in {took:?}");
    assert!(took < Duration::from_secs(1), "the edit took {took:?}");
    cluster.wait_owners(&["node-a", "node-b"], PATIENCE).await;
    assert!(reloads(&b.metrics().await, "ok") >= 1.0);

    // Each kind of invalid edit is refused whole, with its line in the log.
    let good = cluster.toml_with(&[0, 1, 2]);
    let bad = [
        (
            "syntax",
            good.replacen("[[upstream]]", "[[upstream]", 1),
            "line",
        ),
        (
            "unknown key",
            good.replacen("[health]", "[health]\nintervall_ms = 5", 1),
            "unknown field",
        ),
        (
            "duplicate id",
            good.replace("node-c", "node-a"),
            "duplicate id",
        ),
        (
            "weight 0",
            good.replacen("addr =", "weight = 0\naddr =", 1),
            "weight 0",
        ),
        (
            "no upstream",
            good.split("[[upstream]]")
                .next()
                .unwrap_or_default()
                .to_owned(),
            "no [[upstream]]",
        ),
    ];
    for (what, text, logged) in bad {
        let (errors, epoch) = (reloads(&b.metrics().await, "error"), b.epoch().await);
        cluster.write_config(&text);
        eventually(
            PATIENCE,
            &format!("{what} is counted as an error"),
            || async { (reloads(&b.metrics().await, "error") > errors).then_some(()) },
        )
        .await;
        assert_eq!(b.epoch().await, epoch, "{what} changed the ring");
        let logs = b.proc.logs();
        assert!(
            logs.contains("config reload refused") && logs.contains(logged),
            "{what}: log lacks {logged:?}"
        );
    }
    cluster.wait_owners(&["node-a", "node-b"], PATIENCE).await;

    // A valid edit after the bad ones applies.
    let epoch = b.epoch().await;
    cluster.write_config(&good);
    epoch_after(b, epoch).await;
    cluster
        .wait_owners(&["node-a", "node-b", "node-c"], PATIENCE)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_file_the_watch_cannot_see() {
    // The balancer watches the directory of the path it was given; here that
    // path is a symlink into another directory, so edits of the target only
    // reach the balancer through SIGHUP.
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let dir = target_dir()
        .join("test-logs")
        .join(format!("sighup-{}", std::process::id()));
    let (watched, real) = (dir.join("watched"), dir.join("real"));
    std::fs::create_dir_all(&watched).expect("mkdir");
    std::fs::create_dir_all(&real).expect("mkdir");
    let (public, admin) = (loopback(free_port()), loopback(free_port()));
    let target = real.join("balancer.toml");
    std::fs::write(&target, cluster.toml_with(&[0, 1, 2])).expect("write");
    let link = watched.join("balancer.toml");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let b = BalancerProc::start(link, public, admin).await;
    eventually(PATIENCE, "three owners", || async {
        (b.owners().await.ok()?.len() == 3).then_some(())
    })
    .await;

    let epoch = b.epoch().await;
    std::fs::write(&target, cluster.toml_with(&[0])).expect("edit the target");
    b.proc.signal(nix::sys::signal::Signal::SIGHUP);
    let took = epoch_after(&b, epoch).await;
    println!("SIGHUP reload applied in {took:?}");
    assert!(took < Duration::from_secs(1), "SIGHUP took {took:?}");
    let ring = b.ring().await.expect("ring");
    assert_eq!(ring["members"].as_array().map(Vec::len), Some(1), "{ring}");
    assert!(b.proc.logs().contains("SIGHUP"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_gauge_follows_a_dead_node_and_misrouted_requests_get_421() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let b = &cluster.balancer;
    let healthy = |text: &str, id: &str| {
        metric(
            text,
            &format!("roompin_balancer_upstream_healthy{{upstream=\"{id}\"}}"),
        )
    };
    let text = b.metrics().await;
    assert_eq!(
        (healthy(&text, "node-a"), healthy(&text, "node-c")),
        (Some(1.0), Some(1.0))
    );

    // A meeting node-a owns, asked of node-b directly: the node knows from
    // the pushed view that it is not the owner, and says who is.
    let meeting = (0..1000)
        .map(|i| format!("owned-{i}"))
        .find(|m| futures_block_route(b, m) == "node-a")
        .expect("some meeting on node-a");
    let node_b = cluster.node("node-b").expect("node-b");
    eventually(PATIENCE, "node-b refuses node-a's meeting", || async {
        let (status, body) = get(&node_b.url(&format!("/sse?meeting_id={meeting}")))
            .await
            .ok()?;
        (status == 421 && body.contains("node-a")).then_some(())
    })
    .await;
    let direct = WsClient::connect(&node_b.ws_url(&format!("meeting_id={meeting}"))).await;
    assert!(
        direct.is_err(),
        "a direct WebSocket to the wrong node was accepted"
    );
    // Through the balancer it lands on node-a.
    let through = WsClient::connect(&b.ws_url(&format!("meeting_id={meeting}")))
        .await
        .expect("connect");
    assert_eq!(through.node(), "node-a");

    // kill -9 node-c: the gauge drops, and node-c's meetings still connect
    // (retried on the next node of the ring) without an error.
    let victim = (0..1000)
        .map(|i| format!("victim-{i}"))
        .find(|m| futures_block_route(b, m) == "node-c")
        .expect("some meeting on node-c");
    let c = cluster
        .nodes
        .iter()
        .position(|n| n.id == "node-c")
        .expect("node-c");
    cluster.nodes[c].proc.kill9();
    let b = &cluster.balancer;
    let client = WsClient::connect(&b.ws_url(&format!("meeting_id={victim}")))
        .await
        .expect("no error while others are healthy");
    assert_ne!(client.node(), "node-c");
    eventually(PATIENCE, "node-c unhealthy in /metrics", || async {
        (healthy(&b.metrics().await, "node-c") == Some(0.0)).then_some(())
    })
    .await;
    let ring = b.ring().await.expect("ring");
    let c_entry = ring["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == "node-c").cloned())
        .expect("listed");
    assert_eq!(c_entry["health"], "unhealthy");
    assert_eq!(b.route(&victim).await.expect("route"), client.node());
}

/// `/route` for a meeting, blocking on the current runtime.
fn futures_block_route(b: &BalancerProc, meeting: &str) -> String {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(b.route(meeting)))
        .unwrap_or_default()
}

/// With every node refusing, the balancer answers 502 with a reason (not a
/// hang or an empty reply); once health checks have caught up, 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_gets_502_with_a_reason() {
    let mut cluster = Cluster::start(ClusterOptions {
        nodes: 1,
        ..Default::default()
    })
    .await;
    cluster.nodes[0].proc.kill9();
    let b = &cluster.balancer;
    let (status, body) = get(&b.url("/sse?meeting_id=refused"))
        .await
        .expect("an answer");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("chat node"), "reason: {body:?}");
    eventually(PATIENCE, "503 once the node is marked down", || async {
        let (status, body) = get(&b.url("/sse?meeting_id=refused")).await.ok()?;
        (status == 503 && body.contains("no healthy chat node")).then_some(())
    })
    .await;
}
