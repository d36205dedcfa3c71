//! The activity feed: `POST /api/activities` stores and broadcasts, `GET` pages backwards.

use actix_web::{http::header, web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use super::openapi::{ErrorBody, E401, E413, E429_PUBLISH, E503};
use super::{next_before, page_limit, Caller};
use crate::broker::{new_message_id, Envelope};
use crate::db::activities::{self, Activity, NewActivity};
use crate::error::{AppError, ErrorCode};
use crate::state::AppState;

/// The global feed's room.
pub const ACTIVITY_ROOM: &str = "activity";

/// A new activity: "`actor` `verb` `object`", in a project or not.
#[derive(Deserialize, ToSchema)]
pub struct NewActivityBody {
    /// The project it belongs to (also published into `project:<project>`).
    project: Option<String>,
    /// 1-256 characters.
    actor: String,
    /// 1-128 characters.
    verb: String,
    /// 1-1024 characters.
    object: Option<String>,
    /// Any JSON value, nested at most 64 levels deep.
    #[schema(value_type = Option<Value>)]
    data: Option<Box<RawValue>>,
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), AppError> {
    if value.is_empty() || value.len() > max {
        return Err(AppError::new(
            ErrorCode::InvalidField,
            format!("field `{field}` must be 1-{max} characters"),
        ));
    }
    Ok(())
}

fn project_room(project: &str) -> Result<String, AppError> {
    Ok(crate::names::project_room(project)?)
}

/// Post an activity.
#[utoipa::path(
    post,
    path = "/api/activities",
    operation_id = "create_activity",
    tag = "activities",
    description = "Stores the activity (committed before the answer: a 201 survives a crash), \
        then publishes it as `activity.created` into the `activity` room and, with a project, \
        `project:<project>` (a socket in both gets it once). One publish of the per-user \
        budget. Auth: role `service` or `admin`.",
    request_body = NewActivityBody,
    responses(
        (status = 201, description = "Stored.", body = Activity,
            headers(("Location" = String, description = "A page of the feed starting with it."))),
        (status = 400, description = "`invalid_field` (a field's length, the project name, \
            `data` nested too deep), `invalid_json` or `bad_request`.", body = ErrorBody),
        (status = 401, description = E401, body = ErrorBody),
        (status = 403, description = "`forbidden`: not a service or an admin; or the `Origin` \
            is not allowed.", body = ErrorBody),
        (status = 413, description = E413, body = ErrorBody),
        (status = 429, description = E429_PUBLISH, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create(
    caller: Caller,
    body: web::Json<NewActivityBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    caller
        .identity
        .require(caller.identity.may_post_activity(), "post activities")?;
    // An activity is published like a message: the same per-user budget.
    state.take_user_publish(&caller.identity.user.id)?;
    let body = body.into_inner();
    check_len("actor", &body.actor, 256)?;
    check_len("verb", &body.verb, 128)?;
    if let Some(o) = &body.object {
        check_len("object", o, 1024)?;
    }
    let project_room = body.project.as_deref().map(project_room).transpose()?;
    crate::protocol::check_depth(body.data.as_deref(), "data")?;
    let new = NewActivity {
        project: body.project,
        actor: body.actor,
        verb: body.verb,
        object: body.object,
        data: body.data.map(|d| d.get().to_string()),
        created_at: crate::util::now_millis(),
    };
    // Stored first (committed, through the single writer): what the feed broadcasts is always
    // what a later page will show, and a 201 means the activity survives a crash.
    let row = state
        .ops
        .writer
        .write(move |conn| activities::insert(conn, &new))
        .await?;
    let activity = Activity::from(row);
    let json = serde_json::to_string(&activity).map_err(|e| AppError::Internal(e.into()))?;
    // The global feed and the project's room get one message: a socket in both (a project
    // page that also shows the feed) gets it once (the copies share a `message_id`).
    let message_id = project_room.is_some().then(new_message_id);
    let rooms = std::iter::once(ACTIVITY_ROOM.to_string()).chain(project_room);
    let mut sent = Vec::with_capacity(2);
    for room in rooms {
        let data = RawValue::from_string(json.clone()).map_err(|e| AppError::Internal(e.into()))?;
        // Each takes its place in its room's order when called: both are ordered before the
        // first answer is awaited.
        sent.push(state.broker.publish(Envelope {
            from: caller.from_user(),
            message_id: message_id.clone(),
            ..Envelope::new(room, "activity.created", data)
        }));
    }
    for publish in sent {
        if let Err(e) = publish.await {
            // Stored but not broadcast: clients still see it on their next page load.
            log::warn!("activity {} stored but not broadcast: {e}", activity.id);
        }
    }
    log::info!(
        "activity {} created ({} {})",
        activity.id,
        activity.actor,
        activity.verb
    );
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("/api/activities?before={}", activity.id + 1),
        ))
        .body(json))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// One project's feed (absent: the global feed).
    project: Option<String>,
    /// Only activities with a smaller id: the previous page's `next_before`.
    before: Option<i64>,
    /// Page size, 1-500 (default 50).
    limit: Option<i64>,
}

/// A page of the feed, newest first.
#[derive(Serialize, ToSchema)]
struct ActivityPage {
    activities: Vec<Activity>,
    /// `before` for the next (older) page; null on the last page.
    next_before: Option<i64>,
}

/// Read the activity feed.
#[utoipa::path(
    get,
    path = "/api/activities",
    operation_id = "list_activities",
    tag = "activities",
    description = "A page of the global feed or of one project's, newest first. Auth: a token \
        whose `rooms` patterns match `activity` (or `project:<project>`), or role `admin`.",
    params(ListQuery),
    responses(
        (status = 200, description = "A page.", body = ActivityPage),
        (status = 400, description = "`invalid_field` (`limit`, the project name) or \
            `bad_request` (a malformed query).", body = ErrorBody),
        (status = 401, description = E401, body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller may not read this feed; or the \
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
    let room = match &q.project {
        Some(p) => project_room(p)?,
        None => ACTIVITY_ROOM.to_string(),
    };
    caller
        .identity
        .require(caller.identity.may_join(&room), &format!("read {room}"))?;
    let limit = page_limit(q.limit, 50, 500)?;
    let project = q.project.clone();
    let rows = state
        .db
        .run(move |conn| activities::page(conn, project.as_deref(), q.before, limit))
        .await?;
    let next_before = next_before(&rows, limit, |r| r.id);
    let items: Vec<Activity> = rows.into_iter().map(Activity::from).collect();
    Ok(HttpResponse::Ok().json(ActivityPage {
        activities: items,
        next_before,
    }))
}
