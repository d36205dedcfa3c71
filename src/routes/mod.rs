//! HTTP routes, one module per area. Handlers are thin: check the caller, call an actor or the
//! database, map errors through `AppError`.

pub mod activities;
pub mod cors;
pub mod dashboard;
pub mod health;
pub mod openapi;
pub mod operations;
pub mod profiles;
pub mod rooms;
pub mod socketio;
pub mod stats;
pub mod ws;

use std::future::{ready, Ready};
use std::sync::Arc;

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};

use crate::auth::{Identity, UserInfo};
use crate::error::{AppError, ErrorCode};
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    // The sockets' paths first: the router tries resources in this order, and each pattern
    // with a segment (`/operations/{id}`, `/assets/{name}`, `/client.{ext}`) is a regex run
    // on the way past — ~6,000 instructions on every WebSocket upgrade and every long-poll
    // request when these came after them (callgrind, docs/benchmarks.md). No pattern here
    // matches another's paths, so the order changes nothing else.
    cfg.service(web::resource("/ws").route(web::get().to(ws::connect)))
        .service(web::resource("/socket.io/").route(web::to(socketio::socket_io)))
        .service(web::resource("/engine.io/").route(web::to(socketio::engine_io)))
        .service(web::resource("/").route(web::get().to(dashboard::overview)))
        .service(web::resource("/operations").route(web::get().to(dashboard::operations)))
        .service(web::resource("/operations/{id}").route(web::get().to(dashboard::operation)))
        .service(web::resource("/activity").route(web::get().to(dashboard::activity)))
        .service(web::resource("/rooms").route(web::get().to(dashboard::rooms)))
        .service(web::resource("/assets/{name}").route(web::get().to(dashboard::asset)))
        .service(web::resource("/client.{ext:js|d\\.ts}").route(web::get().to(dashboard::client)))
        // CORS for pages on other origins, on every answer of the scope (its default service's
        // 404 too). A method added to `API_ROUTES` goes into `cors::API_METHODS`.
        .service(api_scope(web::scope("/api")).wrap_fn(cors::api));
    root_resources(cfg);
}

/// Declares documented REST routes once: `$routes` (every `(METHOD, path)`, read by the
/// OpenAPI test), `$register` (registers them, grouped by path so that another method on a known
/// path is still answered 405), and `$paths` (their OpenAPI operations, from each handler's
/// `#[utoipa::path]`). A route registered here without that annotation does not compile; one
/// whose annotation names another path or method fails `tests/api/openapi.rs`.
macro_rules! documented_routes {
    (
        $routes:ident, $register:ident($target:ty), $paths:ident, $prefix:literal;
        $( $path:literal => [ $( $method:ident => $module:ident :: $handler:ident ),+ $(,)? ] ),* $(,)?
    ) => {
        /// Every `(METHOD, path)` this list registers.
        pub const $routes: &[(&str, &str)] = &[
            $( $( (documented_routes!(@method $method), concat!($prefix, $path)) ),+ ),*
        ];

        fn $register(target: $target) -> $target {
            target $( .service(web::resource($path) $( .route(web::$method().to($module::$handler)) )+ ) )*
        }

        #[derive(utoipa::OpenApi)]
        #[openapi(paths( $( $( $module::$handler ),+ ),* ))]
        pub(crate) struct $paths;
    };
    // A route with another method adds its line here (and to `cors::API_METHODS`, which a unit
    // test keeps equal to the methods of `API_ROUTES`).
    (@method get) => { "GET" };
    (@method post) => { "POST" };
}

documented_routes! {
    ROOT_ROUTES, root_resources(&mut web::ServiceConfig), RootPaths, "";
    "/health" => [get => health::health],
    "/metrics" => [get => health::metrics],
}

// Every route under `/api`, one line per path. This list is the only place they are registered.
documented_routes! {
    API_ROUTES, api_scope(actix_web::Scope), ApiPaths, "/api";
    "/openapi.json" => [get => openapi::document],
    "/rooms" => [get => rooms::list],
    "/nodes" => [get => health::nodes],
    "/stats/recent" => [get => stats::recent],
    "/rooms/publish" => [post => rooms::publish_many],
    "/rooms/{room}/publish" => [post => rooms::publish],
    "/rooms/{room}/presence" => [get => rooms::presence],
    "/rooms/{room}/history" => [get => rooms::history],
    "/operations" => [post => operations::start, get => operations::list],
    "/operations/{id}" => [get => operations::get],
    "/operations/{id}/logs" => [get => operations::logs, post => operations::append_logs],
    "/operations/{id}/cancel" => [post => operations::cancel],
    "/operations/{id}/progress" => [post => operations::progress],
    "/operations/{id}/complete" => [post => operations::complete],
    "/operations/{id}/fail" => [post => operations::fail],
    "/operations/{id}/events" => [get => operations::events],
    "/operations/{id}/ws" => [get => operations::socket],
    "/operations/{id}/ticket" => [post => operations::ticket],
    "/activities" => [post => activities::create, get => activities::list],
}

