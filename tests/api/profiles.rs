//! App profiles (docs/profiles.md): the configuration file's loader refusing a bad profile by
//! its line, and real socket.io-client@4 / `ws` clients written as the apps' write-ups describe
//! them (tests/apps), run unchanged against a server started with the app's example profile,
//! with the example's `backend` stand-in running as a real process where the app needs
//! backend hooks.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use switchyard::startup::Application;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::*;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The secret the tests' servers sign hook calls with, and their stand-ins check.
const HOOK_SECRET: &str = "hook-secret-for-the-apps";

/// Runs one node test file (a path under tests/) against a server started with `config`.
async fn run_node(file: &str, config: &str) {
    run_node_with(file, config, |_| {}, &[]).await;
}

/// `run_node` with settings changed and environment for the node process.
async fn run_node_with(
    file: &str,
    config: &str,
    settings: impl FnOnce(&mut switchyard::config::Settings),
    env: &[(&str, String)],
) {
    let config = repo(config);
    run_node_env(
        file,
        |s| {
            s.config_file = Some(config);
            settings(s);
        },
        env,
    )
    .await;
}

/// Runs one node test file (in tests/js) against a server started with `tweak`'s settings.
pub(crate) async fn run_node_tweaked(
    file: &str,
    tweak: impl FnOnce(&mut switchyard::config::Settings),
) {
    run_node_env(&format!("js/{file}"), tweak, &[]).await;
}

/// Runs `file` (relative to tests/) with node's test runner. The apps' clients in tests/apps
/// import the npm packages tests/js pins: `--import ./apps/resolve.mjs` resolves them there.
async fn run_node_env(
    file: &str,
    tweak: impl FnOnce(&mut switchyard::config::Settings),
    env: &[(&str, String)],
) {
    let tests = repo("tests");
    assert!(
        tests.join("js/node_modules/socket.io-client").is_dir(),
        "tests/js/node_modules is missing: run `npm ci --prefix tests/js` (.ci/run does)"
    );
    let app = spawn_app_with(Backend::Sqlite, tweak).await;
    let run = tokio::process::Command::new("node")
        .args([
            "--import",
            "./apps/resolve.mjs",
            "--test",
            "--test-force-exit",
            "--test-reporter=spec",
            file,
        ])
        .current_dir(&tests)
        .env("SY_URL", format!("http://127.0.0.1:{}", app.port))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the node suite finished in time")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(out.status.success(), "{file} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("fail 0"), "{stdout}");
}

/// An example's executable `backend` stand-in, running as a real process (killed when this is
/// dropped), listening on the port it was given through `BACKEND_PORT` (0: one the system
/// picks, which it prints: no race for a free port).
struct StandIn {
    _process: tokio::process::Child,
    port: u16,
}

impl StandIn {
    async fn start(example: &str) -> Self {
        let mut process =
            tokio::process::Command::new(repo(&format!("examples/{example}/backend")))
                .env("BACKEND_PORT", "0")
                .env("SWITCHYARD_HOOK_SECRET", HOOK_SECRET)
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("the example's backend starts (node must be installed)");
        let stdout = process.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the stand-in says where it listens in time")
            .expect("its stdout reads")
            .expect("a line before it exits");
        let port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("`listening on http://127.0.0.1:<port>`, not {line:?}"));
        Self {
            _process: process,
            port,
        }
    }

    /// The server's settings for this backend: its port for the profile's `${BACKEND_PORT}`,
    /// the secret to sign with.
    fn settings(&self, s: &mut switchyard::config::Settings) {
        s.config_vars
            .insert("BACKEND_PORT".into(), self.port.to_string());
        s.hook_secret = Some(HOOK_SECRET.into());
    }

    /// What the node tests get to call the backend directly (showing it refuses unsigned calls).
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("BACKEND_URL", format!("http://127.0.0.1:{}", self.port)),
            ("SWITCHYARD_HOOK_SECRET", HOOK_SECRET.to_string()),
        ]
    }
}

