//! Cluster mode's part of the manager: the lease heartbeat (renewals, lease checks, takeovers)
//! and the hand-over of cancels and reports to and from the other nodes (`OpContext::peers`).
//!
//! In: [`CancelHere`], [`ReportHere`] (a peer's forward, from `cluster::operations`); the
//! heartbeat's timer. Out: [`CheckLease`] and [`Refenced`] to operation actors; takeovers
//! through `resume`; forwards through the peers.

use std::collections::HashSet;

use actix::prelude::*;

use super::{stored, unavailable, OperationManager, CLAIM_BATCH};
use crate::actors::operation::messages::ReportReply;
use crate::actors::operation::peers::PeerAnswer;
use crate::actors::operation::{Begin, Cancel, CheckLease, Refenced, Report};
use crate::db::leases;
use crate::error::{ErrorCode, Refusal};
use crate::operations::{Operation, WorkerReport};

/// Cluster (a peer's forward) → Manager: cancel the operation if it runs here; `None` if it
/// does not (the node that runs it answers).
#[derive(Message)]
#[rtype(result = "Option<Result<Operation, Refusal>>")]
pub struct CancelHere {
    pub id: String,
}

/// Cluster (a peer's forward) → Manager: a worker's report, authorized by the node that
/// received it, applied if the operation runs here (`true`; `reply` is answered) and left to
/// the node that runs it otherwise (`false`; `reply` is dropped unanswered).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct ReportHere {
    pub id: String,
    pub report: WorkerReport,
    pub reply: ReportReply,
}

impl OperationManager {
    /// Cluster mode, every `SWITCHYARD_OPERATION_HEARTBEAT_MS`: renews this node's leases in
    /// one UPDATE, asks each live operation it did not renew to check its lease (a fenced
    /// write), takes up operations owned here but not live (an actor stopped by a lost lease
    /// just before this node claimed the operation again), then takes over operations whose
    /// lease ran out.
    pub(super) fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let Some(own) = self.cx.ownership.clone() else {
            return;
        };
        if self.beating || own.is_paused() {
            return;
        }
        self.beating = true;
        let writer = self.cx.writer.clone();
        let (node, lease_ms) = (own.node.to_string(), own.lease_ms());
        async move {
            let n = node.clone();
            let renewed = writer.write(move |c| leases::renew(c, &n, lease_ms)).await;
            let claimed = writer
                .write(move |c| leases::claim_expired(c, &node, lease_ms, CLAIM_BATCH))
                .await;
            (renewed, claimed)
        }
        .into_actor(self)
        .map(|(renewed, claimed), act, ctx| {
            act.beating = false;
            match renewed {
                Ok(renewed) => {
                    let held: HashSet<&str> = renewed.iter().map(|(id, _)| id.as_str()).collect();
                    for (id, addr) in &act.live {
                        if !held.contains(id.as_str()) {
                            addr.do_send(CheckLease);
                        }
                    }
                    let orphans: Vec<String> = renewed
                        .iter()
                        .filter(|(id, _)| !act.live.contains_key(id) && !act.inserting.contains(id))
                        .map(|(id, _)| id.clone())
                        .collect();
                    if !orphans.is_empty() {
                        act.take_up_orphans(orphans, ctx);
                    }
                }
                Err(e) => log::warn!("operations: renewing this node's leases failed: {e}"),
            }
            match claimed {
                Ok(rows) => {
                    for leases::Claimed {
                        row,
                        fence,
                        holds_slot,
                    } in rows
                    {
                        let op = row.into_operation();
                        log::info!(
                            "operation {} ({} on {}, {}): lease expired, taken over by this node (fence {fence})",
                            op.id,
                            op.kind,
                            op.target,
                            op.status.as_str()
                        );
                        match act.live.get(&op.id) {
                            // Still running here: this node's own lease had run out.
                            Some(addr) => addr.do_send(Refenced { fence }),
                            None => act.resume(op, Some(fence), holds_slot, ctx),
                        }
                    }
                }
                Err(e) => log::warn!("operations: claiming expired leases failed: {e}"),
            }
            // A slot may have freed on another node since the last try.
            let kinds: Vec<String> = act
                .waiting
                .iter()
                .filter(|(_, q)| !q.is_empty())
                .map(|(k, _)| k.clone())
                .collect();
            for kind in kinds {
                act.schedule(&kind);
            }
        })
        .spawn(ctx);
    }

    /// Operations this node owns in the database without a live actor: read and taken up
    /// under their current fence.
    fn take_up_orphans(&mut self, ids: Vec<String>, ctx: &mut Context<Self>) {
        let Some(own) = self.cx.ownership.clone() else {
            return;
        };
        let node = own.node.to_string();
        self.cx
            .db
            .run(move |c| {
                let mut out = Vec::new();
                for id in ids {
                    if let Some(claimed) = leases::owned(c, &id, &node)? {
                        out.push(claimed);
                    }
                }
                Ok(out)
            })
            .into_actor(self)
            .map(|res, act, ctx| match res {
                Ok(rows) => {
                    for leases::Claimed {
                        row,
                        fence,
                        holds_slot,
                    } in rows
                    {
                        if !act.live.contains_key(&row.id) && !act.inserting.contains(&row.id) {
                            log::info!("operation {}: owned here without an actor; taking it up (fence {fence})", row.id);
                            act.resume(row.into_operation(), Some(fence), holds_slot, ctx);
                        }
                    }
                }
                Err(e) => log::warn!("operations: reading this node's operations failed: {e}"),
            })
            .spawn(ctx);
    }
}

