//! The room registry: the one owner of the room table.
//!
//! In: [`JoinRoom`], [`LeaveRoom`], [`Publish`], [`GetRoomInfo`]-style queries ([`ListRooms`],
//! [`QueryPresence`], [`QueryHistory`]) which it routes to the room by name; [`LeaveAll`],
//! [`SessionOpened`], [`SessionClosed`], [`ShutdownSessions`] from sessions and start-up;
//! [`RoomIdle`] from rooms.
//!
//! Rooms are created on the first join or publish and run on a small pool of threads (one per
//! core by default) so fan-out work spreads over cores while the registry only looks names up.
//!
//! Retiring a room without losing a message: a room reports [`RoomIdle`] with the number of
//! registry messages it has handled; the registry retires it only if that equals the number it
//! has routed to it, i.e. nothing is in flight. A retired room leaves a tombstone (epoch, last
//! offset) so a re-created room continues the same offsets and clients can still resume.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use actix::prelude::*;
use actix::ArbiterHandle;

use super::room::{
    CloseRoom, GetHistory, GetPresence, GetRoomInfo, HistoryPage, JoinRoom, Joined, LeaveRoom,
    Publish, Room, RoomIdle, RoomInfo, RoomLimits, Routed,
};
use super::{ServerShutdown, SessionId};
use crate::auth::UserInfo;
use crate::broker::{Broker, PublishFuture};
use crate::error_code::{ErrorCode, Refusal};
use crate::metrics::Metrics;

/// Tombstones kept for retired rooms; past this the oldest half is forgotten (those rooms get a
/// new epoch when re-created, so their clients reload instead of resuming).
const MAX_TOMBSTONES: usize = 100_000;

// ---- messages ------------------------------------------------------------------------------

/// Session (stopping) → Registry: leave all these rooms; no reply.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LeaveAll {
    pub session: SessionId,
    pub rooms: Vec<String>,
}

/// Session (started) → Registry: reachable for shutdown.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionOpened {
    pub session: SessionId,
    pub addr: Recipient<ServerShutdown>,
}

/// HTTP worker (as it starts) → Registry: rooms may run on this worker's thread. Sessions
/// live on the workers; a room on the same thread as its members publishes and fans out with
/// no thread hop (on a one-core deployment, none at all).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AddRoomThread {
    pub thread: std::thread::ThreadId,
    pub arbiter: ArbiterHandle,
}

/// Session (stopped) → Registry.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionClosed {
    pub session: SessionId,
}

/// Application (shutting down) → Registry: tell every session to close. Replies with how many.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct ShutdownSessions;

/// REST → Registry: every room.
#[derive(Message)]
#[rtype(result = "Vec<RoomInfo>")]
pub struct ListRooms;

/// REST → Registry: presence of one room (`None`: no such room).
#[derive(Message)]
#[rtype(result = "Option<Vec<UserInfo>>")]
pub struct QueryPresence {
    pub room: String,
}

/// REST → Registry: history of one room (`None`: no such room).
#[derive(Message)]
#[rtype(result = "Option<HistoryPage>")]
pub struct QueryHistory {
    pub room: String,
    pub after: Option<u64>,
}

// ---- the actor -----------------------------------------------------------------------------

struct Entry {
    /// Where this room's messages are routed (and what a joiner gets to publish to directly).
    addr: Addr<Room>,
    /// The instance number it was started with: a `RoomIdle` from an older instance of the same
    /// name is ignored.
    room_id: u64,
    /// Messages routed to this room instance (see the module docs).
    routed: u64,
}

