//! The benchmark's smoke check (docs/benchmarks.md): small runs of the `switchyard-bench`
//! scenarios, in-process against a real server, asserting only what must hold at any speed —
//! every member got every message exactly once and in order. Never a speed assertion.

use std::future::Future;
use std::process::Stdio;
use std::time::Duration;

use switchyard::config::Settings;
use switchyard_bench::{ConnectConfig, FanoutConfig, OperationsConfig, Protocol, RoomsConfig};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::*;

/// The bound on each whole run (the scenarios also bound each of their own waits).
const RUN: Duration = Duration::from_secs(90);

/// What the benchmark turns off: per-connection and per-address limits would refuse its load.
fn unlimited(s: &mut Settings) {
    s.publish_rate = 0;
    s.user_publish_rate = 0;
    s.max_connections_per_ip = 0;
    s.new_connections_per_ip = 0;
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(RUN, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {RUN:?}"))
}

fn small_fanout(url: &str, server: &str, protocol: Protocol) -> FanoutConfig {
    FanoutConfig {
        rate: Some(40.0),
        max: true,
        window: 8,
        duration: 0.5,
        stall_timeout: 20.0,
        ..FanoutConfig::new(url, server, protocol, 40)
    }
}

fn small_rooms(url: &str, server: &str, protocol: Protocol) -> RoomsConfig {
    RoomsConfig {
        rooms: 25,
        size: 4,
        rate: 200.0,
        duration: 0.5,
        stall_timeout: 20.0,
        ..RoomsConfig::new(url, server, protocol)
    }
}

fn small_connect(url: &str, server: &str, protocol: Protocol) -> ConnectConfig {
    ConnectConfig {
        concurrency: 20,
        settle_timeout: 20.0,
        ..ConnectConfig::new(url, server, protocol, 40)
    }
}

/// 40 distinct users joining rooms of four: all set up; on Switchyard each learns its room-mates.
async fn connect_checks(url: &str, server: &str, protocol: Protocol) {
    let cfg = small_connect(url, server, protocol);
    let r = within("connect", switchyard_bench::connect(&cfg))
        .await
        .unwrap_or_else(|e| panic!("{server} {protocol} connect: {e}"));
    let json = serde_json::to_string(&r).expect("report serialises");
    assert!(r.ok, "{server} {protocol} connect: {json}");
    assert_eq!((r.joined, r.rooms), (40, 10), "{json}");
    assert!(r.conns_per_s > 0.0, "{json}");
    assert!(
        r.listen_overflows.is_some(),
        "read from /proc/net/netstat: {json}"
    );
    assert_eq!(r.presence_checked, server == "switchyard", "{json}");
    if r.presence_checked {
        // Each room of four announces its 2nd, 3rd and 4th arrival to those before (batched
        // announcements may merge some): at least one event per room.
        assert!(r.presence_events >= 10, "{json}");
    }
}

async fn fanout_checks(url: &str, server: &str, protocol: Protocol) {
    let cfg = small_fanout(url, server, protocol);
    let reports = within("fanout", switchyard_bench::fanout(&cfg))
        .await
        .unwrap_or_else(|e| panic!("{server} {protocol} fanout: {e}"));
    assert_eq!(reports.len(), 2, "a rate phase and a max-rate phase");
    for r in reports {
        let json = serde_json::to_string(&r).expect("report serialises");
        assert!(
            r.result.ok,
            "{server} {protocol} fanout ({}): {json}",
            r.mode
        );
        assert!(r.result.sent > 0, "{json}");
        assert_eq!(r.result.delivered, r.result.sent * 40, "{json}");
        assert_eq!(
            (r.result.members_broken, r.result.members_failed),
            (0, 0),
            "{json}"
        );
    }
}

/// One identity shared by every member (what the benchmark's big rooms use), native protocol.
async fn shared_identity_check(url: &str, server: &str) {
    let cfg = FanoutConfig {
        user: Some("bench".into()),
        max: false,
        ..small_fanout(url, server, Protocol::Native)
    };
    let reports = within("fanout", switchyard_bench::fanout(&cfg))
        .await
        .expect("fanout");
    assert!(reports[0].result.ok, "{server}: {:?}", reports[0]);
}

#[tokio::test]
async fn fanout_reaches_every_member_exactly_once_in_order_over_both_protocols() {
    let app = spawn_app_with(Backend::Sqlite, unlimited).await;
    let url = app.url("");
    fanout_checks(&url, "switchyard", Protocol::Native).await;
    fanout_checks(&url, "switchyard", Protocol::Sio).await;
    shared_identity_check(&url, "switchyard").await;
    app.shutdown().await;
}

#[tokio::test]
async fn connecting_users_are_set_up_and_learn_their_room_mates_over_both_protocols() {
    let app = spawn_app_with(Backend::Sqlite, unlimited).await;
    connect_checks(&app.url(""), "switchyard", Protocol::Native).await;
    connect_checks(&app.url(""), "switchyard", Protocol::Sio).await;
    app.shutdown().await;
}

#[tokio::test]
async fn rooms_deliver_every_senders_messages_exactly_once_in_order() {
    let app = spawn_app_with(Backend::Sqlite, unlimited).await;
    for protocol in [Protocol::Native, Protocol::Sio] {
        let cfg = small_rooms(&app.url(""), "switchyard", protocol);
        let r = within("rooms", switchyard_bench::rooms(&cfg))
            .await
            .unwrap_or_else(|e| panic!("{protocol} rooms: {e}"));
        let json = serde_json::to_string(&r).expect("report serialises");
        assert!(r.result.ok, "{protocol} rooms: {json}");
        assert_eq!(r.connections, 100, "{json}");
        assert!(r.result.sent > 0, "{json}");
        assert_eq!(r.result.delivered, r.result.sent * 4, "{json}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn operations_reach_their_watchers_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kinds = dir.path().join("operations.toml");
    std::fs::write(&kinds, "[kinds.bench]\nrunner = \"external\"\n").expect("kinds file");
    let app = spawn_app_with(Backend::Sqlite, |s| {
        unlimited(s);
        s.operations_file = Some(kinds.clone());
    })
    .await;
    let cfg = OperationsConfig {
        workers: 2,
        rate: 10.0,
        duration: 0.5,
        stall_timeout: 20.0,
        ..OperationsConfig::new(&app.url(""), "bench", 20)
    };
    let r = within("operations", switchyard_bench::operations(&cfg))
        .await
        .unwrap_or_else(|e| panic!("operations: {e}"));
    let json = serde_json::to_string(&r).expect("report serialises");
    assert!(r.ok, "{json}");
    assert!(r.reports_sent >= 20, "{json}");
    assert_eq!(r.log_lines_received, r.reports_sent, "{json}");
    assert_eq!(r.database, "sqlite", "{json}");
    assert!(r.db_writes.is_some_and(|w| w > 0), "{json}");
    assert!(r.db_transactions.is_some_and(|t| t > 0), "{json}");
    assert_eq!(r.db_cpu_s, None, "SQLite runs inside the server: {json}");
    app.shutdown().await;
}

#[tokio::test]
async fn operations_reach_their_watchers_in_order_on_postgres() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kinds = dir.path().join("operations.toml");
    std::fs::write(&kinds, "[kinds.bench]\nrunner = \"external\"\n").expect("kinds file");
    let app = spawn_app_with(Backend::Postgres, |s| {
        unlimited(s);
        s.operations_file = Some(kinds.clone());
    })
    .await;
    let name = app.db.pg_name.clone().expect("a PostgreSQL test database");
    let cfg = OperationsConfig {
        workers: 2,
        rate: 10.0,
        duration: 0.5,
        stall_timeout: 20.0,
        database: "postgres".into(),
        db_processes: Some(format!(" {name} ")),
        ..OperationsConfig::new(&app.url(""), "bench", 20)
    };
    let r = within("operations", switchyard_bench::operations(&cfg))
        .await
        .unwrap_or_else(|e| panic!("operations on PostgreSQL: {e}"));
    let json = serde_json::to_string(&r).expect("report serialises");
    assert!(r.ok, "{json}");
    assert_eq!(r.log_lines_received, r.reports_sent, "{json}");
    assert_eq!(r.database, "postgres", "{json}");
    assert!(r.db_writes.is_some_and(|w| w > 0), "{json}");
    assert!(r.db_transactions.is_some_and(|t| t > 0), "{json}");
    // The backends serving the test database were found (their CPU may round to 0 ticks).
    assert!(r.db_cpu_s.is_some(), "{json}");
    app.shutdown().await;
}

/// The Node socket.io@4 reference server (bench/node), on a free port it names.
struct NodeReference {
    child: tokio::process::Child,
    port: u16,
}

async fn node_reference() -> NodeReference {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/node");
    assert!(
        dir.join("node_modules/socket.io").is_dir(),
        "bench/node/node_modules is missing: run `npm ci --prefix bench/node` (.ci/run does)"
    );
    let mut child = tokio::process::Command::new("node")
        .arg("server.mjs")
        .current_dir(&dir)
        .env("PORT", "0")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (.ci/run installs it)");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let port = tokio::time::timeout(WAIT * 2, async {
        while let Some(line) = lines.next_line().await.expect("read node's stdout") {
            if let Some(port) = line.strip_prefix("reference socket.io server listening on ") {
                return port.trim().parse::<u16>().expect("a port");
            }
        }
        panic!("node exited before listening");
    })
    .await
    .expect("the reference server listened in time");
    // Keep draining its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    NodeReference { child, port }
}

