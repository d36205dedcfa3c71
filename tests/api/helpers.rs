//! Test harness: a real server on port 0 with a fresh database, and small clients for it.

use std::time::Duration;

use diesel::{Connection, PgConnection, RunQueryDsl};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchyard::config::{DatabaseUrl, Settings};
use switchyard::startup::{Application, ShutdownHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub const SECRET: &str = "test-secret-0123456789abcdef";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where PostgreSQL tests create their databases (one per test).
pub fn pg_admin_url() -> String {
    std::env::var("SWITCHYARD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

fn pg_url_for(db: &str) -> String {
    let admin = pg_admin_url();
    match admin.rfind('/') {
        Some(i) => format!("{}/{db}", &admin[..i]),
        None => format!("{admin}/{db}"),
    }
}

/// Runs SQL on the admin database (creating and dropping test databases, simulating outages).
pub fn pg_admin(sql: &str) {
    let mut conn = PgConnection::establish(&pg_admin_url()).unwrap_or_else(|e| {
        panic!(
            "PostgreSQL must be running for these tests ({}): {e}",
            pg_admin_url()
        )
    });
    diesel::sql_query(sql)
        .execute(&mut conn)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

pub struct TestDb {
    pub url: DatabaseUrl,
    pub pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("switchyard.db");
                Self {
                    url: DatabaseUrl::Sqlite(path.to_string_lossy().into_owned()),
                    pg_name: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let name = format!("sy_test_{}", uuid::Uuid::new_v4().simple());
                pg_admin(&format!("CREATE DATABASE {name}"));
                Self {
                    url: DatabaseUrl::Postgres(pg_url_for(&name)),
                    pg_name: Some(name),
                    _dir: None,
                }
            }
        }
    }
}

impl TestDb {
    /// Another handle on a database some other `TestDb` owns (a second node of a cluster): it
    /// is dropped with its owner, not with this.
    pub fn shared(owner: &TestDb) -> Self {
        Self {
            url: owner.url.clone(),
            pg_name: None,
            _dir: None,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = &self.pg_name {
            if let Ok(mut conn) = PgConnection::establish(&pg_admin_url()) {
                let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn);
            }
        }
    }
}

/// Settings for tests: port 0, one worker, short timers, the given database.
pub fn test_settings(db: &TestDb) -> Settings {
    Settings {
        port: 0,
        database: db.url.clone(),
        db_pool_size: 4,
        db_timeout: Duration::from_millis(1_000),
        workers: 1,
        room_threads: 1,
        stats_interval: Duration::from_millis(500),
        shutdown_timeout: Duration::from_millis(3_000),
        ..Settings::default()
    }
}

pub struct TestApp {
    pub port: u16,
    pub http: reqwest::Client,
    shutdown: ShutdownHandle,
    thread: Option<std::thread::JoinHandle<()>>,
    pub db: TestDb,
}

/// A server with SQLite and default test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(Backend::Sqlite, |_| {}).await
}

/// A server on `backend`, with `tweak` applied to the test settings.
pub async fn spawn_app_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let db = TestDb::new(backend);
    let mut settings = test_settings(&db);
    tweak(&mut settings);
    spawn_app_on(db, settings).await
}

/// A server with exactly these settings on `db` (which it keeps for its life).
pub async fn spawn_app_on(db: TestDb, settings: Settings) -> TestApp {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || {
        let system = actix_web::rt::System::new();
        system.block_on(async move {
            match Application::build(settings).await {
                Ok(app) => {
                    let _ = tx.send(Ok((app.port(), app.shutdown_handle())));
                    if let Err(e) = app.run_until_stopped().await {
                        eprintln!("server error: {e}");
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("{e:#}")));
                }
            }
            actix_web::rt::System::current().stop();
        });
    });
    let (port, shutdown) = rx
        .await
        .expect("server thread answered")
        .unwrap_or_else(|e| panic!("server failed to start: {e}"));
    TestApp {
        port,
        http: reqwest::Client::new(),
        shutdown,
        thread: Some(thread),
        db,
    }
}

impl TestApp {
    /// Floods `room` (below) while `reader`, a member since the room began, receives every
    /// message, in order: the room is not held up by its members that do not read.
    pub async fn flood_past(&self, reader: &mut WsClient, room: &str, total: u64, pad: usize) {
        let publisher = self.flood(room, total, pad);
        for i in 0..total {
            let m = reader.recv_message().await;
            assert_eq!(m["offset"], i + 1);
        }
        publisher.await.expect("publisher");
    }

