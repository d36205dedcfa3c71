//! A watcher of one operation that is not a native session: a Server-Sent Events stream
//! (`GET /api/operations/{id}/events`) or the per-operation WebSocket
//! (`GET /api/operations/{id}/ws`). It joins `operation:<id>` with its own wire, so the room
//! encodes for it, and it ends when the operation does.
//!
//! In: [`Evicted`], [`ServerShutdown`], the WebSocket reader (per-operation WebSocket only).
//! Out: [`WatchOperation`] to the manager; [`LeaveAll`] when it stops.
//!
//! The backfill it receives on joining (snapshot, missed lines, terminal event) is built by the
//! operation's actor (`actors/operation/watchers.rs`) or, for a finished operation, by the
//! manager from the database.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_http::ws::CloseCode;

use super::operation_manager::{OperationManager, WatchOperation};
use super::sessions::SessionTable;
use super::{Evicted, Member, ServerShutdown, SessionId};
use crate::auth::UserInfo;
use crate::broker::Broker;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::protocol::{sse, Wire};
use crate::transport::outbox::Outbox;
use crate::transport::ws::{ReadError, WsMessage};

/// How often a watcher checks whether its client went away (SSE has no read side to tell).
const GONE_CHECK: Duration = Duration::from_secs(1);

/// What a watcher uses of the application: composed once by `startup.rs`, shared by every
/// watcher.
pub struct WatcherDeps {
    /// The keepalive interval (`SWITCHYARD_HEARTBEAT_INTERVAL`).
    pub settings: Arc<Settings>,
    /// The open connections, told to close at shutdown.
    pub sessions: Arc<SessionTable>,
    /// Leaving the room at the end.
    pub broker: Arc<dyn Broker>,
    /// Where the watch goes: it joins the operation's room through its actor (or the database).
    pub operations: Addr<OperationManager>,
    /// The connection count.
    pub metrics: Arc<Metrics>,
}

pub struct Watcher {
    /// Its session number: the key of its membership in `operation:<id>` and in the registry's
    /// session table (registered in `started`, removed in `stopped`).
    id: SessionId,
    /// The id of the operation watched; the room is `operation:<id>`.
    operation: String,
    /// Where the client's log stood (SSE: `Last-Event-ID` or `?after=`; the per-operation
    /// WebSocket, which carries statuses rather than lines, starts at the current offset): the
    /// backfill starts after it, so a reconnecting client misses no line and gets none twice.
    log_offset: u64,
    /// How the room encodes frames for this client: SSE events, or the per-operation
    /// WebSocket's status stream.
    wire: Wire,
    /// Who is watching (for the room's member record; the route checked that they may see the
    /// operation).
    user: Arc<UserInfo>,
    /// The connection's bounded write queue: the room pushes frames straight into it; closing
    /// it ends the connection.
    outbox: Arc<Outbox>,
    /// What a watcher uses of the application (see [`WatcherDeps`]).
    deps: Arc<WatcherDeps>,
    /// This connection's place in the per-address count; released when the actor is dropped.
    slot: Option<crate::limits::ConnectionSlot>,
}

impl Watcher {
    pub fn new(
        id: SessionId,
        operation: String,
        log_offset: u64,
        wire: Wire,
        user: Arc<UserInfo>,
        outbox: Arc<Outbox>,
        deps: Arc<WatcherDeps>,
    ) -> Self {
        Self {
            id,
            operation,
            log_offset,
            wire,
            user,
            outbox,
            deps,
            slot: None,
        }
    }

    pub fn with_slot(mut self, slot: crate::limits::ConnectionSlot) -> Self {
        self.slot = Some(slot);
        self
    }

    fn room(&self) -> String {
        format!("operation:{}", self.operation)
    }
}

impl Actor for Watcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.deps.metrics.connections.inc();
        self.deps
            .sessions
            .opened(self.id, ctx.address().downgrade().recipient());
        if matches!(self.wire, Wire::Sse(_)) {
            let _ = self.outbox.push_text(sse::retry(3_000));
        }
        let member = Member {
            session: self.id,
            user: self.user.clone(),
            outbox: self.outbox.clone(),
            control: ctx.address().downgrade().recipient(),
            wire: self.wire.clone(),
        };
        self.deps
            .operations
            .send(WatchOperation {
                id: self.operation.clone(),
                member,
                log_offset: self.log_offset,
                request_id: None,
                joined_to: None,
            })
            .into_actor(self)
            .map(|res, act, ctx| {
                if !matches!(res, Ok(Ok(()))) {
                    log::warn!("watcher of operation {}: could not join", act.operation);
                    act.outbox.close(CloseCode::Error, "operation unavailable");
                    ctx.stop();
                }
            })
            .wait(ctx);
        let keepalive = self.deps.settings.heartbeat_interval;
        let mut since_keepalive = Duration::ZERO;
        ctx.run_interval(GONE_CHECK, move |act, ctx| {
            if act.outbox.is_closed() {
                ctx.stop();
                return;
            }
            since_keepalive += GONE_CHECK;
            if since_keepalive >= keepalive {
                since_keepalive = Duration::ZERO;
                match act.wire {
                    Wire::Sse(_) => {
                        let _ = act.outbox.push_text(sse::keepalive());
                    }
                    _ => act.outbox.ping(),
                }
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.deps.broker.leave_all(self.id, vec![self.room()]);
        self.deps.sessions.closed(self.id);
        self.deps.metrics.connections.dec();
        self.outbox.close(CloseCode::Normal, "");
    }
}

impl Handler<Evicted> for Watcher {
    type Result = ();
    fn handle(&mut self, _: Evicted, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<ServerShutdown> for Watcher {
    type Result = ();
    fn handle(&mut self, _: ServerShutdown, ctx: &mut Context<Self>) {
        self.outbox.close(CloseCode::Away, "server shutting down");
        ctx.stop();
    }
}

impl StreamHandler<Result<WsMessage, ReadError>> for Watcher {
    fn handle(&mut self, item: Result<WsMessage, ReadError>, ctx: &mut Context<Self>) {
        match item {
            Ok(WsMessage::Ping(p)) => self.outbox.pong(p),
            Ok(WsMessage::Close) => {
                self.outbox.close(CloseCode::Normal, "");
                ctx.stop();
            }
            Ok(_) => {} // this stream is server → client only
            Err(ReadError::TooLarge { limit }) => {
                self.outbox.close(
                    CloseCode::Size,
                    &format!("message exceeds the limit of {limit} bytes"),
                );
                ctx.stop();
            }
            Err(ReadError::Protocol(_)) => {
                self.outbox.close(CloseCode::Protocol, "protocol error");
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
