//! The operation actor: one per operation, from start to its terminal state (and a retention
//! time after, so watchers that reconnect are served from memory).
//!
//! In: [`Begin`] (the manager, when the kind's concurrency allows), [`Report`] (external
//! workers), [`Cancel`], [`GetSnapshot`], [`Watch`] (a session joining `operation:<id>`), the
//! command's output (a stream), demo steps (timers), [`Interrupt`] (start-up recovery).
//! Out: events through the broker into `operation:<id>`, `operations` and `project:<id>`;
//! coalesced writes to the database; [`Finished`] and [`Retired`] to the manager.
//!
//! Invariants:
//! * Every event this actor publishes, and every watcher join it sends, goes through the same
//!   FIFO path (registry → room), so a watcher's backfill and the live events after it have no
//!   gap and no duplicate.
//! * The terminal state is written to the database before the terminal event is published;
//!   watchers that join in between are held until then.
//! * Log offsets start at 1 and have no gaps; every line is written before the status row that
//!   counts it (same transaction).
//! * A command or demo runner starts only after the row saying `running` (with its start time)
//!   has committed: start-up recovery can then tell an operation that may have run (`running`:
//!   marked interrupted, never started again) from one that provably never did (`queued`).
//! * A report answered with success (a REST 2xx, or a reply to a `/ws` report with an `id`) is
//!   answered only after the write holding its effect has committed; reports without an `id`
//!   are fire-and-forget and reach the database with the next periodic write.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::value::RawValue;
use serde_json::Value;

use super::operations::{Finished, OperationManager, ReportReply, Retired};
use super::room::{JoinRoom, Publish};
use super::Member;
use crate::db::operations::{self as store, LogRow, OperationRow};
use crate::error::{ErrorCode, Refusal};
use crate::operations::config::Kind;
use crate::operations::runner::command::{self, Output};
use crate::operations::runner::demo::{self, Step};
use crate::operations::{
    clip_line, EtaEstimator, LogLine, Operation, RunnerKind, Status, Update, WorkerReport,
};
use crate::protocol::native::RequestId;
use crate::protocol::Backfill;
use crate::state::OpContext;
use crate::util::now_millis;

/// Lines kept in memory for watchers that rejoin (older ones come from the database).
const RECENT_LINES: usize = 1_000;
/// Unwritten lines kept while the database is unreachable; past this the oldest are dropped,
/// counted in `switchyard_operation_log_lines_lost_total` and logged.
const MAX_UNPERSISTED: usize = 100_000;
/// Lines of stderr kept for the failure message of a command.
const STDERR_TAIL: usize = 20;
/// Pure progress changes reach the `operations` room at most this often per operation.
const OPERATIONS_ROOM_INTERVAL: Duration = Duration::from_millis(250);

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

/// The current status.
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
}

// ---- the actor -----------------------------------------------------------------------------

