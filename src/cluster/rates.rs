//! Per-user publish limits across the nodes (`SWITCHYARD_USER_PUBLISH_RATE` is per user, not per
//! user and node): each node keeps checking its local bucket on every publish — synchronously,
//! no round trip on the hot path — and, every `SWITCHYARD_REDIS_RATE_SYNC_MS`, charges what its
//! users took to one bucket per user in Redis and caps each local bucket by what that user has
//! left across the cluster (a debt when the nodes together overspent). A user spread over N
//! nodes thus converges on the one rate; the overshoot is bounded by the burst plus what the
//! nodes hand out within one sync interval. While Redis is unreachable the limits are per node
//! (the charges of that time are dropped, not replayed).
//!
//! Key: `{prefix}:rate:{user}`, a hash (`t` tokens, `ts` milliseconds on Redis's clock), expiring
//! once it would be full again.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use crate::limits::KeyedRate;

use super::RedisLog;

/// Charges `ARGV[1]` tokens to a user's bucket (refilled at `ARGV[2]` a second up to
/// `ARGV[3]`, on Redis's clock) and returns what is left, as a string (may be negative, never
/// below minus the burst: a debt is paid off within twice the burst's time).
///
/// KEYS: the bucket. ARGV: taken, rate, burst.
const CHARGE: &str = r#"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 't', 'ts')
local t = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or ms
t = math.min(burst, t + math.max(0, ms - ts) * rate / 1000) - tonumber(ARGV[1])
t = math.max(t, -burst)
redis.call('HSET', KEYS[1], 't', tostring(t), 'ts', ms)
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - t) / rate * 1000) + 1000)
return tostring(t)
"#;

/// Users charged in one pipeline at most (the rest wait for the next interval).
const BATCH: usize = 1_000;

/// Runs for the life of the node: drains `limit`'s takes every `every` and applies the
/// cluster's answer.
pub async fn sync_user_rates(log: Arc<RedisLog>, limit: Arc<KeyedRate>, every: Duration) {
    if limit.rate() <= 0.0 {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let taken = limit.drain_taken();
        for chunk in taken.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for (user, n) in chunk {
                pipe.cmd("EVAL")
                    .arg(CHARGE)
                    .arg(1)
                    .arg(format!("{}:rate:{user}", log.prefix))
                    .arg(*n)
                    .arg(limit.rate())
                    .arg(limit.burst());
            }
            // On an error the link logs the outage once; these charges are dropped (limits are
            // per node while Redis is away).
            if let Ok(left) = log.link.pipe::<Vec<Value>>(pipe).await {
                for ((user, _), v) in chunk.iter().zip(left) {
                    if let Some(t) = tokens(&v) {
                        limit.cap(user, t);
                    }
                }
            }
        }
    }
}

fn tokens(v: &Value) -> Option<f64> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}
