use std::time::Duration;

use futures_util::StreamExt;

use serde_json::Value;

use crate::helpers::*;

/// Runs the socket.io-client@4 suite (tests/js) against two real servers.
#[tokio::test]
async fn socket_io_client_v4_works_against_switchyard() {
    let js = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    assert!(
        js.join("node_modules/socket.io-client").is_dir(),
        "tests/js/node_modules is missing: run `npm ci --prefix tests/js` (.ci/run does)"
    );
    let open = spawn_app_with(Backend::Sqlite, |s| {
        s.sio_max_payload = 100_000;
        s.sio_namespaces = vec!["/admin".into()];
        s.workers = 2;
    })
    .await;
    // At most 3 connections per user: the suite checks the fourth is refused.
    let secure = spawn_app_with(Backend::Sqlite, |s| {
        s.jwt_secret = Some(SECRET.into());
        s.max_connections_per_user = 3;
    })
    .await;
    let run = tokio::process::Command::new("node")
        .args([
            "--test",
            "--test-force-exit",
            "--test-reporter=spec",
            "socketio.test.mjs",
        ])
        .current_dir(&js)
        .env("SY_URL", format!("http://127.0.0.1:{}", open.port))
        .env("SY_SECURE_URL", format!("http://127.0.0.1:{}", secure.port))
        .env("SY_SECRET", SECRET)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the node suite finished in time")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "socket.io-client suite failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("fail 0"), "{stdout}");
}

