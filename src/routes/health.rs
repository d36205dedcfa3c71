//! `GET /health` and `GET /metrics`.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::state::AppState;

/// 200 while the database answers and the broker can order publishes, 503 (`degraded`) when
/// either cannot. The real-time path does not depend on the database, so sessions keep working
/// while this says degraded; with a cluster broker (Redis) away, publishes are refused
/// `unavailable` until it is back, and sessions stay connected.
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
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.metrics.uptime().as_secs(),
        "websocket": {
            "status": "active",
            "connections": state.metrics.connections.get(),
        },
        "rooms": state.metrics.rooms.get(),
        "broker": match &broker {
            Ok(()) => json!({ "status": "ok", "kind": state.broker.name() }),
            Err(e) => json!({ "status": "unreachable", "kind": state.broker.name(), "error": e }),
        },
        "database": {
            "status": db_status,
            "backend": state.db.backend(),
            "latency_ms": latency_ms,
        },
    });
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(state.metrics.render())
}

/// `GET /api/nodes`: the nodes serving this Switchyard with their latest figures (one on a
/// single node; each node of a cluster, from the shared table) — the dashboard's node list.
pub async fn nodes(
    caller: super::Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, crate::error::AppError> {
    caller
        .identity
        .require(caller.identity.may_manage(), "list nodes")?;
    let nodes = state.nodes.nodes().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "node": state.node,
        "nodes": nodes,
    })))
}
