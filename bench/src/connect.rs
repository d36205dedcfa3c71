//! `connect`: the connection set-up rate (issue #18). N connections (5,000 by default), each a
//! distinct user, connect and join one of N / 4 rooms of four, at most `concurrency` in
//! set-up at a time, and stay: connections accepted and joined per second, and the server's
//! CPU seconds per 1,000 of them.
//!
//! Rooms of four because that is what the seed apps do: a user opens a project (deployment
//! dashboard, install wizard) and joins its room, with the handful of people on the same project.
//! Connection `i` joins room `i % rooms`, so a room's members arrive spread over the whole run,
//! as a project's people log in at different times: on Switchyard nearly every arrival finds a
//! quiet room and is announced to the members already there at once (no batching helps), and
//! the join answer lists them. That is presence on, the real cost of a join. The Node
//! reference and the floor have no presence: they accept, answer the CONNECT / `auth`, and
//! join.
//!
//! Checked: every connection is set up and joined; on Switchyard (`presence: true`), every
//! member also comes to know every other user of its room, from the join answer's `presence`
//! list or a later `presence` `joined` event, within `settle_timeout`. The server's CPU is read
//! when that is so (on the others: when the last join was answered).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Protocol};
use crate::hist::{Histogram, Latency};
use crate::sys;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConnectConfig {
    pub url: String,
    pub server: String,
    pub protocol: Protocol,
    pub conns: usize,
    /// Members per room (the rooms are `conns / size`, rounded up).
    pub size: usize,
    /// Source addresses 127.0.0.1… the connections are spread over (ports and per-address
    /// limits never cap the rate).
    pub sources: usize,
    /// Connections in set-up at once.
    pub concurrency: usize,
    /// Check that every member learns of every other user of its room (Switchyard only: the
    /// others have no presence).
    pub presence: bool,
    /// How long the presence check waits after the last join (no progress meanwhile).
    pub settle_timeout: f64,
    pub server_pid: Option<u32>,
}

