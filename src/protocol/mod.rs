//! Wire formats, one module per protocol. Nothing here knows about actors: a frame is parsed
//! once into a typed request, and replies are encoded from plain data.

pub mod native;

/// Room names: `[A-Za-z0-9:_.-]{1,128}`.
pub fn valid_room_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'-'))
}

/// Event names: 1-128 bytes, no control characters.
pub fn valid_event_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_follow_the_pattern() {
        assert!(valid_room_name("project:42"));
        assert!(valid_room_name("a.b-c_d:E9"));
        assert!(!valid_room_name(""));
        assert!(!valid_room_name("has space"));
        assert!(!valid_room_name("emoji🙂"));
        assert!(!valid_room_name(&"x".repeat(129)));
        assert!(valid_room_name(&"x".repeat(128)));
    }
}

pub mod sse;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::auth::UserInfo;

/// How a member's connection wants room traffic encoded. A room encodes each message at most
/// once per wire in use, never once per member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// `/ws` JSON frames (`message`, `presence`, `joined`, …).
    Native,
    /// `/api/operations/{id}/ws`: the bare status object of each status event, closed after
    /// the terminal one.
    StatusStream,
    /// `/api/operations/{id}/events`: Server-Sent Events, ended after the terminal event.
    Sse,
}

pub const WIRES: usize = 3;

impl Wire {
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A room message as the room sees it, for encoding.
pub struct Event<'a> {
    pub room: &'a str,
    pub offset: u64,
    pub event: &'a str,
    pub data: &'a RawValue,
    pub from: Option<&'a UserInfo>,
    /// Application sequence (an operation's log offset), used as the SSE event id.
    pub seq: Option<u64>,
}

/// A frame sent to one joiner ahead of live traffic (an operation's status snapshot and the log
/// lines it missed).
#[derive(Debug, Clone)]
pub struct Backfill {
    pub event: String,
    pub data: Box<RawValue>,
    pub seq: Option<u64>,
}

/// Status events are the ones a status stream carries.
pub fn is_status_event(event: &str) -> bool {
    event == "operation.progress" || is_terminal_event(event)
}

pub fn is_terminal_event(event: &str) -> bool {
    matches!(
        event,
        "operation.completed" | "operation.failed" | "operation.cancelled"
    )
}

impl Wire {
    /// Encodes a room message for this wire; `None` when this wire does not carry it.
    pub fn encode(self, e: &Event) -> Option<Bytes> {
        match self {
            Wire::Native => Some(native::message(e.room, e.offset, e.event, e.data, e.from)),
            Wire::StatusStream => {
                is_status_event(e.event).then(|| Bytes::copy_from_slice(e.data.get().as_bytes()))
            }
            Wire::Sse => Some(sse::event(e.event, e.data, e.seq)),
        }
    }

    pub fn encode_backfill(self, room: &str, b: &Backfill) -> Option<Bytes> {
        match self {
            Wire::Native => Some(native::backfill(room, &b.event, &b.data, b.seq)),
            Wire::StatusStream => {
                is_status_event(&b.event).then(|| Bytes::copy_from_slice(b.data.get().as_bytes()))
            }
            Wire::Sse => Some(sse::event(&b.event, &b.data, b.seq)),
        }
    }

    /// Whether this wire's connection ends after delivering `event`.
    pub fn ends_after(self, event: &str) -> bool {
        matches!(self, Wire::StatusStream | Wire::Sse) && is_terminal_event(event)
    }

    /// Presence, `joined` and other control frames are for the native protocol only.
    pub fn wants_control(self) -> bool {
        self == Wire::Native
    }
}
