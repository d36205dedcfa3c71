//! Operation endpoints: start, list, get, logs, cancel, worker reports, and the two socket-less
//! ways to follow one (Server-Sent Events and a per-operation WebSocket).
//!
//! Why this file is one piece (about 980 lines, over a quarter of them each route's OpenAPI
//! declaration and the schemas of its bodies): every handler here is a thin check of the
//! caller in front of the same operation manager; an app profile's aliases of the two streams
//! (`routes/profiles.rs`) reuse them rather than copy them.

use std::sync::Arc;

use actix::{Actor, AsyncContext};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, ToSchema};

use super::openapi::{ErrorBody, E401, E401_TICKET, E413, E503};
use super::{next_before, page_limit, require_allowed_origin, watch_caller, Caller};
use crate::actors::operation_manager::{
    self as manager, CancelOperation, GetOperation, ReportOperation, ReportReply, StartError,
    StartOperation,
};
use crate::actors::watcher::Watcher;
use crate::auth::Identity;
use crate::db::operations::{self as store, ListFilter, LogRow};
use crate::error::{AppError, ErrorCode, Refusal};
use crate::operations::{LogLine, Operation, Status, Update, WorkerReport};
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

/// The operation in the path.
const ID: &str = "The operation's id.";

/// An operation to start.
#[derive(Deserialize, ToSchema)]
pub struct StartBody {
    /// One of the kinds of `SWITCHYARD_OPERATIONS_FILE` (docs/operations.md).
    kind: String,
    /// What it works on; one active operation per kind and target.
    target: String,
    /// The project it belongs to: its events also go to `project:<project>`.
    project: Option<String>,
    /// The kind's parameters, checked against its declaration (at most
    /// `SWITCHYARD_OPERATION_MAX_PARAMS_BYTES`, `SWITCHYARD_OPERATION_MAX_JSON_DEPTH` deep).
    #[serde(default)]
    #[schema(value_type = Object)]
    params: Value,
}

/// A started operation: its status, and for the starter of an external one the token its
/// worker reports with.
#[derive(Serialize, ToSchema)]
struct Started<'a> {
    #[serde(flatten)]
    operation: &'a Operation,
    /// Only in this answer, only for an external operation: `X-Worker-Token` for its reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    worker_token: Option<String>,
}

/// `409 duplicate_operation`: the `Error` shape, with the operation already running.
#[derive(Serialize, ToSchema)]
struct Duplicate<'a> {
    /// `duplicate_operation`.
    error: &'static str,
    message: String,
    /// The active operation of this kind and target: watch it instead.
    operation: &'a Operation,
}

