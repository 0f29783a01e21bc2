//! How a node ends its sessions when it stops (docs/ARCHITECTURE.md,
//! "Shutdown and tasks"): on SIGTERM it drains and closes every WebSocket
//! with 4001 and every SSE stream with `moved`, sessions that joined during
//! the drain included; on SIGINT it closes them with 1001 at once. No
//! session is left for the 5 s cap to cut off.

use nix::sys::signal::Signal;
use roompin_shared::protocol::close;
use roompin_tests::cluster::{Cluster, ClusterOptions};
use roompin_tests::ws::Ended;
use roompin_tests::{eventually, get, NodeProc, SseClient, WsClient, PATIENCE};
use serde_json::json;
use std::time::Duration;

/// The node's log line when sessions outlive the stop cap.
const CUT_OFF: &str = "did not end within";

/// The events of an SSE stream up to its end; panics if it does not end.
async fn to_the_end(sse: &mut SseClient) -> Vec<String> {
    let mut kinds = Vec::new();
    loop {
        match sse.recv().await {
            Ok(e) => kinds.push(e.event),
            Err(e) if e.to_string().contains("stream ended") => return kinds,
            Err(e) => panic!("the SSE stream did not end: {e} (after {kinds:?})"),
        }
    }
}

async fn draining(url: &str) {
    eventually(PATIENCE, "/healthz to answer 503", || async {
        (get(url).await.ok()?.0 == 503).then_some(())
    })
    .await;
}

/// Through a balancer that has not probed the node since its SIGTERM, a
/// client joins a room live on the draining node (a draining node opens no
/// new room, but serves the ones it holds). When the balancer takes the
/// node out, the room moves with its history: the client is closed with
/// 4001 and resumes on the other node with `recovered: true` and no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_joins_a_draining_node_moves_with_4001_and_no_gap() {
    let slow = ClusterOptions {
        nodes: 2,
        node_toml: "drain_timeout_ms = 10000\n".into(),
        // One probe at the start, then none until the test says: the
        // window between SIGTERM and the balancer's next probe, held open.
        health_toml:
            "interval_ms = 600000\ntimeout_ms = 1000\nunhealthy_after = 3\nhealthy_after = 2\n"
                .into(),
        control: true,
    };
    let mut cluster = Cluster::start(slow).await;
    let b = &cluster.balancer;
    let mut meeting = None;
    for i in 0..200 {
        let m = format!("drain-{i}");
        if b.route(&m).await.expect("/route") == "node-a" {
            meeting = Some(m);
            break;
        }
    }
    let meeting = meeting.expect("a meeting on node-a");

    let mut early = WsClient::join(&b.ws_base(), &meeting, "early").await;
    assert_eq!(early.node(), "node-a", "{}", early.welcome);
    early.expect_next("join").await;

    cluster.nodes[0].proc.signal(Signal::SIGTERM);
    draining(&cluster.nodes[0].url("/healthz")).await;
    let mut late = WsClient::join(&b.ws_base(), &meeting, "late").await;
    assert_eq!(late.node(), "node-a", "{}", late.welcome);
    late.expect_next("join").await;
    early.expect_next("join").await;
    late.send_text("said on the draining node")
        .await
        .expect("send");
    for c in [&mut late, &mut early] {
        assert_eq!(
            c.expect_next("message").await["text"],
            "said on the draining node"
        );
    }

    // The balancer probes again (as its next round would), sees 503, and
    // routes the meeting to node-b.
    let mut fast = cluster.options.clone();
    fast.health_toml = ClusterOptions::default().health_toml;
    let nodes: Vec<_> = cluster.nodes.iter().collect();
    let toml = Cluster::toml_for(&fast, b.public, b.admin, &nodes);
    cluster.write_config(&toml);

    let (ended, _) = late.until_end(PATIENCE).await.expect("close");
    assert_eq!(
        ended,
        Ended::Closed(close::ROOM_MOVED, close::ROOM_MOVED_REASON.into())
    );
    let (since, room) = (late.last_seq, late.welcome["room"].clone());
    let room = room.as_str().unwrap_or_default();
    let url = b.ws_url(&format!(
        "meeting_id={meeting}&user=late&since={since}&since_room={room}"
    ));
    let mut back = eventually(PATIENCE, "late to resume on node-b", || async {
        let c = WsClient::connect(&url).await.ok()?;
        (c.node() == "node-b").then_some(c)
    })
    .await;
    assert_eq!(
        (&back.welcome["recovered"], &back.welcome["room"]),
        (&json!(true), &json!(room)),
        "{}",
        back.welcome
    );
    // Whatever happened meanwhile (early's return) replays with no gap,
    // then late's own join.
    back.last_seq = since;
    let end = back.welcome["seq"].as_u64().unwrap_or(0);
    while back.last_seq < end {
        back.recv_next().await.expect("gapless replay");
    }
    let join = back.expect_next("join").await;
    assert_eq!(join["conn_id"], json!(back.conn_id()));
    back.send_text("said on node-b").await.expect("send");
    assert_eq!(
        back.recv_type("message").await.expect("message")["text"],
        "said on node-b"
    );

    let status = cluster.nodes[0]
        .proc
        .wait_exit(Duration::from_secs(15))
        .await;
    assert!(status.is_some_and(|s| s.success()), "node-a: {status:?}");
    let logs = cluster.nodes[0].proc.logs();
    assert!(!logs.contains(CUT_OFF), "{logs}");
    drop(early);
}

