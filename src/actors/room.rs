//! The room actor: delivery of what the broker ordered, bounded history, retained state and
//! fan-out. Who is present and
//! when that is announced is up to `room/presence.rs` (a plain struct the room owns); the
//! room delivers its announcements.
//!
//! In: [`Ordered`] (a message in its place in the room's order, from the broker's
//! `RoomLog`), [`JoinRoom`], [`LeaveRoom`], [`GetRoomInfo`], [`GetPresence`], [`GetHistory`]
//! (routed here by the registry), [`DirectJoin`] (a join carried by the room's log from a
//! thread that knew the room), [`CloseRoom`], [`MoveTo`] (the registry moves a grown room
//! from its worker to a room thread); with a shared log, [`PresenceChange`] (who
//! arrived or left across the nodes).
//! Out (with a shared log): every member added or removed, to the log's presence
//! (`Backlog::arrived` / `Backlog::departed`).
//! Out: frames pushed into member outboxes; [`Evicted`] to sessions it drops;
//! [`RoomIdle`] to the registry when it has neither members nor history.
//!
//! Hot path: a publish is encoded once into a `Bytes`; every member gets a clone (a reference
//! count) pushed into its outbox. A member whose outbox is full is evicted on the spot, so a slow
//! client never holds the room up.
//!
//! The room does not number messages: the broker did (`broker::local::RoomLog`), and the room
//! checks that what it delivers continues what it delivered before (see `Room::continue_at`).
//!
//! Why this file is one piece (about 980 lines): the delivered position, the history and the
//! member table change together under one invariant — a joiner's replay and the live messages
//! after it have no gap and no duplicate — and every handler reads or changes all three; the
//! fan-out is the loop over that member table. The room's place in the broker's order
//! (delivering what was ordered, continuing or resetting, the gap fill, the start from a shared
//! log) is `order.rs`; where the room runs and how quiet it is (the move to a room thread,
//! direct writes) is `placement.rs`; presence and retained messages have their own files.

mod order;
mod placement;
mod presence;
mod retained;

use self::placement::Pace;
pub use self::placement::{MoveTo, Moves, RoomResized};

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix::WeakAddr;
use actix_http::ws::CloseCode;
use bytes::Bytes;
use serde_json::value::RawValue;

use self::presence::{Flush, Presence};
use self::retained::Retained;
use super::{EvictReason, Evicted, Member, SessionId};
use crate::auth::UserInfo;
use crate::broker::local::{DirectJoin, Ordered, OrderedUpTo, RoomSinks};
use crate::broker::{dedupe, Backlog, Envelope, Position, PresenceChange, Retain, Tail};
// Membership and the views are the broker's vocabulary (defined there, so the broker never
// names the actors); re-exported here, where the actors have always found them.
pub use crate::broker::{HistoryPage, JoinRoom, Joined, LeaveRoom, RoomInfo};
use crate::error_code::{ErrorCode, Refusal};
use crate::metrics::Metrics;
use crate::protocol::native;
use crate::protocol::{Encoded, Event, JoinAnswer, Wire};
use crate::transport::outbox::Frame;
use crate::transport::outbox::PushError;

/// Close code sent to a session dropped because it could not keep up.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;

// ---- messages ------------------------------------------------------------------------------

/// Registry → Room: name, members, last offset.
#[derive(Message)]
#[rtype(result = "RoomInfo")]
pub struct GetRoomInfo;

/// Registry → Room: the distinct users present.
#[derive(Message)]
#[rtype(result = "Vec<UserInfo>")]
pub struct GetPresence;

/// Registry → Room: the history after `after` (all of it when `None`).
#[derive(Message)]
#[rtype(result = "HistoryPage")]
pub struct GetHistory {
    pub after: Option<u64>,
}

/// Room → Registry: I have no members and no history. The registry retires the room only if
/// `routed_seen` matches what it routed there and `direct_seen` what the room's log carried
/// (nothing is in flight).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RoomIdle {
    pub name: String,
    pub room_id: u64,
    pub routed_seen: u64,
    pub direct_seen: u64,
}

/// Registry → Room: you are retired (only sent after a matching [`RoomIdle`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseRoom;

// ---- the actor -----------------------------------------------------------------------------

