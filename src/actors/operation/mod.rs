//! The operation actor: one per operation, from start to its terminal state (and a retention
//! time after, so watchers that reconnect are served from memory).
//!
//! In: [`Begin`] (the manager, when the kind's concurrency allows), [`Report`] (external
//! workers), [`Cancel`], [`GetSnapshot`], [`Watch`] (a session joining `operation:<id>`),
//! [`FlushNow`] (graceful shutdown), the command's output (a stream), demo steps (timers),
//! [`Interrupt`] (start-up recovery).
//! Out: events through the broker into `operation:<id>`, `operations` and `project:<id>`;
//! coalesced writes to the database; [`Finished`] and [`Retired`] to the manager.
//!
//! The actor is split by concern:
//! * this file: the state, the messages, publishing, status changes, the terminal event;
//! * `journal.rs`: log buffering, replay from memory, write batching with backoff and the pending
//!   acknowledgements, as a plain struct with unit tests;
//! * `runners.rs`: how each runner kind (demo, command, external worker) is started, driven,
//!   cancelled and ended;
//! * `watchers.rs`: how a watcher joins `operation:<id>` with its backfill;
//! * `writes.rs`: the write loop that runs the journal's writes and what follows each outcome;
//! * `messages.rs`: what this actor tells its manager, and how a report is answered (so the
//!   actor never names the manager);
//! * `lease.rs`: cluster mode — the node's ownership settings, the fencing token every write
//!   carries, and what happens when a write finds the operation taken over;
//! * `peers.rs`: cluster mode — the seam through which the manager hands a cancel or a report
//!   to the node that runs the operation.
//!
//! Invariants:
//! * Every event this actor publishes, and every watcher join it sends, is handed to the broker
//!   by this one caller, whose contract keeps one caller's publishes and joins in call order; so
//!   a watcher's backfill and the live events after it have no gap and no duplicate.
//! * The terminal state is written to the database before the terminal event is published;
//!   watchers that join in between are held until then.
//! * Log offsets start at 1 and have no gaps (`journal::Journal::append`); every line is
//!   written before the status row that counts it (same transaction).
//! * A command or demo runner starts only after the row saying `running` (with its start time)
//!   has committed: start-up recovery can then tell an operation that may have run (`running`:
//!   marked interrupted, never started again) from one that provably never did (`queued`).
//! * A report answered with success (a REST 2xx, or a reply to a `/ws` report with an `id`) is
//!   answered only after the write holding its effect has committed; reports without an `id`
//!   are fire-and-forget and reach the database with the next periodic write.
//!
//! Just over 500 lines: the state and the messages stay together so that every field's `///`
//! is next to the handlers that keep its invariant.

mod journal;
mod lease;
pub mod messages;
pub mod peers;
mod runners;
mod watchers;
mod writes;

pub use lease::{CheckLease, Ownership, Refenced};
pub use messages::ManagerLink;
pub use watchers::backfill_frames;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::value::RawValue;
use serde_json::Value;

use self::journal::{Journal, JournalBounds};
use self::messages::{Finished, ReportReply, Retired};
use self::runners::Runner;
use super::Member;
use crate::broker::{Broker, Envelope, Retain};
use crate::config::Settings;
use crate::db::Database;
use crate::error::{ErrorCode, Refusal};
use crate::metrics::Metrics;
use crate::operations::config::{Kind, Kinds};
use crate::operations::{
    clip_line, EtaEstimator, Operation, RunnerKind, Status, Update, WorkerReport,
};
use crate::protocol::native::RequestId;
use crate::util::now_millis;

/// Pure progress changes reach the `operations` room at most this often per operation.
const OPERATIONS_ROOM_INTERVAL: Duration = Duration::from_millis(250);

/// What the operation manager and every operation actor use of the application: composed
/// once by `startup.rs`, shared through an `Arc`.
pub struct OpContext {
    /// Bounds and timings: log buffering, write batching, retention, timeouts.
    pub settings: Arc<Settings>,
    /// Where an operation's events go (its own room and the `operations` room), and its
    /// watchers' joins: one caller, so the broker keeps them in one order.
    pub broker: Arc<dyn Broker>,
    /// Reads (a finished operation, listing, backfill from the log).
    pub db: Database,
    /// The single writer: every database write, group-committed (one transaction for every
    /// write waiting).
    pub writer: crate::db::batch::Writer,
    /// Operation counters and refusals.
    pub metrics: Arc<Metrics>,
    /// The configured operation kinds (runner, concurrency, timeouts).
    pub kinds: Kinds,
    /// Cluster mode: this node as an owner of operations under leases (none on one node).
    pub ownership: Option<Arc<Ownership>>,
    /// Cluster mode: the other nodes, to which a cancel or a report for an operation that runs
    /// elsewhere is handed (set once, after the manager started: the peers deliver to it).
    pub peers: std::sync::OnceLock<Arc<dyn peers::Peers>>,
}

