//! End-to-end tests of how a chat node keeps connections alive and drops
//! the ones that cannot keep up: pings, ping timeouts, slow consumers, and
//! a wall clock that steps.

use roompin_shared::protocol::close;
use roompin_tests::process::{bin, loopback, target_dir};
use roompin_tests::ws::Ended;
use roompin_tests::PATIENCE;
use roompin_tests::{eventually, free_port, get, metric, wait_healthy, NodeProc, Proc, WsClient};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Open connections, over every transport.
async fn connections(node: &NodeProc) -> Option<f64> {
    let (_, text) = get(&node.url("/metrics")).await.ok()?;
    roompin_tests::scrape::sum(&text, "roompin_node_connections")
}

async fn sample(node: &NodeProc, series: &str) -> Option<f64> {
    let (_, text) = get(&node.url("/metrics")).await.ok()?;
    metric(&text, series)
}

/// A client that sends nothing but answers the node's pings stays connected
/// past many ping intervals, and still receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_keep_an_idle_client_connected() {
    // 500 ms: the node drops a client after two silent intervals, and a
    // loaded CI machine can delay a pong by a few hundred ms.
    let node = NodeProc::with_toml("ping", "ping_interval_ms = 500\n").await;
    let mut idle = WsClient::join(&node.ws_base(), "quiet", "idle").await;
    idle.expect_next("join").await;
    let mut talker = WsClient::join(&node.ws_base(), "quiet", "talker").await;
    idle.expect_next("join").await;
    talker.expect_next("join").await;

    // Both read (and so answer pings) for 5 intervals, sending nothing; a
    // client that did not answer is dropped after 2 intervals.
    let idle_for = Duration::from_millis(2500);
    let (a, b) = tokio::join!(idle.silent_for(idle_for), talker.silent_for(idle_for));
    assert!(a && b, "a frame arrived while both were idle");
    assert!(idle.pings >= 2, "only {} pings in {idle_for:?}", idle.pings);

    talker.send_text("still there?").await.expect("send");
    for c in [&mut idle, &mut talker] {
        let m = c.expect_next("message").await;
        assert_eq!(m["text"], "still there?");
    }
    assert_eq!(connections(&node).await, Some(2.0));
}

/// A client that never answers pings is closed with 4003, and the room sees
/// it leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_pongs_is_closed_with_4003() {
    let node = NodeProc::with_toml("pong", "ping_interval_ms = 200\n").await;
    let mut mute = WsClient::join(&node.ws_base(), "deaf", "mute").await;
    let mute_id = mute.conn_id().to_owned();
    let mut peer = WsClient::join(&node.ws_base(), "deaf", "peer").await;
    peer.expect_next("join").await;

    // `mute` reads nothing from here on, so tungstenite never pongs for it.
    // It is dropped after 2-3 intervals, and leaves the room right then.
    let leave = tokio::time::timeout(Duration::from_secs(3), peer.expect_next("leave"))
        .await
        .expect("no leave within 3 s of a 200 ms ping interval");
    assert_eq!(
        (&leave["conn_id"], &leave["members"]),
        (&json!(mute_id), &json!(1))
    );
    let (ended, frames) = mute.until_end(PATIENCE).await.expect("close");
    assert_eq!(
        ended,
        Ended::Closed(close::PING_TIMEOUT, close::PING_TIMEOUT_REASON.into())
    );
    assert!(mute.pings >= 1, "closed without a ping first");
    // Its own join and peer's, then nothing.
    let kinds: Vec<_> = frames.iter().map(|f| f["type"].clone()).collect();
    assert_eq!(kinds, [json!("join"), json!("join")], "{frames:?}");
    // The peer, which answers pings, is still served.
    peer.send_text("alone").await.expect("send");
    assert_eq!(peer.expect_next("message").await["text"], "alone");
}

