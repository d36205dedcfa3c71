//! The crash suite: the real `switchyard` binary killed with SIGKILL at random moments while
//! command and external operations run and workers report over REST and `/ws`, then restarted
//! on the same database. What must hold across every kill:
//!
//! * no operation runs twice: each command appends `<pid> <target>` to a marker file when it
//!   starts, and every target (one per operation) appears there at most once — also counting
//!   the children of the killed server, which must die with it;
//! * nothing acknowledged is lost: every log line, progress report and activity that got a 2xx
//!   (or a `/ws` reply to a report with an `id`) is in the database after the restart.
//!
//! The number of kills is `SWITCHYARD_CRASH_KILLS` (default 50, half on SQLite and half on
//! PostgreSQL); the random moments come from `SWITCHYARD_CRASH_SEED` (printed, so a failing
//! run can be repeated).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use switchyard::config::DatabaseUrl;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;
use crate::operations::process_gone;

// ---- the server as a child process ---------------------------------------------------------

/// A database, an operations file and the marker file its commands append to.
struct Fixture {
    dir: tempfile::TempDir,
    db: TestDb,
}

impl Fixture {
    fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("marker");
        let toml = format!(
            r#"
# Appends "<pid> <target>" when it starts, then becomes the sleep (same pid).
[kinds.record]
runner = "command"
command = ["/bin/sh", "-c", 'echo "$$ {{target}}" >> {marker}; exec sleep {{params.secs}}']
target_pattern = "[a-z0-9-]+"
[kinds.record.params.secs]
pattern = "[0-9]{{1,2}}"
default = "1"

[kinds.ext]
runner = "external"
stall_timeout_secs = 300
stages = [{{ name = "encode", from = 0, to = 100 }}]
"#,
            marker = marker.display()
        );
        std::fs::write(dir.path().join("operations.toml"), toml).unwrap();
        Self {
            dir,
            db: TestDb::new(backend),
        }
    }

    fn database_url(&self) -> String {
        match &self.db.url {
            DatabaseUrl::Sqlite(path) => path.clone(),
            DatabaseUrl::Postgres(url) => url.clone(),
        }
    }

    /// `(pid, target)` for every command start so far.
    fn started(&self) -> Vec<(i32, String)> {
        std::fs::read_to_string(self.dir.path().join("marker"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (pid, target) = l.split_once(' ')?;
                Some((pid.parse().ok()?, target.to_string()))
            })
            .collect()
    }

    fn starts_of(&self, target: &str) -> usize {
        self.started().iter().filter(|(_, t)| t == target).count()
    }
}

/// The binary, serving on a free port; killed with SIGKILL when dropped.
struct Server {
    child: Option<Child>,
    port: u16,
    http: reqwest::Client,
}

