//! Operations across nodes (cluster mode, issue #16): an operation is owned by one node under a
//! lease with a fencing token; a dead owner's operations are taken over (command ones end
//! `interrupted`, external ones are adopted with their log continuing); a stalled owner that
//! lost its lease writes nothing; cancels and worker reports reach the owner from any node;
//! dedupe holds across nodes. Nodes run in this process on one PostgreSQL database and one
//! Redis key prefix, with a short lease (1.5 s, heartbeat 300 ms) so takeovers are quick.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use serde_json::{json, Value};
use switchyard::config::{DatabaseUrl, Settings};

use crate::helpers::*;
use crate::operations::process_gone;

const LEASE: Duration = Duration::from_millis(1_500);
const HEARTBEAT: Duration = Duration::from_millis(300);
/// What the issue allows for a takeover.
const TAKEOVER: Duration = Duration::from_secs(20);

/// Nodes on one database and one Redis prefix, with the kinds below.
struct Nodes {
    db: TestDb,
    prefix: String,
    dir: tempfile::TempDir,
    nodes: Vec<Option<TestApp>>,
}

impl Nodes {
    async fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // `tick`: writes its pid, then a line every 100 ms until killed.
        let toml = format!(
            r#"
[kinds.tick]
runner = "command"
command = ["/bin/sh", "-c", 'echo $$ > {dir}/{{target}}.pid; while true; do echo tick; sleep 0.1; done']
target_pattern = "[a-z0-9-]+"

[kinds.ext]
runner = "external"
stall_timeout_secs = 300

[kinds.tick1]
runner = "command"
concurrency = 1
command = ["/bin/sh", "-c", 'echo $$ > {dir}/{{target}}.pid; while true; do echo tick; sleep 0.1; done']
target_pattern = "[a-z0-9-]+"
"#,
            dir = dir.path().display()
        );
        std::fs::write(dir.path().join("operations.toml"), toml).expect("write kinds");
        let mut nodes = Self {
            db: TestDb::new(Backend::Postgres),
            prefix: format!("sy-ops-{}", uuid::Uuid::new_v4().simple()),
            dir,
            nodes: Vec::new(),
        };
        for _ in 0..n {
            nodes.add(None).await;
        }
        nodes
    }

    fn settings(&self) -> Settings {
        let mut s = test_settings(&self.db);
        s.redis_url = Some("redis://127.0.0.1:6379".into());
        s.redis_prefix = self.prefix.clone();
        s.operations_file = Some(self.dir.path().join("operations.toml"));
        s.operation_lease = LEASE;
        s.operation_heartbeat = HEARTBEAT;
        s
    }

    /// Adds a node; `pause` is its heartbeat's test hook.
    async fn add(&mut self, pause: Option<Arc<AtomicBool>>) {
        let mut s = self.settings();
        s.operation_heartbeat_paused = pause;
        let node = spawn_app_on(TestDb::shared(&self.db), s).await;
        self.nodes.push(Some(node));
    }

    fn node(&self, i: usize) -> &TestApp {
        self.nodes[i].as_ref().expect("node running")
    }

    /// Stops node `i` at once, as a crash of its server would (no graceful shutdown: nothing
    /// written, nothing announced by it).
    fn drop_node(&mut self, i: usize) {
        drop(self.nodes[i].take());
    }

    fn pid_file(&self, target: &str) -> PathBuf {
        self.dir.path().join(format!("{target}.pid"))
    }

    async fn pid(&self, target: &str) -> i32 {
        let p = self.pid_file(target);
        eventually("the command to write its pid", || {
            let p = p.clone();
            async move {
                std::fs::read_to_string(&p)
                    .map(|s| !s.trim().is_empty())
                    .unwrap_or(false)
            }
        })
        .await;
        std::fs::read_to_string(&p)
            .expect("pid file")
            .trim()
            .parse()
            .expect("a pid")
    }

    /// The row's owner, fence, status and log offset, straight from the database.
    fn row(&self, id: &str) -> (Option<String>, i64, String, i64) {
        let DatabaseUrl::Postgres(url) = &self.db.url else {
            panic!("postgres")
        };
        let mut c = PgConnection::establish(url).expect("connect");
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            owner: Option<String>,
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            fence: i64,
            #[diesel(sql_type = diesel::sql_types::Text)]
            status: String,
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            log_offset: i64,
        }
        let r: Row = diesel::sql_query(
            "SELECT owner, fence, status, log_offset FROM operations WHERE id = $1",
        )
        .bind::<diesel::sql_types::Text, _>(id)
        .get_result(&mut c)
        .expect("row");
        (r.owner, r.fence, r.status, r.log_offset)
    }

    /// A connection of the test's own to the nodes' database.
    fn pg(&self) -> PgConnection {
        let DatabaseUrl::Postgres(url) = &self.db.url else {
            panic!("postgres")
        };
        PgConnection::establish(url).expect("connect")
    }

    /// The highest log line stored for `id`.
    fn last_line(&self, id: &str) -> i64 {
        let DatabaseUrl::Postgres(url) = &self.db.url else {
            panic!("postgres")
        };
        let mut c = PgConnection::establish(url).expect("connect");
        #[derive(QueryableByName)]
        struct Max {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            seq: i64,
        }
        let m: Max = diesel::sql_query(
            "SELECT COALESCE(MAX(seq), 0) AS seq FROM operation_logs WHERE operation_id = $1",
        )
        .bind::<diesel::sql_types::Text, _>(id)
        .get_result(&mut c)
        .expect("max seq");
        m.seq
    }

    async fn stop(mut self) {
        for node in self.nodes.drain(..).flatten() {
            node.shutdown().await;
        }
        forget_redis_prefix(&self.prefix).await;
    }
}

