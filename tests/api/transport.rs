//! The socket hand-over after a WebSocket upgrade (src/transport/conn.rs), at the byte level:
//! raw TCP, so nothing between the test and the server smooths anything over.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn frames_sent_right_behind_the_handshake_are_not_lost() {
    let app = spawn_app().await;
    let mut c = Raw::connect(&app).await;
    // One write: the handshake and two requests. The server reads them together, so the frames
    // arrive with the request head and must be handed to the session with the socket.
    let mut bytes = handshake("/ws", "websocket").into_bytes();
    bytes.extend(client_text(r#"{"type":"ping","id":"a"}"#));
    bytes.extend(client_text(r#"{"type":"join","room":"early","id":"b"}"#));
    c.send(&bytes).await;
    let head = c.head().await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="));
    assert_eq!(c.json().await["type"], "welcome");
    let pong = c.json().await;
    assert_eq!(
        (pong["type"].as_str(), pong["id"].as_str()),
        (Some("pong"), Some("a"))
    );
    let joined = c.json().await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["id"], "b");
}

#[tokio::test]
async fn a_websocket_connection_is_counted_until_its_socket_closes() {
    let app = spawn_app().await;
    let mut c = Raw::connect(&app).await;
    c.send(handshake("/ws", "websocket").as_bytes()).await;
    assert!(c.head().await.starts_with("http/1.1 101"));
    assert_eq!(c.json().await["type"], "welcome");
    assert_eq!(app.metric("switchyard_websocket_sockets").await, 1);
    // The client says goodbye: the server answers with its close frame and closes the socket.
    let mut close = vec![0x88u8, 0x82, 0, 0, 0, 0];
    close.extend_from_slice(&1000u16.to_be_bytes());
    c.send(&close).await;
    let (opcode, payload) = c.frame().await;
    assert_eq!(opcode, 8, "a close frame");
    assert_eq!(&payload[..2], &1000u16.to_be_bytes());
    assert!(
        c.closed().await,
        "the server closes the socket after its close frame"
    );
    eventually("the socket to be uncounted", || async {
        app.metric("switchyard_websocket_sockets").await == 0
            && app.metric("switchyard_connections").await == 0
    })
    .await;
}

#[tokio::test]
async fn a_refused_upgrade_gets_its_json_error_and_the_connection_closes() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.jwt_secret = Some(SECRET.into());
    })
    .await;
    let mut c = Raw::connect(&app).await;
    let req = handshake("/ws", "websocket")
        .replace("\r\n\r\n", "\r\nAuthorization: Bearer not-a-token\r\n\r\n");
    c.send(req.as_bytes()).await;
    let head = c.head().await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let body = c.json_body(&head).await;
    assert_eq!(body["error"], "invalid_token");
    assert!(c.closed().await);
    assert_eq!(app.metric("switchyard_websocket_sockets").await, 0);
}

#[tokio::test]
async fn an_upgrade_header_on_a_plain_route_gets_the_plain_answer() {
    let app = spawn_app().await;
    let mut c = Raw::connect(&app).await;
    c.send(handshake("/health", "websocket").as_bytes()).await;
    let head = c.head().await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    // The whole body, then the end of the connection (the body may come in its own segment).
    c.json_body(&head).await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn a_handshake_that_http_does_not_treat_as_an_upgrade_is_refused_cleanly() {
    // `Upgrade: websocket, h2c` passes the WebSocket handshake check, but the HTTP layer only
    // hands over connections whose Upgrade header is exactly `websocket`: no socket to take
    // over, so a 400 (and, as for any request that asked for an upgrade, the connection ends).
    let app = spawn_app().await;
    let mut c = Raw::connect(&app).await;
    c.send(handshake("/ws", "websocket, h2c").as_bytes()).await;
    let head = c.head().await;
    assert!(head.starts_with("http/1.1 400"), "{head}");
    let body = c.json_body(&head).await;
    assert_eq!(body["error"], "bad_request", "{body}");
    assert!(c.closed().await);
    assert_eq!(app.metric("switchyard_connections").await, 0);
}

#[tokio::test]
async fn a_closed_connection_whose_client_does_not_read_is_dropped_after_the_linger() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.close_linger = Duration::from_millis(300);
        s.outbox_max_bytes = 256 * 1024;
        s.publish_rate = 0;
        s.user_publish_rate = 0;
    })
    .await;
    // A member that stops reading after it joined.
    let c = Raw::member(&app, "flood").await;
    // Another member floods the room until the first one, its socket buffers and then its
    // outbox full, is evicted; its session ends with a close frame queued behind megabytes
    // the client will never read.
    let mut p = app.ws().await;
    p.join("flood").await;
    let big = "x".repeat(50_000);
    let mut published = 0;
    while app
        .metric("switchyard_slow_consumer_disconnects_total")
        .await
        == 0
    {
        p.publish("flood", "big", json!(big)).await;
        published += 1;
        assert!(published < 2_000, "the silent member was never evicted");
    }
    // Its connection is dropped once the linger is over, not kept for as long as the client
    // keeps the socket open; the publisher's stays.
    eventually("the silent member's socket to be dropped", || async {
        app.metric("switchyard_websocket_sockets").await == 1
    })
    .await;
    drop(c);
}