/// Seed 000: the install wizard's client, unchanged, against examples/000-install-wizard.
#[tokio::test]
async fn the_install_wizard_runs_unchanged_with_its_example_profile() {
    run_node(
        "apps/000-install-wizard.test.mjs",
        "examples/000-install-wizard/switchyard.toml",
    )
    .await;
}

/// Seed 001: the gateway's ActivityFeed, workflow events and the generation updates'
/// websocket.service, unchanged, against examples/001-api-gateway.
#[tokio::test]
async fn the_api_gateway_clients_run_unchanged_with_their_example_profile() {
    run_node(
        "apps/001-api-gateway.test.mjs",
        "examples/001-api-gateway/switchyard.toml",
    )
    .await;
}

/// Seed 002: WebSocketContext and ServiceRestartButton, unchanged, against
/// examples/002-service-restart, whose kind runs the stand-in restart script.
#[tokio::test]
async fn the_service_restart_button_runs_unchanged_with_its_example_profile() {
    // The example's file as it is, with one line more: the stand-in's steps slowed from 0.3 s
    // to 0.8 s (its STEP_SECONDS, through the kind's env), so that a page reloaded at 30 %
    // reliably finds the restart still running on a loaded machine.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("switchyard.toml");
    let example = std::fs::read_to_string(repo("examples/002-service-restart/switchyard.toml"))
        .expect("the example reads");
    std::fs::write(
        &file,
        format!("{example}\n[kinds.restart-service.env]\nSTEP_SECONDS = \"0.8\"\n"),
    )
    .expect("write");
    run_node_env(
        "apps/002-service-restart.test.mjs",
        |s| s.config_file = Some(file),
        &[],
    )
    .await;
}

/// Seed 003: the Flask deployment dashboard's websocket.js, unchanged, against
/// examples/003-deployment-dashboard (connect, periodic stats, deployment updates, reconnect,
/// edge cases).
#[tokio::test]
async fn the_deployment_dashboard_runs_unchanged_with_its_example_profile() {
    // The example's hooks need their backend running (its URL is part of the profile).
    let backend = StandIn::start("003-deployment-dashboard").await;
    run_node_with(
        "apps/003-deployment-dashboard.test.mjs",
        "examples/003-deployment-dashboard/switchyard.toml",
        |s| backend.settings(s),
        &[],
    )
    .await;
}

/// Seed 003's `request_deployments`, `request_system_status` and `request_stats` answer from
/// the Flask app's own data: rpc hooks to the example's `backend` stand-in (a real process),
/// which checks each call's signature and refuses an unsigned one with 401.
#[tokio::test]
async fn the_deployment_dashboard_requests_answered_by_its_backend() {
    let backend = StandIn::start("003-deployment-dashboard").await;
    run_node_with(
        "apps/003-deployment-dashboard.hooks.test.mjs",
        "examples/003-deployment-dashboard/switchyard.toml",
        |s| backend.settings(s),
        &backend.env(),
    )
    .await;
}

/// Seed 004: the conversion front end's ConversionWebSocket and ProgressContext, unchanged,
/// against examples/004-conversion-progress (its per-job WebSocket path and shape, reconnect
/// with backoff through a proxy that drops it, polling fallback through one that refuses it).
#[tokio::test]
async fn the_conversion_progress_client_runs_unchanged_with_its_example_profile() {
    // The browser's session cookie is checked by the app's backend (the connect hook).
    let backend = StandIn::start("004-conversion-progress").await;
    run_node_with(
        "apps/004-conversion-progress.test.mjs",
        "examples/004-conversion-progress/switchyard.toml",
        |s| backend.settings(s),
        &[],
    )
    .await;
}

/// Seed 004 authenticates its WebSocket and status polls with the app's session cookie: the
/// profile's connect hook asks the example's `backend` stand-in (a real process) who the
/// cookie belongs to, on the app's own paths.
#[tokio::test]
async fn the_conversion_progress_client_authenticates_with_its_session_cookie() {
    let backend = StandIn::start("004-conversion-progress").await;
    let mut env = backend.env();
    env.push((
        "SY_SERVICE_TOKEN",
        token("backend", &[], &[], Some("service")),
    ));
    run_node_with(
        "apps/004-conversion-progress.hooks.test.mjs",
        "examples/004-conversion-progress/switchyard.toml",
        |s| {
            s.jwt_secret = Some(SECRET.into());
            backend.settings(s);
        },
        &env,
    )
    .await;
}

