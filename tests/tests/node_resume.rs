//! End-to-end tests of resuming: a client that reconnects with
//! `since=<last seq it saw>` (or an SSE client with `Last-Event-ID`) gets
//! exactly what it missed, then the live stream, and `welcome.recovered`
//! says whether the room's history still reached back that far.

use roompin_tests::{NodeOptions, NodeProc, SseClient, WsClient};
use serde_json::{json, Value};

/// Rooms keep only this many events, so that history runs out quickly.
const HISTORY: u64 = 10;

async fn node(id: &str) -> NodeProc {
    NodeProc::start(
        id,
        NodeOptions {
            toml: format!("history_events = {HISTORY}\n"),
            ..NodeOptions::default()
        },
    )
    .await
}

async fn connect(node: &NodeProc, query: &str) -> WsClient {
    WsClient::connect(&node.ws_url(query))
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"))
}

/// `n` messages from `from`, each read by `from` itself; returns them.
async fn say(from: &mut WsClient, n: usize, tag: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    for i in 0..n {
        from.send_text(&format!("{tag}{i}")).await.expect("send");
        seen.push(from.expect_next("message").await);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_replays_exactly_the_missed_events_then_live_ones() {
    let node = node("resume").await;
    let mut ann = connect(&node, "meeting_id=meet&user=ann").await;
    ann.expect_next("join").await;
    let mut bob = connect(&node, "meeting_id=meet&user=bob").await;
    ann.expect_next("join").await;
    bob.expect_next("join").await;
    say(&mut ann, 2, "before").await;
    for _ in 0..2 {
        bob.expect_next("message").await;
    }
    let last = bob.last_seq;
    assert_eq!(last, 4);
    bob.close().await;

    // What bob misses: his own leave and three messages, as ann saw them.
    let mut missed = vec![ann.expect_next("leave").await];
    missed.extend(say(&mut ann, 3, "missed").await);

    let mut bob = connect(&node, &format!("meeting_id=meet&user=bob&since={last}")).await;
    let w = &bob.welcome;
    assert_eq!(
        (&w["recovered"], &w["seq"], &w["members"]),
        (&json!(true), &json!(last + 4), &json!(2)),
        "{w}"
    );
    bob.last_seq = last;
    let mut replay = Vec::new();
    while bob.last_seq < last + 4 {
        replay.push(bob.recv_next().await.expect("replay"));
    }
    assert_eq!(replay, missed, "the replay is not exactly what bob missed");
    // Then the live stream: his join (seen by ann too), a new message.
    let join = bob.expect_next("join").await;
    assert_eq!(
        (&join["conn_id"], &join["members"]),
        (&json!(bob.conn_id()), &json!(2))
    );
    assert_eq!(ann.expect_next("join").await, join);
    ann.send_text("live").await.expect("send");
    assert_eq!(bob.expect_next("message").await["text"], "live");
    assert_eq!(ann.expect_next("message").await["text"], "live");

    // Resuming from the current seq: recovered, nothing to replay.
    let now = bob.last_seq;
    let mut cy = connect(&node, &format!("meeting_id=meet&user=cy&since={now}")).await;
    assert_eq!(
        (&cy.welcome["recovered"], &cy.welcome["seq"]),
        (&json!(true), &json!(now))
    );
    assert_eq!(cy.expect_next("join").await["seq"], now + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_older_than_the_history_is_not_recovered() {
    let node = node("stale").await;
    let mut ann = connect(&node, "meeting_id=old&user=ann").await;
    ann.expect_next("join").await;
    let since = ann.last_seq;
    let all = say(&mut ann, 2 * HISTORY as usize, "m").await;

    // History keeps the last 10 events; bob asked for everything after 1.
    let mut bob = connect(&node, &format!("meeting_id=old&since={since}")).await;
    let end = ann.last_seq;
    assert_eq!(
        (&bob.welcome["recovered"], &bob.welcome["seq"]),
        (&json!(false), &json!(end)),
        "{}",
        bob.welcome
    );
    // What is left is still sent: the last 10 events, in order.
    bob.last_seq = end - HISTORY;
    let mut replay = Vec::new();
    while bob.last_seq < end {
        replay.push(bob.recv_next().await.expect("replay"));
    }
    assert_eq!(replay, all[all.len() - HISTORY as usize..]);
    bob.expect_next("join").await;

    // The boundary: with bob's join at seq s, the history is s-9..=s, so
    // since = s-10 is recovered (it needs s-9 on)... until carl's own join
    // pushes s-9 out, and the same since is not recovered any more.
    let s = end + 1;
    let carl = connect(&node, &format!("meeting_id=old&since={}", s - HISTORY)).await;
    assert_eq!(carl.welcome["recovered"], true, "{}", carl.welcome);
    let dan = connect(&node, &format!("meeting_id=old&since={}", s - HISTORY)).await;
    assert_eq!(dan.welcome["recovered"], false, "{}", dan.welcome);
    drop((carl, dan));

    // A seq the room never reached (it restarted, say): not recovered, no
    // replay, and the stream goes on from the room's real seq.
    let mut dee = connect(&node, &format!("meeting_id=old&since={}", end + 100)).await;
    assert_eq!(dee.welcome["recovered"], false, "{}", dee.welcome);
    let seq = dee.welcome["seq"].as_u64().unwrap_or(0);
    assert_eq!(dee.expect_next("join").await["seq"], seq + 1);

    // A room that does not exist yet.
    let eve = connect(&node, "meeting_id=brand-new&since=7").await;
    assert_eq!(
        (&eve.welcome["recovered"], &eve.welcome["seq"]),
        (&json!(false), &json!(0))
    );
}

/// SSE resumes the same way, with `Last-Event-ID`; its events carry the room
/// seq as `id:` and the WebSocket JSON as `data:`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_with_last_event_id_like_since() {
    let node = node("sse").await;
    let url = node.url("/sse?meeting_id=tv&user=viewer");
    let mut ws = connect(&node, "meeting_id=tv&user=ann").await;
    ws.expect_next("join").await;
    let mut sse = SseClient::connect(&url, None).await.expect("sse");
    assert_eq!(
        (&sse.welcome["seq"], &sse.welcome["members"]),
        (&json!(1), &json!(2))
    );
    let join = sse.recv().await.expect("own join");
    assert_eq!((join.id, join.event.as_str()), (Some(2), "join"));
    assert_eq!(join.data, ws.expect_next("join").await);
    drop(sse);
    ws.expect_next("leave").await;
    let missed = say(&mut ws, 2, "tv").await;

    let mut sse = SseClient::connect(&url, Some(2)).await.expect("sse resume");
    assert_eq!(sse.welcome["recovered"], true, "{}", sse.welcome);
    for (want_id, want) in (3..).zip([&json!(null), &missed[0], &missed[1]]) {
        let e = sse.recv().await.expect("replay");
        assert_eq!(e.id, Some(want_id), "{e:?}");
        if !want.is_null() {
            assert_eq!(&e.data, want);
        } else {
            assert_eq!(e.event, "leave");
        }
    }
    let e = sse.recv().await.expect("own join");
    assert_eq!((e.id, e.event.as_str()), (Some(6), "join"));

    // POST /messages publishes like a WebSocket message and answers its seq.
    let resp = reqwest::Client::new()
        .post(node.url("/messages?meeting_id=tv&user=poster"))
        .json(&json!({"text": "over http"}))
        .send()
        .await
        .expect("POST /messages");
    assert_eq!(resp.status().as_u16(), 202);
    let accepted: Value = resp.json().await.expect("202 body");
    assert_eq!(accepted["seq"], json!(7));
    assert_eq!(
        accepted["room"], sse.welcome["room"],
        "the 202 names the incarnation"
    );
    let e = sse.recv().await.expect("message");
    assert_eq!(
        (e.id, &e.data["from"], &e.data["text"]),
        (Some(7), &json!("poster"), &json!("over http"))
    );
}

/// A room that restarts (its node died) counts seqs from 1 again, and may
/// pass a client's old `since` before the client comes back. `since_room` names
/// the numbering: a resume from another incarnation is not recovered, and
/// gets the new room's whole history, which it has never seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_another_incarnation_is_not_recovered() {
    let mut n = node("incarnation").await;
    let mut a = connect(&n, "meeting_id=inc&user=a").await;
    a.expect_next("join").await;
    say(&mut a, 2, "old").await;
    let (old_room, old_seq) = (
        a.welcome["room"].as_str().unwrap_or_default().to_owned(),
        a.last_seq,
    );
    assert_eq!(old_seq, 3);
    assert_eq!(
        old_room.len(),
        16,
        "welcome carries the room's incarnation: {}",
        a.welcome
    );

    // The node dies and comes back empty; the room restarts and its new
    // numbering passes the client's old seq.
    n.proc.kill9();
    let n = NodeProc::start_on(&n.id, n.addr, n.options.clone()).await;
    let mut b = connect(&n, "meeting_id=inc&user=b").await;
    b.expect_next("join").await;
    say(&mut b, 6, "new").await;
    let new_room = b.welcome["room"].as_str().unwrap_or_default().to_owned();
    assert_ne!(new_room, old_room, "a restarted room has a new incarnation");

    // With the old incarnation: not recovered, and the whole new history.
    let c = connect(
        &n,
        &format!("meeting_id=inc&user=a&since={old_seq}&since_room={old_room}"),
    )
    .await;
    assert_eq!(c.welcome["recovered"], false, "{}", c.welcome);
    assert_eq!(c.welcome["room"], new_room.as_str());
    let mut c = c;
    let first = c.recv().await.expect("replay");
    assert_eq!(
        (first["seq"].as_u64(), first["type"].as_str()),
        (Some(1), Some("join")),
        "replay starts at the new room's first event: {first}"
    );

    // With the new incarnation and the same seq: exactly what came after it.
    let mut d = connect(
        &n,
        &format!("meeting_id=inc&user=d&since={old_seq}&since_room={new_room}"),
    )
    .await;
    assert_eq!(d.welcome["recovered"], true, "{}", d.welcome);
    let replayed = d.recv().await.expect("replay");
    assert_eq!(replayed["seq"].as_u64(), Some(old_seq + 1));

    // A malformed room is refused before anything else.
    let (status, body) =
        roompin_tests::get(&n.url("/sse?meeting_id=inc&since=1&since_room=no%20way"))
            .await
            .expect("get");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("since_room"), "{body}");
}
