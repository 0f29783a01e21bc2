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
    /// Every protocol reads the room from `meeting_id`: the plain and
    /// Socket.IO servers the bench compares against are written to take the
    /// same URL (Socket.IO's handshake query, plus Engine.IO's own fields).
    pub fn query(self, meeting: &str, user: &str) -> String {
        match self.0 {
            ProtocolKind::Socketio => {
                format!("EIO=4&transport=websocket&meeting_id={meeting}&user={user}")
            }
            _ => format!("meeting_id={meeting}&user={user}"),
        }
    }

    /// Socket.IO only: the frames of the connect handshake. The server opens
    /// with an Engine.IO `0{...}`; the client asks for the default namespace
    /// with `40` and is in once the server answers `40{"sid":...}`.
    pub fn socketio_connect(self) -> Option<&'static str> {
        matches!(self.0, ProtocolKind::Socketio).then_some("40")
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
            ProtocolKind::Socketio => {
                let text = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into());
                format!("42[\"m\",{text}]")
            }
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
            ProtocolKind::Socketio => decode_socketio(frame),
        }
    }
}

/// Socket.IO v4: `42["m","text"]` is an event on the default namespace.
/// Engine.IO control packets (`0` open, `2` ping, `40` connect ack) are not
/// chat traffic.
fn decode_socketio(frame: &str) -> Incoming<'_> {
    let Some(args) = frame.strip_prefix("42") else {
        return Incoming::Other;
    };
    // Fast path for the texts the loadgen sends (no escapes): borrow.
    if let Some(text) = args
        .strip_prefix("[\"m\",\"")
        .and_then(|t| t.strip_suffix("\"]"))
    {
        if !text.contains(['\\', '"']) {
            return Incoming::Message {
                seq: None,
                text: Cow::Borrowed(text),
            };
        }
    }
    match serde_json::from_str::<(String, String)>(args) {
        Ok((event, text)) if event == "m" => Incoming::Message {
            seq: None,
            text: Cow::Owned(text),
        },
        _ => Incoming::Other,
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
    const SIO: Protocol = Protocol(ProtocolKind::Socketio);

    #[test]
    fn socketio_frames() {
        assert_eq!(SIO.encode("1:x"), r#"42["m","1:x"]"#);
        assert_eq!(
            SIO.decode(r#"42["m","1:x"]"#),
            Incoming::Message {
                seq: None,
                text: "1:x".into()
            }
        );
        assert_eq!(
            SIO.decode(r#"42["m","a\"b"]"#),
            Incoming::Message {
                seq: None,
                text: "a\"b".into()
            }
        );
        assert_eq!(SIO.decode(r#"0{"sid":"x"}"#), Incoming::Other);
        assert_eq!(SIO.decode(r#"40{"sid":"x"}"#), Incoming::Other);
        assert_eq!(SIO.decode(r#"42["other","x"]"#), Incoming::Other);
        assert!(SIO.query("m", "u").contains("EIO=4&transport=websocket"));
    }

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