/// Start an operation.
#[utoipa::path(
    post,
    path = "/api/operations",
    operation_id = "start_operation",
    tag = "operations",
    description = "Starts an operation of a declared kind on a target (docs/operations.md). \
        Its events go to `operation:<id>`, `operations` and, with a project, \
        `project:<project>`. Auth: role `admin` or `service`, or a user whose `publish` \
        patterns match `operations` or `project:<project>`.",
    request_body = StartBody,
    responses(
        (status = 202, description = "Started (queued or running).", body = Started,
            headers(("Location" = String, description = "The operation's URL."))),
        (status = 400, description = "`unknown_kind`, `invalid_field` (params that the kind \
            refuses or that nest too deep, the project name), `invalid_json` or \
            `bad_request`.", body = ErrorBody),
        (status = 401, description = E401, body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller may not start operations (here); \
            or the `Origin` is not allowed.", body = ErrorBody),
        (status = 409, description = "`duplicate_operation`: one of this kind and target is \
            active; the body carries it.", body = Duplicate),
        (status = 413, description = "`payload_too_large`: the body is over \
            `SWITCHYARD_MAX_BODY_BYTES`, or `params` over \
            `SWITCHYARD_OPERATION_MAX_PARAMS_BYTES`.", body = ErrorBody),
        (status = 429, description = "`too_many_operations`: the caller has \
            `SWITCHYARD_MAX_ACTIVE_OPERATIONS_PER_USER` active.", body = ErrorBody),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
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
        Ok(started) => Ok(HttpResponse::Accepted()
            .insert_header((
                header::LOCATION,
                format!("/api/operations/{}", started.operation.id),
            ))
            .json(Started {
                operation: &started.operation,
                // Only the starter sees it: it lets a worker report for this operation alone.
                worker_token: started.worker_token,
            })),
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this status: `queued`, `running`, `cancelling`, `completed`, `failed` or
    /// `cancelled`.
    status: Option<String>,
    /// Only this kind.
    kind: Option<String>,
    /// Only this project's.
    project: Option<String>,
    /// Only this target (not empty).
    target: Option<String>,
    /// `true`: only queued, running or cancelling; `false`: only finished.
    // Read here (not by serde) so a bad value gets `invalid_field`.
    #[param(value_type = Option<bool>)]
    active: Option<String>,
    /// Page size, 1-500 (default 50).
    limit: Option<i64>,
    /// Only operations older than this id: the previous page's `next_before`.
    before: Option<String>,
}

/// A page of operations, newest first.
#[derive(Serialize, ToSchema)]
struct OperationPage {
    operations: Vec<Operation>,
    /// `before` for the next (older) page; null on the last page.
    next_before: Option<String>,
}

/// List operations.
#[utoipa::path(
    get,
    path = "/api/operations",
    operation_id = "list_operations",
    tag = "operations",
    description = "A page of operations, newest first, filtered. Auth: a caller who may join \
        `operations` (or role `service` or `admin`); with `project`, also one who may join \
        `project:<project>`.",
    params(ListQuery),
    responses(
        (status = 200, description = "A page.", body = OperationPage),
        (status = 400, description = "`invalid_field` (`status`, `active`, the two \
            contradicting, an empty `target`, `limit`) or `bad_request` (a malformed query).",
            body = ErrorBody),
        (status = 401, description = E401, body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller may not list these; or the \
            `Origin` is not allowed.", body = ErrorBody),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
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
    Ok(HttpResponse::Ok().json(OperationPage {
        operations: ops,
        next_before,
    }))
}

/// `GET /api/operations/{id}`: with a token, or a watch ticket for this operation.
#[utoipa::path(
    get,
    path = "/api/operations/{id}",
    operation_id = "get_operation",
    tag = "operations",
    summary = "An operation's status",
    description = "The operation's status now. Auth: a caller who may see it (may join \
        `operation:<id>`, `operations` or its project's room, or role `service`), or a watch \
        ticket for it (`?ticket=`).",
    params(("id" = String, Path, description = ID)),
    responses(
        (status = 200, description = "The operation.", body = Operation),
        (status = 400, description = "`bad_request`: a malformed query string.", body = ErrorBody),
        (status = 401, description = E401_TICKET, body = ErrorBody),
        (status = 403, description = "`forbidden`: the `Origin` is not allowed.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such operation, or the caller may not \
            see it (ids cannot be probed).", body = ErrorBody),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = []), ("ticket" = [])),
)]
pub async fn get(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let caller = watch_caller(&req, &path)?;
    let op = visible(&state, &caller.identity, &path).await?;
    Ok(HttpResponse::Ok().json(op))
}

/// A watch ticket.
#[derive(Serialize, ToSchema)]
struct TicketBody {
    /// Pass as `?ticket=` (it is a bearer secret for read access to this one operation).
    ticket: String,
    /// RFC 3339, as every other time in the API.
    #[schema(format = DateTime)]
    expires_at: String,
}

