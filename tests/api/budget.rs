//! The memory budget, attacked as a hostile client would: what one connection, with no token,
//! can make the server hold. The server runs in this process, so its memory is this process's
//! resident set (`VmRSS`); each attack streams far more than its bound allows to stay resident.
//! Budget tests take turns ([`ONE_AT_A_TIME`]) so one's growth is not counted for another.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};

use crate::helpers::*;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// This process's resident set, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

const MIB: u64 = 1024 * 1024;

/// What the attacker streams behind a header announcing 2^40 bytes: before the fix the server
/// buffered all of it (3.2 GB in 2 s in the report).
const STREAMED: usize = 128 << 20;

/// The most this process may grow during an attack. The server needs a few frames and buffers
/// (~0.1-0.4 MiB measured); the bound is generous because other tests share this process (a
/// full `cargo test` runs them alongside), and still half of what the attacks made the server
/// hold before the fixes (128-156 MiB).
const GROWTH_BOUND: u64 = 64 * MIB;

/// A masked client frame header announcing `len` payload bytes (64-bit length form).
fn announcing(opcode: u8, len: u64) -> Vec<u8> {
    let mut h = vec![0x80 | opcode, 0x80 | 127];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[0x11, 0x22, 0x33, 0x44]);
    h
}

/// The close code of the first close frame the server sends (`None`: it ended the connection
/// without one), skipping the frames before it.
async fn close_code(rd: &mut ReadHalf<'_>, mut buf: Vec<u8>) -> Option<u16> {
    loop {
        // One whole frame buffered? (Server frames are unmasked.)
        if buf.len() >= 2 {
            let (len, start) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => (
                    u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")) as usize,
                    10,
                ),
                126 | 127 => (usize::MAX, 0),
                n => (n as usize, 2),
            };
            if len != usize::MAX && buf.len() >= start + len {
                if buf[0] & 0x0f == 0x8 {
                    return (len >= 2)
                        .then(|| u16::from_be_bytes([buf[start], buf[start + 1]]))
                        .or(Some(1005));
                }
                buf.drain(..start + len);
                continue;
            }
        }
        let mut chunk = [0u8; 4096];
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Streams `STREAMED` bytes after `header` until the server stops taking them or `stop` is
/// raised; returns how much it took.
async fn stream_payload(wr: &mut WriteHalf<'_>, header: &[u8], stop: &AtomicBool) -> usize {
    if wr.write_all(header).await.is_err() {
        return 0;
    }
    let chunk = vec![0x5au8; 64 * 1024];
    let mut sent = 0;
    while sent < STREAMED && !stop.load(Ordering::Relaxed) {
        // A server that neither reads nor closes would block this forever.
        match tokio::time::timeout(WAIT, wr.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            _ => break,
        }
    }
    sent
}

/// After a WebSocket handshake on `c` (its 101 read): announces 2^40 bytes in a frame of
/// `opcode` and streams payload while watching for the server's close. Returns the close code
/// (if any), how long the server took to end it, and how much this process grew meanwhile.
async fn announce_a_huge_frame(c: &mut Raw, opcode: u8) -> (Option<u16>, Duration, u64) {
    let before = rss();
    let started = Instant::now();
    let stop = AtomicBool::new(false);
    let leftover = std::mem::take(&mut c.buf);
    let (mut rd, mut wr) = c.stream.split();
    let header = announcing(opcode, 1 << 40);
    let (code, _sent) = tokio::join!(
        async {
            let code = tokio::time::timeout(WAIT, close_code(&mut rd, leftover))
                .await
                .unwrap_or(None);
            stop.store(true, Ordering::Relaxed);
            code
        },
        stream_payload(&mut wr, &header, &stop)
    );
    let took = started.elapsed();
    (code, took, rss().saturating_sub(before))
}

/// A server with a secret (so the raw clients below have no token) and a short lingering close.
async fn secured_with_short_linger() -> TestApp {
    spawn_app_with(Backend::Sqlite, |s| {
        s.jwt_secret = Some(SECRET.into());
        s.close_linger = Duration::from_millis(300);
    })
    .await
}

/// Announces a 2^40-byte frame of `opcode` on `c` and streams payload: the server must close
/// with 1009 within seconds, having grown by less than [`GROWTH_BOUND`].
async fn refused_at_the_header(c: &mut Raw, opcode: u8) {
    let (code, took, grown) = announce_a_huge_frame(c, opcode).await;
    assert_eq!(code, Some(1009), "closed as too large, at the header");
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    assert!(
        grown < GROWTH_BOUND,
        "the server grew by {} MiB",
        grown / MIB
    );
}

#[tokio::test]
async fn a_frame_announcing_a_terabyte_is_refused_at_its_header_on_ws() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // A secret: the client has no token, inside its authentication window.
    let app = secured_with_short_linger().await;
    let mut c = Raw::connect(&app).await;
    c.send(handshake("/ws", "websocket").as_bytes()).await;
    assert!(c.head().await.starts_with("http/1.1 101"));
    refused_at_the_header(&mut c, 0x2).await;
    assert!(app
        .metrics_text()
        .await
        .contains("switchyard_refusals_total{code=\"frame_too_large\"} 1"));
    // The server dropped the connection: nothing more is accepted, and it is uncounted.
    eventually("the socket to be dropped", || async {
        app.metric("switchyard_websocket_sockets").await == 0
    })
    .await;
}

