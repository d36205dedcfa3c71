//! Cluster mode: an operation actor runs under its node's lease on the operation's row, and
//! every write it makes is fenced (`db::leases::save_fenced`).
//!
//! In: [`CheckLease`] (the manager, when a heartbeat did not renew this operation's lease).
//! Out: a fenced write; when it finds the lease lost, the operation stops here without writing
//! or announcing anything more (its new owner does), its command is killed, its slot freed.
//!
//! Why the fenced write is the one test of ownership: a heartbeat that did not renew an
//! operation may have raced with its terminal write (the row left the active set), so the
//! manager only asks; the write conditioned on the fence answers for certain, and it is the
//! same condition that keeps a stalled owner's late writes out.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::messages::{Finished, ReportReply};
use super::OperationActor;
use crate::error::{ErrorCode, Refusal};

/// This node as an owner of operations (cluster mode only).
pub struct Ownership {
    /// The owner id written on the rows this node owns: unique per process (a restarted node
    /// is a new owner and takes its old operations over like any other node's).
    pub node: Arc<str>,
    /// `SWITCHYARD_OPERATION_LEASE_MS`.
    pub lease: Duration,
    /// `SWITCHYARD_OPERATION_HEARTBEAT_MS`.
    pub heartbeat: Duration,
    /// Tests only: while true, the heartbeat skips renewals and claims (a stalled owner).
    pub paused: Option<Arc<AtomicBool>>,
}

impl Ownership {
    pub fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }

    pub fn is_paused(&self) -> bool {
        self.paused
            .as_ref()
            .is_some_and(|p| p.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Manager → Operation: the last heartbeat did not renew this operation's lease; write (fenced)
/// to find out whether it is still ours.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CheckLease;

impl Handler<CheckLease> for OperationActor {
    type Result = ();

    fn handle(&mut self, _: CheckLease, ctx: &mut Context<Self>) {
        if self.fence.is_none() || (self.op.status.is_terminal() && !self.terminal_pending) {
            return;
        }
        // A status write carries nothing new, but it is fenced: it answers "still ours".
        self.journal.touch();
        self.flush(ctx);
    }
}

/// Manager → Operation: this node claimed the operation again under a new fence (its lease had
/// run out without another node taking it, e.g. the database was unreachable for a while): the
/// work goes on here under the new fence.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Refenced {
    pub fence: i64,
}

impl Handler<Refenced> for OperationActor {
    type Result = ();

    fn handle(&mut self, msg: Refenced, _ctx: &mut Context<Self>) {
        if !self.lease_lost {
            log::info!(
                "operation {}: lease taken again by this node (fence {})",
                self.op.id,
                msg.fence
            );
            self.fence = Some(msg.fence);
        }
    }
}

impl OperationActor {
    /// A fenced write found the operation under another fence: another node took it over
    /// while this one could not renew its lease (stalled, cut off). Stop here: kill the
    /// command, refuse what waits, free the slot, write and announce nothing more.
    /// `waiting`: the reports the fenced-out write held (never stored: refused here).
    pub(super) fn lease_lost(&mut self, waiting: Vec<ReportReply>, ctx: &mut Context<Self>) {
        if self.lease_lost {
            return;
        }
        self.lease_lost = true;
        log::warn!(
            "operation {}: taken over by another node (this node's fence {} is stale); stopping it here without writing",
            self.op.id,
            self.fence.unwrap_or_default()
        );
        self.runner.stop();
        self.runner.abandon();
        for reply in waiting.into_iter().chain(self.journal.drop_held_acks()) {
            reply.answer(Err(Refusal::new(
                ErrorCode::Unavailable,
                format!(
                    "operation {} moved to another node; report there",
                    self.op.id
                ),
            )));
        }
        for w in self.flush_waiters.drain(..) {
            let _ = w.send(());
        }
        self.manager.finished.do_send(Finished {
            id: self.op.id.clone(),
            kind: self.op.kind.clone(),
        });
        ctx.stop();
    }
}
