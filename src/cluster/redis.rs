//! The Redis broker: publishes ordered by one script per message, a writer that keeps each
//! caller's order, a reader of the fan-out stream per node, and the room backlog and history
//! read from each room's stream.
//!
//! One piece (about 520 lines): the writer, the reader, the backlog and the history read the
//! same keys in the same shapes; the scripts and the reply parsing are apart (`scripts.rs`,
//! `replies.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, Client, Value};
use tokio::sync::{mpsc, oneshot};

use crate::actors::local_broker::LocalBroker;
use crate::actors::registry::{Deliver, DeliverPresence, RoomRegistry, RouteJoin};
use crate::broker::local::answer;
use crate::broker::{
    node_id, Backlog, Broker, Envelope, HistoryPage, HistoryView, JoinFuture, JoinRoom, Joined,
    LeaveFuture, LeaveRoom, Position, PublishFuture, SessionId, Tail, ViewFuture,
};
use crate::config::Settings;
use crate::error_code::{ErrorCode, Refusal};
use crate::protocol::native;

use super::replies::{
    array, bad_reply, entries_of, entry_to_ordered, envelope_of, first_id, int, offset_of_id,
    position_of, presence_change_of, stream_entries, text,
};
use super::scripts::{OPEN, PUBLISH};

/// Publishes written to Redis in one round trip at most.
const BATCH: usize = 256;
/// How long the reader's `XREAD` blocks waiting for entries.
const READ_BLOCK: Duration = Duration::from_millis(1_000);
/// Entries one `XREAD` returns at most.
const READ_COUNT: usize = 1_000;

/// The Redis side: connection, key names, bounds. Shared by the broker, the writer and reader
/// tasks, and the rooms (as their `Backlog`).
pub struct RedisLog {
    client: Client,
    /// Publishes, backlogs and history reads, with their deadline.
    pub(super) link: Link,
    pub(super) prefix: String,
    /// Messages kept per room stream (`SWITCHYARD_HISTORY_SIZE`).
    history_max: usize,
    pub(super) fanout_max: usize,
    /// Lifetime of a room's keys after its last publish or open (at least a day, at least the
    /// history's age bound): an idle room's epoch and history then go, and its clients reload.
    ttl_secs: u64,
    /// Epochs minted by this node (the suffix of the next candidate).
    minted: AtomicU64,
}

/// A connection with its deadline and the reachability it observed: cheap to clone into the
/// futures that use it.
#[derive(Clone)]
pub(super) struct Link {
    /// Reconnects by itself after an outage.
    conn: ConnectionManager,
    timeout: Duration,
    /// The last command answered (false after one failed); logged once per change.
    reachable: Arc<AtomicBool>,
}

impl Link {
    fn unreachable(&self, e: impl std::fmt::Display) -> Refusal {
        if self.reachable.swap(false, Relaxed) {
            log::warn!("redis unreachable: {e}");
        }
        Refusal::new(ErrorCode::Unavailable, format!("redis unavailable: {e}"))
    }

    fn answered(&self) {
        if !self.reachable.swap(true, Relaxed) {
            log::info!("redis reachable again");
        }
    }

