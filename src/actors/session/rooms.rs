//! Rooms of a [`Session`]: join (through the broker, or for `operation:<id>` through the
//! operation, which hands the broker its backfill ahead of live events), leave, the rooms a
//! refreshed token no longer grants, and eviction by a room.
//!
//! In: `join` and `leave` requests, [`Evicted`] from a room, [`WatchJoined`] (a watch's room
//! position, with connection-state recovery). Out: [`JoinRoom`] and
//! [`LeaveRoom`] to the broker, [`WatchOperation`] to the operation manager; `left` replies
//! (the join's answer comes from the room itself, ahead of its live traffic).

use actix::prelude::*;
use actix_http::ws::CloseCode;

use super::Session;
use crate::actors::operation_manager::{WatchJoined, WatchOperation};
use crate::actors::room::{JoinRoom, LeaveRoom, CLOSE_SLOW_CONSUMER};
use crate::actors::Evicted;
use crate::auth::Identity;
use crate::error::{ErrorCode, Refusal};
use crate::protocol::{Reply, RequestId, Since};

impl Session {
    /// `join`: checks the caller may join and has room for one more, then asks the broker (or
    /// the operation). Waits for the answer (`wait`): this session publishes nothing to the room
    /// before its lane is back (see `publish`).
    pub(super) fn join(
        &mut self,
        id: Option<RequestId>,
        room: String,
        since: Option<Since>,
        log_offset: Option<u64>,
        identity: Identity,
        ctx: &mut Context<Self>,
    ) {
        if !identity.may_join(&room) {
            let r = Refusal::new(ErrorCode::Forbidden, format!("you may not join {room}"));
            return self.refuse(ctx, id.as_deref(), r);
        }
        let max = self.deps.settings.max_rooms_per_connection;
        if max > 0 && self.rooms.len() >= max && !self.rooms.contains_key(&room) {
            let r = Refusal::new(
                ErrorCode::TooManyRooms,
                format!("a connection may be in at most {max} rooms"),
            );
            return self.refuse(ctx, id.as_deref(), r);
        }
        if let Some(op_id) = room.strip_prefix("operation:") {
            return self.watch_operation(op_id.to_string(), room, log_offset, id, &identity, ctx);
        }
        let asked = since.clone();
        let msg = JoinRoom {
            room: room.clone(),
            member: self.member(ctx, &identity),
            since,
            request_id: id.clone(),
            backfill: None,
            backfill_complete: false,
            after: None,
        };
        // Direct: this session has nothing on its way into the room through the broker (it
        // publishes through its lane and waits for its leaves).
        self.deps
            .broker
            .join_direct(msg)
            .into_actor(self)
            .map(move |res, act, ctx| match res {
                Ok(joined) => {
                    act.note_joined(&room, asked, &joined);
                    act.rooms.insert(room, joined.lane);
                }
                Err(refusal) => act.refuse(ctx, id.as_deref(), refusal),
            })
            .wait(ctx);
    }

    /// `leave`: refused for a room this session is not in; answered once the room let go.
    pub(super) fn leave(&mut self, id: Option<RequestId>, room: String, ctx: &mut Context<Self>) {
        self.forget_position(&room);
        if self.rooms.remove(&room).is_none() {
            let r = Refusal::new(ErrorCode::NotMember, format!("not a member of {room}"));
            return self.refuse(ctx, id.as_deref(), r);
        }
        self.deps
            .broker
            .leave(LeaveRoom {
                room: room.clone(),
                session: self.id,
            })
            .into_actor(self)
            .map(move |res, act, ctx| match res {
                Ok(()) => act.reply(id.as_deref(), Reply::Left { room: &room }),
                Err(refusal) => act.refuse(ctx, id.as_deref(), refusal),
            })
            .wait(ctx);
    }

