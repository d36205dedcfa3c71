//! Settings: one struct, read from the environment (or `serve`'s flags), with defaults.
//!
//! [`ServeArgs`] declares every setting once — flag, environment variable, default, range and
//! help line — through clap, so `switchyard serve --help` lists them all and the README's table
//! is checked against that list (`tests/api/settings.rs`). An invalid value stops start-up with
//! a message that names the variable. [`Settings`] is what the server uses (durations as
//! `Duration`, lists parsed); tests build it directly (port 0, short heartbeats, a temporary
//! database) instead of going through the environment.
//!
//! Why this file is one piece (about 1,100 lines, a sixth of them tests): the declaration, the
//! struct and the conversion between them have a line each per setting; reading it top to
//! bottom is how one checks a new setting end to end.

use clap::{Args, FromArgMatches};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The most `SWITCHYARD_OPERATION_MAX_PARAMS_BYTES` may be: a command's params travel in the
/// environment variable `SWITCHYARD_PARAMS`, and Linux refuses to start a program with one
/// environment string over 128 KiB (`MAX_ARG_STRLEN`), name and `=` included.
pub const MAX_PARAMS_ENV_BYTES: usize = 128 * 1024 - 64;

/// Where the data lives. Parsed from `DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// A file path for the embedded SQLite database (created and migrated on first start).
    Sqlite(String),
    /// A `postgres://` or `postgresql://` URL.
    Postgres(String),
}

impl DatabaseUrl {
    /// Accepts `postgres://…`, `postgresql://…`, `sqlite://path`, `sqlite:path` or a bare path.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err("must not be empty".into());
        }
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            return Ok(Self::Postgres(raw.to_string()));
        }
        let path = raw
            .strip_prefix("sqlite://")
            .or_else(|| raw.strip_prefix("sqlite:"))
            .unwrap_or(raw);
        if path.is_empty() {
            return Err("the sqlite path is empty".into());
        }
        if path.contains("://") {
            return Err("unsupported scheme (use postgres://… or a SQLite file path)".into());
        }
        Ok(Self::Sqlite(path.to_string()))
    }

    /// The backend's name as reported by `/health`.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

