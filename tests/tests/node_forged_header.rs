//! End-to-end: a node trusts `x-roompin-balancer` only for balancers that
//! pushed it a view (docs/PROTOCOL.md, the 421 row; issue 12, item 4).
//!
//! With a real balancer pushing views to three real nodes, requests go
//! straight to node-b for meetings node-a owns, whose next owner without
//! node-a is node-b. A made-up balancer id, with an epoch far ahead and an
//! `x-roompin-skipped` naming the owner (everything that would make the
//! real balancer's request acceptable), gets 421 naming node-a on
//! `/websocket`, `/sse` and `/messages`. The same headers with the real
//! balancer's id are judged by its view: skipping node-a, or routing by a
//! newer epoch than node-b has heard of, is accepted; neither is 421.

use reqwest::header::HeaderMap;
use roompin_shared::{Member, Ring};
use roompin_tests::{eventually, get, metric, Cluster, ClusterOptions, PATIENCE};
use serde_json::Value;
use std::collections::VecDeque;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

const FORGED: &str = "forged-balancer@1";

#[derive(Clone, Copy, Debug)]
enum Route {
    WebSocket,
    Sse,
    Messages,
}

/// The headers of one request: the balancer it claims, its epoch, and the
/// nodes it claims to have skipped.
struct Claim<'a> {
    balancer: &'a str,
    epoch: u64,
    skipped: Option<&'a str>,
}

impl Claim<'_> {
    fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![
            ("x-roompin-balancer", self.balancer.to_owned()),
            ("x-roompin-epoch", self.epoch.to_string()),
        ];
        if let Some(s) = self.skipped {
            h.push(("x-roompin-skipped", s.to_owned()));
        }
        h
    }
}

/// Sends `claim` for `meeting` straight to `node` over `route`; returns the
/// status and, for a refusal, its body. An accepted WebSocket must carry a
/// welcome from `node_id`.
async fn ask(
    node: &str,
    node_id: &str,
    route: Route,
    meeting: &str,
    claim: &Claim<'_>,
) -> (u16, String) {
    let query = format!("meeting_id={meeting}&user=probe");
    match route {
        Route::WebSocket => {
            let mut req = format!("ws://{node}/websocket?{query}")
                .into_client_request()
                .expect("a valid request");
            for (k, v) in claim.headers() {
                req.headers_mut()
                    .insert(k, v.parse().expect("a header value"));
            }
            match tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(req))
                .await
                .expect("an answer in time")
            {
                Ok((mut ws, resp)) => {
                    use futures_util::StreamExt;
                    let first = tokio::time::timeout(PATIENCE, ws.next()).await;
                    let text = match first {
                        Ok(Some(Ok(m))) => m.into_text().map(|t| t.to_string()).unwrap_or_default(),
                        other => panic!("no welcome after 101: {other:?}"),
                    };
                    let welcome: Value = serde_json::from_str(&text).expect("JSON welcome");
                    assert_eq!(welcome["type"], "welcome", "{welcome}");
                    assert_eq!(welcome["node"], node_id, "{welcome}");
                    (resp.status().as_u16(), String::new())
                }
                Err(WsError::Http(resp)) => {
                    let body = resp.body().as_deref().unwrap_or_default();
                    (
                        resp.status().as_u16(),
                        String::from_utf8_lossy(body).into_owned(),
                    )
                }
                Err(e) => panic!("websocket {meeting}: {e}"),
            }
        }
        Route::Sse | Route::Messages => {
            let mut headers = HeaderMap::new();
            for (k, v) in claim.headers() {
                headers.insert(k, v.parse().expect("a header value"));
            }
            let client = reqwest::Client::new();
            let req = match route {
                Route::Sse => client.get(format!("http://{node}/sse?{query}")),
                _ => client
                    .post(format!("http://{node}/messages?{query}"))
                    .header("content-type", "application/json")
                    .body(r#"{"text":"hi"}"#),
            };
            let resp = tokio::time::timeout(PATIENCE, req.headers(headers).send())
                .await
                .expect("an answer in time")
                .expect("an answer");
            let status = resp.status().as_u16();
            // An accepted SSE stream does not end: only a refusal's body is read.
            let body = if status == 200 {
                String::new()
            } else {
                resp.text().await.unwrap_or_default()
            };
            (status, body)
        }
    }
}

