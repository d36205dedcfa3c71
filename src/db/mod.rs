//! The database: one pool for either backend, migrations embedded in the binary, and the single
//! async bridge ([`Database::run`]) through which all blocking diesel calls go.
//!
//! Why an enum of two pools and not `#[derive(MultiConnection)]`: query functions here are
//! written once and compiled for each backend by [`with_conn!`](crate::with_conn), so each
//! backend keeps its full feature set (`RETURNING`, boxed queries, partial indexes) instead of
//! the common subset a multi-backend connection exposes.
//!
//! Query functions are plain `fn(&mut DbConn, …) -> QueryResult<T>`; no actor handler calls them
//! directly: reads go through `Database::run`, which runs them on the blocking thread pool, and
//! writes through the single group-commit writer ([`batch::Writer::write`]), so writers never
//! contend for SQLite's one write lock.

pub mod activities;
pub mod batch;
pub mod leases;
pub mod operations;
pub mod schema;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use diesel::connection::SimpleConnection;
use diesel::r2d2::{self, ConnectionManager, CustomizeConnection, PooledConnection};
use diesel::{Connection, PgConnection, RunQueryDsl, SqliteConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::config::DatabaseUrl;
use crate::metrics::Metrics;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

type SqlitePool = r2d2::Pool<ConnectionManager<SqliteConnection>>;
type PgPool = r2d2::Pool<ConnectionManager<PgConnection>>;

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A pooled connection to whichever backend is configured.
pub enum DbConn {
    Sqlite(PooledConnection<ConnectionManager<SqliteConnection>>),
    Postgres(PooledConnection<ConnectionManager<PgConnection>>),
}

/// Runs `$body` with `$c` bound to the concrete connection; the body is compiled once per
/// backend.
#[macro_export]
macro_rules! with_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::db::DbConn::Sqlite(pooled) => {
                let $c: &mut ::diesel::SqliteConnection = &mut *pooled;
                $body
            }
            $crate::db::DbConn::Postgres(pooled) => {
                let $c: &mut ::diesel::PgConnection = &mut *pooled;
                $body
            }
        }
    };
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("no database connection: {0}")]
    Pool(#[from] r2d2::PoolError),
    #[error("query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("database task was cancelled")]
    Cancelled,
    /// The transaction this write shared with others failed (the write itself was fine).
    #[error("the write transaction failed: {0}")]
    Shared(String),
}

/// Cheap to clone; shared by every handler.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    backend: &'static str,
    metrics: Arc<Metrics>,
}

/// SQLite settings for a server: WAL so readers never block the writer, a busy timeout so
/// concurrent writers queue instead of failing, foreign keys on.
#[derive(Debug)]
struct SqlitePragmas;

impl CustomizeConnection<SqliteConnection, r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), r2d2::Error> {
        // `batch_execute`, not `sql_query(..).execute`: the latter prepares only the first
        // statement of a string and silently ignores the rest, which left every database in
        // rollback-journal mode (readers and the writer blocking each other, deadlocks answered
        // with `database is locked` at once), fully synchronous, and without foreign keys.
        // busy_timeout first, so the statements after it already wait instead of failing.
        conn.batch_execute(
            "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; \
             PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )
        .map_err(r2d2::Error::QueryError)
    }
}

/// PostgreSQL settings for a server's sessions: a transaction left idle longer than
/// `idle_in_transaction` is ended by the database, its locks released.
///
/// Why: an owner's fenced write locks its operation's row until it commits. An owner that
/// stalls between the statements of a write (SIGSTOP, a frozen VM, a process swapped out)
/// would otherwise hold that lock for as long as it stalls, and a takeover claims with
/// `SKIP LOCKED`, so it would pass that operation over until the owner woke. With this bound
/// the database ends the stalled transaction (the server passes its operation heartbeat, at
/// least a second: our transactions are never idle for more than microseconds on their own),
/// the takeover claims the row, and the woken owner's retried write finds the new fence and
/// stops.
#[derive(Debug)]
struct PgSession {
    idle_in_transaction: Duration,
}

impl CustomizeConnection<PgConnection, r2d2::Error> for PgSession {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), r2d2::Error> {
        conn.batch_execute(&format!(
            "SET idle_in_transaction_session_timeout = {}",
            self.idle_in_transaction.as_millis().max(1)
        ))
        .map_err(r2d2::Error::QueryError)
    }
}

impl Database {
    /// Connects, creating (SQLite) and migrating the database as needed.
    pub fn connect(
        url: &DatabaseUrl,
        pool_size: u32,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        Self::connect_with(url, pool_size, timeout, None, metrics)
    }

