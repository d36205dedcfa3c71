//! Reading Redis replies: the shapes the cluster's commands and scripts answer with, taken
//! apart without trusting them (a malformed entry is skipped and logged by the caller, never a
//! panic).

use std::sync::Arc;
use std::time::Instant;

use redis::Value;

use crate::auth::UserInfo;
use crate::broker::local::Ordered;
use crate::broker::{Envelope, Position, PresenceChange};
use crate::error_code::{ErrorCode, Refusal};

/// A stream entry: its id and its fields.
pub(super) type Entry = (String, Vec<(String, Vec<u8>)>);

pub(super) fn bad_reply(v: &Value) -> Refusal {
    Refusal::new(
        ErrorCode::Unavailable,
        format!("unexpected redis reply: {v:?}"),
    )
}

pub(super) fn array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        _ => None,
    }
}

pub(super) fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

pub(super) fn text(v: &Value) -> Option<String> {
    bytes(v)
        .and_then(|b| std::str::from_utf8(b).ok())
        .map(str::to_string)
}

pub(super) fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// `{epoch, offset}` as the publish script returns it.
pub(super) fn position_of(v: &Value) -> Option<Position> {
    let a = array(v)?;
    Some(Position {
        epoch: text(a.first()?)?.into(),
        offset: int(a.get(1)?)?,
    })
}

/// Stream entries (`[[id, [field, value, …]], …]`) as ids and field lists.
pub(super) fn entries_of(v: &Value) -> Vec<Entry> {
    let Some(list) = array(v) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            let e = array(e)?;
            let id = text(e.first()?)?;
            let kv = array(e.get(1)?)?;
            let fields = kv
                .chunks(2)
                .filter_map(|p| Some((text(p.first()?)?, bytes(p.get(1)?)?.to_vec())))
                .collect();
            Some((id, fields))
        })
        .collect()
}

/// The entries of an `XREAD` reply for one stream (`[[key, entries]]`, or a map in RESP3; nil
/// when the block timed out).
pub(super) fn stream_entries(v: &Value) -> Vec<Entry> {
    match v {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| array(s)?.get(1).map(entries_of))
            .flatten()
            .collect(),
        Value::Map(streams) => streams.iter().flat_map(|(_, e)| entries_of(e)).collect(),
        _ => Vec::new(),
    }
}

/// The id of the first entry of an `XREVRANGE` reply.
pub(super) fn first_id(v: &Value) -> Option<String> {
    entries_of(v).into_iter().next().map(|(id, _)| id)
}

pub(super) fn field<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

pub(super) fn envelope_of(fields: &[(String, Vec<u8>)]) -> Option<Envelope> {
    serde_json::from_slice(field(fields, "d")?).ok()
}

/// A room stream's entry id is `{offset}-1`.
pub(super) fn offset_of_id(id: &str) -> Option<u64> {
    id.split_once('-')?.0.parse().ok()
}

/// A fan-out entry as a delivery to this node's room of that name.
pub(super) fn entry_to_ordered(fields: &[(String, Vec<u8>)]) -> Option<(String, Ordered)> {
    let room = String::from_utf8(field(fields, "r")?.to_vec()).ok()?;
    let epoch = std::str::from_utf8(field(fields, "e")?).ok()?;
    let offset = std::str::from_utf8(field(fields, "o")?)
        .ok()?
        .parse()
        .ok()?;
    let envelope = envelope_of(fields)?;
    Some((
        room,
        Ordered {
            envelope,
            position: Position {
                epoch: epoch.into(),
                offset,
            },
            received_at: Instant::now(),
            routed: true,
            reply: None,
        },
    ))
}

/// A fan-out entry that is a presence change (`r`, `j`, `u`; see `scripts.rs`), with its
/// stream id as its position.
pub(super) fn presence_change_of(
    id: &str,
    fields: &[(String, Vec<u8>)],
) -> Option<(String, PresenceChange)> {
    let joined = match field(fields, "j")? {
        b"1" => true,
        b"0" => false,
        _ => return None,
    };
    let room = String::from_utf8(field(fields, "r")?.to_vec()).ok()?;
    let user: UserInfo = serde_json::from_slice(field(fields, "u")?).ok()?;
    Some((
        room,
        PresenceChange {
            at: stream_id(id)?,
            user: Arc::new(user),
            joined,
        },
    ))
}

/// A stream id `ms-seq` as a pair that orders like the ids.
pub(super) fn stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}
