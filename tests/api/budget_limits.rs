//! Bounds on what a client — a plain user, a worker token holder, a Socket.IO session that never
//! connects — can make the server hold or do (issue #13, items 4-6).

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

// ---- operations: stages, messages, results, report rate --------------------------------------

/// An operations file declaring one external kind.
fn external_kind() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("operations.toml"),
        "[kinds.convert]\nrunner = \"external\"\nstall_timeout_secs = 60\n",
    )
    .unwrap();
    dir
}

/// A server with a secret and the external kind; a plain member starts an operation and gets
/// its worker token. Returns the app, the operation id and the token.
async fn started_by_a_plain_user(
    dir: &tempfile::TempDir,
    tweak: impl FnOnce(&mut switchyard::config::Settings),
) -> (TestApp, String, String) {
    let file = dir.path().join("operations.toml");
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        s.jwt_secret = Some(SECRET.into());
        s.operations_file = Some(file);
        tweak(s);
    })
    .await;
    let member = token("member", &["project:1"], &["project:1"], None);
    let (s, op) = app
        .post_auth(
            "/api/operations",
            &member,
            json!({"kind": "convert", "target": "a", "project": "1"}),
        )
        .await;
    assert_eq!(s, 202, "{op}");
    let id = op["id"].as_str().unwrap().to_string();
    let worker_token = op["worker_token"].as_str().unwrap().to_string();
    (app, id, worker_token)
}

/// A worker report over REST with the operation's token: status, `Retry-After`, body.
async fn report(
    app: &TestApp,
    worker_token: &str,
    id: &str,
    what: &str,
    body: Value,
) -> (u16, Option<u64>, Value) {
    let res = app
        .http
        .post(app.url(&format!("/api/operations/{id}/{what}")))
        .header("x-worker-token", worker_token)
        .json(&body)
        .send()
        .await
        .expect("POST");
    let status = res.status().as_u16();
    let retry = retry_after(&res);
    (status, retry, res.json().await.unwrap_or(Value::Null))
}

