//! The dashboard: its pages and assets over HTTP, and the whole thing end to end in headless
//! Chromium.
//!
//! The browser tests live in `tests/browser/` (Node's test runner, `playwright-core` driving
//! Debian's `chromium`). This file starts the servers they use and runs them, so `cargo test`
//! runs them too; `.ci/run` installs chromium and the Node packages. Missing tools fail the test
//! (they never skip it) with a message saying so.
//!
//! `SWITCHYARD_SCREENSHOTS=docs/screenshots cargo test --test api dashboard` refreshes the
//! screenshots shown in the README; `SWITCHYARD_BROWSER_TESTS=<pattern>` runs only the browser
//! tests whose name matches.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use switchyard::config::DatabaseUrl;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::helpers::{spawn_app, spawn_app_with, token, Backend, TestApp, SECRET};

/// Everything the browser run may take before the test fails.
const BROWSER_RUN_LIMIT: Duration = Duration::from_secs(300);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn chromium() -> PathBuf {
    std::env::var_os("SWITCHYARD_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Fails (never skips) when a tool the browser tests need is missing.
pub(crate) fn require_browser_tools() -> PathBuf {
    let dir = repo_root().join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core/package.json")
            .is_file(),
        "the browser tests need their Node packages in tests/browser/node_modules: \
         run .ci/run (or `npm ci --prefix tests/browser`)"
    );
    assert!(
        chromium().is_file(),
        "the browser tests need Chromium at {}: run .ci/run (it installs Debian's `chromium`), \
         or set SWITCHYARD_CHROMIUM",
        chromium().display()
    );
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "the browser tests need Node.js (`node`) on the PATH: run .ci/run"
    );
    dir
}

/// A kinds file with an external kind the big-data tests can fill at will.
fn perf_kinds(dir: &Path) -> PathBuf {
    let file = dir.join("kinds.toml");
    std::fs::write(
        &file,
        "[kinds.import]\nrunner = \"external\"\nstall_timeout_secs = 3600\n",
    )
    .expect("write kinds file");
    file
}

/// The open-mode server on `port` (0: any) with its database in `url`.
async fn boot(url: DatabaseUrl, port: u16) -> TestApp {
    spawn_app_with(Backend::Sqlite, move |s| {
        s.database = url;
        s.port = port;
    })
    .await
}

