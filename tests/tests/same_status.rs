//! The node and the balancer give the same status for the same malformed
//! request (issue 12, PROTOCOL.md's status table). A client that talks to a
//! node directly (tests, tools, a node behind another proxy) and one that
//! goes through the balancer must not learn different rules. Each request
//! below goes, byte for byte, once to the balancer and once straight to the
//! node that owns its meeting; the two statuses must match the one the
//! table names.

use roompin_tests::raw::{self, status, KEY};
use roompin_tests::{Cluster, ClusterOptions};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const WITHIN: Duration = Duration::from_secs(10);

/// Sends `request` and returns the status of the first response head.
async fn answer(addr: SocketAddr, request: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(request.as_bytes()).await.ok()?;
    let got = raw::read_until(&mut s, WITHIN, |b| raw::head_end(b).is_some())
        .await
        .ok()?;
    status(&got)
}

fn upgrade_with(target: &str, key: &str, version: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: roompin.test\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n"
    )
}

fn get(target: &str, extra: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: roompin.test\r\nConnection: close\r\n{extra}\r\n")
}

fn post(target: &str, extra: &str, body: &str) -> String {
    format!(
        "POST {target} HTTP/1.1\r\nHost: roompin.test\r\nConnection: close\r\n{extra}\r\n{body}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_and_balancer_answer_malformed_requests_alike() {
    // One node, so it owns every meeting and a direct request is in place.
    let cluster = Cluster::start(ClusterOptions {
        nodes: 1,
        ..ClusterOptions::default()
    })
    .await;
    let balancer = cluster.balancer.public;
    let node = cluster.nodes[0].addr;
    let ws = "/websocket?meeting_id=same";
    let json = "{\"text\":\"hi\"}";
    let long = "m".repeat(10 * 1024);
    let cases: Vec<(&str, String, u16)> =
        vec![
        (
            "no Host",
            "GET /sse?meeting_id=same HTTP/1.1\r\nConnection: close\r\n\r\n".into(),
            400,
        ),
        (
            "two Hosts",
            "GET /sse?meeting_id=same HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"
                .into(),
            400,
        ),
        (
            "an absolute-form target whose authority is not the Host",
            get("http://elsewhere.test/sse?meeting_id=same", ""),
            400,
        ),
        ("meeting_id missing", get("/sse", ""), 400),
        ("meeting_id empty", get("/sse?meeting_id=", ""), 400),
        ("meeting_id percent garbage", get("/sse?meeting_id=%zz%ff", ""), 400),
        (
            "meeting_id repeated",
            get("/sse?meeting_id=a&meeting_id=b", ""),
            400,
        ),
        (
            "meeting_id 10 KB long",
            get(&format!("/sse?meeting_id={long}"), ""),
            400,
        ),
        ("unknown route", get("/nope?meeting_id=same", ""), 404),
        (
            "upgrade with a short key",
            upgrade_with(ws, "short", "13", ""),
            400,
        ),
        (
            "upgrade with a key that is not base64",
            upgrade_with(ws, "dGhlIHNhbXBsZSBub25j*Q==", "13", ""),
            400,
        ),
        (
            "upgrade with two keys",
            upgrade_with(ws, &format!("{KEY}\r\nSec-WebSocket-Key: {KEY}"), "13", ""),
            400,
        ),
        (
            "upgrade with version 8",
            upgrade_with(ws, KEY, "8", ""),
            426,
        ),
        (
            "upgrade with no key",
            format!(
                "GET {ws} HTTP/1.1\r\nHost: roompin.test\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ),
            426,
        ),
        (
            "upgrade with a Content-Length",
            upgrade_with(ws, KEY, "13", "Content-Length: 5\r\n") + "hello",
            400,
        ),
        (
            "upgrade with Transfer-Encoding",
            upgrade_with(ws, KEY, "13", "Transfer-Encoding: chunked\r\n") + "0\r\n\r\n",
            400,
        ),
        (
            "publish that is not JSON",
            post("/messages?meeting_id=same", "Content-Length: 3\r\n", "{{{"),
            400,
        ),
        (
            "publish with broken chunks",
            post(
                "/messages?meeting_id=same",
                "Transfer-Encoding: chunked\r\n",
                &format!("zz\r\n{json}\r\n0\r\n\r\n"),
            ),
            400,
        ),
        (
            "publish over the body cap",
            post(
                "/messages?meeting_id=same",
                &format!("Content-Length: {}\r\n", 2 * 1024 * 1024),
                "",
            ),
            413,
        ),
        (
            "a well-formed publish, for contrast",
            post(
                "/messages?meeting_id=same",
                &format!("Content-Length: {}\r\n", json.len()),
                json,
            ),
            202,
        ),
        (
            "a well-formed upgrade in absolute form, for contrast",
            upgrade_with("http://roompin.test/websocket?meeting_id=same", KEY, "13", ""),
            101,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, request, want) in &cases {
        let via_balancer = answer(balancer, request).await;
        let direct = answer(node, request).await;
        if via_balancer != Some(*want) || direct != Some(*want) {
            wrong.push(format!(
                "{what}: want {want}, balancer gave {via_balancer:?}, node gave {direct:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "statuses differ:\n{}", wrong.join("\n"));
}