/// Every setting of `switchyard serve`, declared once: its flag, its environment variable (the
/// primary way to set it), its default and the line `--help` shows. Flags win over variables,
/// variables over defaults. Each value is checked by its parser here (a bad one names its
/// variable, see [`ConfigError::from_clap`]); checks that involve two settings are in
/// [`Settings::from_args`]. A flag is the variable's name without `SWITCHYARD_`, in kebab case
/// (a unit test keeps it so); durations are whole milliseconds (`_MS`) or seconds (`_SECS`).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Interface to bind
    #[arg(long, env = "SWITCHYARD_HOST", default_value = "127.0.0.1", value_parser = ip)]
    pub host: IpAddr,
    /// Port (0 picks a free one)
    #[arg(long, env = "SWITCHYARD_PORT", default_value = "8080", value_parser = port)]
    pub port: u16,
    /// A SQLite file path (`sqlite://path` also accepted) or `postgres://…`
    #[arg(long, env = "DATABASE_URL", default_value = "switchyard.db", hide_env_values = true,
          value_parser = database_url)]
    pub database_url: DatabaseUrl,
    /// Pooled database connections
    #[arg(long, env = "SWITCHYARD_DB_POOL_SIZE", default_value = "8", value_parser = whole(1u32, 256))]
    pub db_pool_size: u32,
    /// Wait for a connection before the database counts as unreachable
    #[arg(long, env = "SWITCHYARD_DB_TIMEOUT_MS", default_value = "2000", value_parser = millis(50))]
    pub db_timeout_ms: u64,
    /// `redis://host:port[/db]`: cluster mode, nodes sharing this Redis and one PostgreSQL
    #[arg(long, env = "SWITCHYARD_REDIS_URL", hide_env_values = true, value_parser = redis_url)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key (clusters sharing one Redis use different ones)
    #[arg(long, env = "SWITCHYARD_REDIS_PREFIX", default_value = "switchyard")]
    pub redis_prefix: String,
    /// How often a node charges its users' publishes to their budget across the cluster
    #[arg(long, env = "SWITCHYARD_REDIS_RATE_SYNC_MS", default_value = "100", value_parser = millis(10))]
    pub redis_rate_sync_ms: u64,
    /// Reverse proxies (addresses and CIDR networks, comma-separated) whose X-Forwarded-For names the client
    #[arg(long, env = "SWITCHYARD_TRUSTED_PROXIES", value_parser = trusted_proxies)]
    pub trusted_proxies: Option<crate::client_addr::TrustedProxies>,
    /// This node's name (1-32 of A-Z a-z 0-9 - _); unset: random per process
    #[arg(long, env = "SWITCHYARD_NODE_ID", value_parser = node_id)]
    pub node_id: Option<String>,
    /// A Redis command taking longer refuses its publish `unavailable`
    #[arg(long, env = "SWITCHYARD_REDIS_TIMEOUT_MS", default_value = "1000", value_parser = millis(50))]
    pub redis_timeout_ms: u64,
    /// Cluster mode: how long a node owns an operation without renewing its lease
    #[arg(long, env = "SWITCHYARD_OPERATION_LEASE_MS", default_value = "10000", value_parser = millis(200))]
    pub operation_lease_ms: u64,
    /// Cluster mode: how often a node renews its operations' leases; at most half the lease
    #[arg(long, env = "SWITCHYARD_OPERATION_HEARTBEAT_MS", default_value = "2000", value_parser = millis(50))]
    pub operation_heartbeat_ms: u64,
    /// Messages kept in the cluster's fan-out stream: how far a node may fall behind and catch up
    #[arg(long, env = "SWITCHYARD_REDIS_FANOUT_MAXLEN", default_value = "100000",
          value_parser = whole(1_000usize, 100_000_000))]
    pub redis_fanout_maxlen: usize,
    /// How often a cluster node renews its presence entries in Redis and sweeps expired nodes
    #[arg(long, env = "SWITCHYARD_REDIS_PRESENCE_HEARTBEAT_MS", default_value = "4000", value_parser = millis(50))]
    pub redis_presence_heartbeat_ms: u64,
    /// How long a node's presence entries outlive its last heartbeat (at least twice the heartbeat)
    #[arg(long, env = "SWITCHYARD_REDIS_PRESENCE_TTL_MS", default_value = "12000", value_parser = millis(100))]
    pub redis_presence_ttl_ms: u64,
    /// Server ping interval
    #[arg(long, env = "SWITCHYARD_HEARTBEAT_INTERVAL_MS", default_value = "25000", value_parser = millis(10))]
    pub heartbeat_interval_ms: u64,
    /// A session silent this long is dropped (must exceed the interval)
    #[arg(long, env = "SWITCHYARD_HEARTBEAT_TIMEOUT_MS", default_value = "60000", value_parser = millis(10))]
    pub heartbeat_timeout_ms: u64,
    /// Messages each room keeps for resume
    #[arg(long, env = "SWITCHYARD_HISTORY_SIZE", default_value = "100", value_parser = whole(0usize, 1_000_000))]
    pub history_size: usize,
    /// Most users listed in a join answer (`presence_count` has the total)
    #[arg(long, env = "SWITCHYARD_PRESENCE_LIST_MAX", default_value = "1000", value_parser = whole(0usize, 1_000_000))]
    pub presence_list_max: usize,
    /// How long a room keeps a message for resume
    #[arg(long, env = "SWITCHYARD_HISTORY_TTL_SECS", default_value = "300", value_parser = whole(0u64, 86_400 * 30))]
    pub history_ttl_secs: u64,
    /// Bytes of history one room keeps for resume (oldest dropped first)
    #[arg(long, env = "SWITCHYARD_HISTORY_MAX_BYTES", default_value = "1048576", value_parser = whole(0usize, 1 << 30))]
    pub history_max_bytes: usize,
    /// Event names whose last `retain: "event"` message one room keeps for joiners
    #[arg(long, env = "SWITCHYARD_RETAINED_EVENTS_MAX", default_value = "32", value_parser = whole(1usize, 10_000))]
    pub retained_events_max: usize,
    /// Ids of multi-room messages one connection remembers so that it gets each once
    #[arg(long, env = "SWITCHYARD_DEDUPE_WINDOW", default_value = "32", value_parser = whole(1usize, 4_096))]
    pub dedupe_window: usize,
    /// Rooms one `POST /api/rooms/publish` may name
    #[arg(long, env = "SWITCHYARD_PUBLISH_MAX_ROOMS", default_value = "16", value_parser = whole(1usize, 1_000))]
    pub publish_max_rooms: usize,
    /// Bytes of history all rooms keep together; over it rooms drop their oldest messages
    #[arg(long, env = "SWITCHYARD_HISTORY_TOTAL_MAX_BYTES", default_value = "268435456",
          value_parser = whole(0usize, 1 << 40))]
    pub history_total_max_bytes: usize,
    /// HS256 secret for tokens; unset: open mode
    #[arg(long, env = "SWITCHYARD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// 1 allows open mode on a non-loopback address
    #[arg(long, env = "SWITCHYARD_ALLOW_INSECURE", default_value = "0", value_parser = switch,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "1", value_name = "0|1")]
    pub allow_insecure: bool,
    /// Time to send the `auth` frame when a secret is set
    #[arg(long, env = "SWITCHYARD_AUTH_TIMEOUT_MS", default_value = "5000", value_parser = millis(10))]
    pub auth_timeout_ms: u64,
    /// How long a watch ticket opens its operation's status, SSE stream and WebSocket
    #[arg(long, env = "SWITCHYARD_WATCH_TICKET_TTL_SECS", default_value = "60", value_parser = whole(1u64, 3_600))]
    pub watch_ticket_ttl_secs: u64,
    /// Interval of the `stats` event in `system`
    #[arg(long, env = "SWITCHYARD_STATS_INTERVAL_MS", default_value = "5000", value_parser = millis(10))]
    pub stats_interval_ms: u64,
    /// Largest WebSocket message (after reassembly); larger closes with 1009
    #[arg(long, env = "SWITCHYARD_MAX_FRAME_BYTES", default_value = "65536", value_parser = whole(128usize, 64 << 20))]
    pub max_frame_bytes: usize,
    /// Largest WebSocket message before the client authenticated
    #[arg(long, env = "SWITCHYARD_MAX_UNAUTHENTICATED_FRAME_BYTES", default_value = "8192",
          value_parser = whole(128usize, 64 << 20))]
    pub max_unauthenticated_frame_bytes: usize,
    /// Largest HTTP request body; larger gets 413
    #[arg(long, env = "SWITCHYARD_MAX_BODY_BYTES", default_value = "262144", value_parser = whole(128usize, 64 << 20))]
    pub max_body_bytes: usize,
    /// Time an HTTP request's body has to arrive after its head; later gets 408
    #[arg(long, env = "SWITCHYARD_REQUEST_TIMEOUT_MS", default_value = "30000", value_parser = millis(10))]
    pub request_timeout_ms: u64,
    /// Per-session outbound queue bound, in messages
    #[arg(long, env = "SWITCHYARD_OUTBOX_MAX_MESSAGES", default_value = "1024", value_parser = whole(1usize, 1 << 20))]
    pub outbox_max_messages: usize,
    /// Per-session outbound queue bound, in bytes
    #[arg(long, env = "SWITCHYARD_OUTBOX_MAX_BYTES", default_value = "1048576", value_parser = whole(1024usize, 1 << 30))]
    pub outbox_max_bytes: usize,
    /// Bytes all outbound queues together may hold; over it the largest are evicted (0 = off)
    #[arg(long, env = "SWITCHYARD_OUTBOX_TOTAL_BYTES", default_value = "2147483648", value_parser = whole(0usize, 1 << 50))]
    pub outbox_total_bytes: usize,
    /// Refused frames per 10 s before a session is closed (1008)
    #[arg(long, env = "SWITCHYARD_ERROR_LIMIT", default_value = "20", value_parser = whole(1u32, 1_000_000))]
    pub error_limit: u32,
    /// Bound on graceful shutdown
    #[arg(long, env = "SWITCHYARD_SHUTDOWN_TIMEOUT_MS", default_value = "5000", value_parser = millis(0))]
    pub shutdown_timeout_ms: u64,
    /// After a WebSocket session ends, how long its connection may still take to deliver what is queued
    #[arg(long, env = "SWITCHYARD_CLOSE_LINGER_MS", default_value = "10000", value_parser = millis(0))]
    pub close_linger_ms: u64,
    /// Connections the kernel queues for accept (listen backlog; the kernel caps it at net.core.somaxconn)
    #[arg(long, env = "SWITCHYARD_LISTEN_BACKLOG", default_value = "1024", value_parser = whole(1u32, 65_535))]
    pub listen_backlog: u32,
    /// HTTP/WebSocket worker threads; 0: one per core
    #[arg(long, env = "SWITCHYARD_WORKERS", default_value = "0", value_parser = whole(0usize, 1_024))]
    pub workers: usize,
    /// Rooms run on N dedicated threads; 0: on the HTTP worker threads; unset: one per core
    #[arg(long, env = "SWITCHYARD_ROOM_THREADS", value_parser = whole(0usize, 1_024))]
    pub room_threads: Option<usize>,
    /// With room threads, rooms start on the HTTP workers next to their members and move to a room thread at N members; 0: they start on the room threads
    #[arg(long, env = "SWITCHYARD_ROOM_MOVE_AT", default_value = "32", value_parser = whole(0usize, 1_000_000))]
    pub room_move_at: usize,
    /// A quiet room (fewer frames than this fanned out in the last 100-200 ms, none waiting) writes straight to idle members' sockets; 0: never
    #[arg(long, env = "SWITCHYARD_DIRECT_WRITES_PER_100MS", default_value = "2000", value_parser = whole(0usize, 1_000_000_000))]
    pub direct_writes_per_100ms: usize,
    /// The configuration file (TOML): operation kinds and app profiles
    #[arg(long, env = "SWITCHYARD_CONFIG_FILE", value_parser = existing_file)]
    pub config_file: Option<PathBuf>,
    /// The key backend hook calls are signed with (required when a profile declares hooks)
    #[arg(long, env = "SWITCHYARD_HOOK_SECRET", hide_env_values = true)]
    pub hook_secret: Option<String>,
    /// Backend hook calls in flight on this node; one more is refused `backend_unavailable`
    #[arg(long, env = "SWITCHYARD_HOOK_CONCURRENCY", default_value = "256", value_parser = whole(1usize, 1_000_000))]
    pub hook_concurrency: usize,
    /// Backend hook calls one socket may have in flight; one more is refused `rate_limited`
    #[arg(long, env = "SWITCHYARD_HOOK_SESSION_CONCURRENCY", default_value = "8",
          value_parser = whole(1usize, 1_000_000))]
    pub hook_session_concurrency: usize,
    /// TOML file declaring operation kinds only; works beside SWITCHYARD_CONFIG_FILE
    #[arg(long, env = "SWITCHYARD_OPERATIONS_FILE", value_parser = existing_file)]
    pub operations_file: Option<PathBuf>,
    /// Offer the built-in `demo` operation kind
    #[arg(long, env = "SWITCHYARD_DEMO", default_value = "1", value_parser = switch,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "1", value_name = "0|1")]
    pub demo: bool,
    /// At most one database write per operation per interval, unless a report waits for its answer
    #[arg(long, env = "SWITCHYARD_OPERATION_FLUSH_MS", default_value = "250", value_parser = millis(10))]
    pub operation_flush_ms: u64,
    /// How long a finished operation stays in memory
    #[arg(long, env = "SWITCHYARD_OPERATION_RETENTION_SECS", default_value = "300",
          value_parser = whole(0u64, 86_400 * 7))]
    pub operation_retention_secs: u64,
    /// Finished operations older than this are deleted
    #[arg(long, env = "SWITCHYARD_OPERATION_PRUNE_DAYS", default_value = "30", value_parser = whole(1u64, 36_500))]
    pub operation_prune_days: u64,
    /// Stages a status object lists at most (declared ones included)
    #[arg(long, env = "SWITCHYARD_OPERATION_MAX_STAGES", default_value = "32", value_parser = whole(1usize, 10_000))]
    pub operation_max_stages: usize,
    /// Largest `result` an operation completes with, as JSON (413 beyond)
    #[arg(long, env = "SWITCHYARD_OPERATION_MAX_RESULT_BYTES", default_value = "65536",
          value_parser = whole(2usize, 64 << 20))]
    pub operation_max_result_bytes: usize,
    /// Largest `details` a worker's progress report may set, as JSON (413 beyond)
    #[arg(long, env = "SWITCHYARD_OPERATION_MAX_DETAILS_BYTES", default_value = "16384",
          value_parser = whole(2usize, 64 << 20))]
    pub operation_max_details_bytes: usize,
    /// Largest `params` an operation is started with, as JSON (413 beyond); a command gets them in
    /// the environment, so at most 131008
    // `SWITCHYARD_PARAMS=` + the JSON + NUL must fit the kernel's 128 KiB per string.
    #[arg(long, env = "SWITCHYARD_OPERATION_MAX_PARAMS_BYTES", default_value = "65536",
          value_parser = whole(2usize, MAX_PARAMS_ENV_BYTES))]
    pub operation_max_params_bytes: usize,
    /// Deepest nesting of start `params` and of `details`
    #[arg(long, env = "SWITCHYARD_OPERATION_MAX_JSON_DEPTH", default_value = "16", value_parser = whole(1usize, 100))]
    pub operation_max_json_depth: usize,
    /// Bytes of recent log lines one operation keeps in memory for watchers that rejoin
    #[arg(long, env = "SWITCHYARD_OPERATION_LOG_MEMORY_BYTES", default_value = "1048576",
          value_parser = whole(64usize << 10, 1 << 30))]
    pub operation_log_memory_bytes: usize,
    /// Bytes of unwritten log lines one operation keeps while the database is unreachable
    #[arg(long, env = "SWITCHYARD_OPERATION_UNWRITTEN_MAX_BYTES", default_value = "16777216",
          value_parser = whole(64usize << 10, 4 << 30))]
    pub operation_unwritten_max_bytes: usize,
    /// Worker reports a second per operation, burst twice that; 0: no limit
    #[arg(long, env = "SWITCHYARD_OPERATION_REPORT_RATE", default_value = "1000",
          value_parser = whole(0u32, 10_000_000))]
    pub operation_report_rate: u32,
    /// Log lines backfilled to a joining watcher (more: page over REST)
    #[arg(long, env = "SWITCHYARD_LOG_REPLAY_MAX", default_value = "1000", value_parser = whole(0usize, 1_000_000))]
    pub log_replay_max: usize,
    /// Rooms one connection may be in; 0: no limit
    #[arg(long, env = "SWITCHYARD_MAX_ROOMS_PER_CONNECTION", default_value = "100",
          value_parser = whole(0usize, 1_000_000))]
    pub max_rooms_per_connection: usize,
    /// Publishes a second per connection, burst twice that; 0: no limit
    #[arg(long, env = "SWITCHYARD_PUBLISH_RATE", default_value = "100", value_parser = whole(0u32, 10_000_000))]
    pub publish_rate: u32,
    /// Publishes a second per user across its connections and REST calls, burst twice that; 0: no limit
    #[arg(long, env = "SWITCHYARD_USER_PUBLISH_RATE", default_value = "200", value_parser = whole(0u32, 10_000_000))]
    pub user_publish_rate: u32,
    /// Open connections per client address; 0: no limit
    #[arg(long, env = "SWITCHYARD_MAX_CONNECTIONS_PER_IP", default_value = "2000",
          value_parser = whole(0usize, 10_000_000))]
    pub max_connections_per_ip: usize,
    /// Open connections per verified user (token or backend hook; not open mode's declared users), per node; 0: no limit
    #[arg(long, env = "SWITCHYARD_MAX_CONNECTIONS_PER_USER", default_value = "100",
          value_parser = whole(0usize, 10_000_000))]
    pub max_connections_per_user: usize,
    /// Operations (queued, running, cancelling) one user may have started and not ended, per node; 0: no limit
    #[arg(long, env = "SWITCHYARD_MAX_ACTIVE_OPERATIONS_PER_USER", default_value = "1000",
          value_parser = whole(0usize, 10_000_000))]
    pub max_active_operations_per_user: usize,
    /// New connections a second per client address, burst twice that; 0: no limit
    #[arg(long, env = "SWITCHYARD_NEW_CONNECTIONS_PER_IP", default_value = "200",
          value_parser = whole(0u32, 10_000_000))]
    pub new_connections_per_ip: u32,
    /// Comma-separated origins (https://app.example) whose pages may connect and call the API; unset: any
    #[arg(long, env = "SWITCHYARD_ALLOWED_ORIGINS", value_parser = origins)]
    pub allowed_origins: Option<List>,
    /// Engine.IO ping interval
    #[arg(long, env = "SWITCHYARD_SOCKETIO_PING_INTERVAL_MS", default_value = "25000", value_parser = millis(10))]
    pub socketio_ping_interval_ms: u64,
    /// Engine.IO pong deadline
    #[arg(long, env = "SWITCHYARD_SOCKETIO_PING_TIMEOUT_MS", default_value = "20000", value_parser = millis(10))]
    pub socketio_ping_timeout_ms: u64,
    /// Engine.IO `maxPayload` (polling body / WebSocket message / a binary packet's attachments)
    #[arg(long, env = "SWITCHYARD_SOCKETIO_MAX_PAYLOAD", default_value = "1000000",
          value_parser = whole(1024usize, 64 << 20))]
    pub socketio_max_payload: usize,
    /// Time to send the first Socket.IO CONNECT
    #[arg(long, env = "SWITCHYARD_SOCKETIO_CONNECT_TIMEOUT_MS", default_value = "45000", value_parser = millis(10))]
    pub socketio_connect_timeout_ms: u64,
    /// Socket.IO namespaces besides `/`, comma-separated, e.g. /admin,/ops
    #[arg(long, env = "SWITCHYARD_SOCKETIO_NAMESPACES", value_parser = namespaces)]
    pub socketio_namespaces: Option<List>,
    /// Socket.IO connection-state recovery: how long a dropped socket can be recovered; 0: off
    #[arg(long, env = "SWITCHYARD_SOCKETIO_RECOVERY_SECS", default_value = "0", value_parser = whole(0u64, 86_400))]
    pub socketio_recovery_secs: u64,
    /// Room events whose order a Socket.IO connection remembers for recovery
    #[arg(long, env = "SWITCHYARD_SOCKETIO_RECOVERY_WINDOW", default_value = "256", value_parser = whole(1usize, 65_536))]
    pub socketio_recovery_window: usize,
    /// Dropped Socket.IO sockets kept for recovery at once
    #[arg(long, env = "SWITCHYARD_SOCKETIO_RECOVERY_MAX_SOCKETS", default_value = "10000",
          value_parser = whole(1usize, 10_000_000))]
    pub socketio_recovery_max_sockets: usize,
    /// Cluster mode: the largest recovery record a dropped Socket.IO socket may leave in Redis
    #[arg(long, env = "SWITCHYARD_SOCKETIO_RECOVERY_MAX_RECORD_BYTES", default_value = "65536",
          value_parser = whole(1_024usize, 16 << 20))]
    pub socketio_recovery_max_record_bytes: usize,
}

