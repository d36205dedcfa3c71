//! The single-node broker: [`LocalBroker`] hands joins, leaves, publishes and queries to this
//! node's room registry (`actors::registry`), and a session's join of a room its thread knows
//! straight to the room, through the room's log (`Broker::join_direct`).

use std::time::Instant;

use actix::prelude::*;

use super::registry::{
    LeaveAll, ListRooms, QueryHistory, QueryPresence, RoomRegistry, RouteJoin, RoutePublish,
};
use super::room::{HistoryPage, JoinRoom, Joined, LeaveRoom, RoomInfo};
use super::SessionId;
use crate::auth::UserInfo;
use crate::broker::local::{known_room, remember_room};
use crate::broker::{
    Broker, Envelope, HistoryView, JoinFuture, LeaveFuture, PresenceView, PublishFuture, ViewFuture,
};
use crate::error_code::Refusal;

/// Single-node [`Broker`]: this node's registry routes, each room's [`RoomLog`] orders. Also the
/// single-node presence and history views: it asks the rooms.
pub struct LocalBroker {
    registry: Addr<RoomRegistry>,
}

impl LocalBroker {
    pub fn new(registry: Addr<RoomRegistry>) -> Self {
        Self { registry }
    }
}

/// What a caller of the local broker is told when the registry itself is gone.
fn registry_gone(e: MailboxError) -> Refusal {
    Refusal::unavailable("registry", e)
}

impl Broker for LocalBroker {
    fn publish(&self, envelope: Envelope) -> PublishFuture {
        // `send` enqueues now (the registry's mailbox is unbounded): the caller's order.
        let fut = self.registry.send(RoutePublish {
            envelope,
            received_at: Instant::now(),
        });
        Box::pin(async move { fut.await.unwrap_or_else(|e| Err(registry_gone(e))) })
    }

    fn publish_and_forget(&self, envelope: Envelope) {
        // No reply channel at all: a refusal is logged where it happens.
        self.registry.do_send(RoutePublish {
            envelope,
            received_at: Instant::now(),
        });
    }

    fn join(&self, join: JoinRoom) -> JoinFuture {
        let room = join.room.clone();
        let fut = self.registry.send(RouteJoin(join));
        Box::pin(async move {
            let routed = fut.await.map_err(registry_gone)?;
            // Polled on the caller's thread: the next join there may go straight to the room.
            if let Some(log) = routed.lane() {
                remember_room(&room, log);
            }
            routed.joined().await
        })
    }

    fn join_direct(&self, join: JoinRoom) -> JoinFuture {
        // A room this thread joined before: through its log to the room, without the registry
        // (whose thread a join otherwise crosses to and back). Refused when the room retired
        // meanwhile: then through the registry, which creates it again.
        let Some(log) = known_room(&join.room) else {
            return self.join(join);
        };
        match log.join(join) {
            Ok(answer) => Box::pin(async move {
                let joined = answer
                    .await
                    .unwrap_or_else(|e| Err(Refusal::unavailable("room", e)))?;
                Ok(Joined {
                    lane: Some(log),
                    ..joined
                })
            }),
            Err(join) => self.join(*join),
        }
    }

    fn leave(&self, leave: LeaveRoom) -> LeaveFuture {
        let fut = self.registry.send(leave);
        Box::pin(async move { fut.await.unwrap_or_else(|e| Err(registry_gone(e))) })
    }

    fn leave_all(&self, session: SessionId, rooms: Vec<String>) {
        self.registry.do_send(LeaveAll { session, rooms });
    }

    fn name(&self) -> &'static str {
        "local"
    }
}

impl PresenceView for LocalBroker {
    fn presence(&self, room: String) -> ViewFuture<Result<Option<Vec<UserInfo>>, Refusal>> {
        let fut = self.registry.send(QueryPresence { room });
        Box::pin(async move { fut.await.map_err(registry_gone) })
    }

    fn rooms(&self) -> ViewFuture<Result<Vec<RoomInfo>, Refusal>> {
        let fut = self.registry.send(ListRooms);
        Box::pin(async move { fut.await.map_err(registry_gone) })
    }
}

impl HistoryView for LocalBroker {
    fn history(
        &self,
        room: String,
        after: Option<u64>,
    ) -> ViewFuture<Result<Option<HistoryPage>, Refusal>> {
        let fut = self.registry.send(QueryHistory { room, after });
        Box::pin(async move { fut.await.map_err(registry_gone) })
    }
}
