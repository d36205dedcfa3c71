use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_resumed_client_gets_exactly_the_missed_messages_before_live_ones() {
    let app = spawn_app().await;
    let mut publisher = app.ws_as("pub").await;
    publisher.join("project:9").await;
    let mut reader = app.ws_as("reader").await;
    let joined = reader.join("project:9").await;
    let epoch = joined["epoch"].as_str().unwrap().to_string();

    for i in 1..=3 {
        publisher.publish("project:9", "e", json!(i)).await;
    }
    for i in 1..=3 {
        assert_eq!(reader.recv_message().await["data"], json!(i));
    }
    reader.abort();

    for i in 4..=8 {
        publisher.publish("project:9", "e", json!(i)).await;
    }

    let mut back = app.ws_as("reader").await;
    back.send(json!({"type": "join", "room": "project:9", "id": "j", "since": {"epoch": epoch, "offset": 3}}))
        .await;
    let joined = back.recv_where(|v| v["id"] == "j").await;
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(joined["offset"], 8);
    for i in 4..=8 {
        let m = back.recv().await;
        assert_eq!(m["type"], "message");
        assert_eq!(m["offset"], i);
        assert_eq!(m["data"], json!(i));
    }
    publisher.publish("project:9", "e", json!(9)).await;
    let live = back.recv_message().await;
    assert_eq!(
        live["offset"], 9,
        "live messages follow the replay, nothing doubled"
    );
}

#[tokio::test]
async fn resuming_past_the_history_window_says_not_recovered() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.history_size = 3).await;
    let mut publisher = app.ws_as("pub").await;
    let joined = publisher.join("r").await;
    let epoch = joined["epoch"].as_str().unwrap().to_string();
    for i in 1..=6 {
        publisher.publish("r", "e", json!(i)).await;
    }
    let mut c = app.ws_as("late").await;
    let r = c
        .request(json!({"type": "join", "room": "r", "since": {"epoch": epoch, "offset": 1}}))
        .await;
    assert_eq!(r["type"], "joined");
    assert_eq!(r["recovered"], false);
    assert_eq!(r["offset"], 6);
    assert!(
        c.drain().await.is_empty(),
        "nothing replayed when it cannot be complete"
    );

    // Within the window it works.
    let mut d = app.ws_as("recent").await;
    let r = d
        .request(json!({"type": "join", "room": "r", "since": {"epoch": epoch, "offset": 4}}))
        .await;
    assert_eq!(r["recovered"], true);
    let replay = d.drain().await;
    let offsets: Vec<_> = replay
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![5, 6]);
}

#[tokio::test]
async fn a_different_epoch_is_not_recovered() {
    let app = spawn_app().await;
    let mut c = app.ws_as("x").await;
    c.join("r").await;
    c.publish("r", "e", json!(1)).await;
    let mut d = app.ws_as("y").await;
    let r = d
        .request(json!({"type": "join", "room": "r", "since": {"epoch": "from-another-life", "offset": 0}}))
        .await;
    assert_eq!(r["recovered"], false);
}

#[tokio::test]
async fn history_expires_by_age() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.history_ttl = std::time::Duration::from_secs(1)
    })
    .await;
    let mut c = app.ws_as("x").await;
    let epoch = c.join("r").await["epoch"].as_str().unwrap().to_string();
    c.publish("r", "e", json!(1)).await;
    c.publish("r", "e", json!(2)).await;
    eventually("history to expire", || async {
        let (_, h) = app.get("/api/rooms/r/history?after=0").await;
        h["messages"]
            .as_array()
            .map(|m| m.is_empty())
            .unwrap_or(false)
    })
    .await;
    let mut d = app.ws_as("y").await;
    let r = d
        .request(json!({"type": "join", "room": "r", "since": {"epoch": epoch, "offset": 0}}))
        .await;
    assert_eq!(r["recovered"], false);
}
