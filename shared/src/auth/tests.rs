//! Tokens minted by this module and, independently, by hand (HMAC-SHA256
//! over base64url JSON, RFC 7515 A.1), and the verdict on each.

use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};

const SECRET_A: &str = "an-old-secret-of-at-least-32-bytes!!";
const SECRET_B: &str = "the-new-secret-of-at-least-32-bytes!";
const MEETING: &str = "standup";

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/auth")
        .join(name)
}

fn config(secrets: &[&str], keys: &[&str]) -> AuthConfig {
    AuthConfig {
        hs256_secrets: secrets.iter().map(|s| s.to_string()).collect(),
        public_keys: keys.iter().map(PathBuf::from).collect(),
        issuer: None,
        audience: None,
        leeway_seconds: 30,
    }
}

fn verifier(secrets: &[&str], keys: &[&str]) -> Verifier {
    Verifier::new(&config(secrets, keys), &testdata("")).expect("test keys load")
}

fn claims(sub: &str, meeting: &str, exp_in: i64) -> Claims {
    Claims {
        sub: sub.into(),
        meeting_id: meeting.into(),
        exp: (now_secs() as i64 + exp_in) as u64,
        nbf: None,
        iat: Some(now_secs()),
        iss: None,
        aud: None,
    }
}

/// HS256 by hand: base64url(header) . base64url(payload) . HMAC.
fn by_hand(header: &Value, payload: &Value, secret: &str) -> String {
    let signing_input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(payload.to_string())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key size");
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        B64.encode(mac.finalize().into_bytes())
    )
}

fn hs256_header() -> Value {
    json!({"alg": "HS256", "typ": "JWT"})
}

fn payload(sub: &str, meeting: &str, exp_in: i64) -> Value {
    json!({"sub": sub, "meeting_id": meeting, "exp": now_secs() as i64 + exp_in})
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(testdata(name)).expect("test key")
}

