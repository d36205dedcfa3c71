use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

// ---- helpers -------------------------------------------------------------------------------

/// A temp dir with test scripts and an operations file declaring kinds that run them.
struct Kinds {
    dir: tempfile::TempDir,
}

impl Kinds {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::process::Command::new("chmod")
                .arg("+x")
                .arg(&p)
                .status()
                .unwrap();
        };
        script(
            "ok.sh",
            r#"echo '{"stage":"prepare","progress":10,"message":"Preparing"}'
echo "hello from $1"
echo '{"stage":"work","progress":60}'
echo "careful: $2" >&2
echo '{"result":{"url":"/files/'"$1"'"}}'
echo "done""#,
        );
        script(
            "fail.sh",
            "echo working\necho 'fatal: disk full' >&2\nexit 3",
        );
        script(
            "slow.sh",
            "sleep 300 &\necho $! > \"$1\"\necho started\nwait",
        );
        script(
            "stubborn.sh",
            "trap '' TERM\nsleep 300 &\necho $! > \"$1\"\necho started\nwait",
        );
        let d = dir.path().display();
        let toml = format!(
            r#"
[kinds.ok]
runner = "command"
command = ["{d}/ok.sh", "{{target}}", "{{params.note}}"]
target_pattern = "[a-z0-9-]+"
stages = [{{ name = "prepare", from = 0, to = 50 }}, {{ name = "work", from = 50, to = 100 }}]
[kinds.ok.params.note]
pattern = "[a-z ]+"
default = "none"

[kinds.fail]
runner = "command"
command = ["{d}/fail.sh"]

[kinds.slow]
runner = "command"
command = ["{d}/slow.sh", "{d}/{{target}}.pid"]
cancel_grace_secs = 5
concurrency = 1

[kinds.stubborn]
runner = "command"
command = ["{d}/stubborn.sh", "{d}/{{target}}.pid"]
cancel_grace_secs = 1

[kinds.sleepy]
runner = "command"
command = ["{d}/slow.sh", "{d}/{{target}}.pid"]
timeout_secs = 1

[kinds.convert]
runner = "external"
stall_timeout_secs = 30
cancel_grace_secs = 1

[kinds.flaky]
runner = "external"
stall_timeout_secs = 1
"#
        );
        std::fs::write(dir.path().join("operations.toml"), toml).unwrap();
        Self { dir }
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("operations.toml")
    }

    fn pid(&self, target: &str) -> i32 {
        let p = self.dir.path().join(format!("{target}.pid"));
        std::fs::read_to_string(p).unwrap().trim().parse().unwrap()
    }

    fn pid_file(&self, target: &str) -> PathBuf {
        self.dir.path().join(format!("{target}.pid"))
    }
}

/// Gone, or a zombie waiting for a parent that no longer cares.
pub(crate) fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .map(|rest| rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
    }
}

async fn with_kinds(kinds: &Kinds, backend: Backend) -> TestApp {
    let file = kinds.file();
    spawn_app_with(backend, move |s| {
        s.operations_file = Some(file);
        s.operation_flush_interval = Duration::from_millis(50);
    })
    .await
}

async fn start(app: &TestApp, body: Value) -> Value {
    let (s, op) = app.post("/api/operations", body).await;
    assert_eq!(s, 202, "{op}");
    op
}

async fn wait_for_file(path: &Path) {
    let p = path.to_path_buf();
    eventually("the script to write its pid file", || {
        let p = p.clone();
        async move {
            std::fs::read_to_string(&p)
                .map(|s| !s.trim().is_empty())
                .unwrap_or(false)
        }
    })
    .await;
}

/// Everything a watcher of `operation:<id>` receives until the terminal event.
#[derive(Default, Debug)]
struct Watched {
    statuses: Vec<Value>,
    logs: Vec<Value>,
    terminal: Option<Value>,
    events: Vec<String>,
}

async fn watch_to_end(c: &mut WsClient, id: &str) -> Watched {
    let mut w = Watched::default();
    loop {
        let f = c.recv().await;
        if f["room"] != json!(format!("operation:{id}")) {
            continue;
        }
        if f["type"] != "message" && f["type"] != "backfill" {
            continue;
        }
        let event = f["event"].as_str().unwrap().to_string();
        w.events.push(event.clone());
        match event.as_str() {
            "operation.progress" => w.statuses.push(f["data"].clone()),
            "operation.log" => w.logs.push(f["data"].clone()),
            "operation.completed" | "operation.failed" | "operation.cancelled" => {
                w.terminal = Some(f["data"].clone());
                return w;
            }
            _ => {}
        }
    }
}

fn offsets(logs: &[Value]) -> Vec<u64> {
    logs.iter().map(|l| l["offset"].as_u64().unwrap()).collect()
}

// ---- lifecycle per runner ------------------------------------------------------------------

