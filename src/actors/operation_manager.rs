//! The operation manager: starts operations, owns the table of live operation actors, applies
//! each kind's concurrency limit, recovers what a previous process left behind, prunes old rows.
//!
//! In: [`StartOperation`], [`CancelOperation`], [`ReportOperation`], [`GetOperation`],
//! [`WatchOperation`] (routes and sessions); [`CancelHere`], [`ReportHere`] (other nodes, in
//! cluster mode); [`Finished`], [`Retired`] (operation actors).
//! Out: [`Begin`], [`Cancel`], [`Report`], [`GetSnapshot`], [`Watch`], [`Interrupt`] to
//! operation actors; database reads for operations no longer in memory.
//!
//! "Never started twice" is the database's job: a partial unique index allows one active
//! operation per (kind, target), so of several concurrent starts exactly one insert succeeds and
//! the others get the winner back as a `duplicate_operation`.
//!
//! "Never run twice" across a crash rests on the order of writes: a command or demo operation
//! is written as `running` before its runner starts — in its insert when a slot is free at once
//! (the 202 then says `running`), else by its actor when a slot frees up. Start-up recovery
//! starts again only what is still `queued` (it provably never started) and marks `running` and
//! `cancelling` ones interrupted. Every write goes through the single writer (`db::batch`).
//!
//! Cluster mode (`OpContext::ownership`): operations are owned under leases on their rows
//! (`db::leases`). Instead of start-up recovery, a heartbeat renews this node's leases in one
//! UPDATE and takes over operations whose lease ran out (`resume`, as recovery does); a cancel
//! or report for an operation not live here is handed to its owner through `OpContext::peers`
//! ([`CancelHere`], [`ReportHere`] arrive the other way).
//!
//! Why this file is one piece (about 750 lines, cluster mode's part apart in `cluster.rs`): the manager is the one owner of the table of
//! live operations and of the concurrency slots; each of its messages reads or changes both,
//! and a good part of the file is the messages themselves (the manager's public surface; what
//! operation actors send it is in `actors/operation/messages.rs`, re-exported here). The
//! per-operation work lives in `actors/operation/`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use futures_util::FutureExt;
use serde_json::value::RawValue;
use serde_json::Value;

mod cluster;

use self::cluster::settle_forward;
pub use self::cluster::{CancelHere, ReportHere};
use super::operation::peers::Forward;
pub use super::operation::WatchJoined;
use super::operation::{
    backfill_frames, Begin, Cancel, FlushNow, GetSnapshot, Interrupt, ManagerLink, OpContext,
    OperationActor, Report, Watch,
};
// What operation actors tell the manager, and how a report is answered: defined beside the
// operation actor (which sends them) so that it need not name the manager; part of the
// manager's public surface all the same.
pub use super::operation::messages::{Finished, ReportAnswer, ReportReply, Retired};
use super::room::JoinRoom;
use super::{Member, StartUnbounded};
use crate::db::leases;
use crate::db::operations::{self as store, ListFilter, LogRow, OperationRow};
use crate::db::DbError;
use crate::error::{ErrorCode, Refusal};
use crate::operations::{Operation, RunnerKind, Status, WorkerReport};
use crate::protocol::native::RequestId;
use crate::util::now_millis;

/// How often old operations are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Cluster mode: operations one heartbeat takes over at most (the rest at the next one).
const CLAIM_BATCH: i64 = 100;

// ---- messages ------------------------------------------------------------------------------

/// Why a start was refused.
#[derive(Debug)]
pub enum StartError {
    Refused(Refusal),
    /// An active operation of the same kind and target exists: here it is.
    Duplicate(Box<Operation>),
    Database(DbError),
}

/// A started operation and, for external ones, the worker token (given only to the starter).
#[derive(Debug, Clone)]
pub struct Started {
    pub operation: Operation,
    pub worker_token: Option<String>,
}

/// Routes/Session → Manager.
#[derive(Message)]
#[rtype(result = "Result<Started, StartError>")]
pub struct StartOperation {
    pub kind: String,
    pub target: String,
    pub project: Option<String>,
    pub params: Value,
    pub created_by: Option<String>,
}

