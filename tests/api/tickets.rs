//! Watch tickets (docs/operations.md, "Browsers"): a browser cannot set `Authorization` on a
//! WebSocket or an `EventSource`, so a caller that may see an operation trades its token for a
//! short-lived ticket good for that operation's WebSocket, SSE stream and status (and an app
//! profile's aliases of them), passed as `?ticket=`. Real server, real HTTP and WebSocket; the
//! last test runs the real binary and reads what it logs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

/// An external kind (the test reports for it) and an app profile whose paths alias the
/// operation's endpoints.
const CONFIG: &str = r#"
[kinds.convert]
runner = "external"
stall_timeout_secs = 60

[profiles.conversions]
namespace = "/conversions"

[profiles.conversions.paths]
ws = "/api/v1/conversions/{id}/ws"
sse = "/api/v1/conversions/{id}/events"
status = "/api/v1/conversions/{id}/status"
data = { job_id = "{id}", status = "{status}", progress = "{progress}" }
values = { status = { running = "processing" } }
"#;

struct Secured {
    app: TestApp,
    _dir: tempfile::TempDir,
    /// Sees project 1's operations (and may not start or cancel them).
    viewer: String,
    /// Starts and reports.
    service: String,
}

async fn secured(tweak: impl FnOnce(&mut switchyard::config::Settings)) -> Secured {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("switchyard.toml");
    std::fs::write(&file, CONFIG).expect("write config");
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        s.jwt_secret = Some(SECRET.into());
        s.config_file = Some(file);
        tweak(s);
    })
    .await;
    Secured {
        app,
        _dir: dir,
        viewer: token("viewer", &["project:1"], &[], None),
        service: token("worker", &[], &[], Some("service")),
    }
}

impl Secured {
    /// Starts a `convert` operation in project 1; its id.
    async fn start(&self, target: &str) -> String {
        let (s, op) = self
            .app
            .post_auth(
                "/api/operations",
                &self.service,
                json!({"kind": "convert", "target": target, "project": "1"}),
            )
            .await;
        assert_eq!(s, 202, "{op}");
        op["id"].as_str().expect("id").to_string()
    }

    async fn report(&self, id: &str, what: &str, body: Value) {
        let (s, b) = self
            .app
            .post_auth(&format!("/api/operations/{id}/{what}"), &self.service, body)
            .await;
        assert_eq!(s, 200, "{what}: {b}");
    }

    /// `POST /api/operations/{id}/ticket` with `token`: status and body.
    async fn ticket(&self, id: &str, token: &str) -> (u16, Value) {
        self.app
            .post_auth(&format!("/api/operations/{id}/ticket"), token, json!({}))
            .await
    }

    async fn ticket_for(&self, id: &str) -> String {
        let (s, b) = self.ticket(id, &self.viewer).await;
        assert_eq!(s, 200, "{b}");
        b["ticket"].as_str().expect("ticket").to_string()
    }

    /// A plain GET (no header): status and body.
    async fn get(&self, path: &str) -> (u16, Value) {
        let res = self.app.http.get(self.app.url(path)).send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }
}