#[tokio::test]
async fn a_demo_operation_streams_stages_logs_and_exactly_one_terminal_event() {
    let app = spawn_app().await;
    let mut watcher = app.ws_as("watcher").await;
    watcher.join("operations").await;
    let mut project = app.ws_as("member").await;
    project.join("project:7").await;

    let res = app
        .http
        .post(app.url("/api/operations"))
        .json(
            &json!({"kind": "demo", "target": "box-1", "project": "7", "params": {"step_ms": 15}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let location = res.headers()["location"].to_str().unwrap().to_string();
    let op: Value = res.json().await.unwrap();
    let id = op["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/api/operations/{id}"));
    // A free slot: its start is written before the answer, so the answer says so (issue #13:
    // a 202 for an operation the database still called `queued` let a crash run it twice).
    assert_eq!(op["status"], "running");
    assert!(op["started_at"].is_string(), "{op}");
    assert_eq!(op["stages"].as_array().unwrap().len(), 6);

    let mut c = app.ws_as("viewer").await;
    let joined = c
        .request(json!({"type": "join", "room": format!("operation:{id}")}))
        .await;
    assert_eq!(joined["type"], "joined");
    let first = c.recv().await;
    assert_eq!(
        first["type"], "backfill",
        "the snapshot comes first: {first}"
    );
    assert_eq!(first["event"], "operation.progress");
    assert_eq!(first["data"]["id"], json!(id));

    let w = watch_to_end(&mut c, &id).await;
    let done = w.terminal.clone().expect("terminal event");
    assert_eq!(done["status"], "completed");
    assert_eq!(done["progress"], 100.0);
    assert!(done["stages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["state"] == "done"));
    assert_eq!(done["result"]["services"].as_array().unwrap().len(), 4);
    // Log offsets: every line once, in order, no gaps.
    let offs = offsets(&w.logs);
    assert_eq!(offs, (1..=offs.len() as u64).collect::<Vec<_>>());
    assert_eq!(done["log_offset"], json!(offs.len()));
    // Stage changes are never lost, and progress never goes backwards.
    let mut stages: Vec<String> = w
        .statuses
        .iter()
        .filter_map(|s| s["stage"].as_str().map(String::from))
        .collect();
    stages.dedup();
    let tail: Vec<&str> = stages
        .iter()
        .map(String::as_str)
        .skip_while(|s| *s != "init")
        .collect();
    assert_eq!(
        tail,
        ["init", "config", "pull", "build", "deploy", "validate"]
    );
    let progress: Vec<f64> = w
        .statuses
        .iter()
        .map(|s| s["progress"].as_f64().unwrap())
        .collect();
    assert!(progress.windows(2).all(|p| p[0] <= p[1]), "{progress:?}");
    // Nothing after the terminal event.
    assert!(c
        .drain()
        .await
        .iter()
        .all(|f| f["room"] != json!(format!("operation:{id}"))));

    // The operations room saw it created and finished; the project room saw its lifecycle.
    let end = watcher
        .recv_where(|f| f["event"] == "operation.completed")
        .await;
    assert_eq!(end["data"]["id"], json!(id));
    let mut lifecycle = Vec::new();
    loop {
        let f = project.recv_message().await;
        lifecycle.push(f["event"].as_str().unwrap().to_string());
        if f["event"] == "operation.completed" {
            break;
        }
    }
    assert_eq!(
        lifecycle,
        [
            "operation.created",
            "operation.started",
            "operation.completed"
        ]
    );

    // Recorded before it was announced.
    let (_, stored) = app.get(&format!("/api/operations/{id}")).await;
    assert_eq!(stored["status"], "completed");
    assert_eq!(stored["result"], done["result"]);
    let (_, logs) = app.get(&format!("/api/operations/{id}/logs?after=0")).await;
    assert_eq!(logs["lines"].as_array().unwrap().len(), offs.len());
}

#[tokio::test]
async fn a_demo_told_to_fail_fails_at_that_stage() {
    let app = spawn_app().await;
    let op = start(
        &app,
        json!({"kind": "demo", "target": "t", "params": {"step_ms": 5, "fail_at": "build"}}),
    )
    .await;
    let id = op["id"].as_str().unwrap();
    let mut c = app.ws_as("v").await;
    c.join(&format!("operation:{id}")).await;
    let w = watch_to_end(&mut c, id).await;
    let failed = w.terminal.unwrap();
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "demo_failure");
    assert_eq!(failed["error"]["stage"], "build");
    let build = failed["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "build")
        .unwrap()
        .clone();
    assert_eq!(build["state"], "failed");
    assert!(w.events.contains(&"operation.failed".to_string()));
}

#[tokio::test]
async fn a_command_reports_progress_from_json_lines_and_completes_with_its_result() {
    let kinds = Kinds::new();
    let app = with_kinds(&kinds, Backend::Sqlite).await;
    let op = start(
        &app,
        json!({"kind": "ok", "target": "web-1", "params": {"note": "hi there"}}),
    )
    .await;
    let id = op["id"].as_str().unwrap();
    let mut c = app.ws_as("v").await;
    c.join(&format!("operation:{id}")).await;
    let w = watch_to_end(&mut c, id).await;
    let done = w.terminal.unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], json!({"url": "/files/web-1"}));
    let lines: Vec<(String, String)> = w
        .logs
        .iter()
        .map(|l| {
            (
                l["stream"].as_str().unwrap().to_string(),
                l["line"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        lines.contains(&("stdout".into(), "hello from web-1".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("stderr".into(), "careful: hi there".into())),
        "{lines:?}"
    );
    assert!(
        lines.iter().all(|(_, l)| !l.starts_with('{')),
        "status lines are not logged"
    );
    let stages: Vec<_> = done["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].clone(), s["state"].clone()))
        .collect();
    assert_eq!(
        stages,
        vec![
            (json!("prepare"), json!("done")),
            (json!("work"), json!("done"))
        ]
    );
}

#[tokio::test]
async fn a_failing_command_fails_with_its_stderr_tail() {
    let kinds = Kinds::new();
    let app = with_kinds(&kinds, Backend::Sqlite).await;
    let op = start(&app, json!({"kind": "fail", "target": "x"})).await;
    let id = op["id"].as_str().unwrap();
    let mut c = app.ws_as("v").await;
    c.join(&format!("operation:{id}")).await;
    let failed = watch_to_end(&mut c, id).await.terminal.unwrap();
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "exit_status");
    let msg = failed["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("status 3") && msg.contains("fatal: disk full"),
        "{msg}"
    );
}

#[tokio::test]
async fn command_arguments_are_validated_never_interpreted() {
    let kinds = Kinds::new();
    let app = with_kinds(&kinds, Backend::Sqlite).await;
    let (s, b) = app
        .post(
            "/api/operations",
            json!({"kind": "ok", "target": "web-1; rm -rf /"}),
        )
        .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_field")));
    let (s, b) = app
        .post(
            "/api/operations",
            json!({"kind": "ok", "target": "web-1", "params": {"note": "$(reboot)"}}),
        )
        .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_field")));
    let (s, b) = app
        .post("/api/operations", json!({"kind": "nope", "target": "x"}))
        .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("unknown_kind")));
}

#[tokio::test]
async fn cancelling_a_command_kills_its_whole_process_group() {
    let kinds = Kinds::new();
    let app = with_kinds(&kinds, Backend::Sqlite).await;
    let op = start(&app, json!({"kind": "slow", "target": "job-a"})).await;
    let id = op["id"].as_str().unwrap().to_string();
    let mut c = app.ws_as("v").await;
    c.join(&format!("operation:{id}")).await;
    wait_for_file(&kinds.pid_file("job-a")).await;
    let child = kinds.pid("job-a");
    assert!(!process_gone(child));

    let (s, body) = app
        .post(&format!("/api/operations/{id}/cancel"), json!({}))
        .await;
    assert_eq!(s, 202);
    assert!(
        body["status"] == "cancelling" || body["status"] == "cancelled",
        "{body}"
    );
    let w = watch_to_end(&mut c, &id).await;
    assert_eq!(w.terminal.unwrap()["status"], "cancelled");
    assert!(w.statuses.iter().any(|s| s["status"] == "cancelling"));
    eventually("the background child to be gone", || async move {
        process_gone(child)
    })
    .await;

    let (s, b) = app
        .post(&format!("/api/operations/{id}/cancel"), json!({}))
        .await;
    assert_eq!((s, b["error"].as_str()), (409, Some("operation_finished")));
}

#[tokio::test]
async fn a_command_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let kinds = Kinds::new();
    let app = with_kinds(&kinds, Backend::Sqlite).await;
    let op = start(&app, json!({"kind": "stubborn", "target": "job-b"})).await;
    let id = op["id"].as_str().unwrap().to_string();
    let mut c = app.ws_as("v").await;
    c.join(&format!("operation:{id}")).await;
    wait_for_file(&kinds.pid_file("job-b")).await;
    let child = kinds.pid("job-b");
    app.post(&format!("/api/operations/{id}/cancel"), json!({}))
        .await;
    let w = watch_to_end(&mut c, &id).await;
    assert_eq!(w.terminal.unwrap()["status"], "cancelled");
    eventually("SIGKILL to reach the group", || async move {
        process_gone(child)
    })
    .await;
}

#[tokio::test]
async fn a_command_past_its_timeout_fails_and_is_killed() {
    let kinds = Kinds::new();
    let app = with_kinds(&kinds, Backend::Sqlite).await;
    let op = start(&app, json!({"kind": "sleepy", "target": "job-c"})).await;
    let id = op["id"].as_str().unwrap().to_string();
    let mut c = app.ws_as("v").await;
    c.join(&format!("operation:{id}")).await;
    let failed = watch_to_end(&mut c, &id).await.terminal.unwrap();
    assert_eq!(failed["error"]["code"], "timeout");
    let child = kinds.pid("job-c");
    eventually("the timed-out group to be gone", || async move {
        process_gone(child)
    })
    .await;
}

#[tokio::test]
async fn extra_starts_of_a_limited_kind_wait_as_queued() {
    let kinds = Kinds::new();
    let app = with_kinds(&kinds, Backend::Sqlite).await;
    let first = start(&app, json!({"kind": "slow", "target": "q-1"})).await;
    let second = start(&app, json!({"kind": "slow", "target": "q-2"})).await;
    wait_for_file(&kinds.pid_file("q-1")).await;
    let (_, s2) = app
        .get(&format!(
            "/api/operations/{}",
            second["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s2["status"], "queued", "concurrency 1: the second waits");
    assert!(!kinds.pid_file("q-2").exists());
    // Freeing the slot starts the next one.
    app.post(
        &format!("/api/operations/{}/cancel", first["id"].as_str().unwrap()),
        json!({}),
    )
    .await;
    wait_for_file(&kinds.pid_file("q-2")).await;
    let id2 = second["id"].as_str().unwrap().to_string();
    eventually("the second to run", || {
        let id2 = id2.clone();
        let app = &app;
        async move { app.get(&format!("/api/operations/{id2}")).await.1["status"] == "running" }
    })
    .await;
    app.post(&format!("/api/operations/{id2}/cancel"), json!({}))
        .await;
}

// ---- external workers ----------------------------------------------------------------------

#[tokio::test]
async fn an_external_worker_reports_over_rest_and_ws_and_watchers_see_it_all() {
    let kinds = Kinds::new();
    let app = with_kinds(&kinds, Backend::Sqlite).await;
    let op = start(
        &app,
        json!({"kind": "convert", "target": "file-9", "params": {"format": "webm"}}),
    )
    .await;
    let id = op["id"].as_str().unwrap().to_string();
    assert_eq!(op["params"], json!({"format": "webm"}));
    let mut c = app.ws_as("v").await;
    c.join(&format!("operation:{id}")).await;

    let (s, st) = app
        .post(
            &format!("/api/operations/{id}/progress"),
            json!({"progress": 25, "stage": "decode", "message": "Decoding"}),
        )
        .await;
    assert_eq!((s, st["status"].as_str()), (200, Some("running")));
    let (s, _) = app
        .post(
            &format!("/api/operations/{id}/logs"),
            json!({"lines": ["frame 1", {"stream": "stderr", "line": "frame 2 slow"}]}),
        )
        .await;
    assert_eq!(s, 200);
    // The same worker API over /ws.
    let mut worker = app.ws_as("worker").await;
    let r = worker
        .request(json!({"type": "operation.progress", "operation": id, "progress": 80, "stage": "encode"}))
        .await;
    assert_eq!(r["type"], "operation");
    assert_eq!(r["operation"]["progress"], 80.0);
    let r = worker
        .request(json!({"type": "operation.log", "operation": id, "lines": ["encoding"]}))
        .await;
    assert_eq!(r["operation"]["log_offset"], 3);
    let (s, bad) = app
        .post(
            &format!("/api/operations/{id}/progress"),
            json!({"progress": 140}),
        )
        .await;
    assert_eq!((s, bad["error"].as_str()), (400, Some("invalid_field")));
    let (s, _) = app
        .post(
            &format!("/api/operations/{id}/complete"),
            json!({"result": {"url": "/out/file-9.webm"}}),
        )
        .await;
    assert_eq!(s, 200);

    let w = watch_to_end(&mut c, &id).await;
    let done = w.terminal.unwrap();
    assert_eq!(done["status"], "completed");
    assert_eq!(done["result"]["url"], "/out/file-9.webm");
    assert_eq!(offsets(&w.logs), vec![1, 2, 3]);
    assert_eq!(w.logs[1]["stream"], "stderr");
    assert!(w.statuses.iter().any(|s| s["stage"] == "decode"));
    assert!(w.statuses.iter().any(|s| s["stage"] == "encode"));
    // Reports after the end are refused.
    let (s, b) = app
        .post(
            &format!("/api/operations/{id}/progress"),
            json!({"progress": 90}),
        )
        .await;
    assert_eq!((s, b["error"].as_str()), (409, Some("operation_finished")));
}

#[tokio::test]
async fn cancelling_an_external_operation_tells_the_worker_then_records_cancelled() {
    let kinds = Kinds::new();
    let app = with_kinds(&kinds, Backend::Sqlite).await;
    let op = start(&app, json!({"kind": "convert", "target": "file-1"})).await;
    let id = op["id"].as_str().unwrap().to_string();
    app.post(
        &format!("/api/operations/{id}/progress"),
        json!({"progress": 10}),
    )
    .await;
    let mut worker = app.ws_as("worker").await;
    worker.join(&format!("operation:{id}")).await;
    // Cancel over /ws.
    let mut user = app.ws_as("user").await;
    let r = user
        .request(json!({"type": "operation.cancel", "operation": id}))
        .await;
    assert_eq!(r["operation"]["status"], "cancelling");
    let cancel = worker
        .recv_where(|f| f["event"] == "operation.cancel")
        .await;
    assert_eq!(cancel["data"]["status"], "cancelling");
    let w = watch_to_end(&mut worker, &id).await;
    assert_eq!(w.terminal.unwrap()["status"], "cancelled");
}

#[tokio::test]
async fn an_external_operation_that_reports_nothing_fails_as_stalled() {
    let kinds = Kinds::new();
    let app = with_kinds(&kinds, Backend::Sqlite).await;
    let op = start(&app, json!({"kind": "flaky", "target": "w"})).await;
    let id = op["id"].as_str().unwrap().to_string();
    let mut c = app.ws_as("v").await;
    c.join(&format!("operation:{id}")).await;
    let failed = watch_to_end(&mut c, &id).await.terminal.unwrap();
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "stalled");
}

#[tokio::test]
async fn hundreds_of_reports_a_second_are_coalesced_into_few_writes() {
    let kinds = Kinds::new();
    let file = kinds.file();
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        s.operations_file = Some(file);
        s.operation_flush_interval = Duration::from_millis(250);
    })
    .await;
    let op = start(&app, json!({"kind": "convert", "target": "busy"})).await;
    let id = op["id"].as_str().unwrap().to_string();
    let mut watcher = app.ws_as("v").await;
    watcher.join(&format!("operation:{id}")).await;
    let mut worker = app.ws_as("worker").await;
    for i in 1..=400 {
        worker
            .send(json!({"type": "operation.progress", "operation": id, "progress": i as f64 / 4.0, "stage": if i == 200 { "half" } else { "work" }}))
            .await;
    }
    let r = worker
        .request(json!({"type": "operation.complete", "operation": id}))
        .await;
    assert_eq!(r["operation"]["status"], "completed");
    let w = watch_to_end(&mut watcher, &id).await;
    // Watchers see every stage change and the final state ...
    let stages: Vec<_> = w
        .statuses
        .iter()
        .filter_map(|s| s["stage"].as_str())
        .collect();
    assert!(stages.contains(&"half"));
    assert_eq!(w.terminal.unwrap()["status"], "completed");
    // ... while the database got a handful of writes, not 400.
    assert!(app.metric("switchyard_operation_reports_total").await >= 401);
    let writes = app.metric("switchyard_operation_writes_total").await;
    assert!(writes < 40, "{writes} writes for 401 reports");
}

/// Reports answered only once stored still share transactions: 50 workers each sending 20
/// log reports, every one waiting for its 2xx, cost far fewer transactions than reports (the
/// writer commits every operation's waiting write together).
#[tokio::test]
async fn acknowledged_reports_from_many_workers_share_write_transactions() {
    let kinds = Kinds::new();
    let file = kinds.file();
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        s.operations_file = Some(file);
        // Periodic writes out of the way: every write here is one a 2xx waited for.
        s.operation_flush_interval = Duration::from_secs(3600);
    })
    .await;
    let mut ids = Vec::new();
    for w in 0..50 {
        let op = start(&app, json!({"kind": "convert", "target": format!("w-{w}")})).await;
        ids.push(op["id"].as_str().unwrap().to_string());
    }
    let before = app
        .metric("switchyard_operation_write_transactions_total")
        .await;
    let began = std::time::Instant::now();
    let workers = ids.iter().map(|id| {
        let (http, url) = (
            app.http.clone(),
            app.url(&format!("/api/operations/{id}/logs")),
        );
        async move {
            for n in 0..20 {
                let res = http
                    .post(&url)
                    .json(&json!({"lines": [format!("line {n}")]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200);
            }
        }
    });
    futures_util::future::join_all(workers).await;
    let elapsed = began.elapsed();
    let transactions = app
        .metric("switchyard_operation_write_transactions_total")
        .await
        - before;
    eprintln!("1,000 acknowledged reports in {elapsed:?}, {transactions} transactions");
    assert!(
        transactions <= 250,
        "1,000 acknowledged reports took {transactions} transactions"
    );
    // And each is stored.
    let (_, logs) = app
        .get(&format!("/api/operations/{}/logs?after=0", ids[49]))
        .await;
    assert_eq!(logs["lines"].as_array().unwrap().len(), 20);
}

// ---- dedupe --------------------------------------------------------------------------------

async fn concurrent_starts_have_exactly_one_winner(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let http = app.http.clone();
        let url = app.url("/api/operations");
        tasks.push(tokio::spawn(async move {
            let res = http
                .post(url)
                .json(&json!({"kind": "demo", "target": "same-box", "params": {"step_ms": 200}}))
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap())
        }));
    }
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for t in tasks {
        let (s, body) = t.await.unwrap();
        match s {
            202 => winners.push(body["id"].as_str().unwrap().to_string()),
            409 => {
                assert_eq!(body["error"], "duplicate_operation");
                losers.push(body["operation"]["id"].as_str().unwrap().to_string());
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one start wins");
    assert_eq!(losers.len(), 11);
    assert!(
        losers.iter().all(|l| *l == winners[0]),
        "the others get the winner's id"
    );
    // Another target is independent; over /ws a duplicate is an error frame with the operation.
    let mut c = app.ws_as("u").await;
    let dup = c
        .request(json!({"type": "operation.start", "kind": "demo", "target": "same-box"}))
        .await;
    assert_eq!(dup["code"], "duplicate_operation");
    assert_eq!(dup["operation"]["id"], json!(winners[0]));
    let other = c
        .request(json!({"type": "operation.start", "kind": "demo", "target": "other-box", "params": {"step_ms": 1}}))
        .await;
    assert_eq!(other["type"], "operation", "{other}");
}

#[tokio::test]
async fn concurrent_starts_have_exactly_one_winner_on_sqlite() {
    concurrent_starts_have_exactly_one_winner(Backend::Sqlite).await;
}

#[tokio::test]
async fn concurrent_starts_have_exactly_one_winner_on_postgres() {
    concurrent_starts_have_exactly_one_winner(Backend::Postgres).await;
}

/// 2,000 starts at once on SQLite are all accepted: database contention waits in the single
/// writer's queue instead of surfacing as `503 database is locked` (before: SQLite ran in
/// rollback-journal mode with every start inserting on its own pooled connection, and SQLite
/// answers a writer that would deadlock with `database is locked` without waiting).
#[tokio::test]
async fn two_thousand_concurrent_starts_on_sqlite_are_all_accepted() {
    let kinds = Kinds::new();
    let file = kinds.file();
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        s.operations_file = Some(file);
        s.db_pool_size = 8;
        s.db_timeout = Duration::from_secs(30);
    })
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let url = app.url("/api/operations");
    let starts = (0..2_000).map(|i| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let res = http
                .post(url)
                .json(&json!({"kind": "convert", "target": format!("box-{i}")}))
                .send()
                .await;
            match res {
                Ok(r) => {
                    let status = r.status().as_u16();
                    (status, r.text().await.unwrap_or_default())
                }
                Err(e) => (0, e.to_string()),
            }
        }
    });
    let answers = tokio::time::timeout(
        Duration::from_secs(90),
        futures_util::future::join_all(starts),
    )
    .await
    .expect("2,000 starts answered within 90 s");
    let refused: Vec<_> = answers.iter().filter(|(s, _)| *s != 202).collect();
    assert!(
        refused.is_empty(),
        "{} of 2,000 starts not accepted, e.g. {:?}",
        refused.len(),
        refused.first()
    );
    let (_, listed) = app.get("/api/operations?kind=convert&limit=500").await;
    assert_eq!(listed["operations"].as_array().unwrap().len(), 500);
}

