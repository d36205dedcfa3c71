//! Delivery primitives the seed apps needed (issue #15 part 3): retained messages per event
//! name, one delivery per connection of a message published into several rooms, and the
//! sending connection's id in `from`. Real server, real sockets.

use serde_json::{json, Value};

use crate::helpers::*;

/// Publishes over REST into `room`, asserting success; returns the offset.
async fn rest_publish(app: &TestApp, room: &str, body: Value) -> u64 {
    let (status, r) = app.post(&format!("/api/rooms/{room}/publish"), body).await;
    assert_eq!(status, 200, "{r}");
    r["offset"].as_u64().expect("offset")
}

/// The `message` frames among everything queued before a ping round trip.
async fn messages(c: &mut WsClient) -> Vec<Value> {
    c.drain()
        .await
        .into_iter()
        .filter(|v| v["type"] == "message")
        .collect()
}

fn events(ms: &[Value]) -> Vec<(String, Value)> {
    ms.iter()
        .map(|m| {
            (
                m["event"].as_str().unwrap_or("").to_string(),
                m["data"].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_joiner_gets_the_last_message_of_each_retained_event_in_publish_order() {
    let app = spawn_app().await;
    let room = "dashboard:1";
    rest_publish(
        &app,
        room,
        json!({"event": "stats", "data": 1, "retain": "event"}),
    )
    .await;
    rest_publish(
        &app,
        room,
        json!({"event": "status", "data": "up", "retain": "event"}),
    )
    .await;
    rest_publish(
        &app,
        room,
        json!({"event": "stats", "data": 2, "retain": "event"}),
    )
    .await;
    let last = rest_publish(&app, room, json!({"event": "noise", "data": 0})).await;

    let mut c = app.ws_as("viewer").await;
    let joined = c.join(room).await;
    assert_eq!(joined["offset"], json!(last));
    let got = messages(&mut c).await;
    // The older `stats` was replaced; `noise` was never retained; the order is the publish
    // order of what is kept.
    assert_eq!(
        events(&got),
        vec![("status".into(), json!("up")), ("stats".into(), json!(2))]
    );
    assert!(got[0]["offset"].as_u64() < got[1]["offset"].as_u64());
}

#[tokio::test]
async fn retained_per_event_sits_beside_the_rooms_last_message_and_ws_can_ask_for_both() {
    let app = spawn_app().await;
    let room = "dashboard:2";
    let mut publisher = app.ws_as("backend").await;
    publisher.join(room).await;
    for (event, retain) in [
        ("stats", json!("event")),
        ("banner", json!(true)),
        ("status", json!("event")),
    ] {
        let r = publisher
            .request(json!({"type": "publish", "room": room, "event": event, "data": event, "retain": retain}))
            .await;
        assert_eq!(r["type"], "published", "{r}");
    }
    let bad = publisher
        .request(json!({"type": "publish", "room": room, "event": "x", "retain": "room"}))
        .await;
    assert_eq!(bad["code"], "invalid_field", "{bad}");

    let mut c = app.ws_as("viewer").await;
    c.join(room).await;
    let got = messages(&mut c).await;
    let names: Vec<String> = events(&got).into_iter().map(|(e, _)| e).collect();
    assert_eq!(names, vec!["stats", "banner", "status"]);
}

#[tokio::test]
async fn a_room_keeps_at_most_the_configured_number_of_retained_event_names() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.retained_events_max = 2).await;
    let room = "dashboard:3";
    for event in ["a", "b", "c"] {
        rest_publish(&app, room, json!({"event": event, "retain": "event"})).await;
    }
    let mut c = app.ws_as("viewer").await;
    c.join(room).await;
    let names: Vec<String> = events(&messages(&mut c).await)
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(names, vec!["b", "c"], "the name retained longest ago went");
}

#[tokio::test]
async fn retained_messages_count_against_the_history_byte_bound() {
    // No history at all: only the retained messages hold bytes, and 3 of ~3 KB each do not
    // fit in 8 KB.
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.history_size = 0;
        s.history_max_bytes = 8 << 10;
    })
    .await;
    let room = "dashboard:4";
    let big = "x".repeat(1500);
    for event in ["a", "b", "c"] {
        rest_publish(
            &app,
            room,
            json!({"event": event, "data": big, "retain": "event"}),
        )
        .await;
    }
    let mut c = app.ws_as("viewer").await;
    c.join(room).await;
    let names: Vec<String> = events(&messages(&mut c).await)
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(
        names,
        vec!["b", "c"],
        "the oldest retained message made room"
    );
    let held = app.metric("switchyard_history_bytes").await;
    assert!(held > 0 && held <= 8 << 10, "held {held}");
}