pub struct RoomRegistry {
    /// Live rooms by name: the one table that says which room instance a name means.
    rooms: HashMap<String, Entry>,
    /// Retired rooms' (epoch, last offset), so a re-created room continues their offsets and a
    /// client can still resume; bounded by `MAX_TOMBSTONES`.
    tombstones: HashMap<String, (Arc<str>, u64)>,
    /// Open connections (sessions and watchers), told `ServerShutdown` at graceful shutdown.
    sessions: HashMap<SessionId, Recipient<ServerShutdown>>,
    /// Dedicated room threads (`SWITCHYARD_ROOM_THREADS` > 0), where new rooms start, round
    /// robin.
    own_threads: Vec<Arbiter>,
    /// Without dedicated threads: the HTTP workers, as they register (`AddRoomThread`). Until
    /// the first one does, rooms start on the registry's thread.
    workers: Vec<(std::thread::ThreadId, ArbiterHandle)>,
    /// Round-robin position over the room threads: where the next new room starts.
    next_thread: usize,
    /// The next room instance number (see `Entry::room_id`).
    next_room_id: u64,
    /// Prefix of epochs minted by this process; a restart changes every epoch.
    process_epoch: String,
    /// The history and presence bounds every new room gets (from `Settings`).
    limits: RoomLimits,
    /// The live room count; handed to every room for its own counters.
    metrics: Arc<Metrics>,
}

impl RoomRegistry {
    pub fn new(room_threads: usize, limits: RoomLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            rooms: HashMap::new(),
            tombstones: HashMap::new(),
            sessions: HashMap::new(),
            own_threads: (0..room_threads).map(|_| Arbiter::new()).collect(),
            workers: Vec::new(),
            next_thread: 0,
            next_room_id: 1,
            process_epoch: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            limits,
            metrics,
        }
    }

    fn room(&mut self, name: &str, ctx: &mut Context<Self>) -> &mut Entry {
        use std::collections::hash_map::Entry as Slot;
        match self.rooms.entry(name.to_string()) {
            Slot::Occupied(e) => e.into_mut(),
            Slot::Vacant(slot) => {
                let room_id = self.next_room_id;
                self.next_room_id += 1;
                let (epoch, last_offset) = self
                    .tombstones
                    .remove(name)
                    .unwrap_or_else(|| (format!("{}-{room_id}", self.process_epoch).into(), 0));
                let i = self.next_thread;
                let arbiter = if !self.own_threads.is_empty() {
                    self.own_threads[i % self.own_threads.len()].handle()
                } else if !self.workers.is_empty() {
                    self.workers[i % self.workers.len()].1.clone()
                } else {
                    Arbiter::current()
                };
                self.next_thread += 1;
                let registry = ctx.address().recipient();
                let metrics = self.metrics.clone();
                let limits = self.limits;
                let owned = name.to_string();
                // The room's mailbox is unbounded from the moment its address exists, not
                // from when `Room::started` runs on its thread: until then actix's default
                // bound of 16 would hold back a `send` (joins, leaves) while a `do_send`
                // (publishes) still went in, so a join sent before later publishes could be
                // queued after them and its member would miss them (the ordering an
                // operation relies on when it sends a watcher's join and then its events).
                // So the channel is made here, unbounded, as `start_in_arbiter` would make it.
                let (tx, rx) = actix::dev::channel::channel(0);
                arbiter.spawn_fn(move || {
                    let ctx = Context::with_receiver(rx);
                    let room = Room::new(
                        owned,
                        room_id,
                        epoch,
                        last_offset,
                        limits,
                        registry,
                        metrics,
                    );
                    actix::spawn(ctx.into_future(room));
                });
                let addr = Addr::new(tx);
                self.metrics.rooms.fetch_add(1, Relaxed);
                slot.insert(Entry {
                    addr,
                    room_id,
                    routed: 0,
                })
            }
        }
    }

    fn existing(&mut self, name: &str) -> Option<&mut Entry> {
        self.rooms.get_mut(name)
    }
}

impl Actor for RoomRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Unbounded: see `Room::started` (FIFO from each sender needs enqueue-at-call).
        ctx.set_mailbox_capacity(0);
        log::info!(
            "room registry started; rooms run on {}",
            if self.own_threads.is_empty() {
                "the HTTP worker threads".to_string()
            } else {
                format!("{} dedicated threads", self.own_threads.len())
            }
        );
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // Only the dedicated threads: the HTTP workers stop with the server.
        for t in &self.own_threads {
            t.stop();
        }
    }
}

