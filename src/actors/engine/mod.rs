//! The Engine.IO session actor, [`EngineSession`]: one per Engine.IO connection (`sid`), across
//! HTTP long-polling, the upgrade probe and WebSocket. This file owns the session's life: its
//! state, the heartbeat, closing (and draining what a closing client must still hear), and the
//! Engine.IO packets themselves. The rest of the actor is split by concern, each an
//! `impl EngineSession` of its own:
//!
//! * `polling.rs` — the long-polling transport: [`BeginPoll`]/[`EndPoll`] (a GET waits for
//!   packets), [`BeginPost`]/[`PostPackets`]/[`EndPost`] (a POST brings packets).
//! * `websocket.rs` — the WebSocket transport and the upgrade to it: [`Upgrade`] and
//!   [`AttachProbe`] (the probe connection), the WebSocket's messages (a stream the actor
//!   polls), the `2probe`/`5` handshake.
//! * `namespaces.rs` — the Socket.IO layer: namespace CONNECT/DISCONNECT, binary attachments, and
//!   events turned into requests ([`crate::protocol::socketio::request`]) for one [`Session`]
//!   per connected namespace (the same session actor `/ws` uses).
//! * `conformance.rs` — what the official Engine.IO and Socket.IO protocol test suites expect
//!   (`switchyard conformance`, modes `Echo` and `Fixture`); the real thing never runs it.
//!
//! In: the messages above, [`SocketEnded`] from its sockets, [`ServerShutdown`] from the
//! registry. Out: packets into its outbox (read by the waiting GET or the WebSocket writer),
//! [`Inbound`] and [`Disconnect`] to its sockets.
//!
//! [`Session`]: super::session::Session
//! [`SocketEnded`]: super::session::SocketEnded
//! [`Inbound`]: super::session::Inbound
//! [`Disconnect`]: super::session::Disconnect
//! [`ServerShutdown`]: super::ServerShutdown

mod conformance;
mod namespaces;
mod polling;
mod websocket;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use actix_http::ws::CloseCode;
use bytes::Bytes;

use super::session::{Disconnect, SessionDeps};
use super::SessionId;
use crate::auth::Identity;
use crate::error::ErrorCode;
use crate::protocol::engineio::{Handshake, Packet};
use crate::protocol::socketio;
use crate::transport::outbox::Outbox;
use crate::transport::ws::FrameLimit;
use crate::util::VecMap;

use namespaces::Socket;
pub use polling::{BeginPoll, BeginPost, EndPoll, EndPost, PollRefused, PostPackets};
pub use websocket::{AttachProbe, Upgrade, UpgradeSwitch};

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
    /// What this endpoint serves (the real thing, or a protocol test suite's fixture).
    pub mode: EngineMode,
    /// `pingInterval`: how often the server pings.
    pub ping_interval: Duration,
    /// `pingTimeout`: how long a ping waits for its pong before the session is closed.
    pub ping_timeout: Duration,
    /// `maxPayload`: the largest message (and sum of one packet's attachments) accepted.
    pub max_payload: usize,
    /// How long a session may go without connecting a namespace.
    pub connect_timeout: Duration,
    /// Namespaces clients may connect to (always including `/`, and every namespace an app
    /// profile declares).
    pub namespaces: Vec<Arc<str>>,
    /// App profiles by namespace (docs/profiles.md).
    pub profiles: crate::protocol::profile::Profiles,
}

