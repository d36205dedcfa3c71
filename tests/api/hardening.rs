//! The low-severity findings of the security review, each as the attack that found it: token
//! refreshes that should end or narrow a session, probing operation ids, offsets past i64.

use serde_json::json;

use crate::helpers::*;

async fn secured() -> TestApp {
    spawn_app_with(Backend::Sqlite, |s| {
        s.jwt_secret = Some(SECRET.into());
    })
    .await
}

#[tokio::test]
async fn a_refresh_with_a_bad_token_closes_the_session() {
    let app = secured().await;
    let t = token("alice", &["project:*"], &[], None);
    let mut c = WsClient::connect(&app.ws_url(), Some(&t)).await;
    c.join("project:1").await;
    let e = c
        .request(json!({"type": "auth", "token": "forged.token.value"}))
        .await;
    assert_eq!(e["code"], "invalid_token");
    let closed = c.closed().await;
    assert_eq!(closed.code, Some(1008));
    assert_eq!(closed.reason, "authentication failed");
}

#[tokio::test]
async fn a_refresh_that_grants_fewer_rooms_leaves_the_rooms_it_no_longer_grants() {
    let app = secured().await;
    let wide = token("alice", &["project:*"], &[], None);
    let mut alice = WsClient::connect(&app.ws_url(), Some(&wide)).await;
    alice.join("project:1").await;
    alice.join("project:2").await;

    let narrow = token("alice", &["project:1"], &[], None);
    let r = alice
        .request(json!({"type": "auth", "token": narrow}))
        .await;
    assert_eq!(r["type"], "authenticated");
    let left = alice.recv_where(|f| f["type"] == "left").await;
    assert_eq!(left["room"], "project:2");

    // The room no longer has her: a publish there does not reach her, one in project:1 does.
    let service = token("svc", &[], &[], Some("service"));
    let (s, _) = app
        .post_auth(
            "/api/rooms/project:2/publish",
            &service,
            json!({"event": "secret", "data": 2}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .post_auth(
            "/api/rooms/project:1/publish",
            &service,
            json!({"event": "open", "data": 1}),
        )
        .await;
    assert_eq!(s, 200);
    let m = alice.recv_message().await;
    assert_eq!(
        (m["room"].as_str(), m["event"].as_str()),
        (Some("project:1"), Some("open"))
    );
    let (_, presence) = app
        .get_auth("/api/rooms/project:2/presence", &service)
        .await;
    assert!(
        !presence.to_string().contains("alice"),
        "alice is still present in project:2: {presence}"
    );
}

#[tokio::test]
async fn cancelling_an_operation_one_may_not_see_over_ws_looks_like_a_missing_one() {
    let app = secured().await;
    let service = token("svc", &[], &[], Some("service"));
    let (s, op) = app
        .post_auth(
            "/api/operations",
            &service,
            json!({"kind": "demo", "target": "box-1", "project": "7", "params": {"step_ms": 200}}),
        )
        .await;
    assert_eq!(s, 202, "{op}");
    let id = op["id"].as_str().unwrap().to_string();

    // Mallory may join and publish in project 8 only: operation 7's id must tell her nothing.
    let mallory = token("mallory", &["project:8"], &["project:8"], None);
    let mut m = WsClient::connect(&app.ws_url(), Some(&mallory)).await;
    let theirs = m
        .request(json!({"type": "operation.cancel", "operation": id}))
        .await;
    let missing = m
        .request(json!({"type": "operation.cancel", "operation": "no-such-operation"}))
        .await;
    assert_eq!(theirs["code"], "not_found", "{theirs}");
    assert_eq!(missing["code"], "not_found", "{missing}");
    assert_eq!(
        theirs["message"].as_str().unwrap().replace(&id, "ID"),
        missing["message"]
            .as_str()
            .unwrap()
            .replace("no-such-operation", "ID"),
    );

    // Someone who may watch but not operate still hears `forbidden` (as over REST).
    let viewer = token("viewer", &["project:7"], &[], None);
    let mut v = WsClient::connect(&app.ws_url(), Some(&viewer)).await;
    let r = v
        .request(json!({"type": "operation.cancel", "operation": id}))
        .await;
    assert_eq!(r["code"], "forbidden", "{r}");
}

#[tokio::test]
async fn a_log_offset_past_i64_is_past_every_line() {
    let app = spawn_app().await;
    let (s, op) = app
        .post(
            "/api/operations",
            json!({"kind": "demo", "target": "t", "params": {"step_ms": 1}}),
        )
        .await;
    assert_eq!(s, 202, "{op}");
    let id = op["id"].as_str().unwrap().to_string();
    eventually("the demo finishes and its lines are stored", || async {
        let (_, logs) = app.get(&format!("/api/operations/{id}/logs?after=0")).await;
        let (_, now) = app.get(&format!("/api/operations/{id}")).await;
        now["status"] == "completed" && !logs["lines"].as_array().unwrap().is_empty()
    })
    .await;
    for after in [u64::MAX, i64::MAX as u64 + 1] {
        let (s, logs) = app
            .get(&format!("/api/operations/{id}/logs?after={after}"))
            .await;
        assert_eq!(s, 200);
        assert_eq!(logs["lines"], json!([]), "after={after}");
    }
}

#[tokio::test]
async fn an_operation_with_an_empty_project_is_refused_like_an_activity_with_one() {
    let app = spawn_app().await;
    let (s, body) = app
        .post(
            "/api/operations",
            json!({"kind": "demo", "target": "t", "project": ""}),
        )
        .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("invalid_field")),
        "{body}"
    );
    let (s, body) = app
        .post(
            "/api/activities",
            json!({"actor": "a", "verb": "v", "project": ""}),
        )
        .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("invalid_field")),
        "{body}"
    );
}
