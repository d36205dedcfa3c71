//! The Engine.IO session actor: one per Engine.IO connection (`sid`), across HTTP long-polling,
//! the upgrade probe and WebSocket. It owns the connection's outbox, the heartbeat, and the
//! Socket.IO layer: namespace CONNECT/DISCONNECT, binary attachments, and turning events into
//! requests for one [`Session`] per connected namespace (the same session actor `/ws` uses).
//!
//! In: [`BeginPoll`]/[`EndPoll`] and [`PostPackets`] (polling requests), [`Upgrade`] and
//! [`AttachProbe`] (the upgrade), the WebSocket's messages (a stream the actor polls),
//! [`SocketEnded`] (its sockets). Out: packets into its outbox,
//! [`Inbound`] and [`Disconnect`] to its sockets.
//!
//! Modes: `Switchyard` serves the real thing; `Echo` and `Fixture` serve what the official
//! Engine.IO and Socket.IO protocol test suites expect (`switchyard conformance`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use actix_http::ws::CloseCode;
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::Value;

use super::session::{Disconnect, Inbound, Session, SocketEnded};
use super::SessionId;
use crate::auth::Identity;
use crate::error::{ErrorCode, Refusal};
use crate::protocol::engineio::{Handshake, Packet};
use crate::protocol::sio;
use crate::protocol::socketio::{self, Kind};
use crate::state::AppState;
use crate::transport::outbox::{Frame, Outbox};
use crate::transport::ws::{FrameLimit, ReadError, WsMessage, WsReader};

/// What an Engine.IO endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineMode {
    /// Socket.IO carrying Switchyard's rooms and operations.
    Switchyard,
    /// Engine.IO echo (the engine.io-protocol test suite).
    Echo,
    /// The socket.io-protocol test suite's fixture: namespaces, echoes, acks.
    Fixture,
}

/// Settings of one Engine.IO endpoint.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub mode: EngineMode,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub max_payload: usize,
    pub connect_timeout: Duration,
    /// Namespaces clients may connect to (always including `/`).
    pub namespaces: Vec<Arc<str>>,
}

/// Live Engine.IO sessions by sid, shared by the HTTP handlers (any worker thread).
#[derive(Default)]
pub struct EngineSessions {
    map: Mutex<HashMap<String, Addr<EngineSession>>>,
}

impl EngineSessions {
    pub fn get(&self, sid: &str) -> Option<Addr<EngineSession>> {
        self.lock().get(sid).cloned()
    }

    fn insert(&self, sid: String, addr: Addr<EngineSession>) {
        self.lock().insert(sid, addr);
    }

