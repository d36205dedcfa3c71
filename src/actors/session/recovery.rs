//! Socket.IO connection-state recovery in a [`Session`] (docs/socketio.md, the design in
//! `actors/recovery.rs`): where the client stands in each room, what the socket leaves behind
//! when its connection ends without the client asking, and a recovered socket's rooms joined
//! again with what it missed.
//!
//! In: the join answers (`note_joined`; an operation's watch answers later, `WatchJoined`), the
//! session's end (`keep_for_recovery`), its start (`restore_rooms`). Out: a [`Record`] into the
//! [`RecoveryRecords`] store; [`JoinRoom`]s with `since` to the broker, or [`WatchOperation`]s for an
//! operation's room the client got none of the live events of (`Restore::Watch`).
//!
//! [`RecoveryRecords`]: crate::actors::recovery::RecoveryRecords

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use actix::prelude::*;
use actix_http::ws::CloseCode;

use super::Session;
use crate::actors::operation_manager::WatchOperation;
use crate::actors::recovery::{Record, Restore};
use crate::actors::room::{JoinRoom, Joined};
use crate::error::Refusal;
use crate::protocol::Since;

/// A Socket.IO socket's part in connection-state recovery.
#[derive(Debug, Clone)]
pub struct SocketRecovery {
    /// The pid its CONNECT answered: the key its record is kept under.
    pub pid: String,
    /// The offset the client sent with its CONNECT (the last room event it had got, maybe
    /// from an earlier socket): while it still sends it, it got no room event from this one.
    pub restored_from: Option<String>,
    /// The socket recovers a disconnected one (its CONNECT answered the client's pid).
    pub recovered: bool,
    /// The rooms to join again as the socket starts, each from where the client stands (an
    /// operation's room maybe by watching it again).
    pub restore: Vec<(String, Restore)>,
    /// Set by a [`super::Disconnect`] for a connection that ended without the client asking.
    pub recoverable: bool,
    /// Where the client stood in each room this socket joined (the join's answer, or the
    /// position a resume started from): what a room resumes from when the client got nothing
    /// of it since. Same keys as the session's `rooms` (but for rooms joined through their
    /// operation). Here, not on every session: only recovery reads it, and idle connections
    /// are what the memory benchmark counts.
    pub joined_at: HashMap<String, Since>,
    /// Operations' rooms joined by watching the operation, each with the log offset the watch
    /// started after (a watch is started again from its backfill when the client got none of
    /// the room's live events). Keys are in the session's `rooms`.
    pub watched: HashMap<String, u64>,
    /// Operations' rooms a recovered socket is watching again, until their watch is answered
    /// (`WatchJoined`): one that cannot give every line missed closes the connection.
    pub restoring: HashSet<String>,
}

impl SocketRecovery {
    /// A socket that starts afresh, under a new pid; `offset`: what its client sent.
    pub fn fresh(offset: Option<String>) -> Self {
        Self::new(uuid::Uuid::new_v4().simple().to_string(), offset)
    }

    /// A socket that recovers the disconnected one `pid`, joining `restore` again.
    pub fn resumed(pid: String, offset: Option<String>, restore: Vec<(String, Restore)>) -> Self {
        Self {
            recovered: true,
            restore,
            ..Self::new(pid, offset)
        }
    }

    fn new(pid: String, offset: Option<String>) -> Self {
        Self {
            pid,
            restored_from: offset,
            recovered: false,
            restore: Vec::new(),
            recoverable: false,
            joined_at: HashMap::new(),
            watched: HashMap::new(),
            restoring: HashSet::new(),
        }
    }
}

impl Session {
    /// With connection-state recovery: this socket's pid, and what it recovers.
    pub fn with_recovery(mut self, recovery: SocketRecovery) -> Self {
        self.recovery = Some(Box::new(recovery));
        self
    }

    /// Where the client stands in `room` after a join: where its resume started when it
    /// resumed, else the room's position (the live traffic it gets starts after it).
    /// The session left `room` (or never got in): recovery no longer resumes it.
    pub(super) fn forget_position(&mut self, room: &str) {
        if let Some(recovery) = &mut self.recovery {
            recovery.joined_at.remove(room);
            recovery.watched.remove(room);
        }
    }

    /// Kept only with recovery on.
    pub(super) fn note_joined(&mut self, room: &str, asked: Option<Since>, joined: &Joined) {
        let Some(recovery) = &mut self.recovery else {
            return;
        };
        let at = match asked {
            Some(since) if joined.recovered => since,
            _ => Since {
                epoch: joined.position.epoch.to_string(),
                offset: joined.position.offset,
            },
        };
        recovery.joined_at.insert(room.to_string(), at);
    }

