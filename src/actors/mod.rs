//! The actors. Message flow:
//!
//! ```text
//!  client ──frames──▶ Session ──JoinRoom/LeaveRoom/Publish──▶ RoomRegistry ──(same msg)──▶ Room
//!     ▲                  │                                        ▲                          │
//!     └──── socket ◀── Outbox ◀──────── shared frame bytes ───────┼──────────────────────────┘
//!                                                                 │
//!  REST handlers, Stats, activities ──Publish────────────────────┘
//! ```
//!
//! * [`session::Session`] — one per client connection; parses frames, checks permissions, asks
//!   the registry, answers errors. Owns the connection's [`Outbox`].
//! * [`registry::RoomRegistry`] — owns the room table; creates rooms on demand, routes every
//!   join/leave/publish/query to the right room, retires idle rooms.
//! * [`room::Room`] — one per room, spread over a pool of threads; assigns offsets, keeps
//!   history and presence, and fans each message out by pushing one shared buffer into every
//!   member's outbox.
//! * [`stats::StatsPublisher`] — publishes `stats` into `system` on an interval.

pub mod engine;
pub mod operation;
pub mod operation_manager;
pub mod registry;
pub mod room;
pub mod session;
pub mod stats;
pub mod watcher;

use std::sync::Arc;

use actix::prelude::*;

use crate::auth::UserInfo;
use crate::transport::outbox::Outbox;

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

/// Process-unique session number (internal key of member tables).
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

/// Registry → Session: the server is shutting down; close with 1001.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ServerShutdown;

/// A session as a room sees it: where to push frames and whom to tell when it is evicted.
#[derive(Clone)]
pub struct Member {
    pub session: SessionId,
    pub user: Arc<UserInfo>,
    pub outbox: Arc<Outbox>,
    pub control: Recipient<Evicted>,
    /// How this member wants frames encoded.
    pub wire: crate::protocol::Wire,
}
