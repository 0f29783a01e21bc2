//! What travels from a room to its members' writer tasks.
//!
//! A room event is serialised once, into bytes shared by every recipient's
//! queue; the SSE framing of it is built at most once, by the first SSE
//! member that needs it.

use bytes::Bytes;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, OnceLock};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use roompin_shared::protocol::ServerEvent;

/// One serialised event.
#[derive(Debug)]
pub struct Event {
    /// The room seq, or 0 for per-connection frames (welcome, error).
    pub seq: u64,
    pub kind: &'static str,
    pub json: Utf8Bytes,
    sse: OnceLock<Bytes>,
}

impl Event {
    pub fn new(event: &ServerEvent) -> Arc<Event> {
        Self::from_json(event.seq().unwrap_or(0), event.kind(), event.to_json())
    }

    pub fn from_json(seq: u64, kind: &'static str, json: String) -> Arc<Event> {
        Arc::new(Event {
            seq,
            kind,
            json: Utf8Bytes::from(json),
            sse: OnceLock::new(),
        })
    }

    /// `id:`/`event:`/`data:` framing; `id:` only for room events, so that
    /// `Last-Event-ID` always names a room seq.
    pub fn sse(&self) -> Bytes {
        self.sse
            .get_or_init(|| {
                let mut out = String::with_capacity(self.json.len() + 48);
                if self.seq > 0 {
                    out.push_str(&format!("id: {}\n", self.seq));
                }
                out.push_str(&format!(
                    "event: {}\ndata: {}\n\n",
                    self.kind,
                    self.json.as_str()
                ));
                Bytes::from(out)
            })
            .clone()
    }

    /// Bytes this event holds, for the history budget.
    pub fn cost(&self) -> usize {
        self.json.len() + std::mem::size_of::<Event>()
    }
}

/// Why a member was removed by the node rather than by its own leaving; the
/// writer turns it into a close code (WebSocket) or a last event (SSE).
#[derive(Debug, Default)]
pub struct Kick {
    code: AtomicU16,
    token: CancellationToken,
}

impl Kick {
    /// Records the first reason only, then wakes the writer.
    pub fn kick(&self, code: u16) {
        let _ = self
            .code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.token.cancel();
    }

    /// The close code, if the member was kicked.
    pub fn code(&self) -> Option<u16> {
        match self.code.load(Ordering::Acquire) {
            0 => None,
            c => Some(c),
        }
    }

    pub async fn kicked(&self) {
        self.token.cancelled().await
    }
}
