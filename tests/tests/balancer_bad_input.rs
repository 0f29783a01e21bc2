//! Hostile input thrown at the balancer (issue 11, the balancer's half of
//! the bad-input test; `node_bad_input.rs` is the node's): malformed
//! requests, each with the status it must get (from the balancer, or from
//! the node when only the node can judge it, passed on unchanged); then
//! `max_connections` giving 503; then connection floods (2,000 opened and
//! dropped, 20,000 half-open heads held from four processes over
//! 127.0.0.2-5, each process held to 20,000 descriptors). Throughout, normal
//! clients join within 1 s and no node is ever marked unhealthy; afterwards
//! the balancer still serves, with no restart, and its RSS comes back.
//!
//! The half-open heads come from helper processes, this test binary run
//! again for `balancer_half_open_holder` (ignored as a test of its own).

use roompin_tests::edge::{balancer, nodes};
use roompin_tests::raw::KEY;
use roompin_tests::{eventually, get, metric, BalancerProc, WsClient, PATIENCE};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The tests of this file one at a time: the floods must not share the
/// machine with another balancer's corpus.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One process may hold at most 20,000 descriptors (the project's rule);
/// the balancer, the nodes and the holders started from here inherit it.
fn hold_to_20k_descriptors() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let limit = 20_000.min(hard);
        if soft != limit {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, limit, limit);
        }
    }
}

