//! Room and registry invariants, tested on the actors themselves (no server, no socket).
//!
//! Each test starts a [`RoomRegistry`] (and through it the [`Room`]s) inside the test's actix
//! system and plugs in probe members: a [`Member`] whose outbox the test drains and decodes,
//! whose `Evicted` goes to a probe actor. Publishers send the way the server's own callers do:
//! through the [`LocalBroker`] (the registry route) or, once their join answer is back, through
//! the lane it carries (`Joined::lane`, as `actors/session/publish.rs` does). Every wait has a
//! timeout; nothing sleeps.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::{join_all, poll_fn};
use serde_json::{json, value::RawValue, Value};
use switchyard::actors::local_broker::LocalBroker;
use switchyard::actors::registry::{ListRooms, QueryPresence, RoomRegistry, RouteJoin};
use switchyard::actors::room::{JoinRoom, Joined, LeaveRoom, RoomIdle, RoomLimits};
use switchyard::actors::{next_session_id, Evicted, Member, SessionId};
use switchyard::auth::UserInfo;
use switchyard::broker::{Broker, Envelope, PublishFuture};
use switchyard::error_code::ErrorCode;
use switchyard::metrics::Metrics;
use switchyard::protocol::{Since, Wire};
use switchyard::transport::outbox::{Frame, Outbox, Taken};

/// How long any single wait may take before the test fails (generous: a loaded 2-core CI).
const WAIT: Duration = Duration::from_secs(20);

const ROOM: &str = "invariants";

fn limits(history_size: usize) -> RoomLimits {
    RoomLimits {
        history_size,
        history_ttl: Duration::from_secs(3600),
        history_max_bytes: 64 << 20,
        history_total_max_bytes: 256 << 20,
        presence_list_max: 100,
        retained_events_max: 32,
        dedupe_window: 32,
        direct_writes_per_100ms: 2000,
    }
}

/// A registry on this system; `room_threads` 0 puts its rooms on the test's own thread (the
/// registry's arbiter), which makes interleavings deterministic.
fn registry(room_threads: usize, history_size: usize) -> Addr<RoomRegistry> {
    RoomRegistry::new(room_threads, limits(history_size), Arc::new(Metrics::new())).start()
}

/// Receives the `Evicted` a room sends a member it drops; counts them.
struct EvictProbe(Arc<std::sync::atomic::AtomicUsize>);

impl Actor for EvictProbe {
    type Context = Context<Self>;
}

impl Handler<Evicted> for EvictProbe {
    type Result = ();