/// Live Engine.IO sessions by sid, shared by the HTTP handlers (any worker thread).
#[derive(Default)]
pub struct EngineSessions {
    /// Sid → actor. Inserted before the session's first packet goes out (see
    /// [`EngineSession::launch`]), removed when the actor stops.
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

/// Which transport carries the session's packets now.
enum Transport {
    /// Long-polling: a GET takes what the outbox holds, a POST brings packets.
    Polling,
    /// A WebSocket is probing; packets still go out by polling until the client sends `5`.
    Upgrading {
        /// The probe connection's own outbox (`3probe`, its close).
        probe: Arc<Outbox>,
        /// Flipped at `5`: the probe connection's writer then drains the main outbox.
        switch: Arc<UpgradeSwitch>,
        /// `2probe` was answered.
        probed: bool,
    },
    /// Upgraded: the WebSocket drains the outbox; polling requests are refused.
    WebSocket,
}

/// One Engine.IO connection. Invariant: while the actor runs, its sid is in `sessions`; every
/// exit goes through `ctx.stop()`, whose `stopped` removes it and closes the outboxes.
pub struct EngineSession {
    /// The Engine.IO session id the client sends with every request.
    sid: String,
    /// The session's one outbox: every packet for the client, whatever the transport (the
    /// waiting GET takes from it, or the WebSocket writer drains it after the upgrade).
    outbox: Arc<Outbox>,
    /// Which transport carries packets now, and the upgrade's progress.
    transport: Transport,
    /// The endpoint's settings (shared by its sessions).
    config: Arc<EngineConfig>,
    /// What the sockets' sessions use (each gets it); CONNECT authenticates with its
    /// authenticator, refusals are counted in its metrics.
    deps: Arc<SessionDeps>,
    /// The sid table, for removing this session when it stops.
    sessions: Arc<EngineSessions>,
    /// A ping is out and its pong not yet in: the timeout that closes the session, and its
    /// deadline (authoritative: a request after it finds the session expired even if the
    /// timer has not fired yet).
    pong_timer: Option<(SpawnHandle, std::time::Instant)>,
    /// When the next ping is due (pings are scheduled from the handshake, not from whenever a
    /// timer happened to fire).
    next_ping: std::time::Instant,
    /// A GET is waiting for packets (at most one: a second one ends the session).
    polling: bool,
    /// A POST is being read or applied.
    posting: bool,
    /// The waiting GET arrived mid-upgrade before the probe: the upgrade's outcome decides it.
    held_poll: bool,
    /// The CONNECT deadline's timer until the first namespace connects: cancelled then, so an
    /// idle connection does not hold it (about a hundred bytes) for its whole life.
    connect_timer: Option<SpawnHandle>,
    /// The connected namespaces and the socket serving each (see [`namespaces`]).
    /// A [`VecMap`]: a connection has a namespace or two, and every idle one holds these.
    sockets: VecMap<Arc<str>, Socket>,
    /// Session ids of the sockets, for `SocketEnded`.
    socket_ids: VecMap<SessionId, Arc<str>>,
    /// A binary packet waiting for its attachments: only for a connected namespace, and at
    /// most `maxPayload` bytes of attachments in all (see `on_binary`).
    /// Boxed: rare, and every idle connection's actor would carry its size.
    pending: Option<Box<(socketio::Packet, Vec<Bytes>)>>,
    /// Identity from an `Authorization` header at the handshake (non-browser clients).
    header_identity: Option<Identity>,
    /// The handshake's headers and cookies that backend hooks forward (src/hooks.rs).
    forwarded: Arc<crate::hooks::Forwarded>,
    /// Namespaces whose CONNECT waits for the backend's `connect` hook.
    connecting: VecMap<Arc<str>, ()>,
    /// The WebSocket starts with the open packet (a polling handshake answered it already).
    send_open: bool,
    /// The session was closed: no new packets are applied (it may still be draining).
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
        deps: Arc<SessionDeps>,
        sessions: Arc<EngineSessions>,
        header_identity: Option<Identity>,
    ) -> Self {
        let first_ping = config.ping_interval;
        if config.mode == EngineMode::Switchyard && deps.recovery.is_some() {
            // Connection-state recovery needs the order room events reach this client in,
            // across its rooms: only the outbox sees it (see `actors/recovery.rs`).
            outbox.keep_journal(socketio::recovery_tag, deps.settings.sio_recovery_window);
        }
        Self {
            sid,
            outbox,
            transport: if websocket {
                Transport::WebSocket
            } else {
                Transport::Polling
            },
            config,
            deps,
            sessions,
            pong_timer: None,
            next_ping: std::time::Instant::now() + first_ping,
            polling: false,
            posting: false,
            held_poll: false,
            connect_timer: None,
            sockets: VecMap::new(),
            socket_ids: VecMap::new(),
            pending: None,
            header_identity,
            forwarded: crate::hooks::Forwarded::none(),
            connecting: Default::default(),
            send_open: websocket,
            closed: false,
            draining: false,
            disconnect_queued: false,
            created: std::time::Instant::now(),
            slot: None,
            frame_limit: None,
        }
    }

    /// The handshake's headers and cookies that backend hooks forward.
    pub fn with_forwarded(mut self, forwarded: crate::hooks::Forwarded) -> Self {
        self.forwarded = forwarded.shared();
        self
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
        // The connection ended without the sockets' clients asking (a closed transport, a
        // missed pong, a shutdown): with recovery on, each socket keeps what its recovery needs.
        for socket in self.sockets.values() {
            if let Socket::Switchyard(addr) = socket {
                addr.do_send(Disconnect { recoverable: true });
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
        self.deps.metrics.refused(ErrorCode::InvalidFrame);
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
            self.connect_timer = Some(ctx.run_later(connect, |act, ctx| {
                act.connect_timer = None;
                if act.sockets.is_empty() {
                    act.close(ctx, false, CloseCode::Policy, "no CONNECT in time");
                }
            }));
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

impl Handler<super::ServerShutdown> for EngineSession {
    type Result = ();
    fn handle(&mut self, _: super::ServerShutdown, ctx: &mut Context<Self>) {
        self.close(ctx, false, CloseCode::Away, "server shutting down");
    }
}

#[cfg(test)]
mod tests {
    use actix::dev::ContextFut;
    use actix::Context;

    use crate::actors::session::Session;

    type Task<A> = ContextFut<A, Context<A>>;

    /// Every Socket.IO connection runs these two actors, each a tokio task whose allocation is
    /// the actor's future rounded up to 128 bytes: at 768 bytes of future or less each task is
    /// 896 bytes (heaptrack, 4,000 idle connections; docs/benchmarks.md, "Idle memory"). A field
    /// that pushes one past it costs every idle connection 128 bytes: box what is rarely used
    /// (`Session::remembered`, `SocketRecovery`, `EngineSession::pending`) instead.
    #[test]
    fn an_idle_connections_actors_stay_within_their_task_size() {
        let engine = std::mem::size_of::<Task<super::EngineSession>>();
        let session = std::mem::size_of::<Task<Session>>();
        assert!(
            engine <= 768,
            "EngineSession's task future is {engine} bytes"
        );
        assert!(session <= 768, "Session's task future is {session} bytes");
    }
}