    fn remove(&self, sid: &str) {
        self.lock().remove(sid);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Addr<EngineSession>>> {
        // Each operation is a single map call; a poisoned lock still holds a consistent map.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long a GET held by an upgrade waits for the client's `5` before it is released with a
/// noop (see `2probe` in `EngineSession::on_ws`).
const HELD_POLL_RELEASE: std::time::Duration = std::time::Duration::from_millis(100);

/// Shared between the session and the upgrading connection's response stream: set when the
/// upgrade completes, after which that stream drains the session's main outbox.
#[derive(Default)]
pub struct UpgradeSwitch {
    pub switched: AtomicBool,
}

enum Transport {
    Polling,
    /// A WebSocket is probing; packets still go out by polling until the client sends `5`.
    Upgrading {
        probe: Arc<Outbox>,
        switch: Arc<UpgradeSwitch>,
        /// `2probe` was answered.
        probed: bool,
    },
    WebSocket,
}

enum Socket {
    Switchyard(Addr<Session>),
    Fixture,
}

// ---- messages ------------------------------------------------------------------------------

/// A long-polling GET wants to wait for packets.
#[derive(Message)]
#[rtype(result = "Result<Arc<Outbox>, PollRefused>")]
pub struct BeginPoll;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollRefused {
    /// A second GET while one is waiting: the session is closed.
    Duplicate,
    /// The session is no longer on long-polling.
    NotPolling,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct EndPoll;

/// A long-polling POST ended without packets to apply: its body was refused (`close`: it was
/// malformed, which ends the session; otherwise, e.g. over `maxPayload`, the session goes on).
#[derive(Message)]
#[rtype(result = "()")]
pub struct EndPost {
    pub close: bool,
}

/// A long-polling POST begins (`Err`: another is in flight, which ends the session).
#[derive(Message)]
#[rtype(result = "Result<(), ()>")]
pub struct BeginPost;

/// A long-polling POST's packets. `Err` closes the session (the request gets 400).
#[derive(Message)]
#[rtype(result = "Result<(), ()>")]
pub struct PostPackets(pub Vec<Packet>);

/// A WebSocket with this sid wants to take over (the probe starts). Replies with the main
/// outbox the WebSocket drains once the upgrade completes.
#[derive(Message)]
#[rtype(result = "Result<Arc<Outbox>, ()>")]
pub struct Upgrade {
    pub probe: Arc<Outbox>,
    pub switch: Arc<UpgradeSwitch>,
}

/// The reader of the upgrading WebSocket, for the session to poll: its messages come in as a
/// stream of this actor, wherever the session lives (the reader can be polled from any thread).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachProbe(pub WsReader);

// ---- the actor -----------------------------------------------------------------------------

pub struct EngineSession {
    sid: String,
    outbox: Arc<Outbox>,
    transport: Transport,
    config: Arc<EngineConfig>,
    state: Arc<AppState>,
    sessions: Arc<EngineSessions>,
    /// A ping is out and its pong not yet in: the timeout that closes the session, and its
    /// deadline (authoritative: a request after it finds the session expired even if the
    /// timer has not fired yet).
    pong_timer: Option<(SpawnHandle, std::time::Instant)>,
    /// When the next ping is due (pings are scheduled from the handshake, not from whenever a
    /// timer happened to fire).
    next_ping: std::time::Instant,
    polling: bool,
    /// A POST is being read or applied.
    posting: bool,
    /// The waiting GET arrived mid-upgrade before the probe: the upgrade's outcome decides it.
    held_poll: bool,
    sockets: HashMap<Arc<str>, Socket>,
    /// Session ids of the sockets, for `SocketEnded`.
    socket_ids: HashMap<SessionId, Arc<str>>,
    /// A binary packet waiting for its attachments: only for a connected namespace, and at
    /// most `maxPayload` bytes of attachments in all (see `on_binary`).
    pending: Option<(socketio::Packet, Vec<Bytes>)>,
    /// Identity from an `Authorization` header at the handshake (non-browser clients).
    header_identity: Option<Identity>,
    /// The WebSocket starts with the open packet (a polling handshake answered it already).
    send_open: bool,
    closed: bool,
    /// Closed while polling with no poll waiting: the session stays reachable until the next
    /// poll has taken what is queued (a DISCONNECT, then the close packet).
    draining: bool,
    /// A DISCONNECT is queued for the client: a close waits for it to be taken.
    disconnect_queued: bool,
    /// When the session was created (the handshake): heartbeats count from here, as clients do.
    created: std::time::Instant,
    /// This connection's place in the per-address count.
    slot: Option<crate::limits::ConnectionSlot>,
    /// The bound on the WebSocket's messages (the latest one attached): the unauthenticated
    /// bound until a namespace is connected, then `maxPayload` ([`Self::frame_bound`]).
    frame_limit: Option<FrameLimit>,
}

impl EngineSession {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sid: String,
        outbox: Arc<Outbox>,
        websocket: bool,
        config: Arc<EngineConfig>,
        state: Arc<AppState>,
        sessions: Arc<EngineSessions>,
        header_identity: Option<Identity>,
    ) -> Self {
        let first_ping = config.ping_interval;
        Self {
            sid,
            outbox,
            transport: if websocket {
                Transport::WebSocket
            } else {
                Transport::Polling
            },
            config,
            state,
            sessions,
            pong_timer: None,
            next_ping: std::time::Instant::now() + first_ping,
            polling: false,
            posting: false,
            held_poll: false,
            sockets: HashMap::new(),
            socket_ids: HashMap::new(),
            pending: None,
            header_identity,
            send_open: websocket,
            closed: false,
            draining: false,
            disconnect_queued: false,
            created: std::time::Instant::now(),
            slot: None,
            frame_limit: None,
        }
    }

    /// Holds the connection's per-address slot for the session's lifetime.
    pub fn with_slot(mut self, slot: crate::limits::ConnectionSlot) -> Self {
        self.slot = Some(slot);
        self
    }

    /// The bound on a WebSocket message now: before its first CONNECT a client has sent no
    /// credentials and needs no more than a CONNECT packet (with its token), so
    /// `SWITCHYARD_MAX_UNAUTHENTICATED_FRAME_BYTES`; after it, `maxPayload`. (The protocol
    /// test suites' modes keep `maxPayload`: they send large messages without connecting.)
    pub fn frame_bound(
        config: &EngineConfig,
        settings: &crate::config::Settings,
        connected: bool,
    ) -> usize {
        if config.mode == EngineMode::Switchyard && !connected {
            settings
                .max_unauthenticated_frame_bytes
                .min(config.max_payload)
        } else {
            config.max_payload
        }
    }

    /// The WebSocket's bound, to raise once a namespace is connected.
    pub fn with_frame_limit(mut self, limit: FrameLimit) -> Self {
        self.frame_limit = Some(limit);
        self
    }

    /// Starts the actor on this thread, registered under its sid before this returns (so the
    /// client's next request, on any thread, finds it). `setup` can attach streams.
    pub fn launch(self, setup: impl FnOnce(&mut Context<Self>)) -> Addr<Self> {
        EngineSession::create(move |ctx| {
            self.sessions.insert(self.sid.clone(), ctx.address());
            setup(ctx);
            self
        })
    }

    /// The open packet (`0{…}`) for this session.
    pub fn open_packet(sid: &str, config: &EngineConfig, websocket: bool) -> String {
        let upgrades: &[&str] = if websocket { &[] } else { &["websocket"] };
        let hs = Handshake {
            sid,
            upgrades,
            ping_interval: config.ping_interval.as_millis() as u64,
            ping_timeout: config.ping_timeout.as_millis() as u64,
            max_payload: config.max_payload,
        };
        format!("0{}", serde_json::to_string(&hs).unwrap_or_default())
    }

    fn push_text(&self, text: impl Into<Bytes>) {
        // A full outbox means the client is not reading; the heartbeat will time it out.
        let _ = self.outbox.push_text(text.into());
    }

    /// Ends the session. `client_close`: the client asked (a waiting poll gets `6`); otherwise
    /// the connection is closed with `code`.
    fn close(
        &mut self,
        ctx: &mut Context<Self>,
        client_close: bool,
        code: CloseCode,
        reason: &str,
    ) {
        if self.closed {
            if client_close && self.draining {
                // The client heard what was queued and closed its side.
                ctx.stop();
            }
            return;
        }
        self.closed = true;
        for socket in self.sockets.values() {
            if let Socket::Switchyard(addr) = socket {
                addr.do_send(Disconnect);
            }
        }
        if client_close {
            self.outbox.release_poll();
        }
        self.outbox.close(code, reason);
        // A DISCONNECT for a socket closed for misbehaving must reach the client: otherwise it
        // sees a transport error and reconnects straight into the refusal the DISCONNECT was
        // meant to end. Like the reference server (a graceful close waits for its write
        // buffer to drain, over whichever transport the client ends up on), the session stays
        // reachable, bounded by the heartbeat, while:
        // - polling with no poll waiting: the next poll takes what is queued;
        // - upgrading: the probe stays open, so the client either completes the upgrade (the
        //   WebSocket then drains the queue) or, if the probe fails, polls again.
        // Transport errors still end the session at once. Likewise, a client that closed the
        // session with no poll waiting gets a noop on its next poll, as from the reference
        // server, rather than an error.
        let drain = match self.transport {
            Transport::Polling => (self.disconnect_queued || client_close) && !self.polling,
            Transport::Upgrading { .. } => self.disconnect_queued,
            Transport::WebSocket => false,
        };
        if let Transport::Upgrading { probe, .. } = &self.transport {
            if !drain {
                probe.close(code, reason);
            }
        }
        log::debug!("engine.io session {} closed: {reason}", self.sid);
        if drain {
            self.draining = true;
            // Closed: it no longer counts against its address's connection limit.
            self.slot = None;
            let grace = self.config.ping_interval + self.config.ping_timeout;
            ctx.run_later(grace, |_, ctx| ctx.stop());
            return;
        }
        ctx.stop();
    }

    fn ping(&mut self, ctx: &mut Context<Self>) {
        let due = self.next_ping;
        self.next_ping = due + self.config.ping_interval;
        self.push_text(Bytes::from_static(b"2"));
        if self.pong_timer.is_none() {
            let deadline = due + self.config.ping_timeout;
            let wait = deadline.saturating_duration_since(std::time::Instant::now());
            let handle = ctx.run_later(wait, |act, ctx| {
                act.pong_timer = None;
                log::debug!("engine.io session {}: ping timeout", act.sid);
                act.close(ctx, false, CloseCode::Away, "ping timeout");
            });
            self.pong_timer = Some((handle, deadline));
        }
        let wait = self
            .next_ping
            .saturating_duration_since(std::time::Instant::now());
        ctx.run_later(wait, |act, ctx| act.ping(ctx));
    }

    /// Closes the session if its pong deadline has passed; true when it did.
    fn expired(&mut self, ctx: &mut Context<Self>) -> bool {
        if self
            .pong_timer
            .is_some_and(|(_, deadline)| std::time::Instant::now() >= deadline)
        {
            self.close(ctx, false, CloseCode::Away, "ping timeout");
            return true;
        }
        self.closed
    }

    fn protocol_error(&mut self, ctx: &mut Context<Self>, what: &str) {
        log::warn!("engine.io session {}: {what}; closing", self.sid);
        self.state.metrics.refused(ErrorCode::InvalidFrame);
        self.close(ctx, false, CloseCode::Protocol, "invalid packet");
    }

    fn on_packet(&mut self, p: Packet, ctx: &mut Context<Self>) {
        match p {
            Packet::Pong(_) => {
                if let Some((h, _)) = self.pong_timer.take() {
                    ctx.cancel_future(h);
                }
            }
            Packet::Ping(data) => self.push_text(format!("3{data}")),
            Packet::Message(text) => self.on_message(text, ctx),
            Packet::Binary(b) => self.on_binary(b, ctx),
            Packet::Close => self.close(ctx, true, CloseCode::Normal, "client closed"),
            Packet::Noop | Packet::Upgrade => {}
            Packet::Open(_) => self.protocol_error(ctx, "open packet from the client"),
        }
    }

    fn on_ws(&mut self, item: Result<WsMessage, ReadError>, ctx: &mut Context<Self>) {
        match item {
            Ok(WsMessage::Text(bytes)) => {
                let Ok(text) = std::str::from_utf8(&bytes) else {
                    return self.protocol_error(ctx, "text frame is not UTF-8");
                };
                if let Transport::Upgrading {
                    probe,
                    switch,
                    probed,
                } = &mut self.transport
                {
                    match text {
                        "2probe" => {
                            let _ = probe.push_text(Bytes::from_static(b"3probe"));
                            *probed = true;
                            // Release the long poll that was waiting so the client can pause
                            // polling (it gets a noop).
                            if !self.polling {
                                return;
                            }
                            if !self.held_poll {
                                self.outbox.release_poll();
                            } else {
                                // A GET that came after the WebSocket but before its probe. A
                                // client that sends `5` right behind the probe (the protocol
                                // suite does) has it refused when `5` arrives; socket.io-client
                                // waits for it to end before it sends `5`, so release it
                                // shortly, as the reference server's 100 ms upgrade check does
                                // (waiting for `5` left the client stuck until the next ping).
                                ctx.run_later(HELD_POLL_RELEASE, |act, _| {
                                    if act.polling
                                        && act.held_poll
                                        && matches!(act.transport, Transport::Upgrading { .. })
                                    {
                                        act.held_poll = false;
                                        act.outbox.release_poll();
                                    }
                                });
                            }
                            return;
                        }
                        "5" => {
                            switch.switched.store(true, Ordering::Release);
                            probe.wake();
                            if self.polling && self.held_poll {
                                self.outbox.refuse_poll();
                            }
                            self.outbox.wake();
                            self.transport = Transport::WebSocket;
                            log::debug!("engine.io session {} upgraded to websocket", self.sid);
                            return;
                        }
                        _ => {}
                    }
                }
                if self.closed {
                    // Draining: only the upgrade handshake above still matters.
                    return;
                }
                match Packet::parse_text(text) {
                    Ok(p) => self.on_packet(p, ctx),
                    Err(_) => self.protocol_error(ctx, "invalid Engine.IO packet"),
                }
            }
            Ok(WsMessage::Binary(b)) => self.on_binary(b, ctx),
            Ok(WsMessage::Ping(p)) => self.outbox.pong(p),
            Ok(WsMessage::Pong) => {}
            Ok(WsMessage::Close) => {
                if let Transport::Upgrading { probe, .. } = &self.transport {
                    // The probe is going away, not the session: answer its close frame. Its
                    // end (`finished`) puts the session back on polling.
                    probe.close(CloseCode::Normal, "");
                    return;
                }
                self.close(ctx, true, CloseCode::Normal, "client closed");
            }
            Err(ReadError::TooLarge { limit }) => {
                self.state.metrics.refused(ErrorCode::FrameTooLarge);
                let reason = format!("message exceeds maxPayload ({limit} bytes)");
                self.close(ctx, false, CloseCode::Size, &reason);
            }
            Err(ReadError::Protocol(_)) => self.protocol_error(ctx, "WebSocket framing error"),
        }
    }

    fn on_binary(&mut self, b: Bytes, ctx: &mut Context<Self>) {
        if self.config.mode == EngineMode::Echo {
            let _ = self.outbox.push_frames([Frame::Binary(b)]);
            return;
        }
        let Some((packet, mut parts)) = self.pending.take() else {
            return self.protocol_error(ctx, "binary message without a binary packet");
        };
        // A packet's attachments together may be as large as one message may be (maxPayload):
        // each is held until the last arrives, and 16 of maxPayload each let 60 sessions hold
        // 714 MB.
        let held: usize = parts.iter().map(Bytes::len).sum();
        if held + b.len() > self.config.max_payload {
            log::warn!(
                "engine.io session {}: attachments over maxPayload ({} bytes); closing",
                self.sid,
                self.config.max_payload
            );
            self.state.metrics.refused(ErrorCode::PayloadTooLarge);
            let reason = format!(
                "attachments exceed maxPayload ({} bytes)",
                self.config.max_payload
            );
            return self.close(ctx, false, CloseCode::Size, &reason);
        }
        parts.push(b);
        if parts.len() < packet.attachments {
            self.pending = Some((packet, parts));
        } else {
            self.dispatch(packet, parts, ctx);
        }
    }

    fn on_message(&mut self, text: String, ctx: &mut Context<Self>) {
        if self.config.mode == EngineMode::Echo {
            return self.push_text(format!("4{text}"));
        }
        if self.pending.is_some() {
            return self.protocol_error(ctx, "text packet while attachments were expected");
        }
        let packet = match socketio::parse(&text) {
            Ok(p) => p,
            Err(e) => return self.protocol_error(ctx, &e.to_string()),
        };
        if packet.attachments > 0 {
            // Attachments are held until the last one arrives, so they are accepted only for a
            // namespace this client has connected to (in Socket.IO a client emits only after
            // its CONNECT): a session that never connects holds nothing but its handshake.
            if !self.sockets.contains_key(packet.nsp.as_str()) {
                return self.protocol_error(ctx, "binary packet for a namespace not connected");
            }
            if !packet
                .data
                .as_ref()
                .is_some_and(|d| socketio::placeholders_ok(d, packet.attachments))
            {
                return self.protocol_error(ctx, "placeholders do not match the attachments");
            }
            self.pending = Some((packet, Vec::new()));
        } else {
            self.dispatch(packet, Vec::new(), ctx);
        }
    }

    fn dispatch(&mut self, p: socketio::Packet, attachments: Vec<Bytes>, ctx: &mut Context<Self>) {
        let nsp: Arc<str> = match self.config.namespaces.iter().find(|n| ***n == *p.nsp) {
            Some(n) => n.clone(),
            None if p.kind == Kind::Connect => {
                let body = r#"{"message":"Invalid namespace"}"#;
                return self.push_text(sio::packet(
                    Kind::ConnectError,
                    &p.nsp,
                    None,
                    Some(body),
                    0,
                ));
            }
            None => return self.protocol_error(ctx, "packet for an unknown namespace"),
        };
        match p.kind {
            Kind::Connect => self.connect(nsp, p.data, ctx),
            Kind::Disconnect => {
                if let Some(Socket::Switchyard(addr)) = self.sockets.remove(&nsp) {
                    addr.do_send(Disconnect);
                }
                self.socket_ids.retain(|_, n| *n != nsp);
            }
            Kind::Event | Kind::BinaryEvent => {
                if !self.sockets.contains_key(&nsp) {
                    return self.protocol_error(ctx, "event for a namespace not joined");
                }
                self.event(&nsp, p, attachments);
            }
            // The server asks for no acks, so client acks have nothing to answer.
            Kind::Ack | Kind::BinaryAck => {}
            Kind::ConnectError => self.protocol_error(ctx, "CONNECT_ERROR from the client"),
        }
    }

    fn connect(&mut self, nsp: Arc<str>, auth: Option<Value>, ctx: &mut Context<Self>) {
        let sid = uuid::Uuid::new_v4().simple().to_string();
        let connected = format!(r#"{{"sid":"{sid}"}}"#);
        if self.config.mode == EngineMode::Fixture {
            self.sockets.insert(nsp.clone(), Socket::Fixture);
            self.push_text(sio::packet(Kind::Connect, &nsp, None, Some(&connected), 0));
            let auth = auth.unwrap_or_else(|| Value::Object(Default::default()));
            // The test suite reads the CONNECT answer and this event with two listeners in
            // sequence; one TCP write carrying both would deliver the second before the
            // second listener exists. A millisecond apart, they are two writes.
            ctx.run_later(Duration::from_millis(1), move |act, _| {
                act.push_text(sio::emit(&nsp, "auth", &auth));
            });
            return;
        }
        if self.sockets.contains_key(&nsp) {
            return; // already connected: a repeated CONNECT changes nothing
        }
        let identity = match self.identify(auth.as_ref()) {
            Ok(i) => i,
            Err(r) => {
                self.state.metrics.refused(r.code);
                log::warn!(
                    "engine.io session {}: connect to {nsp} refused: {}",
                    self.sid,
                    r.message
                );
                let body =
                    serde_json::json!({"message": r.message, "data": {"code": r.code.as_str()}});
                return self.push_text(sio::packet(
                    Kind::ConnectError,
                    &nsp,
                    None,
                    Some(&body.to_string()),
                    0,
                ));
            }
        };
        let id = super::next_session_id();
        let session = Session::socket_io(
            id,
            identity,
            self.outbox.clone(),
            self.state.clone(),
            nsp.clone(),
            ctx.address().recipient(),
        )
        .start();
        self.sockets
            .insert(nsp.clone(), Socket::Switchyard(session));
        self.socket_ids.insert(id, nsp.clone());
        if let Some(limit) = &self.frame_limit {
            limit.set(Self::frame_bound(&self.config, &self.state.settings, true));
        }
        self.push_text(sio::packet(Kind::Connect, &nsp, None, Some(&connected), 0));
    }

    /// Who connects: a token in the CONNECT auth payload, else the handshake's header; in open
    /// mode, whoever the auth payload says (`{user, name}`).
    fn identify(&self, auth: Option<&Value>) -> Result<Identity, Refusal> {
        let auth_service = &self.state.auth;
        let token = auth.and_then(|a| a.get("token")).and_then(Value::as_str);
        if auth_service.open_mode() {
            let user = auth
                .and_then(|a| a.get("user"))
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty() && u.len() <= 256);
            let name = auth
                .and_then(|a| a.get("name"))
                .and_then(Value::as_str)
                .map(str::to_string);
            return Ok(match user {
                Some(u) => Identity::open(u.to_string(), name),
                None => {
                    Identity::open(format!("anon-{}", &self.sid[..8.min(self.sid.len())]), None)
                }
            });
        }
        match (token, &self.header_identity) {
            (Some(t), _) => auth_service.verify(t),
            (None, Some(i)) => Ok(i.clone()),
            (None, None) => Err(Refusal::new(
                ErrorCode::Unauthenticated,
                "a token is required: io(url, { auth: { token } })",
            )),
        }
    }

    fn event(&mut self, nsp: &Arc<str>, p: socketio::Packet, attachments: Vec<Bytes>) {
        let Some(Value::Array(mut args)) = p.data else {
            return;
        };
        let name = match args.first() {
            Some(Value::String(s)) => s.clone(),
            _ => return,
        };
        if self.config.mode == EngineMode::Fixture {
            args.remove(0);
            let n = attachments.len();
            let binary = n > 0;
            match name.as_str() {
                "message" => {
                    args.insert(0, Value::String("message-back".into()));
                    let kind = if binary {
                        Kind::BinaryEvent
                    } else {
                        Kind::Event
                    };
                    let text =
                        sio::packet(kind, nsp, None, Some(&Value::Array(args).to_string()), n);
                    let _ = self.outbox.push_frames(
                        std::iter::once(Frame::Text(text))
                            .chain(attachments.into_iter().map(Frame::Binary)),
                    );
                }
                "message-with-ack" => {
                    if let Some(id) = p.id {
                        let kind = if binary { Kind::BinaryAck } else { Kind::Ack };
                        let text = sio::packet(
                            kind,
                            nsp,
                            Some(id),
                            Some(&Value::Array(args).to_string()),
                            n,
                        );
                        let _ = self.outbox.push_frames(
                            std::iter::once(Frame::Text(text))
                                .chain(attachments.into_iter().map(Frame::Binary)),
                        );
                    }
                }
                _ => {}
            }
            return;
        }
        let Some(Socket::Switchyard(session)) = self.sockets.get(nsp) else {
            return;
        };
        let id = p.id.and_then(|i| RawValue::from_string(i.to_string()).ok());
        session.do_send(Inbound {
            id,
            request: socketio::request(&name, &args[1..], attachments),
        });
    }
}

impl Actor for EngineSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(0);
        if self.send_open {
            let open = Self::open_packet(&self.sid, &self.config, true);
            self.push_text(open);
        }
        // Timers count from the handshake, not from when this actor got scheduled.
        let since = self.created.elapsed();
        let first_ping = self
            .next_ping
            .saturating_duration_since(std::time::Instant::now());
        ctx.run_later(first_ping, |act, ctx| act.ping(ctx));
        if self.config.mode != EngineMode::Echo {
            let connect = self.config.connect_timeout.saturating_sub(since);
            ctx.run_later(connect, |act, ctx| {
                if act.sockets.is_empty() {
                    act.close(ctx, false, CloseCode::Policy, "no CONNECT in time");
                }
            });
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.sessions.remove(&self.sid);
        self.closed = true;
        self.outbox.close(CloseCode::Normal, "");
        if let Transport::Upgrading { probe, .. } = &self.transport {
            probe.close(CloseCode::Normal, "");
        }
    }
}

impl Handler<BeginPoll> for EngineSession {
    type Result = Result<Arc<Outbox>, PollRefused>;

    fn handle(&mut self, _: BeginPoll, ctx: &mut Context<Self>) -> Self::Result {
        if self.draining && !self.polling {
            // The last poll: it takes what is queued, then the closed outbox's close packet.
            self.polling = true;
            return Ok(self.outbox.clone());
        }
        if self.expired(ctx) {
            return Err(PollRefused::NotPolling);
        }
        if !matches!(
            self.transport,
            Transport::Polling | Transport::Upgrading { .. }
        ) {
            return Err(PollRefused::NotPolling);
        }
        if self.polling {
            // Two GETs at once: a broken or hostile client. End the session; the waiting GET
            // gets the close packet.
            self.close(ctx, false, CloseCode::Policy, "duplicate poll");
            return Err(PollRefused::Duplicate);
        }
        self.polling = true;
        self.held_poll = false;
        if let Transport::Upgrading { probed, .. } = &self.transport {
            if *probed {
                // The client is switching: a poll now only needs a noop.
                self.outbox.release_poll();
            } else {
                self.held_poll = true;
            }
        }
        Ok(self.outbox.clone())
    }
}

impl Handler<EndPoll> for EngineSession {
    type Result = ();
    fn handle(&mut self, _: EndPoll, ctx: &mut Context<Self>) {
        self.polling = false;
        self.held_poll = false;
        // While upgrading, this poll may only have been released (a noop): the queue goes out
        // over the WebSocket, or to a later poll if the probe fails.
        if self.draining && matches!(self.transport, Transport::Polling) {
            ctx.stop();
        }
    }
}

impl Handler<BeginPost> for EngineSession {
    type Result = Result<(), ()>;

    fn handle(&mut self, _: BeginPost, ctx: &mut Context<Self>) -> Self::Result {
        if self.posting {
            self.close(ctx, false, CloseCode::Policy, "overlapping POST requests");
            return Err(());
        }
        self.posting = true;
        Ok(())
    }
}

impl Handler<EndPost> for EngineSession {
    type Result = ();

    fn handle(&mut self, msg: EndPost, ctx: &mut Context<Self>) {
        self.posting = false;
        if msg.close {
            self.protocol_error(ctx, "malformed polling payload");
        }
    }
}

impl Handler<PostPackets> for EngineSession {
    type Result = Result<(), ()>;

    fn handle(&mut self, msg: PostPackets, ctx: &mut Context<Self>) -> Self::Result {
        self.posting = false;
        if self.expired(ctx) {
            return Err(());
        }
        if !matches!(
            self.transport,
            Transport::Polling | Transport::Upgrading { .. }
        ) {
            return Err(());
        }
        for p in msg.0 {
            if self.closed {
                break;
            }
            self.on_packet(p, ctx);
        }
        Ok(())
    }
}

impl Handler<Upgrade> for EngineSession {
    type Result = Result<Arc<Outbox>, ()>;

    fn handle(&mut self, msg: Upgrade, _ctx: &mut Context<Self>) -> Self::Result {
        if !matches!(self.transport, Transport::Polling) || self.closed {
            return Err(());
        }
        self.transport = Transport::Upgrading {
            probe: msg.probe,
            switch: msg.switch,
            probed: false,
        };
        Ok(self.outbox.clone())
    }
}

impl Handler<AttachProbe> for EngineSession {
    type Result = ();
    fn handle(&mut self, msg: AttachProbe, ctx: &mut Context<Self>) {
        // The probe was upgraded with `maxPayload`; before a CONNECT it gets the smaller bound
        // (the reader has not read a frame yet: it is polled from here on).
        let limit = msg.0.limit();
        let connected = !self.sockets.is_empty();
        limit.set(Self::frame_bound(
            &self.config,
            &self.state.settings,
            connected,
        ));
        self.frame_limit = Some(limit);
        ctx.add_stream(msg.0);
    }
}

impl StreamHandler<Result<WsMessage, ReadError>> for EngineSession {
    fn handle(&mut self, item: Result<WsMessage, ReadError>, ctx: &mut Context<Self>) {
        self.on_ws(item, ctx);
    }

    /// The WebSocket ended (a probe, or the session's own).
    fn finished(&mut self, ctx: &mut Context<Self>) {
        if matches!(self.transport, Transport::Upgrading { .. }) {
            // The probe connection went away before the upgrade: stay on polling.
            self.transport = Transport::Polling;
            if self.held_poll {
                self.held_poll = false;
                self.outbox.release_poll();
            }
        } else if self.draining {
            // Upgraded after the close: the WebSocket delivered what was queued.
            ctx.stop();
        } else {
            self.close(ctx, false, CloseCode::Normal, "connection closed");
        }
    }
}

impl Handler<SocketEnded> for EngineSession {
    type Result = ();
    fn handle(&mut self, msg: SocketEnded, ctx: &mut Context<Self>) {
        if let Some(nsp) = self.socket_ids.remove(&msg.session) {
            self.sockets.remove(&nsp);
            if msg.code == CloseCode::Policy {
                // Closed for misbehaving: a DISCONNECT tells the client not to reconnect
                // straight back into the same refusal (`io server disconnect`).
                self.push_text(sio::packet(Kind::Disconnect, &nsp, None, None, 0));
                self.disconnect_queued = true;
            }
        }
        // A socket ends itself only for reasons that concern the whole connection (error
        // flood, slow consumer, shutdown).
        self.close(ctx, false, msg.code, &msg.reason);
    }
}

impl Handler<super::ServerShutdown> for EngineSession {
    type Result = ();
    fn handle(&mut self, _: super::ServerShutdown, ctx: &mut Context<Self>) {
        self.close(ctx, false, CloseCode::Away, "server shutting down");
    }
}