/// A node no balancer routes to drains until its clients leave or the
/// drain times out. Clients that join during the drain are closed then:
/// WebSocket with 4001 (after what was queued for them), SSE with a last
/// `moved` event. One that never reads, and so never answers the close,
/// does not hold the node past its stop cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_that_join_during_a_drain_end_with_4001() {
    let mut node = NodeProc::with_toml("drain", "drain_timeout_ms = 1500\n").await;
    // A client of before the SIGTERM keeps the drain going to its timeout.
    let mut early = WsClient::join(&node.ws_base(), "early", "early").await;
    early.expect_next("join").await;
    node.proc.signal(Signal::SIGTERM);
    draining(&node.url("/healthz")).await;

    let mut ws = WsClient::join(&node.ws_base(), "late", "ws").await;
    ws.expect_next("join").await;
    let mut sse = SseClient::connect(&node.url("/sse?meeting_id=late&user=sse"), None)
        .await
        .expect("sse during the drain");
    let deaf = WsClient::join(&node.ws_base(), "late", "deaf").await;
    ws.send_text("last words").await.expect("send");

    let (ended, frames) = ws.until_end(PATIENCE).await.expect("close");
    assert_eq!(
        ended,
        Ended::Closed(close::ROOM_MOVED, close::ROOM_MOVED_REASON.into())
    );
    assert!(
        frames.iter().any(|f| f["text"] == "last words"),
        "{frames:?}"
    );
    let kinds = to_the_end(&mut sse).await;
    assert_eq!(kinds.last().map(String::as_str), Some("moved"), "{kinds:?}");
    assert!(kinds.contains(&"message".to_owned()), "{kinds:?}");

    let (ended, _) = early.until_end(PATIENCE).await.expect("close");
    assert_eq!(
        ended,
        Ended::Closed(close::ROOM_MOVED, close::ROOM_MOVED_REASON.into())
    );

    let status = node.proc.wait_exit(Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let logs = node.proc.logs();
    assert!(!logs.contains(CUT_OFF), "{logs}");
    drop(deaf);
}

/// SIGINT stops at once: WebSocket clients get 1001, SSE streams end
/// (without `moved`: nothing was handed over), and the node exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_closes_every_session_with_1001() {
    let mut node = NodeProc::with_toml("stop", "").await;
    let mut a = WsClient::join(&node.ws_base(), "m1", "a").await;
    a.expect_next("join").await;
    let mut b = WsClient::join(&node.ws_base(), "m2", "b").await;
    b.expect_next("join").await;
    let mut sse = SseClient::connect(&node.url("/sse?meeting_id=m1&user=sse"), None)
        .await
        .expect("sse");
    a.expect_next("join").await;
    let deaf = WsClient::join(&node.ws_base(), "m2", "deaf").await;

    node.proc.signal(Signal::SIGINT);
    for c in [&mut a, &mut b] {
        let (ended, _) = c.until_end(PATIENCE).await.expect("close");
        assert_eq!(
            ended,
            Ended::Closed(close::GOING_AWAY, close::GOING_AWAY_REASON.into())
        );
    }
    let kinds = to_the_end(&mut sse).await;
    assert!(!kinds.contains(&"moved".to_owned()), "{kinds:?}");

    let status = node.proc.wait_exit(Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let logs = node.proc.logs();
    assert!(!logs.contains(CUT_OFF), "{logs}");
    drop(deaf);
}
