//! End-to-end tests of one chat node: the real `roompin-node` binary on a
//! loopback port, driven by real WebSocket clients (issue 2).
//!
//! Every test starts its own node, so the tests run in parallel. The last
//! test runs every scenario of this file against one node and then checks
//! that the node still serves and that `/metrics` adds up.

use futures_util::future::join_all;
use roompin_shared::protocol::{close, error_code};
use roompin_tests::ws::Ended;
use roompin_tests::{eventually, get, metric, NodeProc, WsClient, PATIENCE};
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// The frame limit the tests configure, small enough to exceed cheaply.
const LIMIT: usize = 1024;

/// Joins `users` to a new `meeting` one after the other, then lets each read
/// the joins up to the last one, checking seqs and member counts on the way
/// (in a new room the n-th join has seq n and n members).
async fn room(node: &NodeProc, meeting: &str, users: &[&str]) -> Vec<WsClient> {
    let mut clients = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let c = WsClient::join(&node.ws_base(), meeting, user).await;
        assert_eq!(c.welcome["meeting_id"], meeting);
        assert_eq!(c.welcome["members"], i + 1, "{}", c.welcome);
        clients.push(c);
    }
    let n = users.len() as u64;
    for c in clients.iter_mut() {
        while c.last_seq < n {
            let join = c.expect_next("join").await;
            assert_eq!(join["members"], join["seq"], "{join}");
        }
    }
    clients
}

async fn metrics(node: &NodeProc) -> String {
    let (status, body) = get(&node.url("/metrics")).await.expect("GET /metrics");
    assert_eq!(status, 200);
    body
}

fn sample(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
}

// ---------------------------------------------------------------- scenarios

/// 3 clients in A and 2 in B: messages reach exactly their own room, the
/// sender included, and B sees nothing of A's.
async fn rooms_are_isolated(node: &NodeProc, a: &str, b: &str) {
    let mut room_a = room(node, a, &["a1", "a2", "a3"]).await;
    let mut room_b = room(node, b, &["b1", "b2"]).await;

    // Two senders on two connections: the node may take either first, but
    // every member sees the same order, numbered 4 and 5.
    room_a[0].send_text("from a1").await.expect("a1 sends");
    room_a[2].send_text("from a3").await.expect("a3 sends");
    let mut orders = Vec::new();
    for c in room_a.iter_mut() {
        let m1 = c.expect_next("message").await;
        let m2 = c.expect_next("message").await;
        assert_eq!(m1["meeting_id"], json!(a));
        assert_eq!((m1["seq"].as_u64(), m2["seq"].as_u64()), (Some(4), Some(5)));
        for m in [&m1, &m2] {
            let from = m["from"].as_str().unwrap_or_default();
            assert_eq!(m["text"], json!(format!("from {from}")), "{m}");
        }
        orders.push((m1["from"].clone(), m2["from"].clone()));
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "members saw different orders: {orders:?}"
    );
    let mut senders = [orders[0].0.clone(), orders[0].1.clone()];
    senders.sort_by_key(|v| v.to_string());
    assert_eq!(senders, [json!("a1"), json!("a3")]);

    // B's own numbering goes on from its joins; its next event is the marker.
    room_b[1].send_text("marker").await.expect("b2 sends");
    for c in room_b.iter_mut() {
        let m = c.expect_next("message").await;
        assert_eq!(
            (&m["from"], &m["text"], &m["meeting_id"], &m["seq"]),
            (&json!("b2"), &json!("marker"), &json!(b), &json!(3)),
            "B saw something other than its own marker first"
        );
    }
    for c in room_a.iter_mut().chain(room_b.iter_mut()) {
        assert!(c.silent_for(Duration::from_millis(100)).await);
    }
}

