//! Backend hooks (docs/profiles.md, "Backend hooks"): a real server on port 0 whose profiles
//! call a real HTTP backend started here on port 0 (a small HTTP/1.1 server over a tokio
//! listener, which records every call and verifies its signature), and Socket.IO clients over
//! a real WebSocket. Each hook allows, denies, times out and meets a backend that is down.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

const HOOK_SECRET: &str = "hook-secret-for-tests";

/// One call the backend received.
#[derive(Debug, Clone)]
struct Call {
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
    /// The signature header checked against the body and timestamp with [`HOOK_SECRET`].
    signed: bool,
}

impl Call {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the backend answers a call: status, body, and how long it thinks first.
type Answer = (u16, Value, Duration);

/// How the backend decides what to answer a call (path, body).
type Decide = Arc<dyn Fn(&str, &Value) -> Answer + Send + Sync>;

struct Backend {
    port: u16,
    calls: Arc<Mutex<Vec<Call>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start(answer: impl Fn(&str, &Value) -> Answer + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the backend");
        let port = listener.local_addr().expect("backend address").port();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(answer);
        let recorded = calls.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let (answer, recorded) = (answer.clone(), recorded.clone());
                tokio::spawn(async move {
                    serve(conn, answer, recorded).await;
                });
            }
        });
        Backend { port, calls, task }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One connection: requests read one after another (keep-alive), each answered.
async fn serve(mut conn: tokio::net::TcpStream, answer: Decide, recorded: Arc<Mutex<Vec<Call>>>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let path = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("")
            .to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + 4 + len {
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body_bytes = buf[head_end + 4..head_end + 4 + len].to_vec();
        buf.drain(..head_end + 4 + len);
        let find = |n: &str| headers.iter().find(|(h, _)| h == n).map(|(_, v)| v.clone());
        let signed = match (
            find("x-switchyard-timestamp"),
            find("x-switchyard-signature"),
        ) {
            (Some(ts), Some(sig)) => {
                // What a backend does: HMAC-SHA256 of "<timestamp>.<body>" with the shared
                // secret, compared in constant time, and a timestamp close to now.
                let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).expect("key");
                mac.update(ts.as_bytes());
                mac.update(b".");
                mac.update(&body_bytes);
                let hex = sig.strip_prefix("sha256=").unwrap_or("");
                let bytes: Option<Vec<u8>> = (0..hex.len() / 2)
                    .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                    .collect();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_secs();
                let fresh = ts.parse::<u64>().is_ok_and(|t| now.abs_diff(t) <= 300);
                fresh && bytes.is_some_and(|b| mac.verify_slice(&b).is_ok())
            }
            _ => false,
        };
        let body: Value = serde_json::from_slice(&body_bytes).unwrap_or(Value::Null);
        let (status, out, delay) = answer(&path, &body);
        recorded.lock().expect("calls").push(Call {
            path,
            headers,
            body,
            signed,
        });
        if !delay.is_zero() {
            tokio::time::sleep(delay).await; // the backend being slow is what is tested
        }
        let out = out.to_string();
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{out}",
            out.len()
        );
        if conn.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A minimal Socket.IO v5 client over the Engine.IO WebSocket transport.
struct Sio {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_ack: u64,
    /// Packets read while waiting for something else (an event that came before an ack).
    skipped: std::collections::VecDeque<String>,
}

impl Sio {
    async fn open(app: &TestApp, cookie: Option<&str>, csrf: Option<&str>) -> Self {
        let url = format!(
            "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket",
            app.port
        );
        let mut req = url.into_client_request().expect("request");
        if let Some(c) = cookie {
            req.headers_mut()
                .insert("cookie", c.parse().expect("cookie header"));
        }
        if let Some(c) = csrf {
            req.headers_mut()
                .insert("x-csrf-token", c.parse().expect("csrf header"));
        }
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("websocket");
        let mut s = Sio {
            ws,
            next_ack: 1,
            skipped: Default::default(),
        };
        let open = s.recv().await;
        assert!(open.starts_with('0'), "{open}");
        s
    }