#[tokio::test]
async fn a_resume_gets_what_it_missed_once_and_no_retained_copy() {
    let app = spawn_app().await;
    let room = "dashboard:5";
    rest_publish(
        &app,
        room,
        json!({"event": "stats", "data": 1, "retain": "event"}),
    )
    .await;
    let mut c = app.ws_as("viewer").await;
    let joined = c.join(room).await;
    assert_eq!(
        events(&messages(&mut c).await),
        vec![("stats".into(), json!(1))]
    );
    c.close().await;

    rest_publish(
        &app,
        room,
        json!({"event": "stats", "data": 2, "retain": "event"}),
    )
    .await;
    rest_publish(
        &app,
        room,
        json!({"event": "status", "data": "up", "retain": "event"}),
    )
    .await;

    let mut again = app.ws_as("viewer").await;
    let since = json!({"epoch": joined["epoch"], "offset": joined["offset"]});
    let r = again
        .request(json!({"type": "join", "room": room, "since": since}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(
        events(&messages(&mut again).await),
        vec![("stats".into(), json!(2)), ("status".into(), json!("up"))],
        "exactly what was missed, each once"
    );
}

#[tokio::test]
async fn an_activity_reaches_a_socket_in_both_its_rooms_once() {
    let app = spawn_app().await;
    let mut both = app.ws_as("both").await;
    both.join("activity").await;
    both.join("project:42").await;
    let mut project_only = app.ws_as("project").await;
    project_only.join("project:42").await;

    let (status, _) = app
        .post(
            "/api/activities",
            json!({"project": "42", "actor": "ci", "verb": "deployed"}),
        )
        .await;
    assert_eq!(status, 201);
    // A publish into each room after it: once both have arrived, each room has delivered
    // everything before them, so a second copy of the activity would be here.
    rest_publish(&app, "activity", json!({"event": "barrier"})).await;
    rest_publish(&app, "project:42", json!({"event": "barrier"})).await;

    let mut got = Vec::new();
    while got
        .iter()
        .filter(|m: &&Value| m["event"] == "barrier")
        .count()
        < 2
    {
        got.push(both.recv_message().await);
    }
    let activities: Vec<&Value> = got
        .iter()
        .filter(|m| m["event"] == "activity.created")
        .collect();
    assert_eq!(activities.len(), 1, "{got:?}");
    assert!(activities[0]["message_id"].is_string(), "{}", activities[0]);
    let m = project_only.recv_message().await;
    assert_eq!(m["event"], "activity.created");
    assert_eq!(m["message_id"], activities[0]["message_id"]);
}

#[tokio::test]
async fn a_message_published_into_several_rooms_reaches_each_socket_once() {
    let app = spawn_app().await;
    let mut in_ab = app.ws_as("ab").await;
    in_ab.join("team:a").await;
    in_ab.join("team:b").await;
    let mut in_b = app.ws_as("b").await;
    in_b.join("team:b").await;

    let (status, r) = app
        .post(
            "/api/rooms/publish",
            json!({"rooms": ["team:a", "team:b", "team:c"], "event": "notice", "data": {"n": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let rooms: Vec<&str> = r["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .map(|x| x["room"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(rooms, vec!["team:a", "team:b", "team:c"]);
    let id = r["message_id"].clone();
    assert!(id.is_string(), "{r}");

    rest_publish(&app, "team:a", json!({"event": "barrier"})).await;
    rest_publish(&app, "team:b", json!({"event": "barrier"})).await;
    let mut got = Vec::new();
    while got
        .iter()
        .filter(|m: &&Value| m["event"] == "barrier")
        .count()
        < 2
    {
        got.push(in_ab.recv_message().await);
    }
    let notices: Vec<&Value> = got.iter().filter(|m| m["event"] == "notice").collect();
    assert_eq!(notices.len(), 1, "{got:?}");
    assert_eq!(notices[0]["message_id"], id);
    assert_eq!(in_b.recv_message().await["message_id"], id);

    // Every room keeps its own copy: a room without members has it in its history.
    let (_, h) = app.get("/api/rooms/team:c/history").await;
    assert_eq!(h["messages"][0]["event"], "notice", "{h}");
    assert_eq!(h["messages"][0]["message_id"], id);

    // Bounds and permissions are checked before anything is published.
    let (status, r) = app
        .post("/api/rooms/publish", json!({"rooms": [], "event": "e"}))
        .await;
    assert_eq!((status, r["error"].as_str()), (400, Some("invalid_field")));
    let (status, r) = app
        .post(
            "/api/rooms/publish",
            json!({"rooms": ["ok", "bad room"], "event": "e"}),
        )
        .await;
    assert_eq!(
        (status, r["error"].as_str()),
        (400, Some("invalid_room")),
        "{r}"
    );
}

#[tokio::test]
async fn a_join_does_not_replay_a_message_another_room_already_delivered() {
    let app = spawn_app().await;
    let mut c = app.ws_as("c").await;
    let a = c.join("team:x").await;
    let (status, _) = app
        .post(
            "/api/rooms/publish",
            json!({"rooms": ["team:x", "team:y"], "event": "notice"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(c.recv_message().await["event"], "notice");
    assert!(a["offset"].is_u64());
    // Joining team:y resuming from before the message: its replay skips the copy this
    // connection already got from team:x.
    let (_, info) = app.get("/api/rooms/team:y/history").await;
    let since = json!({"epoch": info["epoch"], "offset": 0});
    let r = c
        .request(json!({"type": "join", "room": "team:y", "since": since}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    assert!(messages(&mut c).await.is_empty());
}

#[tokio::test]
async fn a_message_names_the_connection_that_sent_it() {
    let app = spawn_app().await;
    // One user, two tabs, and someone else.
    let mut tab1 = app.ws_as("ada").await;
    let mut tab2 = app.ws_as("ada").await;
    let mut other = app.ws_as("bob").await;
    for c in [&mut tab1, &mut tab2, &mut other] {
        c.join("project:7").await;
    }
    // No request id: the echo is the next message (a reply awaited by id would skip it).
    tab1.send(json!({"type": "publish", "room": "project:7", "event": "typing", "data": true}))
        .await;
    let me = tab1.welcome["session"].clone();
    assert!(me.is_string());
    let echo = tab1.recv_message().await;
    assert_eq!(echo["from"]["session"], me, "its own echo: {echo}");
    let seen = tab2.recv_message().await;
    assert_eq!(seen["from"]["user"], "ada");
    assert_eq!(seen["from"]["session"], me);
    assert_ne!(
        seen["from"]["session"], tab2.welcome["session"],
        "not its own"
    );
    assert_eq!(other.recv_message().await["from"]["session"], me);

    // A REST publish names no connection.
    rest_publish(&app, "project:7", json!({"event": "e"})).await;
    let m = other.recv_message().await;
    assert!(m["from"].get("session").is_none(), "{m}");
}

/// Socket.IO with an app profile: `socket.id` in `from.session`, `publish_to_joined` into
/// several rooms arriving once, `retain = "event"` in a profile (tests/js/delivery.test.mjs).
#[tokio::test]
async fn socket_io_clients_get_one_copy_and_see_their_socket_id_in_from() {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/profiles.toml");
    crate::profiles::run_node_tweaked("delivery.test.mjs", |s| s.config_file = Some(config)).await;
}
