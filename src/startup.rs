//! `Application`: builds everything from `Settings` and runs it. Used by `main` and by the tests,
//! so both run the very same server.

use std::net::TcpListener;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use actix_http::{HttpService, KeepAlive, Protocol};
use actix_service::{
    fn_factory, fn_service, map_config, IntoServiceFactory, ServiceFactory, ServiceFactoryExt,
};
use actix_web::dev::AppConfig;
use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpResponse};
use anyhow::Context as _;

use crate::actors::engine::{EngineConfig, EngineMode, EngineSessions};
use crate::actors::local_broker::LocalBroker;
use crate::actors::operation::OpContext;
use crate::actors::operation_manager::{FlushAll, OperationManager};
use crate::actors::recovery::{RecoveryRecords, RecoveryStore};
use crate::actors::registry::RoomRegistry;
use crate::actors::room::RoomLimits;
use crate::actors::session::SessionDeps;
use crate::actors::sessions::SessionTable;
use crate::actors::stats::StatsPublisher;
use crate::actors::watcher::WatcherDeps;
use crate::auth::Authenticator;
use crate::broker::{Broker, HistoryView, NodesView, OneNode, PresenceView};
use crate::cluster::{ClusterPresence, RedisBroker, RedisLog, RedisPeers, RedisRecords};
use crate::config::Settings;
use crate::db::Database;
use crate::error::{self, AppError, ErrorCode};
use crate::limits::{ConnectionGate, KeyedRate};
use crate::metrics::Metrics;
use crate::operations::config::Kinds;
use crate::protocol::profile::Profiles;
use crate::routes;
use crate::state::AppState;
use crate::transport::budget::Budget;
use crate::transport::head::HeadGuarded;

/// How long a request head may take to arrive, from its first byte (from the connection's start
/// for its first request).
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// This node's registry and the three seams composed around it.
type Seams = (
    Addr<RoomRegistry>,
    Arc<dyn Broker>,
    Arc<dyn PresenceView>,
    Arc<dyn HistoryView>,
);

pub struct Application {
    port: u16,
    server: Server,
    shutdown: ShutdownHandle,
}

/// Starts a graceful shutdown: every session gets close 1001, queued frames are flushed, then
/// the HTTP server stops. Bounded by `SWITCHYARD_SHUTDOWN_TIMEOUT_MS`.
#[derive(Clone)]
pub struct ShutdownHandle {
    sessions: Arc<SessionTable>,
    operations: Addr<OperationManager>,
    server: ServerHandle,
    metrics: Arc<Metrics>,
    timeout: Duration,
    /// Where the closing sockets' recovery records go: in cluster mode they are written to
    /// Redis, and the shutdown waits for them (the clients recover on another node or here
    /// after the restart).
    recovery: Option<Arc<dyn RecoveryRecords>>,
}

impl ShutdownHandle {
    /// Stops the HTTP server at once, without closing sessions gracefully.
    pub fn stop_now(&self) {
        // The stop command is sent when `stop` is called; the returned future only waits.
        std::mem::drop(self.server.stop(false));
    }