impl Handler<JoinRoom> for RoomRegistry {
    type Result = ResponseFuture<Result<Joined, Refusal>>;

    fn handle(&mut self, msg: JoinRoom, ctx: &mut Context<Self>) -> Self::Result {
        let entry = self.room(&msg.room, ctx);
        entry.routed += 1;
        let fut = entry.addr.send(msg);
        Box::pin(async move {
            fut.await
                .unwrap_or_else(|e| Err(Refusal::unavailable("room", e)))
        })
    }
}

impl Handler<LeaveRoom> for RoomRegistry {
    type Result = ResponseFuture<Result<(), Refusal>>;

    fn handle(&mut self, msg: LeaveRoom, _ctx: &mut Context<Self>) -> Self::Result {
        let Some(entry) = self.existing(&msg.room) else {
            let room = msg.room;
            return Box::pin(async move {
                Err(Refusal::new(
                    ErrorCode::NotMember,
                    format!("not a member of {room}"),
                ))
            });
        };
        entry.routed += 1;
        let fut = entry.addr.send(msg);
        Box::pin(async move {
            fut.await
                .unwrap_or_else(|e| Err(Refusal::unavailable("room", e)))
        })
    }
}

impl Handler<Publish> for RoomRegistry {
    type Result = RoutePublish;

    fn handle(&mut self, msg: Publish, ctx: &mut Context<Self>) -> RoutePublish {
        let entry = if msg.member_check.is_some() {
            // A member-only publish never creates a room: no room means not a member.
            match self.existing(&msg.room) {
                Some(e) => e,
                None => {
                    return RoutePublish::Refused(Refusal::new(
                        ErrorCode::NotMember,
                        format!("join {} before publishing to it", msg.room),
                    ))
                }
            }
        } else {
            self.room(&msg.room, ctx)
        };
        entry.routed += 1;
        RoutePublish::Forward(entry.addr.clone(), msg)
    }
}

/// The registry's answer to a publish: refused here, or forwarded to its room together with
/// the publisher's reply channel, so the room answers the publisher directly and no future
/// waits in the registry (with thousands of publishes a second in flight, those futures were
/// all polled on every wake-up of the registry's context).
pub enum RoutePublish {
    Refused(Refusal),
    Forward(Addr<Room>, Publish),
}

impl actix::dev::MessageResponse<RoomRegistry, Publish> for RoutePublish {
    fn handle(
        self,
        _ctx: &mut Context<RoomRegistry>,
        tx: Option<actix::dev::OneshotSender<Result<u64, Refusal>>>,
    ) {
        match self {
            RoutePublish::Refused(refusal) => {
                if let Some(tx) = tx {
                    let _ = tx.send(Err(refusal));
                }
            }
            // A room that stopped drops the message and with it `tx`: the publisher's send
            // then fails, which it reports as `unavailable`, as before.
            RoutePublish::Forward(room, msg) => room.do_send(Routed { msg, reply: tx }),
        }
    }
}

impl Handler<AddRoomThread> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, msg: AddRoomThread, _ctx: &mut Context<Self>) {
        if self.own_threads.is_empty() && !self.workers.iter().any(|(t, _)| *t == msg.thread) {
            self.workers.push((msg.thread, msg.arbiter));
        }
    }
}

impl Handler<LeaveAll> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, msg: LeaveAll, _ctx: &mut Context<Self>) {
        for room in msg.rooms {
            if let Some(entry) = self.existing(&room) {
                entry.routed += 1;
                // Fire and forget: the session is gone and nobody waits for the answer. `do_send`
                // ignores the mailbox bound, so a leave is never lost to a full mailbox.
                entry.addr.do_send(LeaveRoom {
                    room,
                    session: msg.session,
                });
            }
        }
    }
}

impl Handler<SessionOpened> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, msg: SessionOpened, _ctx: &mut Context<Self>) {
        self.sessions.insert(msg.session, msg.addr);
    }
}

