//! Crash tests: the real `switchyard` binary killed with SIGKILL, then restarted on the same
//! database. Each command of the `record` kind appends `<pid> <target>` to a marker file when it
//! starts (one target per operation), so a command that runs twice shows there.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard::config::DatabaseUrl;

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
