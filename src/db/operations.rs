//! The `operations` and `operation_logs` tables.

use diesel::prelude::*;
use serde_json::Value;

use super::schema::{operation_logs, operation_worker_tokens, operations};
use super::DbConn;
use crate::operations::{LogLine, OpError, Operation, RunnerKind, Stage, Status, Timestamp};
use crate::with_conn;

/// A stored operation (row, insert form and full-update form in one: every write writes the
/// whole status, which is what coalescing wants).
/// Serializable: the form in which an operation's owner answers another node (cluster mode).
#[derive(
    Debug,
    Clone,
    Queryable,
    Selectable,
    Insertable,
    AsChangeset,
    serde::Serialize,
    serde::Deserialize,
)]
#[diesel(table_name = operations, treat_none_as_null = true)]
pub struct OperationRow {
    pub id: String,
    pub kind: String,
    pub target: String,
    pub project: Option<String>,
    pub runner: String,
    pub status: String,
    pub progress: f64,
    pub stage: Option<String>,
    pub stages: String,
    pub message: Option<String>,
    pub eta_seconds: Option<i64>,
    pub result: Option<String>,
    pub error: Option<String>,
    pub params: String,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
    pub log_offset: i64,
    pub details: Option<String>,
}

impl From<&Operation> for OperationRow {
    fn from(o: &Operation) -> Self {
        Self {
            id: o.id.clone(),
            kind: o.kind.clone(),
            target: o.target.clone(),
            project: o.project.clone(),
            runner: o.runner.as_str().to_string(),
            status: o.status.as_str().to_string(),
            progress: o.progress,
            stage: o.stage.clone(),
            stages: serde_json::to_string(&o.stages).unwrap_or_else(|_| "[]".into()),
            message: o.message.clone(),
            eta_seconds: o.eta_seconds.map(|e| e.min(i64::MAX as u64) as i64),
            result: o.result.as_ref().map(Value::to_string),
            error: o.error.as_ref().and_then(|e| serde_json::to_string(e).ok()),
            params: o.params.to_string(),
            created_by: o.created_by.clone(),
            created_at: o.created_at.0,
            started_at: o.started_at.map(|t| t.0),
            updated_at: o.updated_at.0,
            finished_at: o.finished_at.map(|t| t.0),
            log_offset: o.log_offset as i64,
            details: o.details.as_ref().map(Value::to_string),
        }
    }
}

impl OperationRow {
    /// Back to the model. Columns written by this code always parse; a hand-edited row that
    /// does not is shown with neutral values rather than failing the whole request.
    pub fn into_operation(self) -> Operation {
        Operation {
            id: self.id,
            kind: self.kind,
            target: self.target,
            project: self.project,
            runner: RunnerKind::parse(&self.runner).unwrap_or(RunnerKind::External),
            status: Status::parse(&self.status).unwrap_or(Status::Failed),
            progress: self.progress,
            stage: self.stage,
            stages: serde_json::from_str::<Vec<Stage>>(&self.stages).unwrap_or_default(),
            message: self.message,
            eta_seconds: self.eta_seconds.map(|e| e.max(0) as u64),
            result: self.result.and_then(|r| serde_json::from_str(&r).ok()),
            error: self
                .error
                .and_then(|e| serde_json::from_str::<OpError>(&e).ok()),
            params: serde_json::from_str(&self.params).unwrap_or(Value::Null),
            created_by: self.created_by,
            created_at: Timestamp(self.created_at),
            started_at: self.started_at.map(Timestamp),
            updated_at: Timestamp(self.updated_at),
            finished_at: self.finished_at.map(Timestamp),
            log_offset: self.log_offset.max(0) as u64,
            details: self.details.and_then(|d| serde_json::from_str(&d).ok()),
        }
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = operation_logs)]
pub struct LogRow {
    pub operation_id: String,
    pub seq: i64,
    pub stream: String,
    pub line: String,
    pub ts: i64,
}

impl LogRow {
    pub fn new(operation_id: &str, l: &LogLine) -> Self {
        Self {
            operation_id: operation_id.to_string(),
            seq: l.offset as i64,
            stream: l.stream.clone(),
            line: l.line.clone(),
            ts: l.ts,
        }
    }

    pub fn into_line(self) -> LogLine {
        LogLine {
            offset: self.seq.max(0) as u64,
            stream: self.stream,
            line: self.line,
            ts: self.ts,
        }
    }
}

