//! The WebSocket writer task: the only owner of a connection's send half.
//!
//! It writes the welcome and any replayed history first, then drains the
//! member's queue in batches (one flush per batch), pings the client when it
//! has been quiet, and ends with a close frame whose code says why. The
//! session (`ws.rs`) runs it on the node's tracker and counts how the
//! connection ended.

use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use prometheus::IntGauge;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::WebSocketStream;

use crate::event::{Event, Kick};
use crate::liveness::{verdict, Liveness, Verdict};
use crate::metrics::{Metrics, Transport};
use crate::room::Joined;
use roompin_shared::protocol::close;

/// Frames written per flush at most, so one busy room cannot starve a
/// connection's pings.
const BATCH: usize = 64;
/// How long the close frame may take to leave.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Not a code on the wire (RFC 6455 forbids sending 1006): the kick reason
/// for a connection that ended without a closing handshake, so the writer
/// sends nothing, and the `code` label it is counted under.
pub const VANISHED: u16 = 1006;

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;

/// Counts an open connection for as long as it lives.
pub struct OpenConnection(IntGauge);

impl OpenConnection {
    pub fn new(metrics: &Metrics, transport: Transport) -> Self {
        let gauge = metrics.open(transport);
        gauge.inc();
        OpenConnection(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Returns the code of the close frame it sent, or `None` if it sent none
/// (the peer vanished, closed first, or the session said not to).
pub async fn run<S>(
    mut sink: Sink<S>,
    mut rx: mpsc::Receiver<Arc<Event>>,
    joined: Joined,
    kick: Arc<Kick>,
    liveness: Arc<Liveness>,
    ping_interval: Duration,
    metrics: Metrics,
) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let first = std::iter::once(joined.welcome).chain(joined.replay);
    let mut sent = 0;
    for event in first {
        if sink.feed(Message::Text(event.json.clone())).await.is_err() {
            return broken(&kick);
        }
        sent += 1;
    }
    if sink.flush().await.is_err() {
        return broken(&kick);
    }
    metrics.frames_delivered.inc_by(sent);

    let mut ping = tokio::time::interval(ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    // When the ping still waiting for an answer went out (`Liveness::now_ms`).
    let mut pinged: Option<u64> = None;
    loop {
        tokio::select! {
            biased;
            _ = kick.kicked() => break,
            event = rx.recv() => {
                let Some(event) = event else { break };
                if write_batch(&mut sink, &mut rx, event, &metrics).await.is_err() {
                    return broken(&kick);
                }
            }
            _ = ping.tick() => {
                let unanswered = pinged.is_some_and(|at| !liveness.heard_since(at));
                match verdict(liveness.quiet(), ping_interval, unanswered) {
                    Verdict::Alive => pinged = None,
                    Verdict::Ping => {
                        pinged = Some(liveness.now_ms());
                        if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                            return broken(&kick);
                        }
                    }
                    Verdict::Dead => {
                        kick.kick(close::PING_TIMEOUT);
                        break;
                    }
                }
            }
        }
    }

    let code = kick.code().unwrap_or(close::NORMAL);
    if code == VANISHED {
        return None;
    }
    // Room moves and shutdowns deliver what was already queued first; the
    // client resumes from the last seq it saw either way.
    if matches!(code, close::ROOM_MOVED | close::GOING_AWAY | close::NORMAL) {
        while let Ok(event) = rx.try_recv() {
            let _ = sink.feed(Message::Text(event.json.clone())).await;
        }
    }
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason(code).into(),
    };
    let closed = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
    matches!(closed, Ok(Ok(()))).then_some(code)
}

async fn write_batch<S>(
    sink: &mut Sink<S>,
    rx: &mut mpsc::Receiver<Arc<Event>>,
    first: Arc<Event>,
    metrics: &Metrics,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    sink.feed(Message::Text(first.json.clone())).await?;
    let mut n = 1;
    while n < BATCH {
        match rx.try_recv() {
            Ok(event) => sink.feed(Message::Text(event.json.clone())).await?,
            Err(_) => break,
        }
        n += 1;
    }
    sink.flush().await?;
    metrics.frames_delivered.inc_by(n as u64);
    Ok(())
}

/// A write failed: the peer is gone, or closed first (the reader, which
/// saw its close frame, answers it). Wakes the reader either way.
fn broken(kick: &Kick) -> Option<u16> {
    kick.kick(VANISHED);
    None
}

/// The reason text of a close the node starts (docs/PROTOCOL.md).
pub fn reason(code: u16) -> &'static str {
    match code {
        close::ROOM_MOVED => close::ROOM_MOVED_REASON,
        close::GOING_AWAY => close::GOING_AWAY_REASON,
        close::SLOW_CONSUMER => close::SLOW_CONSUMER_REASON,
        close::PING_TIMEOUT => close::PING_TIMEOUT_REASON,
        close::TOO_BIG => close::TOO_BIG_REASON,
        close::PROTOCOL_ERROR => close::PROTOCOL_ERROR_REASON,
        close::INVALID_DATA => close::INVALID_DATA_REASON,
        close::INTERNAL => close::INTERNAL_REASON,
        close::POLICY_VIOLATION => close::RATE_LIMITED_REASON,
        _ => "",
    }
}
