//! Join tokens for the token tests (balancer_auth.rs, node_auth.rs), minted
//! the ways an operator or a backend would: with the balancer's CLI, and by
//! hand, independently of the `jsonwebtoken` crate roompin verifies with.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use std::path::Path;

use crate::process::bin;

/// A token from `roompin-balancer token --config <config>`.
pub fn cli_token(config: &Path, meeting: &str, user: &str, ttl: &str) -> String {
    let out = std::process::Command::new(bin("roompin-balancer"))
        .args(["token", "--config"])
        .arg(config)
        .args(["--meeting", meeting, "--user", user, "--ttl", ttl])
        .output()
        .expect("run roompin-balancer token");
    assert!(
        out.status.success(),
        "token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// An HS256 JWT signed by hand: any header and claims, even invalid ones.
pub fn hs256_by_hand(header: &Value, claims: &Value, secret: &str) -> String {
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(input.as_bytes());
    format!("{input}.{}", B64.encode(mac.finalize().into_bytes()))
}