    /// The next Socket.IO packet (Engine.IO pings answered on the way).
    async fn recv(&mut self) -> String {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a packet in time")
                .expect("the socket is open")
                .expect("a frame");
            match m {
                Message::Text(t) if t.as_str() == "2" => {
                    self.ws.send(Message::text("3")).await.expect("pong");
                }
                Message::Text(t) => return t.to_string(),
                _ => {}
            }
        }
    }

    async fn send(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// CONNECT to a namespace: `Ok(sid payload)` or `Err(CONNECT_ERROR payload)`.
    async fn connect(&mut self, nsp: &str, auth: Value) -> Result<Value, Value> {
        let prefix = if nsp == "/" {
            String::new()
        } else {
            format!("{nsp},")
        };
        self.send(format!("40{prefix}{auth}")).await;
        let p = self.recv().await;
        let body = |p: &str, kind: &str| -> Value {
            let rest = p.strip_prefix(kind).expect("kind");
            let rest = rest.strip_prefix(&prefix).unwrap_or(rest);
            serde_json::from_str(rest).expect("json payload")
        };
        if p.starts_with("40") {
            Ok(body(&p, "40"))
        } else {
            assert!(p.starts_with("44"), "{p}");
            Err(body(&p, "44"))
        }
    }

    /// An event with an ack; the ack's arguments.
    async fn ack(&mut self, nsp: &str, args: Value) -> Value {
        let id = self.next_ack;
        self.next_ack += 1;
        let prefix = if nsp == "/" {
            String::new()
        } else {
            format!("{nsp},")
        };
        self.send(format!("42{prefix}{id}{args}")).await;
        let want = format!("43{prefix}{id}");
        loop {
            let p = self.recv().await;
            if let Some(rest) = p.strip_prefix(&want) {
                return serde_json::from_str(rest).expect("ack json");
            }
            self.skipped.push_back(p);
        }
    }

    /// The next event named `event`: its arguments.
    async fn event(&mut self, event: &str) -> Value {
        loop {
            let p = match self.skipped.pop_front() {
                Some(p) => p,
                None => self.recv().await,
            };
            let Some(i) = p.find('[') else { continue };
            if !p.starts_with("42") {
                continue;
            }
            let args: Value = serde_json::from_str(&p[i..]).expect("event json");
            if args[0] == event {
                return args;
            }
        }
    }
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let file = dir.path().join("switchyard.toml");
    std::fs::write(&file, text).expect("write config");
    file
}

/// A port nothing listens on (bound, then released).
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The backend of these tests: cookie `session=good` is user 42; `dash:secret` may not be
/// joined; `bad` may not be published, `shout` is rewritten; rpc `deployments` answers the
/// dashboard's list (seed 003), `slow` takes longer than the profile's timeout.
fn dashboard_backend(path: &str, body: &Value) -> Answer {
    let now = Duration::ZERO;
    match path {
        "/hooks/connect" => {
            if body["auth"]["ticket"] == "t-7" {
                return (200, json!({"user": "7", "rooms": ["dash:*"]}), now);
            }
            (403, json!({"message": "no session"}), now)
        }
        "/hooks/subscribe" if body["room"] == "dash:secret" => {
            (403, json!({"message": "not your dashboard"}), now)
        }
        "/hooks/subscribe" => (200, json!({}), now),
        "/hooks/publish" if body["event"] == "bad" => (403, json!({}), now),
        "/hooks/publish" if body["event"] == "shout" => (
            200,
            json!({"data": {"text": body["data"]["text"].as_str().unwrap_or("").to_uppercase()}}),
            now,
        ),
        "/hooks/publish" => (200, Value::Null, now),
        "/hooks/rpc" if body["method"] == "slow" => (200, json!({}), Duration::from_secs(3)),
        "/hooks/rpc" if body["method"] == "deployments" => (
            200,
            json!({"deployments": [{"id": 1, "hostname": "KXP2-CORO-001", "status": "completed"}],
                   "asked_by": body["user"], "filter": body["data"]}),
            now,
        ),
        "/hooks/rpc" => (500, json!({}), now),
        _ => (404, json!({}), now),
    }
}

