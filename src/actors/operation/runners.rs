//! How each runner kind drives an [`OperationActor`]: when it starts, what moves it, how it is
//! cancelled and how it ends.
//!
//! * **demo**: a script of steps played on a timer (`step_ms`), for trying the dashboard.
//! * **command**: a process group spawned from the kind's argv; its stdout lines are log lines
//!   or status lines, its stderr lines are log lines (the last ones make the failure message),
//!   its exit decides the outcome; a timeout and the cancel grace end it with signals.
//! * **external**: a worker elsewhere reports through REST or `/ws` ([`Report`],
//!   rate-limited); silence for the kind's stall timeout fails it.
//!
//! In: [`Begin`](super::Begin) (through `begin`), the command's [`Output`] stream, demo timers,
//! [`Report`] (worker reports), cancel requests. Out: status changes, log lines and terminal states on the
//! actor (`apply`, `add_log`, `finish`), signals to the command's process group.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::Value;

use super::{transition_refusal, OperationActor, Report, WorkerReport};
use crate::config::Settings;
use crate::error::{ErrorCode, Refusal};
use crate::operations::runner::command::{self, Output};
use crate::operations::runner::demo::{self, Step};
use crate::operations::{RunnerKind, Status, Update};

/// Lines of stderr kept for the failure message of a command.
const STDERR_TAIL: usize = 20;

/// The runner's own state; which fields are used depends on the operation's runner kind.
pub(super) struct Runner {
    /// Process group of a running command: set when it is spawned, cleared when it exits.
    /// While set, ending the operation kills the group, and a server that stops terminates it
    /// rather than leave an orphan.
    pgid: Option<i32>,
    /// The last `STDERR_TAIL` stderr lines of a command: the message of its failure.
    stderr_tail: VecDeque<String>,
    /// Remaining demo steps; cleared when the operation ends, so a pending timer does nothing.
    demo: VecDeque<Step>,
    /// The demo's pace (its `step_ms` parameter).
    demo_step: Duration,
    /// Last sign of life from an external worker: the stall check's clock.
    last_report: Instant,
    /// Worker reports allowed (`SWITCHYARD_OPERATION_REPORT_RATE`): every report is a status
    /// event fanned out to watchers and a database write, whoever holds the worker token.
    reports: crate::limits::TokenBucket,
}

impl Runner {
    pub(super) fn new(settings: &Settings) -> Self {
        let report_rate = f64::from(settings.operation_report_rate);
        Self {
            pgid: None,
            stderr_tail: VecDeque::new(),
            demo: VecDeque::new(),
            demo_step: Duration::from_millis(demo::DEFAULT_STEP_MS),
            last_report: Instant::now(),
            reports: crate::limits::TokenBucket::new(report_rate, report_rate * 2.0),
        }
    }

    /// The operation reached its terminal state: kill a command still running, drop the
    /// demo's remaining steps.
    pub(super) fn stop(&mut self) {
        if let Some(pgid) = self.pgid {
            if command::group_alive(pgid) {
                command::signal_group(pgid, libc::SIGKILL);
            }
        }
        self.demo.clear();
    }

    /// The actor stops with the command still running (the server is going away): stop it
    /// rather than leave an orphan; start-up marks the operation interrupted.
    pub(super) fn abandon(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            command::signal_group(pgid, libc::SIGTERM);
        }
    }
}

impl OperationActor {
    pub(super) fn begin(&mut self, ctx: &mut Context<Self>) {
        if self.op.status.is_terminal() {
            return;
        }
        if self.op.runner == RunnerKind::External {
            // Queued until the worker's first report; the stall clock starts now.
            self.runner.last_report = Instant::now();
            return;
        }
        if self.op.status == Status::Queued {
            // Durable start: write `running` first and start the runner when that write has
            // committed (`maybe_launch`). A crash before then leaves it `queued` with nothing
            // started, so start-up may start it; a crash after leaves it `running`, so start-up
            // marks it interrupted instead of running it a second time.
            let _ = self.apply(&Update::default());
            self.launch_after = Some(self.journal.version());
            self.flush(ctx);
        } else if self.op.status == Status::Running {
            // The manager inserted it as `running` (a free slot at start): already written.
            self.announce(Some("operation.started"), false);
            self.launch(ctx);
        }
    }

