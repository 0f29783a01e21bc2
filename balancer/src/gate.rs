//! Who may open a member request (`/websocket`, `/sse`, `/messages`) at
//! the edge: the page's `Origin` must be listed in `allowed_origins` (the
//! defence against cross-site WebSocket hijacking), and with `[auth]` the
//! request must carry a join token for its meeting (the rules are in
//! `roompin_shared::auth`, the same code the nodes run again).
//!
//! The front asks the gate about every request head before anything is
//! routed, on both paths, so a refused request never costs a node a byte.
//! This module only decides; the front answers and counts.

use roompin_shared::auth::{token_from, Failure, KeyError, Verifier};
use roompin_shared::config::BalancerConfig;
use roompin_shared::meeting_id::query_param;
use roompin_shared::MeetingId;
use std::path::Path;

use crate::route::Route;

/// The query parameter a client names itself with (the token's `sub`
/// must agree with it).
const USER_PARAM: &str = "user";

/// The edge's access rules, built from one config.
#[derive(Debug)]
pub struct Gate {
    verifier: Option<Verifier>,
    origins: Vec<String>,
    hash_param: String,
}

/// What a member request's head shows the gate.
#[derive(Debug, Default)]
pub struct Asked<'a> {
    pub query: Option<&'a str>,
    /// Every `Origin` field of the head.
    pub origin: Vec<&'a [u8]>,
    /// Every `Authorization` field of the head.
    pub authorization: Vec<&'a [u8]>,
}

/// Why a request was turned away: its status, its plain-text reason, and
/// what it is counted as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub status: u16,
    pub reason: String,
    pub counted: Counted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// `roompin_balancer_auth_failures_total{reason}`.
    Auth(Failure),
    /// `roompin_balancer_origin_refusals_total`.
    Origin,
    /// Neither: a malformed meeting or user, answered as the router would.
    Request,
}

impl Gate {
    /// Reads `[auth]`'s key files (relative to `base`, the config file's
    /// folder); a bad one is refused, naming it.
    pub fn new(config: &BalancerConfig, base: &Path) -> Result<Gate, KeyError> {
        let verifier = match &config.auth {
            Some(auth) => Some(Verifier::new(auth, base)?),
            None => None,
        };
        Ok(Gate {
            verifier,
            origins: config.allowed_origins.clone(),
            hash_param: config.hash_param.clone(),
        })
    }

    /// Whether join tokens are required.
    pub fn auth(&self) -> bool {
        self.verifier.is_some()
    }

    /// Lets a request through, or says why not. Only member routes are
    /// gated: the page, the 404s and the rest pass.
    pub fn check(&self, route: Route, asked: &Asked<'_>) -> Result<(), Denial> {
        if !matches!(route, Route::WebSocket | Route::Sse | Route::Messages) {
            return Ok(());
        }
        self.check_origin(&asked.origin)?;
        let Some(verifier) = &self.verifier else {
            return Ok(());
        };
        let bad = |reason: String| Denial {
            status: 400,
            reason: format!("{reason}\n"),
            counted: Counted::Request,
        };
        let meeting =
            MeetingId::from_query(asked.query, &self.hash_param).map_err(|e| bad(e.to_string()))?;
        let user = query_param(asked.query, USER_PARAM).map_err(|e| bad(e.to_string()))?;
        let refused = |r: roompin_shared::auth::Refusal| Denial {
            status: r.status(),
            reason: format!("{}\n", r.message),
            counted: Counted::Auth(r.failure),
        };
        let token =
            token_from(asked.query, asked.authorization.iter().copied()).map_err(refused)?;
        verifier
            .verify(token.as_deref(), meeting.as_str(), user.as_deref())
            .map(|_| ())
            .map_err(refused)
    }

