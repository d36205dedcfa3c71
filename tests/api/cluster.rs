//! Several nodes on the machine's Redis and PostgreSQL (cluster mode): one order per room seen
//! on every node, resume on any node, epochs that survive the nodes, and publishes refused (not
//! lost) while Redis is away. Nodes run in this process, each on its own actix system and port
//! 0, as separate servers; Redis sits behind a TCP proxy the test can cut. Each test uses its own
//! key prefix and removes its keys at the end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use switchyard::config::Settings;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::*;

const REDIS: &str = "127.0.0.1:6379";

/// A TCP proxy in front of Redis that the test can cut (every connection closed, new ones
/// refused) and restore.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    /// Bumped on every cut: a forwarding task of an older generation stops.
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (u, g) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !u.load(Ordering::SeqCst) {
                    let _ = client.shutdown().await;
                    continue;
                }
                let mine = g.load(Ordering::SeqCst);
                let g = g.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(REDIS).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
                    tokio::pin!(copy);
                    loop {
                        tokio::select! {
                            _ = &mut copy => return,
                            _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {
                                if g.load(Ordering::SeqCst) != mine {
                                    return; // cut: both sockets close as this task ends
                                }
                            }
                        }
                    }
                });
            }
        });
        Self {
            port,
            up,
            generation,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Nodes sharing one PostgreSQL database and one Redis key prefix.
struct Cluster {
    db: TestDb,
    prefix: String,
    redis_url: String,
    nodes: Vec<TestApp>,
}

impl Cluster {
    async fn start(n: usize, redis_url: String, tweak: impl Fn(&mut Settings)) -> Self {
        let db = TestDb::new(Backend::Postgres);
        let prefix = format!("sy-test-{}", uuid::Uuid::new_v4().simple());
        let mut c = Self {
            db,
            prefix,
            redis_url,
            nodes: Vec::new(),
        };
        for _ in 0..n {
            c.add(&tweak).await;
        }
        c
    }

    fn settings(&self, tweak: &impl Fn(&mut Settings)) -> Settings {
        let mut s = test_settings(&self.db);
        s.jwt_secret = Some(SECRET.into());
        s.redis_url = Some(self.redis_url.clone());
        s.redis_prefix = self.prefix.clone();
        tweak(&mut s);
        s
    }

    async fn add(&mut self, tweak: &impl Fn(&mut Settings)) {
        let url = self.redis_url.clone();
        self.add_at(url, tweak).await;
    }

    /// A node that reaches Redis at `redis_url` (e.g. through its own proxy).
    async fn add_at(&mut self, redis_url: String, tweak: &impl Fn(&mut Settings)) {
        let mut settings = self.settings(tweak);
        settings.redis_url = Some(redis_url);
        let node = spawn_app_on(TestDb::shared(&self.db), settings).await;
        self.nodes.push(node);
    }

    /// Stops every node (gracefully) and starts as many again on the same database and prefix.
    async fn restart(&mut self, tweak: impl Fn(&mut Settings)) {
        let n = self.nodes.len();
        for node in self.nodes.drain(..) {
            node.shutdown().await;
        }
        for _ in 0..n {
            self.add(&tweak).await;
        }
    }

    /// Removes this test's keys from Redis and stops the nodes.
    async fn stop(mut self) {
        for node in self.nodes.drain(..) {
            node.shutdown().await;
        }
        forget_redis_prefix(&self.prefix).await;
    }
}

async fn member(node: &TestApp, user: &str, room: &str) -> WsClient {
    joined(node, user, room).await.0
}

/// A member of `room` on `node`, with its join answer.
async fn joined(node: &TestApp, user: &str, room: &str) -> (WsClient, Value) {
    let t = token(user, &["*"], &["*"], None);
    let mut ws = WsClient::connect(&node.ws_url(), Some(&t)).await;
    let answer = ws.join(room).await;
    (ws, answer)
}

/// With Redis cut: `ws`'s publishes are refused `unavailable` (one that reached Redis as the
/// cut began may still pass), and once they are, each within 1.5 s of asking (deadline 1 s).
async fn refused_while_redis_is_cut(ws: &mut WsClient, room: &str) {
    let publish = json!({"type": "publish", "room": room, "event": "m", "data": "during"});
    let started = std::time::Instant::now();
    let refused = loop {
        let r = ws.request(publish.clone()).await;
        if r["type"] == "error" {
            break r;
        }
        assert!(started.elapsed() < WAIT, "never refused");
    };
    assert_eq!(refused["code"], "unavailable", "{refused}");
    let t0 = std::time::Instant::now();
    let r = ws.request(publish).await;
    assert_eq!(r["code"], "unavailable", "{r}");
    assert!(
        t0.elapsed() < std::time::Duration::from_millis(1_500),
        "refused in {:?}",
        t0.elapsed()
    );
}

/// Redis back: `ws` publishes "after" as soon as its node accepts again (polled: the node's
/// Redis connection comes back on its own schedule, within `WAIT`); its offset.
async fn published_once_redis_is_back(ws: &mut WsClient, room: &str) -> Option<u64> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = ws
            .request(json!({"type": "publish", "room": room, "event": "m", "data": "after"}))
            .await;
        if r["type"] == "published" {
            return r["offset"].as_u64();
        }
        assert!(std::time::Instant::now() < deadline, "still refused: {r}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The next `n` room messages, skipping everything else.
async fn messages(ws: &mut WsClient, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(ws.recv_message().await);
    }
    out
}

fn offsets(v: &[Value]) -> Vec<u64> {
    v.iter()
        .map(|m| m["offset"].as_u64().expect("offset"))
        .collect()
}

#[actix_web::test]
async fn publishes_on_every_node_reach_every_member_in_one_gap_free_order() {
    const EACH: usize = 40;
    let cluster = Cluster::start(3, format!("redis://{REDIS}"), |_| {}).await;
    let room = "project:cluster";
    let mut watchers = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        watchers.push(member(node, &format!("w{i}"), room).await);
    }
    let mut b = member(&cluster.nodes[1], "pb", room).await;
    let mut c = member(&cluster.nodes[2], "pc", room).await;
    // Both publishers at once, without waiting between sends.
    for i in 0..EACH {
        b.send(json!({"type": "publish", "room": room, "event": "m", "data": {"p": "b", "i": i}}))
            .await;
        c.send(json!({"type": "publish", "room": room, "event": "m", "data": {"p": "c", "i": i}}))
            .await;
    }
    let mut orders = Vec::new();
    for w in &mut watchers {
        let got = messages(w, 2 * EACH).await;
        let o = offsets(&got);
        let first = o[0];
        assert_eq!(
            o,
            (first..first + 2 * EACH as u64).collect::<Vec<_>>(),
            "no gap, no repeat"
        );
        for p in ["b", "c"] {
            let seq: Vec<u64> = got
                .iter()
                .filter(|m| m["data"]["p"] == p)
                .map(|m| m["data"]["i"].as_u64().expect("i"))
                .collect();
            assert_eq!(
                seq,
                (0..EACH as u64).collect::<Vec<_>>(),
                "{p} in its order"
            );
        }
        orders.push(
            got.iter()
                .map(|m| (m["offset"].clone(), m["data"].clone()))
                .collect::<Vec<_>>(),
        );
    }
    assert!(
        orders.iter().all(|o| *o == orders[0]),
        "one order on every node"
    );
    cluster.stop().await;
}

