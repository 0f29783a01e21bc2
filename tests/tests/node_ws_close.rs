//! RFC 6455 at the node's edge, with a raw client: this file writes the
//! frames itself over a `TcpStream`, so it controls masking, opcodes and
//! payloads that a WebSocket library would refuse to send. Then the odd
//! HTTP requests, written byte by byte too. Every test talks to a node
//! directly (docs/PROTOCOL.md, "WebSocket close codes" and "HTTP
//! statuses").

use roompin_shared::protocol::close;
use roompin_tests::{eventually, get, metric, NodeProc, PATIENCE};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;

/// A frame as the node sent it.
#[derive(Debug, PartialEq, Eq)]
struct Frame {
    opcode: u8,
    payload: Vec<u8>,
}

impl Frame {
    /// The code and reason of a close frame (`None` for an empty one).
    fn close(&self) -> Option<(u16, String)> {
        assert_eq!(self.opcode, CLOSE, "not a close frame: {self:?}");
        let p = &self.payload;
        (p.len() >= 2).then(|| {
            (
                u16::from_be_bytes([p[0], p[1]]),
                String::from_utf8_lossy(&p[2..]).into_owned(),
            )
        })
    }
}

/// A WebSocket client that writes its frames by hand.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

/// A valid `Sec-WebSocket-Key` (RFC 6455's example).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

impl Raw {
    /// Sends `head` (a request head without its final blank line) and
    /// returns the response's status line and headers, and the connection.
    async fn request(addr: SocketAddr, head: &str) -> (String, Raw) {
        Raw::send_request(addr, &format!("{head}\r\n\r\n")).await
    }

    /// Sends a whole request as it is, and returns the response head.
    async fn send_request(addr: SocketAddr, request: &str) -> (String, Raw) {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(request.as_bytes())
            .await
            .expect("write request");
        let mut raw = Raw {
            tcp,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(raw.fill().await, "connection closed before a response head");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).into_owned();
        raw.buf.drain(..end);
        (head, raw)
    }

    /// Upgrades to `/websocket?meeting_id=<meeting>` and reads the welcome.
    async fn join(node: &NodeProc, meeting: &str) -> Raw {
        let head = upgrade_head(node.addr, &format!("/websocket?meeting_id={meeting}"), KEY);
        let (resp, mut raw) = Raw::request(node.addr, &head).await;
        assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
        let welcome = raw.frame().await.expect("welcome");
        assert_eq!(welcome.opcode, TEXT);
        assert!(
            String::from_utf8_lossy(&welcome.payload).contains("\"welcome\""),
            "{welcome:?}"
        );
        raw
    }

    /// The body of a response whose head was `head` (by its Content-Length).
    async fn body(&mut self, head: &str) -> String {
        let len = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or_else(|| panic!("no Content-Length in {head}"));
        while self.buf.len() < len {
            assert!(self.fill().await, "EOF inside the body");
        }
        String::from_utf8_lossy(&self.buf[..len]).into_owned()
    }

    /// More bytes from the node; false at EOF (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(PATIENCE, self.tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("nothing from the node within {PATIENCE:?}"),
        }
    }

    /// The next frame from the node (unmasked, unfragmented), or `None` at
    /// EOF.
    async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            if !self.fill().await {
                assert!(self.buf.is_empty(), "EOF inside a frame: {:?}", self.buf);
                return None;
            }
        }
    }

    /// Reads up to the node's close frame, skipping the others, and checks
    /// that the node then closes the TCP connection.
    async fn until_close(&mut self) -> Option<(u16, String)> {
        loop {
            let frame = self.frame().await.expect("a close frame before EOF");
            if frame.opcode == CLOSE {
                assert_eq!(self.frame().await, None, "frames after the close");
                return frame.close();
            }
        }
    }

    /// Writes one frame, masked as a client must unless `masked` is false.
    async fn send(&mut self, opcode: u8, payload: &[u8], masked: bool) {
        let mut out = vec![0x80 | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [0x12, 0x34, 0x56, 0x78];
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        self.tcp.write_all(&out).await.expect("write frame");
    }

    async fn send_close(&mut self, payload: &[u8]) {
        self.send(CLOSE, payload, true).await;
    }
}

