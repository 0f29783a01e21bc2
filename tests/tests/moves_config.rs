//! Room moves cannot be switched off by accident (issue 9): a balancer with
//! upstreams and no control token refuses to start and names the key,
//! unless the TOML says `moves = false`; and a node whose token does not
//! match shows up as an error on `/ring` and in the metrics.

use roompin_tests::cluster::{Cluster, ClusterOptions, TOKEN};
use roompin_tests::process::{bin, free_port, loopback, target_dir, NodeOptions, NodeProc};
use roompin_tests::{eventually, metric, PATIENCE};
use std::process::Command;
use std::time::Duration;

fn toml(extra: &str, node: &NodeProc) -> String {
    format!(
        "listen = \"{}\"\nadmin_listen = \"{}\"\n{extra}\n[[upstream]]\nid = \"{}\"\naddr = \"{}\"\n",
        loopback(free_port()),
        loopback(free_port()),
        node.id,
        node.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancer_without_a_control_token_refuses_to_start_unless_moves_are_off() {
    let node = NodeProc::with_toml("node-a", "").await;
    let dir = target_dir().join("test-logs");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("no-token-{}.toml", std::process::id()));

    std::fs::write(&path, toml("", &node)).expect("write config");
    let out = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new(bin("roompin-balancer"))
            .arg("--config")
            .arg(&path)
            .output(),
    )
    .await
    .expect("the balancer exits by itself")
    .expect("run the balancer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started without a control token");
    assert!(
        stderr.contains("control_token") && stderr.contains("moves = false"),
        "the refusal names the key and the opt-out: {stderr}"
    );

    // The explicit opt-out starts (and says so).
    std::fs::write(&path, toml("moves = false", &node)).expect("write config");
    let mut cmd = Command::new(bin("roompin-balancer"));
    cmd.arg("--config").arg(&path);
    let admin: std::net::SocketAddr = roompin_shared::config::BalancerConfig::load(&path)
        .expect("valid")
        .admin_listen;
    let proc = roompin_tests::Proc::spawn("balancer-moves-off", cmd);
    roompin_tests::wait_healthy(admin, PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", proc.logs()));
    assert!(proc.logs().contains("moves = false"), "{}", proc.logs());
    let ring = roompin_tests::get_json(&format!("http://{admin}/ring"))
        .await
        .expect("/ring");
    assert_eq!(ring["members"][0]["control"], "off", "{ring}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_token_is_an_error_on_ring_and_in_the_metrics() {
    let mut cluster = Cluster::start(ClusterOptions {
        nodes: 2,
        ..Default::default()
    })
    .await;
    let wrong = NodeOptions {
        toml: String::new(),
        control_token: Some(format!("not-{TOKEN}")),
    };
    cluster.nodes.push(NodeProc::start("node-x", wrong).await);
    cluster.write_config(&cluster.toml_with(&[0, 1, 2]));
    let b = &cluster.balancer;
    let ring = eventually(PATIENCE, "node-x's pushes fail on /ring", || async {
        let ring = b.ring().await.ok()?;
        let x = ring["members"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == "node-x")?
            .clone();
        x["control"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("401"))
            .then_some(ring)
    })
    .await;
    for m in ring["members"].as_array().into_iter().flatten() {
        if m["id"] != "node-x" {
            assert_eq!(m["control"], "ok", "{ring}");
        }
    }
    let metrics = b.metrics().await;
    let ok = |id: &str| {
        metric(
            &metrics,
            &format!("roompin_balancer_upstream_control_ok{{upstream=\"{id}\"}}"),
        )
    };
    assert_eq!(ok("node-x"), Some(0.0), "{metrics}");
    assert_eq!(ok("node-a"), Some(1.0), "{metrics}");
    // And the log says why, once.
    eventually(Duration::from_secs(5), "the failure is logged", || async {
        let logs = b.proc.logs();
        (logs.contains("upstream=\"node-x\"") || logs.contains("upstream=node-x"))
            .then_some(())
            .filter(|_| logs.contains("view push to the node failed"))
    })
    .await;
}
