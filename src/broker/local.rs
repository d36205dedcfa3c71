//! The single-node broker's log: where this process orders what is published into each room,
//! and where each room's epoch comes from.
//!
//! One [`RoomLog`] per live room. Ordering a message means, under the log's lock: take the next
//! offset and push the message, with its [`Position`], into the room's mailbox. The push is a
//! lock-free enqueue, so the lock is held for a few atomic operations; and because the offset
//! and the enqueue happen together, the room's mailbox holds the messages in offset order — the
//! room only delivers what was ordered. Whoever calls [`RoomLog::order`] first is first: that
//! is "first in, first out per publisher", whichever thread the publisher runs on.
//!
//! A join can take the same road: a thread that has joined a room before remembers its log
//! ([`known_room`]), and the next join there from that thread goes through the log straight to
//! the room ([`RoomLog::join`]) instead of through the registry's thread and back. The log counts
//! those joins, so the registry retires a room only when none is on its way
//! ([`RoomLog::close_if`]); a closed log refuses, and the joiner goes through the registry.
//!
//! [`LocalLog`] mints the epochs and keeps retired rooms' positions (tombstones), so a room
//! re-created later continues the same offsets and its clients still resume. Epochs are unique
//! per process (a restart loses the in-memory history, so a new epoch is the honest answer); a
//! shared log (Redis) keeps them across restarts instead.
//!
//! Nothing here names an actor type: the room is a `Recipient<Ordered>`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::{Envelope, JoinRoom, Joined, Position, PublishFuture};
use crate::error_code::{ErrorCode, Refusal};

/// Broker → Room: a message in its place in the room's order. Besides the envelope, what only
/// this node needs: when it reached the node (the publish-latency histogram), who waits for the
/// answer, and whether the registry routed it (the retire count).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ordered {
    pub envelope: Envelope,
    pub position: Position,
    /// When the publish reached this node.
    pub received_at: Instant,
    /// Routed by the registry (counted against its count before a room retires), not sent by
    /// a member through its lane.
    pub routed: bool,
    /// The publisher, if it waits: answered once the message is delivered to the local members.
    pub reply: Option<oneshot::Sender<Result<Position, Refusal>>>,
}

/// Broker → Room: a join sent through the room's log ([`RoomLog::join`]) by a thread that knew
/// the room, not routed by the registry. The room counts these apart from what the registry
/// routed (its idle report carries both): the registry's count cannot include them.
#[derive(Message)]
#[rtype(result = "Result<Joined, Refusal>")]
pub struct DirectJoin(pub JoinRoom);

/// Where a room's log hands what it orders and the joins it carries: the room's mailbox (the
/// same one twice, under two message types); a moved room's new mailbox after `redirect`.
pub struct RoomSinks {
    pub ordered: Recipient<Ordered>,
    pub joins: Recipient<DirectJoin>,
}

struct LogState {
    epoch: Arc<str>,
    /// The offset of the last message ordered.
    last: u64,
    /// The room that delivers what is ordered (another one after a move: `redirect`).
    sinks: RoomSinks,
    /// Joins handed to the room through this log ([`RoomLog::join`]).
    joins_sent: u64,
    /// The registry retired the room ([`RoomLog::close_if`]): nothing more goes through.
    closed: bool,
}

impl LogState {
    fn open(&self) -> bool {
        !self.closed && self.sinks.ordered.connected()
    }
}

/// The offset of the last message a [`RoomLog`] ordered, readable without its lock. The room
/// compares it with the offset it is delivering: equal means nothing waits in its mailbox
/// behind this message (the room may then write straight to idle sockets, `Room::deliver`).
#[derive(Clone, Default)]
pub struct OrderedUpTo(Arc<AtomicU64>);

impl OrderedUpTo {
    pub fn get(&self) -> u64 {
        self.0.load(AtomicOrdering::Acquire)
    }
}

/// One room's order on this node.
pub struct RoomLog {
    state: Mutex<LogState>,
    /// `state.last`, published for the room.
    up_to: OrderedUpTo,
}