    /// [`Database::connect`], and on PostgreSQL a bound on how long a transaction may stay
    /// idle (see [`PgSession`]).
    pub fn connect_with(
        url: &DatabaseUrl,
        pool_size: u32,
        timeout: Duration,
        idle_in_transaction: Option<Duration>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let pool = match url {
            DatabaseUrl::Sqlite(path) => {
                if let Some(dir) = std::path::Path::new(path).parent() {
                    if !dir.as_os_str().is_empty() && !dir.exists() {
                        std::fs::create_dir_all(dir).with_context(|| {
                            format!("creating the directory of the SQLite database {path}")
                        })?;
                    }
                }
                // Migrate on one connection before the pool opens others: SQLite would answer
                // a concurrent schema change with "database is locked".
                let mut conn = SqliteConnection::establish(path)
                    .map_err(|e| anyhow::anyhow!("opening the SQLite database {path}: {e}"))?;
                SqlitePragmas
                    .on_acquire(&mut conn)
                    .map_err(|e| anyhow::anyhow!("configuring the SQLite database: {e}"))?;
                conn.run_pending_migrations(SQLITE_MIGRATIONS)
                    .map_err(|e| anyhow::anyhow!("migrating the SQLite database: {e}"))?;
                drop(conn);
                let pool = r2d2::Pool::builder()
                    .max_size(pool_size)
                    .min_idle(Some(1))
                    .connection_timeout(timeout)
                    .connection_customizer(Box::new(SqlitePragmas))
                    .error_handler(Box::new(r2d2::NopErrorHandler))
                    .build(ConnectionManager::<SqliteConnection>::new(path.as_str()))
                    .with_context(|| format!("opening the SQLite database {path}"))?;
                Pool::Sqlite(pool)
            }
            DatabaseUrl::Postgres(url) => {
                // Connect once directly (a clear start-up error; the pool would only say
                // "timed out") and migrate on that connection.
                let mut conn = PgConnection::establish(url)
                    .map_err(|e| anyhow::anyhow!("connecting to PostgreSQL: {e}"))?;
                conn.run_pending_migrations(POSTGRES_MIGRATIONS)
                    .map_err(|e| anyhow::anyhow!("migrating the PostgreSQL database: {e}"))?;
                drop(conn);
                let mut builder = r2d2::Pool::builder()
                    .max_size(pool_size)
                    .min_idle(Some(1))
                    .connection_timeout(timeout)
                    .error_handler(Box::new(r2d2::NopErrorHandler));
                if let Some(idle_in_transaction) = idle_in_transaction {
                    builder = builder.connection_customizer(Box::new(PgSession {
                        idle_in_transaction,
                    }));
                }
                let pool = builder
                    .build(ConnectionManager::<PgConnection>::new(url.as_str()))
                    .context("building the PostgreSQL pool")?;
                Pool::Postgres(pool)
            }
        };
        Ok(Self {
            pool,
            backend: url.backend_name(),
            metrics,
        })
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    fn get(&self) -> Result<DbConn, DbError> {
        Ok(match &self.pool {
            Pool::Sqlite(p) => DbConn::Sqlite(p.get()?),
            Pool::Postgres(p) => DbConn::Postgres(p.get()?),
        })
    }

    /// The async bridge: runs a blocking query function on the blocking thread pool. The
    /// future owns what it needs (`'static`), so actors can hold it across their own awaits.
    pub fn run<F, T>(&self, f: F) -> impl std::future::Future<Output = Result<T, DbError>> + 'static
    where
        F: FnOnce(&mut DbConn) -> diesel::QueryResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let db = self.clone();
        async move {
            tokio::task::spawn_blocking(move || db.run_here(f))
                .await
                .unwrap_or(Err(DbError::Cancelled))
        }
    }

    /// Runs a query function on this thread (for threads that exist to block, like the
    /// operation-state writer; never call it from an actor).
    pub fn run_here<F, T>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut DbConn) -> diesel::QueryResult<T>,
    {
        let result = self
            .get()
            .and_then(|mut conn| f(&mut conn).map_err(DbError::from));
        if result.is_err() {
            self.metrics.database_errors.inc();
        }
        result
    }

    /// Round trip to the database; returns its latency.
    pub async fn ping(&self) -> Result<Duration, DbError> {
        let start = Instant::now();
        self.run(|conn| with_conn!(conn, c => diesel::sql_query("SELECT 1").execute(c)))
            .await?;
        Ok(start.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use diesel::sql_types::{Integer, Text};
    use diesel::QueryableByName;

    use super::*;

    #[derive(QueryableByName)]
    struct JournalMode {
        #[diesel(sql_type = Text)]
        journal_mode: String,
    }

    #[derive(QueryableByName)]
    struct Synchronous {
        #[diesel(sql_type = Integer)]
        synchronous: i32,
    }

    #[derive(QueryableByName)]
    struct ForeignKeys {
        #[diesel(sql_type = Integer)]
        foreign_keys: i32,
    }

    /// Every pooled SQLite connection runs in WAL mode with synchronous=NORMAL (a committed
    /// transaction survives the process being killed) and foreign keys on. Failed before: only
    /// the first pragma of the string ran, so the database stayed in rollback-journal mode.
    #[test]
    fn pooled_sqlite_connections_use_wal_normal_sync_and_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::Sqlite(dir.path().join("p.db").to_string_lossy().into_owned());
        let db =
            Database::connect(&url, 2, Duration::from_secs(5), Arc::new(Metrics::new())).unwrap();
        let (mode, sync, fk) = db
            .run_here(|c| {
                with_conn!(c, c => {
                    let mode = diesel::sql_query("PRAGMA journal_mode").get_result::<JournalMode>(c)?;
                    let sync = diesel::sql_query("PRAGMA synchronous").get_result::<Synchronous>(c)?;
                    let fk = diesel::sql_query("PRAGMA foreign_keys").get_result::<ForeignKeys>(c)?;
                    Ok((mode.journal_mode, sync.synchronous, fk.foreign_keys))
                })
            })
            .unwrap();
        assert_eq!((mode.as_str(), sync, fk), ("wal", 1, 1));
    }
}
