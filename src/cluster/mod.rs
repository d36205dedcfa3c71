//! Several nodes on one Redis: the shared log that orders every room, behind the same seams as
//! the single-node broker (`crate::broker`).
//!
//! [`RedisBroker`] is a `Broker` (publishes ordered by a Redis script: the room's epoch, its
//! next offset, the append to the room's stream and to the cluster's fan-out stream, in one
//! step), a `Backlog` (where a room starting on this node continues from) and a `HistoryView`
//! (history read from the room's stream). Each node runs one reader of the fan-out stream that
//! feeds what it reads into its own rooms (`actors::registry::Deliver`), from the last entry it
//! read: a short Redis outage delays messages, it does not lose them.
//!
//! Why streams and not pub/sub: pub/sub drops whatever is published while a subscriber is
//! disconnected (the failure Socket.IO's classic Redis adapter documents); a stream is read from
//! the last id, so a reader that reconnects continues where it stopped.
//!
//! Key layout (prefix `SWITCHYARD_REDIS_PREFIX`, default `switchyard`):
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `{p}:room:{room}:meta` | hash | `epoch`, `offset` (the last offset given) |
//! | `{p}:room:{room}:log` | stream | the room's recent messages, id `{offset}-1`, fields `d` (the envelope) |
//! | `{p}:fanout` | stream | every message of every room: `r` room, `e` epoch, `o` offset, `d` envelope; and every presence change: `r` room, `j` joined (1/0), `u` user |
//! | `{p}:room:{room}:pconn`, `:puser`, `:pcount` | hashes | presence: connections, users, counts (`scripts.rs`) |
//! | `{p}:presence:nodes`, `{p}:presence:node:{node}` | zset, set | presence: each node's expiry, its rooms |
//! | `{p}:nodes` | hash | node name -> its latest figures (`nodes.rs`), for the dashboard |
//! | `{p}:rate:{user}` | hash | the user's publish budget across nodes (`rates.rs`) |
//! | `{p}:sio:{pid}`, `{p}:sio:node:{node}` | hash, zset | Socket.IO connection-state recovery: a disconnected socket's record, each node's count of them ([`RedisRecords`], `recovery.rs`) |
//!
//! Presence across the nodes is [`ClusterPresence`] (`presence.rs`).
//!
//! Operations across nodes: each is owned by one node under a lease on its row in PostgreSQL
//! (`db::leases`, `actors::operation::Ownership`); a cancel or a worker report for an operation
//! that runs elsewhere is handed to its owner by [`RedisPeers`] (channels `{p}:ops`,
//! `{p}:ops:reply:{node}`).
//!
//! See docs/cluster.md for the guarantees, their limits and what stays per node.

mod nodes;
mod operations;
mod presence;
mod rates;
mod recovery;
mod redis;
mod replies;
mod scripts;

pub use self::operations::RedisPeers;
pub use self::presence::ClusterPresence;
pub use self::rates::sync_user_rates;
pub use self::recovery::RedisRecords;
pub use self::redis::{RedisBroker, RedisLog};