/// All server settings. `Settings::default()` is what a bare `switchyard` runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Interface to bind (`SWITCHYARD_HOST`).
    pub host: IpAddr,
    /// TCP port; 0 picks a free one (`SWITCHYARD_PORT`).
    pub port: u16,
    /// `DATABASE_URL`.
    pub database: DatabaseUrl,
    /// Pooled database connections (`SWITCHYARD_DB_POOL_SIZE`).
    pub db_pool_size: u32,
    /// How long a query waits for a connection before the database counts as unreachable
    /// (`SWITCHYARD_DB_TIMEOUT_MS`). Bounds how long `/health` takes during an outage.
    pub db_timeout: Duration,
    /// Server ping interval (`SWITCHYARD_HEARTBEAT_INTERVAL_MS`).
    pub heartbeat_interval: Duration,
    /// A session silent for this long is dropped (`SWITCHYARD_HEARTBEAT_TIMEOUT_MS`).
    pub heartbeat_timeout: Duration,
    /// Messages each room keeps for resume (`SWITCHYARD_HISTORY_SIZE`).
    pub history_size: usize,
    /// How long a room keeps a message for resume (`SWITCHYARD_HISTORY_TTL_SECS`).
    pub history_ttl: Duration,
    /// Bytes of history one room keeps; the oldest messages go first
    /// (`SWITCHYARD_HISTORY_MAX_BYTES`).
    pub history_max_bytes: usize,
    /// Bytes of history all rooms keep together; past it, rooms drop their oldest messages
    /// (`SWITCHYARD_HISTORY_TOTAL_MAX_BYTES`; see `Room::trim_history`).
    pub history_total_max_bytes: usize,
    /// Most users listed in a join answer's `presence` (`SWITCHYARD_PRESENCE_LIST_MAX`); the
    /// answer's `presence_count` always has the total.
    pub presence_list_max: usize,
    /// Event names whose last `retain: "event"` message one room keeps; past it the name
    /// retained longest ago goes (`SWITCHYARD_RETAINED_EVENTS_MAX`). Their bytes count against
    /// the history byte bounds.
    pub retained_events_max: usize,
    /// Ids of multi-room messages one connection remembers, to get each once whichever of its
    /// rooms delivers it first (`SWITCHYARD_DEDUPE_WINDOW`; allocated only when such a message
    /// reaches the connection, see `broker::dedupe`).
    pub dedupe_window: usize,
    /// Rooms one `POST /api/rooms/publish` may name (`SWITCHYARD_PUBLISH_MAX_ROOMS`).
    pub publish_max_rooms: usize,
    /// HS256 secret; `None` means open mode (`SWITCHYARD_JWT_SECRET`).
    pub jwt_secret: Option<String>,
    /// Allow open mode on a non-loopback address (`SWITCHYARD_ALLOW_INSECURE=1`).
    pub allow_insecure: bool,
    /// The key backend hooks are signed with (`SWITCHYARD_HOOK_SECRET`; docs/security.md). A
    /// profile with hooks does not start without it: an unsigned call could not be trusted.
    pub hook_secret: Option<String>,
    /// Values for `${VAR}` in the configuration file, looked up before the process environment
    /// (which is where `${VAR}` comes from in production: this is not read from it). Tests give
    /// each server they start its own values (a backend stand-in's port) without changing the
    /// environment that every test in the process shares.
    pub config_vars: std::collections::HashMap<String, String>,
    /// Backend hook calls in flight on this node at once (`SWITCHYARD_HOOK_CONCURRENCY`); one
    /// more is refused `backend_unavailable` at once rather than queued.
    pub hook_concurrency: usize,
    /// Backend hook calls one socket may have in flight (`SWITCHYARD_HOOK_SESSION_CONCURRENCY`);
    /// one more is refused `rate_limited`, so one client cannot take the node's calls.
    pub hook_session_concurrency: usize,
    /// Time a browser session has to send its `auth` frame (`SWITCHYARD_AUTH_TIMEOUT_MS`).
    pub auth_timeout: Duration,
    /// How long a watch ticket opens an operation's WebSocket, SSE stream or status
    /// (`SWITCHYARD_WATCH_TICKET_TTL_SECS`): long enough for a page to open its stream and for
    /// `EventSource` to reconnect through a short outage with the same URL; short enough that a
    /// URL copied from a history or a proxy log opens nothing soon after.
    pub watch_ticket_ttl: Duration,
    /// Interval of the `stats` event in the `system` room (`SWITCHYARD_STATS_INTERVAL_MS`).
    pub stats_interval: Duration,
    /// Largest WebSocket message accepted, after reassembly (`SWITCHYARD_MAX_FRAME_BYTES`).
    /// Refused at the frame's header, before its payload is read.
    pub max_frame_bytes: usize,
    /// Largest WebSocket message accepted before the client authenticated: on `/ws` until its
    /// `auth` frame (when a secret is set and no header token was sent), on a Socket.IO
    /// WebSocket until its first CONNECT (`SWITCHYARD_MAX_UNAUTHENTICATED_FRAME_BYTES`). What
    /// a client may send then is a token, so a few KiB; never above the authenticated bound.
    pub max_unauthenticated_frame_bytes: usize,
    /// How long an HTTP request's body may take to arrive, counted from its head
    /// (`SWITCHYARD_REQUEST_TIMEOUT_MS`); the head itself has 5 s. A late body gets 408
    /// `request_timeout` and the connection is closed.
    pub request_timeout: Duration,
    /// Largest HTTP request body accepted (`SWITCHYARD_MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// Per-session outbound queue limit in messages (`SWITCHYARD_OUTBOX_MAX_MESSAGES`).
    pub outbox_max_messages: usize,
    /// Per-session outbound queue limit in bytes (`SWITCHYARD_OUTBOX_MAX_BYTES`).
    pub outbox_max_bytes: usize,
    /// What every client connection's outbound queue together may hold
    /// (`SWITCHYARD_OUTBOX_TOTAL_BYTES`, 0 = no bound): `transport::budget::Budget`.
    pub outbox_total_bytes: usize,
    /// Refused frames tolerated per 10 seconds before the session is closed (`SWITCHYARD_ERROR_LIMIT`).
    pub error_limit: u32,
    /// Bound on graceful shutdown (`SWITCHYARD_SHUTDOWN_TIMEOUT_MS`).
    pub shutdown_timeout: Duration,
    /// Once a WebSocket session has ended, how long its connection may still take to deliver
    /// what is queued (the close frame last) to a client that is not reading, and then to
    /// drain the client's input until its close frame (`SWITCHYARD_CLOSE_LINGER_MS`).
    pub close_linger: Duration,
    /// HTTP worker threads; 0 means one per core (`SWITCHYARD_WORKERS`).
    pub workers: usize,
    /// Connections the kernel queues for `accept` (`SWITCHYARD_LISTEN_BACKLOG`). Rust's
    /// standard listener asks for 128: a burst of more connects than that (a page load of many
    /// users after a deploy, every client reconnecting at once) overflowed it, and the dropped
    /// SYNs were retried by the clients' kernels a whole second later. Linux caps it at
    /// `net.core.somaxconn` (4096 by default).
    pub listen_backlog: u32,
    /// Dedicated threads for room actors (default: one per core); 0 runs rooms on the HTTP
    /// worker threads, next to the sessions (`SWITCHYARD_ROOM_THREADS`). Dedicated threads
    /// batch better under load — while a room fans out, its members' connections collect
    /// frames and then write them together: twice the deliveries per CPU second at 10,000
    /// members, max rate. On the workers a publish saves a thread hop: ~10% cheaper for many
    /// small rooms at a light rate (docs/benchmarks.md).
    pub room_threads: usize,
    /// With room threads (`room_threads` > 0), rooms start on the HTTP worker threads, next to
    /// their members (a publish then costs no thread hop), and move to a room thread once they
    /// have this many members, where large rooms fan out better, and back to a worker when
    /// they shrink to a quarter of it (`SWITCHYARD_ROOM_MOVE_AT`; 0: rooms start on the room
    /// threads and stay; docs/benchmarks.md has the numbers).
    pub room_move_at: usize,
    /// A quiet room — nothing ordered behind the message at hand, and fewer than this many
    /// frames fanned out in the current and the previous 100 ms — writes the frame straight to
    /// each member's socket whose outbox is empty and idle, on the room's thread, instead of
    /// queueing it and waking the connection's writer (`SWITCHYARD_DIRECT_WRITES_PER_100MS`;
    /// 0: never; see `transport::socket`). A busy room queues, so frames that pile up for a
    /// connection go out together in one write.
    pub direct_writes_per_100ms: usize,
    /// Operation kinds file (`SWITCHYARD_OPERATIONS_FILE`).
    pub operations_file: Option<std::path::PathBuf>,
    /// The configuration file: operation kinds and app profiles (`SWITCHYARD_CONFIG_FILE`).
    pub config_file: Option<std::path::PathBuf>,
    /// Offer the built-in `demo` kind (`SWITCHYARD_DEMO`).
    pub demo: bool,
    /// How long a finished operation stays in memory (`SWITCHYARD_OPERATION_RETENTION_SECS`).
    pub operation_retention: Duration,
    /// Finished operations older than this many days are deleted (`SWITCHYARD_OPERATION_PRUNE_DAYS`).
    pub operation_prune_days: u64,
    /// At most one status write per operation per this interval (`SWITCHYARD_OPERATION_FLUSH_MS`).
    pub operation_flush_interval: Duration,
    /// Stages a status object lists at most, declared ones included; a report naming one more
    /// is refused (`SWITCHYARD_OPERATION_MAX_STAGES`).
    pub operation_max_stages: usize,
    /// Largest `result` an operation completes with, as JSON
    /// (`SWITCHYARD_OPERATION_MAX_RESULT_BYTES`).
    pub operation_max_result_bytes: usize,
    /// Largest `details` a worker's report may set, as JSON
    /// (`SWITCHYARD_OPERATION_MAX_DETAILS_BYTES`).
    pub operation_max_details_bytes: usize,
    /// Largest `params` an operation is started with, as JSON; a command gets them in one
    /// environment variable, which the kernel limits to 128 KiB
    /// (`SWITCHYARD_OPERATION_MAX_PARAMS_BYTES`).
    pub operation_max_params_bytes: usize,
    /// Deepest nesting of start `params` and of `details` (`SWITCHYARD_OPERATION_MAX_JSON_DEPTH`).
    pub operation_max_json_depth: usize,
    /// Bytes of recent log lines one operation keeps in memory for watchers that rejoin (besides
    /// the 1,000-line bound); older lines come from the database
    /// (`SWITCHYARD_OPERATION_LOG_MEMORY_BYTES`).
    pub operation_log_memory_bytes: usize,
    /// Bytes of unwritten log lines one operation keeps while the database is unreachable
    /// (besides the 100,000-line bound); past it the oldest are dropped and counted
    /// (`SWITCHYARD_OPERATION_UNWRITTEN_MAX_BYTES`).
    pub operation_unwritten_max_bytes: usize,
    /// Worker reports a second per operation, burst twice that; 0: no limit
    /// (`SWITCHYARD_OPERATION_REPORT_RATE`).
    pub operation_report_rate: u32,
    /// Log lines replayed to a joining watcher before it must page the rest over REST
    /// (`SWITCHYARD_LOG_REPLAY_MAX`).
    pub log_replay_max: usize,
    /// Origins whose pages may connect and call the API (WebSocket upgrades, Socket.IO and
    /// `/api`, with CORS for them; another `Origin` is refused); empty allows any
    /// (`SWITCHYARD_ALLOWED_ORIGINS`, comma-separated).
    pub allowed_origins: Vec<String>,
    /// Engine.IO ping interval (`SWITCHYARD_SOCKETIO_PING_INTERVAL_MS`).
    pub sio_ping_interval: Duration,
    /// Engine.IO pong deadline (`SWITCHYARD_SOCKETIO_PING_TIMEOUT_MS`).
    pub sio_ping_timeout: Duration,
    /// Engine.IO `maxPayload`: largest polling body or WebSocket message (`SWITCHYARD_SOCKETIO_MAX_PAYLOAD`).
    pub sio_max_payload: usize,
    /// Time to send the first Socket.IO CONNECT (`SWITCHYARD_SOCKETIO_CONNECT_TIMEOUT_MS`).
    pub sio_connect_timeout: Duration,
    /// Socket.IO namespaces besides `/` (`SWITCHYARD_SOCKETIO_NAMESPACES`, comma-separated).
    pub sio_namespaces: Vec<String>,
    /// Socket.IO connection-state recovery: how long a disconnected socket can be recovered
    /// (`SWITCHYARD_SOCKETIO_RECOVERY_SECS`, Node's `maxDisconnectionDuration`; 0: off).
    pub sio_recovery: Duration,
    /// Room messages a Socket.IO connection remembers the order of, for recovery
    /// (`SWITCHYARD_SOCKETIO_RECOVERY_WINDOW`).
    pub sio_recovery_window: usize,
    /// Disconnected Socket.IO sockets kept for recovery at once
    /// (`SWITCHYARD_SOCKETIO_RECOVERY_MAX_SOCKETS`).
    pub sio_recovery_max_sockets: usize,
    /// In cluster mode, the largest record a disconnected Socket.IO socket may leave in Redis
    /// (`SWITCHYARD_SOCKETIO_RECOVERY_MAX_RECORD_BYTES`); a larger one is not kept.
    pub sio_recovery_max_record_bytes: usize,
    /// Serve the official protocol test suites' fixtures instead (`switchyard conformance`).
    pub conformance: bool,
    /// Rooms one connection may be in (`SWITCHYARD_MAX_ROOMS_PER_CONNECTION`, 0: no limit).
    pub max_rooms_per_connection: usize,
    /// Publishes a second per connection, burst twice that (`SWITCHYARD_PUBLISH_RATE`, 0: none).
    pub publish_rate: u32,
    /// Publishes a second per user across its connections (`SWITCHYARD_USER_PUBLISH_RATE`).
    pub user_publish_rate: u32,
    /// Open connections per client address (`SWITCHYARD_MAX_CONNECTIONS_PER_IP`, 0: no limit).
    pub max_connections_per_ip: usize,
    /// Open connections per verified user, per node (`SWITCHYARD_MAX_CONNECTIONS_PER_USER`, 0: no
    /// limit): with the outbound queue's bound, what one token holder can pin.
    pub max_connections_per_user: usize,
    /// New connections a second per client address, burst twice that
    /// (`SWITCHYARD_NEW_CONNECTIONS_PER_IP`, 0: no limit).
    pub new_connections_per_ip: u32,
    /// Cluster mode: the Redis every node shares (`SWITCHYARD_REDIS_URL`; requires PostgreSQL).
    pub redis_url: Option<String>,
    /// Prefix of every Redis key (`SWITCHYARD_REDIS_PREFIX`), so clusters can share a Redis.
    pub redis_prefix: String,
    /// Reverse proxies whose `X-Forwarded-For` names the client (`SWITCHYARD_TRUSTED_PROXIES`):
    /// the per-address limits then count the real clients, not the proxy.
    pub trusted_proxies: crate::client_addr::TrustedProxies,
    /// Active operations (queued, running, cancelling) one user may have started on this node at
    /// once (`SWITCHYARD_MAX_ACTIVE_OPERATIONS_PER_USER`, 0: no limit): each is an actor, rows
    /// and for commands a process, whoever holds a token.
    pub max_active_operations_per_user: usize,
    /// This node's name (`SWITCHYARD_NODE_ID`): the `node` label of `/metrics`, the prefix of
    /// its Engine.IO session ids (so a proxy can route a long-polling request to the node that
    /// holds its session), the dashboard's node list. Unset: a random id per process.
    pub node_id: Option<String>,
    /// How long a Redis command may take before the publish is refused `unavailable`
    /// (`SWITCHYARD_REDIS_TIMEOUT_MS`).
    pub redis_timeout: Duration,
    /// Entries kept in the cluster's fan-out stream, the distance a node's reader may fall
    /// behind (or be cut off from Redis) and still catch up without a gap
    /// (`SWITCHYARD_REDIS_FANOUT_MAXLEN`).
    pub redis_fanout_maxlen: usize,
    /// How often a node charges its users' publishes to their budgets across the cluster
    /// (`SWITCHYARD_REDIS_RATE_SYNC_MS`): the per-user limit's overshoot across nodes is what
    /// they hand out within one interval.
    pub redis_rate_sync: Duration,
    /// Cluster mode: how long a node owns an operation without renewing its lease
    /// (`SWITCHYARD_OPERATION_LEASE_MS`). A dead owner's operations are taken over after at
    /// most this plus one heartbeat.
    pub operation_lease: Duration,
    /// Cluster mode: how often a node renews the leases of its operations (one UPDATE for all
    /// of them) and claims operations whose lease expired (`SWITCHYARD_OPERATION_HEARTBEAT_MS`;
    /// at most half the lease).
    pub operation_heartbeat: Duration,
    /// Tests only: while set, this node's lease heartbeat skips its renewals and claims (a
    /// stalled owner, without stopping the process). Never read from the environment.
    #[doc(hidden)]
    pub operation_heartbeat_paused: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// How often a cluster node renews its presence entries and sweeps expired nodes
    /// (`SWITCHYARD_REDIS_PRESENCE_HEARTBEAT_MS`).
    pub redis_presence_heartbeat: Duration,
    /// How long a node's presence entries outlive its last heartbeat
    /// (`SWITCHYARD_REDIS_PRESENCE_TTL_MS`): a dead node's users are announced leaving within
    /// this plus one heartbeat.
    pub redis_presence_ttl: Duration,
}

