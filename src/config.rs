//! Settings: one struct, read from the environment, with defaults.
//!
//! Every variable is listed in the README's settings table. An invalid value stops start-up with
//! a message that names the variable; tests build `Settings` directly (port 0, short heartbeats,
//! a temporary database) instead of going through the environment.
//!
//! Why this file is one piece (about 740 lines, a tenth of them tests): one struct with a line
//! per setting and one parse step per variable; it grows by two short entries per setting, and
//! reading it top to bottom is how one checks it against the README's table.

use std::net::IpAddr;
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
    /// Dedicated threads for room actors (default: one per core); 0 runs rooms on the HTTP
    /// worker threads, next to the sessions (`SWITCHYARD_ROOM_THREADS`). Dedicated threads
    /// batch better under load — while a room fans out, its members' connections collect
    /// frames and then write them together: twice the deliveries per CPU second at 10,000
    /// members, max rate. On the workers a publish saves a thread hop: ~10% cheaper for many
    /// small rooms at a light rate (docs/benchmarks.md).
    pub room_threads: usize,
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
    fn default() -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 8080,
            database: DatabaseUrl::Sqlite("switchyard.db".into()),
            redis_url: None,
            redis_prefix: "switchyard".into(),
            node_id: None,
            max_active_operations_per_user: 1_000,
            trusted_proxies: Default::default(),
            redis_timeout: Duration::from_millis(1_000),
            redis_fanout_maxlen: 100_000,
            redis_rate_sync: Duration::from_millis(100),
            operation_lease: Duration::from_millis(10_000),
            operation_heartbeat: Duration::from_millis(2_000),
            operation_heartbeat_paused: None,
            redis_presence_heartbeat: Duration::from_millis(4_000),
            redis_presence_ttl: Duration::from_millis(12_000),
            db_pool_size: 8,
            db_timeout: Duration::from_millis(2_000),
            heartbeat_interval: Duration::from_millis(25_000),
            heartbeat_timeout: Duration::from_millis(60_000),
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            history_max_bytes: 1 << 20,
            history_total_max_bytes: 256 << 20,
            presence_list_max: 1000,
            retained_events_max: 32,
            dedupe_window: 32,
            publish_max_rooms: 16,
            jwt_secret: None,
            allow_insecure: false,
            hook_secret: None,
            config_vars: std::collections::HashMap::new(),
            hook_concurrency: 256,
            hook_session_concurrency: 8,
            auth_timeout: Duration::from_millis(5_000),
            watch_ticket_ttl: Duration::from_secs(60),
            stats_interval: Duration::from_millis(5_000),
            max_frame_bytes: 64 * 1024,
            max_unauthenticated_frame_bytes: 8 * 1024,
            request_timeout: Duration::from_millis(30_000),
            max_body_bytes: 256 * 1024,
            outbox_max_messages: 1_024,
            outbox_max_bytes: 1024 * 1024,
            error_limit: 20,
            shutdown_timeout: Duration::from_millis(5_000),
            close_linger: Duration::from_millis(10_000),
            workers: 0,
            room_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            operations_file: None,
            config_file: None,
            demo: true,
            operation_retention: Duration::from_secs(300),
            operation_prune_days: 30,
            operation_flush_interval: Duration::from_millis(250),
            operation_max_stages: 32,
            operation_max_result_bytes: 64 * 1024,
            operation_max_details_bytes: 16 * 1024,
            operation_max_params_bytes: 64 * 1024,
            operation_max_json_depth: 16,
            operation_log_memory_bytes: 1 << 20,
            operation_unwritten_max_bytes: 16 << 20,
            operation_report_rate: 1_000,
            log_replay_max: 1_000,
            allowed_origins: Vec::new(),
            sio_ping_interval: Duration::from_millis(25_000),
            sio_ping_timeout: Duration::from_millis(20_000),
            sio_max_payload: 1_000_000,
            sio_connect_timeout: Duration::from_millis(45_000),
            sio_namespaces: Vec::new(),
            sio_recovery: Duration::ZERO,
            sio_recovery_window: 256,
            sio_recovery_max_sockets: 10_000,
            sio_recovery_max_record_bytes: 65_536,
            conformance: false,
            max_rooms_per_connection: 100,
            publish_rate: 100,
            user_publish_rate: 200,
            max_connections_per_ip: 2_000,
            new_connections_per_ip: 200,
        }
    }
}