impl Handler<SessionClosed> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, msg: SessionClosed, _ctx: &mut Context<Self>) {
        self.sessions.remove(&msg.session);
    }
}

impl Handler<ShutdownSessions> for RoomRegistry {
    type Result = usize;

    fn handle(&mut self, _: ShutdownSessions, _ctx: &mut Context<Self>) -> usize {
        for s in self.sessions.values() {
            s.do_send(ServerShutdown);
        }
        self.sessions.len()
    }
}

impl Handler<RoomIdle> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, msg: RoomIdle, _ctx: &mut Context<Self>) {
        let retire = matches!(
            self.rooms.get(&msg.name),
            Some(e) if e.room_id == msg.room_id && e.routed == msg.routed_seen
        );
        if !retire {
            return; // something is in flight to it; it will report again
        }
        if let Some(entry) = self.rooms.remove(&msg.name) {
            entry.addr.do_send(CloseRoom);
            self.metrics.rooms.fetch_sub(1, Relaxed);
            if self.tombstones.len() >= MAX_TOMBSTONES {
                let forget: Vec<String> = self
                    .tombstones
                    .keys()
                    .take(MAX_TOMBSTONES / 2)
                    .cloned()
                    .collect();
                for k in forget {
                    self.tombstones.remove(&k);
                }
            }
            self.tombstones
                .insert(msg.name, (msg.epoch, msg.last_offset));
        }
    }
}

impl Handler<ListRooms> for RoomRegistry {
    type Result = ResponseFuture<Vec<RoomInfo>>;

    fn handle(&mut self, _: ListRooms, _ctx: &mut Context<Self>) -> Self::Result {
        let futs: Vec<_> = self
            .rooms
            .values_mut()
            .map(|e| {
                e.routed += 1;
                e.addr.send(GetRoomInfo)
            })
            .collect();
        Box::pin(async move {
            let mut rooms: Vec<RoomInfo> = futures_util::future::join_all(futs)
                .await
                .into_iter()
                .filter_map(Result::ok)
                .collect();
            rooms.sort_by(|a, b| a.name.cmp(&b.name));
            rooms
        })
    }
}

impl Handler<QueryPresence> for RoomRegistry {
    type Result = ResponseFuture<Option<Vec<UserInfo>>>;

    fn handle(&mut self, msg: QueryPresence, _ctx: &mut Context<Self>) -> Self::Result {
        let Some(entry) = self.existing(&msg.room) else {
            return Box::pin(async { None });
        };
        entry.routed += 1;
        let fut = entry.addr.send(GetPresence);
        Box::pin(async move { fut.await.ok() })
    }
}

impl Handler<QueryHistory> for RoomRegistry {
    type Result = ResponseFuture<Option<HistoryPage>>;

    fn handle(&mut self, msg: QueryHistory, _ctx: &mut Context<Self>) -> Self::Result {
        let Some(entry) = self.existing(&msg.room) else {
            return Box::pin(async { None });
        };
        entry.routed += 1;
        let fut = entry.addr.send(GetHistory { after: msg.after });
        Box::pin(async move { fut.await.ok() })
    }
}

/// Single-node [`Broker`]: the local registry is the source of order.
pub struct LocalBroker {
    registry: Addr<RoomRegistry>,
}

impl LocalBroker {
    pub fn new(registry: Addr<RoomRegistry>) -> Self {
        Self { registry }
    }
}

impl Broker for LocalBroker {
    fn publish(&self, msg: Publish) -> PublishFuture {
        let fut = self.registry.send(msg);
        Box::pin(async move {
            fut.await
                .unwrap_or_else(|e| Err(Refusal::unavailable("registry", e)))
        })
    }

    fn publish_and_forget(&self, msg: Publish) {
        // No reply channel at all: the room logs a refusal itself.
        self.registry.do_send(msg);
    }

    fn name(&self) -> &'static str {
        "local"
    }

    fn members_publish_directly(&self) -> bool {
        true
    }
}
