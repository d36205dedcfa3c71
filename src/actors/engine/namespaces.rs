//! The Socket.IO layer of [`EngineSession`]: Socket.IO packets inside Engine.IO messages.
//! CONNECT authenticates and starts one [`Session`] per namespace (the same session actor as
//! `/ws`, in its Socket.IO mode), DISCONNECT stops it; a binary packet is held until its
//! attachments have arrived; an EVENT becomes a request ([`socketio::request`], the checks every
//! front end shares) for that namespace's session.
//!
//! In: Engine.IO messages (`on_message`, `on_binary`) from either transport, [`SocketEnded`]
//! from a socket that ended itself. Out: [`Inbound`] and [`Disconnect`] to the sockets;
//! CONNECT, CONNECT_ERROR and DISCONNECT packets into the outbox.

use std::sync::Arc;

use actix::prelude::*;
use actix_http::ws::CloseCode;
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::Value;

use super::{EngineMode, EngineSession};
use crate::actors::recovery::Restore;
use crate::actors::session::{AppEvent, Disconnect, Inbound, Session, SocketEnded, SocketRecovery};
use crate::auth::Identity;
use crate::error::{ErrorCode, Refusal};
use crate::limits::UserSlot;
use crate::protocol::sio;
use crate::protocol::socketio::{self, Kind};

/// What serves a connected namespace.
pub(super) enum Socket {
    /// A session actor, as on `/ws` (its requests come in as [`Inbound`]).
    Switchyard(Addr<Session>),
    /// The protocol suite's fixture (see [`super::conformance`]): answered here.
    Fixture,
}

