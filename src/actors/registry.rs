//! The room registry: the one owner of the room table.
//!
//! In: [`RouteJoin`], [`LeaveRoom`], [`RoutePublish`], queries ([`ListRooms`],
//! [`QueryPresence`], [`QueryHistory`]) which it routes to the room by name; [`LeaveAll`] from
//! sessions; [`RoomIdle`] from rooms.
//!
//! Every room is created with its log (`broker::local::RoomLog`): a routed publish is ordered
//! there (offset taken and pushed into the room's mailbox under one lock), and a joiner gets the
//! same log as its lane, so its own publishes skip the registry and still take their place in
//! the one order. `actors::local_broker::LocalBroker` is the broker this makes: the single-node
//! implementation of `crate::broker::Broker` and of the presence and history views.
//!
//! Rooms are created on the first join or publish and run on a small pool of threads (one per
//! core by default) so fan-out work spreads over cores while the registry only looks names up.
//!
//! Retiring a room without losing a message: a room reports [`RoomIdle`] with the number of
//! registry messages it has handled; the registry retires it only if that equals the number it
//! has routed to it, i.e. nothing is in flight. A retired room leaves a tombstone in the log
//! (epoch, last offset) so a re-created room continues the same offsets and clients can still
//! resume.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix::ArbiterHandle;

use super::room::{
    CloseRoom, GetHistory, GetPresence, GetRoomInfo, HistoryPage, JoinRoom, Joined, LeaveRoom,
    MoveTo, Moves, Room, RoomIdle, RoomInfo, RoomLimits, RoomResized,
};
use super::SessionId;
use crate::auth::UserInfo;
use crate::broker::local::{LocalLog, Ordered, RoomLog};
use crate::broker::{Backlog, Envelope, Position, PresenceChange};
use crate::error_code::{ErrorCode, Refusal};
use crate::metrics::Metrics;

// ---- messages ------------------------------------------------------------------------------

/// Session (stopping) → Registry: leave all these rooms; no reply.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LeaveAll {
    pub session: SessionId,
    pub rooms: Vec<String>,
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

/// Broker → Registry: order this envelope in its room (created here if need be). Replies with
/// its position once the room delivered it.
#[derive(Message)]
#[rtype(result = "Result<Position, Refusal>")]
pub struct RoutePublish {
    pub envelope: Envelope,
    /// When the publish reached this node (the publish-latency histogram).
    pub received_at: Instant,
}

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
    /// Where joins, leaves and queries for this room are routed.
    addr: Addr<Room>,
    /// Where its messages are ordered: routed publishes here, and a joiner's lane. `None` with
    /// a shared log (several nodes), which orders every publish itself.
    log: Option<Arc<RoomLog>>,
    /// The instance number it was started with: a `RoomIdle` from an older instance of the same
    /// name is ignored.
    room_id: u64,
    /// Messages routed to this room instance (see the module docs).
    routed: u64,
    /// On an HTTP worker (where rooms start); moves to a room thread when it grows and back
    /// when it shrinks (`RoomResized`).
    on_worker: bool,
}

pub struct RoomRegistry {
    /// Live rooms by name: the one table that says which room instance a name means.
    rooms: HashMap<String, Entry>,
    /// The node's log: epochs, and retired rooms' positions (tombstones) so a re-created room
    /// continues their offsets and a client can still resume. Unused with a shared log.
    log: LocalLog,
    /// With a shared log (several nodes): where a new room learns where the order stands
    /// (`Room::started`); its messages then come from the log's reader as [`Deliver`].
    shared: Option<Arc<dyn Backlog>>,
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
    /// The history and presence bounds every new room gets (from `Settings`).
    limits: RoomLimits,
    /// The live room count; handed to every room for its own counters.
    metrics: Arc<Metrics>,
    /// With room threads and workers both known: new rooms start on a worker, next to their
    /// members, and move to a room thread at this many members (`SWITCHYARD_ROOM_MOVE_AT`;
    /// 0: rooms start on the room threads).
    move_at: usize,
}

