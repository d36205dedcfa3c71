//! The write loop: how an [`OperationActor`] runs its journal's writes through the single
//! writer (`db::batch`), and what each outcome sets going.
//!
//! In: `flush` (after a change, on the flush interval, after a write), [`FlushNow`] (graceful
//! shutdown), a successful worker report waiting to be stored (`answer_when_written`).
//! Out: one [`save`](crate::db::batch::Writer::save) at a time of the status row and every
//! unwritten line; after it commits, in this order: the terminal event (`announce_terminal`),
//! the release of shutdown's waiters, the answers to the reports it stored, the runner's launch
//! (`maybe_launch`), and the next write if more waits; after it fails: refusals to the waiting
//! reports, the release of shutdown's waiters, a retry after the journal's backoff.
//!
//! Invariants: the terminal event is published only after the write holding the terminal
//! state committed; a report is answered with success only after the write holding its effect
//! committed; a command or demo runner starts only after the write saying `running` committed.

use std::time::Instant;

use actix::prelude::*;

use super::messages::ReportReply;
use super::{FlushNow, OperationActor};
use crate::db::operations::{LogRow, OperationRow};
use crate::error::{ErrorCode, Refusal};
use crate::operations::Status;

impl OperationActor {
    /// Writes the status and pending lines if anything changed; retries with backoff.
    pub(super) fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.lease_lost {
            return;
        }
        let Some(write) = self.journal.start_write(Instant::now()) else {
            return;
        };
        self.cx.metrics.operation_writes.inc();
        let row = OperationRow::from(&self.op);
        let logs: Vec<LogRow> = self
            .journal
            .unwritten()
            .map(|l| LogRow::new(&self.op.id, l))
            .collect();
        let wrote_terminal = self.op.status.is_terminal();
        // Cluster mode: conditioned on this node's fence (a taken-over operation writes
        // nothing); one node: the plain save.
        let save: std::pin::Pin<Box<dyn std::future::Future<Output = _>>> = match self.fence {
            Some(fence) => Box::pin(
                self.cx
                    .writer
                    .write(move |c| crate::db::leases::save_fenced(c, &row, &logs, fence)),
            ),
            None => Box::pin(self.cx.writer.save(row, logs)),
        };
        save.into_actor(self)
            .map(move |res, act, ctx| match res {
                Ok(()) => {
                    let acks = act.journal.write_committed(write);
                    if act.terminal_pending {
                        if wrote_terminal {
                            act.announce_terminal(ctx);
                        } else {
                            act.flush(ctx);
                        }
                    }
                    act.settle_flush_waiters(ctx);
                    for reply in acks {
                        reply.answer(Ok(&act.op));
                    }
                    act.maybe_launch(ctx);
                    if act.journal.has_held_acks() || act.launch_after.is_some() {
                        // More arrived while this write ran: write it now, not at the next
                        // tick (this is what group-commits a worker's stream of reports).
                        act.flush(ctx);
                    }
                }
                Err(crate::db::DbError::Query(e)) if crate::db::leases::is_lease_lost(&e) => {
                    let failure = act.journal.write_failed(write, Instant::now());
                    act.lease_lost(failure.acks, ctx);
                }
                Err(e) => {
                    let failure = act.journal.write_failed(write, Instant::now());
                    // Not known to be stored: say so now rather than hold the worker for the
                    // outage. The report stays in memory and is written on a retry, so sending
                    // it again may store it twice (at least once, never lost).
                    for reply in failure.acks {
                        reply.answer(Err(Refusal::new(
                            ErrorCode::DatabaseUnavailable,
                            "the database is unreachable; the report was applied but is not stored yet",
                        )));
                    }
                    // Shutdown does not wait on a database that is down.
                    for w in act.flush_waiters.drain(..) {
                        let _ = w.send(());
                    }
                    if failure.failures == 1 || failure.failures % 20 == 0 {
                        log::warn!(
                            "operation {}: writing state failed ({} times), retrying in {:?}: {e}",
                            act.op.id,
                            failure.failures,
                            failure.retry_in
                        );
                    }
                }
            })
            .spawn(ctx);
    }

    /// Answers a successful report once what it changed is written (at once if nothing is
    /// left to write); a report nobody waits for is not held.
    pub(super) fn answer_when_written(&mut self, reply: ReportReply, ctx: &mut Context<Self>) {
        if !reply.waits() {
            return reply.answer(Ok(&self.op));
        }
        if let Some(reply) = self.journal.hold_ack(reply) {
            return reply.answer(Ok(&self.op));
        }
        self.flush(ctx);
    }

    /// Starts the runner once the row saying `running` is written.
    pub(super) fn maybe_launch(&mut self, ctx: &mut Context<Self>) {
        let Some(v) = self.launch_after else {
            return;
        };
        if !self.journal.is_written(v) {
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
    pub(super) fn settle_flush_waiters(&mut self, ctx: &mut Context<Self>) {
        if self.flush_waiters.is_empty() {
            return;
        }
        if self.journal.has_unwritten() {
            self.journal.write_now(Instant::now());
            self.flush(ctx);
        } else if !self.journal.is_writing() {
            for w in self.flush_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }
}

impl Handler<FlushNow> for OperationActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: FlushNow, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.flush_waiters.push(tx);
        if self.journal.is_writing() {
            // The running write settles the waiters (and writes again if needed).
        } else if self.journal.has_unwritten() {
            self.journal.write_now(Instant::now());
            self.flush(ctx);
        } else {
            self.settle_flush_waiters(ctx);
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
