//! Wire protocol v1: JSON text frames over WebSocket, the same JSON as SSE
//! `data:`. docs/PROTOCOL.md is the prose version of this file; keep the two
//! in step.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// The protocol version a node announces in `welcome`.
pub const VERSION: u32 = 1;

/// The query parameter a node reads the meeting from. (A balancer may hash
/// another one, its `hash_param`; it then passes the value on under this
/// name.)
pub const MEETING_PARAM: &str = "meeting_id";

/// How the body of a balancer's own `503` begins when it reaches no chat
/// node at all: another balancer may, so a client reconnects through
/// another balancer address at once rather than backing off
/// (docs/PROTOCOL.md, "Reconnecting").
pub const NO_NODE_REASON: &str = "no healthy chat node";

/// WebSocket close codes. The 4000s are ours and each tells the client what
/// to do next (see docs/PROTOCOL.md, "Reconnecting").
pub mod close {
    /// The client or the node ended the session on purpose.
    pub const NORMAL: u16 = 1000;
    /// The node is shutting down; reconnect with backoff.
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the WebSocket protocol itself (or closed with a code
    /// RFC 6455 does not allow).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame, or a close frame's reason, that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// The client kept sending past its rate limit (`rate_limit_close_after`
    /// frames over it in a row).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame exceeded `max_message_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// The node hit an internal error.
    pub const INTERNAL: u16 = 1011;
    /// The meeting now belongs to another node: reconnect at once, with a
    /// small jitter, and resume with `since`.
    pub const ROOM_MOVED: u16 = 4001;
    /// The client read too slowly and its queue overflowed: reconnect and
    /// resume with `since` to get what it missed.
    pub const SLOW_CONSUMER: u16 = 4002;
    /// The client stopped answering pings.
    pub const PING_TIMEOUT: u16 = 4003;

    pub const ROOM_MOVED_REASON: &str = "room moved: reconnect now";
    pub const GOING_AWAY_REASON: &str = "node shutting down";
    pub const SLOW_CONSUMER_REASON: &str = "slow consumer: reconnect with since";
    pub const PING_TIMEOUT_REASON: &str = "no pong in time";
    /// The same words tungstenite uses when it answers a close frame with
    /// an invalid code, so that every 1002 reads alike.
    pub const PROTOCOL_ERROR_REASON: &str = "Protocol violation";
    pub const INVALID_DATA_REASON: &str = "invalid UTF-8";
    pub const TOO_BIG_REASON: &str = "frame too big";
    pub const INTERNAL_REASON: &str = "internal error";
    pub const RATE_LIMITED_REASON: &str = "rate limit exceeded";
}

/// Stable, machine-readable codes of `error` frames.
pub mod error_code {
    pub const BAD_JSON: &str = "bad_json";
    pub const UNKNOWN_TYPE: &str = "unknown_type";
    pub const MISSING_TYPE: &str = "missing_type";
    pub const MISSING_TEXT: &str = "missing_text";
    pub const BINARY_UNSUPPORTED: &str = "binary_unsupported";
    /// A message sent while its room was being handed to another node was
    /// not delivered; resend it after the 4001 reconnect.
    pub const ROOM_MOVED: &str = "room_moved";
    /// The frame came faster than `messages_per_second` (after a burst of
    /// `message_burst`) allows: it was not published. Slow down; a client
    /// that keeps going is closed with 1008.
    pub const RATE_LIMITED: &str = "rate_limited";
}

/// What a client may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    Message { text: Cow<'a, str> },
}

/// A refused client frame: the node answers it with an `error` frame and
/// keeps the connection open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: &'static str,
    pub message: String,
}

impl<'a> ClientFrame<'a> {
    /// Parses one text frame. Unknown fields are ignored so that newer
    /// clients can talk to older nodes.
    pub fn parse(text: &'a str) -> Result<Self, FrameError> {
        #[derive(Deserialize)]
        struct Raw<'a> {
            #[serde(rename = "type", borrow, default)]
            kind: Option<Cow<'a, str>>,
            #[serde(borrow, default)]
            text: Option<Cow<'a, str>>,
        }
        let raw: Raw<'a> = serde_json::from_str(text).map_err(|e| FrameError {
            code: error_code::BAD_JSON,
            message: format!("frame is not a JSON object of the expected shape: {e}"),
        })?;
        match raw.kind.as_deref() {
            Some("message") => match raw.text {
                Some(text) => Ok(ClientFrame::Message { text }),
                None => Err(FrameError {
                    code: error_code::MISSING_TEXT,
                    message: "a `message` frame needs a string field `text`".into(),
                }),
            },
            Some(other) => Err(FrameError {
                code: error_code::UNKNOWN_TYPE,
                message: format!("unknown frame type `{other}`; this node understands `message`"),
            }),
            None => Err(FrameError {
                code: error_code::MISSING_TYPE,
                message: "the frame has no string field `type`".into(),
            }),
        }
    }
}