fn retry_after(res: &reqwest::Response) -> Option<u64> {
    res.headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn a_worker_cannot_grow_the_status_object_past_its_bounds() {
    // The attack: 200 reports each naming a new stage made every status object (carried by
    // every operation event and kept in history) 10 MB, and the server 3 GB.
    let dir = external_kind();
    let (app, id, worker_token) =
        started_by_a_plain_user(&dir, |s| s.operation_max_stages = 8).await;
    let mut refused = 0;
    for i in 0..200 {
        let stage = format!("stage-{i:03}-{}", "x".repeat(100));
        let (s, _, b) = report(
            &app,
            &worker_token,
            &id,
            "progress",
            json!({"stage": stage}),
        )
        .await;
        if i < 8 {
            assert_eq!(s, 200, "stage {i}: {b}");
        } else {
            assert_eq!(
                (s, b["error"].as_str()),
                (413, Some("payload_too_large")),
                "stage {i}: {b}"
            );
            refused += 1;
        }
    }
    assert_eq!(refused, 192);
    // A listed stage may still be entered, and progress still moves.
    let (s, _, b) = report(
        &app,
        &worker_token,
        &id,
        "progress",
        json!({"stage": format!("stage-002-{}", "x".repeat(100)), "progress": 40}),
    )
    .await;
    assert_eq!((s, b["progress"].as_f64()), (200, Some(40.0)), "{b}");
    let member = token("member", &["project:1"], &["project:1"], None);
    let (_, status) = app
        .get_auth(&format!("/api/operations/{id}"), &member)
        .await;
    assert_eq!(status["stages"].as_array().map(Vec::len), Some(8));
    let size = status.to_string().len();
    assert!(size < 4_096, "the status object stays small: {size} bytes");

    // Over-long stage names and messages are refused, whatever the count.
    let (s, _, b) = report(
        &app,
        &worker_token,
        &id,
        "progress",
        json!({"stage": "s".repeat(129)}),
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_field")),
        "{b}"
    );
    let (s, _, b) = report(
        &app,
        &worker_token,
        &id,
        "progress",
        json!({"message": "m".repeat(4_097)}),
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_field")),
        "{b}"
    );

    // Over /ws the same bound answers with an error frame.
    let mut w = WsClient::connect(&app.ws_url(), Some(&member)).await;
    let r = w
        .request(json!({"type": "operation.progress", "operation": id, "stage": "one-too-many", "worker_token": worker_token}))
        .await;
    assert_eq!(
        (r["type"].as_str(), r["code"].as_str()),
        (Some("error"), Some("payload_too_large")),
        "{r}"
    );

    // A result over its bound is refused and the operation stays open for a smaller one.
    let (s, _, b) = report(
        &app,
        &worker_token,
        &id,
        "complete",
        json!({"result": {"blob": "r".repeat(70_000)}}),
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (413, Some("payload_too_large")),
        "{b}"
    );
    let (s, _, b) = report(
        &app,
        &worker_token,
        &id,
        "complete",
        json!({"result": {"url": "/out/a"}}),
    )
    .await;
    assert_eq!((s, b["status"].as_str()), (200, Some("completed")), "{b}");
}

#[tokio::test]
async fn worker_reports_are_rate_limited_per_operation_with_retry_after() {
    let dir = external_kind();
    let (app, id, worker_token) =
        started_by_a_plain_user(&dir, |s| s.operation_report_rate = 5).await; // burst 10
    let (mut ok, mut limited) = (0, 0);
    for i in 0..30 {
        let (s, retry, b) =
            report(&app, &worker_token, &id, "progress", json!({"progress": i})).await;
        match s {
            200 => ok += 1,
            429 => {
                assert_eq!(b["error"], "rate_limited", "{b}");
                assert!(
                    retry.is_some_and(|r| (1..=2).contains(&r)),
                    "Retry-After in whole seconds from the bucket: {retry:?}"
                );
                limited += 1;
            }
            other => panic!("unexpected {other}: {b}"),
        }
    }
    assert!(
        (10..=13).contains(&ok),
        "about the burst gets through: {ok}"
    );
    assert_eq!(ok + limited, 30);
}

// ---- publishes: one per-user budget for REST, /ws and Socket.IO ------------------------------

#[tokio::test]
async fn rest_publishes_share_the_users_budget_and_say_when_to_retry() {
    // The attack: 6,000 REST publishes a second from one plain user, all 200, while `/ws`
    // refused after 200.
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.jwt_secret = Some(SECRET.into());
        s.user_publish_rate = 5; // burst 10
    })
    .await;
    let plain = token("plain", &["r"], &["r"], None);
    let (mut ok, mut limited) = (0, 0);
    for i in 0..30 {
        let res = app
            .http
            .post(app.url("/api/rooms/r/publish"))
            .bearer_auth(&plain)
            .json(&json!({"event": "e", "data": i}))
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            200 => ok += 1,
            429 => {
                let retry = retry_after(&res);
                assert!(
                    retry.is_some_and(|r| (1..=2).contains(&r)),
                    "Retry-After: {retry:?}"
                );
                let body: Value = res.json().await.unwrap();
                assert_eq!(body["error"], "rate_limited", "{body}");
                limited += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        (10..=13).contains(&ok),
        "about the burst gets through: {ok}"
    );
    assert_eq!(ok + limited, 30);
    // The same user over /ws finds the budget spent.
    let mut ws = WsClient::connect(&app.ws_url(), Some(&plain)).await;
    ws.join("r").await;
    let r = ws
        .request(json!({"type": "publish", "room": "r", "event": "e", "data": 1}))
        .await;
    assert_eq!(r["code"], "rate_limited", "{r}");
    // And over Socket.IO.
    let mut sio = sio_websocket(&app).await;
    sio.send(Message::text(format!("40{}", json!({"token": plain}))))
        .await
        .unwrap();
    let connected = next_text(&mut sio).await.expect("CONNECT answer");
    assert!(connected.starts_with("40{"), "{connected}");
    sio.send(Message::text(format!(
        "420{}",
        json!(["join", {"room": "r"}])
    )))
    .await
    .unwrap();
    assert!(next_text(&mut sio).await.unwrap().starts_with("430"));
    let publish = json!(["publish", {"room": "r", "event": "e", "data": 1}]);
    sio.send(Message::text(format!("421{publish}")))
        .await
        .unwrap();
    let ack = next_text(&mut sio).await.expect("publish ack");
    let ack: Value = serde_json::from_str(ack.strip_prefix("431").expect("ack 1")).unwrap();
    assert_eq!(ack[0]["error"]["code"], "rate_limited", "{ack}");
    // Another user is unaffected.
    let other = token("other", &["r"], &["r"], None);
    let (s, _) = app
        .post_auth("/api/rooms/r/publish", &other, json!({"event": "e"}))
        .await;
    assert_eq!(s, 200);
    // Every refusal is counted: the REST 429s, the `/ws` one and the Socket.IO one.
    assert!(app.metrics_text().await.contains(&format!(
        "switchyard_refusals_total{{code=\"rate_limited\"}} {}",
        limited + 2
    )));
}

