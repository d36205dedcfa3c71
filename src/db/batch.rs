//! Group commit for operation state.
//!
//! Every running operation writes its status and new log lines at most once per flush interval.
//! With a thousand operations that is thousands of small transactions a second, and on SQLite
//! (one writer at a time) they queue on the database lock. Here they queue in memory instead:
//! one writer task takes every save waiting when it starts a transaction and commits them
//! together. An idle server adds no delay (a lone save is written at once); a busy one writes
//! one transaction per round trip however many operations there are.
//!
//! The writer is its own thread at a lower scheduling priority (nice 10): persistence is
//! throughput work, and on a loaded core it must not take time slices from the threads that
//! carry live events (a transaction of a few milliseconds would otherwise sit in front of
//! every event queued behind it). Writes are still bounded in time by the flush interval; the
//! core only decides their order.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::operations::{self as store, LogRow, OperationRow};
use super::{Database, DbError};
use crate::metrics::Metrics;

/// Saves taken into one transaction at most (bounds a transaction's size and duration).
const MAX_BATCH: usize = 512;

struct Job {
    row: OperationRow,
    logs: Vec<LogRow>,
    done: oneshot::Sender<Result<(), DbError>>,
}

/// Cheap to clone; every operation actor holds one.
#[derive(Clone)]
pub struct SaveBatcher {
    tx: mpsc::UnboundedSender<Job>,
}

impl SaveBatcher {
    /// Starts the writer thread; it ends when the last `SaveBatcher` is dropped.
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

    /// Writes `row` and appends `logs` in one transaction (possibly shared with other saves).
    pub fn save(
        &self,
        row: OperationRow,
        logs: Vec<LogRow>,
    ) -> impl std::future::Future<Output = Result<(), DbError>> + 'static {
        let (done, rx) = oneshot::channel();
        let queued = self.tx.send(Job { row, logs, done }).is_ok();
        async move {
            if !queued {
                return Err(DbError::Cancelled);
            }
            rx.await.unwrap_or(Err(DbError::Cancelled))
        }
    }
}

fn writer(db: Database, metrics: Arc<Metrics>, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut dones = Vec::with_capacity(jobs.len());
        let items: Vec<(OperationRow, Vec<LogRow>)> = jobs
            .into_iter()
            .map(|j| {
                dones.push(j.done);
                (j.row, j.logs)
            })
            .collect();
        metrics.operation_write_transactions.fetch_add(1, Relaxed);
        let result = db.run_here(|c| store::save_many(c, &items));
        match result {
            Ok(()) => {
                for done in dones {
                    let _ = done.send(Ok(()));
                }
            }
            Err(e) if dones.len() == 1 => {
                if let Some(done) = dones.pop() {
                    let _ = done.send(Err(e));
                }
            }
            Err(e) => {
                // One bad save must not fail the others: write each on its own, so each
                // operation gets its own answer (and retries on its own if it failed).
                log::warn!(
                    "batched write of {} operations failed ({e}); writing them one by one",
                    dones.len()
                );
                for (i, done) in dones.into_iter().enumerate() {
                    metrics.operation_write_transactions.fetch_add(1, Relaxed);
                    let r = db.run_here(|c| store::save_many(c, &items[i..=i]));
                    let _ = done.send(r);
                }
            }
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
        let writer = SaveBatcher::start(db.clone(), metrics.clone()).unwrap();

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
        let transactions = metrics.operation_write_transactions.load(Relaxed);
        assert!(
            transactions <= 2,
            "20 saves took {transactions} transactions"
        );

        // A save that cannot be written (its operation does not exist) fails on its own; the
        // others in its batch are written.
        let before = metrics.operation_write_transactions.load(Relaxed);
        let good = writer.save(row("op1"), vec![line("op1", 3)]);
        let bad = writer.save(row("ghost"), vec![line("ghost", 1)]);
        let good2 = writer.save(row("op2"), vec![line("op2", 3)]);
        let (good, bad, good2) = tokio::join!(good, bad, good2);
        good.unwrap();
        good2.unwrap();
        assert!(bad.is_err());
        // The failed batch, then each of the three on its own.
        assert_eq!(
            metrics.operation_write_transactions.load(Relaxed) - before,
            4
        );
        let n = db
            .run(|c| store::logs_after(c, "op1", 0, 100))
            .await
            .unwrap()
            .len();
        assert_eq!(n, 3);
    }
}