/// A message kept in history: its parts (to encode it for other wires on replay) and its
/// native encoding (shared with the live broadcast).
struct Stored {
    /// Its place in the room: what a resume compares against.
    offset: u64,
    /// When it was kept: `SWITCHYARD_HISTORY_TTL_SECS` counts from here.
    at: Instant,
    /// Its parts, to encode it for a wire other than native on replay.
    event: String,
    data: Box<RawValue>,
    from: Option<Arc<UserInfo>>,
    /// The publishing connection's id (`from.session`).
    connection: Option<Arc<str>>,
    /// The id shared with the same message in other rooms (one delivery per connection).
    message_id: Option<Arc<str>>,
    seq: Option<u64>,
    attachments: Arc<[Bytes]>,
    /// The encoded native `message` frame.
    native: Bytes,
    /// What keeping this message costs, as counted against the history byte bounds.
    bytes: usize,
}

impl retained::Entry for Stored {
    fn offset(&self) -> u64 {
        self.offset
    }
    fn event(&self) -> &str {
        &self.event
    }
}

impl Stored {
    /// The bytes a stored message holds: its parts, its encoding and its attachments, plus
    /// the fixed cost of the entry (so a flood of empty messages is not free either).
    fn cost(event: &str, data: &RawValue, native: &Bytes, attachments: &[Bytes]) -> usize {
        std::mem::size_of::<Stored>()
            + event.len()
            + data.get().len()
            + native.len()
            + attachments.iter().map(Bytes::len).sum::<usize>()
    }
}

/// Per-room settings, copied from `Settings` at creation.
#[derive(Clone, Copy)]
pub struct RoomLimits {
    /// Messages of history this room keeps (`SWITCHYARD_HISTORY_SIZE`; 0: none).
    pub history_size: usize,
    /// How long a message stays in history (`SWITCHYARD_HISTORY_TTL_SECS`).
    pub history_ttl: Duration,
    /// Bytes of history this room keeps (`Stored::bytes` summed).
    pub history_max_bytes: usize,
    /// Bytes of history all rooms keep together (`Metrics::history_bytes`).
    pub history_total_max_bytes: usize,
    /// Users a join answer lists; with this many, presence changes are not announced
    /// (`SWITCHYARD_PRESENCE_LIST_MAX`).
    pub presence_list_max: usize,
    /// Event names whose last `retain: "event"` message a room keeps
    /// (`SWITCHYARD_RETAINED_EVENTS_MAX`).
    pub retained_events_max: usize,
    /// Multi-room message ids a connection's window holds (`SWITCHYARD_DEDUPE_WINDOW`; see
    /// `broker::dedupe`).
    pub dedupe_window: usize,
    /// A room writes to idle members' sockets directly while it fanned out fewer frames than
    /// this in the current and previous 100 ms and nothing waits behind the message
    /// (`SWITCHYARD_DIRECT_WRITES_PER_100MS`; 0: never).
    pub direct_writes_per_100ms: usize,
}

/// The room's scheduled presence flush (see `room/presence.rs`).
#[derive(Message)]
#[rtype(result = "()")]
struct FlushPresence;

