//! `switchyard-bench report FILE`: the plots (SVG, plotters without system fonts) and the
//! markdown tables of docs/benchmarks.md from a results file, and `machine`: the facts of the
//! machine a run was made on. Only the binary has this (feature `report`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde_json::{json, Value};

/// The things compared: (server, protocol, label). The floor (`floor-server`, fan-out and rooms
/// only) is what a bare epoll loop spends on the same traffic: the least any server can.
const TARGETS: [(&str, &str, &str); NT] = [
    ("switchyard", "native", "Switchyard /ws"),
    ("switchyard", "sio", "Switchyard Socket.IO"),
    ("node", "sio", "Node socket.io@4"),
    ("floor", "native", "bare epoll loop (floor)"),
];
const NT: usize = 4;

fn command(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// What machine, kernel and toolchains a run used.
pub fn machine(node_dir: &str) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string());
    let cores = std::thread::available_parallelism().map(|n| n.get()).ok();
    let mem_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string());
    let socket_io =
        std::fs::read_to_string(Path::new(node_dir).join("node_modules/socket.io/package.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|v| v["version"].as_str().map(String::from));
    json!({
        "scenario": "machine",
        "cpu": model,
        "cores": cores,
        "memory_gib": mem_kib.map(|k| (k as f64 / 1048576.0 * 10.0).round() / 10.0),
        "kernel": kernel,
        "rustc": command("rustc", &["--version"]),
        "node": command("node", &["--version"]),
        "socket_io": socket_io,
        "date": command("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "commit": command("git", &["rev-parse", "--short", "HEAD"]),
    })
}

fn f(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn target_of(v: &Value) -> Option<usize> {
    TARGETS
        .iter()
        .position(|(srv, proto, _)| s(v, "server") == *srv && s(v, "protocol") == *proto)
}

fn num(x: Option<f64>) -> String {
    match x {
        None => "–".into(),
        Some(x) if x.abs() >= 1000.0 || (x.fract() == 0.0 && x.abs() >= 100.0) => {
            // 1,234,567
            let n = x.round() as i64;
            let digits = n.unsigned_abs().to_string();
            let mut out = String::new();
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            if n < 0 {
                format!("-{out}")
            } else {
                out
            }
        }
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

/// Lower or higher is better: the ratio column says how many times better Switchyard
/// (Socket.IO, the like-for-like protocol) is than Node; above 1 means Switchyard is better.
#[derive(Clone, Copy)]
enum Better {
    Lower,
    Higher,
}

#[derive(Clone, Copy)]
struct Metric {
    key: &'static str,
    label: &'static str,
    better: Better,
}

/// What a phase that ran the server flat out is judged by (fan-out at max rate, rooms).
const THROUGHPUT: [Metric; 5] = [
    m("deliveries_per_s", "deliveries/s", Better::Higher),
    m(
        "deliveries_per_cpu_s",
        "deliveries per server CPU s",
        Better::Higher,
    ),
    m(
        "cpu_s_per_million",
        "server CPU s per 1M deliveries",
        Better::Lower,
    ),
    m("p50_ms", "latency p50 (ms)", Better::Lower),
    m("p99_ms", "latency p99 (ms)", Better::Lower),
];

const fn m(key: &'static str, label: &'static str, better: Better) -> Metric {
    Metric { key, label, better }
}

fn ratio(sy: Option<f64>, node: Option<f64>, better: Better) -> String {
    match (sy, node) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => {
            let r = match better {
                Better::Higher => a / b,
                Better::Lower => b / a,
            };
            format!("{r:.1}×")
        }
        _ => "–".into(),
    }
}

/// A table: one row per (group, metric), a column per target, the ratio (Switchyard Socket.IO
/// against Node) after the first three, the floor last.
fn table(
    out: &mut String,
    title: &str,
    groups: &[(String, [Option<&Value>; NT])],
    metrics: &[Metric],
) {
    let _ = writeln!(out, "\n#### {title}\n");
    let _ = writeln!(
        out,
        "| | metric | {} | {} | {} | Switchyard Socket.IO vs Node | {} |",
        TARGETS[0].2, TARGETS[1].2, TARGETS[2].2, TARGETS[3].2
    );
    let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    for (group, cols) in groups {
        for (k, metric) in metrics.iter().enumerate() {
            let vals: Vec<Option<f64>> = cols
                .iter()
                .map(|c| c.and_then(|v| f(v, metric.key)))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                if k == 0 { group.as_str() } else { "" },
                metric.label,
                num(vals[0]),
                num(vals[1]),
                num(vals[2]),
                ratio(vals[1], vals[2], metric.better),
                num(vals[3]),
            );
        }
    }
}

/// Lines of `scenario` grouped by a key, one slot per target (the last line wins).
fn grouped<'a, K: Ord + Clone>(
    lines: &'a [Value],
    scenario: &str,
    key: impl Fn(&Value) -> Option<K>,
) -> BTreeMap<K, [Option<&'a Value>; NT]> {
    let mut g: BTreeMap<K, [Option<&Value>; NT]> = BTreeMap::new();
    for v in lines.iter().filter(|v| s(v, "scenario") == scenario) {
        if let (Some(k), Some(t)) = (key(v), target_of(v)) {
            g.entry(k).or_default()[t] = Some(v);
        }
    }
    g
}

pub fn report(input: &str, out_dir: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(input).map_err(|e| format!("{input}: {e}"))?;
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(|v| v.get("scenario").is_some())
        .collect();
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{out_dir}: {e}"))?;
    let mut md = String::new();

    if let Some(m) = lines.iter().find(|v| s(v, "scenario") == "machine") {
        let _ = writeln!(md, "#### Machine\n\n| | |\n| --- | --- |");
        for (k, label) in [
            ("cpu", "CPU"),
            ("cores", "cores"),
            ("memory_gib", "memory (GiB)"),
            ("kernel", "kernel"),
            ("rustc", "rustc"),
            ("node", "node"),
            ("socket_io", "socket.io"),
            ("commit", "Switchyard commit"),
            ("date", "date (UTC)"),
        ] {
            let v = match &m[k] {
                Value::String(s) => s.clone(),
                Value::Null => "–".into(),
                other => other.to_string(),
            };
            let _ = writeln!(md, "| {label} | {v} |");
        }
    }

    let fanout_rate = grouped(&lines, "fanout", |v| {
        (s(v, "mode") == "rate").then(|| v["members"].as_u64().unwrap_or(0))
    });
    let fanout_max = grouped(&lines, "fanout", |v| {
        (s(v, "mode") == "max").then(|| v["members"].as_u64().unwrap_or(0))
    });
    let rate_of = |g: &[Option<&Value>; NT]| {
        g.iter()
            .flatten()
            .find_map(|v| f(v, "target_rate"))
            .map(|r| format!(", {r} msg/s"))
            .unwrap_or_default()
    };
    let groups: Vec<(String, [Option<&Value>; NT])> = fanout_rate
        .iter()
        .map(|(n, g)| (format!("{n} members{}", rate_of(g)), *g))
        .collect();
    table(
        &mut md,
        "Fanout, light fixed rate (one room, every member gets every message)",
        &groups,
        &[
            m("p50_ms", "latency p50 (ms)", Better::Lower),
            m("p99_ms", "latency p99 (ms)", Better::Lower),
            m("max_ms", "latency max (ms)", Better::Lower),
            m("deliveries_per_s", "deliveries/s", Better::Higher),
            m(
                "cpu_s_per_million",
                "server CPU s per 1M deliveries",
                Better::Lower,
            ),
        ],
    );
    let groups: Vec<(String, [Option<&Value>; NT])> = fanout_max
        .iter()
        .map(|(n, g)| (format!("{n} members"), *g))
        .collect();
    table(
        &mut md,
        "Fanout, max rate (in-flight window bounded)",
        &groups,
        &THROUGHPUT,
    );
    let rooms = grouped(&lines, "rooms", |v| {
        Some(format!(
            "{} rooms × {}, {} msg/s",
            v["rooms"], v["size"], v["target_rate"]
        ))
    });
    let groups: Vec<(String, [Option<&Value>; NT])> =
        rooms.iter().map(|(k, g)| (k.clone(), *g)).collect();
    table(
        &mut md,
        "Rooms: many small rooms, every member publishing",
        &groups,
        &[
            THROUGHPUT.as_slice(),
            &[m("connect_s", "connect + join all (s)", Better::Lower)],
        ]
        .concat(),
    );
    let idle = grouped(&lines, "idle", |v| v["conns"].as_u64());
    let groups: Vec<(String, [Option<&Value>; NT])> = idle
        .iter()
        .map(|(n, g)| (format!("{n} connections"), *g))
        .collect();
    table(
        &mut md,
        "Idle connections: server memory",
        &groups,
        &[
            m("kib_per_conn", "RSS per connection (KiB)", Better::Lower),
            m("connect_s", "connect + join all (s)", Better::Lower),
            m(
                "connect_server_cpu_s",
                "server CPU s to accept them",
                Better::Lower,
            ),
        ],
    );
    let polling = grouped(&lines, "idle-polling", |v| v["conns"].as_u64());
    if !polling.is_empty() {
        let groups: Vec<(String, [Option<&Value>; NT])> = polling
            .iter()
            .map(|(n, g)| (format!("{n} connections"), *g))
            .collect();
        table(
            &mut md,
            "Idle connections on a browser's path (Socket.IO long-polling, then the upgrade): server memory",
            &groups,
            &[
                m("kib_per_conn", "RSS per connection (KiB)", Better::Lower),
                m("connect_s", "connect + join all (s)", Better::Lower),
            ],
        );
    }

    let connect = grouped(&lines, "connect", |v| v["conns"].as_u64());
    for (n, g) in &connect {
        let bare = lines.iter().find(|v| {
            s(v, "scenario") == "connect"
                && s(v, "server") == "floor-bare"
                && v["conns"].as_u64() == Some(*n)
        });
        connect_table(&mut md, *n, g, bare);
    }
    operations_table(&mut md, &lines);

    // Every check, so a table never hides a failed run.
    let failed: Vec<&Value> = lines
        .iter()
        .filter(|v| v.get("ok").and_then(Value::as_bool) == Some(false))
        .collect();
    let checked = lines.iter().filter(|v| v.get("ok").is_some()).count();
    let _ = writeln!(
        md,
        "\nExactly-once, in-order check: {} of {checked} runs passed.",
        checked - failed.len()
    );
    for v in failed {
        let _ = writeln!(
            md,
            "- FAILED {} {} {}: {}",
            s(v, "scenario"),
            s(v, "server"),
            s(v, "protocol"),
            s(v, "first_problem")
        );
    }

    let plots = [
        latency_plot(
            &fanout_rate,
            &Path::new(out_dir).join("latency-vs-room-size.svg"),
        ),
        memory_plot(&idle, &Path::new(out_dir).join("memory-vs-connections.svg")),
        cpu_plot(
            &fanout_max,
            &rooms,
            &Path::new(out_dir).join("cpu-per-delivery.svg"),
        ),
    ];
    for p in plots {
        match p {
            Ok(Some(path)) => eprintln!("wrote {path}"),
            Ok(None) => {}
            Err(e) => eprintln!("plot: {e}"),
        }
    }
    print!("{md}");
    Ok(())
}

/// Connection set-up: a row per target, the floor the yardstick (issue #18: at least the
/// floor's rate within 20 %). The floor does presence's I/O (`floor-server --presence true`);
/// `bare`, the floor without it (no announcements, a join answer with no list), is a row of its
/// own and a second ratio, so the change of yardstick is in every table.
fn connect_table(md: &mut String, conns: u64, g: &[Option<&Value>; NT], bare: Option<&Value>) {
    let size = g
        .iter()
        .flatten()
        .find_map(|v| v["size"].as_u64())
        .unwrap_or(0);
    let _ = writeln!(
        md,
        "\n#### Connection set-up: {} distinct users connecting and joining rooms of {size} (presence on)\n",
        num(Some(conns as f64))
    );
    let _ = writeln!(
        md,
        "| target | connections/s | vs floor | vs floor without presence | server CPU s per 1,000 | vs floor | set-up p50 (ms) | set-up p99 (ms) | accept-queue overflows | presence events | generator core busy |"
    );
    let _ = writeln!(
        md,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let of = |v: &Value, yardstick: Option<&Value>, key: &str| -> String {
        match (f(v, key), yardstick.and_then(|y| f(y, key))) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.0} %", a / b * 100.0),
            _ => "–".into(),
        }
    };
    let floor = g[NT - 1];
    let rows = TARGETS
        .iter()
        .zip(g.iter())
        .filter_map(|((_, _, label), v)| Some((*label, (*v)?)))
        .chain(bare.map(|v| ("bare epoll loop without presence", v)));
    for (label, v) in rows {
        let busy = v["core_busy"]
            .as_array()
            .and_then(|c| c.get(1))
            .and_then(Value::as_f64);
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            num(f(v, "conns_per_s")),
            of(v, floor, "conns_per_s"),
            of(v, bare, "conns_per_s"),
            num(f(v, "cpu_s_per_1k")),
            of(v, floor, "cpu_s_per_1k"),
            num(f(v, "p50_ms")),
            num(f(v, "p99_ms")),
            num(f(v, "listen_overflows")),
            num(f(v, "presence_events")),
            num(busy),
        );
    }
}