fn rss_kib(b: &BalancerProc) -> u64 {
    let pid = b.proc.pid().map(|p| p.as_raw()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Waits until the balancer's RSS (raw `VmRSS`) is within 10% of `start`,
/// its RSS when it was fresh and serving: the heap trimmer gives an
/// attack's memory back (docs/SECURITY.md).
async fn rss_comes_back(b: &BalancerProc, start: u64, peak: u64) {
    let limit = start + start / 10;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let at = loop {
        let now = rss_kib(b);
        if now <= limit {
            break now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "balancer RSS {now} KiB is not back within 10% of {start} KiB (peak {peak}) after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "balancer RSS: {start} KiB at start, {peak} KiB at the peak, {at} KiB after ({}% of the start)",
        at * 100 / start.max(1)
    );
}

/// Reads one response's status and body; `None` if closed without one.
async fn read_response(tcp: &mut TcpStream, within: Duration) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
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

async fn raw(addr: SocketAddr, request: &[u8]) -> Option<(u16, String)> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    // The balancer may answer (and close) before it read everything.
    let _ = tcp.write_all(request).await;
    read_response(&mut tcp, PATIENCE).await
}

fn upgrade(target: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n"
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
        "POST {target} HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

struct Case {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    /// Words the plain-text reason must contain.
    reason: &'static str,
}

fn corpus() -> Vec<Case> {
    let long = "a".repeat(10 * 1024);
    let flood: String = (0..200).map(|i| format!("X-Flood-{i}: {i}\r\n")).collect();
    let big_header = format!("X-Big: {}\r\n", "b".repeat(64 * 1024));
    let c = |name, request, status, reason| Case {
        name,
        request,
        status,
        reason,
    };
    let mut cases = Vec::new();
    // The meeting, on each member route: refused by the balancer.
    for (route, make) in [
        ("/websocket", upgrade_v13 as fn(&str) -> Vec<u8>),
        ("/sse", |t: &str| {
            format!("GET {t} HTTP/1.1\r\nHost: b\r\n\r\n").into_bytes()
        }),
        ("/messages", |t: &str| post(t, "", b"{\"text\":\"x\"}")),
    ] {
        let q = |query: &str| make(&format!("{route}?{query}"));
        cases.push(c("meeting_id missing", q("user=ann"), 400, "missing"));
        cases.push(c("meeting_id empty", q("meeting_id="), 400, "empty"));
        cases.push(c(
            "meeting_id 10 KB",
            q(&format!("meeting_id={long}")),
            400,
            "bytes long",
        ));
        cases.push(c(
            "meeting_id percent garbage",
            q("meeting_id=%ZZ%00%FF%"),
            400,
            "character",
        ));
        cases.push(c(
            "meeting_id repeated",
            q("meeting_id=a&meeting_id=b"),
            400,
            "more than once",
        ));
    }
    cases.extend([
        // Heads: refused by the balancer.
        c("header flood", format!("GET /websocket?meeting_id=m HTTP/1.1\r\nHost: b\r\n{flood}\r\n").into_bytes(), 431, "header fields"),
        c("64 KB header", format!("GET /websocket?meeting_id=m HTTP/1.1\r\nHost: b\r\n{big_header}\r\n").into_bytes(), 431, "larger than"),
        c("no Host", b"GET /sse?meeting_id=m HTTP/1.1\r\n\r\n".to_vec(), 400, "Host"),
        c("two Hosts", b"GET /sse?meeting_id=m HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), 400, "Host"),
        c("not HTTP", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n".to_vec(), 400, "malformed"),
        c("bad header name", b"GET /sse?meeting_id=m HTTP/1.1\r\nHo st: b\r\n\r\n".to_vec(), 400, "malformed"),
        c("upgrade with a body", { let mut r = upgrade_v13_with("Content-Length: 5\r\n"); r.extend_from_slice(b"hello"); r }, 400, "must not carry"),
        c("upgrade with a chunked body", { let mut r = upgrade_v13_with("Transfer-Encoding: chunked\r\n"); r.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n"); r }, 400, "must not carry"),
        c("bad chunk size", b"POST /messages?meeting_id=m HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(), 400, "malformed request body"),
        c("control path", post("/control/handoff", "Authorization: Bearer x\r\n", b"{}"), 404, "no route"),
        c("admin path", b"GET /metrics HTTP/1.1\r\nHost: b\r\n\r\n".to_vec(), 404, "no route"),
        c("unknown path", b"GET /../../etc/passwd HTTP/1.1\r\nHost: b\r\n\r\n".to_vec(), 404, "no route"),
        // Only the node can judge these: its answer comes back unchanged.
        c("bad Sec-WebSocket-Key", upgrade("/websocket?meeting_id=m", "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n"), 400, "Sec-WebSocket-Key"),
        c("Sec-WebSocket-Version 8", upgrade("/websocket?meeting_id=m", &format!("Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: {KEY}\r\n")), 426, "version 13"),
        c("no Sec-WebSocket-Key", upgrade("/websocket?meeting_id=m", "Sec-WebSocket-Version: 13\r\n"), 426, "Sec-WebSocket-Key"),
        c("publish: not JSON", post("/messages?meeting_id=m", "", b"{nope"), 400, "JSON"),
        c("publish: text not a string", post("/messages?meeting_id=m", "", b"{\"text\":5}"), 400, "JSON"),
        c("Host differs from the target", b"GET http://elsewhere/sse?meeting_id=m HTTP/1.1\r\nHost: b\r\n\r\n".to_vec(), 400, "differs"),
        c("bad since", upgrade_v13("/websocket?meeting_id=m&since=-1"), 400, "since"),
        c("bad user", upgrade_v13("/websocket?meeting_id=m&user=%07"), 400, "control"),
        c("no Upgrade", b"GET /websocket?meeting_id=m HTTP/1.1\r\nHost: b\r\n\r\n".to_vec(), 426, "WebSocket"),
        c("wrong method", b"PUT /websocket?meeting_id=m HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\n\r\n".to_vec(), 405, ""),
        c("publish: bad user in body", post("/messages?meeting_id=m", "", b"{\"text\":\"x\",\"user\":\"\"}"), 400, "user"),
        c("publish: oversized body", post("/messages?meeting_id=m", "", &vec![b'a'; 256 * 1024]), 413, "limit"),
    ]);
    cases
}

fn upgrade_v13_with(extra: &str) -> Vec<u8> {
    upgrade(
        "/websocket?meeting_id=m",
        &format!("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}"),
    )
}

/// Whether any node left the ring: the balancer logs every health change.
fn a_node_went_unhealthy(b: &BalancerProc) -> bool {
    b.proc.logs().contains("to=Unhealthy")
}

#[tokio::test]
async fn malformed_requests_get_their_answers() {
    let _serial = SERIAL.lock().await;
    hold_to_20k_descriptors();
    let ns = nodes(&["node-a", "node-b"], "").await;
    let refs: Vec<_> = ns.iter().collect();
    let b = balancer(&refs, "request_head_timeout_ms = 1500", "").await;
    let warm = WsClient::join(&b.ws_base(), "warm", "w").await;
    warm.close().await;
    let start = rss_kib(&b);

    let cases = corpus();
    let total = cases.len();
    for case in cases {
        let got = raw(b.public, &case.request).await;
        let Some((status, reason)) = got else {
            panic!("{}: closed without an answer", case.name);
        };
        assert_eq!(status, case.status, "{}: {reason}", case.name);
        assert!(
            reason.contains(case.reason),
            "{}: reason {reason:?} lacks {:?}",
            case.name,
            case.reason
        );
    }

    // Slowloris: a byte every 100 ms never makes a head in time: 408 at
    // the 1.5 s deadline, however steadily it comes.
    let slow = TcpStream::connect(b.public).await.expect("connect");
    let (mut reader, mut writer) = slow.into_split();
    let began = Instant::now();
    let trickle = tokio::spawn(async move {
        let head = b"GET /websocket?meeting_id=slow HTTP/1.1\r\nHost: b\r\nX-Slow: ";
        for byte in head.iter().chain(std::iter::repeat(&b'z')) {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(PATIENCE, reader.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&chunk[..n]),
            other => panic!(
                "slowloris: no answer ({other:?}) after {:?}",
                began.elapsed()
            ),
        }
    }
    let took = began.elapsed();
    trickle.abort();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "slowloris: {text}");
    assert!(
        took < Duration::from_secs(3),
        "the slow head was kept {took:?} (deadline 1.5 s)"
    );

    // Still serving, nobody out of the ring, memory back.
    let c = WsClient::join(&b.ws_base(), "after-corpus", "a").await;
    c.close().await;
    assert!(!a_node_went_unhealthy(&b), "{}", b.proc.logs());
    let peak = rss_kib(&b);
    rss_comes_back(&b, start, peak).await;
    eprintln!("{total} malformed requests answered as expected");
}

#[tokio::test]
async fn max_connections_gives_503_with_a_reason() {
    let _serial = SERIAL.lock().await;
    hold_to_20k_descriptors();
    let ns = nodes(&["node-a"], "").await;
    let refs: Vec<_> = ns.iter().collect();
    const MAX: usize = 20;
    let b = balancer(&refs, &format!("max_connections = {MAX}"), "").await;
    let mut held = Vec::new();
    for i in 0..MAX {
        held.push(WsClient::join(&b.ws_base(), "full", &format!("u{i}")).await);
    }
    let (status, reason) = WsClient::refused(&b.ws_url("meeting_id=full&user=late"))
        .await
        .expect("a 21st connection is answered");
    assert_eq!(status, 503, "{reason}");
    assert!(reason.contains("max_connections"), "{reason}");
    let r = reqwest::get(b.url("/sse?meeting_id=full"))
        .await
        .expect("sse");
    assert_eq!(r.status(), 503);
    let m = b.metrics().await;
    assert_eq!(
        metric(&m, "roompin_balancer_client_connections"),
        Some(MAX as f64)
    );
    assert!(metric(&m, "roompin_balancer_connections_refused_total").unwrap_or(0.0) >= 2.0);
    // One leaves: there is room again.
    held.pop().expect("one").close().await;
    let late = eventually(PATIENCE, "a place comes free", || async {
        WsClient::connect(&b.ws_url("meeting_id=full&user=late"))
            .await
            .ok()
    })
    .await;
    late.close().await;
    // The admin listener is not under the cap.
    let (s, _) = get(&b.admin_url("/healthz")).await.expect("healthz");
    assert_eq!(s, 200);
}

/// Helper process of `floods_never_empty_the_ring`: opens `HOLDER_COUNT`
/// connections from `HOLDER_SOURCE` to `HOLDER_TARGET`, sends half a request
/// head on each, holds them `HOLDER_MS`, then reports how many it opened
/// and how many the balancer closed.
#[tokio::test]
#[ignore = "a helper process of floods_never_empty_the_ring"]
async fn balancer_half_open_holder() {
    roompin_tests::flood::hold_half_open_from_env().await;
}

/// How long a normal client takes to join through the balancer.
async fn join_time(b: &BalancerProc, meeting: &str) -> Duration {
    let began = Instant::now();
    let c = WsClient::join(&b.ws_base(), meeting, "normal").await;
    let took = began.elapsed();
    c.close().await;
    took
}

#[tokio::test]
async fn floods_never_empty_the_ring() {
    let _serial = SERIAL.lock().await;
    hold_to_20k_descriptors();
    const HOLDERS: u8 = 4;
    const PER_HOLDER: usize = 5000;
    const MAX: usize = 8000;
    let ns = nodes(&["node-a", "node-b", "node-c"], "").await;
    let refs: Vec<_> = ns.iter().collect();
    let b = balancer(
        &refs,
        &format!("max_connections = {MAX}\nrequest_head_timeout_ms = 120000"),
        "",
    )
    .await;
    let owners = b.owners().await.expect("owners");
    assert_eq!(owners.len(), 3);
    // Where a serving balancer starts: one client has joined.
    let warm = WsClient::join(&b.ws_base(), "warm", "w").await;
    warm.close().await;
    let start = rss_kib(&b);

    // 2,000 connections opened and dropped without a handshake: half of
    // them without a byte, half with part of a head.
    for i in 0..2000 {
        let mut tcp = TcpStream::connect(b.public).await.expect("connect");
        if i % 2 == 1 {
            let _ = tcp
                .write_all(b"GET /websocket?meeting_id=x HTTP/1.1\r\nHo")
                .await;
        }
        drop(tcp);
    }
    let took = join_time(&b, "after-drops").await;
    assert!(
        took < Duration::from_secs(1),
        "a join took {took:?} after the drops"
    );

    // 20,000 half-open heads from 4 processes, 127.0.0.2 to 127.0.0.5,
    // against a balancer that holds at most 8,000 connections.
    let hold_ms = 40_000;
    let flood = roompin_tests::flood::Flood::start(
        "balancer_half_open_holder",
        b.public,
        HOLDERS,
        PER_HOLDER,
        hold_ms,
    )
    .await;
    let opened = flood.opened;
    assert!(opened >= 19_000, "only {opened} half-open heads opened");
    // The kernel completes handshakes ahead of the balancer's accepts:
    // wait for it to have taken them all.
    let want = (opened - MAX) as f64 * 0.95;
    let evicted = eventually(PATIENCE, "the balancer evicts the oldest heads", || async {
        let m = b.metrics().await;
        let evicted = metric(&m, "roompin_balancer_connections_evicted_total")?;
        (evicted >= want).then_some(evicted)
    })
    .await;
    let m = b.metrics().await;
    let held = metric(&m, "roompin_balancer_client_connections").unwrap_or(0.0);
    let peak = rss_kib(&b);
    eprintln!("{opened} heads opened: the balancer holds {held}, evicted {evicted}");
    assert!(
        held <= (MAX + 64) as f64,
        "{held} connections held over a cap of {MAX}"
    );

    // While they are held: normal clients join within 1 s, the ring keeps
    // every node, and the admin listener answers.
    for i in 0..5 {
        let took = join_time(&b, &format!("during-{i}")).await;
        assert!(
            took < Duration::from_secs(1),
            "a join took {took:?} during the flood"
        );
        assert_eq!(
            b.owners().await.expect("owners"),
            owners,
            "the ring lost a node"
        );
    }

    let closed = flood.closed().await;
    assert!(
        closed >= opened - MAX,
        "the balancer closed {closed} of {opened}"
    );
    let m = b.metrics().await;
    for n in &ns {
        let series = format!("roompin_balancer_upstream_healthy{{upstream=\"{}\"}}", n.id);
        assert_eq!(metric(&m, &series), Some(1.0), "{series}");
    }
    assert!(
        !a_node_went_unhealthy(&b),
        "a node left the ring:\n{}",
        b.proc.logs()
    );
    eventually(PATIENCE, "the connections are given back", || async {
        let m = b.metrics().await;
        (metric(&m, "roompin_balancer_client_connections")? <= 2.0).then_some(())
    })
    .await;
    let took = join_time(&b, "after-flood").await;
    assert!(
        took < Duration::from_secs(1),
        "a join took {took:?} after the flood"
    );
    rss_comes_back(&b, start, peak).await;
}
