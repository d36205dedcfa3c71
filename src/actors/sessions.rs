//! The open connections: who is told [`ServerShutdown`] at a graceful shutdown.
//!
//! Not an actor: sessions and watchers add and remove themselves under a lock, on their own
//! threads. It used to be the registry's, fed by a message from every session as it started and
//! stopped; each of those woke the registry's thread once more per connection, for a table read
//! only at shutdown (connection set-up, docs/benchmarks.md).

use std::collections::HashMap;
use std::sync::Mutex;

use actix::WeakRecipient;

use super::{ServerShutdown, SessionId};

/// Weak handles: the table must not keep a session alive, and a weak handle costs its box only
/// (a strong actix address allocates twice more on every clone).
#[derive(Default)]
pub struct SessionTable(Mutex<HashMap<SessionId, WeakRecipient<ServerShutdown>>>);

impl SessionTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, WeakRecipient<ServerShutdown>>> {
        // Each use is one map call: a poisoned lock still holds a consistent map.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A session or watcher started.
    pub fn opened(&self, session: SessionId, addr: WeakRecipient<ServerShutdown>) {
        self.lock().insert(session, addr);
    }

    /// It stopped.
    pub fn closed(&self, session: SessionId) {
        self.lock().remove(&session);
    }

    /// Tells every open session the server is shutting down; returns how many there were.
    pub fn shut_down(&self) -> usize {
        // Upgraded outside the lock: a session stopping meanwhile removes itself without waiting.
        let open: Vec<_> = self.lock().values().cloned().collect();
        for s in open.iter().filter_map(WeakRecipient::upgrade) {
            s.do_send(ServerShutdown);
        }
        open.len()
    }
}