#[tokio::test]
async fn a_client_still_sending_when_the_server_closes_gets_every_frame_before_the_end() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        // Longer than the test may wait: the drain must end at the client's close frame.
        s.close_linger = Duration::from_secs(120);
        s.publish_rate = 0;
        s.user_publish_rate = 0;
    })
    .await;
    let mut c = Raw::member(&app, "linger").await;
    // More than the member's socket buffers hold while it does not read: the rest waits in
    // the server's send buffer.
    let mut p = app.ws().await;
    p.join("linger").await;
    let big = "x".repeat(30_000);
    const EVENTS: usize = 25;
    for _ in 0..EVENTS {
        p.publish("linger", "big", json!(big)).await;
    }
    // The member sends refused requests until its session is closed for it (error limit 20),
    // and a few more after that, as a misbehaving client would.
    let mut sent = 0;
    while app.metric("switchyard_connections").await == 2 {
        c.send(&client_text(r#"{"type":"nope"}"#)).await;
        sent += 1;
        assert!(sent < 1_000, "the session was never closed");
    }
    for _ in 0..20 {
        c.send(&client_text(r#"{"type":"nope"}"#)).await;
    }
    // Closing a socket with unread input makes the kernel answer with a reset, which throws
    // away what is still in the send buffer: the server drains the client's input after its
    // close frame instead, so the member gets everything, then a clean end.
    let (mut events, mut errors) = (0, 0);
    loop {
        let (opcode, payload) = c.frame().await;
        if opcode == 8 {
            assert_eq!(&payload[..2], &1008u16.to_be_bytes(), "closed for policy");
            break;
        }
        let frame: Value = serde_json::from_slice(&payload).expect("JSON frame");
        match frame["type"].as_str() {
            Some("message") => events += 1,
            Some("error") => errors += 1,
            _ => {}
        }
    }
    assert_eq!(events, EVENTS);
    assert!(errors > 20, "{errors} error frames before the close");
    // Our close frame ends the drain: the server closes the socket without waiting for us.
    let mut close = vec![0x88u8, 0x82, 0, 0, 0, 0];
    close.extend_from_slice(&1000u16.to_be_bytes());
    c.send(&close).await;
    assert!(c.closed().await, "a clean end of stream, not a reset");
    eventually("the socket to be closed", || async {
        app.metric("switchyard_websocket_sockets").await == 1
    })
    .await;
}

/// A room with nothing else to fan out writes each frame straight to an idle member's socket
/// (`SWITCHYARD_DIRECT_WRITES`); messages that pile up are queued and written by each
/// connection's writer. Either way, and across the switches between the two, every member
/// gets every message once and in the room's order; with the setting off, nothing is written
/// directly.
#[tokio::test]
async fn rooms_write_straight_to_idle_sockets_and_queue_behind_a_burst_in_one_order() {
    for direct in [true, false] {
        let app = spawn_app_with(Backend::Sqlite, |s| {
            s.direct_writes_per_100ms = if direct { 2000 } else { 0 };
            s.publish_rate = 0;
            s.user_publish_rate = 0;
        })
        .await;
        // The publisher is in the room too; its own copies are skipped while it waits for its
        // answers, so the four members below are the ones checked.
        let mut publisher = app.ws().await;
        publisher.join("direct").await;
        let mut members = Vec::new();
        for _ in 0..4 {
            let mut c = app.ws().await;
            c.join("direct").await;
            members.push(c);
        }
        // One at a time (each publish answered before the next): nothing waits behind them.
        for i in 0..20 {
            publisher.publish("direct", "one", json!(i)).await;
        }
        // Then a burst sent without waiting, then one at a time again.
        for i in 20..320 {
            publisher
                .send(json!({"type": "publish", "room": "direct", "event": "burst", "data": i}))
                .await;
        }
        publisher.publish("direct", "after", json!(320)).await;
        for (k, c) in members.iter_mut().enumerate() {
            for i in 0..=320 {
                let m = c.recv_message().await;
                assert_eq!(
                    m["data"],
                    json!(i),
                    "member {k}, direct writes {direct}: {m}"
                );
                assert_eq!(m["offset"], json!(i + 1), "member {k}: {m}");
            }
            assert!(
                c.drain().await.iter().all(|v| v["type"] != "message"),
                "member {k} got a message twice"
            );
        }
        let written = app.metric("switchyard_direct_writes_total").await;
        let out = app.metric("switchyard_messages_out_total").await;
        assert!(out >= 5 * 321, "{out} frames out");
        if direct {
            assert!(
                written >= 50,
                "most of the 105 frames of the one-at-a-time publishes go straight out: {written}"
            );
        } else {
            assert_eq!(written, 0);
        }
    }
}
