//! The single writer: every write to the database goes through one thread, group-committed.
//!
//! Operation state alone is thousands of small transactions a second with a thousand running
//! operations, and starts, activities and pruning come on top. On SQLite (one writer at a time)
//! writers on several pooled connections queue on the database lock, and SQLite's busy handler
//! is not a fair queue: under a burst a writer can sleep past its busy timeout and fail with
//! `database is locked` (2,000 concurrent starts got a 503 that way). Here writes queue in
//! memory instead: one writer thread takes every write waiting when it starts a transaction and
//! commits them together. An idle server adds no delay (a lone write is committed at once); a
//! busy one writes one transaction per round trip however many writes are waiting.
//!
//! Each write runs in its own savepoint of the shared transaction, so one that fails (a start
//! that loses the one-active-operation race, a save whose operation is gone) is rolled back and
//! answered alone while the others commit. A write's future resolves only once the transaction
//! holding it has committed: that is what lets a 2xx mean "stored" (see docs/reliability.md for
//! what "stored" survives on each backend).
//!
//! The writer is its own thread at a lower scheduling priority (nice 10): persistence is
//! throughput work, and on a loaded core it must not take time slices from the threads that
//! carry live events (a transaction of a few milliseconds would otherwise sit in front of
//! every event queued behind it). The core only decides the order; nothing waits on a timer.

use std::sync::Arc;

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::QueryResult;
use tokio::sync::{mpsc, oneshot};

use super::operations::{self as store, LogRow, OperationRow};
use super::{Database, DbConn, DbError};
use crate::metrics::Metrics;
use crate::with_conn;

/// Writes taken into one transaction at most (bounds a transaction's size and duration).
const MAX_BATCH: usize = 512;

/// One queued write: run inside its savepoint, then told the transaction's outcome.
trait Work: Send {
    fn run(&mut self, conn: &mut DbConn) -> QueryResult<()>;
    /// Called once: `Ok` only when `run` succeeded and its transaction committed.
    fn settle(self: Box<Self>, outcome: Result<(), DbError>);
}

/// A query function and where its value goes once committed.
struct Closure<F, T> {
    f: Option<F>,
    value: Option<T>,
    done: oneshot::Sender<Result<T, DbError>>,
}

impl<F, T> Work for Closure<F, T>
where
    F: FnOnce(&mut DbConn) -> QueryResult<T> + Send,
    T: Send,
{
    fn run(&mut self, conn: &mut DbConn) -> QueryResult<()> {
        let f = self.f.take().ok_or(diesel::result::Error::NotFound)?;
        self.value = Some(f(conn)?);
        Ok(())
    }

    fn settle(self: Box<Self>, outcome: Result<(), DbError>) {
        let Closure { value, done, .. } = *self;
        let _ = done.send(outcome.and_then(|()| value.ok_or(DbError::Cancelled)));
    }
}

/// Cheap to clone; every operation actor and every writing route holds one.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Box<dyn Work>>,
}

impl Writer {
    /// Starts the writer thread; it ends when the last `Writer` is dropped.
    pub fn start(db: Database, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("switchyard-db-writer".into())
            .spawn(move || {
                // Linux: the nice value of this thread only. Failure leaves normal priority.
                // SAFETY: setpriority has no memory-safety preconditions.
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, 0, 10);
                }
                writer(db, metrics, rx)
            })?;
        Ok(Self { tx })
    }

    /// Runs the write `f` in the next shared transaction; resolves once that transaction has
    /// committed (or with the error that kept this write, or its transaction, from committing).
    /// `f` runs in its own savepoint: it must not open or end the transaction itself (nested
    /// `transaction` calls are savepoints and are fine).
    pub fn write<F, T>(
        &self,
        f: F,
    ) -> impl std::future::Future<Output = Result<T, DbError>> + 'static
    where
        F: FnOnce(&mut DbConn) -> QueryResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let (done, rx) = oneshot::channel();
        let queued = self
            .tx
            .send(Box::new(Closure {
                f: Some(f),
                value: None,
                done,
            }))
            .is_ok();
        async move {
            if !queued {
                return Err(DbError::Cancelled);
            }
            rx.await.unwrap_or(Err(DbError::Cancelled))
        }
    }

    /// Writes `row` and appends `logs` (possibly in a transaction shared with other writes).
    pub fn save(
        &self,
        row: OperationRow,
        logs: Vec<LogRow>,
    ) -> impl std::future::Future<Output = Result<(), DbError>> + 'static {
        self.write(move |c| store::save(c, &row, &logs))
    }
}

fn writer(db: Database, metrics: Arc<Metrics>, mut rx: mpsc::UnboundedReceiver<Box<dyn Work>>) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        metrics.operation_write_transactions.inc();
        metrics.observe_write_batch(jobs.len());
        let mut failed: Vec<Option<diesel::result::Error>> = jobs.iter().map(|_| None).collect();
        let result = db.run_here(|c| {
            begin(c)?;
            for (job, failed) in jobs.iter_mut().zip(failed.iter_mut()) {
                if let Err(e) = in_savepoint(c, |c| job.run(c)) {
                    *failed = Some(e);
                }
            }
            let committed = with_conn!(c, c => AnsiTransactionManager::commit_transaction(c));
            if committed.is_err() {
                // The manager rolls back a failed COMMIT itself where it can; make sure.
                let _ = with_conn!(c, c => AnsiTransactionManager::rollback_transaction(c));
            }
            committed
        });
        match result {
            Ok(()) => {
                for (job, failed) in jobs.into_iter().zip(failed) {
                    job.settle(match failed {
                        None => Ok(()),
                        Some(e) => Err(DbError::Query(e)),
                    });
                }
            }
            Err(e) => {
                log::warn!(
                    "database writer: a transaction of {} writes failed: {e}",
                    jobs.len()
                );
                let message = e.to_string();
                for (job, failed) in jobs.into_iter().zip(failed) {
                    job.settle(Err(match failed {
                        Some(e) => DbError::Query(e),
                        None => DbError::Shared(message.clone()),
                    }));
                }
            }
        }
    }
}

