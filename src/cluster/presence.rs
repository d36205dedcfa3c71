//! Presence across the nodes: a user is present in a room while they have a connection to it on
//! any node; their arrival (first connection anywhere) and departure (last one anywhere) are
//! announced once, in the room's order; a node that dies takes its users with it within
//! `SWITCHYARD_REDIS_PRESENCE_TTL_MS` + `SWITCHYARD_REDIS_PRESENCE_HEARTBEAT_MS`.
//!
//! Every connection is an entry in Redis (`scripts.rs` has the key layout), written by the node
//! that holds it; each node's entries live as long as the node's heartbeat in one zset. The
//! scripts that change entries are also the ones that announce: an arrival or a departure is
//! counted and put in the fan-out stream in one atomic step, so it is announced once, and every
//! node reads it in the same place among the room's messages. Any node sweeps expired nodes: the
//! sweep of a room removes the dead node's entries and announces the departures atomically, so
//! of several nodes sweeping at once exactly one announces each departure.
//!
//! This node's side is one task ([`Tracker`]) that owns the table of its connections (what the
//! rooms reported, [`Backlog::arrived`] / [`Backlog::departed`]) and writes changes to Redis in
//! the order they came. What it could not write (Redis away) marks the room for a full sync of
//! this node's entries there on the next heartbeat that Redis answers; a heartbeat that finds
//! the node expired (it was cut off or stalled longer than the lifetime, and its users were
//! announced leaving) syncs every room, so they are announced again. Nothing here blocks a room.
//!
//! The node's name in presence is the process's node id plus a suffix drawn at each start: a
//! node restarting under the same id (or nodes sharing a process in tests) never refreshes its
//! predecessor's entries, which expire and are swept like any dead node's.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use actix::prelude::*;
use redis::Value;
use tokio::sync::mpsc;

use crate::actors::local_broker::LocalBroker;
use crate::actors::registry::RoomRegistry;
use crate::auth::UserInfo;
use crate::broker::{
    node_id, Backlog, Envelope, PresenceSnapshot, PresenceView, RoomInfo, SessionId, Tail,
    ViewFuture,
};
use crate::config::Settings;
use crate::error_code::{ErrorCode, Refusal};

use super::redis::RedisLog;
use super::replies::{array, bad_reply, bytes, stream_id, text};
use super::scripts::{
    PRESENCE_BURY, PRESENCE_CHANGE, PRESENCE_EXPIRED, PRESENCE_HEARTBEAT, PRESENCE_SNAPSHOT,
    PRESENCE_SWEEP,
};

/// Membership changes written to Redis in one round trip at most.
const BATCH: usize = 512;

/// A membership change a room reported, in the room's order.
enum Op {
    Arrive {
        room: String,
        session: SessionId,
        user: Arc<UserInfo>,
    },
    Depart {
        room: String,
        session: SessionId,
    },
}

/// The cluster's presence: the rooms' [`Backlog`] (delegating the log to [`RedisLog`], adding
/// presence) and the [`PresenceView`] of the REST API.
pub struct ClusterPresence {
    log: Arc<RedisLog>,
    /// This node in presence entries (see the module docs).
    node: Arc<str>,
    ops: mpsc::UnboundedSender<Op>,
    /// The tracker's end of `ops`, until [`ClusterPresence::start`] takes it.
    pending: Mutex<Option<mpsc::UnboundedReceiver<Op>>>,
    /// This node's rooms (for `rooms()`), once started.
    local: OnceLock<LocalBroker>,
    /// `SWITCHYARD_REDIS_PRESENCE_HEARTBEAT_MS`: heartbeat and sweep period.
    heartbeat: Duration,
    /// `SWITCHYARD_REDIS_PRESENCE_TTL_MS`: how long a node's entries outlive its last heartbeat.
    ttl: Duration,
}

impl ClusterPresence {
    pub fn new(log: Arc<RedisLog>, settings: &Settings) -> Arc<Self> {
        let (ops, rx) = mpsc::unbounded_channel();
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        Arc::new(Self {
            log,
            node: format!("{}.{suffix}", node_id()).into(),
            ops,
            pending: Mutex::new(Some(rx)),
            local: OnceLock::new(),
            heartbeat: settings.redis_presence_heartbeat,
            ttl: settings.redis_presence_ttl,
        })
    }