#[actix_web::test]
async fn a_client_resumes_on_another_node_and_is_told_when_it_cannot() {
    let cluster = Cluster::start(3, format!("redis://{REDIS}"), |s| s.history_size = 60).await;
    let room = "project:resume";
    let (mut a, answer) = joined(&cluster.nodes[0], "alice", room).await;
    let epoch = answer["epoch"].clone();
    let mut b = member(&cluster.nodes[1], "bob", room).await;
    b.publish(room, "m", json!(0)).await;
    let left_at = a.recv_message().await["offset"].as_u64().expect("offset");
    let r = a.request(json!({"type": "leave", "room": room})).await;
    assert_eq!(r["type"], "left");
    for i in 1..=50 {
        b.publish(room, "m", json!(i)).await;
    }
    // Alice comes back on node C with where she stood.
    let t = token("alice", &["*"], &["*"], None);
    let mut a2 = WsClient::connect(&cluster.nodes[2].ws_url(), Some(&t)).await;
    let since = json!({"epoch": epoch, "offset": left_at});
    let answer = a2
        .request(json!({"type": "join", "room": room, "since": since}))
        .await;
    assert_eq!(answer["type"], "joined", "{answer}");
    assert_eq!(
        answer["epoch"], epoch,
        "every node reports the room's one epoch"
    );
    assert_eq!(answer["recovered"], true, "{answer}");
    let missed = messages(&mut a2, 50).await;
    assert_eq!(
        missed.iter().map(|m| m["data"].clone()).collect::<Vec<_>>(),
        (1..=50).map(|i| json!(i)).collect::<Vec<_>>(),
        "exactly the missed ones"
    );
    // Past the history (60 kept, 100 more published): not recovered.
    for i in 51..=150 {
        b.publish(room, "m", json!(i)).await;
    }
    let mut a3 = WsClient::connect(&cluster.nodes[0].ws_url(), Some(&t)).await;
    let answer = a3
        .request(json!({"type": "join", "room": room, "since": since}))
        .await;
    assert_eq!(answer["type"], "joined", "{answer}");
    assert_eq!(answer["recovered"], false, "{answer}");
    cluster.stop().await;
}

#[actix_web::test]
async fn epochs_and_history_survive_restarting_every_node() {
    let mut cluster = Cluster::start(2, format!("redis://{REDIS}"), |_| {}).await;
    let room = "project:restart";
    let (mut a, answer) = joined(&cluster.nodes[0], "alice", room).await;
    let epoch = answer["epoch"].as_str().map(str::to_string);
    let mut b = member(&cluster.nodes[1], "bob", room).await;
    for i in 0..5 {
        b.publish(room, "m", json!(i)).await;
    }
    let got = messages(&mut a, 5).await;
    let first = got[0]["offset"].as_u64().expect("offset");
    drop(a);
    drop(b);
    cluster.restart(|_| {}).await;
    let t = token("alice", &["*"], &["*"], None);
    let mut again = WsClient::connect(&cluster.nodes[1].ws_url(), Some(&t)).await;
    let answer = again
        .request(json!({"type": "join", "room": room, "since": {"epoch": epoch, "offset": first}}))
        .await;
    assert_eq!(answer["type"], "joined", "{answer}");
    assert_eq!(
        answer["epoch"].as_str().map(str::to_string),
        epoch,
        "same epoch"
    );
    assert_eq!(answer["recovered"], true, "{answer}");
    let missed = messages(&mut again, 4).await;
    assert_eq!(
        missed.iter().map(|m| m["data"].clone()).collect::<Vec<_>>(),
        (1..5).map(|i| json!(i)).collect::<Vec<_>>()
    );
    cluster.stop().await;
}

#[actix_web::test]
async fn with_redis_cut_publishes_are_refused_at_once_and_nothing_is_lost_after() {
    let proxy = Proxy::start().await;
    // The refusal loop publishes as fast as answers come: on a loaded machine the cut can take
    // a few hundred publishes to show, and the per-connection rate limit must not answer first
    // (it did once, `rate_limited` after 206; the three-process test runs without it too).
    let cluster = Cluster::start(2, proxy.url(), |s| {
        s.publish_rate = 0;
        s.user_publish_rate = 0;
    })
    .await;
    let room = "project:outage";
    let mut a = member(&cluster.nodes[0], "alice", room).await;
    let mut b = member(&cluster.nodes[1], "bob", room).await;
    let before = b.publish(room, "m", json!("before")).await;
    assert_eq!(a.recv_message().await["data"], "before");

    proxy.cut();
    refused_while_redis_is_cut(&mut b, room).await;
    let (status, health) = cluster.nodes[0].get("/health").await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["broker"]["status"], "unreachable", "{health}");
    let (status, _) = cluster.nodes[1].get("/health").await;
    assert_eq!(status, 503);

    proxy.restore();
    // Back: the first accepted publish comes right after the last one before the cut (nothing
    // refused took an offset), and both members are still connected and get it.
    let after = published_once_redis_is_back(&mut b, room).await;
    // Alice, still connected, gets everything from the last message before the cut on, with no
    // gap: publishes that reached Redis as the cut began (acknowledged or not) in their place,
    // then "after".
    let after = after.expect("an offset");
    let mut next = before + 1;
    loop {
        let got = a.recv_message().await;
        assert_eq!(got["offset"], json!(next), "no gap: {got}");
        next += 1;
        if got["data"] == "after" {
            assert_eq!(got["offset"], json!(after));
            break;
        }
        assert_eq!(got["data"], "during", "{got}");
    }
    let (status, _) = cluster.nodes[0].get("/health").await;
    assert_eq!(status, 200);
    cluster.stop().await;
}