/// A verdict as a comparable value: the user, or status and label.
type Verdict = Result<String, (u16, &'static str)>;

fn verdict(r: Result<Identity, Refusal>) -> Verdict {
    r.map(|id| id.user)
        .map_err(|e| (e.status(), e.failure.label()))
}

#[test]
fn the_table() {
    let v = verifier(
        &[SECRET_A, SECRET_B],
        &["rsa-public.pem", "ec-public.pem", "ed-public.pem"],
    );
    let minted = |c: &Claims| mint_hs256(SECRET_A, c).expect("mint");
    let tampered = {
        let t = minted(&claims("ann", MEETING, 3600));
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        // The same claims for another meeting, under the old signature.
        parts[1] = B64.encode(payload("ann", "board", 3600).to_string());
        parts.join(".")
    };
    let alg_none = format!(
        "{}.{}.",
        B64.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
        B64.encode(payload("ann", MEETING, 3600).to_string())
    );
    let alg_none_upper = format!(
        "{}.{}.",
        B64.encode(json!({"alg": "NONE"}).to_string()),
        B64.encode(payload("ann", MEETING, 3600).to_string())
    );
    let mut nbf_future = claims("ann", MEETING, 3600);
    nbf_future.nbf = Some(now_secs() + 600);
    let mut nbf_past = claims("ann", MEETING, 3600);
    nbf_past.nbf = Some(now_secs() - 10);
    let rs = |c: &Claims| mint_with_pem(&pem("rsa-private.pem"), Algorithm::RS256, c).expect("rs");
    let es = |c: &Claims| mint_with_pem(&pem("ec-private.pem"), Algorithm::ES256, c).expect("es");
    let ed = |c: &Claims| mint_with_pem(&pem("ed-private.pem"), Algorithm::EdDSA, c).expect("ed");
    // Algorithm confusion: HS256 keyed with the RSA public key's bytes.
    let confused = by_hand(
        &hs256_header(),
        &payload("ann", MEETING, 3600),
        &String::from_utf8(pem("rsa-public.pem")).expect("pem is text"),
    );
    let hs384 = {
        let key = EncodingKey::from_secret(SECRET_A.as_bytes()).expect("key");
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &claims("ann", MEETING, 60),
            &key,
        )
        .expect("hs384")
    };

    let ok = |u: &str| Ok(u.to_owned());
    let cases: Vec<(&str, String, Option<&str>, Verdict)> = vec![
        (
            "minted",
            minted(&claims("ann", MEETING, 3600)),
            None,
            ok("ann"),
        ),
        (
            "by hand",
            by_hand(&hs256_header(), &payload("bob", MEETING, 3600), SECRET_A),
            None,
            ok("bob"),
        ),
        (
            "user = sub",
            minted(&claims("ann", MEETING, 3600)),
            Some("ann"),
            ok("ann"),
        ),
        (
            "second rotated secret",
            by_hand(&hs256_header(), &payload("cy", MEETING, 60), SECRET_B),
            None,
            ok("cy"),
        ),
        (
            "within the leeway",
            minted(&claims("ann", MEETING, -10)),
            None,
            ok("ann"),
        ),
        ("nbf passed", minted(&nbf_past), None, ok("ann")),
        ("RS256", rs(&claims("rae", MEETING, 60)), None, ok("rae")),
        ("ES256", es(&claims("eve", MEETING, 60)), None, ok("eve")),
        ("EdDSA", ed(&claims("ed", MEETING, 60)), None, ok("ed")),
        (
            "expired",
            minted(&claims("ann", MEETING, -3600)),
            None,
            Err((401, "expired")),
        ),
        (
            "expired, by hand",
            by_hand(&hs256_header(), &payload("ann", MEETING, -3600), SECRET_B),
            None,
            Err((401, "expired")),
        ),
        (
            "nbf in the future",
            minted(&nbf_future),
            None,
            Err((401, "not_yet_valid")),
        ),
        ("tampered", tampered, None, Err((401, "signature"))),
        (
            "unknown secret",
            by_hand(
                &hs256_header(),
                &payload("ann", MEETING, 60),
                "some-other-secret-of-32-bytes-or-more",
            ),
            None,
            Err((401, "signature")),
        ),
        ("alg none", alg_none, None, Err((401, "algorithm"))),
        ("alg NONE", alg_none_upper, None, Err((401, "algorithm"))),
        ("alg confusion", confused, None, Err((401, "signature"))),
        ("HS384", hs384, None, Err((401, "algorithm"))),
        (
            "another meeting",
            minted(&claims("ann", "board", 3600)),
            None,
            Err((403, "wrong_meeting")),
        ),
        (
            "another meeting, RS256",
            rs(&claims("ann", "board", 3600)),
            None,
            Err((403, "wrong_meeting")),
        ),
        (
            "user differs from sub",
            minted(&claims("ann", MEETING, 3600)),
            Some("bob"),
            Err((403, "wrong_user")),
        ),
        (
            "exp missing",
            by_hand(
                &hs256_header(),
                &json!({"sub": "ann", "meeting_id": MEETING}),
                SECRET_A,
            ),
            None,
            Err((401, "missing_claim")),
        ),
        (
            "sub missing",
            by_hand(
                &hs256_header(),
                &json!({"meeting_id": MEETING, "exp": now_secs() + 60}),
                SECRET_A,
            ),
            None,
            Err((401, "missing_claim")),
        ),
        (
            "meeting_id missing",
            by_hand(
                &hs256_header(),
                &json!({"sub": "ann", "exp": now_secs() + 60}),
                SECRET_A,
            ),
            None,
            Err((401, "missing_claim")),
        ),
        (
            "sub is a number",
            by_hand(
                &hs256_header(),
                &json!({"sub": 7, "meeting_id": MEETING, "exp": now_secs() + 60}),
                SECRET_A,
            ),
            None,
            Err((401, "malformed")),
        ),
        (
            "exp is a string",
            by_hand(
                &hs256_header(),
                &json!({"sub": "ann", "meeting_id": MEETING, "exp": "soon"}),
                SECRET_A,
            ),
            None,
            Err((401, "missing_claim")),
        ),
        (
            "sub is no user",
            by_hand(&hs256_header(), &payload("a\u{7}b", MEETING, 60), SECRET_A),
            None,
            Err((401, "malformed")),
        ),
        ("not a JWT", "hello".into(), None, Err((401, "malformed"))),
        ("empty", "".into(), None, Err((401, "malformed"))),
        (
            "header not JSON",
            format!("{}.e30.sig", B64.encode("{nope")),
            None,
            Err((401, "malformed")),
        ),
        (
            "too long",
            "a".repeat(MAX_TOKEN_BYTES + 1),
            None,
            Err((401, "malformed")),
        ),
    ];
    let mut failures = Vec::new();
    for (name, token, user, want) in cases {
        let got = verdict(v.verify(Some(&token), MEETING, user));
        if got != want {
            failures.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert_eq!(
        verdict(v.verify(None, MEETING, None)),
        Err((401, "missing"))
    );
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn public_key_algorithms_need_their_keys() {
    let hs_only = verifier(&[SECRET_A], &[]);
    let token = mint_with_pem(
        &pem("ec-private.pem"),
        Algorithm::ES256,
        &claims("eve", MEETING, 60),
    )
    .expect("es");
    assert_eq!(
        verdict(hs_only.verify(Some(&token), MEETING, None)),
        Err((401, "algorithm"))
    );
    // An ES256 token checked against the RSA key only.
    let rsa_only = verifier(&[], &["rsa-public.pem"]);
    assert_eq!(
        verdict(rsa_only.verify(Some(&token), MEETING, None)),
        Err((401, "algorithm"))
    );
    let hs = mint_hs256(SECRET_A, &claims("ann", MEETING, 60)).expect("mint");
    assert_eq!(
        verdict(rsa_only.verify(Some(&hs), MEETING, None)),
        Err((401, "algorithm"))
    );
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let mut c = config(&[SECRET_A], &[]);
    c.issuer = Some("https://backend.example".into());
    c.audience = Some("roompin".into());
    let v = Verifier::new(&c, Path::new(".")).expect("no key files");
    let with = |iss: Option<&str>, aud: Option<&str>| {
        let mut cl = claims("ann", MEETING, 60);
        cl.iss = iss.map(str::to_owned);
        cl.aud = aud.map(str::to_owned);
        let t = mint_hs256(SECRET_A, &cl).expect("mint");
        verdict(v.verify(Some(&t), MEETING, None))
    };
    assert_eq!(
        with(Some("https://backend.example"), Some("roompin")),
        Ok("ann".into())
    );
    assert_eq!(
        with(Some("https://evil.example"), Some("roompin")),
        Err((401, "issuer"))
    );
    assert_eq!(
        with(Some("https://backend.example"), Some("other")),
        Err((401, "audience"))
    );
    assert_eq!(with(None, Some("roompin")), Err((401, "missing_claim")));
    assert_eq!(
        with(Some("https://backend.example"), None),
        Err((401, "missing_claim"))
    );
    // Without [auth] audience, any `aud` is ignored.
    let plain = verifier(&[SECRET_A], &[]);
    let mut cl = claims("ann", MEETING, 60);
    cl.aud = Some("whatever".into());
    let t = mint_hs256(SECRET_A, &cl).expect("mint");
    assert_eq!(
        verdict(plain.verify(Some(&t), MEETING, None)),
        Ok("ann".into())
    );
}

#[test]
fn bad_key_files_are_refused_by_name() {
    for (file, want) in [
        ("no-such-key.pem", "cannot read"),
        ("garbage.pem", "not a PEM public key"),
        ("ec-private.pem", "not a PEM public key"),
        ("p384-public.pem", "cannot be used for ES256"),
        ("README.md", "not a PEM public key"),
    ] {
        let err = Verifier::new(&config(&[], &[file]), &testdata(""))
            .map(|_| ())
            .map_err(|e| e.to_string())
            .expect_err(file);
        assert!(err.contains(file) && err.contains(want), "{file}: {err}");
    }
    let dir = std::env::temp_dir().join(format!("roompin-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let big = dir.join("big.pem");
    std::fs::write(&big, vec![b'A'; MAX_KEY_FILE_BYTES as usize + 1]).expect("write");
    let err = Verifier::new(&config(&[], &[big.to_str().unwrap_or_default()]), &dir)
        .map(|_| ())
        .map_err(|e| e.to_string())
        .expect_err("too big");
    assert!(
        err.contains("big.pem") && err.contains("not a public key"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_config_section_is_checked() {
    let short = config(&["short"], &[]);
    assert!(short.validate().unwrap_err().contains("at least 32"));
    assert!(config(&[], &[]).validate().unwrap_err().contains("neither"));
    let mut c = config(&[SECRET_A], &[]);
    c.leeway_seconds = 301;
    assert!(c.validate().unwrap_err().contains("leeway_seconds"));
    c.leeway_seconds = 0;
    c.issuer = Some(String::new());
    assert!(c.validate().unwrap_err().contains("issuer"));
    assert!(!format!("{:?}", config(&[SECRET_A], &[])).contains(SECRET_A));
}

#[test]
fn tokens_are_found_in_the_query_or_the_header() {
    let find = |q: Option<&str>, h: &[&str]| {
        token_from(q, h.iter().map(|v| v.as_bytes())).map_err(|e| e.failure.label())
    };
    assert_eq!(
        find(Some("meeting_id=m&token=abc"), &[]),
        Ok(Some("abc".into()))
    );
    assert_eq!(
        find(Some("meeting_id=m"), &["Bearer abc"]),
        Ok(Some("abc".into()))
    );
    assert_eq!(
        find(Some("token=abc"), &["bearer abc"]),
        Ok(Some("abc".into()))
    );
    assert_eq!(find(Some("meeting_id=m"), &[]), Ok(None));
    assert_eq!(find(None, &[]), Ok(None));
    assert_eq!(find(Some("token=a&token=b"), &[]), Err("malformed"));
    assert_eq!(find(Some("token=a"), &["Bearer b"]), Err("malformed"));
    assert_eq!(find(None, &["Bearer a", "Bearer a"]), Err("malformed"));
    assert_eq!(find(None, &["Basic YTpi"]), Err("malformed"));
    assert_eq!(find(None, &["Bearer "]), Err("malformed"));
    assert_eq!(find(None, &["Bearer"]), Err("malformed"));
}

#[test]
fn labels_and_statuses_are_stable() {
    let labels: Vec<&str> = Failure::ALL.iter().map(|f| f.label()).collect();
    let mut unique = labels.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), labels.len(), "{labels:?}");
    for f in Failure::ALL {
        let want = if matches!(f, Failure::WrongMeeting | Failure::WrongUser) {
            403
        } else {
            401
        };
        assert_eq!(f.status(), want, "{f:?}");
    }
}