// ---- reconnects, restarts, other ways to watch ------------------------------------------------

#[tokio::test]
async fn a_watcher_that_reconnects_with_its_log_offset_misses_nothing_and_gets_nothing_twice() {
    let kinds = Kinds::new();
    let app = with_kinds(&kinds, Backend::Sqlite).await;
    let op = start(&app, json!({"kind": "convert", "target": "r"})).await;
    let id = op["id"].as_str().unwrap().to_string();
    let mut worker = app.ws_as("worker").await;
    let log =
        |n: u32| json!({"type": "operation.log", "operation": id, "lines": [format!("line {n}")]});
    for n in 1..=5 {
        worker.send(log(n)).await;
    }
    let mut first = app.ws_as("viewer").await;
    first.join(&format!("operation:{id}")).await;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let f = first.recv_where(|f| f["event"] == "operation.log").await;
        seen.push(f["data"].clone());
    }
    first.abort();
    for n in 6..=12 {
        worker.send(log(n)).await;
    }
    let last = seen.last().unwrap()["offset"].as_u64().unwrap();
    let mut again = app.ws_as("viewer").await;
    let joined = again
        .request(json!({"type": "join", "room": format!("operation:{id}"), "log_offset": last}))
        .await;
    assert_eq!(joined["recovered"], true);
    for n in 13..=15 {
        worker.send(log(n)).await;
    }
    worker
        .request(json!({"type": "operation.complete", "operation": id}))
        .await;
    let rest = watch_to_end(&mut again, &id).await;
    seen.extend(rest.logs);
    assert_eq!(offsets(&seen), (1..=15).collect::<Vec<_>>());
    let texts: Vec<_> = seen
        .iter()
        .map(|l| l["line"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        texts,
        (1..=15).map(|n| format!("line {n}")).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn lines_no_longer_in_memory_come_from_the_database() {
    let kinds = Kinds::new();
    let file = kinds.file();
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        s.operations_file = Some(file);
        s.operation_flush_interval = Duration::from_millis(20);
        s.log_replay_max = 5_000;
    })
    .await;
    let op = start(&app, json!({"kind": "convert", "target": "big"})).await;
    let id = op["id"].as_str().unwrap().to_string();
    // 1,500 lines: more than the 1,000 an operation keeps in memory.
    for chunk in 0..3 {
        let lines: Vec<String> = (1..=500)
            .map(|n| format!("line {}", chunk * 500 + n))
            .collect();
        let (s, _) = app
            .post(
                &format!("/api/operations/{id}/logs"),
                json!({"lines": lines}),
            )
            .await;
        assert_eq!(s, 200);
    }
    let mut c = app.ws_as("late").await;
    let joined = c
        .request(json!({"type": "join", "room": format!("operation:{id}"), "log_offset": 100}))
        .await;
    assert_eq!(joined["recovered"], true);
    let mut got = Vec::new();
    while got.len() < 1_400 {
        let f = c.recv_where(|f| f["event"] == "operation.log").await;
        assert_eq!(f["type"], "backfill");
        got.push(f["data"]["offset"].as_u64().unwrap());
    }
    assert_eq!(got, (101..=1_500).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_restart_mid_operation_marks_it_interrupted_and_keeps_external_ones_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let url = switchyard::config::DatabaseUrl::Sqlite(
        dir.path().join("ops.db").to_string_lossy().into_owned(),
    );
    let kinds = Kinds::new();
    let boot = |url: switchyard::config::DatabaseUrl| {
        let file = kinds.file();
        spawn_app_with(Backend::Sqlite, move |s| {
            s.database = url;
            s.operations_file = Some(file);
            s.operation_flush_interval = Duration::from_millis(20);
        })
    };
    let app = boot(url.clone()).await;
    let demo = start(
        &app,
        json!({"kind": "demo", "target": "slowbox", "params": {"step_ms": 2000}}),
    )
    .await;
    let ext = start(&app, json!({"kind": "convert", "target": "keep"})).await;
    let (demo_id, ext_id) = (
        demo["id"].as_str().unwrap().to_string(),
        ext["id"].as_str().unwrap().to_string(),
    );
    app.post(
        &format!("/api/operations/{ext_id}/progress"),
        json!({"progress": 40}),
    )
    .await;
    let mut c = app.ws_as("v").await;
    c.join(&format!("operation:{demo_id}")).await;
    c.recv_where(|f| f["data"]["status"] == "running").await;
    let db = switchyard::db::Database::connect(&url, 1, Duration::from_secs(2), Default::default())
        .unwrap();
    eventually("the running state to be written", || {
        let (id, db) = (demo_id.clone(), db.clone());
        async move {
            let row = db
                .run(move |c| switchyard::db::operations::get(c, &id))
                .await
                .unwrap();
            row.is_some_and(|r| r.status == "running")
        }
    })
    .await;
    app.shutdown().await;

    let app = boot(url.clone()).await;
    let mut c = app.ws_as("v").await;
    c.join(&format!("operation:{demo_id}")).await;
    let end = watch_to_end(&mut c, &demo_id).await.terminal.unwrap();
    assert_eq!(end["status"], "failed");
    assert_eq!(end["error"]["code"], "interrupted");
    let (_, stored) = app.get(&format!("/api/operations/{demo_id}")).await;
    assert_eq!(stored["error"]["code"], "interrupted");

    // The external one waits for its worker, which can finish it.
    let (_, e) = app.get(&format!("/api/operations/{ext_id}")).await;
    assert_eq!(e["status"], "running");
    assert_eq!(e["progress"], 40.0);
    let (s, done) = app
        .post(&format!("/api/operations/{ext_id}/complete"), json!({}))
        .await;
    assert_eq!((s, done["status"].as_str()), (200, Some("completed")));
}

/// Server-Sent Events, parsed.
#[derive(Debug, Clone)]
struct SseEvent {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// Reads SSE events until the server ends the stream or `take` events arrived.
async fn sse(
    app: &TestApp,
    id: &str,
    last_event_id: Option<u64>,
    take: usize,
) -> (u16, Vec<SseEvent>) {
    let mut req = app
        .http
        .get(app.url(&format!("/api/operations/{id}/events")));
    if let Some(l) = last_event_id {
        req = req.header("last-event-id", l.to_string());
    }
    let mut res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < take {
        let chunk = tokio::time::timeout(WAIT, res.chunk())
            .await
            .expect("SSE data in time")
            .unwrap();
        let Some(chunk) = chunk else { break };
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, None, String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if let Some(event) = event {
                out.push(SseEvent {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap(),
                });
            }
        }
    }
    (status, out)
}

#[tokio::test]
async fn polling_sse_with_resume_and_the_operation_socket_agree_with_the_live_stream() {
    let app = spawn_app().await;
    let op = start(
        &app,
        json!({"kind": "demo", "target": "agree", "params": {"step_ms": 40}}),
    )
    .await;
    let id = op["id"].as_str().unwrap().to_string();

    // The live stream.
    let mut live = app.ws_as("live").await;
    live.join(&format!("operation:{id}")).await;
    // The per-operation WebSocket: full status on connect and on every change, then 1000.
    let (mut sock, _) = tokio_tungstenite::connect_async(format!(
        "ws://127.0.0.1:{}/api/operations/{id}/ws",
        app.port
    ))
    .await
    .unwrap();
    // SSE: read a few events, drop the connection, resume with Last-Event-ID.
    let (s, part1) = sse(&app, &id, None, 8).await;
    assert_eq!(s, 200);
    let last_id = part1.iter().rev().find_map(|e| e.id).unwrap();
    let (_, part2) = sse(&app, &id, Some(last_id), usize::MAX).await;

    let live_w = watch_to_end(&mut live, &id).await;
    let mut statuses = Vec::new();
    let close_code = loop {
        match tokio::time::timeout(WAIT, sock.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => statuses.push(serde_json::from_str::<Value>(&t).unwrap()),
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(
        close_code,
        Some(1000),
        "closes normally after the terminal status"
    );
    assert_eq!(statuses.first().unwrap()["id"], json!(id));
    assert_eq!(statuses.last().unwrap()["status"], "completed");
    assert!(
        statuses.iter().all(|s| s.get("line").is_none()),
        "status objects only"
    );

    // SSE: lines across the reconnect are exactly the live lines.
    let sse_lines: Vec<Value> = part1
        .iter()
        .chain(part2.iter())
        .filter(|e| e.event == "operation.log")
        .map(|e| e.data.clone())
        .collect();
    let mut sse_offsets = offsets(&sse_lines);
    let unique: BTreeSet<u64> = sse_offsets.iter().copied().collect();
    assert_eq!(
        unique.len(),
        sse_offsets.len(),
        "no line twice across the resume: {sse_offsets:?}"
    );
    sse_offsets.sort();
    assert_eq!(sse_offsets, offsets(&live_w.logs));
    assert_eq!(part2.last().unwrap().event, "operation.completed");

    // Polling agrees too.
    let (_, polled) = app
        .get(&format!("/api/operations/{id}/logs?after=0&limit=2000"))
        .await;
    assert_eq!(polled["lines"].as_array().unwrap(), &live_w.logs);
    let (_, status) = app.get(&format!("/api/operations/{id}")).await;
    assert_eq!(status, live_w.terminal.clone().unwrap());
    // Once it is over, a resuming EventSource is told to stop.
    let final_id = status["log_offset"].as_u64().unwrap();
    let (s, _) = sse(&app, &id, Some(final_id), 1).await;
    assert_eq!(s, 204);
}

#[tokio::test]
async fn a_finished_operation_leaves_memory_and_is_served_from_the_database() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.operation_retention = Duration::ZERO).await;
    let op = start(
        &app,
        json!({"kind": "demo", "target": "gone", "params": {"step_ms": 1}}),
    )
    .await;
    let id = op["id"].as_str().unwrap().to_string();
    let mut c = app.ws_as("v").await;
    c.join(&format!("operation:{id}")).await;
    let done = watch_to_end(&mut c, &id).await.terminal.unwrap();
    c.request(json!({"type": "leave", "room": format!("operation:{id}")}))
        .await;
    // Joining later still answers with the final status first, then the lines after the offset.
    let mut late = app.ws_as("late").await;
    let joined = late
        .request(json!({"type": "join", "room": format!("operation:{id}"), "log_offset": 10}))
        .await;
    assert_eq!(joined["recovered"], true);
    // Snapshot first, then the lines after the offset, then the one terminal event last.
    let snap = late.recv().await;
    assert_eq!(
        (snap["type"].as_str(), snap["event"].as_str()),
        (Some("backfill"), Some("operation.progress"))
    );
    assert_eq!(snap["data"]["status"], "completed");
    let mut rest = Vec::new();
    for _ in 10..done["log_offset"].as_u64().unwrap() {
        let line = late.recv().await;
        assert_eq!(line["event"], "operation.log");
        rest.push(line["data"]["offset"].as_u64().unwrap());
    }
    assert_eq!(
        rest,
        (11..=done["log_offset"].as_u64().unwrap()).collect::<Vec<_>>()
    );
    let end = late.recv().await;
    assert_eq!(end["event"], "operation.completed");
    assert_eq!(end["data"], done);
    let (s, list) = app.get("/api/operations?status=completed&kind=demo").await;
    assert_eq!(s, 200);
    assert_eq!(list["operations"][0]["id"], json!(id));
    let (s, b) = app.get("/api/operations/not-an-id").await;
    assert_eq!((s, b["error"].as_str()), (404, Some("not_found")));
    let mut x = app.ws_as("x").await;
    let r = x
        .request(json!({"type": "join", "room": "operation:nope"}))
        .await;
    assert_eq!(r["code"], "not_found");
}

#[tokio::test]
async fn operations_are_listed_newest_first_with_filters_and_paging() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let op = start(&app, json!({"kind": "demo", "target": format!("list-{i}"), "project": if i % 2 == 0 { "even" } else { "odd" }, "params": {"step_ms": 1}})).await;
        ids.push(op["id"].as_str().unwrap().to_string());
    }
    let (_, page) = app.get("/api/operations?limit=2").await;
    let got: Vec<_> = page["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, vec![ids[4].clone(), ids[3].clone()]);
    let before = page["next_before"].as_str().unwrap();
    let (_, page2) = app
        .get(&format!("/api/operations?limit=2&before={before}"))
        .await;
    assert_eq!(page2["operations"][0]["id"], json!(ids[2]));
    let (_, even) = app.get("/api/operations?project=even").await;
    assert_eq!(even["operations"].as_array().unwrap().len(), 3);
    let (s, b) = app.get("/api/operations?status=sleeping").await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_field")));
}