pub struct Room {
    /// The room's name: in every frame it sends, and in `RoomIdle`/logs.
    name: Arc<str>,
    /// Registry-assigned instance number; distinguishes a re-created room from its predecessor.
    room_id: u64,
    /// The epoch of what this room delivers, from the broker (it changes whenever the broker
    /// cannot promise continuity). Offsets are only comparable within one epoch.
    epoch: Arc<str>,
    /// Offset of the last message delivered; the broker's next one is `last_offset + 1`.
    last_offset: u64,
    /// Oldest first; bounded by `limits.history_size`, `limits.history_ttl`,
    /// `limits.history_max_bytes`, and together with every other room's by
    /// `limits.history_total_max_bytes`.
    history: VecDeque<Arc<Stored>>,
    /// `Stored::bytes` of every message held in `history` or `retained` (once when in both);
    /// always also counted in `metrics.history_bytes` (the total over rooms), and taken out of
    /// it when the room holds the message no more. So retained messages are bounded by the
    /// history byte bounds too.
    history_bytes: usize,
    /// The last `retain: true` message and the last `retain: "event"` one of each event name,
    /// sent to joiners that do not resume (`room/retained.rs`).
    retained: Retained<Stored>,
    /// Sessions and watchers in the room, with the outbox the fan-out pushes into directly (no
    /// hop through the session) and the wire it encodes for.
    members: HashMap<SessionId, Member>,
    /// Who is present (a user once, however many sessions), and the arrivals and departures
    /// not announced yet: the batching rules live in `room/presence.rs`.
    presence: Presence,
    /// Messages received from the registry; compared with the registry's count before retiring.
    routed_seen: u64,
    /// Joins carried by the room's log ([`DirectJoin`]); compared with the log's count.
    direct_seen: u64,
    /// History and presence bounds (from `Settings`, copied at creation).
    limits: RoomLimits,
    /// Identifies this room's conflatable messages in member outboxes.
    conflation_key: u64,
    /// Set in `started`; lets helpers without a context schedule a presence flush.
    me: Option<WeakAddr<Room>>,
    /// Where [`RoomIdle`] goes: the registry, which decides whether to retire the room. A
    /// `Recipient`, so the room never names the registry's type (arrows point one way: the
    /// registry owns rooms) and a test can plug a probe in.
    registry: Recipient<RoomIdle>,
    /// Delivery, publish and slow-consumer counters, and the history byte total shared by
    /// every room (the global history bound is kept through it).
    metrics: Arc<Metrics>,
    /// With a shared log (several nodes): where the room learns, before it delivers anything,
    /// the position its order stands at and the recent messages (see `Room::started`). `None`
    /// with the local log, which starts with the room.
    backlog: Option<Arc<dyn Backlog>>,
    /// Members that joined "after" an offset this room has yet to deliver (a shared log's
    /// reader trails its order, see `JoinRoom::after`): they get nothing up to that offset.
    /// Empty with the local broker; an entry leaves once the room delivered past it.
    floors: HashMap<SessionId, u64>,
    /// How far the local log ordered (`None` with a shared log): when it is no further than
    /// the message being delivered, nothing waits behind it and frames may go straight to
    /// idle sockets (`Room::deliver`).
    ordered: Option<OrderedUpTo>,
    /// Frames fanned out lately (the direct-write decision).
    pace: Pace,
    /// A room that may move (started on an HTTP worker, next to its members): at which size it
    /// asks the registry to move it to a room thread, or back (`SWITCHYARD_ROOM_MOVE_AT`; see
    /// `MoveTo`). `None` once asked, until the move hands it its next watch.
    moves: Option<Moves>,
}

