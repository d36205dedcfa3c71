//! The session actor: one per client connection on `/ws`, and one per connected namespace of
//! a Socket.IO connection. It holds the client's identity and rooms, checks every request and
//! answers it; `FrontEnd` says which of the two it serves. A session's behaviour is written
//! once, over [`Request`] (the one request type of every front end, `protocol/request.rs`), and
//! split by area:
//!
//! * `native.rs` — the `/ws` front end: the WebSocket's messages, the welcome, the heartbeat.
//! * `auth.rs` — `auth` (sign-in and token refresh), the token's expiry.
//! * `rooms.rs` — `join`, `leave`, eviction, rooms a refreshed token no longer grants.
//! * `publish.rs` — `publish`.
//! * `operations.rs` — `operation.start`, `operation.cancel`, workers' reports.
//! * `app.rs` — a Socket.IO namespace's app profile: its events mapped onto requests, what a
//!   socket gets on connect.
//! * `hooks.rs` — the profile's backend hooks: joins and publishes through the backend, app
//!   events answered by it.
//! * `recovery.rs` — Socket.IO connection-state recovery: where the client stands in each room,
//!   the record a dropped socket leaves, a recovered socket's rooms joined again.
//!
//! In: the `/ws` reader's messages (a stream) or [`Inbound`] requests and [`Disconnect`] from
//! the Engine.IO session; [`Evicted`] from rooms, [`ReportAnswer`] from the operation manager,
//! [`ServerShutdown`] from the registry. Out: [`JoinRoom`], [`LeaveRoom`] and publishes to the
//! [`Broker`] (a publish through the room's lane when the join gave one), itself into and out of the
//! [`SessionTable`], operation requests to the manager, [`SocketEnded`] to the Engine.IO session; frames into its
//! own outbox.
//!
//! Lifecycle and its undo: `started` registers with the registry and counts the connection;
//! `stopped` leaves every room, deregisters and uncounts. Any exit path (client close, heartbeat
//! timeout, eviction, shutdown, protocol violation) goes through `ctx.stop()`, so the undo always
//! runs exactly once.
//!
//! Why this file is one piece (about 600 lines): the session's state, its constructor, its
//! lifecycle and its undo, its refusal policy and the one `dispatch` over [`Request`] are what
//! every area file relies on; each area's behaviour is in its own file above.
//!
//! [`JoinRoom`]: super::room::JoinRoom
//! [`LeaveRoom`]: super::room::LeaveRoom
//! [`ReportAnswer`]: crate::actors::operation_manager::ReportAnswer
//! [`Evicted`]: super::Evicted

mod app;
mod auth;
mod hooks;
mod native;
mod operations;
mod publish;
mod recovery;
mod rooms;

use crate::util::VecMap;
pub use recovery::SocketRecovery;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix::WeakRecipient;
use actix_http::ws::CloseCode;
use bytes::Bytes;
use serde_json::value::RawValue;

use super::operation_manager::OperationManager;
use super::sessions::SessionTable;
use super::{Member, ServerShutdown, SessionId};
use crate::auth::{Authenticator, Identity};
use crate::broker::local::RoomLog;
use crate::broker::Broker;
use crate::config::Settings;
use crate::error::{ErrorCode, Refusal};
use crate::limits::{ConnectionSlot, KeyedRate, TokenBucket};
use crate::metrics::Metrics;
use crate::protocol::profile::Profile;
use crate::protocol::{Reply, Request, RequestId, Shared, Wire};
use crate::transport::outbox::Outbox;
use crate::transport::ws::FrameLimit;