/// Two nodes; `alice` on the second, which reaches Redis through a proxy, and `bob` on the
/// first. After one message both got, the second node is cut off from Redis while bob
/// publishes `n` more (the fan-out stream keeps about 10, the room's own stream `history`),
/// then it is back. Returns the cluster, alice, and the offset of the message before the cut.
async fn fallen_behind(room: &str, history: usize, n: i64) -> (Cluster, WsClient, u64) {
    let proxy = Proxy::start().await;
    let tweak = move |s: &mut Settings| {
        s.redis_fanout_maxlen = 10;
        s.history_size = history;
        s.publish_rate = 0;
        s.user_publish_rate = 0;
    };
    let mut cluster = Cluster::start(1, format!("redis://{REDIS}"), tweak).await;
    cluster.add_at(proxy.url(), &tweak).await;
    let mut a = member(&cluster.nodes[1], "alice", room).await;
    let mut b = member(&cluster.nodes[0], "bob", room).await;
    let first = b.publish(room, "m", json!(0)).await;
    assert_eq!(a.recv_message().await["data"], 0);
    proxy.cut();
    for i in 1..=n {
        b.publish(room, "m", json!(i)).await;
    }
    proxy.restore();
    (cluster, a, first)
}

/// A node cut off from Redis longer than the fan-out stream keeps (10 entries here, 300
/// published meanwhile) reads on from where it stopped, finds a gap in the room's offsets, and
/// fills it from the room's own stream: its member gets every message, in order.
#[actix_web::test]
async fn a_node_that_fell_behind_the_fanout_stream_fills_the_gap_from_the_rooms_log() {
    let room = "project:gap";
    let (cluster, mut a, first) = fallen_behind(room, 1_000, 300).await;
    let got = messages(&mut a, 300).await;
    assert_eq!(
        offsets(&got),
        (first + 1..=first + 300).collect::<Vec<_>>(),
        "every offset, in order"
    );
    assert_eq!(
        got.iter().map(|m| m["data"].clone()).collect::<Vec<_>>(),
        (1..=300).map(|i| json!(i)).collect::<Vec<_>>()
    );
    cluster.stop().await;
}

#[actix_web::test]
async fn cluster_mode_refuses_to_start_on_sqlite() {
    let db = TestDb::new(Backend::Sqlite);
    let mut settings = test_settings(&db);
    settings.redis_url = Some(format!("redis://{REDIS}"));
    let err = match switchyard::startup::Application::build(settings).await {
        Ok(_) => panic!("started on SQLite in cluster mode"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("PostgreSQL"), "{err}");
}

/// Socket.IO long-polling across nodes: an Engine.IO session lives on the node that made it,
/// and its id starts with that node's name (`SWITCHYARD_NODE_ID`), so nginx sends each
/// request to its node by the `sid` query parameter (the configuration docs/cluster.md gives).
/// Real socket.io-client sessions, polling-only and upgrading, on both nodes of a room; and
/// the same nginx without the rule, where a polling session breaks (the reason for the rule).
#[actix_web::test]
async fn socket_io_long_polling_reaches_the_node_holding_its_session_through_nginx() {
    let mut cluster = Cluster::start(0, format!("redis://{REDIS}"), |_| {}).await;
    for name in ["n1", "n2"] {
        cluster
            .add(&|s: &mut Settings| s.node_id = Some(name.into()))
            .await;
    }
    let (p1, p2) = (cluster.nodes[0].port, cluster.nodes[1].port);
    let (routed, round_robin) = (free_port(), free_port());
    let proxy = |port: u16, target: &str| {
        format!(
            "server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://{target};\n\
             proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade;\n\
             proxy_set_header Connection $connection_upgrade; proxy_buffering off;\n\
             proxy_read_timeout 120s; }} }}\n"
        )
    };
    let nginx = Nginx::start(
        &format!(
            "map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
             map $arg_sid $switchyard_node {{\n  ~^n1\\. 127.0.0.1:{p1};\n  ~^n2\\. 127.0.0.1:{p2};\n  default switchyard;\n}}\n\
             upstream switchyard {{ server 127.0.0.1:{p1}; server 127.0.0.1:{p2}; }}\n{}{}",
            proxy(routed, "$switchyard_node"),
            proxy(round_robin, "switchyard"),
        ),
        &[routed, round_robin],
    )
    .await;
    run_node_file(
        "cluster-polling.test.mjs",
        &[
            ("SY_URL", format!("http://127.0.0.1:{routed}")),
            ("SY_RR_URL", format!("http://127.0.0.1:{round_robin}")),
            ("SY_SECRET", SECRET.to_string()),
            ("SY_NODES", "n1,n2".to_string()),
        ],
    )
    .await;
    // Each node's metrics carry its name.
    let text = cluster.nodes[1].metrics_text().await;
    assert!(
        text.contains("switchyard_connections{node=\"n2\"}"),
        "{text}"
    );
    drop(nginx);
    cluster.stop().await;
}

/// The dashboard's node list: every node's figures (connections, rooms, operations) and last
/// heartbeat from the shared table, on any node; a stopped node's heartbeat stops advancing
/// while the others' go on (the dashboard marks it silent).
#[actix_web::test]
async fn every_node_is_listed_with_its_figures_and_last_heartbeat() {
    let mut cluster = Cluster::start(0, format!("redis://{REDIS}"), |_| {}).await;
    for name in ["na", "nb"] {
        cluster
            .add(&|s: &mut Settings| {
                s.node_id = Some(name.into());
                s.stats_interval = std::time::Duration::from_millis(200);
            })
            .await;
    }
    let admin = token("root", &["*"], &["*"], Some("admin"));
    let _bob = member(&cluster.nodes[1], "bob", "project:nodes").await;
    async fn listed(app: &TestApp, admin: &str) -> Value {
        let (status, body) = app.get_auth("/api/nodes", admin).await;
        assert_eq!(status, 200, "{body}");
        body
    }
    let node = |body: &Value, name: &str| {
        body["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["node"] == name))
            .cloned()
    };
    eventually("both nodes listed, nb with its member", || async {
        let body = listed(&cluster.nodes[0], &admin).await;
        body["node"] == "na"
            && node(&body, "na").is_some()
            && node(&body, "nb").is_some_and(|b| b["connections"] == 1 && b["rooms"] == 1)
    })
    .await;
    let body = listed(&cluster.nodes[0], &admin).await;
    for key in [
        "operations",
        "heartbeat_ms",
        "uptime_seconds",
        "messages_in_per_sec",
    ] {
        assert!(
            node(&body, "na").is_some_and(|n| !n[key].is_null()),
            "{key}: {body}"
        );
    }
    // A user without the admin role may not list them.
    let user = token("eve", &["*"], &["*"], None);
    let (status, body) = cluster.nodes[0].get_auth("/api/nodes", &user).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));

    let nb = cluster.nodes.remove(1);
    drop(_bob);
    nb.shutdown().await;
    // nb reported every 200 ms while it ran: na's heartbeat a second past nb's last one means
    // nb stopped, and its entry stays, ageing.
    eventually("na's heartbeat to pass nb's last by a second", || async {
        let body = listed(&cluster.nodes[0], &admin).await;
        let a = node(&body, "na").and_then(|n| n["heartbeat_ms"].as_u64());
        let b = node(&body, "nb").and_then(|n| n["heartbeat_ms"].as_u64());
        matches!((a, b), (Some(a), Some(b)) if a > b + 1_000)
    })
    .await;
    cluster.stop().await;
}

