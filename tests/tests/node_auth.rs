//! Join tokens at a node, reached directly (defence in depth: a request
//! that bypasses the balancer gets the same refusals). Tokens come from
//! `roompin-balancer token` and, independently, are signed by hand here
//! (HMAC-SHA256 over base64url JSON, RFC 7515); RS256 ones are signed with
//! a fixed test key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use roompin_shared::auth::{mint_with_pem, now_secs, Algorithm, Claims};
use roompin_shared::control::RELAYED_HEADER;
use roompin_tests::process::bin;
use roompin_tests::tokens::hs256_by_hand as by_hand;
use roompin_tests::{get, metric, NodeProc, SseClient, WsClient};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const OLD: &str = "the-old-secret-that-is-32-bytes-long";
const NEW: &str = "the-new-secret-that-is-32-bytes-long";

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

/// A token from `roompin-balancer token`, with a balancer TOML whose
/// `[auth]` is the node's.
fn cli_token(meeting: &str, user: &str, ttl: &str) -> String {
    let dir = roompin_tests::process::target_dir().join("test-logs");
    let _ = std::fs::create_dir_all(&dir);
    let config = dir.join(format!("auth-balancer-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:2\"\ncontrol_token = \"t\"\n\n[[upstream]]\nid = \"n\"\naddr = \"127.0.0.1:3\"\n\n{}",
            auth_section()
        ),
    )
    .expect("write balancer toml");
    roompin_tests::tokens::cli_token(&config, meeting, user, ttl)
}

fn claims(sub: &str, meeting: &str, exp_in: i64) -> Value {
    json!({"sub": sub, "meeting_id": meeting, "exp": now_secs() as i64 + exp_in})
}

fn hs() -> Value {
    json!({"alg": "HS256", "typ": "JWT"})
}

/// RS256 by hand: PKCS#1 v1.5 over SHA-256 of `header.claims` (RFC 7518
/// 3.3), with the `rsa` crate, not jsonwebtoken.
fn rs256_by_hand(claims: &Value) -> String {
    use rsa::pkcs8::DecodePrivateKey;
    use sha2::Digest;
    let pem = std::fs::read_to_string(testdata("rsa-private.pem")).expect("test key");
    let key = rsa::PrivateKey::from_pkcs8_pem(&pem).expect("a PKCS#8 RSA key");
    let input = format!(
        "{}.{}",
        B64.encode(json!({"alg": "RS256", "typ": "JWT"}).to_string()),
        B64.encode(claims.to_string())
    );
    let digest = sha2::Sha256::digest(input.as_bytes());
    let signature = key
        .sign(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest)
        .expect("sign RS256");
    format!("{input}.{}", B64.encode(signature))
}

/// RS256 with roompin-shared's own minting (jsonwebtoken).
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

