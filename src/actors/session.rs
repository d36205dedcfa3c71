//! The native-protocol session actor: one per `/ws` connection.
//!
//! In: whole WebSocket messages from its [`WsReader`] (a stream), [`Evicted`] from rooms,
//! [`ServerShutdown`] from the registry. Out: [`JoinRoom`], [`LeaveRoom`], [`LeaveAll`] to the
//! registry, publishes through the [`Broker`](crate::broker::Broker); frames into its own outbox.
//!
//! Lifecycle and its undo: `started` registers with the registry and counts the connection;
//! `stopped` leaves every room, deregisters and uncounts. Any exit path (client close, heartbeat
//! timeout, eviction, shutdown, protocol violation) goes through `ctx.stop()`, so the undo always
//! runs exactly once.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_http::ws::CloseCode;
use bytes::Bytes;
use serde_json::value::RawValue;

use super::operation_manager::{
    CancelOperation, GetOperation, ReportAnswer, ReportOperation, ReportReply, StartError,
    StartOperation, WatchOperation,
};
use super::registry::{LeaveAll, SessionClosed, SessionOpened};
use super::room::{JoinRoom, LeaveRoom, Publish, Room, CLOSE_SLOW_CONSUMER};
use super::{Evicted, Member, ServerShutdown, SessionId};
use crate::auth::Identity;
use crate::error::{ErrorCode, Refusal};
use crate::limits::{ConnectionSlot, TokenBucket};
use crate::operations::Operation;
use crate::protocol::native::{self, Request, RequestId};
use crate::protocol::{Reply, Wire};
use crate::state::AppState;
use crate::transport::outbox::Outbox;
use crate::transport::ws::{FrameLimit, ReadError, WsMessage};

/// The window over which refused frames are counted for the error-flood limit.
const ERROR_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

pub struct Session {
    id: SessionId,
    /// The id clients see (`welcome.session`).
    key: String,
    /// `None` until the client authenticates (only when a secret is set and no header was sent).
    identity: Option<Identity>,
    /// Set when the identity came from an `Authorization` header at upgrade.
    header_auth: bool,
    outbox: Arc<Outbox>,
    /// Rooms this session is a member of (invariant: the room has this session as a member, or
    /// a leave for it is in flight), with the room's address where it was joined through the
    /// registry: this session's publishes go there directly. (Operation rooms are joined
    /// through their operation and carry none.)
    rooms: HashMap<String, Option<Addr<Room>>>,
    /// Last time anything arrived from the client; the heartbeat drops the session when this is
    /// older than the timeout.
    last_seen: Instant,
    error_window: (Instant, u32),
    /// How replies and room traffic are encoded for this client.
    wire: Wire,
    /// For Socket.IO sockets: the Engine.IO session that owns the connection.
    engine: Option<Recipient<SocketEnded>>,
    /// Publishes this connection may still make (see `SWITCHYARD_PUBLISH_RATE`).
    publishes: TokenBucket,
    /// This connection's place in the per-address count; freed when the session ends.
    slot: Option<ConnectionSlot>,
    /// Codes already logged for this session: a refusal is logged once per client, not per frame.
    logged_codes: u64,
    /// The bound on this connection's messages (`/ws` only): the unauthenticated bound until
    /// the first successful `auth`, then `SWITCHYARD_MAX_FRAME_BYTES`.
    frame_limit: Option<FrameLimit>,
    state: Arc<AppState>,
}

impl Session {
    pub fn new(
        id: SessionId,
        identity: Option<Identity>,
        outbox: Arc<Outbox>,
        state: Arc<AppState>,
    ) -> Self {
        let key = uuid::Uuid::new_v4().simple().to_string();
        let header_auth = identity.is_some() && !state.auth.open_mode();
        let identity = identity.or_else(|| {
            state
                .auth
                .open_mode()
                .then(|| Identity::open(format!("anon-{}", &key[..8]), None))
        });
        Self {
            id,
            key,
            identity,
            header_auth,
            outbox,
            rooms: HashMap::new(),
            last_seen: Instant::now(),
            error_window: (Instant::now(), 0),
            wire: Wire::Native,
            engine: None,
            publishes: TokenBucket::new(
                state.settings.publish_rate as f64,
                state.settings.publish_rate as f64 * 2.0,
            ),
            slot: None,
            logged_codes: 0,
            frame_limit: None,
            state,
        }
    }

