//! `/socket.io/` (and, in conformance mode, `/engine.io/`): the Engine.IO v4 HTTP and
//! WebSocket endpoints. These handlers only check the request and hand it to the session's
//! actor; everything stateful is in `actors::engine`.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix::AsyncContext;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use futures_util::{Stream, StreamExt};

use crate::actors::engine::{
    AttachProbe, BeginPoll, BeginPost, EndPoll, EndPost, EngineConfig, EngineSession, PollRefused,
    PostPackets, Upgrade, UpgradeSwitch,
};
use crate::protocol::engineio::{self, Queued};
use crate::state::AppState;
use crate::transport::outbox::{Frame, Outbox, OutboxStream, Taken};
use crate::transport::ws::{self, FrameLimit};

/// The Engine.IO error answers (`{"code", "message"}` with the codes of the reference server).
fn engine_error(
    status: StatusCode,
    code: u8,
    message: &str,
    cors: Option<&HeaderValue>,
) -> HttpResponse {
    let mut res = HttpResponse::build(status);
    add_cors(&mut res, cors);
    res.json(serde_json::json!({ "code": code, "message": message }))
}

fn unknown_transport(cors: Option<&HeaderValue>) -> HttpResponse {
    engine_error(StatusCode::BAD_REQUEST, 0, "Transport unknown", cors)
}
fn unknown_sid(cors: Option<&HeaderValue>) -> HttpResponse {
    engine_error(StatusCode::BAD_REQUEST, 1, "Session ID unknown", cors)
}
fn bad_handshake_method(cors: Option<&HeaderValue>) -> HttpResponse {
    engine_error(StatusCode::BAD_REQUEST, 2, "Bad handshake method", cors)
}
fn bad_request(cors: Option<&HeaderValue>) -> HttpResponse {
    engine_error(StatusCode::BAD_REQUEST, 3, "Bad request", cors)
}
fn forbidden() -> HttpResponse {
    engine_error(StatusCode::FORBIDDEN, 4, "Forbidden", None)
}
fn unsupported_version(cors: Option<&HeaderValue>) -> HttpResponse {
    engine_error(
        StatusCode::BAD_REQUEST,
        5,
        "Unsupported protocol version",
        cors,
    )
}

fn add_cors(res: &mut HttpResponseBuilder, origin: Option<&HeaderValue>) {
    if let Some(o) = origin {
        res.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone()))
            .insert_header((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true"))
            .insert_header((header::VARY, "Origin"));
    }
}

/// An `Origin` header that is not on the allow-list.
#[derive(Debug)]
pub struct OriginRefused;

/// `Ok(Some(origin))` to echo in CORS headers, `Ok(None)` without an Origin header.
pub fn check_origin(
    req: &HttpRequest,
    allowed: &[String],
) -> Result<Option<HeaderValue>, OriginRefused> {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(None);
    };
    if allowed.is_empty() {
        return Ok(Some(origin.clone()));
    }
    let o = origin.to_str().map_err(|_| OriginRefused)?;
    if allowed.iter().any(|a| a == o) {
        Ok(Some(origin.clone()))
    } else {
        Err(OriginRefused)
    }
}

struct Query<'a> {
    eio: Option<&'a str>,
    transport: Option<&'a str>,
    sid: Option<&'a str>,
}

fn query(qs: &str) -> Query<'_> {
    let mut q = Query {
        eio: None,
        transport: None,
        sid: None,
    };
    for pair in qs.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "EIO" => q.eio = Some(v),
            "transport" => q.transport = Some(v),
            "sid" => q.sid = Some(v),
            _ => {}
        }
    }
    q
}

/// The Switchyard endpoint at `/socket.io/` (the Socket.IO fixture in conformance mode).
pub async fn socket_io(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let config = state.socketio.clone();
    endpoint(req, payload, state, config).await
}

/// The Engine.IO echo at `/engine.io/` (conformance mode only).
pub async fn engine_io(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    match state.engineio_echo.clone() {
        Some(config) => endpoint(req, payload, state, config).await,
        None => HttpResponse::NotFound().finish(),
    }
}

async fn endpoint(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    config: Arc<EngineConfig>,
) -> HttpResponse {
    let cors = match check_origin(&req, &state.settings.allowed_origins) {
        Ok(c) => c,
        Err(OriginRefused) => {
            state.metrics.refused(crate::error::ErrorCode::Forbidden);
            return forbidden();
        }
    };
    let cors = cors.as_ref();
    if req.method() == Method::OPTIONS {
        let mut res = HttpResponse::NoContent();
        add_cors(&mut res, cors);
        return res
            .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, OPTIONS"))
            .insert_header((
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "content-type, authorization",
            ))
            .finish();
    }
    let q = query(req.query_string());
    match q.eio {
        Some("4") => {}
        _ => return unsupported_version(cors),
    }
    let sid = q.sid.map(str::to_string);
    match q.transport {
        Some("polling") => polling(req, payload, state, config, sid, cors).await,
        Some("websocket") => websocket(req, state, config, sid, cors).await,
        _ => unknown_transport(cors),
    }
}

