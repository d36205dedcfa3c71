//! `idle`: connections that join a room and stay; the server's RSS per connection. A process
//! may hold at most 20,000 descriptors here, so the coordinator ([`idle`]) starts several
//! worker processes (`switchyard-bench idle-worker`, [`hold`]), each connecting its share from
//! its own 127.0.0.x addresses and saying so on stdout; once all are connected and a settle
//! pause has passed it reads the server's VmRSS, then closes their stdin to end them.

use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::client::{self, Protocol};
use crate::sys;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdleConfig {
    pub url: String,
    pub server: String,
    pub protocol: Protocol,
    pub conns: usize,
    pub procs: usize,
    /// Rooms the connections are spread over (`idle-<n>`).
    pub rooms: usize,
    pub sources_per_proc: usize,
    pub concurrency: usize,
    pub server_pid: Option<u32>,
    /// Pause between the last connection and the RSS reading.
    pub settle_s: f64,
    /// Socket.IO only: arrive as a browser does, long-polling first, then the upgrade.
    #[serde(default)]
    pub via_polling: bool,
}

impl IdleConfig {
    pub fn new(url: &str, server: &str, protocol: Protocol, conns: usize) -> Self {
        Self {
            url: url.into(),
            server: server.into(),
            protocol,
            conns,
            procs: conns.div_ceil(5000).max(1),
            rooms: 100,
            sources_per_proc: 4,
            concurrency: 200,
            server_pid: None,
            settle_s: 2.0,
            via_polling: false,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdleReport {
    pub scenario: String,
    pub server: String,
    pub protocol: Protocol,
    pub conns: usize,
    pub procs: usize,
    pub rooms: usize,
    /// Socket.IO: long-polling first, then the upgrade (a browser's path).
    #[serde(default)]
    pub via_polling: bool,
    pub connect_s: f64,
    pub connect_server_cpu_s: Option<f64>,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub kib_per_conn: Option<f64>,
    pub first_problem: Option<String>,
    pub ok: bool,
}

/// One worker process's share.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HoldConfig {
    pub url: String,
    pub protocol: Protocol,
    pub conns: usize,
    /// Index of the first connection overall (which room it joins).
    pub offset: usize,
    pub rooms: usize,
    /// Source addresses 127.0.0.<first_source>…<first_source + sources - 1>.
    pub first_source: usize,
    pub sources: usize,
    pub concurrency: usize,
    #[serde(default)]
    pub via_polling: bool,
}

/// What a worker prints: `ready` once connected, then `done` when told to stop.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HoldLine {
    pub event: String,
    pub conns: usize,
    pub connect_s: f64,
    pub failed: u64,
    pub first_problem: Option<String>,
}

/// Connects `cfg.conns` members, keeps them read (pings answered), calls `ready` once all are
/// joined, and holds them until `until` completes.
pub async fn hold(
    cfg: &HoldConfig,
    ready: impl FnOnce(HoldLine),
    until: impl Future<Output = ()>,
) -> Result<HoldLine, String> {
    let addr = client::parse_addr(&cfg.url)?;
    let failed = Arc::new(AtomicU64::new(0));
    let problem: Arc<Mutex<Option<String>>> = Arc::default();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(cfg.conns);
    let mut connects = futures_util::stream::iter(0..cfg.conns)
        .map(|i| {
            let n = cfg.offset + i;
            let room = format!("idle-{}", n % cfg.rooms.max(1));
            let src = client::source(cfg.first_source - 1 + i % cfg.sources.max(1), 250);
            async move {
                let within = Duration::from_secs(60);
                if cfg.via_polling && cfg.protocol == Protocol::Sio {
                    client::member_via_polling(addr, src, None, &room, within).await
                } else {
                    client::member(addr, cfg.protocol, src, None, &room, within).await
                }
                .map_err(|e| format!("connection {n}: {e}"))
            }
        })
        .buffer_unordered(cfg.concurrency.max(1));
    while let Some(r) = connects.next().await {
        let mut ws = r?;
        let (failed, problem) = (failed.clone(), problem.clone());
        tasks.push(tokio::spawn(async move {
            // Read everything (presence, pings) so the server never sees a stalled client.
            loop {
                if let Err(e) = client::next_text(&mut ws).await {
                    failed.fetch_add(1, Relaxed);
                    if let Ok(mut p) = problem.lock() {
                        p.get_or_insert(e);
                    }
                    return;
                }
            }
        }));
    }
    drop(connects);
    let line = |event: &str| HoldLine {
        event: event.into(),
        conns: tasks.len(),
        connect_s: crate::round3(started.elapsed().as_secs_f64()),
        failed: failed.load(Relaxed),
        first_problem: problem.lock().ok().and_then(|p| p.clone()),
    };
    ready(line("ready"));
    until.await;
    let mut done = line("done");
    done.connect_s = crate::round3(started.elapsed().as_secs_f64());
    for t in &tasks {
        t.abort();
    }
    Ok(done)
}

/// Reads a worker's stdout until a line with `event`, within `within`.
async fn read_event(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    event: &str,
    within: Duration,
) -> Result<HoldLine, String> {
    let fut = async {
        loop {
            match lines.next_line().await {
                Ok(Some(l)) => {
                    if let Ok(h) = serde_json::from_str::<HoldLine>(&l) {
                        if h.event == event {
                            return Ok(h);
                        }
                    }
                }
                Ok(None) => return Err(format!("worker exited before `{event}`")),
                Err(e) => return Err(format!("reading a worker: {e}")),
            }
        }
    };
    tokio::time::timeout(within, fut)
        .await
        .map_err(|_| format!("no `{event}` from a worker within {within:?}"))?
}

/// The coordinator: starts `procs` workers of `exe` (this binary), samples RSS once they all
/// hold their connections, ends them.
pub async fn idle(cfg: &IdleConfig, exe: &Path) -> Result<IdleReport, String> {
    let procs = cfg.procs.max(1);
    let per = cfg.conns.div_ceil(procs);
    let rss_before = cfg.server_pid.and_then(sys::rss_kib);
    let cpu0 = cfg.server_pid.and_then(sys::cpu_seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for k in 0..procs {
        let conns = per.min(cfg.conns - (k * per).min(cfg.conns));
        if conns == 0 {
            break;
        }
        let mut child = tokio::process::Command::new(exe)
            .arg("idle-worker")
            .args(["--url", &cfg.url, "--protocol", &cfg.protocol.to_string()])
            .args([
                "--conns",
                &conns.to_string(),
                "--offset",
                &(k * per).to_string(),
            ])
            .args(["--rooms", &cfg.rooms.to_string()])
            .args([
                "--first-source",
                &(1 + k * cfg.sources_per_proc).to_string(),
            ])
            .args(["--sources", &cfg.sources_per_proc.to_string()])
            .args(["--concurrency", &cfg.concurrency.to_string()])
            .args(["--via-polling", &cfg.via_polling.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", exe.display()))?;
        let stdout = child.stdout.take().ok_or("worker stdout")?;
        workers.push((child, BufReader::new(stdout).lines()));
    }
    let mut problem = None;
    let mut connected = 0;
    for (_, lines) in workers.iter_mut() {
        let ready = read_event(lines, "ready", Duration::from_secs(300)).await?;
        connected += ready.conns;
        if ready.failed > 0 {
            problem = problem.or(ready.first_problem);
        }
    }
    let connect_s = crate::round3(started.elapsed().as_secs_f64());
    let connect_server_cpu_s = sys::cpu_delta(cpu0, cfg.server_pid.and_then(sys::cpu_seconds));
    // A measurement pause: let the server finish what the last joins started.
    tokio::time::sleep(Duration::from_secs_f64(cfg.settle_s)).await;
    let rss_after = cfg.server_pid.and_then(sys::rss_kib);
    let mut failed = 0;
    for (child, lines) in workers.iter_mut() {
        drop(child.stdin.take()); // EOF: the worker lets go
        match read_event(lines, "done", Duration::from_secs(30)).await {
            Ok(done) => {
                failed += done.failed;
                if done.failed > 0 {
                    problem = problem.or(done.first_problem);
                }
            }
            Err(e) => problem = problem.or(Some(e)),
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    }
    if connected != cfg.conns {
        problem = problem.or(Some(format!("{connected} of {} connected", cfg.conns)));
    }
    let kib_per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if cfg.conns > 0 => {
            Some(crate::round3((a as f64 - b as f64) / cfg.conns as f64))
        }
        _ => None,
    };
    Ok(IdleReport {
        // Its own scenario name, so reports keep the two paths apart.
        scenario: if cfg.via_polling {
            "idle-polling"
        } else {
            "idle"
        }
        .into(),
        server: cfg.server.clone(),
        protocol: cfg.protocol,
        conns: cfg.conns,
        procs: workers.len(),
        rooms: cfg.rooms,
        via_polling: cfg.via_polling,
        connect_s,
        connect_server_cpu_s,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        kib_per_conn,
        ok: problem.is_none() && failed == 0,
        first_problem: problem,
    })
}
