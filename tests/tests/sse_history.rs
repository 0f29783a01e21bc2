//! SSE, HTTP publish and resume from history (issue 5), end to end through
//! a real balancer in front of three real nodes. Every wait is on an event
//! (with the harness's patience as its timeout), never a fixed sleep.

use futures_util::StreamExt;
use roompin_tests::sse::SseEvent;
use roompin_tests::{Cluster, ClusterOptions, SseClient, WsClient};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The room seq of a room event (`message`, `join`, `leave`).
fn seq_of(v: &Value) -> Option<u64> {
    match v["type"].as_str() {
        Some("message" | "join" | "leave") => v["seq"].as_u64(),
        _ => None,
    }
}

fn sse_url(cluster: &Cluster, query: &str) -> String {
    cluster.balancer.url(&format!("/sse?{query}"))
}

/// POSTs a raw body to `/messages` through the balancer.
async fn post(cluster: &Cluster, meeting: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
    let url = cluster
        .balancer
        .url(&format!("/messages?meeting_id={meeting}"));
    let resp = tokio::time::timeout(
        roompin_tests::PATIENCE,
        reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send(),
    )
    .await
    .expect("POST /messages timed out")
    .expect("POST /messages");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// Publishes one message over HTTP and returns its seq.
async fn publish(cluster: &Cluster, meeting: &str, user: &str, text: &str) -> u64 {
    let body = json!({ "text": text, "user": user }).to_string();
    let (status, answer) = post(cluster, meeting, body).await;
    assert_eq!(status, 202, "POST /messages answered {status}: {answer}");
    let v: Value = serde_json::from_str(&answer).expect("202 body is JSON");
    v["seq"].as_u64().expect("202 body has a seq")
}

/// The next SSE room event, checked for the SSE framing: `id:` is the seq
/// and `event:` the type of the JSON in `data:`.
async fn sse_room_event(sse: &mut SseClient) -> Value {
    loop {
        let e: SseEvent = sse.recv().await.expect("SSE event");
        if e.event.is_empty() && e.data.is_null() {
            continue;
        }
        assert_eq!(e.data["type"], e.event.as_str(), "event: vs data: {e:?}");
        if let Some(seq) = seq_of(&e.data) {
            assert_eq!(e.id, Some(seq), "id: must be the seq: {e:?}");
            return e.data;
        }
        panic!("unexpected SSE event {e:?}");
    }
}

/// The next WebSocket room event (errors and the like are failures here).
async fn ws_room_event(ws: &mut WsClient) -> Value {
    let v = ws.recv().await.expect("WebSocket frame");
    assert!(seq_of(&v).is_some(), "expected a room event, got {v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_sse_members_see_the_same_events() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let meeting = "same-events";
    let mut ws = WsClient::connect(
        &cluster
            .balancer
            .ws_url(&format!("meeting_id={meeting}&user=wanda")),
    )
    .await
    .expect("WebSocket through the balancer");
    let own = ws_room_event(&mut ws).await;
    assert_eq!(
        (own["type"].as_str(), own["seq"].as_u64()),
        (Some("join"), Some(1))
    );

    let mut sse = SseClient::connect(
        &sse_url(&cluster, &format!("meeting_id={meeting}&user=sam")),
        None,
    )
    .await
    .expect("SSE through the balancer");
    assert_eq!(sse.welcome["seq"], 1, "{}", sse.welcome);
    assert_eq!(sse.welcome["members"], 2, "{}", sse.welcome);
    assert_eq!(
        sse.welcome["node"], ws.welcome["node"],
        "one meeting, one node"
    );
    assert!(
        sse.welcome.get("recovered").is_none(),
        "no since, no recovered: {}",
        sse.welcome
    );

    let mut from_ws = Vec::new();
    let mut from_sse = Vec::new();
    // The SSE member's join, seen by both.
    from_ws.push(ws_room_event(&mut ws).await);
    from_sse.push(sse_room_event(&mut sse).await);
    // Messages sent over the WebSocket and over HTTP, interleaved.
    for i in 0..10 {
        if i % 2 == 0 {
            ws.send_text(&format!("ws {i}")).await.expect("send");
        } else {
            publish(&cluster, meeting, "sam", &format!("http {i}")).await;
        }
        from_ws.push(ws_room_event(&mut ws).await);
        from_sse.push(sse_room_event(&mut sse).await);
    }
    assert_eq!(from_ws, from_sse, "both members see the very same events");
    let seqs: Vec<u64> = from_ws.iter().filter_map(seq_of).collect();
    assert_eq!(seqs, (2..=12).collect::<Vec<_>>());
    assert_eq!(from_ws[0]["type"], "join");
    assert_eq!(from_ws[0]["user"], "sam");
    assert_eq!(from_ws[0]["members"], 2);
    assert_eq!(from_ws[1]["from"], "wanda");
    assert_eq!(from_ws[1]["text"], "ws 0");
    assert_eq!(from_ws[2]["from"], "sam");
    assert_eq!(from_ws[2]["text"], "http 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publish_reaches_everyone_and_refuses_bad_bodies() {
    let cluster = Cluster::start(ClusterOptions {
        node_toml: "max_message_bytes = 1024\n".into(),
        ..Default::default()
    })
    .await;
    let meeting = "publish";
    let mut ws = WsClient::connect(
        &cluster
            .balancer
            .ws_url(&format!("meeting_id={meeting}&user=wes")),
    )
    .await
    .expect("WebSocket");
    ws_room_event(&mut ws).await;
    let mut sse = SseClient::connect(&sse_url(&cluster, &format!("meeting_id={meeting}")), None)
        .await
        .expect("SSE");
    ws_room_event(&mut ws).await;
    sse_room_event(&mut sse).await;

    let seq = publish(&cluster, meeting, "poster", "over http").await;
    assert_eq!(seq, 3);
    for got in [ws_room_event(&mut ws).await, sse_room_event(&mut sse).await] {
        assert_eq!(got["type"], "message");
        assert_eq!(got["seq"], 3);
        assert_eq!(got["from"], "poster");
        assert_eq!(got["text"], "over http");
    }
    // `user` may come from the query instead of the body.
    let url = cluster
        .balancer
        .url(&format!("/messages?meeting_id={meeting}&user=querier"));
    let resp = reqwest::Client::new()
        .post(url)
        .body(r#"{"text":"by query"}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(ws_room_event(&mut ws).await["from"], "querier");
    assert_eq!(sse_room_event(&mut sse).await["from"], "querier");

    // Refusals: each with a reason, and none of them published.
    let (status, reason) = post(&cluster, meeting, "{not json").await;
    assert_eq!(status, 400, "{reason}");
    assert!(reason.contains("JSON"), "400 without a reason: {reason:?}");
    let (status, reason) = post(&cluster, meeting, r#"{"user":"no text"}"#).await;
    assert_eq!(status, 400, "{reason}");
    assert!(reason.contains("text"), "400 without a reason: {reason:?}");
    let (status, reason) = post(&cluster, meeting, r#"{"text":"x","user":""}"#).await;
    assert_eq!(status, 400, "{reason}");
    assert!(reason.contains("user"), "{reason:?}");
    let big = json!({ "text": "x".repeat(2000) }).to_string();
    let (status, reason) = post(&cluster, meeting, big).await;
    assert_eq!(status, 413, "{reason}");
    assert!(reason.contains("1024"), "413 without the limit: {reason:?}");
    // A body just under the limit is fine.
    let fits = json!({ "text": "y".repeat(900) }).to_string();
    let (status, answer) = post(&cluster, meeting, fits).await;
    assert_eq!(status, 202, "{answer}");
    let next = ws_room_event(&mut ws).await;
    assert_eq!(next["seq"], 5, "a refused body must not take a seq: {next}");
    assert_eq!(next["text"].as_str().map(str::len), Some(900));
    assert_eq!(sse_room_event(&mut sse).await["seq"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_drops_resumes_with_since_without_gap_or_duplicate() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let meeting = "resume-ws";
    let url = |q: &str| {
        cluster
            .balancer
            .ws_url(&format!("meeting_id={meeting}&{q}"))
    };
    let mut alice = WsClient::connect(&url("user=alice")).await.expect("alice");
    ws_room_event(&mut alice).await;
    let mut bob = WsClient::connect(&url("user=bob")).await.expect("bob");
    let bob_join = ws_room_event(&mut bob).await;
    assert_eq!(ws_room_event(&mut alice).await, bob_join);
    alice.send_text("before the drop").await.expect("send");
    assert_eq!(ws_room_event(&mut alice).await["text"], "before the drop");
    let last = ws_room_event(&mut bob).await["seq"].as_u64().expect("seq");

    // Bob's connection drops (no close frame); the balancer passes that on.
    drop(bob);
    let leave = ws_room_event(&mut alice).await;
    assert_eq!(
        (leave["type"].as_str(), leave["user"].as_str()),
        (Some("leave"), Some("bob"))
    );
    assert_eq!(leave["seq"], last + 1);

    // 50 messages bob misses.
    for i in 0..50 {
        alice.send_text(&format!("missed {i}")).await.expect("send");
    }
    for _ in 0..50 {
        ws_room_event(&mut alice).await;
    }
    // More messages keep coming while bob reconnects, so the seam between
    // history and live stream is crossed under traffic.
    let live = async {
        for i in 0..20 {
            alice.send_text(&format!("live {i}")).await.expect("send");
            tokio::task::yield_now().await;
        }
        let mut seen = 0;
        while seen < 20 {
            if ws_room_event(&mut alice).await["type"] == "message" {
                seen += 1;
            }
        }
        alice
    };
    let resume = async {
        let mut bob = WsClient::connect(&url(&format!("user=bob&since={last}")))
            .await
            .expect("bob again");
        assert_eq!(bob.welcome["recovered"], true, "{}", bob.welcome);
        assert!(
            bob.welcome["seq"].as_u64() >= Some(last + 51),
            "{}",
            bob.welcome
        );
        let mut got = Vec::new();
        // Until all 70 messages and bob's own new join (which lands
        // somewhere among the live ones) have arrived.
        let (mut messages, mut joined) = (0, false);
        while messages < 70 || !joined {
            let v = ws_room_event(&mut bob).await;
            match v["type"].as_str() {
                Some("message") => messages += 1,
                Some("join") => joined = v["conn_id"] == bob.welcome["conn_id"],
                _ => {}
            }
            got.push(v);
        }
        (bob, got)
    };
    let (_alice, (mut bob, got)) = tokio::join!(live, resume);

    let seqs: Vec<u64> = got.iter().filter_map(seq_of).collect();
    let want: Vec<u64> = (last + 1..last + 1 + got.len() as u64).collect();
    assert_eq!(seqs, want, "a gap or a duplicate at the seam");
    let texts: Vec<&str> = got
        .iter()
        .filter(|v| v["type"] == "message")
        .filter_map(|v| v["text"].as_str())
        .collect();
    let missed: Vec<String> = (0..50).map(|i| format!("missed {i}")).collect();
    assert_eq!(texts[..50], missed, "exactly the 50 missed messages first");
    let live: Vec<String> = (0..20).map(|i| format!("live {i}")).collect();
    assert_eq!(texts[50..], live, "then the live ones");
    // Bob's own old leave and new join are in there too, once each.
    let kinds = |k: &str| got.iter().filter(|v| v["type"] == k).count();
    assert_eq!((kinds("leave"), kinds("join")), (1, 1), "{got:?}");
    assert_eq!(got[0]["type"], "leave", "history first: {}", got[0]);

    // And the connection is live: one more message arrives with the next seq.
    let last_seq = *seqs.last().expect("seqs");
    bob.send_text("back").await.expect("send");
    let back = ws_room_event(&mut bob).await;
    assert_eq!(
        (back["seq"].as_u64(), back["text"].as_str()),
        (Some(last_seq + 1), Some("back"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_resumes_sse_through_the_balancer() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let meeting = "resume-sse";
    let mut ws = WsClient::connect(
        &cluster
            .balancer
            .ws_url(&format!("meeting_id={meeting}&user=wes")),
    )
    .await
    .expect("WebSocket");
    ws_room_event(&mut ws).await;
    let sse_query = format!("meeting_id={meeting}&user=sue");
    let mut sse = SseClient::connect(&sse_url(&cluster, &sse_query), None)
        .await
        .expect("SSE");
    let joined = sse_room_event(&mut sse).await;
    assert_eq!(ws_room_event(&mut ws).await, joined);
    ws.send_text("seen").await.expect("send");
    ws_room_event(&mut ws).await;
    let last = sse_room_event(&mut sse).await["seq"].as_u64().expect("seq");

    drop(sse);
    let leave = ws_room_event(&mut ws).await;
    assert_eq!(
        (leave["type"].as_str(), leave["user"].as_str()),
        (Some("leave"), Some("sue"))
    );
    for i in 0..30 {
        ws.send_text(&format!("missed {i}")).await.expect("send");
    }
    for _ in 0..30 {
        ws_room_event(&mut ws).await;
    }

    // What EventSource does on reconnect: the same URL, plus Last-Event-ID.
    let mut sse = SseClient::connect(&sse_url(&cluster, &sse_query), Some(last))
        .await
        .expect("SSE again");
    assert_eq!(sse.welcome["recovered"], true, "{}", sse.welcome);
    let mut got = Vec::new();
    for _ in 0..32 {
        got.push(sse_room_event(&mut sse).await);
    }
    let seqs: Vec<u64> = got.iter().filter_map(seq_of).collect();
    assert_eq!(seqs, (last + 1..=last + 32).collect::<Vec<_>>());
    assert_eq!(got[0]["type"], "leave");
    let texts: Vec<&str> = got[1..31]
        .iter()
        .filter_map(|v| v["text"].as_str())
        .collect();
    let missed: Vec<String> = (0..30).map(|i| format!("missed {i}")).collect();
    assert_eq!(texts, missed);
    assert_eq!(
        (got[31]["type"].as_str(), got[31]["user"].as_str()),
        (Some("join"), Some("sue"))
    );
    ws.send_text("live").await.expect("send");
    let live = sse_room_event(&mut sse).await;
    assert_eq!(
        (live["seq"].as_u64(), live["text"].as_str()),
        (Some(last + 33), Some("live"))
    );

    // `since=` in the query works for SSE too, and Last-Event-ID wins over it.
    let q = format!("{sse_query}&since={}", last + 30);
    let mut by_query = SseClient::connect(&sse_url(&cluster, &q), None)
        .await
        .expect("SSE since");
    assert_eq!(by_query.welcome["recovered"], true);
    assert_eq!(sse_room_event(&mut by_query).await["seq"], last + 31);
    let mut both = SseClient::connect(&sse_url(&cluster, &q), Some(last + 32))
        .await
        .expect("SSE both");
    assert_eq!(sse_room_event(&mut both).await["seq"], last + 33);
    // A Last-Event-ID that is not a seq is refused with a reason.
    let resp = reqwest::Client::new()
        .get(sse_url(&cluster, &sse_query))
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .expect("GET /sse");
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp
        .text()
        .await
        .unwrap_or_default()
        .contains("Last-Event-ID"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovered_is_false_when_history_no_longer_reaches_back() {
    let cluster = Cluster::start(ClusterOptions {
        node_toml: "history_events = 10\n".into(),
        ..Default::default()
    })
    .await;
    let meeting = "short-memory";
    let url = |q: &str| {
        cluster
            .balancer
            .ws_url(&format!("meeting_id={meeting}&{q}"))
    };
    let mut ws = WsClient::connect(&url("user=talker"))
        .await
        .expect("WebSocket");
    ws_room_event(&mut ws).await;
    for i in 0..30 {
        ws.send_text(&format!("m{i}")).await.expect("send");
    }
    for _ in 0..30 {
        ws_room_event(&mut ws).await;
    }
    // Seqs 1..=31 happened; only 22..=31 are kept, so 21 is the oldest
    // seamless resume point.
    let edge = WsClient::connect(&url("since=21")).await.expect("since=21");
    assert_eq!(edge.welcome["recovered"], true, "{}", edge.welcome);
    // Its join (seq 32) pushed seq 22 out: 21 is now too old.
    let gap = WsClient::connect(&url("since=21"))
        .await
        .expect("since=21 again");
    assert_eq!(gap.welcome["recovered"], false, "{}", gap.welcome);
    assert_eq!(gap.welcome["seq"], 32);
    // After that join (seq 33), history holds 24..=33: a client far behind
    // gets what is left, then the live stream.
    let mut old = WsClient::connect(&url("since=5")).await.expect("since=5");
    assert_eq!(old.welcome["recovered"], false, "{}", old.welcome);
    assert_eq!(old.welcome["seq"], 33);
    let mut replay = Vec::new();
    for _ in 0..10 {
        replay.push(ws_room_event(&mut old).await["seq"].as_u64().unwrap_or(0));
    }
    assert_eq!(
        replay,
        (24..=33).collect::<Vec<_>>(),
        "what history still has"
    );
    let own = ws_room_event(&mut old).await;
    assert_eq!(
        (own["type"].as_str(), own["seq"].as_u64()),
        (Some("join"), Some(34))
    );

    // A seq from the future (say, of a room that was lost) is not recovered.
    let future = WsClient::connect(&url("since=1000"))
        .await
        .expect("since=1000");
    assert_eq!(future.welcome["recovered"], false, "{}", future.welcome);

    // The same over SSE with Last-Event-ID.
    let sse = SseClient::connect(
        &sse_url(&cluster, &format!("meeting_id={meeting}")),
        Some(3),
    )
    .await
    .expect("SSE");
    assert_eq!(sse.welcome["recovered"], false, "{}", sse.welcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_members_count_and_come_and_go() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let meeting = "sse-members";
    let mut ws = WsClient::connect(
        &cluster
            .balancer
            .ws_url(&format!("meeting_id={meeting}&user=wes")),
    )
    .await
    .expect("WebSocket");
    assert_eq!(ws.welcome["members"], 1);
    ws_room_event(&mut ws).await;

    let mut listeners = Vec::new();
    for (i, name) in ["sse-1", "sse-2", "sse-3"].iter().enumerate() {
        let q = format!("meeting_id={meeting}&user={name}");
        let mut sse = SseClient::connect(&sse_url(&cluster, &q), None)
            .await
            .expect("SSE");
        assert_eq!(sse.welcome["members"], i + 2, "{}", sse.welcome);
        let own = sse_room_event(&mut sse).await;
        assert_eq!(
            (own["type"].as_str(), own["user"].as_str()),
            (Some("join"), Some(*name))
        );
        assert_eq!(own["conn_id"], sse.welcome["conn_id"]);
        let seen = ws_room_event(&mut ws).await;
        assert_eq!(seen, own);
        assert_eq!(seen["members"], i + 2);
        listeners.push(sse);
    }
    // Closing an SSE stream (through the balancer) is a leave.
    let started = Instant::now();
    drop(listeners.remove(1));
    let leave = ws_room_event(&mut ws).await;
    assert_eq!(leave["type"], "leave");
    assert_eq!(leave["user"], "sse-2");
    assert_eq!(leave["members"], 3);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the leave took {:?}",
        started.elapsed()
    );
    for sse in &mut listeners {
        loop {
            let e = sse_room_event(sse).await;
            if e["type"] == "leave" {
                assert_eq!(e, leave);
                break;
            }
        }
    }
    // A new WebSocket member counts the SSE members too.
    let late = WsClient::connect(&cluster.balancer.ws_url(&format!("meeting_id={meeting}")))
        .await
        .expect("late");
    assert_eq!(late.welcome["members"], 4, "{}", late.welcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_does_not_buffer_the_sse_stream() {
    let cluster = Cluster::start(ClusterOptions {
        node_toml: "sse_heartbeat_ms = 300\n".into(),
        ..Default::default()
    })
    .await;
    let meeting = "unbuffered";
    // Raw bytes, so that heartbeat comments and `retry:` are visible.
    let resp = reqwest::Client::new()
        .get(sse_url(&cluster, &format!("meeting_id={meeting}&user=raw")))
        .send()
        .await
        .expect("GET /sse");
    assert_eq!(resp.status().as_u16(), 200);
    let headers = resp.headers().clone();
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    assert_eq!(
        headers.get("cache-control").and_then(|v| v.to_str().ok()),
        Some("no-cache")
    );
    let mut raw = RawStream {
        body: Box::pin(
            resp.bytes_stream()
                .map(|r| r.map(|b| String::from_utf8_lossy(&b).into_owned())),
        ),
        text: String::new(),
    };
    // Everything the node wrote at once arrives before anything else happens.
    raw.read_until("retry: 1000\n", Duration::from_secs(2))
        .await;
    raw.read_until("event: welcome\n", Duration::from_secs(2))
        .await;
    raw.read_until("id: 1\nevent: join\ndata: {", Duration::from_secs(2))
        .await;

    // An event published now arrives promptly, while the stream stays open.
    for i in 0..3 {
        let started = Instant::now();
        let seq = publish(&cluster, meeting, "poster", &format!("prompt {i}")).await;
        let framed = format!("id: {seq}\nevent: message\ndata: ");
        raw.read_until(&framed, Duration::from_secs(2)).await;
        raw.read_until(&format!("\"text\":\"prompt {i}\""), Duration::from_secs(2))
            .await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "message {i} took {took:?}");
    }
    // Heartbeat comments flow through the balancer as well, one after another.
    for _ in 0..2 {
        raw.text.clear();
        raw.read_until(": heartbeat\n\n", Duration::from_secs(3))
            .await;
    }
}

type Body = std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<String>> + Send>>;

/// An SSE response read as raw text.
struct RawStream {
    body: Body,
    text: String,
}

impl RawStream {
    async fn read_until(&mut self, needle: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while !self.text.contains(needle) {
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .unwrap_or_else(|_| panic!("{needle:?} not within {within:?}; got {:?}", self.text))
                .expect("stream ended")
                .expect("stream error");
            self.text.push_str(&chunk);
        }
    }
}
