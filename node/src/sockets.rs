//! Every TCP connection the node holds, counted against `max_sockets`, so
//! that a flood of connections meets the node's own cap and never its
//! descriptor limit (at which `accept` fails for everyone, health checks
//! and control pushes included).
//!
//! At the cap, the oldest connection with no request in flight (a head
//! still arriving, or a keep-alive connection between requests) is closed
//! to make room: that is what a slowloris holds, while a joining client
//! sends its head at once and is served. With no such connection to close
//! (every one is a live session), the new one gets a 503 and is closed.
//!
//! A connection is counted from `accept` until its socket closes, also
//! after an upgrade (the count travels with the socket, [`Counted`]), and
//! it is "busy" while a request is in flight, from its head to the end of
//! its response body (an SSE stream is busy as long as it streams). After
//! a response, the next head must come within `keep_alive_timeout_ms`.

use axum::body::Body;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use prometheus::{IntCounter, IntGauge};

/// Descriptors kept out of `max_sockets`' reach: listeners, connections
/// to peers and relays, log files.
pub const FD_RESERVE: u64 = 512;
/// Evictions in flight (closed, not yet gone) beyond which a new
/// connection is refused instead: the count stays near the cap.
const MAX_EVICTING: usize = 1024;

/// What a new connection gets.
pub enum Admit {
    Open(Arc<Conn>),
    /// At the cap with nothing to close: answer 503 and close.
    Refuse,
}

pub struct Sockets {
    max: usize,
    state: Mutex<State>,
    evicting: AtomicUsize,
    next_id: AtomicU64,
    /// `roompin_node_sockets`.
    gauge: IntGauge,
    /// `roompin_node_socket_evictions_total`.
    evictions: IntCounter,
}

#[derive(Default)]
struct State {
    open: usize,
    /// Connections with no request in flight, oldest first (by the time
    /// they went idle).
    idle: BTreeMap<u64, Arc<Conn>>,
}