/// Routes/Session → Manager: cancel a live operation (a finished or unknown one is refused).
#[derive(Message)]
#[rtype(result = "Result<Operation, Refusal>")]
pub struct CancelOperation {
    pub id: String,
}

/// A worker's report: allowed for `authorized` callers (role `service`), or with the
/// operation's own worker token. Answered through `reply`, not as the message's result: a
/// worker streams thousands of reports a second, and a future per report waiting in an actor's
/// context is polled on every wake-up of that context (quadratic in the reports in flight).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReportOperation {
    pub id: String,
    pub report: WorkerReport,
    pub authorized: bool,
    pub worker_token: Option<String>,
    pub reply: ReportReply,
}

/// The freshest status: from the live actor if there is one, else from the database.
#[derive(Message)]
#[rtype(result = "Result<Operation, Refusal>")]
pub struct GetOperation {
    pub id: String,
}

/// A session (or the SSE / per-operation WebSocket endpoints) joins `operation:<id>`.
#[derive(Message)]
#[rtype(result = "Result<(), Refusal>")]
pub struct WatchOperation {
    pub id: String,
    pub member: Member,
    pub log_offset: u64,
    pub request_id: Option<RequestId>,
    /// Who learns the join's position ([`WatchJoined`]): a Socket.IO session with
    /// connection-state recovery; nobody else needs it.
    pub joined_to: Option<Recipient<WatchJoined>>,
}

/// Application (graceful shutdown) → Manager: have every live operation write what it has not.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct FlushAll;

// ---- the actor -----------------------------------------------------------------------------

pub struct OperationManager {
    /// The narrow dependencies it hands on to every operation actor (kinds, database and its
    /// writer, broker, settings, metrics).
    cx: Arc<OpContext>,
    /// Live operation actors by id: an id here is routed to its actor (the freshest status and
    /// the only place a report, cancel or watch may change it); an id not here is served from
    /// the database. An actor leaves it only when it stops (`Retired`).
    live: HashMap<String, Addr<OperationActor>>,
    /// Operations that were sent `Begin` and hold a concurrency slot until `Finished`.
    begun: HashSet<String>,
    /// Slots taken per kind: begun operations, and starts whose insert (as `running`) is in
    /// flight.
    running: HashMap<String, usize>,
    /// Per kind, operations waiting for a slot (FIFO): a start arriving while any waits queues
    /// behind them (first come, first served).
    waiting: HashMap<String, VecDeque<String>>,
    /// Worker-token hashes already checked against the database, by live operation: the check
    /// is made once per operation and token, not per report; dropped with the actor.
    verified_tokens: HashMap<String, String>,
    /// Reports that arrived while their operation's token was being checked, in order: they
    /// go after the one being checked, never before it.
    verifying: HashMap<String, VecDeque<ReportOperation>>,
    /// Cluster mode: ids whose insert (owned by this node) is in flight: owned in the database
    /// but not yet live here, which the heartbeat must not mistake for orphans.
    inserting: HashSet<String>,
    /// Cluster mode: a heartbeat is running (one at a time).
    beating: bool,
    /// Cluster mode: kinds whose concurrency slot is being claimed in the database (one claim
    /// per kind at a time, for the head of its waiting queue).
    claiming: HashSet<String>,
    /// Its own address (set when started): cluster mode's slot claims are messages to itself.
    me: Option<Addr<OperationManager>>,
    /// Live operations and starts in flight per user who started them
    /// (`SWITCHYARD_MAX_ACTIVE_OPERATIONS_PER_USER`), and whose each live one is.
    per_user: HashMap<String, usize>,
    user_of: HashMap<String, String>,
}

fn not_found(id: &str) -> Refusal {
    Refusal::new(ErrorCode::NotFound, format!("no operation {id}"))
}

fn db_refusal(e: DbError) -> Refusal {
    log::warn!("operations: database call failed: {e}");
    Refusal::new(
        ErrorCode::DatabaseUnavailable,
        "the database is unreachable; try again shortly",
    )
}

