//! `GET /api/openapi.json` (`src/routes/openapi.rs`): an OpenAPI 3.1 document whose routes are
//! exactly the ones the server registers (`routes::API_ROUTES` and `routes::ROOT_ROUTES`, the
//! lists `routes::configure` registers from), each of which answers on a running server as the
//! document says it is secured, with every error answer in the shared `Error` shape.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{json, Value};
use switchyard::routes::{API_ROUTES, ROOT_ROUTES};

use crate::helpers::*;

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The document as a client gets it: without a token, from a server that requires one.
async fn fetch(app: &TestApp) -> Value {
    let res = app
        .http
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 200, "the document is public");
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "content type {content_type}"
    );
    res.json().await.expect("the document is JSON")
}

/// Every `(METHOD, path)` the document describes.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("`paths` is an object");
    paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| (m.to_uppercase(), path.clone()))
        })
        .collect()
}

/// Every `(method, path, operation)` of the document.
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in METHODS {
            if let Some(op) = item.get(*m) {
                out.push((m.to_uppercase(), path.clone(), op));
            }
        }
    }
    out
}

/// The schema a `$ref` names (`#/components/schemas/X`), or the schema itself.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("a schema ref outside components: {r}"));
            let target = &doc["components"]["schemas"][name];
            assert!(target.is_object(), "{r} names no schema");
            target
        }
        None => schema,
    }
}

#[tokio::test]
async fn the_openapi_document_describes_exactly_the_registered_routes() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.jwt_secret = Some(SECRET.into())).await;
    let doc = fetch(&app).await;
    let version = doc["openapi"].as_str().unwrap_or("");
    assert!(version.starts_with("3.1."), "OpenAPI 3.1, not {version:?}");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    let registered: BTreeSet<(String, String)> = API_ROUTES
        .iter()
        .chain(ROOT_ROUTES)
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert!(
        API_ROUTES.iter().all(|(_, p)| p.starts_with("/api/")),
        "API_ROUTES are the routes under /api"
    );
    let described = documented(&doc);
    let missing: Vec<_> = registered.difference(&described).collect();
    let extra: Vec<_> = described.difference(&registered).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "registered but not in the document: {missing:?}; in the document but not registered: \
         {extra:?} (a handler's #[utoipa::path] names the route it is registered at)"
    );
    // Clients generated from the document name a method after its operationId.
    let ids: Vec<&str> = operations(&doc)
        .iter()
        .map(|(m, p, op)| {
            op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{m} {p} has an operationId"))
        })
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "operationIds are unique: {ids:?}");
    // The real-time protocols are not REST: named in the description, not in `paths`.
    let description = doc["info"]["description"].as_str().unwrap_or("");
    assert!(description.contains("docs/protocol.md"), "{description}");
    assert!(!doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .any(|p| p.starts_with("/ws") || p.starts_with("/socket.io")));
    app.shutdown().await;
}

/// The lists the test compares are the only way a route reaches the `/api` scope: the scope is
/// built once, by `api_scope` (which the `documented_routes!` list writes), and nothing else
/// registers a path under `/api`.
#[test]
fn the_api_scope_is_registered_only_from_the_documented_list() {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/routes/mod.rs"))
        .expect("src/routes/mod.rs");
    let scopes: Vec<_> = src.match_indices("web::scope(").collect();
    assert_eq!(scopes.len(), 1, "one scope in src/routes/mod.rs");
    assert!(
        src.contains(".service(api_scope(web::scope(\"/api\")).wrap_fn(cors::api));"),
        "the /api scope gets its routes from api_scope alone"
    );
    for entry in
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/routes")).expect("src/routes")
    {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            !text.contains("web::resource(\"/api") && !text.contains(".route(\"/api"),
            "{} registers a path under /api outside the documented list",
            path.display()
        );
    }
}