/// `POST /api/operations/{id}/ticket`: a watch ticket for a browser (docs/operations.md,
/// "Browsers"): `?ticket=` on this operation's WebSocket, SSE stream and status (and an app
/// profile's aliases of them) for `SWITCHYARD_WATCH_TICKET_TTL_SECS`. Only for a caller that
/// may see the operation (otherwise 404, as for the operation itself).
#[utoipa::path(
    post,
    path = "/api/operations/{id}/ticket",
    tag = "operations",
    summary = "A watch ticket for a browser",
    description = "A short-lived ticket (`SWITCHYARD_WATCH_TICKET_TTL_SECS`) that lets a browser \
        read this operation's status, SSE stream and WebSocket with `?ticket=`, where it cannot \
        set a header (docs/operations.md, \"Browsers\"). Auth: a caller who may see the \
        operation.",
    params(("id" = String, Path, description = ID)),
    responses(
        (status = 200, description = "The ticket (`Cache-Control: no-store`).", body = TicketBody),
        (status = 401, description = E401, body = ErrorBody),
        (status = 403, description = "`forbidden`: the `Origin` is not allowed.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such operation, or the caller may not \
            see it.", body = ErrorBody),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Only lines after this offset (default 0: from the first).
    after: Option<u64>,
    /// Page size, 1-5000 (default 500).
    limit: Option<i64>,
}

/// A page of an operation's log.
#[derive(Serialize, ToSchema)]
struct LogPage {
    operation: String,
    /// Oldest first.
    lines: Vec<LogLine>,
    /// `after` for the next page.
    next_after: u64,
    /// The operation's last offset: lines are written in batches, the last few may not be
    /// readable here yet.
    log_offset: u64,
}

/// Read an operation's log.
#[utoipa::path(
    get,
    path = "/api/operations/{id}/logs",
    tag = "operations",
    description = "A page of the operation's stored log lines after an offset. Auth: a caller \
        who may see the operation.",
    params(("id" = String, Path, description = ID), LogsQuery),
    responses(
        (status = 200, description = "A page of lines.", body = LogPage),
        (status = 400, description = "`invalid_field` (`limit`) or `bad_request` (a malformed \
            query).", body = ErrorBody),
        (status = 401, description = E401, body = ErrorBody),
        (status = 403, description = "`forbidden`: the `Origin` is not allowed.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such operation, or the caller may not \
            see it.", body = ErrorBody),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
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
    Ok(HttpResponse::Ok().json(LogPage {
        operation: op.id,
        lines,
        next_after,
        // Lines are written in batches; the last few may not be readable here yet.
        log_offset: op.log_offset,
    }))
}

/// Cancel an operation.
#[utoipa::path(
    post,
    path = "/api/operations/{id}/cancel",
    tag = "operations",
    description = "Asks the operation to stop: it becomes `cancelling`, then `cancelled` once \
        its runner has stopped (a command gets SIGTERM, then SIGKILL). Auth: a caller who may \
        see the operation and may start operations in its project.",
    params(("id" = String, Path, description = ID)),
    responses(
        (status = 202, description = "Cancelling.", body = Operation),
        (status = 401, description = E401, body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller may not cancel it; or the \
            `Origin` is not allowed.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such operation, or the caller may not \
            see it.", body = ErrorBody),
        (status = 409, description = "`operation_finished`: it already ended.", body = ErrorBody),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
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

/// Report progress.
#[utoipa::path(
    post,
    path = "/api/operations/{id}/progress",
    tag = "workers",
    description = "An external worker's progress report: any of progress (0-100), stage, \
        message, `eta_seconds`, `details` (a `result` is ignored here). A queued operation \
        becomes running. Auth: role `service` or `admin`, or the operation's worker token in \
        `X-Worker-Token`.",
    params(("id" = String, Path, description = ID)),
    request_body = Update,
    responses(
        (status = 200, description = "The operation after the report.", body = Operation),
        (status = 400, description = REPORT_400, body = ErrorBody),
        (status = 413, description = REPORT_413, body = ErrorBody),
        ReportRefusals,
    ),
    security(("bearer" = []), ("worker_token" = [])),
)]
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

