//! Request and response heads at the edge, parsed with `httparse`: where a
//! head ends, whether a request is a WebSocket upgrade the balancer tunnels
//! itself or anything else that Pingora's `HttpProxy` serves, the checks
//! every request head passes first, and the head sent on to a node.
//!
//! Everything here is a pure function of the bytes (the reading is in
//! `read_head.rs`), so every rule has a table test below.

use crate::route::{Refusal, Route};
use roompin_shared::control::{BALANCER_HEADER, EPOCH_HEADER, SKIPPED_HEADER};

/// Header fields a request may carry. More gets 431, like a head over
/// `max_request_head_bytes`. Browsers send 10 to 20.
pub const MAX_HEADERS: usize = 100;

/// Header fields a node's answer to an upgrade may carry.
const MAX_RESPONSE_HEADERS: usize = 64;

/// Headers only the balancer may set on the way to a node: a client's own
/// would let it pose as a balancer (or steer a node's ownership check).
const SET_BY_BALANCER: [&str; 4] = [
    BALANCER_HEADER,
    EPOCH_HEADER,
    SKIPPED_HEADER,
    "x-forwarded-for",
];

/// Where the head in `buf` ends (the index just past its blank line), once
/// that line has arrived. `from` is where the bytes of the latest read
/// start, so a head trickling in byte by byte is scanned once, not once per
/// byte. Empty lines before the request line are skipped, as `httparse` does.
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = buf.iter().position(|b| *b != b'\r' && *b != b'\n')?;
    let mut i = from.saturating_sub(3).max(start);
    while let Some(off) = buf[i..].iter().position(|b| *b == b'\n') {
        let j = i + off;
        match (buf.get(j + 1), buf.get(j + 2)) {
            (Some(b'\n'), _) => return Some(j + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(j + 3),
            _ => i = j + 1,
        }
    }
    None
}

/// What the front does with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `GET /websocket` asking to upgrade to WebSocket over HTTP/1.1: the
    /// balancer routes it and tunnels the bytes itself.
    WebSocket,
    /// Anything else: Pingora's `HttpProxy` serves it (SSE, publish, the
    /// page, 404s, a `/websocket` that is not an upgrade).
    Http,
}

/// A request head that passed the edge checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspected {
    pub kind: Kind,
    pub route: Route,
    /// The path, also of an absolute-form target (`GET http://host/x`).
    pub path: String,
    pub query: Option<String>,
}

/// A request refused at the edge, before anything is routed.
fn refuse(status: u16, reason: &str) -> Refusal {
    Refusal::new(status, format!("{reason}\n"))
}

/// Parses a complete request head and applies the checks every request
/// passes, whatever its route. A refusal comes with the route it was for
/// (`Other` when the head did not even say), for the metrics.
pub fn inspect(head: &[u8]) -> Result<Inspected, (Route, Refusal)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let other = |r| (Route::Other, r);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(other(refuse(400, "malformed request head"))),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(other(refuse(
                431,
                &format!("more than {MAX_HEADERS} header fields"),
            )))
        }
        Err(e) => return Err(other(refuse(400, &format!("malformed request head: {e}")))),
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(other(refuse(400, "malformed request head")));
    };
    // `*` or an authority (CONNECT) has no path: Pingora answers those.
    let split = split_target(target);
    let route = split.map_or(Route::Other, |(path, _)| Route::of(path));
    let all: &[httparse::Header<'_>] = req.headers;
    let named = |name: &'static str| {
        all.iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
    };
    match named("host").count() {
        0 => return Err((route, refuse(400, "missing Host header"))),
        1 => {}
        _ => return Err((route, refuse(400, "more than one Host header"))),
    }
    if let (Some(authority), Some(host)) = (target_authority(target), named("host").next()) {
        // RFC 9112 3.2.2: a client sends a Host identical to the target's
        // authority. Pingora refuses a mismatch too; here it gets a reason.
        if !host
            .value
            .trim_ascii()
            .eq_ignore_ascii_case(authority.as_bytes())
        {
            return Err((
                route,
                refuse(400, "Host header differs from the request target"),
            ));
        }
    }
    let upgrade = named("upgrade").next().is_some();
    let has_body =
        named("content-length").next().is_some() || named("transfer-encoding").next().is_some();
    if upgrade && has_body {
        // An upgrade has no body. One that claims one is how a request is
        // smuggled past a proxy into the tunnel, so it goes nowhere.
        return Err((
            route,
            refuse(
                400,
                "an upgrade request must not carry Content-Length or Transfer-Encoding",
            ),
        ));
    }
    let (path, query) = split.unwrap_or(("", None));
    let websocket = route == Route::WebSocket
        && method == "GET"
        && version == 1
        && named("upgrade").any(|h| has_token(h.value, "websocket"))
        && named("connection").any(|h| has_token(h.value, "upgrade"));
    Ok(Inspected {
        kind: if websocket {
            Kind::WebSocket
        } else {
            Kind::Http
        },
        route,
        path: path.to_owned(),
        query: query.map(str::to_owned),
    })
}

