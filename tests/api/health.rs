use serde_json::json;

use crate::helpers::*;

async fn health_reports_ok(backend: Backend, name: &str) {
    let app = spawn_app_with(backend, |_| {}).await;
    let _c = app.ws().await;
    let (status, h) = app.get("/health").await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["status"], "ok");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert!(h["uptime_seconds"].is_u64());
    assert_eq!(h["websocket"]["status"], "active");
    assert_eq!(h["websocket"]["connections"], 1);
    assert!(h["rooms"].is_i64());
    assert_eq!(h["database"]["status"], "ok");
    assert_eq!(h["database"]["backend"], name);
    assert!(h["database"]["latency_ms"].is_f64());
}

#[tokio::test]
async fn health_is_ok_on_sqlite() {
    health_reports_ok(Backend::Sqlite, "sqlite").await;
}

#[tokio::test]
async fn health_is_ok_on_postgres() {
    health_reports_ok(Backend::Postgres, "postgres").await;
}

#[tokio::test]
async fn with_the_database_gone_health_is_503_and_real_time_keeps_working() {
    let app = spawn_app_with(Backend::Postgres, |s| {
        s.db_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let db = app.db.pg_name.clone().unwrap();
    let mut alice = app.ws_as("alice").await;
    let mut bob = app.ws_as("bob").await;
    alice.join("project:1").await;
    bob.join("project:1").await;

    // A real outage: nobody may connect, and existing connections are cut.
    pg_admin(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"));
    pg_admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
    ));

    eventually("health to report the outage", || async {
        let (s, h) = app.get("/health").await;
        s == 503 && h["status"] == "degraded" && h["database"]["status"] == "unreachable"
    })
    .await;

    let offset = alice
        .publish("project:1", "still-live", json!({"ok": true}))
        .await;
    let m = bob.recv_message().await;
    assert_eq!(
        (m["event"].as_str(), m["offset"].as_u64()),
        (Some("still-live"), Some(offset))
    );

    let (s, b) = app
        .post("/api/activities", json!({"actor": "a", "verb": "v"}))
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (503, Some("database_unavailable"))
    );
    assert!(
        !b["message"].as_str().unwrap().contains("postgres://"),
        "no connection string leaks"
    );

    pg_admin(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"));
    eventually("health to recover", || async {
        app.get("/health").await.0 == 200
    })
    .await;
    let (s, _) = app
        .post("/api/activities", json!({"actor": "a", "verb": "v"}))
        .await;
    assert_eq!(s, 201);

    assert!(app.metric("switchyard_database_errors_total").await >= 1);
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_count_traffic() {
    let app = spawn_app().await;
    let mut c = app.ws_as("m").await;
    c.join("r").await;
    c.publish("r", "e", json!(1)).await;
    let res = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = res.text().await.unwrap();
    for name in [
        "switchyard_connections 1",
        "switchyard_messages_in_total",
        "switchyard_messages_out_total",
        "switchyard_publish_latency_seconds_bucket{le=\"+Inf\"}",
        "switchyard_database_errors_total 0",
        "switchyard_rooms",
    ] {
        assert!(text.contains(name), "metrics contain {name}:\n{text}");
    }
    assert!(app.metric("switchyard_publishes_total").await >= 1);
}

/// The histograms of #17: an operation's duration by kind and outcome, the bytes a WebSocket
/// wrote per drain of its queue, and the operation writes per database transaction.
#[tokio::test]
async fn operation_durations_queue_depths_and_write_batches_are_histograms() {
    let app = spawn_app().await;
    let mut c = app.ws_as("m").await;
    c.join("r").await;
    c.publish("r", "e", json!(1)).await;
    let (s, op) = app
        .post(
            "/api/operations",
            json!({"kind": "demo", "target": "t", "params": {"step_ms": 1, "fail_at": "build"}}),
        )
        .await;
    assert_eq!(s, 202, "{op}");
    let started = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("switchyard_operations_started_total "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    eventually("the failed demo's duration is observed", || async {
        let text = app.metrics_text().await;
        text.contains(
            "switchyard_operation_duration_seconds_count{kind=\"demo\",outcome=\"failed\"} 1",
        ) && started(&text) == 1
    })
    .await;
    let text = app.metrics_text().await;
    for name in [
        "# TYPE switchyard_operation_duration_seconds histogram",
        "# TYPE switchyard_outbox_depth_bytes histogram",
        "# TYPE switchyard_operation_write_batch histogram",
    ] {
        assert!(text.contains(name), "metrics contain {name}:\n{text}");
    }
    let count = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // The welcome, the join's answer and the publish's ack were written at least.
    assert!(count("switchyard_outbox_depth_bytes_count") >= 1, "{text}");
    assert!(
        count("switchyard_operation_write_batch_count") >= 1,
        "{text}"
    );
}

#[tokio::test]
async fn rest_refusals_are_counted_by_code_exactly_once() {
    let app = spawn_app().await;
    app.get("/api/nothing").await;
    app.post("/api/activities", json!({"verb": "v"})).await;
    app.post("/api/activities", json!({"verb": "v"})).await;
    let text = app.metrics_text().await;
    assert!(
        text.contains("switchyard_refusals_total{code=\"not_found\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("switchyard_refusals_total{code=\"invalid_json\"} 2"),
        "{text}"
    );
}