/// The window over which refused frames are counted for the error-flood limit.
const ERROR_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// Which front end a session serves: they differ in who owns the connection.
enum FrontEnd {
    /// `/ws`: the session owns its WebSocket; it closes it, runs the heartbeat and welcomes
    /// the client (see [`native`]).
    Native {
        /// The bound on the connection's messages: the unauthenticated bound until the first
        /// successful `auth`, then `SWITCHYARD_MAX_FRAME_BYTES`.
        frame_limit: Option<FrameLimit>,
    },
    /// A Socket.IO socket: one namespace of an Engine.IO session, which owns the connection,
    /// its liveness and its close, and feeds [`Inbound`] requests.
    SocketIo {
        /// The Engine.IO session, told when this socket ends itself. Weak: the session table
        /// keeps the Engine.IO session alive, and this saves a strong handle's allocations.
        engine: WeakRecipient<SocketEnded>,
    },
}

pub struct Session {
    /// Process-unique number: the key of this session in member tables.
    id: SessionId,
    /// The id clients see (`welcome.session` on `/ws`, `socket.id` on Socket.IO), and what
    /// this connection's messages carry in `from.session` so its client can tell its own echo.
    /// A `String`, not the `Arc<str>` an envelope takes: idle connections are what the memory
    /// benchmark counts, and an `Arc<str>` costs a larger allocation; a publish copies it.
    key: String,
    /// `None` until the client authenticates (only when a secret is set and no header was sent).
    identity: Option<Identity>,
    /// The identity came with the connection (an `Authorization` header on `/ws`, the CONNECT
    /// of a Socket.IO socket), not from an `auth` frame, and not in open mode: a refresh may
    /// then not change the user, and the welcome names the user.
    identity_at_connect: bool,
    /// Where this client's frames go: replies, and room traffic pushed by rooms.
    outbox: Arc<Outbox>,
    /// Rooms this session is a member of (invariant: the room has this session as a member, or
    /// a leave for it is in flight), with the lane the broker gave the join, where this
    /// session's publishes go without another hop. (Operation rooms are joined through their
    /// operation, and a cluster broker gives no lane: those publishes go through the broker.)
    /// Also the membership check of a publish: only a member may publish.
    /// A [`VecMap`]: most connections are in one room or a few.
    rooms: VecMap<String, Option<Arc<RoomLog>>>,
    /// Last time anything arrived from the client; the heartbeat drops the session when this is
    /// older than the timeout.
    last_seen: Instant,
    /// Start of the current error window and the refusals in it (the error-flood limit,
    /// `SWITCHYARD_ERROR_LIMIT` per [`ERROR_WINDOW`]).
    error_window: (Instant, u32),
    /// How replies and room traffic are encoded for this client.
    wire: Wire,
    /// Which front end this session serves.
    front: FrontEnd,
    /// Publishes this connection may still make (see `SWITCHYARD_PUBLISH_RATE`).
    publishes: TokenBucket,
    /// This connection's place in the per-address count; freed when the session ends.
    slot: Option<ConnectionSlot>,
    /// Its place in its user's count, when the user signed in after the connection started
    /// (an `auth` frame, a Socket.IO CONNECT); else `slot` holds it.
    user_slot: Option<crate::limits::UserSlot>,
    /// Codes already logged for this session: a refusal is logged once per client, not per frame.
    logged_codes: u64,
    /// What a session uses of the application, composed at start-up (see [`SessionDeps`]).
    deps: Arc<SessionDeps>,
    /// The app profile of this socket's namespace (docs/profiles.md): its events become
    /// requests here ([`AppEvent`]); its renames are in [`Self::wire`].
    profile: Option<Arc<Profile>>,
    /// What a session remembers only once it is used (the last operation started per kind,
    /// unknown events logged): boxed, created on first use, so an idle connection's actor does
    /// not carry two empty maps.
    remembered: Option<Box<Remembered>>,
    /// What of the client's HTTP request hook calls forward (src/hooks.rs).
    forwarded: Arc<crate::hooks::Forwarded>,
    /// Backend hook calls in flight (at most `SWITCHYARD_HOOK_SESSION_CONCURRENCY`).
    hook_calls: usize,
    /// Socket.IO connection-state recovery for this socket, when it is on (see `recovery.rs`).
    /// Boxed: off by default, and a socket without it should not pay for its fields.
    recovery: Option<Box<SocketRecovery>>,
}

