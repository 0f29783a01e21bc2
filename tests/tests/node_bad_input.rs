//! Hostile input thrown at one node, directly (issue 11): malformed
//! requests and frames, each with the status or close code it must get,
//! then connection floods (2,000 opened and dropped, 20,000 half-open heads
//! held from several processes over 127.0.0.x). Afterwards the node still
//! serves, and its raw RSS is back within 10% of where it started (the
//! fresh node's, once it served one client): the heap trimmer gives the
//! rest back (docs/SECURITY.md).
//!
//! The half-open heads come from helper processes, this test binary run
//! again for `half_open_holder` (ignored as a test of its own), because one
//! process may hold at most 20,000 descriptors.

use futures_util::{SinkExt, StreamExt};
use roompin_shared::protocol::{close, error_code};
use roompin_tests::{eventually, get, metric, NodeOptions, NodeProc, WsClient, PATIENCE};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "bad-input-control-token";
/// The corpus node's deadlines, short enough to wait for.
const HEAD_MS: u64 = 2000;
const BODY_MS: u64 = 2000;

/// The node's resident memory (`VmRSS`), in KiB.
fn rss_kib(node: &NodeProc) -> u64 {
    status_kib(node, "VmRSS:")
}

fn status_kib(node: &NodeProc, field: &str) -> u64 {
    let pid = node.proc.pid().map(|p| p.as_raw()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One of the node's heap counts (`roompin_node_heap_bytes{kind}`), in KiB.
async fn heap_kib(node: &NodeProc, kind: &str) -> u64 {
    let text = get(&node.url("/metrics"))
        .await
        .map(|r| r.1)
        .unwrap_or_default();
    let series = format!("roompin_node_heap_bytes{{kind=\"{kind}\"}}");
    metric(&text, &series).unwrap_or(0.0) as u64 / 1024
}

/// All of the heap's counts, for the log.
async fn heap(node: &NodeProc) -> String {
    let mut out = Vec::new();
    for kind in ["allocated", "free", "resident"] {
        out.push(format!("{kind} {} KiB", heap_kib(node, kind).await));
    }
    out.join(", ")
}

/// Waits until the node's RSS (raw `VmRSS`, everything counted) is back
/// within 10% of `start`, its RSS when it was fresh and serving.
async fn rss_comes_back(node: &NodeProc, start: u64, peak: u64) {
    let limit = start + start / 10;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let at = loop {
        let now = rss_kib(node);
        if now <= limit {
            break now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "RSS {now} KiB is not back within 10% of {start} KiB after 30 s, peak {peak} KiB; heap: {}",
            heap(node).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "RSS: {start} KiB at start, {peak} KiB at the peak, {at} KiB after ({}% of the start; heap: {})",
        at * 100 / start.max(1),
        heap(node).await
    );
}

/// Sends `request` as raw bytes and reads the answer's status and body:
/// `None` if the node closed without one.
async fn raw(addr: SocketAddr, request: &[u8]) -> Option<(u16, String)> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    // The node may answer (and close) before it read everything.
    let _ = tcp.write_all(request).await;
    read_response(&mut tcp, PATIENCE).await
}

async fn read_response(tcp: &mut TcpStream, within: Duration) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status = head.split(' ').nth(1)?.parse().ok()?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                return Some((status, body));
            }
        }
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade(target: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: n\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n"
    )
    .into_bytes()
}

fn upgrade_v13(target: &str) -> Vec<u8> {
    upgrade(
        target,
        &format!("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n"),
    )
}

