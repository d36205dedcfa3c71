//! Switchyard: a self-hosted real-time server.
//!
//! Layout (one concern per module):
//!
//! * [`config`] — `Settings` from the environment.
//! * [`startup`] — `Application::build` / `run_until_stopped`, shared by `main` and the tests.
//! * [`actors`] — `Session`, `RoomRegistry`, `Room`, `StatsPublisher` and their messages.
//! * [`protocol`] — wire formats only (`native` for `/ws`).
//! * [`transport`] — the WebSocket byte layer (frames refused at their header), the bounded
//!   per-session outbox, and the deadlines on HTTP request heads and bodies.
//! * [`broker`] — the one ordering authority: the `Broker` trait, the serializable `Envelope`,
//!   positions (epoch + offset), the single-node order (`broker::local`), presence and history
//!   views (the local implementation lives with the registry; Redis later).
//! * [`cluster`] — several nodes on one Redis: the Redis broker (cluster mode, when
//!   `SWITCHYARD_REDIS_URL` is set).
//! * [`db`] — pool, embedded migrations, the async bridge, one module per table.
//! * [`routes`] — HTTP handlers, one module per area.
//! * [`auth`], [`metrics`] — identity, counters.
//! * [`hooks`] — signed HTTP calls to an app's backend (connect, subscribe, publish, rpc).
//! * [`error_code`], [`names`] — the stable error codes and `Refusal`; what a room, event or
//!   project name may be. Neither imports the rest of the crate: every layer may use them.
//! * [`error`] — `AppError`, the HTTP edge's error type.
//!
//! Arrows point one way (from the routes and actors down to the broker, the database and the
//! codes); `tests/api/architecture.rs` fails on a new import cycle.
//!
//! Message flow: a client frame is parsed by its `Session`, checked against the caller's
//! permissions and membership and handed to the broker (or, once joined, the room's lane), which
//! gives it the room's next offset and puts it in the `Room` actor's mailbox. The room encodes
//! the message once, appends it to its bounded history and pushes the same bytes into each member
//! session's outbox; each connection drains its outbox into one socket write per wake-up. See
//! `actors` for the diagram and ARCHITECTURE.md for the whole map.

pub mod actors;
pub mod auth;
pub mod broker;
pub mod client_addr;
pub mod cluster;
pub mod config;
pub mod db;
pub mod error;
pub mod error_code;
pub mod hooks;
pub mod limits;
pub mod metrics;
pub mod names;
pub mod operations;
pub mod protocol;
pub mod routes;
pub mod startup;
pub mod state;
pub mod transport;
pub mod util;
