//! The WebSocket writer task: the only owner of a connection's send half.
//!
//! It writes the welcome and any replayed history first, then drains the
//! member's queue in batches (one flush per batch), pings the client when it
//! has been quiet, and ends with a close frame whose code says why.

use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use prometheus::IntGauge;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::WebSocketStream;

use crate::event::{Event, Kick};
use crate::metrics::{Metrics, Transport};
use crate::room::Joined;
use roompin_shared::protocol::close;

/// Frames written per flush at most, so one busy room cannot starve a
/// connection's pings.
const BATCH: usize = 64;
/// How long the close frame may take to leave.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

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

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Returns the close code sent, or `None` when the peer vanished first.
pub async fn run<S>(
    mut sink: Sink<S>,
    mut rx: mpsc::Receiver<Arc<Event>>,
    joined: Joined,
    kick: Arc<Kick>,
    last_seen: Arc<AtomicU64>,
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
            return vanished(&metrics);
        }
        sent += 1;
    }
    if sink.flush().await.is_err() {
        return vanished(&metrics);
    }
    metrics.frames_delivered.inc_by(sent);

    let mut ping = tokio::time::interval(ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = kick.kicked() => break,
            event = rx.recv() => {
                let Some(event) = event else { break };
                if write_batch(&mut sink, &mut rx, event, &metrics).await.is_err() {
                    kick.kick(close::NORMAL);
                    return vanished(&metrics);
                }
            }
            _ = ping.tick() => {
                let quiet = unix_ms().saturating_sub(last_seen.load(Ordering::Relaxed));
                if quiet > 2 * ping_interval.as_millis() as u64 {
                    kick.kick(close::PING_TIMEOUT);
                    break;
                }
                if quiet >= ping_interval.as_millis() as u64
                    && sink.send(Message::Ping(Bytes::new())).await.is_err()
                {
                    kick.kick(close::NORMAL);
                    return vanished(&metrics);
                }
            }
        }
    }

    let code = kick.code().unwrap_or(close::NORMAL);
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
    metrics.closes.with_label_values(&[&code.to_string()]).inc();
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

fn vanished(metrics: &Metrics) -> Option<u16> {
    metrics.closes.with_label_values(&["0"]).inc();
    None
}

fn reason(code: u16) -> &'static str {
    match code {
        close::ROOM_MOVED => close::ROOM_MOVED_REASON,
        close::GOING_AWAY => close::GOING_AWAY_REASON,
        close::SLOW_CONSUMER => close::SLOW_CONSUMER_REASON,
        close::PING_TIMEOUT => close::PING_TIMEOUT_REASON,
        close::TOO_BIG => "frame too big",
        close::PROTOCOL_ERROR => "protocol error",
        _ => "",
    }
}
