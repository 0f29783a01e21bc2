//! Join token verification. The first byte picks how the rest is used:
//! even, as the token itself (with the request's `user` after a NUL);
//! odd, as a header and a payload (split at the first NUL) that this
//! target encodes and signs with a configured secret, so that claim
//! handling is reached past the signature.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use roompin_shared::auth::{Failure, Verifier};
use roompin_shared::config::AuthConfig;
use std::path::PathBuf;
use std::sync::OnceLock;

const SECRET: &str = "fuzzing-secret-of-at-least-32-bytes!";
const MEETING: &str = "standup";

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let keys = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/auth");
        let config = AuthConfig {
            hs256_secrets: vec!["another-secret-of-at-least-32-bytes".into(), SECRET.into()],
            public_keys: ["rsa-public.pem", "ec-public.pem", "ed-public.pem"]
                .iter()
                .map(PathBuf::from)
                .collect(),
            issuer: None,
            audience: None,
            leeway_seconds: 30,
        };
        Verifier::new(&config, &keys).expect("the test keys load")
    })
}

fn split(data: &[u8]) -> (&[u8], Option<&[u8]>) {
    match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let v = verifier();
    if mode % 2 == 0 {
        let (token, user) = split(rest);
        let token = String::from_utf8_lossy(token);
        let user = user.map(String::from_utf8_lossy);
        match v.verify(Some(&token), MEETING, user.as_deref()) {
            Ok(id) => assert!(!id.user.is_empty()),
            Err(e) => assert!(matches!(e.status(), 401 | 403) && !e.message.is_empty()),
        }
    } else {
        let (header, payload) = split(rest);
        let input = format!(
            "{}.{}",
            B64.encode(header),
            B64.encode(payload.unwrap_or_default())
        );
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
        mac.update(input.as_bytes());
        let token = format!("{input}.{}", B64.encode(mac.finalize().into_bytes()));
        match v.verify(Some(&token), MEETING, None) {
            // Only a token for this meeting is ever accepted.
            Ok(id) => assert!(!id.user.is_empty()),
            Err(e) => assert!(e.failure != Failure::Missing),
        }
    }
});