// ---- messages ------------------------------------------------------------------------------

/// Manager → Operation: start the work now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Begin;

/// Manager (start-up recovery) → Operation: the previous process died while this ran.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Interrupt;

/// Manager → Operation (from REST or `/ws`): an external worker's report, already authorized.
/// The answer goes straight to `reply`: no future waits for it in the manager.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Report {
    pub report: WorkerReport,
    pub reply: ReportReply,
}

/// Manager → Operation: cancel. Replies with the status (`cancelling`, or already final for
/// runners that stop at once).
#[derive(Message)]
#[rtype(result = "Result<Operation, Refusal>")]
pub struct Cancel;

/// Manager → Operation: the current status (fresher than the database's, which lags by up to
/// a flush interval).
#[derive(Message)]
#[rtype(result = "Operation")]
pub struct GetSnapshot;

/// Manager (graceful shutdown) → Operation: write everything not yet written; replies when
/// done (or when a write failed: shutdown is bounded, and the failure is logged).
#[derive(Message)]
#[rtype(result = "()")]
pub struct FlushNow;

/// Manager → Operation: add `member` to `operation:<id>`, with the status snapshot and the log
/// lines after `log_offset` ahead of live events.
#[derive(Message)]
#[rtype(result = "Result<(), Refusal>")]
pub struct Watch {
    pub member: Member,
    pub log_offset: u64,
    pub request_id: Option<RequestId>,
    /// Who learns the join's answer (its room's position), once the broker gave it: a
    /// Socket.IO session with connection-state recovery, which resumes the room from there.
    pub joined_to: Option<Recipient<WatchJoined>>,
}

/// Operation (or Manager, for a finished one) → the watcher that asked: your watch of `room`
/// was answered (the backfill is queued ahead of everything after `joined.position`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct WatchJoined {
    pub room: String,
    pub joined: crate::broker::Joined,
}

// ---- the actor -----------------------------------------------------------------------------

pub struct OperationActor {
    /// The operation's status, the one truth that is published and written. Its `log_offset`
    /// mirrors `journal.log_offset()` (only `add_log` moves either).
    op: Operation,
    /// The kind's configuration (runner, argv, timeouts, cancel grace, stall timeout).
    kind: Arc<Kind>,
    /// The narrow dependencies: broker, registry, database and its writer, settings, metrics.
    cx: Arc<OpContext>,
    /// Where `Finished` (slot free) and `Retired` (actor gone) go.
    manager: ManagerLink,
    /// Announce `operation.created` when started (not for operations recovered at start-up).
    announce_created: bool,
    /// Turns progress over time into `eta_seconds`.
    eta: EtaEstimator,
    /// Log lines, unwritten changes, the write in flight and its backoff, and the reports
    /// waiting for a write to commit.
    journal: Journal<ReportReply>,
    /// The runner starts once this change count (the one saying `running`) is written: a crash
    /// before that leaves the operation `queued`, provably never started.
    launch_after: Option<u64>,
    /// What drives the work: the command's process group and stderr tail, the demo's script,
    /// the external worker's last sign of life and report budget.
    runner: Runner,
    /// Terminal state set but not yet written; its event waits for the write.
    terminal_pending: bool,
    /// Terminal event published (exactly once: `announce_terminal` checks it).
    announced: bool,
    /// Watchers that arrived while the terminal state was being written: joined after the
    /// terminal event is published, so they see it in their backfill, never twice.
    deferred_watches: Vec<Watch>,
    /// A pure progress change has not yet reached the `operations` room (throttled to one per
    /// `OPERATIONS_ROOM_INTERVAL`).
    ops_room_pending: bool,
    /// When the `operations` room last got this operation's status.
    ops_room_last: Instant,
    /// Waiting for everything to be written (graceful shutdown): released after a write that
    /// leaves nothing unwritten, or at once when a write fails (shutdown is bounded).
    flush_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Cluster mode: the fencing token under which this node owns the operation; every write
    /// is conditioned on it (`lease.rs`). None on one node.
    fence: Option<i64>,
    /// A fenced write found the operation taken over: nothing more is written or published.
    lease_lost: bool,
}