fn unavailable(e: MailboxError) -> Refusal {
    Refusal::new(
        ErrorCode::Unavailable,
        format!("operation unavailable: {e}"),
    )
}

impl OperationManager {
    /// Where an operation actor started by this manager reports its end.
    fn link(ctx: &Context<Self>) -> ManagerLink {
        ManagerLink {
            finished: ctx.address().recipient(),
            retired: ctx.address().recipient(),
        }
    }

    pub fn new(cx: Arc<OpContext>) -> Self {
        Self {
            cx,
            live: HashMap::new(),
            begun: HashSet::new(),
            running: HashMap::new(),
            waiting: HashMap::new(),
            verified_tokens: HashMap::new(),
            verifying: HashMap::new(),
            inserting: HashSet::new(),
            beating: false,
            claiming: HashSet::new(),
            me: None,
            per_user: HashMap::new(),
            user_of: HashMap::new(),
        }
    }

    /// Starts an actor for `op` and gives it a slot now or queues it.
    fn spawn(
        &mut self,
        op: Operation,
        announce: bool,
        fence: Option<i64>,
        ctx: &mut Context<Self>,
    ) -> Option<Addr<OperationActor>> {
        let kind = self.cx.kinds.get(&op.kind)?;
        let id = op.id.clone();
        let kind_name = op.kind.clone();
        let addr = self.start_actor(op, kind, announce, fence, ctx);
        self.waiting
            .entry(kind_name.clone())
            .or_default()
            .push_back(id);
        self.schedule(&kind_name);
        Some(addr)
    }

    /// Takes a slot of `kind` for a start arriving now, if one is free and nobody waits for one
    /// (first come, first served).
    fn reserve_slot(&mut self, kind: &str, limit: usize) -> bool {
        // Cluster mode: a limited kind's slots are counted across nodes, claimed once the
        // operation is inserted (`ClaimSlots`); it starts `queued`.
        if limit > 0 && self.cx.ownership.is_some() {
            return false;
        }
        let running = self.running.get(kind).copied().unwrap_or(0);
        let nobody_waits = self.waiting.get(kind).is_none_or(VecDeque::is_empty);
        if nobody_waits && (limit == 0 || running < limit) {
            *self.running.entry(kind.to_string()).or_default() += 1;
            true
        } else {
            false
        }
    }

    /// Gives back a slot reserved for a start whose insert failed.
    fn release_slot(&mut self, kind: &str) {
        if let Some(n) = self.running.get_mut(kind) {
            *n = n.saturating_sub(1);
        }
        self.schedule(kind);
    }

    /// Starts the actor of an operation inserted as `running` in a reserved slot.
    fn spawn_begun(&mut self, op: Operation, fence: Option<i64>, ctx: &mut Context<Self>) {
        let Some(kind) = self.cx.kinds.get(&op.kind) else {
            return self.release_slot(&op.kind);
        };
        let id = op.id.clone();
        let addr = self.start_actor(op, kind, true, fence, ctx);
        self.begun.insert(id);
        addr.do_send(Begin);
    }

    /// Starts the actor of `op` and makes it live: routed to by its id, counted toward its
    /// starter's bound.
    fn start_actor(
        &mut self,
        op: Operation,
        kind: Arc<crate::operations::config::Kind>,
        announce: bool,
        fence: Option<i64>,
        ctx: &mut Context<Self>,
    ) -> Addr<OperationActor> {
        let (id, user) = (op.id.clone(), op.created_by.clone());
        let addr = OperationActor::new(op, kind, self.cx.clone(), Self::link(ctx), announce)
            .with_fence(fence)
            .start_unbounded();
        self.live.insert(id.clone(), addr.clone());
        self.count_in(&id, user);
        addr
    }

    /// Counts a live operation toward its starter's bound.
    fn count_in(&mut self, id: &str, user: Option<String>) {
        if let Some(user) = user {
            if self.user_of.insert(id.to_string(), user.clone()).is_none() {
                *self.per_user.entry(user).or_default() += 1;
            }
        }
    }

