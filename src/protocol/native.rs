//! The native protocol at `GET /ws`: JSON text frames (docs/protocol.md is the spec).
//!
//! One piece (~550 lines, a fifth of them tests) because it is the one wire both ways: reading
//! a frame into a request and encoding every frame the server sends, so docs/protocol.md has
//! one file to match.
//!
//! Parsing is one pass over the frame into borrowed raw fields; the frame's `type` names a
//! [`Verb`] and [`super::request::build`] checks each field (the checks every front end shares),
//! so a frame with a wrong field still gets an error that carries its `id`. `data` is never
//! parsed: it is kept as raw JSON and copied once into the encoded message. The server's frames
//! are encoded here too.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::UserInfo;
use crate::error::{ErrorCode, Refusal};

use super::{Event, Sender};

pub use super::request::{fail_fields, log_lines, Request, RequestId, Since};
use super::request::{Field, Fields, Verb};

/// A frame's fields, borrowed from its text: only the ones some request reads. (Also a Socket.IO
/// event's argument object, read the same way: `socketio::event_fast`.)
#[derive(Deserialize)]
pub(super) struct RawFrame<'a> {
    #[serde(rename = "type", borrow, default)]
    frame_type: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    room: Option<&'a RawValue>,
    #[serde(borrow, default)]
    since: Option<&'a RawValue>,
    #[serde(borrow, default)]
    event: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    log_offset: Option<&'a RawValue>,
    #[serde(borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    target: Option<&'a RawValue>,
    #[serde(borrow, default)]
    project: Option<&'a RawValue>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
    #[serde(borrow, default)]
    operation: Option<&'a RawValue>,
    #[serde(borrow, default)]
    progress: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stage: Option<&'a RawValue>,
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
    #[serde(borrow, default)]
    lines: Option<&'a RawValue>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
    #[serde(borrow, default)]
    worker_token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    eta_seconds: Option<&'a RawValue>,
    #[serde(borrow, default)]
    details: Option<&'a RawValue>,
    #[serde(borrow, default)]
    echo: Option<&'a RawValue>,
    #[serde(borrow, default)]
    retain: Option<&'a RawValue>,
    #[serde(borrow, default)]
    watch: Option<&'a RawValue>,
}

impl Fields for RawFrame<'_> {
    fn field(&self, name: &str) -> Option<Field<'_>> {
        let raw = match name {
            "room" => self.room,
            "since" => self.since,
            "event" => self.event,
            "data" => self.data,
            "token" => self.token,
            "user" => self.user,
            "name" => self.name,
            "log_offset" => self.log_offset,
            "kind" => self.kind,
            "target" => self.target,
            "project" => self.project,
            "params" => self.params,
            "operation" => self.operation,
            "progress" => self.progress,
            "stage" => self.stage,
            "message" => self.message,
            "lines" => self.lines,
            "result" => self.result,
            "error" => self.error,
            "worker_token" => self.worker_token,
            "eta_seconds" => self.eta_seconds,
            "details" => self.details,
            "echo" => self.echo,
            "retain" => self.retain,
            "watch" => self.watch,
            _ => None,
        };
        // serde reads a `null` field as absent already; this keeps the rule explicit.
        raw.filter(|r| r.get() != "null").map(Field::Raw)
    }
}