    /// Starts the tracker (heartbeat, sweep, writes) on the current actix system. `registry`
    /// must have been made with this value as its shared log.
    pub fn start(self: &Arc<Self>, registry: Addr<RoomRegistry>) {
        let _ = self.local.set(LocalBroker::new(registry));
        let rx = self.pending.lock().ok().and_then(|mut p| p.take());
        if let Some(rx) = rx {
            log::info!("presence: this node is {} in redis", self.node);
            actix::spawn(run(self.clone(), rx));
        }
    }

    fn room_key(&self, room: &str, what: &str) -> String {
        format!("{}:room:{room}:{what}", self.log.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}:presence:nodes", self.log.prefix)
    }

    fn node_rooms_key(&self, node: &str) -> String {
        format!("{}:presence:node:{node}", self.log.prefix)
    }

    /// `EVAL` of a script that changes or sweeps one room's entries (both take these keys).
    fn room_script(&self, script: &str, room: &str, node: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script)
            .arg(6)
            .arg(self.room_key(room, "pconn"))
            .arg(self.room_key(room, "puser"))
            .arg(self.room_key(room, "pcount"))
            .arg(self.log.fanout_key())
            .arg(self.node_rooms_key(node))
            .arg(self.nodes_key())
            .arg(node)
            .arg(room)
            .arg(self.log.fanout_max);
        cmd
    }
}

fn users_of(v: &Value) -> Vec<Arc<UserInfo>> {
    array(v)
        .unwrap_or(&[])
        .iter()
        .filter_map(|u| serde_json::from_slice::<UserInfo>(bytes(u)?).ok())
        .map(Arc::new)
        .collect()
}

fn user_json(user: &UserInfo) -> String {
    // A `UserInfo` is two strings: it always serializes.
    serde_json::to_string(user).unwrap_or_default()
}

impl Backlog for ClusterPresence {
    fn tail(&self, room: String, max: usize) -> ViewFuture<Result<Tail, Refusal>> {
        Backlog::tail(&*self.log, room, max)
    }

    fn range(
        &self,
        room: String,
        after: u64,
        until: u64,
    ) -> ViewFuture<Result<Vec<(u64, Envelope)>, Refusal>> {
        Backlog::range(&*self.log, room, after, until)
    }

    fn presence(&self, room: String) -> ViewFuture<Result<Option<PresenceSnapshot>, Refusal>> {
        let link = self.log.link.clone();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(PRESENCE_SNAPSHOT)
            .arg(2)
            .arg(self.room_key(&room, "puser"))
            .arg(self.log.fanout_key());
        Box::pin(async move {
            let v: Value = link.cmd(cmd).await?;
            let parts = array(&v).ok_or_else(|| bad_reply(&v))?;
            let at = parts
                .first()
                .and_then(text)
                .and_then(|id| stream_id(&id))
                .ok_or_else(|| bad_reply(&v))?;
            let users = parts.get(1).map(users_of).unwrap_or_default();
            Ok(Some(PresenceSnapshot { at, users }))
        })
    }

    fn arrived(&self, room: &str, session: SessionId, user: &Arc<UserInfo>) {
        // Fails only once the tracker has stopped (the node is stopping): nothing to keep.
        let _ = self.ops.send(Op::Arrive {
            room: room.to_string(),
            session,
            user: user.clone(),
        });
    }

    fn departed(&self, room: &str, session: SessionId) {
        let _ = self.ops.send(Op::Depart {
            room: room.to_string(),
            session,
        });
    }
}

impl PresenceView for ClusterPresence {
    /// Read from Redis: the users with a connection on any node, by id. Refused `unavailable`
    /// while Redis is (the REST answer is then 503, not a list that may be wrong).
    fn presence(&self, room: String) -> ViewFuture<Result<Option<Vec<UserInfo>>, Refusal>> {
        let link = self.log.link.clone();
        let mut cmd = redis::cmd("HVALS");
        cmd.arg(self.room_key(&room, "puser"));
        Box::pin(async move {
            let v: Value = link.cmd(cmd).await?;
            let mut users: Vec<UserInfo> = users_of(&v).iter().map(|u| (**u).clone()).collect();
            users.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(Some(users))
        })
    }

    fn rooms(&self) -> ViewFuture<Result<Vec<RoomInfo>, Refusal>> {
        match self.local.get() {
            Some(local) => local.rooms(),
            None => Box::pin(std::future::ready(Err(Refusal::new(
                ErrorCode::Unavailable,
                "presence not started",
            )))),
        }
    }
}