    /// Runs one command within the deadline; a failure is `unavailable`.
    ///
    /// Only for commands that may run twice (reads, and the open script, which changes nothing
    /// the second time): the first command after an outage fails while the connection manager
    /// reconnects, so a failed attempt is retried (twice, 100 ms apart) within the deadline.
    /// Publishes are never retried here: a lost answer is not a lost command.
    pub(super) async fn cmd<T: redis::FromRedisValue>(
        &self,
        cmd: redis::Cmd,
    ) -> Result<T, Refusal> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut attempt = 0;
        loop {
            let mut conn = self.conn.clone();
            let r = tokio::time::timeout_at(deadline, cmd.query_async(&mut conn)).await;
            let retry = attempt < 2
                && matches!(&r, Ok(Err(e))
                    if e.is_connection_dropped() || e.is_io_error() || e.is_connection_refusal());
            if !retry {
                return self.settle(r);
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs one pipeline (one round trip, in order) within the deadline.
    pub(super) async fn pipe<T: redis::FromRedisValue>(
        &self,
        pipe: redis::Pipeline,
    ) -> Result<T, Refusal> {
        let mut conn = self.conn.clone();
        let r = tokio::time::timeout(self.timeout, pipe.query_async(&mut conn)).await;
        self.settle(r)
    }

    fn settle<T>(
        &self,
        r: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, Refusal> {
        match r {
            Ok(Ok(v)) => {
                self.answered();
                Ok(v)
            }
            Ok(Err(e)) => Err(self.unreachable(e)),
            Err(_) => {
                Err(self.unreachable(format!("no answer within {} ms", self.timeout.as_millis())))
            }
        }
    }
}

/// The client for `SWITCHYARD_REDIS_URL` and a lazily connecting, self-reconnecting
/// connection with the node's deadline: what every part of the cluster that talks to Redis
/// starts from (a node starts while Redis is away, and catches up when it is back).
pub(super) fn connection(settings: &Settings) -> anyhow::Result<(Client, ConnectionManager)> {
    let url = settings
        .redis_url
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("cluster mode needs SWITCHYARD_REDIS_URL"))?;
    let client = Client::open(url)?;
    let conn = client.get_connection_manager_lazy(
        ConnectionManagerConfig::new()
            .set_response_timeout(Some(settings.redis_timeout))
            .set_connection_timeout(Some(settings.redis_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500)),
    )?;
    Ok((client, conn))
}

impl RedisLog {
    /// Connects lazily: a node starts while Redis is away, says so on `/health`, refuses
    /// publishes with `unavailable`, and catches up when Redis is back.
    pub fn connect(settings: &Settings) -> anyhow::Result<Arc<Self>> {
        let (client, conn) = connection(settings)?;
        Ok(Arc::new(Self {
            client,
            link: Link {
                conn,
                timeout: settings.redis_timeout,
                reachable: Arc::new(AtomicBool::new(true)),
            },
            prefix: settings.redis_prefix.clone(),
            history_max: settings.history_size,
            fanout_max: settings.redis_fanout_maxlen,
            ttl_secs: settings.history_ttl.as_secs().max(86_400),
            minted: AtomicU64::new(0),
        }))
    }

    fn meta_key(&self, room: &str) -> String {
        format!("{}:room:{room}:meta", self.prefix)
    }

    fn log_key(&self, room: &str) -> String {
        format!("{}:room:{room}:log", self.prefix)
    }

    pub(super) fn fanout_key(&self) -> String {
        format!("{}:fanout", self.prefix)
    }

    /// An epoch this node proposes for a room that has none; unique across nodes and restarts.
    fn candidate_epoch(&self) -> String {
        format!("{}-{}", node_id(), self.minted.fetch_add(1, Relaxed) + 1)
    }
}

/// One publish waiting for the writer.
struct Pending {
    envelope: Envelope,
    reply: Option<oneshot::Sender<Result<Position, Refusal>>>,
}

/// What the writer takes, in the order it was handed over.
enum Item {
    Publish(Pending),
    /// A join, placed in its caller's order behind the publishes before it.
    Join(Box<JoinRoom>, oneshot::Sender<Result<Joined, Refusal>>),
}

/// Rooms whose last ordered position the writer remembers (for joins behind their publishes);
/// past this it forgets them all, and a join behind a forgotten room's publish may get that
/// publish delivered as well (a duplicate, never a loss).
const LAST_POSITIONS: usize = 100_000;

/// The writer: takes publishes and joins in the order they were handed over. Publishes go to
/// Redis in that order, as many as are waiting in one pipeline (one round trip); Redis runs a
/// pipeline in order. A join waits for the publishes before it to be ordered, and goes to the
/// room with the position of the room's last one (`JoinRoom::after`): the reader may not have
/// delivered them yet, and the joiner must not get them. So each caller's order holds across
/// its publishes and joins, as the broker's contract says.
async fn write_loop(
    log: Arc<RedisLog>,
    registry: Addr<RoomRegistry>,
    mut rx: mpsc::UnboundedReceiver<Item>,
) {
    let mut last: HashMap<String, Position> = HashMap::new();
    while let Some(first) = rx.recv().await {
        let mut items = vec![first];
        while items.len() < BATCH {
            match rx.try_recv() {
                Ok(i) => items.push(i),
                Err(_) => break,
            }
        }
        let mut publishes = Vec::new();
        for item in items {
            match item {
                Item::Publish(p) => publishes.push(p),
                Item::Join(join, tx) => {
                    order(&log, std::mem::take(&mut publishes), &mut last).await;
                    let after = last.get(&join.room).cloned();
                    let fut = registry.send(RouteJoin(JoinRoom { after, ..*join }));
                    actix::spawn(async move {
                        let joined = match fut.await {
                            Ok(routed) => routed.joined().await,
                            Err(e) => Err(registry_gone(e)),
                        };
                        let _ = tx.send(joined);
                    });
                }
            }
        }
        order(&log, publishes, &mut last).await;
    }
}

/// Sends `batch` to Redis in one pipeline and answers each publisher; remembers each room's
/// last position.
async fn order(log: &RedisLog, batch: Vec<Pending>, last: &mut HashMap<String, Position>) {
    if batch.is_empty() {
        return;
    }
    let fanout = log.fanout_key();
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let mut sent = Vec::with_capacity(batch.len());
    for p in batch {
        let room = p.envelope.room.clone();
        let json = match serde_json::to_string(&p.envelope) {
            Ok(j) => j,
            Err(e) => {
                reply(
                    p.reply,
                    Err(Refusal::new(ErrorCode::Internal, e.to_string())),
                );
                continue;
            }
        };
        pipe.cmd("EVAL")
            .arg(PUBLISH)
            .arg(3)
            .arg(log.meta_key(&room))
            .arg(log.log_key(&room))
            .arg(&fanout)
            .arg(json)
            .arg(log.candidate_epoch())
            .arg(log.history_max)
            .arg(log.fanout_max)
            .arg(log.ttl_secs)
            .arg(&room);
        sent.push((room, p.reply));
    }
    if sent.is_empty() {
        return;
    }
    match log.link.pipe::<Vec<Value>>(pipe).await {
        Ok(values) if values.len() == sent.len() => {
            if last.len() > LAST_POSITIONS {
                last.clear();
            }
            for ((room, tx), v) in sent.into_iter().zip(values) {
                let result = position_of(&v).ok_or_else(|| {
                    log::warn!("redis: publish to {room} refused: {v:?}");
                    Refusal::new(ErrorCode::Unavailable, "redis refused the publish")
                });
                if let Ok(p) = &result {
                    last.insert(room, p.clone());
                }
                reply(tx, result);
            }
        }
        Ok(values) => {
            let why = format!("{} answers for {} publishes", values.len(), sent.len());
            for (_, tx) in sent {
                reply(tx, Err(Refusal::new(ErrorCode::Unavailable, why.clone())));
            }
        }
        Err(refusal) => {
            for (_, tx) in sent {
                reply(tx, Err(refusal.clone()));
            }
        }
    }
}

fn reply(tx: Option<oneshot::Sender<Result<Position, Refusal>>>, r: Result<Position, Refusal>) {
    match tx {
        Some(tx) => {
            let _ = tx.send(r);
        }
        None => {
            if let Err(e) = r {
                log::warn!("a publish nobody waits for was refused: {e}");
            }
        }
    }
}

/// The reader: every entry of the fan-out stream, from the last one read, into this node's
/// rooms. Reconnects after an outage and continues from where it stopped. Ends when the
/// registry does.
async fn read_loop(log: Arc<RedisLog>, registry: Addr<RoomRegistry>) {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(log.link.timeout))
        .set_response_timeout(Some(READ_BLOCK + log.link.timeout));
    let fanout = log.fanout_key();
    let mut last: Option<String> = None;
    let mut backoff = Duration::from_millis(100);
    while registry.connected() {
        let mut conn = match log
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                log.link.unreachable(e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if last.is_none() {
            // A node starting reads from now on: what came before is in the rooms' streams,
            // where a room starting here reads it (`Backlog`).
            let top: redis::RedisResult<Value> = redis::cmd("XREVRANGE")
                .arg(&fanout)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await;
            match top {
                Ok(v) => last = Some(first_id(&v).unwrap_or_else(|| "0-0".into())),
                Err(e) => {
                    log.link.unreachable(e);
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            }
        }
        backoff = Duration::from_millis(100);
        while registry.connected() {
            let from = last.clone().unwrap_or_else(|| "0-0".into());
            let read: redis::RedisResult<Value> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(READ_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&fanout)
                .arg(&from)
                .query_async(&mut conn)
                .await;
            match read {
                Ok(v) => {
                    log.link.answered();
                    for (id, fields) in stream_entries(&v) {
                        // Presence changes share the stream: their place in the one order.
                        if let Some((room, change)) = presence_change_of(&id, &fields) {
                            registry.do_send(DeliverPresence { room, change });
                        } else if let Some((room, ordered)) = entry_to_ordered(&fields) {
                            registry.do_send(Deliver { room, ordered });
                        } else {
                            log::warn!("redis: fan-out entry {id} is malformed; skipped");
                        }
                        last = Some(id);
                    }
                }
                Err(e) => {
                    log.link.unreachable(e);
                    break;
                }
            }
        }
    }
}

/// The broker of a cluster node: Redis orders, this node's registry delivers.
pub struct RedisBroker {
    log: Arc<RedisLog>,
    /// This node's registry as the local broker routes to it: leaves.
    local: LocalBroker,
    /// To the writer: publishes and joins, in call order.
    queue: mpsc::UnboundedSender<Item>,
}

impl RedisBroker {
    /// Starts the writer and the reader. `registry` must have been made with
    /// `RoomRegistry::with_shared_log(log)`.
    pub fn start(log: Arc<RedisLog>, registry: Addr<RoomRegistry>) -> Arc<Self> {
        let (queue, rx) = mpsc::unbounded_channel();
        actix::spawn(write_loop(log.clone(), registry.clone(), rx));
        actix::spawn(read_loop(log.clone(), registry.clone()));
        Arc::new(Self {
            log,
            local: LocalBroker::new(registry),
            queue,
        })
    }

    fn enqueue(
        &self,
        envelope: Envelope,
        reply: Option<oneshot::Sender<Result<Position, Refusal>>>,
    ) {
        let item = Item::Publish(Pending { envelope, reply });
        if let Err(mpsc::error::SendError(Item::Publish(p))) = self.queue.send(item) {
            reply_gone(p);
        }
    }
}

fn reply_gone(p: Pending) {
    reply(
        p.reply,
        Err(Refusal::new(
            ErrorCode::Unavailable,
            "the redis writer has stopped",
        )),
    );
}

fn registry_gone(e: MailboxError) -> Refusal {
    Refusal::unavailable("registry", e)
}

impl Broker for RedisBroker {
    fn publish(&self, envelope: Envelope) -> PublishFuture {
        let (tx, rx) = oneshot::channel();
        self.enqueue(envelope, Some(tx));
        Box::pin(answer(rx))
    }

    fn publish_and_forget(&self, envelope: Envelope) {
        self.enqueue(envelope, None);
    }

    fn join(&self, join: JoinRoom) -> JoinFuture {
        // Behind this caller's publishes (see `write_loop`).
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Item::Join(Box::new(join), tx)).is_err() {
            return Box::pin(std::future::ready(Err(Refusal::new(
                ErrorCode::Unavailable,
                "the redis writer has stopped",
            ))));
        }
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(Refusal::new(
                    ErrorCode::Unavailable,
                    "the redis writer has stopped",
                ))
            })
        })
    }

    // Leaving is this node's room's business: routed by the registry, as the local broker does.
    fn leave(&self, leave: LeaveRoom) -> LeaveFuture {
        self.local.leave(leave)
    }

    fn leave_all(&self, session: SessionId, rooms: Vec<String>) {
        self.local.leave_all(session, rooms)
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    fn check(&self) -> ViewFuture<Result<(), String>> {
        let link = self.log.link.clone();
        Box::pin(async move {
            link.cmd::<String>(redis::cmd("PING"))
                .await
                .map(|_| ())
                .map_err(|r| r.message)
        })
    }
}