/// With `send_queue = 4`, a member that stops reading while others publish
/// big messages overflows its queue and is dropped with 4002; the others see
/// its `leave`, are not disturbed, and the dropped client gets everything it
/// missed when it resumes with `since`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_dropped_with_4002() {
    let node = NodeProc::with_toml("slow", "send_queue = 4\n").await;
    let mut publisher = WsClient::join(&node.ws_base(), "flood", "pub").await;
    let mut observer = WsClient::join(&node.ws_base(), "flood", "obs").await;
    let mut slow = WsClient::join(&node.ws_base(), "flood", "slow").await;
    let slow_id = slow.conn_id().to_owned();
    for c in [&mut publisher, &mut observer] {
        while c.last_seq < 3 {
            c.expect_next("join").await;
        }
    }
    let slow_before = sample(&node, "roompin_node_slow_consumers_total").await;

    // `slow` reads nothing now. Publish ~60 KB messages in lock step with
    // the two readers (whose queues of 4 never fill) until `slow` is dropped,
    // which it is once the TCP buffers towards it are full.
    let text = "x".repeat(60_000);
    let mut leave = None;
    let mut published = 0;
    while leave.is_none() {
        assert!(published < 2000, "slow consumer never dropped");
        publisher.send_text(&text).await.expect("publish");
        published += 1;
        for c in [&mut publisher, &mut observer] {
            let v = c.recv_next().await.expect("in-order stream");
            let v = if v["type"] == "leave" {
                assert_eq!((&v["conn_id"], &v["members"]), (&json!(slow_id), &json!(2)));
                leave = Some(v["seq"].clone());
                c.recv_next().await.expect("the message after the leave")
            } else {
                v
            };
            assert_eq!(v["type"], "message", "{v}");
            assert_eq!(v["text"].as_str().map(str::len), Some(60_000));
        }
    }
    assert_eq!(
        sample(&node, "roompin_node_slow_consumers_total").await,
        slow_before.map(|n| n + 1.0)
    );

    // `slow` reads again: a gapless prefix of the room's stream, then 4002.
    let (ended, frames) = slow.until_end(PATIENCE).await.expect("close");
    assert_eq!(
        ended,
        Ended::Closed(close::SLOW_CONSUMER, close::SLOW_CONSUMER_REASON.into())
    );
    let seqs: Vec<_> = frames.iter().filter_map(|f| f["seq"].as_u64()).collect();
    let first = slow.welcome["seq"].as_u64().unwrap_or(0) + 1;
    assert_eq!(seqs, (first..first + seqs.len() as u64).collect::<Vec<_>>());
    let last_seen = slow.last_seq;
    assert!(
        leave.as_ref().and_then(Value::as_u64) > Some(last_seen),
        "slow saw its own leave"
    );
    drop(slow);

    // Resuming with `since` fills the gap: its own leave, the rest, its join.
    let url = node.ws_url(&format!("meeting_id=flood&user=slow&since={last_seen}"));
    let mut back = WsClient::connect(&url).await.expect("resume");
    assert_eq!(back.welcome["recovered"], true, "{}", back.welcome);
    back.last_seq = last_seen;
    let end = back.welcome["seq"].as_u64().unwrap_or(0);
    while back.last_seq < end {
        back.recv_next().await.expect("replay");
    }
    let join = back.recv_next().await.expect("own join");
    assert_eq!(
        (&join["type"], &join["conn_id"]),
        (&json!("join"), &json!(back.conn_id()))
    );

    // The dropped connection is gone from the node: 2 + the resumed one.
    eventually(PATIENCE, "the dropped connection to be closed", || async {
        (connections(&node).await == Some(3.0)).then_some(())
    })
    .await;
}

