//! `/control/*` stays private (issue 11): the bearer token is checked
//! before a byte of the body is read, a wrong one of the right length is
//! refused like any other, and each endpoint caps its body. Shown with
//! heads sent alone: the node answers without waiting for a body, so it
//! cannot have read one.

use roompin_shared::control::{HANDOFF_PATH, ROOMS_PATH, VIEW_PATH};
use roompin_tests::raw::{body, head_end, read_until, status};
use roompin_tests::{get, metric, NodeOptions, NodeProc, PATIENCE};
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const TOKEN: &str = "control-token-for-the-auth-test";

/// Sends a request head (and `body`, possibly short of its
/// Content-Length) and reads the answer's status and body, without
/// sending anything more.
async fn ask(addr: SocketAddr, head: &str, sent: &[u8]) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(head.as_bytes()).await.expect("head");
    tcp.write_all(sent).await.expect("body");
    let answer = read_until(&mut tcp, PATIENCE, |b| {
        head_end(b).is_some_and(|end| {
            let len = String::from_utf8_lossy(&b[..end])
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            b.len() >= end + len
        })
    })
    .await
    .expect("an answer without the rest of the body");
    (status(&answer).unwrap_or(0), body(&answer))
}

fn post(path: &str, auth: Option<&str>, length: usize) -> String {
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    format!(
        "POST {path} HTTP/1.1\r\nHost: n\r\nContent-Type: application/json\r\n{auth}Content-Length: {length}\r\n\r\n"
    )
}

#[tokio::test]
async fn control_endpoints_check_the_token_before_the_body_and_cap_it() {
    let node = NodeProc::start(
        "control-auth",
        NodeOptions {
            toml: String::new(),
            control_token: Some(TOKEN.into()),
        },
    )
    .await;
    let addr = node.addr;
    let right = format!("Bearer {TOKEN}");
    // Same length, last byte wrong.
    let near = format!("Bearer {}X", &TOKEN[..TOKEN.len() - 1]);

    // No token, a wrong one, a near miss, another scheme: 401, and a
    // 200 MB body that is never sent is not waited for.
    let cases = [
        ("no token", None, HANDOFF_PATH),
        ("wrong token", Some("Bearer nope"), HANDOFF_PATH),
        ("near miss", Some(near.as_str()), VIEW_PATH),
        ("basic", Some("Basic Y29udHJvbA=="), VIEW_PATH),
        ("bare token", Some(TOKEN), VIEW_PATH),
    ];
    for (name, auth, path) in cases {
        let (got, reason) = ask(addr, &post(path, auth, 200 << 20), b"[[[[").await;
        assert_eq!(got, 401, "{name}: {reason}");
        assert!(reason.contains("bearer token"), "{name}: {reason}");
    }
    let rooms = format!("GET {ROOMS_PATH} HTTP/1.1\r\nHost: n\r\nAuthorization: {near}\r\n\r\n");
    assert_eq!(ask(addr, &rooms, b"").await.0, 401);

    // The right token: a declared body over the cap is refused before it
    // is read, so is one that turns out longer than it said (chunked), and
    // a body that is not JSON gets 400.
    let (got, reason) = ask(addr, &post(VIEW_PATH, Some(&right), 2 << 20), b"{").await;
    assert_eq!(got, 413, "declared over the cap: {reason}");
    assert!(reason.contains("limit"), "{reason}");
    let chunk = vec![b' '; 64 << 10];
    let mut chunked = Vec::new();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(&chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    let head = format!(
        "POST {VIEW_PATH} HTTP/1.1\r\nHost: n\r\nAuthorization: {right}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let (got, reason) = ask(addr, &head, &chunked).await;
    assert_eq!(got, 413, "chunked over the cap: {reason}");
    let (got, reason) = ask(addr, &post(VIEW_PATH, Some(&right), 5), b"{nope").await;
    assert_eq!(got, 400, "not JSON: {reason}");
    assert!(reason.contains("JSON"), "{reason}");
    // The scheme's case does not matter; the token's does.
    let lower =
        format!("GET {ROOMS_PATH} HTTP/1.1\r\nHost: n\r\nAuthorization: bearer {TOKEN}\r\n\r\n");
    let (got, reason) = ask(addr, &lower, b"").await;
    assert_eq!(got, 200, "{reason}");
    let upper = format!(
        "GET {ROOMS_PATH} HTTP/1.1\r\nHost: n\r\nAuthorization: Bearer {}\r\n\r\n",
        TOKEN.to_uppercase()
    );
    assert_eq!(ask(addr, &upper, b"").await.0, 401);

    let (_, m) = get(&node.url("/metrics")).await.expect("metrics");
    let count = |reason: &str| {
        metric(
            &m,
            &format!("roompin_node_control_refusals_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(count("unauthorized"), 7.0, "{m}");
    assert_eq!(count("too_large"), 2.0);
    assert_eq!(count("bad_body"), 1.0);
    assert_eq!(count("disabled"), 0.0);
}

#[tokio::test]
async fn a_node_without_a_control_token_refuses_every_control_request() {
    let node = NodeProc::start(
        "control-off",
        NodeOptions {
            toml: String::new(),
            control_token: None,
        },
    )
    .await;
    let (got, reason) = ask(
        node.addr,
        &post(HANDOFF_PATH, Some("Bearer anything"), 200 << 20),
        b"",
    )
    .await;
    assert_eq!(got, 403, "{reason}");
    assert!(reason.contains("no control_token"), "{reason}");
    let (_, m) = get(&node.url("/metrics")).await.expect("metrics");
    assert_eq!(
        metric(
            &m,
            "roompin_node_control_refusals_total{reason=\"disabled\"}"
        ),
        Some(1.0)
    );
}
