//! `/socket.io/` (and, in conformance mode, `/engine.io/`): the Engine.IO v4 HTTP and
//! WebSocket endpoints. These handlers only check the request and hand it to the session's
//! actor; everything stateful is in `actors::engine`.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use actix::AsyncContext;
use actix_web::http::header;
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::{Stream, StreamExt};

use super::cors;
use crate::actors::engine::{
    AttachProbe, BeginPoll, BeginPost, EndPoll, EndPost, EngineConfig, EngineSession, PollRefused,
    PostPackets, Upgrade, UpgradeSwitch,
};
use crate::protocol::engineio::{self, Queued};
use crate::state::AppState;
use crate::transport::outbox::{Frame, Framing, Outbox, OutboxStream, Taken};
use crate::transport::socket::WriteSocket;
use crate::transport::ws::{self, FrameLimit};

/// The Engine.IO error answers (`{"code", "message"}` with the codes of the reference server).
fn engine_error(status: StatusCode, code: u8, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "code": code, "message": message }))
}

fn unknown_transport() -> HttpResponse {
    engine_error(StatusCode::BAD_REQUEST, 0, "Transport unknown")
}
fn unknown_sid() -> HttpResponse {
    engine_error(StatusCode::BAD_REQUEST, 1, "Session ID unknown")
}
/// `unknown_sid`, and when the id names another node, a warning (once per process: a client
/// can send any sid) that the proxy in front does not route by session id.
fn unknown_sid_here(state: &AppState, sid: &str) -> HttpResponse {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let (Some(here), Some((there, _))) = (state.settings.node_id.as_deref(), sid.split_once('.'))
    {
        if here != there && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            log::warn!(
                "a Socket.IO request for a session of node {:?} reached node {here:?}: the proxy does not send requests to the node holding their session (docs/cluster.md, \"Socket.IO long-polling across nodes\"); warned once",
                there.chars().take(32).collect::<String>()
            );
        }
    }
    unknown_sid()
}
fn bad_handshake_method() -> HttpResponse {
    engine_error(StatusCode::BAD_REQUEST, 2, "Bad handshake method")
}
fn bad_request() -> HttpResponse {
    engine_error(StatusCode::BAD_REQUEST, 3, "Bad request")
}
fn forbidden() -> HttpResponse {
    engine_error(StatusCode::FORBIDDEN, 4, "Forbidden")
}
fn unsupported_version() -> HttpResponse {
    engine_error(StatusCode::BAD_REQUEST, 5, "Unsupported protocol version")
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
    let origin = match cors::check_origin(req.headers(), &state.settings.allowed_origins) {
        Ok(origin) => origin,
        Err(cors::OriginRefused) => {
            state.metrics.refused(crate::error::ErrorCode::Forbidden);
            let mut res = forbidden();
            cors::apply(res.headers_mut(), None, None);
            return res;
        }
    };
    // Every OPTIONS is a preflight here, as in the reference server (its `cors` middleware
    // answers them before the Engine.IO checks).
    if req.method() == Method::OPTIONS {
        return cors::preflight(req.headers(), origin.as_ref(), cors::ENGINE_IO_METHODS);
    }
    let mut res = serve(req, payload, state, config).await;
    // On every answer, refusals included: the browser shows a page only what carries them.
    cors::apply(res.headers_mut(), origin.as_ref(), None);
    res
}