    /// One fewer active operation for `user` (one ended or retired, or a start's reservation
    /// ended).
    fn count_out_user(&mut self, user: &str) {
        if let Some(n) = self.per_user.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_user.remove(user);
            }
        }
    }

    /// Begins waiting operations of `kind` while its concurrency allows.
    fn schedule(&mut self, kind: &str) {
        let limit = self.cx.kinds.get(kind).map(|k| k.concurrency).unwrap_or(0);
        if limit > 0 && self.cx.ownership.is_some() {
            if let Some(me) = &self.me {
                me.do_send(cluster::ClaimSlots {
                    kind: kind.to_string(),
                });
            }
            return;
        }
        loop {
            let running = self.running.get(kind).copied().unwrap_or(0);
            if limit > 0 && running >= limit {
                return;
            }
            let Some(id) = self.waiting.get_mut(kind).and_then(VecDeque::pop_front) else {
                return;
            };
            let Some(addr) = self.live.get(&id) else {
                continue;
            };
            addr.do_send(Begin);
            self.begun.insert(id);
            *self.running.entry(kind.to_string()).or_default() += 1;
        }
    }

    fn recover(&mut self, ctx: &mut Context<Self>) {
        self.cx
            .db
            .run(store::all_active)
            .into_actor(self)
            .map(|res, act, ctx| match res {
                Ok(rows) => {
                    let n = rows.len();
                    for row in rows {
                        act.resume(row.into_operation(), None, false, ctx);
                    }
                    if n > 0 {
                        log::info!("operations: recovered {n} unfinished operations");
                    }
                }
                Err(e) => {
                    log::warn!("operations: recovery failed, retrying in 2s: {e}");
                    ctx.run_later(Duration::from_secs(2), |act, ctx| act.recover(ctx));
                }
            })
            .wait(ctx);
    }

    /// Takes up an operation whose previous owner is gone (a previous process of this node at
    /// start-up; in cluster mode any node whose lease ran out): a command or demo operation
    /// that may have run ends interrupted (never started twice), a queued one is started, an
    /// external one is adopted (its worker reports on, its log continuing from the stored
    /// offset), a cancelling one finishes cancelling. `holds_slot`: cluster mode, it already
    /// holds one of its kind's slots (an adopted external operation) and begins at once.
    fn resume(
        &mut self,
        op: Operation,
        fence: Option<i64>,
        holds_slot: bool,
        ctx: &mut Context<Self>,
    ) {
        let (id, runner, status) = (op.id.clone(), op.runner, op.status);
        let Some(kind) = self.cx.kinds.get(&op.kind) else {
            log::warn!(
                "operation {id}: kind {} is no longer configured; leaving it",
                op.kind
            );
            return;
        };
        let interrupted = runner != RunnerKind::External && status != Status::Queued;
        if interrupted {
            let addr = self.start_actor(op, kind, false, fence, ctx);
            addr.do_send(Interrupt);
        } else if holds_slot {
            let addr = self.start_actor(op, kind, false, fence, ctx);
            self.begun.insert(id);
            addr.do_send(Begin);
            if status == Status::Cancelling {
                addr.do_send(Cancel);
            }
        } else if let Some(addr) = self.spawn(op, false, fence, ctx) {
            if status == Status::Cancelling {
                addr.do_send(Cancel);
            }
        }
    }

    fn prune(&mut self, ctx: &mut Context<Self>) {
        let days = self.cx.settings.operation_prune_days;
        let before = now_millis() - (days as i64) * 86_400_000;
        self.cx
            .writer
            .write(move |c| store::prune(c, before))
            .into_actor(self)
            .map(|res, _, _| match res {
                Ok(0) => {}
                Ok(n) => log::info!("operations: pruned {n} finished operations"),
                Err(e) => log::warn!("operations: pruning failed: {e}"),
            })
            .spawn(ctx);
    }
}

