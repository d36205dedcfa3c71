//! An operation's journal: its log lines and status changes, and how much of them the database
//! holds. A plain struct, no actix: [`super::OperationActor`] decides what to publish and runs
//! the writes; the journal keeps the bookkeeping that makes those writes batched, retried with
//! backoff, acknowledged truthfully, and replayable from memory.
//!
//! In (calls from the actor): [`Journal::touch`] (a status change), [`Journal::append`] (a log
//! line), [`Journal::start_write`] then [`Journal::write_committed`] or
//! [`Journal::write_failed`] (the life of one database write), [`Journal::hold_ack`] (a report
//! whose sender waits until it is stored), [`Journal::replay`] (a watcher's backfill).
//! Out (return values): the lines a write must carry, the acknowledgements its outcome settles,
//! the backoff after a failure, the lines a watcher's backfill needs.
//!
//! Why this file is one piece (about 670 lines): half of it is the unit tests of the invariants
//! below, kept next to the code they pin down; the code itself is about 370 lines.
//!
//! Invariants (each one has a unit test below):
//! * Offsets are assigned here, one more than the last, from where the operation stood: the log
//!   has no gaps and no repeats.
//! * Memory holds a contiguous suffix of the log ending at the last offset: `recent` (the newest
//!   lines, for watchers that rejoin) and `unpersisted` (every line after the last committed
//!   write, oldest first, bounded: past the bound the oldest are dropped and handed back to be
//!   counted).
//! * One write at a time; after a failed write, none before its backoff has elapsed.
//! * An acknowledgement is handed back exactly once: at once by [`Journal::hold_ack`] when
//!   nothing is unwritten, else by the first write that commits its change, or by the first
//!   write that fails.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::operations::LogLine;

/// Lines kept in memory for watchers that rejoin (older ones come from the database).
pub const RECENT_LINES: usize = 1_000;
/// Unwritten lines kept while the database is unreachable; past this the oldest are dropped,
/// counted in `switchyard_operation_log_lines_lost_total` and logged.
pub const MAX_UNPERSISTED: usize = 100_000;

/// How much of its log an operation may keep in memory. Lines are bounded by count *and* bytes:
/// a line can be 16 KiB, so a count alone let one operation's worker pin 16 MiB of recent lines
/// (and 1.6 GB of unwritten ones while the database was down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalBounds {
    /// At most this many recent lines ([`RECENT_LINES`])...
    pub recent_lines: usize,
    /// ...taking at most this many bytes (`SWITCHYARD_OPERATION_LOG_MEMORY_BYTES`).
    pub recent_bytes: usize,
    /// At most this many unwritten lines ([`MAX_UNPERSISTED`])...
    pub unwritten_lines: usize,
    /// ...taking at most this many bytes (`SWITCHYARD_OPERATION_UNWRITTEN_MAX_BYTES`).
    pub unwritten_bytes: usize,
}

impl JournalBounds {
    /// The count bounds above with these byte bounds.
    pub fn with_bytes(recent_bytes: usize, unwritten_bytes: usize) -> Self {
        Self {
            recent_lines: RECENT_LINES,
            recent_bytes,
            unwritten_lines: MAX_UNPERSISTED,
            unwritten_bytes,
        }
    }
}

/// What a line costs in memory: its text, its stream name and the struct around them.
fn cost(line: &LogLine) -> usize {
    line.line.len() + line.stream.len() + std::mem::size_of::<LogLine>()
}
/// The backoff unit: the wait after `n` failed writes in a row is this times 2^n.
const BACKOFF_UNIT: Duration = Duration::from_millis(250);
/// The longest wait between two attempts: an operation's state reaches a database that comes
/// back within this.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The wait before the next write after `failures` failed writes in a row: 0.5 s, 1 s, 2 s,
/// 4 s, 8 s, then 10 s.
pub fn backoff(failures: u32) -> Duration {
    // The exponent is capped so the shift cannot overflow.
    BACKOFF_UNIT
        .saturating_mul(1 << failures.min(6))
        .min(BACKOFF_MAX)
}

