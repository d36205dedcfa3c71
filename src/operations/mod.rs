//! Long-running operations: the model and its state transitions (pure; no actors, no I/O).
//!
//! An operation is created `queued`, becomes `running`, may pass through `cancelling`, and
//! reaches exactly one terminal state: `completed`, `failed` or `cancelled`. Every method here
//! refuses to move a terminal operation, which is what makes "exactly one terminal state" hold
//! whatever order reports arrive in.
//!
//! Why this file is one piece (about 910 lines, a quarter of them tests): the status object, its
//! transitions, the bounds on what a report may add to it (stages, message, result, details,
//! ETA) and the log line type are one model;
//! every transition checks the same state, and splitting them would scatter the "exactly one
//! terminal state" rule over several files.

pub mod config;
mod pattern_risk;
pub mod runner;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

/// Milliseconds since the Unix epoch; serialised as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::util::rfc3339_millis(self.0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Running,
    Cancelling,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub const ACTIVE: [Status; 3] = [Status::Queued, Status::Running, Status::Cancelling];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Cancelling => "cancelling",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Status::Queued,
            "running" => Status::Running,
            "cancelling" => Status::Cancelling,
            "completed" => Status::Completed,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }

    /// The event a terminal status is announced with.
    pub fn terminal_event(self) -> Option<&'static str> {
        match self {
            Status::Completed => Some("operation.completed"),
            Status::Failed => Some("operation.failed"),
            Status::Cancelled => Some("operation.cancelled"),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    Pending,
    Running,
    Done,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Stage {
    pub name: String,
    pub state: StageState,
    pub progress_from: f64,
    pub progress_to: f64,
}

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OpError {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
}

/// Which runner does the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunnerKind {
    Command,
    External,
    Demo,
}

impl RunnerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerKind::Command => "command",
            RunnerKind::External => "external",
            RunnerKind::Demo => "demo",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "command" => RunnerKind::Command,
            "external" => RunnerKind::External,
            "demo" => RunnerKind::Demo,
            _ => return None,
        })
    }
}

/// The status object: what REST returns and every `operation.*` status event carries.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Operation {
    pub id: String,
    pub kind: String,
    pub target: String,
    pub project: Option<String>,
    pub runner: RunnerKind,
    pub status: Status,
    /// 0-100.
    pub progress: f64,
    pub stage: Option<String>,
    pub stages: Vec<Stage>,
    pub message: Option<String>,
    /// Seconds left: the worker's own estimate when it gave one (it wins), else computed by
    /// the server from the progress rate.
    pub eta_seconds: Option<u64>,
    /// What the worker says about the work beyond one progress number (e.g. a list of agents
    /// with their own states): a JSON object, replaced whole by each report that carries one.
    pub details: Option<Value>,
    pub result: Option<Value>,
    pub error: Option<OpError>,
    pub params: Value,
    pub created_by: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
    /// Offset of the last log line (0: none yet). Log offsets start at 1 and have no gaps.
    pub log_offset: u64,
}

/// A progress report (from a worker, a command's JSON line or the demo script).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Update {
    pub progress: Option<f64>,
    pub stage: Option<String>,
    pub message: Option<String>,
    /// The worker's own estimate of the seconds left; once given it wins over the server's
    /// estimate for the rest of the operation.
    #[serde(default)]
    pub eta_seconds: Option<f64>,
    /// A JSON object replacing the operation's `details` (`{}` clears them).
    #[serde(default)]
    pub details: Option<Value>,
    /// Only from command runners: the value the operation completes with.
    #[serde(default)]
    pub result: Option<Value>,
}

/// The longest ETA a worker may give: ten years, in seconds.
pub const MAX_ETA_SECONDS: f64 = 315_360_000.0;

impl Update {
    /// The worker's ETA as whole seconds (rounded up), once `check_update` has accepted it.
    pub fn eta(&self) -> Option<u64> {
        self.eta_seconds
            .map(|e| e.ceil().clamp(0.0, MAX_ETA_SECONDS) as u64)
    }
}