/// This node's side of presence: its connections, and what Redis has yet to be told.
struct Tracker {
    me: Arc<ClusterPresence>,
    /// room → this node's member sessions there.
    conns: HashMap<String, HashMap<SessionId, Arc<UserInfo>>>,
    /// Rooms whose entries in Redis may differ from `conns`: synced in full on the next
    /// heartbeat Redis answers.
    dirty: HashSet<String>,
    /// The last heartbeat found this node registered, and no change was refused since.
    registered: bool,
    /// The last command failed (Redis away): changes only mark rooms dirty until a heartbeat
    /// gets through, instead of each waiting out the deadline.
    down: bool,
    /// A heartbeat has succeeded before (a later one that finds the node expired is news).
    beaten: bool,
}

async fn run(me: Arc<ClusterPresence>, mut rx: mpsc::UnboundedReceiver<Op>) {
    let mut t = Tracker {
        me: me.clone(),
        conns: HashMap::new(),
        dirty: HashSet::new(),
        registered: false,
        down: false,
        beaten: false,
    };
    let mut tick = tokio::time::interval(me.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                t.beat().await;
                t.sweep().await;
            }
            op = rx.recv() => {
                let Some(op) = op else { return };
                let mut batch = vec![op];
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(op) => batch.push(op),
                        Err(_) => break,
                    }
                }
                t.apply(batch).await;
                if !t.registered && !t.down {
                    // Refused as not registered (expired, or Redis lost its data): at once.
                    t.beat().await;
                }
            }
        }
    }
}