pub struct OperationActor {
    op: Operation,
    kind: Arc<Kind>,
    cx: Arc<OpContext>,
    manager: Addr<OperationManager>,
    /// Announce `operation.created` when started (not for operations recovered at start-up).
    announce_created: bool,
    eta: EtaEstimator,
    /// The status changed since the last successful write.
    dirty: bool,
    /// Counts changes to write; `persisted_version` is the newest count a committed write held.
    version: u64,
    persisted_version: u64,
    /// Reports waiting for the write that holds them: answered once `persisted_version` reaches
    /// their version (or refused when that write fails).
    ack_waiters: Vec<(u64, ReportReply)>,
    /// The runner starts once this version (the one saying `running`) is written.
    launch_after: Option<u64>,
    /// Lines not yet confirmed written, oldest first (all lines after `persisted_log_offset`).
    unpersisted: VecDeque<LogLine>,
    /// The last `RECENT_LINES` lines.
    recent: VecDeque<LogLine>,
    persisted_log_offset: u64,
    flushing: bool,
    failed_flushes: u32,
    next_flush_at: Instant,
    /// Process group of a running command.
    pgid: Option<i32>,
    stderr_tail: VecDeque<String>,
    /// Last sign of life from an external worker.
    last_report: Instant,
    /// Worker reports allowed (`SWITCHYARD_OPERATION_REPORT_RATE`): every report is a status
    /// event fanned out to watchers and a database write, whoever holds the worker token.
    reports: crate::limits::TokenBucket,
    /// Terminal state set but not yet written; its event waits for the write.
    terminal_pending: bool,
    /// Terminal event published.
    announced: bool,
    /// Watchers that arrived while the terminal state was being written.
    deferred_watches: Vec<Watch>,
    ops_room_pending: bool,
    ops_room_last: Instant,
    /// Remaining demo steps and their pace.
    demo: VecDeque<Step>,
    demo_step: Duration,
    /// Waiting for everything to be written (graceful shutdown).
    flush_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl OperationActor {
    pub fn new(
        op: Operation,
        kind: Arc<Kind>,
        cx: Arc<OpContext>,
        manager: Addr<OperationManager>,
        announce_created: bool,
    ) -> Self {
        let persisted = op.log_offset;
        let report_rate = f64::from(cx.settings.operation_report_rate);
        Self {
            op,
            kind,
            cx,
            manager,
            announce_created,
            eta: EtaEstimator::default(),
            dirty: false,
            version: 0,
            persisted_version: 0,
            ack_waiters: Vec::new(),
            launch_after: None,
            unpersisted: VecDeque::new(),
            recent: VecDeque::new(),
            persisted_log_offset: persisted,
            flushing: false,
            failed_flushes: 0,
            next_flush_at: Instant::now(),
            pgid: None,
            stderr_tail: VecDeque::new(),
            last_report: Instant::now(),
            reports: crate::limits::TokenBucket::new(report_rate, report_rate * 2.0),
            terminal_pending: false,
            announced: false,
            deferred_watches: Vec::new(),
            ops_room_pending: false,
            ops_room_last: Instant::now() - OPERATIONS_ROOM_INTERVAL,
            demo: VecDeque::new(),
            demo_step: Duration::from_millis(demo::DEFAULT_STEP_MS),
            flush_waiters: Vec::new(),
        }
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
        self.cx.broker.publish_and_forget(Publish {
            room,
            event: event.to_string(),
            data,
            from: None,
            retain: false,
            member_check: None,
            received_at: Instant::now(),
            seq,
            attachments: Vec::new(),
            conflate,
            direct: false,
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
            if let Some(room) = self.project_room() {
                self.publish(room, event, json.clone(), None);
            }
        }
        if lifecycle.is_some() || stage_changed {
            self.publish("operations".into(), "operation.progress", json, None);
            self.ops_room_last = Instant::now();
            self.ops_room_pending = false;
        } else {
            self.ops_room_pending = true;
        }
    }

    /// Something to write changed.
    fn touch(&mut self) {
        self.dirty = true;
        self.version += 1;
    }

    /// What reports may make this operation's status object hold (from the settings).
    fn status_limits(&self) -> crate::operations::StatusLimits {
        crate::operations::StatusLimits {
            max_stages: self.cx.settings.operation_max_stages,
            max_result_bytes: self.cx.settings.operation_max_result_bytes,
        }
    }

    fn apply(&mut self, u: &Update) -> Result<(), Refusal> {
        let now = now_millis();
        let before = self.op.status;
        let limits = self.status_limits();
        let changed = self.op.apply(u, now, &limits).map_err(transition_refusal)?;
        if u.progress.is_some() || changed.stage {
            self.op.eta_seconds = self.eta.observe(now, self.op.progress);
        }
        if changed.any {
            self.touch();
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
        let offset = self.op.log_offset + 1;
        self.op.log_offset = offset;
        let entry = LogLine {
            offset,
            stream: stream.to_string(),
            line: clip_line(line),
            ts: now_millis(),
        };
        let data = serde_json::to_string(&entry)
            .ok()
            .and_then(|s| RawValue::from_string(s).ok())
            .unwrap_or_else(|| raw("null"));
        self.publish(self.op.room(), "operation.log", data, Some(offset));
        if self.recent.len() == RECENT_LINES {
            self.recent.pop_front();
        }
        self.recent.push_back(entry.clone());
        if self.unpersisted.len() >= MAX_UNPERSISTED {
            if let Some(lost) = self.unpersisted.pop_front() {
                let total = self
                    .cx
                    .metrics
                    .operation_log_lines_lost
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if total % 10_000 == 0 {
                    log::error!(
                        "operation {}: database unreachable for too long, dropping unwritten log line {} (and counting)",
                        self.op.id,
                        lost.offset
                    );
                }
            }
        }
        self.unpersisted.push_back(entry);
        self.touch();
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
        if let Some(pgid) = self.pgid {
            if command::group_alive(pgid) {
                command::signal_group(pgid, libc::SIGKILL);
            }
        }
        self.demo.clear();
        self.terminal_pending = true;
        self.touch();
        log::info!(
            "operation {} ({} on {}) {}",
            self.op.id,
            self.op.kind,
            self.op.target,
            self.op.status.as_str()
        );
        self.flush(ctx);
    }

    /// Writes the status and pending lines if anything changed; retries with backoff.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || (!self.dirty && self.unpersisted.is_empty()) {
            return;
        }
        if Instant::now() < self.next_flush_at {
            return;
        }
        self.flushing = true;
        self.dirty = false;
        self.cx
            .metrics
            .operation_writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let row = OperationRow::from(&self.op);
        let logs: Vec<LogRow> = self
            .unpersisted
            .iter()
            .map(|l| LogRow::new(&self.op.id, l))
            .collect();
        let upto = self.unpersisted.back().map(|l| l.offset);
        let wrote_terminal = self.op.status.is_terminal();
        let version = self.version;
        self.cx
            .writer
            .save(row, logs)
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.flushing = false;
                match res {
                    Ok(()) => {
                        act.failed_flushes = 0;
                        act.persisted_version = act.persisted_version.max(version);
                        if let Some(upto) = upto {
                            act.persisted_log_offset = upto;
                            while act.unpersisted.front().is_some_and(|l| l.offset <= upto) {
                                act.unpersisted.pop_front();
                            }
                        }
                        if act.terminal_pending {
                            if wrote_terminal {
                                act.announce_terminal(ctx);
                            } else {
                                act.flush(ctx);
                            }
                        }
                        act.settle_flush_waiters(ctx);
                        act.settle_acks();
                        act.maybe_launch(ctx);
                        if !act.ack_waiters.is_empty() || act.launch_after.is_some() {
                            // More arrived while this write ran: write it now, not at the next
                            // tick (this is what group-commits a worker's stream of reports).
                            act.flush(ctx);
                        }
                    }
                    Err(e) => {
                        act.dirty = true;
                        // Not known to be stored: say so now rather than hold the worker for
                        // the outage. The report stays in memory and is written on a retry, so
                        // sending it again may store it twice (at least once, never lost).
                        for (_, reply) in act.ack_waiters.drain(..) {
                            reply.answer(Err(Refusal::new(
                                ErrorCode::DatabaseUnavailable,
                                "the database is unreachable; the report was applied but is not stored yet",
                            )));
                        }
                        act.failed_flushes += 1;
                        let backoff = Duration::from_millis(250)
                            .saturating_mul(1 << act.failed_flushes.min(6))
                            .min(Duration::from_secs(10));
                        act.next_flush_at = Instant::now() + backoff;
                        // Shutdown does not wait on a database that is down.
                        for w in act.flush_waiters.drain(..) {
                            let _ = w.send(());
                        }
                        if act.failed_flushes == 1 || act.failed_flushes % 20 == 0 {
                            log::warn!(
                                "operation {}: writing state failed ({} times), retrying in {backoff:?}: {e}",
                                act.op.id,
                                act.failed_flushes
                            );
                        }
                    }
                }
            })
            .spawn(ctx);
    }

    /// Answers the reports whose effect is now written.
    fn settle_acks(&mut self) {
        if self.ack_waiters.is_empty() {
            return;
        }
        let written = self.persisted_version;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ack_waiters)
            .into_iter()
            .partition(|(v, _)| *v <= written);
        self.ack_waiters = waiting;
        for (_, reply) in done {
            reply.answer(Ok(&self.op));
        }
    }

    /// Answers a successful report once what it changed is written (at once if nothing is
    /// left to write); a report nobody waits for is not held.
    fn answer_when_written(&mut self, reply: ReportReply, ctx: &mut Context<Self>) {
        if !reply.waits() || self.persisted_version >= self.version {
            return reply.answer(Ok(&self.op));
        }
        self.ack_waiters.push((self.version, reply));
        self.flush(ctx);
    }

    /// Starts the runner once the row saying `running` is written.
    fn maybe_launch(&mut self, ctx: &mut Context<Self>) {
        let Some(v) = self.launch_after else {
            return;
        };
        if self.persisted_version < v {
            return;
        }
        self.launch_after = None;
        // Cancelled (or finished) while the start was being written: nothing to run.
        if self.op.status == Status::Running {
            self.launch(ctx);
        }
    }

    /// After a successful write: write again if more piled up while it ran, else release
    /// whoever waits for everything to be written.
    fn settle_flush_waiters(&mut self, ctx: &mut Context<Self>) {
        if self.flush_waiters.is_empty() {
            return;
        }
        if self.dirty || !self.unpersisted.is_empty() {
            self.next_flush_at = Instant::now();
            self.flush(ctx);
        } else if !self.flushing {
            for w in self.flush_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    fn announce_terminal(&mut self, ctx: &mut Context<Self>) {
        if self.announced {
            return;
        }
        self.terminal_pending = false;
        self.announced = true;
        let Some(event) = self.op.status.terminal_event() else {
            return;
        };
        let json = self.status_json();
        self.publish(
            self.op.room(),
            event,
            json.clone(),
            Some(self.op.log_offset),
        );
        self.publish("operations".into(), event, json.clone(), None);
        if let Some(room) = self.project_room() {
            self.publish(room, event, json, None);
        }
        self.manager.do_send(Finished {
            id: self.op.id.clone(),
            kind: self.op.kind.clone(),
        });
        for w in std::mem::take(&mut self.deferred_watches) {
            let _ = self.watch(w, ctx);
        }
        ctx.run_later(self.cx.settings.operation_retention, |_, ctx| ctx.stop());
    }

    /// Sends the watcher's join with its backfill now if every line it needs is in memory;
    /// otherwise reads the older lines first. Returns whether it was sent synchronously.
    fn watch(&mut self, w: Watch, ctx: &mut Context<Self>) -> bool {
        if self.terminal_pending {
            self.deferred_watches.push(w);
            return true;
        }
        let after = w.log_offset.min(self.op.log_offset);
        let max = self.cx.settings.log_replay_max as u64;
        let want_to = self.op.log_offset.min(after + max);
        let mem_start = self.memory_start();
        if after >= want_to || after + 1 >= mem_start {
            let lines = self.memory_lines(after, want_to);
            self.send_join(w, after, lines, want_to == self.op.log_offset);
            return true;
        }
        // Lines before `mem_start` are all written (everything unwritten is in memory).
        let id = self.op.id.clone();
        let limit = (mem_start - 1).min(want_to) - after;
        self.cx
            .db
            .run(move |c| store::logs_after(c, &id, after, limit as i64))
            .into_actor(self)
            .map(move |res, act, _ctx| match res {
                Ok(rows) => {
                    let mut lines: Vec<LogLine> = rows.into_iter().map(LogRow::into_line).collect();
                    let last = lines.last().map(|l| l.offset).unwrap_or(after);
                    let want_to = act.op.log_offset.min(after + max);
                    // Rarely, more lines than memory holds were written meanwhile: send the
                    // contiguous part and say it is incomplete.
                    let contiguous = last + 1 >= act.memory_start();
                    if contiguous {
                        lines.extend(act.memory_lines(last, want_to));
                    }
                    let complete = contiguous && want_to == act.op.log_offset;
                    if act.terminal_pending {
                        act.deferred_watches.push(w);
                    } else {
                        act.send_join(w, after, lines, complete);
                    }
                }
                Err(e) => {
                    log::warn!(
                        "operation {}: reading logs for a watcher failed: {e}",
                        act.op.id
                    );
                    // Still join: live events and the snapshot are worth more than nothing.
                    let from = act.memory_start().saturating_sub(1);
                    let lines = act.memory_lines(from, act.op.log_offset);
                    act.send_join(w, from, lines, false);
                }
            })
            .spawn(ctx);
        false
    }

    /// The first offset held in memory (everything from it to `log_offset` is there).
    fn memory_start(&self) -> u64 {
        let recent = self.recent.front().map(|l| l.offset);
        let unpersisted = self.unpersisted.front().map(|l| l.offset);
        match (recent, unpersisted) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => self.op.log_offset + 1,
        }
    }

    fn memory_lines(&self, after: u64, upto: u64) -> Vec<LogLine> {
        let mut out: Vec<LogLine> = Vec::new();
        let mut next = after + 1;
        // Both buffers end at the newest line and may overlap: merge in offset order.
        let mut all: Vec<&LogLine> = self
            .recent
            .iter()
            .chain(self.unpersisted.iter())
            .filter(|l| l.offset > after && l.offset <= upto)
            .collect();
        all.sort_by_key(|l| l.offset);
        for l in all {
            if l.offset == next {
                out.push(l.clone());
                next += 1;
            }
        }
        out
    }

    /// `after` is where the watcher's log stood: the snapshot carries it as its sequence, so an
    /// SSE client that drops right after the snapshot resumes without skipping lines.
    fn send_join(&self, w: Watch, after: u64, lines: Vec<LogLine>, complete: bool) {
        let terminal = if self.announced {
            self.op.status.terminal_event()
        } else {
            None
        };
        let backfill = backfill_frames(self.status_json(), after, lines, terminal);
        // `send` enqueues now, behind every event already published: no gap, no duplicate.
        let join = self.cx.registry.send(JoinRoom {
            room: self.op.room(),
            member: w.member,
            since: None,
            request_id: w.request_id,
            backfill: Some(backfill),
            backfill_complete: complete,
        });
        actix::spawn(async move {
            let _ = join.await;
        });
    }

    // ---- runners -------------------------------------------------------------------------

    fn begin(&mut self, ctx: &mut Context<Self>) {
        if self.op.status.is_terminal() {
            return;
        }
        if self.op.runner == RunnerKind::External {
            // Queued until the worker's first report; the stall clock starts now.
            self.last_report = Instant::now();
            return;
        }
        if self.op.status == Status::Queued {
            // Durable start: write `running` first and start the runner when that write has
            // committed (`maybe_launch`). A crash before then leaves it `queued` with nothing
            // started, so start-up may start it; a crash after leaves it `running`, so start-up
            // marks it interrupted instead of running it a second time.
            let _ = self.apply(&Update::default());
            self.launch_after = Some(self.version);
            self.flush(ctx);
        } else if self.op.status == Status::Running {
            // The manager inserted it as `running` (a free slot at start): already written.
            self.announce(Some("operation.started"), false);
            self.launch(ctx);
        }
    }

    /// Starts the runner. Only called once `running` is written.
    fn launch(&mut self, ctx: &mut Context<Self>) {
        match self.op.runner {
            RunnerKind::External => {}
            RunnerKind::Demo => {
                let fail_at = self.op.params.get("fail_at").and_then(Value::as_str);
                self.demo = demo::script(fail_at).into();
                if let Some(ms) = self.op.params.get("step_ms").and_then(Value::as_u64) {
                    self.demo_step = Duration::from_millis(ms);
                }
                self.schedule_demo(ctx);
            }
            RunnerKind::Command => {
                let argv = self.kind.render_argv(&self.op.target, &self.op.params);
                match command::spawn(&argv, self.kind.workdir.as_deref(), &self.kind.env) {
                    Ok(spawned) => {
                        self.pgid = Some(spawned.pgid);
                        log::info!(
                            "operation {}: started {} (pid {})",
                            self.op.id,
                            argv.first().map(String::as_str).unwrap_or(""),
                            spawned.pgid
                        );
                        ctx.add_stream(spawned.output);
                        if let Some(t) = self.kind.timeout {
                            ctx.run_later(t, move |act, ctx| {
                                if !act.op.status.is_terminal() {
                                    act.add_log("system", format!("timed out after {t:?}"));
                                    act.finish(
                                        ctx,
                                        Status::Failed,
                                        Some(("timeout", format!("no result within {t:?}"))),
                                        None,
                                    );
                                }
                            });
                        }
                    }
                    Err(e) => {
                        let msg = format!("could not start the command: {e}");
                        self.add_log("system", msg.clone());
                        self.finish(ctx, Status::Failed, Some(("spawn_failed", msg)), None);
                    }
                }
            }
        }
    }

    fn schedule_demo(&mut self, ctx: &mut Context<Self>) {
        ctx.run_later(self.demo_step, |act, ctx| {
            let Some(step) = act.demo.pop_front() else {
                return;
            };
            if act.op.status.is_terminal() || act.op.status == Status::Cancelling {
                return;
            }
            match step {
                Step::Update(u) => {
                    let _ = act.apply(&u);
                }
                Step::Log { stream, line } => act.add_log(stream, line),
                Step::Fail { code, message } => {
                    act.finish(ctx, Status::Failed, Some((code, message)), None);
                    return;
                }
                Step::Complete(result) => {
                    act.finish(ctx, Status::Completed, None, Some(result));
                    return;
                }
            }
            act.schedule_demo(ctx);
        });
    }

    fn command_exited(&mut self, ctx: &mut Context<Self>, code: Option<i32>, signal: Option<i32>) {
        self.pgid = None;
        if self.op.status.is_terminal() {
            return;
        }
        if self.op.status == Status::Cancelling {
            self.finish(ctx, Status::Cancelled, None, None);
        } else if code == Some(0) {
            let result = self.op.result.clone();
            self.finish(ctx, Status::Completed, None, result);
        } else {
            let tail: Vec<String> = self.stderr_tail.iter().cloned().collect();
            let how = match (code, signal) {
                (Some(c), _) => format!("exited with status {c}"),
                (None, Some(s)) => format!("killed by signal {s}"),
                _ => "ended".to_string(),
            };
            let message = if tail.is_empty() {
                how
            } else {
                format!("{how}: {}", tail.join("\n"))
            };
            self.finish(ctx, Status::Failed, Some(("exit_status", message)), None);
        }
    }
}

