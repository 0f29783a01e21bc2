//! The node's limits (issue 11): `max_connections` and `max_rooms` answer
//! 503 before any upgrade, and a client that floods its room is
//! rate-limited, then closed with 1008, while the room's other members get
//! every message that was published.

use roompin_shared::protocol::{close, error_code};
use roompin_tests::ws::Ended;
use roompin_tests::{eventually, get, metric, NodeProc, WsClient, PATIENCE};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn metrics(node: &NodeProc) -> String {
    get(&node.url("/metrics")).await.expect("metrics").1
}

fn count(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or(0.0)
}

#[tokio::test]
async fn max_connections_gives_503_before_any_upgrade() {
    let node = NodeProc::with_toml("capped", "max_connections = 3\nmax_sockets = 64\n").await;
    let mut held = Vec::new();
    for user in ["a", "b", "c"] {
        held.push(WsClient::join(&node.ws_base(), "full", user).await);
    }
    let (status, body) = WsClient::refused(&node.ws_url("meeting_id=full&user=d"))
        .await
        .expect("refused");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("max_connections"), "{body}");
    let sse = reqwest::get(node.url("/sse?meeting_id=full"))
        .await
        .expect("sse");
    assert_eq!(sse.status(), 503);
    assert_eq!(
        sse.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    // A publish is no session: it still goes through.
    let posted = reqwest::Client::new()
        .post(node.url("/messages?meeting_id=full"))
        .json(&json!({"text": "over http"}))
        .send()
        .await
        .expect("post");
    assert_eq!(posted.status(), 202);
    // One leaves: its place is free again.
    if let Some(c) = held.pop() {
        c.close().await;
    }
    let again = eventually(PATIENCE, "a free place after a leave", || async {
        WsClient::connect(&node.ws_url("meeting_id=full&user=e"))
            .await
            .ok()
    })
    .await;
    assert_eq!(again.welcome["members"], 3);
    let m = metrics(&node).await;
    assert!(
        count(
            &m,
            "roompin_node_limit_refusals_total{limit=\"connections\"}"
        ) >= 2.0
    );
}

#[tokio::test]
async fn max_rooms_gives_503_for_a_new_room_only() {
    let node = NodeProc::with_toml("roomy", "max_rooms = 2\n").await;
    let _r1 = WsClient::join(&node.ws_base(), "r1", "a").await;
    let _r2 = WsClient::join(&node.ws_base(), "r2", "a").await;
    let (status, body) = WsClient::refused(&node.ws_url("meeting_id=r3"))
        .await
        .expect("refused");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("max_rooms"), "{body}");
    let sse = reqwest::get(node.url("/sse?meeting_id=r3"))
        .await
        .expect("sse");
    assert_eq!(sse.status(), 503);
    let post = reqwest::Client::new()
        .post(node.url("/messages?meeting_id=r3"))
        .json(&json!({"text": "x"}))
        .send()
        .await
        .expect("post");
    assert_eq!(post.status(), 503, "a publish would open a room too");
    // Existing rooms take new members.
    let joined = WsClient::join(&node.ws_base(), "r1", "b").await;
    assert_eq!(joined.welcome["members"], 2);
    let m = metrics(&node).await;
    assert!(count(&m, "roompin_node_limit_refusals_total{limit=\"rooms\"}") >= 3.0);
}

#[tokio::test]
async fn a_flooding_client_is_limited_then_closed_and_its_room_gets_every_message() {
    let node = NodeProc::with_toml(
        "limited",
        "messages_per_second = 5\nmessage_burst = 10\nrate_limit_close_after = 30\n",
    )
    .await;
    let base = node.ws_base();
    let mut alice = WsClient::join(&base, "flood", "alice").await;
    let mut carol = WsClient::join(&base, "flood", "carol").await;
    let mut flooder = WsClient::join(&base, "flood", "flooder").await;
    for c in [&mut alice, &mut carol] {
        while c.last_seq < 3 {
            c.expect_next("join").await;
        }
    }
    flooder.expect_next("join").await;
    let flooder_id = flooder.conn_id().to_owned();

    // Past the burst: refused with an error frame, and not published.
    for i in 0..12 {
        flooder
            .send_text(&format!("flood {i}"))
            .await
            .expect("send");
    }
    let refused = flooder.recv_type("error").await.expect("an error frame");
    assert_eq!(refused["code"], error_code::RATE_LIMITED, "{refused}");
    // Keeping on: closed with 1008.
    for i in 12..200 {
        if flooder.send_text(&format!("flood {i}")).await.is_err() {
            break;
        }
    }
    let (ended, frames) = flooder.until_end(PATIENCE).await.expect("closed");
    assert_eq!(
        ended,
        Ended::Closed(close::POLICY_VIOLATION, close::RATE_LIMITED_REASON.into()),
        "after {} frames",
        frames.len()
    );

    // The others got the same messages, gapless, then the flooder's leave.
    let mut seen = Vec::new();
    for c in [&mut alice, &mut carol] {
        let mut texts = Vec::new();
        loop {
            let v = c.recv_next().await.expect("gapless");
            match v["type"].as_str() {
                Some("message") => texts.push(v["text"].as_str().unwrap_or("").to_owned()),
                Some("leave") => {
                    assert_eq!(v["conn_id"], flooder_id.as_str());
                    break;
                }
                _ => panic!("unexpected {v}"),
            }
        }
        seen.push(texts);
    }
    assert_eq!(seen[0], seen[1], "both members saw the same messages");
    let published = seen[0].len();
    assert!(
        (10..=40).contains(&published),
        "{published} of 200 flood messages were published"
    );
    assert_eq!(seen[0][0], "flood 0", "the burst goes first, in order");

    // The room carries on.
    alice.send_text("after the flood").await.expect("send");
    assert_eq!(
        carol.expect_next("message").await["text"],
        "after the flood"
    );
    assert_eq!(
        alice.expect_next("message").await["text"],
        "after the flood"
    );

    // 10,000 pings are not free either.
    let mut pinger = WsClient::join(&base, "flood", "pinger").await;
    let pinger_id = pinger.conn_id().to_owned();
    for _ in 0..10_000 {
        if pinger
            .send_raw(Message::Ping(Vec::new().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let (ended, _) = pinger.until_end(PATIENCE).await.expect("closed");
    assert_eq!(
        ended,
        Ended::Closed(close::POLICY_VIOLATION, close::RATE_LIMITED_REASON.into())
    );
    assert_eq!(
        carol.expect_next("join").await["conn_id"],
        pinger_id.as_str()
    );
    assert_eq!(
        carol.expect_next("leave").await["conn_id"],
        pinger_id.as_str()
    );

    // Counted once each session has ended.
    let m = eventually(PATIENCE, "two 1008 closes counted", || async {
        let m = metrics(&node).await;
        (count(&m, "roompin_node_closes_total{code=\"1008\"}") >= 2.0).then_some(m)
    })
    .await;
    assert!(count(&m, "roompin_node_rate_limited_total") >= 50.0);
}