/// Restarts `app` on the same port and database file whenever a browser test asks, over a
/// line-based TCP channel: `restart` → graceful shutdown, start again → `ok`.
async fn serve_restarts(control: tokio::net::TcpListener, app: TestApp, url: DatabaseUrl) {
    let port = app.port;
    let mut app = Some(app);
    while let Ok((mut sock, _)) = control.accept().await {
        let (read, mut write) = sock.split();
        let mut line = String::new();
        if tokio::io::BufReader::new(read)
            .read_line(&mut line)
            .await
            .is_err()
        {
            continue;
        }
        let answer: &[u8] = if line.trim() == "restart" {
            if let Some(running) = app.take() {
                running.shutdown().await;
            }
            app = Some(boot(url.clone(), port).await);
            b"ok\n"
        } else {
            b"unknown command\n"
        };
        let _ = write.write_all(answer).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_headless_chromium() {
    let dir = require_browser_tools();
    let kinds_dir = tempfile::tempdir().expect("temp dir");
    let kinds = perf_kinds(kinds_dir.path());

    // The main server keeps its database outside the TestApp so a restart finds it again.
    let open_dir = tempfile::tempdir().expect("temp dir");
    let open_db = DatabaseUrl::Sqlite(
        open_dir
            .path()
            .join("dashboard.db")
            .to_string_lossy()
            .into_owned(),
    );
    let open = boot(open_db.clone(), 0).await;
    let open_url = open.url("");
    let control = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("control listener");
    let control_port = control.local_addr().expect("control address").port();
    let restarts = tokio::spawn(serve_restarts(control, open, open_db));
    // Big data: the default pool and a patient database timeout, as a real deployment has
    // (the test defaults are tuned for quick outage tests).
    let perf = spawn_app_with(Backend::Sqlite, move |s| {
        s.operations_file = Some(kinds);
        s.db_pool_size = 8;
        s.db_timeout = Duration::from_secs(5);
    })
    .await;
    let secured = spawn_app_with(Backend::Sqlite, |s| {
        s.jwt_secret = Some(SECRET.to_string());
    })
    .await;
    let admin = token("admin", &[], &[], Some("admin"));
    // A user who may see every room but not manage them (no role): the rooms page shows such a
    // token a room's messages and no publish console.
    let viewer = token("viewer", &["*"], &[], None);

    let mut cmd = tokio::process::Command::new("node");
    cmd.args(["--test", "--test-concurrency=1", "--test-reporter=spec"]);
    // Only the browser tests whose name matches, while working on one (all run otherwise).
    if let Ok(p) = std::env::var("SWITCHYARD_BROWSER_TESTS") {
        cmd.arg(format!("--test-name-pattern={p}"));
    }
    cmd.args([
        "dashboard.test.mjs",
        "perf.test.mjs",
        "auth.test.mjs",
        "client.test.mjs",
        "charts.test.mjs",
    ])
    .current_dir(&dir)
    .env("SY_URL", &open_url)
    .env("SY_CONTROL_PORT", control_port.to_string())
    .env("SY_PERF_URL", perf.url(""))
    .env("SY_AUTH_URL", secured.url(""))
    .env("SY_AUTH_TOKEN", &admin)
    .env("SY_AUTH_VIEWER_TOKEN", &viewer)
    .env("SY_CHROMIUM", chromium())
    .kill_on_drop(true);
    if let Some(shots) = std::env::var_os("SWITCHYARD_SCREENSHOTS") {
        // Relative to the repository, wherever Node runs.
        cmd.env("SWITCHYARD_SCREENSHOTS", repo_root().join(shots));
    }

    let started = Instant::now();
    let out = tokio::time::timeout(BROWSER_RUN_LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("the browser tests did not finish in {BROWSER_RUN_LIMIT:?}"))
        .expect("run node");
    // Dropping the task's server stops it.
    restarts.abort();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "browser tests ran in {:.1} s\n{stdout}\n{stderr}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "the browser tests failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // A run that ran nothing must not pass.
    let count = |what: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim_start_matches(['ℹ', ' ']).strip_prefix(what))
            .and_then(|n| n.trim().parse::<u32>().ok())
    };
    let least = if std::env::var_os("SWITCHYARD_BROWSER_TESTS").is_some() {
        1
    } else {
        10
    };
    assert!(
        count("pass ").is_some_and(|n| n >= least) && count("fail ") == Some(0),
        "the browser tests did not report their results:\n{stdout}"
    );
}

// ---- the pages and assets over plain HTTP ---------------------------------------------------

