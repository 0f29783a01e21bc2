//! Drives a cluster through a little of everything an operator would see,
//! so that every labelled metric series exists, then scrapes both binaries.
//!
//! A labelled metric appears in `/metrics` only once some series of it has
//! been touched, so the catalogue and dashboard tests need this traffic:
//! WebSockets and SSE through the balancer in meetings on every node, chat
//! messages and an HTTP publish, a client closing, a refused config edit, a
//! node removed from the TOML (its rooms move, with history handoffs), and a
//! node killed while it still owns meetings (a refused upstream connection).

use std::collections::BTreeMap;

use crate::cluster::{Cluster, ClusterOptions};
use crate::scrape::{self, Exposition};
use crate::{SseClient, WsClient, PATIENCE};

/// What the scrapes said, and the raw texts for messages.
pub struct Observed {
    /// The balancer's families.
    pub balancer: Exposition,
    /// The union of the three nodes' families.
    pub nodes: Exposition,
    pub balancer_text: String,
    pub node_texts: Vec<(String, String)>,
}

/// Meetings owned by each node, `per_node` of each, found through `/route`.
pub async fn meetings_per_node(
    cluster: &Cluster,
    prefix: &str,
    per_node: usize,
) -> BTreeMap<String, Vec<String>> {
    let mut by_node: BTreeMap<String, Vec<String>> = cluster
        .nodes
        .iter()
        .map(|n| (n.id.clone(), Vec::new()))
        .collect();
    for i in 0..10_000 {
        if by_node.values().all(|m| m.len() >= per_node) {
            break;
        }
        let meeting = format!("{prefix}-{i}");
        let node = cluster.balancer.route(&meeting).await.expect("route");
        if let Some(list) = by_node.get_mut(&node).filter(|l| l.len() < per_node) {
            list.push(meeting);
        }
    }
    assert!(
        by_node.values().all(|m| m.len() >= per_node),
        "could not find {per_node} meetings per node: {by_node:?}"
    );
    by_node
}

async fn text(url: &str) -> String {
    let (status, body) = crate::get(url).await.expect("scrape");
    assert_eq!(status, 200, "{url}: {body}");
    body
}

/// Runs the whole exercise on a cluster of its own.
pub async fn exercise() -> Observed {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let b = &cluster.balancer;
    let meetings = meetings_per_node(&cluster, "obs", 2).await;

    // Traffic in every meeting: two WebSockets and an SSE stream through
    // the balancer, a chat message, and an HTTP publish.
    let mut clients = Vec::new();
    for meeting in meetings.values().flatten() {
        let mut a = WsClient::join(&b.ws_base(), meeting, "a").await;
        let mut c = WsClient::join(&b.ws_base(), meeting, "c").await;
        let sse = SseClient::connect(&b.url(&format!("/sse?meeting_id={meeting}")), None)
            .await
            .expect("sse through the balancer");
        a.send_text("hello").await.expect("send");
        c.recv_type("message").await.expect("c gets the message");
        let resp = reqwest::Client::new()
            .post(b.url(&format!("/messages?meeting_id={meeting}&user=poster")))
            .json(&serde_json::json!({ "text": "posted" }))
            .send()
            .await
            .expect("publish");
        assert_eq!(resp.status(), 202, "publish through the balancer");
        clients.push((a, c, sse));
    }
    // A client that leaves: a close code on its node.
    if let Some((_, c, _)) = clients.pop() {
        c.close().await;
    }

    // A refused edit, then a good one that removes node-c: its rooms move
    // to node-a and node-b, with their history.
    cluster.write_config("this is [not toml\n");
    crate::eventually(PATIENCE, "a refused reload is counted", || async {
        let m = b.metrics().await;
        let refused = scrape::value(
            &m,
            "roompin_balancer_config_reloads_total",
            &[("result", "error")],
        );
        (refused >= Some(1.0)).then_some(())
    })
    .await;
    cluster.write_config(&cluster.toml_with(&[0, 1]));
    cluster.wait_owners(&["node-a", "node-b"], PATIENCE).await;
    let node_urls: Vec<(String, String)> = cluster
        .nodes
        .iter()
        .map(|n| (n.id.clone(), n.url("/metrics")))
        .collect();
    crate::eventually(PATIENCE, "history handoffs sent and received", || async {
        let mut all = Exposition::default();
        for (_, url) in &node_urls {
            all.add(&crate::get(url).await.ok()?.1).ok()?;
        }
        let directions = all
            .families
            .get("roompin_node_handoffs_total")?
            .values
            .get("direction")?
            .clone();
        (directions.len() >= 2).then_some(())
    })
    .await;
    let mut node_texts = Vec::new();
    let mut nodes = Exposition::default();
    for (id, url) in &node_urls {
        let t = text(url).await;
        nodes.add(&t).expect("a node's exposition parses");
        node_texts.push((id.clone(), t));
    }

    // node-b dies while it still owns meetings: the balancer's next
    // connection to it is refused (and retried on node-a). Its health
    // checks need three failures, 200 ms apart, to take it out of the ring,
    // which leaves the requests below ample time.
    let doomed = meetings["node-b"][0].clone();
    cluster.nodes[1].proc.kill9();
    let b = &cluster.balancer;
    crate::eventually(
        PATIENCE,
        "a refused upstream connection is counted",
        || async {
            let _ = WsClient::connect(&b.ws_url(&format!("meeting_id={doomed}"))).await;
            let m = b.metrics().await;
            scrape::value(
                &m,
                "roompin_balancer_upstream_errors_total",
                &[("upstream", "node-b")],
            )
            .map(|_| ())
        },
    )
    .await;
    let balancer_text = b.metrics().await;
    let balancer = Exposition::parse(&balancer_text).expect("the balancer's exposition parses");
    drop(clients);
    Observed {
        balancer,
        nodes,
        balancer_text,
        node_texts,
    }
}