/// What a report may be refused with, shared by the four report endpoints.
/// The refusals every worker report (progress, logs, complete, fail) may get, beside its own
/// 400 and 413: one declaration in the OpenAPI document instead of four copies.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // describes answers for the document; never built
enum ReportRefusals {
    #[response(status = 401, description = E401)]
    Unauthenticated(ErrorBody),
    #[response(status = 403, description = REPORT_403)]
    Forbidden(ErrorBody),
    #[response(status = 404, description = "`not_found`: no such operation.")]
    NotFound(ErrorBody),
    #[response(status = 409, description = "`operation_finished`: it already ended.")]
    Finished(ErrorBody),
    #[response(status = 503, description = E503)]
    Unavailable(ErrorBody),
}

const REPORT_400: &str = "`invalid_field` (a value the report may not carry), `missing_field`, \
    `invalid_json` or `bad_request`.";
const REPORT_403: &str = "`forbidden`: neither role `service` nor this operation's worker \
    token; or the `Origin` is not allowed.";
const REPORT_413: &str = "`payload_too_large`: the body is over `SWITCHYARD_MAX_BODY_BYTES`, or \
    `details` or `result` over their bounds (docs/operations.md).";

/// Log lines from a worker.
#[derive(Deserialize, ToSchema)]
pub struct LogsBody {
    #[schema(schema_with = lines_schema)]
    lines: Value,
}

/// `lines`: an array of strings (stdout) or of `{stream, line}` objects, at most 1000.
fn lines_schema() -> impl Into<RefOr<Schema>> {
    ArrayBuilder::new()
        .items(
            OneOfBuilder::new()
                .item(ObjectBuilder::new().schema_type(Type::String))
                .item(
                    ObjectBuilder::new()
                        .property(
                            "stream",
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .description(Some("1-32 characters; default `stdout`.")),
                        )
                        .property("line", ObjectBuilder::new().schema_type(Type::String))
                        .required("line"),
                ),
        )
        .max_items(Some(1000))
}

/// Append log lines.
#[utoipa::path(
    post,
    path = "/api/operations/{id}/logs",
    tag = "workers",
    description = "An external worker's log lines, appended in order (each gets the next \
        offset). Auth: role `service` or `admin`, or the operation's worker token in \
        `X-Worker-Token`.",
    params(("id" = String, Path, description = ID)),
    request_body = LogsBody,
    responses(
        (status = 200, description = "The operation after the report.", body = Operation),
        (status = 400, description = REPORT_400, body = ErrorBody),
        (status = 413, description = E413, body = ErrorBody),
        ReportRefusals,
    ),
    security(("bearer" = []), ("worker_token" = [])),
)]
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

/// The outcome of a successful operation.
#[derive(Deserialize, ToSchema)]
pub struct CompleteBody {
    /// Any JSON value: the operation's `result`.
    #[serde(default)]
    result: Option<Value>,
}

/// Complete an operation.
#[utoipa::path(
    post,
    path = "/api/operations/{id}/complete",
    tag = "workers",
    description = "The work succeeded: the operation becomes `completed` with the result. Auth: \
        role `service` or `admin`, or the operation's worker token in `X-Worker-Token`.",
    params(("id" = String, Path, description = ID)),
    request_body = CompleteBody,
    responses(
        (status = 200, description = "The completed operation.", body = Operation),
        (status = 400, description = REPORT_400, body = ErrorBody),
        (status = 413, description = REPORT_413, body = ErrorBody),
        ReportRefusals,
    ),
    security(("bearer" = []), ("worker_token" = [])),
)]
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

/// Why the work failed.
#[derive(Deserialize, ToSchema)]
pub struct FailBody {
    #[serde(default)]
    #[schema(schema_with = fail_error_schema)]
    error: Value,
}

/// `error`: `{code, message}` (code 1-64 characters, default `failed`; message at most 4096)
/// or a plain message.
fn fail_error_schema() -> impl Into<RefOr<Schema>> {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(
            ObjectBuilder::new()
                .property(
                    "code",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .description(Some("1-64 characters; default `failed`.")),
                )
                .property(
                    "message",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .max_length(Some(4096)),
                ),
        )
}