    /// Publishes `total` messages of ~`pad` bytes each (`{"i": n, "pad": …}`) to `room` over
    /// REST, one after the other, in a task: a flood for the slow-consumer tests (the server
    /// must run with `user_publish_rate = 0`).
    pub fn flood(&self, room: &str, total: u64, pad: usize) -> tokio::task::JoinHandle<()> {
        let url = self.url(&format!("/api/rooms/{room}/publish"));
        let http = self.http.clone();
        let payload = "x".repeat(pad);
        tokio::spawn(async move {
            for i in 0..total {
                let r = http
                    .post(&url)
                    .json(&serde_json::json!({"event": "tick", "data": {"i": i, "pad": payload}}))
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(r.status(), 200);
            }
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// Graceful shutdown, as on SIGTERM; waits for the server thread to end.
    pub async fn shutdown(mut self) {
        self.shutdown.shutdown().await;
        if let Some(t) = self.thread.take() {
            tokio::task::spawn_blocking(move || t.join())
                .await
                .expect("join")
                .expect("server thread ended cleanly");
        }
    }

    /// A raw GET on `/socket.io/?{query}`: status and body text (Engine.IO packets).
    pub async fn socketio_get(&self, query: &str) -> (u16, String) {
        let res = self
            .http
            .get(self.url(&format!("/socket.io/?{query}")))
            .send()
            .await
            .expect("GET /socket.io/");
        (res.status().as_u16(), res.text().await.expect("body"))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let res = self.http.get(self.url(path)).send().await.expect("GET");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_auth(&self, path: &str, token: &str) -> (u16, Value) {
        let res = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let res = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("POST");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_auth(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let res = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("POST");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// The current value of a metric without labels.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} in:\n{text}"))
    }

    pub async fn metrics_text(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// A bare WebSocket upgrade request to `/ws` over plain HTTP, to see how it is refused.
    pub async fn raw_upgrade(&self, bearer: Option<&str>) -> reqwest::Response {
        let mut req = self
            .http
            .get(self.ws_url().replace("ws://", "http://"))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("upgrade request")
    }

    pub async fn ws(&self) -> WsClient {
        WsClient::connect(&self.ws_url(), None).await
    }

    /// A WebSocket that declares `user` (open mode) and is ready.
    pub async fn ws_as(&self, user: &str) -> WsClient {
        let mut c = self.ws().await;
        let r = c
            .request(json!({"type": "auth", "user": user, "name": user.to_uppercase()}))
            .await;
        assert_eq!(r["type"], "authenticated", "{r}");
        c
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if self.thread.is_some() {
            // Not shut down by the test: stop the server without waiting for it.
            self.shutdown.stop_now();
        }
    }
}

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A native-protocol client.
pub struct WsClient {
    stream: Stream,
    pub welcome: Value,
    next_id: u64,
}

/// How a connection ended.
#[derive(Debug)]
pub struct Closed {
    pub code: Option<u16>,
    pub reason: String,
}

impl WsClient {
    pub async fn connect(url: &str, bearer: Option<&str>) -> Self {
        let mut req = url.into_client_request().expect("request");
        if let Some(t) = bearer {
            req.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {t}")).expect("header"),
            );
        }
        let (stream, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect in time")
            .expect("WebSocket connect");
        let mut c = Self {
            stream,
            welcome: Value::Null,
            next_id: 1,
        };
        c.welcome = c.recv().await;
        assert_eq!(c.welcome["type"], "welcome", "first frame is welcome");
        c
    }

    pub async fn send(&mut self, v: Value) {
        self.stream
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.stream.send(m).await.expect("send");
    }

    /// The next JSON frame (pings are answered by the library and skipped).
    pub async fn recv(&mut self) -> Value {
        self.recv_within(WAIT).await
    }

    /// The next JSON frame, which must arrive within `wait` of asking.
    pub async fn recv_within(&mut self, wait: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .expect("a frame arrived in time")
                .expect("stream open")
                .expect("frame ok");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).expect("JSON frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Close(c) => panic!("connection closed unexpectedly: {c:?}"),
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// The next frame that satisfies `pred`, skipping others (e.g. presence updates).
    pub async fn recv_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.recv().await;
            if pred(&v) {
                return v;
            }
        }
    }

    /// The next `message` frame.
    pub async fn recv_message(&mut self) -> Value {
        self.recv_where(|v| v["type"] == "message").await
    }

    /// Sends `v` with a fresh id and returns the reply carrying that id.
    pub async fn request(&mut self, mut v: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        v["id"] = json!(id);
        self.send(v).await;
        self.recv_where(|r| r["id"] == json!(id)).await
    }

    pub async fn join(&mut self, room: &str) -> Value {
        let r = self.request(json!({"type": "join", "room": room})).await;
        assert_eq!(r["type"], "joined", "join {room}: {r}");
        r
    }

    pub async fn publish(&mut self, room: &str, event: &str, data: Value) -> u64 {
        let r = self
            .request(json!({"type": "publish", "room": room, "event": event, "data": data}))
            .await;
        assert_eq!(r["type"], "published", "publish to {room}: {r}");
        r["offset"].as_u64().expect("offset")
    }

    /// Everything received before a ping round trip: proves nothing else was queued.
    pub async fn drain(&mut self) -> Vec<Value> {
        let id = format!("barrier-{}", self.next_id);
        self.next_id += 1;
        self.send(json!({"type": "ping", "id": id})).await;
        let mut before = Vec::new();
        loop {
            let v = self.recv().await;
            if v["type"] == "pong" && v["id"] == json!(id) {
                return before;
            }
            before.push(v);
        }
    }

    /// Waits for the server to close the connection; returns the close frame. Text frames
    /// before it are skipped.
    pub async fn closed(&mut self) -> Closed {
        loop {
            let next = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("closed in time");
            match next {
                Some(Ok(Message::Close(Some(f)))) => {
                    return Closed {
                        code: Some(u16::from(f.code)),
                        reason: f.reason.to_string(),
                    }
                }
                Some(Ok(Message::Close(None))) | None => {
                    return Closed {
                        code: None,
                        reason: String::new(),
                    }
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) => {
                    return Closed {
                        code: None,
                        reason: String::new(),
                    }
                }
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self
            .stream
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }

    /// Drops the TCP connection without a close handshake.
    pub fn abort(self) {
        drop(self.stream);
    }
}

/// Signs a token with the test secret.
pub fn token(sub: &str, rooms: &[&str], publish: &[&str], role: Option<&str>) -> String {
    switchyard::auth::sign(
        SECRET,
        &switchyard::auth::Claims {
            sub: sub.into(),
            name: Some(sub.to_uppercase()),
            rooms: rooms.iter().map(|s| s.to_string()).collect(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
            role: role.map(str::to_string),
            exp: None,
            nbf: None,
        },
    )
    .expect("sign")
}

/// Polls `check` until it returns true or the deadline passes (for state only visible by
/// asking, e.g. an HTTP status during an outage).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---- raw TCP clients: nothing between the test and the server smooths anything over ----

/// A WebSocket upgrade request for `path`.
pub fn handshake(path: &str, upgrade: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// A masked client text frame (payloads under 126 bytes).
pub fn client_text(payload: &str) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let bytes = payload.as_bytes();
    assert!(bytes.len() < 126);
    let mut f = vec![0x81, 0x80 | bytes.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(bytes.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

pub struct Raw {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl Raw {
    pub async fn connect(app: &TestApp) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", app.port))
            .await
            .expect("connect");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// A /ws connection joined to `room`.
    pub async fn member(app: &TestApp, room: &str) -> Self {
        let mut c = Self::connect(app).await;
        let mut bytes = handshake("/ws", "websocket").into_bytes();
        bytes.extend(client_text(
            &json!({"type": "join", "room": room, "id": 1}).to_string(),
        ));
        c.send(&bytes).await;
        assert!(c.head().await.starts_with("http/1.1 101"));
        assert_eq!(c.json().await["type"], "welcome");
        assert_eq!(c.json().await["type"], "joined");
        c
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads until `n` more bytes are buffered, or the server closes (false).
    pub async fn fill(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("server answered in time")
                .expect("read");
            if read == 0 {
                return false;
            }
            self.buf.extend_from_slice(&chunk[..read]);
        }
        true
    }

    /// The HTTP response head (status line and headers, lower-cased).
    pub async fn head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_lowercase();
                self.buf.drain(..end + 4);
                return head;
            }
            let want = self.buf.len() + 1;
            assert!(self.fill(want).await, "closed before a response head");
        }
    }

    /// One unmasked server frame: (opcode, payload).
    pub async fn frame(&mut self) -> (u8, Vec<u8>) {
        assert!(self.fill(2).await, "closed before a frame");
        let opcode = self.buf[0] & 0x0f;
        let (len, start) = match self.buf[1] & 0x7f {
            126 => {
                assert!(self.fill(4).await);
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => panic!("unexpectedly large frame"),
            n => (n as usize, 2),
        };
        assert!(self.fill(start + len).await, "closed inside a frame");
        let payload = self.buf[start..start + len].to_vec();
        self.buf.drain(..start + len);
        (opcode, payload)
    }

    pub async fn json(&mut self) -> Value {
        let (opcode, payload) = self.frame().await;
        assert_eq!(opcode, 1, "a text frame");
        serde_json::from_slice(&payload).expect("JSON frame")
    }

    /// The JSON body that follows `head` (sized by its content-length).
    pub async fn json_body(&mut self, head: &str) -> Value {
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .expect("content-length");
        assert!(self.fill(len).await, "closed inside the body");
        let body = serde_json::from_slice(&self.buf[..len]).expect("JSON body");
        self.buf.drain(..len);
        body
    }

    /// True when the server closes the connection (after whatever is still buffered).
    pub async fn closed(&mut self) -> bool {
        self.buf.clear();
        !self.fill(1).await
    }
}

/// Removes every Redis key under `prefix` (a cluster test's own keys) from the machine's Redis.
pub async fn forget_redis_prefix(prefix: &str) {
    let client = redis::Client::open("redis://127.0.0.1:6379").expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis reachable");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .expect("DEL");
    }
}

/// Runs the real binary with `config` as its `SWITCHYARD_CONFIG_FILE` (a SQLite file in `dir`,
/// port 0) and expects it to refuse to start: returns what it said on stderr.
pub async fn binary_refuses_to_start(config: &std::path::Path, dir: &std::path::Path) -> String {
    binary_refuses_to_start_with(config, dir, &[]).await
}

/// [`binary_refuses_to_start`] with more settings in its environment.
pub async fn binary_refuses_to_start_with(
    config: &std::path::Path,
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .env("SWITCHYARD_CONFIG_FILE", config)
        .env("SWITCHYARD_PORT", "0")
        .env("DATABASE_URL", dir.join("db.sqlite"))
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, out)
        .await
        .expect("the binary exits")
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    stderr
}

/// A real nginx (the Debian package; `.ci/run` installs it) in front of test servers, from a
/// configuration the test writes: `http_body` is the inside of its `http { }` block, with
/// `{dir}` replaced by the instance's own directory (temp files, logs, pid). It runs in the
/// foreground as a child of the test and dies with it.
pub struct Nginx {
    child: tokio::process::Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx and waits until every port in `ports` accepts connections.
    pub async fn start(http_body: &str, ports: &[u16]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display().to_string();
        let conf = format!(
            "worker_processes 1;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{}\n}}\n",
            http_body.replace("{dir}", &d)
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("nginx is installed (.ci/run installs the Debian package)");
        let child = tokio::process::Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off; master_process off;"])
            .kill_on_drop(true)
            .spawn()
            .expect("nginx runs");
        let mut nginx = Self { child, dir };
        for port in ports {
            let deadline = tokio::time::Instant::now() + WAIT;
            while TcpStream::connect(("127.0.0.1", *port)).await.is_err() {
                if let Ok(Some(status)) = nginx.child.try_wait() {
                    panic!("nginx exited ({status}): {}", nginx.error_log());
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "nginx did not listen on {port}: {}",
                    nginx.error_log()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        nginx
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

/// A loopback port nothing listens on right now (for a child process that cannot be told to
/// use port 0 and report it, such as nginx).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Runs one `node --test` file in tests/js with `env`, and expects every test in it to pass.
/// `--test-force-exit`: a test may leave a request it cannot abort (a long poll of a session
/// the server refused holds until the ping interval), which would keep node up ~25 s after
/// every test has finished.
pub async fn run_node_file(file: &str, env: &[(&str, String)]) {
    let js = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    assert!(
        js.join("node_modules/socket.io-client").is_dir(),
        "tests/js/node_modules is missing: run `npm ci --prefix tests/js` (.ci/run does)"
    );
    let run = tokio::process::Command::new("node")
        .args(["--test", "--test-force-exit", "--test-reporter=spec", file])
        .current_dir(&js)
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