/// A start-up configuration error; its message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid value for {var}: {value:?} ({reason})")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub reason: String,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `lookup`, so tests can supply a map instead of the environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut s = Settings::default();
        let get = |var: &'static str| lookup(var).filter(|v| !v.is_empty());

        if let Some(v) = get("SWITCHYARD_HOST") {
            s.host = v
                .parse()
                .map_err(|_| err("SWITCHYARD_HOST", &v, "expected an IP address"))?;
        }
        if let Some(v) = get("SWITCHYARD_PORT") {
            s.port = v
                .parse()
                .map_err(|_| err("SWITCHYARD_PORT", &v, "expected a port number 0-65535"))?;
        }
        if let Some(v) = get("DATABASE_URL") {
            s.database = DatabaseUrl::parse(&v).map_err(|r| err("DATABASE_URL", &v, &r))?;
        }
        if let Some(v) = get("SWITCHYARD_REDIS_URL") {
            if !v.starts_with("redis://") && !v.starts_with("rediss://") {
                return Err(err(
                    "SWITCHYARD_REDIS_URL",
                    &v,
                    "expected redis://host:port[/db]",
                ));
            }
            s.redis_url = Some(v);
        }
        if let Some(v) = get("SWITCHYARD_REDIS_PREFIX") {
            s.redis_prefix = v;
        }
        if let Some(v) = get("SWITCHYARD_TRUSTED_PROXIES") {
            s.trusted_proxies = crate::client_addr::TrustedProxies::parse(&v)
                .map_err(|why| err("SWITCHYARD_TRUSTED_PROXIES", &v, &why))?;
        }
        if let Some(v) = get("SWITCHYARD_NODE_ID") {
            // It appears in session ids (query strings), metric labels and proxy rules: keep
            // it to characters none of them needs to escape.
            let ok = v.len() <= 32
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(err(
                    "SWITCHYARD_NODE_ID",
                    &v,
                    "expected 1-32 characters of letters, digits, '-' and '_'",
                ));
            }
            s.node_id = Some(v);
        }
        millis(
            &get,
            "SWITCHYARD_REDIS_TIMEOUT_MS",
            50,
            &mut s.redis_timeout,
        )?;
        num(
            &get,
            "SWITCHYARD_REDIS_FANOUT_MAXLEN",
            1_000,
            100_000_000,
            &mut s.redis_fanout_maxlen,
        )?;
        millis(
            &get,
            "SWITCHYARD_REDIS_RATE_SYNC_MS",
            10,
            &mut s.redis_rate_sync,
        )?;
        millis(
            &get,
            "SWITCHYARD_OPERATION_LEASE_MS",
            200,
            &mut s.operation_lease,
        )?;
        millis(
            &get,
            "SWITCHYARD_OPERATION_HEARTBEAT_MS",
            50,
            &mut s.operation_heartbeat,
        )?;
        millis(
            &get,
            "SWITCHYARD_REDIS_PRESENCE_HEARTBEAT_MS",
            50,
            &mut s.redis_presence_heartbeat,
        )?;
        millis(
            &get,
            "SWITCHYARD_REDIS_PRESENCE_TTL_MS",
            100,
            &mut s.redis_presence_ttl,
        )?;
        num(
            &get,
            "SWITCHYARD_MAX_ACTIVE_OPERATIONS_PER_USER",
            0,
            10_000_000,
            &mut s.max_active_operations_per_user,
        )?;
        num(&get, "SWITCHYARD_DB_POOL_SIZE", 1, 256, &mut s.db_pool_size)?;
        millis(&get, "SWITCHYARD_DB_TIMEOUT_MS", 50, &mut s.db_timeout)?;
        millis(
            &get,
            "SWITCHYARD_HEARTBEAT_INTERVAL_MS",
            10,
            &mut s.heartbeat_interval,
        )?;
        millis(
            &get,
            "SWITCHYARD_HEARTBEAT_TIMEOUT_MS",
            10,
            &mut s.heartbeat_timeout,
        )?;
        num(
            &get,
            "SWITCHYARD_HISTORY_SIZE",
            0,
            1_000_000,
            &mut s.history_size,
        )?;
        let mut ttl = s.history_ttl.as_secs();
        num(
            &get,
            "SWITCHYARD_HISTORY_TTL_SECS",
            0,
            86_400 * 30,
            &mut ttl,
        )?;
        s.history_ttl = Duration::from_secs(ttl);
        num(
            &get,
            "SWITCHYARD_HISTORY_MAX_BYTES",
            0,
            1 << 30,
            &mut s.history_max_bytes,
        )?;
        num(
            &get,
            "SWITCHYARD_HISTORY_TOTAL_MAX_BYTES",
            0,
            1 << 40,
            &mut s.history_total_max_bytes,
        )?;
        num(
            &get,
            "SWITCHYARD_PRESENCE_LIST_MAX",
            0,
            1_000_000,
            &mut s.presence_list_max,
        )?;
        num(
            &get,
            "SWITCHYARD_RETAINED_EVENTS_MAX",
            1,
            10_000,
            &mut s.retained_events_max,
        )?;
        num(
            &get,
            "SWITCHYARD_DEDUPE_WINDOW",
            1,
            4_096,
            &mut s.dedupe_window,
        )?;
        num(
            &get,
            "SWITCHYARD_PUBLISH_MAX_ROOMS",
            1,
            1_000,
            &mut s.publish_max_rooms,
        )?;
        s.jwt_secret = get("SWITCHYARD_JWT_SECRET");
        s.hook_secret = get("SWITCHYARD_HOOK_SECRET");
        num(
            &get,
            "SWITCHYARD_HOOK_CONCURRENCY",
            1,
            1_000_000,
            &mut s.hook_concurrency,
        )?;
        num(
            &get,
            "SWITCHYARD_HOOK_SESSION_CONCURRENCY",
            1,
            1_000_000,
            &mut s.hook_session_concurrency,
        )?;
        flag(&get, "SWITCHYARD_ALLOW_INSECURE", &mut s.allow_insecure)?;
        flag(&get, "SWITCHYARD_DEMO", &mut s.demo)?;
        if let Some(v) = get("SWITCHYARD_OPERATIONS_FILE") {
            let path = std::path::PathBuf::from(&v);
            if !path.is_file() {
                return Err(err("SWITCHYARD_OPERATIONS_FILE", &v, "no such file"));
            }
            s.operations_file = Some(path);
        }
        if let Some(v) = get("SWITCHYARD_CONFIG_FILE") {
            let path = std::path::PathBuf::from(&v);
            if !path.is_file() {
                return Err(err("SWITCHYARD_CONFIG_FILE", &v, "no such file"));
            }
            s.config_file = Some(path);
        }
        let mut retention = s.operation_retention.as_secs();
        num(
            &get,
            "SWITCHYARD_OPERATION_RETENTION_SECS",
            0,
            86_400 * 7,
            &mut retention,
        )?;
        s.operation_retention = Duration::from_secs(retention);
        num(
            &get,
            "SWITCHYARD_OPERATION_PRUNE_DAYS",
            1,
            36_500,
            &mut s.operation_prune_days,
        )?;
        millis(
            &get,
            "SWITCHYARD_OPERATION_FLUSH_MS",
            10,
            &mut s.operation_flush_interval,
        )?;
        num(
            &get,
            "SWITCHYARD_OPERATION_MAX_STAGES",
            1,
            10_000,
            &mut s.operation_max_stages,
        )?;
        num(
            &get,
            "SWITCHYARD_OPERATION_MAX_RESULT_BYTES",
            2,
            64 << 20,
            &mut s.operation_max_result_bytes,
        )?;
        num(
            &get,
            "SWITCHYARD_OPERATION_MAX_DETAILS_BYTES",
            2,
            64 << 20,
            &mut s.operation_max_details_bytes,
        )?;
        num(
            &get,
            "SWITCHYARD_OPERATION_MAX_PARAMS_BYTES",
            2,
            // `SWITCHYARD_PARAMS=` + the JSON + NUL must fit the kernel's 128 KiB per string.
            MAX_PARAMS_ENV_BYTES,
            &mut s.operation_max_params_bytes,
        )?;
        num(
            &get,
            "SWITCHYARD_OPERATION_MAX_JSON_DEPTH",
            1,
            100,
            &mut s.operation_max_json_depth,
        )?;
        num(
            &get,
            "SWITCHYARD_OPERATION_LOG_MEMORY_BYTES",
            64 << 10,
            1 << 30,
            &mut s.operation_log_memory_bytes,
        )?;
        num(
            &get,
            "SWITCHYARD_OPERATION_UNWRITTEN_MAX_BYTES",
            64 << 10,
            4 << 30,
            &mut s.operation_unwritten_max_bytes,
        )?;
        num(
            &get,
            "SWITCHYARD_OPERATION_REPORT_RATE",
            0,
            10_000_000,
            &mut s.operation_report_rate,
        )?;
        num(
            &get,
            "SWITCHYARD_LOG_REPLAY_MAX",
            0,
            1_000_000,
            &mut s.log_replay_max,
        )?;
        num(
            &get,
            "SWITCHYARD_MAX_ROOMS_PER_CONNECTION",
            0,
            1_000_000,
            &mut s.max_rooms_per_connection,
        )?;
        num(
            &get,
            "SWITCHYARD_PUBLISH_RATE",
            0,
            10_000_000,
            &mut s.publish_rate,
        )?;
        num(
            &get,
            "SWITCHYARD_USER_PUBLISH_RATE",
            0,
            10_000_000,
            &mut s.user_publish_rate,
        )?;
        num(
            &get,
            "SWITCHYARD_MAX_CONNECTIONS_PER_IP",
            0,
            10_000_000,
            &mut s.max_connections_per_ip,
        )?;
        num(
            &get,
            "SWITCHYARD_NEW_CONNECTIONS_PER_IP",
            0,
            10_000_000,
            &mut s.new_connections_per_ip,
        )?;
        if let Some(v) = get("SWITCHYARD_ALLOWED_ORIGINS") {
            s.allowed_origins = list(&v);
            let bad = s
                .allowed_origins
                .iter()
                .find(|o| !(o.starts_with("http://") || o.starts_with("https://")));
            if let Some(bad) = bad {
                let reason = format!("{bad:?} is not an http(s) origin");
                return Err(err("SWITCHYARD_ALLOWED_ORIGINS", &v, &reason));
            }
        }
        millis(
            &get,
            "SWITCHYARD_SOCKETIO_PING_INTERVAL_MS",
            10,
            &mut s.sio_ping_interval,
        )?;
        millis(
            &get,
            "SWITCHYARD_SOCKETIO_PING_TIMEOUT_MS",
            10,
            &mut s.sio_ping_timeout,
        )?;
        num(
            &get,
            "SWITCHYARD_SOCKETIO_MAX_PAYLOAD",
            1024,
            64 << 20,
            &mut s.sio_max_payload,
        )?;
        millis(
            &get,
            "SWITCHYARD_SOCKETIO_CONNECT_TIMEOUT_MS",
            10,
            &mut s.sio_connect_timeout,
        )?;
        if let Some(v) = get("SWITCHYARD_SOCKETIO_NAMESPACES") {
            s.sio_namespaces = list(&v);
            let bad = s
                .sio_namespaces
                .iter()
                .find(|n| !n.starts_with('/') || n.len() > 128 || n.contains(','));
            if let Some(bad) = bad {
                let reason = format!("{bad:?} must start with /");
                return Err(err("SWITCHYARD_SOCKETIO_NAMESPACES", &v, &reason));
            }
        }
        let mut recovery = s.sio_recovery.as_secs();
        num(
            &get,
            "SWITCHYARD_SOCKETIO_RECOVERY_SECS",
            0,
            86_400,
            &mut recovery,
        )?;
        s.sio_recovery = Duration::from_secs(recovery);
        num(
            &get,
            "SWITCHYARD_SOCKETIO_RECOVERY_WINDOW",
            1,
            65_536,
            &mut s.sio_recovery_window,
        )?;
        num(
            &get,
            "SWITCHYARD_SOCKETIO_RECOVERY_MAX_SOCKETS",
            1,
            10_000_000,
            &mut s.sio_recovery_max_sockets,
        )?;
        num(
            &get,
            "SWITCHYARD_SOCKETIO_RECOVERY_MAX_RECORD_BYTES",
            1_024,
            16 << 20,
            &mut s.sio_recovery_max_record_bytes,
        )?;
        millis(&get, "SWITCHYARD_AUTH_TIMEOUT_MS", 10, &mut s.auth_timeout)?;
        let mut ticket_ttl = s.watch_ticket_ttl.as_secs();
        num(
            &get,
            "SWITCHYARD_WATCH_TICKET_TTL_SECS",
            1,
            3_600,
            &mut ticket_ttl,
        )?;
        s.watch_ticket_ttl = Duration::from_secs(ticket_ttl);
        millis(
            &get,
            "SWITCHYARD_STATS_INTERVAL_MS",
            10,
            &mut s.stats_interval,
        )?;
        num(
            &get,
            "SWITCHYARD_MAX_FRAME_BYTES",
            128,
            64 << 20,
            &mut s.max_frame_bytes,
        )?;
        num(
            &get,
            "SWITCHYARD_MAX_UNAUTHENTICATED_FRAME_BYTES",
            128,
            64 << 20,
            &mut s.max_unauthenticated_frame_bytes,
        )?;
        millis(
            &get,
            "SWITCHYARD_REQUEST_TIMEOUT_MS",
            10,
            &mut s.request_timeout,
        )?;
        num(
            &get,
            "SWITCHYARD_MAX_BODY_BYTES",
            128,
            64 << 20,
            &mut s.max_body_bytes,
        )?;
        num(
            &get,
            "SWITCHYARD_OUTBOX_MAX_MESSAGES",
            1,
            1 << 20,
            &mut s.outbox_max_messages,
        )?;
        num(
            &get,
            "SWITCHYARD_OUTBOX_MAX_BYTES",
            1024,
            1 << 30,
            &mut s.outbox_max_bytes,
        )?;
        num(
            &get,
            "SWITCHYARD_ERROR_LIMIT",
            1,
            1_000_000,
            &mut s.error_limit,
        )?;
        millis(
            &get,
            "SWITCHYARD_SHUTDOWN_TIMEOUT_MS",
            0,
            &mut s.shutdown_timeout,
        )?;
        millis(&get, "SWITCHYARD_CLOSE_LINGER_MS", 0, &mut s.close_linger)?;
        num(&get, "SWITCHYARD_WORKERS", 0, 1024, &mut s.workers)?;
        num(
            &get,
            "SWITCHYARD_ROOM_THREADS",
            0,
            1024,
            &mut s.room_threads,
        )?;

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