fn config(backend: u16, down: u16) -> String {
    format!(
        r#"
[profiles.dash]
namespace = "/"

[profiles.dash.hooks]
url = "http://127.0.0.1:{backend}/hooks"
timeout_ms = 500
forward_headers = ["x-csrf-token"]
forward_cookies = ["session"]
connect = "/connect"
subscribe = "/subscribe"
publish = "/publish"
rpc = "/rpc"
ws = true

[profiles.dash.events.request_deployments]
hook = "deployments"

[profiles.dash.events.request_system_status]
hook = "deployments"
emit = "deployments_refresh"

[profiles.dash.events.share_deployments]
hook = "deployments"
room = "dash:{{0}}"
event = "deployments_refresh"

[profiles.dash.events.slow]
hook = "slow"

[profiles.down]
namespace = "/down"

[profiles.down.hooks]
url = "http://127.0.0.1:{down}/hooks"
rpc = "/rpc"
connect = "/connect"

[profiles.down.events.request_deployments]
hook = "deployments"

[profiles.nohook]
namespace = "/nohook"

[profiles.nohook.hooks]
url = "http://127.0.0.1:{down}/hooks"
rpc = "/rpc"

[profiles.nohook.events.request_deployments]
hook = "deployments"
"#
    )
}

async fn dashboard_app(backend: &Backend) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_config(&dir, &config(backend.port, dead_port()));
    let app = spawn_app_with(crate::helpers::Backend::Sqlite, |s| {
        s.config_file = Some(file);
        // Tokens are on: the connect hook is what lets a cookie-only browser in.
        s.jwt_secret = Some(SECRET.into());
        s.hook_secret = Some(HOOK_SECRET.into());
    })
    .await;
    (app, dir)
}

/// `connect`: the backend authenticates the handshake's cookie and names the user and its
/// rooms, as a token would; only the cookies and headers the profile names reach it, signed.
#[tokio::test]
async fn the_connect_hook_authenticates_a_cookie_and_gives_the_identity() {
    let backend = Backend::start(|path, body| {
        if path == "/hooks/connect" {
            return (
                200,
                json!({"user": "u-42", "name": "Ada", "rooms": ["dash:*"], "publish": ["dash:*"]}),
                Duration::ZERO,
            );
        }
        dashboard_backend(path, body)
    })
    .await;
    let (app, _dir) = dashboard_app(&backend).await;
    let mut sio = Sio::open(&app, Some("session=good; tracking=nope"), Some("csrf-1")).await;
    sio.connect("/", json!({"client": "dashboard"}))
        .await
        .expect("connected by the backend's word");
    let calls = backend.calls();
    let call = calls
        .iter()
        .find(|c| c.path == "/hooks/connect")
        .expect("a connect call");
    assert!(call.signed, "the signature verifies: {call:?}");
    assert_eq!(call.header("x-switchyard-hook"), Some("connect"));
    assert_eq!(call.header("cookie"), Some("session=good"), "{call:?}");
    assert_eq!(call.header("x-csrf-token"), Some("csrf-1"));
    assert_eq!(call.body["auth"], json!({"client": "dashboard"}));
    assert_eq!(call.body["transport"], "socket.io");
    // The identity's patterns decide, as a token's would.
    let joined = sio.ack("/", json!(["join", {"room": "dash:1"}])).await;
    assert_eq!(joined[0]["ok"], true, "{joined}");
    let refused = sio.ack("/", json!(["join", {"room": "admin"}])).await;
    assert_eq!(refused[0]["error"]["code"], "forbidden", "{refused}");
    // The rpc call names the user the backend gave.
    let answer = sio.ack("/", json!(["request_deployments"])).await;
    assert_eq!(answer[0]["asked_by"], "u-42", "{answer}");
    app.shutdown().await;
}

