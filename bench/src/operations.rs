//! `operations` (Switchyard only: the Node reference has no operations): N concurrent external
//! operations, each reported `rate` times a second by worker connections over `/ws` (one
//! `operation.progress` and one `operation.log` frame per report, each carrying `@@<µs>:<seq>`),
//! one watcher per operation joined to `operation:<id>`. Reports report-to-watcher latency,
//! database writes and transactions a second (`switchyard_operation_writes_total` and
//! `switchyard_operation_write_transactions_total` from `/metrics`) and server CPU; on
//! PostgreSQL (`database: postgres`) also the CPU of the database's backends, which run outside
//! the server process.
//!
//! Checks: every watcher gets every log line exactly once and in order; progress events are in
//! order without duplicates and end with the last report (pure progress may be conflated for a
//! slow watcher by design, see docs/operations.md, so gaps there are counted, not failures).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Protocol};
use crate::hist::{Histogram, Latency};
use crate::sys;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OperationsConfig {
    pub url: String,
    pub server: String,
    /// An `external` kind declared in the server's operations file.
    pub kind: String,
    pub operations: usize,
    /// Worker connections the operations are spread over.
    pub workers: usize,
    /// Reports a second per operation (each: one progress and one log frame).
    pub rate: f64,
    pub duration: f64,
    pub sources: usize,
    pub concurrency: usize,
    pub server_pid: Option<u32>,
    pub stall_timeout: f64,
    /// What the server stores operations in, as the report names it: `sqlite` or `postgres`
    /// (the generator cannot tell; the script that started the server says).
    #[serde(default = "sqlite")]
    pub database: String,
    /// A PostgreSQL database's processes run outside the server process, so its CPU figure
    /// misses them: the CPU of every process whose command line holds this (the database name
    /// picks its backends) is summed over the phase too.
    #[serde(default)]
    pub db_processes: Option<String>,
}

fn sqlite() -> String {
    "sqlite".into()
}