impl Room {
    /// Where a log hands this room what it orders and the joins it carries.
    pub fn sinks(addr: &Addr<Room>) -> RoomSinks {
        RoomSinks {
            ordered: addr.clone().recipient(),
            joins: addr.clone().recipient(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        room_id: u64,
        start: Position,
        limits: RoomLimits,
        registry: Recipient<RoomIdle>,
        metrics: Arc<Metrics>,
        backlog: Option<Arc<dyn Backlog>>,
    ) -> Self {
        let conflation_key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            name.hash(&mut h);
            h.finish()
        };
        Self {
            name: name.into(),
            room_id,
            epoch: start.epoch,
            last_offset: start.offset,
            history: VecDeque::new(),
            history_bytes: 0,
            retained: Retained::new(limits.retained_events_max),
            members: HashMap::new(),
            // With a shared log, presence is the cluster's (`room/presence.rs`).
            presence: if backlog.is_some() {
                Presence::clustered(limits.presence_list_max)
            } else {
                Presence::new(limits.presence_list_max)
            },
            routed_seen: 0,
            direct_seen: 0,
            conflation_key,
            me: None,
            limits,
            registry,
            metrics,
            backlog,
            floors: HashMap::new(),
            ordered: None,
            pace: Pace::default(),
            moves: None,
        }
    }

    /// Reads how far its log ordered from `ordered` (the local broker's rooms).
    pub fn with_order(mut self, ordered: Option<OrderedUpTo>) -> Self {
        self.ordered = ordered;
        self
    }

    /// Counts a message the room now holds (in history or retained) against the bounds.
    fn charge(&mut self, bytes: usize) {
        self.history_bytes += bytes;
        self.metrics.history_bytes.inc_by(bytes as i64);
    }

    /// Gives back what a message the room holds no more counted.
    fn refund(&mut self, bytes: usize) {
        self.history_bytes -= bytes;
        self.metrics.history_bytes.dec_by(bytes as i64);
    }

    /// Whether the message at `offset` is in history (offsets there only increase).
    fn in_history(&self, offset: u64) -> bool {
        self.history
            .binary_search_by_key(&offset, |m| m.offset)
            .is_ok()
    }

    /// Keeps the room's newest message in history (a new message: nothing holds it yet).
    fn keep(&mut self, m: Arc<Stored>) {
        if self.history.is_empty() {
            self.metrics.history_rooms.inc();
        }
        if !self.retained.holds(m.offset) {
            self.charge(m.bytes);
        }
        self.history.push_back(m);
    }

    /// Drops the oldest message of history; false when there was none.
    fn drop_oldest(&mut self) -> bool {
        let Some(m) = self.history.pop_front() else {
            return false;
        };
        if !self.retained.holds(m.offset) {
            self.refund(m.bytes);
        }
        if self.history.is_empty() {
            self.metrics.history_rooms.dec();
        }
        true
    }

    /// Retained messages the room let go of: what history does not hold any more is refunded.
    fn release(&mut self, gone: Vec<Arc<Stored>>) {
        for m in gone {
            if !self.in_history(m.offset) {
                self.refund(m.bytes);
            }
        }
    }

    /// Drops the oldest retained message (when history alone cannot make room); false when
    /// none is left.
    fn drop_oldest_retained(&mut self) -> bool {
        match self.retained.drop_oldest() {
            Some(m) => {
                self.release(vec![m]);
                true
            }
            None => false,
        }
    }

    /// Drops history and retained messages alike (a new epoch, the room stopping).
    fn drop_everything(&mut self) {
        while self.drop_oldest() {}
        while self.drop_oldest_retained() {}
    }

    /// Bytes of history kept by all rooms together.
    fn total_history_bytes(&self) -> usize {
        let total = self.metrics.history_bytes.get();
        usize::try_from(total).unwrap_or(0)
    }

    /// Half of an even share of the total bound: what a room keeps under pressure, so that
    /// rooms which had to give up their history find room again.
    fn pressed_share(&self) -> usize {
        let rooms = self.metrics.history_rooms.get().max(1) as usize;
        self.limits.history_total_max_bytes / 2 / rooms
    }

    /// Applies the history bounds, oldest first. A resume from before what is left is answered
    /// `recovered: false`, as after any trim.
    ///
    /// The total bound is kept by whichever room adds to it, with two relaxed atomics on the
    /// publish path (no lock, no list of rooms): a room that finds the total over the bound
    /// first trims itself to half an even share, then drops its own oldest messages — its
    /// newest too if need be — until the total is back under it. Rooms that filled the budget
    /// before others came are trimmed on their periodic check (see `relieve_pressure`).
    fn trim_history(&mut self) {
        while self.history.len() > self.limits.history_size {
            self.drop_oldest();
        }
        let ttl = self.limits.history_ttl;
        while self.history.front().is_some_and(|m| m.at.elapsed() > ttl) {
            self.drop_oldest();
        }
        // History goes first; retained messages (counted too) only when it is not enough.
        let max = self.limits.history_max_bytes;
        while self.history_bytes > max && (self.drop_oldest() || self.drop_oldest_retained()) {}
        let total_max = self.limits.history_total_max_bytes;
        if self.total_history_bytes() > total_max {
            let share = self.pressed_share();
            while self.history_bytes > share && self.drop_oldest() {}
            while self.total_history_bytes() > total_max
                && (self.drop_oldest() || self.drop_oldest_retained())
            {}
        }
    }

    /// On the periodic check: while the rooms together hold more than half the total bound,
    /// each keeps at most half an even share, which leaves half the budget for rooms that
    /// publish next (otherwise the rooms that filled it first would keep it until their
    /// messages expire, and every other room's history would be dropped as soon as kept).
    fn relieve_pressure(&mut self) {
        if self.total_history_bytes() > self.limits.history_total_max_bytes / 2 {
            let share = self.pressed_share();
            while self.history_bytes > share && self.drop_oldest() {}
        }
    }

    /// Does what a presence change asks for: announce now, or schedule the window's flush.
    fn on_presence(&mut self, flush: Flush) {
        match flush {
            Flush::Now => self.flush_presence(),
            Flush::After(wait) => {
                if let Some(me) = self.me.as_ref().and_then(WeakAddr::upgrade) {
                    actix::spawn(async move {
                        tokio::time::sleep(wait).await;
                        me.do_send(FlushPresence);
                    });
                }
            }
            Flush::Nothing => {}
        }
    }

    /// Announces pending presence changes: one frame per run of arrivals or departures,
    /// encoded once per wire. A member never hears about its own user.
    fn flush_presence(&mut self) {
        if !self.presence.has_pending() {
            return;
        }
        let pending = self.presence.take_pending(Instant::now());
        let mut delivered = 0usize;
        let mut dropped: Vec<(SessionId, bool)> = Vec::new();
        for run in pending.chunk_by(|a, b| a.1 == b.1) {
            let joined = run[0].1;
            let users: Vec<&UserInfo> = run.iter().map(|(u, _)| u.as_ref()).collect();
            let ids: std::collections::HashSet<&str> = users.iter().map(|u| &*u.id).collect();
            let mut cache = WireCache::default();
            for (id, m) in &self.members {
                let frame = if ids.contains(&*m.user.id) {
                    let others: Vec<&UserInfo> = users
                        .iter()
                        .copied()
                        .filter(|u| u.id != m.user.id)
                        .collect();
                    if others.is_empty() {
                        continue;
                    }
                    m.wire.presence(&self.name, &others, joined)
                } else {
                    cache.get(&m.wire, |w| w.presence(&self.name, &users, joined))
                };
                let Some(frame) = frame else { continue };
                match m.outbox.push_text(frame) {
                    Ok(()) => delivered += 1,
                    Err(PushError::Full) => dropped.push((*id, true)),
                    Err(PushError::Closed) => dropped.push((*id, false)),
                }
            }
        }
        // Evictions here may queue further departures; they go out in the next window.
        self.settle(dropped, delivered);
    }

    /// Pushes a room message to every member, encoded once per wire in use (`native` is the
    /// already-encoded native frame, shared with history). `conflate`: a member that has not
    /// yet received the previous conflatable message of this room gets only this one.
    /// `skip`: a member that does not get it (a sender that asked not to hear itself).
    /// `shared`: the message went into other rooms too (its id's key): a member that one of
    /// them already gave it to does not get it again (`broker::dedupe`).
    fn broadcast(
        &mut self,
        e: &Event,
        native: &Bytes,
        conflate: bool,
        skip: Option<SessionId>,
        shared: Option<u128>,
        direct: bool,
    ) -> usize {
        // Presence changes that happened before this message are announced before it.
        self.flush_presence();
        let mut delivered = 0usize;
        let mut dropped: Vec<(SessionId, bool)> = Vec::new();
        let mut cache: WireCache<Encoded> = WireCache::default();
        cache.seed(
            Wire::Native,
            Encoded {
                text: native.clone(),
                binary: Arc::default(),
            },
        );
        // No lookup per member unless someone joined ahead of the deliveries (a shared log).
        let floors = !self.floors.is_empty();
        for (id, m) in &self.members {
            if skip == Some(*id) || (floors && self.floors.get(id).is_some_and(|f| e.offset <= *f))
            {
                continue;
            }
            if let Some(k) = shared {
                if !dedupe::first_delivery(*id, k, &m.outbox, self.limits.dedupe_window) {
                    continue;
                }
            }
            let Some(encoded) = cache.get(&m.wire, |w| w.encode(e)) else {
                continue;
            };
            let pushed = if !encoded.binary.is_empty() {
                m.outbox.push_frames(encoded.frames())
            } else if conflate {
                m.outbox.push_latest(encoded.text, self.conflation_key)
            } else if direct {
                m.outbox.push_text_now(encoded.text)
            } else {
                m.outbox.push_text(encoded.text)
            };
            match pushed {
                Ok(()) => {
                    delivered += 1;
                    if m.wire.ends_after(e.event) {
                        m.outbox.close(CloseCode::Normal, "operation finished");
                    }
                }
                Err(PushError::Full) => dropped.push((*id, true)),
                Err(PushError::Closed) => dropped.push((*id, false)),
            }
        }
        self.settle(dropped, delivered)
    }

    /// Evicts members that could not take a frame, and counts the ones that did.
    fn settle(&mut self, dropped: Vec<(SessionId, bool)>, delivered: usize) -> usize {
        for (id, slow) in dropped {
            if slow {
                self.evict(id, EvictReason::SlowConsumer);
            } else {
                // Its connection is gone; the session's own leave will follow, this just stops
                // pushing into a dead outbox.
                self.remove_member(id);
            }
        }
        self.metrics.messages_out.inc_by(delivered as u64);
        delivered
    }

    fn evict(&mut self, id: SessionId, reason: EvictReason) {
        if let Some(m) = self.members.get(&id) {
            // Over the server-wide budget a queue is refused before its own bound: say which.
            let server = match m.outbox.budget_usage() {
                Some((held, limit)) if held > limit => format!(
                    "; all queues hold {held} bytes, over SWITCHYARD_OUTBOX_TOTAL_BYTES ({limit})"
                ),
                _ => String::new(),
            };
            log::warn!(
                "room {}: evicting session {} (user {}): slow consumer, {:?} queued{server}",
                self.name,
                id,
                m.user.id,
                m.outbox.backlog()
            );
            m.outbox
                .close(CloseCode::Other(CLOSE_SLOW_CONSUMER), "slow consumer");
            if let Some(control) = m.control.upgrade() {
                control.do_send(Evicted {
                    room: self.name.to_string(),
                    reason,
                });
            }
            self.metrics.slow_consumers.inc();
            self.metrics.refused(ErrorCode::SlowConsumer);
        }
        self.remove_member(id);
    }

    /// Removes a member and announces the user's departure if it was their last session.
    fn remove_member(&mut self, id: SessionId) -> bool {
        let Some(m) = self.members.remove(&id) else {
            return false;
        };
        self.floors.remove(&id);
        if let Some(b) = &self.backlog {
            b.departed(&self.name, id);
        }
        let flush = self.presence.depart(&m.user, Instant::now());
        self.on_presence(flush);
        self.check_size();
        true
    }

    fn encode_stored(&self, wire: &Wire, m: &Stored) -> Option<Encoded> {
        if *wire == Wire::Native {
            return Some(Encoded {
                text: m.native.clone(),
                binary: m.attachments.clone(),
            });
        }
        wire.encode(&stored_event(&self.name, m))
    }

    fn check_idle(&mut self) {
        self.relieve_pressure();
        self.trim_history();
        if self.members.is_empty() && self.history.is_empty() {
            // The registry decides; we only report.
            self.registry.do_send(RoomIdle {
                name: self.name.to_string(),
                room_id: self.room_id,
                routed_seen: self.routed_seen,
                direct_seen: self.direct_seen,
            });
        }
    }
}

impl Actor for Room {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.me = Some(ctx.address().downgrade());
        // Unbounded on purpose: `send` then always enqueues at call time, which is what keeps
        // messages from one sender in order (an operation's events and a watcher's join). Load
        // is bounded upstream (per-session outboxes and limits), not by parking senders here.
        ctx.set_mailbox_capacity(0);
        let every =
            (self.limits.history_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
        ctx.run_interval(every, |act, _| act.check_idle());
        // A room that moved here may have had a presence flush scheduled on its old thread
        // (gone with the old actor): announce what is pending now.
        if self.presence.has_pending() {
            ctx.notify(FlushPresence);
        }
        if let Some(backlog) = self.backlog.clone() {
            // Nothing in the mailbox (deliveries, joins) is handled until the room knows where
            // the shared order stands: `wait` holds them back. Deliveries the backlog already
            // holds are then recognised as such (`continue_at`), later ones continue it.
            let max = self.limits.history_size;
            ctx.wait(
                backlog
                    .tail(self.name.to_string(), max)
                    .into_actor(self)
                    .map(|res, act, _| act.start_at(res)),
            );
            // Then who is present across the nodes; changes after it come from the log.
            ctx.wait(
                backlog
                    .presence(self.name.to_string())
                    .into_actor(self)
                    .map(|res, act, _| match res {
                        Ok(Some(snapshot)) => act.presence.snapshot(snapshot),
                        Ok(None) => {}
                        Err(e) => log::warn!(
                            "room {}: presence across the nodes unread ({e}); this node's members and later changes only",
                            act.name
                        ),
                    }),
            );
            return;
        }
        log::debug!(
            "room {} started (epoch {}, offset {})",
            self.name,
            self.epoch,
            self.last_offset
        );
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // A room retires with an empty history, but one stopped otherwise (shutdown), or one
        // holding retained messages only, still gives its bytes back to the total.
        self.drop_everything();
        log::debug!("room {} retired at offset {}", self.name, self.last_offset);
    }
}

impl Handler<JoinRoom> for Room {
    type Result = Result<Joined, Refusal>;

