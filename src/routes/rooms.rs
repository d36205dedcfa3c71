//! Room endpoints: publish, list, presence, history.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use super::openapi::{ErrorBody, E401, E413, E429_PUBLISH, E503};
use super::{room_name, Caller};
use crate::auth::UserInfo;
use crate::broker::{new_message_id, Envelope, Retain, RoomInfo};
use crate::error::{AppError, ErrorCode};
use crate::state::AppState;

/// A message for one room.
#[derive(Deserialize, ToSchema)]
pub struct PublishBody {
    /// The event name: 1-128 characters without control characters.
    event: String,
    /// Any JSON value (absent: `null`), nested at most 64 levels deep.
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    data: Option<Box<RawValue>>,
    /// `true`: keep it as the room's retained message; `"event"`: as the last one of its event
    /// name. Every joiner that does not resume gets what is retained first (an app's latest
    /// stats and status for its dashboard, say).
    #[serde(default)]
    retain: Retain,
}

/// `POST /api/rooms/publish`: one message into several rooms.
#[derive(Deserialize, ToSchema)]
pub struct PublishManyBody {
    /// The rooms, 1 to `SWITCHYARD_PUBLISH_MAX_ROOMS` of them (a room named twice gets the
    /// message once).
    rooms: Vec<String>,
    /// The event name: 1-128 characters without control characters.
    event: String,
    /// Any JSON value (absent: `null`).
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    retain: Retain,
}

/// Where a published message took its place in a room.
#[derive(Serialize, ToSchema)]
struct Published<'a> {
    room: &'a str,
    /// The message's offset in the room's order (history and resume count in it).
    offset: u64,
}

/// The room in the path.
const ROOM: &str = "A room name: 1-128 characters of A-Z a-z 0-9 : _ . -";

