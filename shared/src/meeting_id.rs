//! The rules for a `meeting_id`, shared so that the balancer refuses exactly
//! what a node would refuse, before anything is proxied.
//!
//! A meeting id is 1 to 128 bytes after percent-decoding, made only of the
//! URL-unreserved characters `A-Z a-z 0-9 . _ ~ -`. Keeping to unreserved
//! characters means an id has a single spelling in a URL, so it hashes the
//! same however a client chose to encode it.

use std::borrow::Cow;
use std::fmt;

/// The longest meeting id, in bytes after percent-decoding.
pub const MAX_LEN: usize = 128;

/// A validated meeting id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeetingId(String);

/// Why a request carries no usable meeting id. The `Display` text is the
/// plain-text reason sent with a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeetingIdError {
    #[error("missing query parameter `{0}`")]
    Missing(String),
    #[error("query parameter `{0}` is given more than once")]
    Repeated(String),
    #[error("`{param}` is empty")]
    Empty { param: String },
    #[error("`{param}` is {len} bytes long; at most {MAX_LEN} are allowed")]
    TooLong { param: String, len: usize },
    #[error("`{param}` has a character outside A-Z a-z 0-9 . _ ~ - at byte {at}")]
    BadChar { param: String, at: usize },
}

impl MeetingId {
    /// Validates an already-decoded value.
    pub fn parse(value: &str, param: &str) -> Result<Self, MeetingIdError> {
        if value.is_empty() {
            return Err(MeetingIdError::Empty {
                param: param.to_owned(),
            });
        }
        if value.len() > MAX_LEN {
            return Err(MeetingIdError::TooLong {
                param: param.to_owned(),
                len: value.len(),
            });
        }
        if let Some(at) = value.bytes().position(|b| !is_allowed(b)) {
            return Err(MeetingIdError::BadChar {
                param: param.to_owned(),
                at,
            });
        }
        Ok(MeetingId(value.to_owned()))
    }

    /// Finds `param` in a raw (still percent-encoded) query string and
    /// validates it. A parameter given twice is refused rather than guessed
    /// at, because the balancer and a node might otherwise pick differently.
    pub fn from_query(query: Option<&str>, param: &str) -> Result<Self, MeetingIdError> {
        match query_param(query, param)? {
            Some(value) => Self::parse(&value, param),
            None => Err(MeetingIdError::Missing(param.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MeetingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for MeetingId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

fn is_allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-')
}

/// Returns the decoded value of `name` in a raw query, `None` when absent, and
/// an error when it is given more than once.
pub fn query_param<'q>(
    query: Option<&'q str>,
    name: &str,
) -> Result<Option<Cow<'q, str>>, MeetingIdError> {
    let mut found = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if key == name {
            if found.is_some() {
                return Err(MeetingIdError::Repeated(name.to_owned()));
            }
            found = Some(value);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_unreserved_characters() {
        let id = MeetingId::from_query(Some("meeting_id=Team.Sync_1~a-b"), "meeting_id");
        assert_eq!(id.map(|m| m.0), Ok("Team.Sync_1~a-b".to_owned()));
    }

    #[test]
    fn percent_decoding_happens_before_validation() {
        let id = MeetingId::from_query(Some("meeting_id=abc%2Ddef"), "meeting_id");
        assert_eq!(id.map(|m| m.0), Ok("abc-def".to_owned()));
    }

    #[test]
    fn refuses_what_the_rules_refuse() {
        let q = |s: &str| MeetingId::from_query(Some(s), "meeting_id");
        assert_eq!(q("x=1"), Err(MeetingIdError::Missing("meeting_id".into())));
        assert!(matches!(
            q("meeting_id="),
            Err(MeetingIdError::Empty { .. })
        ));
        assert!(matches!(
            q("meeting_id=a%20b"),
            Err(MeetingIdError::BadChar { at: 1, .. })
        ));
        assert!(matches!(
            q("meeting_id=a+b"),
            Err(MeetingIdError::BadChar { .. })
        ));
        assert!(matches!(
            q("meeting_id=%ZZ"),
            Err(MeetingIdError::BadChar { at: 0, .. })
        ));
        assert!(matches!(
            q("meeting_id=%C3%A9"),
            Err(MeetingIdError::BadChar { .. })
        ));
        let long = format!("meeting_id={}", "a".repeat(129));
        assert!(matches!(
            q(&long),
            Err(MeetingIdError::TooLong { len: 129, .. })
        ));
        assert!(q(&format!("meeting_id={}", "a".repeat(128))).is_ok());
        assert_eq!(
            q("meeting_id=a&meeting_id=b"),
            Err(MeetingIdError::Repeated("meeting_id".into()))
        );
        assert_eq!(
            MeetingId::from_query(None, "m"),
            Err(MeetingIdError::Missing("m".into()))
        );
    }
}
