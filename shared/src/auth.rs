//! Join tokens: who may join which meeting, as a signed JWT that any
//! backend can mint. The balancer and every node check the same token the
//! same way (the node again, as defence in depth), so the rules live here.
//!
//! A token is accepted when:
//! - it is given once, in the `token` query parameter (browsers cannot set
//!   headers on a WebSocket) or as `Authorization: Bearer …`, or in both
//!   with the same value;
//! - it is signed with HS256 by one of `[auth] hs256_secrets`, or with
//!   RS256, ES256 or EdDSA by one of `[auth] public_keys` (never `none`);
//! - its `exp` is present and not past, and its `nbf`, if any, is not in the
//!   future (both with `leeway_seconds` of clock skew);
//! - its `iss` and `aud` match `[auth] issuer` and `audience` when those
//!   are set;
//! - its `meeting_id` claim (a string) is the request's meeting, else 403;
//! - its `sub` is the user: a request's own `user` that differs gets 403.
//!
//! Every refusal has a plain-text reason for the client and a [`Failure`]
//! whose [`Failure::label`] is a bounded metric label.
//!
//! jsonwebtoken does the cryptography and the claim checks; this module
//! only picks the keys for the header's algorithm and turns its errors
//! into the statuses above.

use crate::config::AuthConfig;
use crate::meeting_id::query_param;
use crate::protocol::check_user;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The algorithms of [`mint_with_pem`], for callers that do not depend on
/// jsonwebtoken themselves.
pub use jsonwebtoken::Algorithm;

/// The query parameter that carries a token.
pub const TOKEN_PARAM: &str = "token";
/// A token longer than this is refused before any decoding: real ones are
/// a few hundred bytes, and a huge one would only cost base64 and JSON work.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// A public key file larger than this is not a public key.
pub const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// Why a request's token was refused: a 401 (no usable token) or a 403 (a
/// good token that does not allow this request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// No token at all.
    Missing,
    /// Not a JWT, not JSON, a claim of the wrong type, given twice or twice
    /// differently, or too long.
    Malformed,
    /// `alg: none`, or an algorithm no configured key can verify.
    Algorithm,
    /// Signed, but by none of the configured keys (or tampered with).
    Signature,
    /// Past its `exp`.
    Expired,
    /// Before its `nbf`.
    NotYetValid,
    /// No `exp`, `sub` or `meeting_id` (or `iss`/`aud` when required).
    MissingClaim,
    /// `iss` is not `[auth] issuer`.
    Issuer,
    /// `aud` does not name `[auth] audience`.
    Audience,
    /// A good token for another meeting.
    WrongMeeting,
    /// A good token whose `sub` is not the request's `user`.
    WrongUser,
}

impl Failure {
    pub const ALL: [Failure; 11] = [
        Failure::Missing,
        Failure::Malformed,
        Failure::Algorithm,
        Failure::Signature,
        Failure::Expired,
        Failure::NotYetValid,
        Failure::MissingClaim,
        Failure::Issuer,
        Failure::Audience,
        Failure::WrongMeeting,
        Failure::WrongUser,
    ];

    /// The `reason` label of the auth-failure counters.
    pub fn label(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed => "malformed",
            Failure::Algorithm => "algorithm",
            Failure::Signature => "signature",
            Failure::Expired => "expired",
            Failure::NotYetValid => "not_yet_valid",
            Failure::MissingClaim => "missing_claim",
            Failure::Issuer => "issuer",
            Failure::Audience => "audience",
            Failure::WrongMeeting => "wrong_meeting",
            Failure::WrongUser => "wrong_user",
        }
    }

    /// 401 for no usable token, 403 for a usable one that does not allow
    /// this request.
    pub fn status(self) -> u16 {
        match self {
            Failure::WrongMeeting | Failure::WrongUser => 403,
            _ => 401,
        }
    }
}

/// A refused token: what went wrong, and the reason sent as plain text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub failure: Failure,
    pub message: String,
}

