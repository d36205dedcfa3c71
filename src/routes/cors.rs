//! Cross-origin requests from browsers, for the two kinds of endpoint a page on another origin
//! calls: the Engine.IO endpoint (`/socket.io/`, and `/engine.io/` in conformance mode) and the
//! REST API under `/api`. One origin rule for both, and for WebSocket upgrades
//! (`SWITCHYARD_ALLOWED_ORIGINS`; empty: any origin).
//!
//! The headers are those of the Node reference server configured the way the socket.io docs
//! show it, `new Server({cors: {origin: [..] /* or true */, credentials: true}})`, which hands
//! them to the `cors` package:
//!
//! - every answer: `Vary: Origin`; with an allowed `Origin`, that origin echoed in
//!   `Access-Control-Allow-Origin` and `Access-Control-Allow-Credentials: true` (error answers
//!   too: without them the browser hides the status and the JSON body from the page);
//! - a preflight: 204 with the endpoint's methods in `Access-Control-Allow-Methods` and the
//!   headers the browser asked for (`Access-Control-Request-Headers`) allowed as asked, plus
//!   `Vary: Access-Control-Request-Headers`. The browser then sends the request if its method
//!   is among the endpoint's: the effect of reflecting the requested method, limited to the
//!   methods the endpoint answers.
//!
//! Unlike the reference, an `Origin` that is not allowed is refused (403) instead of answered
//! without CORS headers: the browser would hide the answer either way, but a refusal also stops
//! what a request would have done (a POST that needs no preflight), and counts it.
//!
//! Written here rather than with `actix-cors` because the Engine.IO endpoint must answer like
//! the reference (its refusals are Engine.IO `{code, message}` bodies, its method list the
//! reference's), so that one is ours anyway; and for `/api`, `actix-cors` answers a refused
//! origin or method with a 400 and a plain-text body, not our 403 `{error, message}` with a
//! stable code counted in `/metrics`. One rule in one place for both endpoints is less than a
//! second dependency configured to mimic it.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::Method;
use actix_web::{web, HttpResponse, ResponseError};

use crate::error::{AppError, ErrorCode};
use crate::state::AppState;

/// The methods a preflight to `/socket.io/` allows: the `cors` package's default list, byte for
/// byte. The endpoint answers each of them (with a 400 Engine.IO error for all but GET and
/// POST), and the official test suites check that a PUT gets that 400.
pub const ENGINE_IO_METHODS: &str = "GET,HEAD,PUT,PATCH,POST,DELETE";

/// The methods a preflight to `/api` allows: every method a route under `/api` serves
/// (`routes::API_ROUTES`; a unit test below keeps the two equal).
pub const API_METHODS: &str = "GET,POST";

/// The response headers a page may read from `/api` besides the CORS-safelisted ones: where a
/// started operation lives (`202`) and how long to wait after a `429`.
pub const API_EXPOSED: &str = "Location, Retry-After";

/// An `Origin` header that is not on the allow-list.
#[derive(Debug)]
pub struct OriginRefused;

/// `Ok(Some(origin))` to echo in CORS headers, `Ok(None)` without an Origin header.
///
/// A page of this server's own (the dashboard) is allowed whatever the list says: its `Origin`
/// names the host the browser sent the request to (`Host`). A browser sets both, so no page
/// elsewhere can claim it; without this, listing only the app's origin would refuse the
/// dashboard's POSTs and its socket. Behind a proxy that rewrites `Host` the list decides.
pub fn check_origin(
    headers: &HeaderMap,
    allowed: &[String],
) -> Result<Option<HeaderValue>, OriginRefused> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(None);
    };
    if allowed.is_empty() {
        return Ok(Some(origin.clone()));
    }
    let o = origin.to_str().map_err(|_| OriginRefused)?;
    if allowed.iter().any(|a| a == o) || same_origin(o, headers) {
        Ok(Some(origin.clone()))
    } else {
        Err(OriginRefused)
    }
}

/// Whether `origin` (`scheme://host[:port]`) names the authority the request was sent to.
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    matches!((authority, host), (Some(a), Some(h)) if !a.is_empty() && a.eq_ignore_ascii_case(h))
}

