//! docs/deploying.md's nginx (plain and TLS) and Caddy configurations, run for real: each block
//! is read from the page (only its ports and certificate paths changed) and a real nginx or
//! Caddy is put in front of Switchyard. WebSocket
//! upgrades, SSE and Socket.IO long-polling pass through; with `SWITCHYARD_TRUSTED_PROXIES`
//! the per-address connection limit counts the clients behind nginx (each test client binds
//! its own loopback address, 127.0.0.2 / 127.0.0.3), and a client's own `X-Forwarded-For`
//! does not let it escape its limit.

use std::net::IpAddr;

use futures_util::StreamExt;
use serde_json::json;
use switchyard::client_addr::TrustedProxies;

use crate::helpers::*;

/// The first ```nginx block of docs/deploying.md, listening on `listen` and proxying to
/// Switchyard on `upstream`.
fn documented_nginx(listen: u16, upstream: u16) -> String {
    let page = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/deploying.md"),
    )
    .expect("docs/deploying.md");
    let block = page
        .split("```nginx\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("an nginx block in docs/deploying.md");
    assert!(block.contains("listen 80;") && block.contains("server 127.0.0.1:8080;"));
    block
        .replace("listen 80;", &format!("listen 127.0.0.1:{listen};"))
        .replace(
            "server 127.0.0.1:8080;",
            &format!("server 127.0.0.1:{upstream};"),
        )
}

/// An HTTP client whose connections come from `from` (a loopback address of its own).
fn client_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().expect("address"))
        .build()
        .expect("client")
}

/// A Socket.IO long-polling handshake through `url` from `client`: the status.
async fn handshake(client: &reqwest::Client, url: &str, spoof: Option<&str>) -> u16 {
    let mut req = client.get(format!("{url}/socket.io/?EIO=4&transport=polling"));
    if let Some(addr) = spoof {
        req = req.header("x-forwarded-for", addr);
    }
    req.send().await.expect("handshake").status().as_u16()
}

#[tokio::test]
async fn behind_the_documented_nginx_each_client_has_its_own_connection_limit() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.max_connections_per_ip = 1;
        s.new_connections_per_ip = 0;
        s.trusted_proxies = TrustedProxies::parse("127.0.0.1").expect("trusted");
    })
    .await;
    let port = free_port();
    let _nginx = Nginx::start(&documented_nginx(port, app.port), &[port]).await;
    let url = format!("http://127.0.0.1:{port}");
    let (two, three) = (client_from("127.0.0.2"), client_from("127.0.0.3"));
    // One session each (a polling handshake holds a connection slot until it times out).
    assert_eq!(handshake(&two, &url, None).await, 200);
    assert_eq!(
        handshake(&three, &url, None).await,
        200,
        "a second client behind nginx"
    );
    // 127.0.0.2 again: its own limit, whatever it claims to be.
    assert_eq!(handshake(&two, &url, None).await, 429);
    assert_eq!(
        handshake(&two, &url, Some("198.51.100.1")).await,
        429,
        "spoofed"
    );
    // Straight to Switchyard (not through a trusted proxy), a client's header is ignored.
    let direct = app.url("");
    let direct = direct.trim_end_matches('/');
    let local = client_from("127.0.0.4");
    assert_eq!(handshake(&local, direct, Some("198.51.100.2")).await, 200);
    assert_eq!(handshake(&local, direct, Some("198.51.100.3")).await, 429);
}

/// The control: without the setting every client behind nginx is nginx, one budget for all.
#[tokio::test]
async fn without_trusted_proxies_every_client_behind_nginx_shares_one_limit() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.max_connections_per_ip = 1;
        s.new_connections_per_ip = 0;
    })
    .await;
    let port = free_port();
    let _nginx = Nginx::start(&documented_nginx(port, app.port), &[port]).await;
    let url = format!("http://127.0.0.1:{port}");
    assert_eq!(handshake(&client_from("127.0.0.2"), &url, None).await, 200);
    assert_eq!(handshake(&client_from("127.0.0.3"), &url, None).await, 429);
}

/// WebSocket upgrades, SSE (unbuffered: each event as it comes) and Socket.IO long-polling
/// through the documented configuration.
#[tokio::test]
async fn websockets_sse_and_polling_pass_through_the_documented_nginx() {
    let app = spawn_app().await;
    let port = free_port();
    let _nginx = Nginx::start(&documented_nginx(port, app.port), &[port]).await;
    passes_websockets_sse_and_polling(&app, &format!("127.0.0.1:{port}")).await;
}

/// The documented Caddyfile, run by a real Caddy (Debian's package) in front of Switchyard:
/// only the site address (plain HTTP on a free port, so no certificate is needed) and the
/// upstream port are changed, and Caddy's admin API is turned off for the test.
#[tokio::test]
async fn websockets_sse_and_polling_pass_through_the_documented_caddy() {
    let app = spawn_app().await;
    let port = free_port();
    let _caddy = Caddy::start(&documented_caddy(port, app.port), port).await;
    passes_websockets_sse_and_polling(&app, &format!("127.0.0.1:{port}")).await;
}

/// The ```caddyfile block of docs/deploying.md, serving plain HTTP on `listen` and proxying to
/// Switchyard on `upstream`.
fn documented_caddy(listen: u16, upstream: u16) -> String {
    let page = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/deploying.md"),
    )
    .expect("docs/deploying.md");
    let block = page
        .split("```caddyfile\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a caddyfile block in docs/deploying.md");
    assert!(block.contains("realtime.example.com {") && block.contains("127.0.0.1:8080"));
    let site = block
        .replace(
            "realtime.example.com {",
            &format!("http://127.0.0.1:{listen} {{"),
        )
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{upstream}"));
    format!("{{\n    admin off\n}}\n\n{site}")
}