async fn start(node: &TestApp, kind: &str, target: &str) -> Value {
    let (s, op) = node
        .post("/api/operations", json!({"kind": kind, "target": target}))
        .await;
    assert_eq!(s, 202, "{op}");
    op
}

fn id_of(op: &Value) -> String {
    op["id"].as_str().expect("id").to_string()
}

/// Waits for the next terminal event of `operation:<id>` on `ws`.
async fn terminal_event(ws: &mut WsClient, id: &str) -> (String, Value) {
    loop {
        let f = ws.recv().await;
        if f["room"] != json!(format!("operation:{id}")) || f["type"] != "message" {
            continue;
        }
        let event = f["event"].as_str().unwrap_or_default().to_string();
        if matches!(
            event.as_str(),
            "operation.completed" | "operation.failed" | "operation.cancelled"
        ) {
            return (event, f["data"].clone());
        }
    }
}

/// The next terminal event of `operation:<id>` on `ws`, within [`TAKEOVER`] (`what` says what
/// did not happen in time), is the takeover's `interrupted` failure.
async fn expect_interrupted(ws: &mut WsClient, id: &str, what: &str) {
    let (event, data) = tokio::time::timeout(TAKEOVER, terminal_event(ws, id))
        .await
        .expect(what);
    assert_eq!(
        (event.as_str(), data["error"]["code"].as_str()),
        ("operation.failed", Some("interrupted")),
        "{data}"
    );
}

/// No terminal event of `operation:<id>` within `quiet` (the bounded wait for an absence).
async fn no_more_terminal_events(ws: &mut WsClient, id: &str, quiet: Duration) {
    if let Ok((event, data)) = tokio::time::timeout(quiet, terminal_event(ws, id)).await {
        panic!("a second terminal event: {event} {data}");
    }
}

/// A watcher of `operation:<id>` on `node`.
async fn watcher(node: &TestApp, id: &str) -> WsClient {
    let mut ws = node.ws_as("watcher").await;
    ws.join(&format!("operation:{id}")).await;
    ws
}

#[actix_web::test]
async fn a_dead_owners_command_ends_interrupted_once_and_its_child_dies_with_it() {
    let mut nodes = Nodes::start(2).await;
    let op = start(nodes.node(0), "tick", "job-a").await;
    let id = id_of(&op);
    let child = nodes.pid("job-a").await;
    let mut watching = watcher(nodes.node(1), &id).await;
    let (owner_before, fence_before, ..) = nodes.row(&id);
    assert!(owner_before.is_some(), "the starting node owns it");
    assert_eq!(fence_before, 1);

    let stopped = Instant::now();
    nodes.drop_node(0);
    let (event, data) = tokio::time::timeout(TAKEOVER, terminal_event(&mut watching, &id))
        .await
        .expect("a terminal event within 20 s");
    assert_eq!(event, "operation.failed", "{data}");
    assert_eq!(data["error"]["code"], "interrupted", "{data}");
    eprintln!("taken over and interrupted after {:?}", stopped.elapsed());
    let (owner, fence, status, _) = nodes.row(&id);
    assert_eq!(status, "failed");
    assert_eq!(fence, 2, "one takeover, one new fence");
    assert_ne!(owner, owner_before);
    eventually("the dead owner's command to die with it", || async move {
        process_gone(child)
    })
    .await;
    no_more_terminal_events(&mut watching, &id, Duration::from_secs(2)).await;
    nodes.stop().await;
}