impl Default for Settings {
    /// What a bare `switchyard` runs with: the declared defaults of [`ServeArgs`], parsed without
    /// any flag or variable, so each default is written once.
    fn default() -> Self {
        // Cannot fail unless a declared default breaks its own parser or a cross-field check,
        // which `defaults_serve_on_loopback_8080_with_sqlite` would show first.
        Settings::from_lookup(|_| None).expect("the defaults declared in ServeArgs are valid")
    }
}

/// A start-up configuration error; its message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid value for {var}: {value:?} ({reason})")]
pub struct ConfigError {
    /// The environment variable (the flag is its name in kebab case, without `SWITCHYARD_`).
    pub var: String,
    pub value: String,
    pub reason: String,
}

impl ConfigError {
    /// The setting a clap error refused, when one of the parsers below refused it; `None` for
    /// any other clap error (an unknown flag, `--help`), which clap reports itself. The refusal
    /// is recognised by its source type ([`Refused`]), not by the flag's name, so that another
    /// subcommand's `--port` is not mistaken for `SWITCHYARD_PORT`.
    pub fn from_clap(e: &clap::Error) -> Option<Self> {
        use clap::error::{ContextKind, ContextValue};
        use std::error::Error as _;
        let reason = e.source()?.downcast_ref::<Refused>()?;
        let text = |kind| match e.get(kind) {
            Some(ContextValue::String(s)) => Some(s.clone()),
            _ => None,
        };
        // clap names the argument as it displays it (`--port <PORT>`): find the one that
        // displays so, and take its variable.
        let shown = text(ContextKind::InvalidArg)?;
        // Built as for parsing: an argument displays its number of values only then.
        let mut cmd = serve_command();
        cmd.build();
        let var = cmd
            .get_arguments()
            .find(|a| a.to_string() == shown)?
            .get_env()?
            .to_string_lossy()
            .into_owned();
        Some(ConfigError {
            var,
            value: text(ContextKind::InvalidValue).unwrap_or_default(),
            reason: reason.0.clone(),
        })
    }
}

