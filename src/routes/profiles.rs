//! An app profile's paths for the per-operation endpoints (docs/profiles.md, "Paths"): the
//! same WebSocket, SSE stream and status as `/api/operations/{id}/…`, under the app's own
//! paths and in its own status shape. Each alias is a resource of its own, registered at
//! start-up with the shape it serves. Each takes a watch ticket (`?ticket=`) as the originals
//! do.

use actix_web::{web, HttpRequest, HttpResponse};

use super::operations::{events_shaped, socket_shaped, visible, EventsQuery};
use super::watch_caller;
use crate::error::AppError;
use crate::protocol::profile::{AliasKind, PathAlias, Shape};
use crate::protocol::Shared;
use crate::state::AppState;

/// The shape an alias serves (resource data: each alias has its own).
struct AliasShape(Option<Shared<Shape>>);

/// Registers every alias. Called before the built-in routes; an alias never shadows one (the
/// loader refuses paths under Switchyard's own).
pub fn configure(cfg: &mut web::ServiceConfig, aliases: &[PathAlias]) {
    for alias in aliases {
        let shape = web::Data::new(AliasShape(alias.shape.clone().map(Shared)));
        let resource = web::resource(alias.path.as_str()).app_data(shape);
        cfg.service(match alias.kind {
            AliasKind::WebSocket => resource.route(web::get().to(socket)),
            AliasKind::Sse => resource.route(web::get().to(events)),
            AliasKind::Status => resource.route(web::get().to(status)),
        });
    }
}

async fn socket(
    req: HttpRequest,
    id: web::Path<String>,
    shape: web::Data<AliasShape>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    socket_shaped(req, &id, state, shape.0.clone()).await
}

async fn events(
    req: HttpRequest,
    id: web::Path<String>,
    query: web::Query<EventsQuery>,
    shape: web::Data<AliasShape>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    events_shaped(req, &id, query.after, state, shape.0.clone()).await
}

/// The status now, in the app's shape (`GET /api/operations/{id}` under the app's path).
async fn status(
    req: HttpRequest,
    id: web::Path<String>,
    shape: web::Data<AliasShape>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let caller = watch_caller(&req, &id)?;
    let op = visible(&state, &caller.identity, &id).await?;
    Ok(match &shape.0 {
        None => HttpResponse::Ok().json(op),
        Some(s) => {
            let json = serde_json::to_value(&op).map_err(|e| AppError::Internal(e.into()))?;
            let event = op.status.terminal_event().unwrap_or("operation.progress");
            HttpResponse::Ok().json(s.0.apply(&json, &format!("operation:{}", op.id), event))
        }
    })
}