/// Inserts a new operation. A second active operation of the same kind and target violates
/// the partial unique index (`DatabaseErrorKind::UniqueViolation`).
pub fn insert(conn: &mut DbConn, row: &OperationRow) -> QueryResult<()> {
    with_conn!(conn, c => diesel::insert_into(operations::table).values(row).execute(c)).map(|_| ())
}

/// Inserts a new operation and, for external ones, the hash of its worker token, together.
pub fn insert_with_token(
    conn: &mut DbConn,
    row: &OperationRow,
    token_sha256: Option<&str>,
) -> QueryResult<()> {
    with_conn!(conn, c => c.transaction(|c| {
        diesel::insert_into(operations::table).values(row).execute(c)?;
        if let Some(hash) = token_sha256 {
            diesel::insert_into(operation_worker_tokens::table)
                .values((
                    operation_worker_tokens::operation_id.eq(&row.id),
                    operation_worker_tokens::token_sha256.eq(hash),
                ))
                .execute(c)?;
        }
        Ok(())
    }))
}

/// True when `token_sha256` is the stored hash of this operation's worker token.
pub fn worker_token_matches(conn: &mut DbConn, id: &str, token_sha256: &str) -> QueryResult<bool> {
    let stored: Option<String> = with_conn!(conn, c => operation_worker_tokens::table
        .find(id)
        .select(operation_worker_tokens::token_sha256)
        .first(c)
        .optional())?;
    Ok(stored.is_some_and(|s| constant_time_eq(s.as_bytes(), token_sha256.as_bytes())))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn get(conn: &mut DbConn, id: &str) -> QueryResult<Option<OperationRow>> {
    with_conn!(conn, c => operations::table
        .find(id)
        .select(OperationRow::as_select())
        .first(c)
        .optional())
}

/// The active operation of `kind` on `target`, if any.
pub fn find_active(
    conn: &mut DbConn,
    kind: &str,
    target: &str,
) -> QueryResult<Option<OperationRow>> {
    let active: Vec<&str> = Status::ACTIVE.iter().map(|s| s.as_str()).collect();
    with_conn!(conn, c => operations::table
        .filter(operations::kind.eq(kind))
        .filter(operations::target.eq(target))
        .filter(operations::status.eq_any(&active))
        .select(OperationRow::as_select())
        .first(c)
        .optional())
}

/// Every operation not in a terminal state (start-up recovery).
pub fn all_active(conn: &mut DbConn) -> QueryResult<Vec<OperationRow>> {
    let active: Vec<&str> = Status::ACTIVE.iter().map(|s| s.as_str()).collect();
    with_conn!(conn, c => operations::table
        .filter(operations::status.eq_any(&active))
        .order(operations::id.asc())
        .select(OperationRow::as_select())
        .load(c))
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<String>,
    pub kind: Option<String>,
    pub project: Option<String>,
    pub target: Option<String>,
    /// `Some(true)`: only queued, running or cancelling ones; `Some(false)`: only finished ones.
    pub active: Option<bool>,
    /// Ids sort by creation time (UUIDv7): `before` pages back from the newest.
    pub before: Option<String>,
    pub limit: i64,
}

/// The boxed query behind [`list`] and [`list_plan`], written once and compiled per backend.
macro_rules! list_query {
    ($f:expr) => {{
        let f: &ListFilter = $f;
        let mut q = operations::table
            .select(OperationRow::as_select())
            .order(operations::id.desc())
            .limit(f.limit)
            .into_boxed();
        if let Some(s) = &f.status {
            q = q.filter(operations::status.eq(s.clone()));
        }
        match f.active {
            Some(true) => q = q.filter(operations::status.eq_any(active_statuses())),
            Some(false) => q = q.filter(operations::status.ne_all(active_statuses())),
            None => {}
        }
        if let Some(k) = &f.kind {
            q = q.filter(operations::kind.eq(k.clone()));
        }
        if let Some(p) = &f.project {
            q = q.filter(operations::project.eq(p.clone()));
        }
        if let Some(t) = &f.target {
            q = q.filter(operations::target.eq(t.clone()));
        }
        if let Some(b) = &f.before {
            q = q.filter(operations::id.lt(b.clone()));
        }
        q
    }};
}

fn active_statuses() -> Vec<&'static str> {
    Status::ACTIVE.iter().map(|s| s.as_str()).collect()
}

/// Newest first. Each filter has an index to start from: `(status, id)` for `status` and
/// `active=true` (few rows, however large the table), `(project, id)`, `(target, id)`; for
/// `active=false` (most rows) the newest-first walk of the primary key finds a page at once.
pub fn list(conn: &mut DbConn, f: &ListFilter) -> QueryResult<Vec<OperationRow>> {
    with_conn!(conn, c => list_query!(f).load(c))
}