/// socket.io-client 4.5.4 (what seed 003 loads): connect, an app event joining a room with its
/// ack by callback, room messages, the automatic reconnect; only `emitWithAck` (4.6) is absent.
#[tokio::test]
async fn a_socket_io_client_4_5_app_works_unchanged_but_for_emit_with_ack() {
    run_node(
        "apps/socket.io-client-4.5.test.mjs",
        "examples/002-service-restart/switchyard.toml",
    )
    .await;
}

/// Incoming maps, echo, renames, on-connect, path aliases, unknown events not counted.
#[tokio::test]
async fn app_profiles_with_real_clients() {
    run_node("js/profiles.test.mjs", "tests/js/profiles.toml").await;
}

/// `Application::build`'s error (it needs an actix system, as `main` gives it).
fn build_error(settings: switchyard::config::Settings) -> String {
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            match Application::build(settings).await {
                Ok(_) => panic!("a bad configuration file must stop start-up"),
                Err(e) => format!("{e:#}"),
            }
        })
    })
    .join()
    .expect("the build thread ends")
}

const BAD: &str = r#"[kinds.convert]
runner = "external"

[profiles.gateway.events.join-project]
join = "project:{0.projectId"
"#;

/// An invalid profile stops start-up, and the message names the file and the line.
#[tokio::test]
async fn an_invalid_profile_stops_start_up_naming_the_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("switchyard.toml");
    std::fs::write(&file, BAD).expect("write");
    let db = TestDb::new(Backend::Sqlite);
    let mut settings = test_settings(&db);
    settings.config_file = Some(file.clone());
    let err = build_error(settings);
    assert!(
        err.contains("line 5") && err.contains("unclosed") && err.contains("switchyard.toml"),
        "{err}"
    );
    // The binary says the same and exits non-zero, before serving anything.
    let stderr = binary_refuses_to_start(file.as_ref(), dir.path()).await;
    assert!(stderr.contains("line 5"), "{stderr}");
    // A TOML syntax error names its line too.
    std::fs::write(&file, "[profiles.x]\nnamespace = \n").expect("write");
    let db = TestDb::new(Backend::Sqlite);
    let mut settings = test_settings(&db);
    settings.config_file = Some(file);
    let err = build_error(settings);
    assert!(err.contains("line 2"), "{err}");
}

/// A path alias whose profile has a `connect` hook, with the backend down: `502
/// backend_unavailable` (the browser's request is neither let in nor left hanging); a request
/// with `Authorization: Bearer` is checked as a token and never reaches the backend.
#[tokio::test]
async fn a_path_alias_reports_its_backend_down_and_takes_a_token_without_asking_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("switchyard.toml");
    // A port nothing listens on: bound, then released.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    // `${BACKEND_PORT}` as an example writes it, its value from the settings.
    let text =
        "[profiles.c]\nnamespace = \"/c\"\n[profiles.c.paths]\nstatus = \"/jobs/{id}/status\"\n\
         [profiles.c.hooks]\nurl = \"http://127.0.0.1:${BACKEND_PORT}/hooks\"\n\
         connect = \"/connect\"\nforward_cookies = [\"session\"]\n";
    std::fs::write(&file, text).expect("write");
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.config_file = Some(file);
        s.config_vars
            .insert("BACKEND_PORT".into(), dead.to_string());
        s.hook_secret = Some(HOOK_SECRET.into());
        s.jwt_secret = Some(SECRET.into());
    })
    .await;
    let (status, body) = app
        .get("/jobs/0190aaaa-0000-7000-8000-000000000000/status")
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "backend_unavailable", "{body}");
    let admin = token("ops", &[], &[], Some("admin"));
    let (status, body) = app
        .get_auth("/jobs/0190aaaa-0000-7000-8000-000000000000/status", &admin)
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "not_found", "{body}");
}