impl OperationsConfig {
    pub fn new(url: &str, kind: &str, operations: usize) -> Self {
        Self {
            url: url.into(),
            server: "switchyard".into(),
            kind: kind.into(),
            operations,
            workers: 20,
            rate: 10.0,
            duration: 15.0,
            sources: 8,
            concurrency: 100,
            server_pid: None,
            stall_timeout: 15.0,
            database: sqlite(),
            db_processes: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OperationsReport {
    pub scenario: String,
    pub server: String,
    pub protocol: Protocol,
    /// `sqlite` or `postgres`.
    #[serde(default = "sqlite")]
    pub database: String,
    pub operations: usize,
    pub workers: usize,
    pub rate: f64,
    pub setup_s: f64,
    pub duration_s: f64,
    pub reports_sent: u64,
    pub reports_per_s: f64,
    pub log_lines_received: u64,
    pub progress_received: u64,
    /// Progress events a watcher did not get because a newer one replaced it (allowed).
    pub progress_conflated: u64,
    #[serde(flatten)]
    pub latency: Latency,
    pub db_writes: Option<u64>,
    pub db_writes_per_s: Option<f64>,
    /// Database transactions that wrote operation state (several writes each: group commit).
    #[serde(default)]
    pub db_transactions: Option<u64>,
    #[serde(default)]
    pub db_transactions_per_s: Option<f64>,
    /// CPU seconds of the database's own processes over the phase (`db_processes`): None for
    /// SQLite, which runs inside the server and is in `server_cpu_s`.
    #[serde(default)]
    pub db_cpu_s: Option<f64>,
    pub server_reports: Option<u64>,
    pub server_cpu_s: Option<f64>,
    pub generator_cpu_s: f64,
    pub watchers_broken: usize,
    pub watchers_failed: usize,
    pub first_problem: Option<String>,
    pub ok: bool,
}

/// A counter from the server's `/metrics` (one plain HTTP/1.1 GET).
pub async fn metric(addr: SocketAddr, name: &str) -> Result<u64, String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(client::err)?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await
            .map_err(client::err)?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.map_err(client::err)?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .ok_or_else(|| format!("no {name} in /metrics"))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "GET /metrics timed out".to_string())?
}

struct Op {
    id: String,
    /// Reports sent so far (progress and log share the sequence number).
    sent: AtomicU64,
}

#[derive(Default)]
struct Watch {
    next_log: AtomicU64,
    /// The last progress sequence number seen, plus one.
    next_progress: AtomicU64,
    progress: AtomicU64,
    conflated: AtomicU64,
    broken: AtomicU64,
    failed: AtomicBool,
    problem: Mutex<Option<String>>,
}

impl Watch {
    fn note(&self, what: impl FnOnce() -> String) {
        if let Ok(mut p) = self.problem.lock() {
            p.get_or_insert_with(what);
        }
    }
}

struct Shared {
    received: AtomicU64,
    /// Signalled on every event a watcher receives: the drain waits on it, not on a timer.
    arrived: tokio::sync::Notify,
    hist: Histogram,
}

async fn start_ops(
    addr: SocketAddr,
    cfg: &OperationsConfig,
    w: usize,
    count: usize,
    nonce: &str,
) -> Result<(client::Ws, Vec<String>), String> {
    let within = Duration::from_secs(30);
    let mut ws = client::connect(
        addr,
        Protocol::Native,
        client::source(w, cfg.sources),
        None,
        within,
    )
    .await
    .map_err(|e| format!("worker {w}: {e}"))?;
    let mut ids = Vec::with_capacity(count);
    for k in 0..count {
        let frame = format!(
            r#"{{"type":"operation.start","kind":"{}","target":"bench-{nonce}-{w}-{k}","id":{k}}}"#,
            cfg.kind
        );
        ws.send(Message::text(frame)).await.map_err(client::err)?;
        let reply: serde_json::Value =
            client::wait_for(&mut ws, within, "operation.start reply", |t| {
                let v: serde_json::Value = serde_json::from_str(t).ok()?;
                (v["id"] == k).then_some(Ok(v))
            })
            .await?;
        match reply["operation"]["id"].as_str() {
            Some(id) if reply["type"] == "operation" => ids.push(id.to_string()),
            _ => return Err(format!("operation.start refused: {reply}")),
        }
    }
    Ok((ws, ids))
}

fn on_frame(text: &str, watch: &Watch, shared: &Shared) {
    if !text.starts_with(r#"{"type":"message""#) {
        if text.starts_with(r#"{"type":"error""#) {
            watch.broken.fetch_add(1, Relaxed);
            watch.note(|| format!("server error frame: {text}"));
        }
        return;
    }
    let now = sys::now_micros();
    if let Some((t, seq)) = client::scan_marker(text, r#""line":"@@"#) {
        shared.hist.record(now.saturating_sub(t));
        let want = watch.next_log.load(Relaxed);
        if seq != want {
            watch.broken.fetch_add(1, Relaxed);
            watch.note(|| format!("log line #{seq} where #{want} was due"));
        }
        if seq >= want {
            watch.next_log.store(seq + 1, Relaxed);
        }
        shared.received.fetch_add(1, Relaxed);
        shared.arrived.notify_one();
    } else if let Some((t, seq)) = client::scan_marker(text, r#""message":"@@"#) {
        shared.hist.record(now.saturating_sub(t));
        let next = watch.next_progress.load(Relaxed);
        if seq < next {
            watch.broken.fetch_add(1, Relaxed);
            watch.note(|| format!("progress #{seq} after #{}", next - 1));
        } else {
            watch.conflated.fetch_add(seq - next, Relaxed);
            watch.next_progress.store(seq + 1, Relaxed);
        }
        watch.progress.fetch_add(1, Relaxed);
        shared.received.fetch_add(1, Relaxed);
        shared.arrived.notify_one();
    }
}

pub async fn operations(cfg: &OperationsConfig) -> Result<OperationsReport, String> {
    let addr = client::parse_addr(&cfg.url)?;
    let nonce = crate::nonce();
    let setup = Instant::now();
    let workers = cfg.workers.clamp(1, cfg.operations.max(1));
    let per = cfg.operations.div_ceil(workers);

    // Workers start their operations (queued until their first report).
    let mut started = futures_util::stream::iter(0..workers)
        .map(|w| {
            let count = per.min(cfg.operations.saturating_sub(w * per));
            let nonce = nonce.clone();
            async move { start_ops(addr, cfg, w, count, &nonce).await }
        })
        .buffer_unordered(workers);
    let mut worker_conns = Vec::new();
    while let Some(r) = started.next().await {
        worker_conns.push(r?);
    }
    drop(started);
    let ops: Vec<Arc<Op>> = worker_conns
        .iter()
        .flat_map(|(_, ids)| ids.iter())
        .map(|id| {
            Arc::new(Op {
                id: id.clone(),
                sent: AtomicU64::new(0),
            })
        })
        .collect();

    // One watcher per operation.
    let shared = Arc::new(Shared {
        received: AtomicU64::new(0),
        arrived: tokio::sync::Notify::new(),
        hist: Histogram::default(),
    });
    let mut watchers = Vec::with_capacity(ops.len());
    let mut joins = futures_util::stream::iter(0..ops.len())
        .map(|j| {
            let room = format!("operation:{}", ops[j].id);
            let src = client::source(workers + j, cfg.sources);
            async move {
                let r = client::member(
                    addr,
                    Protocol::Native,
                    src,
                    None,
                    &room,
                    Duration::from_secs(30),
                )
                .await;
                (j, r)
            }
        })
        .buffer_unordered(cfg.concurrency.max(1));
    let mut watches: Vec<Arc<Watch>> = (0..ops.len()).map(|_| Arc::default()).collect();
    while let Some((j, r)) = joins.next().await {
        let mut ws = r.map_err(|e| format!("watcher {j}: {e}"))?;
        let (watch, shared) = (Arc::new(Watch::default()), shared.clone());
        watches[j] = watch.clone();
        watchers.push(tokio::spawn(async move {
            let why = loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => on_frame(&t, &watch, &shared),
                    Some(Ok(Message::Close(c))) => break format!("closed by the server: {c:?}"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("read: {e}"),
                    None => break "connection ended".into(),
                }
            };
            watch.failed.store(true, Relaxed);
            watch.note(|| why);
            // The drain re-checks at once: a failed watcher is done.
            shared.arrived.notify_one();
        }));
    }
    drop(joins);
    let setup_s = crate::round3(setup.elapsed().as_secs_f64());