    fn check_origin(&self, origin: &[&[u8]]) -> Result<(), Denial> {
        if self.origins.is_empty() {
            return Ok(());
        }
        let deny = |reason: String| Denial {
            status: 403,
            reason,
            counted: Counted::Origin,
        };
        match origin {
            // A native client: no page, nothing to hijack.
            [] => Ok(()),
            [one] => {
                let listed = std::str::from_utf8(one)
                    .ok()
                    .map(str::trim)
                    .is_some_and(|o| self.origins.iter().any(|a| a == o));
                if listed {
                    Ok(())
                } else {
                    let shown = String::from_utf8_lossy(&one[..one.len().min(200)]).into_owned();
                    Err(deny(format!(
                        "origin {shown:?} is not allowed here (allowed_origins)\n"
                    )))
                }
            }
            _ => Err(deny("more than one Origin header\n".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roompin_shared::auth::{mint_hs256, now_secs, Claims};

    /// A verdict as the tables write it.
    type Verdict = Result<(), (u16, Counted)>;
    /// A query, its `Authorization` fields, and the verdict.
    type TokenCase<'a> = (Option<&'a str>, Vec<&'a [u8]>, Verdict);

    const SECRET: &str = "a-gate-test-secret-of-32-bytes-at-least";

    fn gate(extra: &str) -> Gate {
        let toml = format!(
            "listen = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:2\"\nmoves = false\n{extra}\n\
             [[upstream]]\nid = \"a\"\naddr = \"127.0.0.1:3\"\n"
        );
        let config = BalancerConfig::from_toml(Path::new("t.toml"), &toml).expect("config");
        Gate::new(&config, Path::new(".")).expect("gate")
    }

    fn token(meeting: &str, sub: &str) -> String {
        let claims = Claims {
            sub: sub.into(),
            meeting_id: meeting.into(),
            exp: now_secs() + 60,
            nbf: None,
            iat: None,
            iss: None,
            aud: None,
        };
        mint_hs256(SECRET, &claims).expect("mint")
    }

    #[test]
    fn origins() {
        let g = gate("allowed_origins = [\"https://chat.example.com\", \"http://localhost:8080\"]");
        let ask = |origin: Vec<&'static [u8]>| Asked {
            query: Some("meeting_id=m"),
            origin,
            authorization: vec![],
        };
        let status = |route, origin: Vec<&'static [u8]>| {
            g.check(route, &ask(origin))
                .map_err(|d| (d.status, d.counted))
        };
        let denied = Err((403, Counted::Origin));
        #[rustfmt::skip]
        let cases: Vec<(Route, Vec<&'static [u8]>, Verdict)> = vec![
            (Route::WebSocket, vec![b"https://chat.example.com"], Ok(())),
            (Route::Sse, vec![b"http://localhost:8080"], Ok(())),
            (Route::WebSocket, vec![], Ok(())),
            (Route::WebSocket, vec![b"https://evil.example"], denied),
            (Route::Messages, vec![b"https://chat.example.com.evil.example"], denied),
            (Route::WebSocket, vec![b"https://CHAT.example.com"], denied),
            (Route::WebSocket, vec![b"null"], denied),
            (Route::WebSocket, vec![b"\xff\xfe"], denied),
            (Route::WebSocket, vec![b"https://chat.example.com", b"https://chat.example.com"], denied),
            // Not a member route: the page may be loaded from anywhere.
            (Route::Page, vec![b"https://evil.example"], Ok(())),
        ];
        for (route, origin, want) in cases {
            let shown = format!("{route:?} {origin:?}");
            assert_eq!(status(route, origin), want, "{shown}");
        }
        // No list: any origin.
        assert!(gate("")
            .check(Route::WebSocket, &ask(vec![b"https://evil.example"]))
            .is_ok());
    }

    #[test]
    fn tokens() {
        let g = gate(&format!("\n[auth]\nhs256_secrets = [\"{SECRET}\"]\n"));
        let good = token("m", "ann");
        let other = token("other", "ann");
        let bearer = format!("Bearer {good}");
        let q_good = format!("meeting_id=m&token={good}");
        let q_user = format!("meeting_id=m&user=bob&token={good}");
        let q_same = format!("meeting_id=m&user=ann&token={good}");
        let q_other = format!("meeting_id=m&token={other}");
        let cases: Vec<TokenCase<'_>> = vec![
            (Some(&q_good), vec![], Ok(())),
            (Some("meeting_id=m"), vec![bearer.as_bytes()], Ok(())),
            (Some(&q_same), vec![], Ok(())),
            (
                Some("meeting_id=m"),
                vec![],
                Err((401, Counted::Auth(Failure::Missing))),
            ),
            (
                Some("meeting_id=m&token=abc"),
                vec![],
                Err((401, Counted::Auth(Failure::Malformed))),
            ),
            (
                Some(&q_user),
                vec![],
                Err((403, Counted::Auth(Failure::WrongUser))),
            ),
            (
                Some(&q_other),
                vec![],
                Err((403, Counted::Auth(Failure::WrongMeeting))),
            ),
            (Some("token=x"), vec![], Err((400, Counted::Request))),
        ];
        for (query, authorization, want) in cases {
            let asked = Asked {
                query,
                origin: vec![],
                authorization,
            };
            let got = g
                .check(Route::WebSocket, &asked)
                .map_err(|d| (d.status, d.counted));
            assert_eq!(got, want, "{query:?}");
        }
        // The page needs no token: it takes one from its own URL.
        assert!(g.check(Route::Page, &Asked::default()).is_ok());
        assert!(g.auth() && !gate("").auth());
    }
}