impl Backlog for RedisLog {
    fn range(
        &self,
        room: String,
        after: u64,
        until: u64,
    ) -> ViewFuture<Result<Vec<(u64, Envelope)>, Refusal>> {
        self.range_of(&room, after, until)
    }

    fn tail(&self, room: String, max: usize) -> ViewFuture<Result<Tail, Refusal>> {
        let link = self.link.clone();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(OPEN)
            .arg(2)
            .arg(self.meta_key(&room))
            .arg(self.log_key(&room))
            .arg(self.candidate_epoch())
            .arg(max)
            .arg(self.ttl_secs);
        Box::pin(async move {
            let v: Value = link.cmd(cmd).await?;
            let parts = array(&v).ok_or_else(|| bad_reply(&v))?;
            let epoch: Arc<str> = parts
                .first()
                .and_then(text)
                .ok_or_else(|| bad_reply(&v))?
                .into();
            let offset = parts.get(1).and_then(int).ok_or_else(|| bad_reply(&v))?;
            let mut entries: Vec<(u64, Envelope)> = parts
                .get(2)
                .map(entries_of)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(id, fields)| Some((offset_of_id(&id)?, envelope_of(&fields)?)))
                .collect();
            entries.reverse();
            Ok(Tail {
                position: Position { epoch, offset },
                entries,
            })
        })
    }
}

