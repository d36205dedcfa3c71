//! What every handler and session shares: handed in through `web::Data`, never a global.

use std::sync::Arc;

use actix::Addr;

use crate::actors::engine::{EngineConfig, EngineSessions};
use crate::actors::operations::OperationManager;
use crate::actors::registry::RoomRegistry;
use crate::auth::Authenticator;
use crate::broker::Broker;
use crate::config::Settings;
use crate::db::Database;
use crate::metrics::Metrics;
use crate::operations::config::Kinds;

pub struct AppState {
    pub settings: Arc<Settings>,
    pub registry: Addr<RoomRegistry>,
    pub broker: Arc<dyn Broker>,
    pub metrics: Arc<Metrics>,
    pub auth: Authenticator,
    pub db: Database,
    pub operations: Addr<OperationManager>,
    pub ops: Arc<OpContext>,
    /// Live Engine.IO sessions by sid.
    pub engines: Arc<EngineSessions>,
    /// The `/socket.io/` endpoint.
    pub socketio: Arc<EngineConfig>,
    /// The `/engine.io/` echo (conformance mode only).
    pub engineio_echo: Option<Arc<EngineConfig>>,
}

/// What operation actors need; built once at start-up.
pub struct OpContext {
    pub settings: Arc<Settings>,
    pub broker: Arc<dyn Broker>,
    pub registry: Addr<RoomRegistry>,
    pub db: Database,
    pub metrics: Arc<Metrics>,
    pub kinds: Kinds,
}