// ---- room history: bytes per room and in total ------------------------------------------------

#[tokio::test]
async fn room_history_is_bounded_in_bytes_per_room_and_in_total() {
    // The attack: 2,000 publishes pinned 842 MB of history (bounded by count and age only).
    const PER_ROOM: usize = 256 * 1024;
    const TOTAL: usize = 1024 * 1024;
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.history_max_bytes = PER_ROOM;
        s.history_total_max_bytes = TOTAL;
        // Rooms check their history every 5 s (a quarter of this); nothing expires meanwhile.
        s.history_ttl = std::time::Duration::from_secs(20);
        s.user_publish_rate = 0;
    })
    .await;
    let publish = |room: &str, i: usize, pad: usize| {
        let req = app
            .http
            .post(app.url(&format!("/api/rooms/{room}/publish")))
            .json(&json!({"event": "big", "data": {"i": i, "pad": "x".repeat(pad)}}));
        async move {
            let res = req.send().await.expect("POST");
            assert_eq!(res.status(), 200);
        }
    };
    let app = &app;
    let last_kept = |room: &str| {
        let url = format!("/api/rooms/{room}/history?after=0");
        async move {
            let (_, page) = app.get(&url).await;
            page["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["offset"].as_u64())
        }
    };
    // One room: 40 messages of ~120 KB kept (data and its encoding) would be ~4.8 MB.
    for i in 1..=40 {
        publish("one", i, 60_000).await;
    }
    let held = app.metric("switchyard_history_bytes").await as usize;
    assert!(
        held <= PER_ROOM && held > 0,
        "one room keeps at most its bound: {held}"
    );
    // The newest messages are the ones kept; older ones cannot be resumed from.
    let (_, page) = app.get("/api/rooms/one/history?after=0").await;
    assert_eq!(page["complete"], false, "trimmed: {page}");
    assert_eq!(last_kept("one").await, Some(40));
    let mut c = app.ws_as("late").await;
    let epoch = page["epoch"].as_str().unwrap();
    let r = c
        .request(json!({"type": "join", "room": "one", "since": {"epoch": epoch, "offset": 1}}))
        .await;
    assert_eq!(r["recovered"], false, "{r}");

    // Many rooms: the total stays under its bound however many rooms hold history.
    for room in 0..12 {
        for i in 1..=6 {
            publish(&format!("many-{room}"), i, 10_000).await;
        }
        let held = app.metric("switchyard_history_bytes").await as usize;
        assert!(
            held <= TOTAL,
            "all rooms together keep at most the total: {held}"
        );
    }
    // A room that starts publishing once the budget is full keeps its messages again as soon
    // as the rooms that filled it have been trimmed to an even share (their periodic check).
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut n = 0;
    loop {
        n += 1;
        publish("fresh", n, 10_000).await;
        if last_kept("fresh").await == Some(n as u64) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a fresh room never kept its messages"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let held = app.metric("switchyard_history_bytes").await as usize;
    assert!(held <= TOTAL, "{held}");
}

// ---- Socket.IO: attachments only after CONNECT, at most maxPayload -----------------------------

type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A Socket.IO session over a WebSocket from the start, after its open packet.
async fn sio_websocket(app: &TestApp) -> RawWs {
    let url = format!(
        "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket",
        app.port
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let open = next_text(&mut ws).await.expect("open packet");
    assert!(open.starts_with('0'), "{open}");
    ws
}

/// The next text frame, or `None` once the connection has closed (its close code if any is
/// returned through `Err`).
async fn next_text(ws: &mut RawWs) -> Result<String, Option<u16>> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame or the close in time")
        {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Close(f))) => return Err(f.map(|f| u16::from(f.code))),
            None | Some(Err(_)) => return Err(None),
            Some(Ok(_)) => {}
        }
    }
}

/// Reads until the server closes the connection; its close code.
async fn close_code(ws: &mut RawWs) -> Option<u16> {
    loop {
        if let Err(code) = next_text(ws).await {
            return code;
        }
    }
}