/// `serve`'s arguments alone, as `switchyard serve` has them.
pub fn serve_command() -> clap::Command {
    ServeArgs::augment_args(clap::Command::new("serve"))
}

/// `serve`'s arguments with every variable that is set but empty counted as unset, as it always
/// was (a deployment template that writes `SWITCHYARD_JWT_SECRET=` means no secret): clap would
/// hand the empty string to the parser. Such an argument loses its `[env: …]` line in `--help`.
pub fn empty_env_is_unset(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|a| {
        let empty = a
            .get_env()
            .and_then(std::env::var_os)
            .is_some_and(|v| v.is_empty());
        if empty {
            a.env(None::<&'static str>)
        } else {
            a
        }
    })
}

impl Settings {
    /// Reads the process environment (what `switchyard` without a subcommand does).
    pub fn from_env() -> Result<Self, ConfigError> {
        let cmd = empty_env_is_unset(serve_command());
        Self::from_args(parse_args(cmd, ["serve"])?)
    }

    /// Reads settings through `lookup`, so tests can supply a map instead of the environment.
    ///
    /// clap reads an argument's variable from the process environment when the argument is
    /// built, and that environment is shared by every test in the process. So here every
    /// argument's variable is dropped and what `lookup` has for it is passed as its flag
    /// (`--port=8080`) instead: the same parsers and checks, nothing from the process.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let cmd = serve_command();
        let mut argv = vec![std::ffi::OsString::from("serve")];
        for arg in cmd.get_arguments() {
            let (Some(var), Some(long)) = (arg.get_env().and_then(|v| v.to_str()), arg.get_long())
            else {
                continue;
            };
            if let Some(v) = lookup(var).filter(|v| !v.is_empty()) {
                argv.push(format!("--{long}={v}").into());
            }
        }
        let cmd = cmd.mut_args(|a| a.env(None::<&'static str>));
        Self::from_args(parse_args(cmd, argv)?)
    }

    /// Turns parsed arguments into settings, with the checks that involve two settings (each
    /// value alone was checked by its parser).
    pub fn from_args(a: ServeArgs) -> Result<Self, ConfigError> {
        let ms = Duration::from_millis;
        let secs = Duration::from_secs;
        let s = Settings {
            host: a.host,
            port: a.port,
            database: a.database_url,
            db_pool_size: a.db_pool_size,
            db_timeout: ms(a.db_timeout_ms),
            redis_url: a.redis_url,
            redis_prefix: a.redis_prefix,
            redis_rate_sync: ms(a.redis_rate_sync_ms),
            trusted_proxies: a.trusted_proxies.unwrap_or_default(),
            node_id: a.node_id,
            redis_timeout: ms(a.redis_timeout_ms),
            operation_lease: ms(a.operation_lease_ms),
            operation_heartbeat: ms(a.operation_heartbeat_ms),
            operation_heartbeat_paused: None,
            redis_fanout_maxlen: a.redis_fanout_maxlen,
            redis_presence_heartbeat: ms(a.redis_presence_heartbeat_ms),
            redis_presence_ttl: ms(a.redis_presence_ttl_ms),
            heartbeat_interval: ms(a.heartbeat_interval_ms),
            heartbeat_timeout: ms(a.heartbeat_timeout_ms),
            history_size: a.history_size,
            presence_list_max: a.presence_list_max,
            history_ttl: secs(a.history_ttl_secs),
            history_max_bytes: a.history_max_bytes,
            retained_events_max: a.retained_events_max,
            dedupe_window: a.dedupe_window,
            publish_max_rooms: a.publish_max_rooms,
            history_total_max_bytes: a.history_total_max_bytes,
            jwt_secret: a.jwt_secret,
            allow_insecure: a.allow_insecure,
            auth_timeout: ms(a.auth_timeout_ms),
            watch_ticket_ttl: secs(a.watch_ticket_ttl_secs),
            stats_interval: ms(a.stats_interval_ms),
            max_frame_bytes: a.max_frame_bytes,
            max_unauthenticated_frame_bytes: a.max_unauthenticated_frame_bytes,
            max_body_bytes: a.max_body_bytes,
            request_timeout: ms(a.request_timeout_ms),
            outbox_max_messages: a.outbox_max_messages,
            outbox_max_bytes: a.outbox_max_bytes,
            outbox_total_bytes: a.outbox_total_bytes,
            error_limit: a.error_limit,
            shutdown_timeout: ms(a.shutdown_timeout_ms),
            close_linger: ms(a.close_linger_ms),
            workers: a.workers,
            listen_backlog: a.listen_backlog,
            room_threads: a.room_threads.unwrap_or_else(|| resolve_threads(0)),
            direct_writes_per_100ms: a.direct_writes_per_100ms,
            room_move_at: a.room_move_at,
            config_file: a.config_file,
            hook_secret: a.hook_secret,
            config_vars: std::collections::HashMap::new(),
            hook_concurrency: a.hook_concurrency,
            hook_session_concurrency: a.hook_session_concurrency,
            operations_file: a.operations_file,
            demo: a.demo,
            operation_flush_interval: ms(a.operation_flush_ms),
            operation_retention: secs(a.operation_retention_secs),
            operation_prune_days: a.operation_prune_days,
            operation_max_stages: a.operation_max_stages,
            operation_max_result_bytes: a.operation_max_result_bytes,
            operation_max_details_bytes: a.operation_max_details_bytes,
            operation_max_params_bytes: a.operation_max_params_bytes,
            operation_max_json_depth: a.operation_max_json_depth,
            operation_log_memory_bytes: a.operation_log_memory_bytes,
            operation_unwritten_max_bytes: a.operation_unwritten_max_bytes,
            operation_report_rate: a.operation_report_rate,
            log_replay_max: a.log_replay_max,
            max_rooms_per_connection: a.max_rooms_per_connection,
            publish_rate: a.publish_rate,
            user_publish_rate: a.user_publish_rate,
            max_connections_per_ip: a.max_connections_per_ip,
            max_connections_per_user: a.max_connections_per_user,
            max_active_operations_per_user: a.max_active_operations_per_user,
            new_connections_per_ip: a.new_connections_per_ip,
            allowed_origins: a.allowed_origins.unwrap_or_default(),
            sio_ping_interval: ms(a.socketio_ping_interval_ms),
            sio_ping_timeout: ms(a.socketio_ping_timeout_ms),
            sio_max_payload: a.socketio_max_payload,
            sio_connect_timeout: ms(a.socketio_connect_timeout_ms),
            sio_namespaces: a.socketio_namespaces.unwrap_or_default(),
            sio_recovery: secs(a.socketio_recovery_secs),
            sio_recovery_window: a.socketio_recovery_window,
            sio_recovery_max_sockets: a.socketio_recovery_max_sockets,
            sio_recovery_max_record_bytes: a.socketio_recovery_max_record_bytes,
            conformance: false,
        };

        // A lease renewed at most every half lease survives one late or failed renewal.
        if s.operation_heartbeat * 2 > s.operation_lease {
            return Err(err(
                "SWITCHYARD_OPERATION_HEARTBEAT_MS",
                &s.operation_heartbeat.as_millis().to_string(),
                "must be at most half of SWITCHYARD_OPERATION_LEASE_MS",
            ));
        }
        // A live node must not expire because one heartbeat was late: at least two fit.
        if s.redis_presence_ttl < s.redis_presence_heartbeat * 2 {
            return Err(err(
                "SWITCHYARD_REDIS_PRESENCE_TTL_MS",
                &s.redis_presence_ttl.as_millis().to_string(),
                "must be at least twice SWITCHYARD_REDIS_PRESENCE_HEARTBEAT_MS",
            ));
        }
        if s.heartbeat_timeout <= s.heartbeat_interval {
            return Err(err(
                "SWITCHYARD_HEARTBEAT_TIMEOUT_MS",
                &s.heartbeat_timeout.as_millis().to_string(),
                "must be longer than SWITCHYARD_HEARTBEAT_INTERVAL_MS",
            ));
        }
        Ok(s)
    }

    /// True when no JWT secret is configured: everything is allowed and identities are
    /// self-declared.
    pub fn open_mode(&self) -> bool {
        self.jwt_secret.is_none()
    }

    /// Open mode on an address other than loopback is refused unless explicitly allowed.
    pub fn check_safe_to_serve(&self) -> Result<(), String> {
        if self.redis_url.is_some() && !matches!(self.database, DatabaseUrl::Postgres(_)) {
            return Err(
                "SWITCHYARD_REDIS_URL turns on cluster mode, which keeps its durable state in \
                 PostgreSQL shared by every node; set DATABASE_URL=postgres://… (SQLite is one \
                 node's file)"
                    .into(),
            );
        }
        if self.open_mode() && !self.host.is_loopback() && !self.allow_insecure {
            return Err(format!(
                "refusing to serve in open mode (no SWITCHYARD_JWT_SECRET) on non-loopback address {}; \
                 set SWITCHYARD_JWT_SECRET, or SWITCHYARD_ALLOW_INSECURE=1 if you really mean it",
                self.host
            ));
        }
        Ok(())
    }

    /// An app profile whose `connect` hook authenticates from forwarded cookies makes every
    /// WebSocket a browser opens to this server carry its user's identity, whichever page
    /// opens it: without `SWITCHYARD_ALLOWED_ORIGINS` any site could (cross-site WebSocket
    /// hijacking). Refused on a non-loopback address, as open mode is, unless
    /// `SWITCHYARD_ALLOW_INSECURE=1`; on loopback (development) it is allowed.
    pub fn check_cookie_connect_origins(&self, cookie_connect: bool) -> Result<(), String> {
        if cookie_connect
            && self.allowed_origins.is_empty()
            && !self.host.is_loopback()
            && !self.allow_insecure
        {
            return Err(format!(
                "refusing to serve on non-loopback address {}: an app profile's connect hook \
                 authenticates connections from cookies (forward_cookies) and \
                 SWITCHYARD_ALLOWED_ORIGINS is unset, so any site's page could connect as your \
                 users; list your app's origins in SWITCHYARD_ALLOWED_ORIGINS, or set \
                 SWITCHYARD_ALLOW_INSECURE=1 if you really mean it",
                self.host
            ));
        }
        Ok(())
    }

    /// Worker count with 0 resolved to the number of cores.
    pub fn resolved_workers(&self) -> usize {
        resolve_threads(self.workers)
    }
}

fn resolve_threads(n: usize) -> usize {
    if n > 0 {
        n
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
}

/// Parses `argv` with `cmd` (`serve`'s arguments) into [`ServeArgs`].
fn parse_args<I, T>(cmd: clap::Command, argv: I) -> Result<ServeArgs, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    cmd.try_get_matches_from(argv)
        .and_then(|m| ServeArgs::from_arg_matches(&m))
        .map_err(|e| {
            ConfigError::from_clap(&e).unwrap_or_else(|| ConfigError {
                // Only flags this module wrote are parsed here, so this is a bug in it.
                var: "serve".into(),
                value: String::new(),
                reason: e.to_string().trim().to_string(),
            })
        })
}

fn err(var: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError {
        var: var.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Why a parser below refused a value: the source of clap's error, by which
/// [`ConfigError::from_clap`] knows that a setting was refused.
#[derive(Debug)]
pub struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// A comma-separated list as one value (a type of its own name so that clap's derive, which
/// goes by the written type, does not take `Vec` for a repeatable flag).
pub type List = Vec<String>;

/// A whole number from `min` to `max`.
fn whole<T>(min: T, max: T) -> impl Fn(&str) -> Result<T, Refused> + Clone + Send + Sync + 'static
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy + Send + Sync + 'static,
{
    move |v| {
        v.trim()
            .parse::<T>()
            .ok()
            .filter(|n| *n >= min && *n <= max)
            .ok_or_else(|| Refused(format!("expected a whole number from {min} to {max}")))
    }
}

/// Whole milliseconds from `min` to 30 days.
fn millis(min: u64) -> impl Fn(&str) -> Result<u64, Refused> + Clone + Send + Sync + 'static {
    whole(min, 86_400_000 * 30)
}

fn ip(v: &str) -> Result<IpAddr, Refused> {
    v.parse()
        .map_err(|_| Refused("expected an IP address".into()))
}

fn port(v: &str) -> Result<u16, Refused> {
    v.parse()
        .map_err(|_| Refused("expected a port number 0-65535".into()))
}

fn database_url(v: &str) -> Result<DatabaseUrl, Refused> {
    DatabaseUrl::parse(v).map_err(Refused)
}

fn redis_url(v: &str) -> Result<String, Refused> {
    if !v.starts_with("redis://") && !v.starts_with("rediss://") {
        return Err(Refused("expected redis://host:port[/db]".into()));
    }
    Ok(v.to_string())
}

fn trusted_proxies(v: &str) -> Result<crate::client_addr::TrustedProxies, Refused> {
    crate::client_addr::TrustedProxies::parse(v).map_err(Refused)
}

fn node_id(v: &str) -> Result<String, Refused> {
    // It appears in session ids (query strings), metric labels and proxy rules: keep it to
    // characters none of them needs to escape.
    let ok = !v.is_empty()
        && v.len() <= 32
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(Refused(
            "expected 1-32 characters of letters, digits, '-' and '_'".into(),
        ));
    }
    Ok(v.to_string())
}

fn existing_file(v: &str) -> Result<PathBuf, Refused> {
    let path = PathBuf::from(v);
    if !path.is_file() {
        return Err(Refused("no such file".into()));
    }
    Ok(path)
}

/// `1`/`true`/`yes` or `0`/`false`/`no`.
fn switch(v: &str) -> Result<bool, Refused> {
    match v {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err(Refused("expected 1 or 0".into())),
    }
}

fn list(v: &str) -> List {
    v.split(',')
        .map(|s| s.trim().trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn origins(v: &str) -> Result<List, Refused> {
    let origins = list(v);
    match origins
        .iter()
        .find(|o| !(o.starts_with("http://") || o.starts_with("https://")))
    {
        Some(bad) => Err(Refused(format!("{bad:?} is not an http(s) origin"))),
        None => Ok(origins),
    }
}

fn namespaces(v: &str) -> Result<List, Refused> {
    let names = list(v);
    match names
        .iter()
        .find(|n| !n.starts_with('/') || n.len() > 128 || n.contains(','))
    {
        Some(bad) => Err(Refused(format!("{bad:?} must start with /"))),
        None => Ok(names),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_serve_on_loopback_8080_with_sqlite() {
        let s = from(&[]).expect("defaults are valid");
        assert_eq!(s.port, 8080);
        assert!(s.host.is_loopback());
        assert_eq!(s.database, DatabaseUrl::Sqlite("switchyard.db".into()));
        assert!(s.open_mode());
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let e = from(&[("SWITCHYARD_PORT", "eighty")]).unwrap_err();
        assert_eq!(e.var, "SWITCHYARD_PORT");
        assert!(e.to_string().contains("SWITCHYARD_PORT"));
        let e = from(&[("SWITCHYARD_HISTORY_SIZE", "-1")]).unwrap_err();
        assert_eq!(e.var, "SWITCHYARD_HISTORY_SIZE");
        let e = from(&[("DATABASE_URL", "mysql://x")]).unwrap_err();
        assert_eq!(e.var, "DATABASE_URL");
        let e = from(&[
            ("SWITCHYARD_HEARTBEAT_INTERVAL_MS", "1000"),
            ("SWITCHYARD_HEARTBEAT_TIMEOUT_MS", "500"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "SWITCHYARD_HEARTBEAT_TIMEOUT_MS");
        // A node id goes into session ids and metric labels unescaped.
        for bad in ["a.b", "n 1", "n\"1", &"x".repeat(33)] {
            let e = from(&[("SWITCHYARD_NODE_ID", bad)]).unwrap_err();
            assert_eq!(e.var, "SWITCHYARD_NODE_ID");
        }
        let s = from(&[("SWITCHYARD_NODE_ID", "eu-1_a")]).unwrap();
        assert_eq!(s.node_id.as_deref(), Some("eu-1_a"));
    }

    #[test]
    fn every_flag_is_its_variable_in_kebab_case() {
        let cmd = serve_command();
        let args: Vec<_> = cmd.get_arguments().collect();
        assert!(args.len() >= 70, "only {} settings", args.len());
        for arg in args {
            let var = arg
                .get_env()
                .and_then(|v| v.to_str())
                .unwrap_or_else(|| panic!("--{:?} has no environment variable", arg.get_long()));
            let flag = var
                .strip_prefix("SWITCHYARD_")
                .unwrap_or(var)
                .to_lowercase()
                .replace('_', "-");
            assert_eq!(arg.get_long(), Some(flag.as_str()), "{var}");
        }
    }

    #[test]
    fn an_empty_value_counts_as_unset() {
        let s = from(&[("SWITCHYARD_PORT", ""), ("SWITCHYARD_NODE_ID", "")]).unwrap();
        assert_eq!((s.port, s.node_id), (8080, None));
    }

    #[test]
    fn the_lookup_is_the_only_environment() {
        // clap reads an argument's variable from the process; `from_lookup` must not. The
        // variable is set in a child run of this very test rather than here: setting one in a
        // process whose other tests read the environment on other threads is a race.
        const CHILD: &str = "SWITCHYARD_CONFIG_TEST_CHILD";
        if std::env::var_os(CHILD).is_some() {
            assert_eq!(from(&[]).unwrap().presence_list_max, 1000);
            return;
        }
        let exe = std::env::current_exe().expect("the test binary");
        let out = std::process::Command::new(exe)
            .args([
                "config::tests::the_lookup_is_the_only_environment",
                "--exact",
            ])
            .env(CHILD, "1")
            .env("SWITCHYARD_PRESENCE_LIST_MAX", "7")
            .output()
            .expect("the test binary runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn lists_and_switches_parse_as_they_always_did() {
        let s = from(&[
            (
                "SWITCHYARD_ALLOWED_ORIGINS",
                "https://a.example/, http://b.example",
            ),
            ("SWITCHYARD_SOCKETIO_NAMESPACES", "/admin,/ops"),
            ("SWITCHYARD_DEMO", "no"),
            ("SWITCHYARD_HISTORY_TTL_SECS", "7"),
        ])
        .unwrap();
        assert_eq!(s.allowed_origins, ["https://a.example", "http://b.example"]);
        assert_eq!(s.sio_namespaces, ["/admin", "/ops"]);
        assert!(!s.demo);
        assert_eq!(s.history_ttl, Duration::from_secs(7));
        let e = from(&[("SWITCHYARD_ALLOWED_ORIGINS", "a.example")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid value for SWITCHYARD_ALLOWED_ORIGINS: \"a.example\" \
             (\"a.example\" is not an http(s) origin)"
        );
        let e = from(&[("SWITCHYARD_DEMO", "maybe")]).unwrap_err();
        assert_eq!(e.var, "SWITCHYARD_DEMO");
    }

    #[test]
    fn an_operation_heartbeat_longer_than_half_the_lease_is_refused() {
        let e = from(&[
            ("SWITCHYARD_OPERATION_LEASE_MS", "4000"),
            ("SWITCHYARD_OPERATION_HEARTBEAT_MS", "2001"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "SWITCHYARD_OPERATION_HEARTBEAT_MS");
        let s = from(&[
            ("SWITCHYARD_OPERATION_LEASE_MS", "4000"),
            ("SWITCHYARD_OPERATION_HEARTBEAT_MS", "2000"),
        ])
        .expect("half the lease is allowed");
        assert_eq!(s.operation_lease, Duration::from_millis(4000));
    }

    #[test]
    fn a_presence_ttl_shorter_than_two_heartbeats_is_refused() {
        // A cluster node's presence must outlive a late heartbeat.
        let e = from(&[
            ("SWITCHYARD_REDIS_PRESENCE_HEARTBEAT_MS", "4000"),
            ("SWITCHYARD_REDIS_PRESENCE_TTL_MS", "6000"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "SWITCHYARD_REDIS_PRESENCE_TTL_MS");
        let s = from(&[("SWITCHYARD_REDIS_PRESENCE_TTL_MS", "8000")]).expect("twice 4 s");
        assert_eq!(s.redis_presence_ttl, Duration::from_millis(8_000));
    }

    #[test]
    fn database_urls_pick_the_backend() {
        assert_eq!(
            DatabaseUrl::parse("postgres://u@h/db")
                .unwrap()
                .backend_name(),
            "postgres"
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///tmp/x.db").unwrap(),
            DatabaseUrl::Sqlite("/tmp/x.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("data/x.db").unwrap(),
            DatabaseUrl::Sqlite("data/x.db".into())
        );
    }

    #[test]
    fn cookie_connect_hooks_on_a_public_address_need_allowed_origins() {
        let public = [
            ("SWITCHYARD_HOST", "0.0.0.0"),
            ("SWITCHYARD_JWT_SECRET", "s3cret"),
        ];
        let s = from(&public).unwrap();
        assert!(s.check_cookie_connect_origins(true).is_err());
        assert!(s.check_cookie_connect_origins(false).is_ok());
        let s = from(&[
            public[0],
            public[1],
            ("SWITCHYARD_ALLOWED_ORIGINS", "https://app.example"),
        ])
        .unwrap();
        assert!(s.check_cookie_connect_origins(true).is_ok());
        let s = from(&[public[0], public[1], ("SWITCHYARD_ALLOW_INSECURE", "1")]).unwrap();
        assert!(s.check_cookie_connect_origins(true).is_ok());
        let s = from(&[("SWITCHYARD_JWT_SECRET", "s3cret")]).unwrap();
        assert!(
            s.check_cookie_connect_origins(true).is_ok(),
            "loopback: development"
        );
    }

    #[test]
    fn open_mode_on_public_address_is_refused_unless_allowed() {
        let s = from(&[("SWITCHYARD_HOST", "0.0.0.0")]).unwrap();
        assert!(s.check_safe_to_serve().is_err());
        let s = from(&[
            ("SWITCHYARD_HOST", "0.0.0.0"),
            ("SWITCHYARD_ALLOW_INSECURE", "1"),
        ])
        .unwrap();
        assert!(s.check_safe_to_serve().is_ok());
        let s = from(&[
            ("SWITCHYARD_HOST", "0.0.0.0"),
            ("SWITCHYARD_JWT_SECRET", "s3cret"),
        ])
        .unwrap();
        assert!(s.check_safe_to_serve().is_ok());
    }
}
