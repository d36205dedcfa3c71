use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_connection_may_be_in_a_bounded_number_of_rooms() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.max_rooms_per_connection = 3).await;
    let mut c = app.ws_as("many").await;
    for r in ["r1", "r2", "r3"] {
        c.join(r).await;
    }
    let refused = c.request(json!({"type": "join", "room": "r4"})).await;
    assert_eq!(refused["code"], "too_many_rooms");
    c.join("r2").await; // re-joining one it is in is fine
    c.request(json!({"type": "leave", "room": "r1"})).await;
    c.join("r4").await;
    assert!(app
        .metrics_text()
        .await
        .contains("switchyard_refusals_total{code=\"too_many_rooms\"} 1"));
}

async fn count_publishes(c: &mut WsClient, room: &str, n: usize) -> (usize, usize) {
    for i in 0..n {
        c.send(json!({"type": "publish", "room": room, "event": "e", "data": i, "id": i}))
            .await;
    }
    let (mut ok, mut limited) = (0, 0);
    while ok + limited < n {
        let f = c
            .recv_where(|f| f["type"] == "published" || f["type"] == "error")
            .await;
        match f["type"].as_str() {
            Some("published") => ok += 1,
            _ => {
                assert_eq!(f["code"], "rate_limited", "{f}");
                limited += 1;
            }
        }
    }
    (ok, limited)
}

#[tokio::test]
async fn publishing_too_fast_is_refused_per_connection_and_per_user() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.publish_rate = 5; // burst 10
        s.user_publish_rate = 8; // burst 16
        s.error_limit = 1_000;
    })
    .await;
    let mut a = app.ws_as("fast").await;
    a.join("r").await;
    let (ok, limited) = count_publishes(&mut a, "r", 30).await;
    assert!(
        (10..=13).contains(&ok),
        "about the burst gets through: {ok}"
    );
    assert_eq!(ok + limited, 30);

    // The same user on a second connection shares the user budget (16 burst, 10+ spent).
    let mut b = app.ws_as("fast").await;
    b.join("r").await;
    let (ok_b, _) = count_publishes(&mut b, "r", 30).await;
    assert!(
        ok_b <= 8,
        "the user's budget is shared across connections: {ok_b}"
    );
    // Another user is unaffected.
    let mut other = app.ws_as("calm").await;
    other.join("r").await;
    let (ok_other, _) = count_publishes(&mut other, "r", 5).await;
    assert_eq!(ok_other, 5);
}

type RawSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One WebSocket handshake: the open socket, or the HTTP status it was refused with.
async fn try_connect(app: &TestApp) -> Result<RawSocket, u16> {
    use tokio_tungstenite::tungstenite::Error;
    match tokio_tungstenite::connect_async(app.ws_url()).await {
        Ok((socket, _)) => Ok(socket),
        Err(Error::Http(res)) => Err(res.status().as_u16()),
        Err(e) => panic!("unexpected {e}"),
    }
}

#[tokio::test]
async fn connections_per_address_are_bounded() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.max_connections_per_ip = 3;
        s.new_connections_per_ip = 0;
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(app.ws().await);
    }
    let res = app.raw_upgrade(None).await;
    assert_eq!(res.status(), 429);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "too_many_connections");
    // Socket.IO handshakes count too.
    let sio = app
        .http
        .get(app.url("/socket.io/?EIO=4&transport=polling"))
        .send()
        .await
        .unwrap();
    assert_eq!(sio.status(), 429);
    // Closing one frees its slot.
    open.pop().unwrap().close().await;
    eventually("the slot to be freed", || async {
        try_connect(&app).await.is_ok()
    })
    .await;
}

#[tokio::test]
async fn new_connections_per_address_are_paced() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.max_connections_per_ip = 0;
        s.new_connections_per_ip = 2; // burst 4
    })
    .await;
    let mut refused = 0;
    let mut kept = Vec::new();
    for _ in 0..8 {
        match try_connect(&app).await {
            Ok(c) => kept.push(c),
            Err(status) => {
                assert_eq!(status, 429);
                refused += 1;
            }
        }
    }
    assert!(
        refused >= 2,
        "a burst of new connections is paced ({refused} refused)"
    );
    assert!(kept.len() >= 2);
}

#[tokio::test]
async fn a_session_whose_token_expires_is_told_and_closed_unless_it_refreshed() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.jwt_secret = Some(SECRET.into())).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let tok = |sub: &str, exp: u64| {
        switchyard::auth::sign(
            SECRET,
            &switchyard::auth::Claims {
                sub: sub.into(),
                rooms: vec!["*".into()],
                exp: Some(exp),
                ..Default::default()
            },
        )
        .unwrap()
    };
    // `refreshed`'s first token expires a second before `expiring`'s.
    let mut refreshed = WsClient::connect(&app.ws_url(), Some(&tok("r", now + 2))).await;
    let r = refreshed
        .request(json!({"type": "auth", "token": tok("r", now + 120)}))
        .await;
    assert_eq!(r["type"], "authenticated");
    let mut expiring = WsClient::connect(&app.ws_url(), Some(&tok("e", now + 3))).await;
    expiring.join("room").await;

    let e = expiring.recv_where(|f| f["type"] == "error").await;
    assert_eq!(e["code"], "token_expired");
    let closed = expiring.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (Some(1008), "token expired")
    );
    // By now the refreshed session's first token has been expired for a second.
    assert_eq!(
        refreshed.request(json!({"type": "ping"})).await["type"],
        "pong"
    );
}

