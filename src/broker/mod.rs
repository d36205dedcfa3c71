//! The publish seam: one ordering authority for every room.
//!
//! Every producer — sessions, REST handlers, the activity feed, the stats publisher, operations
//! — hands an [`Envelope`] to a [`Broker`]. The broker gives it its place in the room's order
//! (its [`Position`]: the room's epoch and the next offset) and has it delivered by the room on
//! every node that has members there. Rooms never number messages themselves: they deliver what
//! was ordered, and keep the recent history the order says they hold.
//!
//! * `envelope` — what is carried: serializable, nothing process-local.
//! * `member` — membership: joins and leaves (local by nature: a member's outbox is here).
//! * `local` — the single-node order: one [`local::RoomLog`] per room, epochs and tombstones.
//! * `views` — presence, history and the node table, behind interfaces of their own.
//! * `dedupe` — one delivery per connection of a message published into several rooms.
//!
//! The single-node broker, `actors::registry::LocalBroker`, routes through this node's room
//! registry (it lives there, so this module imports no actor: the arrows point from the actors
//! to the broker, never back). A multi-node broker orders in a shared log instead (a Redis
//! script that appends to the room's stream and returns epoch and offset), and every node feeds
//! what it reads from the log into its local rooms as [`local::Ordered`] messages; nothing that
//! publishes has to change.

pub mod dedupe;
mod envelope;
pub mod local;
mod member;
mod views;

use std::future::Future;
use std::pin::Pin;

pub use envelope::{new_message_id, node_id, ConnectionRef, Envelope, Position, Retain};
pub use member::{
    next_session_id, EvictReason, Evicted, JoinRoom, Joined, LeaveRoom, Member, SessionId,
};
pub use views::{
    Backlog, HistoryPage, HistoryView, NodeStats, NodesView, OneNode, PresenceChange,
    PresenceSnapshot, PresenceView, RoomInfo, Tail, ViewFuture,
};

use crate::error_code::Refusal;

pub type PublishFuture = Pin<Box<dyn Future<Output = Result<Position, Refusal>> + Send>>;
pub type JoinFuture = Pin<Box<dyn Future<Output = Result<Joined, Refusal>> + Send>>;
pub type LeaveFuture = Pin<Box<dyn Future<Output = Result<(), Refusal>> + Send>>;

/// The contract every broker keeps (tested for the local one in `tests/api/actor_invariants.rs`
/// and `broker::local`'s unit tests; a cluster broker must pass the same tests):
///
/// * **First in, first out per caller:** what one caller hands to `publish`,
///   `publish_and_forget`, `join` and `leave`, in any mix, takes effect in the call order. So
///   each takes its place *when called*, not when a future is first polled. (This is what orders
///   an operation's events against its watchers' joins: the operation is the caller of both.)
/// * **One order per room:** the broker gives every message of a room its position — the
///   room's epoch and the next offset, contiguous within the epoch — and every member of the
///   room, on any node, receives the room's messages in that order.
/// * **Epochs come from the broker:** a new epoch whenever it cannot promise continuity; a
///   client resuming from another epoch is told `recovered: false`.
/// * **A refusal, never a hang, never a silent drop:** a publish the broker cannot order
///   resolves to a `Refusal` (`unavailable` when the room or the broker is gone); one it has
///   ordered is delivered.
pub trait Broker: Send + Sync + 'static {
    /// Publishes into a room; resolves to the message's position once it is ordered (the local
    /// broker: once delivered to this node's members). It takes its place in the caller's order
    /// when this is called.
    fn publish(&self, envelope: Envelope) -> PublishFuture;

    /// Publishes without waiting for the position (events whose publisher has nothing to do
    /// with the answer, e.g. an operation's progress). A refusal is logged where it happens. No
    /// default: spawning a task per call (the obvious default) does not keep one caller's order,
    /// so each broker says how it keeps it.
    fn publish_and_forget(&self, envelope: Envelope);

    /// Adds a local member to a room (creating the room here if need be), in the caller's order
    /// with its publishes.
    fn join(&self, join: JoinRoom) -> JoinFuture;

    /// [`join`](Self::join) for a caller with nothing of its own still on its way into this
    /// room through the broker (a session: it publishes through its lane and waits for its
    /// leaves' answers), so the join need not keep its place behind them: the broker may take
    /// a shorter road (the local one: straight to a room this thread knows, through the
    /// room's log). Still before anything the caller sends after it.
    fn join_direct(&self, join: JoinRoom) -> JoinFuture {
        self.join(join)
    }

    /// Removes a local member from a room.
    fn leave(&self, leave: LeaveRoom) -> LeaveFuture;

    /// A session that is gone leaves all these rooms; nobody waits for the answers.
    fn leave_all(&self, session: SessionId, rooms: Vec<String>);

    /// A short name for `/health`.
    fn name(&self) -> &'static str;

    /// Whether the broker can order publishes now (`/health`): `Err` says why not. The local
    /// broker always can.
    fn check(&self) -> ViewFuture<Result<(), String>> {
        Box::pin(std::future::ready(Ok(())))
    }
}
