//! `GET /api/openapi.json`: an OpenAPI 3.1 description of the REST API, generated from the
//! handlers (each one's `#[utoipa::path]`) and the types they read and answer (`ToSchema`), so
//! it changes with them. The routes it describes are exactly those `routes::configure`
//! registers from `routes::API_ROUTES` and `routes::ROOT_ROUTES` (tests/api/openapi.rs checks
//! both directions against a running server).
//!
//! Public, like `/health`: it describes endpoints, not data, and every endpoint it names still
//! checks its caller. The document is built once, on the first request.
//!
//! Here too: the shared `Error` schema (the `{error, message}` body of every refusal, its codes
//! listed from `ErrorCode::ALL`), the security schemes (bearer JWT, watch ticket, worker token)
//! and the descriptions of the error statuses the handlers share.

use std::borrow::Cow;
use std::sync::OnceLock;

use actix_web::{http::header, HttpResponse};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Tag};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use crate::error::{AppError, ErrorCode};

/// The body of every error answer: `{"error": code, "message": …}` (`error::AppError`). The
/// schema is named `Error`; its `error` lists every stable code.
pub struct ErrorBody;

impl PartialSchema for ErrorBody {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .description(Some(
                "A refusal or failure. `error` is a stable snake_case code a client may branch \
                 on (never renamed, only added to); `message` is for people and may change.",
            ))
            .property(
                "error",
                ObjectBuilder::new()
                    .schema_type(SchemaType::Type(Type::String))
                    .enum_values(Some(ErrorCode::ALL.iter().map(|c| c.as_str()))),
            )
            .required("error")
            .property(
                "message",
                ObjectBuilder::new().schema_type(SchemaType::Type(Type::String)),
            )
            .required("message")
            .into()
    }
}

impl ToSchema for ErrorBody {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Error")
    }
}

// What each error status means on this API, shared by the handlers' annotations. A handler
// with a status of its own (a 400 naming its fields, a 409) writes its own.

/// 401 on every endpoint that takes a token.
pub(super) const E401: &str = "With `SWITCHYARD_JWT_SECRET` set: no `Authorization: Bearer` \
    token (`unauthenticated`), or a bad or expired one (`invalid_token`, `token_expired`).";
/// 401 on the endpoints that also take a watch ticket.
pub(super) const E401_TICKET: &str = "With `SWITCHYARD_JWT_SECRET` set: neither a token nor \
    a ticket (`unauthenticated`), a bad or expired token (`invalid_token`, `token_expired`), \
    or a ticket that does not verify, has expired or is for another operation \
    (`invalid_ticket`).";
/// 403 from the `/api` scope's origin check, which every route under `/api` has.
pub(super) const E403_ORIGIN: &str = "`forbidden`: the request's `Origin` is not in \
    `SWITCHYARD_ALLOWED_ORIGINS`.";
/// 413 on every endpoint with a JSON body.
pub(super) const E413: &str = "`payload_too_large`: the body is over \
    `SWITCHYARD_MAX_BODY_BYTES`.";
/// 429 of the per-user publish budget.
pub(super) const E429_PUBLISH: &str = "`rate_limited`: over the per-user publish budget \
    (`SWITCHYARD_USER_PUBLISH_RATE`); `Retry-After` says when to try again.";
/// 503 when what answers (an actor, the broker, the database) is away.
pub(super) const E503: &str = "`unavailable` (the broker or an actor is away, e.g. Redis in \
    cluster mode) or `database_unavailable`.";

/// The document's security schemes: see docs/security.md and docs/operations.md.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An HS256 JWT signed with `SWITCHYARD_JWT_SECRET` (claims `sub`, `rooms`, \
                         `publish`, `role`: docs/security.md). Without a secret (open mode) no \
                         token is needed and every caller may do everything.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "ticket",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "ticket",
                "A watch ticket from `POST /api/operations/{id}/ticket`: read-only access to \
                 that one operation's status, SSE stream and WebSocket, for a browser that \
                 cannot set a header (docs/operations.md, \"Browsers\").",
            ))),
        );
        components.add_security_scheme(
            "worker_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Worker-Token",
                "The `worker_token` answered to whoever started an external operation: lets a \
                 worker report for that operation alone (docs/operations.md).",
            ))),
        );
    }
}

const DESCRIPTION: &str = "The REST API of Switchyard, a self-hosted real-time server.\n\n\
Authentication: with `SWITCHYARD_JWT_SECRET` set, endpoints that name a security requirement \
need `Authorization: Bearer <JWT>` (or, where listed, a watch ticket or a worker token); each \
operation's description says which role or permission it needs (`admin`, `service`, or a \
user's `rooms`/`publish` patterns). Without a secret (open mode) every caller may do \
everything. `/health`, `/metrics` and this document are public.\n\n\
Errors: every refusal is `application/json` `{\"error\": code, \"message\": …}` (the `Error` \
schema) with a stable snake_case code; any endpoint may also answer 500 `internal`, and 408 \
`request_timeout` when a body does not arrive within `SWITCHYARD_REQUEST_TIMEOUT_MS`. Every \
route under `/api` answers CORS preflights and refuses an `Origin` not in \
`SWITCHYARD_ALLOWED_ORIGINS` with 403.\n\n\
Not described here: the real-time protocols, `/ws` (JSON frames) and `/socket.io/` \
(Socket.IO v4), which are documented in docs/protocol.md and docs/socketio.md of the \
Switchyard repository; and an app profile's aliases of the per-operation endpoints, whose \
paths the profile's file chooses (docs/profiles.md).";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchyard REST API",
        description = DESCRIPTION,
        license(name = "MIT", identifier = "MIT"),
    ),
    components(schemas(ErrorBody)),
    modifiers(&Security),
    tags(
        (name = "rooms", description = "Publish into rooms; read their presence and history."),
        (name = "operations", description = "Start, list, follow and cancel long-running operations."),
        (name = "workers", description = "How an external worker reports an operation's progress, logs and outcome."),
        (name = "activities", description = "The activity feed."),
        (name = "server", description = "Health, metrics, nodes, and this document."),
    ),
)]
struct ApiDoc;

/// The whole document: the header above and every documented route's operation.
pub fn spec() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(super::RootPaths::openapi());
    doc.merge(super::ApiPaths::openapi());
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.tags
        .get_or_insert_with(Vec::<Tag>::new)
        .sort_by(|a, b| a.name.cmp(&b.name));
    doc
}

/// The document, once, as JSON.
fn json() -> Result<&'static str, AppError> {
    static JSON: OnceLock<String> = OnceLock::new();
    if let Some(json) = JSON.get() {
        return Ok(json);
    }
    let json = spec()
        .to_pretty_json()
        .map_err(|e| AppError::Internal(e.into()))?;
    Ok(JSON.get_or_init(|| json))
}

/// The OpenAPI 3.1 description of this API.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "server",
    description = "This document: every REST route of this server, generated from its \
        handlers. Public (it describes endpoints, not data). View it with any OpenAPI viewer.",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document.", content_type = "application/json"),
        (status = 403, description = E403_ORIGIN, body = ErrorBody),
    ),
)]
pub async fn document() -> Result<HttpResponse, AppError> {
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(json()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_the_error_schema() {
        let doc: serde_json::Value =
            serde_json::from_str(json().expect("serializes")).expect("is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let codes = &doc["components"]["schemas"]["Error"]["properties"]["error"]["enum"];
        assert_eq!(
            codes.as_array().map(Vec::len),
            Some(ErrorCode::ALL.len()),
            "every code in the Error schema: {codes}"
        );
    }
}