impl Actor for OperationManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(0);
        self.me = Some(ctx.address());
        match self.cx.ownership.clone() {
            // Cluster mode: other nodes' operations are running; only those whose lease ran
            // out (a previous process of this node's among them) are taken over.
            Some(own) => {
                log::info!(
                    "operations: owner {} (lease {:?}, heartbeat {:?})",
                    own.node,
                    own.lease,
                    own.heartbeat
                );
                self.heartbeat(ctx);
                ctx.run_interval(own.heartbeat, |act, ctx| act.heartbeat(ctx));
            }
            None => self.recover(ctx),
        }
        self.prune(ctx);
        ctx.run_interval(PRUNE_EVERY, |act, ctx| act.prune(ctx));
    }
}

impl Handler<StartOperation> for OperationManager {
    type Result = ResponseActFuture<Self, Result<Started, StartError>>;

    fn handle(&mut self, msg: StartOperation, _ctx: &mut Context<Self>) -> Self::Result {
        let Some(kind) = self.cx.kinds.get(&msg.kind) else {
            let r = Refusal::new(
                ErrorCode::UnknownKind,
                format!(
                    "no operation kind {:?} (known: {})",
                    msg.kind,
                    self.cx.kinds.names().join(", ")
                ),
            );
            return Box::pin(fut::ready(Err(StartError::Refused(r))));
        };
        let settings = &self.cx.settings;
        let params = match kind.validate_bounded(
            &msg.target,
            &msg.params,
            settings.operation_max_params_bytes,
            settings.operation_max_json_depth,
        ) {
            Ok(p) => p,
            Err(r) => return Box::pin(fut::ready(Err(StartError::Refused(r)))),
        };
        // The one project rule (also the activity feed's): an empty project is no project, even
        // though `project:` alone is a valid room name.
        if let Some(Err(r)) = msg.project.as_deref().map(crate::names::project_room) {
            return Box::pin(fut::ready(Err(StartError::Refused(r))));
        }
        // One user's active operations are bounded: each is an actor and rows, and a command
        // a process, whoever holds a token. Counted here (the manager is the one place starts
        // pass), starts in flight included; per node.
        let limit = settings.max_active_operations_per_user;
        let reserved_user = msg.created_by.clone().filter(|_| limit > 0);
        if let Some(user) = &reserved_user {
            let active = self.per_user.get(user).copied().unwrap_or(0);
            if active >= limit {
                log::info!("operations: user {user} refused a start: {active} active");
                return Box::pin(fut::ready(Err(StartError::Refused(Refusal::new(
                    ErrorCode::TooManyOperations,
                    format!("at most {limit} active operations per user; wait for one to finish"),
                )))));
            }
            *self.per_user.entry(user.clone()).or_default() += 1;
        }
        // A command or demo operation with a free slot is inserted as `running`: its start is
        // written (with its start time) before the runner starts and before the 202.
        let begin_now =
            kind.runner != RunnerKind::External && self.reserve_slot(&msg.kind, kind.concurrency);
        let now = now_millis();
        let mut op = Operation::new(
            uuid::Uuid::now_v7().to_string(),
            msg.kind,
            msg.target,
            msg.project,
            kind.runner,
            kind.stages.clone(),
            params,
            msg.created_by,
            now,
        );
        if begin_now {
            let _ = op.start(now);
        }
        let row = OperationRow::from(&op);
        let (kind_name, target) = (op.kind.clone(), op.target.clone());
        let db = self.cx.db.clone();
        let writer = self.cx.writer.clone();
        let worker_token =
            (kind.runner == RunnerKind::External).then(crate::operations::new_worker_token);
        let hash = worker_token.as_deref().map(crate::operations::token_sha256);
        // Cluster mode: the insert takes this node's lease on the row in the same savepoint.
        let owner = self
            .cx
            .ownership
            .as_ref()
            .map(|o| (o.node.to_string(), o.lease_ms()));
        if owner.is_some() {
            self.inserting.insert(op.id.clone());
        }
        Box::pin(
            async move {
                match writer
                    .write(move |c| {
                        store::insert_with_token(c, &row, hash.as_deref())?;
                        match &owner {
                            Some((node, ms)) => leases::take_new(c, &row.id, node, *ms).map(Some),
                            None => Ok(None),
                        }
                    })
                    .await
                {
                    Ok(fence) => Ok(Ok(fence)),
                    Err(DbError::Query(DieselError::DatabaseError(
                        DatabaseErrorKind::UniqueViolation,
                        _,
                    ))) => {
                        match db
                            .run(move |c| store::find_active(c, &kind_name, &target))
                            .await
                        {
                            Ok(Some(existing)) => Ok(Err(existing.into_operation())),
                            // It finished between the insert and this read: the caller may
                            // simply try again.
                            Ok(None) => Err(StartError::Refused(Refusal::new(
                                ErrorCode::DuplicateOperation,
                                "an operation of this kind on this target just finished; try again",
                            ))),
                            Err(e) => Err(StartError::Database(e)),
                        }
                    }
                    Err(e) => Err(StartError::Database(e)),
                }
            }
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.inserting.remove(&op.id);
                // The reservation ends here: a started operation counts as live from its spawn.
                if let Some(user) = &reserved_user {
                    act.count_out_user(user);
                }
                match res {
                    Ok(Ok(fence)) => {
                        log::info!(
                            "operation {} ({} on {}) created{}",
                            op.id,
                            op.kind,
                            op.target,
                            if begin_now { " and started" } else { "" }
                        );
                        if begin_now {
                            act.spawn_begun(op.clone(), fence, ctx);
                        } else {
                            act.spawn(op.clone(), true, fence, ctx);
                        }
                        Ok(Started {
                            operation: op,
                            worker_token,
                        })
                    }
                    Ok(Err(existing)) => {
                        if begin_now {
                            act.release_slot(&op.kind);
                        }
                        Err(StartError::Duplicate(Box::new(existing)))
                    }
                    Err(e) => {
                        if begin_now {
                            act.release_slot(&op.kind);
                        }
                        Err(e)
                    }
                }
            }),
        )
    }
}

