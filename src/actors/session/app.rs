//! A Socket.IO namespace's app profile in a [`Session`] (docs/profiles.md): an app's event
//! ([`AppEvent`]) mapped onto the same requests Switchyard's own events make, then handled as
//! any request is; and what a socket gets as it connects.
//!
//! In: [`AppEvent`] from the Engine.IO session. Out: whatever the mapped requests do.

use crate::util::VecMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;

use super::{AppEvent, Session};
use crate::broker::local::RoomLog;
use crate::protocol::profile::SocketView;
use crate::protocol::{Request, Wire};

/// What a profile's mapping may read of a session.
struct View<'a> {
    user: &'a str,
    rooms: &'a VecMap<String, Option<Arc<RoomLog>>>,
    started: Option<&'a HashMap<String, String>>,
}

impl SocketView for View<'_> {
    fn user(&self) -> &str {
        self.user
    }
    fn rooms(&self) -> Vec<&str> {
        self.rooms.keys().map(String::as_str).collect()
    }
    fn started(&self, kind: &str) -> Option<&str> {
        self.started?.get(kind).map(String::as_str)
    }
}

impl Handler<AppEvent> for Session {
    type Result = ();

    fn handle(&mut self, msg: AppEvent, ctx: &mut Context<Self>) {
        self.last_seen = Instant::now();
        self.deps.metrics.messages_in.inc();
        let Some(profile) = self.profile.clone() else {
            return;
        };
        let view = View {
            user: self.user_id(),
            rooms: &self.rooms,
            started: self.remembered.as_ref().map(|r| &r.started_ops),
        };
        if let Some(call) = profile.rpc(&msg.name, &msg.args, &view) {
            return match call {
                Ok(call) => self.rpc(msg.id, call, ctx),
                Err(refusal) => self.refuse(ctx, msg.id.as_deref(), refusal),
            };
        }
        let Some(mapped) = profile.requests(&msg.name, &msg.args, msg.attachments, &view) else {
            return;
        };
        match mapped {
            Ok(mut requests) => {
                // Several publishes from one app event (`publish_to_joined`) are one message
                // in several rooms, Socket.IO's `io.to([a, b]).emit`: they share an id, so a
                // socket in more than one of the rooms gets it once (`broker::dedupe`).
                let publishes = requests
                    .iter()
                    .filter(|r| matches!(r, Request::Publish { .. }))
                    .count();
                if publishes > 1 {
                    let shared = crate::broker::new_message_id();
                    for r in &mut requests {
                        if let Request::Publish { message_id, .. } = r {
                            *message_id = Some(shared.clone());
                        }
                    }
                }
                let mut id = msg.id;
                for request in requests {
                    let identity = self.identity.clone();
                    // The ack answers the first request (a publish into several joined rooms
                    // is acknowledged once).
                    self.dispatch(id.take(), request, identity, ctx);
                }
            }
            Err(refusal) => self.refuse(ctx, msg.id.as_deref(), refusal),
        }
    }
}

impl Session {
    /// What the namespace's app profile gives a socket as it connects: its events first, then
    /// its rooms (whose joins deliver their retained messages, e.g. the latest stats). A
    /// recovered socket (`restored`) gets the events but is already in its rooms, with what it
    /// missed: joining them again would repeat their retained messages.
    pub(super) fn profile_connect(&mut self, restored: bool, ctx: &mut Context<Self>) {
        let (Some(profile), Some(identity)) = (self.profile.clone(), self.identity.clone()) else {
            return;
        };
        let Wire::SocketIo(nsp, ..) = &self.wire else {
            return;
        };
        let user = identity.user.id.clone();
        for (event, data) in profile.connect_emits(&user) {
            self.send(crate::protocol::sio::emit(nsp, event, &data));
        }
        if restored {
            return;
        }
        for room in profile.connect_rooms(&user) {
            self.join(None, room, None, None, identity.clone(), ctx);
        }
    }
}