/// How many distinct unknown events a session logs; past that, they are only counted.
const UNKNOWN_LOGGED_MAX: usize = 32;

/// See [`Session::remembered`].
#[derive(Default)]
struct Remembered {
    /// The last operation this session started, per kind: what a profile's `cancel` without
    /// an operation id cancels. Bounded by the configured kinds (only a started one is kept).
    started_ops: HashMap<String, String>,
    /// Unknown events and unavailable hooks already logged (by refusal message, which names
    /// the event): each is logged once, and at most [`UNKNOWN_LOGGED_MAX`] of them.
    unknown_logged: HashSet<String>,
}

/// What a session (and the Engine.IO session that serves Socket.IO sockets) uses of the
/// application: exactly these services, composed once by `startup.rs` and shared by every
/// connection. The actors never see the application state itself.
pub struct SessionDeps {
    /// Bounds and timings: frame sizes, heartbeat, auth timeout, rates, room caps.
    pub settings: Arc<Settings>,
    /// The open connections, told to close at shutdown.
    pub sessions: Arc<SessionTable>,
    /// Joins, leaves, and publishes that have no lane.
    pub broker: Arc<dyn Broker>,
    /// Connection and message counters, refusals by code.
    pub metrics: Arc<Metrics>,
    /// Verifies tokens; says whether the server runs in open mode.
    pub auth: Authenticator,
    /// Operation requests and workers' reports.
    pub operations: Addr<OperationManager>,
    /// Publishes per user, across all that user's connections (shared with the REST routes).
    pub user_publishes: Arc<KeyedRate>,
    /// The backend hooks' client (`None` when no profile declares hooks).
    pub hooks: Option<Arc<crate::hooks::Hooks>>,
    /// What disconnected Socket.IO sockets leave for connection-state recovery; `None` when it
    /// is off (`SWITCHYARD_SOCKETIO_RECOVERY_SECS` 0). In memory on one node, in Redis in
    /// cluster mode.
    pub recovery: Option<Arc<dyn crate::actors::recovery::RecoveryRecords>>,
    /// What rooms have kept: a recovering socket's rooms are checked against it before its
    /// CONNECT is answered.
    pub history: Arc<dyn crate::broker::HistoryView>,
    /// Open connections per verified user (`SWITCHYARD_MAX_CONNECTIONS_PER_USER`).
    pub users: Arc<crate::limits::UserGate>,
}

impl Session {
    fn remembered(&mut self) -> &mut Remembered {
        self.remembered.get_or_insert_with(Box::default)
    }

    pub fn new(
        id: SessionId,
        identity: Option<Identity>,
        outbox: Arc<Outbox>,
        deps: Arc<SessionDeps>,
    ) -> Self {
        let key = uuid::Uuid::new_v4().simple().to_string();
        let identity_at_connect = identity.is_some() && !deps.auth.open_mode();
        let identity = identity.or_else(|| {
            deps.auth
                .open_mode()
                .then(|| Identity::open(format!("anon-{}", &key[..8]), None))
        });
        Self {
            id,
            key,
            identity,
            identity_at_connect,
            outbox,
            rooms: VecMap::new(),
            last_seen: Instant::now(),
            error_window: (Instant::now(), 0),
            wire: Wire::Native,
            front: FrontEnd::Native { frame_limit: None },
            publishes: TokenBucket::new(
                deps.settings.publish_rate as f64,
                deps.settings.publish_rate as f64 * 2.0,
            ),
            slot: None,
            user_slot: None,
            logged_codes: 0,
            deps,
            profile: None,
            remembered: None,
            forwarded: crate::hooks::Forwarded::none(),
            hook_calls: 0,
            recovery: None,
        }
    }