#[tokio::test]
async fn a_frame_announcing_a_terabyte_is_refused_before_socket_io_connect() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = secured_with_short_linger().await;
    let mut c = Raw::connect(&app).await;
    c.send(handshake("/socket.io/?EIO=4&transport=websocket", "websocket").as_bytes())
        .await;
    assert!(c.head().await.starts_with("http/1.1 101"));
    refused_at_the_header(&mut c, 0x1).await;
}

#[tokio::test]
async fn a_frame_announcing_a_terabyte_is_refused_on_the_socket_io_upgrade_probe() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = secured_with_short_linger().await;
    // A polling session (no CONNECT), then the WebSocket that probes to take it over.
    let (_, open) = app.socketio_get("EIO=4&transport=polling").await;
    let open: serde_json::Value = serde_json::from_str(&open[1..]).expect("open packet JSON");
    let sid = open["sid"].as_str().expect("sid");
    let mut c = Raw::connect(&app).await;
    let path = format!("/socket.io/?EIO=4&transport=websocket&sid={sid}");
    c.send(handshake(&path, "websocket").as_bytes()).await;
    assert!(c.head().await.starts_with("http/1.1 101"));
    refused_at_the_header(&mut c, 0x1).await;
}

/// A masked ping frame with `payload`.
fn client_ping(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() <= 125);
    let mask = [0x0au8, 0x0b, 0x0c, 0x0d];
    let mut f = vec![0x89, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[tokio::test]
async fn a_ping_flood_from_a_client_that_never_reads_holds_one_pong() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // Open mode: no token at all.
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.publish_rate = 0;
        s.user_publish_rate = 0;
    })
    .await;
    let mut observer = app.ws().await;
    observer.join("flood-done").await;
    // The flooder joins (it will never read the answer), sends two million pings, then a
    // publish: when the observer gets it, every ping before it was handled.
    let mut c = Raw::connect(&app).await;
    let mut hello = handshake("/ws", "websocket").into_bytes();
    hello.extend(client_text(r#"{"type":"join","room":"flood-done"}"#));
    c.send(&hello).await;
    let before = rss();
    const PINGS: usize = 2_000_000;
    const PER_WRITE: usize = 10_000;
    let batch: Vec<u8> = (0..PER_WRITE)
        .flat_map(|_| client_ping(&[0x70; 32]))
        .collect();
    let flood = async {
        for _ in 0..PINGS / PER_WRITE {
            c.send(&batch).await;
        }
        c.send(&client_text(
            r#"{"type":"publish","room":"flood-done","event":"done","data":1}"#,
        ))
        .await;
    };
    tokio::time::timeout(Duration::from_secs(60), flood)
        .await
        .expect("the server took the flood within a minute");
    let done = tokio::time::timeout(
        Duration::from_secs(60),
        observer.recv_where(|m| m["event"] == "done"),
    )
    .await
    .expect("the flooder's publish arrived: every ping was handled");
    assert_eq!(done["data"], json!(1));
    let grown = rss().saturating_sub(before);
    assert!(
        grown < GROWTH_BOUND,
        "the server grew by {} MiB answering {PINGS} pings",
        grown / MIB
    );
    // The server still answers other clients.
    let mut other = app.ws().await;
    other.join("after-the-flood").await;
    drop(c);
}

#[tokio::test]
async fn a_request_body_that_does_not_arrive_in_time_gets_408_and_the_connection_ends() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.request_timeout = Duration::from_millis(1_000);
    })
    .await;
    for dribble in [false, true] {
        let mut c = Raw::connect(&app).await;
        let started = Instant::now();
        c.send(
            b"POST /api/rooms/slow/publish HTTP/1.1\r\nHost: 127.0.0.1\r\n\
              Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"event\":",
        )
        .await;
        // Either stops there, or sends a byte every 100 ms: a deadline, not an idle timer.
        let give_up = tokio::time::sleep(WAIT);
        tokio::pin!(give_up);
        let head = loop {
            let mut chunk = [0u8; 4096];
            tokio::select! {
                read = c.stream.read(&mut chunk) => match read {
                    Ok(n @ 1..) => {
                        c.buf.extend_from_slice(&chunk[..n]);
                        break c.head().await;
                    }
                    _ => panic!("closed without an answer (dribble: {dribble})"),
                },
                () = tokio::time::sleep(Duration::from_millis(100)), if dribble => {
                    let _ = c.stream.write_all(b" ").await;
                }
                () = &mut give_up => panic!("no answer (dribble: {dribble})"),
            }
        };
        assert!(head.starts_with("http/1.1 408"), "{head}");
        let body = c.json_body(&head).await;
        assert_eq!(body["error"], "request_timeout", "{body}");
        assert!(c.closed().await, "the connection ends");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "answered after {took:?} (dribble: {dribble})"
        );
    }
}