#[tokio::test]
async fn the_node_reference_passes_the_same_check() {
    let mut node = node_reference().await;
    let url = format!("http://127.0.0.1:{}", node.port);
    fanout_checks(&url, "node", Protocol::Sio).await;
    let cfg = small_rooms(&url, "node", Protocol::Sio);
    let r = within("rooms", switchyard_bench::rooms(&cfg))
        .await
        .expect("rooms");
    assert!(r.result.ok, "{r:?}");
    connect_checks(&url, "node", Protocol::Sio).await;
    let _ = node.child.kill().await;
}

/// A floor server on its own thread (a blocking epoll loop), stopped and joined by `stop`.
struct RunningFloor {
    url: String,
    stop: switchyard_bench::floor::Stop,
    served: std::thread::JoinHandle<Result<(), String>>,
}

impl RunningFloor {
    fn start(presence: bool) -> Self {
        let floor = switchyard_bench::floor::Floor::bind(0, presence).expect("the floor binds");
        let url = format!("http://127.0.0.1:{}", floor.port().expect("its port"));
        let stop = floor.stopper();
        let served = std::thread::spawn(move || floor.serve());
        Self { url, stop, served }
    }

    fn stop(self) {
        self.stop.stop();
        self.served
            .join()
            .expect("the floor's thread")
            .expect("the floor served until stopped");
    }
}

