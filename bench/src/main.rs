//! switchyard-bench: the load tool of docs/benchmarks.md. One JSON line per result on stdout.
//!
//! ```text
//! switchyard-bench fanout --url http://127.0.0.1:8080 --server switchyard --protocol native|sio \
//!     --members 1000 [--rate 10] [--max true] [--window 32] [--duration 10] [--payload 64] \
//!     [--sources 8] [--concurrency 200] [--pid SERVER_PID] [--extra-pids P2,P3] \
//!     [--others http://127.0.0.1:8081,…]     # a cluster: members on the other nodes
//! switchyard-bench rooms --url … --server … --protocol … [--rooms 4000] [--size 4] [--rate 4000] \
//!     [--duration 15] [--pid …]
//! switchyard-bench idle --url … --server … --protocol … --conns 10000 [--procs N] [--pid …] \
//!     [--via-polling true]                   # Socket.IO as a browser arrives: polling, then upgrade
//! switchyard-bench connect --url … --server … --protocol … [--conns 5000] [--size 4] \
//!     [--concurrency 200] [--sources 16] [--presence true|false] [--pid …]
//! switchyard-bench operations --url … [--kind bench] [--operations 1000] [--workers 20] \
//!     [--rate 10] [--duration 15] [--pid …] [--database sqlite|postgres] \
//!     [--db-processes switchyard_bench]      # also sum the CPU of the database's backends
//! switchyard-bench floor-server --port 18482 [--presence true]  # the floor target (floor.rs)
//! switchyard-bench machine [--node-dir bench/node]
//! switchyard-bench report bench/results/latest.jsonl [--out docs/benchmarks]
//! ```
//!
//! Exit status 1 when a scenario's check failed (its line still says why, `"ok":false`).

mod report;

use std::collections::HashMap;
use std::io::Write;
use std::str::FromStr;

use switchyard_bench::idle::{self, HoldConfig};
use switchyard_bench::{
    ConnectConfig, FanoutConfig, IdleConfig, OperationsConfig, Protocol, RoomsConfig,
};

struct Args(HashMap<String, String>, Vec<String>);

impl Args {
    fn parse(argv: &[String]) -> Result<Args, String> {
        let (mut map, mut free) = (HashMap::new(), Vec::new());
        let mut it = argv.iter();
        while let Some(a) = it.next() {
            if let Some(k) = a.strip_prefix("--") {
                let v = it.next().ok_or_else(|| format!("--{k} needs a value"))?;
                map.insert(k.to_string(), v.clone());
            } else {
                free.push(a.clone());
            }
        }
        Ok(Args(map, free))
    }

    fn get<T: FromStr>(&self, k: &str, default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.0.get(k) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| format!("--{k} {v}: {e}")),
        }
    }

    fn opt<T: FromStr>(&self, k: &str) -> Result<Option<T>, String>
    where
        T::Err: std::fmt::Display,
    {
        self.0
            .get(k)
            .map(|v| v.parse().map_err(|e| format!("--{k} {v}: {e}")))
            .transpose()
    }

    fn str(&self, k: &str, default: &str) -> String {
        self.0.get(k).cloned().unwrap_or_else(|| default.into())
    }
}

fn line<T: serde::Serialize>(v: &T) -> Result<(), String> {
    let s = serde_json::to_string(v).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{s}")
        .and_then(|_| out.flush())
        .map_err(|e| format!("stdout: {e}"))
}

/// A comma-separated list (empty: none).
fn list<T: FromStr>(v: &str) -> Result<Vec<T>, String>
where
    T::Err: std::fmt::Display,
{
    v.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().map_err(|e| format!("{x}: {e}")))
        .collect()
}

