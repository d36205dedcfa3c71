//! Publishing from a [`Session`]: the permission and rate checks, then the publish itself,
//! straight to the room when this session joined it through the registry and the broker allows
//! members to publish directly, else through the broker.
//!
//! In: `publish` requests. Out: [`Publish`] to the room or the broker; a `published` reply when
//! the request carried an id, a refusal otherwise.

use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;
use serde_json::value::RawValue;

use super::Session;
use crate::actors::room::Publish;
use crate::auth::Identity;
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
        let msg = Publish {
            room: room.clone(),
            event,
            data,
            from: Some(identity.user.clone()),
            retain: false,
            member_check: Some(self.id),
            received_at: Instant::now(),
            seq: None,
            attachments,
            conflate: false,
            direct: false,
        };
        // Not `wait`: publishes pipeline. Ordering is kept by the mailboxes (FIFO per
        // sender), not by waiting here. A member publishes straight to its room when
        // the broker allows (one hop instead of four through the registry); that
        // cannot overtake an earlier publish routed by the registry, because joins
        // `wait`: nothing of this session is routed to the room until the join answer
        // (and the room's address) is back, and from then on every publish to it is
        // direct, until it leaves.
        let direct = self
            .rooms
            .get(&room)
            .cloned()
            .flatten()
            .filter(|_| self.deps.broker.members_publish_directly());
        let sent: crate::broker::PublishFuture = match direct {
            Some(addr) => {
                let fut = addr.send(Publish {
                    direct: true,
                    ..msg
                });
                Box::pin(async move {
                    fut.await.unwrap_or_else(|_| {
                        Err(Refusal::new(ErrorCode::Unavailable, "room unavailable"))
                    })
                })
            }
            None => self.deps.broker.publish(msg),
        };
        sent.into_actor(self)
            .map(move |res, act, ctx| match res {
                Ok(offset) => {
                    if id.is_some() {
                        act.reply(
                            id.as_deref(),
                            Reply::Published {
                                room: &room,
                                offset,
                            },
                        );
                    }
                }
                Err(refusal) => act.refuse(ctx, id.as_deref(), refusal),
            })
            .spawn(ctx);
    }
}
