//! Operations from a [`Session`]: `operation.start`, `operation.cancel`, and the reports of
//! external workers (`operation.progress|log|complete|fail`).
//!
//! In: those requests, [`ReportAnswer`] from the operation manager (a report's answer, sent
//! only when there is something to say). Out: [`StartOperation`], [`GetOperation`] then
//! [`CancelOperation`], [`ReportOperation`] to the manager; `operation` replies, or the
//! `duplicate_operation` error carrying the active operation.

use actix::prelude::*;

use super::{mailbox, Session};
use crate::actors::operation_manager::{
    CancelOperation, GetOperation, ReportAnswer, ReportOperation, ReportReply, StartError,
    StartOperation,
};
use crate::auth::Identity;
use crate::error::{ErrorCode, Refusal};
use crate::operations::Operation;
use crate::protocol::{Reply, Request, RequestId};

impl Session {
    pub(super) fn operation_request(
        &mut self,
        id: Option<RequestId>,
        request: Request,
        identity: Identity,
        ctx: &mut Context<Self>,
    ) {
        let dup_id = id.clone();
        let reply = move |act: &mut Self,
                          ctx: &mut Context<Self>,
                          res: Result<Operation, Refusal>,
                          always: bool| match res {
            Ok(op) => {
                if always || id.is_some() {
                    act.reply(id.as_deref(), Reply::Operation(&op));
                }
            }
            Err(r) => act.refuse(ctx, id.as_deref(), r),
        };
        match request {
            Request::StartOperation {
                kind,
                target,
                project,
                params,
                watch,
            } => {
                if !identity.may_operate(project.as_deref()) {
                    let r = Refusal::new(ErrorCode::Forbidden, "you may not start operations");
                    return reply(self, ctx, Err(r), true);
                }
                let msg = StartOperation {
                    kind: kind.clone(),
                    target,
                    project,
                    params,
                    created_by: Some(identity.user.id.clone()),
                };
                self.deps
                    .operations
                    .send(msg)
                    .into_actor(self)
                    .map(move |res, act, ctx| match res {
                        Ok(Ok(started)) => {
                            act.reply(
                                dup_id.as_deref(),
                                Reply::Started(&started.operation, started.worker_token.as_deref()),
                            );
                            let op_id = started.operation.id.clone();
                            act.remembered().started_ops.insert(kind, op_id.clone());
                            if watch {
                                // As a `join` of the operation's room right after the answer:
                                // the snapshot and everything since arrive as its backfill.
                                let room = format!("operation:{op_id}");
                                act.join(None, room, None, None, identity, ctx);
                            }
                        }
                        Ok(Err(StartError::Duplicate(existing))) => {
                            let r = Refusal::new(
                                ErrorCode::DuplicateOperation,
                                format!(
                                    "operation {} is already active on this target",
                                    existing.id
                                ),
                            );
                            act.deps.metrics.refused(r.code);
                            act.reply(dup_id.as_deref(), Reply::Duplicate(&r, &existing));
                            if watch {
                                // The caller wanted to follow its operation: it follows the
                                // one already running instead (a second wizard tab clicking
                                // Install sees the install in progress), as a REST caller
                                // given the 409's operation would watch it.
                                let room = format!("operation:{}", existing.id);
                                act.join(None, room, None, None, identity, ctx);
                            }
                        }
                        Ok(Err(StartError::Refused(r))) => reply(act, ctx, Err(r), true),
                        Ok(Err(StartError::Database(_))) => reply(
                            act,
                            ctx,
                            Err(Refusal::new(
                                ErrorCode::DatabaseUnavailable,
                                "the database is unreachable; try again shortly",
                            )),
                            true,
                        ),
                        Err(e) => reply(
                            act,
                            ctx,
                            Err(Refusal::new(ErrorCode::Unavailable, e.to_string())),
                            true,
                        ),
                    })
                    .spawn(ctx);
            }
            Request::CancelOperation { operation } => {
                let manager = self.deps.operations.clone();
                let fut = async move {
                    let op = manager
                        .send(GetOperation {
                            id: operation.clone(),
                        })
                        .await
                        .map_err(mailbox)??;
                    // Like REST: an operation the caller may not see is `not_found`, with the
                    // same message as a missing one, so ids cannot be probed.
                    if !identity.may_watch(&op.id, op.project.as_deref()) {
                        return Err(Refusal::new(
                            ErrorCode::NotFound,
                            format!("no operation {operation}"),
                        ));
                    }
                    if !identity.may_operate(op.project.as_deref()) {
                        return Err(Refusal::new(
                            ErrorCode::Forbidden,
                            "you may not cancel this operation",
                        ));
                    }
                    manager
                        .send(CancelOperation { id: operation })
                        .await
                        .map_err(mailbox)?
                };
                fut.into_actor(self)
                    .map(move |res, act, ctx| reply(act, ctx, res, true))
                    .spawn(ctx);
            }
            Request::ReportOperation {
                operation,
                report,
                worker_token,
            } => {
                // Role `service`, or the operation's own worker token (checked by the manager).
                // Answered by a `ReportAnswer` message, only when there is something to say.
                self.deps.operations.do_send(ReportOperation {
                    id: operation,
                    report,
                    authorized: identity.may_report(),
                    worker_token,
                    reply: ReportReply::Session {
                        to: ctx.address().recipient(),
                        request: dup_id,
                    },
                });
            }
            _ => {}
        }
    }
}

impl Handler<ReportAnswer> for Session {
    type Result = ();

    fn handle(&mut self, msg: ReportAnswer, ctx: &mut Context<Self>) {
        match msg.result {
            Ok(op) => self.reply(msg.request.as_deref(), Reply::Operation(&op)),
            Err(r) => self.refuse(ctx, msg.request.as_deref(), r),
        }
    }
}