impl RoomRegistry {
    pub fn new(room_threads: usize, limits: RoomLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            rooms: HashMap::new(),
            log: LocalLog::new(),
            shared: None,
            own_threads: (0..room_threads).map(|_| Arbiter::new()).collect(),
            workers: Vec::new(),
            next_thread: 0,
            next_room_id: 1,
            limits,
            metrics,
            move_at: 0,
        }
    }

    /// New rooms start on the HTTP workers and move to the room threads at `at` members (0:
    /// they start on the room threads). Only with room threads and a local log.
    pub fn moving_rooms_at(mut self, at: usize) -> Self {
        self.move_at = at;
        self
    }

    /// Rooms of this registry continue a shared log's order (several nodes) instead of ordering
    /// locally: no room gets a `RoomLog`, joiners get no lane, and every message comes from the
    /// log's reader as [`Deliver`].
    pub fn with_shared_log(mut self, backlog: Arc<dyn Backlog>) -> Self {
        self.shared = Some(backlog);
        self
    }

    fn room(&mut self, name: &str, ctx: &mut Context<Self>) -> &mut Entry {
        use std::collections::hash_map::Entry as Slot;
        match self.rooms.entry(name.to_string()) {
            Slot::Occupied(e) => e.into_mut(),
            Slot::Vacant(slot) => {
                let room_id = self.next_room_id;
                self.next_room_id += 1;
                let i = self.next_thread;
                // Small first: on a worker, next to the sessions, while the room may move.
                let on_worker = self.move_at > 0
                    && self.shared.is_none()
                    && !self.own_threads.is_empty()
                    && !self.workers.is_empty();
                let arbiter = if on_worker {
                    self.workers[i % self.workers.len()].1.clone()
                } else if !self.own_threads.is_empty() {
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
                let addr = Addr::new(tx);
                let (log, start) = match &self.shared {
                    // Where the shared order stands is asked when the room starts.
                    Some(_) => (
                        None,
                        Position {
                            epoch: "".into(),
                            offset: 0,
                        },
                    ),
                    None => {
                        let log = self.log.open(name, Room::sinks(&addr));
                        let start = log.position();
                        (Some(log), start)
                    }
                };
                let backlog = self.shared.clone();
                let up_to = log.as_ref().map(|l| l.up_to());
                let moves = on_worker.then(|| Self::moves(self.move_at, true, ctx));
                arbiter.spawn_fn(move || {
                    let ctx = Context::with_receiver(rx);
                    let mut room =
                        Room::new(owned, room_id, start, limits, registry, metrics, backlog)
                            .with_order(up_to);
                    if let Some(moves) = moves {
                        room = room.moving(moves);
                    }
                    actix::spawn(ctx.into_future(room));
                });
                self.metrics.rooms.inc();
                slot.insert(Entry {
                    addr,
                    log,
                    room_id,
                    routed: 0,
                    on_worker,
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

/// Broker → Registry: a join whose answer goes from the room straight to the joiner. The
/// registry hands the room's pending answer back at once instead of waiting for it on its own
/// thread: a join then crosses threads twice (joiner → registry → room, and a small room runs on
/// its members' worker) instead of four times (and back through the registry). Measured on
/// connection set-up in docs/benchmarks.md.
#[derive(Message)]
#[rtype(result = "RoutedJoin")]
pub struct RouteJoin(pub JoinRoom);

/// The registry's answer to [`RouteJoin`]: the room's answer, on its way.
pub struct RoutedJoin {
    answer: Request<Room, JoinRoom>,
    lane: Option<Arc<RoomLog>>,
}

impl RoutedJoin {
    /// The room's lane (a local log's rooms have one).
    pub fn lane(&self) -> Option<&Arc<RoomLog>> {
        self.lane.as_ref()
    }

    /// The room's answer, with the room's lane.
    pub async fn joined(self) -> Result<Joined, Refusal> {
        let joined = self
            .answer
            .await
            .unwrap_or_else(|e| Err(Refusal::unavailable("room", e)))?;
        Ok(Joined {
            lane: self.lane,
            ..joined
        })
    }
}

impl RoomRegistry {
    /// Sends the join to its room (created if need be); in the room's order from here.
    fn route_join(&mut self, msg: JoinRoom, ctx: &mut Context<Self>) -> RoutedJoin {
        let entry = self.room(&msg.room, ctx);
        entry.routed += 1;
        RoutedJoin {
            answer: entry.addr.send(msg),
            lane: entry.log.clone(),
        }
    }
}

impl Handler<RouteJoin> for RoomRegistry {
    type Result = MessageResult<RouteJoin>;

    fn handle(&mut self, msg: RouteJoin, ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.route_join(msg.0, ctx))
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

impl Handler<RoutePublish> for RoomRegistry {
    type Result = OrderIn;

    fn handle(&mut self, msg: RoutePublish, ctx: &mut Context<Self>) -> OrderIn {
        if self.shared.is_some() {
            return OrderIn::Refused(Refusal::new(
                ErrorCode::Unavailable,
                "this node orders publishes through the shared log",
            ));
        }
        let entry = self.room(&msg.envelope.room, ctx);
        match entry.log.clone() {
            Some(log) => {
                entry.routed += 1;
                OrderIn::Log(log, msg)
            }
            None => OrderIn::Refused(Refusal::new(ErrorCode::Unavailable, "room unavailable")),
        }
    }
}

/// Shared log's reader → Registry: a message in its place in the shared order, for this node's
/// room of that name if there is one (a room nobody here is in has nobody to deliver to; its
/// history is in the log).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver {
    pub room: String,
    pub ordered: Ordered,
}

impl Handler<Deliver> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, msg: Deliver, _ctx: &mut Context<Self>) {
        if let Some(entry) = self.existing(&msg.room) {
            entry.routed += 1;
            entry.addr.do_send(Ordered {
                routed: true,
                ..msg.ordered
            });
        }
    }
}

/// Shared log's reader → Registry: a presence change (announced once across the nodes), for
/// this node's room of that name if there is one (one that starts later reads who is present).
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeliverPresence {
    pub room: String,
    pub change: PresenceChange,
}

impl Handler<DeliverPresence> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, msg: DeliverPresence, _ctx: &mut Context<Self>) {
        if let Some(entry) = self.existing(&msg.room) {
            entry.routed += 1;
            entry.addr.do_send(msg.change);
        }
    }
}

/// The registry's answer to a routed publish: order it in its room's log together with the
/// publisher's reply channel, so the room answers the publisher directly and no future waits in
/// the registry (with thousands of publishes a second in flight, those futures were all polled
/// on every wake-up of the registry's context).
pub enum OrderIn {
    Log(Arc<RoomLog>, RoutePublish),
    Refused(Refusal),
}

impl actix::dev::MessageResponse<RoomRegistry, RoutePublish> for OrderIn {
    fn handle(
        self,
        _ctx: &mut Context<RoomRegistry>,
        tx: Option<actix::dev::OneshotSender<Result<Position, Refusal>>>,
    ) {
        match self {
            // A refusal (the room stopped) is answered on `tx`, or logged when nobody waits.
            OrderIn::Log(log, msg) => {
                let forgotten = tx.is_none().then(|| msg.envelope.room.clone());
                if let (Err(refusal), Some(room)) = (
                    log.order(msg.envelope, msg.received_at, true, tx),
                    forgotten,
                ) {
                    log::warn!("room {room}: a publish nobody waits for was refused: {refusal}");
                }
            }
            OrderIn::Refused(refusal) => match tx {
                Some(tx) => {
                    let _ = tx.send(Err(refusal));
                }
                None => log::warn!("a publish nobody waits for was refused: {refusal}"),
            },
        }
    }
}

impl Handler<AddRoomThread> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, msg: AddRoomThread, _ctx: &mut Context<Self>) {
        // Kept with room threads too: small rooms start on the workers (`move_at`).
        if !self.workers.iter().any(|(t, _)| *t == msg.thread) {
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

impl Handler<RoomIdle> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, msg: RoomIdle, _ctx: &mut Context<Self>) {
        let retire = matches!(
            self.rooms.get(&msg.name),
            Some(e) if e.room_id == msg.room_id
                && e.routed == msg.routed_seen
                // Last: it closes the log (no more joins through it) when it holds.
                && e.log.as_ref().is_none_or(|log| log.close_if(msg.direct_seen))
        );
        if !retire {
            return; // something is in flight to it; it will report again
        }
        if let Some(entry) = self.rooms.remove(&msg.name) {
            entry.addr.do_send(CloseRoom);
            self.metrics.rooms.dec();
            if let Some(log) = &entry.log {
                self.log.retire(msg.name, log);
            }
        }
    }
}

impl RoomRegistry {
    /// When a room placed on a worker (`on_worker`) or on a room thread asks to move.
    fn moves(move_at: usize, on_worker: bool, ctx: &mut Context<Self>) -> Moves {
        Moves {
            on_worker,
            grow_at: move_at,
            shrink_at: Moves::shrink_at(move_at),
            registry: ctx.address().recipient(),
        }
    }
}

impl Handler<RoomResized> for RoomRegistry {
    type Result = ();

    /// Moves a grown room from its worker to a room thread, or a shrunk one back to a worker:
    /// a new mailbox, the log redirected to it with the hand-over (`MoveTo`) as the last thing
    /// the old room gets, and this table pointing there too — so every sender's order holds
    /// across the move.
    fn handle(&mut self, msg: RoomResized, ctx: &mut Context<Self>) {
        let to_worker = !msg.grown;
        let arbiter = if to_worker {
            (!self.workers.is_empty()).then(|| {
                self.workers[self.next_thread % self.workers.len()]
                    .1
                    .clone()
            })
        } else {
            (!self.own_threads.is_empty())
                .then(|| self.own_threads[self.next_thread % self.own_threads.len()].handle())
        };
        let moves = Self::moves(self.move_at, to_worker, ctx);
        let Some(entry) = self.rooms.get_mut(&msg.name) else {
            return;
        };
        // Only the room that asked, from where it asked.
        if entry.room_id != msg.room_id || entry.on_worker == to_worker {
            return;
        }
        let (Some(arbiter), Some(log)) = (arbiter, entry.log.clone()) else {
            return;
        };
        self.next_thread += 1;
        let (tx, mailbox) = actix::dev::channel::channel(0);
        let moved: Addr<Room> = Addr::new(tx);
        let old = entry.addr.clone();
        log.redirect(Room::sinks(&moved), || {
            old.do_send(MoveTo {
                mailbox,
                arbiter,
                moves,
            });
        });
        entry.addr = moved;
        entry.on_worker = to_worker;
        self.metrics.room_moves.inc();
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
