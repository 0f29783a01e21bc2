//! Reading one head off a stream, within a size cap and a deadline for the
//! whole head: the edge's defence against heads that never end (431) and
//! against clients that send them a byte at a time (slowloris, 408).

use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use crate::head::head_end;

/// How much is asked of the socket per read while a head comes in. A
/// browser's upgrade request is 400 to 800 bytes.
const READ_STEP: usize = 2048;

/// Why no head was read.
#[derive(Debug)]
pub enum NoHead {
    /// The peer closed (or, with `partial`, closed half-way through a head).
    Closed {
        partial: bool,
    },
    /// The deadline passed (with `partial`: a head had started).
    TimedOut {
        partial: bool,
    },
    /// More than the cap arrived without the head's end.
    TooLarge,
    /// The server is shutting down (only while waiting for a head to start).
    Shutdown,
    Io(io::Error),
}

/// When a head must have arrived.
#[derive(Clone, Copy, Debug)]
pub enum Deadline {
    /// The whole head by then (a connection's first request: counted from
    /// the connection's start).
    Whole(Instant),
    /// A kept-alive connection: the head's first byte by `idle`, then the
    /// whole head within `head` of that byte.
    AfterIdle { idle: Instant, head: Duration },
}

/// A head read into `buf`: `buf[..head_len]` is the head, anything after it
/// was sent right behind it (a pipelined request, or the first WebSocket
/// frames of an eager client).
#[derive(Debug)]
pub struct Head {
    pub buf: Vec<u8>,
    pub head_len: usize,
}

/// Reads until a complete head is in the buffer. `max` caps the head;
/// `shutdown` ends the wait for a head that has not started.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
    deadline: Deadline,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Head, NoHead> {
    tokio::pin!(shutdown);
    let mut buf = Vec::new();
    let mut until = match deadline {
        Deadline::Whole(at) => at,
        Deadline::AfterIdle { idle, .. } => idle,
    };
    loop {
        let before = buf.len();
        buf.reserve(READ_STEP.min(max + 1 - before.min(max)).max(1));
        let read = tokio::select! {
            r = tokio::time::timeout_at(until, stream.read_buf(&mut buf)) => r,
            _ = &mut shutdown, if before == 0 => return Err(NoHead::Shutdown),
        };
        let n = match read {
            Err(_) => {
                return Err(NoHead::TimedOut {
                    partial: before > 0,
                })
            }
            Ok(Err(e)) => return Err(NoHead::Io(e)),
            Ok(Ok(0)) => {
                return Err(NoHead::Closed {
                    partial: before > 0,
                })
            }
            Ok(Ok(n)) => n,
        };
        if before == 0 {
            if let Deadline::AfterIdle { head, .. } = deadline {
                until = Instant::now() + head;
            }
        }
        if let Some(head_len) = head_end(&buf, before) {
            if head_len > max {
                return Err(NoHead::TooLarge);
            }
            return Ok(Head { buf, head_len });
        }
        if buf.len() > max {
            return Err(NoHead::TooLarge);
        }
        debug_assert!(n > 0);
    }
}

/// A node's response head: like [`read_head`], with one deadline and no
/// shutdown (the node answers at once or not at all).
pub async fn read_response_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
    within: Duration,
) -> Result<Head, NoHead> {
    read_head(
        stream,
        max,
        Deadline::Whole(Instant::now() + within),
        std::future::pending(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    fn far() -> Deadline {
        Deadline::Whole(Instant::now() + Duration::from_secs(5))
    }

    #[tokio::test]
    async fn a_head_and_what_follows_it() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&[HEAD, b"PIPELINED"].concat())
            .await
            .expect("write");
        let h = read_head(&mut b, 1024, far(), std::future::pending())
            .await
            .map_err(|e| format!("{e:?}"))
            .expect("a head");
        assert_eq!(&h.buf[..h.head_len], HEAD);
        assert_eq!(&h.buf[h.head_len..], b"PIPELINED");
    }

    #[tokio::test]
    async fn too_large_closed_and_late() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&vec![b'a'; 3000]).await.expect("write");
        let r = read_head(&mut b, 1024, far(), std::future::pending()).await;
        assert!(matches!(r, Err(NoHead::TooLarge)), "{r:?}");

        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(b"GET / HT").await.expect("write");
        drop(a);
        let r = read_head(&mut b, 1024, far(), std::future::pending()).await;
        assert!(matches!(r, Err(NoHead::Closed { partial: true })), "{r:?}");

        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(b"GET / HT").await.expect("write");
        let soon = Deadline::Whole(Instant::now() + Duration::from_millis(50));
        let r = read_head(&mut b, 1024, soon, std::future::pending()).await;
        assert!(
            matches!(r, Err(NoHead::TimedOut { partial: true })),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn an_idle_keepalive_ends_at_shutdown_but_not_mid_head() {
        let (_a, mut b) = tokio::io::duplex(1 << 16);
        let idle = Deadline::AfterIdle {
            idle: Instant::now() + Duration::from_secs(5),
            head: Duration::from_secs(5),
        };
        let r = read_head(&mut b, 1024, idle, std::future::ready(())).await;
        assert!(matches!(r, Err(NoHead::Shutdown)), "{r:?}");
    }
}