#[actix_web::test]
async fn a_dead_owners_external_operation_is_adopted_and_its_log_continues_without_gap() {
    let mut nodes = Nodes::start(2).await;
    let op = start(nodes.node(0), "ext", "file-1").await;
    let id = id_of(&op);
    let logs = format!("/api/operations/{id}/logs");
    for i in 1..=3 {
        let (s, b) = nodes
            .node(0)
            .post(&logs, json!({"lines": [format!("line {i}")]}))
            .await;
        assert_eq!(s, 200, "{b}");
    }
    nodes.drop_node(0);
    // The worker goes on reporting to the node it can reach; once that node has adopted the
    // operation, the report is accepted and numbered after the stored ones.
    let started = Instant::now();
    let mut next = 4;
    loop {
        let (s, b) = nodes
            .node(1)
            .post(&logs, json!({"lines": [format!("line {next}")]}))
            .await;
        if s == 200 {
            assert_eq!(b["log_offset"], next, "{b}");
            break;
        }
        assert_eq!((s, b["error"].as_str()), (503, Some("unavailable")), "{b}");
        assert!(started.elapsed() < TAKEOVER, "adopted within 20 s");
    }
    eprintln!("adopted after {:?}", started.elapsed());
    next += 1;
    let (s, b) = nodes
        .node(1)
        .post(&logs, json!({"lines": [format!("line {next}")]}))
        .await;
    assert_eq!((s, b["log_offset"].as_i64()), (200, Some(next)), "{b}");
    let (s, _) = nodes
        .node(1)
        .post(&format!("/api/operations/{id}/complete"), json!({}))
        .await;
    assert_eq!(s, 200);
    let (s, page) = nodes.node(1).get(&logs).await;
    assert_eq!(s, 200);
    let got: Vec<(u64, String)> = page["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| {
            (
                l["offset"].as_u64().expect("offset"),
                l["line"].as_str().expect("line").to_string(),
            )
        })
        .collect();
    let want: Vec<(u64, String)> = (1..=next as u64)
        .map(|i| (i, format!("line {i}")))
        .collect();
    assert_eq!(got, want, "no gap, no duplicate across the takeover");
    nodes.stop().await;
}

#[actix_web::test]
async fn a_stalled_owner_that_lost_its_lease_writes_nothing_and_kills_its_command() {
    // Node 0's heartbeat is paused through the test hook (a stalled owner whose process still
    // runs: its command keeps printing and its actor keeps trying to write).
    let pause = Arc::new(AtomicBool::new(false));
    let mut nodes = Nodes::start(0).await;
    nodes.add(Some(pause.clone())).await;
    nodes.add(None).await;
    let op = start(nodes.node(0), "tick", "stalled").await;
    let id = id_of(&op);
    let child = nodes.pid("stalled").await;
    eventually("the owner to store some of its lines", || {
        let n = nodes.last_line(&id);
        async move { n > 0 }
    })
    .await;
    let mut watching = watcher(nodes.node(1), &id).await;
    pause.store(true, Ordering::SeqCst);
    expect_interrupted(&mut watching, &id, "taken over within 20 s").await;
    let after_takeover = nodes.row(&id);
    let lines_at_takeover = nodes.last_line(&id);
    assert_eq!(after_takeover.2, "failed");
    assert_eq!(after_takeover.1, 2);
    // The stalled owner's next write is fenced out: it stops the operation and its command.
    eventually("the stalled owner to kill its command", || async move {
        process_gone(child)
    })
    .await;
    pause.store(false, Ordering::SeqCst);
    // Its heartbeat runs again: still nothing of it reaches the row or the log.
    tokio::time::sleep(HEARTBEAT * 3).await;
    assert_eq!(
        nodes.row(&id),
        after_takeover,
        "the old owner wrote nothing"
    );
    assert_eq!(
        nodes.last_line(&id),
        lines_at_takeover,
        "no line after the takeover"
    );
    no_more_terminal_events(&mut watching, &id, Duration::from_secs(1)).await;
    nodes.stop().await;
}