/// A slow consumer that never reads again does not hold its connection (and
/// its session's memory) forever: the node closes it after the close grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_that_never_reads_again_is_disconnected() {
    let node = NodeProc::with_toml("stuck", "send_queue = 4\n").await;
    let mut publisher = WsClient::join(&node.ws_base(), "stuck", "pub").await;
    let slow = WsClient::join(&node.ws_base(), "stuck", "slow").await;
    while publisher.last_seq < 2 {
        publisher.expect_next("join").await;
    }
    let text = "x".repeat(60_000);
    for published in 0.. {
        assert!(published < 2000, "slow consumer never dropped");
        publisher.send_text(&text).await.expect("publish");
        let v = publisher.recv_next().await.expect("in-order stream");
        if v["type"] == "leave" {
            break;
        }
    }
    eventually(
        Duration::from_secs(15),
        "the node to close the stuck connection",
        || async { (connections(&node).await == Some(1.0)).then_some(()) },
    )
    .await;
    drop(slow);
}

/// The same for an SSE reader that never reads: its stream is never polled
/// again once its socket is full, so only the kernel can end it
/// (TCP_USER_TIMEOUT, here 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_reader_that_never_reads_is_disconnected() {
    use tokio::io::AsyncWriteExt;
    let node =
        NodeProc::with_toml("stuck-sse", "send_queue = 4\ntcp_user_timeout_ms = 1000\n").await;
    let mut publisher = WsClient::join(&node.ws_base(), "stuck-sse", "pub").await;
    publisher.expect_next("join").await;
    // A raw SSE request whose response is never read.
    let mut raw = tokio::net::TcpStream::connect(node.addr)
        .await
        .expect("connect");
    let request = format!(
        "GET /sse?meeting_id=stuck-sse HTTP/1.1\r\nHost: {}\r\n\r\n",
        node.addr
    );
    raw.write_all(request.as_bytes()).await.expect("request");
    publisher.expect_next("join").await;
    let text = "x".repeat(60_000);
    for published in 0.. {
        assert!(published < 2000, "the SSE reader was never dropped");
        publisher.send_text(&text).await.expect("publish");
        if next_any(&mut publisher).await["type"] == "leave" {
            break;
        }
    }
    eventually(
        Duration::from_secs(15),
        "the node to close the stuck SSE stream",
        || async { (connections(&node).await == Some(1.0)).then_some(()) },
    )
    .await;
    drop(raw);
}

async fn next_any(c: &mut WsClient) -> Value {
    c.recv_next().await.expect("in-order stream")
}

/// libfaketime, which scripts/prereqs installs (Debian's `libfaketime`).
fn libfaketime() -> PathBuf {
    let found = std::env::var_os("ROOMPIN_LIBFAKETIME")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            ["x86_64-linux-gnu", "aarch64-linux-gnu"]
                .iter()
                .map(|arch| PathBuf::from(format!("/usr/lib/{arch}/faketime/libfaketime.so.1"))),
        )
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!("libfaketime is missing: run `scripts/prereqs test` (or set ROOMPIN_LIBFAKETIME)")
    })
}

/// Reads (and so answers pings) for `within`; panics if the connection
/// ends meanwhile.
async fn keep_reading(c: &mut WsClient, within: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + within;
    let mut frames = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.recv_within(left).await {
            Ok(v) => frames.push(v),
            Err(e) if e.to_string().starts_with("no frame within") => return frames,
            Err(e) => panic!("{} ended while idle: {e}", c.conn_id()),
        }
    }
}

