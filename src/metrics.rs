//! Process-wide metrics, read by `/metrics` (Prometheus text), `/health` and the `stats` event,
//! and the last 15 minutes of `stats` samples ([`RecentStats`], `GET /api/stats/recent`).
//!
//! The values are `prometheus-client` counters, gauges and histograms registered once in one
//! [`Registry`], which renders the exposition format (names, `_total`, `HELP`/`TYPE`, label
//! escaping, histogram buckets) instead of the hand-written writer this module had. Counters and
//! gauges are relaxed atomics inside: each is updated at most once per frame or per broadcast (a
//! fan-out to N members adds N at once), never once per member inside a lock. A histogram takes
//! a short lock per observation, so only what happens at most once per broadcast, per write or
//! per operation is observed (docs/benchmarks.md, "Metrics through prometheus-client", has the
//! back-to-back run that kept it). The samples are written once per stats tick, behind a lock
//! nobody holds for longer than a copy.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error_code::ErrorCode;

/// The `Content-Type` `/metrics` answers with (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the publish-to-send latency buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
];

/// Upper bounds (seconds) of the operation duration buckets: a file conversion takes seconds,
/// an install or a deployment minutes, a backup an hour or more.
const OPERATION_BUCKETS: [f64; 12] = [
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1_800.0, 3_600.0, 14_400.0,
];

/// Upper bounds of the write-batch buckets (operation writes waiting when the queue is drained).
const DEPTH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1_024.0];

/// Upper bounds (bytes) of the outbox-depth buckets: one small frame, a few, a burst, up to the
/// default `SWITCHYARD_OUTBOX_MAX_BYTES` and past it.
const BYTE_BUCKETS: [f64; 9] = [
    128.0,
    512.0,
    2_048.0,
    8_192.0,
    32_768.0,
    131_072.0,
    524_288.0,
    1_048_576.0,
    4_194_304.0,
];

