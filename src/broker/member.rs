//! Membership: who is in a room on this node, and the messages that put them there.
//!
//! A member is always local — its outbox is in this process — whichever broker orders the
//! room's messages; so joins and leaves carry process-local things (the outbox, the session
//! number) and are not part of the [`super::Envelope`]. They still go through the broker
//! ([`super::Broker::join`]), so that a publisher's joins and publishes keep one order (the
//! contract on the trait).

use std::sync::Arc;

use actix::prelude::*;
use actix::WeakRecipient;

use super::local::RoomLog;
use super::Position;
use crate::auth::UserInfo;
use crate::error_code::Refusal;
use crate::protocol::{Backfill, RequestId, Since, Wire};
use crate::transport::outbox::Outbox;

/// Process-unique session number (the key of member tables).
pub type SessionId = u64;

/// A fresh session number for any kind of connection.
pub fn next_session_id() -> SessionId {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Why a room removed a member on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictReason {
    /// Its outbound queue was full.
    SlowConsumer,
}

/// Room → Session: you were removed from `room`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Evicted {
    pub room: String,
    pub reason: EvictReason,
}

/// A session as a room sees it: where to push frames and whom to tell when it is evicted.
///
/// `control` is weak: a room's entry must not keep a session alive, and a strong actix
/// address costs two allocations per clone (~100 bytes on every idle connection); an
/// eviction upgrades it, and a session already gone needs no telling.
#[derive(Clone)]
pub struct Member {
    pub session: SessionId,
    pub user: Arc<UserInfo>,
    pub outbox: Arc<Outbox>,
    pub control: WeakRecipient<Evicted>,
    /// How this member wants frames encoded.
    pub wire: Wire,
}

/// Session → Broker → Room: add `member`, reply with the room position. The room itself queues
/// the `joined` frame, the replay and the retained message into the member's outbox, so no live
/// message can arrive before them.
#[derive(Message)]
#[rtype(result = "Result<Joined, Refusal>")]
pub struct JoinRoom {
    pub room: String,
    pub member: Member,
    pub since: Option<Since>,
    pub request_id: Option<RequestId>,
    /// Frames for this joiner ahead of live traffic (an operation's snapshot and missed logs),
    /// computed by whoever owns that state. When set, `since` is not used: `recovered` is
    /// `backfill_complete`.
    pub backfill: Option<Vec<Backfill>>,
    pub backfill_complete: bool,
    /// Set by a broker whose deliveries can trail its order (a shared log; callers leave it
    /// `None`): the position of the last message ordered before this join in the caller's
    /// order. The room does not deliver the joiner anything at or before it, even if it has yet
    /// to deliver it — that keeps "first in, first out per caller" across publishes and joins
    /// (an operation's watcher gets its backfill, then exactly the events after it). The local
    /// broker needs none: the room's mailbox is the order.
    pub after: Option<Position>,
}

/// The answer to a join.
#[derive(Clone)]
pub struct Joined {
    /// The room's position when the member joined: the last message before its live traffic.
    pub position: Position,
    /// Whether everything after the requested `since` was replayed.
    pub recovered: bool,
    /// Where this member may publish into the room without another hop, keeping the room's one
    /// order (see [`RoomLog`]). Only a single-node broker hands one out; with a shared log
    /// every publish goes through the broker.
    pub lane: Option<Arc<RoomLog>>,
}

impl std::fmt::Debug for Joined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joined")
            .field("position", &self.position)
            .field("recovered", &self.recovered)
            .field("lane", &self.lane.is_some())
            .finish()
    }
}

/// Session → Broker → Room: remove the session. `Err(not_member)` if it was not in the room.
#[derive(Message)]
#[rtype(result = "Result<(), Refusal>")]
pub struct LeaveRoom {
    pub room: String,
    pub session: SessionId,
}
