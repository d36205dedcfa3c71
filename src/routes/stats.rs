//! `GET /api/stats/recent`: the last 15 minutes of this node's `stats` samples, oldest first —
//! what the dashboard's charts draw before the next tick, so a reload or a new tab is not empty.
//!
//! Whoever may see the live figures (join the `system` room) may see their recent past. The
//! samples are this node's: on a cluster each node keeps its own, like its `stats` event.

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::openapi::{ErrorBody, E401, E503};
use super::Caller;
use crate::actors::stats::SYSTEM_ROOM;
use crate::error::AppError;
use crate::metrics::{StatsSample, RECENT_WINDOW};
use crate::state::AppState;

/// This node's recent `stats` samples.
#[derive(Serialize, ToSchema)]
struct Recent<'a> {
    /// The node that answered (its samples only).
    node: &'a str,
    /// `SWITCHYARD_STATS_INTERVAL_MS`: how often a sample is added.
    interval_ms: u64,
    /// How far back the samples reach at most.
    window_seconds: u64,
    samples: Vec<StatsSample>,
}

#[utoipa::path(
    get,
    path = "/api/stats/recent",
    tag = "server",
    summary = "The last 15 minutes of stats",
    description = "This node's `stats` samples of the last 15 minutes (at most 1,800), oldest \
        first: gauges as they were, rates and counts over each tick. What the dashboard's \
        charts draw before the next tick. Auth: a token that may join the `system` room.",
    responses(
        (status = 200, description = "The samples.", body = Recent),
        (status = 401, description = E401, body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller may not join `system`; or the \
            `Origin` is not allowed.", body = ErrorBody),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn recent(caller: Caller, state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    caller.identity.require(
        caller.identity.may_join(SYSTEM_ROOM),
        &format!("see {SYSTEM_ROOM}"),
    )?;
    Ok(HttpResponse::Ok().json(Recent {
        node: &state.node,
        interval_ms: state.settings.stats_interval.as_millis() as u64,
        window_seconds: RECENT_WINDOW.as_secs(),
        samples: state.metrics.recent.samples(),
    }))
}