/// What an external worker reports (over `/ws`, Socket.IO or REST). Serializable so that a
/// node can hand it to the operation's owner (cluster mode).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WorkerReport {
    /// A status change: progress, stage, message (a queued operation becomes running).
    Progress(Update),
    /// Log lines as (stream, line), in order.
    Logs(Vec<(String, String)>),
    /// The work succeeded, with an optional result.
    Complete(Option<Value>),
    /// The work failed, with the worker's error code and message.
    Fail { code: String, message: String },
}

/// What an update changed, so the actor knows what to announce and how soon to persist.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    pub any: bool,
    pub stage: bool,
}

/// A refused transition (the operation is terminal, the report is out of range, or it would
/// make the status object outgrow its bounds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionError {
    Finished(Status),
    Invalid(String),
    TooLarge(String),
}

/// Longest stage name a report may name, in bytes (like an event name).
pub const MAX_STAGE_NAME: usize = 128;

/// Longest `message` a report may set, in bytes (like `error.message`).
pub const MAX_MESSAGE: usize = 4096;

/// Bounds on what reports can make a status object hold. The status object travels in every
/// `operation.*` event and is kept in room history, so whatever a worker adds to it is copied
/// many times over: 200 reports naming a new stage each made every event 10 MB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusLimits {
    /// Stages a status object lists at most, declared ones included
    /// (`SWITCHYARD_OPERATION_MAX_STAGES`).
    pub max_stages: usize,
    /// Largest `result`, as JSON (`SWITCHYARD_OPERATION_MAX_RESULT_BYTES`).
    pub max_result_bytes: usize,
    /// Largest `details`, as JSON (`SWITCHYARD_OPERATION_MAX_DETAILS_BYTES`).
    pub max_details_bytes: usize,
    /// Deepest nesting of `details` (and of start params; `SWITCHYARD_OPERATION_MAX_JSON_DEPTH`).
    pub max_json_depth: usize,
}

impl Default for StatusLimits {
    fn default() -> Self {
        Self {
            max_stages: 32,
            max_result_bytes: 64 * 1024,
            max_details_bytes: 16 * 1024,
            max_json_depth: 16,
        }
    }
}

/// The bytes of `v` as compact JSON, counted without building the text.
pub fn json_len(v: &Value) -> usize {
    let mut counter = ByteCounter(0);
    // Writing into a counter cannot fail; a value that cannot be serialised is not ours.
    let _ = serde_json::to_writer(&mut counter, v);
    counter.0
}

/// How deeply `v` nests: 0 for a scalar, 1 for a flat object or array. Iterative, so a value
/// as deep as the parser allowed cannot exhaust the stack here.
pub fn json_depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        deepest = deepest.max(d + 1);
        stack.extend(children.map(|c| (c, d + 1)));
    }
    deepest
}

impl StatusLimits {
    /// Refuses a `result` whose JSON is longer than the bound (measured without building it).
    pub fn check_result(&self, result: &Value) -> Result<(), TransitionError> {
        let len = json_len(result);
        if len > self.max_result_bytes {
            return Err(TransitionError::TooLarge(format!(
                "`result` is {len} bytes of JSON, over the limit of {} (SWITCHYARD_OPERATION_MAX_RESULT_BYTES)",
                self.max_result_bytes
            )));
        }
        Ok(())
    }

    /// `details` must be a JSON object, bounded in bytes and in depth: it travels in every
    /// status event, like `result`.
    pub fn check_details(&self, details: &Value) -> Result<(), TransitionError> {
        if !details.is_object() {
            return Err(TransitionError::Invalid(
                "`details` must be a JSON object".into(),
            ));
        }
        let depth = json_depth(details);
        if depth > self.max_json_depth {
            return Err(TransitionError::Invalid(format!(
                "`details` nests {depth} levels deep, over the limit of {} \
                 (SWITCHYARD_OPERATION_MAX_JSON_DEPTH)",
                self.max_json_depth
            )));
        }
        let len = json_len(details);
        if len > self.max_details_bytes {
            return Err(TransitionError::TooLarge(format!(
                "`details` is {len} bytes of JSON, over the limit of {} \
                 (SWITCHYARD_OPERATION_MAX_DETAILS_BYTES)",
                self.max_details_bytes
            )));
        }
        Ok(())
    }
}