/// The CORS headers of an answer (not a preflight). `Vary: Origin` goes on every answer, with
/// or without an `Origin`: what a cache stored for one origin (or none) is not the answer for
/// another.
pub fn apply(headers: &mut HeaderMap, origin: Option<&HeaderValue>, expose: Option<&'static str>) {
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = origin else {
        return;
    };
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    if let Some(expose) = expose {
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(expose),
        );
    }
}

/// The answer to a preflight from an allowed origin (or none): 204, the endpoint's `methods`,
/// and the request headers the browser asked to send, allowed as asked.
pub fn preflight(
    request: &HeaderMap,
    origin: Option<&HeaderValue>,
    methods: &'static str,
) -> HttpResponse {
    let mut res = HttpResponse::NoContent().finish();
    let headers = res.headers_mut();
    apply(headers, origin, None);
    headers.append(
        header::VARY,
        HeaderValue::from_static("Access-Control-Request-Headers"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(methods),
    );
    if let Some(asked) = request
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .filter(|h| !h.is_empty())
    {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    res
}

/// A CORS preflight: `OPTIONS` with the method the browser means to send.
fn is_preflight(req: &ServiceRequest) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

type Answer = Pin<Box<dyn Future<Output = Result<ServiceResponse, actix_web::Error>>>>;

/// The middleware of the `/api` scope: refuses a disallowed `Origin` (403 `forbidden`), answers
/// preflights, and puts the CORS headers on every other answer, refusals and errors included.
pub fn api<S>(req: ServiceRequest, srv: &S) -> Answer
where
    S: Service<ServiceRequest, Response = ServiceResponse, Error = actix_web::Error>,
    S::Future: 'static,
{
    let checked = match req.app_data::<web::Data<AppState>>() {
        Some(state) => check_origin(req.headers(), &state.settings.allowed_origins),
        // Without the state there is no allow-list to pass: refuse, never allow by accident.
        None if req.headers().contains_key(header::ORIGIN) => Err(OriginRefused),
        None => Ok(None),
    };
    let origin = match checked {
        Ok(origin) => origin,
        Err(OriginRefused) => {
            let mut res =
                AppError::new(ErrorCode::Forbidden, "origin not allowed").error_response();
            apply(res.headers_mut(), None, None);
            return Box::pin(std::future::ready(Ok(req.into_response(res))));
        }
    };
    if is_preflight(&req) {
        let res = preflight(req.headers(), origin.as_ref(), API_METHODS);
        return Box::pin(std::future::ready(Ok(req.into_response(res))));
    }
    let fut = srv.call(req);
    Box::pin(async move {
        match fut.await {
            Ok(mut res) => {
                apply(res.headers_mut(), origin.as_ref(), Some(API_EXPOSED));
                Ok(res)
            }
            // actix renders a handler's or an extractor's error inside the route, so it arrives
            // above as a response; one that still escapes as an error is rendered further out,
            // with the headers this wrapper adds.
            Err(error) => Err(WithCors { error, origin }.into()),
        }
    })
}

/// An error on its way out of the `/api` scope, rendered with the CORS headers.
#[derive(Debug)]
struct WithCors {
    error: actix_web::Error,
    origin: Option<HeaderValue>,
}

impl std::fmt::Display for WithCors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl ResponseError for WithCors {
    fn status_code(&self) -> actix_web::http::StatusCode {
        self.error.as_response_error().status_code()
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = self.error.error_response();
        apply(res.headers_mut(), self.origin.as_ref(), Some(API_EXPOSED));
        res
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::API_METHODS;

    #[test]
    fn a_preflight_allows_exactly_the_methods_of_the_api_routes() {
        let served: BTreeSet<&str> = crate::routes::API_ROUTES.iter().map(|r| r.0).collect();
        let allowed: BTreeSet<&str> = API_METHODS.split(',').collect();
        assert_eq!(
            allowed, served,
            "cors::API_METHODS against routes::API_ROUTES"
        );
    }
}
