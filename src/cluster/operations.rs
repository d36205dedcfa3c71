//! Cluster mode: cancels and worker reports for an operation that runs on another node, handed
//! over through Redis pub/sub ([`RedisPeers`], the `Peers` seam of `actors::operation::peers`).
//!
//! In: `Peers::forward` (the operation manager, for an operation not live on this node);
//! requests and replies on the channels below. Out: [`CancelHere`] / [`ReportHere`] to this
//! node's manager; the owner's answer back to the requesting node.
//!
//! Channels (prefix `SWITCHYARD_REDIS_PREFIX`):
//!
//! | channel | what |
//! | --- | --- |
//! | `{p}:ops` | every forward: `{"from": node, "req": n, "fwd": {…}}`; every node hears it, the one that runs the operation acts and answers |
//! | `{p}:ops:reply:{node}` | answers to `node`: `{"req": n, "ok": row}` or `{"req": n, "err": {"code", "message"}}` |
//!
//! Why pub/sub, and why one shared request channel: the forward is a request with a deadline,
//! not a message to keep — if Redis or the owner is away, the caller is told `unavailable`
//! within the deadline and the worker retries, so pub/sub's "no delivery while disconnected"
//! costs nothing a stream would save, and it delivers in well under a millisecond with no
//! polling and no state in Redis. A shared channel needs no owner lookup before sending, so a
//! node's forwards leave in call order through one publisher (one connection, pipelined): one
//! worker's reports reach the owner in the order it made them. Redis is already every node's
//! dependency; PostgreSQL's LISTEN/NOTIFY would have needed a second, async database client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::actors::operation::peers::{Forward, PeerAnswer, Peers};
use crate::actors::operation_manager::{CancelHere, OperationManager, ReportHere, ReportReply};
use crate::config::Settings;
use crate::db::operations::OperationRow;
use crate::error_code::{ErrorCode, Refusal};
use crate::operations::Operation;

/// Publishes sent in one pipeline at most.
const BATCH: usize = 256;
/// Wait before subscribing again after the subscription dropped (Redis away).
const RESUBSCRIBE: Duration = Duration::from_millis(500);

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Operation, Refusal>>>>>;

/// A forward on the wire.
#[derive(Serialize, Deserialize)]
struct Request {
    from: String,
    req: u64,
    fwd: Forward,
}

/// An owner's answer on the wire.
#[derive(Serialize, Deserialize)]
struct Reply {
    req: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ok: Option<OperationRow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    err: Option<WireRefusal>,
}

#[derive(Serialize, Deserialize)]
struct WireRefusal {
    code: String,
    message: String,
}

impl Reply {
    fn of(req: u64, answer: Result<Operation, Refusal>) -> Self {
        match answer {
            Ok(op) => Self {
                req,
                ok: Some(OperationRow::from(&op)),
                err: None,
            },
            Err(r) => Self {
                req,
                ok: None,
                err: Some(WireRefusal {
                    code: r.code.as_str().to_string(),
                    message: r.message,
                }),
            },
        }
    }

    fn into_answer(self) -> Result<Operation, Refusal> {
        match (self.ok, self.err) {
            (Some(row), _) => Ok(row.into_operation()),
            (None, Some(e)) => Err(Refusal::new(
                ErrorCode::ALL
                    .iter()
                    .copied()
                    .find(|c| c.as_str() == e.code)
                    .unwrap_or(ErrorCode::Internal),
                e.message,
            )),
            (None, None) => Err(Refusal::new(
                ErrorCode::Internal,
                "empty answer from a peer",
            )),
        }
    }
}

/// This node's side of the hand-over: its publisher, its subscription, the forwards waiting
/// for an answer.
pub struct RedisPeers {
    /// This node's owner id (the reply channel's name).
    node: String,
    /// `{p}:ops`.
    requests: String,
    /// The publisher's queue: (channel, payload), sent in this order.
    out: mpsc::UnboundedSender<(String, String)>,
    /// Forwards waiting for their answer, by request number; each leaves once (answered, or
    /// at its deadline).
    waiting: Waiting,
    next: AtomicU64,
    /// How long a forward waits for its answer (`SWITCHYARD_REDIS_TIMEOUT_MS` plus
    /// `SWITCHYARD_DB_TIMEOUT_MS`: a report is answered once the owner stored it).
    deadline: Duration,
}

impl RedisPeers {
    /// Starts the publisher and the subscriber on the current actix system.
    pub fn start(
        settings: &Settings,
        node: &str,
        manager: Addr<OperationManager>,
    ) -> anyhow::Result<Arc<Self>> {
        let (client, conn) = super::redis::connection(settings)?;
        let (out, rx) = mpsc::unbounded_channel();
        let prefix = &settings.redis_prefix;
        let peers = Arc::new(Self {
            node: node.to_string(),
            requests: format!("{prefix}:ops"),
            out,
            waiting: Arc::new(Mutex::new(HashMap::new())),
            next: AtomicU64::new(1),
            deadline: settings.redis_timeout + settings.db_timeout,
        });
        actix::spawn(publisher(conn, rx));
        actix::spawn(subscriber(
            client,
            peers.requests.clone(),
            format!("{prefix}:ops:reply:{node}"),
            prefix.clone(),
            node.to_string(),
            peers.waiting.clone(),
            peers.out.clone(),
            manager,
        ));
        Ok(peers)
    }
}

