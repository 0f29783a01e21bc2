//! `GET /sse`: a room member that listens over Server-Sent Events.
//!
//! Each room event goes out as `id: <seq>`, `event: <type>`, `data: <the
//! WebSocket JSON>`. A browser's EventSource reconnects by itself and sends
//! `Last-Event-ID`, which resumes exactly like `since=` on a WebSocket.

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

use crate::event::{Event, Kick};
use crate::metrics::Transport;
use crate::node::{unavailable, Admitted, Node};
use crate::params::JoinParams;
use crate::placement::MOVING;
use crate::relay;
use crate::room::{MemberHandle, Room};
use crate::writer::OpenConnection;
use roompin_shared::protocol::{close, ServerEvent};

pub async fn stream(State(node): State<Arc<Node>>, req: Request) -> Response {
    let mut params = match JoinParams::parse(req.uri().query()) {
        Ok(p) => p,
        Err(refusal) => return refusal.into_response(),
    };
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
    let user: Arc<str> = Arc::from(params.user.as_deref().unwrap_or(&conn_id));
    let (tx, rx) = mpsc::channel(node.settings.send_queue);
    let kick = Arc::new(Kick::default());
    let member = MemberHandle {
        conn_id: conn_id.clone(),
        user,
        tx,
        kick: kick.clone(),
    };
    let Ok((room, joined)) = node.join(room, member, params.resume()) else {
        return unavailable(MOVING);
    };
    tracing::info!(meeting = %params.meeting_id, node = %node.id, conn = %conn_id, since = ?params.since, "sse joined");

    let mut pending: VecDeque<Bytes> = VecDeque::new();
    // Tell EventSource to come back quickly after a drop or a move.
    pending.push_back(Bytes::from_static(b"retry: 1000\n\n"));
    pending.push_back(joined.welcome.sse());
    pending.extend(joined.replay.iter().map(|e| e.sse()));
    let mut heartbeat =
        tokio::time::interval(Duration::from_millis(node.settings.sse_heartbeat_ms));
    heartbeat.reset();
    let state = Listener {
        _open: OpenConnection::new(&node.metrics, Transport::Sse),
        node,
        room,
        conn_id,
        rx,
        kick,
        pending,
        heartbeat,
        done: false,
    };
    let body = futures_util::stream::unfold(state, |mut st| async move {
        let chunk = st.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), st))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// One SSE member; dropping it (the client went away) leaves the room.
struct Listener {
    node: Arc<Node>,
    room: Arc<Room>,
    conn_id: Arc<str>,
    rx: mpsc::Receiver<Arc<Event>>,
    kick: Arc<Kick>,
    pending: VecDeque<Bytes>,
    heartbeat: Interval,
    done: bool,
    _open: OpenConnection,
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
            _ = self.kick.kicked() => {
                self.done = true;
                while let Ok(event) = self.rx.try_recv() {
                    self.pending.push_back(event.sse());
                }
                if self.kick.code() == Some(close::ROOM_MOVED) {
                    let moved = ServerEvent::Moved { meeting_id: self.room.meeting_id.to_string() };
                    self.pending.push_back(Event::new(&moved).sse());
                }
                let code = self.kick.code().unwrap_or(close::NORMAL).to_string();
                self.node.metrics.closes.with_label_values(&[&code]).inc();
                self.pending.pop_front()
            }
            event = self.rx.recv() => {
                self.node.metrics.frames_delivered.inc();
                event.map(|e| e.sse())
            }
            _ = self.heartbeat.tick() => Some(Bytes::from_static(b": heartbeat\n\n")),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.room.leave(&self.conn_id);
        tracing::info!(meeting = %self.room.meeting_id, conn = %self.conn_id, "sse closed");
    }
}
