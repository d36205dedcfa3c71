//! Abuse limits: token buckets for rates, a gate counting connections per client address, and
//! one counting them per user.
//!
//! Everything here is in memory and per node. Keys are bounded: idle buckets are dropped when a
//! map grows, so a scan over many user ids or addresses cannot grow memory without bound. On a
//! cluster a [`KeyedRate`] made [`KeyedRate::shared`] also counts what it hands out, and the
//! cluster's account (`cluster::rates`) caps each key's bucket by what the key has left across
//! the nodes: the check itself stays local and synchronous.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            tokens: burst,
            last: Instant::now(),
            rate,
            burst,
        }
    }

    /// Takes one token if there is one. A rate of 0 means unlimited.
    pub fn try_take(&mut self) -> bool {
        self.take().is_ok()
    }

    /// Takes one token, or says how long until there is one (what a `Retry-After` says).
    pub fn take(&mut self) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }

    /// At most `tokens` left (may be negative: a debt the rate pays off before the next take).
    fn cap(&mut self, tokens: f64) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate)
            .min(self.burst)
            .min(tokens);
    }

    /// Full again (nothing to remember about this key).
    fn idle(&self) -> bool {
        self.tokens + self.last.elapsed().as_secs_f64() * self.rate >= self.burst
    }
}

/// Keys tracked before idle ones are swept.
const SWEEP_AT: usize = 10_000;

/// When a keyed map is swept of its idle keys. Past a sweep that left most keys (all of them
/// active), the next waits until the map has doubled: sweeping on every check once 10,000 keys
/// were all busy cost a scan of the whole map per check. Memory stays bounded by the active
/// keys (each a real user or address within its rate window) plus at most as many idle ones.
struct Sweeps(std::sync::atomic::AtomicUsize);

impl Sweeps {
    fn new() -> Self {
        Self(std::sync::atomic::AtomicUsize::new(SWEEP_AT))
    }