/// Runs a scenario; Ok(false) when it ran but its check failed.
async fn run(cmd: &str, a: &Args) -> Result<bool, String> {
    let url = a.str("url", "http://127.0.0.1:8080");
    let server = a.str("server", "switchyard");
    let protocol: Protocol = a.get("protocol", Protocol::Native)?;
    let pid: Option<u32> = a.opt("pid")?;
    match cmd {
        "fanout" => {
            let d = FanoutConfig::new(&url, &server, protocol, a.get("members", 1000)?);
            let rate: f64 = a.get("rate", d.rate.unwrap_or(0.0))?;
            let cfg = FanoutConfig {
                rate: (rate > 0.0).then_some(rate),
                max: a.get("max", d.max)?,
                window: a.get("window", d.window)?,
                duration: a.get("duration", d.duration)?,
                payload: a.get("payload", d.payload)?,
                sources: a.get("sources", d.sources)?,
                concurrency: a.get("concurrency", d.concurrency)?,
                stall_timeout: a.get("stall-timeout", d.stall_timeout)?,
                server_pid: pid,
                extra_pids: list(&a.str("extra-pids", ""))?,
                others: list(&a.str("others", ""))?,
                user: a.opt("user")?,
                ..d
            };
            let mut ok = true;
            for r in switchyard_bench::fanout(&cfg).await? {
                ok &= r.result.ok;
                line(&r)?;
            }
            Ok(ok)
        }
        "rooms" => {
            let d = RoomsConfig::new(&url, &server, protocol);
            let cfg = RoomsConfig {
                rooms: a.get("rooms", d.rooms)?,
                size: a.get("size", d.size)?,
                rate: a.get("rate", d.rate)?,
                duration: a.get("duration", d.duration)?,
                payload: a.get("payload", d.payload)?,
                sources: a.get("sources", d.sources)?,
                concurrency: a.get("concurrency", d.concurrency)?,
                window: a.get("window", d.window)?,
                stall_timeout: a.get("stall-timeout", d.stall_timeout)?,
                server_pid: pid,
                user: a.opt("user")?,
                ..d
            };
            let r = switchyard_bench::rooms(&cfg).await?;
            line(&r)?;
            Ok(r.result.ok)
        }
        "idle" => {
            let d = IdleConfig::new(&url, &server, protocol, a.get("conns", 1000)?);
            let cfg = IdleConfig {
                procs: a.get("procs", d.procs)?,
                rooms: a.get("rooms", d.rooms)?,
                sources_per_proc: a.get("sources", d.sources_per_proc)?,
                concurrency: a.get("concurrency", d.concurrency)?,
                settle_s: a.get("settle", d.settle_s)?,
                via_polling: a.get("via-polling", d.via_polling)?,
                server_pid: pid,
                ..d
            };
            let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
            let r = idle::idle(&cfg, &exe).await?;
            line(&r)?;
            Ok(r.ok)
        }
        "idle-worker" => {
            let cfg = HoldConfig {
                url,
                protocol,
                conns: a.get("conns", 1000)?,
                offset: a.get("offset", 0)?,
                rooms: a.get("rooms", 100)?,
                first_source: a.get("first-source", 1)?,
                sources: a.get("sources", 4)?,
                concurrency: a.get("concurrency", 200)?,
                via_polling: a.get("via-polling", false)?,
            };
            let until = async {
                // Held until stdin closes (the coordinator's signal) or SIGTERM.
                let mut stdin = tokio::io::stdin();
                let mut buf = [0u8; 64];
                let eof = async {
                    use tokio::io::AsyncReadExt;
                    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
                };
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut term) => {
                        tokio::select! { _ = eof => {}, _ = term.recv() => {} }
                    }
                    Err(_) => eof.await,
                }
            };
            let done = idle::hold(
                &cfg,
                |ready| {
                    let _ = line(&ready);
                },
                until,
            )
            .await?;
            line(&done)?;
            Ok(done.failed == 0)
        }
        "connect" => {
            let d = ConnectConfig::new(&url, &server, protocol, a.get("conns", 5000)?);
            let cfg = ConnectConfig {
                size: a.get("size", d.size)?,
                sources: a.get("sources", d.sources)?,
                concurrency: a.get("concurrency", d.concurrency)?,
                presence: a.get("presence", d.presence)?,
                settle_timeout: a.get("settle-timeout", d.settle_timeout)?,
                server_pid: pid,
                ..d
            };
            let r = switchyard_bench::connect(&cfg).await?;
            line(&r)?;
            Ok(r.ok)
        }
        "operations" => {
            let d =
                OperationsConfig::new(&url, &a.str("kind", "bench"), a.get("operations", 1000)?);
            let cfg = OperationsConfig {
                server,
                workers: a.get("workers", d.workers)?,
                rate: a.get("rate", d.rate)?,
                duration: a.get("duration", d.duration)?,
                sources: a.get("sources", d.sources)?,
                concurrency: a.get("concurrency", d.concurrency)?,
                stall_timeout: a.get("stall-timeout", d.stall_timeout)?,
                server_pid: pid,
                database: a.str("database", &d.database),
                db_processes: a.opt("db-processes")?,
                ..d
            };
            let r = switchyard_bench::operations(&cfg).await?;
            line(&r)?;
            Ok(r.ok)
        }
        "machine" => {
            line(&report::machine(&a.str("node-dir", "bench/node")))?;
            Ok(true)
        }
        "report" => {
            let input =
                a.1.first()
                    .cloned()
                    .unwrap_or_else(|| "bench/results/latest.jsonl".into());
            report::report(&input, &a.str("out", "docs/benchmarks"))?;
            Ok(true)
        }
        other => Err(format!(
            "unknown command {other:?}: fanout, rooms, idle, connect, operations, machine or report"
        )),
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = argv.first().cloned() else {
        eprintln!(
            "usage: switchyard-bench fanout|rooms|idle|connect|operations|floor-server|machine|report --key value …"
        );
        std::process::exit(2);
    };
    let args = match Args::parse(&argv[1..]) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if cmd == "floor-server" {
        // A blocking epoll loop of its own: no Tokio runtime under it.
        let port = args.get("port", 18482u16);
        let presence = args.get("presence", false);
        let served =
            port.and_then(|port| switchyard_bench::floor::Floor::bind(port, presence?)?.serve());
        if let Err(e) = served {
            eprintln!("error: floor-server: {e}");
            std::process::exit(1);
        }
        return;
    }
    // One thread: the generator is pinned to one core, and a scenario's tasks share atomics.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(run(&cmd, &args)) {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("error: {cmd}: the delivery check failed (see first_problem)");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("error: {cmd}: {e}");
            std::process::exit(1);
        }
    }
}
