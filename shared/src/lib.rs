//! What the balancer and the chat nodes must agree on, in one place.
//!
//! If two processes disagree on any of these, meetings split: the ring decides
//! which node owns a meeting, `meeting_id` decides which requests are valid at
//! all, the protocol decides what clients see, and the config types decide
//! what operators can write. And one thing both binaries do alike: give
//! the memory an attack freed back to the system (`heap`).

pub mod auth;
pub mod config;
pub mod control;
pub mod heap;
pub mod logging;
pub mod meeting_id;
pub mod protocol;
pub mod ring;

pub use meeting_id::{MeetingId, MeetingIdError};
pub use ring::{Member, Ring};