impl Server {
    async fn start(fx: &Fixture, env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.env("SWITCHYARD_PORT", "0")
            .env("DATABASE_URL", fx.database_url())
            .env(
                "SWITCHYARD_OPERATIONS_FILE",
                fx.dir.path().join("operations.toml"),
            )
            .env("RUST_LOG", "info")
            .env_remove("SWITCHYARD_JWT_SECRET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn switchyard");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let echo = std::env::var_os("SWITCHYARD_CRASH_LOG").is_some();
        // Reads the port, then keeps draining so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("[server] {line}");
                }
                if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
                    if let Some(port) = rest.split_whitespace().next().and_then(|p| p.parse().ok())
                    {
                        let _ = tx.send(port);
                    }
                }
            }
        });
        let port: u16 = tokio::task::spawn_blocking(move || rx.recv_timeout(WAIT))
            .await
            .unwrap()
            .expect("the server printed its port");
        Server {
            child: Some(child),
            port,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        post(&self.http, &self.url(path), body)
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let res = self.http.get(self.url(path)).send().await.expect("GET");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// SIGKILL, then reap.
    async fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            tokio::task::spawn_blocking(move || child.wait())
                .await
                .unwrap()
                .expect("reaped");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn post(http: &reqwest::Client, url: &str, body: Value) -> Result<(u16, Value), String> {
    let res = http
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let body = res.json().await.map_err(|e| e.to_string())?;
    Ok((status, body))
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    eventually(what, || std::future::ready(check())).await;
}

// ---- one crash, looked at closely ----------------------------------------------------------

/// A command answered 202 whose server is killed (SIGKILL) right after the command started:
/// the command dies with the server, and the restart marks the operation interrupted instead
/// of running it again. Failed before: the database still said `queued` (the `running` write
/// was up to a flush interval away), so the restart ran the command a second time while the
/// first one, orphaned, was still running.
async fn a_started_command_is_never_run_again_after_a_kill(backend: Backend) {
    let fx = Fixture::new(backend);
    let server = Server::start(&fx, &[]).await;
    let (s, op) = server
        .post(
            "/api/operations",
            json!({"kind": "record", "target": "once", "params": {"secs": "30"}}),
        )
        .await;
    assert_eq!(s, 202, "{op}");
    // Its start is written before the answer.
    assert_eq!(op["status"], "running", "{op}");
    assert!(op["started_at"].is_string(), "{op}");
    let id = op["id"].as_str().unwrap().to_string();
    wait_until("the command to start", || fx.starts_of("once") == 1).await;
    server.kill().await;
    let pid = fx.started()[0].0;

    let server = Server::start(&fx, &[]).await;
    let path = format!("/api/operations/{id}");
    let deadline = Instant::now() + WAIT;
    let end = loop {
        let (_, st) = server.get(&path).await;
        if st["finished_at"].is_string() || fx.starts_of("once") > 1 {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the operation neither ended nor ran again: {st}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(
        fx.starts_of("once"),
        1,
        "the command ran again after the restart"
    );
    assert_eq!(end["status"], "failed", "{end}");
    assert_eq!(end["error"]["code"], "interrupted", "{end}");
    wait_until("the killed server's command to die with it", || {
        process_gone(pid)
    })
    .await;
    server.kill().await;
}

#[tokio::test]
async fn a_started_command_is_never_run_again_after_a_kill_on_sqlite() {
    a_started_command_is_never_run_again_after_a_kill(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_started_command_is_never_run_again_after_a_kill_on_postgres() {
    a_started_command_is_never_run_again_after_a_kill(Backend::Postgres).await;
}

/// Reports that got a 2xx (or a `/ws` reply) are stored when the answer goes out: with the
/// periodic write pushed out to a minute, a SIGKILL right after them loses none. Failed before:
/// acknowledged reports waited in memory for the next periodic write, so every one was lost.
async fn acknowledged_reports_survive_a_kill(backend: Backend) {
    let fx = Fixture::new(backend);
    let server = Server::start(&fx, &[("SWITCHYARD_OPERATION_FLUSH_MS", "60000")]).await;
    let (s, op) = server
        .post("/api/operations", json!({"kind": "ext", "target": "acked"}))
        .await;
    assert_eq!(s, 202, "{op}");
    let id = op["id"].as_str().unwrap().to_string();
    let mut expected = Vec::new();
    for batch in 0..50 {
        let lines: Vec<String> = (0..4).map(|i| format!("rest {batch}.{i}")).collect();
        let (s, r) = server
            .post(
                &format!("/api/operations/{id}/logs"),
                json!({ "lines": lines }),
            )
            .await;
        assert_eq!(s, 200, "{r}");
        expected.extend(lines);
    }
    let (s, r) = server
        .post(
            &format!("/api/operations/{id}/progress"),
            json!({"progress": 55, "stage": "encode"}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let mut ws = WsClient::connect(&format!("ws://127.0.0.1:{}/ws", server.port), None).await;
    for n in 0..10 {
        let line = format!("ws {n}");
        let r = ws
            .request(json!({"type": "operation.log", "operation": id, "lines": [line.clone()]}))
            .await;
        assert_eq!(r["type"], "operation", "{r}");
        expected.push(line);
    }
    let (s, activity) = server
        .post(
            "/api/activities",
            json!({"actor": "crash", "verb": "acked", "object": "one"}),
        )
        .await;
    assert_eq!(s, 201, "{activity}");
    ws.abort();
    server.kill().await;

    let server = Server::start(&fx, &[]).await;
    let (_, st) = server.get(&format!("/api/operations/{id}")).await;
    assert_eq!(
        (st["log_offset"].as_u64(), st["progress"].as_f64()),
        (Some(expected.len() as u64), Some(55.0)),
        "{st}"
    );
    assert_eq!(st["stage"], "encode");
    let (_, logs) = server
        .get(&format!("/api/operations/{id}/logs?after=0&limit=5000"))
        .await;
    let stored: Vec<&str> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert_eq!(stored, expected);
    let (_, page) = server.get("/api/activities?limit=10").await;
    assert!(
        page["activities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == activity["id"]),
        "{page}"
    );
    server.kill().await;
}

#[tokio::test]
async fn acknowledged_reports_survive_a_kill_on_sqlite() {
    acknowledged_reports_survive_a_kill(Backend::Sqlite).await;
}

#[tokio::test]
async fn acknowledged_reports_survive_a_kill_on_postgres() {
    acknowledged_reports_survive_a_kill(Backend::Postgres).await;
}

// ---- the suite: many kills at random moments -----------------------------------------------

/// What the server acknowledged, across all lives.
#[derive(Default)]
struct Ledger {
    /// Command operations answered 202: id → target.
    commands: BTreeMap<String, String>,
    /// Log lines acknowledged, per operation, in the order acknowledged.
    lines: HashMap<String, Vec<String>>,
    /// The highest progress acknowledged, per operation.
    progress: HashMap<String, f64>,
    /// Operations whose completion was acknowledged.
    completed: Vec<String>,
    /// Activities answered 201.
    activities: Vec<i64>,
    ws_acks: usize,
    rest_acks: usize,
}

type Shared = Arc<Mutex<Ledger>>;

fn ledger(shared: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts command operations until the server dies.
async fn command_starter(base: String, life: usize, seed: u64, shared: Shared) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let http = reqwest::Client::new();
    for i in 0.. {
        let target = format!("l{life}-c{i}");
        let secs = rng.random_range(0..=2).to_string();
        let body = json!({"kind": "record", "target": target, "params": {"secs": secs}});
        match post(&http, &format!("{base}/api/operations"), body).await {
            Ok((202, op)) => {
                if let Some(id) = op["id"].as_str() {
                    ledger(&shared).commands.insert(id.to_string(), target);
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
    }
}

/// An external worker reporting over REST: logs, progress, completion, then the next operation.
async fn rest_worker(base: String, name: String, seed: u64, shared: Shared) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let http = reqwest::Client::new();
    for k in 0.. {
        let body = json!({"kind": "ext", "target": format!("{name}-{k}")});
        let id = match post(&http, &format!("{base}/api/operations"), body).await {
            Ok((202, op)) => op["id"].as_str().unwrap_or_default().to_string(),
            Ok(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(_) => return,
        };
        let mut progress = 0.0;
        for r in 0..rng.random_range(5..40) {
            let (path, body) = if rng.random_bool(0.7) {
                let n = rng.random_range(1..=20);
                let lines: Vec<String> = (0..n).map(|i| format!("{name}-{k} {r}.{i}")).collect();
                ("logs", json!({ "lines": lines }))
            } else {
                progress = (progress + rng.random_range(0.5..5.0_f64)).min(99.0);
                ("progress", json!({"progress": progress, "stage": "encode"}))
            };
            match post(
                &http,
                &format!("{base}/api/operations/{id}/{path}"),
                body.clone(),
            )
            .await
            {
                Ok((200, _)) => {
                    let mut l = ledger(&shared);
                    l.rest_acks += 1;
                    if path == "logs" {
                        let lines = body["lines"].as_array().into_iter().flatten();
                        let lines = lines.filter_map(|v| v.as_str().map(str::to_string));
                        l.lines.entry(id.clone()).or_default().extend(lines);
                    } else {
                        let p = l.progress.entry(id.clone()).or_default();
                        *p = p.max(progress);
                    }
                }
                // Refused (a rate limit, say): not acknowledged, so nothing is owed.
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(_) => return,
            }
        }
        match post(
            &http,
            &format!("{base}/api/operations/{id}/complete"),
            json!({}),
        )
        .await
        {
            Ok((200, _)) => ledger(&shared).completed.push(id),
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// An external worker reporting over `/ws`: every other log report carries an `id` (and is
/// owed once answered), the rest are fire-and-forget.
async fn ws_worker(base: String, port: u16, life: usize, shared: Shared) {
    let http = reqwest::Client::new();
    let body = json!({"kind": "ext", "target": format!("l{life}-ws")});
    let id = match post(&http, &format!("{base}/api/operations"), body).await {
        Ok((202, op)) => op["id"].as_str().unwrap_or_default().to_string(),
        _ => return,
    };
    let Ok((mut ws, _)) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws")).await
    else {
        return;
    };
    // Request id → the line it carried.
    let mut pending: HashMap<u64, String> = HashMap::new();
    for n in 0u64.. {
        let line = format!("l{life}-ws {n}");
        let mut frame = json!({"type": "operation.log", "operation": id, "lines": [line.clone()]});
        if n % 2 == 0 {
            frame["id"] = json!(n);
            pending.insert(n, line);
        }
        if ws.send(Message::text(frame.to_string())).await.is_err() {
            return;
        }
        // Read whatever answers have come (without waiting for each: pipelined).
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(
            Duration::from_millis(if n % 8 == 0 { 20 } else { 0 }),
            ws.next(),
        )
        .await
        {
            let Message::Text(t) = msg else { continue };
            let Ok(v) = serde_json::from_str::<Value>(&t) else {
                continue;
            };
            let Some(rid) = v["id"].as_u64() else {
                continue;
            };
            if let Some(line) = pending.remove(&rid) {
                if v["type"] == "operation" {
                    let mut l = ledger(&shared);
                    l.ws_acks += 1;
                    l.lines.entry(id.clone()).or_default().push(line);
                }
            }
        }
    }
}

/// Posts activities until the server dies.
async fn activity_poster(base: String, life: usize, shared: Shared) {
    let http = reqwest::Client::new();
    for i in 0.. {
        let body = json!({"actor": "crash", "verb": "tick", "object": format!("l{life}-{i}")});
        match post(&http, &format!("{base}/api/activities"), body).await {
            Ok((201, a)) => {
                if let Some(id) = a["id"].as_i64() {
                    ledger(&shared).activities.push(id);
                }
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(_) => return,
        }
    }
}

/// Figures of one backend's run (printed through `Debug`).
#[allow(dead_code)]
#[derive(Debug)]
struct Figures {
    kills: usize,
    commands: usize,
    command_starts: usize,
    lines: usize,
    progress: usize,
    activities: usize,
    ws_acks: usize,
    rest_acks: usize,
    elapsed: Duration,
}

async fn kill_repeatedly(backend: Backend, kills: usize, seed: u64) -> Figures {
    let began = Instant::now();
    let fx = Fixture::new(backend);
    let shared: Shared = Arc::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for life in 0..kills {
        let earlier = fx.started().len();
        let server = Server::start(&fx, &[]).await;
        let base = server.url("");
        let tasks = vec![
            tokio::spawn(command_starter(
                base.clone(),
                life,
                rng.random(),
                shared.clone(),
            )),
            tokio::spawn(rest_worker(
                base.clone(),
                format!("l{life}-a"),
                rng.random(),
                shared.clone(),
            )),
            tokio::spawn(rest_worker(
                base.clone(),
                format!("l{life}-b"),
                rng.random(),
                shared.clone(),
            )),
            tokio::spawn(ws_worker(base.clone(), server.port, life, shared.clone())),
            tokio::spawn(activity_poster(base.clone(), life, shared.clone())),
        ];
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..=700))).await;
        server.kill().await;
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        // Every command the killed server started dies with it (no orphan runs on). Only this
        // life's: older pids are long gone and may have been reused (pid_max can be 32,768).
        for (pid, target) in fx.started().into_iter().skip(earlier) {
            wait_until(
                &format!("command {target} (pid {pid}) to die with its server"),
                || process_gone(pid),
            )
            .await;
        }
    }

    // A last life: recovery runs, whatever was still queued may start (once), the rest is
    // marked interrupted; then the database is checked against the ledger.
    let server = Server::start(&fx, &[]).await;
    let l = std::mem::take(&mut *ledger(&shared));
    for id in l.commands.keys() {
        let path = format!("/api/operations/{id}");
        eventually(&format!("command operation {id} to end"), || {
            let (server, path) = (&server, &path);
            async move { server.get(path).await.1["finished_at"].is_string() }
        })
        .await;
    }
    let mut per_target: HashMap<String, usize> = HashMap::new();
    for (_, target) in fx.started() {
        *per_target.entry(target).or_default() += 1;
    }
    let twice: Vec<_> = per_target.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{backend:?}, seed {seed}: run twice: {twice:?}"
    );

    let store = switchyard::db::Database::connect(
        &fx.db.url,
        1,
        Duration::from_secs(5),
        Default::default(),
    )
    .unwrap();
    for (id, acked) in &l.lines {
        let (row, rows) = store
            .run({
                let id = id.clone();
                move |c| {
                    Ok((
                        switchyard::db::operations::get(c, &id)?,
                        switchyard::db::operations::logs_after(c, &id, 0, 1_000_000)?,
                    ))
                }
            })
            .await
            .unwrap();
        let row = row.expect("the operation is stored");
        // Offsets 1..=n without a gap, and the row counts exactly the stored lines.
        let offsets: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        assert_eq!(offsets, (1..=rows.len() as i64).collect::<Vec<_>>());
        assert_eq!(row.log_offset, rows.len() as i64);
        let stored: std::collections::HashSet<&str> =
            rows.iter().map(|r| r.line.as_str()).collect();
        let lost: Vec<_> = acked
            .iter()
            .filter(|a| !stored.contains(a.as_str()))
            .collect();
        assert!(
            lost.is_empty(),
            "{backend:?}, seed {seed}: operation {id} lost {} acknowledged lines, e.g. {:?}",
            lost.len(),
            lost.first()
        );
    }
    for (id, p) in &l.progress {
        let row = store
            .run({
                let id = id.clone();
                move |c| switchyard::db::operations::get(c, &id)
            })
            .await
            .unwrap()
            .expect("stored");
        assert!(
            // JSON floats may come back one unit in the last place off.
            row.progress >= *p - 1e-9 && row.status != "queued",
            "{backend:?}, seed {seed}: operation {id} acknowledged progress {p}, stored {} ({})",
            row.progress,
            row.status
        );
    }
    for id in &l.completed {
        let row = store
            .run({
                let id = id.clone();
                move |c| switchyard::db::operations::get(c, &id)
            })
            .await
            .unwrap()
            .expect("stored");
        assert_eq!(row.status, "completed", "{backend:?}, seed {seed}: {id}");
    }
    let stored: std::collections::HashSet<i64> = store
        .run(|c| switchyard::db::activities::page(c, None, None, 1_000_000))
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    let lost = l.activities.iter().filter(|a| !stored.contains(a)).count();
    assert_eq!(
        lost, 0,
        "{backend:?}, seed {seed}: acknowledged activities lost"
    );
    server.kill().await;
    Figures {
        kills,
        commands: l.commands.len(),
        command_starts: fx.started().len(),
        lines: l.lines.values().map(Vec::len).sum(),
        progress: l.progress.len(),
        activities: l.activities.len(),
        ws_acks: l.ws_acks,
        rest_acks: l.rest_acks,
        elapsed: began.elapsed(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_runs_nothing_twice_and_loses_nothing_acknowledged() {
    let kills: usize = std::env::var("SWITCHYARD_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seed: u64 = std::env::var("SWITCHYARD_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash suite: {kills} kills, SWITCHYARD_CRASH_SEED={seed}");
    let sqlite = kill_repeatedly(Backend::Sqlite, kills.div_ceil(2), seed).await;
    eprintln!("crash suite, SQLite: {sqlite:?}");
    let postgres = kill_repeatedly(Backend::Postgres, kills / 2, seed ^ 0x5eed).await;
    eprintln!("crash suite, PostgreSQL: {postgres:?}");
}
