//! switchyard-bench: load for docs/benchmarks.md, against Switchyard (native `/ws` or Socket.IO)
//! or the Node socket.io reference server (Socket.IO), with the same room semantics.
//!
//! ```text
//! switchyard-bench fanout --url http://127.0.0.1:8080 --protocol native|sio --members 1000 \
//!     --rate 10 --duration 10 [--payload 64] [--sources 8] [--pid SERVER_PID]
//! switchyard-bench idle --url … --protocol … --conns 10000 [--hold 10] [--sources 16] [--pid …]
//! ```
//!
//! `fanout` checks that every member got every message exactly once and in order (the smoke
//! check), and reports deliveries, publish-to-receive latency (p50/p99/max) and, with `--pid`,
//! the server's CPU seconds from /proc. `idle` reports the server's RSS per connection. Source
//! addresses are spread over 127.0.0.1-127.0.0.N so one run can exceed one address's ports.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<tokio::net::TcpStream>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Native,
    SocketIo,
}

struct Args(HashMap<String, String>);

impl Args {
    fn get<T: std::str::FromStr>(&self, k: &str, default: T) -> T {
        self.0
            .get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }
    fn str(&self, k: &str, default: &str) -> String {
        self.0
            .get(k)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

async fn open(base: &str, protocol: Protocol, source: u8) -> Result<Ws, String> {
    let hostport = base.trim_start_matches("http://").trim_end_matches('/');
    let addr: SocketAddr = hostport.parse().map_err(|e| format!("{hostport}: {e}"))?;
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, source), 0)))
        .map_err(|e| e.to_string())?;
    let stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let path = match protocol {
        Protocol::Native => "/ws".to_string(),
        Protocol::SocketIo => "/socket.io/?EIO=4&transport=websocket".to_string(),
    };
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{hostport}{path}"), stream)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                if t.as_str() == "2" {
                    // Engine.IO ping.
                    ws.send(Message::text("3"))
                        .await
                        .map_err(|e| e.to_string())?;
                    continue;
                }
                return Ok(t.to_string());
            }
            Some(Ok(Message::Close(c))) => return Err(format!("closed: {c:?}")),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("ended".into()),
        }
    }
}

/// Connects and joins `room`; returns the socket once joined.
async fn member(base: &str, protocol: Protocol, source: u8, room: &str) -> Result<Ws, String> {
    let mut ws = open(base, protocol, source).await?;
    match protocol {
        Protocol::Native => {
            next_text(&mut ws).await?; // welcome
            let join = serde_json::json!({"type": "join", "room": room, "id": 1}).to_string();
            ws.send(Message::text(join))
                .await
                .map_err(|e| e.to_string())?;
            loop {
                let t = next_text(&mut ws).await?;
                if t.contains("\"joined\"") {
                    return Ok(ws);
                }
                if t.contains("\"error\"") {
                    return Err(t);
                }
            }
        }
        Protocol::SocketIo => {
            next_text(&mut ws).await?; // open packet
            ws.send(Message::text("40"))
                .await
                .map_err(|e| e.to_string())?;
            let connected = next_text(&mut ws).await?;
            if !connected.starts_with("40") {
                return Err(connected);
            }
            let join = format!("421[\"join\",{{\"room\":\"{room}\"}}]");
            ws.send(Message::text(join))
                .await
                .map_err(|e| e.to_string())?;
            loop {
                let t = next_text(&mut ws).await?;
                if t.starts_with("431") {
                    return Ok(ws);
                }
            }
        }
    }
}