/// One unmasked frame from the start of `buf`, and its length in bytes.
fn parse(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "the node masked a frame");
    let (len, at) = match buf[1] & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = buf.get(at..at + len)?.to_vec();
    let frame = Frame {
        opcode: buf[0] & 0x0f,
        payload,
    };
    Some((frame, at + len))
}

fn upgrade_head(addr: SocketAddr, target: &str, key: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}"
    )
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

async fn closes(node: &NodeProc, code: &str) -> f64 {
    let (_, text) = get(&node.url("/metrics")).await.expect("GET /metrics");
    metric(
        &text,
        &format!("roompin_node_closes_total{{code=\"{code}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Every client close frame is answered with a close frame: a valid code
/// is echoed with its reason, an empty close with an empty close. Then the
/// node closes the TCP connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_answered_with_its_own_code() {
    let node = NodeProc::with_toml("echo", "").await;
    for (code, reason) in [
        (1000, "bye"),
        (1001, ""),
        (1003, "no text"),
        (3000, "app"),
        (4321, "my reasons"),
    ] {
        let mut c = Raw::join(&node, "echo").await;
        c.send_close(&close_payload(code, reason.as_bytes())).await;
        assert_eq!(
            c.until_close().await,
            Some((code, reason.to_owned())),
            "close {code}"
        );
    }
    let mut c = Raw::join(&node, "echo").await;
    c.send_close(&[]).await;
    assert_eq!(c.until_close().await, None, "an empty close");
    // Counted by the code sent back; a client's own 3000-4999 as `other`.
    eventually(PATIENCE, "the closes counted", || async {
        let counted = (
            closes(&node, "1000").await,
            closes(&node, "other").await,
            closes(&node, "1005").await,
        );
        (counted == (1.0, 2.0, 1.0)).then_some(())
    })
    .await;
}

/// A close code RFC 6455 does not allow on the wire, or a 1-byte close
/// payload, is answered with 1002.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_close_code_is_answered_with_1002() {
    let node = NodeProc::with_toml("badclose", "").await;
    let mut payloads: Vec<Vec<u8>> = [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535]
        .iter()
        .map(|&code| close_payload(code, b""))
        .collect();
    payloads.push(vec![0x03]);
    for payload in payloads {
        let mut c = Raw::join(&node, "badclose").await;
        c.send_close(&payload).await;
        let (code, _) = c.until_close().await.expect("a close code");
        assert_eq!(code, close::PROTOCOL_ERROR, "close payload {payload:?}");
    }
}

/// Text that is not UTF-8, in a text frame or in a close frame's reason,
/// closes with 1007.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_text_or_close_reason_closes_with_1007() {
    let node = NodeProc::with_toml("utf8", "").await;
    let mut c = Raw::join(&node, "utf8").await;
    c.send(TEXT, b"{\"type\":\"message\",\"text\":\"\xff\xfe\"}", true)
        .await;
    assert_eq!(
        c.until_close().await,
        Some((close::INVALID_DATA, close::INVALID_DATA_REASON.into()))
    );
    let mut c = Raw::join(&node, "utf8").await;
    c.send_close(&close_payload(1000, b"caf\xc3")).await;
    assert_eq!(
        c.until_close().await,
        Some((close::INVALID_DATA, close::INVALID_DATA_REASON.into()))
    );
}

/// Frames that break the framing rules close with 1002: an unmasked client
/// frame, a reserved opcode, a fragmented or oversized control frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_framing_closes_with_1002() {
    let node = NodeProc::with_toml("framing", "").await;
    let mut c = Raw::join(&node, "framing").await;
    c.send(TEXT, b"{\"type\":\"message\",\"text\":\"x\"}", false)
        .await;
    assert_eq!(
        c.until_close().await,
        Some((close::PROTOCOL_ERROR, close::PROTOCOL_ERROR_REASON.into())),
        "unmasked"
    );
    let mut c = Raw::join(&node, "framing").await;
    c.send(0x3, b"", true).await;
    assert_eq!(c.until_close().await.map(|c| c.0), Some(1002), "opcode 3");
    let mut c = Raw::join(&node, "framing").await;
    c.send(PING, &[b'p'; 126], true).await;
    assert_eq!(
        c.until_close().await.map(|c| c.0),
        Some(1002),
        "126-byte ping"
    );
}