    fn handle(&mut self, msg: JoinRoom, _ctx: &mut Context<Self>) -> Self::Result {
        self.routed_seen += 1;
        self.join(msg)
    }
}

impl Handler<DirectJoin> for Room {
    type Result = Result<Joined, Refusal>;

    fn handle(&mut self, msg: DirectJoin, _ctx: &mut Context<Self>) -> Self::Result {
        self.direct_seen += 1;
        self.join(msg.0)
    }
}

impl Room {
    fn join(&mut self, msg: JoinRoom) -> Result<Joined, Refusal> {
        self.trim_history();
        let member = msg.member;
        let session = member.session;
        let user = member.user.clone();
        let outbox = member.outbox.clone();

        // Resume: every message after `since.offset` must still be in history.
        let first_kept = self
            .history
            .front()
            .map(|m| m.offset)
            .unwrap_or(self.last_offset + 1);
        let (recovered, replay_from) = match (&msg.backfill, &msg.since) {
            (Some(_), _) => (msg.backfill_complete, None),
            (None, Some(s))
                if *s.epoch == *self.epoch
                    && s.offset <= self.last_offset
                    && s.offset + 1 >= first_kept =>
            {
                (true, Some(s.offset))
            }
            _ => (false, None),
        };
        let wire = member.wire.clone();

        let newcomer = !self.members.contains_key(&session);
        if newcomer {
            if let Some(b) = &self.backlog {
                b.arrived(&self.name, session, &user);
            }
            self.members.insert(session, member);
            let flush = self.presence.arrive(&user, Instant::now());
            self.on_presence(flush);
            self.check_size();
        }

        let mut frames: Vec<Frame> = Vec::with_capacity(2 + self.history.len());
        let presence = self.presence.list(self.limits.presence_list_max);
        let answer = JoinAnswer {
            room: &self.name,
            epoch: &self.epoch,
            offset: self.last_offset,
            recovered,
            presence: &presence,
            presence_count: self.presence.len(),
        };
        if let Some(f) = wire.joined(msg.request_id.as_deref(), &answer) {
            frames.push(Frame::Text(f));
        }
        let mut ends = false;
        // A broker whose deliveries trail its order (`JoinRoom::after`) has this joiner replay
        // what the room delivered past `after` (below); retained messages among those come
        // with that replay, not twice.
        let after_replay = msg
            .after
            .as_ref()
            .filter(|a| *a.epoch == *self.epoch && a.offset <= self.last_offset)
            .map(|a| a.offset);
        // One delivery per connection of a multi-room message: a replay skips what another
        // room already gave this connection (`broker::dedupe`).
        let window = self.limits.dedupe_window;
        let first = |m: &Stored| {
            m.message_id
                .as_deref()
                .and_then(dedupe::key)
                .is_none_or(|k| dedupe::first_delivery(session, k, &outbox, window))
        };
        if let Some(backfill) = &msg.backfill {
            for b in backfill {
                if let Some(f) = wire.encode_backfill(&self.name, b) {
                    frames.push(Frame::Text(f));
                    ends |= wire.ends_after(&b.event);
                }
            }
        } else if !wire.wants_control() {
            // Other wires only carry what their owner backfills, then live traffic.
        } else if let Some(after) = replay_from {
            for m in self.history.iter().filter(|m| m.offset > after) {
                if !first(m) {
                    continue;
                }
                if let Some(e) = self.encode_stored(&wire, m) {
                    frames.extend(e.frames());
                }
            }
        } else {
            // Not resuming: the retained messages are the current state (the latest stats,
            // the last status…), in the order they were published.
            for r in self.retained.in_order() {
                if after_replay.is_some_and(|a| r.offset > a) || !first(r) {
                    continue;
                }
                if let Some(e) = self.encode_stored(&wire, r) {
                    frames.extend(e.frames());
                }
            }
        }
        // A broker whose deliveries trail its order placed this join after `after` in its
        // caller's order (`JoinRoom::after`): what this room already delivered past it is the
        // joiner's too (replayed from history), what it has yet to deliver up to it is not (a
        // floor, see `broadcast`).
        let mut floor = None;
        if let Some(after) = msg.after.as_ref().filter(|a| *a.epoch == *self.epoch) {
            if after.offset > self.last_offset {
                floor = Some(after.offset);
            } else if replay_from.is_none() && !ends {
                for m in self.history.iter().filter(|m| m.offset > after.offset) {
                    if !first(m) {
                        continue;
                    }
                    if let Some(e) = self.encode_stored(&wire, m) {
                        frames.extend(e.frames());
                        ends |= wire.ends_after(&m.event);
                    }
                }
            }
        }
        let replayed = frames.len().saturating_sub(1);
        match outbox.push_frames(frames) {
            Ok(()) => {
                if ends {
                    outbox.close(CloseCode::Normal, "operation finished");
                }
            }
            Err(PushError::Full) => {
                self.evict(session, EvictReason::SlowConsumer);
                return Err(Refusal::new(
                    ErrorCode::SlowConsumer,
                    "outbound queue is full",
                ));
            }
            Err(PushError::Closed) => {
                self.remove_member(session);
                return Err(Refusal::new(ErrorCode::Unavailable, "session is closing"));
            }
        }
        log::debug!(
            "room {}: session {session} (user {}) joined, recovered={recovered}, replayed {replayed}",
            self.name,
            user.id
        );
        // Ordered after something this room has yet to deliver: the joiner's place is there.
        let offset = match floor {
            Some(f) => {
                self.floors.insert(session, f);
                f
            }
            None => self.last_offset,
        };
        Ok(Joined {
            position: Position {
                epoch: self.epoch.clone(),
                offset,
            },
            recovered,
            // The registry adds the room's lane (it holds the room's log).
            lane: None,
        })
    }
}

impl Handler<FlushPresence> for Room {
    type Result = ();