impl ConnectConfig {
    pub fn new(url: &str, server: &str, protocol: Protocol, conns: usize) -> Self {
        Self {
            url: url.into(),
            server: server.into(),
            protocol,
            conns,
            size: 4,
            sources: 16,
            concurrency: 200,
            presence: server == "switchyard",
            settle_timeout: 15.0,
            server_pid: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConnectReport {
    pub scenario: String,
    pub server: String,
    pub protocol: Protocol,
    pub conns: usize,
    pub rooms: usize,
    pub size: usize,
    pub concurrency: usize,
    /// Connections set up and joined.
    pub joined: usize,
    /// From the first connect to the last join answer.
    pub connect_s: f64,
    pub conns_per_s: f64,
    /// From the first connect until the presence check held (Switchyard) or the last join.
    pub settled_s: f64,
    pub server_cpu_s: Option<f64>,
    pub cpu_s_per_1k: Option<f64>,
    pub generator_cpu_s: f64,
    /// Each core's busy share over the set-up: shows whether the generator's core was the limit.
    pub core_busy: Vec<f64>,
    /// One connection's set-up, TCP connect to the join answer.
    #[serde(flatten)]
    pub setup: Latency,
    pub presence_checked: bool,
    /// Presence events (`presence` frames) the members received.
    pub presence_events: u64,
    /// Connection attempts the kernel dropped because a listener's accept queue was full, over
    /// the run (machine-wide; each costs its connection a one-second SYN retry).
    pub listen_overflows: Option<u64>,
    pub first_problem: Option<String>,
    pub ok: bool,
}

/// The user ids a presence-bearing frame names: the join answer's `presence` list (native
/// `joined`, Socket.IO join ack `43…[{…}]`) or a `presence` event's `joined` list.
pub fn presence_users(text: &str) -> Vec<String> {
    if !text.contains(r#""presence""#) {
        return Vec::new();
    }
    // Socket.IO packets start with their type and ack id digits; the rest is JSON.
    let json = text.trim_start_matches(|c: char| c.is_ascii_digit());
    let Ok(v) = serde_json::from_str::<Value>(json) else {
        return Vec::new();
    };
    let objects: Vec<&Value> = match &v {
        Value::Array(items) => items.iter().filter(|x| x.is_object()).collect(),
        Value::Object(_) => vec![&v],
        _ => Vec::new(),
    };
    let mut users = Vec::new();
    for o in objects {
        for key in ["presence", "joined"] {
            if let Some(list) = o.get(key).and_then(Value::as_array) {
                users.extend(
                    list.iter()
                        .filter_map(|u| u.get("user").and_then(Value::as_str))
                        .map(String::from),
                );
            }
        }
    }
    users
}

/// What one member knows of its room.
struct Member {
    user: String,
    /// Other users of the room it has heard of.
    known: Mutex<HashSet<String>>,
    /// How many others it should hear of.
    expected: usize,
}

impl Member {
    /// Adds what a frame says; true when this completed the member's view.
    fn learn(&self, text: &str) -> bool {
        let users = presence_users(text);
        if users.is_empty() {
            return false;
        }
        let Ok(mut known) = self.known.lock() else {
            return false;
        };
        let before = known.len() >= self.expected;
        for u in users {
            if u != self.user {
                known.insert(u);
            }
        }
        !before && known.len() >= self.expected
    }
}

struct Shared {
    /// Members whose view of their room is complete.
    complete: AtomicUsize,
    presence_events: AtomicU64,
    /// Signalled whenever a member's view completes: the settle wait waits on it, not a timer.
    progress: tokio::sync::Notify,
    failed: AtomicU64,
    problem: Mutex<Option<String>>,
}

impl Shared {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Relaxed);
        if let Ok(mut p) = self.problem.lock() {
            p.get_or_insert(what);
        }
        self.progress.notify_one();
    }
}

/// Connects as `user`, joins `room` and returns the socket and the join answer's text.
async fn set_up(
    addr: SocketAddr,
    protocol: Protocol,
    source: std::net::Ipv4Addr,
    user: &str,
    room: &str,
    within: Duration,
) -> Result<(client::Ws, String), String> {
    let mut ws = client::connect(addr, protocol, source, Some(user), within).await?;
    let (frame, answer_prefix) = match protocol {
        Protocol::Native => (
            format!(r#"{{"type":"join","room":"{room}","id":"j"}}"#),
            None,
        ),
        Protocol::Sio => (format!(r#"421["join",{{"room":"{room}"}}]"#), Some("431")),
    };
    ws.send(Message::text(frame)).await.map_err(client::err)?;
    let answer = client::wait_for(&mut ws, within, "join answer", |t| match answer_prefix {
        None if t.contains(r#""type":"joined""#) => Some(Ok(t.to_string())),
        None if t.contains(r#""type":"error""#) => Some(Err(format!("join refused: {t}"))),
        Some(p) if t.starts_with(p) => Some(if t.contains(r#""ok":true"#) {
            Ok(t.to_string())
        } else {
            Err(format!("join refused: {t}"))
        }),
        _ => None,
    })
    .await?;
    Ok((ws, answer))
}

pub async fn connect(cfg: &ConnectConfig) -> Result<ConnectReport, String> {
    if cfg.conns == 0 || cfg.size == 0 {
        return Err("connect needs connections and a room size".into());
    }
    let addr = client::parse_addr(&cfg.url)?;
    let nonce = crate::nonce();
    let rooms = cfg.conns.div_ceil(cfg.size);
    // Room r holds connections r, r + rooms, r + 2 × rooms, …
    let room_size = |r: usize| (cfg.conns - r).div_ceil(rooms);
    let shared = Arc::new(Shared {
        complete: AtomicUsize::new(0),
        presence_events: AtomicU64::new(0),
        progress: tokio::sync::Notify::new(),
        failed: AtomicU64::new(0),
        problem: Mutex::new(None),
    });
    let hist = Arc::new(Histogram::default());
    let within = Duration::from_secs(60);

    let cpu0 = cfg.server_pid.and_then(sys::cpu_seconds);
    let gen0 = sys::own_cpu_seconds();
    let cores0 = sys::core_times();
    let overflows0 = sys::listen_overflows();
    let started = Instant::now();
    let mut holders = Vec::with_capacity(cfg.conns);
    let mut connects = futures_util::stream::iter(0..cfg.conns)
        .map(|i| {
            let r = i % rooms;
            let member = Arc::new(Member {
                user: format!("c-{nonce}-{i}"),
                known: Mutex::new(HashSet::new()),
                expected: room_size(r) - 1,
            });
            let room = format!("connect-{nonce}-{r}");
            let src = client::source(i, cfg.sources);
            let hist = hist.clone();
            async move {
                let t0 = Instant::now();
                let r = set_up(addr, cfg.protocol, src, &member.user, &room, within).await;
                if r.is_ok() {
                    hist.record(t0.elapsed().as_micros() as u64);
                }
                (i, member, r)
            }
        })
        .buffer_unordered(cfg.concurrency.max(1));
    while let Some((i, member, r)) = connects.next().await {
        let (mut ws, answer) = match r {
            Ok(x) => x,
            Err(e) => {
                shared.fail(format!("connection {i}: {e}"));
                continue;
            }
        };
        let shared = shared.clone();
        let presence = cfg.presence;
        if presence && (member.learn(&answer) || member.expected == 0) {
            shared.complete.fetch_add(1, Relaxed);
            shared.progress.notify_one();
        }
        holders.push(tokio::spawn(async move {
            // Read everything (presence, pings) so the server never sees a stalled client.
            loop {
                match client::next_text(&mut ws).await {
                    Ok(t) => {
                        if t.contains("presence") {
                            shared.presence_events.fetch_add(1, Relaxed);
                            if presence && member.learn(&t) {
                                shared.complete.fetch_add(1, Relaxed);
                                shared.progress.notify_one();
                            }
                        }
                    }
                    Err(e) => {
                        shared.fail(format!("connection {i} after joining: {e}"));
                        return;
                    }
                }
            }
        }));
    }
    drop(connects);
    let connect_s = started.elapsed().as_secs_f64();
    let joined = holders.len();

    // The presence check: until every member knows its room, a failure, or no progress for
    // `settle_timeout`.
    let mut problem = None;
    if cfg.presence {
        let stall = Duration::from_secs_f64(cfg.settle_timeout);
        let mut last = (shared.complete.load(Relaxed), Instant::now());
        loop {
            let done = shared.complete.load(Relaxed);
            if done >= joined || shared.failed.load(Relaxed) > 0 {
                break;
            }
            if done != last.0 {
                last = (done, Instant::now());
            }
            let Some(left) = stall.checked_sub(last.1.elapsed()).filter(|l| !l.is_zero()) else {
                problem = Some(format!(
                    "{} of {joined} members did not learn of every room-mate within {stall:?}",
                    joined - done
                ));
                break;
            };
            let _ = tokio::time::timeout(left, shared.progress.notified()).await;
        }
    }
    let settled_s = started.elapsed().as_secs_f64();
    let server_cpu_s = sys::cpu_delta(cpu0, cfg.server_pid.and_then(sys::cpu_seconds));
    let generator_cpu_s = crate::round3(sys::own_cpu_seconds() - gen0);
    let core_busy = sys::core_busy(&cores0, &sys::core_times());
    let listen_overflows = overflows0
        .zip(sys::listen_overflows())
        .map(|(a, b)| b.saturating_sub(a));
    for h in &holders {
        h.abort();
    }
    let failed = shared.failed.load(Relaxed);
    let problem = shared
        .problem
        .lock()
        .ok()
        .and_then(|p| p.clone())
        .or(problem);
    Ok(ConnectReport {
        scenario: "connect".into(),
        server: cfg.server.clone(),
        protocol: cfg.protocol,
        conns: cfg.conns,
        rooms,
        size: cfg.size,
        concurrency: cfg.concurrency,
        joined,
        connect_s: crate::round3(connect_s),
        conns_per_s: crate::round3(joined as f64 / connect_s.max(1e-9)),
        settled_s: crate::round3(settled_s),
        cpu_s_per_1k: server_cpu_s
            .filter(|_| joined > 0)
            .map(|c| crate::round3(c * 1000.0 / joined as f64)),
        server_cpu_s,
        generator_cpu_s,
        core_busy,
        setup: hist.latency(),
        presence_checked: cfg.presence,
        presence_events: shared.presence_events.load(Relaxed),
        listen_overflows,
        ok: problem.is_none() && failed == 0 && joined == cfg.conns,
        first_problem: problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_presence_of_both_protocols() {
        let joined = r#"{"type":"joined","id":"j","room":"r","epoch":"e","offset":0,"recovered":false,"presence":[{"user":"a","name":"a"},{"user":"b"}],"presence_count":2}"#;
        assert_eq!(presence_users(joined), ["a", "b"]);
        let event = r#"{"type":"presence","room":"r","joined":[{"user":"c","name":"c"}]}"#;
        assert_eq!(presence_users(event), ["c"]);
        let ack = r#"431[{"ok":true,"room":"r","presence":[{"user":"a"}],"presence_count":1}]"#;
        assert_eq!(presence_users(ack), ["a"]);
        let sio_event = r#"42["presence",{"room":"r","joined":[{"user":"d"}]}]"#;
        assert_eq!(presence_users(sio_event), ["d"]);
        let left = r#"{"type":"presence","room":"r","left":[{"user":"c"}]}"#;
        assert!(presence_users(left).is_empty());
        assert!(presence_users(r#"{"type":"joined"}"#).is_empty());
    }

    #[test]
    fn a_member_completes_once() {
        let m = Member {
            user: "me".into(),
            known: Mutex::new(HashSet::new()),
            expected: 2,
        };
        assert!(!m.learn(r#"{"type":"joined","presence":[{"user":"me"},{"user":"a"}]}"#));
        assert!(m.learn(r#"{"type":"presence","joined":[{"user":"b"}]}"#));
        assert!(!m.learn(r#"{"type":"presence","joined":[{"user":"c"}]}"#));
    }
}
