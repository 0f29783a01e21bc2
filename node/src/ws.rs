//! `GET /websocket`: the upgrade, then one session per connection.
//!
//! A session is two tasks: this reader, which parses client frames and
//! publishes into the room, and a writer (`writer.rs`) that owns the socket's
//! send half and drains the member's bounded queue.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::event::{Event, Kick};
use crate::node::{Admitted, Node};
use crate::params::JoinParams;
use crate::relay;
use crate::room::{MemberHandle, Room};
use crate::writer::{self, unix_ms};
use roompin_shared::protocol::{close, error_code, ClientFrame, ServerEvent};

/// How long a kicked client has to answer our close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long the writer may take to finish once the reader is done.
const WRITER_GRACE: Duration = Duration::from_secs(2);

pub async fn upgrade(State(node): State<Arc<Node>>, mut req: Request) -> Response {
    let params = match JoinParams::parse(req.uri().query()) {
        Ok(p) => p,
        Err(refusal) => return refusal.into_response(),
    };
    let key = match websocket_key(&req) {
        Ok(key) => key,
        Err(reason) => {
            let mut resp = (StatusCode::UPGRADE_REQUIRED, reason).into_response();
            resp.headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            resp.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return resp;
        }
    };
    let room = match node.admit(&params.meeting_id, req.headers()).await {
        Admitted::Here(room) => room,
        Admitted::Relay(holder) => return relay::websocket(&node, &holder, req).await,
        Admitted::Refused(refusal) => return refusal,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let session_node = node.clone();
    node.tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => run(session_node, params, room, TokioIo::new(upgraded)).await,
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        )
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The client's `Sec-WebSocket-Key`, or why this is not a usable upgrade.
fn websocket_key(req: &Request) -> Result<String, &'static str> {
    let h = req.headers();
    let has = |name: header::HeaderName, token: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err("this endpoint speaks WebSocket only: send Upgrade: websocket\n");
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return Err("unsupported Sec-WebSocket-Version: this node speaks version 13\n");
    }
    h.get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or("missing Sec-WebSocket-Key\n")
}

async fn run<S>(node: Arc<Node>, params: JoinParams, room: Arc<Room>, io: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let s = &node.settings;
    let config = WebSocketConfig::default()
        .read_buffer_size(s.ws_read_buffer)
        .write_buffer_size(s.ws_write_buffer)
        .max_message_size(Some(s.max_message_bytes))
        .max_frame_size(Some(s.max_message_bytes));
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;

    let conn_id = node.next_conn_id();
    let user: Arc<str> = Arc::from(params.user.as_deref().unwrap_or(&conn_id));
    let (tx, rx) = mpsc::channel(s.send_queue);
    let kick = Arc::new(Kick::default());
    let member = MemberHandle {
        conn_id: conn_id.clone(),
        user: user.clone(),
        tx: tx.clone(),
        kick: kick.clone(),
    };
    let (room, joined) = match node.join(room, member, params.resume()) {
        Ok(joined) => joined,
        Err(_) => {
            // The room moved between admission and the upgrade: send the
            // client on at once, as its members were.
            let frame = CloseFrame {
                code: CloseCode::from(close::ROOM_MOVED),
                reason: close::ROOM_MOVED_REASON.into(),
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(Some(frame))).await;
            return;
        }
    };
    let (sink, mut stream) = ws.split();
    let _open = writer::OpenConnection::new(&node.metrics, crate::metrics::Transport::WebSocket);
    tracing::info!(meeting = %params.meeting_id, node = %node.id, conn = %conn_id, since = ?params.since, "websocket joined");

    let last_seen = Arc::new(AtomicU64::new(unix_ms()));
    let writer = tokio::spawn(writer::run(
        sink,
        rx,
        joined,
        kick.clone(),
        last_seen.clone(),
        Duration::from_millis(s.ping_interval_ms),
        node.metrics.clone(),
    ));

    let grace = async {
        kick.kicked().await;
        // A kicked member is out of the room at once (a ping timeout is
        // noticed by the writer, and would otherwise stay a member, counted
        // and queued to, until the grace ends).
        room.leave(&conn_id);
        tokio::time::sleep(CLOSE_GRACE).await;
    };
    tokio::pin!(grace);
    loop {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            _ = &mut grace => break,
        };
        last_seen.store(unix_ms(), Ordering::Relaxed);
        match frame {
            Some(Ok(Message::Text(text))) => {
                on_text(&node, &room, &user, &tx, text.as_str());
                // A burst of frames sits whole in the read buffer, and
                // publishing it without yielding starves the room's writers:
                // every member's queue would overflow (4002) though all of
                // them read. Yield so that the writers drain between frames.
                tokio::task::yield_now().await;
            }
            Some(Ok(Message::Binary(_))) => reply_error(
                &tx,
                error_code::BINARY_UNSUPPORTED,
                "binary frames are not supported: send JSON text frames",
            ),
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => {} // ping (answered by tungstenite), pong, raw frame
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                tracing::info!(conn = %conn_id, size, max_size, "frame too big");
                kick.kick(close::TOO_BIG);
                break;
            }
            Some(Err(WsError::Protocol(e))) => {
                tracing::info!(conn = %conn_id, error = %e, "websocket protocol error");
                kick.kick(close::PROTOCOL_ERROR);
                break;
            }
            Some(Err(e)) => {
                tracing::debug!(conn = %conn_id, error = %e, "websocket read ended");
                break;
            }
        }
    }
    room.leave(&conn_id);
    kick.kick(close::NORMAL);
    drop(tx);
    // A writer blocked on a peer that reads nothing (a slow consumer whose
    // TCP window is shut) would otherwise hold the session forever.
    let mut writer = writer;
    let code = match tokio::time::timeout(WRITER_GRACE, &mut writer).await {
        Ok(code) => code.unwrap_or(None),
        Err(_) => {
            writer.abort();
            node.metrics.closes.with_label_values(&["0"]).inc();
            None
        }
    };
    tracing::info!(meeting = %params.meeting_id, node = %node.id, conn = %conn_id, close = ?code, "websocket closed");
}

fn on_text(node: &Arc<Node>, room: &Room, user: &str, tx: &mpsc::Sender<Arc<Event>>, text: &str) {
    match ClientFrame::parse(text) {
        Ok(ClientFrame::Message { text }) => {
            if !crate::publish::from_member(node, room, user, &text) {
                reply_error(
                    tx,
                    error_code::ROOM_MOVED,
                    "not delivered: the room is moving; resend after reconnecting",
                );
            }
        }
        Err(e) => reply_error(tx, e.code, e.message),
    }
}

/// Queues an error frame for this connection only. If its queue is full the
/// connection is about to be dropped as a slow consumer anyway.
fn reply_error(tx: &mpsc::Sender<Arc<Event>>, code: &str, message: impl Into<String>) {
    let _ = tx.try_send(Event::new(&ServerEvent::error(code, message)));
}
