//! `roompin-balancer route <meeting_id>... --config FILE` answers offline
//! what a running balancer with the same TOML answers on `/route`, and its
//! "next" node is the route once the owner is removed from the TOML.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use roompin_tests::process::bin;
use roompin_tests::{Cluster, ClusterOptions, PATIENCE};

#[derive(Debug, Deserialize)]
struct Node {
    id: String,
    addr: String,
}

#[derive(Debug, Deserialize)]
struct Answer {
    meeting_id: String,
    node: Node,
    next: Option<Node>,
}

fn offline(config: &Path, meetings: &[String]) -> Vec<Answer> {
    let out = Command::new(bin("roompin-balancer"))
        .arg("route")
        .arg("--json")
        .arg("--config")
        .arg(config)
        .args(meetings)
        .output()
        .expect("run roompin-balancer route");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "route failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

#[tokio::test]
async fn offline_route_agrees_with_a_running_balancer() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let b = &cluster.balancer;
    let meetings: Vec<String> = (0..1000)
        .map(|i| format!("m{i}.{}~{}", (i * 7919) % 1000, i % 7))
        .collect();
    let answers = offline(&b.config, &meetings);
    assert_eq!(answers.len(), meetings.len());

    let addr_of: BTreeMap<&str, String> = cluster
        .nodes
        .iter()
        .map(|n| (n.id.as_str(), n.addr.to_string()))
        .collect();
    let mut owned: BTreeMap<String, Vec<&Answer>> = BTreeMap::new();
    for (a, m) in answers.iter().zip(&meetings) {
        assert_eq!(&a.meeting_id, m);
        assert_eq!(b.route(m).await.expect("/route"), a.node.id, "{m}");
        assert_eq!(addr_of[a.node.id.as_str()], a.node.addr, "{m}");
        let next = a.next.as_ref().expect("three nodes: a next one");
        assert_ne!(next.id, a.node.id, "{m}");
        owned.entry(a.node.id.clone()).or_default().push(a);
    }
    assert_eq!(owned.len(), 3, "every node owns some of 1,000 meetings");

    // Remove each node from the TOML in turn: its meetings go where the
    // offline answer said they would, and the others stay.
    for (i, gone) in cluster.nodes.iter().enumerate() {
        let rest: Vec<usize> = (0..cluster.nodes.len()).filter(|j| *j != i).collect();
        cluster.write_config(&cluster.toml_with(&rest));
        let ids: Vec<&str> = rest.iter().map(|j| cluster.nodes[*j].id.as_str()).collect();
        cluster.wait_owners(&ids, PATIENCE).await;
        for a in &answers {
            let want = match &a.next {
                Some(next) if a.node.id == gone.id => &next.id,
                _ => &a.node.id,
            };
            let got = b.route(&a.meeting_id).await.expect("/route");
            assert_eq!(&got, want, "{} without {}", a.meeting_id, gone.id);
        }
        cluster.write_config(&cluster.toml_with(&[0, 1, 2]));
        cluster
            .wait_owners(&["node-a", "node-b", "node-c"], PATIENCE)
            .await;
    }

    // The sentence for people names both, and a bad id is refused.
    let out = Command::new(bin("roompin-balancer"))
        .args(["route", &meetings[0], "--config"])
        .arg(&b.config)
        .output()
        .expect("run route");
    let text = String::from_utf8_lossy(&out.stdout);
    let first = &answers[0];
    let next = first.next.as_ref().map(|n| n.id.as_str()).unwrap_or("-");
    assert!(
        text.starts_with(&format!("{}: {} (", meetings[0], first.node.id))
            && text.contains(&format!("if {} fails: {next} (", first.node.id)),
        "{text}"
    );
    let out = Command::new(bin("roompin-balancer"))
        .args(["route", "no spaces", "--config"])
        .arg(&b.config)
        .output()
        .expect("run route");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("meeting_id"));
}