#[tokio::test]
async fn every_documented_route_answers_as_its_security_says() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.jwt_secret = Some(SECRET.into())).await;
    let doc = fetch(&app).await;
    for (method, path, op) in operations(&doc) {
        let url = path
            .replace("{room}", "probe-room")
            .replace("{id}", "probe-operation");
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let res = app
            .http
            .request(method.clone(), app.url(&url))
            .send()
            .await
            .expect("request");
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        let what = format!("{method} {url} answered {status} {body}");
        // The router's own answers for what it does not serve.
        assert_ne!(status, 405, "{what}");
        assert_ne!(body["message"], "no such endpoint", "{what}");
        let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
        if secured {
            // Without a token, refused before anything else (a body, a path parameter).
            assert_eq!(status, 401, "{what}");
            assert_eq!(body["error"], "unauthenticated", "{what}");
        } else {
            assert!(status < 400, "a public route answers: {what}");
        }
    }
    app.shutdown().await;
}

#[tokio::test]
async fn every_error_answer_in_the_document_has_the_error_shape() {
    let app = spawn_app().await;
    let doc = fetch(&app).await;
    let error = &doc["components"]["schemas"]["Error"];
    assert_eq!(error["required"], json!(["error", "message"]), "{error}");
    assert!(
        error["properties"]["error"]["enum"]
            .as_array()
            .is_some_and(|codes| codes.contains(&json!("rate_limited"))),
        "the codes are listed: {error}"
    );
    for (method, path, op) in operations(&doc) {
        let what = format!("{method} {path}");
        let responses = op["responses"].as_object().expect("responses");
        for (status, response) in responses {
            let code: u16 = status.parse().expect("numeric status");
            // `/health` answers its report with 503 when degraded: a status, not a refusal.
            if code < 400 || (path == "/health" && code == 503) {
                continue;
            }
            let schema = &response["content"]["application/json"]["schema"];
            assert!(
                schema.is_object(),
                "{what} {status}: a JSON body: {response}"
            );
            let shown = resolve(&doc, schema);
            // `Error` itself, or a body that extends it (409 `duplicate_operation` carries
            // the operation too).
            let props = &shown["properties"];
            assert!(
                schema["$ref"] == "#/components/schemas/Error"
                    || (props["error"].is_object() && props["message"].is_object()),
                "{what} {status}: the Error shape: {shown}"
            );
        }
        let has = |s: &str| responses.contains_key(s);
        let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
        if secured {
            assert!(has("401"), "{what}: a secured route lists 401");
        }
        if path.starts_with("/api/") {
            assert!(
                has("403"),
                "{what}: every /api route may refuse an Origin (403)"
            );
        }
        if op["requestBody"]["content"]["application/json"].is_object() {
            assert!(
                has("400") && has("413"),
                "{what}: a JSON body may be malformed (400) or too large (413)"
            );
        }
        if path.contains('{') {
            assert!(
                op["parameters"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["in"] == "path")),
                "{what}: its path parameter is described"
            );
        }
    }
    app.shutdown().await;
}

/// The schemas are the types the handlers serialize: a real answer has the fields its schema
/// names.
#[tokio::test]
async fn real_answers_have_the_fields_their_schemas_name() {
    let app = spawn_app().await;
    let doc = fetch(&app).await;
    let fields = |schema: &str| -> BTreeSet<String> {
        doc["components"]["schemas"][schema]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("schema {schema}"))
            .keys()
            .cloned()
            .collect()
    };
    let keys = |v: &Value| -> BTreeSet<String> {
        v.as_object().expect("an object").keys().cloned().collect()
    };

    let (status, health) = app.get("/health").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(keys(&health), fields("Health"));

    let (status, started) = app
        .post(
            "/api/operations",
            json!({"kind": "demo", "target": "openapi", "params": {"step_ms": 5}}),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().expect("id");
    let (status, op) = app.get(&format!("/api/operations/{id}")).await;
    assert_eq!(status, 200, "{op}");
    assert_eq!(keys(&op), fields("Operation"));

    let (status, refused) = app.get("/api/operations/no-such-operation").await;
    assert_eq!(status, 404);
    assert_eq!(keys(&refused), fields("Error"));
    app.shutdown().await;
}
