//! Cluster mode: the seam through which a node hands a cancel or a worker report for an
//! operation it does not run to the node that does. The manager names only this trait; the
//! Redis implementation is `cluster::operations`.
//!
//! Contract: forwards leave in call order (one caller's reports reach the owner in the order
//! they were made); the answer is the owner's (the operation after the cancel or report, or its
//! refusal); when no node answers within the deadline, the answer is a refusal `unavailable`
//! (never a hang), which the caller may turn into a better one from the database (finished,
//! unknown).

use std::future::Future;
use std::pin::Pin;

use crate::error::Refusal;
use crate::operations::{Operation, WorkerReport};

/// What a node hands to an operation's owner.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Forward {
    /// Cancel the operation.
    Cancel { id: String },
    /// A worker's report, already authorized by the node that received it (its role, or the
    /// worker token checked against the shared database).
    Report { id: String, report: WorkerReport },
}

impl Forward {
    pub fn id(&self) -> &str {
        match self {
            Forward::Cancel { id } | Forward::Report { id, .. } => id,
        }
    }
}

/// The owner's answer to a forward.
pub type PeerAnswer = Pin<Box<dyn Future<Output = Result<Operation, Refusal>>>>;

/// The other nodes, as the operation manager sees them.
pub trait Peers: Send + Sync {
    /// Hands `what` to whichever node runs the operation (see the module's contract).
    fn forward(&self, what: Forward) -> PeerAnswer;
}