impl Refusal {
    fn new(failure: Failure, message: impl Into<String>) -> Refusal {
        Refusal {
            failure,
            message: message.into(),
        }
    }

    pub fn status(&self) -> u16 {
        self.failure.status()
    }
}

/// Who an accepted token says the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`: the request's user from now on.
    pub user: String,
}

/// The claims roompin mints and reads. `exp`, `sub` and `meeting_id` are
/// required; the others are checked when present (or when `[auth]` asks
/// for them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub meeting_id: String,
    /// Unix seconds.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// What a token's payload must deserialize as; absent claims are told
/// apart from ill-typed ones (a `sub` that is a number is malformed).
#[derive(Deserialize)]
struct ReadClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    meeting_id: Option<String>,
}

/// A key file that cannot be used; the text names the file.
#[derive(Debug, thiserror::Error)]
#[error("[auth] public_keys: {path}: {message}")]
pub struct KeyError {
    pub path: String,
    pub message: String,
}

/// The keys of one `[auth]` section, loaded and checked once at start.
pub struct Verifier {
    hs256: Vec<DecodingKey>,
    rs256: Vec<DecodingKey>,
    es256: Vec<DecodingKey>,
    eddsa: Vec<DecodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hs256", &self.hs256.len())
            .field("rs256", &self.rs256.len())
            .field("es256", &self.es256.len())
            .field("eddsa", &self.eddsa.len())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Reads and checks every key file of `config`; a relative path is
    /// taken from `base` (the config file's folder). A file that is
    /// missing, too big, not a PEM public key, or a key no accepted
    /// algorithm can use is refused, naming the file.
    pub fn new(config: &AuthConfig, base: &Path) -> Result<Verifier, KeyError> {
        let mut verifier = Verifier {
            hs256: Vec::new(),
            rs256: Vec::new(),
            es256: Vec::new(),
            eddsa: Vec::new(),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway_seconds,
        };
        for secret in &config.hs256_secrets {
            let key = DecodingKey::from_secret(secret.as_bytes()).map_err(|e| KeyError {
                path: "hs256_secrets".into(),
                message: e.to_string(),
            })?;
            verifier.hs256.push(key);
        }
        for path in &config.public_keys {
            let path = if path.is_absolute() {
                path.clone()
            } else {
                base.join(path)
            };
            let (alg, key) = load_public_key(&path)?;
            match alg {
                Algorithm::RS256 => verifier.rs256.push(key),
                Algorithm::ES256 => verifier.es256.push(key),
                _ => verifier.eddsa.push(key),
            }
        }
        Ok(verifier)
    }