/// A Caddy process with `config`, stopped when dropped.
struct Caddy {
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Caddy {
    async fn start(config: &str, port: u16) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("Caddyfile");
        std::fs::write(&file, config).expect("write Caddyfile");
        assert!(
            std::path::Path::new("/usr/bin/caddy").exists(),
            "caddy is installed (.ci/run installs the Debian package)"
        );
        let child = tokio::process::Command::new("/usr/bin/caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&file)
            // Caddy keeps its state (certificates, autosaved config) under these.
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start caddy");
        eventually("caddy to listen", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        Self { child, _dir: dir }
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A room round trip over `/ws`, an operation's SSE while it runs, and a Socket.IO
/// long-polling CONNECT, all through the proxy at `base` (`host:port`).
async fn passes_websockets_sse_and_polling(app: &TestApp, base: &str) {
    let base = base.to_string();

    // /ws: a room round trip between two connections through nginx (a request's answer is
    // read past the frames before it, so the publisher is not the one listening).
    let mut listener = WsClient::connect(&format!("ws://{base}/ws"), None).await;
    listener.join("project:proxied").await;
    let mut publisher = WsClient::connect(&format!("ws://{base}/ws"), None).await;
    publisher.join("project:proxied").await;
    publisher
        .publish("project:proxied", "hello", json!(1))
        .await;
    assert_eq!(listener.recv_message().await["data"], 1);

    // SSE of a running demo operation: its first events arrive while it still runs.
    let (status, op) = app
        .post(
            "/api/operations",
            json!({"kind": "demo", "target": "proxied", "params": {"step_ms": 400}}),
        )
        .await;
    assert_eq!(status, 202, "{op}");
    let id = op["id"].as_str().expect("id");
    let res = reqwest::get(format!("http://{base}/api/operations/{id}/events"))
        .await
        .expect("events");
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let mut text = String::new();
    while !text.contains("data:") {
        let chunk = tokio::time::timeout(WAIT, body.next())
            .await
            .expect("an event before the operation ends (not buffered)")
            .expect("a chunk")
            .expect("bytes");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let (_, now) = app.get(&format!("/api/operations/{id}")).await;
    assert_eq!(
        now["status"], "running",
        "the event came while it ran: {now}"
    );

    // Socket.IO long-polling: handshake, then CONNECT and its answer on the next poll.
    let http = reqwest::Client::new();
    let open = http
        .get(format!("http://{base}/socket.io/?EIO=4&transport=polling"))
        .send()
        .await
        .expect("handshake")
        .text()
        .await
        .expect("body");
    let sid = open
        .split("\"sid\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("sid")
        .to_string();
    let post = http
        .post(format!(
            "http://{base}/socket.io/?EIO=4&transport=polling&sid={sid}"
        ))
        .body("40")
        .send()
        .await
        .expect("CONNECT");
    assert_eq!(post.status(), 200);
    let poll = http
        .get(format!(
            "http://{base}/socket.io/?EIO=4&transport=polling&sid={sid}"
        ))
        .send()
        .await
        .expect("poll")
        .text()
        .await
        .expect("body");
    assert!(poll.starts_with("40{"), "{poll}");
}

/// The documented TLS server (the second ```nginx block) around the documented `location` and
/// with the documented redirect, on a self-signed certificate made here; everything else is
/// as written. The client side is `tests/js/deploying-tls.test.mjs` (Node speaks TLS and
/// `wss://`; the Rust test clients here do not).
#[tokio::test]
async fn the_documented_nginx_tls_server_carries_rest_sse_and_secure_websockets() {
    let app = spawn_app().await;
    let certs = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=realtime.example.com", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "{made:?}");

    let page = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/deploying.md"),
    )
    .expect("docs/deploying.md");
    let blocks: Vec<&str> = page
        .split("```nginx\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .collect();
    let (plain, with_tls) = (blocks[0], blocks[1]);
    // From the first block: the map and the upstream, and the body of its `location`.
    let head = &plain[..plain.find("server {").expect("a server block")];
    let location = plain
        .split("location / {\n")
        .nth(1)
        .and_then(|l| l.rsplit_once("    }\n}"))
        .map(|(body, _)| body)
        .expect("the location's body");
    let (tls_port, http_port) = (free_port(), free_port());
    assert!(with_tls.contains("# … the location of the configuration above …"));
    let tls_server = with_tls
        .replace("# … the location of the configuration above …", location)
        .replace(
            "listen 443 ssl;",
            &format!("listen 127.0.0.1:{tls_port} ssl;"),
        )
        .replace("listen 80;", &format!("listen 127.0.0.1:{http_port};"))
        .replace(
            "/etc/letsencrypt/live/realtime.example.com/fullchain.pem",
            &cert.display().to_string(),
        )
        .replace(
            "/etc/letsencrypt/live/realtime.example.com/privkey.pem",
            &key.display().to_string(),
        );
    let config = format!(
        "{}{tls_server}",
        head.replace(
            "server 127.0.0.1:8080;",
            &format!("server 127.0.0.1:{};", app.port)
        )
    );
    let _nginx = Nginx::start(&config, &[tls_port, http_port]).await;
    run_node_file(
        "deploying-tls.test.mjs",
        &[
            ("SY_TLS_URL", format!("https://127.0.0.1:{tls_port}")),
            ("SY_HTTP_URL", format!("http://127.0.0.1:{http_port}")),
        ],
    )
    .await;
}
