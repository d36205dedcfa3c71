//! Reading a room from outside it: who is present, what it has kept, which rooms exist.
//!
//! Behind traits of their own, apart from [`super::Broker`], because a cluster answers them from
//! different places than it orders publishes: presence from a shared table that counts a user
//! once across nodes and expires a dead node's connections, history from the shared log. The
//! single-node implementation (`actors::registry::LocalBroker`) asks the local rooms.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Envelope, Position, SessionId};
use crate::auth::UserInfo;
use crate::error_code::Refusal;

pub type ViewFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One room, as listed on the REST API and the dashboard.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RoomInfo {
    pub name: String,
    pub members: usize,
    pub users: usize,
    pub epoch: String,
    pub offset: u64,
}

/// One node as the dashboard shows it: its figures at its last stats tick. The same object is
/// the `stats` event the node publishes into the `system` room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeStats {
    /// `SWITCHYARD_NODE_ID`, or the process's random id.
    pub node: String,
    pub connections: i64,
    pub rooms: i64,
    /// Live operations on the node.
    pub operations: i64,
    pub messages_in_per_sec: f64,
    pub messages_out_per_sec: f64,
    pub uptime_seconds: u64,
    /// When the node reported these, milliseconds since the Unix epoch: a node that stopped
    /// reporting shows its last heartbeat ageing.
    pub heartbeat_ms: u64,
}

/// The nodes serving this Switchyard and their latest figures: one on a single node, each
/// node of a cluster from a table they all write.
pub trait NodesView: Send + Sync + 'static {
    /// This node's figures, replacing its previous ones.
    fn report(&self, stats: NodeStats) -> ViewFuture<Result<(), Refusal>>;

    /// Every node's latest figures, sorted by name; a node silent for a long time (an hour)
    /// is dropped from the table.
    fn nodes(&self) -> ViewFuture<Result<Vec<NodeStats>, Refusal>>;
}

/// A single node's table: its own last report.
#[derive(Default)]
pub struct OneNode(std::sync::Mutex<Option<NodeStats>>);

impl NodesView for OneNode {
    fn report(&self, stats: NodeStats) -> ViewFuture<Result<(), Refusal>> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);
        Box::pin(async { Ok(()) })
    }

    fn nodes(&self) -> ViewFuture<Result<Vec<NodeStats>, Refusal>> {
        let me = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Box::pin(async move { Ok(me.into_iter().collect()) })
    }
}

/// A room's kept messages after some offset.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub epoch: String,
    pub offset: u64,
    /// True when every message after `after` is included (nothing was trimmed away).
    pub complete: bool,
    /// Encoded `message` frames, oldest first.
    pub messages: Vec<Bytes>,
}

/// Who is where.
pub trait PresenceView: Send + Sync + 'static {
    /// The distinct users present in `room`; `None` when there is no such room. Refused
    /// `unavailable` when the view cannot be read.
    fn presence(&self, room: String) -> ViewFuture<Result<Option<Vec<UserInfo>>, Refusal>>;

    /// Every room with its members, users and position, sorted by name.
    fn rooms(&self) -> ViewFuture<Result<Vec<RoomInfo>, Refusal>>;
}

/// What a room has kept.
pub trait HistoryView: Send + Sync + 'static {
    /// The messages of `room` after `after` (all of them when `None`); `None` when there is no
    /// such room. Refused `unavailable` when the view cannot be read.
    fn history(
        &self,
        room: String,
        after: Option<u64>,
    ) -> ViewFuture<Result<Option<HistoryPage>, Refusal>>;
}

/// Where a room's order stands on the broker, and the last messages it holds.
pub struct Tail {
    /// The room's epoch and the offset of its last message.
    pub position: Position,
    /// The last messages, oldest first, each with its offset (all of `position.epoch`).
    pub entries: Vec<(u64, Envelope)>,
}

/// Who is present in a room across every node, as a shared log read it at one point of its
/// order: the users, and the position in the log after which presence changes are not in it.
pub struct PresenceSnapshot {
    /// The log's position when the snapshot was read (an opaque, increasing key): a change the
    /// room is handed later with a key at or before it is already in `users`.
    pub at: (u64, u64),
    pub users: Vec<Arc<UserInfo>>,
}

/// A user's arrival in or departure from a room, announced once across the nodes (their first
/// connection anywhere, their last one anywhere), in its place in the shared log's order.
#[derive(Debug, Clone, actix::Message)]
#[rtype(result = "()")]
pub struct PresenceChange {
    /// The change's position in the shared log (compared with [`PresenceSnapshot::at`]).
    pub at: (u64, u64),
    pub user: Arc<UserInfo>,
    pub joined: bool,
}

/// What a room that starts on this node asks the broker before it delivers anything: where the
/// room's order stands, and the recent messages, so a client resumes on any node. The local
/// broker needs none (its log starts with the room); a shared log answers from its stream.
///
/// A shared log also keeps presence across nodes: the room reports every member it adds or
/// removes ([`Backlog::arrived`], [`Backlog::departed`], in the room's own order, so nothing a
/// room does to its members — a leave, an eviction, a dead outbox — escapes it), reads who is
/// present when it starts ([`Backlog::presence`]), and then hears the changes from the log.
pub trait Backlog: Send + Sync + 'static {
    /// The room's position and at most `max` of its last messages.
    fn tail(&self, room: String, max: usize) -> ViewFuture<Result<Tail, Refusal>>;

    /// The messages of the room's current epoch with offsets in `after+1..=until` that it still
    /// holds, oldest first: what fills a gap a room saw in its deliveries.
    fn range(
        &self,
        room: String,
        after: u64,
        until: u64,
    ) -> ViewFuture<Result<Vec<(u64, Envelope)>, Refusal>>;

    /// Who is present in `room` across the nodes; `None` when this log keeps no shared presence.
    fn presence(&self, _room: String) -> ViewFuture<Result<Option<PresenceSnapshot>, Refusal>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// A member session of `user` joined `room` on this node. Must not block: queued.
    fn arrived(&self, _room: &str, _session: SessionId, _user: &Arc<UserInfo>) {}

    /// A member session left `room` on this node (left, evicted or gone). Must not block.
    fn departed(&self, _room: &str, _session: SessionId) {}
}