/// `SWITCHYARD_USER_PUBLISH_RATE` is per user across the nodes: one user publishing as fast as
/// it can on two nodes at once gets about one budget (burst + rate × time, plus what the nodes
/// hand out within a sync interval), not one per node. Without the cluster's account each node
/// would accept burst + rate × time: about twice as many (the assertion's bound fails then).
#[actix_web::test]
async fn one_users_publish_budget_holds_across_nodes() {
    const RATE: f64 = 10.0; // burst 20
    let cluster = Cluster::start(2, format!("redis://{REDIS}"), |s| {
        s.user_publish_rate = RATE as u32;
    })
    .await;
    let t = token("greedy", &["*"], &["*"], None);
    let started = std::time::Instant::now();
    let window = std::time::Duration::from_millis(2_000);
    async fn hammer(
        node: &TestApp,
        t: &str,
        started: std::time::Instant,
        window: std::time::Duration,
    ) -> (u32, u32) {
        let (mut ok, mut limited) = (0u32, 0u32);
        while started.elapsed() < window {
            let (status, body) = node
                .post_auth(
                    "/api/rooms/project:budget/publish",
                    t,
                    json!({"event": "e", "data": 1}),
                )
                .await;
            match status {
                200 => ok += 1,
                429 => limited += 1,
                _ => panic!("{status}: {body}"),
            }
        }
        (ok, limited)
    }
    let ((ok_a, lim_a), (ok_b, lim_b)) = tokio::join!(
        hammer(&cluster.nodes[0], &t, started, window),
        hammer(&cluster.nodes[1], &t, started, window)
    );
    let elapsed = started.elapsed().as_secs_f64();
    let accepted = f64::from(ok_a + ok_b);
    // One budget: burst 20 + 10/s; slack for two nodes' sync intervals (100 ms each) and the
    // refill while the last requests were answered.
    let one_budget = 2.0 * RATE + RATE * elapsed;
    assert!(
        accepted <= one_budget + 10.0,
        "accepted {accepted} in {elapsed:.2} s (a {one_budget:.0} budget; each node: {ok_a} / {ok_b}, refused {lim_a} / {lim_b})"
    );
    assert!(
        accepted >= 2.0 * RATE,
        "the burst at least: {accepted} (refused {lim_a} / {lim_b})"
    );
    assert!(
        lim_a > 0 && lim_b > 0,
        "both nodes refused: {lim_a} / {lim_b}"
    );
    cluster.stop().await;
}