/// Opens an SSE stream without a header and reads events until `until` names one (or the
/// stream ends); the status and the event names and data.
async fn sse_events(app: &TestApp, path: &str, until: &str) -> (u16, Vec<(String, Value)>) {
    let mut res = app.http.get(app.url(path)).send().await.unwrap();
    let status = res.status().as_u16();
    if status != 200 {
        return (status, vec![]);
    }
    let mut buf = String::new();
    let mut out: Vec<(String, Value)> = Vec::new();
    while !out.iter().any(|(e, _)| e == until) {
        let chunk = tokio::time::timeout(WAIT, res.chunk())
            .await
            .expect("SSE data in time")
            .unwrap();
        let Some(chunk) = chunk else { break };
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut event, mut data) = (None, String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if let Some(event) = event {
                out.push((event, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    (status, out)
}

/// Opens a per-operation WebSocket without a header: the upgrade's refusal (status, body), or
/// the socket.
async fn open_ws(
    app: &TestApp,
    path: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    (u16, Value),
> {
    let url = format!("ws://127.0.0.1:{}{path}", app.port);
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("upgrade answered in time")
    {
        Ok((sock, _)) => Ok(sock),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            let body = res
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err((res.status().as_u16(), body))
        }
        Err(e) => panic!("WebSocket connect failed: {e}"),
    }
}

/// The next text frame as JSON.
async fn next_json(
    sock: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, sock.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

#[tokio::test]
async fn a_ticket_opens_the_operations_socket_stream_and_status_without_a_header() {
    let s = secured(|_| {}).await;
    let id = s.start("a").await;
    s.report(&id, "progress", json!({"progress": 20})).await;

    // Without a header or a ticket, every one of them is refused as before.
    for path in [
        format!("/api/operations/{id}"),
        format!("/api/operations/{id}/events"),
        format!("/api/v1/conversions/{id}/status"),
    ] {
        let (code, body) = s.get(&path).await;
        assert_eq!(
            (code, body["error"].as_str()),
            (401, Some("unauthenticated")),
            "{path}"
        );
    }
    let refused = open_ws(&s.app, &format!("/api/operations/{id}/ws")).await;
    assert_eq!(refused.err().map(|e| e.0), Some(401));

    let (code, body) = s.ticket(&id, &s.viewer).await;
    assert_eq!(code, 200, "{body}");
    let ticket = body["ticket"].as_str().unwrap().to_string();
    let expires = chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap())
        .expect("expires_at is RFC 3339");
    let left = expires.timestamp() - chrono::Utc::now().timestamp();
    assert!((55..=61).contains(&left), "the default TTL is 60 s: {left}");

    // The status, natively and under the app's path in its shape.
    let (code, op) = s
        .get(&format!("/api/operations/{id}?ticket={ticket}"))
        .await;
    assert_eq!((code, op["progress"].as_f64()), (200, Some(20.0)), "{op}");
    let (code, shaped) = s
        .get(&format!("/api/v1/conversions/{id}/status?ticket={ticket}"))
        .await;
    assert_eq!(code, 200, "{shaped}");
    assert_eq!(shaped["job_id"], id.as_str());
    assert_eq!(shaped["status"], "processing");

    // Both WebSockets: the status on connect.
    let mut native = open_ws(&s.app, &format!("/api/operations/{id}/ws?ticket={ticket}"))
        .await
        .expect("the ticket opens the socket");
    let first = next_json(&mut native).await;
    assert_eq!(
        (first["id"].as_str(), first["progress"].as_f64()),
        (Some(id.as_str()), Some(20.0))
    );
    let mut alias = open_ws(
        &s.app,
        &format!("/api/v1/conversions/{id}/ws?ticket={ticket}"),
    )
    .await
    .expect("the ticket opens the alias");
    assert_eq!(next_json(&mut alias).await["status"], "processing");

    // Live changes reach them, and the end closes them.
    s.report(&id, "progress", json!({"progress": 70})).await;
    assert_eq!(next_json(&mut native).await["progress"], 70.0);
    assert_eq!(next_json(&mut alias).await["progress"], 70.0);
    s.report(&id, "complete", json!({"result": {"url": "/f"}}))
        .await;
    assert_eq!(next_json(&mut native).await["status"], "completed");
    assert_eq!(next_json(&mut alias).await["status"], "completed");

    // SSE, natively and under the app's path: the whole stream to its terminal event.
    let (code, events) = sse_events(
        &s.app,
        &format!("/api/operations/{id}/events?ticket={ticket}"),
        "operation.completed",
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        events.first().map(|e| e.0.as_str()),
        Some("operation.progress")
    );
    assert_eq!(
        events.last().map(|e| e.0.as_str()),
        Some("operation.completed")
    );
    let (code, events) = sse_events(
        &s.app,
        &format!("/api/v1/conversions/{id}/events?ticket={ticket}&after=0"),
        "operation.completed",
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        events.last().map(|e| e.1["status"].clone()),
        Some(json!("completed"))
    );
}

#[tokio::test]
async fn a_ticket_is_for_its_operation_only_and_for_reading_only() {
    let s = secured(|_| {}).await;
    let id = s.start("a").await;
    let other = s.start("b").await;
    let ticket = s.ticket_for(&id).await;

    // Another operation, even one the ticket's holder may see: refused, and the answer does
    // not say whether it exists.
    for target in [other.as_str(), "no-such-operation"] {
        let (code, body) = s
            .get(&format!("/api/operations/{target}?ticket={ticket}"))
            .await;
        assert_eq!(
            (code, body["error"].as_str()),
            (401, Some("invalid_ticket")),
            "{body}"
        );
        assert_eq!(body["message"], "ticket is for another operation");
        let refused = open_ws(
            &s.app,
            &format!("/api/operations/{target}/ws?ticket={ticket}"),
        )
        .await;
        assert_eq!(
            refused.err().map(|e| (e.0, e.1["error"].clone())),
            Some((401, json!("invalid_ticket")))
        );
    }
    // Forged or mangled: refused, never echoed.
    let forged = format!("{}x", &ticket[..ticket.len() - 1]);
    for bad in [forged.as_str(), "", "not-a-ticket"] {
        let (code, body) = s
            .get(&format!("/api/operations/{id}/events?ticket={bad}"))
            .await;
        assert_eq!(
            (code, body["error"].as_str()),
            (401, Some("invalid_ticket")),
            "{bad:?}"
        );
        assert!(bad.is_empty() || !body.to_string().contains(bad));
    }
    // Read-only: the ticket is not a token, neither in the header nor as a query on anything
    // else.
    let (code, body) = s
        .app
        .get_auth(&format!("/api/operations/{id}"), &ticket)
        .await;
    assert_eq!((code, body["error"].as_str()), (401, Some("invalid_token")));
    let res = s
        .app
        .http
        .post(
            s.app
                .url(&format!("/api/operations/{id}/cancel?ticket={ticket}")),
        )
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401, "a ticket cancels nothing");
    let (code, _) = s
        .get(&format!("/api/operations/{id}/logs?ticket={ticket}"))
        .await;
    assert_eq!(code, 401, "nor reads more than the three endpoints");
    let (code, _) = s
        .app
        .post_auth(&format!("/api/operations/{id}/ticket"), &ticket, json!({}))
        .await;
    assert_eq!(code, 401, "nor mints another");

    // Only a caller that may see the operation gets one: a stranger gets the 404 it gets for
    // the operation itself; no token, 401.
    let stranger = token("stranger", &["project:2"], &[], None);
    let (code, body) = s.ticket(&id, &stranger).await;
    assert_eq!((code, body["error"].as_str()), (404, Some("not_found")));
    let (code, body) = s.ticket("no-such-operation", &stranger).await;
    assert_eq!((code, body["error"].as_str()), (404, Some("not_found")));
    let res = s
        .app
        .http
        .post(s.app.url(&format!("/api/operations/{id}/ticket")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
}

#[tokio::test]
async fn a_ticket_expires_after_its_ttl() {
    let s = secured(|st| st.watch_ticket_ttl = Duration::from_secs(1)).await;
    let id = s.start("a").await;
    let ticket = s.ticket_for(&id).await;
    let (code, _) = s
        .get(&format!("/api/operations/{id}?ticket={ticket}"))
        .await;
    assert_eq!(code, 200);
    // Expiry is a matter of the clock: asked until refused, within a few seconds.
    let path = format!("/api/operations/{id}?ticket={ticket}");
    eventually("the ticket expires", || async {
        let (code, body) = s.get(&path).await;
        code == 401
            && body["error"] == "invalid_ticket"
            && body["message"] == "ticket has expired; ask for a new one"
    })
    .await;
    let refused = open_ws(&s.app, &format!("/api/operations/{id}/ws?ticket={ticket}")).await;
    assert_eq!(refused.err().map(|e| e.0), Some(401));
}

#[tokio::test]
async fn an_invalid_ticket_ttl_stops_start_up_naming_the_variable() {
    for bad in ["0", "3601", "soon"] {
        let Err(err) = switchyard::config::Settings::from_lookup(|k| {
            (k == "SWITCHYARD_WATCH_TICKET_TTL_SECS").then(|| bad.to_string())
        }) else {
            panic!("SWITCHYARD_WATCH_TICKET_TTL_SECS={bad} was accepted");
        };
        assert!(
            err.to_string().contains("SWITCHYARD_WATCH_TICKET_TTL_SECS"),
            "{err}"
        );
    }
}

/// The real binary at debug level, its stderr collected as it runs.
struct Logged {
    child: tokio::process::Child,
    port: u16,
    log: Arc<Mutex<String>>,
}

async fn logged_binary(dir: &std::path::Path) -> Logged {
    let config = dir.join("switchyard.toml");
    std::fs::write(&config, CONFIG).expect("write config");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .env("SWITCHYARD_CONFIG_FILE", &config)
        .env("SWITCHYARD_PORT", "0")
        .env("SWITCHYARD_JWT_SECRET", SECRET)
        .env("DATABASE_URL", dir.join("db.sqlite"))
        .env("RUST_LOG", "trace")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary runs");
    let log = Arc::new(Mutex::new(String::new()));
    let (port_tx, port_rx) = tokio::sync::oneshot::channel();
    let mut port_tx = Some(port_tx);
    for out in [
        Box::new(child.stderr.take().expect("stderr"))
            as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(child.stdout.take().expect("stdout")),
    ] {
        let log = log.clone();
        let mut tx = port_tx.take();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split(" listening on ").nth(1) {
                    let port = rest
                        .split_whitespace()
                        .next()
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| p.parse::<u16>().ok());
                    if let (Some(port), Some(tx)) = (port, tx.take()) {
                        let _ = tx.send(port);
                    }
                }
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
    }
    let port = tokio::time::timeout(WAIT, port_rx)
        .await
        .expect("the binary listens in time")
        .expect("the binary says its port");
    Logged { child, port, log }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_tickets_never_reach_the_log_even_at_trace_level() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut bin = logged_binary(dir.path()).await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", bin.port);
    let service = token("worker", &[], &[], Some("service"));
    let viewer = token("viewer", &["project:1"], &[], None);
    let res = http
        .post(url("/api/operations"))
        .bearer_auth(&service)
        .json(&json!({"kind": "convert", "target": "logged", "project": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 202);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let res = http
        .post(url(&format!("/api/operations/{id}/ticket")))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let ticket = res.json::<Value>().await.unwrap()["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    // Used the ways a browser would (and refused ones): the status, the stream, the socket.
    for path in [
        format!("/api/operations/{id}?ticket={ticket}"),
        format!("/api/v1/conversions/{id}/status?ticket={ticket}"),
        format!("/api/operations/{id}?ticket={ticket}x"),
        format!("/api/operations/{id}?token={viewer}"),
    ] {
        http.get(url(&path)).send().await.unwrap();
    }
    let mut sse = http
        .get(url(&format!("/api/operations/{id}/events?ticket={ticket}")))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status().as_u16(), 200);
    tokio::time::timeout(WAIT, sse.chunk())
        .await
        .expect("SSE data")
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://127.0.0.1:{}/api/operations/{id}/ws?ticket={ticket}",
        bin.port
    ))
    .await
    .expect("the ticket opens the socket");
    tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("status frame");
    // The operation ends, and the streams with it (their log lines written meanwhile).
    let res = http
        .post(url(&format!("/api/operations/{id}/complete")))
        .bearer_auth(&service)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let rest = async { while let Ok(Some(_)) = sse.chunk().await {} };
    tokio::time::timeout(WAIT, rest)
        .await
        .expect("the stream ends");
    drop(ws);
    let _ = bin.child.kill().await;
    let log = bin.log.lock().unwrap().clone();
    assert!(
        log.contains(&format!(
            "operation {id}: watch ticket issued to user viewer"
        )),
        "the log was captured:\n{log}"
    );
    for (what, secret) in [
        ("the ticket", ticket.as_str()),
        ("the viewer's token", viewer.as_str()),
        ("the service's token", service.as_str()),
    ] {
        // Each is a JWT: its signature part alone must not appear either.
        let signature = secret.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "{what} is in the log:\n{log}");
    }
}

/// Everything the browser run may take before the test fails.
const BROWSER_RUN_LIMIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_follows_an_operation_over_event_source_and_websocket_with_a_ticket() {
    let dir = crate::dashboard::require_browser_tools();
    let s = secured(|_| {}).await;
    let run = tokio::process::Command::new("node")
        .args([
            "--test",
            "--test-concurrency=1",
            "--test-reporter=spec",
            "tickets.test.mjs",
        ])
        .current_dir(&dir)
        .env("SY_TICKET_URL", format!("http://127.0.0.1:{}", s.app.port))
        .env("SY_TICKET_VIEWER", &s.viewer)
        .env("SY_TICKET_SERVICE", &s.service)
        .env("SY_CHROMIUM", crate::dashboard::chromium())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(BROWSER_RUN_LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("the browser tests did not finish in {BROWSER_RUN_LIMIT:?}"))
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "the ticket browser tests failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // A run that ran nothing must not pass.
    let count = |what: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim_start_matches(['ℹ', ' ']).strip_prefix(what))
            .and_then(|n| n.trim().parse::<u32>().ok())
    };
    assert!(
        count("pass ") == Some(2) && count("fail ") == Some(0),
        "the ticket browser tests did not report their results:\n{stdout}"
    );
}

/// Watching an operation counts as one of the user's connections
/// (`SWITCHYARD_MAX_CONNECTIONS_PER_USER`), by ticket or by token, on the socket and on SSE.
#[tokio::test]
async fn watchers_count_as_their_users_connections() {
    let s = secured(|s| s.max_connections_per_user = 2).await;
    let id = s.start("a").await;
    let ticket = s.ticket_for(&id).await;
    let path = format!("/api/operations/{id}/ws?ticket={ticket}");
    let mut one = open_ws(&s.app, &path).await.expect("the first watcher");
    let mut two = open_ws(&s.app, &path).await.expect("the second watcher");
    next_json(&mut one).await;
    next_json(&mut two).await;
    let Err(refused) = open_ws(&s.app, &path).await else {
        panic!("the third watcher was let in");
    };
    assert_eq!(
        (refused.0, refused.1["error"].as_str()),
        (429, Some("too_many_connections")),
        "{refused:?}"
    );
    let (code, _) = sse_events(
        &s.app,
        &format!("/api/operations/{id}/events?ticket={ticket}"),
        "operation.completed",
    )
    .await;
    assert_eq!(code, 429, "SSE counts too");
    // Another user (the service's token) is not affected.
    let res = s
        .app
        .http
        .get(s.app.url(&format!("/api/operations/{id}/events")))
        .bearer_auth(&s.service)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    drop(res);
    // A watcher that ends frees its place.
    drop(one);
    eventually("the watcher's place to be freed", || async {
        open_ws(&s.app, &path).await.is_ok()
    })
    .await;
}
