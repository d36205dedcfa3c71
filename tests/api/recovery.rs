//! Socket.IO connection-state recovery (docs/socketio.md) with the real socket.io-client@4
//! (tests/js/recovery.test.mjs): each test starts a server configured for one case and runs the
//! node tests for it, chosen by name.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use switchyard::config::{DatabaseUrl, Settings};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::*;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Recovery on (a minute), with the test profile on `/app`.
fn recovering(s: &mut Settings) {
    s.sio_recovery = Duration::from_secs(60);
    s.config_file = Some(repo("tests/js/recovery.toml"));
}

fn node(pattern: &str, port: u16) -> tokio::process::Command {
    let js = repo("tests/js");
    assert!(
        js.join("node_modules/socket.io-client").is_dir(),
        "tests/js/node_modules is missing: run `npm ci --prefix tests/js` (.ci/run does)"
    );
    let mut cmd = tokio::process::Command::new("node");
    cmd.args([
        "--test",
        "--test-force-exit",
        "--test-reporter=spec",
        "--test-name-pattern",
        pattern,
        "recovery.test.mjs",
    ])
    .current_dir(&js)
    .env("SY_URL", format!("http://127.0.0.1:{port}"))
    .kill_on_drop(true);
    cmd
}

/// Runs the node tests whose names match `pattern` against `app`; at least one must run.
async fn run(pattern: &str, app: &TestApp) {
    let out = tokio::time::timeout(Duration::from_secs(120), node(pattern, app.port).output())
        .await
        .expect("the node tests finished in time")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "{pattern} failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("fail 0") && !stdout.contains("pass 0"),
        "{stdout}"
    );
}

/// Missed messages of every room come back in order and once, twice in a row, with a drop
/// before any message, and on an app profile's namespace.
#[tokio::test]
async fn a_dropped_socket_recovers_every_missed_message() {
    let app = spawn_app_with(Backend::Sqlite, recovering).await;
    run("^recovery:", &app).await;
}

/// History trimmed past what the client missed: `recovered: false`, a fresh socket.
#[tokio::test]
async fn trimmed_history_means_a_fresh_socket() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        recovering(s);
        s.history_size = 2;
    })
    .await;
    run("^trimmed:", &app).await;
}

/// The setting off: no pid, no extra argument, nothing recovered.
#[tokio::test]
async fn recovery_off_changes_nothing() {
    let app = spawn_app().await;
    run("^off:", &app).await;
}

/// A restart on the same port and database: the client reconnects by itself and is told
/// `recovered: false` (history and epochs do not survive a restart), then works as a fresh
/// socket.
#[tokio::test]
async fn a_restart_fails_recovery_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = DatabaseUrl::Sqlite(dir.path().join("keep.db").to_string_lossy().into_owned());
    let app = spawn_app_with(Backend::Sqlite, |s| {
        recovering(s);
        s.database = url.clone();
    })
    .await;
    let port = app.port;
    let mut child = node("^restart:", port)
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
    app.shutdown().await;
    let app = spawn_app_with(Backend::Sqlite, |s| {
        recovering(s);
        s.database = url.clone();
        s.port = port;
    })
    .await;
    assert_eq!(app.port, port);
    let rest = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read node's output") {
            seen.push_str(&line);
            seen.push('\n');
        }
    });
    rest.await.expect("the node test finished in time");
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("node exits")
        .expect("node's status");
    println!("{seen}");
    assert!(status.success(), "the restart test failed:\n{seen}");
    assert!(
        seen.contains("fail 0") && !seen.contains("pass 0"),
        "{seen}"
    );
}