fn lock(
    w: &Waiting,
) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Result<Operation, Refusal>>>> {
    // A panic while holding this lock leaves a plain map: still usable.
    w.lock().unwrap_or_else(|e| e.into_inner())
}

impl Peers for RedisPeers {
    fn forward(&self, what: Forward) -> PeerAnswer {
        let req = self.next.fetch_add(1, Relaxed);
        let id = what.id().to_string();
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(req, tx);
        let payload = serde_json::to_string(&Request {
            from: self.node.clone(),
            req,
            fwd: what,
        });
        let queued = payload
            .map(|p| self.out.send((self.requests.clone(), p)).is_ok())
            .unwrap_or(false);
        let (waiting, deadline) = (self.waiting.clone(), self.deadline);
        Box::pin(async move {
            let answer = if queued {
                tokio::time::timeout(deadline, rx)
                    .await
                    .ok()
                    .and_then(Result::ok)
            } else {
                None
            };
            answer.unwrap_or_else(|| {
                lock(&waiting).remove(&req);
                Err(Refusal::new(
                    ErrorCode::Unavailable,
                    format!(
                        "operation {id} runs on another node, which did not answer within {} ms; try again",
                        deadline.as_millis()
                    ),
                ))
            })
        })
    }
}

/// Sends what is queued, in order, as many as wait in one pipeline.
async fn publisher(mut conn: ConnectionManager, mut rx: mpsc::UnboundedReceiver<(String, String)>) {
    while let Some(first) = rx.recv().await {
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH").arg(&first.0).arg(&first.1).ignore();
        let mut n = 1;
        while n < BATCH {
            match rx.try_recv() {
                Ok((channel, payload)) => {
                    pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
                    n += 1;
                }
                Err(_) => break,
            }
        }
        // A lost publish is a forward that times out (`unavailable`): said, never hung.
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            log::warn!("operations: handing {n} requests or answers to other nodes failed: {e}");
        }
    }
}

/// Hears forwards (acting on those for operations live here) and answers (settling this
/// node's waiting forwards); subscribes again after Redis comes back.
#[allow(clippy::too_many_arguments)]
async fn subscriber(
    client: redis::Client,
    requests: String,
    replies: String,
    prefix: String,
    node: String,
    waiting: Waiting,
    out: mpsc::UnboundedSender<(String, String)>,
    manager: Addr<OperationManager>,
) {
    let mut down_logged = false;
    loop {
        match subscribe(&client, &requests, &replies).await {
            Ok(mut pubsub) => {
                if down_logged {
                    log::info!("operations: listening to other nodes again");
                    down_logged = false;
                }
                let mut stream = pubsub.on_message();
                while let Some(msg) = stream.next().await {
                    let Ok(payload) = msg.get_payload::<String>() else {
                        continue;
                    };
                    if msg.get_channel_name() == replies {
                        match serde_json::from_str::<Reply>(&payload) {
                            Ok(reply) => {
                                if let Some(tx) = lock(&waiting).remove(&reply.req) {
                                    let _ = tx.send(reply.into_answer());
                                }
                            }
                            Err(e) => log::warn!("operations: unreadable answer from a peer: {e}"),
                        }
                    } else {
                        match serde_json::from_str::<Request>(&payload) {
                            Ok(r) if r.from == node => {}
                            Ok(r) => act_on(r, &prefix, &manager, &out),
                            Err(e) => log::warn!("operations: unreadable request from a peer: {e}"),
                        }
                    }
                }
            }
            Err(e) => {
                if !down_logged {
                    log::warn!("operations: cannot listen to other nodes (retrying): {e}");
                    down_logged = true;
                }
            }
        }
        tokio::time::sleep(RESUBSCRIBE).await;
    }
}

async fn subscribe(
    client: &redis::Client,
    requests: &str,
    replies: &str,
) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(requests).await?;
    pubsub.subscribe(replies).await?;
    Ok(pubsub)
}

/// Hands a peer's forward to this node's manager now (so forwards keep their order), and its
/// answer back when there is one (only the node that runs the operation answers).
fn act_on(
    r: Request,
    prefix: &str,
    manager: &Addr<OperationManager>,
    out: &mpsc::UnboundedSender<(String, String)>,
) {
    let reply_to = format!("{prefix}:ops:reply:{}", r.from);
    let out = out.clone();
    let req = r.req;
    let send_answer = move |answer: Result<Operation, Refusal>| {
        if let Ok(p) = serde_json::to_string(&Reply::of(req, answer)) {
            let _ = out.send((reply_to, p));
        }
    };
    match r.fwd {
        Forward::Cancel { id } => {
            let asked = manager.send(CancelHere { id });
            actix::spawn(async move {
                if let Ok(Some(answer)) = asked.await {
                    send_answer(answer);
                }
            });
        }
        Forward::Report { id, report } => {
            let (tx, rx) = oneshot::channel();
            let asked = manager.send(ReportHere {
                id,
                report,
                reply: ReportReply::Wait(tx),
            });
            actix::spawn(async move {
                if let Ok(true) = asked.await {
                    if let Ok(answer) = rx.await {
                        send_answer(answer);
                    }
                }
            });
        }
    }
}
