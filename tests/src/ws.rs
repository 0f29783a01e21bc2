//! A WebSocket test client speaking protocol v1.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `welcome` frame this connection received.
    pub welcome: Value,
    /// The seq of the last room event received; `welcome.seq` until one
    /// arrives. `recv_next` expects the next room event to carry one more.
    /// A caller that resumed with `since` sets it to that `since`.
    pub last_seq: u64,
    /// WebSocket pings received from the node (each answered with a pong by
    /// tungstenite, but only while the client is reading).
    pub pings: u64,
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// A close frame with this code and reason.
    Closed(u16, String),
    /// The TCP connection dropped without a close frame.
    Dropped,
}

impl WsClient {
    /// Connects and reads the welcome frame.
    pub async fn connect(url: &str) -> anyhow::Result<WsClient> {
        Self::connect_with(url, None).await
    }

    /// Connects with a TLS connector of the caller's (a `wss://` URL and a
    /// test CA), and reads the welcome frame.
    pub async fn connect_with(
        url: &str,
        connector: Option<tokio_tungstenite::Connector>,
    ) -> anyhow::Result<WsClient> {
        let connecting =
            tokio_tungstenite::connect_async_tls_with_config(url, None, false, connector);
        let (stream, _) = tokio::time::timeout(crate::PATIENCE, connecting).await??;
        let mut client = WsClient {
            stream,
            welcome: Value::Null,
            last_seq: 0,
            pings: 0,
        };
        let welcome = client.recv().await?;
        anyhow::ensure!(
            welcome["type"] == "welcome",
            "first frame is not welcome: {welcome}"
        );
        client.last_seq = welcome["seq"].as_u64().unwrap_or(0);
        client.welcome = welcome;
        Ok(client)
    }

    /// Attempts an upgrade that the node should refuse, and returns the
    /// refusal's status and (plain-text) body.
    pub async fn refused(url: &str) -> anyhow::Result<(u16, String)> {
        match tokio::time::timeout(crate::PATIENCE, tokio_tungstenite::connect_async(url)).await? {
            Ok(_) => anyhow::bail!("{url}: the upgrade was accepted"),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp.body().as_deref().unwrap_or_default();
                Ok((
                    resp.status().as_u16(),
                    String::from_utf8_lossy(body).into_owned(),
                ))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Joins `meeting` on a node (or balancer) as `user`; panics if it cannot.
    pub async fn join(base: &str, meeting: &str, user: &str) -> WsClient {
        let url = format!("{base}?meeting_id={meeting}&user={user}");
        WsClient::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{user} cannot join {meeting}: {e}"))
    }

    /// The next frame, which must be a room event of `kind` carrying the
    /// next seq (see `recv_next`).
    pub async fn expect_next(&mut self, kind: &str) -> Value {
        let who = self.conn_id().to_owned();
        let v = self
            .recv_next()
            .await
            .unwrap_or_else(|e| panic!("{who} waiting for {kind}: {e}"));
        assert_eq!(v["type"], kind, "{who} expected a {kind}, got {v}");
        v
    }

    pub fn node(&self) -> &str {
        self.welcome["node"].as_str().unwrap_or_default()
    }

    pub fn conn_id(&self) -> &str {
        self.welcome["conn_id"].as_str().unwrap_or_default()
    }

    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.send_raw(Message::text(
            json!({"type": "message", "text": text}).to_string(),
        ))
        .await
    }

    pub async fn send_raw(&mut self, msg: Message) -> anyhow::Result<()> {
        Ok(self.stream.send(msg).await?)
    }

    /// The next JSON frame, within `PATIENCE`.
    pub async fn recv(&mut self) -> anyhow::Result<Value> {
        self.recv_within(crate::PATIENCE).await
    }

    pub async fn recv_within(&mut self, within: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let msg = tokio::time::timeout(left, self.stream.next())
                .await
                .map_err(|_| anyhow::anyhow!("no frame within {within:?}"))?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Ok(self.note(serde_json::from_str(t.as_str())?))
                }
                Some(Ok(Message::Close(frame))) => anyhow::bail!("closed: {frame:?}"),
                Some(Ok(Message::Ping(_))) => self.pings += 1,
                Some(Ok(_)) => continue,
                Some(Err(e)) => anyhow::bail!("read error: {e}"),
                None => anyhow::bail!("connection ended"),
            }
        }
    }

    /// Records the seq of a room event.
    fn note(&mut self, v: Value) -> Value {
        if let Some(seq) = room_seq(&v) {
            self.last_seq = seq;
        }
        v
    }

    /// The next frame, which, if it is a room event, must carry exactly
    /// `last_seq + 1`: no gap, no duplicate, no reordering.
    pub async fn recv_next(&mut self) -> anyhow::Result<Value> {
        let expected = self.last_seq + 1;
        let v = self.recv().await?;
        if let Some(seq) = room_seq(&v) {
            anyhow::ensure!(seq == expected, "expected seq {expected}, got {v}");
        }
        Ok(v)
    }

    /// The next frame of a given `type`, skipping others.
    pub async fn recv_type(&mut self, kind: &str) -> anyhow::Result<Value> {
        loop {
            let v = self.recv().await?;
            if v["type"] == kind {
                return Ok(v);
            }
        }
    }

    /// Whether no text frame arrives within `within`.
    pub async fn silent_for(&mut self, within: Duration) -> bool {
        self.recv_within(within).await.is_err()
    }

    /// Reads until the connection ends, returning how it ended and the
    /// frames that came before.
    pub async fn until_end(&mut self, within: Duration) -> anyhow::Result<(Ended, Vec<Value>)> {
        let mut frames = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let msg = tokio::time::timeout(left, self.stream.next())
                .await
                .map_err(|_| anyhow::anyhow!("connection still open after {within:?}"))?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let v = serde_json::from_str(t.as_str())?;
                    frames.push(self.note(v));
                }
                Some(Ok(Message::Ping(_))) => self.pings += 1,
                Some(Ok(Message::Close(Some(f)))) => {
                    return Ok((Ended::Closed(f.code.into(), f.reason.to_string()), frames))
                }
                Some(Ok(Message::Close(None))) => {
                    return Ok((Ended::Closed(1005, String::new()), frames))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ok((Ended::Dropped, frames)),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

/// The room seq of a room event (`message`, `join`, `leave`); `None` for
/// `welcome`, `error` and anything else.
pub fn room_seq(v: &Value) -> Option<u64> {
    match v["type"].as_str() {
        Some("message" | "join" | "leave") => v["seq"].as_u64(),
        _ => None,
    }
}