impl RoomLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        // Nothing that can panic runs under this lock; a poisoned one still holds a valid state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the room behind this log still takes messages (a lane kept past its room's
    /// retirement does not: its publishes are refused `unavailable`).
    pub fn is_open(&self) -> bool {
        self.lock().open()
    }

    /// Sends what comes next to `sinks` instead: `last` runs under the log's lock first, so a
    /// message it sends the old room (its hand-over) is behind everything ordered (and every
    /// join carried) before and ahead of nothing after (a room moving to another thread,
    /// `RoomRegistry`).
    pub fn redirect(&self, sinks: RoomSinks, last: impl FnOnce()) {
        let mut s = self.lock();
        last();
        s.sinks = sinks;
    }

    /// Hands a join to the room now, in its mailbox's order, unless the room is retired or
    /// stopped: then the join comes back, for the registry to route. Not ordered against
    /// anything its caller sent through the registry that may still be on its way there (see
    /// `Broker::join_direct`).
    pub fn join(
        &self,
        join: JoinRoom,
    ) -> Result<actix::dev::RecipientRequest<DirectJoin>, Box<JoinRoom>> {
        let mut s = self.lock();
        if !s.open() {
            // Boxed: a join is large, and coming back is the rare case (a retired room).
            return Err(Box::new(join));
        }
        s.joins_sent += 1;
        Ok(s.sinks.joins.send(DirectJoin(join)))
    }

    /// The registry retires the room: closes the log if the room has seen every join sent
    /// through it (`seen`, from the room's idle report), so no join is on its way to a room
    /// about to stop. False: one is, the room will have a member (or report idle again).
    pub fn close_if(&self, seen: u64) -> bool {
        let mut s = self.lock();
        if s.joins_sent != seen {
            return false;
        }
        s.closed = true;
        true
    }

    /// Where the room reads how far the order went (see [`OrderedUpTo`]).
    pub fn up_to(&self) -> OrderedUpTo {
        self.up_to.clone()
    }

    /// The position of the last message ordered.
    pub fn position(&self) -> Position {
        let s = self.lock();
        Position {
            epoch: s.epoch.clone(),
            offset: s.last,
        }
    }

    /// Gives `envelope` the room's next offset and hands it to the room, in that order, under
    /// one lock; `reply` is answered by the room once it has delivered it. Refused
    /// `unavailable` (on `reply` too, and no offset taken) when the room has stopped; a caller
    /// with no `reply` says what a refusal means for it.
    pub fn order(
        &self,
        envelope: Envelope,
        received_at: Instant,
        routed: bool,
        reply: Option<oneshot::Sender<Result<Position, Refusal>>>,
    ) -> Result<Position, Refusal> {
        let mut s = self.lock();
        if !s.open() {
            let refusal = Refusal::new(ErrorCode::Unavailable, "room unavailable");
            if let Some(tx) = reply {
                let _ = tx.send(Err(refusal.clone()));
            }
            return Err(refusal);
        }
        s.last += 1;
        self.up_to.0.store(s.last, AtomicOrdering::Release);
        let position = Position {
            epoch: s.epoch.clone(),
            offset: s.last,
        };
        // Under the lock: the room's mailbox holds what is ordered in offset order. (If the
        // room stops between the check above and this push, the message is dropped with its
        // reply, and a waiting publisher is told `unavailable`.)
        s.sinks.ordered.do_send(Ordered {
            envelope,
            position: position.clone(),
            received_at,
            routed,
            reply,
        });
        Ok(position)
    }

    /// A member's publish through its lane: ordered now, answered once delivered.
    pub fn publish(&self, envelope: Envelope) -> PublishFuture {
        let (tx, rx) = oneshot::channel();
        let _ = self.order(envelope, Instant::now(), false, Some(tx));
        Box::pin(answer(rx))
    }

    /// A member's publish through its lane that nobody waits for (no request id): ordered now,
    /// its position or refusal known at once. Nothing comes back once the room has it — no
    /// reply channel, no wake-up of the publisher after the delivery (in small rooms that
    /// wake-up was a third of the publisher's polls: docs/benchmarks.md).
    pub fn publish_unanswered(&self, envelope: Envelope) -> Result<Position, Refusal> {
        self.order(envelope, Instant::now(), false, None)
    }
}

/// What a publisher waiting on `rx` is told: the room's answer, or `unavailable` when the room
/// stopped before answering (it dropped the message, and with it the sender).
pub async fn answer(rx: oneshot::Receiver<Result<Position, Refusal>>) -> Result<Position, Refusal> {
    rx.await
        .unwrap_or_else(|_| Err(Refusal::new(ErrorCode::Unavailable, "room unavailable")))
}

thread_local! {
    /// This thread's known rooms (see [`known_room`]).
    static KNOWN: RefCell<KnownRooms> = RefCell::new(KnownRooms::default());
}

/// Room logs this thread was handed by a join, by room name: weak, so a retired room's log goes
/// with its room (the registry and the members' lanes hold it). Swept of dead entries whenever
/// it doubles, so it holds at most about twice the live rooms this thread has joined.
#[derive(Default)]
struct KnownRooms {
    logs: HashMap<String, Weak<RoomLog>>,
    sweep_at: usize,
}

/// The log of a room a join on this thread was handed before, if it is still open.
pub fn known_room(room: &str) -> Option<Arc<RoomLog>> {
    KNOWN.with(|k| {
        let mut k = k.borrow_mut();
        let log = k.logs.get(room).and_then(Weak::upgrade);
        if log.as_ref().is_some_and(|l| l.is_open()) {
            return log;
        }
        k.logs.remove(room);
        None
    })
}