/// 500 messages from 3 concurrent senders to a room of 5: every member sees
/// the same events with seqs rising by exactly 1, each sender's in order.
/// Returns the messages sent.
async fn seq_is_gapless(node: &NodeProc, meeting: &str) -> u64 {
    const TOTAL: usize = 500;
    let users = ["s0", "s1", "s2", "r3", "r4"];
    let clients = room(node, meeting, &users).await;
    let tasks = clients.into_iter().enumerate().map(|(i, mut c)| {
        tokio::spawn(async move {
            if i < 3 {
                // s0 sends 167, s1 167, s2 166.
                for k in (i..TOTAL).step_by(3) {
                    c.send_text(&format!("{i}:{k}")).await.expect("send");
                }
            }
            let mut seen = Vec::with_capacity(TOTAL);
            while seen.len() < TOTAL {
                let v = c.recv_next().await.expect("gapless stream");
                assert_eq!(v["type"], "message", "{v}");
                seen.push((v["seq"].as_u64(), v["from"].clone(), v["text"].clone()));
            }
            (seen, c)
        })
    });
    let (seen, mut clients): (Vec<_>, Vec<_>) = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("member task"))
        .unzip();
    for c in clients.iter_mut() {
        assert!(
            c.silent_for(Duration::from_millis(50)).await,
            "more than {TOTAL}"
        );
    }
    let first = &seen[0];
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s, first, "member {i} saw a different stream than member 0");
    }
    let seqs: Vec<_> = first.iter().map(|(s, _, _)| s.unwrap_or(0)).collect();
    assert_eq!(seqs, (6..6 + TOTAL as u64).collect::<Vec<_>>());
    for sender in 0..3 {
        let texts: Vec<_> = first
            .iter()
            .filter(|(_, from, _)| from == &json!(format!("s{sender}")))
            .map(|(_, _, t)| t.as_str().unwrap_or_default().to_owned())
            .collect();
        let sent: Vec<_> = (sender..TOTAL)
            .step_by(3)
            .map(|k| format!("{sender}:{k}"))
            .collect();
        assert_eq!(texts, sent, "s{sender}'s messages arrived out of order");
    }
    TOTAL as u64
}

/// welcome carries the seq before the joiner's own join and the member count
/// including it; the joiner sees its own join; leave counts the rest.
async fn membership_counts(node: &NodeProc, meeting: &str) {
    let mut ann = WsClient::connect(&node.ws_url(&format!("meeting_id={meeting}")))
        .await
        .expect("ann joins");
    let w = &ann.welcome;
    assert_eq!(
        (&w["type"], &w["seq"], &w["members"], &w["node"]),
        (&json!("welcome"), &json!(0), &json!(1), &json!(node.id)),
        "{w}"
    );
    assert!(w.get("recovered").is_none(), "no since, no recovered: {w}");
    let ann_id = ann.conn_id().to_owned();
    assert!(ann_id.starts_with(&format!("{}.", node.id)), "{ann_id}");
    let j = ann.expect_next("join").await;
    // Without `user` the user name is the conn id.
    assert_eq!(
        (&j["seq"], &j["conn_id"], &j["user"], &j["members"]),
        (&json!(1), &json!(ann_id), &json!(ann_id), &json!(1))
    );

    let mut bob = WsClient::join(&node.ws_base(), meeting, "bob").await;
    assert_eq!(
        (&bob.welcome["seq"], &bob.welcome["members"]),
        (&json!(1), &json!(2))
    );
    let bob_id = bob.conn_id().to_owned();
    assert_ne!(bob_id, ann_id);
    for c in [&mut ann, &mut bob] {
        let j = c.expect_next("join").await;
        assert_eq!(
            (&j["seq"], &j["conn_id"], &j["user"], &j["members"]),
            (&json!(2), &json!(bob_id), &json!("bob"), &json!(2))
        );
    }

    let mut cy = WsClient::join(&node.ws_base(), meeting, "cy").await;
    assert_eq!(
        (&cy.welcome["seq"], &cy.welcome["members"]),
        (&json!(2), &json!(3))
    );
    for c in [&mut ann, &mut bob, &mut cy] {
        let j = c.expect_next("join").await;
        assert_eq!(
            (&j["seq"], &j["user"], &j["members"]),
            (&json!(3), &json!("cy"), &json!(3))
        );
    }

    bob.close().await;
    for c in [&mut ann, &mut cy] {
        let l = c.expect_next("leave").await;
        assert_eq!(
            (&l["seq"], &l["conn_id"], &l["user"], &l["members"]),
            (&json!(4), &json!(bob_id), &json!("bob"), &json!(2))
        );
    }
    cy.close().await;
    let l = ann.expect_next("leave").await;
    assert_eq!(
        (&l["seq"], &l["user"], &l["members"]),
        (&json!(5), &json!("cy"), &json!(1))
    );

    // A newcomer is counted from what is left.
    let mut dee = WsClient::join(&node.ws_base(), meeting, "dee").await;
    assert_eq!(
        (&dee.welcome["seq"], &dee.welcome["members"]),
        (&json!(5), &json!(2))
    );
    let j = dee.expect_next("join").await;
    assert_eq!((&j["seq"], &j["members"]), (&json!(6), &json!(2)));
}

