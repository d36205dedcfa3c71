//! Browsers on another origin: the CORS answers of the Engine.IO endpoint and of the REST API
//! (`src/routes/cors.rs`), header by header, and a front end on another origin in headless
//! Chromium (`tests/browser/cors.test.mjs`), run from here like the dashboard's browser tests.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::dashboard::{chromium, require_browser_tools};
use crate::helpers::*;

const APP: &str = "https://app.example";
const EVIL: &str = "https://evil.example";
const ENGINE: &str = "/socket.io/?EIO=4&transport=polling";

/// A header's value, "" when absent.
fn header(res: &reqwest::Response, name: &str) -> String {
    res.headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or("?"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = app.http.request(method, app.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("request")
}

async fn allowing_app(origins: &[&str], secret: bool) -> TestApp {
    let origins: Vec<String> = origins.iter().map(|o| o.to_string()).collect();
    spawn_app_with(Backend::Sqlite, move |s| {
        s.allowed_origins = origins;
        if secret {
            s.jwt_secret = Some(SECRET.into());
        }
    })
    .await
}

#[tokio::test]
async fn an_engine_io_preflight_answers_like_the_reference_server() {
    let app = allowing_app(&[APP], false).await;
    let pre = send(
        &app,
        Method::OPTIONS,
        ENGINE,
        &[
            ("origin", APP),
            ("access-control-request-method", "PUT"),
            (
                "access-control-request-headers",
                "content-type,x-app-version",
            ),
        ],
    )
    .await;
    assert_eq!(pre.status(), 204);
    assert_eq!(header(&pre, "access-control-allow-origin"), APP);
    assert_eq!(header(&pre, "access-control-allow-credentials"), "true");
    // The `cors` package's list, which includes the PUT the browser asked for.
    assert_eq!(
        header(&pre, "access-control-allow-methods"),
        "GET,HEAD,PUT,PATCH,POST,DELETE"
    );
    // The headers asked for, allowed as asked (not a fixed list).
    assert_eq!(
        header(&pre, "access-control-allow-headers"),
        "content-type,x-app-version"
    );
    assert_eq!(
        header(&pre, "vary"),
        "Origin, Access-Control-Request-Headers"
    );
    assert_eq!(pre.text().await.expect("body"), "");

    // Then the PUT itself: the reference's 400, readable by the page.
    let put = send(&app, Method::PUT, ENGINE, &[("origin", APP)]).await;
    assert_eq!(put.status(), 400);
    assert_eq!(header(&put, "access-control-allow-origin"), APP);
    assert_eq!(header(&put, "access-control-allow-credentials"), "true");
    assert_eq!(header(&put, "vary"), "Origin");
    let body: Value = put.json().await.expect("json");
    assert_eq!(
        body,
        serde_json::json!({"code": 2, "message": "Bad handshake method"})
    );

    // A preflight that asks for no header allows none.
    let pre = send(
        &app,
        Method::OPTIONS,
        ENGINE,
        &[("origin", APP), ("access-control-request-method", "POST")],
    )
    .await;
    assert_eq!(pre.status(), 204);
    assert_eq!(header(&pre, "access-control-allow-headers"), "");
}

#[tokio::test]
async fn the_engine_io_endpoint_refuses_other_origins_and_varies_on_origin() {
    let app = allowing_app(&[APP], false).await;
    for method in [Method::OPTIONS, Method::GET, Method::POST] {
        let res = send(
            &app,
            method.clone(),
            ENGINE,
            &[("origin", EVIL), ("access-control-request-method", "POST")],
        )
        .await;
        assert_eq!(res.status(), 403, "{method}");
        assert_eq!(header(&res, "access-control-allow-origin"), "", "{method}");
        assert_eq!(header(&res, "vary"), "Origin", "{method}");
    }
    // Without an Origin (not a browser): served, nothing to echo, still `Vary: Origin`.
    let res = send(&app, Method::GET, ENGINE, &[]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "access-control-allow-origin"), "");
    assert_eq!(header(&res, "access-control-allow-credentials"), "");
    assert_eq!(header(&res, "vary"), "Origin");
    // Every refusal of an allowed origin carries the headers: an unknown sid, a bad version.
    for path in [
        "/socket.io/?EIO=4&transport=polling&sid=nope",
        "/socket.io/?EIO=3&transport=polling",
    ] {
        let res = send(&app, Method::GET, path, &[("origin", APP)]).await;
        assert_eq!(res.status(), 400, "{path}");
        assert_eq!(header(&res, "access-control-allow-origin"), APP, "{path}");
    }
}

#[tokio::test]
async fn a_rest_preflight_allows_the_api_methods_and_the_headers_asked_for() {
    let app = allowing_app(&[APP], true).await;
    let pre = send(
        &app,
        Method::OPTIONS,
        "/api/operations",
        &[
            ("origin", APP),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization,content-type",
            ),
        ],
    )
    .await;
    // Answered before authentication: a preflight never carries the token.
    assert_eq!(pre.status(), 204);
    assert_eq!(header(&pre, "access-control-allow-origin"), APP);
    assert_eq!(header(&pre, "access-control-allow-credentials"), "true");
    assert_eq!(header(&pre, "access-control-allow-methods"), "GET,POST");
    assert_eq!(
        header(&pre, "access-control-allow-headers"),
        "authorization,content-type"
    );
    assert_eq!(
        header(&pre, "vary"),
        "Origin, Access-Control-Request-Headers"
    );
    // An OPTIONS that is no preflight (no method asked for) is routed like any request.
    let plain = send(&app, Method::OPTIONS, "/api/operations", &[("origin", APP)]).await;
    assert_eq!(plain.status(), 405);
    assert_eq!(header(&plain, "access-control-allow-origin"), APP);
}