/// Operations on each database, side by side (lines without `database` are SQLite runs).
fn operations_table(md: &mut String, lines: &[Value]) {
    const DBS: [(&str, &str); 2] = [("sqlite", "SQLite"), ("postgres", "PostgreSQL")];
    let mut by_db: [Option<&Value>; 2] = [None; 2];
    for v in lines.iter().filter(|v| s(v, "scenario") == "operations") {
        let db = v
            .get("database")
            .and_then(Value::as_str)
            .unwrap_or("sqlite");
        if let Some(k) = DBS.iter().position(|(name, _)| *name == db) {
            by_db[k] = Some(v);
        }
    }
    if by_db.iter().all(Option::is_none) {
        return;
    }
    let _ = writeln!(
        md,
        "\n#### Operations (Switchyard only: the reference has none), on SQLite and on PostgreSQL\n\n| metric | {} | {} |\n| --- | ---: | ---: |",
        DBS[0].1, DBS[1].1
    );
    for (k, label) in [
        ("operations", "concurrent external operations"),
        ("reports_per_s", "reports/s (each: progress + log line)"),
        ("p50_ms", "report → watcher p50 (ms)"),
        ("p99_ms", "report → watcher p99 (ms)"),
        ("max_ms", "report → watcher max (ms)"),
        ("db_writes_per_s", "database writes/s (coalesced)"),
        ("db_transactions_per_s", "database transactions/s"),
        ("progress_conflated", "progress events conflated (allowed)"),
        ("server_cpu_s", "server CPU s"),
        (
            "db_cpu_s",
            "database backends' CPU s (outside the server; SQLite's is in the server's)",
        ),
        ("duration_s", "duration (s)"),
    ] {
        let _ = writeln!(
            md,
            "| {label} | {} | {} |",
            num(by_db[0].and_then(|v| f(v, k))),
            num(by_db[1].and_then(|v| f(v, k)))
        );
    }
}