    /// Sweeps `map` with `keep` if it has grown to the threshold (called under the map's lock).
    fn maybe<K, V>(&self, map: &mut HashMap<K, V>, keep: impl FnMut(&K, &mut V) -> bool) {
        use std::sync::atomic::Ordering::Relaxed;
        if map.len() < self.0.load(Relaxed) {
            return;
        }
        map.retain(keep);
        self.0.store((map.len() * 2).max(SWEEP_AT), Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single map operation: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keys whose takes are counted between two drains, at most (a cluster's account then misses
/// the rest until the next drain; their local buckets still hold).
const TAKEN_MAX: usize = 100_000;

/// Rate limits shared by all connections of a key (a user id).
pub struct KeyedRate {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, TokenBucket>>,
    sweeps: Sweeps,
    /// Tokens taken per key since the last [`KeyedRate::drain_taken`] (shared ones only).
    taken: Option<Mutex<HashMap<String, u32>>>,
}

impl KeyedRate {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
            sweeps: Sweeps::new(),
            taken: None,
        }
    }

    /// A limit kept across a cluster's nodes: as [`KeyedRate::new`], and it counts its takes
    /// for the cluster's account.
    pub fn shared(rate: f64, burst: f64) -> Self {
        Self {
            taken: Some(Mutex::new(HashMap::new())),
            ..Self::new(rate, burst)
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    pub fn burst(&self) -> f64 {
        self.burst
    }

    /// The takes counted since the last call, per key.
    pub fn drain_taken(&self) -> Vec<(String, u32)> {
        match &self.taken {
            None => Vec::new(),
            Some(t) => lock(t).drain().collect(),
        }
    }

    /// What `key` has left across the cluster: its bucket here holds no more than that.
    pub fn cap(&self, key: &str, tokens: f64) {
        if let Some(bucket) = lock(&self.buckets).get_mut(key) {
            bucket.cap(tokens);
        }
    }

    pub fn try_take(&self, key: &str) -> bool {
        self.take(key).is_ok()
    }

    /// Takes one token from `key`'s bucket, or says how long until it has one.
    pub fn take(&self, key: &str) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let taken = {
            let mut map = lock(&self.buckets);
            self.sweeps.maybe(&mut map, |_, b| !b.idle());
            match map.get_mut(key) {
                Some(bucket) => bucket.take(),
                None => map
                    .entry(key.to_string())
                    .or_insert_with(|| TokenBucket::new(self.rate, self.burst))
                    .take(),
            }
        };
        if let (Ok(()), Some(t)) = (&taken, &self.taken) {
            let mut t = lock(t);
            let full = t.len() >= TAKEN_MAX;
            match t.get_mut(key) {
                Some(n) => *n = n.saturating_add(1),
                None if !full => {
                    t.insert(key.to_string(), 1);
                }
                None => {}
            }
        }
        taken
    }
}

/// Counts open connections per address and paces new ones.
pub struct ConnectionGate {
    max_per_ip: usize,
    rate: f64,
    burst: f64,
    state: Mutex<HashMap<IpAddr, (usize, TokenBucket)>>,
    sweeps: Sweeps,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateRefusal {
    TooMany,
    TooFast,
}

impl ConnectionGate {
    pub fn new(max_per_ip: usize, rate: f64, burst: f64) -> Arc<Self> {
        Arc::new(Self {
            max_per_ip,
            rate,
            burst,
            state: Mutex::new(HashMap::new()),
            sweeps: Sweeps::new(),
        })
    }

    /// Admits a connection from `ip`; the slot is given back when the returned guard drops.
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<ConnectionSlot, GateRefusal> {
        let Some(ip) = ip else {
            return Ok(ConnectionSlot {
                gate: None,
                ip: None,
                user: None,
            });
        };
        let mut map = lock(&self.state);
        self.sweeps
            .maybe(&mut map, |_, (open, bucket)| *open > 0 || !bucket.idle());
        let (open, bucket) = map
            .entry(ip)
            .or_insert_with(|| (0, TokenBucket::new(self.rate, self.burst)));
        if self.max_per_ip > 0 && *open >= self.max_per_ip {
            return Err(GateRefusal::TooMany);
        }
        if !bucket.try_take() {
            return Err(GateRefusal::TooFast);
        }
        *open += 1;
        Ok(ConnectionSlot {
            gate: Some(self.clone()),
            ip: Some(ip),
            user: None,
        })
    }

    pub fn open_from(&self, ip: IpAddr) -> usize {
        lock(&self.state).get(&ip).map(|(n, _)| *n).unwrap_or(0)
    }
}

/// One admitted connection; dropping it frees the slot (and its user's, when it holds one).
pub struct ConnectionSlot {
    gate: Option<Arc<ConnectionGate>>,
    ip: Option<IpAddr>,
    user: Option<UserSlot>,
}

impl ConnectionSlot {
    /// Also holds the connection's place in its user's count.
    pub fn with_user(mut self, user: Option<UserSlot>) -> Self {
        self.user = user;
        self
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let (Some(gate), Some(ip)) = (&self.gate, self.ip) {
            let mut map = lock(&gate.state);
            if let Some((open, _)) = map.get_mut(&ip) {
                *open = open.saturating_sub(1);
            }
        }
    }
}

/// Counts open connections per verified user (`SWITCHYARD_MAX_CONNECTIONS_PER_USER`): what bounds
/// the memory one token holder can pin across connections, each of which may hold a full
/// outbound queue until it is evicted. Only identities the server verified count (a token, or a
/// backend hook's answer): in open mode a client declares any user it likes, so a bound per user
/// would stop no one, and the per-address gate is the bound there.
pub struct UserGate {
    max: usize,
    /// Users with at least one open connection (an entry leaves with its last connection: the
    /// map holds no more users than there are connections).
    open: Mutex<HashMap<Arc<str>, usize>>,
}

impl UserGate {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more connection of `identity`'s user, held until the returned slot drops;
    /// `Ok(None)` for an identity that is not counted (open mode) or when there is no limit.
    pub fn admit(
        self: &Arc<Self>,
        identity: &crate::auth::Identity,
    ) -> Result<Option<UserSlot>, crate::error_code::Refusal> {
        if self.max == 0 || identity.is_open() {
            return Ok(None);
        }
        let user: Arc<str> = Arc::from(identity.user.id.as_str());
        let mut open = lock(&self.open);
        let n = open.entry(user.clone()).or_insert(0);
        if *n >= self.max {
            // Said once per refusal, for the operator: an app that gives many people one
            // identity (a public page's shared `guest`) needs the bound raised or off.
            log::warn!(
                "user {}: connection refused at {} open (SWITCHYARD_MAX_CONNECTIONS_PER_USER)",
                identity.user.id,
                n
            );
            return Err(crate::error_code::Refusal::new(
                crate::error_code::ErrorCode::TooManyConnections,
                format!(
                    "user {} already has {} open connections on this server (at most {})",
                    identity.user.id, n, self.max
                ),
            ));
        }
        *n += 1;
        Ok(Some(UserSlot {
            gate: self.clone(),
            user,
        }))
    }

    /// Open connections of `user` counted here.
    #[cfg(test)]
    fn open_for(&self, user: &str) -> usize {
        lock(&self.open).get(user).copied().unwrap_or(0)
    }
}

/// One counted connection of a user; dropping it frees the place.
pub struct UserSlot {
    gate: Arc<UserGate>,
    user: Arc<str>,
}

impl UserSlot {
    pub fn user(&self) -> &str {
        &self.user
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.gate.open);
        if let Some(n) = open.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_limit_counts_its_takes_and_obeys_the_clusters_cap() {
        let r = KeyedRate::shared(10.0, 5.0);
        for _ in 0..3 {
            assert!(r.try_take("u"));
        }
        assert!(r.try_take("v"));
        let mut taken = r.drain_taken();
        taken.sort();
        assert_eq!(taken, vec![("u".into(), 3), ("v".into(), 1)]);
        assert!(r.drain_taken().is_empty());
        // The other nodes spent u's budget: a debt of 2 tokens is 0.3 s at 10/s.
        r.cap("u", -2.0);
        let wait = r.take("u").unwrap_err();
        assert!(wait > Duration::from_millis(250), "{wait:?}");
        assert!(r.try_take("v"), "other keys are untouched");
        // A local limit counts nothing.
        let local = KeyedRate::new(10.0, 5.0);
        assert!(local.try_take("u"));
        assert!(local.drain_taken().is_empty());
    }

    #[test]
    fn a_user_gate_counts_verified_users_and_frees_a_place_with_its_slot() {
        let gate = UserGate::new(2);
        let alice = crate::auth::Identity::verified_for_tests("alice");
        let a = gate.admit(&alice).unwrap().expect("counted");
        let _b = gate.admit(&alice).unwrap().expect("counted");
        let refused = gate.admit(&alice).err().expect("a third is refused");
        assert_eq!(
            refused.code,
            crate::error_code::ErrorCode::TooManyConnections
        );
        // Another user has places of their own.
        let bob = crate::auth::Identity::verified_for_tests("bob");
        assert!(gate.admit(&bob).unwrap().is_some());
        assert_eq!(gate.open_for("bob"), 0, "bob's slot dropped at once");
        drop(a);
        assert_eq!(gate.open_for("alice"), 1);
        assert!(gate.admit(&alice).unwrap().is_some());
        // Declared identities (open mode) are not counted; no limit counts nothing.
        let open = crate::auth::Identity::open("alice".into(), None);
        for _ in 0..5 {
            assert!(gate.admit(&open).unwrap().is_none());
        }
        assert!(UserGate::new(0).admit(&alice).unwrap().is_none());
        assert_eq!(gate.open_for("alice"), 1, "{:?}", lock(&gate.open));
    }

    #[test]
    fn buckets_allow_the_burst_then_the_rate() {
        let mut b = TokenBucket::new(1.0, 3.0);
        assert!(b.try_take() && b.try_take() && b.try_take());
        assert!(!b.try_take());
        let wait = b.take().unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        let mut unlimited = TokenBucket::new(0.0, 0.0);
        assert!((0..1000).all(|_| unlimited.try_take()));
    }

    #[test]
    fn the_gate_counts_open_connections_per_address() {
        let gate = ConnectionGate::new(2, 0.0, 0.0);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let a = gate.admit(Some(ip)).unwrap();
        let _b = gate.admit(Some(ip)).unwrap();
        assert_eq!(gate.admit(Some(ip)).err(), Some(GateRefusal::TooMany));
        drop(a);
        let _again = gate.admit(Some(ip)).unwrap();
        assert_eq!(gate.open_from(ip), 2);
        let paced = ConnectionGate::new(0, 1.0, 1.0);
        let _c = paced.admit(Some(ip)).unwrap();
        assert_eq!(paced.admit(Some(ip)).err(), Some(GateRefusal::TooFast));
    }

    #[test]
    fn with_every_key_busy_the_map_is_not_swept_on_every_check() {
        // A rate so slow that no bucket refills: every key stays busy (not idle).
        let limit = KeyedRate::new(0.000_001, 5.0);
        for i in 0..SWEEP_AT + 10 {
            assert!(limit.try_take(&format!("user-{i}")));
        }
        // The sweep at 10,000 kept everything and moved the next one to twice that.
        let next = limit.sweeps.0.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(next, SWEEP_AT * 2);
        assert_eq!(lock(&limit.buckets).len(), SWEEP_AT + 10);
        // Idle keys still go at the next sweep: a fast rate refills at once.
        let quick = KeyedRate::new(1e9, 1.0);
        for i in 0..SWEEP_AT + 1 {
            assert!(quick.try_take(&format!("user-{i}")));
        }
        assert!(lock(&quick.buckets).len() < 10, "idle keys swept");
    }
}
