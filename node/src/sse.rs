//! `GET /sse`: a room member that listens over Server-Sent Events.
//!
//! Each room event goes out as `id: <seq>`, `event: <type>`, `data: <the
//! WebSocket JSON>`. A browser's EventSource reconnects by itself and sends
//! `Last-Event-ID`, which resumes exactly like `since=` on a WebSocket.
//!
//! The stream is driven by its HTTP connection's task (on the node's
//! tracker, see `lib.rs`); it ends when its member is kicked or the node
//! stops. Its span carries `meeting_id`, `node`, `conn_id` and `close`.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Interval;

use tracing::Instrument;

use crate::event::{Event, Kick};
use crate::guard;
use crate::limits::Slot;
use crate::metrics::Transport;
use crate::node::{unavailable, Admitted, Node};
use crate::params::JoinParams;
use crate::placement::MOVING;
use crate::relay;
use crate::room::{MemberHandle, Room};
use crate::shutdown;
use crate::writer::{OpenConnection, VANISHED};
use roompin_shared::protocol::{close, ServerEvent};
use roompin_shared::MeetingId;

pub async fn stream(State(node): State<Arc<Node>>, req: Request) -> Response {
    let mut params = match JoinParams::parse(req.uri().query()) {
        Ok(p) => p,
        Err(refusal) => return refusal.into_response(),
    };
    // The token's user, and this stream's place under max_connections.
    let slot = guard::admitted(&req, &mut params);
    if let Some(last) = req.headers().get("last-event-id") {
        match last
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            Some(seq) => params.since = Some(seq),
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    "Last-Event-ID must be a room seq\n",
                )
                    .into_response()
            }
        }
    }
    let room = match node.admit(&params.meeting_id, req.headers()).await {
        Admitted::Here(room) => room,
        Admitted::Relay(holder) => return relay::sse(&node, &holder, req).await,
        Admitted::Refused(refusal) => return refusal,
    };

    let conn_id = node.next_conn_id();
    let span = tracing::info_span!(
        "sse",
        meeting_id = %params.meeting_id,
        node = %node.id,
        conn_id = %conn_id,
        close = tracing::field::Empty,
    );
    let mut pending: VecDeque<Bytes> = VecDeque::new();
    // Tell EventSource to come back quickly after a drop or a move.
    pending.push_back(Bytes::from_static(b"retry: 1000\n\n"));
    let kick = Arc::new(Kick::default());
    let (tx, rx) = mpsc::channel(node.settings.send_queue);
    let room = if node.shutdown.is_cancelled() {
        // The node closed its rooms already: never join (a room made now
        // would go at once, its history with it); end the stream the way
        // the others ended.
        kick.kick(shutdown::close_code(&node));
        None
    } else {
        let member = MemberHandle {
            conn_id: conn_id.clone(),
            user: Arc::from(params.user.as_deref().unwrap_or(&conn_id)),
            tx,
            kick: kick.clone(),
        };
        let Ok((room, joined)) = node.join(room, member, params.resume()) else {
            return unavailable(MOVING);
        };
        span.in_scope(|| tracing::info!(since = ?params.since, "sse joined"));
        pending.push_back(joined.welcome.sse());
        pending.extend(joined.replay.iter().map(|e| e.sse()));
        Some(room)
    };
    let mut heartbeat =
        tokio::time::interval(Duration::from_millis(node.settings.sse_heartbeat_ms));
    heartbeat.reset();
    let state = Listener {
        _open: OpenConnection::new(&node.metrics, Transport::Sse),
        node,
        meeting_id: params.meeting_id,
        room,
        conn_id,
        rx,
        kick,
        pending,
        heartbeat,
        done: false,
        close: None,
        span,
        _slot: slot,
    };
    let body = futures_util::stream::unfold(state, |mut st| async move {
        let span = st.span.clone();
        let chunk = st.next_chunk().instrument(span).await?;
        Some((Ok::<_, Infallible>(chunk), st))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// One SSE member; dropping it (the stream ended, or the client went away)
/// leaves the room.
struct Listener {
    node: Arc<Node>,
    meeting_id: MeetingId,
    /// `None` for a stream turned away because the node is stopping.
    room: Option<Arc<Room>>,
    conn_id: Arc<str>,
    rx: mpsc::Receiver<Arc<Event>>,
    kick: Arc<Kick>,
    pending: VecDeque<Bytes>,
    heartbeat: Interval,
    done: bool,
    /// The code the stream ended with, once it has (as the WebSocket close
    /// code would be; `moved` stands for 4001).
    close: Option<u16>,
    span: tracing::Span,
    _open: OpenConnection,
    _slot: Option<Slot>,
}

impl Listener {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(chunk) = self.pending.pop_front() {
            self.node.metrics.frames_delivered.inc();
            return Some(chunk);
        }
        if self.done {
            return None;
        }
        tokio::select! {
            biased;
            _ = self.kick.kicked() => {}
            // A member the room closing did not reach (it joined after)
            // ends the same way; for the others this is a no-op.
            _ = self.node.shutdown.cancelled() => {
                self.kick.kick(shutdown::close_code(&self.node));
            }
            event = self.rx.recv() => {
                self.node.metrics.frames_delivered.inc();
                return event.map(|e| e.sse());
            }
            _ = self.heartbeat.tick() => return Some(Bytes::from_static(b": heartbeat\n\n")),
        }
        // Kicked: what was queued, then `moved` if the room moved, then the
        // end of the stream.
        self.done = true;
        while let Ok(event) = self.rx.try_recv() {
            self.pending.push_back(event.sse());
        }
        let code = self.kick.code().unwrap_or(close::NORMAL);
        if code == close::ROOM_MOVED {
            let moved = ServerEvent::Moved {
                meeting_id: self.meeting_id.to_string(),
            };
            self.pending.push_back(Event::new(&moved).sse());
        }
        self.close = Some(code);
        self.pending.pop_front()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(room) = &self.room {
            room.leave(&self.conn_id);
        }
        // No code: the client went away (or the stream was cut) first.
        self.node
            .metrics
            .closes
            .with_label_values(&[crate::ws::label(self.close)])
            .inc();
        self.span.record("close", self.close.unwrap_or(VANISHED));
        self.span.in_scope(|| tracing::info!("sse closed"));
    }
}