    /// Checks a request's token for `meeting`, and its `user` parameter
    /// against the token's `sub`.
    pub fn verify(
        &self,
        token: Option<&str>,
        meeting: &str,
        user: Option<&str>,
    ) -> Result<Identity, Refusal> {
        let Some(token) = token else {
            return Err(Refusal::new(
                Failure::Missing,
                "missing join token: pass it as `token=` in the query or as `Authorization: Bearer <token>`",
            ));
        };
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::new(
                Failure::Malformed,
                format!(
                    "join token is {} bytes; at most {MAX_TOKEN_BYTES} are allowed",
                    token.len()
                ),
            ));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            if alg_is_none(token) {
                Refusal::new(
                    Failure::Algorithm,
                    "join token has `alg: none`: tokens must be signed",
                )
            } else {
                Refusal::new(Failure::Malformed, format!("join token is not a JWT: {e}"))
            }
        })?;
        let keys = match header.alg {
            Algorithm::HS256 => &self.hs256,
            Algorithm::RS256 => &self.rs256,
            Algorithm::ES256 => &self.es256,
            Algorithm::EdDSA => &self.eddsa,
            other => {
                return Err(Refusal::new(
                    Failure::Algorithm,
                    format!(
                        "join token is signed with {other:?}; accepted are HS256, RS256, ES256 and EdDSA"
                    ),
                ))
            }
        };
        if keys.is_empty() {
            return Err(Refusal::new(
                Failure::Algorithm,
                format!(
                    "join token is signed with {:?}, for which no key is configured",
                    header.alg
                ),
            ));
        }
        let validation = self.validation(header.alg);
        let mut claims = None;
        for key in keys {
            match jsonwebtoken::decode::<ReadClaims>(token, key, &validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                // Another listed key may have signed it (rotation).
                Err(e) if *e.kind() == ErrorKind::InvalidSignature => continue,
                Err(e) => return Err(refusal(e.kind())),
            }
        }
        let Some(claims) = claims else {
            return Err(Refusal::new(
                Failure::Signature,
                "join token's signature does not verify with any configured key",
            ));
        };
        let Some(sub) = claims.sub else {
            return Err(Refusal::new(
                Failure::MissingClaim,
                "join token has no `sub` (the user)",
            ));
        };
        check_user(&sub).map_err(|e| {
            Refusal::new(
                Failure::Malformed,
                format!("join token's `sub` is not a usable user: {e}"),
            )
        })?;
        let Some(granted) = claims.meeting_id else {
            return Err(Refusal::new(
                Failure::MissingClaim,
                "join token has no `meeting_id` claim",
            ));
        };
        if granted != meeting {
            return Err(Refusal::new(
                Failure::WrongMeeting,
                format!("join token is for another meeting, not `{meeting}`"),
            ));
        }
        if let Some(user) = user.filter(|u| *u != sub) {
            return Err(Refusal::new(
                Failure::WrongUser,
                format!(
                    "`user` {user:?} differs from the join token's `sub`; leave `user` out, the token names the user"
                ),
            ));
        }
        Ok(Identity { user: sub })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        match &self.issuer {
            Some(iss) => {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            None => v.iss = None,
        }
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            None => {
                v.validate_aud = false;
                v.aud = None;
            }
        }
        v.set_required_spec_claims(&required);
        v
    }
}

/// jsonwebtoken's verdict on a token signed by this key, as a refusal.
fn refusal(kind: &ErrorKind) -> Refusal {
    use Failure::*;
    let (failure, message) = match kind {
        ErrorKind::ExpiredSignature => (Expired, "join token has expired (`exp`)".to_owned()),
        ErrorKind::ImmatureSignature => (
            NotYetValid,
            "join token is not valid yet (`nbf` is in the future)".to_owned(),
        ),
        ErrorKind::MissingRequiredClaim(claim) => {
            // jsonwebtoken also says this of an `exp` that is not a number.
            (
                MissingClaim,
                format!("join token has no usable `{claim}` claim"),
            )
        }
        ErrorKind::InvalidIssuer => (
            Issuer,
            "join token's `iss` is not the expected issuer".to_owned(),
        ),
        ErrorKind::InvalidAudience => (
            Audience,
            "join token's `aud` does not name this service".to_owned(),
        ),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm => (
            Algorithm,
            "join token's algorithm is not accepted".to_owned(),
        ),
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => (
            Signature,
            "join token's signature does not verify with any configured key".to_owned(),
        ),
        ErrorKind::InvalidClaimFormat(claim) => (
            Malformed,
            format!("join token's `{claim}` has the wrong type"),
        ),
        other => (Malformed, format!("join token is malformed: {other:?}")),
    };
    Refusal::new(failure, message)
}

/// Whether a token that jsonwebtoken could not read declares `alg: none`
/// (jsonwebtoken has no such algorithm, so it only says "unknown"): worth
/// its own reason, as the classic forgery.
fn alg_is_none(token: &str) -> bool {
    use base64::Engine;
    #[derive(Deserialize)]
    struct Alg {
        alg: String,
    }
    let Some(header) = token.split('.').next() else {
        return false;
    };
    let Ok(bytes) =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header.trim_end_matches('='))
    else {
        return false;
    };
    serde_json::from_slice::<Alg>(&bytes).is_ok_and(|h| h.alg.eq_ignore_ascii_case("none"))
}