impl OperationActor {
    pub fn new(
        op: Operation,
        kind: Arc<Kind>,
        cx: Arc<OpContext>,
        manager: ManagerLink,
        announce_created: bool,
    ) -> Self {
        let journal = Journal::new(
            op.log_offset,
            JournalBounds::with_bytes(
                cx.settings.operation_log_memory_bytes,
                cx.settings.operation_unwritten_max_bytes,
            ),
        );
        let runner = Runner::new(&cx.settings);
        Self {
            op,
            kind,
            cx,
            manager,
            announce_created,
            eta: EtaEstimator::default(),
            journal,
            launch_after: None,
            runner,
            terminal_pending: false,
            announced: false,
            deferred_watches: Vec::new(),
            ops_room_pending: false,
            ops_room_last: Instant::now() - OPERATIONS_ROOM_INTERVAL,
            flush_waiters: Vec::new(),
            fence: None,
            lease_lost: false,
        }
    }

    /// Cluster mode: runs the operation under this node's lease with this fencing token.
    pub fn with_fence(mut self, fence: Option<i64>) -> Self {
        self.fence = fence;
        self
    }

    fn status_json(&self) -> Box<RawValue> {
        serde_json::to_string(&self.op)
            .ok()
            .and_then(|s| RawValue::from_string(s).ok())
            .unwrap_or_else(|| raw("null"))
    }

    /// Publishes through the broker. The broker enqueues at call time, so events leave in the
    /// order they are published here.
    fn publish(&self, room: String, event: &str, data: Box<RawValue>, seq: Option<u64>) {
        self.publish_as(room, event, data, seq, false);
    }

    /// `conflate`: pure progress, which a slow watcher may receive only the latest of.
    fn publish_as(
        &self,
        room: String,
        event: &str,
        data: Box<RawValue>,
        seq: Option<u64>,
        conflate: bool,
    ) {
        // Taken over by another node: its events are the new owner's to publish.
        if self.lease_lost {
            return;
        }
        self.cx.broker.publish_and_forget(Envelope {
            seq,
            conflate,
            ..Envelope::new(room, event, data)
        });
    }

    fn project_room(&self) -> Option<String> {
        self.op.project.as_ref().map(|p| format!("project:{p}"))
    }

    /// Announces a status change. `lifecycle` names the event for the project room and, with
    /// stage changes, what goes to `operations` at once; pure progress there is throttled.
    fn announce(&mut self, lifecycle: Option<&str>, stage_changed: bool) {
        let json = self.status_json();
        // Stage and status changes are never conflated; pure progress may be, for a slow watcher.
        let pure_progress = lifecycle.is_none() && !stage_changed;
        self.publish_as(
            self.op.room(),
            "operation.progress",
            json.clone(),
            Some(self.op.log_offset),
            pure_progress,
        );
        if let Some(event) = lifecycle {
            self.publish_project(event, json.clone());
        }
        if lifecycle.is_some() || stage_changed {
            // A lifecycle event already carried this status into the project room.
            if lifecycle.is_none() {
                self.publish_project_progress(json.clone());
            }
            self.publish("operations".into(), "operation.progress", json, None);
            self.ops_room_last = Instant::now();
            self.ops_room_pending = false;
        } else {
            self.ops_room_pending = true;
        }
    }

    /// `project_progress` kinds: the project's room follows the operation as `operations`
    /// does, so an app whose clients listen per project (seed 002's connection rooms) sees
    /// the percentage without joining `operation:<id>`.
    fn publish_project_progress(&self, json: Box<RawValue>) {
        if !self.kind.project_progress {
            return;
        }
        self.publish_project("operation.progress", json);
    }

    /// Publishes into the project's room, if the operation has a project. With the kind's
    /// `project_retain`, as the room's retained message: a client joining the room mid-way (a
    /// reloaded page subscribing again) gets the current status with its join, in order with
    /// the live events after it (the room delivers both), instead of nothing until the next
    /// change. One retained message per room: with several operations of a project running at
    /// once, the latest published wins.
    fn publish_project(&self, event: &str, json: Box<RawValue>) {
        let Some(room) = self.project_room() else {
            return;
        };
        self.cx.broker.publish_and_forget(Envelope {
            retain: if self.kind.project_retain {
                Retain::Last
            } else {
                Retain::No
            },
            ..Envelope::new(room, event, json)
        });
    }

