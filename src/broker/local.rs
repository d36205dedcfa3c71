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
//! [`LocalLog`] mints the epochs and keeps retired rooms' positions (tombstones), so a room
//! re-created later continues the same offsets and its clients still resume. Epochs are unique
//! per process (a restart loses the in-memory history, so a new epoch is the honest answer); a
//! shared log (Redis) keeps them across restarts instead.
//!
//! Nothing here names an actor type: the room is a `Recipient<Ordered>`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::{Envelope, Position, PublishFuture};
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

struct LogState {
    epoch: Arc<str>,
    /// The offset of the last message ordered.
    last: u64,
    /// The room that delivers what is ordered (another one after a move: `redirect`).
    sink: Recipient<Ordered>,
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
        self.lock().sink.connected()
    }

    /// Sends what comes next to `sink` instead: `last` runs under the log's lock first, so a
    /// message it sends the old room (its hand-over) is behind everything ordered before and
    /// ahead of nothing ordered after (a room moving to another thread, `RoomRegistry`).
    pub fn redirect(&self, sink: Recipient<Ordered>, last: impl FnOnce()) {
        let mut s = self.lock();
        last();
        s.sink = sink;
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
    /// `unavailable` (on `reply` too, and no offset taken) when the room has stopped.
    pub fn order(
        &self,
        envelope: Envelope,
        received_at: Instant,
        routed: bool,
        reply: Option<oneshot::Sender<Result<Position, Refusal>>>,
    ) -> Result<Position, Refusal> {
        let mut s = self.lock();
        if !s.sink.connected() {
            let refusal = Refusal::new(ErrorCode::Unavailable, "room unavailable");
            match reply {
                Some(tx) => {
                    let _ = tx.send(Err(refusal.clone()));
                }
                None => log::warn!(
                    "room {}: a publish nobody waits for was refused: {refusal}",
                    envelope.room
                ),
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
        s.sink.do_send(Ordered {
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
}

/// What a publisher waiting on `rx` is told: the room's answer, or `unavailable` when the room
/// stopped before answering (it dropped the message, and with it the sender).
pub async fn answer(rx: oneshot::Receiver<Result<Position, Refusal>>) -> Result<Position, Refusal> {
    rx.await
        .unwrap_or_else(|_| Err(Refusal::new(ErrorCode::Unavailable, "room unavailable")))
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
    pub fn open(&mut self, room: &str, sink: Recipient<Ordered>) -> Arc<RoomLog> {
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
                sink,
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

    fn env(event: &str) -> Envelope {
        Envelope::new("r", event, RawValue::from_string("1".into()).expect("json"))
    }

    #[actix_web::test]
    async fn offsets_are_taken_in_call_order_and_delivered_in_that_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(seen.clone()).start().recipient();
        let mut local = LocalLog::new();
        let log = local.open("r", sink);
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
        let sink = Sink(seen).start().recipient();
        let mut local = LocalLog::new();
        let log = local.open("r", sink.clone());
        log.order(env("a"), Instant::now(), true, None)
            .expect("ordered");
        let before = log.position();
        local.retire("r".into(), &log);
        let again = local.open("r", sink.clone());
        assert_eq!(again.position(), before);
        let other = local.open("s", sink);
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
        let addr = Stops.start();
        let mut local = LocalLog::new();
        let log = local.open("r", addr.clone().recipient());
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
}
