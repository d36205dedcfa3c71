//! An app profile's paths for the per-operation endpoints (docs/profiles.md, "Paths"): the
//! same WebSocket, SSE stream and status as `/api/operations/{id}/…`, under the app's own
//! paths and in its own status shape. Each alias is a resource of its own, registered at
//! start-up with the shape it serves and its profile's `connect` hook, if any. Each takes a
//! watch ticket (`?ticket=`) as the originals do; without one or a token, a browser's
//! WebSocket or EventSource sends the app's cookies, which the app's backend (the `connect`
//! hook) turns into an identity (docs/profiles.md, "Paths").

use std::sync::Arc;

use actix_web::{http::header, web, HttpRequest, HttpResponse};

use super::operations::{events_shaped, socket_shaped, visible, EventsQuery};
use super::{require_allowed_origin, watch_caller, Caller};
use crate::error::AppError;
use crate::hooks::{HookConfig, HookKind};
use crate::protocol::profile::{AliasKind, PathAlias, Shape};
use crate::protocol::Shared;
use crate::state::AppState;

/// What an alias serves with (resource data: each alias has its own).
struct AliasShape {
    shape: Option<Shared<Shape>>,
    /// The profile's backend with its `connect` hook: asked who a request without
    /// `Authorization` is.
    hooks: Option<Arc<HookConfig>>,
}

/// Registers every alias. Called before the built-in routes; an alias never shadows one (the
/// loader refuses paths under Switchyard's own).
pub fn configure(cfg: &mut web::ServiceConfig, aliases: &[PathAlias]) {
    for alias in aliases {
        let shape = web::Data::new(AliasShape {
            shape: alias.shape.clone().map(Shared),
            hooks: alias.hooks.clone(),
        });
        let resource = web::resource(alias.path.as_str()).app_data(shape);
        cfg.service(match alias.kind {
            AliasKind::WebSocket => resource.route(web::get().to(socket)),
            AliasKind::Sse => resource.route(web::get().to(events)),
            AliasKind::Status => resource.route(web::get().to(status)),
        });
    }
}

/// Who is asking: a watch ticket for the operation (`?ticket=`) or an `Authorization: Bearer`
/// token wins (as on the endpoints aliased); without either, the profile's `connect` hook, given the request's forwarded cookies and headers,
/// answers the identity (a refusal is `403 forbidden`, a backend down `502
/// backend_unavailable`); without that hook, what the aliased endpoint would do (open mode, or
/// `401`). The handler awaits the call; no actor does.
async fn caller(
    req: &HttpRequest,
    operation: &str,
    alias: &AliasShape,
    state: &AppState,
    transport: &str,
) -> Result<Caller, AppError> {
    let with_ticket = req
        .query_string()
        .split('&')
        .any(|kv| kv.starts_with("ticket="));
    let with_token = with_ticket || req.headers().contains_key(header::AUTHORIZATION);
    let (false, Some(cfg), Some(hooks)) = (with_token, &alias.hooks, &state.session_deps.hooks)
    else {
        return watch_caller(req, operation);
    };
    let body = serde_json::json!({
        "hook": HookKind::Connect.as_str(),
        "transport": transport,
        "namespace": null,
        "auth": null,
        "path": req.path(),
    });
    let forwarded = hooks.capture(req.headers());
    let answer = hooks.call(cfg, HookKind::Connect, &body, &forwarded).await;
    let identity = answer.and_then(|a| crate::hooks::identity(&a))?;
    log::debug!(
        "{}: user {} from the connect hook",
        req.path(),
        identity.user.id
    );
    Ok(Caller {
        identity,
        anonymous: false,
    })
}

async fn socket(
    req: HttpRequest,
    id: web::Path<String>,
    shape: web::Data<AliasShape>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    // A page on another origin must not open this socket with the user's cookies (cross-site
    // WebSocket hijacking): the origin is checked before the backend is asked anything.
    require_allowed_origin(&req, &state)?;
    let caller = caller(&req, &id, &shape, &state, "websocket").await?;
    socket_shaped(caller, req, &id, state, shape.shape.clone()).await
}

async fn events(
    req: HttpRequest,
    id: web::Path<String>,
    query: web::Query<EventsQuery>,
    shape: web::Data<AliasShape>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let caller = caller(&req, &id, &shape, &state, "sse").await?;
    events_shaped(caller, req, &id, query.after, state, shape.shape.clone()).await
}

/// The status now, in the app's shape (`GET /api/operations/{id}` under the app's path).
async fn status(
    req: HttpRequest,
    id: web::Path<String>,
    shape: web::Data<AliasShape>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let caller = caller(&req, &id, &shape, &state, "http").await?;
    let op = visible(&state, &caller.identity, &id).await?;
    Ok(match &shape.shape {
        None => HttpResponse::Ok().json(op),
        Some(s) => {
            let json = serde_json::to_value(&op).map_err(|e| AppError::Internal(e.into()))?;
            let event = op.status.terminal_event().unwrap_or("operation.progress");
            HttpResponse::Ok().json(s.0.apply(&json, &format!("operation:{}", op.id), event))
        }
    })
}