    /// What reports may make this operation's status object hold (from the settings).
    fn status_limits(&self) -> crate::operations::StatusLimits {
        crate::operations::StatusLimits {
            max_stages: self.cx.settings.operation_max_stages,
            max_result_bytes: self.cx.settings.operation_max_result_bytes,
            max_details_bytes: self.cx.settings.operation_max_details_bytes,
            max_json_depth: self.cx.settings.operation_max_json_depth,
        }
    }

    fn apply(&mut self, u: &Update) -> Result<(), Refusal> {
        let now = now_millis();
        let before = self.op.status;
        let limits = self.status_limits();
        let changed = self.op.apply(u, now, &limits).map_err(transition_refusal)?;
        if u.progress.is_some() || changed.stage || u.eta_seconds.is_some() {
            // A worker's own ETA wins over the estimate (`EtaEstimator::observe_report`).
            self.op.eta_seconds = self.eta.observe_report(now, self.op.progress, u.eta());
        }
        if changed.any {
            self.journal.touch();
            let lifecycle = (before == Status::Queued && self.op.status == Status::Running)
                .then_some("operation.started");
            self.announce(lifecycle, changed.stage);
        }
        Ok(())
    }

    fn add_log(&mut self, stream: &str, line: String) {
        if self.op.status.is_terminal() {
            return;
        }
        let (entry, dropped) = self.journal.append(stream, clip_line(line), now_millis());
        let data = serde_json::to_string(entry)
            .ok()
            .and_then(|s| RawValue::from_string(s).ok())
            .unwrap_or_else(|| raw("null"));
        let offset = self.journal.log_offset();
        self.op.log_offset = offset;
        self.publish(self.op.room(), "operation.log", data, Some(offset));
        for lost in dropped {
            let total = self.cx.metrics.operation_log_lines_lost.inc();
            if total % 10_000 == 0 {
                log::error!(
                    "operation {}: database unreachable for too long, dropping unwritten log line {} (and counting)",
                    self.op.id,
                    lost.offset
                );
            }
        }
    }

    /// Moves to a terminal state (ignored if already terminal), stops the runner, and writes
    /// the state; the terminal event follows the write.
    fn finish(
        &mut self,
        ctx: &mut Context<Self>,
        to: Status,
        error: Option<(&str, String)>,
        result: Option<Value>,
    ) {
        let now = now_millis();
        let outcome = match to {
            Status::Completed => self.op.complete(result, now),
            Status::Failed => {
                let (code, message) = error.unwrap_or(("failed", "failed".into()));
                self.op.fail(code, &message, now)
            }
            _ => self.op.cancelled(now),
        };
        if outcome.is_err() {
            return;
        }
        self.runner.stop();
        self.terminal_pending = true;
        self.journal.touch();
        log::info!(
            "operation {} ({} on {}) {}",
            self.op.id,
            self.op.kind,
            self.op.target,
            self.op.status.as_str()
        );
        self.flush(ctx);
    }

    /// Publishes the terminal event once its state is written, frees the slot, joins the
    /// watchers that waited for it, and retires the actor after the retention time.
    fn announce_terminal(&mut self, ctx: &mut Context<Self>) {
        if self.announced {
            return;
        }
        self.terminal_pending = false;
        self.announced = true;
        let Some(event) = self.op.status.terminal_event() else {
            return;
        };
        if let Some(end) = self.op.finished_at {
            let from = self.op.started_at.unwrap_or(self.op.created_at);
            let took = Duration::from_millis(end.0.saturating_sub(from.0).max(0) as u64);
            self.cx
                .metrics
                .observe_operation(&self.op.kind, self.op.status.as_str(), took);
        }
        // Counted here, where the end is announced exactly once (the dashboard's charts).
        self.cx.metrics.operations_finished.inc();
        if self.op.status == Status::Failed {
            self.cx.metrics.operations_failed.inc();
        }
        let json = self.status_json();
        self.publish(
            self.op.room(),
            event,
            json.clone(),
            Some(self.op.log_offset),
        );
        self.publish("operations".into(), event, json.clone(), None);
        if let Some(room) = self.project_room() {
            self.publish(room.clone(), event, json, None);
            if self.kind.project_retain {
                // The terminal event goes to those in the room now, once; a later joiner must
                // not take a finished operation for news (a second success toast), so what
                // the room retains from now on says only that it ended.
                let cleared = serde_json::json!({
                    "id": self.op.id,
                    "kind": self.op.kind,
                    "project": self.op.project,
                    "status": self.op.status.as_str(),
                });
                let cleared =
                    serde_json::value::to_raw_value(&cleared).unwrap_or_else(|_| raw("null"));
                self.cx.broker.publish_and_forget(Envelope {
                    retain: Retain::Last,
                    ..Envelope::new(room, "operation.cleared", cleared)
                });
            }
        }
        self.manager.finished.do_send(Finished {
            id: self.op.id.clone(),
            kind: self.op.kind.clone(),
        });
        for w in std::mem::take(&mut self.deferred_watches) {
            let _ = self.watch(w, ctx);
        }
        ctx.run_later(self.cx.settings.operation_retention, |_, ctx| ctx.stop());
    }
}

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_string()).unwrap_or_else(|_| {
        // "null" always parses; this branch is unreachable in practice.
        serde_json::value::to_raw_value(&Value::Null).unwrap_or_default()
    })
}