/// A watcher's backfill: the status snapshot first (its sequence is where the watcher's log
/// stood), then the missed lines, then — for a finished operation — its one terminal event, so
/// the order is the same as for a watcher that was there all along.
pub fn backfill_frames(
    status: Box<RawValue>,
    after: u64,
    lines: Vec<LogLine>,
    terminal_event: Option<&str>,
) -> Vec<Backfill> {
    let mut out = Vec::with_capacity(lines.len() + 2);
    out.push(Backfill {
        event: "operation.progress".into(),
        data: status.clone(),
        seq: Some(after),
    });
    let mut last = after;
    for l in lines {
        let Some(data) = serde_json::to_string(&l)
            .ok()
            .and_then(|s| RawValue::from_string(s).ok())
        else {
            continue;
        };
        last = l.offset;
        out.push(Backfill {
            event: "operation.log".into(),
            data,
            seq: Some(l.offset),
        });
    }
    if let Some(event) = terminal_event {
        out.push(Backfill {
            event: event.to_string(),
            data: status,
            seq: Some(last),
        });
    }
    out
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
        if self.announce_created {
            let json = self.status_json();
            self.publish(self.op.room(), "operation.progress", json.clone(), Some(0));
            self.publish("operations".into(), "operation.created", json.clone(), None);
            if let Some(room) = self.project_room() {
                self.publish(room, "operation.created", json, None);
            }
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
                act.publish("operations".into(), "operation.progress", json, None);
            }
        });
        if self.op.runner == RunnerKind::External {
            let stall = self.kind.stall_timeout;
            let check = (stall / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
            ctx.run_interval(check, move |act, ctx| {
                if !act.op.status.is_terminal()
                    && act.op.status != Status::Cancelling
                    && act.last_report.elapsed() > stall
                {
                    act.finish(
                        ctx,
                        Status::Failed,
                        Some((
                            "stalled",
                            format!("no report from the worker for {stall:?}"),
                        )),
                        None,
                    );
                }
            });
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if let Some(pgid) = self.pgid.take() {
            // The server is going away with the command still running: stop it rather than
            // leave an orphan; start-up marks the operation interrupted.
            command::signal_group(pgid, libc::SIGTERM);
        }
        self.manager.do_send(Retired {
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

impl Handler<Report> for OperationActor {
    type Result = ();

    fn handle(&mut self, msg: Report, ctx: &mut Context<Self>) {
        let Report { report, reply } = msg;
        match self.report(report, ctx) {
            Ok(()) => self.answer_when_written(reply, ctx),
            Err(r) => reply.answer(Err(r)),
        }
    }
}

impl OperationActor {
    fn report(&mut self, report: WorkerReport, ctx: &mut Context<Self>) -> Result<(), Refusal> {
        if self.op.runner != RunnerKind::External {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!(
                    "operation {} is run by the server ({})",
                    self.op.id,
                    self.op.runner.as_str()
                ),
            ));
        }
        if self.op.status.is_terminal() {
            return Err(transition_refusal(
                crate::operations::TransitionError::Finished(self.op.status),
            ));
        }
        if let Err(wait) = self.reports.take() {
            return Err(Refusal::rate_limited(
                format!(
                    "operation {} takes at most {} reports a second",
                    self.op.id, self.cx.settings.operation_report_rate
                ),
                wait,
            ));
        }
        self.last_report = Instant::now();
        self.cx
            .metrics
            .operation_reports
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match report {
            WorkerReport::Progress(u) => self.apply(&u)?,
            WorkerReport::Logs(lines) => {
                if self.op.status == Status::Queued {
                    self.apply(&Update::default())?;
                }
                for (stream, line) in lines {
                    self.add_log(&stream, line);
                }
            }
            WorkerReport::Complete(result) => {
                if let Some(r) = &result {
                    self.status_limits()
                        .check_result(r)
                        .map_err(transition_refusal)?;
                }
                self.finish(ctx, Status::Completed, None, result)
            }
            WorkerReport::Fail { code, message } => {
                self.finish(ctx, Status::Failed, Some((&code, message)), None)
            }
        }
        Ok(())
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
        self.touch();
        self.announce(Some("operation.cancelling"), false);
        log::info!("operation {}: cancel requested", self.op.id);
        match self.op.runner {
            RunnerKind::Demo => {
                self.demo.clear();
                self.add_log("system", "cancelled".into());
                self.finish(ctx, Status::Cancelled, None, None);
            }
            RunnerKind::Command => match self.pgid {
                Some(pgid) => {
                    command::signal_group(pgid, libc::SIGTERM);
                    let grace = self.kind.cancel_grace;
                    ctx.run_later(grace, move |act, ctx| {
                        if let Some(pgid) = act.pgid {
                            command::signal_group(pgid, libc::SIGKILL);
                        }
                        act.finish(ctx, Status::Cancelled, None, None);
                    });
                }
                // Not started yet (queued): nothing to stop.
                None => self.finish(ctx, Status::Cancelled, None, None),
            },
            RunnerKind::External => {
                // The worker sees the status change and this event; it has the grace period to
                // wind down (and may still report complete or fail), then we record cancelled.
                self.publish(
                    self.op.room(),
                    "operation.cancel",
                    self.status_json(),
                    Some(self.op.log_offset),
                );
                let grace = self.kind.cancel_grace;
                ctx.run_later(grace, |act, ctx| {
                    act.finish(ctx, Status::Cancelled, None, None)
                });
            }
        }
        Ok(self.op.clone())
    }
}

impl Handler<FlushNow> for OperationActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: FlushNow, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.flush_waiters.push(tx);
        if self.flushing {
            // The running write settles the waiters (and writes again if needed).
        } else if self.dirty || !self.unpersisted.is_empty() {
            self.next_flush_at = Instant::now();
            self.flush(ctx);
        } else {
            self.settle_flush_waiters(ctx);
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<GetSnapshot> for OperationActor {
    type Result = MessageResult<GetSnapshot>;
    fn handle(&mut self, _: GetSnapshot, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.op.clone())
    }
}

impl Handler<Watch> for OperationActor {
    type Result = Result<(), Refusal>;
    fn handle(&mut self, msg: Watch, ctx: &mut Context<Self>) -> Self::Result {
        self.watch(msg, ctx);
        Ok(())
    }
}

impl StreamHandler<Output> for OperationActor {
    fn handle(&mut self, item: Output, ctx: &mut Context<Self>) {
        match item {
            Output::Line {
                stream: "stdout",
                line,
            } => match command::status_line(&line) {
                Some(u) => {
                    // Out-of-range values from a command are clamped, not fatal.
                    let u = Update {
                        progress: u.progress.map(|p| {
                            if p.is_finite() {
                                p.clamp(0.0, 100.0)
                            } else {
                                0.0
                            }
                        }),
                        ..u
                    };
                    let _ = self.apply(&u);
                }
                None => self.add_log("stdout", line),
            },
            Output::Line { stream, line } => {
                if self.stderr_tail.len() == STDERR_TAIL {
                    self.stderr_tail.pop_front();
                }
                self.stderr_tail.push_back(line.clone());
                self.add_log(stream, line);
            }
            Output::Exited { code, signal } => self.command_exited(ctx, code, signal),
        }
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {
        // The actor outlives its command: it still has to record and announce the outcome.
    }
}