/// An operation that is not live, from the database (`not_found` if there is none).
async fn stored(db: crate::db::Database, id: String) -> Result<Operation, Refusal> {
    let lookup = id.clone();
    db.run(move |c| store::get(c, &lookup))
        .await
        .map_err(db_refusal)?
        .map(OperationRow::into_operation)
        .ok_or_else(|| not_found(&id))
}

/// The refusal for acting on an operation that is not live: it finished, or never existed.
async fn not_live(db: crate::db::Database, id: String) -> Refusal {
    match stored(db, id.clone()).await {
        Ok(op) => Refusal::new(
            ErrorCode::OperationFinished,
            format!("operation {id} is already {}", op.status.as_str()),
        ),
        Err(r) => r,
    }
}

impl Handler<CancelOperation> for OperationManager {
    type Result = ResponseFuture<Result<Operation, Refusal>>;

    fn handle(&mut self, msg: CancelOperation, _ctx: &mut Context<Self>) -> Self::Result {
        if let Some(addr) = self.live.get(&msg.id) {
            let fut = addr.send(Cancel);
            return Box::pin(async move { fut.await.unwrap_or_else(|e| Err(unavailable(e))) });
        }
        if let Some(peers) = self.cx.peers.get().cloned() {
            // Cluster mode: the database says first whether there is anything to cancel (a
            // finished or unknown operation is answered at once, not after the forward's
            // deadline); a cancel has no order to keep, so the read may go first.
            let db = self.cx.db.clone();
            return Box::pin(async move {
                let op = stored(db.clone(), msg.id.clone()).await?;
                if op.status.is_terminal() {
                    return Err(Refusal::new(
                        ErrorCode::OperationFinished,
                        format!("operation {} is already {}", op.id, op.status.as_str()),
                    ));
                }
                let answer = peers.forward(Forward::Cancel { id: msg.id.clone() });
                settle_forward(db, msg.id, answer).await
            });
        }
        Box::pin(not_live(self.cx.db.clone(), msg.id).map(Err))
    }
}

impl Handler<ReportOperation> for OperationManager {
    type Result = ();

    fn handle(&mut self, msg: ReportOperation, ctx: &mut Context<Self>) {
        if let Some(queue) = self.verifying.get_mut(&msg.id) {
            queue.push_back(msg);
            return;
        }
        self.report(msg, ctx);
    }
}

