//! A WebSocket member that reconnects by the rules of docs/PROTOCOL.md, for
//! tests that change the cluster under traffic:
//! - 4001 (room moved) and 4002 (slow consumer): reconnect at once (4001
//!   with 0–250 ms of jitter);
//! - anything else (1001, 4003, a dropped connection, a refused connect):
//!   exponential backoff from 250 ms to 10 s with full jitter;
//! - always resume with `since=<last seq seen>&since_room=<its welcome.room>`.
//!
//! The member runs on its own task; the test reads its state.

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What the test can see of a member.
#[derive(Clone, Debug, Default)]
pub struct MemberState {
    /// Connected now (welcome received, not yet closed).
    pub connected: bool,
    /// The node of the current (or last) connection.
    pub node: String,
    pub last_seq: Option<u64>,
    /// The incarnation `last_seq` belongs to (`welcome.room`).
    pub room: String,
    /// Connections that ended.
    pub disconnects: u32,
    /// Close codes received, in order (0: dropped without a close frame).
    pub closes: Vec<u16>,
    /// Texts of the `message` events received.
    pub texts: HashSet<String>,
    /// Room events whose seq skipped ahead, or repeated one already seen.
    pub gaps: u32,
    pub duplicates: u32,
    /// Resumes the node could not serve from history.
    pub not_recovered: u32,
}

pub struct Member {
    pub meeting: String,
    state: Arc<Mutex<MemberState>>,
    tx: mpsc::UnboundedSender<String>,
    task: JoinHandle<()>,
}

impl Member {
    /// Starts a member of `meeting` connecting to `ws_base` (for example
    /// `ws://127.0.0.1:8080/websocket`).
    pub fn spawn(ws_base: &str, meeting: &str, user: &str) -> Member {
        let state = Arc::new(Mutex::new(MemberState::default()));
        let (tx, rx) = mpsc::unbounded_channel();
        let url = format!("{ws_base}?meeting_id={meeting}&user={user}");
        let task = tokio::spawn(run(url, state.clone(), rx));
        Member {
            meeting: meeting.to_owned(),
            state,
            tx,
            task,
        }
    }

    pub fn state(&self) -> MemberState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Sends a chat message now, or as soon as it is connected again.
    pub fn send(&self, text: &str) {
        let _ = self.tx.send(text.to_owned());
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn update(state: &Mutex<MemberState>, f: impl FnOnce(&mut MemberState)) {
    if let Ok(mut s) = state.lock() {
        f(&mut s);
    }
}

async fn run(url: String, state: Arc<Mutex<MemberState>>, mut rx: mpsc::UnboundedReceiver<String>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let resume = state
            .lock()
            .ok()
            .and_then(|s| s.last_seq.map(|seq| (seq, s.room.clone())));
        let url = match resume {
            Some((seq, room)) => format!("{url}&since={seq}&since_room={room}"),
            None => url.clone(),
        };
        let code = match session(&url, &state, &mut rx).await {
            Some(code) => code,
            None => {
                // Could not connect at all.
                let wait = jitter(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        update(&state, |s| {
            s.connected = false;
            s.disconnects += 1;
            s.closes.push(code);
        });
        let wait = match code {
            4001 => {
                backoff = FIRST_BACKOFF;
                jitter(Duration::from_millis(250))
            }
            4002 => {
                backoff = FIRST_BACKOFF;
                Duration::ZERO
            }
            _ => {
                let wait = jitter(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

fn jitter(up_to: Duration) -> Duration {
    Duration::from_millis(rand::rng().random_range(0..=up_to.as_millis() as u64))
}

/// One connection. Returns its close code (0 when it dropped), or `None`
/// if it never got a welcome.
async fn session(
    url: &str,
    state: &Mutex<MemberState>,
    rx: &mut mpsc::UnboundedReceiver<String>,
) -> Option<u16> {
    let connect = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    );
    let (mut ws, _) = connect.await.ok()?.ok()?;
    let welcome: Value = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .ok()??
        {
            Ok(Message::Text(t)) => break serde_json::from_str(t.as_str()).ok()?,
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    };
    update(state, |s| {
        s.connected = true;
        s.node = welcome["node"].as_str().unwrap_or_default().to_owned();
        if welcome["recovered"] == false {
            // The history does not reach back: start counting afresh.
            s.not_recovered += 1;
            s.last_seq = None;
        }
        s.room = welcome["room"].as_str().unwrap_or_default().to_owned();
    });
    loop {
        tokio::select! {
            text = rx.recv() => {
                let Some(text) = text else { return Some(1000) };
                let frame = json!({"type": "message", "text": text}).to_string();
                if ws.send(Message::text(frame)).await.is_err() {
                    return Some(0);
                }
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    let Ok(event) = serde_json::from_str::<Value>(t.as_str()) else { continue };
                    update(state, |s| observe(s, &event));
                }
                Some(Ok(Message::Close(frame))) => return Some(frame.map_or(1005, |f| f.code.into())),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Some(0),
            }
        }
    }
}

fn observe(s: &mut MemberState, event: &Value) {
    let Some(seq) = event["seq"].as_u64() else {
        return;
    };
    match s.last_seq {
        Some(last) if seq <= last => s.duplicates += 1,
        Some(last) if seq > last + 1 => s.gaps += 1,
        _ => {}
    }
    if s.last_seq.is_none_or(|last| seq > last) {
        s.last_seq = Some(seq);
    }
    if event["type"] == "message" {
        if let Some(text) = event["text"].as_str() {
            s.texts.insert(text.to_owned());
        }
    }
}
