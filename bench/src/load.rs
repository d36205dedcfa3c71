//! The engine under `fanout` and `rooms`: rooms of members, each member a task that reads its
//! socket, checks every `tick` (exactly once, in order, per sender stream) and records its
//! latency; publishers get "publish now" from a scheduler that keeps a fixed rate or, at max
//! rate, keeps at most `window` messages per member in flight (so the generator never falls
//! behind into false "missing"). Phases run one after another on the same connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Protocol, Ws};
use crate::hist::{Histogram, Latency};
use crate::sys;

/// What to connect: `rooms` × `room_size` members, the first `publishers_per_room` of each room
/// able to publish, `streams` sender streams checked per member.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub rooms: Vec<String>,
    pub room_size: usize,
    pub publishers_per_room: usize,
    pub streams: usize,
    pub payload: usize,
    pub sources: usize,
    pub concurrency: usize,
    pub connect_timeout: Duration,
    pub server_pid: Option<u32>,
    /// More processes whose CPU counts as the server's (a cluster's other nodes and Redis).
    pub extra_pids: Vec<u32>,
    /// Where members that do not publish connect, round-robin (a cluster's other nodes, so
    /// every delivery crosses nodes); empty: `addr`, like the publishers.
    pub others: Vec<SocketAddr>,
    /// One identity shared by every member (None: each connection anonymous, its own user).
    pub user: Option<String>,
}