/// Fail an operation.
#[utoipa::path(
    post,
    path = "/api/operations/{id}/fail",
    tag = "workers",
    description = "The work failed: the operation becomes `failed` with the worker's error. \
        Auth: role `service` or `admin`, or the operation's worker token in `X-Worker-Token`.",
    params(("id" = String, Path, description = ID)),
    request_body = FailBody,
    responses(
        (status = 200, description = "The failed operation.", body = Operation),
        (status = 400, description = "`missing_field` (no `error`), `invalid_field` (its \
            code or message too long), `invalid_json` or `bad_request`.", body = ErrorBody),
        (status = 413, description = E413, body = ErrorBody),
        ReportRefusals,
    ),
    security(("bearer" = []), ("worker_token" = [])),
)]
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Start after this log offset (a `Last-Event-ID` header wins).
    pub(super) after: Option<u64>,
}

/// `GET /api/operations/{id}/events`: the status now, the log lines after `Last-Event-ID` (or
/// `?after=`), then live events; ends after the terminal event. Event ids are log offsets, so
/// `EventSource` resumes exactly. Reconnecting after the end gets 204, which stops
/// `EventSource` from retrying.
#[utoipa::path(
    get,
    path = "/api/operations/{id}/events",
    tag = "operations",
    summary = "Follow an operation (Server-Sent Events)",
    description = "A `text/event-stream`: the status now, the log lines after `Last-Event-ID` \
        (or `after`), then live events (docs/operations.md); ends after the terminal event. \
        Event ids are log offsets, so `EventSource` resumes exactly. Auth: a caller who may see \
        the operation, or a watch ticket for it (`?ticket=`).",
    params(
        ("id" = String, Path, description = ID),
        EventsQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "The last event seen: a log offset."),
    ),
    responses(
        (status = 200, description = "The stream.", content_type = "text/event-stream", body = String),
        (status = 204, description = "Resumed after the end: nothing more will come (stops \
            `EventSource` from retrying)."),
        (status = 400, description = "`invalid_field` (`Last-Event-ID` is not an offset) or \
            `bad_request` (a malformed query).", body = ErrorBody),
        (status = 401, description = E401_TICKET, body = ErrorBody),
        (status = 403, description = "`forbidden`: the `Origin` is not allowed.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such operation, or the caller may not \
            see it.", body = ErrorBody),
        (status = 429, description = "`too_many_connections`: over the per-address connection \
            limits (`SWITCHYARD_MAX_CONNECTIONS_PER_IP`, `SWITCHYARD_NEW_CONNECTIONS_PER_IP`), or \
            the user's (`SWITCHYARD_MAX_CONNECTIONS_PER_USER`).",
            body = ErrorBody),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = []), ("ticket" = [])),
)]
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
    let slot = state
        .admit(&req)?
        .with_user(state.admit_user(Some(&caller.identity))?);
    let outbox = state.outbox(Framing::Raw);
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
#[utoipa::path(
    get,
    path = "/api/operations/{id}/ws",
    tag = "operations",
    summary = "Follow an operation (WebSocket)",
    description = "A WebSocket (the request is an upgrade): the full status as a JSON text \
        message on connect and on every change; closes normally (1000) after the terminal \
        status. Auth: a caller who may see the operation, or a watch ticket for it \
        (`?ticket=`).",
    params(("id" = String, Path, description = ID)),
    responses(
        (status = 101, description = "Switched to WebSocket; each message is an `Operation`."),
        (status = 400, description = "`bad_request`: not a WebSocket upgrade, or a malformed \
            query.", body = ErrorBody),
        (status = 401, description = E401_TICKET, body = ErrorBody),
        (status = 403, description = "`forbidden`: the `Origin` is not allowed.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such operation, or the caller may not \
            see it.", body = ErrorBody),
        (status = 429, description = "`too_many_connections`: over the per-address connection \
            limits, or the user's (`SWITCHYARD_MAX_CONNECTIONS_PER_USER`).", body = ErrorBody),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = []), ("ticket" = [])),
)]
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
    let slot = state
        .admit(&req)?
        .with_user(state.admit_user(Some(&caller.identity))?);
    let settings = &state.settings;
    let outbox = state.outbox(Framing::WebSocket);
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