fn transition_refusal(e: crate::operations::TransitionError) -> Refusal {
    match e {
        crate::operations::TransitionError::Finished(s) => Refusal::new(
            ErrorCode::OperationFinished,
            format!("the operation is already {}", s.as_str()),
        ),
        crate::operations::TransitionError::Invalid(m) => Refusal::new(ErrorCode::InvalidField, m),
        crate::operations::TransitionError::TooLarge(m) => {
            Refusal::new(ErrorCode::PayloadTooLarge, m)
        }
    }
}

impl Actor for OperationActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(0);
        self.cx.metrics.operations.inc();
        if self.announce_created {
            self.cx.metrics.operations_started.inc();
            let json = self.status_json();
            self.publish(self.op.room(), "operation.progress", json.clone(), Some(0));
            self.publish("operations".into(), "operation.created", json.clone(), None);
            self.publish_project("operation.created", json);
        }
        let flush_every = self.cx.settings.operation_flush_interval;
        ctx.run_interval(flush_every, |act, ctx| {
            act.flush(ctx);
            if act.ops_room_pending
                && act.ops_room_last.elapsed() >= OPERATIONS_ROOM_INTERVAL
                && !act.op.status.is_terminal()
            {
                act.ops_room_pending = false;
                act.ops_room_last = Instant::now();
                let json = act.status_json();
                act.publish_project_progress(json.clone());
                act.publish("operations".into(), "operation.progress", json, None);
            }
        });
        if self.op.runner == RunnerKind::External {
            self.watch_for_stall(ctx);
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.cx.metrics.operations.dec();
        self.runner.abandon();
        self.manager.retired.do_send(Retired {
            id: self.op.id.clone(),
        });
    }
}

impl Handler<Begin> for OperationActor {
    type Result = ();
    fn handle(&mut self, _: Begin, ctx: &mut Context<Self>) {
        self.begin(ctx);
    }
}

impl Handler<Interrupt> for OperationActor {
    type Result = ();
    fn handle(&mut self, _: Interrupt, ctx: &mut Context<Self>) {
        if self.op.status == Status::Cancelling {
            self.finish(ctx, Status::Cancelled, None, None);
        } else {
            self.finish(
                ctx,
                Status::Failed,
                Some((
                    "interrupted",
                    "the server stopped while this operation was running; it may have done part \
                     of its work and was not started again"
                        .to_string(),
                )),
                None,
            );
        }
    }
}

impl Handler<Cancel> for OperationActor {
    type Result = Result<Operation, Refusal>;

    fn handle(&mut self, _: Cancel, ctx: &mut Context<Self>) -> Self::Result {
        if self.op.status == Status::Cancelling {
            return Ok(self.op.clone());
        }
        self.op
            .request_cancel(now_millis())
            .map_err(transition_refusal)?;
        self.journal.touch();
        self.announce(Some("operation.cancelling"), false);
        log::info!("operation {}: cancel requested", self.op.id);
        self.cancel_runner(ctx);
        Ok(self.op.clone())
    }
}

impl Handler<GetSnapshot> for OperationActor {
    type Result = MessageResult<GetSnapshot>;
    fn handle(&mut self, _: GetSnapshot, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.op.clone())
    }
}