impl OperationManager {
    /// Forwards an authorized report to its live operation; checks a worker token it has not
    /// seen yet against the database first (once per operation and token, not per report).
    fn report(&mut self, msg: ReportOperation, ctx: &mut Context<Self>) {
        let verified = msg.authorized
            || match (&msg.worker_token, self.verified_tokens.get(&msg.id)) {
                (Some(token), Some(hash)) => crate::operations::token_sha256(token) == *hash,
                _ => false,
            };
        if verified {
            let ReportOperation {
                id, report, reply, ..
            } = msg;
            match self.live.get(&id) {
                Some(addr) => addr.do_send(Report { report, reply }),
                // Cluster mode: the operation may run on another node; handed over in call
                // order (the peers' contract), so one worker's reports stay in order.
                None if self.cx.peers.get().is_some() => {
                    let db = self.cx.db.clone();
                    let answer = match self.cx.peers.get() {
                        Some(peers) => peers.forward(Forward::Report {
                            id: id.clone(),
                            report,
                        }),
                        None => return,
                    };
                    ctx.spawn(
                        async move {
                            match settle_forward(db, id, answer).await {
                                Ok(op) => reply.answer(Ok(&op)),
                                Err(r) => reply.answer(Err(r)),
                            }
                        }
                        .into_actor(self),
                    );
                }
                None => {
                    let db = self.cx.db.clone();
                    ctx.spawn(
                        async move { reply.answer(Err(not_live(db, id).await)) }.into_actor(self),
                    );
                }
            }
            return;
        }
        let Some(token) = msg.worker_token.as_deref() else {
            return msg.reply.answer(Err(Refusal::new(
                ErrorCode::Forbidden,
                "reports need role service or the operation's worker token",
            )));
        };
        let (id, hash) = (msg.id.clone(), crate::operations::token_sha256(token));
        let db = self.cx.db.clone();
        self.verifying.insert(msg.id.clone(), VecDeque::new());
        let check = {
            let (id, hash) = (id.clone(), hash.clone());
            async move {
                db.run(move |c| store::worker_token_matches(c, &id, &hash))
                    .await
            }
        };
        ctx.spawn(check.into_actor(self).map(move |res, act, ctx| {
            let queued = act.verifying.remove(&id).unwrap_or_default();
            match res {
                Ok(true) => {
                    if act.live.contains_key(&id) {
                        act.verified_tokens.insert(id, hash);
                    }
                    act.report(
                        ReportOperation {
                            authorized: true,
                            ..msg
                        },
                        ctx,
                    );
                }
                Ok(false) => msg.reply.answer(Err(Refusal::new(
                    ErrorCode::Forbidden,
                    "this worker token is not for this operation",
                ))),
                Err(e) => msg.reply.answer(Err(db_refusal(e))),
            }
            // The ones that waited go now, in order (a check of their own if needed).
            for queued in queued {
                act.handle(queued, ctx);
            }
        }));
    }
}

impl Handler<GetOperation> for OperationManager {
    type Result = ResponseFuture<Result<Operation, Refusal>>;

    fn handle(&mut self, msg: GetOperation, _ctx: &mut Context<Self>) -> Self::Result {
        let db = self.cx.db.clone();
        if let Some(addr) = self.live.get(&msg.id) {
            let fut = addr.send(GetSnapshot);
            return Box::pin(async move {
                match fut.await {
                    Ok(op) => Ok(op),
                    // The actor stopped after its retention and its `Retired` is still on the
                    // way here. It stops only after its terminal state is written, so the
                    // database has the final status: answer that, not a 503 (issue: the
                    // flaky `worker_details` test, where a GET right after the end got none).
                    Err(_) => stored(db, msg.id).await,
                }
            });
        }
        Box::pin(stored(db, msg.id))
    }
}

impl Handler<WatchOperation> for OperationManager {
    type Result = ResponseFuture<Result<(), Refusal>>;