/// A message published into two rooms on one node reaches a connection on another node that
/// is in both rooms once (the shared `message_id` travels in the envelope through Redis), and
/// `from.session` names the publishing connection there too.
#[actix_web::test]
async fn a_multi_room_message_reaches_a_member_of_both_rooms_on_another_node_once() {
    let cluster = Cluster::start(2, format!("redis://{REDIS}"), |_| {}).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut both = member(b, "both", "team:a").await;
    both.join("team:b").await;
    let service = token("svc", &["*"], &["*"], Some("service"));
    let (status, r) = a
        .post_auth(
            "/api/rooms/publish",
            &service,
            json!({"rooms": ["team:a", "team:b"], "event": "notice"}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    // One publish into each room after it, from a connection on node a: once both arrived,
    // each room delivered everything before them.
    let mut publisher = member(a, "pub", "team:a").await;
    publisher.join("team:b").await;
    for room in ["team:a", "team:b"] {
        publisher.publish(room, "barrier", json!(null)).await;
    }
    let mut got = Vec::new();
    while got
        .iter()
        .filter(|m: &&Value| m["event"] == "barrier")
        .count()
        < 2
    {
        got.push(both.recv_message().await);
    }
    let notices: Vec<&Value> = got.iter().filter(|m| m["event"] == "notice").collect();
    assert_eq!(notices.len(), 1, "{got:?}");
    assert_eq!(notices[0]["message_id"], r["message_id"]);
    let barrier = got
        .iter()
        .find(|m| m["event"] == "barrier")
        .expect("barrier");
    assert_eq!(barrier["from"]["session"], publisher.welcome["session"]);
    cluster.stop().await;
}

// ---- presence across the nodes ---------------------------------------------------------------

/// The presence changes in `frames`, flattened (a frame may batch several): `+user` for an
/// arrival, `-user` for a departure.
fn presence_changes(frames: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for f in frames.iter().filter(|f| f["type"] == "presence") {
        for (key, sign) in [("joined", "+"), ("left", "-")] {
            for u in f[key].as_array().into_iter().flatten() {
                out.push(format!("{sign}{}", u["user"].as_str().unwrap_or("?")));
            }
        }
    }
    out
}

/// Frames until the message with data `sentinel` (which is published into the room after
/// everything the test waits for): what came before it, in order.
async fn frames_until(ws: &mut WsClient, sentinel: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let f = ws.recv().await;
        if f["type"] == "message" && f["data"] == sentinel {
            return out;
        }
        out.push(f);
    }
}

/// Presence frames until one holds `change` (`+user` / `-user`), within `wait`: every change
/// seen, in order, ending with it.
async fn changes_until(ws: &mut WsClient, change: &str, wait: std::time::Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + wait;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "no {change} within {wait:?}; saw {seen:?}");
        let f = ws.recv_within(left).await;
        seen.extend(presence_changes(&[f]));
        if seen.iter().any(|c| c == change) {
            return seen;
        }
    }
}

fn user_ids(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|u| u["user"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// REST presence of `room` on `node`, as user ids.
async fn rest_presence(node: &TestApp, room: &str) -> Vec<String> {
    let t = token("observer", &["*"], &[], None);
    let (status, body) = node
        .get_auth(&format!("/api/rooms/{room}/presence"), &t)
        .await;
    assert_eq!(status, 200, "{body}");
    user_ids(&body["presence"])
}

/// Live presence entries of nodes in Redis under `prefix` (registered, not yet forgotten).
async fn presence_nodes(prefix: &str) -> usize {
    let client = redis::Client::open(format!("redis://{REDIS}")).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis reachable");
    redis::cmd("ZCARD")
        .arg(format!("{prefix}:presence:nodes"))
        .query_async(&mut conn)
        .await
        .expect("ZCARD")
}

#[actix_web::test]
async fn a_user_on_several_nodes_is_present_once_and_announced_once() {
    let cluster = Cluster::start(3, format!("redis://{REDIS}"), |_| {}).await;
    let room = "project:presence";
    let mut watchers = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        watchers.push(member(node, &format!("w{i}"), room).await);
    }
    let mut seen: Vec<Vec<String>> = vec![Vec::new(); watchers.len()];
    // Every watcher's arrival is in Redis (the first watcher saw the last one's).
    seen[0].extend(changes_until(&mut watchers[0], "+w2", WAIT).await);
    // Alice on node 1, then on node 2 as well: present once, listed once, announced once.
    let alice1 = member(&cluster.nodes[1], "alice", room).await;
    for (w, s) in watchers.iter_mut().zip(&mut seen) {
        s.extend(changes_until(w, "+alice", WAIT).await);
    }
    let (alice2, answer) = joined(&cluster.nodes[2], "alice", room).await;
    assert_eq!(
        user_ids(&answer["presence"]),
        ["alice", "w0", "w1", "w2"],
        "the cluster's users, alice once: {answer}"
    );
    assert_eq!(answer["presence_count"], 4, "{answer}");
    for node in &cluster.nodes {
        assert_eq!(
            rest_presence(node, room).await,
            ["alice", "w0", "w1", "w2"],
            "REST presence lists the cluster's users once, on every node"
        );
    }
    // Bob arrives on node 0.
    let mut bob = member(&cluster.nodes[0], "bob", room).await;
    for (w, s) in watchers.iter_mut().zip(&mut seen) {
        s.extend(changes_until(w, "+bob", WAIT).await);
    }
    // Alice's node-2 connection goes (she is still on node 1): no departure. Then the one on
    // node 1: her departure, once.
    alice2.close().await;
    alice1.close().await;
    for (w, s) in watchers.iter_mut().zip(&mut seen) {
        s.extend(changes_until(w, "-alice", WAIT).await);
    }
    assert_eq!(
        rest_presence(&cluster.nodes[1], room).await,
        ["bob", "w0", "w1", "w2"]
    );
    // Nothing more after it (a second departure would come before this message).
    bob.send(json!({"type": "publish", "room": room, "event": "m", "data": "sentinel"}))
        .await;
    for (w, s) in watchers.iter_mut().zip(&mut seen) {
        s.extend(presence_changes(&frames_until(w, "sentinel").await));
    }
    for (i, s) in seen.iter().enumerate() {
        let ours: Vec<&String> = s.iter().filter(|c| !c[1..].starts_with('w')).collect();
        assert_eq!(
            ours,
            ["+alice", "+bob", "-alice"],
            "watcher on node {i}: each change once, in one order on every node (all: {s:?})"
        );
    }
    cluster.stop().await;
}

/// Short presence timers for the tests that wait for a node to expire.
fn quick_presence(s: &mut Settings) {
    // Not shorter: on a loaded two-core machine a live node must not miss its heartbeats.
    s.redis_presence_heartbeat = std::time::Duration::from_millis(250);
    s.redis_presence_ttl = std::time::Duration::from_millis(2_000);
}

/// A node cut off from Redis is, to the others, a dead node: its heartbeats stop, nothing of
/// it is cleaned up. Its users leave within the bound, announced once (a user it shared with a
/// live node stays). When it reaches Redis again its users are announced again: presence says
/// what the cluster can see.
#[actix_web::test]
async fn a_node_cut_off_from_redis_has_its_users_leave_once_and_return_when_it_is_back() {
    let proxy = Proxy::start().await;
    let mut cluster = Cluster::start(2, format!("redis://{REDIS}"), quick_presence).await;
    cluster.add_at(proxy.url(), &quick_presence).await;
    let room = "project:cutoff";
    let mut w = member(&cluster.nodes[0], "w", room).await;
    let _carol = member(&cluster.nodes[2], "carol", room).await;
    let _dave_far = member(&cluster.nodes[2], "dave", room).await;
    let _dave_near = member(&cluster.nodes[1], "dave", room).await;
    let mut before = changes_until(&mut w, "+carol", WAIT).await;
    if !before.contains(&"+dave".to_string()) {
        before.extend(changes_until(&mut w, "+dave", WAIT).await);
    }
    assert_eq!(presence_nodes(&cluster.prefix).await, 3);

    proxy.cut();
    let cut_at = std::time::Instant::now();
    let gone = changes_until(&mut w, "-carol", std::time::Duration::from_secs(20)).await;
    let took = cut_at.elapsed();
    assert_eq!(
        gone,
        ["-carol"],
        "only carol leaves (dave is still on node 1)"
    );
    // Heartbeat 250 ms, lifetime 2 s: gone within about 2.25 s (well within 20).
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
    // Once the node is forgotten no sweep can announce anything of it again; a message after
    // that shows nothing else came (a second departure would be before it).
    eventually("the cut-off node forgotten", || async {
        presence_nodes(&cluster.prefix).await == 2
    })
    .await;
    w.send(json!({"type": "publish", "room": room, "event": "m", "data": "sentinel"}))
        .await;
    let after = presence_changes(&frames_until(&mut w, "sentinel").await);
    assert!(after.is_empty(), "no second departure: {after:?}");
    assert_eq!(rest_presence(&cluster.nodes[0], room).await, ["dave", "w"]);
    // The cut-off node says it cannot tell rather than list what may be wrong.
    let t = token("observer", &["*"], &[], None);
    let (status, body) = cluster.nodes[2]
        .get_auth(&format!("/api/rooms/{room}/presence"), &t)
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "unavailable", "{body}");

    // Back: the node finds it expired and announces its users again.
    proxy.restore();
    changes_until(&mut w, "+carol", WAIT).await;
    assert_eq!(
        rest_presence(&cluster.nodes[1], room).await,
        ["carol", "dave", "w"]
    );
    cluster.stop().await;
}

