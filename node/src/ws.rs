//! `GET /websocket`: the upgrade, then one session per connection.
//!
//! A session is two tasks on the node's tracker: this reader, which parses
//! client frames, publishes into the room, answers the client's closing
//! handshake and watches shutdown, and a writer (`writer.rs`) that owns the
//! socket's send half and drains the member's bounded queue. The session's
//! span carries `meeting_id`, `node`, `conn_id` and, at the end, `close`:
//! the code of the close frame the node sent (1006 if none).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::event::{Event, Kick};
use crate::limits::{Rate, RateLimit};
use crate::liveness::Liveness;
use crate::metrics::Transport;
use crate::node::{Admitted, Node};
use crate::params::JoinParams;
use crate::relay;
use crate::room::{MemberHandle, Room};
use crate::writer::{self, OpenConnection, CLOSE_TIMEOUT, VANISHED};
use crate::{guard, shutdown, tasks};
use roompin_shared::protocol::{close, error_code, ClientFrame, ServerEvent};

/// How long a kicked client has to answer our close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// The same once the node is stopping: it waits for all sessions at most
/// 5 s, and the writer may need up to `CLOSE_TIMEOUT` to send the close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// How long a client that broke a rule may go on sending, unread, while
/// its close goes out.
const LINGER: Duration = Duration::from_secs(1);
/// How long the writer may take to finish once the reader is done.
const WRITER_GRACE: Duration = Duration::from_secs(2);