const COLORS: [RGBColor; NT] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(127, 127, 127),
];

/// Draws the legend, writes the file, returns its path (the end of every plot).
fn finish<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    root: &DrawingArea<SVGBackend<'a>, plotters::coord::Shift>,
    path: &Path,
) -> Result<Option<String>, String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(Some(path.display().to_string()))
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// p50 (solid) and p99 (dashed) latency against room size, log-log.
fn latency_plot(
    data: &BTreeMap<u64, [Option<&Value>; NT]>,
    path: &Path,
) -> Result<Option<String>, String> {
    if data.is_empty() {
        return Ok(None);
    }
    let xs: Vec<f64> = data.keys().map(|&n| n as f64).collect();
    let ys: Vec<f64> = data
        .values()
        .flat_map(|g| {
            g.iter()
                .flatten()
                .flat_map(|v| [f(v, "p50_ms"), f(v, "p99_ms")])
        })
        .flatten()
        .filter(|y| *y > 0.0)
        .collect();
    let (xmin, xmax) = (xs[0] / 2.0, xs[xs.len() - 1] * 2.0);
    let ymin = ys.iter().cloned().fold(f64::MAX, f64::min).max(0.01) / 2.0;
    // Headroom above the data for the legend (the y axis is logarithmic).
    let ymax = ys.iter().cloned().fold(0.0, f64::max).max(1.0) * 8.0;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let rate = data
        .values()
        .flat_map(|g| g.iter().flatten())
        .find_map(|v| f(v, "target_rate"))
        .map(|r| format!(" at {r} msg/s"))
        .unwrap_or_default();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Fanout latency vs room size{rate}"),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((xmin..xmax).log_scale(), (ymin..ymax).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("members in the room")
        .y_desc("publish → receive latency (ms)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(err)?;
    for (t, (_, _, label)) in TARGETS.iter().enumerate() {
        for (key, dashed, suffix) in [("p50_ms", false, "p50"), ("p99_ms", true, "p99")] {
            let pts: Vec<(f64, f64)> = data
                .iter()
                .filter_map(|(n, g)| Some((*n as f64, f(g[t]?, key)?)))
                .filter(|(_, y)| *y > 0.0)
                .collect();
            if pts.is_empty() {
                continue;
            }
            let color = COLORS[t];
            let style = color.stroke_width(2);
            let drawn = if dashed {
                chart.draw_series(DashedLineSeries::new(pts.clone(), 6, 4, style))
            } else {
                chart.draw_series(LineSeries::new(pts.clone(), style))
            };
            drawn
                .map_err(err)?
                .label(format!("{label} {suffix}"))
                .legend(move |(x, y)| {
                    if dashed {
                        PathElement::new(vec![(x, y), (x + 6, y)], style)
                    } else {
                        PathElement::new(vec![(x, y), (x + 20, y)], style)
                    }
                });
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
                .map_err(err)?;
        }
    }
    finish(&mut chart, &root, path)
}

/// Server RSS growth (MiB) against idle connections.
fn memory_plot(
    data: &BTreeMap<u64, [Option<&Value>; NT]>,
    path: &Path,
) -> Result<Option<String>, String> {
    if data.is_empty() {
        return Ok(None);
    }
    let growth = |v: &Value| -> Option<f64> {
        Some((f(v, "rss_after_kib")? - f(v, "rss_before_kib")?) / 1024.0)
    };
    let xmax = *data.keys().max().unwrap_or(&1) as f64 * 1.1;
    let ymax = data
        .values()
        .flat_map(|g| g.iter().flatten().filter_map(|v| growth(v)))
        .fold(1.0, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Server memory vs idle connections", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax, 0.0..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("connections, each joined to a room")
        .y_desc("server RSS growth (MiB)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(err)?;
    for (t, (_, _, label)) in TARGETS.iter().enumerate() {
        let mut pts: Vec<(f64, f64)> = vec![(0.0, 0.0)];
        pts.extend(
            data.iter()
                .filter_map(|(n, g)| Some((*n as f64, growth(g[t]?)?))),
        );
        if pts.len() < 2 {
            continue;
        }
        let color = COLORS[t];
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(*label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(err)?;
    }
    finish(&mut chart, &root, path)
}

/// Server CPU seconds per million deliveries, grouped bars per workload.
fn cpu_plot(
    fanout_max: &BTreeMap<u64, [Option<&Value>; NT]>,
    rooms: &BTreeMap<String, [Option<&Value>; NT]>,
    path: &Path,
) -> Result<Option<String>, String> {
    let mut groups: Vec<(String, [Option<f64>; NT])> = Vec::new();
    for (n, g) in fanout_max {
        groups.push((
            format!("fanout {n}, max rate"),
            g.map(|v| v.and_then(|v| f(v, "cpu_s_per_million"))),
        ));
    }
    for (k, g) in rooms {
        groups.push((
            k.split(',').next().unwrap_or("rooms").to_string(),
            g.map(|v| v.and_then(|v| f(v, "cpu_s_per_million"))),
        ));
    }
    if groups.is_empty() {
        return Ok(None);
    }
    let ymax = groups
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().cloned())
        .fold(0.1, f64::max)
        * 1.2;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let n = groups.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Server CPU per million deliveries (lower is better)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n, 0.0..ymax)
        .map_err(err)?;
    let names: Vec<String> = groups.iter().map(|(g, _)| g.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 && i < names.len() {
                names[i].clone()
            } else {
                String::new()
            }
        })
        .y_desc("server CPU seconds per 1M deliveries")
        .draw()
        .map_err(err)?;
    for (t, (_, _, label)) in TARGETS.iter().enumerate() {
        let color = COLORS[t];
        let bars: Vec<Rectangle<(f64, f64)>> = groups
            .iter()
            .enumerate()
            .filter_map(|(i, (_, v))| {
                let y = v[t]?;
                let x0 = i as f64 + 0.1 + t as f64 * 0.2;
                Some(Rectangle::new([(x0, 0.0), (x0 + 0.19, y)], color.filled()))
            })
            .collect();
        if bars.is_empty() {
            continue;
        }
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
    }
    finish(&mut chart, &root, path)
}
