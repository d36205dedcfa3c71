//! Socket.IO connection-state recovery across the nodes (docs/socketio.md, docs/cluster.md):
//! a disconnected socket's record (`actors::recovery::Record`) is kept in Redis rather than in
//! the node's memory, so its client recovers on whichever node its reconnect reaches, and on its
//! own node after a restart. The record points at room positions; room history is in Redis too
//! (each room's stream), so a node that takes a record resumes every room from there exactly as
//! the node that wrote it would have.
//!
//! Keys (prefix `SWITCHYARD_REDIS_PREFIX`):
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `{p}:sio:{pid}` | hash | `u` the user, `n` the namespace, `r` the record (JSON), `w` the writer's count key; expires after `SWITCHYARD_SOCKETIO_RECOVERY_SECS` |
//! | `{p}:sio:node:{writer}` | zset | the records a node process wrote that may still be taken, by expiry (ms, Redis's clock): the per-node count bound |
//!
//! Both steps are one script each: keeping checks the writer's count and writes the record;
//! taking compares the user and namespace and deletes the record in the same step (a pid
//! recovers once, and a pid presented by anyone else leaves the record where it is).
//!
//! Records are written when the node notices a socket's connection ended (a closed transport, a
//! missed pong, the node's own graceful shutdown, which waits for the writes: [`RedisRecords`]'s
//! `flush`). A node killed with SIGKILL writes nothing: its sockets start afresh (the journal
//! that ties a socket's rooms together changes with every room event; writing it eagerly would
//! cost a Redis write per delivered message).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::actors::recovery::{Record, RecoveryRecords, TakeFuture};
use crate::protocol::Since;
use crate::transport::outbox::Journal;

use super::RedisLog;

/// Keeps a record unless its writer already has `ARGV[5]` records waiting.
///
/// KEYS: the record, the writer's count. ARGV: user, namespace, record, lifetime (ms), max.
const KEEP: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return 0 end
redis.call('HSET', KEYS[1], 'u', ARGV[1], 'n', ARGV[2], 'r', ARGV[3], 'w', KEYS[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), KEYS[1])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"#;

/// Takes a record if it belongs to `ARGV[1]` in `ARGV[2]`: returns it and deletes it (and its
/// entry in its writer's count, a key the writer named: one Redis, as the rest of the cluster
/// assumes), else returns nothing and leaves it.
///
/// KEYS: the record. ARGV: user, namespace.
const TAKE: &str = r#"
local r = redis.call('HMGET', KEYS[1], 'u', 'n', 'r', 'w')
if not r[3] or r[1] ~= ARGV[1] or r[2] ~= ARGV[2] then return false end
redis.call('DEL', KEYS[1])
if r[4] then redis.call('ZREM', r[4], KEYS[1]) end
return r[3]
"#;

/// The shape of a record in Redis. Journal streams are `protocol::socketio::recovery_stream`
/// hashes, stable across processes and builds (FNV-1a), so any node reads them alike.
#[derive(Serialize, Deserialize)]
struct Stored {
    /// The shape's version: a node that does not know it starts the socket afresh.
    v: u8,
    rooms: Vec<(String, Since)>,
    entries: Vec<(u64, u64)>,
    base: Vec<(u64, u64)>,
    base_lost: bool,
    restored_from: Option<String>,
    watched: Vec<(String, u64)>,
    #[serde(default)]
    unanswered: Vec<String>,
}

const VERSION: u8 = 1;

impl Stored {
    fn of(r: &Record) -> Self {
        Self {
            v: VERSION,
            rooms: r.rooms.clone(),
            entries: r.journal.entries.iter().copied().collect(),
            base: r.journal.base.iter().map(|(s, o)| (*s, *o)).collect(),
            base_lost: r.journal.base_lost,
            restored_from: r.restored_from.clone(),
            watched: r.watched.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            unanswered: r.unanswered.clone(),
        }
    }

    fn into_record(self, user: &str, nsp: &str) -> Option<Record> {
        if self.v != VERSION {
            return None;
        }
        let mut journal = Journal::default();
        journal.entries = self.entries.into();
        journal.base = self.base.into_iter().collect();
        journal.base_lost = self.base_lost;
        Some(Record {
            user: user.to_string(),
            nsp: nsp.to_string(),
            rooms: self.rooms,
            journal,
            restored_from: self.restored_from,
            watched: self.watched.into_iter().collect(),
            unanswered: self.unanswered,
            // The key's lifetime bounds its age: what Redis still has is young enough.
            at: std::time::Instant::now(),
        })
    }
}

/// Disconnected sockets' records in Redis, shared by the nodes.
pub struct RedisRecords {
    log: Arc<RedisLog>,
    /// This process's count key: a restarted node counts afresh (the old one expires).
    count_key: String,
    /// `SWITCHYARD_SOCKETIO_RECOVERY_SECS`.
    lifetime: Duration,
    /// `SWITCHYARD_SOCKETIO_RECOVERY_MAX_SOCKETS`, per node process.
    max: usize,
    /// `SWITCHYARD_SOCKETIO_RECOVERY_MAX_RECORD_BYTES`.
    max_bytes: usize,
    /// Writes handed over and not yet answered (what `flush` waits for).
    writing: Arc<AtomicUsize>,
}