    /// A Socket.IO socket: replies and room traffic go to `outbox` as Engine.IO packets of
    /// namespace `nsp` (renamed by the namespace's app profile, when it has one); the
    /// Engine.IO session handles liveness and feeds [`Inbound`] requests and [`AppEvent`]s.
    pub fn socket_io(
        id: SessionId,
        identity: Identity,
        outbox: Arc<Outbox>,
        deps: Arc<SessionDeps>,
        nsp: Arc<str>,
        engine: WeakRecipient<SocketEnded>,
        profile: Option<Arc<Profile>>,
    ) -> Self {
        let mut s = Self::new(id, Some(identity), outbox, deps);
        let outgoing = profile
            .as_ref()
            .and_then(|p| p.outgoing.clone())
            .map(Shared);
        let recovery = s.deps.recovery.is_some();
        s.wire = Wire::SocketIo(nsp, outgoing, recovery);
        s.front = FrontEnd::SocketIo { engine };
        s.profile = profile;
        s
    }

    /// A `/ws` session served by a profile's backend hooks (`ws = true`): its joins and
    /// publishes go through that profile's `subscribe` and `publish` hooks. (Its events and
    /// renames are Socket.IO's only: a native session gets no `AppEvent`.)
    pub fn with_hooks_of(mut self, profile: Option<Arc<Profile>>) -> Self {
        if let FrontEnd::Native { .. } = self.front {
            self.profile = profile;
        }
        self
    }

    /// The socket's id as its client knows it (the `sid` of the Socket.IO CONNECT answer,
    /// `socket.id`): the id its messages carry in `from.session`.
    pub fn with_key(mut self, key: String) -> Self {
        self.key = key;
        self
    }

    /// The headers and cookies of the client's HTTP request that hook calls forward.
    pub fn with_forwarded(mut self, forwarded: Arc<crate::hooks::Forwarded>) -> Self {
        self.forwarded = forwarded;
        self
    }

    /// Holds the connection's per-address slot for the session's lifetime.
    pub fn with_slot(mut self, slot: ConnectionSlot) -> Self {
        self.slot = Some(slot);
        self
    }

    /// Holds the socket's place in its user's count for the session's lifetime.
    pub fn with_user_slot(mut self, slot: Option<crate::limits::UserSlot>) -> Self {
        self.user_slot = slot;
        self
    }

    /// The bound on the connection's messages, raised when the client authenticates.
    pub fn with_frame_limit(mut self, limit: FrameLimit) -> Self {
        if let FrontEnd::Native { frame_limit } = &mut self.front {
            *frame_limit = Some(limit);
        }
        self
    }

    fn send(&self, frame: Bytes) {
        // Replies to our own client: if the outbox is full the client is not reading, and the
        // next room push will evict it; dropping a reply here cannot stall anyone else.
        let _ = self.outbox.push_text(frame);
    }

    fn reply(&self, id: Option<&RawValue>, r: Reply) {
        if let Some(frame) = self.wire.reply(id, r) {
            self.send(frame);
        }
    }

    /// Ends this session. A native session owns its connection and closes it; a Socket.IO
    /// socket shares its connection with the other namespaces, so its Engine.IO session decides.
    fn close(&self, ctx: &mut Context<Self>, code: CloseCode, reason: &str) {
        match &self.front {
            FrontEnd::Native { .. } => self.outbox.close(code, reason),
            FrontEnd::SocketIo { engine } => {
                if let Some(engine) = engine.upgrade() {
                    engine.do_send(SocketEnded {
                        session: self.id,
                        code,
                        reason: reason.to_string(),
                    });
                }
            }
        }
        ctx.stop();
    }

