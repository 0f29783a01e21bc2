//! Raw HTTP/1.1 and WebSocket bytes over TCP, for tests of what a client
//! library would never send: heads over a cap, heads sent a byte at a time,
//! frames pipelined behind an upgrade request, half-closes.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The key of every raw upgrade, and the accept a node answers it with.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A WebSocket upgrade request head for `target`, with `extra` header
/// lines (each ending in CRLF) before its blank line.
pub fn upgrade(target: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: roompin.test\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A masked client text frame (short payloads only).
pub fn client_text(text: &str) -> Vec<u8> {
    let payload = text.as_bytes();
    assert!(payload.len() < 126, "client_text is for short frames");
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// An unmasked server text frame (short payloads only).
pub fn server_text(text: &str) -> Vec<u8> {
    let payload = text.as_bytes();
    assert!(payload.len() < 126, "server_text is for short frames");
    let mut f = vec![0x81, payload.len() as u8];
    f.extend_from_slice(payload);
    f
}

/// The text payloads of the unmasked frames at the start of `bytes`
/// (stops at the first incomplete or non-text frame).
pub fn server_texts(mut bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while bytes.len() >= 2 && bytes[0] == 0x81 && bytes[1] & 0x80 == 0 {
        let (len, at) = match bytes[1] {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            n if n < 126 => (n as usize, 2),
            _ => break,
        };
        if bytes.len() < at + len {
            break;
        }
        out.push(String::from_utf8_lossy(&bytes[at..at + len]).into_owned());
        bytes = &bytes[at + len..];
    }
    out
}

/// Where the head in `bytes` ends (just past its blank line).
pub fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// The status code of a response.
pub fn status(bytes: &[u8]) -> Option<u16> {
    std::str::from_utf8(bytes.get(..12)?)
        .ok()?
        .strip_prefix("HTTP/1.1 ")?
        .get(..3)?
        .parse()
        .ok()
}

/// The body of a response (everything after its head).
pub fn body(bytes: &[u8]) -> String {
    head_end(bytes).map_or_else(String::new, |i| {
        String::from_utf8_lossy(&bytes[i..]).into_owned()
    })
}

/// Connects, sends `request`, and reads until the server closes (or
/// `within` passes, which fails).
pub async fn exchange(
    addr: SocketAddr,
    request: &[u8],
    within: Duration,
) -> anyhow::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request).await?;
    read_to_close(&mut s, within).await
}

/// Reads until the peer closes; fails if it is still open after `within`.
pub async fn read_to_close(s: &mut TcpStream, within: Duration) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let done = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    anyhow::ensure!(
        done.is_ok(),
        "still open after {within:?}; read {:?}",
        String::from_utf8_lossy(&out)
    );
    Ok(out)
}

/// Reads until `bytes` holds a head and `enough` says the rest is there.
pub async fn read_until(
    s: &mut TcpStream,
    within: Duration,
    enough: impl Fn(&[u8]) -> bool,
) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        while !enough(&out) {
            let n = s.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "closed after {:?}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
        Ok(())
    })
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "not enough within {within:?}: {:?}",
            String::from_utf8_lossy(&out)
        )
    })??;
    Ok(out)
}