/// Remembers the log a join on this thread was handed (see [`known_room`]).
pub fn remember_room(room: &str, log: &Arc<RoomLog>) {
    KNOWN.with(|k| {
        let mut k = k.borrow_mut();
        if k.logs.len() >= k.sweep_at {
            k.logs.retain(|_, l| l.strong_count() > 0);
            k.sweep_at = (2 * k.logs.len()).max(64);
        }
        k.logs.insert(room.to_string(), Arc::downgrade(log));
    })
}

/// Tombstones kept for retired rooms; past this the oldest half is forgotten (those rooms get a
/// new epoch when re-created, so their clients reload instead of resuming).
pub const MAX_TOMBSTONES: usize = 100_000;

/// The epochs and the retired rooms' positions of this node's log.
pub struct LocalLog {
    /// Prefix of every epoch minted by this process (the node's id); a restart changes every
    /// epoch.
    process_epoch: String,
    /// Epochs minted so far (the suffix of the next one).
    minted: u64,
    /// Retired rooms' last positions, so a re-created room continues them; bounded by
    /// [`MAX_TOMBSTONES`].
    tombstones: HashMap<String, Position>,
}

impl Default for LocalLog {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalLog {
    pub fn new() -> Self {
        Self {
            process_epoch: super::node_id().to_string(),
            minted: 0,
            tombstones: HashMap::new(),
        }
    }

    /// The log of a room starting now: it continues the room's tombstone if there is one, else
    /// starts a new epoch at offset 0.
    pub fn open(&mut self, room: &str, sinks: RoomSinks) -> Arc<RoomLog> {
        let Position { epoch, offset } = self.tombstones.remove(room).unwrap_or_else(|| {
            self.minted += 1;
            Position {
                epoch: format!("{}-{}", self.process_epoch, self.minted).into(),
                offset: 0,
            }
        });
        Arc::new(RoomLog {
            state: Mutex::new(LogState {
                epoch,
                last: offset,
                sinks,
                joins_sent: 0,
                closed: false,
            }),
            up_to: OrderedUpTo(Arc::new(AtomicU64::new(offset))),
        })
    }

