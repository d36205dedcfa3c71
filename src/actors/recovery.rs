//! Socket.IO connection-state recovery (docs/socketio.md): what a disconnected socket leaves
//! behind so that its client, reconnecting with `{pid, offset}`, gets its rooms back and every
//! room message it missed, and nothing twice.
//!
//! A socket's record holds its rooms with the position each was joined at, and its
//! connection's journal (the order in which tagged room events were pushed to it, across all
//! its rooms: `transport::outbox::Journal`). The client's offset names the last room event it
//! received; everything pushed before that event was received too (one connection, one order),
//! nothing pushed after it was. So for each room, the client has the highest offset pushed up
//! to that event, or, if none was, the position it joined at: that is where each room resumes.
//!
//! An operation's room joined by watching the operation starts with a backfill that has no
//! place in the room's order; its frames carry their own tags (a stream of their own, numbered
//! by the watcher's log offset). Until a live event of the room arrived, the client's place in
//! such a room is the last backfill frame it got, and the room is restored by watching the
//! operation again from that line ([`Restore::Watch`]).
//!
//! Records are kept next to what they point at, behind [`RecoveryRecords`]: on one node in
//! memory ([`RecoveryStore`]): room history is in memory and a restart starts every room in a
//! new epoch, so a record that outlived the process could only ever say `recovered: false`,
//! which an unknown pid says too, at once. In cluster mode room history lives in Redis and
//! survives the nodes, so the records do too (`cluster::RedisRecords`): a client may reconnect
//! to any node, or to its node restarted.
//!
//! In: [`RecoveryRecords::keep`] from a Socket.IO session that ends without the client asking,
//! [`RecoveryRecords::take`] from a CONNECT carrying a pid. Bounds: `SWITCHYARD_SOCKETIO_RECOVERY_SECS`
//! (age), `SWITCHYARD_SOCKETIO_RECOVERY_MAX_SOCKETS` (count), `SWITCHYARD_SOCKETIO_RECOVERY_WINDOW`
//! (journal entries per record).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::protocol::socketio::{
    backfill_stream, parse_backfill_offset, parse_recovery_offset, recovery_stream,
};
use crate::protocol::Since;
use crate::transport::outbox::Journal;

/// What a disconnected socket leaves for its recovery.
#[derive(Debug, Clone)]
pub struct Record {
    /// The user the socket belonged to: only that user may recover it.
    pub user: String,
    /// Its namespace: only a CONNECT to that namespace recovers it.
    pub nsp: String,
    /// Its rooms, each with the position the client had when it joined (the join's answer, or
    /// what a resume started from).
    pub rooms: Vec<(String, Since)>,
    /// Its connection's journal.
    pub journal: Journal,
    /// The offset the client sent with this socket's CONNECT: if the client still sends it, it
    /// received no room event from this socket (a client keeps its last offset across
    /// sockets, recovered or not).
    pub restored_from: Option<String>,
    /// Of `rooms`, the operations' rooms joined by watching the operation, each with the log
    /// offset the watch started after: their backfill has no place in the room's order, so
    /// where the client stands in one is in the journal's backfill stream until a live event
    /// of the room arrived.
    pub watched: HashMap<String, u64>,
    /// Of `watched`, the rooms whose watch was not answered yet when the socket disconnected
    /// (the operation's actor had sent the backfill, or part of it, but the room's position
    /// had not reached the session): not in `rooms`, restored by watching again.
    pub unanswered: Vec<String>,
    /// When the socket disconnected.
    pub at: Instant,
}

/// How a recovered socket gets one of its rooms back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    /// Joined again from this position, with the room's history after it.
    Since(Since),
    /// An operation's room whose backfill the client did not get all of (nor any live event
    /// after it): watched again, with a fresh status snapshot and the log lines after
    /// `log_offset` (the last one it got), so that no line arrives twice or not at all.
    Watch { log_offset: u64 },
}