    /// Starts the runner. Only called once `running` is written.
    pub(super) fn launch(&mut self, ctx: &mut Context<Self>) {
        match self.op.runner {
            RunnerKind::External => {}
            RunnerKind::Demo => {
                let fail_at = self.op.params.get("fail_at").and_then(Value::as_str);
                self.runner.demo = demo::script(fail_at).into();
                if let Some(ms) = self.op.params.get("step_ms").and_then(Value::as_u64) {
                    self.runner.demo_step = Duration::from_millis(ms);
                }
                self.schedule_demo(ctx);
            }
            RunnerKind::Command => {
                let argv = self.kind.render_argv(&self.op.target, &self.op.params);
                // Validated params with defaults filled in: always an object for a command.
                let params_json = match &self.op.params {
                    serde_json::Value::Null => "{}".to_string(),
                    p => p.to_string(),
                };
                let input = command::Input {
                    workdir: self.kind.workdir.as_deref(),
                    env: &self.kind.env,
                    params_json: &params_json,
                    params_on_stdin: self.kind.params_on_stdin,
                };
                match command::spawn(&argv, input) {
                    Ok(spawned) => {
                        self.runner.pgid = Some(spawned.pgid);
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

    /// Stops the work after a cancel request (the status already says `cancelling`): a demo
    /// ends at once, a command gets SIGTERM and the kind's grace period before SIGKILL, an
    /// external worker is told and gets the grace period to wind down.
    pub(super) fn cancel_runner(&mut self, ctx: &mut Context<Self>) {
        match self.op.runner {
            RunnerKind::Demo => {
                self.runner.demo.clear();
                self.add_log("system", "cancelled".into());
                self.finish(ctx, Status::Cancelled, None, None);
            }
            RunnerKind::Command => match self.runner.pgid {
                Some(pgid) => {
                    command::signal_group(pgid, libc::SIGTERM);
                    let grace = self.kind.cancel_grace;
                    ctx.run_later(grace, move |act, ctx| {
                        if let Some(pgid) = act.runner.pgid {
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
    }

    // ---- demo ----------------------------------------------------------------------------

    fn schedule_demo(&mut self, ctx: &mut Context<Self>) {
        ctx.run_later(self.runner.demo_step, |act, ctx| {
            let Some(step) = act.runner.demo.pop_front() else {
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

    // ---- command -------------------------------------------------------------------------

    fn command_exited(&mut self, ctx: &mut Context<Self>, code: Option<i32>, signal: Option<i32>) {
        self.runner.pgid = None;
        if self.op.status.is_terminal() {
            return;
        }
        if self.op.status == Status::Cancelling {
            self.finish(ctx, Status::Cancelled, None, None);
        } else if code == Some(0) {
            let result = self.op.result.clone();
            self.finish(ctx, Status::Completed, None, result);
        } else {
            let tail: Vec<String> = self.runner.stderr_tail.iter().cloned().collect();
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

    // ---- external worker -----------------------------------------------------------------

    /// Fails an external operation whose worker has been silent for the kind's stall timeout.
    pub(super) fn watch_for_stall(&mut self, ctx: &mut Context<Self>) {
        let stall = self.kind.stall_timeout;
        let check = (stall / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        ctx.run_interval(check, move |act, ctx| {
            if !act.op.status.is_terminal()
                && act.op.status != Status::Cancelling
                && act.runner.last_report.elapsed() > stall
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

    /// Applies an external worker's report (already authorized by the manager).
    pub(super) fn report(
        &mut self,
        report: WorkerReport,
        ctx: &mut Context<Self>,
    ) -> Result<(), Refusal> {
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
        if let Err(wait) = self.runner.reports.take() {
            return Err(Refusal::rate_limited(
                format!(
                    "operation {} takes at most {} reports a second",
                    self.op.id, self.cx.settings.operation_report_rate
                ),
                wait,
            ));
        }
        self.runner.last_report = Instant::now();
        self.cx.metrics.operation_reports.inc();
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

/// An external worker's report: applied, then answered once it is stored (or at once when
/// refused, or when nobody waits for the answer).
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

/// A command's output: stdout lines are status lines (a JSON object with `progress`, `stage`,
/// `message` or `result`) or log lines;
/// stderr lines are log lines, the last ones kept for the failure message; its exit ends it.
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
                        eta_seconds: u
                            .eta_seconds
                            .filter(|e| e.is_finite())
                            .map(|e| e.clamp(0.0, crate::operations::MAX_ETA_SECONDS)),
                        ..u
                    };
                    // A line refused whole (details too large, one stage too many) is said in
                    // the log, where whoever wrote the command will look.
                    if let Err(r) = self.apply(&u) {
                        self.add_log("system", format!("status line ignored: {}", r.message));
                    }
                }
                None => self.add_log("stdout", line),
            },
            Output::Line { stream, line } => {
                let tail = &mut self.runner.stderr_tail;
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line.clone());
                self.add_log(stream, line);
            }
            Output::Exited { code, signal } => self.command_exited(ctx, code, signal),
        }
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {
        // The actor outlives its command: it still has to record and announce the outcome.
    }
}