fn code(body: &str) -> i64 {
    serde_json::from_str::<Value>(body).unwrap()["code"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn engine_io_refusals_use_the_reference_codes() {
    let app = spawn_app().await;
    let (s, b) = app.socketio_get("EIO=4&transport=carrier-pigeon").await;
    assert_eq!((s, code(&b)), (400, 0));
    let (s, b) = app.socketio_get("EIO=4&transport=polling&sid=nope").await;
    assert_eq!((s, code(&b)), (400, 1));
    let res = app
        .http
        .put(app.url("/socket.io/?EIO=4&transport=polling"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(code(&res.text().await.unwrap()), 2);
    let (s, b) = app.socketio_get("EIO=3&transport=polling").await;
    assert_eq!((s, code(&b)), (400, 5));

    // A real session: open packet, then a POST over maxPayload is 413 and a bad one 400.
    let (s, open) = app.socketio_get("EIO=4&transport=polling").await;
    assert_eq!(s, 200);
    let hs: Value = serde_json::from_str(&open[1..]).unwrap();
    assert_eq!(hs["upgrades"], serde_json::json!(["websocket"]));
    assert_eq!(hs["maxPayload"], 1_000_000);
    let sid = hs["sid"].as_str().unwrap();
    let url = app.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"));
    let res = app
        .http
        .post(&url)
        .body("4".repeat(1_000_001))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let res = app.http.post(&url).body("40").send().await.unwrap();
    assert_eq!(
        (res.status().as_u16(), res.text().await.unwrap()),
        (200, "ok".to_string())
    );
    let res = app.http.post(&url).body("zzz").send().await.unwrap();
    assert_eq!(res.status(), 400);
    let (s, _) = app
        .socketio_get(&format!("EIO=4&transport=polling&sid={sid}"))
        .await;
    assert_eq!(s, 400, "the session ended with the malformed packet");
}

#[tokio::test]
async fn origins_are_checked_and_cors_is_answered() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let res = app
        .http
        .get(app.url("/socket.io/?EIO=4&transport=polling"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(res.headers()["access-control-allow-credentials"], "true");
    let res = app
        .http
        .get(app.url("/socket.io/?EIO=4&transport=polling"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(code(&res.text().await.unwrap()), 4);
    let pre = app
        .http
        .request(
            reqwest::Method::OPTIONS,
            app.url("/socket.io/?EIO=4&transport=polling"),
        )
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
    assert!(pre.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));

    // WebSocket upgrades from a foreign origin are refused too, on both endpoints.
    for path in ["/socket.io/?EIO=4&transport=websocket", "/ws"] {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://127.0.0.1:{}{path}", app.port)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("origin", "https://evil.example".parse().unwrap());
        let err = tokio_tungstenite::connect_async(req)
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("403"), "{path}: {err}");
    }
}

#[tokio::test]
async fn overlapping_polling_posts_end_the_session() {
    let app = spawn_app().await;
    let (_, open) = app.socketio_get("EIO=4&transport=polling").await;
    let hs: Value = serde_json::from_str(&open[1..]).unwrap();
    let sid = hs["sid"].as_str().unwrap().to_string();
    let url = app.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"));
    // The first POST's body stays open until we say so.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let body = futures_util::stream::once(async {
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"40"))
    })
    .chain(futures_util::stream::once(async move {
        let _ = rx.await;
        Ok(bytes::Bytes::new())
    }));
    let first = {
        let http = app.http.clone();
        let url = url.clone();
        tokio::spawn(async move {
            http.post(url)
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
        })
    };
    // The second POST finds the first in flight.
    let mut second_status = 0;
    for _ in 0..200 {
        let res = app.http.post(&url).body("40").send().await.unwrap();
        second_status = res.status().as_u16();
        if second_status == 400 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(second_status, 400, "an overlapping POST is refused");
    let _ = tx.send(());
    let _ = first.await;
    let (s, _) = app
        .socketio_get(&format!("EIO=4&transport=polling&sid={sid}"))
        .await;
    assert_eq!(s, 400, "and the session is gone");
}

#[tokio::test]
async fn operation_streams_check_the_origin_too() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let (_, op) = app
        .post(
            "/api/operations",
            serde_json::json!({"kind": "demo", "target": "o", "params": {"step_ms": 1}}),
        )
        .await;
    let id = op["id"].as_str().unwrap();
    let res = app
        .http
        .get(app.url(&format!("/api/operations/{id}/events")))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
}

#[tokio::test]
async fn a_polling_socket_closed_for_misbehaving_gets_its_disconnect_on_the_next_poll() {
    // No poll is waiting when the server closes the socket: the DISCONNECT must still reach
    // the client (else it reconnects straight back into the same refusal).
    let app = spawn_app().await;
    let (_, open) = app.socketio_get("EIO=4&transport=polling").await;
    let hs: Value = serde_json::from_str(&open[1..]).unwrap();
    let sid = hs["sid"].as_str().unwrap().to_string();
    let url = app.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"));
    let post = |body: String| {
        let http = app.http.clone();
        let url = url.clone();
        async move { http.post(url).body(body).send().await.unwrap().status() }
    };
    assert_eq!(post("40".into()).await, 200);
    let (s, connected) = app
        .socketio_get(&format!("EIO=4&transport=polling&sid={sid}"))
        .await;
    assert_eq!(s, 200);
    assert!(connected.starts_with("40"), "{connected}");
    // More refused requests than the error limit, in one POST (packets separated by \x1e).
    let flood: Vec<String> = (0..30)
        .map(|_| r#"42["publish",{"room":"bad room","event":"e"}]"#.to_string())
        .collect();
    assert_eq!(post(flood.join("\u{1e}")).await, 200);
    let (s, body) = app
        .socketio_get(&format!("EIO=4&transport=polling&sid={sid}"))
        .await;
    assert_eq!(s, 200, "the session answers one more poll: {body}");
    let packets: Vec<&str> = body.split('\u{1e}').collect();
    assert_eq!(
        packets.last(),
        Some(&"41"),
        "ends with the DISCONNECT: {body}"
    );
    // Then it is gone.
    let (s, _) = app
        .socketio_get(&format!("EIO=4&transport=polling&sid={sid}"))
        .await;
    assert_eq!(s, 400);
}

/// A new Engine.IO session on long-polling: its sid and polling URL.
async fn open_polling(app: &TestApp) -> (String, String) {
    let (_, open) = app.socketio_get("EIO=4&transport=polling").await;
    let hs: Value = serde_json::from_str(&open[1..]).unwrap();
    let sid = hs["sid"].as_str().unwrap().to_string();
    let url = app.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"));
    (sid, url)
}

/// A Socket.IO session connected to `/` by long-polling: its sid and polling URL.
async fn connected_by_polling(app: &TestApp) -> (String, String) {
    let (sid, url) = open_polling(app).await;
    let res = app.http.post(&url).body("40").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let (_, connected) = app
        .socketio_get(&format!("EIO=4&transport=polling&sid={sid}"))
        .await;
    assert!(connected.starts_with("40"), "{connected}");
    (sid, url)
}

/// A long-polling GET in flight, once the server holds it.
async fn waiting_poll(app: &TestApp, url: &str) -> tokio::task::JoinHandle<String> {
    let poll = {
        let http = app.http.clone();
        let url = url.to_string();
        tokio::spawn(async move { http.get(url).send().await.unwrap().text().await.unwrap() })
    };
    eventually("the poll to wait", || async {
        app.metric("switchyard_socketio_polls_waiting").await == 1
    })
    .await;
    poll
}

type Probe =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket opened for session `sid`: the upgrade has begun.
async fn open_probe(app: &TestApp, sid: &str) -> Probe {
    let url = format!(
        "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket&sid={sid}",
        app.port
    );
    tokio_tungstenite::connect_async(url)
        .await
        .expect("probe")
        .0
}

/// Sends the probe: `3probe` comes back and the waiting `poll` ends with a noop.
async fn probe_releases(ws: &mut Probe, poll: tokio::task::JoinHandle<String>) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text("2probe")).await.unwrap();
    let pong = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("3probe in time");
    assert_eq!(pong.unwrap().unwrap(), Message::text("3probe"));
    let released = tokio::time::timeout(WAIT, poll)
        .await
        .expect("the poll is released");
    assert_eq!(released.unwrap(), "6", "with a noop");
}