/// A binary event with `n` attachments, for namespace `/`.
fn binary_event(n: usize) -> String {
    let placeholders: Vec<Value> = (0..n)
        .map(|i| json!({"_placeholder": true, "num": i}))
        .collect();
    format!(
        "45{n}-{}",
        json!(["publish", {"room": "r", "event": "e", "data": placeholders}])
    )
}

#[tokio::test]
async fn a_socket_io_session_that_never_connects_cannot_hold_attachments() {
    // The attack: 60 sessions that never sent CONNECT held 714 MB of partial attachments
    // (16 attachments of maxPayload each, the last never sent); an address may open 2,000.
    let app = spawn_app().await;
    let mut ws = sio_websocket(&app).await;
    ws.send(Message::text(binary_event(16))).await.unwrap();
    // Refused at the packet header: the attachments that would follow are never held.
    assert_eq!(close_code(&mut ws).await, Some(1002));

    // Over long-polling too: the session ends at the header.
    let (_, open) = app.socketio_get("EIO=4&transport=polling").await;
    let hs: Value = serde_json::from_str(&open[1..]).unwrap();
    let sid = hs["sid"].as_str().unwrap();
    let url = app.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"));
    let res = app
        .http
        .post(&url)
        .body(binary_event(16))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = tokio::time::timeout(WAIT, app.http.get(&url).send())
        .await
        .expect("answered, not held until the next ping")
        .unwrap();
    let status = res.status().as_u16();
    let body = res.text().await.unwrap();
    assert!(
        status == 400 || body == "1",
        "the session is gone: {status} {body}"
    );
}

#[tokio::test]
async fn a_connected_socket_io_session_holds_at_most_max_payload_of_attachments() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.sio_max_payload = 64 * 1024).await;
    let mut ws = sio_websocket(&app).await;
    ws.send(Message::text("40")).await.unwrap();
    let connected = next_text(&mut ws).await.expect("CONNECT answer");
    assert!(connected.starts_with("40"), "{connected}");
    // Attachments that fit together are fine.
    let mut ok = sio_websocket(&app).await;
    ok.send(Message::text("40")).await.unwrap();
    next_text(&mut ok).await.expect("CONNECT answer");
    ok.send(Message::text(format!(
        "42{}",
        json!(["join", {"room": "r"}])
    )))
    .await
    .unwrap();
    ok.send(Message::text(binary_event(2))).await.unwrap();
    for _ in 0..2 {
        ok.send(Message::binary(vec![7u8; 20_000])).await.unwrap();
    }
    // Each 40 KB: the second one takes the packet over 64 KiB.
    ws.send(Message::text(binary_event(16))).await.unwrap();
    for _ in 0..15 {
        if ws.send(Message::binary(vec![7u8; 40_000])).await.is_err() {
            break;
        }
    }
    assert_eq!(close_code(&mut ws).await, Some(1009));
    // The other session is unaffected: its publish came back to it, with both attachments.
    loop {
        let text = next_text(&mut ok).await.expect("still open");
        if text.starts_with("452-") {
            break;
        }
    }
}

/// The attack: one token holder starts operations without end (each an actor, rows and, for
/// commands, a process). At most `SWITCHYARD_MAX_ACTIVE_OPERATIONS_PER_USER` active at once
/// per user: the next is refused 429 `too_many_operations`; another user is not affected; once
/// one ends, the user may start again.
#[tokio::test]
async fn one_users_active_operations_are_bounded() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.jwt_secret = Some(SECRET.into());
        s.max_active_operations_per_user = 3;
    })
    .await;
    let mallory = token("mallory", &["*"], &["*"], None);
    let start = |t: String, target: String| {
        let app = &app;
        async move {
            app.post_auth(
                "/api/operations",
                &t,
                json!({"kind": "demo", "target": target, "params": {"step_ms": 10_000}}),
            )
            .await
        }
    };
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, body) = start(mallory.clone(), format!("box-{i}")).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().expect("id").to_string());
    }
    let (status, body) = start(mallory.clone(), "box-3".into()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("too_many_operations")),
        "{body}"
    );
    let (status, body) = start(token("alice", &["*"], &["*"], None), "box-a".into()).await;
    assert_eq!(status, 202, "another user: {body}");
    let (status, body) = app
        .post_auth(
            &format!("/api/operations/{}/cancel", ids[0]),
            &mallory,
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    eventually("a slot back once one ended", || async {
        start(
            mallory.clone(),
            format!("box-4-{}", uuid::Uuid::new_v4().simple()),
        )
        .await
        .0 == 202
    })
    .await;
}