/// `connect` denied (403) and the backend down: CONNECT_ERROR with a clear code.
#[tokio::test]
async fn the_connect_hook_denies_and_reports_a_backend_that_is_down() {
    let backend = Backend::start(dashboard_backend).await;
    let (app, _dir) = dashboard_app(&backend).await;
    let mut sio = Sio::open(&app, Some("session=bad"), None).await;
    let err = sio.connect("/", json!({})).await.expect_err("denied");
    assert_eq!(err["data"]["code"], "forbidden", "{err}");
    assert_eq!(err["message"], "no session");
    // The same connection may try again (another namespace, or this one with other auth).
    let ok = sio.connect("/", json!({"ticket": "t-7"})).await;
    assert!(ok.is_ok(), "{ok:?}");
    let err = sio.connect("/down", json!({})).await.expect_err("down");
    assert_eq!(err["data"]["code"], "backend_unavailable", "{err}");
    app.shutdown().await;
}

/// `subscribe`: the backend allows or denies a join.
#[tokio::test]
async fn the_subscribe_hook_allows_and_denies_joins() {
    let backend = Backend::start(dashboard_backend).await;
    let (app, _dir) = dashboard_app(&backend).await;
    let mut sio = Sio::open(&app, None, None).await;
    sio.connect("/", json!({"ticket": "t-7"}))
        .await
        .expect("in");
    let ok = sio.ack("/", json!(["join", {"room": "dash:1"}])).await;
    assert_eq!(ok[0]["ok"], true, "{ok}");
    let denied = sio.ack("/", json!(["join", {"room": "dash:secret"}])).await;
    assert_eq!(denied[0]["error"]["code"], "forbidden", "{denied}");
    assert_eq!(denied[0]["error"]["message"], "not your dashboard");
    let calls = backend.calls();
    let sub: Vec<&Call> = calls
        .iter()
        .filter(|c| c.path == "/hooks/subscribe")
        .collect();
    assert_eq!(sub.len(), 2, "{calls:?}");
    assert!(sub.iter().all(|c| c.signed && c.body["user"] == "7"));
    app.shutdown().await;
}