/// A frame that could not be turned into a request: the refusal and, when the frame was an
/// object with a usable `id`, that id.
#[derive(Debug)]
pub struct BadFrame {
    pub id: Option<RequestId>,
    pub refusal: Refusal,
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<(Option<RequestId>, Request), BadFrame> {
    if !text.trim_start().starts_with('{') {
        // serde would read a JSON array as a struct by position; only objects are frames.
        let code = match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => ErrorCode::InvalidFrame,
            Err(_) => ErrorCode::InvalidJson,
        };
        return Err(BadFrame {
            id: None,
            refusal: Refusal::new(code, "a frame must be a JSON object with a `type`"),
        });
    }
    let raw: RawFrame = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let code = if e.classify() == serde_json::error::Category::Data {
                ErrorCode::InvalidFrame
            } else {
                ErrorCode::InvalidJson
            };
            let message = if code == ErrorCode::InvalidFrame {
                "a frame must be a JSON object with a `type`".to_string()
            } else {
                format!("malformed JSON: {e}")
            };
            return Err(BadFrame {
                id: None,
                refusal: Refusal::new(code, message),
            });
        }
    };
    let id = match raw.id {
        None => None,
        Some(v) => {
            let t = v.get().trim_start();
            let scalar = t.starts_with('"')
                || t.starts_with('-')
                || t.starts_with(|c: char| c.is_ascii_digit());
            if !scalar || v.get().len() > 128 {
                return Err(BadFrame {
                    id: None,
                    refusal: Refusal::new(
                        ErrorCode::InvalidField,
                        "field `id` must be a string or a number of at most 128 characters",
                    ),
                });
            }
            Some(v.to_owned())
        }
    };
    let fail = |code, message: String| BadFrame {
        id: id.clone(),
        refusal: Refusal::new(code, message),
    };
    let kind: String = match raw.frame_type {
        None => {
            return Err(fail(
                ErrorCode::MissingField,
                "field `type` is required".into(),
            ))
        }
        Some(v) => serde_json::from_str(v.get()).map_err(|_| {
            fail(
                ErrorCode::InvalidField,
                "field `type` must be a string".into(),
            )
        })?,
    };
    let Some(verb) = Verb::from_name(&kind) else {
        let shown: String = kind.chars().take(64).collect();
        return Err(fail(
            ErrorCode::UnknownType,
            format!("unknown frame type {shown:?}"),
        ));
    };
    let request = super::request::build(verb, &raw).map_err(|r| fail(r.code, r.message))?;
    Ok((id, request))
}

// ---- server frames -------------------------------------------------------------------------

fn encode<T: Serialize>(frame: &T) -> Bytes {
    // Serialising these plain structs cannot fail (string keys, no maps with non-string keys).
    match serde_json::to_vec(frame) {
        Ok(v) => Bytes::from(v),
        Err(e) => {
            log::error!("encoding a server frame failed: {e}");
            Bytes::from_static(br#"{"type":"error","code":"internal","message":"encoding failed"}"#)
        }
    }
}

#[derive(Serialize)]
struct Welcome<'a> {
    #[serde(rename = "type")]
    t: &'static str,
    session: &'a str,
    heartbeat_ms: u64,
    /// `open`, `required` (send an `auth` frame) or `ok` (authenticated by header).
    auth: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a UserInfo>,
}

pub fn welcome(
    session: &str,
    heartbeat_ms: u64,
    auth: &'static str,
    user: Option<&UserInfo>,
) -> Bytes {
    encode(&Welcome {
        t: "welcome",
        session,
        heartbeat_ms,
        auth,
        user,
    })
}

#[derive(Serialize)]
struct RoomReply<'a> {
    #[serde(rename = "type")]
    t: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    room: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
}

pub fn left(id: Option<&RawValue>, room: &str) -> Bytes {
    encode(&RoomReply {
        t: "left",
        id,
        room,
        offset: None,
    })
}

pub fn published(id: Option<&RawValue>, room: &str, offset: u64) -> Bytes {
    encode(&RoomReply {
        t: "published",
        id,
        room,
        offset: Some(offset),
    })
}

/// A room message without attachments, from a user (tests and tools).
pub fn message(
    room: &str,
    offset: u64,
    event: &str,
    data: &RawValue,
    from: Option<&UserInfo>,
) -> Bytes {
    message_of(&Event {
        room,
        offset,
        event,
        data,
        from,
        connection: None,
        message_id: None,
        seq: None,
        attachments: &[],
    })
}