impl RedisRecords {
    pub fn new(log: Arc<RedisLog>, settings: &crate::config::Settings) -> Arc<Self> {
        let count_key = format!(
            "{}:sio:node:{}-{}",
            log.prefix,
            crate::broker::node_id(),
            uuid::Uuid::new_v4().simple()
        );
        Arc::new(Self {
            log,
            count_key,
            lifetime: settings.sio_recovery,
            max: settings.sio_recovery_max_sockets,
            max_bytes: settings.sio_recovery_max_record_bytes,
            writing: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn key(&self, pid: &str) -> String {
        format!("{}:sio:{pid}", self.log.prefix)
    }
}

/// Decrements the count of writes in flight when the write ends, however it ends.
struct Writing(Arc<AtomicUsize>);

impl Drop for Writing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl RecoveryRecords for RedisRecords {
    fn keep(&self, pid: String, record: Record) {
        let json = match serde_json::to_string(&Stored::of(&record)) {
            Ok(j) => j,
            Err(e) => return log::error!("socket.io pid {pid}: record not encoded: {e}"),
        };
        if json.len() > self.max_bytes {
            return log::warn!(
                "socket.io pid {pid}: not kept for recovery: {} bytes, over SWITCHYARD_SOCKETIO_RECOVERY_MAX_RECORD_BYTES",
                json.len()
            );
        }
        let cmd = redis::cmd("EVAL")
            .arg(KEEP)
            .arg(2)
            .arg(self.key(&pid))
            .arg(&self.count_key)
            .arg(&record.user)
            .arg(&record.nsp)
            .arg(json)
            .arg(self.lifetime.as_millis() as u64)
            .arg(self.max)
            .to_owned();
        let link = self.log.link.clone();
        self.writing.fetch_add(1, SeqCst);
        let writing = Writing(self.writing.clone());
        actix_web::rt::spawn(async move {
            let _writing = writing;
            // The script may run twice (a retry after a lost answer writes the same record).
            match link.cmd::<i64>(cmd).await {
                Ok(1) => log::debug!("socket.io pid {pid}: record kept in redis"),
                Ok(_) => log::warn!(
                    "socket.io pid {pid}: not kept for recovery: SWITCHYARD_SOCKETIO_RECOVERY_MAX_SOCKETS reached on this node"
                ),
                Err(e) => log::warn!(
                    "socket.io pid {pid}: not kept for recovery: {}",
                    e.message
                ),
            }
        });
    }

    fn take(&self, pid: &str, nsp: &str, user: &str) -> TakeFuture {
        let cmd = redis::cmd("EVAL")
            .arg(TAKE)
            .arg(1)
            .arg(self.key(pid))
            .arg(user)
            .arg(nsp)
            .to_owned();
        let link = self.log.link.clone();
        let (pid, nsp, user) = (pid.to_string(), nsp.to_string(), user.to_string());
        Box::pin(async move {
            // The link may run it twice (a retry after a dropped connection): the second run
            // finds nothing, and the socket starts afresh; it is never recovered twice.
            let json = match link.cmd::<Option<String>>(cmd).await {
                Ok(json) => json?,
                Err(e) => {
                    log::warn!("socket.io pid {pid}: record not read: {}", e.message);
                    return None;
                }
            };
            let record = serde_json::from_str::<Stored>(&json)
                .ok()
                .and_then(|s| s.into_record(&user, &nsp));
            if record.is_none() {
                log::warn!("socket.io pid {pid}: record in redis not readable; starting afresh");
            }
            record
        })
    }

    fn flush(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let writing = self.writing.clone();
        Box::pin(async move {
            // Each write is bounded by the link's deadline, so this ends.
            while writing.load(SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_it_was_written() {
        let mut journal = Journal::default();
        journal.entries.push_back((7, 3));
        journal.entries.push_back((u64::MAX, 4));
        journal.base.insert(9, 2);
        let r = Record {
            user: "u".into(),
            nsp: "/".into(),
            rooms: vec![(
                "a".into(),
                Since {
                    epoch: "e".into(),
                    offset: 2,
                },
            )],
            journal,
            restored_from: Some("a@2".into()),
            watched: [("operation:x".to_string(), 5)].into_iter().collect(),
            unanswered: vec!["operation:x".into()],
            at: std::time::Instant::now(),
        };
        let json = serde_json::to_string(&Stored::of(&r)).expect("encodes");
        let back = serde_json::from_str::<Stored>(&json)
            .expect("decodes")
            .into_record("u", "/")
            .expect("this version");
        assert_eq!(back.rooms, r.rooms);
        assert_eq!(back.journal.entries, r.journal.entries);
        assert_eq!(back.journal.base, r.journal.base);
        assert_eq!(back.restored_from, r.restored_from);
        assert_eq!(back.watched, r.watched);
        assert_eq!(back.unanswered, r.unanswered);
        assert_eq!(back.resume(Some("a@3")), r.resume(Some("a@3")));
    }
}
