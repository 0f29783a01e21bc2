//! Opening a member connection: TCP from a chosen source address, then a
//! WebSocket handshake, or an SSE stream plus (for publishers) a keep-alive
//! HTTP connection for `POST /messages`.
//!
//! A connection is handed out as two halves, [`Tx`] and [`Rx`], so that a
//! publisher can send on its schedule while another task keeps reading:
//! an open-loop sender must never wait for the reader.

use anyhow::{bail, Context};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming as Body;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::cli::Transport;
use crate::protocol::{Incoming, Protocol};
use crate::target::{SourceIps, Target};
use roompin_shared::protocol::PublishAccepted;

type Ws = WebSocketStream<TcpStream>;

/// tungstenite reserves 128 KiB of read buffer per connection by default:
/// 2.5 GB for a worker's 19,000 sockets. Our frames are small, and the
/// buffer still grows for a large one.
const WS_READ_BUFFER: usize = 4096;

/// How long closing may take before the socket is simply dropped.
const CLOSE_STEP: Duration = Duration::from_millis(500);

/// Where and how members connect; one per worker.
pub struct Endpoint {
    pub target: Target,
    pub protocol: Protocol,
    pub transport: Transport,
    pub sources: SourceIps,
    pub ws_path: String,
    pub sse_path: String,
    pub publish_path: String,
}

/// The sending half of a member.
pub enum Tx {
    Ws(SplitSink<Ws, Message>),
    Http(HttpPublisher),
    /// An SSE member that does not publish.
    Listen,
}

/// The receiving half of a member.
pub enum Rx {
    Ws(SplitStream<Ws>),
    Sse(SseReader),
}

/// A text frame (WebSocket) or an event's data (SSE), without copying the
/// WebSocket payload.
pub enum Frame {
    Ws(Utf8Bytes),
    Owned(String),
}

impl Frame {
    pub fn as_str(&self) -> &str {
        match self {
            Frame::Ws(t) => t.as_str(),
            Frame::Owned(s) => s,
        }
    }
}

pub struct Conn {
    pub tx: Tx,
    pub rx: Rx,
    /// The welcome's seq (protocols with a welcome only).
    pub welcome_seq: Option<u64>,
}

impl Endpoint {
    /// The socket count per member: SSE publishers need a second connection.
    pub fn sockets_per_member(&self, publishes: bool) -> u64 {
        match (self.transport, publishes) {
            (Transport::Sse, true) => 2,
            _ => 1,
        }
    }