/// The database's plan for [`list`] with `f`, one line per step (SQLite's `EXPLAIN QUERY
/// PLAN`, PostgreSQL's `EXPLAIN`): how the tests check that every filter is served by an index
/// on both backends.
#[doc(hidden)]
pub fn list_plan(conn: &mut DbConn, f: &ListFilter) -> QueryResult<Vec<String>> {
    #[derive(QueryableByName)]
    struct SqliteStep {
        #[diesel(sql_type = diesel::sql_types::Text)]
        detail: String,
    }
    #[derive(QueryableByName)]
    struct PgStep {
        #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
        step: String,
    }
    match conn {
        DbConn::Sqlite(c) => {
            let q = Explain("EXPLAIN QUERY PLAN ", list_query!(f));
            let steps: Vec<SqliteStep> = q.load(&mut **c)?;
            Ok(steps.into_iter().map(|s| s.detail).collect())
        }
        DbConn::Postgres(c) => {
            let q = Explain("EXPLAIN ", list_query!(f));
            let steps: Vec<PgStep> = q.load(&mut **c)?;
            Ok(steps.into_iter().map(|s| s.step).collect())
        }
    }
}

/// A query prefixed with `EXPLAIN …`, loaded by name.
struct Explain<Q>(&'static str, Q);

impl<DB: diesel::backend::Backend, Q: diesel::query_builder::QueryFragment<DB>>
    diesel::query_builder::QueryFragment<DB> for Explain<Q>
{
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, DB>,
    ) -> QueryResult<()> {
        out.push_sql(self.0);
        self.1.walk_ast(out.reborrow())
    }
}

impl<Q> diesel::query_builder::QueryId for Explain<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q> diesel::query_builder::Query for Explain<Q> {
    type SqlType = diesel::sql_types::Untyped;
}

impl<Q, C> RunQueryDsl<C> for Explain<Q> {}

/// Writes the whole status and appends new log lines; the caller's transaction (the writer's,
/// see `db::batch`) keeps the stored `log_offset` from running ahead of the stored lines.
pub fn save(conn: &mut DbConn, row: &OperationRow, logs: &[LogRow]) -> QueryResult<()> {
    with_conn!(conn, c => {
        // Chunked: SQLite limits the number of bind parameters per statement.
        for chunk in logs.chunks(500) {
            diesel::insert_into(operation_logs::table).values(chunk).execute(c)?;
        }
        diesel::update(operations::table.find(&row.id)).set(row).execute(c)
    })
    .map(|_| ())
}

/// Writes each operation's status and appends its new log lines, all in one transaction (group
/// commit, see `db::batch`).
pub fn save_many(conn: &mut DbConn, items: &[(OperationRow, Vec<LogRow>)]) -> QueryResult<()> {
    with_conn!(conn, c => c.transaction(|c| {
        for (row, logs) in items {
            // Chunked: SQLite limits the number of bind parameters per statement.
            for chunk in logs.chunks(500) {
                diesel::insert_into(operation_logs::table).values(chunk).execute(c)?;
            }
            diesel::update(operations::table.find(&row.id)).set(row).execute(c)?;
        }
        Ok(())
    }))
}

pub fn logs_after(conn: &mut DbConn, id: &str, after: u64, limit: i64) -> QueryResult<Vec<LogRow>> {
    with_conn!(conn, c => operation_logs::table
        .filter(operation_logs::operation_id.eq(id))
        // Offsets are stored as i64: an `after` beyond that is past every line (it must not
        // wrap around to the start).
        .filter(operation_logs::seq.gt(i64::try_from(after).unwrap_or(i64::MAX)))
        .order(operation_logs::seq.asc())
        .limit(limit)
        .select(LogRow::as_select())
        .load(c))
}

/// Deletes operations finished before `before_ms` with their logs; returns how many.
pub fn prune(conn: &mut DbConn, before_ms: i64) -> QueryResult<usize> {
    with_conn!(conn, c => c.transaction(|c| {
        let old = operations::table
            .filter(operations::finished_at.lt(before_ms))
            .select(operations::id);
        diesel::delete(operation_logs::table.filter(operation_logs::operation_id.eq_any(old)))
            .execute(c)?;
        let old = operations::table
            .filter(operations::finished_at.lt(before_ms))
            .select(operations::id);
        diesel::delete(
            operation_worker_tokens::table.filter(operation_worker_tokens::operation_id.eq_any(old)),
        )
        .execute(c)?;
        diesel::delete(operations::table.filter(operations::finished_at.lt(before_ms))).execute(c)
    }))
}
