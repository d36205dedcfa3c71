//! Socket.IO v5 packets (carried in Engine.IO messages).
//!
//! `<type>[<attachments>-][<namespace>,][<ack id>][<JSON payload>]`, types: `0` CONNECT,
//! `1` DISCONNECT, `2` EVENT, `3` ACK, `4` CONNECT_ERROR, `5` BINARY_EVENT, `6` BINARY_ACK.
//! Binary packets name how many binary Engine.IO messages follow; the JSON holds
//! `{"_placeholder":true,"num":i}` where each goes. The JSON is kept as it came; attachments
//! travel beside it.
//!
//! Events from a Socket.IO client are requests: [`request()`] maps the event name onto a
//! [`Verb`] and reads its fields from the first argument with the checks every front end shares
//! ([`super::request::build`]).

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::Value;

use super::request::{self, Request, Verb};
use crate::error::{ErrorCode, Refusal};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

impl Kind {
    fn digit(self) -> char {
        match self {
            Kind::Connect => '0',
            Kind::Disconnect => '1',
            Kind::Event => '2',
            Kind::Ack => '3',
            Kind::ConnectError => '4',
            Kind::BinaryEvent => '5',
            Kind::BinaryAck => '6',
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    pub kind: Kind,
    pub nsp: String,
    pub id: Option<u64>,
    pub data: Option<Value>,
    /// Binary messages that follow this packet (binary kinds only).
    pub attachments: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Socket.IO packet: {0}")]
pub struct PacketError(pub &'static str);

/// At most this many attachments per packet: each is held in memory until all arrive.
pub const MAX_ATTACHMENTS: usize = 16;

/// What precedes a packet's JSON: its type, attachment count, namespace and ack id (checked
/// and bounded), and the rest of the text. Shared by [`parse`] and [`event_fast`], so the two
/// read a packet's head alike.
struct Head<'a> {
    kind: Kind,
    attachments: usize,
    nsp: &'a str,
    id: Option<u64>,
    rest: &'a str,
}

fn head(s: &str) -> Result<Head<'_>, PacketError> {
    let bytes = s.as_bytes();
    let kind = match bytes.first() {
        Some(b'0') => Kind::Connect,
        Some(b'1') => Kind::Disconnect,
        Some(b'2') => Kind::Event,
        Some(b'3') => Kind::Ack,
        Some(b'4') => Kind::ConnectError,
        Some(b'5') => Kind::BinaryEvent,
        Some(b'6') => Kind::BinaryAck,
        _ => return Err(PacketError("unknown packet type")),
    };
    let mut i = 1;
    let mut attachments = 0usize;
    if matches!(kind, Kind::BinaryEvent | Kind::BinaryAck) {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || i >= bytes.len() || bytes[i] != b'-' || i - start > 3 {
            return Err(PacketError("binary packet without attachment count"));
        }
        attachments = s[start..i]
            .parse()
            .map_err(|_| PacketError("bad attachment count"))?;
        if attachments > MAX_ATTACHMENTS {
            return Err(PacketError("too many attachments"));
        }
        i += 1;
    }
    let mut nsp = "/";
    if i < bytes.len() && bytes[i] == b'/' {
        let start = i;
        while i < bytes.len() && bytes[i] != b',' {
            i += 1;
        }
        nsp = &s[start..i];
        if i < bytes.len() {
            i += 1; // the comma
        }
        if nsp.len() > 128 {
            return Err(PacketError("namespace too long"));
        }
    }
    let mut id = None;
    let start = i;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    if i > start {
        if i - start > 15 {
            return Err(PacketError("ack id too long"));
        }
        id = Some(s[start..i].parse().map_err(|_| PacketError("bad ack id"))?);
    }
    Ok(Head {
        kind,
        attachments,
        nsp,
        id,
        rest: &s[i..],
    })
}

pub fn parse(s: &str) -> Result<Packet, PacketError> {
    let Head {
        kind,
        attachments,
        nsp,
        id,
        rest,
    } = head(s)?;
    let data = if rest.is_empty() {
        None
    } else {
        Some(serde_json::from_str::<Value>(rest).map_err(|_| PacketError("payload is not JSON"))?)
    };
    let valid = match kind {
        Kind::Connect => matches!(data, None | Some(Value::Object(_))),
        Kind::Disconnect => data.is_none(),
        Kind::Event | Kind::BinaryEvent => matches!(
            &data,
            Some(Value::Array(a)) if matches!(a.first(), Some(Value::String(_)))
        ),
        Kind::Ack | Kind::BinaryAck => matches!(data, Some(Value::Array(_))) && id.is_some(),
        Kind::ConnectError => matches!(data, Some(Value::Object(_)) | Some(Value::String(_))),
    };
    if !valid {
        return Err(PacketError("payload does not fit the packet type"));
    }
    Ok(Packet {
        kind,
        nsp: nsp.to_string(),
        id,
        data,
        attachments,
    })
}

/// Encodes a packet; `data` is JSON text. The Engine.IO `4` prefix is not included.
pub fn encode(
    kind: Kind,
    nsp: &str,
    id: Option<u64>,
    data: Option<&str>,
    attachments: usize,
) -> String {
    let mut out = String::with_capacity(data.map_or(0, str::len) + nsp.len() + 16);
    out.push(kind.digit());
    if matches!(kind, Kind::BinaryEvent | Kind::BinaryAck) {
        out.push_str(&attachments.to_string());
        out.push('-');
    }
    if nsp != "/" {
        out.push_str(nsp);
        out.push(',');
    }
    if let Some(id) = id {
        out.push_str(&id.to_string());
    }
    if let Some(d) = data {
        out.push_str(d);
    }
    out
}

/// Counts the `{"_placeholder":true,"num":n}` objects in `v`, checking each `num` is in range
/// and used once.
pub fn placeholders_ok(v: &Value, attachments: usize) -> bool {
    fn walk(v: &Value, seen: &mut Vec<bool>) -> bool {
        match v {
            Value::Object(o) if o.get("_placeholder") == Some(&Value::Bool(true)) => {
                match o.get("num").and_then(Value::as_u64) {
                    Some(n) if (n as usize) < seen.len() && !seen[n as usize] => {
                        seen[n as usize] = true;
                        true
                    }
                    _ => false,
                }
            }
            Value::Object(o) => o.values().all(|x| walk(x, seen)),
            Value::Array(a) => a.iter().all(|x| walk(x, seen)),
            _ => true,
        }
    }
    let mut seen = vec![false; attachments];
    walk(v, &mut seen) && seen.iter().all(|s| *s)
}

/// Connection-state recovery (docs/socketio.md): the offset string a room event carries as its
/// last argument, `<room>@<offset>` (room names have no `@`). The client sends back the last
/// one it received; only its room and offset are in it, because one encoding serves every
/// socket in the room (the socket's other rooms come from its connection's journal).
pub fn recovery_offset(room: &str, offset: u64) -> String {
    format!("{room}@{offset}")
}

/// The room and offset of a recovery offset string; `None` for anything else.
pub fn parse_recovery_offset(s: &str) -> Option<(&str, u64)> {
    let (room, offset) = s.rsplit_once('@')?;
    if !crate::names::valid_room_name(room) || offset.is_empty() || offset.len() > 20 {
        return None;
    }
    if !offset.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((room, offset.parse().ok()?))
}

/// Connection-state recovery of a watched operation: the offset string of a frame of the
/// backfill a watch of `operation:<id>` delivers (its status snapshot, the log lines the watcher
/// missed, a finished operation's terminal event), `<room>@b<n>`. They have no place in the
/// room's order, so `n` says where the watcher's log stands: twice the log offset, plus one for
/// the terminal event (so that the terminal event, which carries the last line's offset, is
/// told apart from that line).
pub fn backfill_recovery_offset(room: &str, seq: u64, terminal: bool) -> String {
    format!("{room}@b{}", seq.saturating_mul(2) + u64::from(terminal))
}

/// The room and number of a backfill offset string ([`backfill_recovery_offset`]).
pub fn parse_backfill_offset(s: &str) -> Option<(&str, u64)> {
    let (room, n) = s.rsplit_once("@b")?;
    parse_recovery_offset(&format!("{room}@{n}")).map(|(_, n)| (room, n))
}

/// The journal's name for the backfill frames of a watch of `room` (not a room name: no room
/// name has an `@`, so it never meets a room's own stream).
pub fn backfill_stream(nsp: &str, room: &str) -> u64 {
    recovery_stream(nsp, &format!("{room}@b"))
}

/// The journal's name for a namespace's room (a hash: the journal keeps 16 bytes per event;
/// a collision could only confuse the recovery of a socket in both rooms). FNV-1a over the
/// namespace, a NUL and the room: the same in every process and every build, since in cluster
/// mode a record written by one node is read by another (`cluster::recovery`).
pub fn recovery_stream(nsp: &str, room: &str) -> u64 {
    const BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    nsp.bytes()
        .chain(std::iter::once(0))
        .chain(room.bytes())
        .fold(BASIS, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// The outbox journal's tagger (`transport::outbox::Tagger`): for an Engine.IO message
/// carrying a Socket.IO EVENT or BINARY_EVENT whose last argument is a recovery offset, its
/// namespace and room ([`recovery_stream`]) and offset. Reads the packet's head and its last
/// few bytes only.
pub fn recovery_tag(payload: &[u8]) -> Option<(u64, u64)> {
    let rest = payload.strip_prefix(b"4")?;
    let mut rest = match rest.first()? {
        b'2' => &rest[1..],
        b'5' => {
            let dash = rest.iter().take(8).position(|b| *b == b'-')?;
            &rest[dash + 1..]
        }
        _ => return None,
    };
    let nsp = if rest.first() == Some(&b'/') {
        let comma = rest.iter().position(|b| *b == b',')?;
        let nsp = std::str::from_utf8(&rest[..comma]).ok()?;
        rest = &rest[comma + 1..];
        nsp
    } else {
        "/"
    };
    // `…,"<room>@<offset>"]`: a room name is at most 128 bytes, an offset at most 20.
    let body = rest.strip_suffix(b"\"]")?;
    let open = body.iter().rev().take(160).position(|b| *b == b'"')?;
    let start = body.len() - open;
    if start < 2 || body[start - 2] != b',' {
        return None;
    }
    let tag = std::str::from_utf8(&body[start..]).ok()?;
    if let Some((room, offset)) = parse_recovery_offset(tag) {
        return Some((recovery_stream(nsp, room), offset));
    }
    let (room, n) = parse_backfill_offset(tag)?;
    Some((backfill_stream(nsp, room), n))
}

/// The verb a Socket.IO event names: the native names, with `operation:` for `operation.`.
pub fn verb(event: &str) -> Option<Verb> {
    Some(match event {
        "join" => Verb::Join,
        "leave" => Verb::Leave,
        "publish" => Verb::Publish,
        "ping" => Verb::Ping,
        "auth" => Verb::Auth,
        "operation:start" => Verb::StartOperation,
        "operation:cancel" => Verb::CancelOperation,
        "operation:progress" => Verb::Progress,
        "operation:log" => Verb::Log,
        "operation:complete" => Verb::Complete,
        "operation:fail" => Verb::Fail,
        _ => return None,
    })
}

/// An event as a request: `args` are the event's arguments after its name (the first, an
/// object or nothing, holds the fields), `attachments` its binary attachments, which a
/// `publish` carries when its `data` has a placeholder for each.
pub fn request(event: &str, args: &[Value], attachments: Vec<Bytes>) -> Result<Request, Refusal> {
    let Some(verb) = verb(event) else {
        let shown: String = event.chars().take(64).collect();
        return Err(Refusal::new(
            ErrorCode::UnknownType,
            format!("unknown event {shown:?} (use join, leave, publish, operation:start, operation:cancel)"),
        ));
    };
    let none = serde_json::Map::new();
    let fields = match args.first() {
        Some(Value::Object(o)) => o,
        None | Some(Value::Null) => &none,
        Some(_) => {
            return Err(Refusal::new(
                ErrorCode::InvalidFrame,
                format!("`{event}` takes an object argument"),
            ))
        }
    };
    let mut request = request::build(verb, fields)?;
    if let Request::Publish { attachments: a, .. } = &mut request {
        if !attachments.is_empty() {
            let data = fields.get("data").unwrap_or(&Value::Null);
            if !placeholders_ok(data, attachments.len()) {
                return Err(Refusal::new(
                    ErrorCode::InvalidField,
                    "attachments do not match their placeholders",
                ));
            }
        }
        *a = attachments;
    }
    Ok(request)
}

/// An EVENT packet read without building a JSON tree: the common case of the publish path
/// (`2[/nsp,][ack id]["verb",{fields}]`, no attachments), whose argument object is read into
/// borrowed raw fields as a native frame is (`native::RawFrame`), so `data` is kept as the raw
/// JSON it came as and copied once into the delivery. `None` for anything else — other packet
/// kinds, other argument shapes, duplicate keys, bad JSON — which [`parse`] then reads (and
/// refuses, when it must) as before: this only skips work, it never decides differently.
pub struct FastEvent<'a> {
    pub nsp: &'a str,
    pub id: Option<u64>,
    /// Borrowed: a name with escapes takes the general path.
    pub name: &'a str,
    fields: super::native::RawFrame<'a>,
}

impl FastEvent<'_> {
    /// The request the event names, checked as [`request`] checks it.
    pub fn request(&self) -> Result<Request, Refusal> {
        let Some(verb) = verb(self.name) else {
            return request(self.name, &[], Vec::new());
        };
        request::build(verb, &self.fields)
    }
}

pub fn event_fast(s: &str) -> Option<FastEvent<'_>> {
    let Head {
        kind: Kind::Event,
        nsp,
        id,
        rest,
        ..
    } = head(s).ok()?
    else {
        return None;
    };
    let (name, args): (&str, &RawValue) = serde_json::from_str(rest).ok()?;
    // Only an object: serde would read an array into the struct by position.
    if !args.get().starts_with('{') {
        return None;
    }
    let fields = serde_json::from_str(args.get()).ok()?;
    Some(FastEvent {
        nsp,
        id,
        name,
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_streams_are_the_same_in_every_build() {
        // Records written by one node are read by another, maybe of another build: pinned.
        assert_eq!(recovery_stream("", ""), 0xaf63_bd4c_8601_b7df);
        assert_ne!(recovery_stream("/", "ab"), recovery_stream("/a", "b"));
        assert_ne!(recovery_stream("/", "a"), backfill_stream("/", "a"));
    }
    use serde_json::json;

    #[test]
    fn parses_the_packet_forms() {
        let p = parse("0").unwrap();
        assert_eq!((p.kind, p.nsp.as_str(), p.data), (Kind::Connect, "/", None));
        let p = parse(r#"0/custom,{"token":"abc"}"#).unwrap();
        assert_eq!(
            (p.nsp.as_str(), p.data),
            ("/custom", Some(json!({"token": "abc"})))
        );
        let p = parse(r#"2456["message-with-ack",1]"#).unwrap();
        assert_eq!((p.kind, p.id), (Kind::Event, Some(456)));
        let p = parse(r#"52-789["m",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#)
            .unwrap();
        assert_eq!(
            (p.kind, p.attachments, p.id),
            (Kind::BinaryEvent, 2, Some(789))
        );
        assert!(placeholders_ok(p.data.as_ref().unwrap(), 2));
        assert!(!placeholders_ok(p.data.as_ref().unwrap(), 3));
        let p = parse("1/custom,").unwrap();
        assert_eq!((p.kind, p.nsp.as_str()), (Kind::Disconnect, "/custom"));
        let p = parse("0/random").unwrap();
        assert_eq!(p.nsp, "/random");
    }

    #[test]
    fn refuses_malformed_packets() {
        for bad in [
            "",
            "abc",
            "2{}",
            "2abc[\"x\"]",
            "2[]",
            "2[1]",
            "3[1]",
            "5[\"x\"]",
            "599-[\"x\"]",
            "1{}",
            "0[1]",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn encodes_with_namespace_and_id() {
        assert_eq!(encode(Kind::Ack, "/", Some(3), Some("[1]"), 0), "33[1]");
        assert_eq!(
            encode(Kind::Event, "/custom", None, Some(r#"["a"]"#), 0),
            r#"2/custom,["a"]"#
        );
        assert_eq!(
            encode(Kind::BinaryAck, "/", Some(9), Some("[]"), 2),
            "62-9[]"
        );
        assert_eq!(
            encode(
                Kind::ConnectError,
                "/random",
                None,
                Some(r#"{"message":"Invalid namespace"}"#),
                0
            ),
            r#"4/random,{"message":"Invalid namespace"}"#
        );
    }

    /// The publish path's reader without a JSON tree decides as the general one: the same
    /// namespace, ack id, event and request (or refusal) for every packet it reads; the rest it
    /// leaves to the general path.
    #[test]
    fn the_fast_event_reader_decides_as_the_general_one() {
        let general = |s: &str| {
            let p = parse(s).expect("a packet");
            let Some(Value::Array(args)) = p.data else {
                panic!("an event: {s}")
            };
            let Some(Value::String(name)) = args.first() else {
                panic!("named: {s}")
            };
            let r = request(name, &args[1..], Vec::new());
            (p.nsp, p.id, name.clone(), format!("{r:?}"))
        };
        let read = [
            r#"2["publish",{"room":"r","event":"e","data":{"x":1}}]"#,
            r#"2["publish",{"room":"r","event":"e","data":[1,2,"s\"q"],"echo":false}]"#,
            r#"27["publish",{"room":"r","event":"e","data":"x","retain":true,"id":"m-1"}]"#,
            r#"2/admin,7["join",{"room":"r","since":{"epoch":"e","offset":3}}]"#,
            r#"2["leave",{"room":"r"}]"#,
            r#"2["ping",{}]"#,
            r#"2["publish",{"room":"r"}]"#,
            r#"2["publish",{"room":"r","event":"e","data":null}]"#,
            r#"2["publish",{"room":"bad room!","event":"e"}]"#,
            r#"2["publish",{"room":7,"event":"e"}]"#,
            r#"2["nope",{}]"#,
            r#"2["operation:start",{"kind":"k","target":"t","params":{"a":1}}]"#,
            r#"2["join",{"room":"r","unknown":[1,{"deep":true}]}]"#,
        ];
        for s in read {
            let e = event_fast(s).unwrap_or_else(|| panic!("read fast: {s}"));
            let fast = (
                e.nsp.to_string(),
                e.id,
                e.name.to_string(),
                format!("{:?}", e.request()),
            );
            assert_eq!(fast, general(s), "{s}");
        }
        // Left to the general path (which refuses, reads or maps them as before).
        let left = [
            r#"2["publish",["r"]]"#,
            r#"2["publish"]"#,
            r#"2["publish",{"room":"r"},3]"#,
            r#"2["pub\u006cish",{"room":"r"}]"#,
            r#"2["publish",{"room":"a","room":"b"}]"#,
            r#"2["publish",null]"#,
            r#"2/admin["join",{}]"#,
            r#"2["join",{"room":"r"}"#,
            r#"3["join",{"room":"r"}]"#,
            r#"0{"token":"t"}"#,
            r#"51-["publish",{"room":"r","data":{"_placeholder":true,"num":0}}]"#,
            r#"21234567890123456["join",{"room":"r"}]"#,
        ];
        for s in left {
            assert!(event_fast(s).is_none(), "{s}");
        }
    }

    #[test]
    fn recovery_offsets_round_trip_and_tag_event_packets() {
        let o = recovery_offset("project:42", 17);
        assert_eq!(parse_recovery_offset(&o), Some(("project:42", 17)));
        for bad in ["", "x", "@1", "room@", "room@1x", "bad room@1", "r@-1"] {
            assert_eq!(parse_recovery_offset(bad), None, "{bad:?}");
        }
        let tag = |s: &str| recovery_tag(s.as_bytes());
        assert_eq!(
            tag(r#"42["ev",{"a":1},{"room":"r"},"r@5"]"#),
            Some((recovery_stream("/", "r"), 5))
        );
        assert_eq!(
            tag(r#"42/admin,["ev",1,{},"project:1@99"]"#),
            Some((recovery_stream("/admin", "project:1"), 99))
        );
        assert_eq!(
            tag(r#"451-/admin,["ev",{"_placeholder":true,"num":0},{},"r@3"]"#),
            Some((recovery_stream("/admin", "r"), 3))
        );
        // A watched operation's backfill: its own stream, twice the log offset (+1: terminal).
        let bf = backfill_recovery_offset("operation:x", 4, true);
        assert_eq!(bf, "operation:x@b9");
        assert_eq!(parse_recovery_offset(&bf), None);
        assert_eq!(parse_backfill_offset(&bf), Some(("operation:x", 9)));
        assert_eq!(
            tag(&format!(r#"42["operation.completed",{{}},{{}},"{bf}"]"#)),
            Some((backfill_stream("/", "operation:x"), 9))
        );
        assert_ne!(
            backfill_stream("/", "operation:x"),
            recovery_stream("/", "operation:x")
        );
        // Untagged: other packets, and events whose last argument is not an offset.
        for untagged in [
            r#"42["ev",{"room":"r"}]"#,
            r#"43["x@1"]"#,
            r#"0{"sid":"x"}"#,
            r#"42["x@1"]"#,
            "2",
            "",
        ] {
            assert_eq!(tag(untagged), None, "{untagged:?}");
        }
    }

    #[test]
    fn events_map_to_requests() {
        let r = request("join", &[json!({"room": "project:1"})], vec![]).unwrap();
        assert!(matches!(r, Request::Join { room, .. } if room == "project:1"));
        let r = request(
            "operation:start",
            &[json!({"kind": "demo", "target": "t"})],
            vec![],
        )
        .unwrap();
        assert!(matches!(r, Request::StartOperation { .. }));
        assert_eq!(
            request("dance", &[], vec![]).unwrap_err().code,
            ErrorCode::UnknownType
        );
        assert_eq!(
            request("join", &[json!({"room": "bad room"})], vec![])
                .unwrap_err()
                .code,
            ErrorCode::InvalidRoom
        );
        assert_eq!(
            request("join", &[json!(5)], vec![]).unwrap_err().code,
            ErrorCode::InvalidFrame
        );
        let r = request(
            "publish",
            &[json!({"room": "r", "event": "e", "data": {"_placeholder": true, "num": 0}})],
            vec![Bytes::from_static(b"\x01")],
        )
        .unwrap();
        assert!(matches!(r, Request::Publish { attachments, .. } if attachments.len() == 1));
        assert_eq!(
            request(
                "publish",
                &[json!({"room": "r", "event": "e", "data": null})],
                vec![Bytes::from_static(b"\x01")],
            )
            .unwrap_err()
            .code,
            ErrorCode::InvalidField
        );
    }
}