    // The measured part: every worker reports on each of its operations `rate` times a second.
    let writes0 = metric(addr, "switchyard_operation_writes_total").await.ok();
    let reports0 = metric(addr, "switchyard_operation_reports_total")
        .await
        .ok();
    let transactions0 = metric(addr, "switchyard_operation_write_transactions_total")
        .await
        .ok();
    let db_cpu0 = cfg.db_processes.as_deref().map(sys::cpu_of_matching);
    let cpu0 = cfg.server_pid.and_then(sys::cpu_seconds);
    let gen0 = sys::own_cpu_seconds();
    let start = Instant::now();
    let duration = Duration::from_secs_f64(cfg.duration);
    let worker_problem: Arc<Mutex<Option<String>>> = Arc::default();
    let mut worker_tasks = Vec::new();
    let mut first = 0;
    let n_workers = worker_conns.len().max(1);
    for (w, (ws, ids)) in worker_conns.into_iter().enumerate() {
        let mine: Vec<Arc<Op>> = ops[first..first + ids.len()].to_vec();
        first += ids.len();
        let (mut sink, mut stream) = ws.split();
        let problem = worker_problem.clone();
        // Read what comes back (refusals would be error frames; pings keep it alive).
        let reader_problem = worker_problem.clone();
        let reader = tokio::spawn(async move {
            while let Some(m) = stream.next().await {
                match m {
                    Ok(Message::Text(t)) if t.starts_with(r#"{"type":"error""#) => {
                        if let Ok(mut p) = reader_problem.lock() {
                            p.get_or_insert_with(|| format!("worker got an error frame: {t}"));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        let period = Duration::from_secs_f64(1.0 / cfg.rate.max(0.001));
        // Independent operations do not report in lockstep: each worker reports its operations
        // one after another, evenly over the period, and the workers are staggered, so the
        // server sees a steady 1,000 × rate reports a second, not one burst per period (which
        // would measure how long a burst takes to drain, not report-to-watcher latency).
        let slot = period / mine.len().max(1) as u32;
        let offset = slot.mul_f64(w as f64 / n_workers as f64);
        worker_tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, slot);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let result: Result<(), String> = async {
                for op in mine.iter().cycle() {
                    tick.tick().await;
                    if start.elapsed() >= duration {
                        return Ok(());
                    }
                    let seq = op.sent.load(Relaxed);
                        let t = sys::now_micros();
                        let progress = (seq as f64 * 0.01).min(99.0);
                        let p = format!(
                            r#"{{"type":"operation.progress","operation":"{}","progress":{progress},"message":"@@{t}:{seq}"}}"#,
                            op.id
                        );
                        let l = format!(
                            r#"{{"type":"operation.log","operation":"{}","lines":["@@{t}:{seq}"]}}"#,
                            op.id
                        );
                    sink.feed(Message::text(p)).await.map_err(client::err)?;
                    sink.feed(Message::text(l)).await.map_err(client::err)?;
                    op.sent.store(seq + 1, Relaxed);
                    sink.flush().await.map_err(client::err)?;
                }
                Ok(())
            }
            .await;
            if let Err(e) = result {
                if let Ok(mut p) = problem.lock() {
                    p.get_or_insert(format!("worker send: {e}"));
                }
            }
            (sink, reader)
        }));
    }
    let mut held = Vec::new();
    for t in worker_tasks {
        if let Ok(h) = t.await {
            held.push(h);
        }
    }
    let publish_s = start.elapsed().as_secs_f64();
    let reports_sent: u64 = ops.iter().map(|o| o.sent.load(Relaxed)).sum();

    // Drain: every log line reaches its watcher (progress may be conflated: at least the last).
    let stall = Duration::from_secs_f64(cfg.stall_timeout);
    let mut last = (shared.received.load(Relaxed), Instant::now());
    loop {
        let logs_done = watches.iter().zip(&ops).all(|(w, o)| {
            w.next_log.load(Relaxed) >= o.sent.load(Relaxed) || w.failed.load(Relaxed)
        });
        let progress_done = watches.iter().zip(&ops).all(|(w, o)| {
            w.next_progress.load(Relaxed) >= o.sent.load(Relaxed) || w.failed.load(Relaxed)
        });
        if logs_done && progress_done {
            break;
        }
        let now = shared.received.load(Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
        let Some(left) = stall.checked_sub(last.1.elapsed()).filter(|l| !l.is_zero()) else {
            break;
        };
        // Until the next arrival (a permit stored meanwhile counts), or the stall deadline.
        let _ = tokio::time::timeout(left, shared.arrived.notified()).await;
    }
    let wall_s = start.elapsed().as_secs_f64();
    let server_cpu_s = sys::cpu_delta(cpu0, cfg.server_pid.and_then(sys::cpu_seconds));
    let generator_cpu_s = crate::round3(sys::own_cpu_seconds() - gen0);
    let db_cpu_s = db_cpu0
        .zip(cfg.db_processes.as_deref())
        .map(|(before, pattern)| sys::cpu_delta_of(&before, &sys::cpu_of_matching(pattern)));
    let transactions1 = metric(addr, "switchyard_operation_write_transactions_total")
        .await
        .ok();
    let db_transactions = transactions0.zip(transactions1).map(|(a, b)| b - a);
    let writes1 = metric(addr, "switchyard_operation_writes_total").await.ok();
    let reports1 = metric(addr, "switchyard_operation_reports_total")
        .await
        .ok();
    let db_writes = writes0.zip(writes1).map(|(a, b)| b - a);

    let mut problem = worker_problem.lock().ok().and_then(|p| p.clone());
    let (mut broken, mut failed, mut conflated, mut progress, mut lines) = (0, 0, 0, 0, 0);
    for (j, (w, o)) in watches.iter().zip(&ops).enumerate() {
        let sent = o.sent.load(Relaxed);
        let got_log = w.next_log.load(Relaxed);
        if got_log != sent {
            w.note(|| format!("log lines up to #{got_log} of {sent}"));
        }
        let last_progress = w.next_progress.load(Relaxed);
        if last_progress != sent {
            w.note(|| format!("last progress #{last_progress} of {sent}"));
        }
        conflated += w.conflated.load(Relaxed);
        progress += w.progress.load(Relaxed);
        lines += got_log.min(sent);
        let bad = w.broken.load(Relaxed) > 0 || got_log != sent || last_progress != sent;
        if w.failed.load(Relaxed) {
            failed += 1;
        } else if bad {
            broken += 1;
        }
        if (bad || w.failed.load(Relaxed)) && problem.is_none() {
            let what = w
                .problem
                .lock()
                .ok()
                .and_then(|p| p.clone())
                .unwrap_or_default();
            problem = Some(format!("watcher {j} (operation {}): {what}", o.id));
        }
    }
    for w in watchers {
        w.abort();
    }
    for (_, reader) in held {
        reader.abort();
    }
    Ok(OperationsReport {
        scenario: "operations".into(),
        server: cfg.server.clone(),
        database: cfg.database.clone(),
        protocol: Protocol::Native,
        operations: ops.len(),
        workers,
        rate: cfg.rate,
        setup_s,
        duration_s: crate::round3(publish_s),
        reports_sent,
        reports_per_s: crate::round3(reports_sent as f64 / publish_s.max(1e-9)),
        log_lines_received: lines,
        progress_received: progress,
        progress_conflated: conflated,
        latency: shared.hist.latency(),
        db_writes,
        db_writes_per_s: db_writes.map(|w| crate::round3(w as f64 / wall_s.max(1e-9))),
        db_transactions,
        db_transactions_per_s: db_transactions.map(|t| crate::round3(t as f64 / wall_s.max(1e-9))),
        db_cpu_s,
        server_reports: reports0.zip(reports1).map(|(a, b)| b - a),
        server_cpu_s,
        generator_cpu_s,
        watchers_broken: broken,
        watchers_failed: failed,
        ok: problem.is_none() && broken == 0 && failed == 0 && ops.len() == cfg.operations,
        first_problem: problem,
    })
}
