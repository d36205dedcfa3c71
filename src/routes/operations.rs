//! Operation endpoints: start, list, get, logs, cancel, worker reports, and the two socket-less
//! ways to follow one (Server-Sent Events and a per-operation WebSocket).
//!
//! Why this file is one piece (about 500 lines): every handler here is a thin check of the
//! caller in front of the same operation manager; an app profile's aliases of the two streams
//! (`routes/profiles.rs`) reuse them rather than copy them.

use std::sync::Arc;

use actix::{Actor, AsyncContext};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{next_before, page_limit, require_allowed_origin, watch_caller, Caller};
use crate::actors::operation_manager::{
    self as manager, CancelOperation, GetOperation, ReportOperation, ReportReply, StartError,
    StartOperation,
};
use crate::actors::watcher::Watcher;
use crate::auth::Identity;
use crate::db::operations::{self as store, ListFilter, LogRow};
use crate::error::{AppError, ErrorCode, Refusal};
use crate::operations::{Operation, Status, Update, WorkerReport};
use crate::protocol::native::{fail_fields, log_lines};
use crate::protocol::profile::Shape;
use crate::protocol::{Shared, Wire};
use crate::state::AppState;
use crate::transport::outbox::{Framing, Outbox, OutboxStream};

/// The operation if the caller may see it; `not_found` otherwise (so ids cannot be probed).
pub(super) async fn visible(
    state: &AppState,
    identity: &Identity,
    id: &str,
) -> Result<Operation, AppError> {
    let op = state
        .operations
        .send(GetOperation { id: id.to_string() })
        .await
        .map_err(|e| Refusal::unavailable("operations", e))??;
    if !identity.may_watch(&op.id, op.project.as_deref()) {
        return Err(AppError::new(
            ErrorCode::NotFound,
            format!("no operation {id}"),
        ));
    }
    Ok(op)
}

#[derive(Deserialize)]
pub struct StartBody {
    kind: String,
    target: String,
    project: Option<String>,
    #[serde(default)]
    params: Value,
}

#[derive(Serialize)]
struct Duplicate<'a> {
    error: &'static str,
    message: String,
    operation: &'a Operation,
}

pub async fn start(
    caller: Caller,
    body: web::Json<StartBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    caller.identity.require(
        caller.identity.may_operate(body.project.as_deref()),
        "start operations",
    )?;
    let res = state
        .operations
        .send(StartOperation {
            kind: body.kind,
            target: body.target,
            project: body.project,
            params: body.params,
            created_by: caller.from_user().map(|u| u.id.clone()),
        })
        .await
        .map_err(|e| Refusal::unavailable("operations", e))?;
    match res {
        Ok(started) => {
            let id = started.operation.id.clone();
            let mut body = serde_json::to_value(&started.operation)
                .map_err(|e| AppError::Internal(e.into()))?;
            if let (Some(token), Some(obj)) = (started.worker_token, body.as_object_mut()) {
                // Only the starter sees it: it lets a worker report for this operation alone.
                obj.insert("worker_token".into(), Value::String(token));
            }
            Ok(HttpResponse::Accepted()
                .insert_header((header::LOCATION, format!("/api/operations/{id}")))
                .json(body))
        }
        Err(StartError::Duplicate(existing)) => {
            state.metrics.refused(ErrorCode::DuplicateOperation);
            Ok(HttpResponse::Conflict().json(Duplicate {
                error: ErrorCode::DuplicateOperation.as_str(),
                message: format!(
                    "operation {} ({} on {}) is already {}; watch it instead",
                    existing.id,
                    existing.kind,
                    existing.target,
                    existing.status.as_str()
                ),
                operation: &existing,
            }))
        }
        Err(StartError::Refused(r)) => Err(r.into()),
        Err(StartError::Database(e)) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    kind: Option<String>,
    project: Option<String>,
    target: Option<String>,
    /// `true` or `false`, read here (not by serde) so a bad value gets `invalid_field`.
    active: Option<String>,
    limit: Option<i64>,
    before: Option<String>,
}

pub async fn list(
    caller: Caller,
    query: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let q = query.into_inner();
    let allowed = match &q.project {
        Some(p) => {
            caller.identity.may_join(&format!("project:{p}"))
                || caller.identity.may_see_all_operations()
        }
        None => caller.identity.may_see_all_operations(),
    };
    caller.identity.require(allowed, "list operations")?;
    let status = match &q.status {
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            AppError::new(
                ErrorCode::InvalidField,
                "status must be queued, running, cancelling, completed, failed or cancelled",
            )
        })?),
        None => None,
    };
    let active = match q.active.as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => {
            return Err(AppError::new(
                ErrorCode::InvalidField,
                "active must be true or false",
            ))
        }
    };
    if let (Some(s), Some(a)) = (status, active) {
        // Asking for both a status and its opposite is a mistake worth saying, not an empty
        // page.
        if s.is_terminal() == a {
            return Err(AppError::new(
                ErrorCode::InvalidField,
                format!("status={} contradicts active={a}", s.as_str()),
            ));
        }
    }
    if q.target.as_deref() == Some("") {
        return Err(AppError::new(
            ErrorCode::InvalidField,
            "target must not be empty (leave it out to list every target)",
        ));
    }
    let limit = page_limit(q.limit, 50, 500)?;
    let ops = manager::list(
        &state.ops,
        ListFilter {
            status: q.status,
            kind: q.kind,
            project: q.project,
            target: q.target,
            active,
            before: q.before,
            limit,
        },
    )
    .await?;
    let next_before = next_before(&ops, limit, |o| o.id.clone());
    Ok(HttpResponse::Ok()
        .json(serde_json::json!({ "operations": ops, "next_before": next_before })))
}

