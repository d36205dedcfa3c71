//! Bounded stress and failure scenarios on loopback: each checks an invariant, not a speed.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

const CLIENTS: usize = 1_000;

/// Reads `operation:<id>` frames until the terminal event; returns the log offsets seen.
async fn lines_until_end(c: &mut WsClient, id: &str, seen: &mut Vec<u64>) -> bool {
    loop {
        let f = c.recv().await;
        if f["room"] != json!(format!("operation:{id}")) {
            continue;
        }
        match f["event"].as_str() {
            Some("operation.log") => seen.push(f["data"]["offset"].as_u64().unwrap()),
            Some("operation.completed") => return true,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_after_a_restart_loses_no_line_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let url = switchyard::config::DatabaseUrl::Sqlite(
        dir.path().join("storm.db").to_string_lossy().into_owned(),
    );
    let ops = dir.path().join("ops.toml");
    std::fs::write(
        &ops,
        "[kinds.job]\nrunner = \"external\"\nstall_timeout_secs = 120\n",
    )
    .unwrap();
    let boot = |url: switchyard::config::DatabaseUrl, ops: std::path::PathBuf| {
        spawn_app_with(Backend::Sqlite, move |s| {
            s.database = url;
            s.operations_file = Some(ops);
            s.operation_flush_interval = Duration::from_millis(20);
            // The whole storm comes from one address.
            s.max_connections_per_ip = 0;
            s.new_connections_per_ip = 0;
            s.workers = 2;
        })
    };
    let app = boot(url.clone(), ops.clone()).await;
    let (s, op) = app
        .post("/api/operations", json!({"kind": "job", "target": "storm"}))
        .await;
    assert_eq!(s, 202);
    let id = op["id"].as_str().unwrap().to_string();
    let lines: Vec<String> = (1..=50).map(|n| format!("line {n}")).collect();
    app.post(
        &format!("/api/operations/{id}/logs"),
        json!({"lines": lines}),
    )
    .await;

    // 1,000 watchers, each having read up to a different line.
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let (ws, id) = (app.ws_url(), id.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = WsClient::connect(&ws, None).await;
            let r = c
                .request(json!({"type": "join", "room": format!("operation:{id}")}))
                .await;
            assert_eq!(r["type"], "joined");
            let upto = (i % 50) as u64 + 1;
            let mut seen = Vec::new();
            while seen.last() != Some(&upto) {
                let f = c.recv_where(|f| f["event"] == "operation.log").await;
                seen.push(f["data"]["offset"].as_u64().unwrap());
            }
            (c, seen)
        }));
    }
    let mut watchers = Vec::new();
    for t in tasks {
        watchers.push(t.await.expect("watcher joined"));
    }
    assert_eq!(app.metric("switchyard_connections").await, CLIENTS as u64);

    // Restart mid-operation: every watcher is told (1001), then all come back at once.
    let shutdown = tokio::spawn(app.shutdown());
    let mut dropped = Vec::new();
    for (mut c, seen) in watchers {
        let closed = c.closed().await;
        assert_eq!(closed.code, Some(1001));
        dropped.push(seen);
    }
    shutdown.await.unwrap();
    let app = boot(url.clone(), ops.clone()).await;
    let (_, st) = app.get(&format!("/api/operations/{id}")).await;
    assert_eq!(
        st["status"], "running",
        "an external operation waits for its worker across restarts"
    );

    let mut tasks = Vec::new();
    for mut seen in dropped {
        let (ws, id) = (app.ws_url(), id.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = WsClient::connect(&ws, None).await;
            let last = *seen.last().unwrap();
            let r = c
                .request(
                    json!({"type": "join", "room": format!("operation:{id}"), "log_offset": last}),
                )
                .await;
            assert_eq!(r["recovered"], true, "{r}");
            let ended = lines_until_end(&mut c, &id, &mut seen).await;
            (c, seen, ended)
        }));
    }
    // The worker carries on while the storm lands.
    for n in 51..=60 {
        app.post(
            &format!("/api/operations/{id}/logs"),
            json!({"lines": [format!("line {n}")]}),
        )
        .await;
    }
    let (s, _) = app
        .post(&format!("/api/operations/{id}/complete"), json!({}))
        .await;
    assert_eq!(s, 200);
    let mut clients = Vec::new();
    for t in tasks {
        let (c, seen, ended) = t.await.expect("watcher recovered");
        assert!(ended);
        let unique: BTreeSet<u64> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "no line twice");
        assert_eq!(seen, (1..=60).collect::<Vec<_>>(), "every line, in order");
        clients.push(c);
    }

    // Everyone leaves: nothing is left behind.
    for c in clients {
        c.abort();
    }
    eventually("every connection to be released", || async {
        app.metric("switchyard_connections").await == 0
    })
    .await;
    let (_, rooms) = app.get("/api/rooms").await;
    let members: u64 = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["members"].as_u64().unwrap())
        .sum();
    assert_eq!(members, 0, "no member is left in any room: {rooms}");
}