/// A PEM public key and the one algorithm it verifies.
fn load_public_key(path: &Path) -> Result<(Algorithm, DecodingKey), KeyError> {
    let refuse = |message: String| KeyError {
        path: path.display().to_string(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| refuse(format!("cannot read: {e}")))?;
    let mut pem = Vec::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(|e| refuse(format!("cannot read: {e}")))?;
    if pem.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(refuse(format!(
            "over {MAX_KEY_FILE_BYTES} bytes: not a public key"
        )));
    }
    let candidates = [
        (Algorithm::RS256, DecodingKey::from_rsa_pem(&pem)),
        (Algorithm::ES256, DecodingKey::from_ec_pem(&pem)),
        (Algorithm::EdDSA, DecodingKey::from_ed_pem(&pem)),
    ];
    let Some((alg, key)) = candidates
        .into_iter()
        .find_map(|(alg, key)| key.ok().map(|k| (alg, k)))
    else {
        return Err(refuse(
            "not a PEM public key (RSA, EC P-256 or Ed25519; a private key or a certificate does not do)".into(),
        ));
    };
    // Building a verifier is what finds a key the algorithm cannot use (an
    // EC key on P-384 for ES256): check it now, not on the first client.
    // A made-up signature then fails to verify, which is the good outcome.
    match jsonwebtoken::crypto::verify("AAAA", b"e30.e30", &key, alg) {
        Ok(_) => Ok((alg, key)),
        Err(e) => Err(refuse(format!("cannot be used for {alg:?}: {e}"))),
    }
}

/// Finds a request's token: the `token` query parameter or the
/// `Authorization: Bearer` header (one of each at most). Both may be given
/// if they agree. `None` when there is none.
pub fn token_from<'a>(
    query: Option<&'a str>,
    authorization: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<String>, Refusal> {
    let in_query = query_param(query, TOKEN_PARAM)
        .map_err(|e| Refusal::new(Failure::Malformed, e.to_string()))?;
    let mut headers = authorization.into_iter();
    let in_header = match (headers.next(), headers.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => {
            return Err(Refusal::new(
                Failure::Malformed,
                "more than one Authorization header",
            ))
        }
        (Some(value), None) => Some(bearer(value)?),
    };
    match (in_query, in_header) {
        (Some(q), Some(h)) if *q != *h => Err(Refusal::new(
            Failure::Malformed,
            "two different join tokens: one in the query, another in Authorization",
        )),
        (Some(q), _) => Ok(Some(q.into_owned())),
        (None, h) => Ok(h),
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is
/// case-insensitive, RFC 9110 11.1).
fn bearer(value: &[u8]) -> Result<String, Refusal> {
    let bad = || Refusal::new(Failure::Malformed, "Authorization must be `Bearer <token>`");
    let value = std::str::from_utf8(value).map_err(|_| bad())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(bad)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(bad());
    }
    Ok(token.to_owned())
}

/// A token whose claims could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("cannot mint a token: {0}")]
pub struct MintError(String);

/// Signs `claims` with HS256 and `secret`: what `roompin-balancer token`
/// prints, and what tests join with.
pub fn mint_hs256(secret: &str, claims: &Claims) -> Result<String, MintError> {
    let key = EncodingKey::from_secret(secret.as_bytes()).map_err(|e| MintError(e.to_string()))?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key)
        .map_err(|e| MintError(e.to_string()))
}

/// Signs `claims` with a PEM private key (RSA, P-256 or Ed25519) for `alg`;
/// for tests and tools that stand in for a backend with its own keys.
pub fn mint_with_pem(pem: &[u8], alg: Algorithm, claims: &Claims) -> Result<String, MintError> {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
        other => {
            return Err(MintError(format!(
                "{other:?} is not a public-key algorithm here"
            )))
        }
    }
    .map_err(|e| MintError(e.to_string()))?;
    jsonwebtoken::encode(&Header::new(alg), claims, &key).map_err(|e| MintError(e.to_string()))
}

/// Seconds since the Unix epoch, for `exp`, `nbf` and `iat`.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The folder a config file's relative key paths are taken from.
pub fn key_base(config_path: &Path) -> PathBuf {
    config_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