/// The balancer's ring as `/ring` reports it: its id, epoch and owner ring.
async fn ring(cluster: &Cluster) -> (String, u64, Ring) {
    let r = cluster.balancer.ring().await.expect("/ring");
    let members: Vec<Member> = r["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["owner"] == true)
        .map(|m| Member {
            id: m["id"].as_str().unwrap_or_default().to_owned(),
            addr: m["addr"].as_str().unwrap_or_default().to_owned(),
            weight: m["weight"].as_u64().unwrap_or(1) as u32,
        })
        .collect();
    let vnodes = r["vnodes"].as_u64().expect("vnodes") as u32;
    (
        r["balancer_id"].as_str().expect("balancer_id").to_owned(),
        r["epoch"].as_u64().expect("epoch"),
        Ring::new(members, vnodes),
    )
}

async fn misrouted(node: &str) -> f64 {
    let (_, text) = get(&format!("http://{node}/metrics"))
        .await
        .expect("metrics");
    metric(&text, "roompin_node_misrouted_total").unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_made_up_balancer_id_is_judged_like_a_direct_request() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let (real, epoch, owners) = ring(&cluster).await;
    assert_eq!(owners.members().len(), 3, "all three nodes own meetings");
    let b = cluster.node("node-b").expect("node-b");
    let node = b.addr.to_string();
    // Meetings node-a owns, whose owner is node-b once node-a is skipped.
    let past_a = owners.without(|m| m.id == "node-a");
    let mut meetings: VecDeque<String> = (0..20_000)
        .map(|i| format!("forged-{i}"))
        .filter(|m| {
            owners.owner(m).is_some_and(|o| o.id == "node-a")
                && past_a.owner(m).is_some_and(|o| o.id == "node-b")
        })
        .collect();
    assert!(meetings.len() > 40, "enough meetings to spend");
    let mut fresh = move || meetings.pop_front().expect("a fresh meeting");

    // Wait until node-b holds the balancer's view of this epoch: the real
    // id and epoch, with no skip, is then refused. (A fresh meeting per
    // try: one accepted before the view came would open a room.)
    eventually(
        PATIENCE,
        "node-b refuses by the balancer's current view",
        || {
            let m = fresh();
            let node = node.clone();
            let real = real.clone();
            async move {
                let claim = Claim {
                    balancer: &real,
                    epoch,
                    skipped: None,
                };
                let (status, _) = ask(&node, "node-b", Route::Sse, &m, &claim).await;
                (status == 421).then_some(())
            }
        },
    )
    .await;
    assert_eq!(cluster.balancer.epoch().await, epoch, "the ring held still");

    let before = misrouted(&node).await;
    let mut refused = 0;
    for route in [Route::WebSocket, Route::Sse, Route::Messages] {
        // Forged: every claim that would get a real balancer's request in
        // (an epoch far ahead, the owner skipped) is ignored; the request is
        // judged like a direct one, and every fresh view names node-a.
        let forged = Claim {
            balancer: FORGED,
            epoch: 1 << 40,
            skipped: Some("node-a"),
        };
        let (status, body) = ask(&node, "node-b", route, &fresh(), &forged).await;
        assert_eq!(status, 421, "{route:?} forged: {body}");
        assert!(
            body.contains("node-a") && body.contains(&real),
            "{route:?}: {body}"
        );
        refused += 1;
        // Forged with no skip, and forged with an old epoch: the same.
        for epoch in [1 << 40, 0] {
            let claim = Claim {
                balancer: FORGED,
                epoch,
                skipped: None,
            };
            let (status, body) = ask(&node, "node-b", route, &fresh(), &claim).await;
            assert_eq!(status, 421, "{route:?} forged, epoch {epoch}: {body}");
            refused += 1;
        }

        // The real balancer, by the epoch node-b holds: its view names
        // node-a, so 421...
        let plain = Claim {
            balancer: &real,
            epoch,
            skipped: None,
        };
        let (status, body) = ask(&node, "node-b", route, &fresh(), &plain).await;
        assert_eq!(status, 421, "{route:?} real: {body}");
        assert!(body.contains("node-a"), "{route:?}: {body}");
        refused += 1;
        // ...unless it skipped node-a (it could not connect there): node-b
        // is the next owner on that ring, and accepts.
        let retried = Claim {
            balancer: &real,
            epoch,
            skipped: Some("node-a"),
        };
        let (status, body) = ask(&node, "node-b", route, &fresh(), &retried).await;
        assert_ne!(status, 421, "{route:?} real, node-a skipped: {body}");
        assert!(
            matches!(status, 101 | 200 | 202),
            "{route:?}: {status} {body}"
        );
        // ...or it routed by a ring newer than node-b has heard of: trusted.
        let newer = Claim {
            balancer: &real,
            epoch: epoch + 1,
            skipped: None,
        };
        let (status, body) = ask(&node, "node-b", route, &fresh(), &newer).await;
        assert!(
            matches!(status, 101 | 200 | 202),
            "{route:?} real, newer epoch: {status} {body}"
        );
    }
    let after = misrouted(&node).await;
    assert_eq!(
        after - before,
        refused as f64,
        "every 421 counted in roompin_node_misrouted_total"
    );
}