/// What a watcher's backfill is made of, decided from what memory holds.
#[derive(Debug, PartialEq)]
pub enum Replay {
    /// Every line the watcher needs is in memory.
    Memory {
        /// Where the watcher's log stood (its offset, at most the last one).
        after: u64,
        /// The lines after `after`, at most `max` of them, in order.
        lines: Vec<LogLine>,
        /// The lines reach the newest one (the `max` bound did not cut them short).
        complete: bool,
    },
    /// The oldest lines it needs are no longer in memory: read `limit` lines after `after` from
    /// the database, then finish with [`Journal::replay_rest`]. Every one of them was written
    /// (everything unwritten is in memory).
    Database { after: u64, limit: u64 },
}

/// One write in flight, handed out by [`Journal::start_write`] and given back with its outcome.
#[derive(Debug)]
#[must_use = "a started write must be settled with write_committed or write_failed"]
pub struct Write {
    /// The change count the write holds: every change up to it is stored once it commits.
    version: u64,
    /// The newest line the write carries (none when it carries only the status).
    upto: Option<u64>,
}

/// What a failed write leaves the caller to do.
#[derive(Debug)]
pub struct Failure<A> {
    /// Acknowledgements that waited for a write: to be refused now (the change is applied in
    /// memory and retried, but not known to be stored).
    pub acks: Vec<A>,
    /// Failed writes in a row, this one included.
    pub failures: u32,
    /// When the next write may start.
    pub retry_in: Duration,
}

/// The journal of one operation. `A` is what waits for a write (a report's reply in the actor; a
/// plain value in tests).
pub struct Journal<A> {
    /// The offset of the newest line (0 before the first). Only [`Journal::append`] moves it,
    /// by one: offsets have no gaps.
    log_offset: u64,
    /// The newest lines, within `bounds.recent_*`: watchers that rejoin are served from here
    /// even after the lines are written.
    recent: VecDeque<LogLine>,
    /// What `recent` costs ([`cost`]), kept so the byte bound is checked without a scan.
    recent_bytes: usize,
    /// Lines not yet confirmed written, oldest first: every line after the newest one a
    /// committed write held (unless the bound dropped the oldest). Together with `recent`, memory holds a contiguous
    /// suffix of the log.
    unpersisted: VecDeque<LogLine>,
    /// What `unpersisted` costs ([`cost`]).
    unpersisted_bytes: usize,
    /// The bounds of both buffers: memory stays bounded, also while the database is down. The
    /// newest line is always kept, whatever its size (it is at most one clipped line).
    bounds: JournalBounds,
    /// The status changed since the last write started: the next write carries the status row
    /// even if no line is pending.
    dirty: bool,
    /// Counts changes (status or lines); a write holds every change up to its count.
    version: u64,
    /// The newest count a committed write held. Never above `version`, never decreasing.
    persisted_version: u64,
    /// Acknowledgements waiting for a write, with the count they need stored, in arrival order.
    /// Each leaves this list exactly once: answered when `persisted_version` reaches its count,
    /// or refused when a write fails.
    acks: Vec<(u64, A)>,
    /// A write is in flight: at most one at a time, so writes commit in the order they started.
    writing: bool,
    /// Failed writes in a row (reset by a committed one); sets the backoff.
    failed_writes: u32,
    /// No write starts before this (the backoff after a failure).
    next_write_at: Instant,
}

impl<A> Journal<A> {
    /// A journal for an operation whose log stands at `log_offset` (0 for a new one; a
    /// recovered operation continues where its stored log ends).
    pub fn new(log_offset: u64, bounds: JournalBounds) -> Self {
        Self {
            log_offset,
            recent: VecDeque::new(),
            recent_bytes: 0,
            unpersisted: VecDeque::new(),
            unpersisted_bytes: 0,
            bounds,
            dirty: false,
            version: 0,
            persisted_version: 0,
            acks: Vec::new(),
            writing: false,
            failed_writes: 0,
            next_write_at: Instant::now(),
        }
    }

    /// The offset of the newest line.
    pub fn log_offset(&self) -> u64 {
        self.log_offset
    }

    /// The current change count (see [`Journal::is_written`]).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The status changed: the next write carries it.
    pub fn touch(&mut self) {
        self.dirty = true;
        self.version += 1;
    }

