//! `fanout`: one room of N members; one of them publishes, every member (the publisher too)
//! gets every message. A light fixed-rate phase (latency) and a max-rate phase (throughput and
//! CPU per delivery) run on the same connections, one after the other.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::{self, Protocol};
use crate::identity;
use crate::load::{Load, LoadSpec, Pace, Phase, PhaseResult};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FanoutConfig {
    pub url: String,
    /// A label for the report: `switchyard` or `node`.
    pub server: String,
    pub protocol: Protocol,
    pub members: usize,
    /// Publishes a second of the light phase; None skips it.
    pub rate: Option<f64>,
    /// Run the max-rate phase.
    pub max: bool,
    /// Messages per member in flight at max rate.
    pub window: u64,
    /// Seconds per phase.
    pub duration: f64,
    pub payload: usize,
    pub sources: usize,
    pub concurrency: usize,
    pub server_pid: Option<u32>,
    /// More processes counted as the server (a cluster's other nodes, Redis).
    pub extra_pids: Vec<u32>,
    /// Other nodes of a cluster: every member but the publisher connects to one of them
    /// (round-robin), so every delivery crosses nodes. Empty: one server.
    pub others: Vec<String>,
    pub stall_timeout: f64,
    /// Every member declares this user (None: each is its own anonymous user). Switchyard
    /// announces presence per user; the Node reference has none.
    pub user: Option<String>,
}

impl FanoutConfig {
    pub fn new(url: &str, server: &str, protocol: Protocol, members: usize) -> Self {
        Self {
            url: url.into(),
            server: server.into(),
            protocol,
            members,
            rate: Some(10.0),
            max: true,
            window: 32,
            duration: 10.0,
            payload: 64,
            sources: 8,
            concurrency: 200,
            server_pid: None,
            extra_pids: Vec::new(),
            others: Vec::new(),
            stall_timeout: 15.0,
            user: None,
        }
    }
}

/// One phase's line of the results file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FanoutReport {
    pub scenario: String,
    pub server: String,
    pub protocol: Protocol,
    pub members: usize,
    /// Servers the members were spread over (1, or a cluster's nodes).
    #[serde(default = "one")]
    pub nodes: usize,
    /// `rate` or `max`.
    pub mode: String,
    pub target_rate: Option<f64>,
    pub window: u64,
    pub payload: usize,
    /// `anonymous` (a user per connection) or `shared` (one user for all).
    pub identity: String,
    pub connect_s: f64,
    pub connect_server_cpu_s: Option<f64>,
    #[serde(flatten)]
    pub result: PhaseResult,
}

fn one() -> usize {
    1
}

/// Connects the room, runs the phases, returns a report per phase.
pub async fn fanout(cfg: &FanoutConfig) -> Result<Vec<FanoutReport>, String> {
    if cfg.members < 1 {
        return Err("fanout needs at least one member".into());
    }
    let spec = LoadSpec {
        addr: client::parse_addr(&cfg.url)?,
        protocol: cfg.protocol,
        rooms: vec![format!("fanout-{}", crate::nonce())],
        room_size: cfg.members,
        publishers_per_room: 1,
        streams: 2,
        payload: cfg.payload,
        sources: cfg.sources,
        concurrency: cfg.concurrency,
        connect_timeout: Duration::from_secs(30),
        server_pid: cfg.server_pid,
        extra_pids: cfg.extra_pids.clone(),
        others: cfg
            .others
            .iter()
            .map(|u| client::parse_addr(u))
            .collect::<Result<_, _>>()?,
        user: cfg.user.clone(),
    };
    let load = Load::connect(&spec).await?;
    let mut phases = Vec::new();
    if let Some(rate) = cfg.rate.filter(|r| *r > 0.0) {
        phases.push(("rate", Pace::Rate(rate), 0u32));
    }
    if cfg.max {
        phases.push(("max", Pace::Max, 1u32));
    }
    let mut out = Vec::new();
    for (mode, pace, stream) in phases {
        let result = load
            .run(&Phase {
                pace,
                window: cfg.window,
                duration: Duration::from_secs_f64(cfg.duration),
                publishers: vec![(0, stream)],
                stall_timeout: Duration::from_secs_f64(cfg.stall_timeout),
            })
            .await;
        out.push(FanoutReport {
            scenario: "fanout".into(),
            server: cfg.server.clone(),
            protocol: cfg.protocol,
            members: cfg.members,
            nodes: 1 + cfg.others.len(),
            mode: mode.into(),
            target_rate: match pace {
                Pace::Rate(r) => Some(r),
                Pace::Max => None,
            },
            window: cfg.window,
            payload: cfg.payload,
            identity: identity(&cfg.user),
            connect_s: load.connect_s,
            connect_server_cpu_s: load.connect_server_cpu_s,
            result,
        });
    }
    Ok(out)
}