/// `publish`: allowed as is, rewritten, or denied; the other members get what the backend
/// allowed.
#[tokio::test]
async fn the_publish_hook_allows_rewrites_and_denies() {
    let backend = Backend::start(dashboard_backend).await;
    let (app, _dir) = dashboard_app(&backend).await;
    let mut a = Sio::open(&app, None, None).await;
    a.connect("/", json!({"ticket": "t-7"})).await.expect("in");
    let mut b = Sio::open(&app, None, None).await;
    b.connect("/", json!({"ticket": "t-7"})).await.expect("in");
    for s in [&mut a, &mut b] {
        let j = s.ack("/", json!(["join", {"room": "dash:1"}])).await;
        assert_eq!(j[0]["ok"], true, "{j}");
    }
    // The connect hook gave no publish patterns: user 7 may not publish at all, and no call
    // is made for a publish refused anyway.
    let before = backend.calls().len();
    let r = a
        .ack(
            "/",
            json!(["publish", {"room": "dash:1", "event": "note", "data": {}}]),
        )
        .await;
    assert_eq!(r[0]["error"]["code"], "forbidden", "{r}");
    assert_eq!(backend.calls().len(), before);
    app.shutdown().await;

    // With publish rights (a backend that grants them).
    let backend = Backend::start(|path, body| {
        if path == "/hooks/connect" {
            return (
                200,
                json!({"user": "8", "rooms": ["dash:*"], "publish": ["dash:*"]}),
                Duration::ZERO,
            );
        }
        dashboard_backend(path, body)
    })
    .await;
    let (app, _dir) = dashboard_app(&backend).await;
    let mut a = Sio::open(&app, None, None).await;
    a.connect("/", json!({})).await.expect("in");
    let mut b = Sio::open(&app, None, None).await;
    b.connect("/", json!({})).await.expect("in");
    for s in [&mut a, &mut b] {
        let j = s.ack("/", json!(["join", {"room": "dash:1"}])).await;
        assert_eq!(j[0]["ok"], true, "{j}");
    }
    let ok = a
        .ack(
            "/",
            json!(["publish", {"room": "dash:1", "event": "shout", "data": {"text": "hi"}}]),
        )
        .await;
    assert_eq!(ok[0]["ok"], true, "{ok}");
    let got = b.event("shout").await;
    assert_eq!(got[1], json!({"text": "HI"}), "rewritten by the backend");
    let denied = a
        .ack(
            "/",
            json!(["publish", {"room": "dash:1", "event": "bad", "data": {}}]),
        )
        .await;
    assert_eq!(denied[0]["error"]["code"], "forbidden", "{denied}");
    let ok = a
        .ack(
            "/",
            json!(["publish", {"room": "dash:1", "event": "plain", "data": {"n": 1}}]),
        )
        .await;
    assert_eq!(ok[0]["ok"], true, "{ok}");
    let got = b.event("plain").await;
    assert_eq!(got[1], json!({"n": 1}), "allowed unchanged");
    let calls = backend.calls();
    let published: Vec<&Call> = calls
        .iter()
        .filter(|c| c.path == "/hooks/publish")
        .collect();
    assert_eq!(published.len(), 3, "{calls:?}");
    assert!(published.iter().all(|c| c.signed));
    assert_eq!(published[0].body["room"], "dash:1");
    app.shutdown().await;
}

/// `rpc`: the answer to the ack, to the socket as an event, or into a room; a slow backend
/// and one that is down answer `backend_unavailable` and the socket goes on.
#[tokio::test]
async fn the_rpc_hook_answers_and_fails_clearly() {
    let backend = Backend::start(dashboard_backend).await;
    let (app, _dir) = dashboard_app(&backend).await;
    let mut a = Sio::open(&app, None, None).await;
    a.connect("/", json!({"ticket": "t-7"})).await.expect("in");
    let answer = a
        .ack("/", json!(["request_deployments", {"venue": "CORO"}]))
        .await;
    assert_eq!(
        answer[0]["deployments"][0]["hostname"], "KXP2-CORO-001",
        "{answer}"
    );
    assert_eq!(answer[0]["filter"], json!({"venue": "CORO"}));
    let calls = backend.calls();
    let rpc = calls
        .iter()
        .find(|c| c.path == "/hooks/rpc")
        .expect("an rpc call");
    assert!(rpc.signed);
    assert_eq!(rpc.body["method"], "deployments");
    assert_eq!(rpc.body["namespace"], "/");

    // As an event to the socket (seed 003: `deployments_refresh`).
    let ack = a.ack("/", json!(["request_system_status"])).await;
    assert_eq!(ack[0]["ok"], true, "{ack}");
    let ev = a.event("deployments_refresh").await;
    assert_eq!(ev[1]["deployments"][0]["id"], 1, "{ev}");

    // Into a room: every member gets it (the sender too).
    let mut b = Sio::open(&app, None, None).await;
    b.connect("/", json!({"ticket": "t-7"})).await.expect("in");
    for s in [&mut a, &mut b] {
        let j = s.ack("/", json!(["join", {"room": "dash:1"}])).await;
        assert_eq!(j[0]["ok"], true, "{j}");
    }
    // User 7 has no publish rights: the room publish is refused as any publish would be.
    let r = a.ack("/", json!(["share_deployments", "1"])).await;
    assert_eq!(r[0]["error"]["code"], "forbidden", "{r}");

    // Slower than the profile's timeout: a clear error, and the socket survives.
    let slow = a.ack("/", json!(["slow"])).await;
    assert_eq!(slow[0]["ok"], false, "{slow}");
    assert_eq!(slow[0]["error"]["code"], "backend_unavailable", "{slow}");
    assert!(
        slow[0]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("500 ms")),
        "{slow}"
    );
    let again = a.ack("/", json!(["request_deployments"])).await;
    assert_eq!(again[0]["deployments"][0]["id"], 1, "{again}");

    // A backend that is down (the /nohook profile's backend has no connect hook, so the
    // socket connects with a token; its rpc's backend is not listening).
    let token = token("u1", &["*"], &["*"], None);
    let mut c = Sio::open(&app, None, None).await;
    c.connect("/nohook", json!({"token": token}))
        .await
        .expect("in with a token");
    let down = c.ack("/nohook", json!(["request_deployments"])).await;
    assert_eq!(down[0]["error"]["code"], "backend_unavailable", "{down}");
    let alive = c.ack("/nohook", json!(["join", {"room": "x"}])).await;
    assert_eq!(alive[0]["ok"], true, "the socket survives: {alive}");
    app.shutdown().await;
}

