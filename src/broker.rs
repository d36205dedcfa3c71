//! The publish path, behind one interface.
//!
//! Every producer — sessions, REST handlers, the activity feed, the stats publisher — publishes
//! through a [`Broker`]. The single-node broker, `actors::registry::LocalBroker`, hands the
//! message to this node's room registry, where the room assigns the offset and fans out (it
//! lives with the registry, so this module imports no actor: the arrows point from the actors to
//! the broker, never back). A multi-node broker (Redis streams: `XADD` assigns
//! the order, every node consumes and feeds its local rooms) implements the same trait, and
//! nothing that publishes has to change.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use actix::Message;
use bytes::Bytes;
use serde_json::value::RawValue;

use crate::auth::UserInfo;
use crate::error_code::Refusal;

pub type PublishFuture = Pin<Box<dyn Future<Output = Result<u64, Refusal>> + Send>>;

/// The contract every broker keeps (tested for the local one in `tests/api/actor_invariants.rs`):
///
/// * **First in, first out per publisher:** messages one caller hands to `publish` and
///   `publish_and_forget`, in any mix, are ordered in the call order. So both must take their
///   place in the order *when called*, not when a future is first polled.
/// * **One order per room:** every member of a room sees its messages in one order, with
///   contiguous offsets.
/// * **A refusal, never a hang:** a publish the broker cannot accept resolves to a `Refusal`
///   (`unavailable` when the room or the broker is gone).
pub trait Broker: Send + Sync + 'static {
    /// Publishes into a room; resolves to the message's offset in that room. The message takes
    /// its place in the publisher's order when this is called (see the contract above).
    fn publish(&self, msg: Publish) -> PublishFuture;

    /// Publishes without waiting for the offset (events whose publisher has nothing to do with
    /// the answer, e.g. an operation's progress). A refusal is logged where it happens. No
    /// default: spawning a task per call (the obvious default) does not keep one publisher's
    /// order, so each broker says how it keeps it.
    fn publish_and_forget(&self, msg: Publish);

    /// A short name for `/health`.
    fn name(&self) -> &'static str;

    /// Whether a member may publish straight to a local room's address (no registry hop).
    /// Only a single-node broker can allow it: with several nodes the order comes from the
    /// shared log, so every publish must go through the broker.
    fn members_publish_directly(&self) -> bool {
        false
    }
}

/// Anyone → Registry → Room: append a message and fan it out. Replies with its offset.
#[derive(Message)]
#[rtype(result = "Result<u64, Refusal>")]
pub struct Publish {
    pub room: String,
    pub event: String,
    pub data: Box<RawValue>,
    pub from: Option<Arc<UserInfo>>,
    /// Keep this as the room's retained message, sent to every joiner that did not resume.
    pub retain: bool,
    /// Only members may publish: the session (an `actors::SessionId`) that must be a member, if
    /// any.
    pub member_check: Option<u64>,
    /// When the publish reached the server (for the latency histogram).
    pub received_at: Instant,
    /// Application sequence carried to wires that use one (the SSE event id).
    pub seq: Option<u64>,
    /// Binary attachments, referenced from `data` by `{"_placeholder":true,"num":i}`.
    pub attachments: Vec<Bytes>,
    /// Delivery class: a slow member may get only the latest of these (pure progress of an
    /// operation); everything else is delivered or the member is evicted.
    pub conflate: bool,
    /// Sent by a member straight to the room's address, not routed by the registry: not
    /// counted in `routed_seen` (the registry never counted it either).
    pub direct: bool,
}

impl Publish {
    /// A server-side publish of `event` into `room`: no sender, not retained, no member check,
    /// received now, delivered to every member. Callers set what differs with struct-update
    /// syntax (`Publish { retain: true, ..Publish::new(…) }`), so the defaults are written once.
    pub fn new(room: impl Into<String>, event: impl Into<String>, data: Box<RawValue>) -> Self {
        Self {
            room: room.into(),
            event: event.into(),
            data,
            from: None,
            retain: false,
            member_check: None,
            received_at: Instant::now(),
            seq: None,
            attachments: Vec::new(),
            conflate: false,
            direct: false,
        }
    }
}
