//! Publishes the `stats` event into the `system` room on an interval.
//!
//! The message is retained by the room, so a client joining `system` gets the latest figures at
//! once instead of waiting for the next tick. One is published at start for the same reason.
//! The same figures go to the node table ([`NodesView`]): on a cluster every node publishes its
//! own `stats` (each names its node) and the dashboard lists the nodes from the table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::value::RawValue;

use crate::broker::{Broker, Envelope, NodeStats, NodesView};
use crate::metrics::Metrics;

pub const SYSTEM_ROOM: &str = "system";

pub struct StatsPublisher {
    interval: Duration,
    metrics: Arc<Metrics>,
    broker: Arc<dyn Broker>,
    nodes: Arc<dyn NodesView>,
    /// This node's name in the figures.
    node: Arc<str>,
    /// (when, messages in, messages out) at the previous tick.
    last: (Instant, u64, u64),
}

impl StatsPublisher {
    pub fn new(
        interval: Duration,
        metrics: Arc<Metrics>,
        broker: Arc<dyn Broker>,
        nodes: Arc<dyn NodesView>,
        node: Arc<str>,
    ) -> Self {
        let last = (
            Instant::now(),
            metrics.messages_in.get(),
            metrics.messages_out.get(),
        );
        Self {
            interval,
            metrics,
            broker,
            nodes,
            node,
            last,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let (inn, out) = (
            self.metrics.messages_in.get(),
            self.metrics.messages_out.get(),
        );
        let secs = now.duration_since(self.last.0).as_secs_f64().max(0.001);
        let stats = NodeStats {
            node: self.node.to_string(),
            connections: self.metrics.connections.get(),
            rooms: self.metrics.rooms.get(),
            operations: self.metrics.operations.get(),
            messages_in_per_sec: round2((inn - self.last.1) as f64 / secs),
            messages_out_per_sec: round2((out - self.last.2) as f64 / secs),
            uptime_seconds: self.metrics.uptime().as_secs(),
            heartbeat_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        self.last = (now, inn, out);
        let data = match serde_json::to_string(&stats).map(RawValue::from_string) {
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