/// A client that drops its TCP connection without a close frame is counted
/// as 1006 (abnormal), not as a protocol error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_counts_as_1006() {
    let node = NodeProc::with_toml("drop", "").await;
    let before = (closes(&node, "1006").await, closes(&node, "1002").await);
    let c = Raw::join(&node, "drop").await;
    drop(c);
    eventually(PATIENCE, "the drop counted as 1006", || async {
        let now = (closes(&node, "1006").await, closes(&node, "1002").await);
        (now == (before.0 + 1.0, before.1)).then_some(())
    })
    .await;
}

/// A `Sec-WebSocket-Key` that is not 16 bytes of base64 (or is given twice)
/// gets 400, not 101.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_websocket_key_gets_400() {
    let node = NodeProc::with_toml("key", "").await;
    let target = "/websocket?meeting_id=key";
    for key in [
        "short",
        "dGhlIHNhbXBsZSBub25jZQ",
        "dGhlIHNhbXBsZSBub25jZR==",
        "dGhlIHNhbXBsZSBub25j*Q==",
        "dGhlIHNhbXBsZSBub25jZQ==dGhl",
        &format!("{KEY}\r\nSec-WebSocket-Key: {KEY}"),
    ] {
        let (resp, mut raw) = Raw::request(node.addr, &upgrade_head(node.addr, target, key)).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{key:?}: {resp}");
        let body = raw.body(&resp).await;
        assert!(body.contains("Sec-WebSocket-Key"), "{key:?}: {body}");
    }
    // No key at all is not an upgrade: 426, as before.
    let head = format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13",
        node.addr
    );
    let (resp, _) = Raw::request(node.addr, &head).await;
    assert!(resp.starts_with("HTTP/1.1 426"), "{resp}");
}

/// The odd requests get what the balancer gives them too: an absolute-form
/// target is routed by its path; no `Host`, or two, get 400; a body with
/// broken chunked framing gets 400 (not 413).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_requests_get_the_statuses_the_balancer_gives() {
    let node = NodeProc::with_toml("odd", "").await;
    let addr = node.addr;

    // Absolute-form, for a plain route and for an upgrade.
    let (resp, _) = Raw::request(
        addr,
        &format!("GET http://{addr}/healthz HTTP/1.1\r\nHost: {addr}"),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let head = upgrade_head(
        addr,
        &format!("http://{addr}/websocket?meeting_id=odd"),
        KEY,
    );
    let (resp, mut raw) = Raw::request(addr, &head).await;
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    let welcome = raw.frame().await.expect("welcome");
    assert!(String::from_utf8_lossy(&welcome.payload).contains("\"meeting_id\":\"odd\""));

    let publish = "POST /messages?meeting_id=odd HTTP/1.1\r\nConnection: close";
    let json = "{\"text\":\"hi\"}";
    let chunked = "Transfer-Encoding: chunked";
    let cases = [
        (
            "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n".to_owned(),
            400,
            "missing Host header",
        ),
        (
            format!(
                "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nHost: other\r\nConnection: close\r\n\r\n"
            ),
            400,
            "more than one Host header",
        ),
        (
            format!("{publish}\r\nContent-Length: {}\r\n\r\n{json}", json.len()),
            400,
            "missing Host header",
        ),
        // A chunk size that is not hex.
        (
            format!("{publish}\r\nHost: {addr}\r\n{chunked}\r\n\r\nzz\r\n{json}\r\n0\r\n\r\n"),
            400,
            "malformed request body",
        ),
        // A chunk longer than its size.
        (
            format!("{publish}\r\nHost: {addr}\r\n{chunked}\r\n\r\n3\r\n{json}\r\n0\r\n\r\n"),
            400,
            "malformed request body",
        ),
        // Well-formed chunks are fine.
        (
            format!(
                "{publish}\r\nHost: {addr}\r\n{chunked}\r\n\r\n{:x}\r\n{json}\r\n0\r\n\r\n",
                json.len()
            ),
            202,
            "\"seq\"",
        ),
    ];
    for (head, status, says) in cases {
        let (resp, mut raw) = Raw::send_request(addr, &head).await;
        assert!(
            resp.starts_with(&format!("HTTP/1.1 {status}")),
            "{head:?}: {resp}"
        );
        let body = raw.body(&resp).await;
        assert!(body.contains(says), "{head:?}: {body}");
    }
}