    pub async fn shutdown(&self) {
        let started = Instant::now();
        let notified = self.sessions.shut_down();
        log::info!("shutting down: closing {notified} sessions");
        // Sessions uncount themselves as they stop, and their sockets once the close frame is
        // written; give them until the deadline.
        while (self.metrics.connections.get() > 0 || self.metrics.websockets.get() > 0)
            && started.elapsed() < self.timeout
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Closed sockets' recovery records are written (cluster mode: to Redis).
        if let Some(recovery) = &self.recovery {
            let left = self.timeout.saturating_sub(started.elapsed());
            if tokio::time::timeout(left, recovery.flush()).await.is_err() {
                log::error!("shutting down: socket.io recovery records not all written in time");
            }
        }
        // Operations write what they have not written yet (log lines are written in batches).
        let left = self.timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, self.operations.send(FlushAll)).await {
            Ok(Ok(n)) => log::info!("shutting down: {n} operations written"),
            _ => log::error!("shutting down: operations could not all be written in time"),
        }
        // Graceful stop: no new connections; open ones (now draining their close frames) get the
        // rest of the budget before being dropped.
        self.server.stop(true).await;
        log::info!("stopped in {:?}", started.elapsed());
    }
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings
            .check_safe_to_serve()
            .map_err(|e| anyhow::anyhow!(e))?;
        let settings = Arc::new(settings);
        let metrics = Arc::new(Metrics::for_node(settings.node_id.as_deref()));
        let db = Database::connect_with(
            &settings.database,
            settings.db_pool_size,
            settings.db_timeout,
            // A transaction idle this long is a stalled node (docs/cluster.md, "A stall
            // inside a write"): a heartbeat, at least a second.
            Some(settings.operation_heartbeat.max(Duration::from_secs(1))),
            metrics.clone(),
        )?;
        let registry = RoomRegistry::new(
            settings.room_threads,
            RoomLimits {
                history_size: settings.history_size,
                history_ttl: settings.history_ttl,
                history_max_bytes: settings.history_max_bytes,
                history_total_max_bytes: settings.history_total_max_bytes,
                presence_list_max: settings.presence_list_max,
                retained_events_max: settings.retained_events_max,
                dedupe_window: settings.dedupe_window,
                direct_writes_per_100ms: settings.direct_writes_per_100ms,
            },
            metrics.clone(),
        )
        .moving_rooms_at(settings.room_move_at);
        // One value serves three seams: ordering (the broker), presence and history. The
        // cluster composes Redis's instead; nothing else changes.
        let node: Arc<str> = settings
            .node_id
            .as_deref()
            .map(Arc::from)
            .unwrap_or_else(crate::broker::node_id);
        let mut nodes: Arc<dyn NodesView> = Arc::new(OneNode::default());
        let mut shared_log = None;
        let (registry, broker, presence, history): Seams = if settings.redis_url.is_some() {
            let log = RedisLog::connect(&settings).context("SWITCHYARD_REDIS_URL")?;
            nodes = Arc::new(log.clone());
            shared_log = Some(log.clone());
            // Presence across the nodes wraps the log as the rooms' backlog (rooms report
            // their members to it) and is the presence view.
            let presence = ClusterPresence::new(log.clone(), &settings);
            let registry = registry.with_shared_log(presence.clone()).start();
            let redis = RedisBroker::start(log, registry.clone());
            presence.start(registry.clone());
            log::info!(
                "cluster mode: node {node}, rooms ordered by redis (prefix {})",
                settings.redis_prefix
            );
            (registry, redis.clone(), presence, redis)
        } else {
            let registry = registry.start();
            let local = Arc::new(LocalBroker::new(registry.clone()));
            (registry, local.clone(), local.clone(), local)
        };
        StatsPublisher::new(
            settings.stats_interval,
            metrics.clone(),
            broker.clone(),
            nodes.clone(),
            node.clone(),
        )
        .start();
        // The configuration file holds operation kinds and app profiles; the operations file
        // (kinds only) still works beside it.
        let config_text = match &settings.config_file {
            None => None,
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading configuration file {}", p.display()))?,
            ),
        };
        let config = settings.config_file.as_deref().zip(config_text.as_deref());
        let kinds = Kinds::load_files(config, settings.operations_file.as_deref(), settings.demo)?;
        log::info!("operation kinds: {}", kinds.names().join(", "));
        let profiles = match config {
            None => Profiles::default(),
            Some((p, text)) => Profiles::from_toml_with(text, &|name| {
                settings
                    .config_vars
                    .get(name)
                    .cloned()
                    .or_else(|| std::env::var(name).ok())
            })
            .with_context(|| format!("in configuration file {}", p.display()))?,
        };
        if !profiles.is_empty() {
            log::info!("app profiles: {}", profiles.names().join(", "));
        }
        let cookie_connect = profiles
            .hook_configs()
            .any(|h| h.connect.is_some() && !h.cookies.is_empty());
        settings
            .check_cookie_connect_origins(cookie_connect)
            .map_err(anyhow::Error::msg)?;
        // Backend hooks are signed, or not made: a backend could not tell an unsigned call
        // from anyone's.
        let hooks = match (profiles.hook_configs().next(), &settings.hook_secret) {
            (None, _) => None,
            (Some(_), None) => anyhow::bail!(
                "app profiles declare backend hooks ([profiles.*.hooks]): set SWITCHYARD_HOOK_SECRET, the key their calls are signed with"
            ),
            (Some(_), Some(secret)) => Some(Arc::new(
                crate::hooks::Hooks::new(
                    secret,
                    settings.hook_concurrency,
                    settings.max_frame_bytes,
                    profiles.hook_configs(),
                )
                .context("building the backend hooks' HTTP client")?,
            )),
        };
        let ops = Arc::new(OpContext {
            settings: settings.clone(),
            broker: broker.clone(),
            db: db.clone(),
            writer: crate::db::batch::Writer::start(db.clone(), metrics.clone())
                .context("starting the database writer thread")?,
            metrics: metrics.clone(),
            kinds,
            // Cluster mode: operations are owned under leases on their rows (docs/cluster.md,
            // "Operations"); the owner id is this process's own (in-process test nodes share
            // the broker's node id, not their operations).
            ownership: settings.redis_url.is_some().then(|| {
                Arc::new(crate::actors::operation::Ownership {
                    node: format!(
                        "{}-{}",
                        crate::broker::node_id(),
                        uuid::Uuid::new_v4().simple()
                    )
                    .into(),
                    lease: settings.operation_lease,
                    heartbeat: settings.operation_heartbeat,
                    paused: settings.operation_heartbeat_paused.clone(),
                })
            }),
            peers: std::sync::OnceLock::new(),
        });
        let operations = OperationManager::new(ops.clone()).start();
        if let Some(own) = &ops.ownership {
            let peers = RedisPeers::start(&settings, &own.node, operations.clone())
                .context("SWITCHYARD_REDIS_URL")?;
            let _ = ops.peers.set(peers);
        }
        let operations_for_shutdown = operations.clone();

        let auth = Authenticator::new(settings.jwt_secret.as_deref());
        if auth.open_mode() {
            log::warn!(
                "OPEN MODE: no SWITCHYARD_JWT_SECRET is set, so every client may join and publish \
                 anywhere under any name it declares. Set a secret before exposing this server."
            );
        }
        let engine_config = |mode| {
            let mut namespaces: Vec<Arc<str>> = vec![Arc::from("/")];
            namespaces.extend(
                settings
                    .sio_namespaces
                    .iter()
                    .map(|n| Arc::from(n.as_str())),
            );
            for n in profiles.namespaces() {
                if !namespaces.contains(n) {
                    namespaces.push(n.clone());
                }
            }
            if mode == EngineMode::Fixture {
                namespaces.push(Arc::from("/custom"));
            }
            Arc::new(EngineConfig {
                mode,
                ping_interval: settings.sio_ping_interval,
                ping_timeout: settings.sio_ping_timeout,
                max_payload: settings.sio_max_payload,
                connect_timeout: settings.sio_connect_timeout,
                namespaces,
                profiles: match mode {
                    EngineMode::Switchyard => profiles.clone(),
                    _ => Profiles::default(),
                },
            })
        };
        let (socketio, engineio_echo) = if settings.conformance {
            log::warn!("CONFORMANCE MODE: /engine.io/ echoes and /socket.io/ serves the protocol test fixture");
            (
                engine_config(EngineMode::Fixture),
                Some(engine_config(EngineMode::Echo)),
            )
        } else {
            (engine_config(EngineMode::Switchyard), None)
        };
        let (rate, burst) = (
            settings.user_publish_rate as f64,
            settings.user_publish_rate as f64 * 2.0,
        );
        let user_publishes = match &shared_log {
            None => Arc::new(KeyedRate::new(rate, burst)),
            // One budget per user across the nodes (cluster::rates).
            Some(log) => {
                let limit = Arc::new(KeyedRate::shared(rate, burst));
                actix_web::rt::spawn(crate::cluster::sync_user_rates(
                    log.clone(),
                    limit.clone(),
                    settings.redis_rate_sync,
                ));
                limit
            }
        };
        // Socket.IO connection-state recovery: records next to the history they point at, in
        // this process on one node, in Redis (shared, surviving a restart) in cluster mode.
        let recovery: Option<Arc<dyn RecoveryRecords>> =
            match (settings.sio_recovery.is_zero(), &shared_log) {
                (true, _) => None,
                (false, None) => Some(Arc::new(RecoveryStore::new(
                    settings.sio_recovery,
                    settings.sio_recovery_max_sockets,
                ))),
                (false, Some(log)) => Some(RedisRecords::new(log.clone(), &settings)),
            };
        // The actors' narrow dependencies, composed from the same services as the handlers'.
        let sessions = Arc::new(SessionTable::default());
        let session_deps = Arc::new(SessionDeps {
            settings: settings.clone(),
            sessions: sessions.clone(),
            broker: broker.clone(),
            metrics: metrics.clone(),
            auth: auth.clone(),
            operations: operations.clone(),
            user_publishes: user_publishes.clone(),
            hooks: hooks.clone(),
            recovery: recovery.clone(),
            history: history.clone(),
            users: crate::limits::UserGate::new(settings.max_connections_per_user),
        });
        let watcher_deps = Arc::new(WatcherDeps {
            settings: settings.clone(),
            sessions: sessions.clone(),
            broker: broker.clone(),
            operations: operations.clone(),
            metrics: metrics.clone(),
        });
        let state = web::Data::new(AppState {
            settings: settings.clone(),
            broker,
            presence,
            history,
            nodes,
            node,
            metrics: metrics.clone(),
            auth,
            db,
            operations,
            ops,
            session_deps,
            watcher_deps,
            engines: Arc::new(EngineSessions::default()),
            socketio,
            engineio_echo,
            gate: ConnectionGate::new(
                settings.max_connections_per_ip,
                settings.new_connections_per_ip as f64,
                settings.new_connections_per_ip as f64 * 2.0,
            ),
            user_publishes,
            outbound: Budget::new(settings.outbox_total_bytes),
        });

        let listener = listen(settings.host, settings.port, settings.listen_backlog)
            .with_context(|| format!("binding {}:{}", settings.host, settings.port))?;
        let port = listener.local_addr()?.port();
        let max_body = settings.max_body_bytes;
        let body_timeout = settings.request_timeout;
        let app_state = state.clone();
        let aliases = profiles.aliases().to_vec();
        let app = move || {
            let counted = app_state.metrics.clone();
            App::new()
                // A body must arrive within SWITCHYARD_REQUEST_TIMEOUT_MS of its head.
                .wrap_fn(move |req, srv| {
                    crate::transport::deadline::body_deadline(req, srv, body_timeout)
                })
                // Every REST refusal is counted by code, like socket refusals.
                .wrap_fn(move |req, srv| {
                    let metrics = counted.clone();
                    let fut = actix_web::dev::Service::call(srv, req);
                    async move {
                        let res = fut.await?;
                        if let Some(code) = res.response().extensions().get::<error::RefusedWith>()
                        {
                            metrics.refused(code.0);
                        }
                        Ok(res)
                    }
                })
                .app_data(app_state.clone())
                .app_data(error::json_config(max_body))
                .app_data(web::PayloadConfig::new(max_body))
                .app_data(error::query_config())
                .app_data(error::path_config())
                .configure(|cfg| routes::profiles::configure(cfg, &aliases))
                .configure(routes::configure)
                .default_service(web::to(not_found))
        };
        // What actix-web's `HttpServer::listen` builds, plus the upgrade service and a deadline
        // on every request head (actix-http bounds the first one only). Its defaults are kept
        // (keep-alive 5 s, 5 s to send a request head, 1 s to close); the body's own deadline
        // is the middleware above.
        let builder = actix_server::Server::build();
        let shutdown_signal = builder.graceful_shutdown_signal();
        let local_addr = listener.local_addr()?;
        let registry_for_workers = registry.clone();
        let socket_metrics = metrics.clone();
        let linger = settings.close_linger;
        let server = builder
            .workers(settings.resolved_workers())
            .disable_signals()
            .shutdown_timeout(settings.shutdown_timeout.as_secs().max(1))
            .listen("switchyard", listener, move || {
                // Runs on each worker's thread as it starts: offer that thread to the rooms.
                registry_for_workers.do_send(crate::actors::registry::AddRoomThread {
                    thread: std::thread::current().id(),
                    arbiter: actix::Arbiter::current(),
                });
                // The application's config only feeds URL generation and the host fallback of
                // `ConnectionInfo`, neither of which Switchyard uses; its constructor is private.
                let upgrade_app = map_config(app().into_factory(), |_| AppConfig::default());
                let metrics = socket_metrics.clone();
                let upgrade = fn_factory(move || {
                    let app = upgrade_app.new_service(());
                    let metrics = metrics.clone();
                    async move {
                        let app = Rc::new(app.await?);
                        Ok::<_, ()>(fn_service(move |io| {
                            crate::transport::conn::serve(app.clone(), metrics.clone(), linger, io)
                        }))
                    }
                });
                let signal = shutdown_signal.clone();
                // Every request head, not only the first on a connection (see transport::head).
                let accept = fn_service(|io: tokio::net::TcpStream| async move {
                    // Nagle only adds delay here: every connection's queued frames already
                    // leave in one write. With it on, a small frame after an unacknowledged one
                    // waits for the peer's delayed ACK (p99 46 ms instead of 5 ms in a
                    // two-member room at a light rate).
                    let _ = io.set_nodelay(true);
                    let peer = io.peer_addr().ok();
                    let io = HeadGuarded::new(io, HEAD_TIMEOUT);
                    Ok::<_, actix_http::error::DispatchError>((io, Protocol::Http1, peer))
                });
                let http = HttpService::build()
                    .keep_alive(KeepAlive::default())
                    .client_request_timeout(HEAD_TIMEOUT)
                    .client_disconnect_timeout(Duration::from_secs(1))
                    .h1_allow_half_closed(true)
                    .on_connect_ext(|io: &HeadGuarded, data| {
                        data.insert(io.watch());
                    })
                    .local_addr(local_addr)
                    .graceful_shutdown_signal(move || {
                        let signal = signal.clone();
                        async move { signal.notified().await }
                    })
                    .upgrade(upgrade)
                    .finish(map_config(
                        app()
                            .into_factory()
                            .map_err(|e: actix_web::Error| e.error_response()),
                        |_| AppConfig::default(),
                    ));
                accept.and_then(http)
            })?
            .run();
        log::info!(
            "switchyard {} listening on {}:{port} (database: {})",
            env!("CARGO_PKG_VERSION"),
            settings.host,
            settings.database.backend_name()
        );
        let shutdown = ShutdownHandle {
            sessions,
            operations: operations_for_shutdown,
            server: server.handle(),
            metrics,
            timeout: settings.shutdown_timeout,
            recovery,
        };
        Ok(Self {
            port,
            server,
            shutdown,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Serves until a graceful shutdown completes, started by SIGINT/SIGTERM or a
    /// [`ShutdownHandle`].
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.shutdown.clone();
        actix_web::rt::spawn(async move {
            wait_for_signal().await;
            handle.shutdown().await;
        });
        self.server.await
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use actix_web::rt::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGTERM: {e}");
                let _ = actix_web::rt::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = actix_web::rt::signal::ctrl_c() => log::info!("SIGINT received"),
            _ = term.recv() => log::info!("SIGTERM received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = actix_web::rt::signal::ctrl_c().await;
    }
}

async fn not_found() -> Result<HttpResponse, AppError> {
    Err(AppError::new(ErrorCode::NotFound, "no such endpoint"))
}

/// Binds the listening socket as `TcpListener::bind` does (`SO_REUSEADDR`, so a restart does not
/// wait for the old connections' TIME_WAIT), but with a listen backlog of `backlog`: the
/// standard library's fixed 128 made a burst of connects wait a second for the clients' SYN
/// retry (`SWITCHYARD_LISTEN_BACKLOG`). `socket2` was already in the tree, under tokio.
fn listen(host: std::net::IpAddr, port: u16, backlog: u32) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let addr = std::net::SocketAddr::new(host, port);
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}