    /// Adds the next line (offset one past the last). Returns it, and the oldest unwritten
    /// lines the bounds on unwritten lines dropped to make room for it (usually none; the
    /// caller counts and logs the loss).
    pub fn append(&mut self, stream: &str, line: String, ts: i64) -> (&LogLine, Vec<LogLine>) {
        self.log_offset += 1;
        let entry = LogLine {
            offset: self.log_offset,
            stream: stream.to_string(),
            line,
            ts,
        };
        let size = cost(&entry);
        // Room first, then the line: the newest line always stays, the oldest go.
        let b = self.bounds;
        while !self.recent.is_empty()
            && (self.recent.len() >= b.recent_lines || self.recent_bytes + size > b.recent_bytes)
        {
            if let Some(old) = self.recent.pop_front() {
                self.recent_bytes -= cost(&old);
            }
        }
        let mut dropped = Vec::new();
        while !self.unpersisted.is_empty()
            && (self.unpersisted.len() >= b.unwritten_lines
                || self.unpersisted_bytes + size > b.unwritten_bytes)
        {
            if let Some(old) = self.unpersisted.pop_front() {
                self.unpersisted_bytes -= cost(&old);
                dropped.push(old);
            }
        }
        self.touch();
        self.recent_bytes += size;
        self.recent.push_back(entry.clone());
        self.unpersisted_bytes += size;
        self.unpersisted.push_back(entry);
        // Just pushed: `recent` is never empty here.
        let newest = &self.recent[self.recent.len() - 1];
        (newest, dropped)
    }

    // ---- writes --------------------------------------------------------------------------

    /// Something is not written yet (a status change or a line).
    pub fn has_unwritten(&self) -> bool {
        self.dirty || !self.unpersisted.is_empty()
    }

    /// A write is in flight.
    pub fn is_writing(&self) -> bool {
        self.writing
    }

    /// Every change up to `version` is stored.
    pub fn is_written(&self, version: u64) -> bool {
        self.persisted_version >= version
    }

    /// The lines the write just started carries (every unwritten one, oldest first).
    pub fn unwritten(&self) -> impl Iterator<Item = &LogLine> {
        self.unpersisted.iter()
    }

    /// Starts a write of the status and every unwritten line, unless one is in flight, nothing
    /// is unwritten, or the backoff after a failure has not elapsed.
    pub fn start_write(&mut self, now: Instant) -> Option<Write> {
        if self.writing || !self.has_unwritten() || now < self.next_write_at {
            return None;
        }
        self.writing = true;
        self.dirty = false;
        Some(Write {
            version: self.version,
            upto: self.unpersisted.back().map(|l| l.offset),
        })
    }

    /// Lifts the backoff: the next [`Journal::start_write`] may start at once (graceful
    /// shutdown writes without waiting).
    pub fn write_now(&mut self, now: Instant) {
        self.next_write_at = now;
    }