fn err(var: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError {
        var,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn num<T>(
    get: &impl Fn(&'static str) -> Option<String>,
    var: &'static str,
    min: T,
    max: T,
    out: &mut T,
) -> Result<(), ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    if let Some(v) = get(var) {
        let parsed: T = v.trim().parse().map_err(|_| {
            err(
                var,
                &v,
                &format!("expected a whole number from {min} to {max}"),
            )
        })?;
        if parsed < min || parsed > max {
            return Err(err(
                var,
                &v,
                &format!("expected a whole number from {min} to {max}"),
            ));
        }
        *out = parsed;
    }
    Ok(())
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn flag(
    get: &impl Fn(&'static str) -> Option<String>,
    var: &'static str,
    out: &mut bool,
) -> Result<(), ConfigError> {
    if let Some(v) = get(var) {
        *out = match v.as_str() {
            "1" | "true" | "yes" => true,
            "0" | "false" | "no" => false,
            _ => return Err(err(var, &v, "expected 1 or 0")),
        };
    }
    Ok(())
}

fn millis(
    get: &impl Fn(&'static str) -> Option<String>,
    var: &'static str,
    min: u64,
    out: &mut Duration,
) -> Result<(), ConfigError> {
    let mut ms = out.as_millis() as u64;
    num(get, var, min, 86_400_000 * 30, &mut ms)?;
    *out = Duration::from_millis(ms);
    Ok(())
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