    /// Answers a refused request with an `error` frame; closes the session on an error flood.
    /// On Socket.IO, an unknown event (or a feature this server does not have) is refused but
    /// does not count toward the flood: a half-migrated app client that still emits an old
    /// event is not misbehaving, and must never be cut off for good for it. It costs what a
    /// `ping` costs; it is logged once per event name. On `/ws` an unknown `type` still counts:
    /// that client speaks Switchyard's own protocol, and a stream of frames it does not have is
    /// a broken or hostile client. `backend_unavailable` never counts: the app's backend being
    /// down is not the client's doing (the hook client logs it).
    fn refuse(&mut self, ctx: &mut Context<Self>, id: Option<&RawValue>, refusal: Refusal) {
        self.deps.metrics.refused(refusal.code);
        if refusal.code == ErrorCode::BackendUnavailable {
            return self.reply(id, Reply::Error(&refusal));
        }
        if matches!(
            refusal.code,
            ErrorCode::UnknownType | ErrorCode::NotImplemented
        ) && matches!(self.front, FrontEnd::SocketIo { .. })
        {
            let logged = &mut self.remembered().unknown_logged;
            if logged.len() < UNKNOWN_LOGGED_MAX && logged.insert(refusal.message.clone()) {
                log::warn!(
                    "session {} ({}): refused {}: {} (logged once per event)",
                    self.key,
                    self.user_id(),
                    refusal.code,
                    refusal.message
                );
            }
            return self.reply(id, Reply::Error(&refusal));
        }
        let bit = 1u64 << (refusal.code.index() as u64 % 64);
        if self.logged_codes & bit == 0 {
            self.logged_codes |= bit;
            log::warn!(
                "session {} ({}): refused {}: {} (further refusals with this code are not logged)",
                self.key,
                self.user_id(),
                refusal.code,
                refusal.message
            );
        }
        self.reply(id, Reply::Error(&refusal));
        let now = Instant::now();
        if now.duration_since(self.error_window.0) > ERROR_WINDOW {
            self.error_window = (now, 0);
        }
        self.error_window.1 += 1;
        if self.error_window.1 > self.deps.settings.error_limit {
            self.deps.metrics.refused(ErrorCode::TooManyErrors);
            log::warn!("session {}: too many refused frames, closing", self.key);
            let r = Refusal::new(ErrorCode::TooManyErrors, "too many refused frames; closing");
            self.reply(None, Reply::Error(&r));
            self.close(ctx, CloseCode::Policy, "too many errors");
        }
    }

    fn user_id(&self) -> &str {
        self.identity
            .as_ref()
            .map(|i| i.user.id.as_str())
            .unwrap_or("unauthenticated")
    }

    fn member(&self, ctx: &mut Context<Self>, identity: &Identity) -> Member {
        Member {
            session: self.id,
            user: identity.user.clone(),
            outbox: self.outbox.clone(),
            control: ctx.address().downgrade().recipient(),
            wire: self.wire.clone(),
        }
    }

    /// Routes a request to its area. `identity` is `None` only for a `/ws` client that has not
    /// authenticated, whose requests other than `auth` and `ping` were refused before this.
    fn dispatch(
        &mut self,
        id: Option<RequestId>,
        request: Request,
        identity: Option<Identity>,
        ctx: &mut Context<Self>,
    ) {
        log::debug!("session {}: {}", self.key, request.kind());
        match (request, identity) {
            (Request::Ping, _) => self.reply(id.as_deref(), Reply::Pong),
            (Request::Auth { token, user, name }, _) => {
                self.authenticate(id, token, user, name, ctx)
            }
            (
                Request::Join {
                    room,
                    since,
                    log_offset,
                },
                Some(identity),
            ) => self.join_hooked(id, room, since, log_offset, identity, ctx),
            (Request::Leave { room }, _) => self.leave(id, room, ctx),
            (
                Request::Publish {
                    room,
                    event,
                    data,
                    attachments,
                    echo,
                    retain,
                    message_id,
                },
                Some(identity),
            ) => {
                let p = publish::Publication {
                    room,
                    event,
                    data,
                    attachments,
                    echo,
                    retain,
                    message_id,
                };
                self.publish_hooked(id, p, identity, ctx)
            }
            (
                r @ (Request::StartOperation { .. }
                | Request::CancelOperation { .. }
                | Request::ReportOperation { .. }),
                Some(identity),
            ) => self.operation_request(id, r, identity, ctx),
            (_, None) => {}
        }
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let deps = &self.deps;
        deps.metrics.connections.inc();
        deps.sessions
            .opened(self.id, ctx.address().downgrade().recipient());
        self.schedule_expiry(ctx);
        match self.front {
            FrontEnd::Native { .. } => self.start_native(ctx),
            FrontEnd::SocketIo { .. } => {
                log::debug!(
                    "socket.io socket {} connected ({})",
                    self.key,
                    self.user_id()
                );
                let restored = self.restore_rooms(ctx);
                self.profile_connect(restored, ctx);
            }
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.keep_for_recovery();
        let deps = &self.deps;
        if !self.rooms.is_empty() {
            deps.broker
                .leave_all(self.id, self.rooms.drain().map(|(room, _)| room).collect());
        }
        deps.sessions.closed(self.id);
        // Its window of multi-room messages, if one ever reached it.
        crate::broker::dedupe::forget(self.id);
        deps.metrics.connections.dec();
        if let FrontEnd::Native { .. } = self.front {
            self.outbox.close(CloseCode::Normal, "");
        }
        log::info!("session {} closed", self.key);
    }
}

/// Engine.IO session → Session (Socket.IO): a request from this socket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Inbound {
    /// The event's ack id, when the client asked for an ack: the reply is that ack.
    pub id: Option<RequestId>,
    /// The request, or why the event could not be one (answered as a refusal).
    pub request: Result<Request, Refusal>,
}