/// Opens the shared transaction. SQLite: `BEGIN IMMEDIATE`, so the write lock is taken (with
/// the busy timeout, against another process) before any statement runs, and a read followed
/// by a write can never find its snapshot stale.
fn begin(c: &mut DbConn) -> QueryResult<()> {
    match c {
        DbConn::Sqlite(pooled) => AnsiTransactionManager::begin_transaction_sql(
            &mut **pooled as &mut diesel::SqliteConnection,
            "BEGIN IMMEDIATE",
        ),
        DbConn::Postgres(pooled) => {
            AnsiTransactionManager::begin_transaction(&mut **pooled as &mut diesel::PgConnection)
        }
    }
}

/// Runs `f` in a savepoint of the open transaction: rolled back alone if it fails.
fn in_savepoint<T>(
    c: &mut DbConn,
    f: impl FnOnce(&mut DbConn) -> QueryResult<T>,
) -> QueryResult<T> {
    with_conn!(c, c => AnsiTransactionManager::begin_transaction(c))?;
    match f(c) {
        Ok(v) => {
            with_conn!(c, c => AnsiTransactionManager::commit_transaction(c))?;
            Ok(v)
        }
        Err(e) => {
            with_conn!(c, c => AnsiTransactionManager::rollback_transaction(c))?;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::DatabaseUrl;

    fn row(id: &str) -> OperationRow {
        OperationRow {
            id: id.into(),
            kind: "k".into(),
            target: id.into(),
            project: None,
            runner: "external".into(),
            status: "running".into(),
            progress: 0.0,
            stage: None,
            stages: "[]".into(),
            message: None,
            eta_seconds: None,
            result: None,
            error: None,
            params: "{}".into(),
            created_by: None,
            created_at: 0,
            started_at: None,
            updated_at: 0,
            finished_at: None,
            log_offset: 0,
            details: None,
        }
    }

    fn line(id: &str, seq: i64) -> LogRow {
        LogRow {
            operation_id: id.into(),
            seq,
            stream: "stdout".into(),
            line: format!("line {seq}"),
            ts: 0,
        }
    }

    #[actix_web::test]
    async fn waiting_saves_share_one_transaction_and_a_bad_one_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::Sqlite(dir.path().join("t.db").to_string_lossy().into_owned());
        let metrics = Arc::new(Metrics::new());
        let db = Database::connect(&url, 4, Duration::from_secs(5), metrics.clone()).unwrap();
        let ids: Vec<String> = (0..20).map(|i| format!("op{i}")).collect();
        for id in &ids {
            let r = row(id);
            db.run(move |c| store::insert(c, &r)).await.unwrap();
        }
        let writer = Writer::start(db.clone(), metrics.clone()).unwrap();

        // Another connection holds SQLite's write lock while twenty saves are queued: the
        // writer's first transaction waits on it (busy timeout) with at most the saves it had
        // taken, and the next one takes all the rest.
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder_db = db.clone();
        let holder = std::thread::spawn(move || {
            holder_db.run_here(|c| {
                crate::with_conn!(c, c => {
                    diesel::RunQueryDsl::execute(diesel::sql_query("BEGIN IMMEDIATE"), c)?;
                    let _ = locked_tx.send(());
                    let _ = release_rx.recv();
                    diesel::RunQueryDsl::execute(diesel::sql_query("COMMIT"), c)
                })
            })
        });
        locked_rx.recv().unwrap();
        let saves: Vec<_> = ids
            .iter()
            .map(|id| writer.save(row(id), vec![line(id, 1), line(id, 2)]))
            .collect();
        release_tx.send(()).unwrap();
        holder.join().unwrap().unwrap();
        for r in futures_util::future::join_all(saves).await {
            r.unwrap();
        }
        let transactions = metrics.operation_write_transactions.get();
        assert!(
            transactions <= 2,
            "20 saves took {transactions} transactions"
        );

        // A save that cannot be written (its operation does not exist) fails on its own, in its
        // savepoint; the others in its transaction are written, and nothing is written twice.
        let before = metrics.operation_write_transactions.get();
        let good = writer.save(row("op1"), vec![line("op1", 3)]);
        let bad = writer.save(row("ghost"), vec![line("ghost", 1)]);
        let good2 = writer.save(row("op2"), vec![line("op2", 3)]);
        let (good, bad, good2) = tokio::join!(good, bad, good2);
        good.unwrap();
        good2.unwrap();
        assert!(bad.is_err());
        // One shared transaction at most (the three may also have been taken one by one).
        assert!(metrics.operation_write_transactions.get() - before <= 3);
        let n = db
            .run(|c| store::logs_after(c, "op1", 0, 100))
            .await
            .unwrap()
            .len();
        assert_eq!(n, 3);
    }
}