/// A room message. Encoded once per publish; the bytes go to every member and into history.
///
/// Written by hand, not derived: this is the one frame encoded on every publish, and serde
/// escapes each field name as it goes (a third of the encoding's instructions, measured with
/// callgrind in docs/benchmarks.md). The bytes are the derived encoding's, byte for byte (the
/// test `the_hand_written_message_is_the_derived_one` holds it to that).
pub fn message_of(e: &Event) -> Bytes {
    use base64::Engine as _;
    let mut out = Vec::with_capacity(
        96 + e.room.len() + e.event.len() + e.data.get().len() + e.attachments.len() * 16,
    );
    out.extend_from_slice(br#"{"type":"message","room":"#);
    json_str(&mut out, e.room);
    out.extend_from_slice(br#","offset":"#);
    out.extend_from_slice(itoa::Buffer::new().format(e.offset).as_bytes());
    out.extend_from_slice(br#","event":"#);
    json_str(&mut out, e.event);
    out.extend_from_slice(br#","data":"#);
    out.extend_from_slice(e.data.get().as_bytes());
    out.extend_from_slice(br#","from":"#);
    match Sender::of(e.from, e.connection) {
        None => out.extend_from_slice(b"null"),
        Some(from) => sender_json(&mut out, &from),
    }
    if let Some(id) = e.message_id {
        out.extend_from_slice(br#","message_id":"#);
        json_str(&mut out, id);
    }
    if !e.attachments.is_empty() {
        out.extend_from_slice(br#","attachments":["#);
        for (i, a) in e.attachments.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Base64 needs no escaping.
            out.push(b'"');
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(a)
                    .as_bytes(),
            );
            out.push(b'"');
        }
        out.push(b']');
    }
    out.push(b'}');
    Bytes::from(out)
}

/// Appends `from` as its derived encoding would (`{"user", "name"?, "session"?}`): shared by the
/// native message and the Socket.IO event's meta (`protocol::sio::event`).
pub(crate) fn sender_json(out: &mut Vec<u8>, from: &Sender) {
    out.extend_from_slice(br#"{"user":"#);
    json_str(out, from.user);
    if let Some(name) = from.name {
        out.extend_from_slice(br#","name":"#);
        json_str(out, name);
    }
    if let Some(session) = from.session {
        out.extend_from_slice(br#","session":"#);
        json_str(out, session);
    }
    out.push(b'}');
}

/// Appends `s` as a JSON string, escaped as serde_json escapes it (control characters, `"`
/// and `\\`); the common string with none of them is copied in one go.
pub(crate) fn json_str(out: &mut Vec<u8>, s: &str) {
    // A fold, not `any`: no early exit, so the check runs many bytes at a time.
    if s.bytes().fold(false, |hit, b| {
        hit | (b < 0x20) | (b == b'"') | (b == b'\\')
    }) {
        // Writing a `str` into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

#[derive(Serialize)]
struct BackfillFrame<'a> {
    #[serde(rename = "type")]
    t: &'static str,
    room: &'a str,
    event: &'a str,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

/// State sent to one joiner ahead of live messages (an operation's snapshot and missed logs).
/// Not a room message, so it has no room offset.
pub fn backfill(room: &str, event: &str, data: &RawValue, seq: Option<u64>) -> Bytes {
    encode(&BackfillFrame {
        t: "backfill",
        room,
        event,
        data,
        seq,
    })
}

#[derive(Serialize)]
struct Presence<'a> {
    #[serde(rename = "type")]
    t: &'static str,
    room: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    joined: Option<&'a [&'a UserInfo]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    left: Option<&'a [&'a UserInfo]>,
}

/// A presence change: `users` arrived (`joined`) or left.
pub fn presence(room: &str, users: &[&UserInfo], joined: bool) -> Bytes {
    encode(&Presence {
        t: "presence",
        room,
        joined: joined.then_some(users),
        left: (!joined).then_some(users),
    })
}

/// Why a room's order did not continue where a member was (a `reset` frame).
#[derive(Serialize)]
struct Reset<'a> {
    #[serde(rename = "type")]
    t: &'static str,
    room: &'a str,
    epoch: &'a str,
    offset: u64,
    reason: &'a str,
}

/// The room's order continues at `epoch`, after `offset`, and what came between the member's
/// last message and that point is lost (`reason`: `gap` or `new_epoch`).
pub fn reset(room: &str, epoch: &str, offset: u64, reason: &str) -> Bytes {
    encode(&Reset {
        t: "reset",
        room,
        epoch,
        offset,
        reason,
    })
}

#[derive(Serialize)]
struct Simple<'a> {
    #[serde(rename = "type")]
    t: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a UserInfo>,
}

pub fn pong(id: Option<&RawValue>) -> Bytes {
    encode(&Simple {
        t: "pong",
        id,
        user: None,
    })
}

pub fn authenticated(id: Option<&RawValue>, user: &UserInfo) -> Bytes {
    encode(&Simple {
        t: "authenticated",
        id,
        user: Some(user),
    })
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    #[serde(rename = "type")]
    t: &'static str,
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct StartedReply<'a, T: Serialize> {
    #[serde(rename = "type")]
    t: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    operation: &'a T,
    #[serde(skip_serializing_if = "Option::is_none")]
    worker_token: Option<&'a str>,
}

/// Reply to `operation.start`: the status, and the worker token of an external operation.
pub fn started<T: Serialize>(id: Option<&RawValue>, op: &T, worker_token: Option<&str>) -> Bytes {
    encode(&StartedReply {
        t: "operation",
        id,
        operation: op,
        worker_token,
    })
}

/// Reply to `operation.*` requests: the operation's status.
pub fn operation<T: Serialize>(id: Option<&RawValue>, op: &T) -> Bytes {
    started(id, op, None)
}

#[derive(Serialize)]
struct DuplicateFrame<'a, T: Serialize> {
    #[serde(rename = "type")]
    t: &'static str,
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    operation: &'a T,
}

/// `duplicate_operation`: the error carries the active operation, so the caller watches it.
pub fn duplicate<T: Serialize>(id: Option<&RawValue>, refusal: &Refusal, op: &T) -> Bytes {
    encode(&DuplicateFrame {
        t: "error",
        code: refusal.code.as_str(),
        message: &refusal.message,
        id,
        operation: op,
    })
}

pub fn error(id: Option<&RawValue>, refusal: &Refusal) -> Bytes {
    encode(&ErrorFrame {
        t: "error",
        code: refusal.code.as_str(),
        message: &refusal.message,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The derived encoding `message_of` replaced, kept as its reference.
    #[derive(Serialize)]
    struct Message<'a> {
        #[serde(rename = "type")]
        t: &'static str,
        room: &'a str,
        offset: u64,
        event: &'a str,
        data: &'a RawValue,
        from: Option<Sender<'a>>,
        /// The id shared by the copies of a message published into several rooms at once.
        #[serde(skip_serializing_if = "Option::is_none")]
        message_id: Option<&'a str>,
        /// Binary attachments (base64), referenced from `data` by Socket.IO-style placeholders.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<String>,
    }

    #[test]
    fn the_hand_written_message_is_the_derived_one() {
        use base64::Engine as _;
        let user = |id: &str, name: Option<&str>| UserInfo {
            id: id.into(),
            name: name.map(Into::into),
        };
        let data = RawValue::from_string(r#"{"t":1,"s":"a\"b"}"#.into()).unwrap();
        let plain = user("u1", None);
        let odd = user("q\"uote\\back\u{1}ctl é", Some("N\name"));
        let attachments = [Bytes::from_static(b"\x00\x01bin"), Bytes::from_static(b"x")];
        for from in [None, Some(&plain), Some(&odd)] {
            for connection in [None, Some("c-1"), Some("c\"2")] {
                for message_id in [None, Some("m1"), Some("m\n2")] {
                    for attachments in [&[][..], &attachments[..]] {
                        let e = Event {
                            room: "project:42",
                            offset: 18_446_744_073_709_551_615,
                            event: "step \"updated\"",
                            data: &data,
                            from,
                            connection,
                            message_id,
                            seq: None,
                            attachments,
                        };
                        let derived = serde_json::to_vec(&Message {
                            t: "message",
                            room: e.room,
                            offset: e.offset,
                            event: e.event,
                            data: e.data,
                            from: Sender::of(e.from, e.connection),
                            message_id: e.message_id,
                            attachments: attachments
                                .iter()
                                .map(|a| base64::engine::general_purpose::STANDARD.encode(a))
                                .collect(),
                        })
                        .unwrap();
                        assert_eq!(
                            String::from_utf8_lossy(&message_of(&e)),
                            String::from_utf8_lossy(&derived)
                        );
                    }
                }
            }
        }
    }

    fn refusal(text: &str) -> (Option<String>, ErrorCode) {
        let e = parse(text).unwrap_err();
        (e.id.map(|i| i.get().to_string()), e.refusal.code)
    }

    #[test]
    fn parses_each_request_type() {
        let (id, r) = parse(
            r#"{"type":"join","room":"project:42","since":{"epoch":"e1","offset":17},"id":7}"#,
        )
        .unwrap();
        assert_eq!(id.unwrap().get(), "7");
        match r {
            Request::Join { room, since, .. } => {
                assert_eq!(room, "project:42");
                assert_eq!(
                    since,
                    Some(Since {
                        epoch: "e1".into(),
                        offset: 17
                    })
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        let (_, r) =
            parse(r#"{"type":"publish","room":"r","event":"step-updated","data":{"a": [1, 2]}}"#)
                .unwrap();
        match r {
            Request::Publish { data, .. } => assert_eq!(data.get(), r#"{"a": [1, 2]}"#),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            parse(r#"{"type":"ping"}"#).unwrap().1,
            Request::Ping
        ));
        assert!(matches!(
            parse(r#"{"type":"leave","room":"x"}"#).unwrap().1,
            Request::Leave { .. }
        ));
    }

    #[test]
    fn refusals_carry_stable_codes_and_the_id() {
        assert_eq!(refusal("{not json"), (None, ErrorCode::InvalidJson));
        assert_eq!(refusal("[1,2]"), (None, ErrorCode::InvalidFrame));
        assert_eq!(
            refusal(r#"{"id":"a"}"#),
            (Some("\"a\"".into()), ErrorCode::MissingField)
        );
        assert_eq!(
            refusal(r#"{"type":"dance","id":1}"#),
            (Some("1".into()), ErrorCode::UnknownType)
        );
        assert_eq!(
            refusal(r#"{"type":"join","id":2}"#),
            (Some("2".into()), ErrorCode::MissingField)
        );
        assert_eq!(
            refusal(r#"{"type":"join","room":"bad room","id":3}"#),
            (Some("3".into()), ErrorCode::InvalidRoom)
        );
        assert_eq!(
            refusal(r#"{"type":"join","room":5}"#),
            (None, ErrorCode::InvalidField)
        );
        assert_eq!(
            refusal(r#"{"type":"publish","room":"r","id":4}"#),
            (Some("4".into()), ErrorCode::MissingField)
        );
        assert_eq!(
            refusal(r#"{"type":"join","room":"r","since":{"epoch":1}}"#),
            (None, ErrorCode::InvalidField)
        );
        assert_eq!(
            refusal(r#"{"type":"ping","id":{"x":1}}"#),
            (None, ErrorCode::InvalidField)
        );
    }

    #[test]
    fn message_embeds_raw_data_verbatim() {
        let data = RawValue::from_string(r#"{"step":3}"#.into()).unwrap();
        let user = UserInfo {
            id: "alice".into(),
            name: None,
        };
        let b = message("project:1", 5, "step-updated", &data, Some(&user));
        assert_eq!(
            std::str::from_utf8(&b).unwrap(),
            r#"{"type":"message","room":"project:1","offset":5,"event":"step-updated","data":{"step":3},"from":{"user":"alice"}}"#
        );
    }

    #[test]
    fn message_names_the_sending_connection_and_the_shared_id() {
        let data = RawValue::from_string("1".into()).unwrap();
        let user = UserInfo {
            id: "alice".into(),
            name: Some("Alice".into()),
        };
        let b = message_of(&Event {
            room: "activity",
            offset: 2,
            event: "e",
            data: &data,
            from: Some(&user),
            connection: Some("c1"),
            message_id: Some("m1"),
            seq: None,
            attachments: &[],
        });
        assert_eq!(
            std::str::from_utf8(&b).unwrap(),
            r#"{"type":"message","room":"activity","offset":2,"event":"e","data":1,"from":{"user":"alice","name":"Alice","session":"c1"},"message_id":"m1"}"#
        );
    }
}