impl LoadSpec {
    /// Where member `j` (of rooms of `room_size`) connects.
    fn addr_of(&self, j: usize) -> SocketAddr {
        let k = j % self.room_size;
        if k < self.publishers_per_room || self.others.is_empty() {
            self.addr
        } else {
            self.others[j % self.others.len()]
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// Publishes a second, over all publishers.
    Rate(f64),
    /// As fast as the in-flight window allows.
    Max,
}

/// One measured phase: who publishes (member index, stream id), how fast, for how long.
#[derive(Clone, Debug)]
pub struct Phase {
    pub pace: Pace,
    /// Messages per member allowed in flight (published, not yet received by every member).
    pub window: u64,
    pub duration: Duration,
    pub publishers: Vec<(usize, u32)>,
    /// How long to wait for the last deliveries, and for any progress while the window is full.
    pub stall_timeout: Duration,
}

/// The outcome of a phase. `ok` is the smoke assertion: every member got every message of every
/// stream exactly once and in order, no connection failed, nothing stalled.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PhaseResult {
    pub duration_s: f64,
    pub sent: u64,
    pub publishes_per_s: f64,
    pub delivered: u64,
    pub expected: u64,
    pub wall_s: f64,
    pub deliveries_per_s: f64,
    #[serde(flatten)]
    pub latency: Latency,
    pub server_cpu_s: Option<f64>,
    pub deliveries_per_cpu_s: Option<f64>,
    pub cpu_s_per_million: Option<f64>,
    pub generator_cpu_s: f64,
    /// Each core's busy share over the phase from /proc/stat (kernel softirq work included,
    /// which no process is charged for): shows whether the generator's core was the limit.
    pub core_busy: Vec<f64>,
    pub members_broken: usize,
    pub members_failed: usize,
    pub first_problem: Option<String>,
    pub ok: bool,
}

struct Shared {
    protocol: Protocol,
    pad: String,
    delivered: AtomicU64,
    /// The scheduler wants a wake-up once `delivered` reaches this.
    wake_at: AtomicU64,
    notify: Notify,
    failures: AtomicU64,
    hist: Histogram,
}

impl Shared {
    fn wake(&self) {
        self.wake_at.store(u64::MAX, Relaxed);
        self.notify.notify_one();
    }
}

struct RoomState {
    name: String,
    size: usize,
    /// Messages sent so far per stream; the next one's sequence number.
    sent: Box<[AtomicU64]>,
}

#[derive(Default)]
struct Slot {
    received: AtomicU64,
    broken: AtomicU64,
    failed: AtomicBool,
    next: Box<[AtomicU64]>,
    problem: Mutex<Option<String>>,
}

impl Slot {
    fn note(&self, what: impl FnOnce() -> String) {
        if let Ok(mut p) = self.problem.lock() {
            if p.is_none() {
                *p = Some(what());
            }
        }
    }
}

struct Member {
    room: usize,
    slot: Arc<Slot>,
    out: Option<mpsc::UnboundedSender<u32>>,
    task: JoinHandle<()>,
}

/// Connected rooms, ready for phases. Dropping it closes every connection.
pub struct Load {
    shared: Arc<Shared>,
    rooms: Vec<Arc<RoomState>>,
    members: Vec<Member>,
    pub connect_s: f64,
    pub connect_server_cpu_s: Option<f64>,
    pids: Pids,
}

/// The processes whose CPU time is the server's.
struct Pids {
    main: Option<u32>,
    extra: Vec<u32>,
}

impl Pids {
    /// Their CPU seconds together; None when the main one is unknown or any cannot be read.
    fn cpu(&self) -> Option<f64> {
        let mut total = sys::cpu_seconds(self.main?)?;
        for pid in &self.extra {
            total += sys::cpu_seconds(*pid)?;
        }
        Some(total)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for m in &self.members {
            m.task.abort();
        }
    }
}

fn frame_is_error(protocol: Protocol, t: &str) -> bool {
    match protocol {
        Protocol::Native => t.starts_with(r#"{"type":"error""#),
        Protocol::Sio => t.starts_with(r#"42["error""#) || t.starts_with("44"),
    }
}

async fn member_loop(
    ws: &mut Ws,
    room: &RoomState,
    shared: &Shared,
    slot: &Slot,
    mut out: Option<mpsc::UnboundedReceiver<u32>>,
) -> Result<(), String> {
    let protocol = shared.protocol;
    loop {
        let msg = match out.as_mut() {
            Some(rx) => tokio::select! {
                biased;
                m = ws.next() => m,
                p = rx.recv() => {
                    match p {
                        Some(p) => {
                            let seq = &room.sent[p as usize];
                            let i = seq.load(Relaxed);
                            let frame = client::publish_frame(
                                protocol, &room.name, sys::now_micros(), p, i, &shared.pad,
                            );
                            ws.send(Message::text(frame))
                                .await
                                .map_err(|e| format!("publish: {e}"))?;
                            seq.store(i + 1, Relaxed);
                        }
                        None => out = None,
                    }
                    continue;
                }
            },
            None => ws.next().await,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(c))) => return Err(format!("closed by the server: {c:?}")),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("read: {e}")),
            None => return Err("connection ended".into()),
        };
        if let Some(tick) = client::scan_tick(&text) {
            let now = sys::now_micros();
            shared.hist.record(now.saturating_sub(tick.t));
            match slot.next.get(tick.p as usize) {
                Some(next) => {
                    let expected = next.load(Relaxed);
                    if tick.i != expected {
                        slot.broken.fetch_add(1, Relaxed);
                        slot.note(|| {
                            format!(
                                "stream {}: got #{} where #{expected} was due ({})",
                                tick.p,
                                tick.i,
                                if tick.i < expected {
                                    "duplicate or reordered"
                                } else {
                                    "gap"
                                }
                            )
                        });
                    }
                    if tick.i >= expected {
                        next.store(tick.i + 1, Relaxed);
                    }
                }
                None => {
                    slot.broken.fetch_add(1, Relaxed);
                    slot.note(|| format!("unknown stream {}", tick.p));
                }
            }
            slot.received.fetch_add(1, Relaxed);
            let d = shared.delivered.fetch_add(1, Relaxed) + 1;
            if d >= shared.wake_at.load(Relaxed) {
                shared.wake();
            }
        } else if protocol == Protocol::Sio && text.as_str() == "2" {
            ws.send(Message::text("3"))
                .await
                .map_err(|e| format!("pong: {e}"))?;
        } else if frame_is_error(protocol, &text) {
            // A refused publish would otherwise only show up as a stall.
            slot.note(|| format!("server error frame: {}", text.as_str()));
            shared.failures.fetch_add(1, Relaxed);
            shared.wake();
        }
    }
}