impl Record {
    /// How each room resumes for a client whose last room event was `offset`; `None` when
    /// that cannot be known (the offset is unknown or older than the journal).
    pub fn resume(&self, offset: Option<&str>) -> Option<Vec<(String, Restore)>> {
        let parsed = offset.and_then(|o| {
            parse_recovery_offset(o)
                .map(|(room, off)| (recovery_stream(&self.nsp, room), off))
                .or_else(|| {
                    parse_backfill_offset(o).map(|(room, n)| (backfill_stream(&self.nsp, room), n))
                })
        });
        // How many journal entries the client received (the first matching entry: if an
        // event was pushed twice, e.g. a retained message on a second join, the earlier cut
        // can only replay more, never lose anything).
        let found = parsed.and_then(|(stream, off)| {
            self.journal
                .entries
                .iter()
                .position(|e| *e == (stream, off))
                .map(|i| i + 1)
        });
        let cut = match found {
            Some(_) if self.journal.base_lost => return None,
            Some(cut) => cut,
            // Nothing received since the socket was (re)connected: every room resumes where it
            // was joined.
            None if offset.map(str::to_string) == self.restored_from => 0,
            None => return None,
        };
        let received = |stream: u64| {
            let before = (cut > 0).then(|| self.journal.base.get(&stream)).flatten();
            let within = self
                .journal
                .entries
                .iter()
                .take(cut)
                .filter(|(s, _)| *s == stream)
                .map(|(_, o)| *o);
            before.copied().into_iter().chain(within).max()
        };
        let mut plan: Vec<(String, Restore)> = self
            .rooms
            .iter()
            .map(|(room, joined)| {
                let got = received(recovery_stream(&self.nsp, room));
                let since = Restore::Since(Since {
                    epoch: joined.epoch.clone(),
                    offset: got.map_or(joined.offset, |o| o.max(joined.offset)),
                });
                let Some(asked) = self.watched.get(room).filter(|_| got.is_none()) else {
                    // A live event of the room arrived: everything before it did too,
                    // its backfill included.
                    return (room.clone(), since);
                };
                // Twice the log offset of the last backfill frame received, plus one for
                // the terminal event (`socketio::backfill_recovery_offset`).
                let restore = match received(backfill_stream(&self.nsp, room)) {
                    // All of it, to the end: nothing follows a terminal event.
                    Some(n) if n % 2 == 1 => since,
                    Some(n) => Restore::Watch { log_offset: n / 2 },
                    None => Restore::Watch { log_offset: *asked },
                };
                (room.clone(), restore)
            })
            .collect();
        for room in &self.unanswered {
            // Its position never came, so only a watch again restores it, from the backfill the
            // client got. A live event of the room, or the whole backfill to its terminal
            // event, would need that position: such a socket starts afresh.
            if received(recovery_stream(&self.nsp, room)).is_some() {
                return None;
            }
            let asked = self.watched.get(room)?;
            let restore = match received(backfill_stream(&self.nsp, room)) {
                Some(n) if n % 2 == 1 => return None,
                Some(n) => Restore::Watch { log_offset: n / 2 },
                None => Restore::Watch { log_offset: *asked },
            };
            plan.push((room.clone(), restore));
        }
        Some(plan)
    }
}

/// What [`RecoveryRecords::take`] answers, later.
pub type TakeFuture = Pin<Box<dyn Future<Output = Option<Record>> + Send>>;

/// Where disconnected sockets' records wait for their clients: in this process
/// ([`RecoveryStore`]), or shared by the nodes of a cluster (`cluster::RedisRecords`).
pub trait RecoveryRecords: Send + Sync {
    /// Keeps a disconnected socket's record under its pid, for at most
    /// `SWITCHYARD_SOCKETIO_RECOVERY_SECS`. Not waited for: a record that cannot be kept (the
    /// store is full, or unreachable) is logged, and its client starts afresh.
    fn keep(&self, pid: String, record: Record);

    /// Takes the record of `pid` (a pid recovers once) if it belongs to `user` in `nsp` and has
    /// not expired. A pid is not a credential: a record stays where it is for anyone else.
    fn take(&self, pid: &str, nsp: &str, user: &str) -> TakeFuture;

    /// Resolves once every record handed to `keep` so far is kept (or failed): a node that
    /// shuts down waits for it, so its sockets can recover on another node or after the restart.
    fn flush(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(std::future::ready(()))
    }
}

impl RecoveryRecords for RecoveryStore {
    fn keep(&self, pid: String, record: Record) {
        if !RecoveryStore::keep(self, pid.clone(), record) {
            log::warn!(
                "socket.io pid {pid}: not kept for recovery: SWITCHYARD_SOCKETIO_RECOVERY_MAX_SOCKETS reached"
            );
        }
    }

    fn take(&self, pid: &str, nsp: &str, user: &str) -> TakeFuture {
        Box::pin(std::future::ready(RecoveryStore::take(
            self, pid, nsp, user,
        )))
    }
}

/// The records of disconnected sockets, by pid, in this process.
pub struct RecoveryStore {
    records: Mutex<HashMap<String, Record>>,
    /// How long a record may be recovered (`SWITCHYARD_SOCKETIO_RECOVERY_SECS`).
    max_age: Duration,
    /// How many records are kept (`SWITCHYARD_SOCKETIO_RECOVERY_MAX_SOCKETS`).
    max: usize,
}