pub async fn upgrade(State(node): State<Arc<Node>>, mut req: Request) -> Response {
    let mut params = match JoinParams::parse(req.uri().query()) {
        Ok(p) => p,
        Err(refusal) => return refusal.into_response(),
    };
    // The token's user, and this session's place under max_connections.
    let slot = guard::admitted(&req, &mut params);
    let key = match websocket_key(&req) {
        Ok(key) => key,
        Err(refusal) => return refusal.into_response(),
    };
    let room = match node.admit(&params.meeting_id, req.headers()).await {
        Admitted::Here(room) => room,
        Admitted::Relay(holder) => return relay::websocket(&node, &holder, req).await,
        Admitted::Refused(refusal) => return refusal,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let conn_id = node.next_conn_id();
    let span = tracing::info_span!(
        "websocket",
        meeting_id = %params.meeting_id,
        node = %node.id,
        conn_id = %conn_id,
        close = tracing::field::Empty,
    );
    let session_node = node.clone();
    tasks::spawn(&node, tasks::WEBSOCKET, span, async move {
        let _slot = slot;
        match on_upgrade.await {
            Ok(upgraded) => run(session_node, params, room, conn_id, TokioIo::new(upgraded)).await,
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

/// Why an upgrade request is refused.
#[derive(Debug, PartialEq, Eq)]
enum BadUpgrade {
    /// Not a usable WebSocket upgrade at all: 426, saying what to send.
    Unusable(&'static str),
    /// An upgrade with a malformed `Sec-WebSocket-Key`: 400.
    BadKey,
    /// An upgrade with a body, whose bytes would be read as frames: 400.
    WithBody,
}

impl IntoResponse for BadUpgrade {
    fn into_response(self) -> Response {
        match self {
            BadUpgrade::Unusable(reason) => {
                let mut resp = (StatusCode::UPGRADE_REQUIRED, reason).into_response();
                resp.headers_mut()
                    .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                resp.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
                resp
            }
            BadUpgrade::BadKey => (
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Key must be 16 bytes in base64 (24 characters), given once\n",
            )
                .into_response(),
            BadUpgrade::WithBody => (
                StatusCode::BAD_REQUEST,
                "a WebSocket upgrade must not have a body\n",
            )
                .into_response(),
        }
    }
}

/// The client's `Sec-WebSocket-Key`, or why this is not a usable upgrade.
fn websocket_key(req: &Request) -> Result<String, BadUpgrade> {
    let h = req.headers();
    let has = |name: header::HeaderName, token: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err(BadUpgrade::Unusable(
            "this endpoint speaks WebSocket only: send Upgrade: websocket\n",
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return Err(BadUpgrade::Unusable(
            "unsupported Sec-WebSocket-Version: this node speaks version 13\n",
        ));
    }
    let empty = h
        .get(header::CONTENT_LENGTH)
        .is_none_or(|v| v.as_bytes() == b"0");
    if !empty || h.contains_key(header::TRANSFER_ENCODING) {
        return Err(BadUpgrade::WithBody);
    }
    let mut keys = h.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let Some(key) = keys.next() else {
        return Err(BadUpgrade::Unusable("missing Sec-WebSocket-Key\n"));
    };
    match key.to_str() {
        Ok(key) if keys.next().is_none() && is_nonce(key.as_bytes()) => Ok(key.to_owned()),
        _ => Err(BadUpgrade::BadKey),
    }
}

/// RFC 6455 4.1: the key is a 16-byte nonce in base64, which is exactly 22
/// characters of the alphabet and `==`; 16 bytes leave the last character
/// only two bits, so it must be one of `A Q g w`.
fn is_nonce(key: &[u8]) -> bool {
    let b64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    key.len() == 24
        && key[..22].iter().all(b64)
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
        && &key[22..] == b"=="
}

/// How the reader saw its side of the connection end.
enum ReadEnd {
    /// The node kicked the member, and the client answered its close frame
    /// or the grace for that ran out.
    Kicked,
    /// The client sent a close frame first. tungstenite has queued the
    /// answer: the same code (and reason), or 1002 for a code RFC 6455 does
    /// not allow (999, 1005, 1006, 5000, ...).
    ClientClosed(Option<CloseFrame>),
    /// The client broke the protocol: the node closes with this code.
    Violation(u16),
    /// The TCP connection ended without a close frame.
    Vanished,
}

/// Leaves the room and kicks the writer (1011) if the reader unwinds: a
/// panic must not leave a member that nobody reads for, nor a writer that
/// pings forever.
struct LeaveOnDrop {
    room: Arc<Room>,
    conn_id: Arc<str>,
    kick: Arc<Kick>,
}

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        self.room.leave(&self.conn_id);
        self.kick.kick(close::INTERNAL);
    }
}

async fn run<S>(node: Arc<Node>, params: JoinParams, room: Arc<Room>, conn_id: Arc<str>, io: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let s = &node.settings;
    let config = WebSocketConfig::default()
        .read_buffer_size(s.ws_read_buffer)
        .write_buffer_size(s.ws_write_buffer)
        .max_message_size(Some(s.max_message_bytes))
        .max_frame_size(Some(s.max_message_bytes));
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let _open = OpenConnection::new(&node.metrics, Transport::WebSocket);
    if node.shutdown.is_cancelled() {
        let code = shutdown::close_code(&node);
        return turn_away(&node, ws, code, "the node is stopping").await;
    }

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
        // The room moved between admission and the upgrade: send the
        // client on at once, as its members were.
        Err(_) => return turn_away(&node, ws, close::ROOM_MOVED, "the room moved").await,
    };
    let (sink, mut stream) = ws.split();
    let _leave = LeaveOnDrop {
        room: room.clone(),
        conn_id: conn_id.clone(),
        kick: kick.clone(),
    };
    tracing::info!(since = ?params.since, "websocket joined");

    let liveness = Arc::new(Liveness::new());
    let writer = tasks::spawn(
        &node,
        tasks::WRITER,
        tracing::Span::current(),
        writer::run(
            sink,
            rx,
            joined,
            kick.clone(),
            liveness.clone(),
            Duration::from_millis(s.ping_interval_ms),
            node.metrics.clone(),
        ),
    );

    let grace = async {
        kick.kicked().await;
        // A kicked member is out of the room at once (a ping timeout is
        // noticed by the writer, and would otherwise stay a member, counted
        // and queued to, until the grace ends).
        room.leave(&conn_id);
        tokio::select! {
            _ = tokio::time::sleep(CLOSE_GRACE) => {}
            _ = async {
                node.shutdown.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {}
        }
    };
    tokio::pin!(grace);
    let stop = node.shutdown.cancelled();
    tokio::pin!(stop);
    let mut stopping = false;
    let mut rate = RateLimit::new(
        s.messages_per_second,
        s.message_burst,
        s.rate_limit_close_after,
        std::time::Instant::now(),
    );
    let end = loop {
        let frame = tokio::select! {
            biased;
            _ = &mut grace => break ReadEnd::Kicked,
            _ = &mut stop, if !stopping => {
                // A member the room closing did not reach (it joined after)
                // ends the same way; for the others this is a no-op.
                stopping = true;
                kick.kick(shutdown::close_code(&node));
                continue;
            }
            frame = stream.next() => frame,
        };
        liveness.seen();
        // Every frame but a close takes a token: pings flood as well as
        // messages do.
        if let Some(Ok(msg)) = frame
            .as_ref()
            .filter(|f| !matches!(f, Ok(Message::Close(_))))
        {
            match rate.check(std::time::Instant::now()) {
                Rate::Pass => {}
                Rate::Refuse => {
                    node.metrics.rate_limited.inc();
                    if matches!(msg, Message::Text(_) | Message::Binary(_)) {
                        reply_error(
                            &tx,
                            error_code::RATE_LIMITED,
                            "over the rate limit: not delivered; slow down",
                        );
                    }
                    continue;
                }
                Rate::Close => {
                    node.metrics.rate_limited.inc();
                    break ReadEnd::Violation(close::POLICY_VIOLATION);
                }
            }
        }
        match frame {
            Some(Ok(Message::Text(text))) => {
                // A kicked member is out of the room: it publishes nothing.
                if kick.code().is_none() {
                    on_text(&node, &room, &user, &tx, text.as_str()).await;
                }
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
            Some(Ok(Message::Close(frame))) => break ReadEnd::ClientClosed(frame),
            Some(Ok(_)) => {} // ping (answered by tungstenite), pong, raw frame
            Some(Err(e)) => break read_error(e),
            None => break ReadEnd::Vanished,
        }
    };
    room.leave(&conn_id);
    let echoed = match end {
        ReadEnd::Kicked => None,
        ReadEnd::ClientClosed(frame) => {
            kick.kick(close::NORMAL);
            // Reading once more flushes tungstenite's queued answer and ends
            // the stream. (If the node had sent its own close first, the
            // client's frame was the answer, and nothing more is sent.)
            match tokio::time::timeout(CLOSE_TIMEOUT, stream.next()).await {
                Ok(None) => Some(frame.map_or(NO_CODE, |f| u16::from(f.code))),
                _ => None,
            }
        }
        ReadEnd::Violation(code) => {
            kick.kick(code);
            // Read on, discarding, while the close goes out: frames the
            // client sent after the one at fault (a flood), left unread,
            // would reset the connection before the client reads our close.
            let _ = tokio::time::timeout(LINGER, async {
                while let Some(Ok(frame)) = stream.next().await {
                    if frame.is_close() {
                        break;
                    }
                }
            })
            .await;
            None
        }
        ReadEnd::Vanished => {
            kick.kick(VANISHED);
            None
        }
    };
    kick.kick(close::NORMAL);
    drop(tx);
    // A writer blocked on a peer that reads nothing (a slow consumer whose
    // TCP window is shut) would otherwise hold the session forever.
    let mut writer = writer;
    let sent = match tokio::time::timeout(WRITER_GRACE, &mut writer).await {
        Ok(Ok(Some(sent))) => sent,
        Ok(_) => None, // it panicked, and was counted
        Err(_) => {
            writer.abort();
            None
        }
    };
    let code = sent.or(echoed);
    node.metrics.closes.with_label_values(&[label(code)]).inc();
    tracing::Span::current().record("close", code.unwrap_or(VANISHED));
    tracing::info!("websocket closed");
}

/// What a close frame without a code is reported as (RFC 6455 7.1.5).
const NO_CODE: u16 = 1005;

/// The `code` label of `roompin_node_closes_total`: bounded, whatever
/// codes clients close with.
pub(crate) fn label(code: Option<u16>) -> &'static str {
    match code {
        None => "1006",
        Some(close::NORMAL) => "1000",
        Some(close::GOING_AWAY) => "1001",
        Some(close::PROTOCOL_ERROR) => "1002",
        Some(1003) => "1003",
        Some(NO_CODE) => "1005",
        Some(close::INVALID_DATA) => "1007",
        Some(1008) => "1008",
        Some(close::TOO_BIG) => "1009",
        Some(1010) => "1010",
        Some(close::INTERNAL) => "1011",
        Some(1012) => "1012",
        Some(1013) => "1013",
        Some(close::ROOM_MOVED) => "4001",
        Some(close::SLOW_CONSUMER) => "4002",
        Some(close::PING_TIMEOUT) => "4003",
        Some(_) => "other",
    }
}

/// What a read error says about the client. Client mistakes are logged at
/// debug: they are the client's to fix, and they are counted by code.
fn read_error(e: WsError) -> ReadEnd {
    let end = match &e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            ReadEnd::Violation(close::TOO_BIG)
        }
        WsError::Utf8(_) => ReadEnd::Violation(close::INVALID_DATA),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
        | WsError::Io(_)
        | WsError::ConnectionClosed
        | WsError::AlreadyClosed => ReadEnd::Vanished,
        _ => ReadEnd::Violation(close::PROTOCOL_ERROR),
    };
    tracing::debug!(error = %e, "websocket read ended");
    end
}

/// A session that upgraded after its room closed (it moved, or the node
/// is stopping): it never joins (a room made now would go at once, its
/// history with it), it is only told to go, with the code the room's
/// members got.
async fn turn_away<S>(node: &Node, mut ws: WebSocketStream<S>, code: u16, why: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: writer::reason(code).into(),
    };
    let sent = matches!(
        tokio::time::timeout(CLOSE_TIMEOUT, ws.send(Message::Close(Some(frame)))).await,
        Ok(Ok(()))
    );
    if sent {
        // The client's answer, briefly: closing with its frames unread
        // could reset the connection before it reads ours.
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
    let code = sent.then_some(code);
    node.metrics.closes.with_label_values(&[label(code)]).inc();
    tracing::Span::current().record("close", code.unwrap_or(VANISHED));
    tracing::info!(why, "websocket turned away");
}

async fn on_text(
    node: &Arc<Node>,
    room: &Room,
    user: &str,
    tx: &mpsc::Sender<Arc<Event>>,
    text: &str,
) {
    match ClientFrame::parse(text) {
        Ok(ClientFrame::Message { text }) => {
            if !crate::publish::from_member(node, room, user, &text).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_16_bytes_of_base64() {
        for (key, ok) in [
            ("dGhlIHNhbXBsZSBub25jZQ==", true), // RFC 6455's example
            ("AAAAAAAAAAAAAAAAAAAAAA==", true),
            ("+/+/+/+/+/+/+/+/+/+/+w==", true),
            ("", false),
            ("short", false),
            ("dGhlIHNhbXBsZSBub25jZQ", false),       // no padding
            ("dGhlIHNhbXBsZSBub25jZQ=", false),      // 23 characters
            ("dGhlIHNhbXBsZSBub25jZR==", false),     // bits past the 16 bytes
            ("dGhlIHNhbXBsZSBub25jZQ==\0", false),   // 25 characters
            ("dGhlIHNhbXBsZSBub25j*Q==", false),     // outside the alphabet
            ("dGhlIHNhbXBsZSBub25jZQAA", false),     // no `==`
            ("dGhlIHNhbXBsZSBub25jZQ==dGhl", false), // 20 bytes
        ] {
            assert_eq!(is_nonce(key.as_bytes()), ok, "{key:?}");
        }
    }

    #[test]
    fn close_labels_stay_bounded() {
        assert_eq!(label(None), "1006");
        assert_eq!(label(Some(1000)), "1000");
        assert_eq!(label(Some(4001)), "4001");
        for code in [3000, 3999, 4000, 4004, 4999] {
            assert_eq!(label(Some(code)), "other", "{code}");
        }
    }
}