/// The caller of a REST endpoint. With a secret, a valid `Authorization: Bearer` token is
/// required; in open mode everyone is an anonymous caller that may do everything.
pub struct Caller {
    pub identity: Identity,
    /// Open mode without a declared identity: published messages carry no `from`.
    pub anonymous: bool,
}

impl Caller {
    pub fn from_user(&self) -> Option<Arc<UserInfo>> {
        (!self.anonymous).then(|| self.identity.user.clone())
    }
}

impl FromRequest for Caller {
    type Error = AppError;
    type Future = Ready<Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(caller(req))
    }
}

#[derive(serde::Deserialize)]
struct TicketQuery {
    ticket: Option<String>,
}

/// The caller of a read-only endpoint of one operation (its WebSocket, SSE stream and status,
/// and an app profile's aliases of them): with `?ticket=` (a browser's way in, which cannot set
/// a header on a WebSocket or an `EventSource`: docs/operations.md, "Browsers"), the ticket's
/// holder, who may see this operation and nothing else; otherwise as [`Caller`]. In open mode a
/// ticket is ignored: everything is allowed anyway.
pub fn watch_caller(req: &HttpRequest, operation: &str) -> Result<Caller, AppError> {
    let ticket = web::Query::<TicketQuery>::from_query(req.query_string())
        .map_err(|_| AppError::new(ErrorCode::BadRequest, "the query string is malformed"))?
        .into_inner()
        .ticket;
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("application state missing")))?;
    match ticket {
        Some(t) if !state.auth.open_mode() => Ok(Caller {
            identity: state.auth.verify_ticket(&t, operation)?,
            anonymous: false,
        }),
        _ => caller(req),
    }
}

fn caller(req: &HttpRequest) -> Result<Caller, AppError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("application state missing")))?;
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .map(|h| h.to_str().unwrap_or(""));
    match state.auth.from_header(header)? {
        Some(identity) => Ok(Caller {
            identity,
            anonymous: false,
        }),
        None if state.auth.open_mode() => Ok(Caller {
            identity: Identity::open("anonymous".into(), None),
            anonymous: true,
        }),
        None => Err(AppError::new(
            ErrorCode::Unauthenticated,
            "this endpoint needs Authorization: Bearer <token>",
        )),
    }
}

/// Validates a room name from a path.
pub fn room_name(raw: &str) -> Result<String, AppError> {
    if crate::names::valid_room_name(raw) {
        Ok(raw.to_string())
    } else {
        Err(AppError::new(
            ErrorCode::InvalidRoom,
            "room names are 1-128 characters of A-Z a-z 0-9 : _ . -",
        ))
    }
}

/// Validates a `limit` query parameter (absent: `default`).
pub fn page_limit(limit: Option<i64>, default: i64, max: i64) -> Result<i64, AppError> {
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(AppError::new(
            ErrorCode::InvalidField,
            format!("`limit` must be 1-{max}"),
        ));
    }
    Ok(limit)
}

/// The `next_before` cursor of a page read newest first: the key of its last row when the page
/// is full (there may be more), none when it is not (this was the last page).
pub fn next_before<T, K>(rows: &[T], limit: i64, key: impl FnOnce(&T) -> K) -> Option<K> {
    if rows.len() as i64 == limit {
        rows.last().map(key)
    } else {
        None
    }
}

/// Refuses a request from a browser page whose origin `SWITCHYARD_ALLOWED_ORIGINS` does not
/// list (403 `forbidden`): for endpoints outside `/api`'s CORS middleware, such as an app
/// profile's aliases of the operation streams.
pub fn require_allowed_origin(req: &HttpRequest, state: &AppState) -> Result<(), AppError> {
    cors::check_origin(req.headers(), &state.settings.allowed_origins)
        .map(|_| ())
        .map_err(|_| AppError::new(ErrorCode::Forbidden, "origin not allowed"))
}