#[tokio::test]
async fn joining_a_just_finished_operation_gives_snapshot_lines_then_the_terminal_event() {
    let app = spawn_app().await;
    let mut all = app.ws_as("dash").await;
    all.join("operations").await;
    let op = start(
        &app,
        json!({"kind": "demo", "target": "quick", "params": {"step_ms": 1}}),
    )
    .await;
    let id = op["id"].as_str().unwrap().to_string();
    all.recv_where(|f| f["event"] == "operation.completed" && f["data"]["id"] == json!(id))
        .await;
    let mut c = app.ws_as("late").await;
    c.join(&format!("operation:{id}")).await;
    let frames = c.drain().await;
    let events: Vec<&str> = frames
        .iter()
        .map(|f| f["event"].as_str().unwrap())
        .collect();
    assert_eq!(events.first(), Some(&"operation.progress"));
    assert_eq!(events.last(), Some(&"operation.completed"));
    assert_eq!(
        events
            .iter()
            .filter(|e| e.starts_with("operation.completed"))
            .count(),
        1
    );
    let lines: Vec<Value> = frames
        .iter()
        .filter(|f| f["event"] == "operation.log")
        .map(|f| f["data"].clone())
        .collect();
    assert_eq!(
        offsets(&lines),
        (1..=frames[0]["data"]["log_offset"].as_u64().unwrap()).collect::<Vec<_>>()
    );
}