/// `GET /api/operations/{id}`: with a token, or a watch ticket for this operation.
pub async fn get(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let caller = watch_caller(&req, &path)?;
    let op = visible(&state, &caller.identity, &path).await?;
    Ok(HttpResponse::Ok().json(op))
}

#[derive(Serialize)]
struct TicketBody {
    ticket: String,
    /// RFC 3339, as every other time in the API.
    expires_at: String,
}

/// `POST /api/operations/{id}/ticket`: a watch ticket for a browser (docs/operations.md,
/// "Browsers"): `?ticket=` on this operation's WebSocket, SSE stream and status (and an app
/// profile's aliases of them) for `SWITCHYARD_WATCH_TICKET_TTL_SECS`. Only for a caller that
/// may see the operation (otherwise 404, as for the operation itself).
pub async fn ticket(
    caller: Caller,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let op = visible(&state, &caller.identity, &path).await?;
    let t = state
        .auth
        .issue_ticket(&caller.identity, &op.id, state.settings.watch_ticket_ttl)?;
    log::info!(
        "operation {}: watch ticket issued to user {} until {}",
        op.id,
        caller.identity.user.id,
        t.expires_at
    );
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(TicketBody {
            ticket: t.ticket,
            expires_at: crate::util::rfc3339_millis((t.expires_at as i64).saturating_mul(1000)),
        }))
}

#[derive(Deserialize)]
pub struct LogsQuery {
    after: Option<u64>,
    limit: Option<i64>,
}

pub async fn logs(
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<LogsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let op = visible(&state, &caller.identity, &path).await?;
    let after = query.after.unwrap_or(0);
    let limit = page_limit(query.limit, 500, 5000)?;
    let id = op.id.clone();
    let rows = state
        .db
        .run(move |c| store::logs_after(c, &id, after, limit))
        .await?;
    let lines: Vec<_> = rows.into_iter().map(LogRow::into_line).collect();
    let next_after = lines.last().map(|l| l.offset).unwrap_or(after);
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "operation": op.id,
        "lines": lines,
        "next_after": next_after,
        // Lines are written in batches; the last few may not be readable here yet.
        "log_offset": op.log_offset,
    })))
}

pub async fn cancel(
    caller: Caller,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let op = visible(&state, &caller.identity, &path).await?;
    caller.identity.require(
        caller.identity.may_operate(op.project.as_deref()),
        "cancel this operation",
    )?;
    let op = state
        .operations
        .send(CancelOperation { id: op.id })
        .await
        .map_err(|e| Refusal::unavailable("operations", e))??;
    Ok(HttpResponse::Accepted().json(op))
}

/// Who reports: a caller with role `service` (or admin, or open mode), or anyone holding the
/// operation's worker token in `X-Worker-Token`.
pub struct Reporter {
    authorized: bool,
    worker_token: Option<String>,
}

impl actix_web::FromRequest for Reporter {
    type Error = AppError;
    type Future = std::future::Ready<Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let worker_token = req
            .headers()
            .get("x-worker-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let result = match (
            worker_token,
            Caller::from_request(req, payload).into_inner(),
        ) {
            (Some(t), _) => Ok(Reporter {
                authorized: false,
                worker_token: Some(t),
            }),
            (None, Ok(caller)) => caller
                .identity
                .require(caller.identity.may_report(), "report operation progress")
                .map(|_| Reporter {
                    authorized: true,
                    worker_token: None,
                })
                .map_err(AppError::from),
            (None, Err(e)) => Err(e),
        };
        std::future::ready(result)
    }
}

async fn report(
    reporter: Reporter,
    id: String,
    report: WorkerReport,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let (reply, outcome) = tokio::sync::oneshot::channel();
    state
        .operations
        .send(ReportOperation {
            id,
            report,
            authorized: reporter.authorized,
            worker_token: reporter.worker_token,
            reply: ReportReply::Wait(reply),
        })
        .await
        .map_err(|e| Refusal::unavailable("operations", e))?;
    let op = outcome.await.map_err(|_| {
        AppError::new(
            ErrorCode::Unavailable,
            "the operation stopped before answering",
        )
    })??;
    Ok(HttpResponse::Ok().json(op))
}

pub async fn progress(
    reporter: Reporter,
    path: web::Path<String>,
    body: web::Json<Update>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let mut u = body.into_inner();
    u.result = None;
    report(
        reporter,
        path.into_inner(),
        WorkerReport::Progress(u),
        state,
    )
    .await
}