/// Heartbeats keep flowing while a large room takes a storm of broadcasts: no healthy member is
/// dropped for silence, none is evicted, and every message arrives in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_storm_to_a_large_room_does_not_starve_heartbeats() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    const MEMBERS: usize = 500;
    const MESSAGES: u64 = 300;
    let app = spawn_app_with(Backend::Sqlite, |s| {
        // A tight heartbeat: a session whose pongs waited behind the storm for 1.5 s is dropped.
        s.heartbeat_interval = Duration::from_millis(100);
        s.heartbeat_timeout = Duration::from_millis(1_500);
        s.max_connections_per_ip = 0;
        s.new_connections_per_ip = 0;
        s.workers = 2;
    })
    .await;
    // Each member reads (and so answers pings) from the moment it connects: a member that sat
    // unread while the others connected would rightly be dropped for silence.
    let mut readers = Vec::with_capacity(MEMBERS);
    for _ in 0..MEMBERS {
        let (mut ws, _) = tokio_tungstenite::connect_async(app.ws_url())
            .await
            .expect("connect");
        futures_util::SinkExt::send(
            &mut ws,
            Message::text(r#"{"type":"join","room":"big","id":1}"#),
        )
        .await
        .unwrap();
        readers.push(tokio::spawn(async move {
            let (mut offsets, mut pings) = (Vec::new(), 0u32);
            while (offsets.len() as u64) < MESSAGES {
                // Reading answers the server's pings (the library replies with pongs).
                match tokio::time::timeout(WAIT, ws.next())
                    .await
                    .expect("frames keep coming")
                {
                    Some(Ok(Message::Text(t))) => {
                        let f: serde_json::Value = serde_json::from_str(&t).unwrap();
                        if f["type"] == "message" {
                            offsets.push(f["offset"].as_u64().unwrap());
                        }
                    }
                    Some(Ok(Message::Ping(_))) => pings += 1,
                    Some(Ok(Message::Close(c))) => panic!("a healthy member was closed: {c:?}"),
                    Some(Ok(_)) => {}
                    other => panic!("connection failed: {other:?}"),
                }
            }
            (ws, offsets, pings)
        }));
    }
    eventually("every member to have joined", || async {
        let (_, rooms) = app.get("/api/rooms").await;
        rooms["rooms"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == "big"))
            .is_some_and(|r| r["members"] == MEMBERS)
    })
    .await;
    let pad = "x".repeat(2_000);
    for i in 0..MESSAGES {
        let (s, _) = app
            .post(
                "/api/rooms/big/publish",
                json!({"event": "storm", "data": {"i": i, "pad": pad}}),
            )
            .await;
        assert_eq!(s, 200);
    }
    let mut total_pings = 0;
    let mut keep = Vec::new();
    for r in readers {
        let (ws, offsets, pings) = r.await.expect("member kept up");
        assert_eq!(offsets, (1..=MESSAGES).collect::<Vec<_>>());
        total_pings += pings;
        keep.push(ws);
    }
    assert!(total_pings > 0, "heartbeats were sent during the storm");
    assert_eq!(
        app.metric("switchyard_connections").await,
        MEMBERS as u64,
        "nobody was dropped for silence"
    );
    assert_eq!(
        app.metric("switchyard_slow_consumer_disconnects_total")
            .await,
        0
    );
}