/// An rpc answer published into a room reaches every member.
#[tokio::test]
async fn an_rpc_answer_can_go_to_a_room() {
    let backend = Backend::start(|path, body| {
        if path == "/hooks/connect" {
            return (
                200,
                json!({"user": "9", "rooms": ["dash:*"], "publish": ["dash:*"]}),
                Duration::ZERO,
            );
        }
        dashboard_backend(path, body)
    })
    .await;
    let (app, _dir) = dashboard_app(&backend).await;
    let mut a = Sio::open(&app, None, None).await;
    a.connect("/", json!({})).await.expect("in");
    let mut b = Sio::open(&app, None, None).await;
    b.connect("/", json!({})).await.expect("in");
    for s in [&mut a, &mut b] {
        let j = s.ack("/", json!(["join", {"room": "dash:1"}])).await;
        assert_eq!(j[0]["ok"], true, "{j}");
    }
    let r = a.ack("/", json!(["share_deployments", "1"])).await;
    assert_eq!(r[0]["ok"], true, "{r}");
    for s in [&mut a, &mut b] {
        let ev = s.event("deployments_refresh").await;
        assert_eq!(ev[1]["deployments"][0]["id"], 1, "{ev}");
    }
    app.shutdown().await;
}

/// Hooks without `SWITCHYARD_HOOK_SECRET` stop start-up: unsigned calls are never made.
#[tokio::test]
async fn hooks_without_a_secret_stop_start_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_config(&dir, &config(dead_port(), dead_port()));
    let stderr = binary_refuses_to_start(file.as_ref(), dir.path()).await;
    assert!(stderr.contains("SWITCHYARD_HOOK_SECRET"), "{stderr}");
}

/// A `connect` hook that authenticates from cookies, on a non-loopback address, with no
/// `SWITCHYARD_ALLOWED_ORIGINS`: start-up stops (any site's page could connect as the user).
#[tokio::test]
async fn cookie_connect_hooks_on_a_public_address_without_allowed_origins_stop_start_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_config(&dir, &config(dead_port(), dead_port()));
    let stderr = binary_refuses_to_start_with(
        file.as_ref(),
        dir.path(),
        &[
            ("SWITCHYARD_HOST", "0.0.0.0"),
            ("SWITCHYARD_JWT_SECRET", "s3cret"),
            ("SWITCHYARD_HOOK_SECRET", "h00k"),
        ],
    )
    .await;
    assert!(
        stderr.contains("SWITCHYARD_ALLOWED_ORIGINS") && stderr.contains("forward_cookies"),
        "{stderr}"
    );
}