/// The `data` of a room message frame, if this frame is one.
fn message_data(protocol: Protocol, text: &str) -> Option<serde_json::Value> {
    match protocol {
        Protocol::Native => {
            let v: serde_json::Value = serde_json::from_str(text).ok()?;
            (v["type"] == "message").then(|| v["data"].clone())
        }
        Protocol::SocketIo => {
            let args: serde_json::Value = serde_json::from_str(text.strip_prefix("42")?).ok()?;
            (args[0] == "tick").then(|| args[1].clone())
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn fanout(a: &Args) -> Result<(), String> {
    let base = a.str("url", "http://127.0.0.1:8080");
    let protocol = if a.str("protocol", "native") == "sio" {
        Protocol::SocketIo
    } else {
        Protocol::Native
    };
    let members: usize = a.get("members", 1000);
    let rate: f64 = a.get("rate", 10.0); // 0: as fast as the socket takes them
    let duration = Duration::from_secs_f64(a.get("duration", 10.0));
    let payload = "x".repeat(a.get("payload", 64));
    let sources: u8 = a.get("sources", 8);
    let pid: Option<u32> = a.0.get("pid").and_then(|p| p.parse().ok());
    let room = a.str("room", "bench");

    let mut joined = Vec::with_capacity(members);
    for i in 0..members {
        let ws = member(&base, protocol, 1 + (i % sources as usize) as u8, &room).await?;
        joined.push(ws);
    }
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(Vec<u64>, Vec<u64>)>();
    // How many messages were sent, once publishing ends (u64::MAX until then).
    let (expected_tx, expected_rx) = tokio::sync::watch::channel(u64::MAX);
    for mut ws in joined {
        let tx = done_tx.clone();
        let mut expected = expected_rx.clone();
        tokio::spawn(async move {
            let (mut lat, mut seq) = (Vec::new(), Vec::new());
            loop {
                if seq.len() as u64 >= *expected.borrow() {
                    break;
                }
                let t = tokio::select! {
                    r = tokio::time::timeout(Duration::from_secs(20), next_text(&mut ws)) => match r {
                        Ok(Ok(t)) => t,
                        _ => break,
                    },
                    _ = expected.changed() => continue,
                };
                if let Some(d) = message_data(protocol, &t) {
                    let now = now_micros();
                    lat.push(now.saturating_sub(d["t"].as_u64().unwrap_or(now)));
                    seq.push(d["i"].as_u64().unwrap_or(u64::MAX));
                }
            }
            let _ = tx.send((lat, seq));
        });
    }
    drop(done_tx);

    // The publisher is a member too (required on the native protocol); it drains its own copies.
    let (mut publisher, mut own) = member(&base, protocol, 1, &room).await?.split();
    tokio::spawn(async move { while let Some(Ok(_)) = own.next().await {} });
    let cpu0 = pid.and_then(cpu_seconds);
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < duration {
        let data = serde_json::json!({"t": now_micros(), "i": sent, "pad": payload});
        let frame = match protocol {
            Protocol::Native => {
                serde_json::json!({"type": "publish", "room": room, "event": "tick", "data": data})
                    .to_string()
            }
            Protocol::SocketIo => format!(
                "42[\"publish\",{}]",
                serde_json::json!({"room": room, "event": "tick", "data": data})
            ),
        };
        publisher
            .send(Message::text(frame))
            .await
            .map_err(|e| e.to_string())?;
        sent += 1;
        if rate > 0.0 {
            let next = Duration::from_secs_f64(sent as f64 / rate);
            if let Some(wait) = next.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    let _ = expected_tx.send(sent);

    let (mut all, mut delivered, mut broken) = (Vec::new(), 0u64, 0usize);
    while let Some((lat, seq)) = done_rx.recv().await {
        delivered += seq.len() as u64;
        if seq.iter().copied().ne(0..sent) {
            broken += 1;
        }
        all.extend(lat);
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = match (cpu0, pid.and_then(cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    all.sort_unstable();
    let expected_total = sent * members as u64;
    println!(
        "{{\"scenario\":\"fanout\",\"protocol\":\"{}\",\"members\":{members},\"rate\":{rate},\"sent\":{sent},\
\"delivered\":{delivered},\"expected\":{expected_total},\"members_out_of_order_or_missing\":{broken},\
\"wall_s\":{wall:.2},\"deliveries_per_s\":{:.0},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"max_ms\":{:.2},\
\"server_cpu_s\":{},\"deliveries_per_cpu_s\":{}}}",
        if protocol == Protocol::Native { "native" } else { "sio" },
        delivered as f64 / wall,
        percentile(&all, 0.50) as f64 / 1000.0,
        percentile(&all, 0.99) as f64 / 1000.0,
        all.last().copied().unwrap_or(0) as f64 / 1000.0,
        cpu.map(|c| format!("{c:.2}")).unwrap_or_else(|| "null".into()),
        cpu.filter(|c| *c > 0.0)
            .map(|c| format!("{:.0}", delivered as f64 / c))
            .unwrap_or_else(|| "null".into()),
    );
    if delivered != expected_total || broken > 0 {
        return Err(format!(
            "{} of {expected_total} delivered; {broken} members out of order or missing",
            delivered
        ));
    }
    Ok(())
}

async fn idle(a: &Args) -> Result<(), String> {
    let base = a.str("url", "http://127.0.0.1:8080");
    let protocol = if a.str("protocol", "native") == "sio" {
        Protocol::SocketIo
    } else {
        Protocol::Native
    };
    let conns: usize = a.get("conns", 1000);
    let sources: u8 = a.get("sources", 16);
    let hold = Duration::from_secs_f64(a.get("hold", 5.0));
    let pid: Option<u32> = a.0.get("pid").and_then(|p| p.parse().ok());
    let before = pid.and_then(rss_kib);
    let mut held = Vec::with_capacity(conns);
    for i in 0..conns {
        let ws = member(
            &base,
            protocol,
            1 + (i % sources as usize) as u8,
            &format!("idle-{}", i % 100),
        )
        .await?;
        held.push(ws);
    }
    tokio::time::sleep(hold).await; // let the server settle; this is a measurement pause
    let after = pid.and_then(rss_kib);
    let per = match (before, after) {
        (Some(b), Some(a)) => format!("{:.2}", (a as f64 - b as f64) / conns as f64),
        _ => "null".into(),
    };
    println!(
        "{{\"scenario\":\"idle\",\"protocol\":\"{}\",\"conns\":{conns},\"rss_before_kib\":{},\"rss_after_kib\":{},\"kib_per_conn\":{per}}}",
        if protocol == Protocol::Native { "native" } else { "sio" },
        before.map(|v| v.to_string()).unwrap_or_else(|| "null".into()),
        after.map(|v| v.to_string()).unwrap_or_else(|| "null".into()),
    );
    Ok(())
}

#[tokio::main]
async fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = argv.first().cloned() else {
        eprintln!("usage: switchyard-bench fanout|idle --key value …");
        std::process::exit(2);
    };
    let mut map = HashMap::new();
    for pair in argv[1..].chunks(2) {
        if let [k, v] = pair {
            map.insert(k.trim_start_matches("--").to_string(), v.clone());
        }
    }
    let args = Args(map);
    let result = match cmd.as_str() {
        "fanout" => fanout(&args).await,
        "idle" => idle(&args).await,
        other => Err(format!("unknown scenario {other}")),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
