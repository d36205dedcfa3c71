//! switchyard-bench: the scenarios of docs/benchmarks.md, run against Switchyard (native `/ws`
//! or Socket.IO) or the Node socket.io@4 reference server (`bench/node/server.mjs`, the same
//! room semantics). Each scenario returns a serde-serialisable report; the binary prints each
//! as one JSON line, and `tests/api/bench_smoke.rs` runs small ones in-process and asserts only
//! that every message reached every member exactly once and in order.
//!
//! - [`fanout`](mod@fanout): one room of N members, a light fixed-rate phase and a max-rate phase.
//! - [`rooms`](mod@rooms): 4,000 rooms of 4, every member publishing, a fixed total rate.
//! - [`idle`]: held connections, the server's RSS per connection (several processes).
//! - [`connect`](mod@connect): connections set up and joined a second, distinct users in rooms
//!   of four (presence on), and the server's CPU per 1,000 of them.
//! - [`floor`]: the bare epoll loop that the fan-out and rooms results are measured against.
//! - [`operations`](mod@operations): external operations reported by workers, one watcher each
//!   (Switchyard only; on SQLite or PostgreSQL).

pub mod client;
pub mod connect;
pub mod fanout;
pub mod floor;
pub mod hist;
pub mod idle;
pub mod load;
pub mod operations;
pub mod rooms;
pub mod sys;

pub use client::Protocol;
pub use connect::{connect, ConnectConfig, ConnectReport};
pub use fanout::{fanout, FanoutConfig, FanoutReport};
pub use idle::{IdleConfig, IdleReport};
pub use operations::{operations, OperationsConfig, OperationsReport};
pub use rooms::{rooms, RoomsConfig, RoomsReport};

/// Rounds to three decimals (reports are read by people).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A name part unique to this process and moment, so runs never share rooms or targets.
pub fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{:x}-{}",
        std::process::id(),
        sys::now_micros() % 0xff_ffff_ffff,
        N.fetch_add(1, Relaxed)
    )
}

/// How a report names its members' identity.
pub fn identity(user: &Option<String>) -> String {
    if user.is_some() {
        "shared"
    } else {
        "anonymous"
    }
    .to_string()
}
