//! Reading a room from outside it: who is present, what it has kept, which rooms exist.
//!
//! Behind traits of their own, apart from [`super::Broker`], because a cluster answers them from
//! different places than it orders publishes: presence from a shared table that counts a user
//! once across nodes and expires a dead node's connections, history from the shared log. The
//! single-node implementation (`actors::registry::LocalBroker`) asks the local rooms.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Envelope, Position};
use crate::auth::UserInfo;
use crate::error_code::Refusal;

pub type ViewFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One room, as listed on the REST API and the dashboard.
#[derive(Debug, Clone, Serialize)]
pub struct RoomInfo {
    pub name: String,
    pub members: usize,
    pub users: usize,
    pub epoch: String,
    pub offset: u64,
}

/// One node as the dashboard shows it: its figures at its last stats tick. The same object is
/// the `stats` event the node publishes into the `system` room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// What a room that starts on this node asks the broker before it delivers anything: where the
/// room's order stands, and the recent messages, so a client resumes on any node. The local
/// broker needs none (its log starts with the room); a shared log answers from its stream.
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
}
