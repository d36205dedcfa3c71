//! Publishes the `stats` event into the `system` room on an interval, and keeps the last 15
//! minutes of it for the dashboard's charts.
//!
//! The message is retained by the room, so a client joining `system` gets the latest figures at
//! once instead of waiting for the next tick. One is published at start for the same reason.
//! The same figures go to the node table ([`NodesView`]): on a cluster every node publishes its
//! own `stats` (each names its node) and the dashboard lists the nodes from the table.
//!
//! Each tick is also a [`StatsSample`] pushed into [`Metrics::recent`], which
//! `GET /api/stats/recent` serves: a dashboard opened (or reloaded) now draws the last 15
//! minutes at once. Kept here rather than in the `system` room because a retained message is
//! sent to every joiner and on every tick: the ring is read only by whoever asks, once.
//!
//! Cost per tick: a handful of relaxed loads, one JSON object, one push into the ring.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::broker::{Broker, Envelope, NodeStats, NodesView};
use crate::metrics::{Metrics, StatsSample};

pub const SYSTEM_ROOM: &str = "system";

/// The cumulative counters at one tick; the next tick reports the difference.
#[derive(Clone, Copy)]
struct Counters {
    at: Instant,
    messages_in: u64,
    messages_out: u64,
    operations_started: u64,
    operations_finished: u64,
    operations_failed: u64,
    slow_consumers: u64,
}

impl Counters {
    fn read(m: &Metrics) -> Self {
        Self {
            at: Instant::now(),
            messages_in: m.messages_in.get(),
            messages_out: m.messages_out.get(),
            operations_started: m.operations_started.get(),
            operations_finished: m.operations_finished.get(),
            operations_failed: m.operations_failed.get(),
            slow_consumers: m.slow_consumers.get(),
        }
    }
}

/// The `stats` event: the node's figures (what the node table keeps) and what happened during
/// the tick (what the charts draw).
#[derive(Serialize)]
struct StatsEvent<'a> {
    #[serde(flatten)]
    node: &'a NodeStats,
    interval_ms: u64,
    operations_started: u64,
    operations_finished: u64,
    operations_failed: u64,
    slow_consumer_evictions: u64,
}

pub struct StatsPublisher {
    interval: Duration,
    metrics: Arc<Metrics>,
    broker: Arc<dyn Broker>,
    nodes: Arc<dyn NodesView>,
    /// This node's name in the figures.
    node: Arc<str>,
    /// The counters at the previous tick.
    last: Counters,
    /// `at_ms` of the previous sample.
    last_at_ms: u64,
    /// The first figures are out (they go at start, whatever the interval).
    published: bool,
}

impl StatsPublisher {
    pub fn new(
        interval: Duration,
        metrics: Arc<Metrics>,
        broker: Arc<dyn Broker>,
        nodes: Arc<dyn NodesView>,
        node: Arc<str>,
    ) -> Self {
        let last = Counters::read(&metrics);
        Self {
            interval,
            metrics,
            broker,
            nodes,
            node,
            last,
            last_at_ms: 0,
            published: false,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = Counters::read(&self.metrics);
        let elapsed = now.at.duration_since(self.last.at);
        // A timer that fell behind (a busy thread) fires its missed ticks back to back: those
        // would be samples of a few microseconds (rates multiplied a thousandfold, the same
        // millisecond twice). Their counts go into the next full tick instead.
        if self.published && elapsed < self.interval / 2 {
            return;
        }
        self.published = true;
        let last = std::mem::replace(&mut self.last, now);
        let secs = elapsed.as_secs_f64().max(0.001);
        // Counters only grow; `saturating_sub` keeps a reordered load from wrapping.
        let per_sec = |now: u64, then: u64| round2(now.saturating_sub(then) as f64 / secs);
        // Strictly increasing, even if the wall clock steps back: the samples are keyed by it.
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            .max(self.last_at_ms + 1);
        self.last_at_ms = at_ms;
        let stats = NodeStats {
            node: self.node.to_string(),
            connections: self.metrics.connections.get(),
            rooms: self.metrics.rooms.get(),
            operations: self.metrics.operations.get(),
            messages_in_per_sec: per_sec(now.messages_in, last.messages_in),
            messages_out_per_sec: per_sec(now.messages_out, last.messages_out),
            uptime_seconds: self.metrics.uptime().as_secs(),
            heartbeat_ms: at_ms,
        };
        let sample = StatsSample {
            at_ms,
            interval_ms: elapsed.as_millis() as u64,
            connections: stats.connections,
            messages_in_per_sec: stats.messages_in_per_sec,
            messages_out_per_sec: stats.messages_out_per_sec,
            operations_started: now
                .operations_started
                .saturating_sub(last.operations_started),
            operations_finished: now
                .operations_finished
                .saturating_sub(last.operations_finished),
            operations_failed: now.operations_failed.saturating_sub(last.operations_failed),
            slow_consumer_evictions: now.slow_consumers.saturating_sub(last.slow_consumers),
        };
        self.metrics.recent.push(sample);
        let event = StatsEvent {
            node: &stats,
            interval_ms: sample.interval_ms,
            operations_started: sample.operations_started,
            operations_finished: sample.operations_finished,
            operations_failed: sample.operations_failed,
            slow_consumer_evictions: sample.slow_consumer_evictions,
        };
        let data = match serde_json::to_string(&event).map(RawValue::from_string) {
            Ok(Ok(raw)) => raw,
            _ => return,
        };
        let fut = self.broker.publish(Envelope {
            retain: crate::broker::Retain::Last,
            ..Envelope::new(SYSTEM_ROOM, "stats", data)
        });
        let report = self.nodes.report(stats);
        ctx.spawn(
            async move {
                if let Err(e) = fut.await {
                    log::warn!("publishing stats failed: {e}");
                }
                // Not worth a warning per tick: an unreachable Redis is on /health already.
                if let Err(e) = report.await {
                    log::debug!("reporting this node's figures failed: {e}");
                }
            }
            .into_actor(self),
        );
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

impl Actor for StatsPublisher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.tick(ctx);
        ctx.run_interval(self.interval, |act, ctx| act.tick(ctx));
    }
}
