//! Wire formats, one module per protocol. Nothing here knows about actors: a frame is parsed
//! once into a typed [`Request`] (the one request type of every front end, [`request`]), and
//! replies are encoded from plain data ([`Reply`], [`Wire`]).
//!
//! Why this file is one piece (about 600 lines, and 80 of tests): [`Wire`] is the one place
//! that knows how each kind of client gets each kind of traffic (room messages, backfill, join
//! answers, presence, replies), an app profile's renames included; a client kind's encodings
//! read best together.

pub mod engineio;
pub mod native;
pub mod profile;
pub mod request;
pub mod sio;
pub mod socketio;

pub use crate::names::{valid_event_name, valid_room_name};
pub use request::{Request, RequestId, Retain, Since, Verb};

/// Deepest nesting of arrays and objects accepted in client payloads (`data`, `params`). Raw
/// payloads are passed through unparsed, so serde's own recursion limit does not apply to them.
pub const MAX_PAYLOAD_DEPTH: usize = 64;

/// Nesting depth of a JSON text, in one pass (brackets inside strings do not count).
pub fn json_depth(json: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Whether a JSON text nests deeper than `limit`. Counting the opening brackets first (a loop
/// the compiler vectorises) settles nearly every payload: a text with at most `limit` of them,
/// in strings or not, cannot nest deeper. Only the rest get [`json_depth`]'s byte-by-byte
/// scan, which cost ~15 instructions a byte on every publish before (docs/benchmarks.md).
pub fn nests_deeper_than(json: &str, limit: usize) -> bool {
    let openers = json.bytes().filter(|&b| b == b'[' || b == b'{').count();
    openers > limit && json_depth(json) > limit
}

/// Refuses a raw payload field nesting deeper than [`MAX_PAYLOAD_DEPTH`].
pub fn check_depth(raw: Option<&RawValue>, field: &str) -> Result<(), Refusal> {
    match raw {
        Some(d) if nests_deeper_than(d.get(), MAX_PAYLOAD_DEPTH) => Err(Refusal::new(
            crate::error::ErrorCode::InvalidField,
            format!("field `{field}` nests deeper than {MAX_PAYLOAD_DEPTH} levels"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_join_answer_is_the_one_serde_flatten_wrote() {
        #[derive(serde::Serialize)]
        struct Joined<'a> {
            #[serde(rename = "type")]
            t: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            id: Option<&'a RawValue>,
            #[serde(flatten)]
            answer: &'a JoinAnswer<'a>,
        }
        #[derive(serde::Serialize)]
        struct Ack<'a> {
            ok: bool,
            #[serde(flatten)]
            answer: &'a JoinAnswer<'a>,
        }
        let ann = UserInfo {
            id: "ann \"the\" \u{1}first".into(),
            name: Some("Ann".into()),
        };
        let bob = UserInfo {
            id: "bob".into(),
            name: None,
        };
        let id = RawValue::from_string("42".into()).unwrap();
        for presence in [&[][..], &[&ann][..], &[&ann, &bob][..]] {
            for (room, recovered) in [("r", false), ("a/\"b\"", true)] {
                let answer = JoinAnswer {
                    room,
                    epoch: "e-1",
                    offset: 7,
                    recovered,
                    presence,
                    presence_count: presence.len() + 3,
                };
                for id in [None, Some(&*id)] {
                    let derived = serde_json::to_vec(&Joined {
                        t: "joined",
                        id,
                        answer: &answer,
                    })
                    .unwrap();
                    let written = Wire::Native.joined(id, &answer).unwrap();
                    assert_eq!(written, derived, "{}", String::from_utf8_lossy(&written));
                }
                let sio = Wire::SocketIo("/".into(), None, false);
                let derived = sio::ack_ok(
                    "/",
                    Some(&id),
                    &Ack {
                        ok: true,
                        answer: &answer,
                    },
                );
                assert_eq!(sio.joined(Some(&id), &answer), derived);
                assert!(derived.is_some());
            }
        }
    }

    #[test]
    fn depth_counts_nesting_outside_strings() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth(r#"{"a":[1,{"b":2}]}"#), 3);
        assert_eq!(json_depth(r#"["[[[[", "\\\"{{"]"#), 1);
    }

    #[test]
    fn a_socket_io_event_is_the_packet_of_its_arguments_in_one_buffer() {
        use crate::protocol::socketio::{encode, Kind};
        let data = RawValue::from_string(r#"{"t":1,"s":"a\"b"}"#.into()).unwrap();
        let user = UserInfo {
            id: "u\"1".into(),
            name: Some("N".into()),
        };
        let plain = UserInfo {
            id: "u2".into(),
            name: None,
        };
        let mut metas = Vec::new();
        for from in [None, Some(&user), Some(&plain)] {
            for session in [None, Some("c\n1")] {
                for (offset, seq, backfill) in
                    [(Some(7), None, false), (None, Some(u64::MAX), true)]
                {
                    for message_id in [None, Some("m\"1")] {
                        metas.push(sio::Meta {
                            room: "project:\"42",
                            offset,
                            from: Sender::of(from, session),
                            backfill,
                            seq,
                            message_id,
                        });
                    }
                }
            }
        }
        let bins = [Bytes::from_static(b"x"), Bytes::from_static(b"y")];
        for (nsp, meta) in ["/", "/admin"]
            .into_iter()
            .flat_map(|n| metas.iter().map(move |m| (n, m)))
        {
            for attachments in [&[][..], &bins[..]] {
                for offset in [None, Some("r\"1:7")] {
                    let got = sio::event(nsp, "step \"x\"", &data, meta, attachments, offset);
                    let args = match offset {
                        Some(o) => serde_json::to_string(&("step \"x\"", &*data, meta, o)),
                        None => serde_json::to_string(&("step \"x\"", &*data, meta)),
                    }
                    .unwrap();
                    let kind = if attachments.is_empty() {
                        Kind::Event
                    } else {
                        Kind::BinaryEvent
                    };
                    let packet = encode(kind, nsp, None, Some(&args), attachments.len());
                    assert_eq!(
                        String::from_utf8_lossy(&got.text),
                        format!("4{packet}"),
                        "{nsp} {} {offset:?}",
                        attachments.len()
                    );
                    assert_eq!(got.binary.len(), attachments.len());
                }
            }
        }
    }

    #[test]
    fn the_bracket_count_shortcut_agrees_with_the_scan() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(!nests_deeper_than(&deep(3), 3));
        assert!(nests_deeper_than(&deep(4), 3));
        // Many brackets, shallow: inside strings, or side by side.
        assert!(!nests_deeper_than(r#"["[[[[[[[[", "{{{{{{{{{"]"#, 3));
        assert!(!nests_deeper_than(
            "[],".repeat(50).trim_end_matches(','),
            3
        ));
        assert!(nests_deeper_than(r#"{"a":1}"#, 0));
    }

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

use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::auth::UserInfo;
use crate::error::Refusal;
use crate::operations::Operation;
use crate::transport::outbox::Frame;
use profile::{Outgoing, Shape};

/// What a join answers, on every wire.
#[derive(serde::Serialize)]
pub struct JoinAnswer<'a> {
    pub room: &'a str,
    pub epoch: &'a str,
    /// The room's last offset.
    pub offset: u64,
    pub recovered: bool,
    /// Users present, at most `SWITCHYARD_PRESENCE_LIST_MAX` of them.
    pub presence: &'a [&'a UserInfo],
    /// All users present.
    pub presence_count: usize,
}

impl JoinAnswer<'_> {
    /// The answer's fields appended to an object `out` has begun (`{"type":"joined"`, say),
    /// closing it: the bytes serde's `flatten` writes for the same struct, without its map
    /// serializer (~6k instructions per join on the connection set-up path, ninth session).
    fn close_object_with_fields(&self, out: &mut Vec<u8>) {
        let at = out.len();
        // The struct's own object, `{"room":…}`, whose `{` becomes the `,` after the fields
        // already written. Cannot fail: strings, numbers and users, written to memory.
        match serde_json::to_writer(&mut *out, self) {
            Ok(()) => out[at] = b',',
            Err(e) => {
                log::error!("encoding a join answer failed: {e}");
                out.truncate(at);
                out.push(b'}');
            }
        }
    }
}

/// How a member's connection wants traffic encoded. A room encodes each message at most once
/// per wire in use, never once per member.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Wire {
    /// `/ws` JSON frames (`message`, `presence`, `joined`, …).
    Native,
    /// `/api/operations/{id}/ws` (or an app profile's alias of it, with the app's status
    /// shape): the bare status object of each status event, closed after the terminal one.
    StatusStream(Option<Shared<Shape>>),
    /// `/api/operations/{id}/events` (or an app profile's alias, with the app's status shape):
    /// Server-Sent Events, ended after the terminal event.
    Sse(Option<Shared<Shape>>),
    /// A Socket.IO socket in this namespace: Engine.IO message packets carrying Socket.IO
    /// events and acks; with the namespace's app profile renames, when it has one; with
    /// connection-state recovery on (`true`), every room event carries its offset string as
    /// its last argument ([`socketio::recovery_offset`]).
    SocketIo(Arc<str>, Option<Shared<Outgoing>>, bool),
}

/// A compiled profile part shared by every connection that uses it. Two wires are the same
/// wire when they share the very same part (one per namespace or alias, made at start-up), so
/// comparing is a pointer comparison, as cheap as comparing the namespace.
#[derive(Debug)]
pub struct Shared<T>(pub Arc<T>);

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> PartialEq for Shared<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<T> Eq for Shared<T> {}

impl<T> std::hash::Hash for Shared<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state)
    }
}

/// A status event's data in the wire's shape (an app's, for a profile's alias).
fn status_data<'a>(
    shape: &Option<Shared<Shape>>,
    data: &'a RawValue,
    room: &str,
    event: &str,
) -> std::borrow::Cow<'a, RawValue> {
    match shape {
        Some(s) => s.0.apply_raw(data, room, event),
        None => std::borrow::Cow::Borrowed(data),
    }
}

/// An event under the app's name and in its shape, when the namespace's profile renames it.
fn renamed<'a>(
    outgoing: &'a Option<Shared<Outgoing>>,
    event: &'a str,
    data: &'a RawValue,
    room: &str,
) -> (&'a str, std::borrow::Cow<'a, RawValue>) {
    match outgoing.as_ref().and_then(|o| o.0.get(event)) {
        Some(r) => (r.event.as_str(), r.shape.apply_raw(data, room, event)),
        None => (event, std::borrow::Cow::Borrowed(data)),
    }
}

/// A room message as the room sees it, for encoding.
pub struct Event<'a> {
    pub room: &'a str,
    pub offset: u64,
    pub event: &'a str,
    pub data: &'a RawValue,
    pub from: Option<&'a UserInfo>,
    /// The publishing connection's id as its client knows it (`from.session`).
    pub connection: Option<&'a str>,
    /// The id shared by the copies of a message published into several rooms at once.
    pub message_id: Option<&'a str>,
    /// Application sequence (an operation's log offset), used as the SSE event id.
    pub seq: Option<u64>,
    /// Binary attachments referenced from `data` by `{"_placeholder":true,"num":i}`.
    pub attachments: &'a [Bytes],
}