impl RedisLog {
    fn range_of(
        &self,
        room: &str,
        after: u64,
        until: u64,
    ) -> ViewFuture<Result<Vec<(u64, Envelope)>, Refusal>> {
        let link = self.link.clone();
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(self.log_key(room))
            .arg(format!("{}-0", after.saturating_add(1)))
            .arg(format!("{until}-1"));
        Box::pin(async move {
            let v: Value = link.cmd(cmd).await?;
            Ok(entries_of(&v)
                .into_iter()
                .filter_map(|(id, fields)| Some((offset_of_id(&id)?, envelope_of(&fields)?)))
                .collect())
        })
    }
}

impl HistoryView for RedisBroker {
    fn history(
        &self,
        room: String,
        after: Option<u64>,
    ) -> ViewFuture<Result<Option<HistoryPage>, Refusal>> {
        let link = self.log.link.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET")
            .arg(self.log.meta_key(&room))
            .arg("epoch")
            .arg("offset");
        pipe.cmd("XRANGE")
            .arg(self.log.log_key(&room))
            .arg(match after {
                Some(a) => format!("{}-0", a.saturating_add(1)),
                None => "-".into(),
            })
            .arg("+");
        Box::pin(async move {
            let v: Vec<Value> = link.pipe(pipe).await?;
            let meta = v.first().and_then(array).unwrap_or(&[]);
            let Some(epoch) = meta.first().and_then(text) else {
                return Ok(None);
            };
            let offset = meta.get(1).and_then(int).unwrap_or(0);
            let entries: Vec<(u64, Envelope)> = v
                .get(1)
                .map(entries_of)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(id, fields)| Some((offset_of_id(&id)?, envelope_of(&fields)?)))
                .collect();
            let after = after.unwrap_or(0);
            let complete = match entries.first() {
                Some((first, _)) => *first <= after + 1,
                None => after >= offset,
            };
            let messages = entries
                .iter()
                .map(|(o, e)| {
                    native::message_of(&crate::protocol::Event {
                        room: &room,
                        offset: *o,
                        event: &e.event,
                        data: &e.data,
                        from: e.from.as_deref(),
                        connection: e.connection.as_deref(),
                        message_id: e.message_id.as_deref(),
                        seq: e.seq,
                        attachments: &e.attachments,
                    })
                })
                .collect();
            Ok(Some(HistoryPage {
                epoch,
                offset,
                complete,
                messages,
            }))
        })
    }
}

// Presence across the nodes is `super::presence::ClusterPresence`, its own view.