/// One connection's state, shared by its socket, its service and the
/// idle list.
pub struct Conn {
    id: u64,
    /// The key it has in the idle list while it is there.
    idle_key: Mutex<Option<u64>>,
    activity: watch::Sender<Activity>,
    /// Cancelled to close the connection to make room.
    evict: CancellationToken,
    sockets: Arc<Sockets>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Activity {
    /// Requests in flight.
    busy: u32,
    /// Responses finished: 0 until the first one.
    served: u64,
    /// Handed over to a WebSocket session: never idle again.
    upgraded: bool,
}

impl Sockets {
    pub fn new(max: usize, gauge: IntGauge, evictions: IntCounter) -> Arc<Sockets> {
        Arc::new(Sockets {
            max,
            state: Mutex::new(State::default()),
            evicting: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            gauge,
            evictions,
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A place for a just-accepted connection.
    pub fn admit(self: &Arc<Self>) -> Admit {
        let mut state = self.state.lock();
        if state.open >= self.max {
            let victim = (self.evicting.load(Ordering::Acquire) < MAX_EVICTING)
                .then(|| state.idle.pop_first())
                .flatten();
            let Some((_, victim)) = victim else {
                return Admit::Refuse;
            };
            *victim.idle_key.lock() = None;
            self.evicting.fetch_add(1, Ordering::AcqRel);
            victim.evict.cancel();
            self.evictions.inc();
        }
        state.open += 1;
        self.gauge.set(state.open as i64);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            id,
            idle_key: Mutex::new(Some(id)),
            activity: watch::Sender::new(Activity::default()),
            evict: CancellationToken::new(),
            sockets: self.clone(),
        });
        state.idle.insert(id, conn.clone());
        Admit::Open(conn)
    }

    fn closed(&self, conn: &Conn) {
        let mut state = self.state.lock();
        if let Some(key) = conn.idle_key.lock().take() {
            state.idle.remove(&key);
        }
        state.open = state.open.saturating_sub(1);
        self.gauge.set(state.open as i64);
        if conn.evict.is_cancelled() {
            self.evicting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn set_idle(&self, conn: &Arc<Conn>, idle: bool) {
        let mut state = self.state.lock();
        let mut key = conn.idle_key.lock();
        match (idle, *key) {
            (true, None) if !conn.evict.is_cancelled() => {
                let k = self.next_id.fetch_add(1, Ordering::Relaxed);
                state.idle.insert(k, conn.clone());
                *key = Some(k);
            }
            (false, Some(k)) => {
                state.idle.remove(&k);
                *key = None;
            }
            _ => {}
        }
    }

    /// How many connections are open now.
    pub fn open(&self) -> usize {
        self.state.lock().open
    }
}

impl Conn {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Resolves when the node closes this connection to make room.
    pub async fn evicted(&self) {
        self.evict.cancelled().await
    }

    /// Resolves once the connection has sat between requests, after a
    /// response, for `timeout`.
    pub async fn kept_alive_for(&self, timeout: Duration) {
        let mut rx = self.activity.subscribe();
        loop {
            let now = *rx.borrow_and_update();
            if now.served > 0 && now.busy == 0 && !now.upgraded {
                if tokio::time::timeout(timeout, rx.changed()).await.is_err() {
                    return;
                }
            } else if rx.changed().await.is_err() {
                // The connection is gone.
                std::future::pending::<()>().await;
            }
        }
    }

    /// A request's head arrived: busy until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.activity.send_modify(|a| a.busy += 1);
        self.sockets.set_idle(self, false);
        Busy {
            conn: Some(self.clone()),
        }
    }

    /// Wraps the socket so that the count goes with it, also into an
    /// upgraded WebSocket.
    pub fn wrap(self: &Arc<Self>, io: TcpStream) -> Counted {
        Counted {
            io,
            conn: self.clone(),
        }
    }
}

/// A request in flight. Its response decides how long: to the end of the
/// body ([`Busy::finish`]), or for good on an upgrade.
pub struct Busy {
    conn: Option<Arc<Conn>>,
}

impl Busy {
    /// Keeps the connection busy until the response's body has been sent.
    pub fn finish(mut self, resp: axum::response::Response) -> axum::response::Response {
        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            if let Some(conn) = self.conn.take() {
                conn.activity.send_modify(|a| a.upgraded = true);
            }
            return resp;
        }
        resp.map(move |body| {
            Body::new(body.map_frame(move |frame| {
                let _held = &self;
                frame
            }))
        })
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let mut idle = false;
        conn.activity.send_modify(|a| {
            a.busy = a.busy.saturating_sub(1);
            a.served += 1;
            idle = a.busy == 0 && !a.upgraded;
        });
        if idle {
            conn.sockets.set_idle(&conn, true);
        }
    }
}

/// A socket that gives its place back when it closes.
pub struct Counted {
    io: TcpStream,
    conn: Arc<Conn>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.conn.sockets.closed(&self.conn);
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The answer to a connection refused at the cap, written without
/// waiting (a socket just accepted has room for it) before it is closed.
pub fn refuse(tcp: &TcpStream, max: usize) {
    let body = format!("this node holds its limit of {max} connections (max_sockets); retry\n");
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.try_write(resp.as_bytes());
}

/// The soft limit of open descriptors of this process, if it can be read.
pub fn fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// `max_sockets`, held below the descriptor limit with [`FD_RESERVE`] to
/// spare.
pub fn cap(max_sockets: usize, fd_limit: Option<u64>) -> usize {
    match fd_limit {
        Some(fds) => {
            let room = fds.saturating_sub(FD_RESERVE).max(1);
            max_sockets.min(usize::try_from(room).unwrap_or(usize::MAX))
        }
        None => max_sockets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sockets(max: usize) -> Arc<Sockets> {
        let gauge = IntGauge::new("sockets", "test").expect("gauge");
        let evictions = IntCounter::new("evictions", "test").expect("counter");
        Sockets::new(max, gauge, evictions)
    }

    fn open(a: Admit) -> Arc<Conn> {
        match a {
            Admit::Open(c) => c,
            Admit::Refuse => panic!("refused"),
        }
    }

    #[test]
    fn the_cap_stays_below_the_descriptor_limit() {
        assert_eq!(cap(16_000, Some(20_000)), 16_000);
        assert_eq!(cap(16_000, Some(10_000)), 10_000 - FD_RESERVE as usize);
        assert_eq!(cap(16_000, Some(100)), 1);
        assert_eq!(cap(16_000, None), 16_000);
    }

    #[test]
    fn at_the_cap_the_oldest_idle_connection_goes() {
        let s = sockets(2);
        let a = open(s.admit());
        let b = open(s.admit());
        // a is busy (a request in flight): b is the one to go.
        let busy = a.begin();
        let c = open(s.admit());
        assert!(b.evict.is_cancelled() && !a.evict.is_cancelled());
        // Nothing idle but c now; c goes for d. Then nothing: refused.
        let d = open(s.admit());
        assert!(c.evict.is_cancelled());
        let _busy_d = d.begin();
        assert!(matches!(s.admit(), Admit::Refuse));
        // a's request ends: a is idle again, and next in line.
        drop(busy);
        let _e = open(s.admit());
        assert!(a.evict.is_cancelled());
    }

    #[tokio::test]
    async fn an_upgraded_connection_is_never_evicted() {
        let s = sockets(1);
        let a = open(s.admit());
        let resp = axum::response::Response::builder()
            .status(http::StatusCode::SWITCHING_PROTOCOLS)
            .body(Body::empty())
            .expect("response");
        let _ = a.begin().finish(resp);
        assert!(matches!(s.admit(), Admit::Refuse));
        assert!(!a.evict.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_counts_from_the_end_of_a_response() {
        let s = sockets(4);
        let a = open(s.admit());
        let wait = a.kept_alive_for(Duration::from_secs(5));
        tokio::pin!(wait);
        // Before any request it never fires (the head timeout covers that).
        assert!(tokio::time::timeout(Duration::from_secs(60), &mut wait)
            .await
            .is_err());
        let busy = a.begin();
        assert!(
            tokio::time::timeout(Duration::from_secs(60), &mut wait)
                .await
                .is_err(),
            "busy connections are not idle"
        );
        drop(busy);
        assert!(
            tokio::time::timeout(Duration::from_secs(6), &mut wait)
                .await
                .is_ok(),
            "idle 5 s after the response"
        );
    }
}
