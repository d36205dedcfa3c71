use serde_json::json;

use crate::helpers::*;

async fn activity_is_persisted_paged_and_broadcast(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let mut global = app.ws_as("feed").await;
    global.join("activity").await;
    let mut project = app.ws_as("member").await;
    project.join("project:42").await;

    let (status, created) = app
        .post(
            "/api/activities",
            json!({"project": "42", "actor": "alice", "verb": "completed", "object": "step 3", "data": {"step": 3}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert!(created["id"].as_i64().unwrap() > 0);
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));

    for c in [&mut global, &mut project] {
        let m = c.recv_message().await;
        assert_eq!(m["event"], "activity.created");
        assert_eq!(m["data"], created);
    }

    // A global activity reaches the global feed only.
    let (_, other) = app
        .post(
            "/api/activities",
            json!({"actor": "bob", "verb": "signed-in"}),
        )
        .await;
    assert_eq!(global.recv_message().await["data"], other);
    assert!(project.drain().await.is_empty());

    for i in 0..5 {
        app.post(
            "/api/activities",
            json!({"project": "42", "actor": "x", "verb": format!("v{i}")}),
        )
        .await;
    }
    // Newest first, paged backwards.
    let (s, page) = app.get("/api/activities?project=42&limit=4").await;
    assert_eq!(s, 200);
    let verbs: Vec<_> = page["activities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["verb"].clone())
        .collect();
    assert_eq!(
        verbs,
        vec![json!("v4"), json!("v3"), json!("v2"), json!("v1")]
    );
    let before = page["next_before"]
        .as_i64()
        .expect("a full page has a cursor");
    let (_, page2) = app
        .get(&format!(
            "/api/activities?project=42&limit=4&before={before}"
        ))
        .await;
    let verbs: Vec<_> = page2["activities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["verb"].clone())
        .collect();
    assert_eq!(verbs, vec![json!("v0"), json!("completed")]);
    assert_eq!(page2["next_before"], serde_json::Value::Null);

    let (_, all) = app.get("/api/activities").await;
    assert_eq!(all["activities"].as_array().unwrap().len(), 7);
}

#[tokio::test]
async fn activity_is_persisted_paged_and_broadcast_on_sqlite() {
    activity_is_persisted_paged_and_broadcast(Backend::Sqlite).await;
}

#[tokio::test]
async fn activity_is_persisted_paged_and_broadcast_on_postgres() {
    activity_is_persisted_paged_and_broadcast(Backend::Postgres).await;
}

#[tokio::test]
async fn activities_survive_a_restart() {
    let db_dir = tempfile::tempdir().unwrap();
    let path = db_dir.path().join("keep.db").to_string_lossy().into_owned();
    let url = switchyard::config::DatabaseUrl::Sqlite(path);
    let app = spawn_app_with(Backend::Sqlite, |s| s.database = url.clone()).await;
    let (s, _) = app
        .post("/api/activities", json!({"actor": "a", "verb": "kept"}))
        .await;
    assert_eq!(s, 201);
    app.shutdown().await;
    let app = spawn_app_with(Backend::Sqlite, |s| s.database = url.clone()).await;
    let (_, page) = app.get("/api/activities").await;
    assert_eq!(page["activities"][0]["verb"], "kept");
}

#[tokio::test]
async fn invalid_activities_are_refused() {
    let app = spawn_app().await;
    let (s, b) = app.post("/api/activities", json!({"verb": "v"})).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_json")));
    let (s, b) = app
        .post("/api/activities", json!({"actor": "", "verb": "v"}))
        .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_field")));
    let (s, b) = app
        .post(
            "/api/activities",
            json!({"actor": "a", "verb": "v", "project": "no space"}),
        )
        .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_field")));
    let (s, b) = app.get("/api/activities?limit=0").await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_field")));
    let (s, b) = app.get("/api/activities?before=abc").await;
    assert_eq!((s, b["error"].as_str()), (400, Some("bad_request")));
}