    fn handle(&mut self, msg: WatchOperation, _ctx: &mut Context<Self>) -> Self::Result {
        let cx = self.cx.clone();
        if let Some(addr) = self.live.get(&msg.id) {
            let fut = addr.send(Watch {
                member: msg.member.clone(),
                log_offset: msg.log_offset,
                request_id: msg.request_id.clone(),
                joined_to: msg.joined_to.clone(),
            });
            return Box::pin(async move {
                match fut.await {
                    Ok(answer) => answer,
                    // Stopped after its retention, `Retired` still on the way: its terminal
                    // state is written (it stops only after that), so the database serves it.
                    Err(_) => watch_stored(cx, msg).await,
                }
            });
        }
        Box::pin(watch_stored(cx, msg))
    }
}

/// A watch of an operation that is not in memory: it finished (and retired) — served from the
/// database. No events will follow, so there is nothing to order against.
async fn watch_stored(cx: Arc<OpContext>, msg: WatchOperation) -> Result<(), Refusal> {
    let max = cx.settings.log_replay_max as i64;
    let id = msg.id.clone();
    let after = msg.log_offset;
    let (row, logs) = cx
        .db
        .run(move |c| {
            let row = store::get(c, &id)?;
            let logs = match &row {
                Some(_) => store::logs_after(c, &id, after, max)?,
                None => Vec::new(),
            };
            Ok((row, logs))
        })
        .await
        .map_err(db_refusal)?;
    let op = row.ok_or_else(|| not_found(&msg.id))?.into_operation();
    let complete = logs.last().map(|l| l.seq as u64).unwrap_or(after) >= op.log_offset;
    let backfill = backfill_frames(
        to_raw(&op),
        after,
        logs.into_iter().map(LogRow::into_line).collect(),
        op.status.terminal_event(),
    );
    let room = op.room();
    let joined = cx
        .broker
        .join(JoinRoom {
            room: room.clone(),
            member: msg.member,
            since: None,
            request_id: msg.request_id,
            backfill: Some(backfill),
            backfill_complete: complete,
            after: None,
        })
        .await?;
    if let Some(to) = msg.joined_to {
        to.do_send(WatchJoined { room, joined });
    }
    Ok(())
}

fn to_raw(op: &Operation) -> Box<RawValue> {
    serde_json::to_string(op)
        .ok()
        .and_then(|s| RawValue::from_string(s).ok())
        .unwrap_or_else(|| serde_json::value::to_raw_value(&Value::Null).unwrap_or_default())
}

impl Handler<Finished> for OperationManager {
    type Result = ();

    fn handle(&mut self, msg: Finished, _ctx: &mut Context<Self>) {
        // Ended: no longer one of its starter's active operations (its actor may linger).
        if let Some(user) = self.user_of.remove(&msg.id) {
            self.count_out_user(&user);
        }
        if self.begun.remove(&msg.id) {
            if let Some(n) = self.running.get_mut(&msg.kind) {
                *n = n.saturating_sub(1);
            }
        } else if let Some(q) = self.waiting.get_mut(&msg.kind) {
            // Finished without a slot (cancelled while queued).
            q.retain(|id| id != &msg.id);
        }
        self.schedule(&msg.kind);
    }
}

impl Handler<FlushAll> for OperationManager {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, _: FlushAll, _ctx: &mut Context<Self>) -> Self::Result {
        let flushes: Vec<_> = self.live.values().map(|a| a.send(FlushNow)).collect();
        let n = flushes.len();
        Box::pin(async move {
            futures_util::future::join_all(flushes).await;
            n
        })
    }
}

impl Handler<Retired> for OperationManager {
    type Result = ();

    fn handle(&mut self, msg: Retired, _ctx: &mut Context<Self>) {
        self.live.remove(&msg.id);
        self.verified_tokens.remove(&msg.id);
        if let Some(user) = self.user_of.remove(&msg.id) {
            self.count_out_user(&user);
        }
    }
}

/// Paged listing straight from the database (the REST list endpoint).
pub async fn list(cx: &OpContext, filter: ListFilter) -> Result<Vec<Operation>, DbError> {
    cx.db
        .run(move |c| store::list(c, &filter))
        .await
        .map(|rows| rows.into_iter().map(OperationRow::into_operation).collect())
}