/// Who published a room message, as every wire shows it: `{"user", "name"?, "session"?}`.
/// `session` is the publishing connection's id (`welcome.session` on `/ws`, `socket.id` on
/// Socket.IO), so a client tells its own echo from its other tabs' messages.
#[derive(serde::Serialize)]
pub struct Sender<'a> {
    pub user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<&'a str>,
}

impl<'a> Sender<'a> {
    /// The sender of a message from `user` through `connection`; `None` for the server's own.
    pub fn of(user: Option<&'a UserInfo>, connection: Option<&'a str>) -> Option<Self> {
        user.map(|u| Sender {
            user: &u.id,
            name: u.name.as_deref(),
            session: connection,
        })
    }
}

/// A message encoded for one wire: one text frame, and binary frames for attachments.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub text: Bytes,
    pub binary: Arc<[Bytes]>,
}

impl Encoded {
    fn text(text: Bytes) -> Self {
        Self {
            text,
            // An empty slice's `Arc::default()` shares one static allocation; `Arc::from(Vec)`
            // allocated a header per encoded message.
            binary: Arc::default(),
        }
    }

    pub fn frames(&self) -> impl Iterator<Item = Frame> + '_ {
        std::iter::once(Frame::Text(self.text.clone()))
            .chain(self.binary.iter().cloned().map(Frame::Binary))
    }
}