#[actix_web::test]
async fn a_cancel_on_another_node_reaches_the_owner_within_a_second() {
    let nodes = Nodes::start(3).await;
    let op = start(nodes.node(0), "ext", "to-cancel").await;
    let id = id_of(&op);
    let mut watching = watcher(nodes.node(1), &id).await;
    let asked = Instant::now();
    let (s, b) = nodes
        .node(2)
        .post(&format!("/api/operations/{id}/cancel"), json!({}))
        .await;
    let took = asked.elapsed();
    assert_eq!((s, b["status"].as_str()), (202, Some("cancelling")), "{b}");
    assert!(took < Duration::from_secs(1), "cancel took {took:?}");
    // The owner tells the worker through the operation's room, seen on every node.
    loop {
        let f = watching.recv().await;
        if f["event"] == "operation.cancel" {
            break;
        }
    }
    // A cancel of a finished operation, on a node that never ran it, says so.
    let (s, _) = nodes
        .node(0)
        .post(&format!("/api/operations/{id}/complete"), json!({}))
        .await;
    assert!(s == 200 || s == 409, "{s}");
    eventually("the operation to finish", || {
        let st = nodes.row(&id).2;
        async move { st != "cancelling" && st != "running" && st != "queued" }
    })
    .await;
    let asked = Instant::now();
    let (s, b) = nodes
        .node(2)
        .post(&format!("/api/operations/{id}/cancel"), json!({}))
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (409, Some("operation_finished")),
        "{b}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "answered from the database at once"
    );
    nodes.stop().await;
}

#[actix_web::test]
async fn worker_reports_to_any_node_reach_the_owner_in_order() {
    let nodes = Nodes::start(3).await;
    let op = start(nodes.node(0), "ext", "spread").await;
    let id = id_of(&op);
    let logs = format!("/api/operations/{id}/logs");
    for i in 1..=12u64 {
        let node = nodes.node((i % 3) as usize);
        let (s, b) = node
            .post(&logs, json!({"lines": [format!("line {i}")]}))
            .await;
        assert_eq!((s, b["log_offset"].as_u64()), (200, Some(i)), "{b}");
    }
    let (s, b) = nodes
        .node(2)
        .post(
            &format!("/api/operations/{id}/progress"),
            json!({"progress": 50}),
        )
        .await;
    assert_eq!((s, b["progress"].as_f64()), (200, Some(50.0)), "{b}");
    let (s, page) = nodes.node(1).get(&logs).await;
    assert_eq!(s, 200);
    let lines: Vec<String> = page["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| l["line"].as_str().expect("line").to_string())
        .collect();
    assert_eq!(
        lines,
        (1..=12).map(|i| format!("line {i}")).collect::<Vec<_>>()
    );
    nodes.stop().await;
}

#[actix_web::test]
async fn twelve_concurrent_starts_over_three_nodes_give_one_202_and_eleven_409s_naming_it() {
    let nodes = Nodes::start(3).await;
    let starts = (0..12).map(|i| {
        nodes
            .node(i % 3)
            .post("/api/operations", json!({"kind": "ext", "target": "same"}))
    });
    let answers = futures_util::future::join_all(starts).await;
    let won: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 202)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(won.len(), 1, "{answers:?}");
    let winner = id_of(won[0]);
    for (s, b) in answers.iter().filter(|(s, _)| *s != 202) {
        assert_eq!(*s, 409, "{b}");
        assert_eq!(b["error"], "duplicate_operation", "{b}");
        assert!(
            b.to_string().contains(&winner),
            "the refusal names the winner: {b}"
        );
    }
    nodes.stop().await;
}