/// The owner's answer to a forward; when no node answered, what the database says instead (the
/// operation finished or never existed), else the `unavailable` refusal.
pub(super) async fn settle_forward(
    db: crate::db::Database,
    id: String,
    answer: PeerAnswer,
) -> Result<Operation, Refusal> {
    match answer.await {
        Err(r) if r.code == ErrorCode::Unavailable => match stored(db, id).await {
            Ok(op) if op.status.is_terminal() => Err(Refusal::new(
                ErrorCode::OperationFinished,
                format!("operation {} is already {}", op.id, op.status.as_str()),
            )),
            Ok(_) => Err(r),
            Err(not_found) => Err(not_found),
        },
        other => other,
    }
}

impl Handler<CancelHere> for OperationManager {
    type Result = ResponseFuture<Option<Result<Operation, Refusal>>>;

    fn handle(&mut self, msg: CancelHere, _ctx: &mut Context<Self>) -> Self::Result {
        match self.live.get(&msg.id) {
            Some(addr) => {
                let fut = addr.send(Cancel);
                Box::pin(async move { Some(fut.await.unwrap_or_else(|e| Err(unavailable(e)))) })
            }
            None => Box::pin(async { None }),
        }
    }
}

impl Handler<ReportHere> for OperationManager {
    type Result = bool;

    fn handle(&mut self, msg: ReportHere, _ctx: &mut Context<Self>) -> bool {
        match self.live.get(&msg.id) {
            Some(addr) => {
                addr.do_send(Report {
                    report: msg.report,
                    reply: msg.reply,
                });
                true
            }
            None => false,
        }
    }
}

/// Manager → itself (cluster mode): claim a slot of `kind` across nodes for the operation at the
/// head of its waiting queue, and begin it if one is free; then the next. Sent whenever a slot
/// may have freed: an operation started or finished here, and every heartbeat (another node's).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct ClaimSlots {
    pub kind: String,
}

impl Handler<ClaimSlots> for OperationManager {
    type Result = ();

    fn handle(&mut self, msg: ClaimSlots, ctx: &mut Context<Self>) {
        let kind = msg.kind;
        let (Some(own), Some(limit)) = (
            self.cx.ownership.clone(),
            self.cx.kinds.get(&kind).map(|k| k.concurrency),
        ) else {
            return;
        };
        if self.claiming.contains(&kind) {
            return;
        }
        // The head of the queue, skipping ids no longer live (cancelled while queued).
        let head = loop {
            let Some(queue) = self.waiting.get_mut(&kind) else {
                return;
            };
            match queue.front() {
                None => return,
                Some(id) if self.live.contains_key(id) => break id.clone(),
                Some(_) => {
                    queue.pop_front();
                }
            }
        };
        self.claiming.insert(kind.clone());
        let (node, id, k) = (own.node.to_string(), head.clone(), kind.clone());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.cx
            .writer
            .write(move |c| leases::claim_slot(c, &id, &node, &k, limit))
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.claiming.remove(&kind);
                match res {
                    Ok(true) => {
                        if let Some(q) = act.waiting.get_mut(&kind) {
                            q.retain(|x| x != &head);
                        }
                        if let Some(addr) = act.live.get(&head) {
                            log::info!("operation {head}: a slot of {kind} is free across the cluster; starting");
                            addr.do_send(Begin);
                            act.begun.insert(head);
                        }
                        ctx.notify(ClaimSlots { kind });
                    }
                    // Every slot is taken: the next heartbeat, or a finish here, tries again.
                    Ok(false) => {}
                    Err(e) => log::warn!("operations: claiming a slot of {kind} failed: {e}"),
                }
            })
            .spawn(ctx);
    }
}
