use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn graceful_shutdown_flushes_queued_frames_then_closes_with_1001() {
    let app = spawn_app().await;
    let mut c = app.ws_as("stay").await;
    c.join("r").await;
    for i in 0..20 {
        let (s, _) = app
            .post("/api/rooms/r/publish", json!({"event": "e", "data": i}))
            .await;
        assert_eq!(s, 200);
    }
    let shutdown = tokio::spawn(app.shutdown());
    for i in 0..20 {
        assert_eq!(c.recv_message().await["data"], json!(i));
    }
    let closed = c.closed().await;
    assert_eq!(closed.code, Some(1001));
    assert_eq!(closed.reason, "server shutting down");
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown finished in time")
        .unwrap();
}

/// The next close frame's code on a raw WebSocket, skipping what comes before it.
async fn close_code<S>(ws: &mut S) -> Option<u16>
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// The session table holds every kind of connection (weakly: it keeps none alive), and a
/// graceful shutdown reaches each: a `/ws` session, a Socket.IO socket over a WebSocket, an
/// operation's own WebSocket, and an operation's SSE stream.
#[tokio::test]
async fn graceful_shutdown_closes_every_kind_of_connection() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let app = spawn_app().await;
    let mut native = app.ws_as("native").await;
    native.join("r").await;

    let url = format!(
        "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket",
        app.port
    );
    let (mut sio, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("socket.io");
    sio.send(Message::text("40")).await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, sio.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.starts_with("40") => break,
            Ok(Some(Ok(_))) => {}
            other => panic!("no CONNECT answer: {other:?}"),
        }
    }

    let (s, op) = app
        .post(
            "/api/operations",
            json!({"kind": "demo", "target": "shutdown", "params": {"step_ms": 1000}}),
        )
        .await;
    assert_eq!(s, 202, "{op}");
    let id = op["id"].as_str().unwrap().to_string();
    let (mut op_ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://127.0.0.1:{}/api/operations/{id}/ws",
        app.port
    ))
    .await
    .expect("operation socket");
    // Its first status says it is being watched.
    match tokio::time::timeout(WAIT, op_ws.next()).await {
        Ok(Some(Ok(Message::Text(_)))) => {}
        other => panic!("no status on the operation socket: {other:?}"),
    }
    let mut sse = app
        .http
        .get(app.url(&format!("/api/operations/{id}/events")))
        .send()
        .await
        .expect("sse");
    assert_eq!(sse.status(), 200);
    // Its first event: the SSE watcher is registered.
    let first = tokio::time::timeout(WAIT, sse.chunk()).await;
    assert!(matches!(first, Ok(Ok(Some(_)))), "{first:?}");

    let shutdown = tokio::spawn(app.shutdown());
    assert_eq!(native.closed().await.code, Some(1001));
    assert_eq!(close_code(&mut sio).await, Some(1001));
    assert_eq!(close_code(&mut op_ws).await, Some(1001));
    // The SSE stream ends.
    loop {
        match tokio::time::timeout(WAIT, sse.chunk()).await {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) | Ok(Err(_)) => break,
            Err(_) => panic!("the SSE stream did not end at shutdown"),
        }
    }
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown finished in time")
        .unwrap();
}

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
}

#[tokio::test]
async fn the_binary_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = binary()
        .env("SWITCHYARD_PORT", "0")
        .env("DATABASE_URL", dir.path().join("s.db"))
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn switchyard");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
                let port: u16 = rest.split_whitespace().next().unwrap().parse().unwrap();
                let _ = tx.send(port);
            }
        }
    });
    let port = tokio::task::spawn_blocking(move || rx.recv_timeout(WAIT))
        .await
        .unwrap()
        .expect("server printed its port");
    let mut c = WsClient::connect(&format!("ws://127.0.0.1:{port}/ws"), None).await;
    c.join("r").await;

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let closed = c.closed().await;
    assert_eq!(closed.code, Some(1001));
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}

#[test]
fn an_invalid_setting_stops_start_up_naming_the_variable() {
    let out = binary()
        .env("SWITCHYARD_HEARTBEAT_TIMEOUT_MS", "soon")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SWITCHYARD_HEARTBEAT_TIMEOUT_MS"), "{err}");
}

#[test]
fn open_mode_on_a_public_address_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = binary()
        .env("SWITCHYARD_HOST", "0.0.0.0")
        .env("SWITCHYARD_PORT", "0")
        .env("DATABASE_URL", dir.path().join("s.db"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SWITCHYARD_JWT_SECRET") && err.contains("SWITCHYARD_ALLOW_INSECURE"),
        "{err}"
    );
}

#[test]
fn the_token_command_prints_a_token_the_server_accepts() {
    let out = binary()
        .env("SWITCHYARD_JWT_SECRET", SECRET)
        .args([
            "token",
            "--sub",
            "alice",
            "--rooms",
            "project:*",
            "--publish",
            "project:1",
            "--ttl",
            "60",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let id = switchyard::auth::Authenticator::new(Some(SECRET))
        .verify(&token)
        .unwrap();
    assert_eq!(id.user.id, "alice");
    assert!(id.may_join("project:5"));
    assert!(id.may_publish("project:1"));
    assert!(id.expires_at.is_some());

    let out = binary()
        .env_remove("SWITCHYARD_JWT_SECRET")
        .args(["token", "--sub", "a"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
