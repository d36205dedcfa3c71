use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn member_receives_message_published_by_another_member() {
    let app = spawn_app().await;
    let mut alice = app.ws_as("alice").await;
    let mut bob = app.ws_as("bob").await;
    alice.join("project:42").await;
    bob.join("project:42").await;

    let offset = alice
        .publish("project:42", "step-updated", json!({"step": 3}))
        .await;

    let m = bob.recv_message().await;
    assert_eq!(m["room"], "project:42");
    assert_eq!(m["event"], "step-updated");
    assert_eq!(m["data"], json!({"step": 3}));
    assert_eq!(m["offset"], json!(offset));
    assert_eq!(m["from"]["user"], "alice");
}

#[tokio::test]
async fn every_member_sees_the_same_offsets_in_the_same_order() {
    let app = spawn_app().await;
    let mut clients = Vec::new();
    for name in ["a", "b", "c"] {
        let mut c = app.ws_as(name).await;
        c.join("project:fan").await;
        clients.push(c);
    }
    // Two publishers interleave without waiting for acks.
    for i in 0..50 {
        for (p, c) in clients.iter_mut().take(2).enumerate() {
            c.send(json!({"type": "publish", "room": "project:fan", "event": "e", "data": {"p": p, "i": i}}))
                .await;
        }
    }
    let mut sequences = Vec::new();
    for c in clients.iter_mut() {
        let mut seen = Vec::new();
        while seen.len() < 100 {
            let m = c.recv_message().await;
            seen.push((m["offset"].as_u64().unwrap(), m["data"].clone()));
        }
        sequences.push(seen);
    }
    let offsets: Vec<u64> = sequences[0].iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (1..=100).collect::<Vec<_>>(),
        "offsets increase by exactly one"
    );
    assert_eq!(sequences[0], sequences[1]);
    assert_eq!(sequences[0], sequences[2]);
    // Each publisher's own messages arrive in the order it sent them.
    for p in 0..2 {
        let is: Vec<i64> = sequences[0]
            .iter()
            .filter(|(_, d)| d["p"] == p)
            .map(|(_, d)| d["i"].as_i64().unwrap())
            .collect();
        assert_eq!(is, (0..50).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn publishing_to_a_room_not_joined_is_refused_and_the_session_stays_open() {
    let app = spawn_app().await;
    let mut c = app.ws_as("alice").await;
    let r = c
        .request(json!({"type": "publish", "room": "project:1", "event": "e", "data": 1}))
        .await;
    assert_eq!(r["type"], "error");
    assert_eq!(r["code"], "not_member");
    // still usable
    c.join("project:1").await;
    c.publish("project:1", "e", json!(1)).await;
}

#[tokio::test]
async fn a_member_that_left_receives_nothing_more() {
    let app = spawn_app().await;
    let mut alice = app.ws_as("alice").await;
    let mut bob = app.ws_as("bob").await;
    alice.join("r1").await;
    bob.join("r1").await;
    let left = bob.request(json!({"type": "leave", "room": "r1"})).await;
    assert_eq!(left["type"], "left");
    assert_eq!(left["room"], "r1");
    alice.publish("r1", "e", json!("after")).await;
    let frames = bob.drain().await;
    assert!(frames.iter().all(|f| f["type"] != "message"), "{frames:?}");
    let again = bob.request(json!({"type": "leave", "room": "r1"})).await;
    assert_eq!(again["code"], "not_member");
}

#[tokio::test]
async fn rest_publish_reaches_websocket_members_and_history_and_room_list_show_it() {
    let app = spawn_app().await;
    let mut c = app.ws_as("watcher").await;
    c.join("project:7").await;
    let (status, body) = app
        .post(
            "/api/rooms/project:7/publish",
            json!({"event": "deployed", "data": {"v": 2}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["offset"], 1);
    let m = c.recv_message().await;
    assert_eq!(m["event"], "deployed");
    assert_eq!(m["from"], serde_json::Value::Null);

    let (status, h) = app.get("/api/rooms/project:7/history?after=0").await;
    assert_eq!(status, 200);
    assert_eq!(h["complete"], true);
    assert_eq!(h["messages"][0], m);

    let (_, rooms) = app.get("/api/rooms").await;
    let room = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "project:7")
        .expect("room listed")
        .clone();
    assert_eq!(room["members"], 1);
    assert_eq!(room["offset"], 1);

    let (status, p) = app.get("/api/rooms/project:7/presence").await;
    assert_eq!(status, 200);
    assert_eq!(
        p["presence"],
        json!([{"user": "watcher", "name": "WATCHER"}])
    );
}

#[tokio::test]
async fn rest_refuses_bad_room_names_and_bad_bodies_with_error_codes() {
    let app = spawn_app().await;
    let (s, b) = app
        .post("/api/rooms/bad%20room/publish", json!({"event": "e"}))
        .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_room")));
    let (s, b) = app.post("/api/rooms/ok/publish", json!({"data": 1})).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_json")));
    let (s, b) = app
        .post("/api/rooms/ok/publish", json!({"event": ""}))
        .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_field")));
    let (s, b) = app.get("/api/nothing-here").await;
    assert_eq!((s, b["error"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn a_client_that_does_not_read_is_dropped_without_holding_up_the_room() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.outbox_max_messages = 64;
        s.outbox_max_bytes = 64 * 1024;
        // REST publishes count against the publisher's rate; this floods on purpose.
        s.user_publish_rate = 0;
    })
    .await;
    let mut slow = app.ws_as("slow").await;
    slow.join("busy").await;
    let mut fast = app.ws_as("fast").await;
    fast.join("busy").await;

    // ~8 MB in total: far more than the socket buffers and the slow client's outbox hold.
    let total = 2_000u64;
    // The fast member gets every message, in order, while the slow one is not reading.
    app.flood_past(&mut fast, "busy", total, 4000).await;
    let fast_frames = fast.drain().await;
    assert!(fast_frames
        .iter()
        .all(|f| f["type"] != "message" || f["offset"].as_u64() <= Some(total)));
    // The slow member was evicted with the slow-consumer close code.
    let closed = slow.closed().await;
    assert_eq!(closed.code, Some(4008), "{closed:?}");
    assert_eq!(closed.reason, "slow consumer");
    assert_eq!(
        app.metric("switchyard_slow_consumer_disconnects_total")
            .await,
        1
    );
}

#[tokio::test]
async fn an_idle_room_is_retired_and_a_recreated_one_continues_its_epoch_and_offsets() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.history_ttl = std::time::Duration::from_millis(200)
    })
    .await;
    let mut c = app.ws_as("x").await;
    let epoch = c.join("ephemeral").await["epoch"].clone();
    c.publish("ephemeral", "e", json!(1)).await;
    c.close().await;

    // No members and its history expired: the registry retires it.
    eventually("the idle room to be retired", || async {
        let (_, rooms) = app.get("/api/rooms").await;
        !rooms["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "ephemeral")
    })
    .await;

    let mut d = app.ws_as("y").await;
    let joined = d
        .request(
            json!({"type": "join", "room": "ephemeral", "since": {"epoch": epoch, "offset": 1}}),
        )
        .await;
    assert_eq!(joined["epoch"], epoch, "same epoch after re-creation");
    assert_eq!(joined["offset"], 1);
    assert_eq!(joined["recovered"], true, "nothing was missed");
    assert_eq!(d.publish("ephemeral", "e", json!(2)).await, 2);
}

#[tokio::test]
async fn a_publish_pipelined_right_after_a_leave_is_refused() {
    // Members publish straight to their room (no registry hop); a leave must end that at once,
    // even when the publish is sent before the leave is answered. Rooms on the HTTP worker's
    // thread here (the other tests use a dedicated room thread).
    let app = spawn_app_with(Backend::Sqlite, |s| s.room_threads = 0).await;
    let mut alice = app.ws_as("alice").await;
    let mut bob = app.ws_as("bob").await;
    alice.join("r2").await;
    bob.join("r2").await;
    bob.publish("r2", "e", json!("before")).await;
    bob.send(json!({"type": "leave", "room": "r2", "id": 10}))
        .await;
    bob.send(json!({"type": "publish", "room": "r2", "event": "e", "data": "after", "id": 11}))
        .await;
    let left = bob.recv_where(|f| f["id"] == 10).await;
    assert_eq!(left["type"], "left");
    let refused = bob.recv_where(|f| f["id"] == 11).await;
    assert_eq!(refused["code"], "not_member", "{refused}");
    // Alice saw the first and not the second.
    let m = alice.recv_message().await;
    assert_eq!(m["data"], "before");
    let rest = alice.drain().await;
    assert!(rest.iter().all(|f| f["type"] != "message"), "{rest:?}");
}

/// A server whose rooms move to its one room thread at `move_at` members, publishing unlimited.
async fn moving_rooms_app(move_at: usize) -> TestApp {
    spawn_app_with(Backend::Sqlite, |s| {
        s.room_threads = 1;
        s.room_move_at = move_at;
        s.publish_rate = 0;
        s.user_publish_rate = 0;
    })
    .await
}

/// A room starts on an HTTP worker next to its members and moves to a room thread when it
/// grows (`SWITCHYARD_ROOM_MOVE_AT`), while a member keeps publishing without waiting: every
/// member gets every message from its join on once, in the one order, across the move.
#[tokio::test]
async fn a_room_that_grows_moves_to_a_room_thread_without_a_gap_or_a_reordering() {
    let app = moving_rooms_app(3).await;
    let mut publisher = app.ws().await;
    publisher.join("grow").await;
    let mut members = vec![(app.ws().await, 0u64)];
    members[0].0.join("grow").await;
    let mut sent = 0u64;
    // Publishes in flight while the third and fourth members join: the third one's join moves
    // the room.
    for _ in 0..3 {
        for _ in 0..100 {
            sent += 1;
            publisher
                .send(json!({"type": "publish", "room": "grow", "event": "n", "data": sent}))
                .await;
        }
        if members.len() < 3 {
            let mut c = app.ws().await;
            let joined = c.join("grow").await;
            let at = joined["offset"].as_u64().expect("offset");
            members.push((c, at));
        }
    }
    eventually("the room to move", || async {
        app.metric("switchyard_room_moves_total").await == 1
    })
    .await;
    let mut everyone = vec![(publisher, 0u64)];
    everyone.extend(members);
    every_message_once_from_the_join(&mut everyone, sent).await;
}

/// Each member (with the offset it joined at) gets every message after it up to `sent`, whose
/// data is its offset, once and in order, and nothing more.
async fn every_message_once_from_the_join(everyone: &mut [(WsClient, u64)], sent: u64) {
    for (k, (c, from)) in everyone.iter_mut().enumerate() {
        for offset in *from + 1..=sent {
            let m = c.recv_message().await;
            assert_eq!(m["offset"], json!(offset), "member {k}: {m}");
            assert_eq!(m["data"], json!(offset), "member {k}: {m}");
        }
        assert!(
            c.drain().await.iter().all(|v| v["type"] != "message"),
            "member {k} got a message twice"
        );
    }
}

/// A room that shrank on its room thread moves back to a worker (at a quarter of
/// `SWITCHYARD_ROOM_MOVE_AT`, here 4 → 1 member), while its member keeps publishing without
/// waiting; it grows and moves again when others join. The publisher, a member throughout,
/// gets every message once, in the one order, across both moves; the late joiners get
/// everything from their join on.
#[tokio::test]
async fn a_room_that_shrinks_moves_back_to_a_worker_without_a_gap_and_can_grow_again() {
    let app = moving_rooms_app(4).await;
    let mut publisher = app.ws().await;
    publisher.join("shrink").await;
    let mut others = Vec::new();
    for _ in 0..3 {
        let mut c = app.ws().await;
        c.join("shrink").await;
        others.push(c);
    }
    eventually("the room to move to a room thread", || async {
        app.metric("switchyard_room_moves_total").await == 1
    })
    .await;
    let mut sent = 0u64;
    // The next `n` publishes, numbered on from `sent`.
    fn publish(n: usize, sent: &mut u64) -> Vec<Value> {
        (0..n)
            .map(|_| {
                *sent += 1;
                json!({"type": "publish", "room": "shrink", "event": "n", "data": *sent})
            })
            .collect()
    }
    // Publishes in flight while the three others leave: the last leave moves the room back.
    for mut c in others {
        for f in publish(50, &mut sent) {
            publisher.send(f).await;
        }
        let left = c.request(json!({"type": "leave", "room": "shrink"})).await;
        assert_eq!(left["type"], "left", "{left}");
    }
    for f in publish(50, &mut sent) {
        publisher.send(f).await;
    }
    eventually("the room to move back to a worker", || async {
        app.metric("switchyard_room_moves_total").await == 2
    })
    .await;
    // It grows again: three join while the publisher goes on.
    let mut late = Vec::new();
    for _ in 0..3 {
        for f in publish(50, &mut sent) {
            publisher.send(f).await;
        }
        let mut c = app.ws().await;
        let joined = c.join("shrink").await;
        let at = joined["offset"].as_u64().expect("offset");
        late.push((c, at));
    }
    for f in publish(50, &mut sent) {
        publisher.send(f).await;
    }
    eventually("the room to move to a room thread again", || async {
        app.metric("switchyard_room_moves_total").await == 3
    })
    .await;
    let mut everyone = vec![(publisher, 0u64)];
    everyone.extend(late);
    every_message_once_from_the_join(&mut everyone, sent).await;
}