    /// A room retired: keep where its log stood.
    pub fn retire(&mut self, room: String, log: &RoomLog) {
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
        self.tombstones.insert(room, log.position());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    /// Collects what is ordered into it.
    struct Sink(Arc<Mutex<Vec<(String, u64)>>>);

    impl Actor for Sink {
        type Context = Context<Self>;
    }

    impl Handler<Ordered> for Sink {
        type Result = ();
        fn handle(&mut self, o: Ordered, _: &mut Context<Self>) {
            self.0
                .lock()
                .expect("test lock")
                .push((o.envelope.event, o.position.offset));
            if let Some(tx) = o.reply {
                let _ = tx.send(Ok(o.position));
            }
        }
    }

    impl Handler<DirectJoin> for Sink {
        type Result = Result<Joined, Refusal>;
        fn handle(&mut self, j: DirectJoin, _: &mut Context<Self>) -> Self::Result {
            self.0.lock().expect("test lock").push((j.0.room, 0));
            Err(Refusal::new(ErrorCode::Unavailable, "a test sink"))
        }
    }

    fn sinks<A>(addr: Addr<A>) -> RoomSinks
    where
        A: Actor<Context = Context<A>> + Handler<Ordered> + Handler<DirectJoin>,
    {
        RoomSinks {
            ordered: addr.clone().recipient(),
            joins: addr.recipient(),
        }
    }

    fn env(event: &str) -> Envelope {
        Envelope::new("r", event, RawValue::from_string("1".into()).expect("json"))
    }

    #[actix_web::test]
    async fn offsets_are_taken_in_call_order_and_delivered_in_that_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut local = LocalLog::new();
        let log = local.open("r", sinks(Sink(seen.clone()).start()));
        let a = log
            .order(env("a"), Instant::now(), true, None)
            .expect("ordered");
        let b = log.publish(env("b"));
        let c = log
            .order(env("c"), Instant::now(), false, None)
            .expect("ordered");
        assert_eq!((a.offset, c.offset), (1, 3));
        assert_eq!(b.await.expect("delivered").offset, 2);
        assert_eq!(a.epoch, c.epoch);
        let seen = seen.lock().expect("test lock").clone();
        assert_eq!(
            seen,
            vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 3)]
        );
    }

    #[actix_web::test]
    async fn a_retired_room_continues_its_epoch_and_offsets_and_another_room_gets_a_new_epoch() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(seen).start();
        let mut local = LocalLog::new();
        let log = local.open("r", sinks(sink.clone()));
        log.order(env("a"), Instant::now(), true, None)
            .expect("ordered");
        let before = log.position();
        local.retire("r".into(), &log);
        let again = local.open("r", sinks(sink.clone()));
        assert_eq!(again.position(), before);
        let other = local.open("s", sinks(sink));
        assert_ne!(other.position().epoch, before.epoch);
        assert_eq!(other.position().offset, 0);
    }

    #[actix_web::test]
    async fn a_stopped_room_refuses_unavailable_and_takes_no_offset() {
        struct Stops;
        impl Actor for Stops {
            type Context = Context<Self>;
        }
        impl Handler<Ordered> for Stops {
            type Result = ();
            fn handle(&mut self, _: Ordered, ctx: &mut Context<Self>) {
                ctx.stop();
            }
        }
        impl Handler<DirectJoin> for Stops {
            type Result = Result<Joined, Refusal>;
            fn handle(&mut self, _: DirectJoin, _: &mut Context<Self>) -> Self::Result {
                Err(Refusal::new(ErrorCode::Unavailable, "a test sink"))
            }
        }
        let addr = Stops.start();
        let mut local = LocalLog::new();
        let log = local.open("r", sinks(addr.clone()));
        // The first message stops it; wait until its mailbox is closed.
        log.order(env("stop"), Instant::now(), true, None)
            .expect("ordered");
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while addr.connected() {
            assert!(Instant::now() < deadline, "the sink did not stop");
            tokio::task::yield_now().await;
        }
        let refused = log.publish(env("late")).await.expect_err("refused");
        assert_eq!(refused.code, ErrorCode::Unavailable);
        assert_eq!(log.position().offset, 1);
    }

    struct NoEvict;

    impl Actor for NoEvict {
        type Context = Context<Self>;
    }

    impl Handler<super::super::Evicted> for NoEvict {
        type Result = ();
        fn handle(&mut self, _: super::super::Evicted, _: &mut Context<Self>) {}
    }

    fn join_msg(room: &str) -> JoinRoom {
        JoinRoom {
            room: room.into(),
            member: super::super::Member {
                session: super::super::next_session_id(),
                user: Arc::new(crate::auth::UserInfo {
                    id: "u".into(),
                    name: None,
                }),
                outbox: crate::transport::outbox::Outbox::new(16, 1024),
                control: NoEvict.start().recipient().downgrade(),
                wire: crate::protocol::Wire::Native,
            },
            since: None,
            request_id: None,
            backfill: None,
            backfill_complete: false,
            after: None,
        }
    }

    #[actix_web::test]
    async fn a_log_is_closed_only_when_its_room_saw_every_join_it_carried() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut local = LocalLog::new();
        let log = local.open("r", sinks(Sink(seen.clone()).start()));
        // Carried to the room, in the mailbox's order behind what was ordered before it.
        log.order(env("a"), Instant::now(), false, None)
            .expect("ordered");
        let answer = log.join(join_msg("r")).ok().expect("carried");
        // The room has not reported this join: the registry may not retire it.
        assert!(!log.close_if(0));
        assert!(log.is_open());
        answer
            .await
            .expect("the sink answered")
            .expect_err("the test sink refuses");
        assert_eq!(
            *seen.lock().expect("test lock"),
            vec![("a".into(), 1), ("r".into(), 0)]
        );
        // Reported: closed, and from then on nothing goes through it.
        assert!(log.close_if(1));
        assert!(!log.is_open());
        let back = log.join(join_msg("r")).err().expect("refused");
        assert_eq!(back.room, "r");
        assert_eq!(
            log.publish(env("late")).await.expect_err("refused").code,
            ErrorCode::Unavailable
        );
    }

    #[actix_web::test]
    async fn a_thread_knows_the_rooms_it_joined_while_their_logs_are_open() {
        let mut local = LocalLog::new();
        let log = local.open("known", sinks(Sink(Arc::default()).start()));
        assert!(known_room("known").is_none());
        remember_room("known", &log);
        assert!(known_room("known").is_some_and(|l| Arc::ptr_eq(&l, &log)));
        // Another thread has its own table.
        let elsewhere = std::thread::spawn(|| known_room("known").is_none());
        assert!(elsewhere.join().expect("thread"));
        assert!(log.close_if(0));
        assert!(known_room("known").is_none(), "a closed log is forgotten");
        // Dead entries are swept as the table grows: it does not keep every room ever joined.
        for i in 0..1000 {
            let l = local.open(&format!("gone-{i}"), sinks(Sink(Arc::default()).start()));
            remember_room(&format!("gone-{i}"), &l);
        }
        let held = KNOWN.with(|k| k.borrow().logs.len());
        assert!(held <= 128, "{held} entries for rooms that are all gone");
    }
}
