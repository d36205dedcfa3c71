//! Encoding of Switchyard traffic as Socket.IO packets (inside Engine.IO message packets).

use super::*;
use crate::protocol::native::{json_str, sender_json};
use crate::protocol::socketio::{encode, Kind};

/// The last argument of every room event a Socket.IO client receives.
#[derive(serde::Serialize)]
pub struct Meta<'a> {
    pub room: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Sender<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub backfill: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The id shared by the copies of a message published into several rooms at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<&'a str>,
}

impl Meta<'_> {
    /// Its derived encoding, written by hand (see [`event`]).
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"room":"#);
        json_str(out, self.room);
        if let Some(offset) = self.offset {
            out.extend_from_slice(br#","offset":"#);
            out.extend_from_slice(itoa::Buffer::new().format(offset).as_bytes());
        }
        if let Some(from) = &self.from {
            out.extend_from_slice(br#","from":"#);
            sender_json(out, from);
        }
        if self.backfill {
            out.extend_from_slice(br#","backfill":true"#);
        }
        if let Some(seq) = self.seq {
            out.extend_from_slice(br#","seq":"#);
            out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        }
        if let Some(id) = self.message_id {
            out.extend_from_slice(br#","message_id":"#);
            json_str(out, id);
        }
        out.push(b'}');
    }
}

fn engine_message(packet: String) -> Bytes {
    let mut s = String::with_capacity(packet.len() + 1);
    s.push('4');
    s.push_str(&packet);
    Bytes::from(s)
}

/// `socket.on(event, (data, meta) => …)`; with `offset` (connection-state recovery),
/// `(data, meta, offset)`.
pub fn event(
    nsp: &str,
    event: &str,
    data: &RawValue,
    meta: &Meta,
    attachments: &[Bytes],
    offset: Option<&str>,
) -> Encoded {
    // One buffer from the Engine.IO prefix to the last argument: this is encoded once per
    // publish for a room's Socket.IO members, and the arguments, the packet and the
    // Engine.IO message used to be three strings, each copied into the next.
    let kind = if attachments.is_empty() {
        Kind::Event
    } else {
        Kind::BinaryEvent
    };
    let mut out =
        Vec::with_capacity(96 + nsp.len() + event.len() + data.get().len() + meta.room.len());
    out.push(b'4');
    out.extend_from_slice(encode(kind, nsp, None, None, attachments.len()).as_bytes());
    // The arguments written by hand, as `native::message_of` writes the native message:
    // serde's derive escapes every field name as it goes (callgrind, docs/benchmarks.md).
    // Byte for byte the derived encoding of `(event, data, meta[, offset])`
    // (`a_socket_io_event_is_the_packet_of_its_arguments_in_one_buffer`).
    out.push(b'[');
    json_str(&mut out, event);
    out.push(b',');
    out.extend_from_slice(data.get().as_bytes());
    out.push(b',');
    meta.write(&mut out);
    if let Some(o) = offset {
        out.push(b',');
        json_str(&mut out, o);
    }
    out.push(b']');
    if attachments.is_empty() {
        Encoded::text(Bytes::from(out))
    } else {
        Encoded {
            text: Bytes::from(out),
            binary: Arc::from(attachments.to_vec()),
        }
    }
}

/// A server-originated event with one argument.
pub fn emit(nsp: &str, event: &str, body: &serde_json::Value) -> Bytes {
    let args = serde_json::to_string(&(event, body)).unwrap_or_else(|_| "[\"error\"]".into());
    engine_message(encode(Kind::Event, nsp, None, Some(&args), 0))
}

/// A server-originated event, under the app's name and in its shape when the namespace's
/// profile renames it.
pub fn emit_as(
    nsp: &str,
    outgoing: &Option<Shared<Outgoing>>,
    room: &str,
    event: &str,
    body: serde_json::Value,
) -> Bytes {
    match outgoing.as_ref().and_then(|o| o.0.get(event)) {
        Some(r) => emit(nsp, &r.event, &r.shape.apply(&body, room, event)),
        None => emit(nsp, event, &body),
    }
}

/// An ack with one argument, when the request asked for one.
pub fn ack_ok(nsp: &str, id: Option<&RawValue>, body: &impl serde::Serialize) -> Option<Bytes> {
    ack_args(nsp, id, &serde_json::to_string(&[body]).ok()?)
}

/// An ACK of the packet `id` whose arguments (`args`, a JSON array) are already written.
pub fn ack_args(nsp: &str, id: Option<&RawValue>, args: &str) -> Option<Bytes> {
    let id: u64 = id?.get().parse().ok()?;
    Some(engine_message(encode(
        Kind::Ack,
        nsp,
        Some(id),
        Some(args),
        0,
    )))
}

/// A raw Socket.IO packet as an Engine.IO message.
pub fn packet(
    kind: Kind,
    nsp: &str,
    id: Option<u64>,
    data: Option<&str>,
    attachments: usize,
) -> Bytes {
    engine_message(encode(kind, nsp, id, data, attachments))
}