/// Seed 003's dashboard client, socket.io-client@4, asking for its deployments with an ack
/// (tests/js/hooks.test.mjs) against a backend started here.
#[tokio::test]
async fn socket_io_client_gets_an_rpc_answer_in_its_ack() {
    let backend = Backend::start(|path, body| {
        if path == "/hooks/connect" {
            return (
                200,
                json!({"user": "dash-1", "rooms": ["dash:*"]}),
                Duration::ZERO,
            );
        }
        dashboard_backend(path, body)
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_config(&dir, &config(backend.port, dead_port()));
    crate::profiles::run_node_tweaked("hooks.test.mjs", |s| {
        s.config_file = Some(file);
        s.jwt_secret = Some(SECRET.into());
        s.hook_secret = Some(HOOK_SECRET.into());
    })
    .await;
    let calls = backend.calls();
    assert!(
        calls.iter().any(|c| c.path == "/hooks/rpc"
            && c.signed
            && c.header("cookie") == Some("session=abc")),
        "{calls:?}"
    );
}

/// `/ws`: the profile with `ws = true` authenticates the upgrade by its cookie (before the
/// upgrade: a refusal is a plain HTTP answer) and authorizes its joins.
#[tokio::test]
async fn the_connect_and_subscribe_hooks_serve_ws_upgrades() {
    let backend = Backend::start(|path, body| {
        if path == "/hooks/connect" {
            return (
                200,
                json!({"user": "w-1", "name": "Wes", "rooms": ["dash:*"]}),
                Duration::ZERO,
            );
        }
        dashboard_backend(path, body)
    })
    .await;
    let (app, _dir) = dashboard_app(&backend).await;
    let mut req = app.ws_url().into_client_request().expect("request");
    req.headers_mut()
        .insert("cookie", "session=s1; other=x".parse().expect("cookie"));
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("in time")
        .expect("upgraded");
    let welcome: Value = loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = m {
            break serde_json::from_str(t.as_str()).expect("json");
        }
    };
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["user"]["user"], "w-1", "{welcome}");
    for (id, room) in [(1, "dash:1"), (2, "dash:secret")] {
        let join = json!({"type": "join", "id": id, "room": room}).to_string();
        ws.send(Message::text(join)).await.expect("send");
    }
    let mut answers = Vec::new();
    while answers.len() < 2 {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(t.as_str()).expect("json");
            if v.get("id").is_some() {
                answers.push(v);
            }
        }
    }
    let by_id = |i: i64| {
        answers
            .iter()
            .find(|a| a["id"] == i)
            .cloned()
            .expect("answer")
    };
    assert_eq!(by_id(1)["type"], "joined", "{answers:?}");
    assert_eq!(by_id(2)["code"], "forbidden", "{answers:?}");
    let calls = backend.calls();
    let connect = calls
        .iter()
        .find(|c| c.path == "/hooks/connect")
        .expect("connect call");
    assert!(connect.signed);
    assert_eq!(connect.body["transport"], "websocket");
    assert_eq!(connect.header("cookie"), Some("session=s1"));
    let sub = calls
        .iter()
        .filter(|c| c.path == "/hooks/subscribe")
        .count();
    assert_eq!(sub, 2, "{calls:?}");
    app.shutdown().await;

    // A backend that refuses: 403 before the upgrade, with the JSON error body.
    let backend = Backend::start(dashboard_backend).await;
    let (app, _dir) = dashboard_app(&backend).await;
    let err = tokio_tungstenite::connect_async(app.ws_url())
        .await
        .expect_err("refused before the upgrade");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(res) => {
            assert_eq!(res.status(), 403);
            let body: Value =
                serde_json::from_slice(res.body().as_deref().unwrap_or(b"{}")).expect("json");
            assert_eq!(body["error"], "forbidden", "{body}");
        }
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
    app.shutdown().await;
}