async fn serve(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    config: Arc<EngineConfig>,
) -> HttpResponse {
    let q = query(req.query_string());
    match q.eio {
        Some("4") => {}
        _ => return unsupported_version(),
    }
    let sid = q.sid.map(str::to_string);
    match q.transport {
        Some("polling") => polling(req, payload, state, config, sid).await,
        Some("websocket") => websocket(req, state, config, sid).await,
        _ => unknown_transport(),
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
) -> Result<(Option<crate::auth::Identity>, crate::limits::ConnectionSlot), Refused> {
    let Ok(identity) = header_identity(req, state) else {
        let res = engine_error(StatusCode::UNAUTHORIZED, 4, "Forbidden");
        return Err(Box::new(res));
    };
    match state.admit(req) {
        Ok(slot) => Ok((identity, slot)),
        Err(r) => {
            state.metrics.refused(r.code);
            let res = engine_error(StatusCode::TOO_MANY_REQUESTS, 4, &r.message);
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

/// A new Engine.IO session id: 120 random bits, after this node's name and a `.` when the node
/// has one (`SWITCHYARD_NODE_ID`). The session lives on this node only; with the name in the
/// id, a proxy in front of several nodes can send each long-polling request (and the upgrade)
/// to the node holding its session by the `sid` query parameter alone (docs/cluster.md).
/// Base64url never contains a `.`, so the name is everything before the first one.
fn new_sid(node: Option<&str>) -> String {
    use base64::Engine as _;
    let raw: [u8; 15] = rand::random();
    let random = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    match node {
        Some(node) => format!("{node}.{random}"),
        None => random,
    }
}

async fn polling(
    req: HttpRequest,
    mut payload: web::Payload,
    state: web::Data<AppState>,
    config: Arc<EngineConfig>,
    sid: Option<String>,
) -> HttpResponse {
    let text = |body: bytes::Bytes| {
        HttpResponse::Ok()
            .content_type("text/plain; charset=UTF-8")
            .body(body)
    };
    let Some(sid) = sid else {
        // Handshake.
        if req.method() != Method::GET {
            return bad_handshake_method();
        }
        let (identity, slot) = match admit_new(&req, &state) {
            Ok(ok) => ok,
            Err(refused) => return *refused,
        };
        let sid = new_sid(state.settings.node_id.as_deref());
        let outbox = state.outbox(Framing::WebSocket);
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
        return unknown_sid_here(&state, &sid);
    };
    match *req.method() {
        Method::GET => {
            let outbox = match session.send(BeginPoll).await {
                Ok(Ok(outbox)) => outbox,
                Ok(Err(PollRefused::Duplicate)) | Ok(Err(PollRefused::NotPolling)) | Err(_) => {
                    return bad_request()
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
                    return bad_request();
                }
            };
            text(body)
        }
        Method::POST => {
            if !matches!(session.send(BeginPost).await, Ok(Ok(()))) {
                return bad_request();
            }
            let limit = config.max_payload;
            let mut body = bytes::BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let Ok(chunk) = chunk else {
                    session.do_send(EndPost { close: false });
                    return bad_request();
                };
                if body.len() + chunk.len() > limit {
                    // Frees the POST slot; the session itself carries on.
                    session.do_send(EndPost { close: false });
                    state
                        .metrics
                        .refused(crate::error::ErrorCode::PayloadTooLarge);
                    return engine_error(StatusCode::PAYLOAD_TOO_LARGE, 3, "Payload too large");
                }
                body.extend_from_slice(&chunk);
            }
            let packets = match engineio::decode_payload(&body) {
                Ok(p) => p,
                Err(_) => {
                    // A broken payload ends the session.
                    session.do_send(EndPost { close: true });
                    return bad_request();
                }
            };
            match session.send(PostPackets(packets)).await {
                Ok(Ok(())) => text(bytes::Bytes::from_static(b"ok")),
                _ => bad_request(),
            }
        }
        _ => bad_request(),
    }
}

async fn websocket(
    req: HttpRequest,
    state: web::Data<AppState>,
    config: Arc<EngineConfig>,
    sid: Option<String>,
) -> HttpResponse {
    let settings = &state.settings;
    match sid {
        None => {
            let (identity, slot) = match admit_new(&req, &state) {
                Ok(ok) => ok,
                Err(refused) => return *refused,
            };
            let outbox = state.outbox(Framing::WebSocket);
            let limit = FrameLimit::new(EngineSession::frame_bound(&config, settings, false));
            let session = EngineSession::new(
                new_sid(state.settings.node_id.as_deref()),
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
            .unwrap_or_else(|_| bad_request())
        }
        Some(sid) => {
            let Some(session) = state.engines.get(&sid) else {
                return unknown_sid_here(&state, &sid);
            };
            if ws::check(&req).is_err() {
                return bad_request();
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
                        .unwrap_or_else(|_| bad_request());
                }
            };
            // Direct writes into the main outbox once the switch happened (before it, polls
            // drain that outbox): the socket waits in the stream until then.
            let socket = Arc::new(std::sync::OnceLock::new());
            let direct = ws::Direct {
                attach: Box::new({
                    let socket = socket.clone();
                    move |s| {
                        let _ = socket.set(s);
                    }
                }),
                written: main.clone(),
                // The body drains the probe's outbox first: the 101 goes out on its own.
                answer_in_outbox: false,
            };
            ws::upgrade_with(
                &req,
                UpgradeStream::new(probe, main, switch, socket),
                Some(direct),
                config.max_payload,
                // The session may live on another worker's thread: it polls the reader there.
                move |reader| session.do_send(AttachProbe(reader)),
            )
            .unwrap_or_else(|_| bad_request())
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
        metrics.polls_waiting.inc();
        Self { session, metrics }
    }
}

impl Drop for WaitingPoll {
    fn drop(&mut self) {
        self.metrics.polls_waiting.dec();
        self.session.do_send(EndPoll);
    }
}

/// The body of an upgrading WebSocket: the probe's own queue until the upgrade completes, then
/// the session's main outbox. Once switched it holds the main outbox's stream only: the probe's
/// outbox and the switch are dropped, not kept for the connection's life (a few hundred bytes
/// on every connection that came through long-polling, as browsers' do).
pub enum UpgradeStream {
    Probing {
        probe: OutboxStream,
        main: Arc<Outbox>,
        switch: Arc<UpgradeSwitch>,
        /// The connection's socket, attached to `main` for direct writes at the switch.
        socket: Arc<OnceLock<Arc<WriteSocket>>>,
    },
    Switched(OutboxStream),
}

impl UpgradeStream {
    fn new(
        probe: Arc<Outbox>,
        main: Arc<Outbox>,
        switch: Arc<UpgradeSwitch>,
        socket: Arc<OnceLock<Arc<WriteSocket>>>,
    ) -> Self {
        Self::Probing {
            probe: OutboxStream::new(probe),
            main,
            switch,
            socket,
        }
    }
}

impl Stream for UpgradeStream {
    type Item = Result<bytes::Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let UpgradeStream::Probing {
            probe,
            main,
            switch,
            socket,
        } = this
        {
            // Drain the probe first (it holds `3probe`), whether or not the switch happened.
            match Pin::new(probe).poll_next(cx) {
                Poll::Ready(Some(item)) => return Poll::Ready(Some(item)),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
            if !switch.switched.load(Ordering::Acquire) {
                return Poll::Pending;
            }
            if let Some(socket) = socket.get() {
                main.attach(socket.clone());
            }
            *this = UpgradeStream::Switched(OutboxStream::new(main.clone()));
        }
        match this {
            UpgradeStream::Switched(s) => Pin::new(s).poll_next(cx),
            UpgradeStream::Probing { .. } => Poll::Pending,
        }
    }
}