/// A frame sent to one joiner ahead of live traffic (an operation's status snapshot and the log
/// lines it missed).
#[derive(Debug, Clone)]
pub struct Backfill {
    pub event: String,
    pub data: Box<RawValue>,
    pub seq: Option<u64>,
}

/// A reply to one client request.
pub enum Reply<'a> {
    Pong,
    Authenticated(&'a UserInfo),
    Left {
        room: &'a str,
    },
    Published {
        room: &'a str,
        offset: u64,
    },
    Operation(&'a Operation),
    /// A started operation and, for external ones, its worker token.
    Started(&'a Operation, Option<&'a str>),
    Duplicate(&'a Refusal, &'a Operation),
    Error(&'a Refusal),
}

/// Status events are the ones a status stream carries.
pub fn is_status_event(event: &str) -> bool {
    event == "operation.progress" || is_terminal_event(event)
}

/// True when `status` (a status object) says `completed`, `failed` or `cancelled`.
fn has_terminal_status(status: &RawValue) -> bool {
    #[derive(serde::Deserialize)]
    struct StatusOnly {
        status: Option<crate::operations::Status>,
    }
    serde_json::from_str::<StatusOnly>(status.get())
        .ok()
        .and_then(|s| s.status)
        .is_some_and(crate::operations::Status::is_terminal)
}

pub fn is_terminal_event(event: &str) -> bool {
    matches!(
        event,
        "operation.completed" | "operation.failed" | "operation.cancelled"
    )
}

impl Wire {
    /// Encodes a room message for this wire; `None` when this wire does not carry it.
    pub fn encode(&self, e: &Event) -> Option<Encoded> {
        match self {
            Wire::Native => Some(Encoded::text(native::message_of(e))),
            Wire::StatusStream(shape) => is_status_event(e.event).then(|| {
                let data = status_data(shape, e.data, e.room, e.event);
                Encoded::text(Bytes::copy_from_slice(data.get().as_bytes()))
            }),
            Wire::Sse(shape) => {
                let data = match is_status_event(e.event) {
                    true => status_data(shape, e.data, e.room, e.event),
                    false => std::borrow::Cow::Borrowed(e.data),
                };
                Some(Encoded::text(sse::event(e.event, &data, e.seq)))
            }
            Wire::SocketIo(nsp, outgoing, recovery) => {
                let (event, data) = renamed(outgoing, e.event, e.data, e.room);
                let tag = recovery.then(|| socketio::recovery_offset(e.room, e.offset));
                Some(sio::event(
                    nsp,
                    event,
                    &data,
                    &sio::Meta {
                        room: e.room,
                        offset: Some(e.offset),
                        from: Sender::of(e.from, e.connection),
                        backfill: false,
                        seq: e.seq,
                        message_id: e.message_id,
                    },
                    e.attachments,
                    tag.as_deref(),
                ))
            }
        }
    }

    pub fn encode_backfill(&self, room: &str, b: &Backfill) -> Option<Bytes> {
        match self {
            Wire::Native => Some(native::backfill(room, &b.event, &b.data, b.seq)),
            // A finished operation's backfill is its snapshot, its lines and its terminal event,
            // both carrying the final status (`backfill_frames`). A status stream's client stops
            // at the first terminal status, and must get exactly one: the terminal event's, the
            // one the stream closes after. So a snapshot whose status is terminal is skipped.
            Wire::StatusStream(shape) => (is_terminal_event(&b.event)
                || (b.event == "operation.progress" && !has_terminal_status(&b.data)))
            .then(|| {
                let data = status_data(shape, &b.data, room, &b.event);
                Bytes::copy_from_slice(data.get().as_bytes())
            }),
            Wire::Sse(shape) => {
                let data = match is_status_event(&b.event) {
                    true => status_data(shape, &b.data, room, &b.event),
                    false => std::borrow::Cow::Borrowed(&*b.data),
                };
                Some(sse::event(&b.event, &data, b.seq))
            }
            Wire::SocketIo(nsp, outgoing, recovery) => {
                let (event, data) = renamed(outgoing, &b.event, &b.data, room);
                // With connection-state recovery, an operation's backfill says where the
                // watcher's log stands (`socketio::backfill_recovery_offset`): a socket dropped
                // before it had all of it is watched again from there.
                let tag = b.seq.filter(|_| *recovery).map(|seq| {
                    socketio::backfill_recovery_offset(room, seq, is_terminal_event(&b.event))
                });
                Some(
                    sio::event(
                        nsp,
                        event,
                        &data,
                        &sio::Meta {
                            room,
                            offset: None,
                            from: None,
                            backfill: true,
                            seq: b.seq,
                            message_id: None,
                        },
                        &[],
                        tag.as_deref(),
                    )
                    .text,
                )
            }
        }
    }

    /// The answer to a join: a `joined` frame, or for Socket.IO the join's ack.
    pub fn joined(&self, id: Option<&RawValue>, answer: &JoinAnswer<'_>) -> Option<Bytes> {
        let mut out = Vec::with_capacity(160 + answer.presence.len() * 32);
        match self {
            Wire::Native => {
                out.extend_from_slice(br#"{"type":"joined""#);
                if let Some(id) = id {
                    out.extend_from_slice(br#","id":"#);
                    out.extend_from_slice(id.get().as_bytes());
                }
                answer.close_object_with_fields(&mut out);
                Some(Bytes::from(out))
            }
            Wire::SocketIo(nsp, ..) => {
                // The ack's one argument, `[{"ok":true,…}]`.
                out.extend_from_slice(br#"[{"ok":true"#);
                answer.close_object_with_fields(&mut out);
                out.push(b']');
                sio::ack_args(nsp, id, std::str::from_utf8(&out).ok()?)
            }
            _ => None,
        }
    }

    /// A presence change of `users` (all arrived, or all left).
    pub fn presence(&self, room: &str, users: &[&UserInfo], joined: bool) -> Option<Bytes> {
        match self {
            Wire::Native => Some(native::presence(room, users, joined)),
            Wire::SocketIo(nsp, outgoing, _) => {
                let key = if joined { "joined" } else { "left" };
                let body = serde_json::json!({ "room": room, key: users });
                Some(sio::emit_as(nsp, outgoing, room, "presence", body))
            }
            _ => None,
        }
    }

    /// The room's order no longer continues where the member was: messages between its last
    /// one and `offset` of `epoch` are lost (`reason`: `gap`, `new_epoch`). Members reload what
    /// they show of the room; the next message is `offset + 1`.
    pub fn reset(&self, room: &str, epoch: &str, offset: u64, reason: &str) -> Option<Bytes> {
        match self {
            Wire::Native => Some(native::reset(room, epoch, offset, reason)),
            Wire::SocketIo(nsp, outgoing, _) => {
                let body = serde_json::json!({
                    "room": room, "epoch": epoch, "offset": offset, "reason": reason,
                });
                Some(sio::emit_as(nsp, outgoing, room, "reset", body))
            }
            _ => None,
        }
    }

    /// Encodes a reply to a request carrying `id`. Socket.IO answers only requests that asked
    /// for an ack; a refusal without one is emitted as an `error` event.
    pub fn reply(&self, id: Option<&RawValue>, r: Reply) -> Option<Bytes> {
        match self {
            Wire::Native => Some(match r {
                Reply::Pong => native::pong(id),
                Reply::Authenticated(u) => native::authenticated(id, u),
                Reply::Left { room } => native::left(id, room),
                Reply::Published { room, offset } => native::published(id, room, offset),
                Reply::Operation(op) => native::operation(id, op),
                Reply::Started(op, token) => native::started(id, op, token),
                Reply::Duplicate(refusal, op) => native::duplicate(id, refusal, op),
                Reply::Error(refusal) => native::error(id, refusal),
            }),
            Wire::SocketIo(nsp, outgoing, _) => {
                let body = match r {
                    Reply::Pong => serde_json::json!({"ok": true}),
                    Reply::Authenticated(u) => serde_json::json!({"ok": true, "user": u}),
                    Reply::Left { room } => serde_json::json!({"ok": true, "room": room}),
                    Reply::Published { room, offset } => {
                        serde_json::json!({"ok": true, "room": room, "offset": offset})
                    }
                    Reply::Operation(op) => serde_json::json!({"ok": true, "operation": op}),
                    Reply::Started(op, token) => match token {
                        Some(t) => {
                            serde_json::json!({"ok": true, "operation": op, "worker_token": t})
                        }
                        None => serde_json::json!({"ok": true, "operation": op}),
                    },
                    Reply::Duplicate(refusal, op) => {
                        let error = serde_json::json!({
                            "code": refusal.code.as_str(), "message": refusal.message,
                        });
                        if id.is_none() {
                            // No ack asked for: an `error` event, as any refusal, carrying
                            // the active operation (it used to be dropped silently).
                            let mut event = error;
                            event["operation"] = serde_json::json!(op);
                            return Some(sio::emit_as(nsp, outgoing, "", "error", event));
                        }
                        // In the ack the active operation sits beside `error`, at the top.
                        serde_json::json!({"ok": false, "error": error, "operation": op})
                    }
                    Reply::Error(refusal) => {
                        let err = serde_json::json!({
                            "code": refusal.code.as_str(), "message": refusal.message,
                        });
                        if id.is_none() {
                            return Some(sio::emit_as(nsp, outgoing, "", "error", err));
                        }
                        serde_json::json!({"ok": false, "error": err})
                    }
                };
                sio::ack_ok(nsp, id, &body)
            }
            _ => None,
        }
    }

    /// Whether this wire's connection ends after delivering `event`.
    pub fn ends_after(&self, event: &str) -> bool {
        matches!(self, Wire::StatusStream(_) | Wire::Sse(_)) && is_terminal_event(event)
    }

    /// Whether this wire carries presence and join answers.
    pub fn wants_control(&self) -> bool {
        matches!(self, Wire::Native | Wire::SocketIo(..))
    }
}