/// What one token holder can pin is bounded across connections: at most
/// `SWITCHYARD_MAX_CONNECTIONS_PER_USER` open at once, each with its bounded outbound queue. A
/// token in the header is refused at the upgrade (429), an `auth` frame with an error frame and
/// the close; other users are not affected, and a closed connection frees its place.
#[tokio::test]
async fn connections_per_user_are_bounded_whether_the_token_comes_in_the_header_or_a_frame() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.jwt_secret = Some(SECRET.into());
        s.max_connections_per_user = 2;
    })
    .await;
    let alice = token("alice", &["*"], &[], None);
    let mut first = WsClient::connect(&app.ws_url(), Some(&alice)).await;
    let mut second = app.ws().await;
    let r = second
        .request(json!({"type": "auth", "token": alice}))
        .await;
    assert_eq!(r["type"], "authenticated", "{r}");

    // A third, by header: refused before the upgrade.
    let res = app.raw_upgrade(Some(&alice)).await;
    assert_eq!(res.status(), 429);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "too_many_connections", "{body}");
    // A third, by `auth` frame: told, then closed.
    let mut third = app.ws().await;
    let r = third.request(json!({"type": "auth", "token": alice})).await;
    assert_eq!(
        (r["type"].as_str(), r["code"].as_str()),
        (Some("error"), Some("too_many_connections")),
        "{r}"
    );
    let closed = third.closed().await;
    assert_eq!(closed.code, Some(1008), "{closed:?}");

    // A refresh on a counted connection keeps its place; another user has places of their own.
    let r = first.request(json!({"type": "auth", "token": alice})).await;
    assert_eq!(r["type"], "authenticated", "{r}");
    let bob = token("bob", &["*"], &[], None);
    let _bob = WsClient::connect(&app.ws_url(), Some(&bob)).await;

    // Closing one frees its place (the session ends after the socket does).
    second.close().await;
    eventually("alice's place to be freed", || async {
        app.raw_upgrade(Some(&alice)).await.status() == 101
    })
    .await;
    assert!(app
        .metrics_text()
        .await
        .contains("switchyard_refusals_total{code=\"too_many_connections\"}"));
}

/// In open mode a client declares any user it likes: a per-user count would stop no one, so
/// declared users are not counted (the per-address bound holds there).
#[tokio::test]
async fn declared_users_in_open_mode_are_not_counted() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.max_connections_per_user = 1).await;
    let _a = app.ws_as("same").await;
    let _b = app.ws_as("same").await;
    let _c = app.ws_as("same").await;
}

/// Clients that stop reading, each within its own queue's bound, are evicted once all queues
/// together pass `SWITCHYARD_OUTBOX_TOTAL_BYTES` (the ones holding most first), while a member
/// that reads gets every message, in order, and stays.
#[tokio::test]
async fn queues_together_are_bounded_by_the_server_wide_budget() {
    const MIB: usize = 1 << 20;
    let app = spawn_app_with(Backend::Sqlite, |s| {
        // Each queue's own bound is out of reach here (more than one member is sent), so only
        // the server-wide budget can evict anyone.
        s.outbox_max_messages = 1 << 20;
        s.outbox_max_bytes = 16 * MIB;
        s.outbox_total_bytes = 2 * MIB;
        // REST publishes count against the publisher's rate; this floods on purpose.
        s.user_publish_rate = 0;
    })
    .await;
    let mut slow = Vec::new();
    for i in 0..4 {
        let mut c = app.ws_as(&format!("slow-{i}")).await;
        c.join("busy").await;
        slow.push(c);
    }
    let mut fast = app.ws_as("fast").await;
    fast.join("busy").await;

    // 8 MB to each member: half of a queue's own bound, and for the four that do not read far
    // more than the socket buffers hold (~4 MB each at most) and 16 times the budget together.
    let total = 2_000u64;
    app.flood_past(&mut fast, "busy", total, 4000).await;
    for (i, c) in slow.iter_mut().enumerate() {
        let closed = c.closed().await;
        assert_eq!(closed.code, Some(4008), "slow-{i}: {closed:?}");
    }
    assert_eq!(
        app.metric("switchyard_slow_consumer_disconnects_total")
            .await,
        4
    );
    // The reader was not evicted: it still publishes and receives.
    assert_eq!(
        fast.publish("busy", "e", json!("still here")).await,
        total + 1
    );
    // What the evicted held is given back once their connections end.
    eventually("the queues to be released", || async {
        (app.metric("switchyard_outbox_held_bytes").await as usize) < 2 * MIB
    })
    .await;
}