fn post(target: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {target} HTTP/1.1\r\nHost: n\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// One malformed request and the status it must get.
struct Case {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    /// Words the plain-text reason must contain.
    reason: &'static str,
}

fn corpus() -> Vec<Case> {
    let long = format!("/websocket?meeting_id={}", "a".repeat(10 * 1024));
    let flood: String = (0..200).map(|i| format!("X-Flood-{i}: {i}\r\n")).collect();
    let big_header = format!("X-Big: {}\r\n", "b".repeat(64 * 1024));
    let c = |name, request, status, reason| Case {
        name,
        request,
        status,
        reason,
    };
    vec![
        c("meeting_id missing", upgrade_v13("/websocket?user=ann"), 400, "missing"),
        c("meeting_id empty", upgrade_v13("/websocket?meeting_id="), 400, "empty"),
        c("meeting_id 10 KB", upgrade_v13(&long), 400, "bytes long"),
        c("meeting_id percent garbage", upgrade_v13("/websocket?meeting_id=%ZZ%00%FF%"), 400, "character"),
        c("meeting_id repeated", upgrade_v13("/websocket?meeting_id=a&meeting_id=b"), 400, "more than once"),
        c("sse without meeting_id", b"GET /sse HTTP/1.1\r\nHost: n\r\n\r\n".to_vec(), 400, "missing"),
        c("messages without meeting_id", post("/messages", "", b"{\"text\":\"x\"}"), 400, "missing"),
        c("bad since", upgrade_v13("/websocket?meeting_id=m&since=-1"), 400, "since"),
        c("bad user", upgrade_v13("/websocket?meeting_id=m&user=%07"), 400, "control"),
        c("header flood", format!("GET /healthz HTTP/1.1\r\nHost: n\r\n{flood}\r\n").into_bytes(), 431, ""),
        c("64 KB header", format!("GET /healthz HTTP/1.1\r\nHost: n\r\n{big_header}\r\n").into_bytes(), 431, ""),
        c("no Host", b"GET /healthz HTTP/1.1\r\n\r\n".to_vec(), 400, "Host"),
        c("two Hosts", b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), 400, "Host"),
        c("bad Sec-WebSocket-Key", upgrade("/websocket?meeting_id=m", "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n"), 400, "Sec-WebSocket-Key"),
        c("two Sec-WebSocket-Keys", upgrade("/websocket?meeting_id=m", &format!("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Key: {KEY}\r\n")), 400, "Sec-WebSocket-Key"),
        c("Sec-WebSocket-Version 8", upgrade("/websocket?meeting_id=m", &format!("Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: {KEY}\r\n")), 426, "version 13"),
        c("no Sec-WebSocket-Key", upgrade("/websocket?meeting_id=m", "Sec-WebSocket-Version: 13\r\n"), 426, "Sec-WebSocket-Key"),
        c("no Upgrade", b"GET /websocket?meeting_id=m HTTP/1.1\r\nHost: n\r\n\r\n".to_vec(), 426, "WebSocket"),
        c("upgrade with a body", { let mut r = upgrade("/websocket?meeting_id=m", &format!("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\nContent-Length: 5\r\n")); r.extend_from_slice(b"hello"); r }, 400, "must not carry Content-Length"),
        c("upgrade with a chunked body", { let mut r = upgrade("/websocket?meeting_id=m", &format!("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\nTransfer-Encoding: chunked\r\n")); r.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n"); r }, 400, "must not carry Content-Length"),
        c("publish: not JSON", post("/messages?meeting_id=m", "", b"{nope"), 400, "JSON"),
        c("publish: text not a string", post("/messages?meeting_id=m", "", b"{\"text\":5}"), 400, "JSON"),
        c("publish: bad user in body", post("/messages?meeting_id=m", "", b"{\"text\":\"x\",\"user\":\"\"}"), 400, "user"),
        c("publish: oversized body", post("/messages?meeting_id=m", "", &vec![b'a'; 4096]), 413, "limit"),
        c("publish: bad chunk size", b"POST /messages?meeting_id=m HTTP/1.1\r\nHost: n\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(), 400, "malformed request body"),
        c("control: wrong token", post("/control/view", "Authorization: Bearer nope\r\n", b"{}"), 401, "bearer"),
        c("control: no token, bad body", post("/control/handoff", "", b"{not json"), 401, "bearer"),
        c("unknown path", b"GET /../../etc/passwd HTTP/1.1\r\nHost: n\r\n\r\n".to_vec(), 404, "no route"),
        c("wrong method", b"PUT /websocket?meeting_id=m HTTP/1.1\r\nHost: n\r\nContent-Length: 0\r\n\r\n".to_vec(), 405, ""),
    ]
}

/// A WebSocket frame, sent on a fresh connection of its own in `meeting`,
/// and what the node must answer.
enum FrameWant {
    ErrorFrame(&'static str),
    Close(u16),
}

async fn frame_case(node: &NodeProc, meeting: &str, frame: Message, want: FrameWant) {
    let url = node.ws_url(&format!("meeting_id={meeting}"));
    let (ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    let (mut sink, mut stream) = ws.split();
    // Sent on its own task: a 16 MB frame blocks its sender while the node
    // has already stopped reading and sent its close.
    let sending = tokio::spawn(async move {
        let _ = sink.send(frame).await;
        sink
    });
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let got = loop {
        let msg = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("an answer in time");
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("JSON");
                if v["type"] == "error" {
                    break FrameWant::ErrorFrame(match v["code"].as_str() {
                        Some(c) if c == error_code::BAD_JSON => error_code::BAD_JSON,
                        Some(c) if c == error_code::UNKNOWN_TYPE => error_code::UNKNOWN_TYPE,
                        Some(c) if c == error_code::MISSING_TYPE => error_code::MISSING_TYPE,
                        Some(c) if c == error_code::MISSING_TEXT => error_code::MISSING_TEXT,
                        Some(c) if c == error_code::BINARY_UNSUPPORTED => {
                            error_code::BINARY_UNSUPPORTED
                        }
                        _ => panic!("unexpected error frame {v}"),
                    });
                }
            }
            Some(Ok(Message::Close(Some(f)))) => break FrameWant::Close(f.code.into()),
            Some(Ok(_)) => {}
            other => panic!("{meeting}: connection ended without an answer: {other:?}"),
        }
    };
    match (want, got) {
        (FrameWant::ErrorFrame(w), FrameWant::ErrorFrame(g)) => {
            assert_eq!(g, w, "{meeting}");
            // The connection stays open: a good frame still goes through.
            let mut sink = sending.await.expect("sender");
            sink.send(Message::text(r#"{"type":"message","text":"still here"}"#))
                .await
                .expect("send after an error");
            loop {
                let m = tokio::time::timeout_at(deadline, stream.next())
                    .await
                    .expect("the message in time");
                if let Some(Ok(Message::Text(t))) = m {
                    if t.as_str().contains("still here") {
                        break;
                    }
                }
            }
        }
        (FrameWant::Close(w), FrameWant::Close(g)) => assert_eq!(g, w, "{meeting}"),
        (_, FrameWant::ErrorFrame(g)) => panic!("{meeting}: got error frame {g}"),
        (_, FrameWant::Close(g)) => panic!("{meeting}: got close {g}"),
    }
}

fn text_frame(bytes: Vec<u8>) -> Message {
    Message::Frame(Frame::message(bytes, OpCode::Data(Data::Text), true))
}

#[tokio::test]
async fn malformed_requests_and_frames_get_their_answers() {
    let node = NodeProc::start(
        "bad-input",
        NodeOptions {
            toml: format!(
                "max_message_bytes = 1024\nrequest_head_timeout_ms = {HEAD_MS}\nrequest_body_timeout_ms = {BODY_MS}\nkeep_alive_timeout_ms = 1000\n"
            ),
            control_token: Some(TOKEN.into()),
        },
    )
    .await;
    let addr = node.addr;
    // Where a serving node starts: one client has joined.
    let warm = WsClient::join(&node.ws_base(), "warm", "w").await;
    warm.close().await;
    let start = rss_kib(&node);

    let mut failures = Vec::new();
    let cases = corpus();
    let n_requests = cases.len();
    for case in cases {
        match raw(addr, &case.request).await {
            Some((status, body)) if status == case.status && body.contains(case.reason) => {}
            other => failures.push(format!(
                "{}: want {} {:?}, got {other:?}",
                case.name, case.status, case.reason
            )),
        }
    }

    // An HTTP/0.9 request line: refused, and the connection closed.
    let answer = raw(addr, b"GET /\r\n\r\n").await;
    assert!(
        matches!(answer, None | Some((400, _))),
        "HTTP/0.9: {answer:?}"
    );

    // A slowloris head: a byte every 200 ms is closed at the head deadline.
    let began = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: n\r\n")
        .await
        .expect("write");
    let closed = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if tcp.write_all(b"X").await.is_err() {
            break began.elapsed();
        }
        let mut b = [0u8; 64];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut b)).await {
            break began.elapsed();
        }
        assert!(
            began.elapsed() < Duration::from_millis(HEAD_MS * 3),
            "a slowloris head still open after {:?}",
            began.elapsed()
        );
    };
    assert!(
        closed >= Duration::from_millis(HEAD_MS - 200),
        "closed too early: {closed:?}"
    );

    // An unfinished chunked body: 408 at the body deadline.
    let began = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(
        b"POST /messages?meeting_id=m HTTP/1.1\r\nHost: n\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .expect("write");
    let answer = read_response(&mut tcp, PATIENCE).await;
    assert!(
        matches!(&answer, Some((408, body)) if body.contains("within")),
        "unfinished body: {answer:?}"
    );
    assert!(began.elapsed() >= Duration::from_millis(BODY_MS - 200));

    // An idle keep-alive connection is closed (after 1 s here).
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: n\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(
        read_response(&mut tcp, PATIENCE).await.map(|r| r.0),
        Some(200)
    );
    let mut b = [0u8; 16];
    let eof = tokio::time::timeout(PATIENCE, tcp.read(&mut b)).await;
    assert!(matches!(eof, Ok(Ok(0)) | Ok(Err(_))), "keep-alive: {eof:?}");

    // Frames.
    let frames: Vec<(&str, Message, FrameWant)> = vec![
        (
            "f-utf8",
            text_frame(vec![b'{', 0xff, 0xfe, b'}']),
            FrameWant::Close(close::INVALID_DATA),
        ),
        (
            "f-16mb",
            text_frame(vec![b'a'; 16 << 20]),
            FrameWant::Close(close::TOO_BIG),
        ),
        (
            "f-json",
            Message::text("{not json"),
            FrameWant::ErrorFrame(error_code::BAD_JSON),
        ),
        (
            "f-array",
            Message::text("[1,2,3]"),
            FrameWant::ErrorFrame(error_code::BAD_JSON),
        ),
        (
            "f-type",
            Message::text(r#"{"type":"shout","text":"x"}"#),
            FrameWant::ErrorFrame(error_code::UNKNOWN_TYPE),
        ),
        (
            "f-notype",
            Message::text(r#"{"text":"x"}"#),
            FrameWant::ErrorFrame(error_code::MISSING_TYPE),
        ),
        (
            "f-notext",
            Message::text(r#"{"type":"message"}"#),
            FrameWant::ErrorFrame(error_code::MISSING_TEXT),
        ),
        (
            "f-binary",
            Message::binary(vec![0u8, 1, 2]),
            FrameWant::ErrorFrame(error_code::BINARY_UNSUPPORTED),
        ),
    ];
    let n_frames = frames.len();
    for (meeting, frame, want) in frames {
        frame_case(&node, meeting, frame, want).await;
    }

    // An unauthenticated 200 MB POST to /control/handoff: 401 before the
    // body is read, and no memory growth.
    let before = rss_kib(&node);
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let size: usize = 200 << 20;
    tcp.write_all(
        format!("POST /control/handoff HTTP/1.1\r\nHost: n\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("head");
    let chunk = vec![b'['; 1 << 20];
    let (mut rd, mut wr) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        while sent < size {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, async {
        let mut b = [0u8; 4096];
        while let Ok(n) = rd.read(&mut b).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&b[..n]);
            if find(&answer, b"\r\n\r\n").is_some() {
                break;
            }
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(
        answer.starts_with("HTTP/1.1 401"),
        "200 MB handoff: {answer}"
    );
    drop(rd);
    let sent = writer.await.expect("writer");
    let after = rss_kib(&node);
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} to {after} KiB on an unauthenticated 200 MB POST ({sent} bytes sent)"
    );

    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    let total = n_requests + 4 + n_frames + 1;
    assert!(total >= 40, "{total} cases");

    // Still serving, and the memory came back.
    let mut a = WsClient::join(&node.ws_base(), "after", "a").await;
    let mut b = WsClient::join(&node.ws_base(), "after", "b").await;
    a.expect_next("join").await;
    a.expect_next("join").await;
    b.expect_next("join").await;
    a.send_text("fine").await.expect("send");
    assert_eq!(b.expect_next("message").await["text"], "fine");
    let (_, m) = get(&node.url("/metrics")).await.expect("metrics");
    for (series, at_least) in [
        ("roompin_node_http_timeouts_total{phase=\"head\"}", 1.0),
        ("roompin_node_http_timeouts_total{phase=\"body\"}", 1.0),
        (
            "roompin_node_http_timeouts_total{phase=\"keep_alive\"}",
            1.0,
        ),
        ("roompin_node_closes_total{code=\"1007\"}", 1.0),
        ("roompin_node_closes_total{code=\"1009\"}", 1.0),
    ] {
        let v = metric(&m, series).unwrap_or(0.0);
        assert!(v >= at_least, "{series} = {v}");
    }
    drop((a, b));
    rss_comes_back(&node, start, after).await;
    eprintln!("{total} malformed requests and frames answered as expected");
}

/// Helper process of `floods_meet_the_cap_not_the_descriptor_limit`: opens
/// `HOLDER_COUNT` connections from `HOLDER_SOURCE` to `HOLDER_TARGET`,
/// sends half a request head on each, and holds them `HOLDER_MS`, then
/// reports how many it opened and how many the node closed.
#[tokio::test]
#[ignore = "a helper process of floods_meet_the_cap_not_the_descriptor_limit"]
async fn half_open_holder() {
    roompin_tests::flood::hold_half_open_from_env().await;
}

/// How long a normal client takes to join and get its welcome.
async fn join_time(node: &NodeProc, meeting: &str) -> Duration {
    let began = Instant::now();
    let c = WsClient::join(&node.ws_base(), meeting, "normal").await;
    let took = began.elapsed();
    c.close().await;
    took
}

#[tokio::test]
async fn floods_meet_the_cap_not_the_descriptor_limit() {
    const HOLDERS: u8 = 4;
    const PER_HOLDER: usize = 5000;
    const CAP: usize = 15_000;
    let node = NodeProc::with_toml(
        "flooded",
        &format!("max_sockets = {CAP}\nmax_connections = 1000\nrequest_head_timeout_ms = 120000\n"),
    )
    .await;
    let warm = WsClient::join(&node.ws_base(), "warm", "w").await;
    warm.close().await;
    let start = rss_kib(&node);

    // 2,000 connections opened and dropped without a handshake: half of
    // them without a byte, half with part of a head.
    for i in 0..2000 {
        let mut tcp = TcpStream::connect(node.addr).await.expect("connect");
        if i % 2 == 1 {
            let _ = tcp
                .write_all(b"GET /websocket?meeting_id=x HTTP/1.1\r\nHo")
                .await;
        }
        drop(tcp);
    }
    assert!(join_time(&node, "after-drops").await < Duration::from_secs(1));

    // 20,000 half-open heads from 4 processes, 127.0.0.2 to 127.0.0.5,
    // against a node that holds at most 15,000 sockets.
    let hold_ms = 40_000;
    let flood = roompin_tests::flood::Flood::start(
        "half_open_holder",
        node.addr,
        HOLDERS,
        PER_HOLDER,
        hold_ms,
    )
    .await;
    let opened = flood.opened;
    assert!(opened >= 19_000, "only {opened} half-open heads opened");
    // Right after the flood, with its closes still in flight, the node
    // may answer a new connection 503 as well (that is the cap at work):
    // the scrape is retried until it is served.
    let m = eventually(
        PATIENCE,
        "a /metrics scrape served during the flood",
        || async {
            match get(&node.url("/metrics")).await {
                Ok((200, m)) => Some(m),
                _ => None,
            }
        },
    )
    .await;
    let held = metric(&m, "roompin_node_sockets").unwrap_or(0.0);
    let evicted = metric(&m, "roompin_node_socket_evictions_total").unwrap_or(0.0);
    // Past the cap the node closes the oldest half-open head, or, with
    // too many closes still in flight, answers the new one 503 at once.
    let refused = metric(&m, "roompin_node_limit_refusals_total{limit=\"sockets\"}").unwrap_or(0.0);
    let peak = rss_kib(&node);
    eprintln!(
        "{opened} heads opened: node holds {held} sockets, evicted {evicted}, refused {refused}; heap: {}",
        heap(&node).await
    );
    assert!(
        held <= (CAP + 64) as f64,
        "{held} sockets held over a cap of {CAP}"
    );
    assert!(
        evicted + refused >= (opened - CAP) as f64 * 0.9,
        "{evicted} evicted and {refused} refused of {opened} over a cap of {CAP}"
    );

    // While they are held: normal clients join within 1 s, and /healthz is
    // fine.
    for i in 0..5 {
        let took = join_time(&node, &format!("during-{i}")).await;
        assert!(
            took < Duration::from_secs(1),
            "a join took {took:?} during the flood"
        );
        let (status, _) = get(&node.url("/healthz")).await.expect("healthz");
        assert_eq!(status, 200);
    }

    // The holders report how many the node closed: those it evicted.
    let closed = flood.closed().await;
    assert!(
        closed >= opened - CAP,
        "the node closed {closed} of {opened}"
    );
    let logs = node.proc.logs();
    assert!(
        !logs.contains("cannot accept connections"),
        "the node ran out of descriptors:\n{logs}"
    );
    eventually(PATIENCE, "the sockets are given back", || async {
        let (_, m) = get(&node.url("/metrics")).await.ok()?;
        (metric(&m, "roompin_node_sockets")? <= 2.0).then_some(())
    })
    .await;
    assert!(join_time(&node, "after-flood").await < Duration::from_secs(1));
    rss_comes_back(&node, start, peak).await;
}
