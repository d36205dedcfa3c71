//! One delivery per connection of a message published into several rooms at once.
//!
//! Such a message is ordered in each room separately (each has its own offsets and history) and
//! every room fans it out on its own, possibly on another thread; a connection that is a member
//! of two of the rooms would get it twice. The envelopes carry one shared id
//! ([`super::Envelope::message_id`]), and the first room to hand it to a connection records the
//! id in that connection's window here; the others find it there and skip the connection.
//!
//! Process-local by nature (keyed by this node's session numbers, which are never reused), so it
//! is not in the envelope; on every node of a cluster the rooms deliver to local members only,
//! and each node keeps its own connections' windows.
//!
//! Memory: nothing per connection until a multi-room message reaches it — an idle connection
//! costs nothing here. A window then holds the ids of the last `SWITCHYARD_DEDUPE_WINDOW`
//! multi-room messages the connection got (16 bytes each): enough for the rooms to catch up with
//! each other, since they deliver the same message within moments. The session drops its window
//! when it ends ([`forget`]); a window whose connection is gone without that (a race with a
//! delivery in flight) is swept the next time its shard grows.
//!
//! The guarantee and its limit (docs/protocol.md): live deliveries and a join's replay on one
//! connection carry a multi-room message once while its id is in the window. A resume on a new
//! connection replays each room from its own position, so it may carry the message again from a
//! room it was skipped in; it has the same `message_id`, for the client to drop.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::SessionId;
use crate::transport::outbox::Outbox;

const SHARDS: usize = 16;

/// A connection's recent multi-room message ids.
struct Window {
    ids: VecDeque<u128>,
    /// To sweep windows whose connection ended without [`forget`].
    outbox: Weak<Outbox>,
}

#[derive(Default)]
struct Shard {
    windows: HashMap<SessionId, Window>,
    /// The shard's size after its last sweep: it is swept again when it doubles.
    swept_at: usize,
}

fn shards() -> &'static [Mutex<Shard>; SHARDS] {
    static SHARDS_: OnceLock<[Mutex<Shard>; SHARDS]> = OnceLock::new();
    SHARDS_.get_or_init(|| std::array::from_fn(|_| Mutex::new(Shard::default())))
}

fn shard(session: SessionId) -> std::sync::MutexGuard<'static, Shard> {
    // Each operation is one map call: a poisoned shard is still whole.
    shards()[(session as usize) % SHARDS]
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The id as a number (ids are minted as 32 hex digits); `None` for anything else, which is
/// then delivered without a check rather than risk a wrong skip.
pub fn key(message_id: &str) -> Option<u128> {
    (message_id.len() == 32)
        .then(|| u128::from_str_radix(message_id, 16).ok())
        .flatten()
}

/// Whether `session` gets message `key` now: true the first time (recorded in its window,
/// which is created here if need be), false when another room already gave it to it.
pub fn first_delivery(session: SessionId, key: u128, outbox: &Arc<Outbox>, window: usize) -> bool {
    let mut shard = shard(session);
    if !shard.windows.contains_key(&session) {
        let len = shard.windows.len();
        if len >= (2 * shard.swept_at).max(64) {
            shard.windows.retain(|_, w| w.outbox.strong_count() > 0);
            shard.swept_at = shard.windows.len();
        }
    }
    let w = shard.windows.entry(session).or_insert_with(|| Window {
        ids: VecDeque::new(),
        outbox: Arc::downgrade(outbox),
    });
    if w.ids.contains(&key) {
        return false;
    }
    if w.ids.len() >= window.max(1) {
        w.ids.pop_front();
    }
    w.ids.push_back(key);
    true
}

/// The session ended: its window goes.
pub fn forget(session: SessionId) {
    shard(session).windows.remove(&session);
}

/// Whether `session` has a window (tests of the memory promise).
pub fn has_window(session: SessionId) -> bool {
    shard(session).windows.contains_key(&session)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::next_session_id;

    fn outbox() -> Arc<Outbox> {
        Outbox::new(16, 1 << 16)
    }

    #[test]
    fn a_message_is_delivered_once_per_connection_whatever_the_rooms() {
        let (a, b) = (next_session_id(), next_session_id());
        let (oa, ob) = (outbox(), outbox());
        let id = key(&crate::broker::new_message_id()).expect("a minted id is a key");
        assert!(first_delivery(a, id, &oa, 8));
        assert!(!first_delivery(a, id, &oa, 8), "second room skips it");
        assert!(first_delivery(b, id, &ob, 8), "another connection gets it");
        forget(a);
        forget(b);
    }

    #[test]
    fn a_window_holds_the_last_ids_only_and_goes_with_its_session() {
        let s = next_session_id();
        let o = outbox();
        assert!(
            !has_window(s),
            "nothing is allocated before a multi-room message"
        );
        for k in 0..5u128 {
            assert!(first_delivery(s, k, &o, 3));
        }
        // 0 and 1 fell out of a window of 3; 4 is still in it.
        assert!(first_delivery(s, 0, &o, 3));
        assert!(!first_delivery(s, 4, &o, 3));
        forget(s);
        assert!(!has_window(s));
    }

    #[test]
    fn an_id_that_is_not_minted_here_is_not_checked() {
        assert_eq!(key("not-an-id"), None);
        assert_eq!(key(&"g".repeat(32)), None);
    }
}
