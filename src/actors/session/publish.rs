//! Publishing from a [`Session`]: the permission, membership and rate checks, then the publish
//! itself, through the room's lane when the join gave one, else through the broker.
//!
//! In: `publish` requests. Out: an [`Envelope`] to the lane or the broker; a `published` reply
//! when the request carried an id, a refusal otherwise.

use actix::prelude::*;
use bytes::Bytes;
use serde_json::value::RawValue;

use super::Session;
use crate::auth::Identity;
use crate::broker::{ConnectionRef, Envelope, Retain};
use crate::error::{ErrorCode, Refusal};
use crate::protocol::{Reply, RequestId};

/// A `publish` request's fields, moved out of [`crate::protocol::Request::Publish`].
pub(super) struct Publication {
    /// The room published to.
    pub room: String,
    /// The application's event name.
    pub event: String,
    /// The payload as raw JSON, copied once into the encoded message.
    pub data: Box<RawValue>,
    /// Socket.IO binary attachments; empty on `/ws`.
    pub attachments: Vec<Bytes>,
    /// Whether this session gets its own message (`false`: `socket.to(room).emit`).
    pub echo: bool,
    /// What the room keeps of it for joiners (`retain`).
    pub retain: Retain,
    /// The id it shares with the same message published into other rooms (one app event
    /// publishing into several rooms), for one delivery per socket.
    pub message_id: Option<std::sync::Arc<str>>,
}

impl Session {
    /// `publish`: may this user publish here, and not too fast; then the publish, pipelined
    /// (`spawn`, not `wait`), answered with its offset when the request carried an id.
    pub(super) fn publish(
        &mut self,
        id: Option<RequestId>,
        p: Publication,
        identity: Identity,
        ctx: &mut Context<Self>,
    ) {
        let Publication {
            room,
            event,
            data,
            attachments,
            echo,
            retain,
            message_id,
        } = p;
        if !identity.may_publish(&room) {
            let r = Refusal::new(
                ErrorCode::Forbidden,
                format!("you may not publish to {room}"),
            );
            return self.refuse(ctx, id.as_deref(), r);
        }
        if !self.publishes.try_take() || !self.deps.user_publishes.try_take(&identity.user.id) {
            let r = Refusal::new(
                ErrorCode::RateLimited,
                "publishing too fast; slow down and retry",
            );
            return self.refuse(ctx, id.as_deref(), r);
        }
        // Only a member may publish: the session knows its rooms (a publish to a room nobody
        // joined creates nothing). A member publishes through the lane its join gave it —
        // ordered there and handed to the room, one hop — or, without a lane, through the
        // broker. Either way the publish takes its place in the order now, so publishes
        // pipeline (`spawn`, not `wait`) and still keep their order: joins `wait`, so nothing
        // of this session reaches the room before its join answer is back.
        let Some(lane) = self.rooms.get(&room) else {
            let r = Refusal::new(
                ErrorCode::NotMember,
                format!("join {room} before publishing to it"),
            );
            return self.refuse(ctx, id.as_deref(), r);
        };
        let envelope = Envelope {
            from: Some(identity.user.clone()),
            connection: Some(self.key.as_str().into()),
            attachments,
            exclude: (!echo).then(|| ConnectionRef::local(self.id)),
            retain,
            message_id,
            ..Envelope::new(room.clone(), event, data)
        };
        let sent = match lane {
            // Without an id nothing is answered once the room has it: only a refusal, known
            // as the lane orders it. A room stopped right after ordering drops the message
            // unannounced (its members are told the room closed); an id asks to be told.
            Some(lane) if id.is_none() => {
                if let Err(refusal) = lane.publish_unanswered(envelope) {
                    self.refuse(ctx, None, refusal);
                }
                return;
            }
            Some(lane) => lane.publish(envelope),
            None => self.deps.broker.publish(envelope),
        };
        sent.into_actor(self)
            .map(move |res, act, ctx| match res {
                Ok(position) => {
                    if id.is_some() {
                        act.reply(
                            id.as_deref(),
                            Reply::Published {
                                room: &room,
                                offset: position.offset,
                            },
                        );
                    }
                }
                Err(refusal) => act.refuse(ctx, id.as_deref(), refusal),
            })
            .spawn(ctx);
    }
}