#[tokio::test]
async fn tokens_are_checked_at_the_node() {
    let node = NodeProc::with_toml("auth", &auth_section()).await;
    let m = "standup";
    let ws = |q: &str| node.ws_url(&format!("meeting_id={m}&{q}"));

    // Valid: the CLI's token, the second of two rotated secrets, RS256.
    let cli = cli_token(m, "ann", "1h");
    let mut ann = WsClient::connect(&ws(&format!("token={cli}")))
        .await
        .expect("a CLI token joins");
    let join = ann.expect_next("join").await;
    assert_eq!(join["user"], "ann", "the token's sub is the user: {join}");
    let old = by_hand(&hs(), &claims("bob", m, 600), OLD);
    let mut bob = WsClient::connect(&ws(&format!("token={old}&user=bob")))
        .await
        .expect("the second secret verifies");
    bob.expect_next("join").await;
    let rsa = rs256("rae", m);
    let mut rae = WsClient::connect(&ws(&format!("token={rsa}")))
        .await
        .expect("RS256 verifies");
    rae.expect_next("join").await;
    let rsa_hand = rs256_by_hand(&claims("rob", m, 600));
    let mut rob = WsClient::connect(&ws(&format!("token={rsa_hand}")))
        .await
        .expect("RS256 signed by hand verifies");
    rob.expect_next("join").await;
    // In Authorization: Bearer, as a native client sends it.
    let mut req = node
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

    // Refused, with the status and reason each deserves.
    let tampered = {
        let mut parts: Vec<String> = cli.split('.').map(str::to_owned).collect();
        parts[1] = B64.encode(claims("ann", "board", 3600).to_string());
        parts.join(".")
    };
    let rsa_tampered = {
        let mut parts: Vec<String> = rsa_hand.split('.').map(str::to_owned).collect();
        parts[1] = B64.encode(claims("rob", "board", 600).to_string());
        parts.join(".")
    };
    let alg_none = format!(
        "{}.{}.",
        B64.encode(json!({"alg": "none"}).to_string()),
        B64.encode(claims("ann", m, 600).to_string())
    );
    let mut nbf = claims("ann", m, 600);
    nbf["nbf"] = json!(now_secs() + 600);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("no token", String::new(), 401, "missing join token"),
        (
            "expired",
            format!("token={}", by_hand(&hs(), &claims("ann", m, -3600), NEW)),
            401,
            "expired",
        ),
        (
            "nbf in the future",
            format!("token={}", by_hand(&hs(), &nbf, NEW)),
            401,
            "not valid yet",
        ),
        ("tampered", format!("token={tampered}"), 401, "signature"),
        (
            "RS256 tampered",
            format!("token={rsa_tampered}"),
            401,
            "signature",
        ),
        ("alg none", format!("token={alg_none}"), 401, "alg: none"),
        (
            "unknown secret",
            format!(
                "token={}",
                by_hand(
                    &hs(),
                    &claims("ann", m, 600),
                    "some-other-secret-32-bytes-long!!"
                )
            ),
            401,
            "signature",
        ),
        ("garbage", "token=garbage".into(), 401, "not a JWT"),
        (
            "another meeting",
            format!("token={}", cli_token("board", "ann", "10m")),
            403,
            "another meeting",
        ),
        (
            "user differs from sub",
            format!("token={cli}&user=mallory"),
            403,
            "differs",
        ),
        (
            "two tokens",
            format!("token={cli}&token={old}"),
            401,
            "more than once",
        ),
    ];
    for (name, q, status, reason) in &cases {
        let (got, body) = WsClient::refused(&ws(q)).await.expect(name);
        assert_eq!(got, *status, "{name}: {body}");
        assert!(body.contains(reason), "{name}: {body}");
    }

    // SSE and POST /messages need one too.
    let sse = node.url(&format!("/sse?meeting_id={m}"));
    let resp = reqwest::get(&sse).await.expect("sse");
    assert_eq!(resp.status(), 401);
    let mut listener = SseClient::connect(&format!("{sse}&token={cli}"), None)
        .await
        .expect("SSE with a token");
    assert_eq!(listener.welcome["meeting_id"], m);
    let http = reqwest::Client::new();
    let publish = node.url(&format!("/messages?meeting_id={m}"));
    let refused = http
        .post(&publish)
        .json(&json!({"text": "sneaky"}))
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status(), 401);
    let as_other = http
        .post(format!("{publish}&token={cli}"))
        .json(&json!({"text": "as bob", "user": "bob"}))
        .send()
        .await
        .expect("post");
    assert_eq!(as_other.status(), 403, "a body user other than sub");
    let ok = http
        .post(&publish)
        .bearer_auth(&cli)
        .json(&json!({"text": "posted"}))
        .send()
        .await
        .expect("post");
    assert_eq!(ok.status(), 202);
    let posted = ann.recv_type("message").await.expect("the post arrives");
    assert_eq!(
        (&posted["from"], &posted["text"]),
        (&json!("ann"), &json!("posted"))
    );
    let seen = loop {
        let e = listener.recv().await.expect("SSE gets it");
        if e.event == "message" {
            break e.data;
        }
    };
    assert_eq!(seen["from"], "ann");

    // A request that claims to be relayed by a peer is checked the same way.
    let relayed = http
        .get(&sse)
        .header(RELAYED_HEADER, "node-x")
        .send()
        .await
        .expect("relayed");
    assert_eq!(
        relayed.status(),
        401,
        "a relayed request needs the token too"
    );

    let (_, text) = get(&node.url("/metrics")).await.expect("metrics");
    for reason in [
        "missing",
        "expired",
        "not_yet_valid",
        "signature",
        "algorithm",
        "malformed",
        "wrong_meeting",
        "wrong_user",
    ] {
        let v = metric(
            &text,
            &format!("roompin_node_auth_failures_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0);
        assert!(v >= 1.0, "{reason}: {v}\n{text}");
    }
    drop((bob, rae, rob, dee));
}

#[tokio::test]
async fn a_bad_key_file_stops_the_node_naming_it() {
    for (file, words) in [
        ("missing.pem", "cannot read"),
        ("garbage.pem", "not a PEM public key"),
        ("p384-public.pem", "ES256"),
    ] {
        let dir = roompin_tests::process::target_dir().join("test-logs");
        let _ = std::fs::create_dir_all(&dir);
        let config = dir.join(format!("auth-bad-{file}-{}.toml", std::process::id()));
        std::fs::write(
            &config,
            format!("[auth]\npublic_keys = [\"{}\"]\n", testdata(file).display()),
        )
        .expect("write");
        let mut child = tokio::process::Command::new(bin("roompin-node"))
            .args(["--id", "bad-key", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("the node stops at once")
            .expect("wait");
        assert!(!status.success(), "{file}: the node started");
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut e, &mut err).await;
        }
        assert!(err.contains(file) && err.contains(words), "{file}: {err}");
    }
}
