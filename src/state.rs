//! What every handler shares: handed in through `web::Data`, never a global. This is the
//! application's composition: the actors never see it, each gets the narrow dependencies it
//! uses ([`SessionDeps`], [`WatcherDeps`], [`OpContext`]), built from the same services here.

use std::sync::Arc;

use actix::Addr;

use crate::actors::engine::{EngineConfig, EngineSessions};
use crate::actors::operation::OpContext;
use crate::actors::operation_manager::OperationManager;
use crate::actors::session::SessionDeps;
use crate::actors::watcher::WatcherDeps;
use crate::auth::Authenticator;
use crate::broker::{Broker, HistoryView, NodesView, PresenceView};
use crate::config::Settings;
use crate::db::Database;
use crate::limits::{ConnectionGate, ConnectionSlot, GateRefusal, KeyedRate};
use crate::metrics::Metrics;
use crate::transport::budget::Budget;
use crate::transport::outbox::{Framing, Outbox};

pub struct AppState {
    pub settings: Arc<Settings>,
    pub broker: Arc<dyn Broker>,
    /// Who is in which room (the REST presence and room list).
    pub presence: Arc<dyn PresenceView>,
    /// What rooms have kept (the REST history).
    pub history: Arc<dyn HistoryView>,
    /// The nodes serving this Switchyard (`/api/nodes`, the dashboard).
    pub nodes: Arc<dyn NodesView>,
    /// This node's name: `SWITCHYARD_NODE_ID`, or the process's random id.
    pub node: Arc<str>,
    pub metrics: Arc<Metrics>,
    pub auth: Authenticator,
    pub db: Database,
    pub operations: Addr<OperationManager>,
    /// What the operation manager and operation actors use (the routes read operations with it).
    pub ops: Arc<OpContext>,
    /// What `/ws` sessions and Engine.IO sessions use.
    pub session_deps: Arc<SessionDeps>,
    /// What SSE and per-operation WebSocket watchers use.
    pub watcher_deps: Arc<WatcherDeps>,
    /// Live Engine.IO sessions by sid.
    pub engines: Arc<EngineSessions>,
    /// The `/socket.io/` endpoint.
    pub socketio: Arc<EngineConfig>,
    /// The `/engine.io/` echo (conformance mode only).
    pub engineio_echo: Option<Arc<EngineConfig>>,
    /// Connections per client address.
    pub gate: Arc<ConnectionGate>,
    /// Publishes per user, across connections.
    pub user_publishes: Arc<KeyedRate>,
    /// What every client connection's outbound queue together may hold.
    pub outbound: Arc<Budget>,
}

impl AppState {
    /// A new client connection's outbound queue, within its own bounds
    /// (`SWITCHYARD_OUTBOX_MAX_*`) and the server's (`SWITCHYARD_OUTBOX_TOTAL_BYTES`).
    pub fn outbox(&self, framing: Framing) -> Arc<Outbox> {
        let s = &self.settings;
        Outbox::bounded(
            s.outbox_max_messages,
            s.outbox_max_bytes,
            framing,
            &self.outbound,
        )
    }

    /// Takes one publish from `user`'s budget (`SWITCHYARD_USER_PUBLISH_RATE`), shared by every
    /// way to publish: REST publishes and activities here, `/ws` and Socket.IO in the session.
    /// Refused as `rate_limited` with the wait until the next token (`Retry-After` over HTTP).
    pub fn take_user_publish(&self, user: &str) -> Result<(), crate::error::Refusal> {
        self.user_publishes.take(user).map_err(|wait| {
            crate::error::Refusal::rate_limited(
                format!(
                    "publishing too fast: at most {} publishes a second per user",
                    self.settings.user_publish_rate
                ),
                wait,
            )
        })
    }

    /// The client's address: the peer's, or behind a trusted proxy the one it forwarded
    /// (`SWITCHYARD_TRUSTED_PROXIES`, `client_addr`).
    pub fn client_ip(&self, req: &actix_web::HttpRequest) -> Option<std::net::IpAddr> {
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok());
        self.settings
            .trusted_proxies
            .client(req.peer_addr().map(|a| a.ip()), forwarded)
    }

    /// Admits a new connection from this request's address, or refuses it. (A refusal returned
    /// as an HTTP error is counted by the middleware; other callers count it themselves.)
    pub fn admit(
        &self,
        req: &actix_web::HttpRequest,
    ) -> Result<ConnectionSlot, crate::error_code::Refusal> {
        use crate::error_code::{ErrorCode, Refusal};
        self.gate.admit(self.client_ip(req)).map_err(|why| {
            let message = match why {
                GateRefusal::TooMany => "too many open connections from this address",
                GateRefusal::TooFast => "too many new connections from this address; retry shortly",
            };
            Refusal::new(ErrorCode::TooManyConnections, message)
        })
    }

    /// A place in `identity`'s user's count of open connections
    /// (`SWITCHYARD_MAX_CONNECTIONS_PER_USER`), for a connection whose identity is known before
    /// it starts (a token in the header, a watch ticket, a backend hook's answer): held with the
    /// connection's slot ([`ConnectionSlot::with_user`]). `None`: not counted.
    pub fn admit_user(
        &self,
        identity: Option<&crate::auth::Identity>,
    ) -> Result<Option<crate::limits::UserSlot>, crate::error_code::Refusal> {
        match identity {
            Some(i) => self.session_deps.users.admit(i),
            None => Ok(None),
        }
    }
}