    fn handle(&mut self, _: Evicted, _: &mut Context<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The answer to a join sent to the registry: the room's, within [`WAIT`].
async fn join_answer(
    sent: actix::prelude::Request<RoomRegistry, RouteJoin>,
) -> Result<Joined, switchyard::error_code::Refusal> {
    let answer = async { sent.await.expect("registry reachable").joined().await };
    tokio::time::timeout(WAIT, answer)
        .await
        .expect("join answered in time")
}

/// One connection as a room sees it, and the frames the room pushed to it.
struct Probe {
    session: SessionId,
    user: Arc<UserInfo>,
    outbox: Arc<Outbox>,
    control: Recipient<Evicted>,
    evicted: Arc<std::sync::atomic::AtomicUsize>,
    pending: VecDeque<Value>,
}

impl Probe {
    fn new(user: &str) -> Self {
        let evicted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        Self {
            session: next_session_id(),
            user: Arc::new(UserInfo {
                id: user.to_string(),
                name: None,
            }),
            // Far above anything a test queues: a probe is never a slow consumer.
            outbox: Outbox::new(1_000_000, 1 << 30),
            control: EvictProbe(evicted.clone()).start().recipient(),
            evicted,
            pending: VecDeque::new(),
        }
    }

    fn member(&self) -> Member {
        Member {
            session: self.session,
            user: self.user.clone(),
            outbox: self.outbox.clone(),
            control: self.control.downgrade(),
            wire: Wire::Native,
        }
    }

    fn join_msg(&self, room: &str) -> JoinRoom {
        JoinRoom {
            room: room.to_string(),
            member: self.member(),
            since: None,
            request_id: None,
            backfill: None,
            backfill_complete: false,
            after: None,
        }
    }

    async fn join(&self, registry: &Addr<RoomRegistry>, room: &str) -> Joined {
        join_answer(registry.send(RouteJoin(self.join_msg(room))))
            .await
            .expect("join accepted")
    }

    fn leave_msg(&self, room: &str) -> LeaveRoom {
        LeaveRoom {
            room: room.to_string(),
            session: self.session,
        }
    }

    /// The next frame the room pushed, decoded.
    async fn next(&mut self) -> Value {
        if let Some(v) = self.pending.pop_front() {
            return v;
        }
        let outbox = self.outbox.clone();
        let taken = tokio::time::timeout(WAIT, poll_fn(|cx| outbox.poll_take(cx)))
            .await
            .unwrap_or_else(|_| panic!("user {}: no frame within {WAIT:?}", self.user.id));
        let Taken::Frames(frames) = taken else {
            panic!("user {}: outbox ended: {taken:?}", self.user.id);
        };
        for f in frames {
            let Frame::Text(b) = f else {
                panic!("unexpected binary frame")
            };
            self.pending
                .push_back(serde_json::from_slice(&b).expect("frames are JSON"));
        }
        self.pending.pop_front().expect("Frames is never empty")
    }

    /// The next `n` `message` frames, skipping presence.
    async fn messages(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let v = self.next().await;
            if v["type"] == "message" {
                out.push(v);
            }
        }
        out
    }
}

fn data(v: Value) -> Box<RawValue> {
    RawValue::from_string(v.to_string()).expect("valid JSON")
}

/// A publish by publisher `p`, its `i`th message.
fn tagged(room: &str, p: usize, i: usize) -> Envelope {
    Envelope::new(room, "m", data(json!({ "p": p, "i": i })))
}

/// A member's publish through the lane its join answer carries, as a session does.
fn direct(joined: &Joined, msg: Envelope) -> PublishFuture {
    joined
        .lane
        .as_ref()
        .expect("the local broker gives a joiner a lane")
        .publish(msg)
}

async fn all_ok(futs: Vec<PublishFuture>) -> Vec<u64> {
    tokio::time::timeout(WAIT, join_all(futs))
        .await
        .expect("every publish answered in time")
        .into_iter()
        .map(|r| r.expect("publish accepted").offset)
        .collect()
}

fn tag(v: &Value) -> (u64, u64) {
    (
        v["data"]["p"].as_u64().expect("p"),
        v["data"]["i"].as_u64().expect("i"),
    )
}

fn offset(v: &Value) -> u64 {
    v["offset"].as_u64().expect("offset")
}

// ---- 1. offsets are contiguous per epoch, one order for every member ------------------------

#[actix_web::test]
async fn offsets_are_contiguous_and_every_member_sees_one_order() {
    const PER_PUBLISHER: usize = 250;
    // Rooms on a thread of their own: publishers and the room run at the same time.
    let registry = registry(2, 10_000);
    let broker = Arc::new(LocalBroker::new(registry.clone()));
    let mut members: Vec<Probe> = (0..3).map(|i| Probe::new(&format!("m{i}"))).collect();
    let mut joins = Vec::new();
    for m in &members {
        joins.push(m.join(&registry, ROOM).await);
    }
    let epoch = joins[0].position.epoch.clone();
    assert!(joins
        .iter()
        .all(|j| j.position.epoch == epoch && j.position.offset == 0));

    // Publishers 0 and 1 go through the broker (the registry route), 2 and 3 are members 0
    // and 1 publishing straight to the room; all four at once, none awaiting between sends.
    let mut tasks = Vec::new();
    for p in 0..4usize {
        let broker = broker.clone();
        let route = (p >= 2).then(|| joins[p - 2].clone());
        tasks.push(actix::spawn(async move {
            let mut futs: Vec<PublishFuture> = Vec::with_capacity(PER_PUBLISHER);
            for i in 0..PER_PUBLISHER {
                let msg = tagged(ROOM, p, i);
                futs.push(match &route {
                    Some(joined) => direct(joined, msg),
                    None => broker.publish(msg),
                });
                if i % 20 == 19 {
                    // Let the other publishers interleave.
                    tokio::task::yield_now().await;
                }
            }
            all_ok(futs).await
        }));
    }
    let mut answered: Vec<u64> = Vec::new();
    for t in tasks {
        answered.extend(t.await.expect("publisher task"));
    }
    let n = 4 * PER_PUBLISHER as u64;
    answered.sort_unstable();
    assert_eq!(
        answered,
        (1..=n).collect::<Vec<_>>(),
        "answered offsets are 1..=n"
    );

    let mut orders = Vec::new();
    for m in &mut members {
        let got = m.messages(n as usize).await;
        let offsets: Vec<u64> = got.iter().map(offset).collect();
        assert_eq!(
            offsets,
            (1..=n).collect::<Vec<_>>(),
            "user {}: offsets 1..=n, no gap, no repeat",
            m.user.id
        );
        orders.push(got.iter().map(tag).collect::<Vec<_>>());
    }
    assert!(
        orders.iter().all(|o| *o == orders[0]),
        "every member sees the same order"
    );
}

// ---- 2. first in, first out per publisher, across the registry and the direct route --------

#[actix_web::test]
async fn each_publisher_is_delivered_in_the_order_it_sent_across_both_routes() {
    const BURST: usize = 100;
    // Rooms on the test's thread: nothing runs while a publisher sends its burst, so the room's
    // mailbox holds whole bursts (the situation a bounded mailbox would reorder).
    let registry = registry(0, 10_000);
    let broker = LocalBroker::new(registry.clone());
    let mut observer = Probe::new("observer");
    observer.join(&registry, ROOM).await;
    let publisher = Probe::new("publisher");

    // The registry route and the direct route, kept apart so the test can wait for them in
    // any order: the order of delivery is fixed when a publish is sent, not when its answer
    // is awaited (a session's publish futures are polled whenever its context gets to them).
    let mut routed: Vec<PublishFuture> = Vec::new();
    let mut straight: Vec<PublishFuture> = Vec::new();
    // Publisher 1, before it is a member: the registry route.
    for i in 0..BURST {
        routed.push(broker.publish(tagged(ROOM, 1, i)));
    }
    // Publisher 2, a server-side producer: the registry route throughout.
    for i in 0..BURST {
        routed.push(broker.publish(tagged(ROOM, 2, i)));
    }
    // Publisher 1 joins and waits for the answer (as a session does: the answer comes back only
    // after the room handled everything routed before it) ...
    let joined = publisher.join(&registry, ROOM).await;
    // ... then publishes straight to the room, then through the registry again (as after a
    // leave), interleaved with publisher 2, nobody awaiting between sends.
    for i in BURST..2 * BURST {
        straight.push(direct(&joined, tagged(ROOM, 1, i)));
        routed.push(broker.publish(tagged(ROOM, 2, i)));
    }
    for i in 2 * BURST..3 * BURST {
        routed.push(broker.publish(tagged(ROOM, 1, i)));
        routed.push(broker.publish(tagged(ROOM, 2, i)));
    }
    let total = routed.len() + straight.len();
    // The routed answers first: the registry forwards the later bursts while the direct
    // publishes' futures are not polled yet.
    all_ok(routed).await;
    all_ok(straight).await;

    let got = observer.messages(total).await;
    for p in [1u64, 2] {
        let seen: Vec<u64> = got
            .iter()
            .map(tag)
            .filter(|(q, _)| *q == p)
            .map(|(_, i)| i)
            .collect();
        let sent: Vec<u64> = (0..seen.len() as u64).collect();
        assert_eq!(seen, sent, "publisher {p}: delivered in the order it sent");
    }
}

// ---- 3. a retired room loses nothing in flight ---------------------------------------------

#[actix_web::test]
async fn a_room_retired_while_publishes_are_in_flight_loses_none_and_reuses_no_offset() {
    const ROUNDS: usize = 12;
    const BURST: usize = 30;
    // No history: a room with no members is idle at once, so every leave below reports
    // `RoomIdle`, sometimes with publishes still routed behind it. Rooms on the test's thread:
    // the registry routes a whole burst before the room runs, so those publishes are in flight
    // when the idle report reaches the registry.
    let registry = registry(0, 0);
    let broker = LocalBroker::new(registry.clone());
    let mut member = Probe::new("member");
    let mut answered: Vec<u64> = Vec::new();
    let mut epochs = HashSet::new();
    let mut instances = 0;
    // Each room instance has its own log (its lane): a new one means the room was re-created.
    let mut last_lane: Option<Arc<switchyard::broker::local::RoomLog>> = None;
    let mut next_i = 0usize;
    for round in 0..ROUNDS {
        let joined = member.join(&registry, ROOM).await;
        epochs.insert(joined.position.epoch.to_string());
        let lane = joined.lane.clone().expect("a lane");
        if !last_lane.as_ref().is_some_and(|l| Arc::ptr_eq(l, &lane)) {
            instances += 1;
            last_lane = Some(lane);
        }
        // A burst while the member is in the room, its leave, and (in two rounds of three) a
        // burst behind the leave: in flight when the room reports idle.
        let mut during: Vec<PublishFuture> = Vec::new();
        for _ in 0..BURST {
            during.push(broker.publish(tagged(ROOM, 0, next_i)));
            next_i += 1;
        }
        let leave = registry.send(member.leave_msg(ROOM));
        let mut behind: Vec<PublishFuture> = Vec::new();
        for _ in 0..(round % 3) * BURST {
            behind.push(broker.publish(tagged(ROOM, 0, next_i)));
            next_i += 1;
        }
        let during = all_ok(during).await;
        answered.extend(&during);
        answered.extend(all_ok(behind).await);
        tokio::time::timeout(WAIT, leave)
            .await
            .expect("leave answered")
            .expect("registry reachable")
            .expect("was a member");

        // Everything published while the member was in the room reached it, in order.
        let got: Vec<u64> = member.messages(BURST).await.iter().map(offset).collect();
        assert_eq!(got, during, "round {round}: the member got every message");
        assert_eq!(
            during,
            (joined.position.offset + 1..=joined.position.offset + BURST as u64)
                .collect::<Vec<_>>(),
            "round {round}: offsets continue from the join answer"
        );
        // Nothing else (the burst behind the leave is not for it).
        assert!(member.pending.is_empty(), "round {round}: extra frames");
    }
    answered.sort_unstable();
    assert_eq!(
        answered,
        (1..=next_i as u64).collect::<Vec<_>>(),
        "every publish answered with a distinct offset, none reused after a retirement"
    );
    assert_eq!(epochs.len(), 1, "a re-created room keeps its epoch");
    assert!(
        instances > 1,
        "the room was retired and re-created at least once ({instances} instance)"
    );
}

/// A session's join of a room its thread joined before goes through the room's log, not the
/// registry (`Broker::join_direct`). Such a join may be on its way while the room, just left
/// by its last member, reports idle: the registry must not retire the room under it (the log
/// counts the joins it carried, the room the ones it saw). Once a room is retired, the next
/// join finds its log closed and goes through the registry, which creates the room again.
#[actix_web::test]
async fn a_join_through_a_known_rooms_log_is_never_lost_to_the_rooms_retirement() {
    const KNOWN: &str = "known";
    // No history: a room its last member leaves is idle at once. A fresh registry: this is
    // its first room (instance 1).
    let registry = registry(0, 0);
    let broker = LocalBroker::new(registry.clone());
    let mut a = Probe::new("a");
    let mut b = Probe::new("b");
    let joined_a = answered(broker.join(a.join_msg(KNOWN))).await;
    // This thread now knows the room: b's join goes through its log, to the same room.
    let joined_b = answered(broker.join_direct(b.join_msg(KNOWN))).await;
    let lane = joined_b.lane.clone().expect("a lane");
    assert!(Arc::ptr_eq(&lane, joined_a.lane.as_ref().expect("a lane")));

    // The report the room sends when its last member leaves, as it would read had a left
    // before b's join reached the room: one message routed by the registry (a's join) and no
    // join through the log seen. The log carried one: the room must stay.
    registry
        .send(RoomIdle {
            name: KNOWN.into(),
            room_id: 1,
            routed_seen: 1,
            direct_seen: 0,
        })
        .await
        .expect("registry reachable");
    let offset = all_ok(vec![direct(&joined_b, tagged(KNOWN, 1, 1))]).await[0];
    for probe in [&mut a, &mut b] {
        let got = probe.messages(1).await;
        assert_eq!((tag(&got[0]), self::offset(&got[0])), ((1, 1), offset));
    }

    // Both leave: the room retires for real, its log closes.
    answered_leave(broker.leave(a.leave_msg(KNOWN))).await;
    answered_leave(broker.leave(b.leave_msg(KNOWN))).await;
    tokio::time::timeout(WAIT, async {
        while lane.is_open() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the room retired");
    // The next join goes through the registry: a new room, continuing the retired one's order.
    let mut c = Probe::new("c");
    let joined_c = answered(broker.join_direct(c.join_msg(KNOWN))).await;
    let again = joined_c.lane.clone().expect("a lane");
    assert!(!Arc::ptr_eq(&again, &lane), "a new instance");
    assert!(again.is_open());
    assert_eq!(joined_c.position.offset, offset, "the order continues");
    let next = all_ok(vec![direct(&joined_c, tagged(KNOWN, 2, 2))]).await[0];
    assert_eq!(next, offset + 1);
    assert_eq!(self::offset(&c.messages(1).await[0]), next);
}

async fn answered(join: switchyard::broker::JoinFuture) -> Joined {
    tokio::time::timeout(WAIT, join)
        .await
        .expect("join answered in time")
        .expect("join accepted")
}

async fn answered_leave(leave: switchyard::broker::LeaveFuture) {
    tokio::time::timeout(WAIT, leave)
        .await
        .expect("leave answered in time")
        .expect("was a member");
}

#[actix_web::test]
async fn a_room_is_not_retired_while_it_holds_history_so_a_late_joiner_can_resume() {
    const BURST: usize = 30;
    let registry = registry(0, 100);
    let broker = LocalBroker::new(registry.clone());
    let publisher = Probe::new("publisher");
    let joined = publisher.join(&registry, ROOM).await;
    let mut futs = Vec::new();
    for i in 0..BURST {
        futs.push(broker.publish(tagged(ROOM, 0, i)));
    }
    all_ok(futs).await;
    // The last member leaves: the room checks whether it is idle as it handles the leave.
    registry
        .send(publisher.leave_msg(ROOM))
        .await
        .expect("registry reachable")
        .expect("was a member");
    // Whatever the room reported was queued at the registry before the leave was answered;
    // this round trip is handled after it.
    let rooms = registry.send(ListRooms).await.expect("registry reachable");
    assert_eq!(rooms.len(), 1, "a room holding history stays");

    // Someone who saw nothing of it resumes from the start: all of it is replayed.
    let mut late = Probe::new("late");
    let msg = JoinRoom {
        since: Some(Since {
            epoch: joined.position.epoch.to_string(),
            offset: 0,
        }),
        ..late.join_msg(ROOM)
    };
    let resumed = join_answer(registry.send(RouteJoin(msg)))
        .await
        .expect("join accepted");
    assert!(resumed.recovered, "nothing was lost");
    assert_eq!(resumed.position.offset, BURST as u64);
    let got: Vec<u64> = late.messages(BURST).await.iter().map(offset).collect();
    assert_eq!(got, (1..=BURST as u64).collect::<Vec<_>>());
}

// ---- 4. a user with several connections is present once ------------------------------------

#[actix_web::test]
async fn a_user_with_several_connections_is_present_once() {
    let registry = registry(1, 100);
    let broker = LocalBroker::new(registry.clone());
    let mut observer = Probe::new("observer");
    observer.join(&registry, ROOM).await;
    assert_eq!(observer.next().await["type"], "joined");

    let mut alice: Vec<Probe> = (0..3).map(|_| Probe::new("alice")).collect();
    for a in &alice {
        a.join(&registry, ROOM).await;
    }
    // Her third connection's join answer lists her once too.
    let answer = alice[2].next().await;
    assert_eq!(answer["type"], "joined");
    assert_eq!(
        answer["presence"],
        json!([{"user": "alice"}, {"user": "observer"}])
    );
    assert_eq!(answer["presence_count"], 2);
    let users = |list: Option<Vec<UserInfo>>| -> Vec<String> {
        list.expect("room exists")
            .into_iter()
            .map(|u| u.id)
            .collect()
    };
    let present = users(
        registry
            .send(QueryPresence { room: ROOM.into() })
            .await
            .unwrap(),
    );
    assert_eq!(present, ["alice", "observer"], "alice listed once");

    let frames = presence_until_marker(&mut observer, &broker, 1).await;
    assert_eq!(
        frames,
        [json!({"joined": [{"user": "alice"}]})],
        "alice's arrival announced once for three connections"
    );

    // Two of her three connections leave: she is still there.
    for a in &alice[..2] {
        registry.send(a.leave_msg(ROOM)).await.unwrap().unwrap();
    }
    let present = users(
        registry
            .send(QueryPresence { room: ROOM.into() })
            .await
            .unwrap(),
    );
    assert_eq!(present, ["alice", "observer"], "alice still present");
    let frames = presence_until_marker(&mut observer, &broker, 2).await;
    assert!(
        frames.is_empty(),
        "no departure while a connection stays: {frames:?}"
    );

    // The last one leaves: now she is gone, announced once.
    registry
        .send(alice[2].leave_msg(ROOM))
        .await
        .unwrap()
        .unwrap();
    let present = users(
        registry
            .send(QueryPresence { room: ROOM.into() })
            .await
            .unwrap(),
    );
    assert_eq!(present, ["observer"]);
    let frames = presence_until_marker(&mut observer, &broker, 3).await;
    assert_eq!(frames, [json!({"left": [{"user": "alice"}]})]);
}

/// Publishes marker `m` and returns the presence changes the observer got before it, as
/// `{"joined": [...]}` / `{"left": [...]}`.
async fn presence_until_marker(observer: &mut Probe, broker: &LocalBroker, m: u64) -> Vec<Value> {
    tokio::time::timeout(
        WAIT,
        broker.publish(Envelope::new(ROOM, "marker", data(json!(m)))),
    )
    .await
    .expect("marker answered")
    .expect("marker published");
    let mut out = Vec::new();
    loop {
        let v = observer.next().await;
        match v["type"].as_str() {
            Some("presence") => {
                let mut change = v.as_object().expect("object").clone();
                change.remove("type");
                change.remove("room");
                out.push(Value::Object(change));
            }
            Some("message") if v["event"] == "marker" && v["data"] == json!(m) => return out,
            _ => panic!("unexpected frame {v}"),
        }
    }
}

// ---- 5. the broker contract ----------------------------------------------------------------

/// The broker numbers messages, not the room: every publish is answered with the room's epoch
/// (the one a join reports) and its offset, and a re-created room continues both.
#[actix_web::test]
async fn the_broker_answers_each_publish_with_the_rooms_epoch_and_offset() {
    let registry = registry(0, 0);
    let broker = LocalBroker::new(registry.clone());
    let first = tokio::time::timeout(WAIT, broker.publish(tagged(ROOM, 0, 0)))
        .await
        .expect("answered in time")
        .expect("accepted");
    assert_eq!(first.offset, 1);
    let mut member = Probe::new("member");
    let joined = member.join(&registry, ROOM).await;
    assert_eq!(
        joined.position, first,
        "a join reports the broker's position"
    );
    let through_lane = direct(&joined, tagged(ROOM, 0, 1)).await.expect("accepted");
    assert_eq!(through_lane.epoch, first.epoch);
    assert_eq!(through_lane.offset, 2);
    let got = member.messages(1).await;
    assert_eq!(offset(&got[0]), 2);
    assert_eq!(got[0]["data"], json!({"p": 0, "i": 1}));
    // Another room has an epoch of its own.
    let other = broker
        .publish(tagged("elsewhere", 0, 0))
        .await
        .expect("accepted");
    assert_ne!(other.epoch, first.epoch);
    assert_eq!(other.offset, 1);
}

#[actix_web::test]
async fn a_publish_the_broker_cannot_deliver_is_refused_unavailable_never_left_hanging() {
    // The registry is gone: its mailbox is closed.
    let gone = {
        let ctx = Context::<RoomRegistry>::new();
        ctx.address()
    };
    let broker = LocalBroker::new(gone);
    let refusal = tokio::time::timeout(WAIT, broker.publish(tagged(ROOM, 0, 0)))
        .await
        .expect("answered, not left hanging")
        .expect_err("refused");
    assert_eq!(refusal.code, ErrorCode::Unavailable);
    // Nobody waits for this one; it must not panic either.
    broker.publish_and_forget(tagged(ROOM, 0, 1));

    // The registry is up, but a member holds the lane of a room that has since retired (it
    // left, the room had nothing to keep, the registry closed it): its publish is refused.
    let registry = registry(0, 0);
    let probe = Probe::new("member");
    let joined = probe.join(&registry, ROOM).await;
    let lane = joined.lane.clone().expect("a lane");
    registry
        .send(probe.leave_msg(ROOM))
        .await
        .expect("registry reachable")
        .expect("was a member");
    let deadline = std::time::Instant::now() + WAIT;
    while lane.is_open() {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle room was not retired within {WAIT:?}"
        );
        tokio::task::yield_now().await;
    }
    let refusal = tokio::time::timeout(WAIT, direct(&joined, tagged(ROOM, 0, 3)))
        .await
        .expect("answered, not left hanging")
        .expect_err("refused");
    assert_eq!(refusal.code, ErrorCode::Unavailable);
    // The same publish with nobody waiting (a session's publish without an id) is refused at
    // once, as the lane orders it: the session answers that with an error frame.
    let refusal = lane
        .publish_unanswered(tagged(ROOM, 0, 3))
        .expect_err("refused");
    assert_eq!(refusal.code, ErrorCode::Unavailable);
    assert_eq!(probe.evicted.load(std::sync::atomic::Ordering::Relaxed), 0);
    // The room's next instance continues the order: nothing was numbered for the refusal.
    let next = LocalBroker::new(registry.clone())
        .publish(tagged(ROOM, 0, 4))
        .await
        .expect("accepted");
    assert_eq!(next.offset, 1);
    assert_eq!(next.epoch, joined.position.epoch);
}

#[actix_web::test]
async fn publish_and_forget_keeps_one_publishers_order() {
    const N: usize = 300;
    let registry = registry(0, 10_000);
    let broker = LocalBroker::new(registry.clone());
    let mut observer = Probe::new("observer");
    observer.join(&registry, ROOM).await;
    // One publisher alternating between the two calls, never awaiting in between.
    let mut futs = Vec::new();
    for i in 0..N {
        if i % 3 == 0 {
            futs.push(broker.publish(tagged(ROOM, 0, i)));
        } else {
            broker.publish_and_forget(tagged(ROOM, 0, i));
        }
    }
    all_ok(futs).await;
    let got: Vec<u64> = observer
        .messages(N)
        .await
        .iter()
        .map(|v| tag(v).1)
        .collect();
    assert_eq!(got, (0..N as u64).collect::<Vec<_>>());
}

// ---- found while writing these: publishes overtaking a join into a fresh room ----

/// One sender's join and publishes, sent to the registry in that order, must reach the room in
/// that order: that is what an operation relies on when it sends a watcher's join (with its
/// backfill) and then its next events. A room's mailbox used to be bounded (actix's default of
/// 16) until its `started` made it unbounded, and the registry forwards joins with `send`
/// (which parks once 16 are queued, and then defers the next `send` until the room runs) but
/// publishes with `do_send` (never deferred). So in a room just created by a burst of
/// publishes, the second join was overtaken by the publishes sent after it, and its member
/// never got them. The registry now creates the room's mailbox unbounded.
#[actix_web::test]
async fn a_join_is_not_overtaken_by_publishes_sent_after_it_into_a_fresh_room() {
    // Rooms on the test's thread: the registry routes everything below before the new room
    // has run `started`.
    let registry = registry(0, 10_000);
    // The registry itself has started (and made its own mailbox unbounded), as in a server.
    registry.send(ListRooms).await.expect("registry running");
    let broker = LocalBroker::new(registry.clone());
    let mut futs: Vec<PublishFuture> = Vec::new();
    for i in 0..20 {
        futs.push(broker.publish(tagged(ROOM, 0, i)));
    }
    let mut first = Probe::new("first");
    let mut second = Probe::new("second");
    // Sent (in the registry's mailbox) here, before the publishes below.
    let join_first = registry.send(RouteJoin(first.join_msg(ROOM)));
    let join_second = registry.send(RouteJoin(second.join_msg(ROOM)));
    for i in 20..25 {
        futs.push(broker.publish(tagged(ROOM, 0, i)));
    }
    all_ok(futs).await;
    let joined_first = join_answer(join_first).await.unwrap();
    let joined_second = join_answer(join_second).await.unwrap();
    assert_eq!(joined_first.position.offset, 20);
    let got: Vec<u64> = first.messages(5).await.iter().map(offset).collect();
    assert_eq!(got, [21, 22, 23, 24, 25]);
    assert_eq!(
        joined_second.position.offset, 20,
        "the second join was sent before publishes 21..=25"
    );
    let got: Vec<u64> = second.messages(5).await.iter().map(offset).collect();
    assert_eq!(got, [21, 22, 23, 24, 25]);
}

// ---- the operation's case: one caller's events and a watcher's join --------------------------

/// An operation hands the broker its events and a watcher's join (with the backfill it computed
/// at that moment) without waiting between them. The watcher must get its backfill and then
/// exactly the events handed over after the join: first in, first out per caller across
/// `publish_and_forget` and `join` is what promises it — whether the room runs on the caller's
/// thread or on another.
#[actix_web::test]
async fn a_callers_join_takes_its_place_between_its_publishes() {
    for threads in [0, 2] {
        let registry = registry(threads, 10_000);
        let broker = LocalBroker::new(registry.clone());
        let joined = join_between_publishes(&broker, &format!("operation:order-{threads}")).await;
        // Locally the room's mailbox is the order: the join lands right after event 50.
        assert_eq!(
            joined.position.offset, 50,
            "rooms={threads}: joined after 50"
        );
    }
}

/// The same contract kept by the cluster broker, whose deliveries come back from Redis through
/// the node's reader, later than the join goes to the room (`JoinRoom::after` is what keeps it).
#[actix_web::test]
async fn the_cluster_broker_keeps_a_callers_join_between_its_publishes() {
    let prefix = format!("sy-test-{}", uuid::Uuid::new_v4().simple());
    let settings = switchyard::config::Settings {
        redis_url: Some("redis://127.0.0.1:6379".into()),
        redis_prefix: prefix.clone(),
        history_size: 10_000,
        ..Default::default()
    };
    for threads in [0, 2] {
        let log = switchyard::cluster::RedisLog::connect(&settings).expect("redis url");
        let registry = RoomRegistry::new(threads, limits(10_000), Arc::new(Metrics::new()))
            .with_shared_log(log.clone())
            .start();
        let broker = switchyard::cluster::RedisBroker::start(log, registry);
        join_between_publishes(&*broker, &format!("operation:order-{threads}")).await;
    }
    crate::helpers::forget_redis_prefix(&prefix).await;
}

/// 50 events, a watcher's join with its backfill (as of event 50), 30 more events, one caller,
/// nothing awaited in between: the watcher gets its backfill, then exactly events 51..=80.
async fn join_between_publishes(broker: &dyn Broker, room: &str) -> Joined {
    for i in 0..50 {
        broker.publish_and_forget(tagged(room, 0, i));
    }
    let mut watcher = Probe::new("watcher");
    let join = broker.join(JoinRoom {
        backfill: Some(vec![switchyard::protocol::Backfill {
            event: "snapshot".into(),
            data: data(json!({ "upto": 49 })),
            seq: None,
        }]),
        backfill_complete: true,
        ..watcher.join_msg(room)
    });
    for i in 50..80 {
        broker.publish_and_forget(tagged(room, 0, i));
    }
    let joined = tokio::time::timeout(WAIT, join)
        .await
        .expect("join answered in time")
        .expect("join accepted");
    // At or after event 50 (a shared log's room may have caught up further by the time it
    // handles the join; it then replays the rest to the joiner, below).
    assert!(
        (50..=80).contains(&joined.position.offset),
        "{room}: joined at {:?}",
        joined.position
    );
    assert_eq!(watcher.next().await["type"], "joined");
    let snapshot = watcher.next().await;
    assert_eq!(snapshot["type"], "backfill", "{room}: {snapshot}");
    assert_eq!(snapshot["data"], json!({ "upto": 49 }));
    let got: Vec<u64> = watcher
        .messages(30)
        .await
        .iter()
        .map(|v| tag(v).1)
        .collect();
    assert_eq!(
        got,
        (50..80).collect::<Vec<u64>>(),
        "{room}: exactly the events after the join, in order"
    );
    joined
}

/// "Everyone but me" (`Envelope::exclude`): the excluded connection is skipped, every other
/// member — another connection of the same user too — gets it, and it still takes its offset
/// and its place in history.
#[actix_web::test]
async fn an_excluded_connection_does_not_get_the_message_everyone_else_does() {
    let registry = registry(0, 100);
    let broker = LocalBroker::new(registry.clone());
    let mut sender = Probe::new("alice");
    let mut other_tab = Probe::new("alice");
    let mut bob = Probe::new("bob");
    let joined = sender.join(&registry, ROOM).await;
    other_tab.join(&registry, ROOM).await;
    bob.join(&registry, ROOM).await;
    let quiet = direct(
        &joined,
        Envelope {
            exclude: Some(switchyard::broker::ConnectionRef::local(sender.session)),
            ..tagged(ROOM, 0, 0)
        },
    )
    .await
    .expect("accepted");
    let loud = broker.publish(tagged(ROOM, 0, 1)).await.expect("accepted");
    assert_eq!((quiet.offset, loud.offset), (1, 2));
    let got: Vec<u64> = sender.messages(1).await.iter().map(|v| tag(v).1).collect();
    assert_eq!(got, [1], "the sender skipped its own message");
    for p in [&mut other_tab, &mut bob] {
        let got: Vec<u64> = p.messages(2).await.iter().map(offset).collect();
        assert_eq!(got, [1, 2], "user {}: got both", p.user.id);
    }
    // Another node's connection with the same session number is not this one.
    let foreign = broker
        .publish(Envelope {
            exclude: Some(switchyard::broker::ConnectionRef {
                node: "another-node".into(),
                session: sender.session,
            }),
            ..tagged(ROOM, 0, 2)
        })
        .await
        .expect("accepted");
    let got: Vec<u64> = sender.messages(1).await.iter().map(offset).collect();
    assert_eq!(got, [foreign.offset]);
}