#[actix_web::test]
async fn a_kinds_concurrency_limit_holds_across_nodes() {
    let nodes = Nodes::start(2).await;
    // `tick1` allows one at a time, cluster-wide.
    let first = start(nodes.node(0), "tick1", "first").await;
    let first_id = id_of(&first);
    let first_pid = nodes.pid("first").await;
    let second = start(nodes.node(1), "tick1", "second").await;
    let second_id = id_of(&second);
    assert_eq!(second["status"], "queued", "{second}");
    // Several heartbeats of node 1 (each tries for a slot): the second does not start while
    // the first runs on the other node. (Without the cluster-wide count it starts at once.)
    let quiet = Instant::now();
    while quiet.elapsed() < HEARTBEAT * 5 {
        assert!(
            !nodes.pid_file("second").exists(),
            "the second ran while the first held the kind's only slot"
        );
        assert_eq!(nodes.row(&second_id).2, "queued");
        tokio::time::sleep(HEARTBEAT / 2).await;
    }
    // The first ends (cancelled, from the node that waits): the slot frees across the cluster.
    let (s, b) = nodes
        .node(1)
        .post(&format!("/api/operations/{first_id}/cancel"), json!({}))
        .await;
    assert_eq!(s, 202, "{b}");
    eventually("the first's command to end", || async move {
        process_gone(first_pid)
    })
    .await;
    let second_pid = nodes.pid("second").await;
    assert!(!process_gone(second_pid));
    eventually("the second to run", || {
        let st = nodes.row(&second_id).2;
        async move { st == "running" }
    })
    .await;
    nodes.stop().await;
}

// ---- the owner as a real process, killed with SIGKILL -----------------------------------------

/// The `switchyard` binary as a cluster node on `nodes`' database, prefix and kinds; killed
/// with SIGKILL when dropped.
struct Process {
    child: Option<std::process::Child>,
    port: u16,
}