/// `(path, query)` of an origin-form (`/x?y`) or absolute-form
/// (`http://host/x?y`) target; `None` for any other form.
pub fn split_target(target: &str) -> Option<(&str, Option<&str>)> {
    let origin = if target.starts_with('/') {
        target
    } else {
        let (scheme, rest) = target.split_once("://")?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return None;
        }
        match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
            // `http://host?q` has the empty path, which is "/".
            Some(i) => return Some(("/", Some(&rest[i + 1..]))),
            None => "/",
        }
    };
    Some(match origin.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (origin, None),
    })
}

/// The authority of an absolute-form target (`http://host:1/x` → `host:1`).
/// An origin-form target has none, even with `://` in its query
/// (`/websocket?back=https://x/`): that is a parameter, not a host (found
/// by the `head` fuzz target).
fn target_authority(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return None;
    }
    let (_, rest) = target.split_once("://")?;
    Some(rest.split(['/', '?']).next().unwrap_or(rest))
}

/// Whether a comma-separated header value lists `token` (any case).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The head sent to a node for an upgrade: the request line with `target`
/// (origin-form, HTTP/1.1), the client's headers as they came (names and
/// values untouched) minus those only a balancer may set, then `add`.
pub fn upstream_head(head: &[u8], target: &str, add: &[(&str, &str)]) -> Result<Vec<u8>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(refuse(400, "malformed request head")),
    }
    let method = req.method.unwrap_or("GET");
    let mut out = Vec::with_capacity(head.len() + 160);
    for part in [method.as_bytes(), b" ", target.as_bytes(), b" HTTP/1.1\r\n"] {
        out.extend_from_slice(part);
    }
    for h in req.headers.iter() {
        if SET_BY_BALANCER
            .iter()
            .any(|n| h.name.eq_ignore_ascii_case(n))
        {
            continue;
        }
        for part in [h.name.as_bytes(), b": ", h.value, b"\r\n"] {
            out.extend_from_slice(part);
        }
    }
    for (name, value) in add {
        for part in [name.as_bytes(), b": ", value.as_bytes(), b"\r\n"] {
            out.extend_from_slice(part);
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

/// What the balancer needs of a node's answer to an upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Its body's length, when the answer is not a 101 and says so.
    pub content_length: Option<u64>,
}

/// Parses a node's complete response head; `None` if it is not one.
pub fn parse_response(head: &[u8]) -> Option<ResponseHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    let content_length = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok());
    Some(ResponseHead {
        status: resp.code?,
        content_length,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /websocket?meeting_id=m HTTP/1.1\r\nHost: b\r\n\
        Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: k\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn the_end_of_a_head_is_found_however_it_arrives() {
        let head = UPGRADE.as_bytes();
        assert_eq!(head_end(head, 0), Some(head.len()));
        // Byte by byte: found exactly when its last byte arrives.
        for n in 1..head.len() {
            assert_eq!(head_end(&head[..n], n - 1), None, "at {n}");
        }
        assert_eq!(head_end(head, head.len() - 1), Some(head.len()));
        // Bare LFs, leading empty lines, bytes pipelined after the head.
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: x\n\nrest", 0), Some(24));
        assert_eq!(head_end(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", 0), Some(22));
        assert_eq!(head_end(b"\r\n\r\n", 0), None);
    }

    type Sorted = (Kind, Route, String, Option<String>);

    fn kind(head: &str) -> Result<Sorted, (u16, String)> {
        inspect(head.as_bytes())
            .map(|i| (i.kind, i.route, i.path, i.query))
            .map_err(|(_, r)| (r.status, r.reason))
    }

    #[test]
    fn requests_are_sorted_and_refused_by_their_head() {
        let ws = |p: &str| {
            Ok((
                Kind::WebSocket,
                Route::WebSocket,
                p.to_owned(),
                Some("meeting_id=m".to_owned()),
            ))
        };
        let http = |route, p: &str, q: Option<&str>| {
            Ok((Kind::Http, route, p.to_owned(), q.map(str::to_owned)))
        };
        let err = |status, word: &str| Err((status, word.to_owned()));
        let cases: Vec<(String, Result<_, (u16, String)>)> = vec![
            (UPGRADE.into(), ws("/websocket")),
            // Absolute form: routed by its path.
            (
                UPGRADE.replace("GET /websocket", "GET http://b/websocket"),
                ws("/websocket"),
            ),
            (
                UPGRADE.replace("GET /websocket", "GET http://B/websocket"),
                ws("/websocket"),
            ),
            (
                UPGRADE.replace("GET /websocket", "GET http://c:8080/websocket"),
                err(400, "Host header differs from the request target\n"),
            ),
            // `://` in the query of an origin-form target names no host.
            (
                UPGRADE.replace("meeting_id=m", "meeting_id=m&back=http://c:8080/x"),
                Ok((
                    Kind::WebSocket,
                    Route::WebSocket,
                    "/websocket".to_owned(),
                    Some("meeting_id=m&back=http://c:8080/x".to_owned()),
                )),
            ),
            (
                UPGRADE.replace("Upgrade: websocket", "Upgrade: WebSocket"),
                ws("/websocket"),
            ),
            (
                UPGRADE.replace("Connection: Upgrade", "Connection: keep-alive, Upgrade"),
                ws("/websocket"),
            ),
            // Not an upgrade we tunnel: Pingora's proxy serves it.
            (
                UPGRADE.replace("Upgrade: websocket\r\n", ""),
                http(Route::WebSocket, "/websocket", Some("meeting_id=m")),
            ),
            (
                UPGRADE.replace("HTTP/1.1", "HTTP/1.0"),
                http(Route::WebSocket, "/websocket", Some("meeting_id=m")),
            ),
            (
                UPGRADE.replace("GET", "POST"),
                http(Route::WebSocket, "/websocket", Some("meeting_id=m")),
            ),
            (
                UPGRADE.replace("/websocket", "/sse"),
                http(Route::Sse, "/sse", Some("meeting_id=m")),
            ),
            (
                "GET / HTTP/1.1\r\nHost: b\r\n\r\n".into(),
                http(Route::Page, "/", None),
            ),
            (
                "GET http://b HTTP/1.1\r\nHost: b\r\n\r\n".into(),
                http(Route::Page, "/", None),
            ),
            (
                "GET http://b?x HTTP/1.1\r\nHost: b\r\n\r\n".into(),
                http(Route::Page, "/", Some("x")),
            ),
            (
                "OPTIONS * HTTP/1.1\r\nHost: b\r\n\r\n".into(),
                http(Route::Other, "", None),
            ),
            (
                "POST /messages?meeting_id=m HTTP/1.1\r\nHost: b\r\nContent-Length: 2\r\n\r\n"
                    .into(),
                http(Route::Messages, "/messages", Some("meeting_id=m")),
            ),
            // Refused at the edge.
            (
                UPGRADE.replace("Host: b\r\n", ""),
                err(400, "missing Host header\n"),
            ),
            (
                UPGRADE.replace("Host: b\r\n", "Host: b\r\nhost: c\r\n"),
                err(400, "more than one Host header\n"),
            ),
            (
                "GET /sse HTTP/1.1\r\n\r\n".into(),
                err(400, "missing Host header\n"),
            ),
            (
                UPGRADE.replace("\r\n\r\n", "\r\nContent-Length: 5\r\n\r\n"),
                err(
                    400,
                    "an upgrade request must not carry Content-Length or Transfer-Encoding\n",
                ),
            ),
            (
                UPGRADE.replace("\r\n\r\n", "\r\nTransfer-Encoding: chunked\r\n\r\n"),
                err(
                    400,
                    "an upgrade request must not carry Content-Length or Transfer-Encoding\n",
                ),
            ),
            (
                "GET /x HTTP/1.1\r\nHost b\r\n\r\n".into(),
                err(400, "malformed request head: invalid header name\n"),
            ),
        ];
        for (head, want) in cases {
            assert_eq!(kind(&head), want, "{head:?}");
        }
        let many = format!(
            "GET / HTTP/1.1\r\nHost: b\r\n{}\r\n",
            "X-A: 1\r\n".repeat(MAX_HEADERS)
        );
        assert_eq!(kind(&many).map_err(|e| e.0), Err(431));
    }

    #[test]
    fn targets_split_into_path_and_query() {
        assert_eq!(split_target("/a?b=c"), Some(("/a", Some("b=c"))));
        assert_eq!(split_target("/a"), Some(("/a", None)));
        assert_eq!(split_target("http://h:1/ws?q"), Some(("/ws", Some("q"))));
        assert_eq!(split_target("HTTPS://h/ws"), Some(("/ws", None)));
        assert_eq!(split_target("http://h?q"), Some(("/", Some("q"))));
        assert_eq!(split_target("http://h"), Some(("/", None)));
        assert_eq!(split_target("*"), None);
        assert_eq!(split_target("h:443"), None);
        assert_eq!(split_target("ftp://h/x"), None);
    }

    #[test]
    fn the_upstream_head_keeps_the_client_headers_but_not_the_balancers() {
        let head = UPGRADE.replace(
            "\r\n\r\n",
            "\r\nX-Roompin-Skipped: node-a\r\nx-roompin-epoch: 99\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
        );
        let out = upstream_head(
            head.as_bytes(),
            "/websocket?meeting_id=m",
            &[("x-roompin-epoch", "3"), ("x-forwarded-for", "127.0.0.1")],
        )
        .expect("valid");
        let out = String::from_utf8(out).expect("text");
        assert_eq!(
            out,
            "GET /websocket?meeting_id=m HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\
             x-roompin-epoch: 3\r\nx-forwarded-for: 127.0.0.1\r\n\r\n"
        );
    }

    #[test]
    fn responses() {
        let r = parse_response(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(
            r,
            Some(ResponseHead {
                status: 101,
                content_length: None
            })
        );
        let r = parse_response(b"HTTP/1.1 421 Misdirected\r\ncontent-length: 12\r\n\r\n");
        assert_eq!(
            r,
            Some(ResponseHead {
                status: 421,
                content_length: Some(12)
            })
        );
        assert_eq!(parse_response(b"SSH-2.0\r\n\r\n"), None);
    }
}
