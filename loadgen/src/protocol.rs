//! Everything that differs between the servers the loadgen can drive: how a
//! member's URL looks, how a message is framed, and what the server's frames
//! mean. The rest of the loadgen only sees [`Incoming`], so another protocol
//! (Socket.IO, say) is one more variant here.

use crate::cli::ProtocolKind;
use serde::Deserialize;
use std::borrow::Cow;

/// One frame from the server, reduced to what the measurements need.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// Sent first on every connection; `seq` is the room seq before our join.
    Welcome { seq: u64 },
    /// A chat message. `seq` is `None` for protocols without seqs.
    Message {
        seq: Option<u64>,
        text: Cow<'a, str>,
    },
    /// Another room event with a seq (join, leave).
    Event { seq: u64 },
    /// The server refused something we sent.
    Error { code: String },
    /// SSE only: the room moved away; the stream ends.
    Moved,
    /// Anything else (unknown types, unparseable frames).
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol(pub ProtocolKind);

impl Protocol {
    /// Whether the server greets with a `welcome` before any room event.
    pub fn has_welcome(self) -> bool {
        matches!(self.0, ProtocolKind::Roompin)
    }

    /// Whether room events carry a seq (so loss is counted per seq rather
    /// than by totals).
    pub fn has_seq(self) -> bool {
        matches!(self.0, ProtocolKind::Roompin)
    }

    /// The query string that puts a member named `user` in room `meeting`.
    /// Both protocols read the room from `meeting_id`: the plain server the
    /// bench compares against is written to take the same URL.
    pub fn query(self, meeting: &str, user: &str) -> String {
        format!("meeting_id={meeting}&user={user}")
    }

    /// The WebSocket text frame that publishes `text`.
    pub fn encode(self, text: &str) -> String {
        match self.0 {
            ProtocolKind::Roompin => {
                // serde_json escapes whatever the text holds; ours is ASCII.
                let text = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into());
                format!("{{\"type\":\"message\",\"text\":{text}}}")
            }
            ProtocolKind::Plain => text.to_owned(),
        }
    }

    /// The body of `POST /messages` (roompin only).
    pub fn publish_body(self, text: &str) -> String {
        serde_json::json!({ "text": text }).to_string()
    }

    pub fn decode(self, frame: &str) -> Incoming<'_> {
        match self.0 {
            ProtocolKind::Roompin => decode_roompin(frame),
            ProtocolKind::Plain => Incoming::Message {
                seq: None,
                text: Cow::Borrowed(frame),
            },
        }
    }
}

fn decode_roompin(frame: &str) -> Incoming<'_> {
    /// Borrows where it can: at high fan-out the loadgen parses every frame
    /// every member receives, so it should not allocate for the common case.
    #[derive(Deserialize)]
    struct Raw<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(default)]
        seq: Option<u64>,
        #[serde(borrow, default)]
        text: Option<Cow<'a, str>>,
        #[serde(default)]
        code: Option<String>,
    }
    let Ok(raw) = serde_json::from_str::<Raw<'_>>(frame) else {
        return Incoming::Other;
    };
    match (&*raw.kind, raw.seq) {
        ("welcome", Some(seq)) => Incoming::Welcome { seq },
        ("message", seq) => Incoming::Message {
            seq,
            text: raw.text.unwrap_or_default(),
        },
        ("join" | "leave", Some(seq)) => Incoming::Event { seq },
        ("error", _) => Incoming::Error {
            code: raw.code.unwrap_or_default(),
        },
        ("moved", _) => Incoming::Moved,
        _ => Incoming::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: Protocol = Protocol(ProtocolKind::Roompin);
    const PLAIN: Protocol = Protocol(ProtocolKind::Plain);

    #[test]
    fn roompin_frames() {
        assert_eq!(
            V1.decode(r#"{"type":"welcome","meeting_id":"m","node":"n1","conn_id":"c","seq":4,"members":1}"#),
            Incoming::Welcome { seq: 4 }
        );
        assert_eq!(
            V1.decode(
                r#"{"type":"message","meeting_id":"m","seq":7,"from":"u","text":"12:xx","ts":1}"#
            ),
            Incoming::Message {
                seq: Some(7),
                text: "12:xx".into()
            }
        );
        assert_eq!(
            V1.decode(
                r#"{"type":"leave","meeting_id":"m","seq":8,"conn_id":"c","user":"u","members":0}"#
            ),
            Incoming::Event { seq: 8 }
        );
        assert_eq!(
            V1.decode(r#"{"type":"error","code":"bad_json","message":"x"}"#),
            Incoming::Error {
                code: "bad_json".into()
            }
        );
        assert_eq!(V1.decode("nonsense"), Incoming::Other);
    }

    #[test]
    fn encoding_round_trips_through_the_node_parser() {
        let frame = V1.encode("123:\"quoted\"");
        let parsed = roompin_shared::protocol::ClientFrame::parse(&frame);
        assert_eq!(
            parsed,
            Ok(roompin_shared::protocol::ClientFrame::Message {
                text: "123:\"quoted\"".into()
            })
        );
        assert_eq!(PLAIN.encode("1:x"), "1:x");
        assert_eq!(
            PLAIN.decode("1:x"),
            Incoming::Message {
                seq: None,
                text: "1:x".into()
            }
        );
    }
}
