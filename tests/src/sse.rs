//! An SSE test client, parsed by `eventsource-stream`.

use eventsource_stream::{Event, Eventsource};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use std::pin::Pin;

type Events = Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>;

pub struct SseClient {
    events: Events,
    pub welcome: Value,
}

/// One received event: its `id:` (room seq, if any), `event:` and JSON data.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

impl SseClient {
    /// Opens the stream (with `Last-Event-ID` if given) and reads the welcome.
    pub async fn connect(url: &str, last_event_id: Option<u64>) -> anyhow::Result<SseClient> {
        let mut req = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = tokio::time::timeout(crate::PATIENCE, req.send()).await??;
        anyhow::ensure!(resp.status() == 200, "{url} answered {}", resp.status());
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        anyhow::ensure!(
            ctype.starts_with("text/event-stream"),
            "content-type is {ctype:?}"
        );
        let events: Events = Box::pin(
            resp.bytes_stream()
                .eventsource()
                .map(|r| r.map_err(|e| e.to_string())),
        );
        let mut client = SseClient {
            events,
            welcome: Value::Null,
        };
        let welcome = client.recv().await?;
        anyhow::ensure!(
            welcome.event == "welcome",
            "first event is not welcome: {welcome:?}"
        );
        client.welcome = welcome.data;
        Ok(client)
    }

    pub async fn recv(&mut self) -> anyhow::Result<SseEvent> {
        let next = tokio::time::timeout(crate::PATIENCE, self.events.next())
            .await
            .map_err(|_| anyhow::anyhow!("no event within {:?}", crate::PATIENCE))?;
        let event = next
            .ok_or_else(|| anyhow::anyhow!("stream ended"))?
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(SseEvent {
            id: event.id.parse().ok(),
            event: event.event,
            data: serde_json::from_str(&event.data)?,
        })
    }

    /// Whether the stream has ended (or errored) within `within`.
    pub async fn ended_within(&mut self, within: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.events.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}
