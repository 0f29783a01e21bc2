//! What the public listener lets through besides chat (issue 11): with
//! `allowed_origins`, a listed `Origin` passes, an unlisted one gets 403
//! and no `Origin` (a native client) passes, on every member route; and
//! neither the nodes' `/control/*` nor the balancer's admin routes can be
//! reached through it, however the path is written.

use roompin_tests::edge::{balancer, nodes};
use roompin_tests::raw::{body, exchange, status};
use roompin_tests::{metric, PATIENCE};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const ALLOWED: &str = "https://chat.example.com";

async fn ws_with_origin(url: &str, origin: Option<&str>) -> Result<(), (u16, String)> {
    let mut req = url.into_client_request().expect("request");
    if let Some(o) = origin {
        req.headers_mut()
            .insert("origin", o.parse().expect("header"));
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((mut stream, _)) => {
            use futures_util::StreamExt;
            let first = stream.next().await;
            match first {
                Some(Ok(m)) if m.to_text().unwrap_or("").contains("welcome") => Ok(()),
                other => Err((0, format!("no welcome: {other:?}"))),
            }
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            Err((
                resp.status().as_u16(),
                String::from_utf8_lossy(body).into_owned(),
            ))
        }
        Err(e) => Err((0, e.to_string())),
    }
}

#[tokio::test]
async fn origins_are_allowed_by_list() {
    let ns = nodes(&["node-a"], "").await;
    let refs: Vec<_> = ns.iter().collect();
    let b = balancer(
        &refs,
        &format!("allowed_origins = [\"{ALLOWED}\", \"http://localhost:8080\"]"),
        "",
    )
    .await;
    let url = b.ws_url("meeting_id=origins&user=u");

    // WebSocket: listed, none, unlisted.
    ws_with_origin(&url, Some(ALLOWED))
        .await
        .expect("a listed origin joins");
    ws_with_origin(&url, None)
        .await
        .expect("no Origin (a native client) joins");
    for evil in [
        "https://evil.example",
        "https://chat.example.com.evil.example",
        "http://chat.example.com",
        "null",
    ] {
        let (code, reason) = ws_with_origin(&url, Some(evil)).await.expect_err(evil);
        assert_eq!(code, 403, "{evil}: {reason}");
        assert!(reason.contains("not allowed"), "{evil}: {reason}");
    }

    // SSE and POST /messages are gated the same way.
    let http = reqwest::Client::new();
    let sse = b.url("/sse?meeting_id=origins");
    let r = http
        .get(&sse)
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("sse");
    assert_eq!(r.status(), 403);
    let r = http
        .get(&sse)
        .header("origin", ALLOWED)
        .timeout(std::time::Duration::from_secs(2))
        .send()
        .await
        .expect("sse");
    assert_eq!(r.status(), 200);
    drop(r);
    let publish = b.url("/messages?meeting_id=origins");
    let r = http
        .post(&publish)
        .header("origin", "https://evil.example")
        .json(&serde_json::json!({"text": "x", "user": "u"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    let r = http
        .post(&publish)
        .json(&serde_json::json!({"text": "x", "user": "u"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 202);

    // The page itself may be opened from anywhere.
    let r = http
        .get(b.url("/"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("page");
    assert_eq!(r.status(), 200);

    let m = b.metrics().await;
    let refused = metric(&m, "roompin_balancer_origin_refusals_total").unwrap_or(0.0);
    assert_eq!(refused, 6.0, "four WebSockets, one SSE, one POST");
}

#[tokio::test]
async fn control_and_admin_routes_are_not_public() {
    let ns = nodes(&["node-a"], "").await;
    let refs: Vec<_> = ns.iter().collect();
    let b = balancer(&refs, "", "").await;
    // Reached directly, the node and the admin listener do answer these.
    let (s, _) = roompin_tests::get(&b.admin_url("/ring"))
        .await
        .expect("ring");
    assert_eq!(s, 200);

    let targets = [
        "/control/view",
        "/control/handoff",
        "/control/claim",
        "/control/anything",
        "//control/view",
        "/%63ontrol/view",
        "/websocket/../control/view",
        "/sse/../control/handoff",
        "/./control/view",
        "/CONTROL/view",
        "/healthz",
        "/metrics",
        "/ring",
        "/route?meeting_id=m",
        "/websocket/x",
        "http://127.0.0.1/control/view",
    ];
    for target in targets {
        for method in ["GET", "POST"] {
            let req = format!(
                "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}",
                roompin_tests::cluster::TOKEN
            );
            let got = exchange(b.public, req.as_bytes(), PATIENCE)
                .await
                .expect(target);
            let code = status(&got);
            assert_eq!(
                code,
                Some(404),
                "{method} {target}: {}",
                String::from_utf8_lossy(&got)
            );
            assert!(body(&got).contains("no route"), "{method} {target}");
        }
    }
    // A WebSocket upgrade to a control path is no way in either.
    let req = roompin_tests::raw::upgrade("/control/view", "");
    let got = exchange(b.public, req.as_bytes(), PATIENCE)
        .await
        .expect("upgrade");
    assert_eq!(status(&got), Some(404), "{}", String::from_utf8_lossy(&got));
}