/// One room's changes for the change script: op, session, user id, user JSON.
type Changes = Vec<(&'static str, SessionId, String, String)>;

impl Tracker {
    /// Takes the rooms' reports into the table, and writes them to Redis (one script per room,
    /// all in one round trip), unless Redis is away or the room is waiting for a sync anyway.
    async fn apply(&mut self, batch: Vec<Op>) {
        let mut order: Vec<String> = Vec::new();
        let mut changes: HashMap<String, Changes> = HashMap::new();
        for op in batch {
            let (room, change) = match op {
                Op::Arrive {
                    room,
                    session,
                    user,
                } => {
                    let c = ("+", session, user.id.clone(), user_json(&user));
                    self.conns
                        .entry(room.clone())
                        .or_default()
                        .insert(session, user);
                    (room, c)
                }
                Op::Depart { room, session } => {
                    if let Some(m) = self.conns.get_mut(&room) {
                        m.remove(&session);
                        if m.is_empty() {
                            self.conns.remove(&room);
                        }
                    }
                    (room, ("-", session, String::new(), String::new()))
                }
            };
            if !changes.contains_key(&room) {
                order.push(room.clone());
            }
            changes.entry(room).or_default().push(change);
        }
        let rooms: Vec<(String, Changes)> = order
            .into_iter()
            .filter(|r| !self.dirty.contains(r))
            .filter_map(|r| changes.remove(&r).map(|c| (r, c)))
            .collect();
        if rooms.is_empty() {
            return;
        }
        if self.down || !self.registered {
            self.dirty.extend(rooms.into_iter().map(|(r, _)| r));
            return;
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (room, list) in &rooms {
            let mut cmd = self.me.room_script(PRESENCE_CHANGE, room, &self.me.node);
            cmd.arg("change");
            for (op, session, id, json) in list {
                cmd.arg(*op).arg(*session).arg(id).arg(json);
            }
            pipe.add_command(cmd);
        }
        let names: Vec<String> = rooms.into_iter().map(|(r, _)| r).collect();
        self.settle_pipe(names, pipe, "change").await;
    }

    /// Runs the pipeline of room scripts built for `rooms` (in order) and marks the rooms it
    /// could not update as dirty.
    async fn settle_pipe(&mut self, rooms: Vec<String>, pipe: redis::Pipeline, what: &str) {
        match self.me.log.link.pipe::<Vec<Value>>(pipe).await {
            Ok(values) if values.len() == rooms.len() => {
                for (room, v) in rooms.into_iter().zip(values) {
                    match v {
                        Value::Int(n) if n >= 0 => {
                            self.dirty.remove(&room);
                        }
                        Value::Int(_) => {
                            // Not registered (expired while stalled or cut off, or Redis lost
                            // its data): a heartbeat re-registers, then this room is synced.
                            self.registered = false;
                            self.dirty.insert(room);
                        }
                        other => {
                            log::warn!(
                                "presence: {what} of node {} in room {room} refused: {other:?}",
                                self.me.node
                            );
                            self.dirty.insert(room);
                        }
                    }
                }
            }
            Ok(_) | Err(_) => {
                // The link logged the outage; the next heartbeat Redis answers syncs these.
                self.down = true;
                self.dirty.extend(rooms);
            }
        }
    }

    /// Heartbeat: this node's entries live `ttl` longer. If the node was not registered (new,
    /// expired, swept, or Redis lost its data), every room it has connections in is synced;
    /// then every room marked dirty is.
    async fn beat(&mut self) {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(PRESENCE_HEARTBEAT)
            .arg(1)
            .arg(self.me.nodes_key())
            .arg(&*self.me.node)
            .arg(self.me.ttl.as_millis() as u64);
        match self.me.log.link.cmd::<i64>(cmd).await {
            Ok(alive) => {
                self.down = false;
                if alive == 0 {
                    if self.beaten {
                        log::warn!(
                            "presence: node {} had expired in redis (cut off or stalled longer than SWITCHYARD_REDIS_PRESENCE_TTL_MS; its users were announced leaving): announcing its {} rooms' members again",
                            self.me.node,
                            self.conns.len()
                        );
                    }
                    self.dirty.extend(self.conns.keys().cloned());
                }
                self.registered = true;
                self.beaten = true;
            }
            Err(_) => {
                self.down = true;
                return;
            }
        }
        // A batch of rooms per round trip, until none is left or Redis stops answering.
        for _ in 0..=self.dirty.len() / BATCH {
            if self.dirty.is_empty() || self.down || !self.registered {
                break;
            }
            self.sync().await;
        }
    }

    /// Writes this node's whole membership of up to [`BATCH`] dirty rooms (adding what is
    /// missing, removing what is gone).
    async fn sync(&mut self) {
        let rooms: Vec<String> = self.dirty.iter().take(BATCH).cloned().collect();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for room in &rooms {
            let mut cmd = self.me.room_script(PRESENCE_CHANGE, room, &self.me.node);
            cmd.arg("sync");
            for (session, user) in self.conns.get(room).into_iter().flatten() {
                cmd.arg("+")
                    .arg(*session)
                    .arg(&user.id)
                    .arg(user_json(user));
            }
            pipe.add_command(cmd);
        }
        log::info!(
            "presence: node {} syncing its members of {} rooms",
            self.me.node,
            rooms.len()
        );
        self.settle_pipe(rooms, pipe, "sync").await;
    }

    /// Sweeps expired nodes: each room of theirs loses their entries (and its users whose
    /// last connection it was are announced leaving, once), then the node is forgotten.
    async fn sweep(&mut self) {
        if self.down {
            return;
        }
        let link = self.me.log.link.clone();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(PRESENCE_EXPIRED).arg(1).arg(self.me.nodes_key());
        let Ok(v) = link.cmd::<Value>(cmd).await else {
            return;
        };
        let dead: Vec<String> = array(&v)
            .unwrap_or(&[])
            .iter()
            .filter_map(text)
            .filter(|n| *n != *self.me.node)
            .collect();
        for node in dead {
            let set = self.me.node_rooms_key(&node);
            let Ok(rooms) = link
                .cmd::<Vec<String>>(redis::Cmd::new().arg("SMEMBERS").arg(&set).to_owned())
                .await
            else {
                return;
            };
            let mut removed = 0i64;
            let mut alive = false;
            if !rooms.is_empty() {
                let mut pipe = redis::pipe();
                for room in &rooms {
                    pipe.add_command(self.me.room_script(PRESENCE_SWEEP, room, &node));
                }
                let Ok(values) = link.pipe::<Vec<i64>>(pipe).await else {
                    return;
                };
                alive = values.iter().any(|n| *n < 0);
                removed = values.iter().filter(|n| **n > 0).sum();
            }
            if alive {
                continue;
            }
            let mut bury = redis::cmd("EVAL");
            bury.arg(PRESENCE_BURY)
                .arg(2)
                .arg(self.me.nodes_key())
                .arg(&set)
                .arg(&node);
            let buried = link.cmd::<i64>(bury).await.unwrap_or(0) == 1;
            log::info!(
                "presence: node {node} expired: {removed} of its connections removed in {} rooms{}",
                rooms.len(),
                if buried { ", node forgotten" } else { "" }
            );
        }
    }
}
