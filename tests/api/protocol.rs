use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

#[tokio::test]
async fn bad_frames_get_error_frames_with_stable_codes_and_the_session_stays_open() {
    let app = spawn_app().await;
    let mut c = app.ws().await;
    let cases = [
        (Message::text("{not json"), "invalid_json", None),
        (Message::text("[1,2,3]"), "invalid_frame", None),
        (
            Message::text(r#"{"type":"fly","id":1}"#),
            "unknown_type",
            Some(json!(1)),
        ),
        (
            Message::text(r#"{"type":"join","id":"a"}"#),
            "missing_field",
            Some(json!("a")),
        ),
        (
            Message::text(r#"{"type":"join","room":"no spaces","id":2}"#),
            "invalid_room",
            Some(json!(2)),
        ),
        (
            Message::text(r#"{"type":"join","room":42,"id":3}"#),
            "invalid_field",
            Some(json!(3)),
        ),
        (
            Message::text(r#"{"type":"publish","room":"r","id":4}"#),
            "missing_field",
            Some(json!(4)),
        ),
        (
            Message::text(r#"{"type":"leave","room":"r","id":5}"#),
            "not_member",
            Some(json!(5)),
        ),
    ];
    for (frame, code, id) in cases {
        c.send_raw(frame).await;
        let e = c.recv().await;
        assert_eq!(e["type"], "error");
        assert_eq!(e["code"], code, "{e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        match id {
            Some(id) => assert_eq!(e["id"], id),
            None => assert!(e.get("id").is_none()),
        }
    }
    let pong = c.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
}

#[tokio::test]
async fn an_oversize_message_closes_with_1009_naming_the_limit() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.max_frame_bytes = 4096).await;
    let mut c = app.ws_as("big").await;
    c.join("r").await;
    let big = json!({"type": "publish", "room": "r", "event": "e", "data": "x".repeat(5000)});
    c.send(big).await;
    let closed = c.closed().await;
    assert_eq!(closed.code, Some(1009));
    assert!(closed.reason.contains("4096"), "{closed:?}");
    let metrics = app.metrics_text().await;
    assert!(metrics.contains("switchyard_refusals_total{code=\"frame_too_large\"} 1"));
}

#[tokio::test]
async fn a_binary_frame_closes_with_1003() {
    let app = spawn_app().await;
    let mut c = app.ws().await;
    c.send_raw(Message::binary(vec![1u8, 2, 3])).await;
    let closed = c.closed().await;
    assert_eq!(closed.code, Some(1003));
}

#[tokio::test]
async fn a_flood_of_bad_frames_closes_the_session() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.error_limit = 5).await;
    let mut c = app.ws().await;
    for _ in 0..10 {
        c.send_raw(Message::text("nope")).await;
    }
    let closed = c.closed().await;
    assert_eq!(closed.code, Some(1008));
    assert_eq!(closed.reason, "too many errors");
}

#[tokio::test]
async fn joining_system_gets_the_latest_stats_at_once() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.stats_interval = std::time::Duration::from_secs(3600)
    })
    .await;
    let mut c = app.ws().await;
    c.join("system").await;
    // The stats interval is an hour: this one is the retained message from start-up.
    let m = c.recv_message().await;
    assert_eq!(m["event"], "stats");
    for key in [
        "connections",
        "rooms",
        "messages_in_per_sec",
        "messages_out_per_sec",
        "uptime_seconds",
        "node",
        "operations",
        "heartbeat_ms",
    ] {
        assert!(m["data"].get(key).is_some(), "stats has {key}: {m}");
    }
}

#[tokio::test]
async fn stats_are_published_on_the_interval() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.stats_interval = std::time::Duration::from_millis(100)
    })
    .await;
    let mut c = app.ws().await;
    c.join("system").await;
    let first = c.recv_message().await["offset"].as_u64().unwrap();
    let second = c.recv_message().await;
    assert_eq!(second["event"], "stats");
    assert!(second["offset"].as_u64().unwrap() > first);
    assert!(second["data"]["connections"].as_i64().unwrap() >= 1);
}
