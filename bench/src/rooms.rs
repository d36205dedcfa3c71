//! `rooms`: many small rooms (4,000 × 4 by default), every member publishing, at a fixed total
//! rate spread over the rooms; each member checks each of its room's senders.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::{self, Protocol};
use crate::identity;
use crate::load::{Load, LoadSpec, Pace, Phase, PhaseResult};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoomsConfig {
    pub url: String,
    pub server: String,
    pub protocol: Protocol,
    pub rooms: usize,
    pub size: usize,
    /// Publishes a second over all rooms.
    pub rate: f64,
    pub duration: f64,
    pub payload: usize,
    pub sources: usize,
    pub concurrency: usize,
    pub window: u64,
    pub server_pid: Option<u32>,
    pub stall_timeout: f64,
    /// Every member declares this user (None: each is its own anonymous user). Switchyard
    /// announces presence per user; the Node reference has none.
    pub user: Option<String>,
}

impl RoomsConfig {
    pub fn new(url: &str, server: &str, protocol: Protocol) -> Self {
        Self {
            url: url.into(),
            server: server.into(),
            protocol,
            rooms: 4000,
            size: 4,
            rate: 4000.0,
            duration: 15.0,
            payload: 64,
            sources: 8,
            concurrency: 200,
            window: 64,
            server_pid: None,
            stall_timeout: 15.0,
            user: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoomsReport {
    pub scenario: String,
    pub server: String,
    pub protocol: Protocol,
    pub rooms: usize,
    pub size: usize,
    pub connections: usize,
    pub target_rate: f64,
    pub payload: usize,
    /// `anonymous` (a user per connection) or `shared` (one user for all).
    pub identity: String,
    pub connect_s: f64,
    pub connect_server_cpu_s: Option<f64>,
    #[serde(flatten)]
    pub result: PhaseResult,
}

pub async fn rooms(cfg: &RoomsConfig) -> Result<RoomsReport, String> {
    if cfg.rooms == 0 || cfg.size == 0 || cfg.rate <= 0.0 {
        return Err("rooms needs rooms, members and a rate".into());
    }
    let nonce = crate::nonce();
    let spec = LoadSpec {
        addr: client::parse_addr(&cfg.url)?,
        protocol: cfg.protocol,
        rooms: (0..cfg.rooms)
            .map(|r| format!("rooms-{nonce}-{r}"))
            .collect(),
        room_size: cfg.size,
        publishers_per_room: cfg.size,
        streams: cfg.size,
        payload: cfg.payload,
        sources: cfg.sources,
        concurrency: cfg.concurrency,
        connect_timeout: Duration::from_secs(30),
        server_pid: cfg.server_pid,
        extra_pids: Vec::new(),
        others: Vec::new(),
        user: cfg.user.clone(),
    };
    let load = Load::connect(&spec).await?;
    // Consecutive publishes go to different rooms: member k of room 0, 1, 2, …, then k + 1.
    let publishers = (0..cfg.size)
        .flat_map(|k| (0..cfg.rooms).map(move |r| (r * cfg.size + k, k as u32)))
        .collect();
    let result = load
        .run(&Phase {
            pace: Pace::Rate(cfg.rate),
            window: cfg.window,
            duration: Duration::from_secs_f64(cfg.duration),
            publishers,
            stall_timeout: Duration::from_secs_f64(cfg.stall_timeout),
        })
        .await;
    Ok(RoomsReport {
        scenario: "rooms".into(),
        server: cfg.server.clone(),
        protocol: cfg.protocol,
        rooms: cfg.rooms,
        size: cfg.size,
        connections: load.connections(),
        target_rate: cfg.rate,
        payload: cfg.payload,
        identity: identity(&cfg.user),
        connect_s: load.connect_s,
        connect_server_cpu_s: load.connect_server_cpu_s,
        result,
    })
}