/// Publish one message into a room.
#[utoipa::path(
    post,
    path = "/api/rooms/{room}/publish",
    tag = "rooms",
    description = "Publishes a message to the room's members, in the room's order, as a \
        publish over `/ws` or Socket.IO would (the same checks and per-user budget). Answered \
        once the message has its place. Auth: a token whose `publish` patterns match the room, \
        or role `service` or `admin`.",
    params(("room" = String, Path, description = ROOM)),
    request_body = PublishBody,
    responses(
        (status = 200, description = "Published.", body = Published),
        (status = 400, description = "`invalid_room`, `invalid_field` (the event name, `data` \
            nested too deep), `invalid_json` or `bad_request` (not a JSON body).", body = ErrorBody),
        (status = 401, description = E401, body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller may not publish to this room; or \
            the `Origin` is not allowed.", body = ErrorBody),
        (status = 413, description = E413, body = ErrorBody),
        (status = 429, description = E429_PUBLISH, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn publish(
    caller: Caller,
    path: web::Path<String>,
    body: web::Json<PublishBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let room = room_name(&path)?;
    caller.identity.require(
        caller.identity.may_publish(&room),
        &format!("publish to {room}"),
    )?;
    // The same per-user budget as a publish over `/ws` or Socket.IO.
    state.take_user_publish(&caller.identity.user.id)?;
    let body = body.into_inner();
    let data = checked_payload(&body.event, body.data)?;
    let offset = state
        .broker
        .publish(Envelope {
            from: caller.from_user(),
            retain: body.retain,
            ..Envelope::new(room.clone(), body.event, data)
        })
        .await?
        .offset;
    Ok(HttpResponse::Ok().json(Published {
        room: &room,
        offset,
    }))
}

/// A publish's event name and payload, checked as every publish checks them.
fn checked_payload(event: &str, data: Option<Box<RawValue>>) -> Result<Box<RawValue>, AppError> {
    if !crate::names::valid_event_name(event) {
        return Err(AppError::new(
            ErrorCode::InvalidField,
            "field `event` must be 1-128 characters without control characters",
        ));
    }
    crate::protocol::check_depth(data.as_deref(), "data")?;
    match data {
        Some(d) => Ok(d),
        None => RawValue::from_string("null".into()).map_err(|e| AppError::Internal(e.into())),
    }
}

/// Where a message published into several rooms took its place in each.
#[derive(Serialize, ToSchema)]
struct PublishedMany<'a> {
    /// The message's place in each room, in the order the rooms were named.
    rooms: Vec<Published<'a>>,
    /// The id every room's copy carries (`message_id`); absent for a single room.
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
}

/// `POST /api/rooms/publish` `{rooms: [...], event, data, retain}`: one message into several
/// rooms (Socket.IO's `io.to([a, b]).emit`). Each room orders and keeps its copy as if it
/// were published there alone; a connection in several of the rooms gets it once (the copies
/// share a `message_id`, docs/protocol.md). The caller must be allowed to publish to every
/// room; one publish of the per-user budget. Answered once every room has it in its order.
#[utoipa::path(
    post,
    path = "/api/rooms/publish",
    tag = "rooms",
    summary = "Publish one message into several rooms",
    description = "One message into each named room (Socket.IO's `io.to([a, b]).emit`): each \
        room orders and keeps its copy as if it were published there alone; a connection in \
        several of the rooms gets it once (the copies share a `message_id`). One publish of the \
        per-user budget. Auth: the caller must be allowed to publish to every room (`publish` \
        patterns, or role `service` or `admin`).",
    request_body = PublishManyBody,
    responses(
        (status = 200, description = "Published into every room.", body = PublishedMany),
        (status = 400, description = "`invalid_field` (`rooms` empty or over \
            `SWITCHYARD_PUBLISH_MAX_ROOMS`, the event name, `data` nested too deep), \
            `invalid_room`, `invalid_json` or `bad_request`.", body = ErrorBody),
        (status = 401, description = E401, body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller may not publish to one of the \
            rooms; or the `Origin` is not allowed.", body = ErrorBody),
        (status = 413, description = E413, body = ErrorBody),
        (status = 429, description = E429_PUBLISH, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn publish_many(
    caller: Caller,
    body: web::Json<PublishManyBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let max = state.settings.publish_max_rooms;
    if body.rooms.is_empty() || body.rooms.len() > max {
        return Err(AppError::new(
            ErrorCode::InvalidField,
            format!("field `rooms` must name 1-{max} rooms"),
        ));
    }
    let mut rooms: Vec<String> = Vec::with_capacity(body.rooms.len());
    for r in &body.rooms {
        let room = room_name(r)?;
        caller.identity.require(
            caller.identity.may_publish(&room),
            &format!("publish to {room}"),
        )?;
        // A room named twice still gets the message once.
        if !rooms.contains(&room) {
            rooms.push(room);
        }
    }
    state.take_user_publish(&caller.identity.user.id)?;
    let data = checked_payload(&body.event, body.data)?;
    let message_id = (rooms.len() > 1).then(new_message_id);
    // Every publish takes its place in its room's order when called (the broker's contract),
    // so the rooms get it at once and the answers are awaited together.
    let from = caller.from_user();
    let sent: Vec<_> = rooms
        .iter()
        .map(|room| {
            state.broker.publish(Envelope {
                from: from.clone(),
                retain: body.retain,
                message_id: message_id.clone(),
                ..Envelope::new(room.clone(), body.event.clone(), data.clone())
            })
        })
        .collect();
    let positions = futures_util::future::join_all(sent).await;
    let mut out = Vec::with_capacity(rooms.len());
    for (room, position) in rooms.iter().zip(positions) {
        out.push(Published {
            room,
            offset: position?.offset,
        });
    }
    Ok(HttpResponse::Ok().json(PublishedMany {
        rooms: out,
        message_id: message_id.as_deref(),
    }))
}

/// The rooms that exist now (on every node).
#[derive(Serialize, ToSchema)]
struct RoomList {
    rooms: Vec<RoomInfo>,
}

/// List the rooms.
#[utoipa::path(
    get,
    path = "/api/rooms",
    operation_id = "list_rooms",
    tag = "rooms",
    description = "Every room with its members, users and position, sorted by name. Auth: role \
        `admin`.",
    responses(
        (status = 200, description = "The rooms.", body = RoomList),
        (status = 401, description = E401, body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin; or the `Origin` is not \
            allowed.", body = ErrorBody),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list(caller: Caller, state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    caller
        .identity
        .require(caller.identity.may_manage(), "list rooms")?;
    let rooms = state.presence.rooms().await?;
    Ok(HttpResponse::Ok().json(RoomList { rooms }))
}

/// Who is in a room.
#[derive(Serialize, ToSchema)]
struct Presence {
    room: String,
    /// Each user once, however many connections they have in the room.
    presence: Vec<UserInfo>,
}

/// A room's presence.
#[utoipa::path(
    get,
    path = "/api/rooms/{room}/presence",
    tag = "rooms",
    description = "The users in the room now (an empty list for a room nobody is in). Auth: a \
        token whose `rooms` patterns match the room, or role `admin`.",
    params(("room" = String, Path, description = ROOM)),
    responses(
        (status = 200, description = "The room's users.", body = Presence),
        (status = 400, description = "`invalid_room`.", body = ErrorBody),
        (status = 401, description = E401, body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller may not join this room; or the \
            `Origin` is not allowed.", body = ErrorBody),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn presence(
    caller: Caller,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let room = room_name(&path)?;
    caller
        .identity
        .require(caller.identity.may_join(&room), &format!("see {room}"))?;
    let users = state
        .presence
        .presence(room.clone())
        .await?
        .unwrap_or_default();
    Ok(HttpResponse::Ok().json(Presence {
        room,
        presence: users,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// The offset the client has seen: only messages after it (absent: all that is kept).
    after: Option<u64>,
}

/// What a room has kept, after an offset.
#[derive(Serialize, ToSchema)]
struct HistoryBody<'a> {
    room: &'a str,
    /// The room's epoch (its order's identity); none for a room that has kept nothing.
    epoch: Option<String>,
    /// The room's latest offset.
    offset: u64,
    /// True when every message after `after` is included.
    complete: bool,
    /// The messages, oldest first, each as the `message` frame of `/ws` (docs/protocol.md).
    #[schema(value_type = Vec<Object>)]
    messages: Vec<Box<RawValue>>,
}

/// A room's history.
#[utoipa::path(
    get,
    path = "/api/rooms/{room}/history",
    tag = "rooms",
    description = "The messages the room has kept (bounded by the `SWITCHYARD_HISTORY_*` \
        settings) after `after`. Auth: a token whose `rooms` patterns match the room, or role \
        `admin`.",
    params(("room" = String, Path, description = ROOM), HistoryQuery),
    responses(
        (status = 200, description = "The kept messages.", body = HistoryBody),
        (status = 400, description = "`invalid_room`, or `bad_request` (a malformed query).",
            body = ErrorBody),
        (status = 401, description = E401, body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller may not join this room; or the \
            `Origin` is not allowed.", body = ErrorBody),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn history(
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<HistoryQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let room = room_name(&path)?;
    caller
        .identity
        .require(caller.identity.may_join(&room), &format!("see {room}"))?;
    let page = state.history.history(room.clone(), query.after).await?;
    let body = match page {
        None => HistoryBody {
            room: &room,
            epoch: None,
            offset: 0,
            complete: query.after.unwrap_or(0) == 0,
            messages: Vec::new(),
        },
        Some(p) => HistoryBody {
            room: &room,
            epoch: Some(p.epoch),
            offset: p.offset,
            complete: p.complete,
            messages: p
                .messages
                .iter()
                .filter_map(|b| {
                    String::from_utf8(b.to_vec())
                        .ok()
                        .and_then(|s| RawValue::from_string(s).ok())
                })
                .collect(),
        },
    };
    Ok(HttpResponse::Ok().json(body))
}