/// A `/ws` request padded past the unauthenticated bound (8 KiB): any answer proves it was read.
fn padded_request() -> serde_json::Value {
    json!({"type": "join", "room": "r".repeat(9_000), "id": "big"})
}

#[tokio::test]
async fn before_its_auth_frame_a_client_may_send_no_more_than_an_auth_frame_needs() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.jwt_secret = Some(SECRET.into());
    })
    .await;
    // Unauthenticated: a 9 KiB frame is refused (an auth frame is a token, not 9 KiB).
    let mut c = WsClient::connect(&app.ws_url(), None).await;
    c.send(padded_request()).await;
    assert_eq!(c.closed().await.code, Some(1009));
    // Authenticated by its auth frame: the same frame is read (and refused for its room name).
    let mut c = WsClient::connect(&app.ws_url(), None).await;
    let t = token("alice", &["*"], &[], None);
    c.send(json!({"type": "auth", "token": t})).await;
    assert_eq!(c.recv().await["type"], "authenticated");
    c.send(padded_request()).await;
    let answer = c.recv().await;
    assert_eq!(
        (answer["type"].as_str(), answer["id"].as_str()),
        (Some("error"), Some("big")),
        "{answer}"
    );
    // With a token in the header, the full bound applies from the start.
    let mut c = WsClient::connect(&app.ws_url(), Some(&t)).await;
    c.send(padded_request()).await;
    assert_eq!(c.recv().await["id"], "big");
}

#[tokio::test]
async fn before_its_connect_a_socket_io_client_may_send_no_more_than_a_connect_needs() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.jwt_secret = Some(SECRET.into());
    })
    .await;
    let url = format!(
        "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket",
        app.port
    );
    let open = || async {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("WebSocket");
        let first = ws.next().await.expect("open packet").expect("frame");
        assert!(first.to_text().expect("text").starts_with("0{"));
        ws
    };
    let big_join = format!(r#"420["join",{{"room":"{}"}}]"#, "r".repeat(9_000));
    // Before CONNECT: refused at the header.
    let mut ws = open().await;
    ws.send(Message::text(big_join.clone()))
        .await
        .expect("send");
    let code = loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            _ => break None,
        }
    };
    assert_eq!(code, Some(1009));
    // After CONNECT: read (its ack refuses the room name) and the connection goes on.
    let mut ws = open().await;
    let t = token("alice", &["*"], &[], None);
    ws.send(Message::text(format!(r#"40{{"token":"{t}"}}"#)))
        .await
        .expect("send");
    ws.send(Message::text(big_join)).await.expect("send");
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("an ack in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = frame {
            if t.starts_with("430") {
                break;
            }
            assert!(!t.starts_with("44"), "CONNECT refused: {t}");
        } else {
            assert!(!matches!(frame, Message::Close(_)), "closed: {frame:?}");
        }
    }
}

#[tokio::test]
async fn a_later_request_head_that_does_not_arrive_in_time_ends_the_connection() {
    let app = spawn_app().await;
    let mut c = Raw::connect(&app).await;
    // Kept-alive requests are answered as usual.
    for _ in 0..2 {
        c.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await;
        let head = c.head().await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        c.json_body(&head).await;
    }
    // The next head comes a byte every 200 ms: the connection ends 5 s after its first byte
    // (actix-http's own head timeout only covers a connection's first request).
    let started = Instant::now();
    let give_up = tokio::time::sleep(Duration::from_secs(15));
    tokio::pin!(give_up);
    let head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".repeat(10);
    let mut next = head.iter();
    loop {
        let mut chunk = [0u8; 1024];
        tokio::select! {
            read = c.stream.read(&mut chunk) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => panic!("an answer to an incomplete head: {:?}", &chunk[..n]),
            },
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Some(b) = next.next() {
                    let _ = c.stream.write_all(&[*b]).await;
                }
            }
            () = &mut give_up => panic!("the connection is still open after 15 s"),
        }
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(4_500) && took < Duration::from_secs(8),
        "closed after {took:?}"
    );
}
