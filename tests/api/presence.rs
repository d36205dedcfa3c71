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
