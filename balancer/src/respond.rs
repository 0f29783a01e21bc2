//! The balancer's own answers on a raw client stream (the front's refusals
//! and the WebSocket path's errors), and how such a connection is closed.

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long a refused client may keep sending before it is cut off.
const LINGER: Duration = Duration::from_secs(2);
/// How much of it is read (and dropped) in that time.
const LINGER_BYTES: usize = 256 * 1024;

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// A complete plain-text response that closes the connection.
pub fn plain(status: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{body}",
        reason_phrase(status),
        body.len()
    )
    .into_bytes()
}

/// Sends `response` and closes: the write side first, then whatever the
/// client still sends is read and dropped for a moment, so that closing
/// with unread bytes (a head over the cap, a refused body) does not reset
/// the connection before the client has read the answer.
pub async fn and_close<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    response: &[u8],
) {
    let sent = tokio::time::timeout(LINGER, async {
        stream.write_all(response).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(LINGER, async {
        // On the heap: a buffer on the stack would be kept in the future
        // of every connection that may refuse, refused or not.
        let mut sink = vec![0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_says_its_length_and_closes() {
        let r = String::from_utf8(plain(431, "too big\n")).expect("text");
        assert!(
            r.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{r}"
        );
        assert!(
            r.contains("content-length: 8\r\n") && r.contains("connection: close\r\n"),
            "{r}"
        );
        assert!(r.ends_with("\r\n\r\ntoo big\n"), "{r}");
    }
}