/// The real binary as a cluster node, killed with SIGKILL: its users leave within 20 s with the
/// default timers (16 s at most: 12 s lifetime, 4 s heartbeat), once, seen on the other nodes.
#[actix_web::test]
async fn a_node_killed_with_sigkill_has_its_users_leave_within_20_s_once() {
    let cluster = Cluster::start(2, format!("redis://{REDIS}"), |_| {}).await;
    let room = "project:sigkill";
    let database = match &cluster.db.url {
        switchyard::config::DatabaseUrl::Postgres(url) => url.clone(),
        other => panic!("cluster on {other:?}"),
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .env("SWITCHYARD_PORT", "0")
        .env("DATABASE_URL", database)
        .env("SWITCHYARD_REDIS_URL", format!("redis://{REDIS}"))
        .env("SWITCHYARD_REDIS_PREFIX", &cluster.prefix)
        .env("SWITCHYARD_JWT_SECRET", SECRET)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn switchyard");
    let port = listening_port(child.stderr.take().expect("stderr")).await;
    let far = format!("ws://127.0.0.1:{port}/ws");
    let connect = |user: &str| {
        let t = token(user, &["*"], &["*"], None);
        let url = far.clone();
        async move { WsClient::connect(&url, Some(&t)).await }
    };

    let mut w = member(&cluster.nodes[0], "w", room).await;
    let mut erin = connect("erin").await;
    erin.join(room).await;
    let mut frank_far = connect("frank").await;
    frank_far.join(room).await;
    let _frank_near = member(&cluster.nodes[1], "frank", room).await;
    let mut seen = changes_until(&mut w, "+erin", WAIT).await;
    if !seen.contains(&"+frank".to_string()) {
        seen.extend(changes_until(&mut w, "+frank", WAIT).await);
    }
    assert_eq!(presence_nodes(&cluster.prefix).await, 3);

    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("the binary ends");
    let killed_at = std::time::Instant::now();
    let gone = changes_until(&mut w, "-erin", std::time::Duration::from_secs(20)).await;
    let took = killed_at.elapsed();
    assert_eq!(gone, ["-erin"], "erin leaves, frank (also on node 1) stays");
    assert!(took < std::time::Duration::from_secs(20), "took {took:?}");
    eventually_within(
        "the killed node forgotten",
        std::time::Duration::from_secs(10),
        || async { presence_nodes(&cluster.prefix).await == 2 },
    )
    .await;
    w.send(json!({"type": "publish", "room": room, "event": "m", "data": "sentinel"}))
        .await;
    let after = presence_changes(&frames_until(&mut w, "sentinel").await);
    assert!(after.is_empty(), "announced once: {after:?}");
    assert_eq!(rest_presence(&cluster.nodes[1], room).await, ["frank", "w"]);
    drop((erin, frank_far));
    cluster.stop().await;
}

/// Reads the binary's stderr until it says where it listens, then keeps draining it.
async fn listening_port(stderr: tokio::process::ChildStderr) -> u16 {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let found = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
                if let Some(port) = rest.split_whitespace().next().and_then(|p| p.parse().ok()) {
                    return Some(port);
                }
            }
        }
        None
    })
    .await
    .expect("the binary started in time")
    .expect("the binary said where it listens");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    found
}