/// Sets the offset of the wall clock the node sees, e.g. `+3600` (seconds).
fn step_clock(file: &Path, offset: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{offset}\n")).expect("write clock file");
    std::fs::rename(&tmp, file).expect("replace clock file");
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A node whose wall clock (CLOCK_REALTIME, and so `SystemTime`) the test
/// steps through libfaketime; its monotonic clock is left alone, as NTP
/// leaves it.
async fn node_with_steppable_clock(id: &str, toml: &str) -> (Proc, std::net::SocketAddr, PathBuf) {
    let addr = loopback(free_port());
    let dir = target_dir().join("test-logs");
    let _ = std::fs::create_dir_all(&dir);
    let tag = format!("{id}-{}-{}", addr.port(), std::process::id());
    let clock = dir.join(format!("clock-{tag}"));
    step_clock(&clock, "+0");
    let config = dir.join(format!("{tag}.toml"));
    std::fs::write(&config, toml).expect("write node config");
    let mut cmd = Command::new(bin("roompin-node"));
    cmd.arg("--id")
        .arg(id)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--config")
        .arg(&config)
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME_TIMESTAMP_FILE", &clock)
        .env("FAKETIME_NO_CACHE", "1")
        .env("DONT_FAKE_MONOTONIC", "1");
    let proc = Proc::spawn(&format!("node-{tag}"), cmd);
    wait_healthy(addr, PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", proc.logs()));
    (proc, addr, clock)
}

/// NTP steps the wall clock an hour forward: idle clients that answer pings
/// stay connected (they used to be closed with 4003 at the next tick, all at
/// once). Then it steps two hours back: a client that stopped answering is
/// still closed with 4003 in time (it used to look fresh for two hours).
/// The `ts` of messages shows that the node did see each step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_step_neither_drops_idle_clients_nor_hides_dead_ones() {
    let (node, addr, clock) = node_with_steppable_clock("clock", "ping_interval_ms = 500\n").await;
    let base = format!("ws://{addr}/websocket");
    let mut idle = WsClient::join(&base, "ntp", "idle").await;
    idle.expect_next("join").await;
    let mut talker = WsClient::join(&base, "ntp", "talker").await;
    idle.expect_next("join").await;
    talker.expect_next("join").await;

    step_clock(&clock, "+3600");
    // Both read (and so answer pings) but send nothing for 5 intervals.
    let quiet = Duration::from_millis(2500);
    let (a, b) = tokio::join!(
        keep_reading(&mut idle, quiet),
        keep_reading(&mut talker, quiet)
    );
    assert_eq!((a, b), (vec![], vec![]), "frames after the step forward");
    assert!(idle.pings >= 2, "only {} pings in {quiet:?}", idle.pings);
    talker.send_text("after the step").await.expect("send");
    for c in [&mut idle, &mut talker] {
        let m = c.expect_next("message").await;
        let ts = m["ts"].as_u64().unwrap_or(0);
        assert!(
            ts > unix_ms() + 3_000_000,
            "the node's clock was not stepped: ts {ts}\n{}",
            node.logs()
        );
    }

    // `mute` reads nothing from here on, so it never answers a ping. The
    // other two keep reading (and answering pings) meanwhile.
    let mut mute = WsClient::join(&base, "ntp", "mute").await;
    let mute_id = mute.conn_id().to_owned();
    step_clock(&clock, "-3600");
    let watch = Duration::from_secs(3);
    let seen = tokio::join!(
        keep_reading(&mut idle, watch),
        keep_reading(&mut talker, watch)
    );
    for frames in [seen.0, seen.1] {
        assert!(
            frames
                .iter()
                .any(|f| f["type"] == "leave" && f["conn_id"] == json!(mute_id)),
            "the mute client was not dropped within {watch:?}: {frames:?}"
        );
    }
    let (ended, _) = mute.until_end(PATIENCE).await.expect("close");
    assert_eq!(
        ended,
        Ended::Closed(close::PING_TIMEOUT, close::PING_TIMEOUT_REASON.into())
    );
    // The others are still served, and the clock is an hour behind now.
    talker.send_text("after the step back").await.expect("send");
    let m = talker.recv_type("message").await.expect("message");
    let ts = m["ts"].as_u64().unwrap_or(u64::MAX);
    assert!(
        ts + 3_000_000 < unix_ms(),
        "clock not stepped back: ts {ts}"
    );
    assert_eq!(
        idle.recv_type("message").await.expect("message")["text"],
        "after the step back"
    );
}