#[tokio::test]
async fn a_poll_that_arrives_between_the_websocket_and_its_probe_is_released() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    // socket.io-client waits for its poll in flight to end before it completes the upgrade
    // with `5`. A poll that reached the server after the WebSocket but before the probe was
    // held for `5` (so a client sending `5` right behind the probe has it refused, as the
    // protocol suite expects): client and server waited for each other until the next ping,
    // 25 s, and acks emitted meanwhile timed out (about 1 in 130 connections under load).
    let app = spawn_app().await;
    let (sid, url) = connected_by_polling(&app).await;
    let mut ws = open_probe(&app, &sid).await;
    let poll = waiting_poll(&app, &url).await;
    probe_releases(&mut ws, poll).await;
    // The upgrade completes: the WebSocket carries the session.
    ws.send(Message::text("5")).await.unwrap();
    ws.send(Message::text("2")).await.unwrap();
    let answer = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("pong in time");
    assert_eq!(answer.unwrap().unwrap(), Message::text("3"));
}

#[tokio::test]
async fn a_poll_held_between_the_websocket_and_its_probe_and_refused_by_the_upgrade_leaves_the_websocket_awake(
) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    // A client that sends `5` right behind `3probe` (the bench's browser-path client did):
    // the held poll is refused. That poll used to register its waker on the outbox after the
    // WebSocket's writer had registered there, so nothing woke the writer again: every
    // session upgraded this way died at its ping timeout, its pings never written.
    let app = spawn_app().await;
    let (sid, url) = connected_by_polling(&app).await;
    let mut ws = open_probe(&app, &sid).await;
    let poll = waiting_poll(&app, &url).await;
    ws.send(Message::text("2probe")).await.unwrap();
    let probed = tokio::time::timeout(WAIT, ws.next()).await.expect("3probe");
    assert_eq!(probed.unwrap().unwrap(), Message::text("3probe"));
    ws.send(Message::text("5")).await.unwrap();
    let ended = tokio::time::timeout(WAIT, poll)
        .await
        .expect("the held poll ends")
        .unwrap();
    // Refused (400), or released first by the 100 ms timer on a slow machine.
    assert!(ended.contains("Bad request") || ended == "6", "{ended}");
    for _ in 0..3 {
        ws.send(Message::text("2")).await.unwrap();
        let answer = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the server's answer is written to the upgraded WebSocket");
        assert_eq!(answer.unwrap().unwrap(), Message::text("3"));
    }
}

/// A polling Socket.IO session in the middle of its upgrade: connected, the probe answered,
/// the waiting poll released with a noop (so the client has paused polling). Returns the sid
/// and the probe WebSocket.
async fn mid_upgrade(app: &TestApp) -> (String, Probe) {
    let (sid, url) = connected_by_polling(app).await;
    let poll = waiting_poll(app, &url).await;
    let mut ws = open_probe(app, &sid).await;
    probe_releases(&mut ws, poll).await;
    (sid, ws)
}

