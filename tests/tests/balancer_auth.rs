//! Join tokens at the balancer (issue 11). The nodes behind it have no
//! `[auth]` of their own here, so every refusal below can only come from
//! the balancer, answered before any byte reaches a node; and every token
//! it lets through is one the node never had to check.
//!
//! Tokens come from `roompin-balancer token` (the CLI), from jwt-compact
//! (a JWT library independent of the jsonwebtoken the balancer verifies
//! with), and signed by hand here (HMAC-SHA256 over base64url JSON, RFC
//! 7515) for what no library will make (`alg: none`, a tampered payload);
//! the RS256 one is signed with a fixed test key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use roompin_shared::auth::{mint_with_pem, now_secs, Algorithm, Claims};
use roompin_tests::edge::{balancer, nodes};
use roompin_tests::tokens::hs256_by_hand as by_hand;
use roompin_tests::{metric, BalancerProc, SseClient, WsClient};
use serde_json::{json, Value};
use std::path::PathBuf;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const OLD: &str = "the-old-balancer-secret-32-bytes-long";
const NEW: &str = "the-new-balancer-secret-32-bytes-long";

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/testdata/auth")
        .join(name)
}

fn auth_section() -> String {
    format!(
        "[auth]\nhs256_secrets = [\"{NEW}\", \"{OLD}\"]\npublic_keys = [\"{}\"]\n",
        testdata("rsa-public.pem").display()
    )
}

/// A token from `roompin-balancer token`, with the balancer's own TOML.
fn cli_token(b: &BalancerProc, meeting: &str, user: &str, ttl: &str) -> String {
    roompin_tests::tokens::cli_token(&b.config, meeting, user, ttl)
}

/// HS256 by jwt-compact, `exp` (and `nbf`) this many seconds from now.
fn by_library(sub: &str, meeting: &str, exp_in: i64, nbf_in: Option<i64>, secret: &str) -> String {
    use jwt_compact::alg::{Hs256, Hs256Key};
    use jwt_compact::AlgorithmExt;
    #[derive(serde::Serialize)]
    struct Custom {
        sub: String,
        meeting_id: String,
    }
    let now = chrono::Utc::now();
    let mut claims = jwt_compact::Claims::new(Custom {
        sub: sub.into(),
        meeting_id: meeting.into(),
    });
    claims.expiration = Some(now + chrono::Duration::seconds(exp_in));
    claims.not_before = nbf_in.map(|n| now + chrono::Duration::seconds(n));
    Hs256
        .token(
            &jwt_compact::Header::empty(),
            &claims,
            &Hs256Key::new(secret.as_bytes()),
        )
        .expect("jwt-compact signs")
}

fn claims(sub: &str, meeting: &str, exp_in: i64) -> Value {
    json!({"sub": sub, "meeting_id": meeting, "exp": now_secs() as i64 + exp_in})
}

fn hs() -> Value {
    json!({"alg": "HS256", "typ": "JWT"})
}

fn rs256(sub: &str, meeting: &str) -> String {
    let pem = std::fs::read(testdata("rsa-private.pem")).expect("test key");
    let c = Claims {
        sub: sub.into(),
        meeting_id: meeting.into(),
        exp: now_secs() + 600,
        nbf: None,
        iat: None,
        iss: None,
        aud: None,
    };
    mint_with_pem(&pem, Algorithm::RS256, &c).expect("sign RS256")
}

