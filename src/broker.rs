//! The publish path, behind one interface.
//!
//! Every producer — sessions, REST handlers, the activity feed, the stats publisher — publishes
//! through a [`Broker`]. [`LocalBroker`] hands the message to this node's room registry, where
//! the room assigns the offset and fans out. A multi-node broker (Redis streams: `XADD` assigns
//! the order, every node consumes and feeds its local rooms) implements the same trait, and
//! nothing that publishes has to change.

use std::future::Future;
use std::pin::Pin;

use actix::Addr;

use crate::actors::registry::RoomRegistry;
use crate::actors::room::Publish;
use crate::error_code::{ErrorCode, Refusal};

pub type PublishFuture = Pin<Box<dyn Future<Output = Result<u64, Refusal>> + Send>>;

pub trait Broker: Send + Sync + 'static {
    /// Publishes into a room; resolves to the message's offset in that room.
    fn publish(&self, msg: Publish) -> PublishFuture;

    /// Publishes without waiting for the offset (events whose publisher has nothing to do with
    /// the answer, e.g. an operation's progress). A refusal is logged where it happens.
    fn publish_and_forget(&self, msg: Publish) {
        let fut = self.publish(msg);
        actix::spawn(async move {
            if let Err(e) = fut.await {
                log::warn!("a publish nobody waits for failed: {e}");
            }
        });
    }

    /// A short name for `/health`.
    fn name(&self) -> &'static str;

    /// Whether a member may publish straight to a local room's address (no registry hop).
    /// Only a single-node broker can allow it: with several nodes the order comes from the
    /// shared log, so every publish must go through the broker.
    fn members_publish_directly(&self) -> bool {
        false
    }
}

/// Single-node broker: the local registry is the source of order.
pub struct LocalBroker {
    registry: Addr<RoomRegistry>,
}

impl LocalBroker {
    pub fn new(registry: Addr<RoomRegistry>) -> Self {
        Self { registry }
    }
}

impl Broker for LocalBroker {
    fn publish(&self, msg: Publish) -> PublishFuture {
        let fut = self.registry.send(msg);
        Box::pin(async move {
            fut.await.unwrap_or_else(|e| {
                Err(Refusal::new(
                    ErrorCode::Unavailable,
                    format!("registry unavailable: {e}"),
                ))
            })
        })
    }

    fn publish_and_forget(&self, msg: Publish) {
        // No reply channel at all: the room logs a refusal itself.
        self.registry.do_send(msg);
    }

    fn name(&self) -> &'static str {
        "local"
    }

    fn members_publish_directly(&self) -> bool {
        true
    }
}
