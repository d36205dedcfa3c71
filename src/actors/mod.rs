//! The actors. Message flow:
//!
//! ```text
//!  client ──frames──▶ Session ──join/leave/publish──▶ Broker (LocalBroker: RoomRegistry) ──▶ Room
//!     ▲                  │  └───── publish through its lane (RoomLog) after joining ─────────▶ │
//!     └──── socket ◀── Outbox ◀──────────────── shared frame bytes ─────────────────────────────┘
//!
//!  REST handlers, stats, activities, operations ──publish──▶ Broker
//! ```
//!
//! * [`session::Session`] — one per client connection; parses frames, checks permissions and
//!   membership, hands joins and publishes to the broker, answers errors. Owns the connection's
//!   [`Outbox`](crate::transport::outbox::Outbox).
//! * [`registry::RoomRegistry`] — owns this node's room table; creates rooms on demand with
//!   their log (`broker::local::RoomLog`, where offsets are assigned), routes joins, leaves,
//!   publishes and queries to the right room, retires idle rooms. `LocalBroker` is its face.
//! * [`room::Room`] — one per room, spread over a pool of threads; delivers what the broker
//!   ordered: keeps history and presence, and fans each message out by pushing one shared buffer
//!   into every member's outbox.
//! * [`recovery::RecoveryRecords`] — not an actor: where disconnected Socket.IO sockets leave
//!   what connection-state recovery needs, shared by the Engine.IO sessions (in memory,
//!   [`recovery::RecoveryStore`]; in cluster mode in Redis, `cluster::RedisRecords`).
//! * [`sessions::SessionTable`] — not an actor: the open connections, told to close at a
//!   graceful shutdown; sessions and watchers add and remove themselves.
//! * [`stats::StatsPublisher`] — publishes `stats` into `system` on an interval.

pub mod engine;
pub mod local_broker;
pub mod operation;
pub mod operation_manager;
pub mod recovery;
pub mod registry;
pub mod room;
pub mod session;
pub mod sessions;
pub mod stats;
pub mod watcher;

use actix::prelude::*;

/// Starting an actor whose mailbox must be unbounded from the moment its address exists.
///
/// `ctx.set_mailbox_capacity(0)` in `started` comes too late: the address is handed out before
/// `started` runs, and until then actix's default bound (16) makes a `send` wait while a
/// `do_send` goes in, so one sender's messages can be reordered. Actors whose senders rely on
/// their order (an operation's watch before its events) are started through this instead.
pub trait StartUnbounded: Actor<Context = Context<Self>> {
    fn start_unbounded(self) -> Addr<Self> {
        Self::create(|ctx| {
            ctx.set_mailbox_capacity(0);
            self
        })
    }
}

impl<A: Actor<Context = Context<A>>> StartUnbounded for A {}

// Membership is the broker's vocabulary (a cluster broker names members too); re-exported here,
// where the actors have always found it.
pub use crate::broker::{next_session_id, EvictReason, Evicted, Member, SessionId};

/// Shutdown (through the session table) → Session: the server is shutting down; close with 1001.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ServerShutdown;