    async fn tcp(&self) -> anyhow::Result<TcpStream> {
        let addr = self.target.addr;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .context("cannot create a socket")?;
        // Lets a bound source port be reused while an earlier connection
        // from it sits in TIME_WAIT, which a long churn run piles up.
        socket
            .set_reuseaddr(true)
            .context("cannot set SO_REUSEADDR")?;
        let source = self.sources.next();
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("cannot bind to {ip}"))?;
        }
        // The source address stays out of the message so that identical
        // failures from different sources count as one kind of error.
        let stream = socket
            .connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        // Small frames must leave at once: latency is what we measure.
        stream.set_nodelay(true).context("cannot set TCP_NODELAY")?;
        Ok(stream)
    }

    /// Connects `user` to `meeting` and, if the protocol has one, waits for
    /// the welcome. The caller bounds the whole thing with its timeout.
    pub async fn connect(
        &self,
        meeting: &str,
        user: &str,
        publishes: bool,
    ) -> anyhow::Result<Conn> {
        let query = self.protocol.query(meeting, user);
        let (tx, rx) = match self.transport {
            Transport::Ws => {
                let url = self.target.ws_url(&format!("{}?{query}", self.ws_path));
                let stream = self.tcp().await?;
                let config = WebSocketConfig::default()
                    .read_buffer_size(WS_READ_BUFFER)
                    // Each message is flushed on send anyway.
                    .write_buffer_size(0);
                let (ws, _) =
                    tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config))
                        .await
                        .map_err(|e| match e {
                            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                                let body = resp
                                    .body()
                                    .as_deref()
                                    .map(String::from_utf8_lossy)
                                    .unwrap_or_default();
                                anyhow::anyhow!(
                                    "upgrade refused: {} {}",
                                    resp.status(),
                                    body.trim()
                                )
                            }
                            other => anyhow::anyhow!("websocket handshake failed: {other}"),
                        })?;
                let (sink, stream) = ws.split();
                (Tx::Ws(sink), Rx::Ws(stream))
            }
            Transport::Sse => {
                let rx = self.open_sse(&query).await?;
                let tx = if publishes {
                    Tx::Http(self.publisher(&query).await?)
                } else {
                    Tx::Listen
                };
                (tx, Rx::Sse(rx))
            }
        };
        let (tx, mut rx) = self.socketio_handshake(tx, rx).await?;
        let welcome_seq = if self.protocol.has_welcome() {
            let first = rx
                .next()
                .await
                .context("the server closed before its welcome")??;
            match self.protocol.decode(first.as_str()) {
                Incoming::Welcome { seq } => Some(seq),
                _ => bail!("the first frame is not a welcome: {:.200}", first.as_str()),
            }
        } else {
            None
        };
        Ok(Conn {
            tx,
            rx,
            welcome_seq,
        })
    }

    /// Socket.IO: Engine.IO's open packet, then join the default namespace
    /// (`40`) and wait for its ack. Engine.IO pings (`2`) are not answered:
    /// the bench's Socket.IO server pings less often than a run lasts.
    async fn socketio_handshake(&self, mut tx: Tx, mut rx: Rx) -> anyhow::Result<(Tx, Rx)> {
        let Some(connect) = self.protocol.socketio_connect() else {
            return Ok((tx, rx));
        };
        let open = rx
            .next()
            .await
            .context("the server closed before Engine.IO's open packet")??;
        if !open.as_str().starts_with('0') {
            bail!(
                "expected Engine.IO's open packet, got {:.200}",
                open.as_str()
            );
        }
        match &mut tx {
            Tx::Ws(sink) => sink
                .send(Message::text(connect))
                .await
                .context("websocket send failed")?,
            _ => bail!("Socket.IO needs the WebSocket transport"),
        }
        // Bounded by the caller's connect timeout.
        loop {
            let frame = rx
                .next()
                .await
                .context("the server closed before the namespace connect ack")??;
            match frame.as_str() {
                f if f.starts_with("40") => return Ok((tx, rx)),
                f if f.starts_with("44") => bail!("namespace connect refused: {f:.200}"),
                _ => continue,
            }
        }
    }

    async fn http1<B>(&self) -> anyhow::Result<http1::SendRequest<B>>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = self.tcp().await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake failed")?;
        // The connection task ends when both the sender and any response
        // body are dropped, or the peer closes.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn open_sse(&self, query: &str) -> anyhow::Result<SseReader> {
        let mut sender = self.http1::<Empty<Bytes>>().await?;
        let req = http::Request::get(format!("{}?{query}", self.sse_path))
            .header(http::header::HOST, &self.target.authority)
            .header(http::header::ACCEPT, "text/event-stream")
            .body(Empty::new())
            .context("bad SSE request")?;
        let resp = sender
            .send_request(req)
            .await
            .context("SSE request failed")?;
        if resp.status() != http::StatusCode::OK {
            let status = resp.status();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
            let body = body
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            bail!("SSE refused: {status} {}", body.trim());
        }
        Ok(SseReader {
            body: resp.into_body(),
            _sender: sender,
            parser: SseParser::default(),
        })
    }

    async fn publisher(&self, query: &str) -> anyhow::Result<HttpPublisher> {
        Ok(HttpPublisher {
            sender: self.http1().await?,
            uri: format!("{}?{query}", self.publish_path),
            host: self.target.authority.clone(),
        })
    }
}

impl Tx {
    /// Sends one message; returns its seq when the transport tells it
    /// (HTTP publish answers with the seq, a WebSocket send does not).
    pub async fn send(&mut self, protocol: Protocol, text: &str) -> anyhow::Result<Option<u64>> {
        match self {
            Tx::Ws(sink) => {
                sink.send(Message::text(protocol.encode(text)))
                    .await
                    .context("websocket send failed")?;
                Ok(None)
            }
            Tx::Http(p) => p.post(protocol.publish_body(text)).await.map(Some),
            Tx::Listen => bail!("this member has no way to publish"),
        }
    }
}