    /// The write committed: its lines leave the unwritten ones. Returns the acknowledgements it
    /// settles (those whose change it held), in arrival order.
    pub fn write_committed(&mut self, write: Write) -> Vec<A> {
        self.writing = false;
        self.failed_writes = 0;
        self.persisted_version = self.persisted_version.max(write.version);
        if let Some(upto) = write.upto {
            while self.unpersisted.front().is_some_and(|l| l.offset <= upto) {
                if let Some(old) = self.unpersisted.pop_front() {
                    self.unpersisted_bytes -= cost(&old);
                }
            }
        }
        if self.acks.is_empty() {
            return Vec::new();
        }
        let written = self.persisted_version;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.acks)
            .into_iter()
            .partition(|(v, _)| *v <= written);
        self.acks = waiting;
        done.into_iter().map(|(_, a)| a).collect()
    }

    /// The write failed: everything it carried stays unwritten for the next one, which waits
    /// for the backoff. Every waiting acknowledgement is handed back to be refused.
    pub fn write_failed(&mut self, _write: Write, now: Instant) -> Failure<A> {
        self.writing = false;
        self.dirty = true;
        let acks = self.acks.drain(..).map(|(_, a)| a).collect();
        self.failed_writes += 1;
        let retry_in = backoff(self.failed_writes);
        self.next_write_at = now + retry_in;
        Failure {
            acks,
            failures: self.failed_writes,
            retry_in,
        }
    }

    // ---- acknowledgements ----------------------------------------------------------------

    /// Holds `ack` until every change made so far is stored; hands it back at once when it
    /// already is.
    pub fn hold_ack(&mut self, ack: A) -> Option<A> {
        if self.is_written(self.version) {
            return Some(ack);
        }
        self.acks.push((self.version, ack));
        None
    }

    /// Hands back every acknowledgement waiting for a write, unanswered (the operation stops
    /// on this node without writing: its caller refuses them).
    pub fn drop_held_acks(&mut self) -> Vec<A> {
        self.acks.drain(..).map(|(_, a)| a).collect()
    }

    /// Acknowledgements are waiting for a write.
    pub fn has_held_acks(&self) -> bool {
        !self.acks.is_empty()
    }

    // ---- replay --------------------------------------------------------------------------

    /// The first offset held in memory (everything from it to the newest line is there).
    pub fn memory_start(&self) -> u64 {
        let recent = self.recent.front().map(|l| l.offset);
        let unpersisted = self.unpersisted.front().map(|l| l.offset);
        match (recent, unpersisted) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => self.log_offset + 1,
        }
    }

    /// The lines in memory after `after` up to `upto`, contiguous from `after + 1` (empty when
    /// memory no longer starts there).
    pub fn memory_lines(&self, after: u64, upto: u64) -> Vec<LogLine> {
        let mut out: Vec<LogLine> = Vec::new();
        let mut next = after + 1;
        // Both buffers end at the newest line and may overlap: merge in offset order.
        let mut all: Vec<&LogLine> = self
            .recent
            .iter()
            .chain(self.unpersisted.iter())
            .filter(|l| l.offset > after && l.offset <= upto)
            .collect();
        all.sort_by_key(|l| l.offset);
        for l in all {
            if l.offset == next {
                out.push(l.clone());
                next += 1;
            }
        }
        out
    }

    /// What a watcher whose log stands at `from` needs: at most `max` lines after it.
    pub fn replay(&self, from: u64, max: u64) -> Replay {
        let after = from.min(self.log_offset);
        let want_to = self.log_offset.min(after + max);
        let mem_start = self.memory_start();
        if after >= want_to || after + 1 >= mem_start {
            return Replay::Memory {
                after,
                lines: self.memory_lines(after, want_to),
                complete: want_to == self.log_offset,
            };
        }
        Replay::Database {
            after,
            limit: (mem_start - 1).min(want_to) - after,
        }
    }

    /// Finishes a [`Replay::Database`]: `lines` came from the database; adds what memory holds
    /// after them. Returns the lines and whether they reach the newest one. Rarely, more lines
    /// than memory holds were written meanwhile: then only the contiguous part is returned, and
    /// it is not complete.
    pub fn replay_rest(
        &self,
        after: u64,
        mut lines: Vec<LogLine>,
        max: u64,
    ) -> (Vec<LogLine>, bool) {
        let last = lines.last().map(|l| l.offset).unwrap_or(after);
        let want_to = self.log_offset.min(after + max);
        let contiguous = last + 1 >= self.memory_start();
        if contiguous {
            lines.extend(self.memory_lines(last, want_to));
        }
        (lines, contiguous && want_to == self.log_offset)
    }

    /// Everything memory holds, with where it starts (the backfill when reading the database
    /// failed: the snapshot and live events are worth more than nothing).
    pub fn replay_memory(&self) -> (u64, Vec<LogLine>) {
        let from = self.memory_start().saturating_sub(1);
        (from, self.memory_lines(from, self.log_offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bounds by count only (bytes unlimited).
    fn lines(recent: usize, unpersisted: usize) -> JournalBounds {
        JournalBounds {
            recent_lines: recent,
            recent_bytes: usize::MAX,
            unwritten_lines: unpersisted,
            unwritten_bytes: usize::MAX,
        }
    }

    fn journal(recent: usize, unpersisted: usize) -> Journal<&'static str> {
        Journal::new(0, lines(recent, unpersisted))
    }

    fn add(j: &mut Journal<&'static str>, n: usize) {
        for i in 0..n {
            let _ = j.append("stdout", format!("line {i}"), 0);
        }
    }

    fn offsets(lines: &[LogLine]) -> Vec<u64> {
        lines.iter().map(|l| l.offset).collect()
    }

    fn unwritten(j: &Journal<&'static str>) -> Vec<u64> {
        j.unwritten().map(|l| l.offset).collect()
    }

    /// Commits the write of everything unwritten now.
    fn write_all(j: &mut Journal<&'static str>) -> Vec<&'static str> {
        let w = j.start_write(Instant::now()).expect("something to write");
        j.write_committed(w)
    }

    #[test]
    fn offsets_start_after_where_the_log_stood_and_have_no_gaps() {
        let mut j: Journal<()> = Journal::new(41, lines(3, 2));
        let mut seen = Vec::new();
        for _ in 0..10 {
            let (line, _) = j.append("stdout", "x".into(), 0);
            seen.push(line.offset);
        }
        assert_eq!(seen, (42..=51).collect::<Vec<_>>());
        assert_eq!(j.log_offset(), 51);
        // Memory is a contiguous suffix ending at the newest line, whatever the bounds dropped.
        assert_eq!(j.memory_start(), 49);
        assert_eq!(offsets(&j.memory_lines(48, 51)), vec![49, 50, 51]);
    }

    #[test]
    fn each_line_and_status_change_is_a_change_to_write() {
        let mut j = journal(10, 10);
        assert!(!j.has_unwritten());
        j.touch();
        assert_eq!(j.version(), 1);
        assert!(j.has_unwritten());
        add(&mut j, 2);
        assert_eq!(j.version(), 3);
        assert!(!j.is_written(3));
    }

    #[test]
    fn a_write_carries_every_unwritten_line_and_lines_added_meanwhile_stay_pending() {
        let mut j = journal(100, 100);
        add(&mut j, 3);
        let w = j.start_write(Instant::now()).expect("a write");
        // Only one write at a time.
        assert!(j.start_write(Instant::now()).is_none());
        assert!(j.is_writing());
        add(&mut j, 2);
        assert!(j.write_committed(w).is_empty());
        assert_eq!(unwritten(&j), vec![4, 5]);
        assert!(j.is_written(3));
        assert!(!j.is_written(5));
        write_all(&mut j);
        assert!(unwritten(&j).is_empty());
        assert!(!j.has_unwritten());
        assert!(j.is_written(j.version()));
    }

    #[test]
    fn a_status_change_alone_is_written_without_lines() {
        let mut j = journal(10, 10);
        add(&mut j, 2);
        write_all(&mut j);
        j.touch();
        let w = j.start_write(Instant::now()).expect("the status to write");
        assert_eq!(w.upto, None);
        let _ = j.write_committed(w);
        assert!(!j.has_unwritten());
        assert!(j.is_written(j.version()));
    }

    #[test]
    fn a_failed_write_keeps_its_lines_for_the_next_one() {
        let mut j = journal(100, 100);
        add(&mut j, 3);
        let now = Instant::now();
        let w = j.start_write(now).expect("a write");
        let _ = j.write_failed(w, now);
        assert_eq!(unwritten(&j), vec![1, 2, 3]);
        assert!(!j.is_written(1));
        assert!(j.has_unwritten());
        add(&mut j, 1);
        let w = j.start_write(now + backoff(1)).expect("a retry");
        assert_eq!(w.upto, Some(4));
        let _ = j.write_committed(w);
        assert!(unwritten(&j).is_empty());
    }

    #[test]
    fn unwritten_lines_are_bounded_and_the_dropped_ones_are_handed_back() {
        let mut j = journal(2, 3);
        let mut dropped = Vec::new();
        for _ in 0..5 {
            dropped.extend(j.append("stdout", "x".into(), 0).1.iter().map(|l| l.offset));
        }
        assert_eq!(dropped, vec![1, 2]);
        assert_eq!(unwritten(&j), vec![3, 4, 5]);
        assert_eq!(j.memory_start(), 3);
    }

    #[test]
    fn memory_is_bounded_in_bytes_too_and_the_newest_line_always_stays() {
        let one = cost(&LogLine {
            offset: 0,
            stream: "stdout".into(),
            line: "x".repeat(1000),
            ts: 0,
        });
        // Room for three such lines recent, two unwritten.
        let mut j: Journal<&'static str> = Journal::new(
            0,
            JournalBounds {
                recent_lines: 1000,
                recent_bytes: 3 * one,
                unwritten_lines: 1000,
                unwritten_bytes: 2 * one,
            },
        );
        let mut dropped = Vec::new();
        for _ in 0..6 {
            dropped.extend(
                j.append("stdout", "x".repeat(1000), 0)
                    .1
                    .iter()
                    .map(|l| l.offset),
            );
        }
        assert_eq!(dropped, vec![1, 2, 3, 4]);
        assert_eq!(unwritten(&j), vec![5, 6]);
        assert_eq!(offsets(&j.memory_lines(3, 6)), vec![4, 5, 6]);
        assert_eq!(j.memory_start(), 4);
        // A line larger than the whole bound still goes in, alone.
        let big = j.append("stdout", "y".repeat(10_000), 0).1;
        assert_eq!(offsets(&big), vec![5, 6]);
        assert_eq!(unwritten(&j), vec![7]);
        assert_eq!(j.memory_start(), 7);
        // Written lines leave the unwritten bytes: room again for two.
        let w = j.start_write(Instant::now()).expect("a write");
        let _ = j.write_committed(w);
        assert!(j.append("stdout", "x".repeat(1000), 0).1.is_empty());
        assert!(j.append("stdout", "x".repeat(1000), 0).1.is_empty());
    }

    #[test]
    fn backoff_doubles_from_half_a_second_up_to_ten() {
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(
            waits,
            vec![500, 1_000, 2_000, 4_000, 8_000, 10_000, 10_000, 10_000]
        );
        assert_eq!(backoff(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn no_write_starts_before_the_backoff_and_a_success_resets_it() {
        let mut j = journal(10, 10);
        add(&mut j, 1);
        let t0 = Instant::now();
        for n in 1..=3 {
            let w = j.start_write(t0).expect("a write");
            let failure = j.write_failed(w, t0);
            assert_eq!(failure.failures, n);
            assert_eq!(failure.retry_in, backoff(n));
            assert!(j.start_write(t0).is_none(), "no write during the backoff");
            assert!(j
                .start_write(t0 + backoff(n) - Duration::from_millis(1))
                .is_none());
            // The next attempt of this loop starts exactly when the backoff elapsed.
            j.write_now(t0);
        }
        let w = j.start_write(t0).expect("a write");
        let _ = j.write_committed(w);
        add(&mut j, 1);
        let w = j.start_write(t0).expect("a write");
        assert_eq!(j.write_failed(w, t0).failures, 1, "the count restarts");
        // Shutdown lifts the backoff.
        j.write_now(t0);
        assert!(j.start_write(t0).is_some());
    }

    #[test]
    fn an_ack_with_nothing_unwritten_is_answered_at_once() {
        let mut j = journal(10, 10);
        assert_eq!(j.hold_ack("a"), Some("a"));
        add(&mut j, 1);
        write_all(&mut j);
        assert_eq!(j.hold_ack("b"), Some("b"));
        assert!(!j.has_held_acks());
    }

    #[test]
    fn an_ack_is_answered_by_the_first_write_holding_its_change_and_only_once() {
        let mut j = journal(10, 10);
        add(&mut j, 1);
        assert_eq!(j.hold_ack("first"), None);
        let w = j.start_write(Instant::now()).expect("a write");
        // Arrives during the write, with a change the write does not hold.
        add(&mut j, 1);
        assert_eq!(j.hold_ack("second"), None);
        assert_eq!(j.write_committed(w), vec!["first"]);
        assert!(j.has_held_acks());
        assert_eq!(write_all(&mut j), vec!["second"]);
        assert!(!j.has_held_acks());
        j.touch();
        assert!(write_all(&mut j).is_empty(), "nothing answered twice");
    }

    #[test]
    fn a_failed_write_hands_back_every_waiting_ack_once() {
        let mut j = journal(10, 10);
        add(&mut j, 1);
        assert_eq!(j.hold_ack("a"), None);
        let now = Instant::now();
        let w = j.start_write(now).expect("a write");
        add(&mut j, 1);
        assert_eq!(j.hold_ack("b"), None);
        let failure = j.write_failed(w, now);
        assert_eq!(failure.acks, vec!["a", "b"]);
        assert!(!j.has_held_acks());
        // The retry stores the changes but has nobody left to answer.
        j.write_now(now);
        assert!(write_all(&mut j).is_empty());
    }

    #[test]
    fn replay_serves_from_memory_when_memory_reaches_back_far_enough() {
        let mut j = journal(5, 100);
        add(&mut j, 8);
        write_all(&mut j);
        // Memory holds 4..=8 (the recent lines; everything is written).
        assert_eq!(j.memory_start(), 4);
        match j.replay(3, 100) {
            Replay::Memory {
                after,
                lines,
                complete,
            } => {
                assert_eq!(after, 3);
                assert_eq!(offsets(&lines), vec![4, 5, 6, 7, 8]);
                assert!(complete);
            }
            other => panic!("expected memory, got {other:?}"),
        }
        // A watcher ahead of the log is treated as up to date.
        assert_eq!(
            j.replay(50, 100),
            Replay::Memory {
                after: 8,
                lines: Vec::new(),
                complete: true
            }
        );
    }

    #[test]
    fn replay_is_bounded_by_max_and_says_when_it_stops_short() {
        let mut j = journal(100, 100);
        add(&mut j, 10);
        match j.replay(2, 3) {
            Replay::Memory {
                after,
                lines,
                complete,
            } => {
                assert_eq!(after, 2);
                assert_eq!(offsets(&lines), vec![3, 4, 5]);
                assert!(!complete);
            }
            other => panic!("expected memory, got {other:?}"),
        }
    }

    #[test]
    fn replay_reads_the_database_for_lines_memory_no_longer_holds() {
        let mut j = journal(5, 100);
        add(&mut j, 20);
        write_all(&mut j);
        // Memory: 16..=20. A watcher at 3 needs 4..=15 from the database.
        assert_eq!(
            j.replay(3, 100),
            Replay::Database {
                after: 3,
                limit: 12
            }
        );
        // Bounded by max: 4..=8 only.
        assert_eq!(j.replay(3, 5), Replay::Database { after: 3, limit: 5 });
        // The database gave 4..=15: memory completes it.
        let from_db: Vec<LogLine> = (4..=15)
            .map(|offset| LogLine {
                offset,
                stream: "stdout".into(),
                line: String::new(),
                ts: 0,
            })
            .collect();
        let (lines, complete) = j.replay_rest(3, from_db.clone(), 100);
        assert_eq!(offsets(&lines), (4..=20).collect::<Vec<_>>());
        assert!(complete);
        // Memory moved on past the database's lines meanwhile: only the contiguous part.
        add(&mut j, 10);
        let (lines, complete) = j.replay_rest(3, from_db, 100);
        assert_eq!(offsets(&lines), (4..=15).collect::<Vec<_>>());
        assert!(!complete);
    }

    #[test]
    fn replay_after_a_failed_read_starts_where_memory_does() {
        let mut j = journal(5, 100);
        add(&mut j, 20);
        write_all(&mut j);
        let (from, lines) = j.replay_memory();
        assert_eq!(from, 15);
        assert_eq!(offsets(&lines), vec![16, 17, 18, 19, 20]);
    }

    #[test]
    fn unwritten_lines_count_as_memory_beyond_the_recent_ones() {
        let mut j = journal(2, 100);
        add(&mut j, 6);
        // Nothing written: every line is still in memory although `recent` holds two.
        assert_eq!(j.memory_start(), 1);
        assert_eq!(
            offsets(&j.memory_lines(0, 6)),
            vec![1, 2, 3, 4, 5, 6],
            "merged without duplicates"
        );
    }
}
