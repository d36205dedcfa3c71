//! What all client connections' outbound queues hold together, and the bound on it
//! (`SWITCHYARD_OUTBOX_TOTAL_BYTES`). The outboxes report every change of what they hold
//! (`outbox::Locked`); this only adds it up and answers whether a queue may grow.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The server-wide bound on bytes held by outbound queues (`SWITCHYARD_OUTBOX_TOTAL_BYTES`),
/// shared by every outbox made with [`Outbox::bounded`](super::outbox::Outbox::bounded).
///
/// Each queue's own bound (`SWITCHYARD_OUTBOX_MAX_*`) caps one client that does not read; this
/// caps many of them together (distinct users, each within their own connection bounds). While
/// the total is over the budget, a push is refused (as [`PushError::Full`](super::outbox::PushError::Full): the member is
/// evicted as a slow consumer and resumes by offset) to any queue holding at least the average
/// of the non-empty queues, or at least a sixteenth of its own byte bound: the largest queues
/// go first, and a queue below both keeps going, so the total passes the budget by at most a
/// sixteenth of the per-queue bound per connection. An empty queue still takes one payload, as
/// it does under its own bound.
///
/// Payloads are counted whole in every queue that holds them, although a broadcast shares one
/// buffer among its members: the count is an upper bound on the memory, never below it.
/// Besides what is queued, each queue's chunk being written to a blocked socket is counted.
#[derive(Debug)]
pub struct Budget {
    pub(super) limit: usize,
    held: AtomicUsize,
    /// Queues holding anything (for the average).
    queues: AtomicUsize,
}

impl Budget {
    /// A budget of `limit` bytes; 0 turns it off (nothing is ever refused for it).
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: AtomicUsize::new(0),
            queues: AtomicUsize::new(0),
        })
    }

    /// Bytes held by all queues now, and the budget.
    pub fn usage(&self) -> (usize, usize) {
        (self.held.load(Ordering::Relaxed), self.limit)
    }

    /// A queue went from holding `before` bytes to holding `after`.
    pub(super) fn moved(&self, before: usize, after: usize) {
        if after > before {
            self.held.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.held.fetch_sub(before - after, Ordering::Relaxed);
        }
        if before == 0 {
            self.queues.fetch_add(1, Ordering::Relaxed);
        } else if after == 0 {
            self.queues.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether a queue holding `mine` bytes (of its own bound `max_bytes`) may not grow by
    /// `len` now.
    pub(super) fn refuses(&self, mine: usize, len: usize, max_bytes: usize) -> bool {
        if self.limit == 0 {
            return false;
        }
        let held = self.held.load(Ordering::Relaxed);
        if held.saturating_add(len) <= self.limit {
            return false;
        }
        let queues = self.queues.load(Ordering::Relaxed).max(1);
        mine >= max_bytes / 16 || mine.saturating_mul(queues) >= held
    }
}