async fn get(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("GET")
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn every_page_is_html_with_a_strict_policy_and_revalidated() {
    let app = spawn_app().await;
    let pages = [
        ("/", "overview"),
        ("/operations", "operations"),
        (
            "/operations/019a8f2e-5c1d-7e44-a1b2-3c4d5e6f7a8b",
            "operation",
        ),
        ("/activity", "activity"),
        ("/rooms", "rooms"),
    ];
    for (path, name) in pages {
        let res = get(&app.url(path), &[]).await;
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(header(&res, "content-type"), "text/html; charset=utf-8");
        assert_eq!(header(&res, "cache-control"), "no-cache");
        assert!(header(&res, "content-security-policy").contains("script-src 'self'"));
        let etag = header(&res, "etag").to_string();
        let body = res.text().await.expect("body");
        assert!(body.contains(&format!("data-page=\"{name}\"")), "{path}");
        assert!(body.contains("data-auth=\"open\""), "{path}");
        // Unchanged: 304 without a body.
        let again = get(&app.url(path), &[("if-none-match", &etag)]).await;
        assert_eq!(again.status(), 304, "{path}");
    }
}

#[tokio::test]
async fn pages_tell_the_client_when_a_token_is_needed_and_need_none_themselves() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.jwt_secret = Some(SECRET.into())).await;
    let res = get(&app.url("/operations"), &[]).await;
    assert_eq!(res.status(), 200);
    assert!(res
        .text()
        .await
        .expect("body")
        .contains("data-auth=\"required\""));
    // The data behind it still needs the token.
    let (status, _) = app.get("/api/operations").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn assets_linked_with_their_hash_are_immutable_and_others_revalidate() {
    let app = spawn_app().await;
    let page = get(&app.url("/"), &[]).await.text().await.expect("body");
    let start = page
        .find("/assets/switchyard.js?v=")
        .expect("the page links the script with its hash");
    let link = &page[start..];
    let link = &link[..link.find('"').expect("end of the link")];

    let res = get(&app.url(link), &[]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(&res, "content-type"),
        "text/javascript; charset=utf-8"
    );
    assert_eq!(
        header(&res, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    let etag = header(&res, "etag").to_string();
    // The dashboard's connection is the client library's.
    assert!(res
        .text()
        .await
        .expect("body")
        .contains("import { Switchyard } from '/client.js';"));

    let unversioned = get(&app.url("/assets/switchyard.js"), &[]).await;
    assert_eq!(header(&unversioned, "cache-control"), "no-cache");
    let stale = get(&app.url("/assets/switchyard.js?v=old"), &[]).await;
    assert_eq!(header(&stale, "cache-control"), "no-cache");
    let revalidated = get(
        &app.url("/assets/switchyard.js"),
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(revalidated.status(), 304);

    let css = get(&app.url("/assets/switchyard.css"), &[]).await;
    assert_eq!(header(&css, "content-type"), "text/css; charset=utf-8");
    let icon = get(&app.url("/assets/favicon.svg"), &[]).await;
    assert_eq!(header(&icon, "content-type"), "image/svg+xml");
}

#[tokio::test]
async fn unknown_assets_and_implausible_operation_ids_are_not_found() {
    let app = spawn_app().await;
    let (status, body) = app.get("/assets/secrets.txt").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, body) = app.get("/assets/..%2Fsrc%2Fmain.rs").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, _) = app.get("/operations/not%20an%20id").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_client_library_is_served_as_it_is_in_clients_js_to_any_origin() {
    let app = spawn_app().await;
    for (path, file, content_type) in [
        (
            "/client.js",
            "clients/js/switchyard.js",
            "text/javascript; charset=utf-8",
        ),
        (
            "/client.d.ts",
            "clients/js/switchyard.d.ts",
            "application/typescript; charset=utf-8",
        ),
    ] {
        let res = get(&app.url(path), &[("origin", "http://app.example")]).await;
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(header(&res, "content-type"), content_type, "{path}");
        // A stable URL apps link to: revalidated, never stale.
        assert_eq!(header(&res, "cache-control"), "no-cache", "{path}");
        // Pages on other origins import it (a module script is a CORS request).
        assert_eq!(header(&res, "access-control-allow-origin"), "*", "{path}");
        let etag = header(&res, "etag").to_string();
        let body = res.bytes().await.expect("body");
        let on_disk = std::fs::read(repo_root().join(file)).expect("read the library");
        assert!(
            body == on_disk,
            "{path} is not {file} as it is in the repository"
        );
        let again = get(&app.url(path), &[("if-none-match", &etag)]).await;
        assert_eq!(again.status(), 304, "{path}");
    }
    let (status, body) = app.get("/client.ts").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
}

// ---- the charts' data: the last 15 minutes of stats ------------------------------------------

/// The sum of `field` over the samples `GET /api/stats/recent` returns.
fn sum_of(body: &serde_json::Value, field: &str) -> u64 {
    body["samples"]
        .as_array()
        .map(|s| s.iter().filter_map(|x| x[field].as_u64()).sum())
        .unwrap_or(0)
}

#[tokio::test]
async fn recent_stats_count_operations_started_finished_and_failed_per_tick() {
    let app = spawn_app().await;
    let (status, ok) = app
        .post(
            "/api/operations",
            serde_json::json!({"kind": "demo", "target": "chart-ok", "params": {"step_ms": 1}}),
        )
        .await;
    assert_eq!(status, 202, "{ok}");
    let (status, bad) = app
        .post(
            "/api/operations",
            serde_json::json!({"kind": "demo", "target": "chart-bad",
                "params": {"step_ms": 1, "fail_at": "pull"}}),
        )
        .await;
    assert_eq!(status, 202, "{bad}");

    crate::helpers::eventually(
        "two operations ended, one failed, in the samples",
        || async {
            let (status, body) = app.get("/api/stats/recent").await;
            status == 200
                && sum_of(&body, "operations_started") == 2
                && sum_of(&body, "operations_finished") == 2
                && sum_of(&body, "operations_failed") == 1
        },
    )
    .await;
    let (_, body) = app.get("/api/stats/recent").await;
    assert_eq!(body["window_seconds"], 900);
    assert_eq!(body["interval_ms"], 500);
    let samples = body["samples"].as_array().expect("samples");
    assert!(samples
        .windows(2)
        .all(|w| w[0]["at_ms"].as_u64() < w[1]["at_ms"].as_u64()));
    // The same counts on /metrics, cumulative.
    assert_eq!(app.metric("switchyard_operations_started_total").await, 2);
    assert_eq!(app.metric("switchyard_operations_finished_total").await, 2);
    assert_eq!(app.metric("switchyard_operations_failed_total").await, 1);

    // The live event carries them too (the page adds a point per event).
    let mut ws = app.ws().await;
    ws.join("system").await;
    let stats = ws
        .recv_where(|f| f["type"] == "message" && f["event"] == "stats")
        .await;
    for field in [
        "interval_ms",
        "operations_started",
        "operations_finished",
        "operations_failed",
        "slow_consumer_evictions",
    ] {
        assert!(stats["data"][field].is_u64(), "{field} in {stats}");
    }
}

#[tokio::test]
async fn recent_stats_count_a_slow_consumer_eviction() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.outbox_max_messages = 64;
        s.outbox_max_bytes = 64 * 1024;
        // REST publishes count against the publisher's rate; this floods on purpose.
        s.user_publish_rate = 0;
    })
    .await;
    let mut slow = app.ws_as("slow").await;
    slow.join("busy").await;
    // The slow member never reads: ~8 MB is far more than the socket buffers and its outbox
    // hold, so it is evicted along the way.
    let payload = "x".repeat(4000);
    for i in 0..2_000u64 {
        let (status, body) = app
            .post(
                "/api/rooms/busy/publish",
                serde_json::json!({"event": "tick", "data": {"i": i, "pad": payload}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(slow.closed().await.code, Some(4008));
    crate::helpers::eventually("the eviction in the samples", || async {
        let (_, body) = app.get("/api/stats/recent").await;
        sum_of(&body, "slow_consumer_evictions") == 1
    })
    .await;
}

#[tokio::test]
async fn recent_stats_are_for_those_who_may_see_the_system_room() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.jwt_secret = Some(SECRET.into())).await;
    let (status, _) = app.get("/api/stats/recent").await;
    assert_eq!(status, 401);
    let outsider = token("outsider", &["project:*"], &[], None);
    let (status, body) = app.get_auth("/api/stats/recent", &outsider).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    let watcher = token("watcher", &["system"], &[], None);
    let (status, body) = app.get_auth("/api/stats/recent", &watcher).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["samples"].as_array().is_some_and(|s| !s.is_empty()));
}