impl EngineSession {
    /// A binary Engine.IO message: the next attachment of the packet waiting for them.
    pub(super) fn on_binary(&mut self, b: Bytes, ctx: &mut Context<Self>) {
        if self.config.mode == EngineMode::Echo {
            return self.echo_binary(b);
        }
        let Some(pending) = self.pending.take() else {
            return self.protocol_error(ctx, "binary message without a binary packet");
        };
        let (packet, mut parts) = *pending;
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
            self.deps.metrics.refused(ErrorCode::PayloadTooLarge);
            let reason = format!(
                "attachments exceed maxPayload ({} bytes)",
                self.config.max_payload
            );
            return self.close(ctx, false, CloseCode::Size, &reason);
        }
        parts.push(b);
        if parts.len() < packet.attachments {
            self.pending = Some(Box::new((packet, parts)));
        } else {
            self.dispatch(packet, parts, ctx);
        }
    }

    /// A text Engine.IO message: a Socket.IO packet.
    pub(super) fn on_message(&mut self, text: String, ctx: &mut Context<Self>) {
        if self.config.mode == EngineMode::Echo {
            return self.echo_text(&text);
        }
        if self.pending.is_some() {
            return self.protocol_error(ctx, "text packet while attachments were expected");
        }
        if self.config.mode == EngineMode::Switchyard && self.event_fast(&text) {
            return;
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
            self.pending = Some(Box::new((packet, Vec::new())));
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
                    // The client asked: nothing is kept for recovery, as in the reference server.
                    addr.do_send(Disconnect { recoverable: false });
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
        if self.config.mode == EngineMode::Fixture {
            return self.fixture_connect(nsp, auth, ctx);
        }
        if self.sockets.contains_key(&nsp) || self.connecting.contains_key(&nsp) {
            return; // already connected (or connecting): a repeated CONNECT changes nothing
        }
        if let Some((hooks, cfg)) = self.connect_hook(&nsp) {
            return self.connect_through_hook(nsp, auth, hooks, cfg, ctx);
        }
        match self.identify(auth.as_ref()) {
            Ok(identity) => self.start_socket(nsp, identity, auth, ctx),
            Err(r) => self.refuse_connect(&nsp, r),
        }
    }

    /// The namespace's profile's `connect` hook, when it declares one (and the node has the
    /// hook client): the app's backend then says who connects, from the handshake's cookies
    /// and headers and the CONNECT's auth payload, instead of a token.
    fn connect_hook(
        &self,
        nsp: &str,
    ) -> Option<(Arc<crate::hooks::Hooks>, Arc<crate::hooks::HookConfig>)> {
        let cfg = self.config.profiles.for_namespace(nsp)?.hooks.clone()?;
        cfg.connect.as_ref()?;
        Some((self.deps.hooks.clone()?, cfg))
    }

    /// Asks the backend (spawned, not waited for: the connection's other namespaces and its
    /// heartbeat go on); CONNECT or CONNECT_ERROR when it answers.
    fn connect_through_hook(
        &mut self,
        nsp: Arc<str>,
        auth: Option<Value>,
        hooks: Arc<crate::hooks::Hooks>,
        cfg: Arc<crate::hooks::HookConfig>,
        ctx: &mut Context<Self>,
    ) {
        use crate::hooks::HookKind;
        self.connecting.insert(nsp.clone(), ());
        let body = serde_json::json!({
            "hook": HookKind::Connect.as_str(),
            "transport": "socket.io",
            "namespace": &*nsp,
            "auth": auth,
        });
        let call = hooks.call(&cfg, HookKind::Connect, &body, &self.forwarded);
        ctx.spawn(call.into_actor(self).map(move |answer, act, ctx| {
            act.connecting.remove(&nsp);
            if act.closed {
                return;
            }
            match answer.and_then(|a| crate::hooks::identity(&a)) {
                Ok(identity) => act.start_socket(nsp, identity, auth, ctx),
                Err(r) => act.refuse_connect(&nsp, r),
            }
        }));
    }

    /// CONNECT_ERROR with the refusal's message and code.
    fn refuse_connect(&mut self, nsp: &str, r: Refusal) {
        self.deps.metrics.refused(r.code);
        log::warn!(
            "engine.io session {}: connect to {nsp} refused: {}",
            self.sid,
            r.message
        );
        let body = serde_json::json!({"message": r.message, "data": {"code": r.code.as_str()}});
        self.push_text(sio::packet(
            Kind::ConnectError,
            nsp,
            None,
            Some(&body.to_string()),
            0,
        ));
    }

    /// The namespace's socket, for `identity`: recovered when connection-state recovery is on
    /// and the CONNECT's auth carries a pid that can be (`connect_recovering`), else fresh.
    fn start_socket(
        &mut self,
        nsp: Arc<str>,
        identity: Identity,
        auth: Option<Value>,
        ctx: &mut Context<Self>,
    ) {
        // Counted before anything is taken for it (a recovery record): a user at
        // `SWITCHYARD_MAX_CONNECTIONS_PER_USER` is refused here, with nothing lost.
        let user = match self.deps.users.admit(&identity) {
            Ok(user) => user,
            Err(r) => return self.refuse_connect(&nsp, r),
        };
        if self.deps.recovery.is_some() {
            return self.connect_recovering(nsp, auth.as_ref(), identity, user, ctx);
        }
        self.open_socket(nsp, identity, user, None, ctx);
    }

    /// Connection-state recovery (docs/socketio.md): a CONNECT whose auth carries the `pid` of
    /// a socket that disconnected (and the `offset` of the last room event its client got)
    /// recovers it when every one of its rooms can resume from where the client stands: the
    /// rooms' history is checked before the CONNECT is answered, since the answer tells the
    /// client (`socket.recovered`) and nothing can be taken back after it. Otherwise the socket
    /// starts afresh under a new pid.
    fn connect_recovering(
        &mut self,
        nsp: Arc<str>,
        auth: Option<&Value>,
        identity: Identity,
        user: Option<UserSlot>,
        ctx: &mut Context<Self>,
    ) {
        let field = |name: &str| auth.and_then(|a| a.get(name)).and_then(Value::as_str);
        let offset = field("offset").map(str::to_string);
        let (Some(pid), Some(store)) = (field("pid"), self.deps.recovery.as_ref()) else {
            let fresh = SocketRecovery::fresh(offset);
            return self.open_socket(nsp, identity, user, Some(fresh), ctx);
        };
        // The store checks the user and namespace before it gives the record up: in cluster
        // mode it is in Redis, so the take is a round trip (`wait`: nothing else of this
        // connection is handled until the CONNECT is answered).
        let pid = pid.to_string();
        let take = store.take(&pid, &nsp, &identity.user.id);
        take.into_actor(self)
            .map(move |record, act, ctx| {
                if act.closed || act.sockets.contains_key(&nsp) {
                    return;
                }
                let record = record.map(|r| (pid, r));
                act.check_recovery(nsp, offset, identity, user, record, ctx);
            })
            .wait(ctx);
    }

    /// The second half of [`Self::connect_recovering`], with the pid's record if it was taken.
    fn check_recovery(
        &mut self,
        nsp: Arc<str>,
        offset: Option<String>,
        identity: Identity,
        user: Option<UserSlot>,
        record: Option<(String, crate::actors::recovery::Record)>,
        ctx: &mut Context<Self>,
    ) {
        let plan = record.and_then(|(pid, record)| {
            let rooms = record.resume(offset.as_deref())?;
            // A token refreshed meanwhile may grant fewer rooms.
            rooms
                .iter()
                .all(|(room, _)| identity.may_join(room))
                .then_some((pid, rooms))
        });
        let Some((pid, rooms)) = plan else {
            let fresh = SocketRecovery::fresh(offset);
            return self.open_socket(nsp, identity, user, Some(fresh), ctx);
        };
        let checks: Vec<_> = rooms
            .iter()
            .map(|(room, restore)| {
                // An operation watched again is checked by its watch (`session/recovery.rs`).
                let since = match restore {
                    Restore::Since(since) => Some(since.clone()),
                    Restore::Watch { .. } => None,
                };
                let page = since
                    .as_ref()
                    .map(|s| self.deps.history.history(room.clone(), Some(s.offset)));
                async move {
                    let (Some(page), Some(since)) = (page, since) else {
                        return true;
                    };
                    match page.await {
                        Ok(Some(p)) => {
                            p.epoch == since.epoch && p.complete && since.offset <= p.offset
                        }
                        // A room that is not there (it retired, having neither members nor
                        // history) continues where it stood when re-created: its join decides.
                        Ok(None) => true,
                        Err(_) => false,
                    }
                }
            })
            .collect();
        // `wait`: nothing else of this connection is handled until the CONNECT is answered.
        futures_util::future::join_all(checks)
            .into_actor(self)
            .map(move |resumable, act, ctx| {
                if act.closed || act.sockets.contains_key(&nsp) {
                    return;
                }
                let restore = match resumable.iter().all(|ok| *ok) {
                    true => SocketRecovery::resumed(pid, offset, rooms),
                    false => SocketRecovery::fresh(offset),
                };
                act.open_socket(nsp, identity, user, Some(restore), ctx);
            })
            .wait(ctx);
    }

    /// Starts the socket's session and answers the CONNECT (with its pid when recovery is on:
    /// the client's `socket.recovered` is whether it is the pid it sent).
    fn open_socket(
        &mut self,
        nsp: Arc<str>,
        identity: Identity,
        user: Option<UserSlot>,
        restore: Option<SocketRecovery>,
        ctx: &mut Context<Self>,
    ) {
        let sid = uuid::Uuid::new_v4().simple().to_string();
        let recovery = self
            .deps
            .recovery
            .is_some()
            .then(|| restore.unwrap_or_else(|| SocketRecovery::fresh(None)));
        let connected = match &recovery {
            Some(r) => serde_json::json!({"sid": sid, "pid": r.pid}).to_string(),
            None => format!(r#"{{"sid":"{sid}"}}"#),
        };
        let id = crate::actors::next_session_id();
        let mut session = Session::socket_io(
            id,
            identity,
            self.outbox.clone(),
            self.deps.clone(),
            nsp.clone(),
            ctx.address().downgrade().recipient(),
            self.config.profiles.for_namespace(&nsp).cloned(),
        )
        .with_forwarded(self.forwarded.clone())
        .with_user_slot(user)
        .with_key(sid);
        if let Some(r) = recovery {
            session = session.with_recovery(r);
        }
        // The CONNECT goes into the outbox before the session starts, so it precedes whatever
        // the session's rooms push (a recovered socket's missed messages).
        self.push_text(sio::packet(Kind::Connect, &nsp, None, Some(&connected), 0));
        let session = session.start();
        self.sockets
            .insert(nsp.clone(), Socket::Switchyard(session));
        self.socket_ids.insert(id, nsp.clone());
        if let Some(timer) = self.connect_timer.take() {
            ctx.cancel_future(timer);
        }
        if let Some(limit) = &self.frame_limit {
            limit.set(Self::frame_bound(&self.config, &self.deps.settings, true));
        }
    }

    /// Who connects: a token in the CONNECT auth payload, else the handshake's header; in open
    /// mode, whoever the auth payload says (`{user, name}`).
    fn identify(&self, auth: Option<&Value>) -> Result<Identity, Refusal> {
        let auth_service = &self.deps.auth;
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

    /// The publish path's EVENT read without a JSON tree (`socketio::event_fast`) and handed to
    /// its socket's session as a request; false when it is not one that path reads (another
    /// packet, a namespace not connected, an event the namespace's app profile maps), for the
    /// general path. Callgrind, rooms of 4: a fifth of the instructions of a Socket.IO publish
    /// went into the tree and back (docs/benchmarks.md, tenth session).
    fn event_fast(&mut self, text: &str) -> bool {
        let Some(e) = socketio::event_fast(text) else {
            return false;
        };
        let Some(nsp) = self.config.namespaces.iter().find(|n| ***n == *e.nsp) else {
            return false;
        };
        let Some(Socket::Switchyard(session)) = self.sockets.get(nsp) else {
            return false;
        };
        if self.profiled(nsp, e.name) {
            return false;
        }
        session.do_send(Inbound {
            id: ack_id(e.id),
            request: e.request(),
        });
        true
    }

    /// Whether the namespace's app profile maps this event (its own events take precedence over
    /// Switchyard's of the same name; the session maps them, it knows the socket's rooms).
    fn profiled(&self, nsp: &str, event: &str) -> bool {
        self.config
            .profiles
            .for_namespace(nsp)
            .is_some_and(|profile| profile.handles(event))
    }

    /// An EVENT (or a BINARY_EVENT with all its attachments) for a connected namespace: a
    /// request for that namespace's session.
    fn event(&mut self, nsp: &Arc<str>, p: socketio::Packet, attachments: Vec<Bytes>) {
        if self.config.mode == EngineMode::Fixture {
            return self.fixture_event(nsp, p, attachments);
        }
        // The packet parser checked the shape: an array whose first element is the name.
        let Some(Value::Array(mut args)) = p.data else {
            return;
        };
        let Some(Value::String(name)) = args.first() else {
            return;
        };
        let Some(Socket::Switchyard(session)) = self.sockets.get(nsp) else {
            return;
        };
        let id = ack_id(p.id);
        if self.profiled(nsp, name) {
            let name = match args.remove(0) {
                Value::String(name) => name,
                _ => return,
            };
            return session.do_send(AppEvent {
                id,
                name,
                args,
                attachments,
            });
        }
        session.do_send(Inbound {
            id,
            request: socketio::request(name, &args[1..], attachments),
        });
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

/// A Socket.IO ack id as the request id a session answers with.
fn ack_id(id: Option<u64>) -> Option<Box<RawValue>> {
    id.and_then(|i| RawValue::from_string(i.to_string()).ok())
}