/// As `eventually`, with its own deadline.
async fn eventually_within<F, Fut>(what: &str, wait: std::time::Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + wait;
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A node that dies and comes back under the same node id (nodes in one process share it)
/// leaves no ghost: the old instance's entries expire and are swept, the new instance's are its
/// own, and once the user's last connection goes they are gone from every list.
#[actix_web::test]
async fn a_node_back_under_the_same_id_leaves_no_ghost() {
    let proxy = Proxy::start().await;
    let mut cluster = Cluster::start(1, format!("redis://{REDIS}"), quick_presence).await;
    cluster.add_at(proxy.url(), &quick_presence).await;
    let room = "project:ghost";
    let mut w = member(&cluster.nodes[0], "w", room).await;
    let _old = member(&cluster.nodes[1], "gina", room).await;
    changes_until(&mut w, "+gina", WAIT).await;
    // The node dies (nothing cleaned up); its successor starts under the same id, and gina
    // reconnects to it before the old entries expire.
    proxy.cut();
    cluster.add(&quick_presence).await;
    let again = member(&cluster.nodes[2], "gina", room).await;
    eventually("the dead instance forgotten", || async {
        presence_nodes(&cluster.prefix).await == 2
    })
    .await;
    assert_eq!(rest_presence(&cluster.nodes[0], room).await, ["gina", "w"]);
    // Her last connection goes: she leaves, once, and is listed nowhere.
    again.close().await;
    let seen = changes_until(&mut w, "-gina", WAIT).await;
    assert_eq!(
        seen,
        ["-gina"],
        "still present while reconnected, then gone once"
    );
    assert_eq!(rest_presence(&cluster.nodes[0], room).await, ["w"]);
    assert_eq!(rest_presence(&cluster.nodes[2], room).await, ["w"]);
    cluster.stop().await;
}

/// A node stopped gracefully writes its sessions' departures as they close: its users leave at
/// once, not when its entries expire (12 s by default).
#[actix_web::test]
async fn a_node_stopped_gracefully_has_its_users_leave_at_once() {
    let mut cluster = Cluster::start(2, format!("redis://{REDIS}"), |_| {}).await;
    let room = "project:graceful";
    let mut w = member(&cluster.nodes[0], "w", room).await;
    let _hank = member(&cluster.nodes[1], "hank", room).await;
    changes_until(&mut w, "+hank", WAIT).await;
    let node = cluster.nodes.pop().expect("node 1");
    let stopping = std::time::Instant::now();
    node.shutdown().await;
    let seen = changes_until(&mut w, "-hank", std::time::Duration::from_secs(20)).await;
    assert_eq!(seen, ["-hank"]);
    // By expiry it would take at least 8 s (12 s lifetime after a heartbeat at most 4 s old).
    assert!(
        stopping.elapsed() < std::time::Duration::from_secs(5),
        "announced by the stopping node, not by expiry: {:?}",
        stopping.elapsed()
    );
    cluster.stop().await;
}

// ---- members told when the order does not continue ------------------------------------------

/// Frames until the room message with data `last`: every frame before it, and it.
async fn frames_through(ws: &mut WsClient, last: Value) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let f = ws.recv().await;
        let done = f["type"] == "message" && f["data"] == last;
        out.push(f);
        if done {
            return out;
        }
    }
}

/// A node that fell further behind than both the fan-out stream and the room's own stream keep
/// cannot fill the gap: its members are told (one `reset`, reason `gap`, where the order
/// continues), then get every message from there on, in order — never a silent hole.
#[actix_web::test]
async fn members_are_told_of_a_gap_that_cannot_be_filled() {
    const N: i64 = 1_000;
    let room = "project:lost";
    let (cluster, mut a, first) = fallen_behind(room, 20, N).await;
    let frames = frames_through(&mut a, json!(N)).await;
    let resets: Vec<&Value> = frames.iter().filter(|f| f["type"] == "reset").collect();
    assert_eq!(resets.len(), 1, "one reset, got {}", resets.len());
    let reset = resets[0];
    assert_eq!(reset["room"], room);
    assert_eq!(reset["reason"], "gap");
    let at = reset["offset"].as_u64().expect("offset");
    let offsets_of = |frames: &mut dyn Iterator<Item = &Value>| -> Vec<u64> {
        frames
            .filter(|f| f["type"] == "message")
            .map(|f| f["offset"].as_u64().expect("offset"))
            .collect()
    };
    // What the reader got before the cut took hold, gap-free; then the reset past a real gap;
    // then everything from where it says, gap-free, to the end.
    let before = offsets_of(&mut frames.iter().take_while(|f| f["type"] != "reset"));
    let last_before = before.last().copied().unwrap_or(first);
    assert_eq!(before, (first + 1..=last_before).collect::<Vec<_>>());
    assert!(at > last_before + 1, "a real gap: {last_before} then {at}");
    let after = offsets_of(&mut frames.iter().skip_while(|f| f["type"] != "reset"));
    let last = first + N as u64;
    assert_eq!(
        after,
        (at + 1..=last).collect::<Vec<_>>(),
        "gap-free after it"
    );
    cluster.stop().await;
}

/// Redis loses a room's data (a restart without persistence, a flush): the next publish mints
/// a new epoch, and every member, on every node, is told (`reset`, reason `new_epoch`) before
/// the new epoch's first message.
#[actix_web::test]
async fn members_are_told_when_redis_lost_the_room_and_a_new_epoch_starts() {
    let cluster = Cluster::start(2, format!("redis://{REDIS}"), |_| {}).await;
    let room = "project:flushed";
    let (mut a, joined_a) = joined(&cluster.nodes[0], "alice", room).await;
    let old_epoch = joined_a["epoch"].clone();
    assert!(old_epoch.is_string(), "{joined_a}");
    let mut b = member(&cluster.nodes[1], "bob", room).await;
    // A publisher of its own: a request's answer is read past the frames before it.
    let mut p = member(&cluster.nodes[0], "pub", room).await;
    p.publish(room, "m", json!("before")).await;
    let old = b.recv_message().await;
    assert_eq!(old["data"], "before");
    assert_eq!(a.recv_message().await["data"], "before");

    // What a Redis restart without persistence does to this room.
    let client = redis::Client::open(format!("redis://{REDIS}")).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: () = redis::cmd("DEL")
        .arg(format!("{}:room:{room}:meta", cluster.prefix))
        .arg(format!("{}:room:{room}:log", cluster.prefix))
        .query_async(&mut conn)
        .await
        .expect("DEL");

    p.publish(room, "m", json!("after")).await;
    for ws in [&mut a, &mut b] {
        let frames = frames_through(ws, json!("after")).await;
        let kinds: Vec<&str> = frames
            .iter()
            .filter_map(|f| f["type"].as_str())
            .filter(|t| *t == "reset" || *t == "message")
            .collect();
        assert_eq!(kinds, ["reset", "message"]);
        let reset = frames.iter().find(|f| f["type"] == "reset").expect("reset");
        assert_eq!(reset["reason"], "new_epoch");
        assert_eq!(reset["offset"], 0);
        let message = frames.last().expect("message");
        assert_eq!(message["offset"], 1);
        assert!(reset["epoch"].is_string());
        assert_ne!(reset["epoch"], old_epoch, "a new epoch");
    }
    cluster.stop().await;
}

