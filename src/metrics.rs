//! Process-wide counters, read by `/metrics` (Prometheus text), `/health` and the `stats` event,
//! and the last 15 minutes of `stats` samples ([`RecentStats`], `GET /api/stats/recent`).
//!
//! Plain relaxed atomics: each is updated at most once per frame or per broadcast (a fan-out to
//! N members adds N in one `fetch_add`), never once per member inside a lock. The samples are
//! written once per stats tick, behind a lock nobody holds for longer than a copy.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error_code::ErrorCode;

/// Upper bounds (seconds) of the publish-to-send latency buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
];

pub struct Metrics {
    started: Instant,
    /// Open client sessions (all protocols).
    pub connections: AtomicI64,
    /// WebSocket connections whose socket is still open (taken over from the HTTP server; a
    /// connection outlives its session while its close frame is written).
    pub websockets: AtomicI64,
    /// Engine.IO long-polling GETs waiting for packets.
    pub polls_waiting: AtomicI64,
    /// Live room actors.
    pub rooms: AtomicI64,
    /// Live operation actors (operations this node runs or follows).
    pub operations: AtomicI64,
    /// Bytes of room history kept for resume, over all rooms (rooms add and remove their own;
    /// bounded by `SWITCHYARD_HISTORY_TOTAL_MAX_BYTES`).
    pub history_bytes: AtomicI64,
    /// Rooms holding history (for the even share of `SWITCHYARD_HISTORY_TOTAL_MAX_BYTES`).
    pub history_rooms: AtomicI64,
    /// Frames received from clients.
    pub messages_in: AtomicU64,
    /// Frames queued to clients (a broadcast to N members counts N).
    pub messages_out: AtomicU64,
    /// Messages published into rooms.
    pub publishes: AtomicU64,
    /// Failed database calls.
    pub database_errors: AtomicU64,
    /// Sessions closed because their outbound queue was full.
    pub slow_consumers: AtomicU64,
    /// Operation state writes (status row + batched log lines).
    pub operation_writes: AtomicU64,
    /// Transactions that wrote operation state (several operations' writes share one).
    pub operation_write_transactions: AtomicU64,
    /// Reports received from external workers.
    pub operation_reports: AtomicU64,
    /// Log lines dropped unwritten during a long database outage.
    pub operation_log_lines_lost: AtomicU64,
    /// Operations created on this node (counted when their actor announces them; not those
    /// recovered at start-up).
    pub operations_started: AtomicU64,
    /// Operations that reached a terminal state here (completed, failed or cancelled), counted
    /// when the terminal event is published (once per operation).
    pub operations_finished: AtomicU64,
    /// Of those, the ones that failed.
    pub operations_failed: AtomicU64,
    /// The dashboard's charts: the last 15 minutes of `stats` samples, written by the stats
    /// actor on its tick.
    pub recent: RecentStats,
    /// Refusals by error code (index = `ErrorCode::index`).
    refusals: Vec<AtomicU64>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_nanos: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            connections: AtomicI64::new(0),
            websockets: AtomicI64::new(0),
            polls_waiting: AtomicI64::new(0),
            rooms: AtomicI64::new(0),
            operations: AtomicI64::new(0),
            history_bytes: AtomicI64::new(0),
            history_rooms: AtomicI64::new(0),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            publishes: AtomicU64::new(0),
            database_errors: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            operation_writes: AtomicU64::new(0),
            operation_write_transactions: AtomicU64::new(0),
            operation_reports: AtomicU64::new(0),
            operation_log_lines_lost: AtomicU64::new(0),
            operations_started: AtomicU64::new(0),
            operations_finished: AtomicU64::new(0),
            operations_failed: AtomicU64::new(0),
            recent: RecentStats::default(),
            refusals: ErrorCode::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            latency_buckets: Default::default(),
            latency_count: AtomicU64::new(0),
            latency_sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn refused(&self, code: ErrorCode) {
        if let Some(c) = self.refusals.get(code.index()) {
            c.fetch_add(1, Relaxed);
        }
    }

    pub fn refusals(&self, code: ErrorCode) -> u64 {
        self.refusals
            .get(code.index())
            .map(|c| c.load(Relaxed))
            .unwrap_or(0)
    }

    /// Records the time from a publish reaching the broker (after the edge's checks) to its
    /// frames being queued to every member of its room on this node.
    pub fn observe_publish_latency(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.latency_buckets[i].fetch_add(1, Relaxed);
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
    }