    fn handle(&mut self, _: FlushPresence, _ctx: &mut Context<Self>) {
        self.presence.timer_fired();
        self.flush_presence();
    }
}

/// A presence change from the shared log (several nodes), in its place in the log's order.
impl Handler<PresenceChange> for Room {
    type Result = ();

    fn handle(&mut self, change: PresenceChange, _ctx: &mut Context<Self>) {
        self.routed_seen += 1;
        let flush = self.presence.change(change, Instant::now());
        self.on_presence(flush);
    }
}

impl Handler<LeaveRoom> for Room {
    type Result = Result<(), Refusal>;

    fn handle(&mut self, msg: LeaveRoom, _ctx: &mut Context<Self>) -> Self::Result {
        self.routed_seen += 1;
        if self.remove_member(msg.session) {
            if self.members.is_empty() {
                self.check_idle();
            }
            Ok(())
        } else {
            Err(Refusal::new(
                ErrorCode::NotMember,
                format!("not a member of {}", self.name),
            ))
        }
    }
}

impl Handler<GetRoomInfo> for Room {
    type Result = MessageResult<GetRoomInfo>;

    fn handle(&mut self, _: GetRoomInfo, _ctx: &mut Context<Self>) -> Self::Result {
        self.routed_seen += 1;
        MessageResult(RoomInfo {
            name: self.name.to_string(),
            members: self.members.len(),
            users: self.presence.len(),
            epoch: self.epoch.to_string(),
            offset: self.last_offset,
        })
    }
}

impl Handler<GetPresence> for Room {
    type Result = MessageResult<GetPresence>;

