//! Room endpoints: publish, list, presence, history.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{room_name, Caller};
use crate::broker::{new_message_id, Envelope, Retain};
use crate::error::{AppError, ErrorCode};
use crate::state::AppState;

#[derive(Deserialize)]
pub struct PublishBody {
    event: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    /// `true`: keep it as the room's retained message; `"event"`: as the last one of its event
    /// name. Every joiner that does not resume gets what is retained first (an app's latest
    /// stats and status for its dashboard, say).
    #[serde(default)]
    retain: Retain,
}

/// `POST /api/rooms/publish`: one message into several rooms.
#[derive(Deserialize)]
pub struct PublishManyBody {
    rooms: Vec<String>,
    event: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    retain: Retain,
}

#[derive(Serialize)]
struct Published<'a> {
    room: &'a str,
    offset: u64,
}

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

#[derive(Serialize)]
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

pub async fn list(caller: Caller, state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    caller
        .identity
        .require(caller.identity.may_manage(), "list rooms")?;
    let rooms = state.presence.rooms().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "rooms": rooms })))
}

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
    Ok(HttpResponse::Ok().json(serde_json::json!({ "room": room, "presence": users })))
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    after: Option<u64>,
}

#[derive(Serialize)]
struct HistoryBody<'a> {
    room: &'a str,
    epoch: Option<String>,
    offset: u64,
    /// True when every message after `after` is included.
    complete: bool,
    messages: Vec<Box<RawValue>>,
}

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