impl RecoveryStore {
    pub fn new(max_age: Duration, max: usize) -> Self {
        Self {
            records: Mutex::new(HashMap::new()),
            max_age,
            max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        // Every operation is a single map call or a retain: a poisoned map is still whole.
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a disconnected socket's record. When the store is full even after dropping the
    /// expired records, the record is not kept (its client reconnects with `recovered:
    /// false`); false then.
    pub fn keep(&self, pid: String, record: Record) -> bool {
        let mut records = self.lock();
        if records.len() >= self.max {
            let max_age = self.max_age;
            records.retain(|_, r| r.at.elapsed() <= max_age);
        }
        if records.len() >= self.max {
            return false;
        }
        records.insert(pid, record);
        true
    }

    /// Takes the record of `pid` (a pid recovers once) if it belongs to `user` in `nsp` and has
    /// not expired.
    pub fn take(&self, pid: &str, nsp: &str, user: &str) -> Option<Record> {
        let mut records = self.lock();
        let fits = records
            .get(pid)
            .is_some_and(|r| r.nsp == nsp && r.user == user);
        if !fits {
            return None;
        }
        records
            .remove(pid)
            .filter(|r| r.at.elapsed() <= self.max_age)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn since(epoch: &str, offset: u64) -> Since {
        Since {
            epoch: epoch.to_string(),
            offset,
        }
    }

    /// `entries` and `base` as (namespace, room, offset).
    fn record(entries: &[(&str, &str, u64)], base: &[(&str, &str, u64)]) -> Record {
        let mut journal = Journal::default();
        for (nsp, room, o) in entries {
            journal.entries.push_back((recovery_stream(nsp, room), *o));
        }
        for (nsp, room, o) in base {
            journal.base.insert(recovery_stream(nsp, room), *o);
        }
        Record {
            user: "u".into(),
            nsp: "/".into(),
            rooms: vec![("a".into(), since("e1", 3)), ("b".into(), since("e2", 10))],
            journal,
            restored_from: None,
            watched: HashMap::new(),
            unanswered: Vec::new(),
            at: Instant::now(),
        }
    }

    fn offsets(plan: Option<Vec<(String, Restore)>>) -> Option<Vec<(String, u64)>> {
        plan.map(|p| {
            p.into_iter()
                .map(|(r, s)| match s {
                    Restore::Since(s) => (r, s.offset),
                    Restore::Watch { log_offset } => (format!("watch {r}"), log_offset),
                })
                .collect()
        })
    }

    #[test]
    fn a_watched_operation_resumes_from_its_live_events_else_is_watched_again_from_its_backfill() {
        let bf = |seq: u64, terminal: bool| {
            (
                backfill_stream("/", "operation:x"),
                seq * 2 + u64::from(terminal),
            )
        };
        let mut r = record(&[], &[]);
        r.rooms.push(("operation:x".into(), since("e3", 7)));
        r.watched.insert("operation:x".into(), 2);
        // Pushed: a@4, the backfill (snapshot at log 2, lines 3 and 4), a@5, the room's live
        // event 8, a@6.
        for e in [
            (recovery_stream("/", "a"), 4),
            bf(2, false),
            bf(3, false),
            bf(4, false),
            (recovery_stream("/", "a"), 5),
            (recovery_stream("/", "operation:x"), 8),
            (recovery_stream("/", "a"), 6),
        ] {
            r.journal.entries.push_back(e);
        }
        let x = |plan: Option<Vec<(String, u64)>>| {
            plan.and_then(|p| p.into_iter().find(|(room, _)| room.contains("operation:x")))
        };
        // A live event of the room arrived: resumed after it from the room's history.
        assert_eq!(
            x(offsets(r.resume(Some("a@6")))),
            Some(("operation:x".into(), 8))
        );
        // All of the backfill but no live event: watched again after line 4.
        assert_eq!(
            x(offsets(r.resume(Some("a@5")))),
            Some(("watch operation:x".into(), 4))
        );
        // Part of it: after the last line it got.
        assert_eq!(
            x(offsets(r.resume(Some("operation:x@b6")))),
            Some(("watch operation:x".into(), 3))
        );
        // None of it: from where the watch started.
        assert_eq!(
            x(offsets(r.resume(Some("a@4")))),
            Some(("watch operation:x".into(), 2))
        );
        // A finished operation's backfill received to its terminal event: nothing is missing,
        // the room resumes where it was joined.
        r.journal.entries.push_back(bf(4, true));
        r.journal
            .entries
            .retain(|(s, _)| *s != recovery_stream("/", "operation:x"));
        assert_eq!(
            x(offsets(r.resume(Some("operation:x@b9")))),
            Some(("operation:x".into(), 7))
        );
    }

    #[test]
    fn a_watch_dropped_before_its_answer_is_watched_again_from_the_backfill_the_client_got() {
        let bf = |n: u64| (backfill_stream("/", "operation:y"), n);
        let mut r = record(&[], &[]);
        r.watched.insert("operation:y".into(), 1);
        r.unanswered.push("operation:y".into());
        for e in [(recovery_stream("/", "a"), 4), bf(2), bf(4)] {
            r.journal.entries.push_back(e);
        }
        let y = |plan: Option<Vec<(String, u64)>>| {
            plan.map(|p| {
                p.into_iter()
                    .filter(|(room, _)| room.contains("operation:y"))
                    .collect::<Vec<_>>()
            })
        };
        // Up to line 2 (n = 4): watched again after it.
        assert_eq!(
            y(offsets(r.resume(Some("operation:y@b4")))),
            Some(vec![("watch operation:y".into(), 2)])
        );
        // None of the backfill: from where the watch started.
        assert_eq!(
            y(offsets(r.resume(Some("a@4")))),
            Some(vec![("watch operation:y".into(), 1)])
        );
        // A live event of the room, or the whole backfill to its end, needs the position that
        // never came: afresh.
        r.journal.entries.push_back(bf(5));
        assert_eq!(r.resume(Some("operation:y@b5")), None);
        r.journal
            .entries
            .push_back((recovery_stream("/", "operation:y"), 9));
        assert_eq!(r.resume(Some("operation:y@9")), None);
    }

    #[test]
    fn each_room_resumes_after_what_was_pushed_before_the_clients_last_event() {
        // Pushed in this order; the client got up to a@5: b@11 before it, b@12 after it.
        let r = record(
            &[
                ("/", "a", 4),
                ("/", "b", 11),
                ("/", "a", 5),
                ("/", "b", 12),
                ("/x", "a", 9),
            ],
            &[("/", "a", 3)],
        );
        assert_eq!(
            offsets(r.resume(Some("a@5"))),
            Some(vec![("a".into(), 5), ("b".into(), 11)])
        );
        // Up to b@12: everything.
        assert_eq!(
            offsets(r.resume(Some("b@12"))),
            Some(vec![("a".into(), 5), ("b".into(), 12)])
        );
        // Another namespace's entry is not this socket's offset.
        assert_eq!(offsets(r.resume(Some("a@9"))), None);
        // Nothing received: resume where joined, whatever the journal holds.
        assert_eq!(
            offsets(r.resume(None)),
            Some(vec![("a".into(), 3), ("b".into(), 10)])
        );
        // An offset the journal does not hold (too old, or made up).
        assert_eq!(offsets(r.resume(Some("a@2"))), None);
        assert_eq!(offsets(r.resume(Some("nonsense"))), None);
    }

    #[test]
    fn a_recovered_socket_that_received_nothing_resumes_where_it_was_restored() {
        let mut r = record(&[], &[]);
        r.restored_from = Some("a@3".into());
        assert_eq!(
            offsets(r.resume(Some("a@3"))),
            Some(vec![("a".into(), 3), ("b".into(), 10)])
        );
        assert_eq!(offsets(r.resume(None)), None);
    }

    #[test]
    fn the_store_recovers_a_pid_once_for_its_user_and_namespace_within_the_age() {
        let store = RecoveryStore::new(Duration::from_secs(60), 2);
        assert!(store.keep("p1".into(), record(&[], &[])));
        assert!(store.take("p1", "/", "someone-else").is_none());
        assert!(store.take("p1", "/admin", "u").is_none());
        assert!(store.take("p1", "/", "u").is_some());
        assert!(store.take("p1", "/", "u").is_none());
        assert!(store.keep("p2".into(), record(&[], &[])));
        assert!(store.keep("p3".into(), record(&[], &[])));
        assert!(!store.keep("p4".into(), record(&[], &[])), "full");
        let old = RecoveryStore::new(Duration::ZERO, 2);
        let mut r = record(&[], &[]);
        r.at = Instant::now() - Duration::from_millis(5);
        assert!(old.keep("p".into(), r));
        assert!(old.take("p", "/", "u").is_none(), "expired");
    }
}