#[tokio::test]
async fn rest_answers_carry_the_cors_headers_errors_included() {
    let app = allowing_app(&[APP], true).await;
    let admin = token("admin", &[], &[], Some("admin"));
    let bearer = format!("Bearer {admin}");
    let res = app
        .http
        .post(app.url("/api/operations"))
        .header("origin", APP)
        .header("authorization", &bearer)
        .json(&serde_json::json!({"kind": "demo", "target": "cors", "params": {"step_ms": 1}}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 202);
    assert_eq!(header(&res, "access-control-allow-origin"), APP);
    assert_eq!(header(&res, "access-control-allow-credentials"), "true");
    assert_eq!(
        header(&res, "access-control-expose-headers"),
        "Location, Retry-After"
    );
    assert_eq!(header(&res, "vary"), "Origin");

    // 401, 404 (a route's and the scope's own), 400 and 413 from the extractors: (method,
    // path, with the token, body) and the answer's (status, code).
    let big = format!("{{\"kind\":\"{}\"}}", "x".repeat(300 * 1024));
    let missing = "/api/operations/00000000-0000-0000-0000-000000000000";
    let cases = [
        (
            (Method::GET, "/api/operations", false, None),
            (401, "unauthenticated"),
        ),
        ((Method::GET, missing, true, None), (404, "not_found")),
        (
            (Method::GET, "/api/no-such-thing", true, None),
            (404, "not_found"),
        ),
        (
            (
                Method::POST,
                "/api/operations",
                true,
                Some("{not json".to_string()),
            ),
            (400, "invalid_json"),
        ),
        (
            (Method::POST, "/api/operations", true, Some(big)),
            (413, "payload_too_large"),
        ),
    ];
    for ((method, path, auth, body), (status, code)) in cases {
        let mut req = app
            .http
            .request(method.clone(), app.url(path))
            .header("origin", APP);
        if auth {
            req = req.header("authorization", &bearer);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let res = req.send().await.expect("request");
        assert_eq!(res.status(), status, "{method} {path}");
        assert_eq!(
            header(&res, "access-control-allow-origin"),
            APP,
            "{method} {path}"
        );
        assert_eq!(
            header(&res, "access-control-allow-credentials"),
            "true",
            "{method} {path}"
        );
        let body: Value = res.json().await.expect("json error");
        assert_eq!(body["error"], code, "{method} {path}: {body}");
    }
}

#[tokio::test]
async fn rest_refuses_other_origins_with_forbidden_and_counts_it() {
    let app = allowing_app(&[APP], false).await;
    let counted = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("switchyard_refusals_total{code=\"forbidden\"} "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = counted(
        &app.http
            .get(app.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text"),
    );
    let pre = send(
        &app,
        Method::OPTIONS,
        "/api/operations",
        &[("origin", EVIL), ("access-control-request-method", "POST")],
    )
    .await;
    assert_eq!(pre.status(), 403);
    assert_eq!(header(&pre, "access-control-allow-origin"), "");
    assert_eq!(header(&pre, "vary"), "Origin");
    let body: Value = pre.json().await.expect("json");
    assert_eq!(body["error"], "forbidden");
    // A request that needs no preflight (a browser sends it straight away) is refused before
    // it does anything.
    let res = app
        .http
        .post(app.url("/api/activities"))
        .header("origin", EVIL)
        .json(&serde_json::json!({"project": "p", "type": "t", "message": "m"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 403);
    let (_, list) = app.get("/api/activities?project=p").await;
    assert!(
        !list.to_string().contains("\"m\""),
        "nothing was created: {list}"
    );
    let after = counted(
        &app.http
            .get(app.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text"),
    );
    assert_eq!(after, before + 2);
    // Without an Origin (a backend, curl): served as before.
    let (status, _) = app.get("/api/operations").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn with_no_allow_list_any_origin_is_echoed_on_both_endpoints() {
    let app = spawn_app().await;
    for path in ["/api/operations", ENGINE] {
        let res = send(&app, Method::GET, path, &[("origin", EVIL)]).await;
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(header(&res, "access-control-allow-origin"), EVIL, "{path}");
        assert_eq!(
            header(&res, "access-control-allow-credentials"),
            "true",
            "{path}"
        );
    }
}

// ---- a front end on another origin, in headless Chromium -----------------------------------

/// Everything the browser run may take before the test fails.
const BROWSER_RUN_LIMIT: Duration = Duration::from_secs(180);

/// The socket.io-client@4 bundle a front end loads (installed for tests/js).
fn client_bundle() -> PathBuf {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/js/node_modules/socket.io-client/dist/socket.io.min.js");
    assert!(
        file.is_file(),
        "the cross-origin browser test needs socket.io-client in tests/js/node_modules: run \
         .ci/run (or `npm ci --prefix tests/js`)"
    );
    file
}

const PAGE: &str = "<!DOCTYPE html><html><head><meta charset=\"utf-8\">\
<title>A front end on another origin</title><link rel=\"icon\" href=\"data:,\">\
<script src=\"/socket.io.min.js\"></script></head><body><p>cross-origin app</p></body></html>";

/// Serves the front end (the page and the client bundle) on its own origin, one request per
/// connection.
async fn serve_front_end(listener: tokio::net::TcpListener, bundle: Vec<u8>) {
    let bundle = std::sync::Arc::new(bundle);
    while let Ok((mut sock, _)) = listener.accept().await {
        let bundle = bundle.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 2048];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (status, kind, body): (&str, &str, &[u8]) = match path {
                "/" => ("200 OK", "text/html; charset=utf-8", PAGE.as_bytes()),
                "/socket.io.min.js" => ("200 OK", "text/javascript", bundle.as_slice()),
                _ => ("404 Not Found", "text/plain", b"not here"),
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(reply.as_bytes()).await;
            let _ = sock.write_all(body).await;
            let _ = sock.shutdown().await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_end_on_another_origin_works_in_headless_chromium() {
    let dir = require_browser_tools();
    let bundle = std::fs::read(client_bundle()).expect("read the client bundle");
    let front = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("front-end listener");
    let front_port = front.local_addr().expect("front-end address").port();
    let pages = tokio::spawn(serve_front_end(front, bundle));
    // The same page on two origins: 127.0.0.1 is allowed, localhost is not. Switchyard itself
    // is reached as localhost on its own port: another origin than either.
    let allowed = format!("http://127.0.0.1:{front_port}");
    let app = allowing_app(&[&allowed], true).await;
    let admin = token("admin", &[], &[], Some("admin"));

    let started = Instant::now();
    let run = tokio::process::Command::new("node")
        .args([
            "--test",
            "--test-concurrency=1",
            "--test-reporter=spec",
            "cors.test.mjs",
        ])
        .current_dir(&dir)
        .env("SY_CORS_API", format!("http://localhost:{}", app.port))
        .env("SY_CORS_PAGE", format!("{allowed}/"))
        .env(
            "SY_CORS_REFUSED_PAGE",
            format!("http://localhost:{front_port}/"),
        )
        .env("SY_CORS_TOKEN", &admin)
        .env("SY_CHROMIUM", chromium())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(BROWSER_RUN_LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("the browser tests did not finish in {BROWSER_RUN_LIMIT:?}"))
        .expect("run node");
    pages.abort();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "cross-origin browser tests ran in {:.1} s\n{stdout}\n{stderr}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "the cross-origin browser tests failed ({}):\n{stdout}\n{stderr}",
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
        "the cross-origin browser tests did not report their results:\n{stdout}"
    );
}

#[tokio::test]
async fn the_servers_own_pages_are_allowed_whatever_the_list_says() {
    // The dashboard posts to /api and opens /ws with its own origin, which an operator listing
    // only the app's origin has not listed.
    let app = allowing_app(&[APP], false).await;
    let own = format!("http://127.0.0.1:{}", app.port);
    let res = app
        .http
        .post(app.url("/api/operations"))
        .header("origin", &own)
        .json(&serde_json::json!({"kind": "demo", "target": "own", "params": {"step_ms": 1}}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 202);
    assert_eq!(header(&res, "access-control-allow-origin"), own);
    {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = app.ws_url().into_client_request().expect("request");
        req.headers_mut()
            .insert("origin", own.parse().expect("header"));
        tokio_tungstenite::connect_async(req)
            .await
            .expect("the dashboard's own socket is accepted");
    }
    // The same host on another port, or a host that only starts like it, is another origin.
    for other in [
        format!("http://127.0.0.1:{}", app.port.wrapping_add(1)),
        "http://127.0.0.1".to_string(),
        format!("http://127.0.0.1:{}.evil.example", app.port),
    ] {
        let res = send(&app, Method::GET, "/api/operations", &[("origin", &other)]).await;
        assert_eq!(res.status(), 403, "{other}");
    }
}
