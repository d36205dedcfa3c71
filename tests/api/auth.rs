use serde_json::json;

use crate::helpers::*;

async fn secured() -> TestApp {
    spawn_app_with(Backend::Sqlite, |s| {
        s.jwt_secret = Some(SECRET.into());
        s.auth_timeout = std::time::Duration::from_millis(500);
    })
    .await
}

#[tokio::test]
async fn with_a_secret_a_session_must_authenticate_before_anything_else() {
    let app = secured().await;
    let mut c = app.ws().await;
    assert_eq!(c.welcome["auth"], "required");
    let r = c
        .request(json!({"type": "join", "room": "project:1"}))
        .await;
    assert_eq!(r["code"], "unauthenticated");
    let pong = c.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "ping is allowed before auth");

    let t = token("alice", &["project:*"], &["project:1"], None);
    let r = c.request(json!({"type": "auth", "token": t})).await;
    assert_eq!(r["type"], "authenticated");
    assert_eq!(r["user"], json!({"user": "alice", "name": "ALICE"}));
    c.join("project:1").await;
    c.publish("project:1", "e", json!(1)).await;
}

#[tokio::test]
async fn joins_and_publishes_outside_the_token_patterns_are_refused() {
    let app = secured().await;
    let t = token("alice", &["project:*"], &["project:1"], None);
    let mut c = WsClient::connect(&app.ws_url(), Some(&t)).await;
    assert_eq!(c.welcome["auth"], "ok");
    assert_eq!(c.welcome["user"]["user"], "alice");

    let r = c.request(json!({"type": "join", "room": "system"})).await;
    assert_eq!(r["code"], "forbidden");
    c.join("project:2").await;
    let r = c
        .request(json!({"type": "publish", "room": "project:2", "event": "e", "data": 1}))
        .await;
    assert_eq!(r["code"], "forbidden");

    // Nothing about a forbidden room leaks over REST either.
    let (s, b) = app.get_auth("/api/rooms/system/presence", &t).await;
    assert_eq!((s, b["error"].as_str()), (403, Some("forbidden")));
    let (s, _) = app.get_auth("/api/rooms/system/history", &t).await;
    assert_eq!(s, 403);
}

#[tokio::test]
async fn a_bad_or_expired_token_is_refused() {
    let app = secured().await;
    // At upgrade: a plain 401 before any WebSocket exists.
    let res = app.raw_upgrade(Some("not-a-token")).await;
    assert_eq!(res.status(), 401);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token");

    // In the auth frame: an error, then the session is closed.
    let expired = switchyard::auth::sign(
        SECRET,
        &switchyard::auth::Claims {
            sub: "old".into(),
            exp: Some(1_000),
            ..Default::default()
        },
    )
    .unwrap();
    let mut c = app.ws().await;
    c.send(json!({"type": "auth", "token": expired})).await;
    let e = c.recv().await;
    assert_eq!(e["code"], "token_expired");
    assert!(!e["message"].as_str().unwrap().contains(&expired));
    let closed = c.closed().await;
    assert_eq!(closed.code, Some(1008));
}

#[tokio::test]
async fn a_session_that_never_authenticates_is_closed() {
    let app = secured().await;
    let mut c = app.ws().await;
    let e = c.recv().await;
    assert_eq!(e["code"], "auth_timeout");
    let closed = c.closed().await;
    assert_eq!(closed.code, Some(1008));
    assert_eq!(closed.reason, "authentication timeout");
}

#[tokio::test]
async fn rest_calls_need_a_token_and_roles_decide() {
    let app = secured().await;
    let (s, b) = app.get("/api/rooms").await;
    assert_eq!((s, b["error"].as_str()), (401, Some("unauthenticated")));

    let user = token("alice", &["project:*"], &[], None);
    let (s, _) = app.get_auth("/api/rooms", &user).await;
    assert_eq!(s, 403, "listing rooms is for admins and services");
    let (s, _) = app
        .post_auth("/api/rooms/project:1/publish", &user, json!({"event": "e"}))
        .await;
    assert_eq!(s, 403);
    let (s, _) = app
        .post_auth("/api/activities", &user, json!({"actor": "a", "verb": "v"}))
        .await;
    assert_eq!(s, 403);

    let service = token("deployer", &[], &[], Some("service"));
    let (s, b) = app
        .post_auth(
            "/api/rooms/project:1/publish",
            &service,
            json!({"event": "e"}),
        )
        .await;
    assert_eq!((s, b["offset"].as_u64()), (200, Some(1)));
    let (s, _) = app
        .post_auth(
            "/api/activities",
            &service,
            json!({"actor": "a", "verb": "v"}),
        )
        .await;
    assert_eq!(s, 201);
    // A service (an app's backend) starts an operation and may read it and list them, without
    // any `rooms` in its token; it still joins no room it is not given.
    let (s, op) = app
        .post_auth(
            "/api/operations",
            &service,
            json!({"kind": "demo", "target": "svc-box", "params": {"step_ms": 1}}),
        )
        .await;
    assert_eq!(s, 202, "{op}");
    let id = op["id"].as_str().expect("operation id").to_string();
    let (s, got) = app
        .get_auth(&format!("/api/operations/{id}"), &service)
        .await;
    assert_eq!((s, got["id"].as_str()), (200, Some(id.as_str())), "{got}");
    let (s, list) = app
        .get_auth("/api/operations?target=svc-box", &service)
        .await;
    assert_eq!(
        (s, list["operations"][0]["id"].as_str()),
        (200, Some(id.as_str()))
    );
    let (s, _) = app.get_auth(&format!("/api/operations/{id}"), &user).await;
    assert_eq!(s, 404, "a plain user without rooms still cannot see it");
    let (s, _) = app.get_auth("/api/rooms", &service).await;
    assert_eq!(s, 403, "management views are for admins");
    let admin = token("root", &[], &[], Some("admin"));
    let (s, _) = app.get_auth("/api/rooms", &admin).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn open_mode_allows_everything_and_identities_are_self_declared() {
    let app = spawn_app().await;
    let mut c = app.ws().await;
    assert_eq!(c.welcome["auth"], "open");
    let r = c
        .request(json!({"type": "auth", "user": "zoe", "name": "Zoë"}))
        .await;
    assert_eq!(r["user"], json!({"user": "zoe", "name": "Zoë"}));
    let joined = c.join("system").await;
    assert_eq!(joined["presence"], json!([{"user": "zoe", "name": "Zoë"}]));
    // Once in rooms, the identity is fixed: presence is keyed by it.
    let r = c.request(json!({"type": "auth", "user": "mallory"})).await;
    assert_eq!(r["code"], "identity_change");
    let (s, _) = app.get("/api/rooms").await;
    assert_eq!(s, 200);
}