#[tokio::test]
async fn the_floor_passes_the_same_check() {
    let floor = RunningFloor::start(false);
    let url = floor.url.clone();
    fanout_checks(&url, "floor", Protocol::Native).await;
    shared_identity_check(&url, "floor").await;
    let r = within(
        "rooms",
        switchyard_bench::rooms(&small_rooms(&url, "floor", Protocol::Native)),
    )
    .await
    .expect("rooms");
    assert!(r.result.ok, "{r:?}");
    assert_eq!(r.result.delivered, r.result.sent * 4, "{r:?}");
    connect_checks(&url, "floor", Protocol::Native).await;
    // The presence check can fail: the floor announces no one.
    let cfg = ConnectConfig {
        presence: true,
        settle_timeout: 1.0,
        ..small_connect(&url, "floor", Protocol::Native)
    };
    let r = within("connect", switchyard_bench::connect(&cfg))
        .await
        .expect("connect");
    assert!(!r.ok, "no presence, yet the check passed: {r:?}");
    assert!(
        r.first_problem
            .as_deref()
            .is_some_and(|p| p.contains("did not learn of every room-mate")),
        "{r:?}"
    );
    floor.stop();
}

/// The floor of the connection set-up scenario (`floor-server --presence true`) does the I/O
/// presence needs, so the generator's presence check holds for it as for Switchyard.
#[tokio::test]
async fn the_floor_with_presence_passes_the_presence_check() {
    let floor = RunningFloor::start(true);
    let url = floor.url.clone();
    let cfg = ConnectConfig {
        presence: true,
        ..small_connect(&url, "floor", Protocol::Native)
    };
    let r = within("connect", switchyard_bench::connect(&cfg))
        .await
        .expect("connect");
    assert!(r.ok, "{r:?}");
    assert!(r.presence_checked, "{r:?}");
    // Rooms of four filled one arrival at a time: 0 + 1 + 2 + 3 announcements per room.
    assert_eq!(r.presence_events, r.rooms as u64 * 6, "{r:?}");
    // Publishing still reaches every member.
    let cfg = small_rooms(&url, "floor", Protocol::Native);
    let r = within("rooms", switchyard_bench::rooms(&cfg))
        .await
        .expect("rooms");
    assert!(r.result.ok, "{r:?}");
    floor.stop();
}

/// The idle scenario's browser path (#18): Socket.IO connections that start on long-polling and
/// upgrade, held across several ping rounds. Every one of them used to die at its ping timeout
/// (a poll refused mid-upgrade took the WebSocket's wake-ups), so the idle run stalled.
#[tokio::test]
async fn idle_connections_made_the_browsers_way_survive_their_ping_rounds() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        unlimited(s);
        s.sio_ping_interval = Duration::from_millis(200);
        s.sio_ping_timeout = Duration::from_millis(200);
    })
    .await;
    let cfg = switchyard_bench::idle::HoldConfig {
        url: app.url(""),
        protocol: Protocol::Sio,
        conns: 40,
        offset: 0,
        rooms: 10,
        first_source: 1,
        sources: 2,
        concurrency: 40,
        via_polling: true,
    };
    let done = within(
        "holding 40 connections made through long-polling",
        switchyard_bench::idle::hold(
            &cfg,
            |ready| assert_eq!((ready.conns, ready.failed), (40, 0), "{ready:?}"),
            // What is checked is that nothing happens: no connection ends while five ping
            // rounds pass (a dead one is closed 400 ms after its last pong). So this waits for
            // time itself, five times the ping interval plus its timeout.
            async {
                tokio::time::sleep(Duration::from_millis(5 * 400)).await;
                assert_eq!(app.metric("switchyard_connections").await, 40);
            },
        ),
    )
    .await
    .expect("hold");
    assert_eq!(done.failed, 0, "{:?}", done.first_problem);
}