#[derive(Deserialize)]
pub struct LogsBody {
    lines: Value,
}

pub async fn append_logs(
    reporter: Reporter,
    path: web::Path<String>,
    body: web::Json<LogsBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let lines = log_lines(&body.lines)?;
    report(
        reporter,
        path.into_inner(),
        WorkerReport::Logs(lines),
        state,
    )
    .await
}

#[derive(Deserialize)]
pub struct CompleteBody {
    #[serde(default)]
    result: Option<Value>,
}

pub async fn complete(
    reporter: Reporter,
    path: web::Path<String>,
    body: web::Json<CompleteBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let result = body.into_inner().result;
    report(
        reporter,
        path.into_inner(),
        WorkerReport::Complete(result),
        state,
    )
    .await
}

#[derive(Deserialize)]
pub struct FailBody {
    #[serde(default)]
    error: Value,
}

pub async fn fail(
    reporter: Reporter,
    path: web::Path<String>,
    body: web::Json<FailBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let (code, message) = fail_fields(&body.error).map_err(AppError::from)?;
    report(
        reporter,
        path.into_inner(),
        WorkerReport::Fail { code, message },
        state,
    )
    .await
}

#[derive(Deserialize)]
pub struct EventsQuery {
    pub(super) after: Option<u64>,
}

/// `GET /api/operations/{id}/events`: the status now, the log lines after `Last-Event-ID` (or
/// `?after=`), then live events; ends after the terminal event. Event ids are log offsets, so
/// `EventSource` resumes exactly. Reconnecting after the end gets 204, which stops
/// `EventSource` from retrying.
pub async fn events(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<EventsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let caller = watch_caller(&req, &path)?;
    events_shaped(caller, req, &path, query.after, state, None).await
}

/// [`events`], with status events in an app profile's shape (its alias of this stream).
pub(super) async fn events_shaped(
    caller: Caller,
    req: HttpRequest,
    id: &str,
    after_query: Option<u64>,
    state: web::Data<AppState>,
    shape: Option<Shared<Shape>>,
) -> Result<HttpResponse, AppError> {
    let op = visible(&state, &caller.identity, id).await?;
    let last_event_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim().parse::<u64>().map_err(|_| {
                AppError::new(
                    ErrorCode::InvalidField,
                    "Last-Event-ID must be a log offset",
                )
            })
        })
        .transpose()?;
    let resumed = last_event_id.is_some();
    let after = last_event_id.or(after_query).unwrap_or(0);
    if resumed && op.status.is_terminal() && after >= op.log_offset {
        return Ok(HttpResponse::NoContent().finish());
    }
    // Aliases live outside `/api` (no CORS middleware there): the origin is checked here.
    require_allowed_origin(&req, &state)?;
    let slot = state.admit(&req)?;
    let settings = &state.settings;
    let outbox = Outbox::with_framing(
        settings.outbox_max_messages,
        settings.outbox_max_bytes,
        Framing::Raw,
    );
    watcher(
        &state,
        &caller,
        op.id,
        after,
        Wire::Sse(shape),
        outbox.clone(),
    )
    .with_slot(slot)
    .start();
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(OutboxStream::new(outbox)))
}

/// `GET /api/operations/{id}/ws`: the full status on connect and on every change; closes
/// normally (1000) after the terminal status.
pub async fn socket(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let caller = watch_caller(&req, &path)?;
    socket_shaped(caller, req, &path, state, None).await
}

/// [`socket`], with each status in an app profile's shape (its alias of this socket).
pub(super) async fn socket_shaped(
    caller: Caller,
    req: HttpRequest,
    id: &str,
    state: web::Data<AppState>,
    shape: Option<Shared<Shape>>,
) -> Result<HttpResponse, AppError> {
    let op = visible(&state, &caller.identity, id).await?;
    // An app's alias of this socket lives outside `/api`, where the CORS middleware checks
    // origins; a WebSocket gets no CORS from the browser, so the origin is checked here.
    require_allowed_origin(&req, &state)?;
    let slot = state.admit(&req)?;
    let settings = &state.settings;
    let outbox = Outbox::new(settings.outbox_max_messages, settings.outbox_max_bytes);
    let watcher = watcher(
        &state,
        &caller,
        op.id,
        op.log_offset,
        Wire::StatusStream(shape),
        outbox.clone(),
    )
    .with_slot(slot);
    crate::transport::ws::upgrade(&req, outbox, settings.max_frame_bytes, move |reader| {
        Watcher::create(move |ctx| {
            ctx.add_stream(reader);
            watcher
        });
    })
    .map_err(AppError::from)
}

fn watcher(
    state: &web::Data<AppState>,
    caller: &Caller,
    id: String,
    after: u64,
    wire: Wire,
    outbox: Arc<Outbox>,
) -> Watcher {
    Watcher::new(
        crate::actors::next_session_id(),
        id,
        after,
        wire,
        caller.identity.user.clone(),
        outbox,
        state.watcher_deps.clone(),
    )
}