/// A server with a JWT secret and the test kinds (the `Kinds` must live as long as the app).
/// Starts a `convert` operation on `target` in project 1 as the holder of `token`.
async fn start_convert(app: &TestApp, token: &str, target: &str) -> (u16, Value) {
    app.post_auth(
        "/api/operations",
        token,
        json!({"kind": "convert", "target": target, "project": "1"}),
    )
    .await
}

async fn secured(
    backend: Backend,
    tweak: impl FnOnce(&mut switchyard::config::Settings),
) -> (TestApp, Kinds) {
    let kinds = Kinds::new();
    let file = kinds.file();
    let app = spawn_app_with(backend, move |s| {
        s.jwt_secret = Some(SECRET.into());
        s.operations_file = Some(file);
        tweak(s);
    })
    .await;
    (app, kinds)
}

#[tokio::test]
async fn with_a_secret_only_permitted_callers_start_watch_and_report() {
    let (app, _kinds) = secured(Backend::Sqlite, |_| {}).await;
    let viewer = token("viewer", &["project:1"], &[], None);
    let (s, _) = start_convert(&app, &viewer, "a").await;
    assert_eq!(s, 403, "no publish rights: may not start");
    let member = token("member", &["project:1"], &["project:1"], None);
    let (s, op) = start_convert(&app, &member, "a").await;
    assert_eq!(
        s, 202,
        "publishing to the project allows starting its operations"
    );
    let id = op["id"].as_str().unwrap();
    assert_eq!(op["created_by"], "member");
    // Watching through the project works; a stranger cannot even see it exists.
    let (s, _) = app
        .get_auth(&format!("/api/operations/{id}"), &viewer)
        .await;
    assert_eq!(s, 200);
    let stranger = token("stranger", &["project:2"], &[], None);
    let (s, b) = app
        .get_auth(&format!("/api/operations/{id}"), &stranger)
        .await;
    assert_eq!((s, b["error"].as_str()), (404, Some("not_found")));
    // Only services report progress.
    let (s, _) = app
        .post_auth(
            &format!("/api/operations/{id}/progress"),
            &member,
            json!({"progress": 5}),
        )
        .await;
    assert_eq!(s, 403);
    let worker = token("converter", &[], &[], Some("service"));
    let (s, b) = app
        .post_auth(
            &format!("/api/operations/{id}/progress"),
            &worker,
            json!({"progress": 5}),
        )
        .await;
    assert_eq!((s, b["progress"].as_f64()), (200, Some(5.0)));
    let (s, b) = app
        .post_auth(&format!("/api/operations/{id}/cancel"), &viewer, json!({}))
        .await;
    assert_eq!((s, b["error"].as_str()), (403, Some("forbidden")));

    // The starter got the operation's own worker token: a worker holding it may report for
    // this operation alone, without a service token; nobody else ever sees it.
    let worker_token = op["worker_token"]
        .as_str()
        .expect("external operations get one")
        .to_string();
    let report = |token: &str, op_id: &str, body: serde_json::Value| {
        let req = app
            .http
            .post(app.url(&format!("/api/operations/{op_id}/progress")))
            .header("x-worker-token", token)
            .json(&body);
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            (status, res.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (s, b) = report(&worker_token, id, json!({"progress": 30})).await;
    assert_eq!((s, b["progress"].as_f64()), (200, Some(30.0)));
    let (s, b) = report("guessed", id, json!({"progress": 31})).await;
    assert_eq!((s, b["error"].as_str()), (403, Some("forbidden")));
    let (_, other) = start_convert(&app, &member, "b").await;
    let other_id = other["id"].as_str().unwrap();
    let (s, _) = report(&worker_token, other_id, json!({"progress": 1})).await;
    assert_eq!(s, 403, "a worker token is for its own operation only");
    let (_, status) = app
        .get_auth(&format!("/api/operations/{id}"), &viewer)
        .await;
    assert!(status.get("worker_token").is_none());
    assert!(!status.to_string().contains(&worker_token));
    // Over /ws, a plain user reports with the token in the frame.
    let mut w = WsClient::connect(&app.ws_url(), Some(&member)).await;
    let r = w
        .request(json!({"type": "operation.log", "operation": id, "lines": ["from the worker"], "worker_token": worker_token}))
        .await;
    assert_eq!(r["operation"]["log_offset"], 1, "{r}");
    let r = w
        .request(json!({"type": "operation.complete", "operation": id}))
        .await;
    assert_eq!(
        r["code"], "forbidden",
        "without the token a plain user may not"
    );
}

#[tokio::test]
async fn reports_streamed_with_a_worker_token_keep_their_order() {
    // The first report with a token waits for the database check; the ones right behind it
    // queue and go after it, in order, and later ones skip the check. (PostgreSQL: checks on
    // several pooled connections could finish out of order if each report had its own.)
    let (app, _kinds) = secured(Backend::Postgres, |s| s.publish_rate = 0).await;
    let member = token("member", &["project:1"], &["project:1"], None);
    let (s, op) = start_convert(&app, &member, "a").await;
    assert_eq!(s, 202, "{op}");
    let id = op["id"].as_str().unwrap();
    let worker_token = op["worker_token"].as_str().unwrap();
    let mut w = WsClient::connect(&app.ws_url(), Some(&member)).await;
    const N: u64 = 1000;
    for n in 1..=N {
        // No ids: nothing is answered unless refused; sent back to back.
        w.send(json!({"type": "operation.log", "operation": id, "lines": [format!("line {n}")], "worker_token": worker_token}))
            .await;
    }
    let r = w
        .request(json!({"type": "operation.log", "operation": id, "lines": ["last"], "worker_token": worker_token}))
        .await;
    assert_eq!(r["operation"]["log_offset"], N + 1, "{r}");
    // Log lines are written in batches: wait until all are stored.
    let url = format!("/api/operations/{id}/logs?after=0&limit=2000");
    eventually("every line to be stored", || async {
        let (_, logs) = app.get_auth(&url, &member).await;
        logs["lines"].as_array().map(Vec::len) == Some(N as usize + 1)
    })
    .await;
    let (s, logs) = app.get_auth(&url, &member).await;
    assert_eq!(s, 200, "{logs}");
    let lines: Vec<String> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap().to_string())
        .collect();
    let mut expected: Vec<String> = (1..=N).map(|n| format!("line {n}")).collect();
    expected.push("last".into());
    assert_eq!(lines, expected);
}

#[tokio::test]
async fn finished_operations_older_than_the_retention_are_pruned() {
    use switchyard::db::operations as store;
    let db_dir = tempfile::tempdir().unwrap();
    let url = switchyard::config::DatabaseUrl::Sqlite(
        db_dir.path().join("p.db").to_string_lossy().into_owned(),
    );
    let db = switchyard::db::Database::connect(&url, 1, Duration::from_secs(2), Default::default())
        .unwrap();
    let mk = |id: &str, finished: Option<i64>| {
        let mut op = switchyard::operations::Operation::new(
            id.into(),
            "demo".into(),
            id.into(),
            None,
            switchyard::operations::RunnerKind::Demo,
            vec![],
            Value::Null,
            None,
            0,
        );
        if let Some(t) = finished {
            op.complete(None, t).unwrap();
        }
        store::OperationRow::from(&op)
    };
    let now = switchyard::util::now_millis();
    let rows = vec![
        mk("old", Some(now - 40 * 86_400_000)),
        mk("recent", Some(now - 1_000)),
        mk("active", None),
    ];
    let removed = db
        .run(move |c| {
            for r in &rows {
                store::insert(c, r)?;
            }
            let line = switchyard::operations::LogLine {
                offset: 1,
                stream: "stdout".into(),
                line: "x".into(),
                ts: 0,
            };
            store::save_many(
                c,
                &[(rows[0].clone(), vec![store::LogRow::new("old", &line)])],
            )?;
            store::prune(c, now - 30 * 86_400_000)
        })
        .await
        .unwrap();
    assert_eq!(removed, 1);
    let left = db
        .run(|c| {
            Ok((
                store::get(c, "old")?,
                store::get(c, "recent")?,
                store::get(c, "active")?,
                store::logs_after(c, "old", 0, 10)?,
            ))
        })
        .await
        .unwrap();
    assert!(left.0.is_none() && left.1.is_some() && left.2.is_some() && left.3.is_empty());
}

#[tokio::test]
async fn a_slow_watcher_gets_the_latest_progress_but_every_log_line_and_the_end() {
    let kinds = Kinds::new();
    let file = kinds.file();
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        s.operations_file = Some(file);
        s.outbox_max_messages = 32;
        s.outbox_max_bytes = 256 * 1024;
        // 4,040 reports back to back, far over the per-operation report rate, on purpose.
        s.operation_report_rate = 0;
    })
    .await;
    let op = start(&app, json!({"kind": "convert", "target": "slow-watch"})).await;
    let id = op["id"].as_str().unwrap().to_string();
    let mut slow = app.ws_as("slow").await;
    slow.join(&format!("operation:{id}")).await;
    // From here on `slow` reads nothing until the worker is done.
    let mut worker = app.ws_as("worker").await;
    let pad = "p".repeat(3000);
    let mut lines = 0;
    for i in 1..=4000u32 {
        worker
            .send(json!({"type": "operation.progress", "operation": id, "progress": f64::from(i) / 40.01, "message": format!("{i} {pad}")}))
            .await;
        if i % 100 == 0 {
            lines += 1;
            worker
                .send(json!({"type": "operation.log", "operation": id, "lines": [format!("line {lines}")]}))
                .await;
        }
    }
    let done = worker
        .request(json!({"type": "operation.complete", "operation": id}))
        .await;
    assert_eq!(done["operation"]["status"], "completed", "{done}");

    // ~12 MB of progress went out; the slow watcher was not evicted for it.
    let w = watch_to_end(&mut slow, &id).await;
    assert_eq!(w.terminal.unwrap()["status"], "completed");
    let texts: Vec<String> = w
        .logs
        .iter()
        .map(|l| l["line"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        texts,
        (1..=40).map(|n| format!("line {n}")).collect::<Vec<_>>()
    );
    assert!(
        w.statuses.len() < 4000,
        "progress was conflated ({} of 4000)",
        w.statuses.len()
    );
    let progress: Vec<f64> = w
        .statuses
        .iter()
        .map(|s| s["progress"].as_f64().unwrap())
        .collect();
    assert!(progress.windows(2).all(|p| p[0] <= p[1]));
    assert_eq!(
        app.metric("switchyard_slow_consumer_disconnects_total")
            .await,
        0
    );
}