    fn handle(&mut self, _: GetPresence, _ctx: &mut Context<Self>) -> Self::Result {
        self.routed_seen += 1;
        MessageResult(
            self.presence
                .list(usize::MAX)
                .into_iter()
                .cloned()
                .collect(),
        )
    }
}

impl Handler<GetHistory> for Room {
    type Result = MessageResult<GetHistory>;

    fn handle(&mut self, msg: GetHistory, _ctx: &mut Context<Self>) -> Self::Result {
        self.routed_seen += 1;
        self.trim_history();
        let first_kept = self
            .history
            .front()
            .map(|m| m.offset)
            .unwrap_or(self.last_offset + 1);
        let after = msg.after.unwrap_or(0);
        MessageResult(HistoryPage {
            epoch: self.epoch.to_string(),
            offset: self.last_offset,
            complete: after + 1 >= first_kept,
            messages: self
                .history
                .iter()
                .filter(|m| m.offset > after)
                .map(|m| m.native.clone())
                .collect(),
        })
    }
}

impl Handler<CloseRoom> for Room {
    type Result = ();

    fn handle(&mut self, _: CloseRoom, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

fn stored_event<'a>(room: &'a str, m: &'a Stored) -> Event<'a> {
    Event {
        room,
        offset: m.offset,
        event: &m.event,
        data: &m.data,
        from: m.from.as_deref(),
        connection: m.connection.as_deref(),
        message_id: m.message_id.as_deref(),
        seq: m.seq,
        attachments: &m.attachments,
    }
}

/// Encodings of one frame, at most one per wire (rooms rarely see more than two wires): inline,
/// so a broadcast allocates nothing for it (a `Vec` here was an allocation per publish).
struct WireCache<T> {
    entries: smallvec::SmallVec<[(Wire, Option<T>); 2]>,
}

impl<T> Default for WireCache<T> {
    fn default() -> Self {
        Self {
            entries: smallvec::SmallVec::new(),
        }
    }
}

impl<T: Clone> WireCache<T> {
    fn seed(&mut self, wire: Wire, value: T) {
        self.entries.push((wire, Some(value)));
    }

    fn get(&mut self, wire: &Wire, encode: impl FnOnce(&Wire) -> Option<T>) -> Option<T> {
        if let Some((_, v)) = self.entries.iter().find(|(w, _)| w == wire) {
            return v.clone();
        }
        let v = encode(wire);
        self.entries.push((wire.clone(), v.clone()));
        v
    }
}