    /// A recovered socket joins its rooms again, each resuming where the client stands, before
    /// any request of the client is handled; true when there was something to restore. The
    /// Engine.IO session checked the rooms' history before answering the CONNECT; if a room
    /// cannot resume after all (its history was trimmed meanwhile), the CONNECT's promise is
    /// broken, and the connection is closed: the client reconnects, and that pid is gone, so
    /// it starts afresh with `recovered: false`.
    pub(super) fn restore_rooms(&mut self, ctx: &mut Context<Self>) -> bool {
        let Some(recovery) = &mut self.recovery else {
            return false;
        };
        let rooms = std::mem::take(&mut recovery.restore);
        if rooms.is_empty() {
            return recovery.recovered;
        }
        let Some(identity) = self.identity.clone() else {
            return false;
        };
        // Each join takes its place in the broker's order as it is called, so they are all
        // handed over now and their answers awaited together. An operation's room watched
        // again is answered twice: its watch now, its position later (`WatchJoined`).
        type Answer = Result<Option<Joined>, Refusal>;
        let joins: Vec<futures_util::future::BoxFuture<'static, Answer>> = rooms
            .iter()
            .map(|(room, restore)| match restore {
                Restore::Since(since) => {
                    // A new session: nothing of its own is on its way into the room.
                    let join = self.deps.broker.join_direct(JoinRoom {
                        room: room.clone(),
                        member: self.member(ctx, &identity),
                        since: Some(since.clone()),
                        request_id: None,
                        backfill: None,
                        backfill_complete: false,
                        after: None,
                    });
                    Box::pin(async move { join.await.map(Some) }) as _
                }
                Restore::Watch { log_offset } => {
                    let id = room.strip_prefix("operation:").unwrap_or(room).to_string();
                    let watch = self.deps.operations.send(WatchOperation {
                        id,
                        member: self.member(ctx, &identity),
                        log_offset: *log_offset,
                        request_id: None,
                        joined_to: Some(ctx.address().recipient()),
                    });
                    Box::pin(async move {
                        match watch.await {
                            Ok(answer) => answer.map(|()| None),
                            Err(e) => Err(Refusal::unavailable("operations", e)),
                        }
                    }) as _
                }
            })
            .collect();
        futures_util::future::join_all(joins)
            .into_actor(self)
            .map(move |answers, act, ctx| {
                let mut broken = false;
                for ((room, restore), answer) in rooms.into_iter().zip(answers) {
                    match (answer, restore) {
                        (Ok(Some(joined)), Restore::Since(since)) => {
                            broken |= !joined.recovered;
                            act.note_joined(&room, Some(since), &joined);
                            act.rooms.insert(room, joined.lane);
                        }
                        (Ok(_), restore) => {
                            // Watched again: its answer (`WatchJoined`) says whether every
                            // line missed was there.
                            let log_offset = match restore {
                                Restore::Watch { log_offset } => log_offset,
                                Restore::Since(s) => s.offset,
                            };
                            if let Some(recovery) = &mut act.recovery {
                                recovery.watched.insert(room.clone(), log_offset);
                                recovery.restoring.insert(room.clone());
                            }
                            act.rooms.insert(room, None);
                        }
                        (Err(refusal), _) => {
                            log::warn!(
                                "socket.io socket {}: could not rejoin {room}: {}",
                                act.key,
                                refusal.message
                            );
                            broken = true;
                        }
                    }
                }
                if broken {
                    log::warn!(
                        "socket.io socket {}: recovery failed after its CONNECT; closing",
                        act.key
                    );
                    act.close(ctx, CloseCode::Away, "connection state lost");
                }
            })
            .wait(ctx);
        true
    }

    /// As the session ends: when the connection ended without the client asking, keeps what
    /// its recovery needs. An operation's room whose watch was not answered yet (its position
    /// comes later: `WatchJoined`) is kept as such and restored by watching again; a socket in
    /// another room whose join was not answered yet is not kept: its client starts afresh.
    pub(super) fn keep_for_recovery(&mut self) {
        let Some(recovery) = &self.recovery else {
            return;
        };
        let Some(store) = &self.deps.recovery else {
            return;
        };
        if !recovery.recoverable {
            return;
        }
        let Some(identity) = &self.identity else {
            return;
        };
        let crate::protocol::Wire::SocketIo(nsp, ..) = &self.wire else {
            return;
        };
        let mut rooms = Vec::with_capacity(self.rooms.len());
        let mut unanswered = Vec::new();
        for room in self.rooms.keys() {
            match recovery.joined_at.get(room) {
                Some(at) => rooms.push((room.clone(), at.clone())),
                // A watch whose position has not arrived yet: where the client stands is in
                // the backfill frames it got (`Record::resume`).
                None if recovery.watched.contains_key(room) => unanswered.push(room.clone()),
                None => return,
            }
        }
        let Some(journal) = self.outbox.journal() else {
            return;
        };
        let record = Record {
            user: identity.user.id.to_string(),
            nsp: nsp.to_string(),
            rooms,
            journal,
            restored_from: recovery.restored_from.clone(),
            watched: recovery.watched.clone(),
            unanswered,
            at: Instant::now(),
        };
        log::debug!(
            "socket.io socket {}: kept for recovery under pid {}",
            self.key,
            recovery.pid
        );
        store.keep(recovery.pid.clone(), record);
    }
}
