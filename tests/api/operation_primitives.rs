//! The operation primitives of issue #15 part 3 that the seed apps were missing: listing by
//! target and activity, params that are JSON objects and arrays, worker-supplied `details` and
//! ETA, and exactly one terminal frame for a finished operation reopened on every wire.

use std::time::Duration;

use diesel::{Connection, RunQueryDsl};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchyard::config::{DatabaseUrl, Settings};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

// ---- helpers -------------------------------------------------------------------------------

/// Test scripts and an operations file: an external kind, and command kinds taking JSON params.
struct Kinds {
    dir: tempfile::TempDir,
}

impl Kinds {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write script");
            let ok = std::process::Command::new("chmod")
                .arg("+x")
                .arg(&p)
                .status()
                .expect("chmod");
            assert!(ok.success());
        };
        // Echoes what it was given: argv, the params variable, and stdin (JSON texts both).
        script(
            "params.sh",
            r#"echo '{"details":{"agents":[{"name":"planner","state":"running"}]},"eta_seconds":7}'
input=$(cat)
[ -n "$input" ] || input=null
printf '{"result":{"argc":%d,"argv":["%s","%s"],"env":%s,"stdin":%s}}\n' "$#" "$1" "$2" "$SWITCHYARD_PARAMS" "$input""#,
        );
        let d = dir.path().display();
        let toml = format!(
            r#"
[kinds.deploy]
runner = "command"
command = ["{d}/params.sh", "{{target}}", "{{params.service}}"]
stdin = "params"
target_pattern = "[a-z0-9-]+"
[kinds.deploy.params.service]
pattern = "[a-z]+"
required = true
[kinds.deploy.params.hosts]
type = "json"
required = true
[kinds.deploy.params.options]
type = "json"
default = {{ retries = 2, hosts_at_once = ["a", "b"] }}

[kinds.envonly]
runner = "command"
command = ["{d}/params.sh", "{{target}}", "x"]
[kinds.envonly.params.plan]
type = "json"

[kinds.convert]
runner = "external"
stall_timeout_secs = 60
cancel_grace_secs = 1
"#
        );
        std::fs::write(dir.path().join("operations.toml"), toml).expect("write kinds");
        Self { dir }
    }

    fn file(&self) -> std::path::PathBuf {
        self.dir.path().join("operations.toml")
    }
}

async fn app_with(backend: Backend, kinds: &Kinds, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let file = kinds.file();
    spawn_app_with(backend, move |s| {
        s.operations_file = Some(file);
        s.operation_flush_interval = Duration::from_millis(50);
        tweak(s);
    })
    .await
}

async fn start(app: &TestApp, body: Value) -> Value {
    let (s, op) = app.post("/api/operations", body).await;
    assert_eq!(s, 202, "{op}");
    op
}

fn id_of(op: &Value) -> String {
    op["id"].as_str().expect("an id").to_string()
}

/// Watches `operation:<id>` on `/ws` until its terminal event; returns that status.
async fn wait_finished(app: &TestApp, id: &str) -> Value {
    let (_, now) = app.get(&format!("/api/operations/{id}")).await;
    if ["completed", "failed", "cancelled"].contains(&now["status"].as_str().unwrap_or("")) {
        return now;
    }
    let mut c = app.ws_as("waiter").await;
    c.join(&format!("operation:{id}")).await;
    let end = c
        .recv_where(|f| {
            f["room"] == json!(format!("operation:{id}"))
                && f["event"].as_str().is_some_and(|e| {
                    [
                        "operation.completed",
                        "operation.failed",
                        "operation.cancelled",
                    ]
                    .contains(&e)
                })
        })
        .await;
    end["data"].clone()
}

fn ids(page: &Value) -> Vec<String> {
    page["operations"]
        .as_array()
        .expect("operations")
        .iter()
        .map(id_of)
        .collect()
}

// ---- 1. listing by target and activity -----------------------------------------------------