impl Rx {
    /// The next text payload; `None` once the connection has ended cleanly.
    pub async fn next(&mut self) -> Option<anyhow::Result<Frame>> {
        match self {
            Rx::Ws(stream) => loop {
                match stream.next().await? {
                    Ok(Message::Text(t)) => return Some(Ok(Frame::Ws(t))),
                    // A plain `ws` server echoes Buffers as binary frames
                    // unless told otherwise; accept them as text.
                    Ok(Message::Binary(b)) => {
                        return Some(Ok(Frame::Owned(String::from_utf8_lossy(&b).into_owned())))
                    }
                    Ok(Message::Close(_)) => return None,
                    Ok(_) => continue, // ping (answered by tungstenite), pong
                    Err(e) => return Some(Err(anyhow::anyhow!("websocket read failed: {e}"))),
                }
            },
            Rx::Sse(r) => r.next().await,
        }
    }
}

/// Closes a member politely but within a bounded time: a close frame, then
/// read until the server's close (so the server sees a clean close), else
/// just drop.
pub async fn close(tx: Tx, rx: Rx) {
    if let (Tx::Ws(mut sink), Rx::Ws(mut stream)) = (tx, rx) {
        let _ = tokio::time::timeout(CLOSE_STEP, sink.send(Message::Close(None))).await;
        let _ = tokio::time::timeout(CLOSE_STEP, async {
            while let Some(Ok(m)) = stream.next().await {
                if m.is_close() {
                    break;
                }
            }
        })
        .await;
    }
}

/// One keep-alive HTTP/1.1 connection for `POST /messages`, used one request
/// at a time (a slow answer delays the next send, which the intended-time
/// stamp then shows as latency).
pub struct HttpPublisher {
    sender: http1::SendRequest<Full<Bytes>>,
    uri: String,
    host: String,
}

impl HttpPublisher {
    async fn post(&mut self, body: String) -> anyhow::Result<u64> {
        self.sender
            .ready()
            .await
            .context("publish connection closed")?;
        let req = http::Request::post(&self.uri)
            .header(http::header::HOST, &self.host)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .context("bad publish request")?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .context("publish request failed")?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .context("publish answer cut short")?
            .to_bytes();
        if status != http::StatusCode::ACCEPTED {
            bail!(
                "publish refused: {status} {}",
                String::from_utf8_lossy(&body).trim()
            );
        }
        let accepted: PublishAccepted =
            serde_json::from_slice(&body).context("publish answer is not {\"seq\":n}")?;
        Ok(accepted.seq)
    }
}

/// Reads `text/event-stream` and yields each event's `data`.
pub struct SseReader {
    body: Body,
    /// Keeps the connection's request side alive while streaming.
    _sender: http1::SendRequest<Empty<Bytes>>,
    parser: SseParser,
}

impl SseReader {
    async fn next(&mut self) -> Option<anyhow::Result<Frame>> {
        loop {
            if let Some(event) = self.parser.ready.pop_front() {
                return Some(Ok(Frame::Owned(event)));
            }
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(chunk) = frame.into_data() {
                        self.parser.feed(&chunk);
                    }
                }
                Err(e) => return Some(Err(anyhow::anyhow!("SSE read failed: {e}"))),
            }
        }
    }
}

/// The event-stream grammar, as far as we need it. Comments (heartbeats),
/// `id:`, `event:` and `retry:` are dropped: roompin's data is the same JSON
/// as a WebSocket frame and carries the type and seq itself.
#[derive(Default)]
struct SseParser {
    buf: Vec<u8>,
    data: String,
    has_data: bool,
    ready: VecDeque<String>,
}

impl SseParser {
    fn feed(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|b| *b == b'\n') {
            let end = start + nl;
            let line = &self.buf[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                if self.has_data {
                    self.ready.push_back(std::mem::take(&mut self.data));
                    self.has_data = false;
                }
            } else if let Some(value) = line.strip_prefix(b"data:") {
                let value = value.strip_prefix(b" ").unwrap_or(value);
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.has_data = true;
            }
            start = end + 1;
        }
        self.buf.drain(..start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_anywhere() {
        let mut p = SseParser::default();
        p.feed(b"retry: 1000\n\nid: 0\nevent: welcome\ndata: {\"a\"");
        assert!(p.ready.is_empty());
        p.feed(b":1}\n\n: heartbeat\n\nid: 1\r\ndata: x\r\ndata: y\r\n\r\n");
        let got: Vec<_> = p.ready.drain(..).collect();
        assert_eq!(got, vec!["{\"a\":1}".to_owned(), "x\ny".to_owned()]);
    }
}
