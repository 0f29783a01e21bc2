//! The balancer pins every meeting to one node (issue 3), end to end with
//! one real balancer and three real nodes.

use roompin_tests::{get, metric, Cluster, ClusterOptions, WsClient};
use std::collections::{HashMap, HashSet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_of_a_meeting_lands_on_the_same_node() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let b = &cluster.balancer;
    let mut meetings: HashMap<String, Vec<WsClient>> = HashMap::new();
    for m in 0..30 {
        let meeting = format!("routing-{m}");
        for c in 0..5 {
            let url = b.ws_url(&format!("meeting_id={meeting}&user=u{c}"));
            let client = WsClient::connect(&url)
                .await
                .expect("connect through the balancer");
            meetings.entry(meeting.clone()).or_default().push(client);
        }
    }
    let mut used = HashSet::new();
    for (meeting, clients) in &mut meetings {
        let nodes: HashSet<&str> = clients.iter().map(|c| c.node()).collect();
        assert_eq!(nodes.len(), 1, "{meeting} is split over {nodes:?}");
        let node = clients[0].node().to_owned();
        assert_eq!(
            b.route(meeting).await.expect("route"),
            node,
            "/route disagrees for {meeting}"
        );
        used.insert(node);
        // A broadcast through the proxy reaches every member.
        clients[0]
            .send_text(&format!("hello {meeting}"))
            .await
            .expect("send");
        for c in clients.iter_mut() {
            let msg = c
                .recv_type("message")
                .await
                .expect("message through the proxy");
            assert_eq!(msg["text"], format!("hello {meeting}"));
        }
    }
    assert!(used.len() >= 2, "only {used:?} used for 30 meetings");

    // The balancer counts the open WebSockets per upstream.
    let text = b.metrics().await;
    let total: f64 = ["node-a", "node-b", "node-c"]
        .iter()
        .filter_map(|n| {
            metric(
                &text,
                &format!("roompin_balancer_connections{{upstream=\"{n}\"}}"),
            )
        })
        .sum();
    assert_eq!(total, 150.0, "open connections in /metrics:\n{text}");
    let ring = b.ring().await.expect("ring");
    let listed: i64 = ring["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["connections"].as_i64())
        .sum();
    assert_eq!(listed, 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_meeting_ids_are_refused_and_never_proxied() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let b = &cluster.balancer;
    let cases = [
        ("/websocket", "missing"),
        ("/websocket?meeting_id=a%20b", "character"),
        ("/websocket?meeting_id=%ZZ", "character"),
        ("/sse?meeting_id=", "empty"),
        ("/messages?meeting_id=a&meeting_id=b", "more than once"),
    ];
    for (path, word) in cases {
        let (status, body) = get(&b.url(path)).await.expect("request");
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            body.contains(word),
            "{path}: reason {body:?} lacks {word:?}"
        );
    }
    let long = format!("/websocket?meeting_id={}", "x".repeat(200));
    let (status, body) = get(&b.url(&long)).await.expect("request");
    assert_eq!((status, body.contains("200 bytes")), (400, true), "{body}");
    let (status, _) = get(&b.url("/nowhere")).await.expect("request");
    assert_eq!(status, 404);
    // No node saw any of it: none has a room or counted a request.
    for node in &cluster.nodes {
        let (_, text) = get(&node.url("/metrics")).await.expect("node metrics");
        assert_eq!(
            metric(&text, "roompin_node_rooms"),
            Some(0.0),
            "{} got a request",
            node.id
        );
    }
    let (status, body) = get(&b.url("/")).await.expect("page");
    assert_eq!(status, 200);
    assert!(body.contains("roompin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_balancers_with_the_same_toml_route_identically() {
    use roompin_shared::{Member, Ring};
    use roompin_tests::cluster::BalancerProc;
    use roompin_tests::process::{free_port, loopback, target_dir};

    let cluster = Cluster::start(ClusterOptions::default()).await;
    let (public, admin) = (loopback(free_port()), loopback(free_port()));
    let nodes: Vec<_> = cluster.nodes.iter().collect();
    let toml = Cluster::toml_for(&cluster.options, public, admin, &nodes);
    let path = target_dir()
        .join("test-logs")
        .join(format!("second-{}.toml", admin.port()));
    std::fs::write(&path, toml).expect("write second config");
    let second = BalancerProc::start(path, public, admin).await;
    cluster
        .wait_owners(&["node-a", "node-b", "node-c"], roompin_tests::PATIENCE)
        .await;
    crate_eventually_all_owners(&second).await;

    // The ring as the shared crate computes it, in this process.
    let members: Vec<Member> = cluster
        .nodes
        .iter()
        .map(|n| Member {
            id: n.id.clone(),
            addr: n.addr.to_string(),
            weight: 1,
        })
        .collect();
    let ring = Ring::new(members, roompin_shared::config::DEFAULT_VNODES);
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for i in 0..1000 {
        let meeting = format!("agree-{i}-{}", i * 7919 % 1009);
        let (a, b) = (
            cluster.balancer.route(&meeting).await.expect("route"),
            second.route(&meeting).await.expect("route"),
        );
        assert_eq!(a, b, "balancers disagree on {meeting}");
        let local = ring
            .owner(&meeting)
            .map(|m| m.id.clone())
            .unwrap_or_default();
        assert_eq!(a, local, "balancer and shared ring disagree on {meeting}");
        *per_node.entry(a).or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "{per_node:?}");
}

async fn crate_eventually_all_owners(b: &roompin_tests::BalancerProc) {
    roompin_tests::eventually(
        roompin_tests::PATIENCE,
        "second balancer sees 3 owners",
        || async { (b.owners().await.ok()?.len() == 3).then_some(()) },
    )
    .await
}

/// `hash_param` picks the query parameter the balancer hashes; nodes read
/// `meeting_id`, so the balancer passes the value on under that name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_hash_param_reaches_the_node_as_meeting_id() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let b = &cluster.balancer;
    let epoch = b.epoch().await;
    cluster.write_config(&format!(
        "hash_param = \"room\"\n{}",
        cluster.toml_with(&[0, 1, 2])
    ));
    roompin_tests::eventually(roompin_tests::PATIENCE, "hash_param applied", || async {
        let ring = b.ring().await.ok()?;
        (ring["hash_param"] == "room" && b.epoch().await > epoch).then_some(())
    })
    .await;
    let client = WsClient::connect(&b.ws_url("room=weekly.sync&user=ann"))
        .await
        .expect("join by room");
    assert_eq!(client.welcome["meeting_id"], "weekly.sync");
    assert_eq!(client.node(), b.route("weekly.sync").await.expect("route"));
    let same = WsClient::connect(&b.ws_url("room=weekly.sync&meeting_id=weekly.sync"))
        .await
        .expect("agreeing ids");
    assert_eq!(same.node(), client.node());
    let (status, body) = get(&b.url("/sse?room=a&meeting_id=b"))
        .await
        .expect("request");
    assert_eq!((status, body.contains("disagree")), (400, true), "{body}");
    let (status, body) = get(&b.url("/sse?meeting_id=a")).await.expect("request");
    assert_eq!((status, body.contains("`room`")), (400, true), "{body}");
}