    /// A Socket.IO socket: replies and room traffic go to `outbox` as Engine.IO packets of
    /// namespace `nsp`; the Engine.IO session handles liveness and feeds [`Inbound`] requests.
    pub fn socket_io(
        id: SessionId,
        identity: Identity,
        outbox: Arc<Outbox>,
        state: Arc<AppState>,
        nsp: Arc<str>,
        engine: Recipient<SocketEnded>,
    ) -> Self {
        let mut s = Self::new(id, Some(identity), outbox, state);
        s.wire = Wire::SocketIo(nsp);
        s.engine = Some(engine);
        s
    }

    /// Holds the connection's per-address slot for the session's lifetime.
    pub fn with_slot(mut self, slot: ConnectionSlot) -> Self {
        self.slot = Some(slot);
        self
    }

    /// The bound on the connection's messages, raised when the client authenticates.
    pub fn with_frame_limit(mut self, limit: FrameLimit) -> Self {
        self.frame_limit = Some(limit);
        self
    }

    /// Closes the session when its token expires, unless a fresh `auth` frame arrived meanwhile.
    fn schedule_expiry(&self, ctx: &mut Context<Self>) {
        let Some(exp) = self.identity.as_ref().and_then(|i| i.expires_at) else {
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let wait = std::time::Duration::from_secs(exp.saturating_sub(now));
        ctx.run_later(wait, move |act, ctx| {
            let current = act.identity.as_ref().and_then(|i| i.expires_at);
            if current != Some(exp) {
                return; // refreshed: the new token has its own timer
            }
            let r = Refusal::new(
                ErrorCode::TokenExpired,
                "your token expired; reconnect with a fresh one (or send a new auth frame before it expires)",
            );
            act.state.metrics.refused(r.code);
            log::info!("session {}: token expired, closing", act.key);
            act.reply(None, Reply::Error(&r));
            act.close(ctx, CloseCode::Policy, "token expired");
        });
    }

    fn send(&self, frame: Bytes) {
        // Replies to our own client: if the outbox is full the client is not reading, and the
        // next room push will evict it; dropping a reply here cannot stall anyone else.
        let _ = self.outbox.push_text(frame);
    }

    fn reply(&self, id: Option<&RawValue>, r: Reply) {
        if let Some(frame) = self.wire.reply(id, r) {
            self.send(frame);
        }
    }

    /// Ends this session. A native session owns its connection and closes it; a Socket.IO
    /// socket shares its connection with the other namespaces, so its Engine.IO session decides.
    fn close(&self, ctx: &mut Context<Self>, code: CloseCode, reason: &str) {
        match &self.engine {
            None => self.outbox.close(code, reason),
            Some(engine) => engine.do_send(SocketEnded {
                session: self.id,
                code,
                reason: reason.to_string(),
            }),
        }
        ctx.stop();
    }

    /// Answers a refused request with an `error` frame; closes the session on an error flood.
    fn refuse(&mut self, ctx: &mut Context<Self>, id: Option<&RawValue>, refusal: Refusal) {
        self.state.metrics.refused(refusal.code);
        let bit = 1u64 << (refusal.code.index() as u64 % 64);
        if self.logged_codes & bit == 0 {
            self.logged_codes |= bit;
            log::warn!(
                "session {} ({}): refused {}: {} (further refusals with this code are not logged)",
                self.key,
                self.user_id(),
                refusal.code,
                refusal.message
            );
        }
        self.reply(id, Reply::Error(&refusal));
        let now = Instant::now();
        if now.duration_since(self.error_window.0) > ERROR_WINDOW {
            self.error_window = (now, 0);
        }
        self.error_window.1 += 1;
        if self.error_window.1 > self.state.settings.error_limit {
            self.state.metrics.refused(ErrorCode::TooManyErrors);
            log::warn!("session {}: too many refused frames, closing", self.key);
            let r = Refusal::new(ErrorCode::TooManyErrors, "too many refused frames; closing");
            self.reply(None, Reply::Error(&r));
            self.close(ctx, CloseCode::Policy, "too many errors");
        }
    }

    fn user_id(&self) -> &str {
        self.identity
            .as_ref()
            .map(|i| i.user.id.as_str())
            .unwrap_or("unauthenticated")
    }

    fn member(&self, ctx: &mut Context<Self>, identity: &Identity) -> Member {
        Member {
            session: self.id,
            user: identity.user.clone(),
            outbox: self.outbox.clone(),
            control: ctx.address().recipient(),
            wire: self.wire.clone(),
        }
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        let (id, request) = match native::parse(text) {
            Ok(ok) => ok,
            Err(bad) => return self.refuse(ctx, bad.id.as_deref(), bad.refusal),
        };
        let Some(identity) = self.identity.clone() else {
            return match request {
                Request::Auth { .. } | Request::Ping => self.dispatch(id, request, None, ctx),
                _ => self.refuse(
                    ctx,
                    id.as_deref(),
                    Refusal::new(
                        ErrorCode::Unauthenticated,
                        "send {\"type\":\"auth\",\"token\":…} first",
                    ),
                ),
            };
        };
        self.dispatch(id, request, Some(identity), ctx);
    }

    fn dispatch(
        &mut self,
        id: Option<RequestId>,
        request: Request,
        identity: Option<Identity>,
        ctx: &mut Context<Self>,
    ) {
        log::debug!("session {}: {}", self.key, request.kind());
        match request {
            Request::Ping => self.reply(id.as_deref(), Reply::Pong),
            Request::Auth { token, user, name } => self.authenticate(id, token, user, name, ctx),
            Request::Join {
                room,
                since,
                log_offset,
            } => {
                let Some(identity) = identity else { return };
                if !identity.may_join(&room) {
                    let r = Refusal::new(ErrorCode::Forbidden, format!("you may not join {room}"));
                    return self.refuse(ctx, id.as_deref(), r);
                }
                let max = self.state.settings.max_rooms_per_connection;
                if max > 0 && self.rooms.len() >= max && !self.rooms.contains_key(&room) {
                    let r = Refusal::new(
                        ErrorCode::TooManyRooms,
                        format!("a connection may be in at most {max} rooms"),
                    );
                    return self.refuse(ctx, id.as_deref(), r);
                }
                if let Some(op_id) = room.strip_prefix("operation:") {
                    return self.watch_operation(
                        op_id.to_string(),
                        room,
                        log_offset,
                        id,
                        &identity,
                        ctx,
                    );
                }
                let msg = JoinRoom {
                    room: room.clone(),
                    member: self.member(ctx, &identity),
                    since,
                    request_id: id.clone(),
                    backfill: None,
                    backfill_complete: false,
                };
                self.state
                    .registry
                    .send(msg)
                    .into_actor(self)
                    .map(move |res, act, ctx| match res {
                        Ok(Ok(joined)) => {
                            act.rooms.insert(room, Some(joined.addr));
                        }
                        Ok(Err(refusal)) => act.refuse(ctx, id.as_deref(), refusal),
                        Err(e) => act.refuse(ctx, id.as_deref(), registry_down(e)),
                    })
                    .wait(ctx);
            }
            Request::Leave { room } => {
                if self.rooms.remove(&room).is_none() {
                    let r = Refusal::new(ErrorCode::NotMember, format!("not a member of {room}"));
                    return self.refuse(ctx, id.as_deref(), r);
                }
                self.state
                    .registry
                    .send(LeaveRoom {
                        room: room.clone(),
                        session: self.id,
                    })
                    .into_actor(self)
                    .map(move |res, act, ctx| match res {
                        Ok(Ok(())) => act.reply(id.as_deref(), Reply::Left { room: &room }),
                        Ok(Err(refusal)) => act.refuse(ctx, id.as_deref(), refusal),
                        Err(e) => act.refuse(ctx, id.as_deref(), registry_down(e)),
                    })
                    .wait(ctx);
            }
            r @ (Request::StartOperation { .. }
            | Request::CancelOperation { .. }
            | Request::ReportOperation { .. }) => {
                let Some(identity) = identity else { return };
                self.operation_request(id, r, identity, ctx);
            }
            Request::Publish {
                room,
                event,
                data,
                attachments,
            } => {
                let Some(identity) = identity else { return };
                if !identity.may_publish(&room) {
                    let r = Refusal::new(
                        ErrorCode::Forbidden,
                        format!("you may not publish to {room}"),
                    );
                    return self.refuse(ctx, id.as_deref(), r);
                }
                if !self.publishes.try_take()
                    || !self.state.user_publishes.try_take(&identity.user.id)
                {
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
                    .filter(|_| self.state.broker.members_publish_directly());
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
                    None => self.state.broker.publish(msg),
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
        let msg = WatchOperation {
            id: op_id,
            member: self.member(ctx, identity),
            log_offset: log_offset.unwrap_or(0),
            request_id: id.clone(),
        };
        self.state
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
                act.refuse(ctx, id.as_deref(), refusal);
            })
            .wait(ctx);
    }

    fn operation_request(
        &mut self,
        id: Option<RequestId>,
        request: Request,
        identity: Identity,
        ctx: &mut Context<Self>,
    ) {
        let dup_id = id.clone();
        let reply = move |act: &mut Self,
                          ctx: &mut Context<Self>,
                          res: Result<Operation, Refusal>,
                          always: bool| match res {
            Ok(op) => {
                if always || id.is_some() {
                    act.reply(id.as_deref(), Reply::Operation(&op));
                }
            }
            Err(r) => act.refuse(ctx, id.as_deref(), r),
        };
        match request {
            Request::StartOperation {
                kind,
                target,
                project,
                params,
            } => {
                if !identity.may_operate(project.as_deref()) {
                    let r = Refusal::new(ErrorCode::Forbidden, "you may not start operations");
                    return reply(self, ctx, Err(r), true);
                }
                let msg = StartOperation {
                    kind,
                    target,
                    project,
                    params,
                    created_by: Some(identity.user.id.clone()),
                };
                self.state
                    .operations
                    .send(msg)
                    .into_actor(self)
                    .map(move |res, act, ctx| match res {
                        Ok(Ok(started)) => act.reply(
                            dup_id.as_deref(),
                            Reply::Started(&started.operation, started.worker_token.as_deref()),
                        ),
                        Ok(Err(StartError::Duplicate(existing))) => {
                            let r = Refusal::new(
                                ErrorCode::DuplicateOperation,
                                format!(
                                    "operation {} is already active on this target",
                                    existing.id
                                ),
                            );
                            act.state.metrics.refused(r.code);
                            act.reply(dup_id.as_deref(), Reply::Duplicate(&r, &existing));
                        }
                        Ok(Err(StartError::Refused(r))) => reply(act, ctx, Err(r), true),
                        Ok(Err(StartError::Database(_))) => reply(
                            act,
                            ctx,
                            Err(Refusal::new(
                                ErrorCode::DatabaseUnavailable,
                                "the database is unreachable; try again shortly",
                            )),
                            true,
                        ),
                        Err(e) => reply(
                            act,
                            ctx,
                            Err(Refusal::new(ErrorCode::Unavailable, e.to_string())),
                            true,
                        ),
                    })
                    .spawn(ctx);
            }
            Request::CancelOperation { operation } => {
                let manager = self.state.operations.clone();
                let fut = async move {
                    let op = manager
                        .send(GetOperation {
                            id: operation.clone(),
                        })
                        .await
                        .map_err(mailbox)??;
                    // Like REST: an operation the caller may not see is `not_found`, with the
                    // same message as a missing one, so ids cannot be probed.
                    if !identity.may_watch(&op.id, op.project.as_deref()) {
                        return Err(Refusal::new(
                            ErrorCode::NotFound,
                            format!("no operation {operation}"),
                        ));
                    }
                    if !identity.may_operate(op.project.as_deref()) {
                        return Err(Refusal::new(
                            ErrorCode::Forbidden,
                            "you may not cancel this operation",
                        ));
                    }
                    manager
                        .send(CancelOperation { id: operation })
                        .await
                        .map_err(mailbox)?
                };
                fut.into_actor(self)
                    .map(move |res, act, ctx| reply(act, ctx, res, true))
                    .spawn(ctx);
            }
            Request::ReportOperation {
                operation,
                report,
                worker_token,
            } => {
                // Role `service`, or the operation's own worker token (checked by the manager).
                // Answered by a `ReportAnswer` message, only when there is something to say.
                self.state.operations.do_send(ReportOperation {
                    id: operation,
                    report,
                    authorized: identity.may_report(),
                    worker_token,
                    reply: ReportReply::Session {
                        to: ctx.address().recipient(),
                        request: dup_id,
                    },
                });
            }
            _ => {}
        }
    }

    fn authenticate(
        &mut self,
        id: Option<RequestId>,
        token: Option<String>,
        user: Option<String>,
        name: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        let result = if self.state.auth.open_mode() {
            let user = user.filter(|u| !u.is_empty() && u.len() <= 256);
            match user {
                Some(u) => Ok(Identity::open(u, name)),
                None => Err(Refusal::new(
                    ErrorCode::MissingField,
                    "open mode: `auth` declares an identity with `user` (1-256 characters)",
                )),
            }
        } else {
            match token {
                Some(t) => self.state.auth.verify(&t),
                None => Err(Refusal::new(
                    ErrorCode::MissingField,
                    "field `token` is required for `auth`",
                )),
            }
        };
        let fresh = match result {
            Ok(i) => i,
            Err(refusal) => {
                self.refuse(ctx, id.as_deref(), refusal);
                // A bad token ends the session, also on a refresh: the session must not keep
                // running on the old token's permissions after its owner presented a bad one
                // (docs/protocol.md: 1008 after the error).
                if !self.state.auth.open_mode() {
                    self.close(ctx, CloseCode::Policy, "authentication failed");
                }
                return;
            }
        };
        if let Some(current) = &self.identity {
            // A refresh must keep the identity: presence and membership are keyed by it.
            if current.user.id != fresh.user.id && (!self.rooms.is_empty() || self.header_auth) {
                let r = Refusal::new(
                    ErrorCode::IdentityChange,
                    "a session cannot change user once it has joined rooms",
                );
                return self.refuse(ctx, id.as_deref(), r);
            }
        }
        log::info!("session {}: authenticated as {}", self.key, fresh.user.id);
        self.reply(id.as_deref(), Reply::Authenticated(&fresh.user));
        self.leave_revoked_rooms(&fresh);
        self.identity = Some(fresh);
        if let Some(limit) = &self.frame_limit {
            limit.set(self.state.settings.max_frame_bytes);
        }
        self.schedule_expiry(ctx);
    }

    /// A refreshed token can grant fewer rooms than the one the session joined with: the
    /// session leaves every room the new token no longer lets it join, and tells the client
    /// with an unsolicited `left` frame per room.
    fn leave_revoked_rooms(&mut self, fresh: &Identity) {
        let revoked: Vec<String> = self
            .rooms
            .keys()
            .filter(|room| !fresh.may_join(room))
            .cloned()
            .collect();
        for room in revoked {
            self.rooms.remove(&room);
            log::info!(
                "session {}: left {room}: the refreshed token of {} does not grant it",
                self.key,
                fresh.user.id
            );
            // Fire and forget: the membership is already gone on this side, and a registry
            // that is down has no room to leave.
            self.state.registry.do_send(LeaveRoom {
                room: room.clone(),
                session: self.id,
            });
            self.reply(None, Reply::Left { room: &room });
        }
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let state = &self.state;
        state.metrics.connections.fetch_add(1, Relaxed);
        state.registry.do_send(SessionOpened {
            session: self.id,
            addr: ctx.address().recipient(),
        });
        self.schedule_expiry(ctx);
        if self.engine.is_some() {
            log::debug!(
                "socket.io socket {} connected ({})",
                self.key,
                self.user_id()
            );
            return;
        }
        let auth = if state.auth.open_mode() {
            "open"
        } else if self.identity.is_some() {
            "ok"
        } else {
            "required"
        };
        let hb = state.settings.heartbeat_interval;
        self.send(native::welcome(
            &self.key,
            hb.as_millis() as u64,
            auth,
            self.identity
                .as_ref()
                .map(|i| i.user.as_ref())
                .filter(|_| self.header_auth),
        ));
        log::info!(
            "session {} connected ({}, auth {auth})",
            self.key,
            self.user_id()
        );

        ctx.run_interval(hb, |act, ctx| {
            if act.last_seen.elapsed() > act.state.settings.heartbeat_timeout {
                log::info!("session {}: heartbeat timeout, dropping", act.key);
                act.close(ctx, CloseCode::Away, "heartbeat timeout");
            } else {
                act.outbox.ping();
            }
        });
        if self.identity.is_none() {
            ctx.run_later(state.settings.auth_timeout, |act, ctx| {
                if act.identity.is_none() {
                    let r = Refusal::new(ErrorCode::AuthTimeout, "no auth frame in time");
                    act.state.metrics.refused(r.code);
                    act.reply(None, Reply::Error(&r));
                    act.close(ctx, CloseCode::Policy, "authentication timeout");
                }
            });
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let state = &self.state;
        if !self.rooms.is_empty() {
            state.registry.do_send(LeaveAll {
                session: self.id,
                rooms: self.rooms.drain().map(|(room, _)| room).collect(),
            });
        }
        state.registry.do_send(SessionClosed { session: self.id });
        state.metrics.connections.fetch_sub(1, Relaxed);
        if self.engine.is_none() {
            self.outbox.close(CloseCode::Normal, "");
        }
        log::info!("session {} closed", self.key);
    }
}

impl StreamHandler<Result<WsMessage, ReadError>> for Session {
    fn handle(&mut self, item: Result<WsMessage, ReadError>, ctx: &mut Self::Context) {
        self.last_seen = Instant::now();
        match item {
            Ok(WsMessage::Text(bytes)) => {
                self.state.metrics.messages_in.fetch_add(1, Relaxed);
                match std::str::from_utf8(&bytes) {
                    Ok(text) => self.on_text(text, ctx),
                    Err(_) => {
                        self.state.metrics.refused(ErrorCode::InvalidFrame);
                        self.close(ctx, CloseCode::Invalid, "text frame is not valid UTF-8");
                    }
                }
            }
            Ok(WsMessage::Binary(_)) => {
                self.state.metrics.refused(ErrorCode::BinaryNotSupported);
                log::warn!("session {}: binary frame, closing", self.key);
                self.close(
                    ctx,
                    CloseCode::Unsupported,
                    "binary frames are not supported; send JSON text frames",
                );
            }
            Ok(WsMessage::Ping(payload)) => self.outbox.pong(payload),
            Ok(WsMessage::Pong) => {}
            Ok(WsMessage::Close) => self.close(ctx, CloseCode::Normal, ""),
            Err(ReadError::TooLarge { limit }) => {
                self.state.metrics.refused(ErrorCode::FrameTooLarge);
                log::warn!("session {}: message over {limit} bytes, closing", self.key);
                self.close(
                    ctx,
                    CloseCode::Size,
                    &format!("message exceeds the limit of {limit} bytes"),
                );
            }
            Err(ReadError::Protocol(e)) => {
                log::warn!("session {}: protocol error: {e}", self.key);
                self.close(ctx, CloseCode::Protocol, "protocol error");
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The client went away (TCP closed) or the reader gave up.
        ctx.stop();
    }
}

/// Engine.IO session → Session (Socket.IO): a request from this socket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Inbound {
    pub id: Option<RequestId>,
    pub request: Result<Request, Refusal>,
}

/// Session → Engine.IO session: this socket ended (error flood, eviction) and how.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SocketEnded {
    pub session: SessionId,
    pub code: CloseCode,
    pub reason: String,
}

/// Engine.IO session → Session: the socket disconnected (namespace DISCONNECT or the
/// connection ended).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect;

impl Handler<Inbound> for Session {
    type Result = ();

    fn handle(&mut self, msg: Inbound, ctx: &mut Context<Self>) {
        self.last_seen = Instant::now();
        self.state.metrics.messages_in.fetch_add(1, Relaxed);
        match msg.request {
            Ok(request) => {
                let identity = self.identity.clone();
                self.dispatch(msg.id, request, identity, ctx);
            }
            Err(refusal) => self.refuse(ctx, msg.id.as_deref(), refusal),
        }
    }
}

impl Handler<Disconnect> for Session {
    type Result = ();

    fn handle(&mut self, _: Disconnect, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<Evicted> for Session {
    type Result = ();

    fn handle(&mut self, msg: Evicted, ctx: &mut Context<Self>) {
        self.rooms.remove(&msg.room);
        log::warn!(
            "session {}: evicted from {} ({:?})",
            self.key,
            msg.room,
            msg.reason
        );
        self.close(ctx, CloseCode::Other(CLOSE_SLOW_CONSUMER), "slow consumer");
    }
}

impl Handler<ReportAnswer> for Session {
    type Result = ();

    fn handle(&mut self, msg: ReportAnswer, ctx: &mut Context<Self>) {
        match msg.result {
            Ok(op) => self.reply(msg.request.as_deref(), Reply::Operation(&op)),
            Err(r) => self.refuse(ctx, msg.request.as_deref(), r),
        }
    }
}

impl Handler<ServerShutdown> for Session {
    type Result = ();

    fn handle(&mut self, _: ServerShutdown, ctx: &mut Context<Self>) {
        self.close(ctx, CloseCode::Away, "server shutting down");
    }
}

fn mailbox(e: MailboxError) -> Refusal {
    Refusal::new(
        ErrorCode::Unavailable,
        format!("operations unavailable: {e}"),
    )
}

fn registry_down(e: MailboxError) -> Refusal {
    Refusal::new(ErrorCode::Unavailable, format!("registry unavailable: {e}"))
}