// ---- three real processes --------------------------------------------------------------------

/// One node as its own OS process (the binary of this build), on the cluster's
/// database and key prefix, reaching Redis at `redis_url`.
async fn node_process(
    cluster: &Cluster,
    redis_url: &str,
    name: &str,
) -> (tokio::process::Child, u16) {
    let database = match &cluster.db.url {
        switchyard::config::DatabaseUrl::Postgres(url) => url.clone(),
        other => panic!("cluster on {other:?}"),
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .env("SWITCHYARD_PORT", "0")
        .env("SWITCHYARD_NODE_ID", name)
        .env("DATABASE_URL", database)
        .env("SWITCHYARD_REDIS_URL", redis_url)
        .env("SWITCHYARD_REDIS_PREFIX", &cluster.prefix)
        .env("SWITCHYARD_JWT_SECRET", SECRET)
        .env("SWITCHYARD_PUBLISH_RATE", "0")
        .env("SWITCHYARD_USER_PUBLISH_RATE", "0")
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn switchyard");
    let port = listening_port(child.stderr.take().expect("stderr")).await;
    (child, port)
}

/// The suite with three Switchyard processes (not nodes in one process): publishers on
/// two of them at once, one gap-free order seen identically by a member on each; then Redis
/// cut behind the proxy: publishes refused `unavailable` within the deadline, `/health`
/// degraded, no session dropped, and after Redis is back the order goes on without a gap.
#[actix_web::test]
async fn three_processes_share_one_order_and_ride_out_a_redis_cut() {
    const EACH: usize = 30;
    let proxy = Proxy::start().await;
    let cluster = Cluster::start(0, proxy.url(), |_| {}).await;
    let mut nodes = Vec::new();
    for name in ["p1", "p2", "p3"] {
        nodes.push(node_process(&cluster, &proxy.url(), name).await);
    }
    let ws = |port: u16| format!("ws://127.0.0.1:{port}/ws");
    let http = reqwest::Client::new();
    let room = "project:processes";
    let join = |port: u16, user: &'static str| {
        let url = ws(port);
        async move {
            let mut c = WsClient::connect(&url, Some(&token(user, &["*"], &["*"], None))).await;
            c.join(room).await;
            c
        }
    };
    let mut members = Vec::new();
    for (i, (_, port)) in nodes.iter().enumerate() {
        members.push(join(*port, ["m1", "m2", "m3"][i]).await);
    }
    let mut pub1 = join(nodes[0].1, "pub1").await;
    let mut pub2 = join(nodes[1].1, "pub2").await;
    // Sent without waiting for each answer: the two publishers interleave on Redis.
    async fn publish_all(c: &mut WsClient, room: &str, tag: &str, n: usize) {
        for i in 0..n {
            c.send(
                json!({"type": "publish", "room": room, "event": "m", "data": format!("{tag}{i}")}),
            )
            .await;
        }
    }
    tokio::join!(
        publish_all(&mut pub1, room, "a", EACH),
        publish_all(&mut pub2, room, "b", EACH)
    );
    let mut orders = Vec::new();
    let mut last_seen = Vec::new();
    for m in &mut members {
        let got = messages(m, 2 * EACH).await;
        let offs = offsets(&got);
        last_seen.push(*offs.last().expect("messages"));
        assert_eq!(
            offs,
            (offs[0]..offs[0] + 2 * EACH as u64).collect::<Vec<_>>(),
            "gap-free"
        );
        orders.push(got.iter().map(|g| g["data"].clone()).collect::<Vec<_>>());
    }
    assert_eq!(orders[0], orders[1], "one order on p1 and p2");
    assert_eq!(orders[0], orders[2], "one order on p1 and p3");
    for tag in ["a", "b"] {
        let mine: Vec<&Value> = orders[0]
            .iter()
            .filter(|d| d.as_str().is_some_and(|s| s.starts_with(tag)))
            .collect();
        let sent: Vec<Value> = (0..EACH).map(|i| json!(format!("{tag}{i}"))).collect();
        assert_eq!(
            mine,
            sent.iter().collect::<Vec<_>>(),
            "each publisher's own order"
        );
    }

    proxy.cut();
    let mut p3 = join(nodes[2].1, "pub3").await;
    refused_while_redis_is_cut(&mut p3, room).await;
    let res = http
        .get(format!("http://127.0.0.1:{}/health", nodes[2].1))
        .send()
        .await
        .expect("health");
    assert_eq!(res.status().as_u16(), 503);

    proxy.restore();
    published_once_redis_is_back(&mut p3, room).await;
    // Every member, still connected to its process, goes on without a gap up to "after"
    // (publishes that reached Redis as the cut began are delivered in their place).
    for (m, last) in members.iter_mut().zip(last_seen) {
        let mut prev = last;
        loop {
            let got = m.recv_message().await;
            let off = got["offset"].as_u64().expect("offset");
            assert_eq!(off, prev + 1, "no gap");
            prev = off;
            if got["data"] == "after" {
                break;
            }
        }
    }
    for (mut child, _) in nodes {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    cluster.stop().await;
}