async fn listing_by_target_and_activity(backend: Backend) {
    let kinds = Kinds::new();
    let app = app_with(backend, &kinds, |_| {}).await;
    // Two external operations stay active (no worker reports); a demo on t1 finishes.
    let c1 = id_of(&start(&app, json!({"kind": "convert", "target": "t1"})).await);
    let c2 = id_of(&start(&app, json!({"kind": "convert", "target": "t2"})).await);
    let d1 = id_of(
        &start(
            &app,
            json!({"kind": "demo", "target": "t1", "params": {"step_ms": 1}}),
        )
        .await,
    );
    let done = wait_finished(&app, &d1).await;
    assert_eq!(done["status"], "completed");
    // Finished state reaches the database with its write; the listing reads the database.
    let (a, d) = (&app, &d1);
    eventually("the demo's end to be stored", move || async move {
        let (_, p) = a.get("/api/operations?target=t1&active=false").await;
        ids(&p) == vec![d.clone()]
    })
    .await;

    let (s, p) = app.get("/api/operations?target=t1").await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(ids(&p), vec![d1.clone(), c1.clone()], "newest first");
    let (_, p) = app.get("/api/operations?target=t1&active=true").await;
    assert_eq!(ids(&p), vec![c1.clone()]);
    let (_, p) = app.get("/api/operations?active=true").await;
    assert_eq!(ids(&p), vec![c2.clone(), c1.clone()]);
    let (_, p) = app.get("/api/operations?active=false").await;
    assert_eq!(ids(&p), vec![d1.clone()]);
    let (_, p) = app
        .get("/api/operations?target=t2&active=true&kind=convert")
        .await;
    assert_eq!(ids(&p), vec![c2.clone()]);
    let (_, p) = app.get("/api/operations?target=nowhere").await;
    assert_eq!(ids(&p), Vec::<String>::new());
    // Paging works as for every listing: `next_before` from a full page.
    let (_, p) = app.get("/api/operations?active=true&limit=1").await;
    assert_eq!(ids(&p), vec![c2.clone()]);
    let before = p["next_before"].as_str().expect("next_before").to_string();
    let (_, p) = app
        .get(&format!(
            "/api/operations?active=true&limit=1&before={before}"
        ))
        .await;
    assert_eq!(ids(&p), vec![c1.clone()]);

    for bad in [
        "active=yes",
        "active=",
        "active=TRUE",
        "target=",
        "status=completed&active=true",
        "status=running&active=false",
    ] {
        let (s, b) = app.get(&format!("/api/operations?{bad}")).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (400, Some("invalid_field")),
            "{bad}: {b}"
        );
        assert!(b["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Contradiction-free combinations are fine.
    let (s, _) = app.get("/api/operations?status=running&active=true").await;
    assert_eq!(s, 200);
    app.shutdown().await;
}

#[tokio::test]
async fn operations_are_listed_by_target_and_activity_on_sqlite() {
    listing_by_target_and_activity(Backend::Sqlite).await;
}

#[tokio::test]
async fn operations_are_listed_by_target_and_activity_on_postgres() {
    listing_by_target_and_activity(Backend::Postgres).await;
}

#[tokio::test]
async fn listing_by_target_follows_the_listing_permissions() {
    let kinds = Kinds::new();
    let app = app_with(Backend::Sqlite, &kinds, |s| {
        s.jwt_secret = Some(SECRET.into());
    })
    .await;
    let admin = token("root", &[], &[], Some("admin"));
    let (s, op) = app
        .post_auth(
            "/api/operations",
            &admin,
            json!({"kind": "convert", "target": "t1", "project": "1"}),
        )
        .await;
    assert_eq!(s, 202, "{op}");
    let member = token("ann", &["project:1"], &[], None);
    let outsider = token("bob", &["project:2"], &[], None);
    let (s, p) = app
        .get_auth("/api/operations?project=1&target=t1&active=true", &member)
        .await;
    assert_eq!((s, ids(&p)), (200, vec![id_of(&op)]));
    for (who, path) in [
        (&member, "/api/operations?target=t1&active=true"),
        (&outsider, "/api/operations?project=1&target=t1"),
    ] {
        let (s, b) = app.get_auth(path, who).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (403, Some("forbidden")),
            "{path}: {b}"
        );
    }
    let (s, _) = app.get("/api/operations?target=t1").await;
    assert_eq!(s, 401, "no token");
    app.shutdown().await;
}

/// Fills the operations table with `n` finished rows straight in SQL, then refreshes the
/// planner's statistics, so a plan reflects a table of some size.
fn fill_and_analyze(url: &DatabaseUrl, n: u32) {
    let rows = |g: &str| {
        format!(
            "INSERT INTO operations (id, kind, target, project, runner, status, progress, stages, \
             params, created_at, updated_at, finished_at, log_offset) \
             SELECT 'bulk-' || {g}, 'bulk', 'bulk-target-' || {g}, NULL, 'external', 'completed', \
             100, '[]', '{{}}', 0, 0, 0, 0"
        )
    };
    match url {
        DatabaseUrl::Sqlite(path) => {
            let mut c = diesel::SqliteConnection::establish(path).expect("open SQLite");
            diesel::sql_query(format!(
                "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {n}) {} FROM g",
                rows("n")
            ))
            .execute(&mut c)
            .expect("fill");
            diesel::sql_query("ANALYZE")
                .execute(&mut c)
                .expect("analyze");
        }
        DatabaseUrl::Postgres(u) => {
            let mut c = diesel::PgConnection::establish(u).expect("open PostgreSQL");
            diesel::sql_query(format!(
                "{} FROM generate_series(1, {n}) AS g",
                rows("g::text")
            ))
            .execute(&mut c)
            .expect("fill");
            diesel::sql_query("ANALYZE operations")
                .execute(&mut c)
                .expect("analyze");
        }
    }
}

async fn target_and_active_filters_use_an_index(backend: Backend) {
    use switchyard::db::operations::{list_plan, ListFilter};
    let kinds = Kinds::new();
    let app = app_with(backend, &kinds, |_| {}).await;
    start(&app, json!({"kind": "convert", "target": "t1"})).await;
    fill_and_analyze(&app.db.url, 20_000);
    let db = switchyard::db::Database::connect(
        &app.db.url,
        1,
        Duration::from_secs(5),
        std::sync::Arc::new(switchyard::metrics::Metrics::new()),
    )
    .expect("connect");
    let plan = |f: ListFilter| {
        let f = ListFilter { limit: 50, ..f };
        db.run_here(move |c| list_plan(c, &f))
            .expect("plan")
            .join("\n")
    };
    let by_target = plan(ListFilter {
        target: Some("t1".into()),
        ..Default::default()
    });
    assert!(by_target.contains("operations_target"), "{by_target}");
    let target_active = plan(ListFilter {
        target: Some("t1".into()),
        active: Some(true),
        ..Default::default()
    });
    let active = plan(ListFilter {
        active: Some(true),
        ..Default::default()
    });
    for p in [&target_active, &active] {
        // An index narrows the rows (never a scan of the whole table).
        let scans_all = match backend {
            Backend::Sqlite => p.contains("SCAN operations"),
            Backend::Postgres => p.contains("Seq Scan"),
        };
        assert!(!scans_all && p.contains("operations_"), "{p}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn target_and_active_filters_use_an_index_on_sqlite() {
    target_and_active_filters_use_an_index(Backend::Sqlite).await;
}

#[tokio::test]
async fn target_and_active_filters_use_an_index_on_postgres() {
    target_and_active_filters_use_an_index(Backend::Postgres).await;
}

// ---- 2. params that are JSON objects and arrays --------------------------------------------

async fn json_params_reach_the_command_as_json_never_in_argv(backend: Backend) {
    let kinds = Kinds::new();
    let app = app_with(backend, &kinds, |_| {}).await;
    // A value that would be dangerous on a command line, inside a JSON param: harmless.
    let hosts = json!([{"name": "db-1", "role": "primary"}, {"name": "-oProxyCommand=evil"}]);
    let op = start(
        &app,
        json!({"kind": "deploy", "target": "web-1", "params": {"service": "nginx", "hosts": hosts}}),
    )
    .await;
    let id = id_of(&op);
    let expected = json!({
        "service": "nginx",
        "hosts": hosts,
        "options": {"retries": 2, "hosts_at_once": ["a", "b"]},
    });
    assert_eq!(
        op["params"], expected,
        "the status shows params with defaults"
    );
    let done = wait_finished(&app, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let r = &done["result"];
    assert_eq!(
        r["argc"], 2,
        "only the target and the string param are arguments: {r}"
    );
    assert_eq!(r["argv"], json!(["web-1", "nginx"]));
    assert_eq!(
        r["env"], expected,
        "SWITCHYARD_PARAMS holds every param as JSON"
    );
    assert_eq!(
        r["stdin"], expected,
        "and so does stdin with `stdin = \"params\"`"
    );
    // The command's status line set worker details; the end clears the ETA, keeps the details.
    assert_eq!(done["details"]["agents"][0]["name"], "planner");
    assert_eq!(done["eta_seconds"], Value::Null);

    // Without `stdin = "params"`, stdin is empty (end of file at once); the variable is there.
    let op = start(
        &app,
        json!({"kind": "envonly", "target": "web-2", "params": {"plan": {"steps": [1, 2, 3]}}}),
    )
    .await;
    let done = wait_finished(&app, &id_of(&op)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["env"], json!({"plan": {"steps": [1, 2, 3]}}));
    assert_eq!(done["result"]["stdin"], Value::Null);

    // Stored as given: the finished operations read back from the database agree.
    let (a, e) = (&app, &expected);
    eventually("the result to be stored", move || async move {
        let (_, p) = a.get("/api/operations?kind=deploy&active=false").await;
        p["operations"][0]["params"] == *e
            && p["operations"][0]["details"]["agents"][0]["state"] == "running"
    })
    .await;
    app.shutdown().await;
}

#[tokio::test]
async fn json_params_reach_the_command_as_json_never_in_argv_on_sqlite() {
    json_params_reach_the_command_as_json_never_in_argv(Backend::Sqlite).await;
}

#[tokio::test]
async fn json_params_reach_the_command_as_json_never_in_argv_on_postgres() {
    json_params_reach_the_command_as_json_never_in_argv(Backend::Postgres).await;
}

#[tokio::test]
async fn params_that_could_reach_argv_or_outgrow_their_bounds_are_refused_at_start() {
    let kinds = Kinds::new();
    let app = app_with(Backend::Sqlite, &kinds, |s| {
        s.operation_max_params_bytes = 1024;
        s.operation_max_json_depth = 4;
    })
    .await;
    let refused = [
        // An object or array for a string param (one that may be placed in argv).
        (
            json!({"kind": "deploy", "target": "a", "params": {"service": {"name": "nginx"}, "hosts": []}}),
            400,
            "invalid_field",
            r#"type = "json""#,
        ),
        (
            json!({"kind": "deploy", "target": "b", "params": {"service": ["nginx"], "hosts": []}}),
            400,
            "invalid_field",
            "string param",
        ),
        // A required JSON param missing.
        (
            json!({"kind": "deploy", "target": "c", "params": {"service": "nginx"}}),
            400,
            "invalid_field",
            "required",
        ),
        // Too deep (params are level 1), for every runner.
        (
            json!({"kind": "convert", "target": "d", "params": {"a": {"b": {"c": {"d": [1]}}}}}),
            400,
            "invalid_field",
            "SWITCHYARD_OPERATION_MAX_JSON_DEPTH",
        ),
        // Too large, for every runner.
        (
            json!({"kind": "convert", "target": "e", "params": {"blob": "x".repeat(1100)}}),
            413,
            "payload_too_large",
            "SWITCHYARD_OPERATION_MAX_PARAMS_BYTES",
        ),
    ];
    for (body, status, code, says) in refused {
        let (s, b) = app.post("/api/operations", body.clone()).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (status, Some(code)),
            "{body}: {b}"
        );
        let message = b["message"].as_str().unwrap_or("");
        assert!(message.contains(says), "{body}: {message}");
    }
    // Within the bounds, objects and arrays are fine for an external kind, over `/ws` too.
    let mut c = app.ws_as("starter").await;
    let r = c
        .request(
            json!({"type": "operation.start", "kind": "convert", "target": "f",
                        "params": {"files": ["a.mkv", "b.mkv"], "codec": {"v": "av1"}}}),
        )
        .await;
    assert_eq!(r["type"], "operation", "{r}");
    assert_eq!(r["operation"]["params"]["codec"]["v"], "av1");
    app.shutdown().await;
}

#[test]
fn a_kind_that_puts_a_json_param_on_the_command_line_does_not_load() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("operations.toml");
    std::fs::write(
        &file,
        r#"
[kinds.bad]
runner = "command"
command = ["/bin/echo", "{params.hosts}"]
[kinds.bad.params.hosts]
type = "json"
"#,
    )
    .expect("write");
    let db = TestDb::new(Backend::Sqlite);
    let mut settings = test_settings(&db);
    settings.operations_file = Some(file);
    // The application builds its actors, so inside an actix system of its own.
    let built = std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            switchyard::startup::Application::build(settings)
                .await
                .err()
                .map(|e| format!("{e:#}"))
        })
    })
    .join()
    .expect("the build thread ended");
    let Some(err) = built else {
        panic!("a kind with a JSON param in argv must not load");
    };
    assert!(
        err.contains("kind bad") && err.contains("never goes on a command line"),
        "{err}"
    );
}