/// Bad JSON, an unknown type, a missing type, a missing text and a binary
/// frame each get an `error` frame with its code; none is broadcast, and the
/// connection keeps working. Returns the messages that were broadcast.
async fn bad_frames_get_errors(node: &NodeProc, meeting: &str) -> u64 {
    let mut clients = room(node, meeting, &["bad", "peer"]).await;
    let cases = [
        (Message::text("{not json"), error_code::BAD_JSON),
        (
            Message::text(r#"{"type":"message","text":5}"#),
            error_code::BAD_JSON,
        ),
        (
            Message::text(r#"{"type":"shout","text":"x"}"#),
            error_code::UNKNOWN_TYPE,
        ),
        (Message::text(r#"{"text":"x"}"#), error_code::MISSING_TYPE),
        (
            Message::text(r#"{"type":"message"}"#),
            error_code::MISSING_TEXT,
        ),
        (
            Message::binary(b"\x01\x02".to_vec()),
            error_code::BINARY_UNSUPPORTED,
        ),
    ];
    for (frame, code) in cases {
        let shown = format!("{frame:?}");
        clients[0].send_raw(frame).await.expect("send bad frame");
        let e = clients[0].recv().await.expect("error frame");
        assert_eq!(
            (&e["type"], &e["code"]),
            (&json!("error"), &json!(code)),
            "{shown}: {e}"
        );
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{shown}: error without a message: {e}"
        );
        assert!(e.get("seq").is_none(), "errors are not room events: {e}");
    }
    // Nothing reached the peer, and the sender's next message is broadcast
    // with the very next seq.
    clients[0].send_text("still here").await.expect("send");
    for c in clients.iter_mut() {
        let m = c.expect_next("message").await;
        assert_eq!(
            (&m["text"], &m["from"], &m["seq"]),
            (&json!("still here"), &json!("bad"), &json!(3))
        );
    }
    1
}

/// A `message` frame whose JSON is exactly `frame_len` bytes.
fn frame_of(frame_len: usize) -> String {
    let empty = json!({"type": "message", "text": ""}).to_string();
    let text = "x".repeat(frame_len - empty.len());
    let frame = json!({"type": "message", "text": text}).to_string();
    assert_eq!(frame.len(), frame_len);
    frame
}

/// With `max_message_bytes = LIMIT`: a frame of exactly LIMIT bytes is
/// broadcast; one byte more closes the sender with 1009, and the room sees
/// it leave. Returns the messages that were broadcast.
async fn oversized_frames_close_1009(node: &NodeProc, meeting: &str) -> u64 {
    let mut clients = room(node, meeting, &["big", "peer"]).await;
    let big_id = clients[0].conn_id().to_owned();
    clients[0]
        .send_raw(Message::text(frame_of(LIMIT)))
        .await
        .expect("send frame at the limit");
    for c in clients.iter_mut() {
        let m = c.expect_next("message").await;
        assert_eq!(m["text"].as_str().map(str::len), Some(LIMIT - 28), "{m}");
    }
    clients[0]
        .send_raw(Message::text(frame_of(LIMIT + 1)))
        .await
        .expect("send frame over the limit");
    let (ended, frames) = clients[0].until_end(PATIENCE).await.expect("close");
    assert_eq!(
        ended,
        Ended::Closed(close::TOO_BIG, "frame too big".into()),
        "after {frames:?}"
    );
    assert!(frames.is_empty(), "nothing but the close: {frames:?}");
    let l = clients[1].expect_next("leave").await;
    assert_eq!((&l["conn_id"], &l["members"]), (&json!(big_id), &json!(1)));

    // A frame far over the limit, and over the node's read buffer, too.
    let mut huge = WsClient::join(&node.ws_base(), meeting, "huge").await;
    huge.expect_next("join").await;
    clients[1].expect_next("join").await;
    huge.send_raw(Message::text(frame_of(100 * LIMIT)))
        .await
        .expect("send a huge frame");
    let (ended, _) = huge.until_end(PATIENCE).await.expect("close");
    assert_eq!(ended, Ended::Closed(close::TOO_BIG, "frame too big".into()));
    clients[1].expect_next("leave").await;
    1
}

/// A missing, a bad and a repeated meeting_id, and bad `since`/`user`, are
/// refused with 400 and a reason before any upgrade; a GET without upgrade
/// gets 426; an unknown path 404.
async fn bad_requests_are_refused(node: &NodeProc) {
    let long = "a".repeat(200);
    let cases: [(&str, &str); 8] = [
        ("user=x", "missing"),
        ("meeting_id=a%20b", "character"),
        (&format!("meeting_id={long}"), "200 bytes"),
        ("meeting_id=%ZZ", "character"),
        ("meeting_id=", "empty"),
        ("meeting_id=a&meeting_id=b", "more than once"),
        ("meeting_id=ok&since=soon", "whole number"),
        (&format!("meeting_id=ok&user={}", "u".repeat(65)), "user"),
    ];
    for (query, word) in cases {
        let (status, body) = WsClient::refused(&node.ws_url(query))
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body.contains(word),
            "{query}: {body:?} does not say {word:?}"
        );
        // The same refusal for a plain GET.
        let (status, body) = get(&node.url(&format!("/websocket?{query}")))
            .await
            .expect("GET");
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(word), "{query}: {body:?}");
    }

    let resp = reqwest::get(node.url("/websocket?meeting_id=plain"))
        .await
        .expect("plain GET");
    assert_eq!(resp.status().as_u16(), 426);
    assert_eq!(
        resp.headers().get("upgrade").and_then(|v| v.to_str().ok()),
        Some("websocket")
    );
    let body = resp.text().await.expect("426 body");
    assert!(body.contains("WebSocket"), "{body:?}");

    let (status, body) = get(&node.url("/nowhere")).await.expect("GET /nowhere");
    assert_eq!(status, 404);
    assert!(body.contains("/nowhere"), "{body:?}");
    let (status, body) = get(&node.url("/healthz")).await.expect("GET /healthz");
    assert_eq!((status, body.as_str()), (200, "ok"));
}

// -------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_exactly_their_own_room() {
    let node = NodeProc::with_toml("iso", "").await;
    rooms_are_isolated(&node, "room-A", "room-B").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seq_rises_by_one_across_concurrent_senders() {
    let node = NodeProc::with_toml("seq", "").await;
    seq_is_gapless(&node, "busy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_join_and_leave_carry_member_counts() {
    let node = NodeProc::with_toml("counts", "").await;
    membership_counts(&node, "counts").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_frames_and_the_connection_lives() {
    let node = NodeProc::with_toml("frames", "").await;
    bad_frames_get_errors(&node, "frames").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_get_close_1009() {
    let node = NodeProc::with_toml("big", &format!("max_message_bytes = {LIMIT}\n")).await;
    oversized_frames_close_1009(&node, "big").await;
}

/// The default limit is 64 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_frame_limit_is_64_kib() {
    let node = NodeProc::with_toml("big64", "").await;
    let mut c = WsClient::join(&node.ws_base(), "big64", "c").await;
    c.expect_next("join").await;
    c.send_raw(Message::text(frame_of(64 * 1024)))
        .await
        .expect("send");
    c.expect_next("message").await;
    c.send_raw(Message::text(frame_of(64 * 1024 + 1)))
        .await
        .expect("send");
    let (ended, _) = c.until_end(PATIENCE).await.expect("close");
    assert_eq!(ended, Ended::Closed(close::TOO_BIG, "frame too big".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_400_426_and_404_with_reasons() {
    let node = NodeProc::with_toml("http", "").await;
    bad_requests_are_refused(&node).await;
}

/// Everything above against one node; then it still serves new clients, and
/// `/metrics` shows exactly the connections and rooms the test holds and
/// counts what it received and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_all_that_the_node_still_serves_and_metrics_add_up() {
    // Empty rooms are dropped quickly, so the room gauge can be exact.
    let node = NodeProc::with_toml(
        "survivor",
        &format!("max_message_bytes = {LIMIT}\nroom_idle_ms = 100\n"),
    )
    .await;
    let before = metrics(&node).await;
    let received_before = sample(&before, "roompin_node_events_received_total");
    let delivered_before = sample(&before, "roompin_node_frames_delivered_total");

    let mut sent = 0;
    rooms_are_isolated(&node, "s-A", "s-B").await;
    sent += 3;
    sent += seq_is_gapless(&node, "s-busy").await;
    membership_counts(&node, "s-counts").await;
    sent += bad_frames_get_errors(&node, "s-frames").await;
    sent += oversized_frames_close_1009(&node, "s-big").await;
    bad_requests_are_refused(&node).await;

    // Every client above is gone (dropped or closed); hold 3 in 2 rooms.
    let mut held = room(&node, "fresh-1", &["f1", "f2"]).await;
    held.extend(room(&node, "fresh-2", &["f3"]).await);
    held[1].send_text("hello again").await.expect("send");
    for c in held.iter_mut().take(2) {
        let m = c.expect_next("message").await;
        assert_eq!(m["text"], "hello again");
    }
    sent += 1;
    assert!(held[2].silent_for(Duration::from_millis(50)).await);

    eventually(PATIENCE, "gauges to show only the held clients", || async {
        let text = metrics(&node).await;
        let now = (
            roompin_tests::scrape::sum(&text, "roompin_node_connections"),
            metric(&text, "roompin_node_rooms"),
        );
        (now == (Some(3.0), Some(2.0))).then_some(())
    })
    .await;
    let after = metrics(&node).await;
    let received = sample(&after, "roompin_node_events_received_total") - received_before;
    assert_eq!(
        received, sent as f64,
        "every accepted message, nothing else"
    );
    // At least every message to every member (and the joins, welcomes, ...).
    let delivered = sample(&after, "roompin_node_frames_delivered_total") - delivered_before;
    assert!(
        delivered >= (500 * 5 + 2 * 3 + 2) as f64,
        "frames delivered rose by only {delivered}"
    );
    assert!(
        sample(&after, "roompin_node_closes_total{code=\"1009\"}") >= 2.0,
        "{after}"
    );
}