async fn failures(b: &BalancerProc, reason: &str) -> f64 {
    let m = b.metrics().await;
    metric(
        &m,
        &format!("roompin_balancer_auth_failures_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(-1.0)
}

#[tokio::test]
async fn tokens_are_checked_at_the_balancer() {
    let ns = nodes(&["node-a", "node-b"], "").await;
    let refs: Vec<_> = ns.iter().collect();
    let b = balancer(&refs, "", &auth_section()).await;
    let m = "standup";
    let ws = |q: &str| b.ws_url(&format!("meeting_id={m}&{q}"));

    // Valid: the CLI's token, one signed by hand, the second of two
    // rotated secrets, RS256, and one in Authorization: Bearer.
    let cli = cli_token(&b, m, "ann", "1h");
    let mut ann = WsClient::connect(&ws(&format!("token={cli}")))
        .await
        .expect("a CLI token joins");
    ann.expect_next("join").await;
    let fresh = by_hand(&hs(), &claims("fay", m, 600), NEW);
    WsClient::connect(&ws(&format!("token={fresh}&user=fay")))
        .await
        .expect("a hand-signed token with its own user joins")
        .close()
        .await;
    for (who, secret) in [("lib", NEW), ("lib-old", OLD)] {
        WsClient::connect(&ws(&format!(
            "token={}",
            by_library(who, m, 600, None, secret)
        )))
        .await
        .expect("a jwt-compact token joins (either secret)")
        .close()
        .await;
    }
    let old = by_hand(&hs(), &claims("bob", m, 600), OLD);
    WsClient::connect(&ws(&format!("token={old}")))
        .await
        .expect("the second secret verifies")
        .close()
        .await;
    WsClient::connect(&ws(&format!("token={}", rs256("rae", m))))
        .await
        .expect("RS256 verifies")
        .close()
        .await;
    let mut req = b
        .ws_url(&format!("meeting_id={m}"))
        .into_client_request()
        .expect("request");
    let bearer = by_hand(&hs(), &claims("dee", m, 600), NEW);
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {bearer}").parse().expect("header"),
    );
    let (mut dee, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("a bearer token joins");
    use futures_util::StreamExt;
    let welcome = dee.next().await.expect("welcome").expect("frame");
    assert!(welcome.to_text().unwrap_or("").contains("welcome"));

    // Refused at the balancer, each with its status, reason and label.
    let tampered = {
        let mut parts: Vec<String> = cli.split('.').map(str::to_owned).collect();
        parts[1] = B64.encode(claims("ann", m, 7200).to_string());
        parts.join(".")
    };
    let alg_none = format!(
        "{}.{}.",
        B64.encode(json!({"alg": "none"}).to_string()),
        B64.encode(claims("ann", m, 600).to_string())
    );
    let mut nbf = claims("ann", m, 600);
    nbf["nbf"] = json!(now_secs() + 600);
    let cases: Vec<(&str, String, u16, &str, &str)> = vec![
        (
            "no token",
            String::new(),
            401,
            "missing join token",
            "missing",
        ),
        (
            "expired (by hand)",
            format!("token={}", by_hand(&hs(), &claims("ann", m, -3600), NEW)),
            401,
            "expired",
            "expired",
        ),
        (
            "expired (jwt-compact)",
            format!("token={}", by_library("ann", m, -3600, None, NEW)),
            401,
            "expired",
            "expired",
        ),
        (
            "nbf in the future (jwt-compact)",
            format!("token={}", by_library("ann", m, 3600, Some(600), NEW)),
            401,
            "not valid yet",
            "not_yet_valid",
        ),
        (
            "another meeting (jwt-compact)",
            format!("token={}", by_library("ann", "board", 600, None, OLD)),
            403,
            "another meeting",
            "wrong_meeting",
        ),
        (
            "nbf in the future",
            format!("token={}", by_hand(&hs(), &nbf, NEW)),
            401,
            "not valid yet",
            "not_yet_valid",
        ),
        (
            "tampered",
            format!("token={tampered}"),
            401,
            "signature",
            "signature",
        ),
        (
            "alg none",
            format!("token={alg_none}"),
            401,
            "alg: none",
            "algorithm",
        ),
        (
            "an unknown secret",
            format!(
                "token={}",
                by_hand(
                    &hs(),
                    &claims("ann", m, 600),
                    "some-other-secret-that-is-32-bytes"
                )
            ),
            401,
            "signature",
            "signature",
        ),
        (
            "garbage",
            "token=garbage".into(),
            401,
            "not a JWT",
            "malformed",
        ),
        (
            "another meeting (CLI)",
            format!("token={}", cli_token(&b, "board", "ann", "10m")),
            403,
            "another meeting",
            "wrong_meeting",
        ),
        (
            "user differs from sub",
            format!("token={cli}&user=mallory"),
            403,
            "differs",
            "wrong_user",
        ),
    ];
    for (name, q, status, reason, label) in &cases {
        let before = failures(&b, label).await;
        let (got, body) = WsClient::refused(&ws(q)).await.expect(name);
        assert_eq!(got, *status, "{name}: {body}");
        assert!(body.contains(reason), "{name}: {body}");
        let after = failures(&b, label).await;
        assert_eq!(after, before + 1.0, "{name}: counted as {label}");
    }

    // SSE and POST /messages need one too; the page does not.
    let sse = b.url(&format!("/sse?meeting_id={m}"));
    let resp = reqwest::get(&sse).await.expect("sse");
    assert_eq!(resp.status(), 401);
    assert!(resp
        .text()
        .await
        .unwrap_or_default()
        .contains("missing join token"));
    let mut listener = SseClient::connect(&format!("{sse}&token={cli}"), None)
        .await
        .expect("SSE with a token");
    assert_eq!(listener.welcome["meeting_id"], m);
    let http = reqwest::Client::new();
    let publish = b.url(&format!("/messages?meeting_id={m}"));
    let refused = http
        .post(&publish)
        .json(&json!({"text": "sneaky"}))
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status(), 401);
    let expired = by_hand(&hs(), &claims("ann", m, -60), NEW);
    let refused = http
        .post(&publish)
        .bearer_auth(&expired)
        .json(&json!({"text": "late"}))
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status(), 401);
    let ok = http
        .post(&publish)
        .bearer_auth(&cli)
        .json(&json!({"text": "posted"}))
        .send()
        .await
        .expect("post");
    assert_eq!(ok.status(), 202);
    let posted = ann.recv_type("message").await.expect("the post arrives");
    assert_eq!(posted["text"], "posted");
    let seen = loop {
        let e = listener.recv().await.expect("SSE gets it");
        if e.event == "message" {
            break e.data;
        }
    };
    assert_eq!(seen["text"], "posted");
    let page = reqwest::get(b.url(&format!("/?token={cli}")))
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap_or_default();
    assert!(
        html.contains("params.get(\"token\")"),
        "the page takes its token from its URL"
    );
    ann.close().await;
}