// ---- 3. worker details and ETA -------------------------------------------------------------

async fn worker_details_and_eta(backend: Backend) {
    let kinds = Kinds::new();
    // Retention 0: once finished, the operation is read back from the database.
    let app = app_with(backend, &kinds, |s| {
        s.operation_retention = Duration::ZERO;
        s.operation_max_details_bytes = 512;
    })
    .await;
    let op = start(&app, json!({"kind": "convert", "target": "job-1"})).await;
    let id = id_of(&op);
    let token = op["worker_token"]
        .as_str()
        .expect("worker token")
        .to_string();
    let mut watcher = app.ws_as("viewer").await;
    watcher.join(&format!("operation:{id}")).await;
    let report = |path: &str, body: Value| {
        let req = app
            .http
            .post(app.url(&format!("/api/operations/{id}/{path}")))
            .header("x-worker-token", token.clone())
            .json(&body);
        async move {
            let res = req.send().await.expect("report");
            let s = res.status().as_u16();
            (s, res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let agents = json!({"current_agent": "java_analyzer", "agents": [
        {"name": "java_analyzer", "status": "running", "progress": 40},
        {"name": "bedrock_builder", "status": "pending", "progress": 0},
    ]});
    let (s, b) = report(
        "progress",
        json!({"progress": 20, "stage": "analyze", "eta_seconds": 90, "details": agents}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (b["eta_seconds"].clone(), b["details"].clone()),
        (json!(90), agents.clone())
    );
    let live = watcher
        .recv_where(|f| f["event"] == "operation.progress" && f["data"]["details"] != Value::Null)
        .await;
    assert_eq!(live["data"]["details"], agents);
    assert_eq!(live["data"]["eta_seconds"], 90);

    // More progress without an ETA: the worker's stands (no estimate from the rate).
    let (s, b) = report("progress", json!({"progress": 60})).await;
    assert_eq!((s, b["eta_seconds"].clone()), (200, json!(90)), "{b}");
    // Over `/ws`, with new details replacing the old whole, and a new ETA.
    let mut worker = app.ws().await;
    let newer =
        json!({"agents": [{"name": "java_analyzer", "status": "completed", "progress": 100}]});
    let r = worker
        .request(
            json!({"type": "operation.progress", "operation": id, "worker_token": token,
                        "progress": 70, "eta_seconds": 12.5, "details": newer}),
        )
        .await;
    assert_eq!(r["type"], "operation", "{r}");
    assert_eq!(r["operation"]["eta_seconds"], 13, "rounded up");
    assert_eq!(r["operation"]["details"], newer);
    let (_, got) = app.get(&format!("/api/operations/{id}")).await;
    assert_eq!(
        (got["details"].clone(), got["eta_seconds"].clone()),
        (newer.clone(), json!(13))
    );

    // Bounded and checked; a refused report changes nothing.
    let refused = [
        (
            json!({"details": {"pad": "x".repeat(600)}}),
            413,
            "payload_too_large",
        ),
        (
            json!({"details": ["not", "an", "object"]}),
            400,
            "invalid_field",
        ),
        (json!({"eta_seconds": -1}), 400, "invalid_field"),
        (json!({"eta_seconds": 1e12}), 400, "invalid_field"),
        (json!({"eta_seconds": "soon"}), 400, "invalid_json"),
    ];
    for (body, status, code) in refused {
        let (s, b) = report("progress", body.clone()).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (status, Some(code)),
            "{body}: {b}"
        );
    }
    let r = worker
        .request(
            json!({"type": "operation.progress", "operation": id, "worker_token": token,
                        "eta_seconds": "soon"}),
        )
        .await;
    assert_eq!(
        (r["type"].as_str(), r["code"].as_str()),
        (Some("error"), Some("invalid_field"))
    );
    let (_, got) = app.get(&format!("/api/operations/{id}")).await;
    assert_eq!(
        (got["details"].clone(), got["eta_seconds"].clone()),
        (newer.clone(), json!(13))
    );

    // Stored with every write: after the end, the database has the last details.
    let (s, _) = report("complete", json!({"result": {"url": "/out.mcaddon"}})).await;
    assert_eq!(s, 200);
    let (a, n) = (&app, &newer);
    eventually("the finished operation to be stored", move || async move {
        let (_, p) = a.get("/api/operations?target=job-1&active=false").await;
        p["operations"][0]["details"] == *n
    })
    .await;
    // The actor may be stopping right now (retention 0): the status still comes, from the
    // database, never a 503 for an actor that retired between the lookup and the ask.
    let (s, got) = app.get(&format!("/api/operations/{id}")).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["details"], newer);
    assert_eq!(got["eta_seconds"], Value::Null, "no ETA once finished");
    app.shutdown().await;
}

#[tokio::test]
async fn worker_details_and_eta_are_bounded_published_and_stored_on_sqlite() {
    worker_details_and_eta(Backend::Sqlite).await;
}

#[tokio::test]
async fn worker_details_and_eta_are_bounded_published_and_stored_on_postgres() {
    worker_details_and_eta(Backend::Postgres).await;
}

// ---- 4. a finished operation reopened: exactly one terminal frame --------------------------

const TERMINAL_EVENTS: [&str; 3] = [
    "operation.completed",
    "operation.failed",
    "operation.cancelled",
];

fn is_terminal_status(v: &Value) -> bool {
    ["completed", "failed", "cancelled"].contains(&v["status"].as_str().unwrap_or(""))
}

/// Finished operations to reopen: one still in memory (app `kept`), one served from the
/// database (app `gone`, retention 0). Each ends `completed` with log lines.
struct Finished {
    kept: TestApp,
    kept_id: String,
    gone: TestApp,
    gone_id: String,
}

async fn finished(backend: Backend) -> Finished {
    let kept = spawn_app_with(backend, |_| {}).await;
    let gone = spawn_app_with(backend, |s| s.operation_retention = Duration::ZERO).await;
    let mut ids = Vec::new();
    for app in [&kept, &gone] {
        let op = start(
            app,
            json!({"kind": "demo", "target": "reopen", "params": {"step_ms": 1}}),
        )
        .await;
        let id = id_of(&op);
        assert_eq!(wait_finished(app, &id).await["status"], "completed");
        ids.push(id);
    }
    // The retired one is served from the database once its actor is gone; only the manager's
    // database lookup answers a cancel with "operation <id> is already …" (a live actor says
    // "the operation is already …").
    let gone_id = ids[1].clone();
    let (a, id) = (&gone, &gone_id);
    eventually("the operation to leave memory", move || async move {
        let (s, b) = a
            .post(&format!("/api/operations/{id}/cancel"), json!({}))
            .await;
        s == 409
            && b["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("operation "))
    })
    .await;
    Finished {
        kept,
        kept_id: ids[0].clone(),
        gone,
        gone_id,
    }
}

async fn reopen_over_ws(backend: Backend) {
    let f = finished(backend).await;
    for (app, id) in [(&f.kept, &f.kept_id), (&f.gone, &f.gone_id)] {
        for _ in 0..2 {
            let mut c = app.ws_as("again").await;
            c.join(&format!("operation:{id}")).await;
            let frames = c.drain().await;
            let events: Vec<&str> = frames.iter().filter_map(|f| f["event"].as_str()).collect();
            let terminal = events
                .iter()
                .filter(|e| TERMINAL_EVENTS.contains(e))
                .count();
            assert_eq!(terminal, 1, "{events:?}");
            assert_eq!(events.last(), Some(&"operation.completed"), "{events:?}");
            c.close().await;
        }
    }
}

#[tokio::test]
async fn a_finished_operation_reopened_over_ws_gives_one_terminal_event_on_sqlite() {
    reopen_over_ws(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_finished_operation_reopened_over_ws_gives_one_terminal_event_on_postgres() {
    reopen_over_ws(Backend::Postgres).await;
}

/// A raw Socket.IO client over WebSocket (Engine.IO v4): connects to the main namespace.
async fn socketio(
    app: &TestApp,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!(
        "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket",
        app.port
    );
    let (mut s, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("connect");
    let open = sio_next(&mut s).await;
    assert!(open.starts_with('0'), "{open}");
    s.send(Message::text(r#"40{"user":"sio"}"#))
        .await
        .expect("send");
    let connected = sio_next(&mut s).await;
    assert!(connected.starts_with("40"), "{connected}");
    s
}

/// The next Engine.IO text packet (pings answered).
async fn sio_next(
    s: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> String {
    loop {
        let m = tokio::time::timeout(WAIT, s.next())
            .await
            .expect("a packet in time")
            .expect("open")
            .expect("frame");
        match m {
            Message::Text(t) if t.as_str() == "2" => {
                s.send(Message::text("3")).await.expect("pong");
            }
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn reopen_over_socketio(backend: Backend) {
    let f = finished(backend).await;
    for (app, id) in [(&f.kept, &f.kept_id), (&f.gone, &f.gone_id)] {
        for _ in 0..2 {
            let mut s = socketio(app).await;
            let join = json!(["join", {"room": format!("operation:{id}")}]);
            s.send(Message::text(format!("421{join}")))
                .await
                .expect("join");
            // Everything up to the answer to a ping sent after the join's ack.
            let mut events = Vec::new();
            let mut pinged = false;
            loop {
                let p = sio_next(&mut s).await;
                if p.starts_with("431") && !pinged {
                    assert!(p.contains(r#""ok":true"#), "{p}");
                    s.send(Message::text(r#"422["ping"]"#)).await.expect("ping");
                    pinged = true;
                    continue;
                }
                if p.starts_with("432") {
                    break;
                }
                // The operation's own events: the room's presence (this socket's join, the
                // previous socket's leave) is batched and may come before or after them.
                if let Some(body) = p.strip_prefix("42") {
                    let v: Value = serde_json::from_str(body).expect("event JSON");
                    let name = v[0].as_str().unwrap_or("");
                    if name.starts_with("operation.") {
                        events.push(name.to_string());
                    }
                }
            }
            let terminal = events
                .iter()
                .filter(|e| TERMINAL_EVENTS.contains(&e.as_str()))
                .count();
            assert_eq!(terminal, 1, "{events:?}");
            assert_eq!(
                events.last().map(String::as_str),
                Some("operation.completed")
            );
        }
    }
}

#[tokio::test]
async fn a_finished_operation_reopened_over_socketio_gives_one_terminal_event_on_sqlite() {
    reopen_over_socketio(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_finished_operation_reopened_over_socketio_gives_one_terminal_event_on_postgres() {
    reopen_over_socketio(Backend::Postgres).await;
}

/// The whole SSE stream of a finished operation (it ends after the terminal event): the event
/// names in order.
async fn sse_events(app: &TestApp, id: &str, query: &str) -> Vec<String> {
    let mut res = app
        .http
        .get(app.url(&format!("/api/operations/{id}/events{query}")))
        .send()
        .await
        .expect("GET events");
    assert_eq!(res.status().as_u16(), 200);
    let mut text = String::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, res.chunk())
        .await
        .expect("the stream to go on or end in time")
        .expect("chunk")
    {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .map(str::to_string)
        .collect()
}

async fn reopen_over_sse(backend: Backend) {
    let f = finished(backend).await;
    for (app, id) in [(&f.kept, &f.kept_id), (&f.gone, &f.gone_id)] {
        for query in ["", "?after=0", "?after=5", "?after=100000"] {
            let events = sse_events(app, id, query).await;
            let terminal = events
                .iter()
                .filter(|e| TERMINAL_EVENTS.contains(&e.as_str()))
                .count();
            assert_eq!(terminal, 1, "{query}: {events:?}");
            assert_eq!(
                events.last().map(String::as_str),
                Some("operation.completed")
            );
        }
    }
}

#[tokio::test]
async fn a_finished_operation_reopened_over_sse_gives_one_terminal_event_on_sqlite() {
    reopen_over_sse(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_finished_operation_reopened_over_sse_gives_one_terminal_event_on_postgres() {
    reopen_over_sse(Backend::Postgres).await;
}

async fn reopen_over_the_operation_socket(backend: Backend) {
    let f = finished(backend).await;
    for (app, id) in [(&f.kept, &f.kept_id), (&f.gone, &f.gone_id)] {
        for _ in 0..2 {
            let (mut sock, _) = tokio::time::timeout(
                WAIT,
                tokio_tungstenite::connect_async(format!(
                    "ws://127.0.0.1:{}/api/operations/{id}/ws",
                    app.port
                )),
            )
            .await
            .expect("connect in time")
            .expect("connect");
            let mut statuses = Vec::new();
            let close = loop {
                match tokio::time::timeout(WAIT, sock.next())
                    .await
                    .expect("in time")
                {
                    Some(Ok(Message::Text(t))) => {
                        statuses.push(serde_json::from_str::<Value>(&t).expect("JSON"))
                    }
                    Some(Ok(Message::Close(c))) => break c.map(|c| u16::from(c.code)),
                    Some(Ok(_)) => {}
                    other => panic!("unexpected {other:?}"),
                }
            };
            assert_eq!(close, Some(1000));
            let terminal: Vec<&Value> = statuses.iter().filter(|s| is_terminal_status(s)).collect();
            assert_eq!(terminal.len(), 1, "{statuses:?}");
            assert_eq!(terminal[0]["status"], "completed");
            assert_eq!(terminal[0]["id"], json!(id));
        }
    }
}

#[tokio::test]
async fn a_finished_operation_reopened_on_its_socket_gives_one_terminal_status_on_sqlite() {
    reopen_over_the_operation_socket(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_finished_operation_reopened_on_its_socket_gives_one_terminal_status_on_postgres() {
    reopen_over_the_operation_socket(Backend::Postgres).await;
}

/// A live operation followed to its end on its own socket: statuses, then exactly one terminal
/// status, then a normal close (the snapshot rule must not drop a live operation's snapshot).
#[tokio::test]
async fn a_live_operation_on_its_socket_still_gets_its_snapshot_and_one_terminal_status() {
    let app = spawn_app().await;
    let op = start(
        &app,
        json!({"kind": "demo", "target": "live", "params": {"step_ms": 30}}),
    )
    .await;
    let id = id_of(&op);
    let (mut sock, _) = tokio_tungstenite::connect_async(format!(
        "ws://127.0.0.1:{}/api/operations/{id}/ws",
        app.port
    ))
    .await
    .expect("connect");
    let mut statuses = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, sock.next())
            .await
            .expect("in time")
        {
            Some(Ok(Message::Text(t))) => {
                statuses.push(serde_json::from_str::<Value>(&t).expect("JSON"))
            }
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        statuses.first().map(|s| s["status"].clone()),
        Some(json!("running"))
    );
    assert_eq!(statuses.iter().filter(|s| is_terminal_status(s)).count(), 1);
    assert!(is_terminal_status(statuses.last().expect("a status")));
}
