//! `GET /ws`: upgrade to the native protocol and start a session actor.

use actix::{Actor, AsyncContext};
use actix_web::{http::header, web, HttpRequest, HttpResponse};

use crate::actors::session::Session;
use crate::error::{AppError, ErrorCode};
use crate::state::AppState;
use crate::transport::outbox::Framing;
use crate::transport::ws::{upgrade, FrameLimit};

pub async fn connect(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    // Browsers send their page's origin: only allowed ones may open a socket (empty list: any).
    if super::cors::check_origin(req.headers(), &state.settings.allowed_origins).is_err() {
        return Err(AppError::new(ErrorCode::Forbidden, "origin not allowed"));
    }
    // A token in the header is checked before the upgrade: a bad one gets a plain 401.
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|h| h.to_str().unwrap_or(""));
    let mut identity = state.auth.from_header(header)?;
    let slot = state.admit(&req)?;
    // A profile's backend serving `/ws` (`ws = true`) authenticates a browser by its cookies
    // before the upgrade, as a token would; a refusal is a plain HTTP answer. The handler
    // awaits the call, no actor does.
    let profile = state.socketio.profiles.for_ws().cloned();
    let hooks = state.session_deps.hooks.clone();
    let forwarded = hooks
        .as_ref()
        .map(|h| h.capture(req.headers()))
        .unwrap_or_default();
    if let (None, Some(hooks), Some(cfg)) = (
        &identity,
        &hooks,
        profile.as_ref().and_then(|p| p.hooks.clone()),
    ) {
        if cfg.connect.is_some() {
            use crate::hooks::HookKind;
            let body = serde_json::json!({
                "hook": HookKind::Connect.as_str(),
                "transport": "websocket",
                "namespace": null,
                "auth": null,
            });
            let answer = hooks.call(&cfg, HookKind::Connect, &body, &forwarded).await;
            identity = Some(answer.and_then(|a| crate::hooks::identity(&a))?);
        }
    }
    // A signed-in user's connections are counted (the address's were, above); one who
    // authenticates with an `auth` frame is counted then.
    let slot = slot.with_user(state.admit_user(identity.as_ref())?);
    let settings = &state.settings;
    let outbox = state.outbox(Framing::WebSocket);
    // Until it authenticates, a client may send what an `auth` frame needs; the session
    // raises the bound when it does.
    let unauthenticated = identity.is_none() && !state.auth.open_mode();
    let limit = FrameLimit::new(if unauthenticated {
        settings
            .max_unauthenticated_frame_bytes
            .min(settings.max_frame_bytes)
    } else {
        settings.max_frame_bytes
    });
    let deps = state.session_deps.clone();
    upgrade(&req, outbox.clone(), limit.clone(), move |reader| {
        let id = crate::actors::next_session_id();
        Session::create(move |ctx| {
            ctx.add_stream(reader);
            Session::new(id, identity, outbox, deps)
                .with_slot(slot)
                .with_frame_limit(limit)
                .with_hooks_of(profile)
                .with_forwarded(forwarded.shared())
        });
    })
    .map_err(AppError::from)
}