    /// Joining `operation:<id>`: the operation actor sends the join with the status snapshot and
    /// the missed log lines ahead of live events.
    fn watch_operation(
        &mut self,
        op_id: String,
        room: String,
        log_offset: Option<u64>,
        id: Option<RequestId>,
        identity: &Identity,
        ctx: &mut Context<Self>,
    ) {
        // Recorded before the join is sent, so a disconnect meanwhile still leaves the room.
        self.rooms.insert(room.clone(), None);
        let log_offset = log_offset.unwrap_or(0);
        // With connection-state recovery the session learns the room's position (`WatchJoined`)
        // and remembers the watch, to resume the room after a drop (`recovery.rs`).
        let joined_to = self.recovery.as_mut().map(|recovery| {
            recovery.watched.insert(room.clone(), log_offset);
            ctx.address().recipient()
        });
        let msg = WatchOperation {
            id: op_id,
            member: self.member(ctx, identity),
            log_offset,
            request_id: id.clone(),
            joined_to,
        };
        self.deps
            .operations
            .send(msg)
            .into_actor(self)
            .map(move |res, act, ctx| {
                let refusal = match res {
                    Ok(Ok(())) => return,
                    Ok(Err(r)) => r,
                    Err(e) => Refusal::new(
                        ErrorCode::Unavailable,
                        format!("operations unavailable: {e}"),
                    ),
                };
                act.rooms.remove(&room);
                act.forget_position(&room);
                act.refuse(ctx, id.as_deref(), refusal);
            })
            .wait(ctx);
    }

    /// A refreshed token can grant fewer rooms than the one the session joined with: the
    /// session leaves every room the new token no longer lets it join, and tells the client
    /// with an unsolicited `left` frame per room.
    pub(super) fn leave_revoked_rooms(&mut self, fresh: &Identity, ctx: &mut Context<Self>) {
        let revoked: Vec<String> = self
            .rooms
            .keys()
            .filter(|room| !fresh.may_join(room))
            .cloned()
            .collect();
        for room in revoked {
            self.rooms.remove(&room);
            self.forget_position(&room);
            log::info!(
                "session {}: left {room}: the refreshed token of {} does not grant it",
                self.key,
                fresh.user.id
            );
            self.reply(None, Reply::Left { room: &room });
            // The membership is already gone on this side, and a broker that is down has no
            // room to leave: the answer does not matter, but it is waited for (`wait`), as for
            // a `leave`, so that a later join of this room (a later token may grant it again)
            // cannot reach the room before this leave does (`Broker::join_direct`).
            self.deps
                .broker
                .leave(LeaveRoom {
                    room,
                    session: self.id,
                })
                .into_actor(self)
                .map(|_, _, _| ())
                .wait(ctx);
        }
    }
}

impl Handler<WatchJoined> for Session {
    type Result = ();

    /// A watch was answered: where the client stands in the operation's room, for recovery. A
    /// recovered socket's watch that could not give every line it missed breaks the CONNECT's
    /// promise: the connection is closed, as for any room that cannot resume (`recovery.rs`).
    fn handle(&mut self, msg: WatchJoined, ctx: &mut Context<Self>) {
        if !self.rooms.contains_key(&msg.room) {
            return; // left (or refused) meanwhile
        }
        self.note_joined(&msg.room, None, &msg.joined);
        let restoring = self
            .recovery
            .as_mut()
            .is_some_and(|r| r.restoring.remove(&msg.room));
        if restoring && !msg.joined.recovered {
            log::warn!(
                "socket.io socket {}: {} could not give every line missed; closing",
                self.key,
                msg.room
            );
            self.close(ctx, CloseCode::Away, "connection state lost");
        }
    }
}

impl Handler<Evicted> for Session {
    type Result = ();

    fn handle(&mut self, msg: Evicted, ctx: &mut Context<Self>) {
        self.rooms.remove(&msg.room);
        self.forget_position(&msg.room);
        log::warn!(
            "session {}: evicted from {} ({:?})",
            self.key,
            msg.room,
            msg.reason
        );
        self.close(ctx, CloseCode::Other(CLOSE_SLOW_CONSUMER), "slow consumer");
    }
}