/// Everything a node sends. Room events (`message`, `join`, `leave`) carry the
/// room's `seq`; `welcome` and `error` are for one connection only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerEvent {
    Welcome {
        meeting_id: String,
        node: String,
        conn_id: String,
        /// The room's incarnation: it names the numbering that `seq`s belong
        /// to. It survives room moves (the history goes with it) and changes
        /// when a room starts afresh (e.g. its node died). Resume with
        /// `since=<seq>&since_room=<this>`.
        room: String,
        /// The room's last seq when this connection joined (0 for a new room).
        seq: u64,
        /// Members including this connection.
        members: usize,
        /// Present only when the client asked to resume with `since`: false
        /// when the room's history no longer reaches back that far.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    Message {
        meeting_id: String,
        seq: u64,
        from: String,
        text: String,
        /// Unix time in milliseconds, taken by the node.
        ts: u64,
    },
    Join {
        meeting_id: String,
        seq: u64,
        conn_id: String,
        user: String,
        members: usize,
    },
    Leave {
        meeting_id: String,
        seq: u64,
        conn_id: String,
        user: String,
        members: usize,
    },
    Error {
        code: String,
        message: String,
    },
    /// SSE only: the room moved to another node; the stream ends after this.
    /// (WebSocket clients get close code 4001 instead.)
    Moved {
        meeting_id: String,
    },
}

impl ServerEvent {
    /// The `type` field, which is also the SSE `event:` name.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerEvent::Welcome { .. } => "welcome",
            ServerEvent::Message { .. } => "message",
            ServerEvent::Join { .. } => "join",
            ServerEvent::Leave { .. } => "leave",
            ServerEvent::Error { .. } => "error",
            ServerEvent::Moved { .. } => "moved",
        }
    }

    /// The room seq of a room event.
    pub fn seq(&self) -> Option<u64> {
        match self {
            ServerEvent::Message { seq, .. }
            | ServerEvent::Join { seq, .. }
            | ServerEvent::Leave { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    pub fn error(code: &str, message: impl Into<String>) -> Self {
        ServerEvent::Error {
            code: code.to_owned(),
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail: no maps with non-string
        // keys, no custom Serialize impls.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// The body of `POST /messages`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishRequest {
    pub text: String,
    #[serde(default)]
    pub user: Option<String>,
}

/// The answer to `POST /messages` (202).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishAccepted {
    pub seq: u64,
    /// The room incarnation the seq counts in (`welcome.room`).
    #[serde(default)]
    pub room: String,
}

/// The longest `user` name, in characters.
pub const MAX_USER_CHARS: usize = 64;

/// A display name: 1 to `MAX_USER_CHARS` characters, no control characters.
/// The error is the reason sent with a 400.
pub fn check_user(user: &str) -> Result<(), String> {
    let chars = user.chars().count();
    if chars == 0 || chars > MAX_USER_CHARS {
        return Err(format!(
            "`user` must be 1 to {MAX_USER_CHARS} characters, got {chars}"
        ));
    }
    if user.chars().any(char::is_control) {
        return Err("`user` must not contain control characters".into());
    }
    Ok(())
}

/// A room incarnation id as `welcome.room` carries it: 1 to 64 letters and
/// digits.
pub fn check_room(room: &str) -> Result<(), String> {
    let ok =
        !room.is_empty() && room.len() <= 64 && room.bytes().all(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err("`since_room` must be the `room` of a welcome: 1-64 letters and digits".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_message() {
        let f = ClientFrame::parse(r#"{"type":"message","text":"hi \"you\"","extra":1}"#);
        assert_eq!(
            f,
            Ok(ClientFrame::Message {
                text: "hi \"you\"".into()
            })
        );
    }

    #[test]
    fn refusals_carry_stable_codes() {
        let code = |s: &str| ClientFrame::parse(s).map(|_| ()).map_err(|e| e.code);
        assert_eq!(code("{not json"), Err(error_code::BAD_JSON));
        assert_eq!(code("[1,2]"), Err(error_code::BAD_JSON));
        assert_eq!(
            code(r#"{"type":"shout","text":"x"}"#),
            Err(error_code::UNKNOWN_TYPE)
        );
        assert_eq!(code(r#"{"type":"message"}"#), Err(error_code::MISSING_TEXT));
        assert_eq!(code(r#"{"text":"x"}"#), Err(error_code::MISSING_TYPE));
        assert_eq!(
            code(r#"{"type":"message","text":5}"#),
            Err(error_code::BAD_JSON)
        );
    }

    #[test]
    fn events_serialise_with_their_type_tag() {
        let e = ServerEvent::Join {
            meeting_id: "m".into(),
            seq: 3,
            conn_id: "c1".into(),
            user: "ann".into(),
            members: 2,
        };
        let json = e.to_json();
        assert_eq!(
            json,
            r#"{"type":"join","meeting_id":"m","seq":3,"conn_id":"c1","user":"ann","members":2}"#
        );
        assert_eq!(serde_json::from_str::<ServerEvent>(&json).ok(), Some(e));
    }
}