impl Load {
    /// Connects and joins every member, `concurrency` at a time; the first failure ends it.
    pub async fn connect(spec: &LoadSpec) -> Result<Load, String> {
        let shared = Arc::new(Shared {
            protocol: spec.protocol,
            pad: "x".repeat(spec.payload),
            delivered: AtomicU64::new(0),
            wake_at: AtomicU64::new(u64::MAX),
            notify: Notify::new(),
            failures: AtomicU64::new(0),
            hist: Histogram::default(),
        });
        let rooms: Vec<Arc<RoomState>> = spec
            .rooms
            .iter()
            .map(|name| {
                Arc::new(RoomState {
                    name: name.clone(),
                    size: spec.room_size,
                    sent: (0..spec.streams).map(|_| AtomicU64::new(0)).collect(),
                })
            })
            .collect();
        let total = rooms.len() * spec.room_size;
        let pids = Pids {
            main: spec.server_pid,
            extra: spec.extra_pids.clone(),
        };
        let cpu0 = pids.cpu();
        let started = Instant::now();
        let mut members: Vec<Option<Member>> = (0..total).map(|_| None).collect();
        let mut connects = futures_util::stream::iter(0..total)
            .map(|j| {
                let name = rooms[j / spec.room_size].name.clone();
                let src = client::source(j, spec.sources);
                let user = spec.user.as_deref();
                async move {
                    let within = spec.connect_timeout;
                    let r =
                        client::member(spec.addr_of(j), spec.protocol, src, user, &name, within)
                            .await;
                    (j, r)
                }
            })
            .buffer_unordered(spec.concurrency.max(1));
        while let Some((j, r)) = connects.next().await {
            let mut ws = r.map_err(|e| format!("member {j} of {total}: {e}"))?;
            let room_index = j / spec.room_size;
            let slot = Arc::new(Slot {
                next: (0..spec.streams).map(|_| AtomicU64::new(0)).collect(),
                ..Slot::default()
            });
            let (out, rx) = if j % spec.room_size < spec.publishers_per_room {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            let (room, shared2, slot2) = (rooms[room_index].clone(), shared.clone(), slot.clone());
            let task = tokio::spawn(async move {
                if let Err(e) = member_loop(&mut ws, &room, &shared2, &slot2, rx).await {
                    slot2.failed.store(true, Relaxed);
                    slot2.note(|| e);
                    shared2.failures.fetch_add(1, Relaxed);
                    shared2.wake();
                }
            });
            members[j] = Some(Member {
                room: room_index,
                slot,
                out,
                task,
            });
        }
        drop(connects);
        let members: Vec<Member> = members.into_iter().flatten().collect();
        Ok(Load {
            shared,
            rooms,
            members,
            connect_s: crate::round3(started.elapsed().as_secs_f64()),
            connect_server_cpu_s: sys::cpu_delta(cpu0, pids.cpu()),
            pids,
        })
    }

    pub fn connections(&self) -> usize {
        self.members.len()
    }

    /// Waits until `delivered` reaches `target` (true), a member fails, or nothing arrives for
    /// `stall` (false).
    async fn wait_delivered(&self, target: u64, stall: Duration) -> bool {
        let s = &self.shared;
        let mut last = s.delivered.load(Relaxed);
        let mut since = Instant::now();
        loop {
            let now = s.delivered.load(Relaxed);
            if now >= target {
                return true;
            }
            if s.failures.load(Relaxed) > 0 {
                return false;
            }
            if now != last {
                last = now;
                since = Instant::now();
            }
            let left = match stall.checked_sub(since.elapsed()) {
                Some(l) if !l.is_zero() => l,
                _ => return false,
            };
            s.wake_at.store(target, Relaxed);
            if s.delivered.load(Relaxed) >= target {
                continue;
            }
            // Wake at least every 100 ms to see progress towards the stall deadline.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), s.notify.notified())
                .await;
        }
    }

    /// Runs one phase and checks every member.
    pub async fn run(&self, phase: &Phase) -> PhaseResult {
        let s = &self.shared;
        s.hist.reset();
        let total_members = self.members.len() as u64;
        let limit = phase.window.max(1) * total_members;
        let delivered0 = s.delivered.load(Relaxed);
        let sent0: u64 = self.sent_total();
        let cpu0 = self.pids.cpu();
        let gen0 = sys::own_cpu_seconds();
        let cores0 = sys::core_times();
        let mut problem: Option<String> = None;
        let start = Instant::now();
        let end = start + phase.duration;
        let (mut scheduled, mut due_deliveries) = (0u64, 0u64);
        'publishing: while !phase.publishers.is_empty() {
            let now = Instant::now();
            if now >= end {
                break;
            }
            let due = match phase.pace {
                Pace::Rate(r) => ((now - start).as_secs_f64() * r) as u64 + 1,
                Pace::Max => scheduled + 1,
            };
            while scheduled < due {
                if due_deliveries - (s.delivered.load(Relaxed) - delivered0) > limit {
                    let target = delivered0 + due_deliveries - limit;
                    if !self.wait_delivered(target, phase.stall_timeout).await {
                        problem = Some(format!(
                            "deliveries stalled with the window full ({} of {due_deliveries})",
                            s.delivered.load(Relaxed) - delivered0
                        ));
                        break 'publishing;
                    }
                    if Instant::now() >= end {
                        break 'publishing;
                    }
                }
                let (m, stream) =
                    phase.publishers[(scheduled % phase.publishers.len() as u64) as usize];
                let member = &self.members[m];
                let Some(out) = &member.out else {
                    problem = Some(format!("member {m} cannot publish"));
                    break 'publishing;
                };
                if out.send(stream).is_err() {
                    problem = Some(format!("publisher {m} has failed"));
                    break 'publishing;
                }
                scheduled += 1;
                due_deliveries += self.rooms[member.room].size as u64;
            }
            match phase.pace {
                Pace::Rate(r) => {
                    let next = start + Duration::from_secs_f64(scheduled as f64 / r);
                    tokio::time::sleep_until(next.min(end).into()).await;
                }
                Pace::Max => tokio::task::yield_now().await,
            }
        }
        let publish_s = start.elapsed().as_secs_f64();
        let drained = self
            .wait_delivered(delivered0 + due_deliveries, phase.stall_timeout)
            .await;
        if !drained && problem.is_none() {
            problem = Some(format!(
                "not every delivery arrived: {} of {due_deliveries} after waiting {:?} without progress",
                s.delivered.load(Relaxed) - delivered0,
                phase.stall_timeout
            ));
        }
        let wall_s = start.elapsed().as_secs_f64();
        let server_cpu_s = sys::cpu_delta(cpu0, self.pids.cpu());
        let generator_cpu_s = crate::round3(sys::own_cpu_seconds() - gen0);
        let core_busy = sys::core_busy(&cores0, &sys::core_times());
        let latency = s.hist.latency();
        let delivered = s.delivered.load(Relaxed) - delivered0;
        let sent = self.sent_total() - sent0;
        if sent != scheduled && problem.is_none() {
            problem = Some(format!("{scheduled} publishes scheduled, {sent} sent"));
        }

        // Every member, every stream of its room: exactly what was sent, in order.
        let (mut broken, mut failed) = (0usize, 0usize);
        for (j, m) in self.members.iter().enumerate() {
            let room = &self.rooms[m.room];
            let mut bad = m.slot.broken.load(Relaxed) > 0;
            for (p, next) in m.slot.next.iter().enumerate() {
                let (got, want) = (next.load(Relaxed), room.sent[p].load(Relaxed));
                if got != want {
                    bad = true;
                    m.slot
                        .note(|| format!("stream {p}: received up to #{got} of {want}"));
                }
            }
            if m.slot.failed.load(Relaxed) {
                failed += 1;
            } else if bad {
                broken += 1;
            }
            if (bad || m.slot.failed.load(Relaxed)) && problem.is_none() {
                let what = m.slot.problem.lock().ok().and_then(|p| p.clone());
                problem = Some(format!(
                    "member {j} (room {}): {}",
                    room.name,
                    what.unwrap_or_default()
                ));
            }
        }
        let ok = problem.is_none() && broken == 0 && failed == 0 && delivered == due_deliveries;
        let per_cpu = server_cpu_s.filter(|c| *c > 0.0);
        PhaseResult {
            duration_s: crate::round3(publish_s),
            sent,
            publishes_per_s: crate::round3(sent as f64 / publish_s.max(1e-9)),
            delivered,
            expected: due_deliveries,
            wall_s: crate::round3(wall_s),
            deliveries_per_s: (delivered as f64 / wall_s.max(1e-9)).round(),
            latency,
            server_cpu_s,
            deliveries_per_cpu_s: per_cpu.map(|c| (delivered as f64 / c).round()),
            cpu_s_per_million: per_cpu
                .filter(|_| delivered > 0)
                .map(|c| crate::round3(c * 1e6 / delivered as f64)),
            generator_cpu_s,
            core_busy,
            members_broken: broken,
            members_failed: failed,
            first_problem: problem,
            ok,
        }
    }

    fn sent_total(&self) -> u64 {
        self.rooms
            .iter()
            .flat_map(|r| r.sent.iter())
            .map(|a| a.load(Relaxed))
            .sum()
    }
}
