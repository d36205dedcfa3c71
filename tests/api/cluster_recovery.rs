//! Socket.IO connection-state recovery in cluster mode (docs/socketio.md, docs/cluster.md) with
//! the real socket.io-client@4 (tests/js/cluster-recovery.test.mjs): records in Redis, so a
//! socket dropped on one node recovers on another and on its own node restarted. Two nodes in
//! this process on the machine's PostgreSQL and Redis, under a key prefix of their own.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use switchyard::config::Settings;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::*;

/// Two nodes of one cluster with recovery on (a minute).
struct Pair {
    db: TestDb,
    prefix: String,
    a: TestApp,
    b: TestApp,
}

impl Pair {
    async fn start() -> Self {
        let db = TestDb::new(Backend::Postgres);
        let prefix = format!("sy-test-{}", uuid::Uuid::new_v4().simple());
        let a = spawn_app_on(TestDb::shared(&db), settings(&db, &prefix, 0)).await;
        let b = spawn_app_on(TestDb::shared(&db), settings(&db, &prefix, 0)).await;
        Self { db, prefix, a, b }
    }

    async fn stop(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
        forget_redis_prefix(&self.prefix).await;
    }
}

fn settings(db: &TestDb, prefix: &str, port: u16) -> Settings {
    let mut s = test_settings(db);
    s.jwt_secret = Some(SECRET.into());
    s.redis_url = Some("redis://127.0.0.1:6379".into());
    s.redis_prefix = prefix.to_string();
    s.sio_recovery = Duration::from_secs(60);
    s.port = port;
    s
}

fn node(pattern: &str, pair: &Pair) -> tokio::process::Command {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    assert!(
        js.join("node_modules/socket.io-client").is_dir(),
        "tests/js/node_modules is missing: run `npm ci --prefix tests/js` (.ci/run does)"
    );
    let url = |app: &TestApp| format!("http://127.0.0.1:{}", app.port);
    let mut cmd = tokio::process::Command::new("node");
    cmd.args([
        "--test",
        "--test-reporter=spec",
        "--test-name-pattern",
        pattern,
        "cluster-recovery.test.mjs",
    ])
    .current_dir(js)
    .env("SY_URL_A", url(&pair.a))
    .env("SY_URL_B", url(&pair.b))
    .env("SY_TOKEN", token("reader", &["cr-*"], &[], None))
    .env("SY_TOKEN_OTHER", token("mallory", &["cr-*"], &[], None))
    .env(
        "SY_TOKEN_PUB",
        token("publisher", &["cr-*"], &["cr-*"], None),
    )
    .kill_on_drop(true);
    cmd
}

fn passed(out: &str) -> bool {
    out.contains("fail 0") && !out.contains("pass 0")
}

/// Dropped on node A, reconnected through node B: `recovered: true`, exactly the messages
/// published meanwhile, once and in order; another user presenting the pid on B gets a fresh
/// socket and leaves the record to its owner.
#[tokio::test]
async fn a_socket_dropped_on_one_node_recovers_on_another() {
    let pair = Pair::start().await;
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        node("^another-node:", &pair).output(),
    )
    .await
    .expect("the node tests finished in time")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        out.status.success() && passed(&stdout),
        "{stdout}\n{stderr}"
    );
    pair.stop().await;
}

/// Node A restarted (gracefully, same port, Redis and database kept) while its socket's client
/// waits: the client reconnects to the new process and recovers, with what was published on
/// node B meanwhile.
#[tokio::test]
async fn a_socket_recovers_after_its_node_restarts() {
    let pair = Pair::start().await;
    let mut child = node("^restart:", &pair)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = String::new();
    let asked = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read node's output") {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("SY:RESTART") {
                return true;
            }
        }
        false
    })
    .await
    .expect("the node test asked for the restart in time");
    assert!(asked, "node ended before asking for the restart:\n{seen}");
    let Pair { db, prefix, a, b } = pair;
    let port = a.port;
    a.shutdown().await;
    let a = spawn_app_on(TestDb::shared(&db), settings(&db, &prefix, port)).await;
    assert_eq!(a.port, port);
    let pair = Pair { db, prefix, a, b };
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read node's output") {
            seen.push_str(&line);
            seen.push('\n');
        }
    })
    .await
    .expect("the node test finished in time");
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("node exits")
        .expect("node's status");
    println!("{seen}");
    assert!(
        status.success() && passed(&seen),
        "the restart test failed:\n{seen}"
    );
    pair.stop().await;
}