/// Counts the bytes written into it.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Operation {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        kind: String,
        target: String,
        project: Option<String>,
        runner: RunnerKind,
        stages: Vec<Stage>,
        params: Value,
        created_by: Option<String>,
        now: i64,
    ) -> Self {
        Self {
            id,
            kind,
            target,
            project,
            runner,
            status: Status::Queued,
            progress: 0.0,
            stage: None,
            stages,
            message: None,
            eta_seconds: None,
            details: None,
            result: None,
            error: None,
            params,
            created_by,
            created_at: Timestamp(now),
            started_at: None,
            updated_at: Timestamp(now),
            finished_at: None,
            log_offset: 0,
        }
    }

    pub fn room(&self) -> String {
        format!("operation:{}", self.id)
    }

    fn ensure_active(&self) -> Result<(), TransitionError> {
        if self.status.is_terminal() {
            Err(TransitionError::Finished(self.status))
        } else {
            Ok(())
        }
    }

    pub fn start(&mut self, now: i64) -> Result<(), TransitionError> {
        self.ensure_active()?;
        if self.status == Status::Queued {
            self.status = Status::Running;
            self.started_at = Some(Timestamp(now));
            self.updated_at = Timestamp(now);
        }
        Ok(())
    }

    /// Applies a progress report. Progress never goes backwards (a late report cannot undo
    /// a newer one); a new stage marks the stages before it done. A report is checked whole
    /// before anything changes: a refused one leaves the operation as it was.
    pub fn apply(
        &mut self,
        u: &Update,
        now: i64,
        limits: &StatusLimits,
    ) -> Result<Changed, TransitionError> {
        self.ensure_active()?;
        self.check_update(u, limits)?;
        let mut changed = Changed::default();
        if self.status == Status::Queued {
            self.start(now)?;
            changed.any = true;
        }
        if let Some(stage) = &u.stage {
            if self.stage.as_deref() != Some(stage.as_str()) {
                self.enter_stage(stage);
                changed.any = true;
                changed.stage = true;
            }
        }
        if let Some(p) = u.progress {
            if p > self.progress {
                self.progress = p;
                changed.any = true;
            }
        }
        if let Some(m) = &u.message {
            if self.message.as_deref() != Some(m.as_str()) {
                self.message = Some(m.clone());
                changed.any = true;
            }
        }
        if let Some(eta) = u.eta() {
            if self.eta_seconds != Some(eta) {
                self.eta_seconds = Some(eta);
                changed.any = true;
            }
        }
        if let Some(d) = &u.details {
            // An empty object clears them: the status then says `null`, as before any report.
            let new = d
                .as_object()
                .is_some_and(|o| !o.is_empty())
                .then(|| d.clone());
            if self.details != new {
                self.details = new;
                changed.any = true;
            }
        }
        if let Some(r) = &u.result {
            self.result = Some(r.clone());
        }
        if changed.any {
            self.updated_at = Timestamp(now);
        }
        Ok(changed)
    }

    /// What a report may add to the status object: a progress in range, a stage name and a
    /// message of bounded length, at most `max_stages` stages listed (a report naming one more
    /// undeclared stage is refused, not recorded halfway), a bounded `result`.
    fn check_update(&self, u: &Update, limits: &StatusLimits) -> Result<(), TransitionError> {
        if let Some(p) = u.progress {
            if !p.is_finite() || !(0.0..=100.0).contains(&p) {
                return Err(TransitionError::Invalid(
                    "progress must be a number from 0 to 100".into(),
                ));
            }
        }
        if let Some(stage) = &u.stage {
            if stage.len() > MAX_STAGE_NAME {
                return Err(TransitionError::Invalid(format!(
                    "`stage` must be at most {MAX_STAGE_NAME} bytes"
                )));
            }
            let listed = self.stages.iter().any(|s| s.name == *stage);
            if !listed && self.stages.len() >= limits.max_stages {
                return Err(TransitionError::TooLarge(format!(
                    "the operation already lists {} stages, the most it may \
                     (SWITCHYARD_OPERATION_MAX_STAGES); report progress within a listed stage \
                     and put per-item detail in `message` or the log",
                    self.stages.len()
                )));
            }
        }
        if let Some(m) = &u.message {
            if m.len() > MAX_MESSAGE {
                return Err(TransitionError::Invalid(format!(
                    "`message` must be at most {MAX_MESSAGE} bytes"
                )));
            }
        }
        if let Some(e) = u.eta_seconds {
            if !e.is_finite() || !(0.0..=MAX_ETA_SECONDS).contains(&e) {
                return Err(TransitionError::Invalid(format!(
                    "`eta_seconds` must be a number of seconds from 0 to {MAX_ETA_SECONDS}"
                )));
            }
        }
        if let Some(d) = &u.details {
            limits.check_details(d)?;
        }
        if let Some(r) = &u.result {
            limits.check_result(r)?;
        }
        Ok(())
    }

    fn enter_stage(&mut self, name: &str) {
        let idx = match self.stages.iter().position(|s| s.name == name) {
            Some(i) => i,
            None => {
                // An undeclared stage is appended where the operation is now.
                self.stages.push(Stage {
                    name: name.to_string(),
                    state: StageState::Pending,
                    progress_from: self.progress,
                    progress_to: self.progress,
                });
                self.stages.len() - 1
            }
        };
        for (i, s) in self.stages.iter_mut().enumerate() {
            if i < idx && matches!(s.state, StageState::Pending | StageState::Running) {
                s.state = StageState::Done;
            }
        }
        self.stages[idx].state = StageState::Running;
        if self.progress < self.stages[idx].progress_from {
            self.progress = self.stages[idx].progress_from;
        }
        self.stage = Some(name.to_string());
    }

    pub fn request_cancel(&mut self, now: i64) -> Result<(), TransitionError> {
        self.ensure_active()?;
        self.status = Status::Cancelling;
        self.updated_at = Timestamp(now);
        Ok(())
    }

    fn finish(&mut self, status: Status, now: i64) -> Result<(), TransitionError> {
        self.ensure_active()?;
        self.status = status;
        self.finished_at = Some(Timestamp(now));
        self.updated_at = Timestamp(now);
        self.eta_seconds = None;
        let current = self.stage.clone();
        for s in &mut self.stages {
            match status {
                Status::Completed => s.state = StageState::Done,
                Status::Failed | Status::Cancelled
                    if Some(&s.name) == current.as_ref() && s.state == StageState::Running =>
                {
                    s.state = if status == Status::Failed {
                        StageState::Failed
                    } else {
                        StageState::Cancelled
                    };
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn complete(&mut self, result: Option<Value>, now: i64) -> Result<(), TransitionError> {
        self.ensure_active()?;
        if result.is_some() {
            self.result = result;
        }
        self.progress = 100.0;
        self.finish(Status::Completed, now)
    }

    pub fn fail(&mut self, code: &str, message: &str, now: i64) -> Result<(), TransitionError> {
        self.ensure_active()?;
        self.error = Some(OpError {
            code: code.to_string(),
            message: message.to_string(),
            stage: self.stage.clone(),
        });
        self.finish(Status::Failed, now)
    }

    pub fn cancelled(&mut self, now: i64) -> Result<(), TransitionError> {
        self.finish(Status::Cancelled, now)
    }
}

/// Estimates the time left from the recent progress rate (a 30-second window of samples),
/// unless the worker gave its own estimate: from then on the worker's latest one stands.
#[derive(Debug, Default)]
pub struct EtaEstimator {
    samples: VecDeque<(i64, f64)>,
    /// The worker's latest ETA; once there is one, the server no longer estimates (the worker
    /// knows its work, e.g. how many files are left, better than a rate does).
    supplied: Option<u64>,
}

const ETA_WINDOW_MS: i64 = 30_000;

impl EtaEstimator {
    /// The ETA after a report: `supplied` is the worker's own (in whole seconds), if it gave
    /// one in this report.
    pub fn observe_report(
        &mut self,
        now: i64,
        progress: f64,
        supplied: Option<u64>,
    ) -> Option<u64> {
        if supplied.is_some() {
            self.supplied = supplied;
        }
        match self.supplied {
            Some(eta) => Some(eta),
            None => self.observe(now, progress),
        }
    }

    pub fn observe(&mut self, now: i64, progress: f64) -> Option<u64> {
        if self.samples.back().is_none_or(|(_, p)| progress > *p) {
            self.samples.push_back((now, progress));
        }
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(t, _)| now - t > ETA_WINDOW_MS)
        {
            self.samples.pop_front();
        }
        let (t0, p0) = *self.samples.front()?;
        let (t1, p1) = *self.samples.back()?;
        if p1 >= 100.0 || t1 <= t0 || p1 <= p0 {
            return None;
        }
        let rate = (p1 - p0) / ((t1 - t0) as f64 / 1000.0); // percent per second
        Some(((100.0 - p1) / rate).ceil().max(0.0) as u64)
    }
}

/// A fresh worker token: 32 random bytes, base64url.
pub fn new_worker_token() -> String {
    use base64::Engine as _;
    let raw: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// What is stored of a worker token (hex SHA-256). Computed for every report that carries a
/// token, so one allocation (not one per byte).
pub fn token_sha256(token: &str) -> String {
    use sha2::Digest as _;
    use std::fmt::Write as _;
    let digest = sha2::Sha256::digest(token.as_bytes());
    let mut hex = String::with_capacity(digest.len() * 2);
    for b in digest {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// One log line, as stored and as carried by `operation.log`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogLine {
    pub offset: u64,
    pub stream: String,
    pub line: String,
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
}

/// Longest log line kept; longer lines are cut (and marked) so one runaway line cannot bloat
/// every watcher's queue.
pub const MAX_LOG_LINE: usize = 16 * 1024;

pub fn clip_line(mut line: String) -> String {
    if line.len() > MAX_LOG_LINE {
        let mut cut = MAX_LOG_LINE;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str(" …[truncated]");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hashes_are_lowercase_hex_sha256() {
        assert_eq!(
            token_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn op() -> Operation {
        Operation::new(
            "o1".into(),
            "demo".into(),
            "t".into(),
            None,
            RunnerKind::Demo,
            vec![
                Stage {
                    name: "a".into(),
                    state: StageState::Pending,
                    progress_from: 0.0,
                    progress_to: 50.0,
                },
                Stage {
                    name: "b".into(),
                    state: StageState::Pending,
                    progress_from: 50.0,
                    progress_to: 100.0,
                },
            ],
            Value::Null,
            None,
            0,
        )
    }

    #[test]
    fn stages_advance_and_progress_never_goes_back() {
        let mut o = op();
        let c = o
            .apply(
                &Update {
                    stage: Some("a".into()),
                    progress: Some(10.0),
                    ..Default::default()
                },
                1,
                &StatusLimits::default(),
            )
            .unwrap();
        assert!(c.stage && c.any);
        assert_eq!(o.status, Status::Running);
        o.apply(
            &Update {
                stage: Some("b".into()),
                ..Default::default()
            },
            2,
            &StatusLimits::default(),
        )
        .unwrap();
        assert_eq!(o.progress, 50.0, "entering b lifts progress to its start");
        assert_eq!(o.stages[0].state, StageState::Done);
        assert_eq!(o.stages[1].state, StageState::Running);
        let c = o
            .apply(
                &Update {
                    progress: Some(20.0),
                    ..Default::default()
                },
                3,
                &StatusLimits::default(),
            )
            .unwrap();
        assert!(!c.any);
        assert_eq!(o.progress, 50.0);
        assert!(o
            .apply(
                &Update {
                    progress: Some(101.0),
                    ..Default::default()
                },
                4,
                &StatusLimits::default()
            )
            .is_err());
    }

    #[test]
    fn undeclared_stages_stop_at_the_bound_and_long_fields_are_refused() {
        let limits = StatusLimits {
            max_stages: 4,
            max_result_bytes: 100,
            ..StatusLimits::default()
        };
        let mut o = op(); // declares a and b
        let stage = |name: &str| Update {
            stage: Some(name.into()),
            ..Default::default()
        };
        o.apply(&stage("c"), 1, &limits).unwrap();
        o.apply(&stage("d"), 2, &limits).unwrap();
        let before = o.clone();
        let refused = o.apply(&stage("e"), 3, &limits);
        assert!(matches!(refused, Err(TransitionError::TooLarge(_))));
        assert_eq!(o.stages, before.stages, "a refused report changes nothing");
        assert_eq!(o.stage.as_deref(), Some("d"));
        // Listed stages may still be entered.
        o.apply(&stage("a"), 4, &limits).unwrap();
        let long = Update {
            stage: Some("s".repeat(MAX_STAGE_NAME + 1)),
            ..Default::default()
        };
        assert!(matches!(
            o.apply(&long, 5, &limits),
            Err(TransitionError::Invalid(_))
        ));
        let long = Update {
            message: Some("m".repeat(MAX_MESSAGE + 1)),
            ..Default::default()
        };
        assert!(matches!(
            o.apply(&long, 6, &limits),
            Err(TransitionError::Invalid(_))
        ));
        let big = Update {
            result: Some(Value::String("r".repeat(100))),
            ..Default::default()
        };
        assert!(matches!(
            o.apply(&big, 7, &limits),
            Err(TransitionError::TooLarge(_))
        ));
        assert!(limits.check_result(&Value::String("r".repeat(98))).is_ok());
    }

    #[test]
    fn exactly_one_terminal_state() {
        let mut o = op();
        o.start(1).unwrap();
        o.fail("boom", "it broke", 2).unwrap();
        assert_eq!(o.status, Status::Failed);
        assert_eq!(
            o.complete(None, 3),
            Err(TransitionError::Finished(Status::Failed))
        );
        assert_eq!(
            o.cancelled(3),
            Err(TransitionError::Finished(Status::Failed))
        );
        assert!(o
            .apply(&Update::default(), 4, &StatusLimits::default())
            .is_err());
        assert_eq!(o.status, Status::Failed);
    }

    #[test]
    fn details_and_a_worker_eta_are_bounded_applied_and_cleared() {
        let limits = StatusLimits {
            max_details_bytes: 64,
            max_json_depth: 3,
            ..StatusLimits::default()
        };
        let mut o = op();
        let report = |details: Value, eta: Option<f64>| Update {
            details: Some(details),
            eta_seconds: eta,
            ..Default::default()
        };
        let agents = serde_json::json!({"agents": [{"name": "a", "state": "running"}]});
        let c = o
            .apply(&report(agents.clone(), Some(41.2)), 1, &limits)
            .unwrap();
        assert!(c.any);
        assert_eq!(o.details, Some(agents.clone()));
        assert_eq!(o.eta_seconds, Some(42), "rounded up to whole seconds");
        // The same again changes nothing.
        let c = o
            .apply(&report(agents.clone(), Some(42.0)), 2, &limits)
            .unwrap();
        assert!(!c.any);
        let refused = [
            report(serde_json::json!([1]), None),
            report(serde_json::json!({"a": {"b": {"c": {}}}}), None),
            report(serde_json::json!({"pad": "x".repeat(64)}), None),
            report(serde_json::json!({}), Some(-1.0)),
            report(serde_json::json!({}), Some(f64::INFINITY)),
        ];
        for u in &refused {
            assert!(o.apply(u, 3, &limits).is_err(), "{u:?}");
        }
        assert_eq!(o.details, Some(agents), "a refused report changes nothing");
        o.apply(&report(serde_json::json!({}), None), 4, &limits)
            .unwrap();
        assert_eq!(o.details, None, "an empty object clears them");
        assert_eq!(json_depth(&serde_json::json!(1)), 0);
        assert_eq!(json_depth(&serde_json::json!({"a": [1, {"b": []}]})), 4);
        assert_eq!(json_depth(&serde_json::json!({"a": {"b": 1}})), 2);
    }

    #[test]
    fn a_worker_eta_wins_over_the_estimate_from_then_on() {
        let mut e = EtaEstimator::default();
        assert_eq!(e.observe_report(0, 0.0, None), None);
        assert_eq!(e.observe_report(10_000, 10.0, None), Some(90));
        assert_eq!(e.observe_report(20_000, 20.0, Some(5)), Some(5));
        assert_eq!(e.observe_report(30_000, 30.0, None), Some(5));
        assert_eq!(e.observe_report(31_000, 31.0, Some(3)), Some(3));
    }

    #[test]
    fn eta_follows_the_recent_rate() {
        let mut e = EtaEstimator::default();
        assert_eq!(e.observe(0, 0.0), None);
        assert_eq!(e.observe(10_000, 10.0), Some(90));
        assert_eq!(e.observe(20_000, 20.0), Some(80));
        assert_eq!(e.observe(20_000, 100.0), None);
    }
}