/// More refused requests than the error limit, in one POST.
async fn flood(app: &TestApp, sid: &str) {
    let flood: Vec<String> = (0..30)
        .map(|_| r#"42["publish",{"room":"bad room","event":"e"}]"#.to_string())
        .collect();
    let url = app.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"));
    let res = app.http.post(url).body(flood.join("\u{1e}")).send().await;
    assert_eq!(res.unwrap().status(), 200);
}

/// The text frames of `ws` until it closes (a close frame or the end of the stream).
async fn frames_until_close(ws: &mut Probe) -> Vec<String> {
    use tokio_tungstenite::tungstenite::Message;
    let mut texts = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("frames in time")
        {
            Some(Ok(Message::Text(t))) => texts.push(t.to_string()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return texts,
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_socket_closed_for_misbehaving_mid_upgrade_gets_its_disconnect_over_the_websocket() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    // The client had paused polling to finish its upgrade when the server closed the socket:
    // the upgrade still completes and the DISCONNECT comes over the WebSocket. (Closing the
    // probe instead left the client with a transport error, and it reconnected straight into
    // the refusal.)
    let app = spawn_app().await;
    let (sid, mut ws) = mid_upgrade(&app).await;
    flood(&app, &sid).await;
    ws.send(Message::text("5")).await.unwrap();
    let texts = frames_until_close(&mut ws).await;
    assert_eq!(
        texts.last().map(String::as_str),
        Some("41"),
        "the DISCONNECT, then the close: {texts:?}"
    );
    eventually("the session to end", || async {
        app.socketio_get(&format!("EIO=4&transport=polling&sid={sid}"))
            .await
            .0
            == 400
    })
    .await;
}

#[tokio::test]
async fn a_socket_closed_for_misbehaving_mid_upgrade_gets_its_disconnect_by_polling_if_the_probe_fails(
) {
    // The same, but the probe connection fails before the upgrade completes: the client goes
    // back to polling, and its next poll takes the DISCONNECT.
    let app = spawn_app().await;
    let (sid, mut ws) = mid_upgrade(&app).await;
    flood(&app, &sid).await;
    ws.close(None).await.unwrap();
    // Wait for the session to see the probe go (it answers the close), then poll.
    frames_until_close(&mut ws).await;
    let (s, body) = app
        .socketio_get(&format!("EIO=4&transport=polling&sid={sid}"))
        .await;
    assert_eq!(s, 200, "the session answers one more poll: {body}");
    assert_eq!(
        body.split('\u{1e}').next_back(),
        Some("41"),
        "ends with the DISCONNECT: {body}"
    );
}

#[tokio::test]
async fn a_polling_client_that_closes_with_no_poll_waiting_gets_a_noop_on_its_next_poll() {
    // The protocol suite sends its GET and its close packet at once; whichever the server sees
    // first, the GET gets a noop (200), as from the reference server, and the session is gone
    // after it.
    let app = spawn_app().await;
    let (sid, url) = open_polling(&app).await;
    assert_eq!(
        app.http.post(&url).body("1").send().await.unwrap().status(),
        200
    );
    assert_eq!(
        app.socketio_get(&format!("EIO=4&transport=polling&sid={sid}"))
            .await,
        (200, "6".to_string())
    );
    let (s, _) = app
        .socketio_get(&format!("EIO=4&transport=polling&sid={sid}"))
        .await;
    assert_eq!(s, 400, "and then the session is gone");
}

#[tokio::test]
async fn a_closed_polling_session_waiting_for_its_last_poll_frees_its_connection_slot() {
    // A session kept for one more poll is closed: the client's next connection from the same
    // address is admitted at once, not after the heartbeat-long grace.
    let app = spawn_app_with(Backend::Sqlite, |s| s.max_connections_per_ip = 1).await;
    let (_sid, url) = open_polling(&app).await;
    let (s, _) = app.socketio_get("EIO=4&transport=polling").await;
    assert_eq!(s, 429, "the limit holds while the session is open");
    assert_eq!(
        app.http.post(&url).body("1").send().await.unwrap().status(),
        200
    );
    eventually("a new session to be admitted", || async {
        app.socketio_get("EIO=4&transport=polling").await.0 == 200
    })
    .await;
}
