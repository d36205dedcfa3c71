//! Room endpoints: publish, list, presence, history.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{room_name, Caller};
use crate::broker::Envelope;
use crate::error::{AppError, ErrorCode};
use crate::state::AppState;

#[derive(Deserialize)]
pub struct PublishBody {
    event: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    /// Keep it as the room's retained message: every joiner that does not resume gets it
    /// first (an app's latest stats for its dashboard, say).
    #[serde(default)]
    retain: bool,
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
    if !crate::names::valid_event_name(&body.event) {
        return Err(AppError::new(
            ErrorCode::InvalidField,
            "field `event` must be 1-128 characters without control characters",
        ));
    }
    crate::protocol::check_depth(body.data.as_deref(), "data")?;
    let data = match body.data {
        Some(d) => d,
        None => RawValue::from_string("null".into()).map_err(|e| AppError::Internal(e.into()))?,
    };
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
