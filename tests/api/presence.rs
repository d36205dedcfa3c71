use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn members_see_others_join_and_leave() {
    let app = spawn_app().await;
    let mut alice = app.ws_as("alice").await;
    let joined = alice.join("project:1").await;
    assert_eq!(
        joined["presence"],
        json!([{"user": "alice", "name": "ALICE"}])
    );

    let mut bob = app.ws_as("bob").await;
    let joined = bob.join("project:1").await;
    let users: Vec<_> = joined["presence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].clone())
        .collect();
    assert_eq!(users, vec![json!("alice"), json!("bob")]);

    let p = alice.recv().await;
    assert_eq!(
        p,
        json!({"type": "presence", "room": "project:1", "joined": [{"user": "bob", "name": "BOB"}]})
    );

    bob.close().await;
    let p = alice.recv().await;
    assert_eq!(
        p,
        json!({"type": "presence", "room": "project:1", "left": [{"user": "bob", "name": "BOB"}]})
    );
}

#[tokio::test]
async fn several_connections_of_one_user_count_once() {
    let app = spawn_app().await;
    let mut watcher = app.ws_as("watcher").await;
    watcher.join("room").await;

    let mut tab1 = app.ws_as("carol").await;
    tab1.join("room").await;
    let p = watcher.recv().await;
    assert_eq!(p["joined"][0]["user"], "carol");

    let mut tab2 = app.ws_as("carol").await;
    let j = tab2.join("room").await;
    assert_eq!(
        j["presence"].as_array().unwrap().len(),
        2,
        "carol listed once: {j}"
    );
    // No second "joined" for carol, and none when one of her tabs leaves.
    tab1.close().await;
    let frames = watcher.drain().await;
    assert!(frames.iter().all(|f| f["type"] != "presence"), "{frames:?}");
    // The last tab leaving makes her leave.
    tab2.close().await;
    let p = watcher.recv().await;
    assert_eq!(p["left"][0]["user"], "carol");
    let (_, body) = app.get("/api/rooms/room/presence").await;
    assert_eq!(
        body["presence"],
        json!([{"user": "watcher", "name": "WATCHER"}])
    );
}

#[tokio::test]
async fn a_silent_session_is_dropped_by_the_heartbeat_and_its_presence_leaves() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.heartbeat_interval = Duration::from_millis(100);
        s.heartbeat_timeout = Duration::from_millis(400);
    })
    .await;
    let mut watcher = app.ws_as("watcher").await;
    watcher.join("room").await;
    let mut silent = app.ws_as("silent").await;
    silent.join("room").await;
    assert_eq!(watcher.recv().await["joined"][0]["user"], "silent");

    // `silent` stops reading (so it never answers pings) and sends nothing. The watcher keeps
    // reading, so its pings are answered.
    let p = watcher.recv_where(|f| f["type"] == "presence").await;
    assert_eq!(p["left"][0]["user"], "silent");
    drop(silent);
    let (_, m) = app.get("/api/rooms/room/presence").await;
    assert_eq!(m["presence"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_join_flood_is_announced_in_batches_and_nobody_is_missed() {
    let app = spawn_app().await;
    let mut watcher = app.ws_as("watcher").await;
    watcher.join("flood").await;
    let mut members = Vec::new();
    for i in 0..40 {
        let mut m = app.ws_as(&format!("user{i:02}")).await;
        m.join("flood").await;
        members.push(m);
    }
    // A message after the flood: every arrival before it is announced before it.
    let mut publisher = app.ws_as("publisher").await;
    publisher.join("flood").await;
    publisher.publish("flood", "after", json!(1)).await;
    let mut seen = std::collections::BTreeSet::new();
    let mut presence_frames = 0;
    loop {
        let f = watcher.recv().await;
        if f["type"] == "message" {
            assert_eq!(f["event"], "after");
            break;
        }
        assert_eq!(f["type"], "presence", "{f}");
        presence_frames += 1;
        for u in f["joined"].as_array().expect("only arrivals") {
            assert!(
                seen.insert(u["user"].as_str().unwrap().to_string()),
                "twice: {u}"
            );
        }
    }
    let expected: std::collections::BTreeSet<String> = (0..40)
        .map(|i| format!("user{i:02}"))
        .chain(["publisher".to_string()])
        .collect();
    assert_eq!(seen, expected);
    assert!(
        presence_frames < 41,
        "41 arrivals within a few windows should share frames, got {presence_frames}"
    );
    // Members never hear of themselves, batched or not.
    // (All are drained before any is dropped: a dropped member's departure would be news.)
    let mut frames = Vec::new();
    for m in members.iter_mut() {
        frames.push(m.drain().await);
    }
    for (i, frames) in frames.into_iter().enumerate() {
        let me = format!("user{i:02}");
        for f in frames.iter().filter(|f| f["type"] == "presence") {
            let users = f["joined"].as_array().expect("only arrivals");
            assert!(users.iter().all(|u| u["user"] != me.as_str()), "{me}: {f}");
        }
    }
}

#[tokio::test]
async fn a_large_room_lists_at_most_the_configured_number_of_users_and_counts_all() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.presence_list_max = 3).await;
    let mut clients = Vec::new();
    for name in ["a", "b", "c", "d", "e"] {
        let mut c = app.ws_as(name).await;
        c.join("big").await;
        clients.push(c);
    }
    let mut last = app.ws_as("f").await;
    let j = last.join("big").await;
    assert_eq!(j["presence_count"], 6, "{j}");
    let users: Vec<_> = j["presence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].clone())
        .collect();
    assert_eq!(users, vec![json!("a"), json!("b"), json!("c")]);
    // The REST list is complete.
    let (_, body) = app.get("/api/rooms/big/presence").await;
    assert_eq!(body["presence"].as_array().unwrap().len(), 6);
    // Arrivals are announced only while the room holds fewer users than the list limit: "a"
    // heard of b and c, not of d, e or f (nor of anyone leaving now).
    // A room message is the barrier: pending presence is always announced before it.
    last.close().await;
    clients[1].publish("big", "barrier", json!(1)).await;
    let mut announced = Vec::new();
    loop {
        let f = clients[0].recv().await;
        if f["type"] == "message" {
            break;
        }
        assert_eq!(f["type"], "presence", "{f}");
        for u in f["joined"].as_array().expect("no departures announced") {
            announced.push(u["user"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(announced, vec!["b", "c"]);
}