#[tokio::test]
async fn a_database_outage_loses_no_operation_state() {
    let kinds = Kinds::new();
    let file = kinds.file();
    let app = spawn_app_with(Backend::Postgres, move |s| {
        s.operations_file = Some(file);
        s.operation_flush_interval = Duration::from_millis(50);
        s.db_timeout = Duration::from_millis(300);
    })
    .await;
    let db = app.db.pg_name.clone().unwrap();
    let op = start(&app, json!({"kind": "convert", "target": "outage"})).await;
    let id = op["id"].as_str().unwrap().to_string();
    let mut watcher = app.ws_as("w").await;
    watcher.join(&format!("operation:{id}")).await;
    let mut worker = app.ws_as("worker").await;

    pg_admin(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"));
    pg_admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
    ));
    eventually("the outage to show", || async {
        app.get("/health").await.0 == 503
    })
    .await;

    // Work goes on: watchers see it live.
    for n in 1..=20 {
        worker
            .send(json!({"type": "operation.log", "operation": id, "lines": [format!("line {n}")]}))
            .await;
    }
    worker
        .send(json!({"type": "operation.progress", "operation": id, "progress": 90, "stage": "finish"}))
        .await;
    // An acknowledgement means stored: with the database gone, the worker is told its report
    // is not stored yet (issue #13) instead of getting an answer that a crash would betray.
    let r = worker
        .request(json!({"type": "operation.complete", "operation": id, "result": {"ok": true}}))
        .await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["code"], "database_unavailable", "{r}");
    watcher
        .recv_where(|f| f["event"] == "operation.log" && f["data"]["offset"] == 20)
        .await;
    // The terminal event waits for its write: nothing about the end has gone out yet.
    let pending = watcher.drain().await;
    assert!(
        pending.iter().all(|f| f["event"] != "operation.completed"),
        "{pending:?}"
    );

    pg_admin(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"));
    let end = watcher
        .recv_where(|f| f["event"] == "operation.completed")
        .await;
    assert_eq!(end["data"]["result"], json!({"ok": true}));
    // Everything reached the database.
    let store = switchyard::db::Database::connect(
        &app.db.url,
        1,
        Duration::from_secs(2),
        Default::default(),
    )
    .unwrap();
    let (row, lines) = store
        .run({
            let id = id.clone();
            move |c| {
                Ok((
                    switchyard::db::operations::get(c, &id)?,
                    switchyard::db::operations::logs_after(c, &id, 0, 100)?,
                ))
            }
        })
        .await
        .unwrap();
    let row = row.unwrap();
    assert_eq!(row.status, "completed");
    assert_eq!(row.log_offset, 20);
    assert_eq!(lines.len(), 20);
    assert_eq!(
        app.metric("switchyard_operation_log_lines_lost_total")
            .await,
        0
    );
}