fn header_identity(
    req: &HttpRequest,
    state: &AppState,
) -> Result<Option<crate::auth::Identity>, ()> {
    let h = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|h| h.to_str().unwrap_or(""));
    state.auth.from_header(h).map_err(|_| ())
}

/// A new Engine.IO session: the identity of an `Authorization` header, if any, and a place in
/// the per-address count; or the refusal to answer with.
/// The refusal to answer a request with (boxed: a response is large, a result should not be).
type Refused = Box<HttpResponse>;

fn admit_new(
    req: &HttpRequest,
    state: &AppState,
    cors: Option<&HeaderValue>,
) -> Result<(Option<crate::auth::Identity>, crate::limits::ConnectionSlot), Refused> {
    let Ok(identity) = header_identity(req, state) else {
        let res = engine_error(StatusCode::UNAUTHORIZED, 4, "Forbidden", cors);
        return Err(Box::new(res));
    };
    match state.admit(req) {
        Ok(slot) => Ok((identity, slot)),
        Err(r) => {
            state.metrics.refused(r.code);
            let res = engine_error(StatusCode::TOO_MANY_REQUESTS, 4, &r.message, cors);
            Err(Box::new(res))
        }
    }
}

/// The handshake's headers and cookies that backend hooks forward (none without hooks).
fn forwarded(req: &HttpRequest, state: &AppState) -> crate::hooks::Forwarded {
    state
        .session_deps
        .hooks
        .as_ref()
        .map(|h| h.capture(req.headers()))
        .unwrap_or_default()
}

fn new_sid() -> String {
    use base64::Engine as _;
    let raw: [u8; 15] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

async fn polling(
    req: HttpRequest,
    mut payload: web::Payload,
    state: web::Data<AppState>,
    config: Arc<EngineConfig>,
    sid: Option<String>,
    cors: Option<&HeaderValue>,
) -> HttpResponse {
    let text = |body: bytes::Bytes| {
        let mut res = HttpResponse::Ok();
        add_cors(&mut res, cors);
        res.content_type("text/plain; charset=UTF-8").body(body)
    };
    let Some(sid) = sid else {
        // Handshake.
        if req.method() != Method::GET {
            return bad_handshake_method(cors);
        }
        let (identity, slot) = match admit_new(&req, &state, cors) {
            Ok(ok) => ok,
            Err(refused) => return *refused,
        };
        let sid = new_sid();
        let settings = &state.settings;
        let outbox = Outbox::new(settings.outbox_max_messages, settings.outbox_max_bytes);
        let open = EngineSession::open_packet(&sid, &config, false);
        EngineSession::new(
            sid,
            outbox,
            false,
            config,
            state.session_deps.clone(),
            state.engines.clone(),
            identity,
        )
        .with_slot(slot)
        .with_forwarded(forwarded(&req, &state))
        .launch(|_| {});
        return text(bytes::Bytes::from(open));
    };
    let Some(session) = state.engines.get(&sid) else {
        return unknown_sid(cors);
    };
    match *req.method() {
        Method::GET => {
            let outbox = match session.send(BeginPoll).await {
                Ok(Ok(outbox)) => outbox,
                Ok(Err(PollRefused::Duplicate)) | Ok(Err(PollRefused::NotPolling)) | Err(_) => {
                    return bad_request(cors)
                }
            };
            let waiting = WaitingPoll::new(session.clone(), state.metrics.clone());
            let taken = futures_util::future::poll_fn(|cx| outbox.poll_take(cx)).await;
            drop(waiting);
            let body = match taken {
                Taken::Frames(frames) => engineio::encode_payload(
                    &frames
                        .into_iter()
                        .map(|f| match f {
                            Frame::Text(t) => Queued::Text(t),
                            Frame::Binary(b) => Queued::Binary(b),
                        })
                        .collect::<Vec<_>>(),
                ),
                Taken::Released => bytes::Bytes::from_static(b"6"),
                Taken::Closed => bytes::Bytes::from_static(b"1"),
                Taken::Refused => {
                    // This poll raced its own client's upgrade, whose `3probe` is being written
                    // on the WebSocket right now; answering a moment later keeps that frame
                    // first, as a client reading both connections expects.
                    actix_web::rt::time::sleep(std::time::Duration::from_millis(10)).await;
                    return bad_request(cors);
                }
            };
            text(body)
        }
        Method::POST => {
            if !matches!(session.send(BeginPost).await, Ok(Ok(()))) {
                return bad_request(cors);
            }
            let limit = config.max_payload;
            let mut body = bytes::BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let Ok(chunk) = chunk else {
                    session.do_send(EndPost { close: false });
                    return bad_request(cors);
                };
                if body.len() + chunk.len() > limit {
                    // Frees the POST slot; the session itself carries on.
                    session.do_send(EndPost { close: false });
                    state
                        .metrics
                        .refused(crate::error::ErrorCode::PayloadTooLarge);
                    return engine_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        3,
                        "Payload too large",
                        cors,
                    );
                }
                body.extend_from_slice(&chunk);
            }
            let packets = match engineio::decode_payload(&body) {
                Ok(p) => p,
                Err(_) => {
                    // A broken payload ends the session.
                    session.do_send(EndPost { close: true });
                    return bad_request(cors);
                }
            };
            match session.send(PostPackets(packets)).await {
                Ok(Ok(())) => text(bytes::Bytes::from_static(b"ok")),
                _ => bad_request(cors),
            }
        }
        _ => bad_request(cors),
    }
}