/// Labels of an operation's duration: its kind (bounded by the configuration: an unknown kind is
/// refused at start) and how it ended.
type OperationLabels = [(&'static str, String); 2];

fn operation_histogram() -> Histogram {
    Histogram::new(OPERATION_BUCKETS)
}

pub struct Metrics {
    started: Instant,
    /// Open client sessions (all protocols).
    pub connections: Gauge,
    /// WebSocket connections whose socket is still open (taken over from the HTTP server; a
    /// connection outlives its session while its close frame is written).
    pub websockets: Gauge,
    /// Engine.IO long-polling GETs waiting for packets.
    pub polls_waiting: Gauge,
    /// Live room actors.
    pub rooms: Gauge,
    /// Live operation actors (operations this node runs or follows).
    pub operations: Gauge,
    /// Bytes of room history kept for resume, over all rooms (rooms add and remove their own;
    /// bounded by `SWITCHYARD_HISTORY_TOTAL_MAX_BYTES`).
    pub history_bytes: Gauge,
    /// Rooms holding history (for the even share of `SWITCHYARD_HISTORY_TOTAL_MAX_BYTES`).
    pub history_rooms: Gauge,
    /// Bytes all client connections' outbound queues hold (`SWITCHYARD_OUTBOX_TOTAL_BYTES`);
    /// read from the budget when the metrics are scraped.
    pub outbox_held_bytes: Gauge,
    /// Frames received from clients.
    pub messages_in: Counter,
    /// Frames queued to clients (a broadcast to N members counts N).
    pub messages_out: Counter,
    /// Frames a room wrote straight to an idle connection's socket (`SWITCHYARD_DIRECT_WRITES`)
    /// instead of waking its writer; part of `messages_out`.
    pub direct_writes: Counter,
    /// Rooms moved from an HTTP worker to a room thread as they grew (`SWITCHYARD_ROOM_MOVE_AT`).
    pub room_moves: Counter,
    /// Messages published into rooms.
    pub publishes: Counter,
    /// Failed database calls.
    pub database_errors: Counter,
    /// Sessions closed because their outbound queue was full.
    pub slow_consumers: Counter,
    /// Operation state writes (status row + batched log lines).
    pub operation_writes: Counter,
    /// Transactions that wrote operation state (several operations' writes share one).
    pub operation_write_transactions: Counter,
    /// Reports received from external workers.
    pub operation_reports: Counter,
    /// Log lines dropped unwritten during a long database outage.
    pub operation_log_lines_lost: Counter,
    /// Operations created on this node (counted when their actor announces them; not those
    /// recovered at start-up).
    pub operations_started: Counter,
    /// Operations that reached a terminal state here (completed, failed or cancelled), counted
    /// when the terminal event is published (once per operation).
    pub operations_finished: Counter,
    /// Of those, the ones that failed.
    pub operations_failed: Counter,
    /// The dashboard's charts: the last 15 minutes of `stats` samples, written by the stats
    /// actor on its tick.
    pub recent: RecentStats,
    /// Refusals by error code (index = `ErrorCode::index`): the family's counters, kept here so
    /// counting one is an atomic add, not a label lookup.
    refusals: Vec<Counter>,
    publish_latency: Histogram,
    /// Seconds from start (or creation, for one that never started) to the end, by kind and
    /// outcome.
    operation_durations: Family<OperationLabels, Histogram, fn() -> Histogram>,
    /// Bytes a WebSocket connection had queued when it wrote them out.
    outbox_depth: Histogram,
    /// Operation writes one database transaction carried (the write queue's depth when drained).
    write_batch: Histogram,
    uptime: Gauge,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Metrics without a node label (one node).
    pub fn new() -> Self {
        Self::for_node(None)
    }

    /// With a node name (`SWITCHYARD_NODE_ID` set) every sample carries it as its `node` label,
    /// so a cluster's nodes can be told apart however they are scraped (behind one
    /// load-balanced address too); without one the output has no `node` label.
    pub fn for_node(node: Option<&str>) -> Self {
        let mut registry = match node {
            Some(n) => Registry::with_labels(
                [(Cow::Borrowed("node"), Cow::Owned(n.to_string()))].into_iter(),
            ),
            None => Registry::default(),
        };
        let m = Self {
            started: Instant::now(),
            connections: Gauge::default(),
            websockets: Gauge::default(),
            polls_waiting: Gauge::default(),
            rooms: Gauge::default(),
            operations: Gauge::default(),
            history_bytes: Gauge::default(),
            history_rooms: Gauge::default(),
            outbox_held_bytes: Gauge::default(),
            messages_in: Counter::default(),
            messages_out: Counter::default(),
            direct_writes: Counter::default(),
            room_moves: Counter::default(),
            publishes: Counter::default(),
            database_errors: Counter::default(),
            slow_consumers: Counter::default(),
            operation_writes: Counter::default(),
            operation_write_transactions: Counter::default(),
            operation_reports: Counter::default(),
            operation_log_lines_lost: Counter::default(),
            operations_started: Counter::default(),
            operations_finished: Counter::default(),
            operations_failed: Counter::default(),
            recent: RecentStats::default(),
            refusals: Vec::new(),
            publish_latency: Histogram::new(LATENCY_BUCKETS),
            operation_durations: Family::new_with_constructor(operation_histogram),
            outbox_depth: Histogram::new(BYTE_BUCKETS),
            write_batch: Histogram::new(DEPTH_BUCKETS),
            uptime: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        let gauge = |r: &mut Registry, name: &str, help: &str, g: &Gauge| {
            r.register(name, help, g.clone());
        };
        let counter = |r: &mut Registry, name: &str, help: &str, c: &Counter| {
            r.register(name, help, c.clone());
        };
        gauge(
            r,
            "switchyard_connections",
            "Open client sessions",
            &m.connections,
        );
        gauge(
            r,
            "switchyard_websocket_sockets",
            "Open WebSocket connections (sessions, plus closed ones still writing their close frame)",
            &m.websockets,
        );
        gauge(
            r,
            "switchyard_socketio_polls_waiting",
            "Socket.IO long-polling requests held open, waiting for packets",
            &m.polls_waiting,
        );
        gauge(r, "switchyard_rooms", "Live rooms", &m.rooms);
        gauge(
            r,
            "switchyard_operations",
            "Live operations on this node",
            &m.operations,
        );
        gauge(
            r,
            "switchyard_history_bytes",
            "Bytes of room history kept for resume, over all rooms",
            &m.history_bytes,
        );
        gauge(
            r,
            "switchyard_outbox_held_bytes",
            "Bytes held by all client connections' outbound queues (bounded by SWITCHYARD_OUTBOX_TOTAL_BYTES)",
            &m.outbox_held_bytes,
        );
        counter(
            r,
            "switchyard_messages_in",
            "Frames received from clients",
            &m.messages_in,
        );
        counter(
            r,
            "switchyard_messages_out",
            "Frames queued to clients",
            &m.messages_out,
        );
        counter(
            r,
            "switchyard_direct_writes",
            "Frames written straight to an idle connection's socket by the room (part of messages_out)",
            &m.direct_writes,
        );
        counter(
            r,
            "switchyard_room_moves",
            "Rooms moved from an HTTP worker to a room thread as they grew, or back as they shrank",
            &m.room_moves,
        );
        counter(
            r,
            "switchyard_publishes",
            "Messages published into rooms",
            &m.publishes,
        );
        counter(
            r,
            "switchyard_database_errors",
            "Failed database calls",
            &m.database_errors,
        );
        counter(
            r,
            "switchyard_slow_consumer_disconnects",
            "Sessions closed because their outbound queue was full",
            &m.slow_consumers,
        );
        counter(
            r,
            "switchyard_operation_writes",
            "Coalesced operation state writes",
            &m.operation_writes,
        );
        counter(
            r,
            "switchyard_operation_write_transactions",
            "Database transactions that wrote operation state (group commit)",
            &m.operation_write_transactions,
        );
        counter(
            r,
            "switchyard_operation_reports",
            "Progress, log and result reports from external workers",
            &m.operation_reports,
        );
        counter(
            r,
            "switchyard_operation_log_lines_lost",
            "Operation log lines dropped unwritten during a long database outage",
            &m.operation_log_lines_lost,
        );
        counter(
            r,
            "switchyard_operations_started",
            "Operations created on this node",
            &m.operations_started,
        );
        counter(
            r,
            "switchyard_operations_finished",
            "Operations that reached a terminal state on this node (completed, failed or cancelled)",
            &m.operations_finished,
        );
        counter(
            r,
            "switchyard_operations_failed",
            "Operations that failed on this node",
            &m.operations_failed,
        );
        let refusals = Family::<[(&'static str, &'static str); 1], Counter>::default();
        let per_code = ErrorCode::ALL
            .iter()
            .map(|code| refusals.get_or_create_owned(&[("code", code.as_str())]))
            .collect();
        r.register(
            "switchyard_refusals",
            "Requests refused, by error code",
            refusals,
        );
        r.register(
            "switchyard_publish_latency_seconds",
            "Time from a publish reaching the broker to its frames queued to every member on this node",
            m.publish_latency.clone(),
        );
        r.register(
            "switchyard_operation_duration_seconds",
            "Time from an operation's start to its end, by kind and outcome",
            m.operation_durations.clone(),
        );
        r.register(
            "switchyard_outbox_depth_bytes",
            "Bytes a WebSocket connection had queued when it wrote them out (one write per drain)",
            m.outbox_depth.clone(),
        );
        r.register(
            "switchyard_operation_write_batch",
            "Operation writes one database transaction carried",
            m.write_batch.clone(),
        );
        gauge(
            r,
            "switchyard_uptime_seconds",
            "Seconds since start",
            &m.uptime,
        );
        Self {
            refusals: per_code,
            registry,
            ..m
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn refused(&self, code: ErrorCode) {
        if let Some(c) = self.refusals.get(code.index()) {
            c.inc();
        }
    }

    pub fn refusals(&self, code: ErrorCode) -> u64 {
        self.refusals
            .get(code.index())
            .map(|c| c.get())
            .unwrap_or(0)
    }

    /// Records the time from a publish reaching the broker (after the edge's checks) to its
    /// frames being queued to every member of its room on this node.
    pub fn observe_publish_latency(&self, d: Duration) {
        self.publish_latency.observe(d.as_secs_f64());
    }

    /// Records how long an operation of `kind` took to end as `outcome`.
    pub fn observe_operation(&self, kind: &str, outcome: &'static str, d: Duration) {
        self.operation_durations
            .get_or_create(&[("kind", kind.to_string()), ("outcome", outcome.to_string())])
            .observe(d.as_secs_f64());
    }

    /// Records how many bytes a connection wrote out at once (its queue's depth then).
    pub fn observe_outbox_depth(&self, bytes: usize) {
        self.outbox_depth.observe(bytes as f64);
    }

    /// Records how many operation writes one transaction carried.
    pub fn observe_write_batch(&self, writes: usize) {
        self.write_batch.observe(writes as f64);
    }

    /// Renders the Prometheus text exposition format (0.0.4).
    pub fn render(&self) -> String {
        self.uptime.set(self.uptime().as_secs() as i64);
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail; an encoding error would be a bug in a metric's
        // labels, and an empty answer is still better than a panic in a handler.
        if prometheus_text::encode(&mut out, &self.registry).is_err() {
            log::error!("rendering /metrics failed");
        }
        out
    }
}

/// How far back [`RecentStats`] reaches: the dashboard charts 15 minutes.
pub const RECENT_WINDOW: Duration = Duration::from_secs(15 * 60);

/// At most this many samples are kept, whatever the interval: 15 minutes at 500 ms (a stats
/// interval shorter than that keeps a shorter window). About 100 bytes each.
pub const RECENT_MAX_SAMPLES: usize = 1_800;

/// One stats tick as the dashboard charts it: gauges as they were, rates and counts over the
/// tick (the interval that ended at `at_ms`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct StatsSample {
    /// When the tick ended, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Length of the tick these counts cover.
    pub interval_ms: u64,
    pub connections: i64,
    pub messages_in_per_sec: f64,
    pub messages_out_per_sec: f64,
    pub operations_started: u64,
    pub operations_finished: u64,
    pub operations_failed: u64,
    /// Sessions closed as slow consumers during the tick.
    pub slow_consumer_evictions: u64,
}

/// The last [`RECENT_WINDOW`] of samples, oldest first, at most [`RECENT_MAX_SAMPLES`]: what a
/// dashboard opened now draws before the next tick (a reload or a new tab is not empty).
#[derive(Default)]
pub struct RecentStats(Mutex<VecDeque<StatsSample>>);

impl RecentStats {
    /// Adds the newest sample and forgets those older than the window.
    pub fn push(&self, sample: StatsSample) {
        let mut ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = sample
            .at_ms
            .saturating_sub(RECENT_WINDOW.as_millis() as u64);
        while ring
            .front()
            .is_some_and(|s| s.at_ms < oldest || ring.len() >= RECENT_MAX_SAMPLES)
        {
            ring.pop_front();
        }
        ring.push_back(sample);
    }

    /// A copy of the samples, oldest first.
    pub fn samples(&self) -> Vec<StatsSample> {
        let ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_everything() {
        let m = Metrics::for_node(Some("n1"));
        m.observe_publish_latency(Duration::from_micros(30));
        m.observe_publish_latency(Duration::from_millis(3));
        m.observe_publish_latency(Duration::from_secs(2));
        assert!(!Metrics::new().render().contains("node="));
        let text = m.render();
        for (le, n) in [("5e-05", 1), ("0.005", 2), ("0.5", 2), ("+Inf", 3)] {
            let line = format!(
                "switchyard_publish_latency_seconds_bucket{{node=\"n1\",le=\"{le}\"}} {n}\n"
            );
            assert!(text.contains(&line), "missing {line} in {text}");
        }
        assert!(
            text.contains("switchyard_publish_latency_seconds_count{node=\"n1\"} 3"),
            "{text}"
        );
        // Every sample line carries the node label.
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            assert!(line.contains("node=\"n1\""), "{line}");
        }
    }

    #[test]
    fn every_refusal_code_is_listed_and_counted() {
        let m = Metrics::new();
        m.refused(ErrorCode::RateLimited);
        m.refused(ErrorCode::RateLimited);
        let text = m.render();
        for code in ErrorCode::ALL {
            let n = if *code == ErrorCode::RateLimited {
                2
            } else {
                0
            };
            let line = format!(
                "switchyard_refusals_total{{code=\"{}\"}} {n}",
                code.as_str()
            );
            assert!(text.contains(&line), "missing {line} in {text}");
        }
    }

    #[test]
    fn operation_durations_are_labelled_by_kind_and_outcome() {
        let m = Metrics::new();
        m.observe_operation("install", "completed", Duration::from_secs(42));
        let text = m.render();
        assert!(
            text.contains("switchyard_operation_duration_seconds_count{kind=\"install\",outcome=\"completed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE switchyard_messages_in_total counter"),
            "{text}"
        );
    }

    fn sample(at_ms: u64) -> StatsSample {
        StatsSample {
            at_ms,
            interval_ms: 5_000,
            connections: 1,
            messages_in_per_sec: 0.0,
            messages_out_per_sec: 0.0,
            operations_started: 0,
            operations_finished: 0,
            operations_failed: 0,
            slow_consumer_evictions: 0,
        }
    }

    #[test]
    fn recent_stats_keep_fifteen_minutes_and_a_bounded_count() {
        let recent = RecentStats::default();
        let start = 1_000_000_000;
        for i in 0..=200 {
            recent.push(sample(start + i * 5_000));
        }
        let kept = recent.samples();
        let newest = start + 200 * 5_000;
        // 15 minutes at 5 s: 180 intervals, so 181 samples with both ends.
        assert_eq!(kept.len(), 181);
        assert_eq!(kept[0].at_ms, newest - 900_000);
        assert_eq!(kept.last().map(|s| s.at_ms), Some(newest));

        let dense = RecentStats::default();
        for i in 0..(RECENT_MAX_SAMPLES as u64 + 50) {
            dense.push(sample(start + i * 100));
        }
        let kept = dense.samples();
        assert_eq!(kept.len(), RECENT_MAX_SAMPLES);
        assert_eq!(
            kept.last().map(|s| s.at_ms),
            Some(start + (RECENT_MAX_SAMPLES as u64 + 49) * 100)
        );
    }
}