impl Process {
    async fn start(nodes: &Nodes) -> Self {
        use std::io::{BufRead, BufReader};
        let DatabaseUrl::Postgres(url) = &nodes.db.url else {
            panic!("postgres")
        };
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.env("SWITCHYARD_PORT", "0")
            .env("DATABASE_URL", url)
            .env("SWITCHYARD_REDIS_URL", "redis://127.0.0.1:6379")
            .env("SWITCHYARD_REDIS_PREFIX", &nodes.prefix)
            .env(
                "SWITCHYARD_OPERATIONS_FILE",
                nodes.dir.path().join("operations.toml"),
            )
            .env(
                "SWITCHYARD_OPERATION_LEASE_MS",
                LEASE.as_millis().to_string(),
            )
            .env(
                "SWITCHYARD_OPERATION_HEARTBEAT_MS",
                HEARTBEAT.as_millis().to_string(),
            )
            .env("RUST_LOG", "info")
            .env_remove("SWITCHYARD_JWT_SECRET")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn switchyard");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the port, then keeps draining so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
                    if let Some(port) = rest.split_whitespace().next().and_then(|p| p.parse().ok())
                    {
                        let _ = tx.send(port);
                    }
                }
            }
        });
        let port = tokio::task::spawn_blocking(move || rx.recv_timeout(WAIT))
            .await
            .expect("join")
            .expect("the server printed its port");
        Self {
            child: Some(child),
            port,
        }
    }

    async fn start_operation(&self, kind: &str, target: &str) -> Value {
        let res = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/api/operations", self.port))
            .json(&json!({"kind": kind, "target": target}))
            .send()
            .await
            .expect("POST");
        assert_eq!(res.status().as_u16(), 202);
        res.json().await.expect("json")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

#[actix_web::test]
async fn an_owner_killed_with_sigkill_is_taken_over_and_leaves_no_child() {
    let nodes = Nodes::start(1).await;
    let mut owner = Process::start(&nodes).await;
    let op = owner.start_operation("tick", "killed").await;
    let id = id_of(&op);
    let child = nodes.pid("killed").await;
    let mut watching = watcher(nodes.node(0), &id).await;
    let killed = Instant::now();
    owner.kill();
    eventually("the killed owner's command to die with it", || async move {
        process_gone(child)
    })
    .await;
    expect_interrupted(&mut watching, &id, "a terminal event within 20 s").await;
    eprintln!("taken over after {:?}", killed.elapsed());
    assert_eq!(nodes.row(&id).1, 2, "one takeover");
    no_more_terminal_events(&mut watching, &id, Duration::from_secs(2)).await;
    nodes.stop().await;
}

/// One node in this process, and an owner in a process of its own running a `tick` operation
/// that has stored some of its lines, watched from the node: the set-up of the tests that stop
/// the owner.
struct Ticking {
    nodes: Nodes,
    owner: Process,
    id: String,
    /// The operation's command.
    child: i32,
    watching: WsClient,
}

impl Ticking {
    async fn start(target: &str) -> Self {
        let nodes = Nodes::start(1).await;
        let owner = Process::start(&nodes).await;
        let op = owner.start_operation("tick", target).await;
        let id = id_of(&op);
        let child = nodes.pid(target).await;
        eventually("the owner to store some of its lines", || {
            let n = nodes.last_line(&id);
            async move { n > 0 }
        })
        .await;
        let watching = watcher(nodes.node(0), &id).await;
        Self {
            nodes,
            owner,
            id,
            child,
            watching,
        }
    }
}

#[actix_web::test]
async fn an_owner_stopped_with_sigstop_past_its_lease_writes_nothing_when_it_wakes() {
    let Ticking {
        nodes,
        mut owner,
        id,
        child,
        mut watching,
    } = Ticking::start("frozen").await;
    let pid = owner.child.as_ref().expect("running").id() as i32;
    // SAFETY: signalling a process this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    expect_interrupted(&mut watching, &id, "taken over within 20 s").await;
    let after_takeover = nodes.row(&id);
    let lines_at_takeover = nodes.last_line(&id);
    assert_eq!(after_takeover.1, 2, "one takeover");
    // Its command ran on while the server was stopped (a stopped server cannot kill it)...
    assert!(!process_gone(child));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // ...and dies once the server wakes and finds its write fenced out.
    eventually("the woken owner to kill its command", || async move {
        process_gone(child)
    })
    .await;
    // A few of its heartbeats later, nothing of it has reached the row or the log.
    tokio::time::sleep(HEARTBEAT * 3).await;
    assert_eq!(
        nodes.row(&id),
        after_takeover,
        "the woken owner wrote nothing"
    );
    assert_eq!(nodes.last_line(&id), lines_at_takeover);
    no_more_terminal_events(&mut watching, &id, Duration::from_secs(1)).await;
    owner.kill();
    nodes.stop().await;
}

/// The owner is stopped between the statements of a write: its fenced UPDATE holds the row's
/// lock in a transaction it cannot finish. The takeover claims with `SKIP LOCKED`, so without
/// the database's `idle_in_transaction_session_timeout` (a heartbeat) it passed this
/// operation over for as long as the owner stayed stopped. The test holds `operation_logs`
/// so the owner's write is caught after its UPDATE, stops the owner there, then lets go.
#[actix_web::test]
async fn an_owner_stopped_inside_its_write_transaction_is_still_taken_over() {
    use diesel::connection::SimpleConnection;
    let Ticking {
        nodes,
        mut owner,
        id,
        child,
        mut watching,
    } = Ticking::start("mid-write").await;

    let mut holder = nodes.pg();
    holder
        .batch_execute("BEGIN; LOCK TABLE operation_logs IN SHARE MODE")
        .expect("lock operation_logs");
    let mut observer = nodes.pg();
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    // The owner's INSERT of its lines waits on the lock, its UPDATE of the row already done.
    eventually("the owner's write to wait on operation_logs", || {
        let waiting: Count = diesel::sql_query(
            "SELECT COUNT(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock' \
             AND query ILIKE 'insert into \"operation_logs\"%'",
        )
        .get_result(&mut observer)
        .expect("pg_stat_activity");
        async move { waiting.n > 0 }
    })
    .await;
    let pid = owner.child.as_ref().expect("running").id() as i32;
    // SAFETY: signalling a process this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // The INSERT goes through; the transaction is left idle, holding the row, its owner stopped.
    holder.batch_execute("COMMIT").expect("unlock");
    let stopped = Instant::now();
    expect_interrupted(
        &mut watching,
        &id,
        "taken over within 20 s although the owner holds an open transaction",
    )
    .await;
    eprintln!("taken over {:?} after the stop", stopped.elapsed());
    let after_takeover = nodes.row(&id);
    assert_eq!(after_takeover.1, 2, "one takeover");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // Its session ended by the database, the woken owner's retried write meets the new fence.
    eventually("the woken owner to kill its command", || async move {
        process_gone(child)
    })
    .await;
    assert_eq!(
        nodes.row(&id),
        after_takeover,
        "the woken owner wrote nothing"
    );
    no_more_terminal_events(&mut watching, &id, Duration::from_secs(1)).await;
    owner.kill();
    nodes.stop().await;
}