async fn websocket(
    req: HttpRequest,
    state: web::Data<AppState>,
    config: Arc<EngineConfig>,
    sid: Option<String>,
    cors: Option<&HeaderValue>,
) -> HttpResponse {
    let settings = &state.settings;
    match sid {
        None => {
            let (identity, slot) = match admit_new(&req, &state, cors) {
                Ok(ok) => ok,
                Err(refused) => return *refused,
            };
            let outbox = Outbox::new(settings.outbox_max_messages, settings.outbox_max_bytes);
            let limit = FrameLimit::new(EngineSession::frame_bound(&config, settings, false));
            let session = EngineSession::new(
                new_sid(),
                outbox.clone(),
                true,
                config,
                state.session_deps.clone(),
                state.engines.clone(),
                identity,
            );
            let session = session
                .with_slot(slot)
                .with_frame_limit(limit.clone())
                .with_forwarded(forwarded(&req, &state));
            ws::upgrade(&req, outbox, limit, move |reader| {
                session.launch(move |ctx| {
                    ctx.add_stream(reader);
                });
            })
            .unwrap_or_else(|_| bad_request(cors))
        }
        Some(sid) => {
            let Some(session) = state.engines.get(&sid) else {
                return unknown_sid(cors);
            };
            if ws::check(&req).is_err() {
                return bad_request(cors);
            }
            let probe = Outbox::new(16, 64 * 1024);
            let switch = Arc::new(UpgradeSwitch::default());
            // The upgrade is decided before the 101 goes out: a second one is refused.
            let main = match session
                .send(Upgrade {
                    probe: probe.clone(),
                    switch: switch.clone(),
                })
                .await
            {
                Ok(Ok(main)) => main,
                // Already upgraded (or upgrading): like the reference server, accept the
                // WebSocket and close it at once; the session carries on undisturbed.
                _ => {
                    let refused = Outbox::new(1, 1024);
                    refused.close(
                        actix_http::ws::CloseCode::Policy,
                        "session already upgraded",
                    );
                    return ws::upgrade(&req, refused, 1024, drop)
                        .unwrap_or_else(|_| bad_request(cors));
                }
            };
            ws::upgrade_with(
                &req,
                UpgradeStream::new(probe, main, switch),
                config.max_payload,
                // The session may live on another worker's thread: it polls the reader there.
                move |reader| session.do_send(AttachProbe(reader)),
            )
            .unwrap_or_else(|_| bad_request(cors))
        }
    }
}

/// A long-polling GET waiting for packets: counted while it waits, and its session hears that
/// it ended however its future ends. (actix-web keeps polling a handler whose client went away,
/// so an abandoned poll still waits for its next packet — at most a ping interval.)
struct WaitingPoll {
    session: actix::Addr<EngineSession>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl WaitingPoll {
    fn new(session: actix::Addr<EngineSession>, metrics: Arc<crate::metrics::Metrics>) -> Self {
        metrics.polls_waiting.fetch_add(1, Ordering::Relaxed);
        Self { session, metrics }
    }
}

impl Drop for WaitingPoll {
    fn drop(&mut self) {
        self.metrics.polls_waiting.fetch_sub(1, Ordering::Relaxed);
        self.session.do_send(EndPoll);
    }
}

/// The body of an upgrading WebSocket: the probe's own queue until the upgrade completes, then
/// the session's main outbox.
pub struct UpgradeStream {
    probe: OutboxStream,
    main: Arc<Outbox>,
    main_stream: Option<OutboxStream>,
    switch: Arc<UpgradeSwitch>,
}

impl UpgradeStream {
    fn new(probe: Arc<Outbox>, main: Arc<Outbox>, switch: Arc<UpgradeSwitch>) -> Self {
        Self {
            probe: OutboxStream::new(probe),
            main,
            main_stream: None,
            switch,
        }
    }
}

impl Stream for UpgradeStream {
    type Item = Result<bytes::Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.main_stream.is_none() {
            // Drain the probe first (it holds `3probe`), whether or not the switch happened.
            match Pin::new(&mut this.probe).poll_next(cx) {
                Poll::Ready(Some(item)) => return Poll::Ready(Some(item)),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
            if !this.switch.switched.load(Ordering::Acquire) {
                return Poll::Pending;
            }
            this.main_stream = Some(OutboxStream::new(this.main.clone()));
        }
        match this.main_stream.as_mut() {
            Some(s) => Pin::new(s).poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}
