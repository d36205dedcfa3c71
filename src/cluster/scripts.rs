//! The two Lua scripts Redis runs for the cluster: everything that must be atomic.

/// One publish, atomically: the room's epoch (minted from `ARGV[2]` if the room has none, and
/// then its old stream is dropped: offsets restart), the next offset, the append to the room's
/// stream (its history, id `{offset}-1`) and to the fan-out stream every node reads.
///
/// KEYS: meta hash, room stream, fan-out stream. ARGV: envelope JSON, candidate epoch, room
/// stream length (0: no history), fan-out stream length, key lifetime in seconds, room name.
pub const PUBLISH: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[2]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
if tonumber(ARGV[3]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], offset .. '-1', 'd', ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'r', ARGV[6], 'e', epoch, 'o', offset, 'd', ARGV[1])
return {epoch, offset}
"#;

/// Where a room stands and its last messages, read together: its epoch (minted if it has none,
/// so every node that opens it agrees on one), its last offset, and its stream newest first.
///
/// KEYS: meta hash, room stream. ARGV: candidate epoch, entries wanted, key lifetime.
pub const OPEN: &str = r#"
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 then
  redis.call('DEL', KEYS[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
local entries = {}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[2])
end
return {epoch, offset, entries}
"#;
