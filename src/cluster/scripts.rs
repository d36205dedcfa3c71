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

// ---- presence across the nodes (`presence.rs`) ---------------------------------------------
//
// Per room: `pconn` (hash: `{node}|{session}` → user id, one field per connection),
// `puser` (hash: user id → the user as JSON), `pcount` (hash: `u:{user}` → the user's
// connections, `n:{node}` → the node's connections). Per cluster: `presence:nodes` (zset: node
// → when it expires, in Redis's clock), and per node `presence:node:{node}` (set: the rooms
// where it has connections). Arrivals and departures are announced in the fan-out stream
// (`r` room, `j` "1" joined / "0" left, `u` the user as JSON) by the same script that changed
// the counts: so each is announced once, in the one order every node reads.

/// What every presence script shares: Redis's clock (so node clocks never matter), the
/// announcement, and removing one connection (announcing its user's departure if it was their
/// last connection anywhere).
macro_rules! presence_lib {
    () => {
        r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function announce(fanout, maxlen, room, joined, json)
  redis.call('XADD', fanout, 'MAXLEN', '~', maxlen, '*', 'r', room, 'j', joined, 'u', json)
end
local function drop(conns, users, counts, fanout, conn, room, maxlen)
  local uid = redis.call('HGET', conns, conn)
  if not uid then return 0 end
  redis.call('HDEL', conns, conn)
  local node = string.match(conn, '^(.*)|')
  if node and redis.call('HINCRBY', counts, 'n:' .. node, -1) <= 0 then
    redis.call('HDEL', counts, 'n:' .. node)
  end
  if redis.call('HINCRBY', counts, 'u:' .. uid, -1) <= 0 then
    redis.call('HDEL', counts, 'u:' .. uid)
    local json = redis.call('HGET', users, uid) or cjson.encode({user = uid})
    redis.call('HDEL', users, uid)
    announce(fanout, maxlen, room, '0', json)
  end
  return 1
end
local function tidy(conns, users, counts)
  if redis.call('HLEN', conns) == 0 then redis.call('DEL', conns, users, counts) end
end
"#
    };
}

/// This node's connections in one room change: `+` adds one (announcing its user if it is their
/// first connection anywhere), `-` removes one. With mode `sync` the list is every connection
/// this node has in the room, and any other of its connections there is removed (after the
/// adds: a user who keeps a connection is not announced leaving and coming back). Refused (-1)
/// unless the node is registered and not expired: it must heartbeat (and then sync) first.
///
/// KEYS: pconn, puser, pcount, fan-out stream, this node's room set, nodes zset. ARGV: node,
/// room, fan-out length, mode (`change` / `sync`), then groups of four: op, session, user id,
/// user JSON. Returns the connections added or removed.
pub const PRESENCE_CHANGE: &str = concat!(
    presence_lib!(),
    r#"
local node, room, maxlen = ARGV[1], ARGV[2], ARGV[3]
local score = redis.call('ZSCORE', KEYS[6], node)
if (not score) or tonumber(score) < now_ms() then return -1 end
local mine = node .. '|'
local wanted = nil
if ARGV[4] == 'sync' then wanted = {} end
local n = 0
for i = 5, #ARGV, 4 do
  local conn = mine .. ARGV[i + 1]
  if ARGV[i] == '+' then
    if wanted then wanted[conn] = true end
    local uid, json = ARGV[i + 2], ARGV[i + 3]
    if redis.call('HSETNX', KEYS[1], conn, uid) == 1 then
      n = n + 1
      redis.call('HSET', KEYS[2], uid, json)
      if redis.call('HINCRBY', KEYS[3], 'n:' .. node, 1) == 1 then
        redis.call('SADD', KEYS[5], room)
      end
      if redis.call('HINCRBY', KEYS[3], 'u:' .. uid, 1) == 1 then
        announce(KEYS[4], maxlen, room, '1', json)
      end
    end
  else
    n = n + drop(KEYS[1], KEYS[2], KEYS[3], KEYS[4], conn, room, maxlen)
  end
end
if wanted then
  for _, conn in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(conn, 1, #mine) == mine and not wanted[conn] then
      n = n + drop(KEYS[1], KEYS[2], KEYS[3], KEYS[4], conn, room, maxlen)
    end
  end
end
if not redis.call('HGET', KEYS[3], 'n:' .. node) then redis.call('SREM', KEYS[5], room) end
tidy(KEYS[1], KEYS[2], KEYS[3])
return n
"#
);

/// A node's heartbeat: it expires `ARGV[2]` ms from now. Returns 1 if it was registered and
/// alive, 0 if it was not (new, expired, swept, or Redis lost its data): it must then sync every
/// room it has connections in.
///
/// KEYS: nodes zset. ARGV: node, lifetime in ms.
pub const PRESENCE_HEARTBEAT: &str = concat!(
    presence_lib!(),
    r#"
local now = now_ms()
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if score and tonumber(score) >= now then return 1 end
return 0
"#
);

/// The nodes that expired (at most 32 per call), by Redis's clock.
///
/// KEYS: nodes zset.
pub const PRESENCE_EXPIRED: &str = concat!(
    presence_lib!(),
    r#"
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now_ms(), 'LIMIT', 0, 32)
"#
);

/// An expired node's connections in one room removed, and each of its users whose last
/// connection it was announced leaving — atomically, so of several nodes sweeping at once one
/// does it and the others find nothing. Does nothing if the node is alive again.
///
/// KEYS: pconn, puser, pcount, fan-out stream, the dead node's room set, nodes zset. ARGV:
/// node, room, fan-out length. Returns the connections removed (-1: the node is alive).
pub const PRESENCE_SWEEP: &str = concat!(
    presence_lib!(),
    r#"
local node, room, maxlen = ARGV[1], ARGV[2], ARGV[3]
local score = redis.call('ZSCORE', KEYS[6], node)
if score and tonumber(score) >= now_ms() then return -1 end
local theirs = node .. '|'
local n = 0
for _, conn in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(conn, 1, #theirs) == theirs then
    n = n + drop(KEYS[1], KEYS[2], KEYS[3], KEYS[4], conn, room, maxlen)
  end
end
redis.call('SREM', KEYS[5], room)
tidy(KEYS[1], KEYS[2], KEYS[3])
return n
"#
);

/// An expired node forgotten once every room of its set was swept (a node that came back and
/// joined rooms meanwhile keeps them in its set, for the next sweep). Returns 1 if forgotten.
///
/// KEYS: nodes zset, the node's room set. ARGV: node.
pub const PRESENCE_BURY: &str = concat!(
    presence_lib!(),
    r#"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) < now_ms() and redis.call('SCARD', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
"#
);

/// Who is present in a room, and the fan-out stream's last id when it was read: announcements
/// with a later id are changes after it.
///
/// KEYS: puser, fan-out stream.
pub const PRESENCE_SNAPSHOT: &str = r#"
local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local id = '0-0'
if top[1] then id = top[1][1] end
return {id, redis.call('HVALS', KEYS[1])}
"#;