    /// Renders the Prometheus text exposition format. With a node name (`SWITCHYARD_NODE_ID`
    /// set) every sample carries it as its `node` label, so a cluster's nodes can be told apart
    /// however they are scraped (behind one load-balanced address too); without one the
    /// output is what it always was.
    pub fn render(&self, node: Option<&str>) -> String {
        let mut out = String::with_capacity(4096);
        // `{node="…"}` for a sample without labels, `node="…",` before a sample's own labels.
        let only = node
            .map(|n| format!("{{node=\"{n}\"}}"))
            .unwrap_or_default();
        let first = node.map(|n| format!("node=\"{n}\",")).unwrap_or_default();
        let gauge = |out: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{only} {v}"
            );
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{only} {v}"
            );
        };
        gauge(
            &mut out,
            "switchyard_connections",
            "Open client sessions.",
            self.connections.load(Relaxed),
        );
        gauge(
            &mut out,
            "switchyard_websocket_sockets",
            "Open WebSocket connections (sessions, plus closed ones still writing their close frame).",
            self.websockets.load(Relaxed),
        );
        gauge(
            &mut out,
            "switchyard_socketio_polls_waiting",
            "Socket.IO long-polling requests held open, waiting for packets.",
            self.polls_waiting.load(Relaxed),
        );
        gauge(
            &mut out,
            "switchyard_rooms",
            "Live rooms.",
            self.rooms.load(Relaxed),
        );
        gauge(
            &mut out,
            "switchyard_operations",
            "Live operations on this node.",
            self.operations.load(Relaxed),
        );
        gauge(
            &mut out,
            "switchyard_history_bytes",
            "Bytes of room history kept for resume, over all rooms.",
            self.history_bytes.load(Relaxed),
        );
        counter(
            &mut out,
            "switchyard_messages_in_total",
            "Frames received from clients.",
            self.messages_in.load(Relaxed),
        );
        counter(
            &mut out,
            "switchyard_messages_out_total",
            "Frames queued to clients.",
            self.messages_out.load(Relaxed),
        );
        counter(
            &mut out,
            "switchyard_publishes_total",
            "Messages published into rooms.",
            self.publishes.load(Relaxed),
        );
        counter(
            &mut out,
            "switchyard_database_errors_total",
            "Failed database calls.",
            self.database_errors.load(Relaxed),
        );
        counter(
            &mut out,
            "switchyard_slow_consumer_disconnects_total",
            "Sessions closed because their outbound queue was full.",
            self.slow_consumers.load(Relaxed),
        );
        counter(
            &mut out,
            "switchyard_operation_writes_total",
            "Coalesced operation state writes.",
            self.operation_writes.load(Relaxed),
        );
        counter(
            &mut out,
            "switchyard_operation_write_transactions_total",
            "Database transactions that wrote operation state (group commit).",
            self.operation_write_transactions.load(Relaxed),
        );
        counter(
            &mut out,
            "switchyard_operation_reports_total",
            "Progress, log and result reports from external workers.",
            self.operation_reports.load(Relaxed),
        );
        counter(
            &mut out,
            "switchyard_operation_log_lines_lost_total",
            "Operation log lines dropped unwritten during a long database outage.",
            self.operation_log_lines_lost.load(Relaxed),
        );
        counter(
            &mut out,
            "switchyard_operations_started_total",
            "Operations created on this node.",
            self.operations_started.load(Relaxed),
        );
        counter(
            &mut out,
            "switchyard_operations_finished_total",
            "Operations that reached a terminal state on this node (completed, failed or cancelled).",
            self.operations_finished.load(Relaxed),
        );
        counter(
            &mut out,
            "switchyard_operations_failed_total",
            "Operations that failed on this node.",
            self.operations_failed.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP switchyard_refusals_total Requests refused, by error code.\n# TYPE switchyard_refusals_total counter"
        );
        for code in ErrorCode::ALL {
            let _ = writeln!(
                out,
                "switchyard_refusals_total{{{first}code=\"{}\"}} {}",
                code.as_str(),
                self.refusals(*code)
            );
        }
        let _ = writeln!(
            out,
            "# HELP switchyard_publish_latency_seconds Time from a publish reaching the broker to its frames queued to every member on this node.\n# TYPE switchyard_publish_latency_seconds histogram"
        );
        let mut cumulative = 0u64;
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.latency_buckets[i].load(Relaxed);
            let _ = writeln!(
                out,
                "switchyard_publish_latency_seconds_bucket{{{first}le=\"{le}\"}} {cumulative}"
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(
            out,
            "switchyard_publish_latency_seconds_bucket{{{first}le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "switchyard_publish_latency_seconds_sum{only} {}",
            self.latency_sum_nanos.load(Relaxed) as f64 / 1e9
        );
        let _ = writeln!(
            out,
            "switchyard_publish_latency_seconds_count{only} {count}"
        );
        let _ = writeln!(
            out,
            "# HELP switchyard_uptime_seconds Seconds since start.\n# TYPE switchyard_uptime_seconds gauge\nswitchyard_uptime_seconds{only} {}",
            self.uptime().as_secs()
        );
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
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
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
        let m = Metrics::new();
        m.observe_publish_latency(Duration::from_micros(30));
        m.observe_publish_latency(Duration::from_millis(3));
        m.observe_publish_latency(Duration::from_secs(2));
        assert!(!m.render(None).contains("node="));
        let text = m.render(Some("n1"));
        assert!(text
            .contains("switchyard_publish_latency_seconds_bucket{node=\"n1\",le=\"0.00005\"} 1"));
        assert!(
            text.contains("switchyard_publish_latency_seconds_bucket{node=\"n1\",le=\"0.005\"} 2")
        );
        assert!(
            text.contains("switchyard_publish_latency_seconds_bucket{node=\"n1\",le=\"+Inf\"} 3")
        );
        assert!(text.contains("switchyard_publish_latency_seconds_count{node=\"n1\"} 3"));
        // Every sample line carries the node label.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.contains("{node=\"n1\""), "{line}");
        }
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
