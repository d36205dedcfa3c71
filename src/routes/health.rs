//! `GET /health` and `GET /metrics`.

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::openapi::{ErrorBody, E401, E503};
use crate::broker::NodeStats;
use crate::state::AppState;

/// The server's health: what a load balancer or an operator checks.
#[derive(Serialize, ToSchema)]
struct Health {
    /// `ok`, or `degraded` when the database or the broker cannot answer (then the status is
    /// 503).
    #[schema(example = "ok")]
    status: &'static str,
    version: &'static str,
    uptime_seconds: u64,
    websocket: WebSocketHealth,
    /// Rooms open on this node.
    rooms: i64,
    broker: BrokerHealth,
    database: DatabaseHealth,
}

#[derive(Serialize, ToSchema)]
struct WebSocketHealth {
    /// Always `active`: sessions keep working while the database is away.
    status: &'static str,
    /// Open connections on this node.
    connections: i64,
}

#[derive(Serialize, ToSchema)]
struct BrokerHealth {
    /// `ok` or `unreachable`.
    status: &'static str,
    /// `local`, or `redis` in cluster mode.
    kind: &'static str,
    /// Why it is unreachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct DatabaseHealth {
    /// `ok` or `unreachable`.
    status: &'static str,
    /// `sqlite` or `postgres`.
    backend: &'static str,
    /// The round trip of a ping, when it answered.
    latency_ms: Option<f64>,
}

/// 200 while the database answers and the broker can order publishes, 503 (`degraded`) when
/// either cannot. The real-time path does not depend on the database, so sessions keep working
/// while this says degraded; with a cluster broker (Redis) away, publishes are refused
/// `unavailable` until it is back, and sessions stay connected.
#[utoipa::path(
    get,
    path = "/health",
    tag = "server",
    summary = "Health",
    description = "200 while the database answers and the broker can order publishes, 503 \
        (`degraded`) when either cannot; sessions keep working while it says degraded. Public.",
    responses(
        (status = 200, description = "Healthy.", body = Health),
        (status = 503, description = "Degraded: the same body, with `status: degraded`.",
            body = Health),
    ),
)]
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let bound = state.settings.db_timeout + std::time::Duration::from_secs(1);
    let (ping, broker) = futures_util::future::join(
        tokio::time::timeout(bound, state.db.ping()),
        state.broker.check(),
    )
    .await;
    let (db_status, latency_ms, error) = match ping {
        Ok(Ok(d)) => (
            "ok",
            Some((d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0),
            None,
        ),
        Ok(Err(e)) => ("unreachable", None, Some(e.to_string())),
        Err(_) => ("unreachable", None, Some("timed out".to_string())),
    };
    if let Some(e) = &error {
        log::warn!("health: database {}: {e}", state.db.backend());
    }
    if let Err(e) = &broker {
        log::warn!("health: broker {}: {e}", state.broker.name());
    }
    let ok = db_status == "ok" && broker.is_ok();
    let body = Health {
        status: if ok { "ok" } else { "degraded" },
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.metrics.uptime().as_secs(),
        websocket: WebSocketHealth {
            status: "active",
            connections: state.metrics.connections.get(),
        },
        rooms: state.metrics.rooms.get(),
        broker: BrokerHealth {
            status: if broker.is_ok() { "ok" } else { "unreachable" },
            kind: state.broker.name(),
            error: broker.err(),
        },
        database: DatabaseHealth {
            status: db_status,
            backend: state.db.backend(),
            latency_ms,
        },
    };
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "server",
    description = "Counters, gauges and histograms in the Prometheus text format \
        (docs/deploying.md). Public: bind the port privately or filter it at the proxy.",
    responses(
        (status = 200, description = "The metrics.", body = String,
            content_type = "text/plain; version=0.0.4"),
    ),
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let (held, _) = state.outbound.usage();
    state
        .metrics
        .outbox_held_bytes
        .set(i64::try_from(held).unwrap_or(i64::MAX));
    HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(state.metrics.render())
}

/// The nodes serving this Switchyard.
#[derive(Serialize, ToSchema)]
struct Nodes<'a> {
    /// The node that answered.
    node: &'a str,
    /// Every node's latest figures, sorted by name.
    nodes: Vec<NodeStats>,
}

/// `GET /api/nodes`: the nodes serving this Switchyard with their latest figures (one on a
/// single node; each node of a cluster, from the shared table) — the dashboard's node list.
#[utoipa::path(
    get,
    path = "/api/nodes",
    tag = "server",
    summary = "List the nodes",
    description = "The nodes serving this Switchyard with their latest figures: one on a single \
        node, each node of a cluster from the shared table (a node silent for an hour is \
        dropped). Auth: role `admin`.",
    responses(
        (status = 200, description = "The nodes.", body = Nodes),
        (status = 401, description = E401, body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin; or the `Origin` is not \
            allowed.", body = ErrorBody),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn nodes(
    caller: super::Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, crate::error::AppError> {
    caller
        .identity
        .require(caller.identity.may_manage(), "list nodes")?;
    let nodes = state.nodes.nodes().await?;
    Ok(HttpResponse::Ok().json(Nodes {
        node: &state.node,
        nodes,
    }))
}
