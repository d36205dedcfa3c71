//! What the operation actor says to its manager ([`Finished`], [`Retired`], through a
//! [`ManagerLink`]) and how a report's outcome is answered ([`ReportReply`], [`ReportAnswer`]).
//! They live here, below both, so that the operation actor never names the manager: the
//! manager imports the operation actor, never the other way round. The manager re-exports
//! them as part of its public surface.

use actix::prelude::*;

use crate::error::Refusal;
use crate::operations::Operation;
use crate::protocol::native::RequestId;

/// Operation → Manager: terminal state written and announced; its concurrency slot is free.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Finished {
    pub id: String,
    pub kind: String,
}

/// Operation → Manager: the actor stopped (retention over).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retired {
    pub id: String,
}

/// Where an operation actor tells its manager that its slot is free and that it is gone. (Two
/// recipients rather than the manager's address: the actor does not know the manager's type.)
#[derive(Clone)]
pub struct ManagerLink {
    /// Terminal state written and announced: the kind's concurrency slot is free.
    pub finished: Recipient<Finished>,
    /// The actor stopped: the manager forgets it.
    pub retired: Recipient<Retired>,
}

/// Where the outcome of a report goes.
pub enum ReportReply {
    /// A session's request: answered when it carries an id (with the status) or is refused.
    Session {
        to: Recipient<ReportAnswer>,
        request: Option<RequestId>,
    },
    /// A caller waiting for the outcome (the REST endpoint).
    Wait(tokio::sync::oneshot::Sender<Result<Operation, Refusal>>),
}

impl ReportReply {
    /// True when someone waits for the outcome: a REST call, or a `/ws` report with an `id`.
    /// Those are answered with success only once the report is stored; a `/ws` report without
    /// an `id` is fire-and-forget (answered only if refused).
    pub fn waits(&self) -> bool {
        !matches!(self, ReportReply::Session { request: None, .. })
    }

    pub fn answer(self, result: Result<&Operation, Refusal>) {
        match self {
            ReportReply::Session { request: None, .. } if result.is_ok() => {}
            ReportReply::Session { to, request } => to.do_send(ReportAnswer {
                request,
                result: result.cloned(),
            }),
            ReportReply::Wait(tx) => {
                let _ = tx.send(result.cloned());
            }
        }
    }
}

/// The answer to a session's report.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReportAnswer {
    pub request: Option<RequestId>,
    pub result: Result<Operation, Refusal>,
}