/// Session → Engine.IO session: this socket ended (error flood, eviction) and how.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SocketEnded {
    /// Which socket (the Engine.IO session knows its namespace by this).
    pub session: SessionId,
    /// The close code for the connection.
    pub code: CloseCode,
    /// The close reason, for the log and the close frame.
    pub reason: String,
}

/// Engine.IO session → Session: the socket disconnected (namespace DISCONNECT or the
/// connection ended).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    /// The connection ended without the client asking (transport closed or timed out): with
    /// connection-state recovery on, the socket's state is kept for its client's reconnect. A
    /// namespace DISCONNECT from the client, as in the reference server, is not.
    pub recoverable: bool,
}

impl Handler<Inbound> for Session {
    type Result = ();

    fn handle(&mut self, msg: Inbound, ctx: &mut Context<Self>) {
        self.last_seen = Instant::now();
        self.deps.metrics.messages_in.inc();
        match msg.request {
            Ok(request) => {
                let identity = self.identity.clone();
                self.dispatch(msg.id, request, identity, ctx);
            }
            Err(refusal) => self.refuse(ctx, msg.id.as_deref(), refusal),
        }
    }
}

/// Engine.IO session → Session (Socket.IO): an event the namespace's app profile maps. The
/// session maps it (it knows the socket's rooms and the operations it started) onto the same
/// [`Request`]s Switchyard's own events make, and handles those as it handles any request.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AppEvent {
    /// The event's ack id, when the client asked for an ack: the (first) request's reply.
    pub id: Option<RequestId>,
    /// The app's event name.
    pub name: String,
    /// The arguments after the name.
    pub args: Vec<serde_json::Value>,
    /// Binary attachments, for a publish whose data holds their placeholders.
    pub attachments: Vec<Bytes>,
}

impl Handler<Disconnect> for Session {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, ctx: &mut Context<Self>) {
        if let Some(r) = &mut self.recovery {
            r.recoverable = msg.recoverable;
        }
        ctx.stop();
    }
}

impl Handler<ServerShutdown> for Session {
    type Result = ();

    fn handle(&mut self, _: ServerShutdown, ctx: &mut Context<Self>) {
        // The client did not ask: a Socket.IO socket is kept for recovery, which in cluster
        // mode lets it recover on another node or on this one restarted (docs/cluster.md).
        if let Some(r) = &mut self.recovery {
            r.recoverable = true;
        }
        self.close(ctx, CloseCode::Away, "server shutting down");
    }
}

fn mailbox(e: MailboxError) -> Refusal {
    Refusal::new(
        ErrorCode::Unavailable,
        format!("operations unavailable: {e}"),
    )
}
