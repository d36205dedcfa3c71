//! What a broker carries: the [`Envelope`] a producer hands it, and the [`Position`] the broker
//! gives it in its room's order.
//!
//! Nothing here means something only inside one process (no session number, no `Instant`, no
//! actor address): an envelope serializes as it is, so a network broker (a Redis stream entry,
//! a PostgreSQL row) carries it to every node, where the local rooms deliver it. What a node adds
//! on its side — when the message reached it, whom to answer — travels beside it, in
//! `broker::local::Ordered`.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::UserInfo;
pub use crate::protocol::Retain;

/// One message for one room, as its producer published it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// The room it is published into.
    pub room: String,
    /// The application's event name (`step-updated`, `operation.progress`, …).
    pub event: String,
    /// The payload, raw JSON: parsed once at the edge, copied once into the encoded frame.
    pub data: Box<RawValue>,
    /// The user who published it (`None`: the server itself — stats, operations, activities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Arc<UserInfo>>,
    /// The connection that published it, by the id its client knows it by (`welcome.session`
    /// on `/ws`, `socket.id` on Socket.IO): delivered in `from.session`, so a client with two
    /// tabs can tell its own echo from its other tab's message. `None` for REST and the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<Arc<str>>,
    /// Keep it as retained state, sent to every joiner that does not resume (see [`Retain`]).
    #[serde(default, skip_serializing_if = "Retain::is_no")]
    pub retain: Retain,
    /// Delivery class: a slow member may get only the latest of these (an operation's pure
    /// progress); everything else is delivered or the member is evicted.
    #[serde(default, skip_serializing_if = "is_false")]
    pub conflate: bool,
    /// The producer's own sequence, carried to wires that use one (the SSE event id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Binary attachments, referenced from `data` by `{"_placeholder":true,"num":i}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Bytes>,
    /// A connection that does not get this message although it is a member (the sender, for
    /// Socket.IO's `socket.to(room).emit`: "everyone but me"). It still goes into history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<ConnectionRef>,
    /// Set when one message is published into several rooms at once (an activity into
    /// `activity` and `project:42`; Socket.IO's `io.to([a, b]).emit`): the same id in each
    /// room's envelope, so a connection that is a member of several of them gets it once
    /// (`broker::dedupe`). Minted by [`new_message_id`]; clients see it as `message_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<Arc<str>>,
}

/// A fresh id for a message published into several rooms (see [`Envelope::message_id`]).
pub fn new_message_id() -> Arc<str> {
    uuid::Uuid::new_v4().simple().to_string().into()
}

/// A connection named so that every node can tell whether it is one of its own: the node's id
/// and the session number there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionRef {
    pub node: Arc<str>,
    pub session: u64,
}

impl ConnectionRef {
    /// A session of this node.
    pub fn local(session: u64) -> Self {
        Self {
            node: node_id(),
            session,
        }
    }

    /// The session number if the connection is one of this node's.
    pub fn on_this_node(&self) -> Option<u64> {
        (*self.node == *node_id()).then_some(self.session)
    }
}

/// This process's id among the nodes of a cluster: minted once per process (a restart is a new
/// node as far as sessions go: its sessions are new too).
pub fn node_id() -> Arc<str> {
    static NODE: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    NODE.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..12].into())
        .clone()
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Envelope {
    /// A server-side publish of `event` into `room`: no sender, not retained, not conflated.
    /// Callers set what differs with struct-update syntax
    /// (`Envelope { retain: true, ..Envelope::new(…) }`), so the defaults are written once.
    pub fn new(room: impl Into<String>, event: impl Into<String>, data: Box<RawValue>) -> Self {
        Self {
            room: room.into(),
            event: event.into(),
            data,
            from: None,
            connection: None,
            retain: Retain::No,
            conflate: false,
            seq: None,
            attachments: Vec::new(),
            exclude: None,
            message_id: None,
        }
    }
}

/// Where a message stands in its room's order: the room's epoch and the message's offset in it.
///
/// Offsets are contiguous within an epoch, starting after the epoch's first offset; a client
/// that resumes names the position it last saw. The epoch changes whenever the broker cannot
/// promise continuity (the local broker: a new process, or a room re-created after its tombstone
/// was forgotten; a shared log: its data lost), and offsets of different epochs are never
/// compared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: Arc<str>,
    pub offset: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).expect("valid JSON")
    }

    #[test]
    fn an_envelope_survives_a_round_trip_through_json_unchanged() {
        let e = Envelope {
            from: Some(Arc::new(UserInfo {
                id: "u1".into(),
                name: Some("Ada".into()),
            })),
            connection: Some("c0ffee".into()),
            retain: Retain::PerEvent,
            conflate: true,
            seq: Some(7),
            attachments: vec![Bytes::from_static(b"\x00\x01bin")],
            exclude: Some(ConnectionRef::local(9)),
            message_id: Some(new_message_id()),
            ..Envelope::new("project:42", "step-updated", raw(r#"{"step":3,"x":[1,2]}"#))
        };
        let wire = serde_json::to_string(&e).expect("serializes");
        let back: Envelope = serde_json::from_str(&wire).expect("deserializes");
        assert_eq!(back.room, "project:42");
        assert_eq!(back.event, "step-updated");
        // Raw data is carried byte for byte, not re-encoded.
        assert_eq!(back.data.get(), r#"{"step":3,"x":[1,2]}"#);
        assert_eq!(back.from.as_deref(), e.from.as_deref());
        assert!(back.retain == Retain::PerEvent && back.conflate);
        assert_eq!(back.connection.as_deref(), Some("c0ffee"));
        assert_eq!(back.message_id, e.message_id);
        assert_eq!(back.seq, Some(7));
        assert_eq!(back.attachments, e.attachments);
        assert_eq!(back.exclude, e.exclude);
        assert_eq!(back.exclude.and_then(|c| c.on_this_node()), Some(9));
    }

    #[test]
    fn a_connection_of_another_node_is_not_one_of_ours() {
        let other = ConnectionRef {
            node: "elsewhere".into(),
            session: 9,
        };
        assert_eq!(other.on_this_node(), None);
    }

    #[test]
    fn a_server_publish_serializes_only_what_it_sets() {
        let e = Envelope::new("system", "stats", raw("{}"));
        let wire = serde_json::to_string(&e).expect("serializes");
        assert_eq!(wire, r#"{"room":"system","event":"stats","data":{}}"#);
        let back: Envelope = serde_json::from_str(&wire).expect("deserializes");
        assert!(back.from.is_none() && back.retain == Retain::No && back.attachments.is_empty());
    }

    #[test]
    fn retain_reads_true_false_and_event_and_refuses_anything_else() {
        let read = |s: &str| serde_json::from_str::<Retain>(s);
        assert_eq!(read("true").ok(), Some(Retain::Last));
        assert_eq!(read("false").ok(), Some(Retain::No));
        assert_eq!(read(r#""event""#).ok(), Some(Retain::PerEvent));
        assert!(read(r#""room""#).is_err() && read("1").is_err());
        // A room's last message serializes as it always did, so entries already in a shared
        // log read back the same.
        assert_eq!(
            serde_json::to_string(&Retain::Last).ok().as_deref(),
            Some("true")
        );
    }

    #[test]
    fn a_position_round_trips() {
        let p = Position {
            epoch: "a1b2-3".into(),
            offset: 42,
        };
        let back: Position =
            serde_json::from_str(&serde_json::to_string(&p).expect("serializes")).expect("parses");
        assert_eq!(back, p);
    }
}