#[tokio::test]
async fn a_graceful_shutdown_writes_what_operations_had_not_written_yet() {
    let dir = tempfile::tempdir().unwrap();
    let url = switchyard::config::DatabaseUrl::Sqlite(
        dir.path().join("flush.db").to_string_lossy().into_owned(),
    );
    let kinds = Kinds::new();
    let boot = |url: switchyard::config::DatabaseUrl, flush: Duration| {
        let file = kinds.file();
        spawn_app_with(Backend::Sqlite, move |s| {
            s.database = url;
            s.operations_file = Some(file);
            // Nothing would be written before the shutdown on its own.
            s.operation_flush_interval = flush;
        })
    };
    let app = boot(url.clone(), Duration::from_secs(3600)).await;
    let op = start(&app, json!({"kind": "convert", "target": "flush"})).await;
    let id = op["id"].as_str().unwrap().to_string();
    let lines: Vec<String> = (1..=20).map(|n| format!("line {n}")).collect();
    app.post(
        &format!("/api/operations/{id}/logs"),
        json!({"lines": lines}),
    )
    .await;
    app.post(
        &format!("/api/operations/{id}/progress"),
        json!({"progress": 55, "stage": "encode"}),
    )
    .await;
    app.shutdown().await;

    let app = boot(url.clone(), Duration::from_millis(50)).await;
    let (_, st) = app.get(&format!("/api/operations/{id}")).await;
    assert_eq!(
        (st["log_offset"].as_u64(), st["progress"].as_f64()),
        (Some(20), Some(55.0)),
        "{st}"
    );
    assert_eq!(st["stage"], "encode");
    let (_, logs) = app.get(&format!("/api/operations/{id}/logs?after=0")).await;
    assert_eq!(logs["lines"].as_array().unwrap().len(), 20);
}
