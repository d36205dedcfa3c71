//! Cluster mode's operation leases on the `operations` table (PostgreSQL only): which node owns
//! an active operation (`owner`), until when (`lease_expires`, milliseconds on the database's
//! clock, so nodes' clocks need not agree) and the fencing token of that ownership (`fence`,
//! bumped by every takeover).
//!
//! * [`take_new`]: a node owns what it inserts (in the insert's savepoint).
//! * [`renew`]: one UPDATE renews every lease a node holds (its heartbeat).
//! * [`claim_expired`]: a node takes over active operations whose lease ran out (`FOR UPDATE
//!   SKIP LOCKED`, so two claimers never take the same row and never wait on each other).
//! * [`save_fenced`]: the owner's write, applied only while its fence is the row's; a stalled
//!   owner whose operation was taken over writes nothing ([`LeaseLost`]).
//!
//! SQLite is one node's: these functions refuse it (cluster mode refuses to start on it).

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use super::operations::{LogRow, OperationRow};
use super::schema::{operation_logs, operations};
use super::DbConn;

/// Statuses whose rows hold a lease (`Status::ACTIVE`), as SQL.
const ACTIVE_SQL: &str = "status IN ('queued', 'running', 'cancelling')";
/// Now in milliseconds on the database's clock (`clock_timestamp`: the real time even inside a
/// long transaction).
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// A fenced write found the row no longer under this fence: another node took the operation
/// over (or it is gone). Carried as the query error of the write.
#[derive(Debug)]
pub struct LeaseLost;

impl std::fmt::Display for LeaseLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the operation's lease is held under another fence")
    }
}

impl std::error::Error for LeaseLost {}

/// True when `e` says a fenced write lost its lease.
pub fn is_lease_lost(e: &diesel::result::Error) -> bool {
    matches!(e, diesel::result::Error::QueryBuilderError(inner) if inner.is::<LeaseLost>())
}

fn postgres_only() -> diesel::result::Error {
    diesel::result::Error::QueryBuilderError("operation leases need PostgreSQL".into())
}

#[derive(QueryableByName)]
struct Fenced {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = BigInt)]
    fence: i64,
}

/// An operation taken over: its row, its new fence, and whether it holds one of its kind's
/// concurrency slots (an adopted external operation keeps its slot).
pub struct Claimed {
    pub row: OperationRow,
    pub fence: i64,
    pub holds_slot: bool,
}

/// `owner` takes the operation it just inserted; returns its fence.
pub fn take_new(conn: &mut DbConn, id: &str, owner: &str, lease_ms: i64) -> QueryResult<i64> {
    let DbConn::Postgres(c) = conn else {
        return Err(postgres_only());
    };
    let q = format!(
        "UPDATE operations SET owner = $1, lease_expires = {NOW_MS} + $2, fence = fence + 1 \
         WHERE id = $3 RETURNING id, fence"
    );
    let row: Fenced = diesel::sql_query(q)
        .bind::<Text, _>(owner)
        .bind::<BigInt, _>(lease_ms)
        .bind::<Text, _>(id)
        .get_result(&mut **c)?;
    Ok(row.fence)
}

/// Renews every lease `owner` holds on an active operation, in one statement; returns the ids
/// renewed with their fences (an operation this node runs that is not among them was taken
/// over).
pub fn renew(conn: &mut DbConn, owner: &str, lease_ms: i64) -> QueryResult<Vec<(String, i64)>> {
    let DbConn::Postgres(c) = conn else {
        return Err(postgres_only());
    };
    let q = format!(
        "UPDATE operations SET lease_expires = {NOW_MS} + $1 \
         WHERE owner = $2 AND {ACTIVE_SQL} RETURNING id, fence"
    );
    let rows: Vec<Fenced> = diesel::sql_query(q)
        .bind::<BigInt, _>(lease_ms)
        .bind::<Text, _>(owner)
        .load(&mut **c)?;
    Ok(rows.into_iter().map(|r| (r.id, r.fence)).collect())
}

/// Takes over at most `limit` active operations whose lease expired (or that never had one: a
/// single-node server's, before cluster mode); returns them with their new fence.
pub fn claim_expired(
    conn: &mut DbConn,
    owner: &str,
    lease_ms: i64,
    limit: i64,
) -> QueryResult<Vec<Claimed>> {
    let DbConn::Postgres(c) = conn else {
        return Err(postgres_only());
    };
    let q = format!(
        "UPDATE operations SET owner = $1, lease_expires = {NOW_MS} + $2, fence = fence + 1 \
         WHERE id IN (SELECT id FROM operations WHERE {ACTIVE_SQL} \
                      AND (lease_expires IS NULL OR lease_expires < {NOW_MS}) \
                      ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
         RETURNING id, fence"
    );
    let c: &mut diesel::PgConnection = c;
    c.transaction(|c| {
        let claimed: Vec<Fenced> = diesel::sql_query(q)
            .bind::<Text, _>(owner)
            .bind::<BigInt, _>(lease_ms)
            .bind::<BigInt, _>(limit)
            .load(c)?;
        let mut out = Vec::with_capacity(claimed.len());
        for f in claimed {
            let (row, holds_slot) = operations::table
                .find(&f.id)
                .select((OperationRow::as_select(), operations::holds_slot))
                .first(c)?;
            out.push(Claimed {
                row,
                fence: f.fence,
                holds_slot,
            });
        }
        Ok(out)
    })
}

/// The owner's write of the whole status and its new lines, applied only while `fence` is the
/// row's: the status first (which locks the row against a concurrent takeover), then the lines,
/// in the caller's savepoint. A row under another fence fails with [`LeaseLost`] and nothing is
/// written.
pub fn save_fenced(
    conn: &mut DbConn,
    row: &OperationRow,
    logs: &[LogRow],
    fence: i64,
) -> QueryResult<()> {
    let DbConn::Postgres(c) = conn else {
        return Err(postgres_only());
    };
    let c: &mut diesel::PgConnection = c;
    let n = diesel::update(
        operations::table
            .find(&row.id)
            .filter(operations::fence.eq(fence)),
    )
    .set(row)
    .execute(c)?;
    if n == 0 {
        return Err(diesel::result::Error::QueryBuilderError(Box::new(
            LeaseLost,
        )));
    }
    for chunk in logs.chunks(500) {
        diesel::insert_into(operation_logs::table)
            .values(chunk)
            .execute(c)?;
    }
    Ok(())
}

/// The active operation `id` if `owner` holds it.
pub fn owned(conn: &mut DbConn, id: &str, owner: &str) -> QueryResult<Option<Claimed>> {
    let DbConn::Postgres(c) = conn else {
        return Err(postgres_only());
    };
    let active: Vec<&str> = crate::operations::Status::ACTIVE
        .iter()
        .map(|s| s.as_str())
        .collect();
    let found: Option<(OperationRow, i64, bool)> = operations::table
        .find(id)
        .filter(operations::owner.eq(owner))
        .filter(operations::status.eq_any(active))
        .select((
            OperationRow::as_select(),
            operations::fence,
            operations::holds_slot,
        ))
        .first(&mut **c)
        .optional()?;
    Ok(found.map(|(row, fence, holds_slot)| Claimed {
        row,
        fence,
        holds_slot,
    }))
}

/// Gives the operation `id` (owned by `owner`) one of its kind's `limit` concurrency slots if
/// one is free across every node; true when it holds one. Under a transaction-scoped advisory
/// lock on the kind, so two nodes never both take the last slot. A slot is free again when its
/// operation leaves the active statuses (whichever node writes that, or a takeover).
pub fn claim_slot(
    conn: &mut DbConn,
    id: &str,
    owner: &str,
    kind: &str,
    limit: i64,
) -> QueryResult<bool> {
    let DbConn::Postgres(c) = conn else {
        return Err(postgres_only());
    };
    let c: &mut diesel::PgConnection = c;
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext('switchyard:kind'), hashtext($1))")
        .bind::<Text, _>(kind)
        .execute(c)?;
    let q = format!(
        "UPDATE operations SET holds_slot = true \
         WHERE id = $1 AND owner = $2 AND {ACTIVE_SQL} AND (holds_slot OR \
           (SELECT count(*) FROM operations WHERE kind = $3 AND holds_slot AND {ACTIVE_SQL}) < $4)"
    );
    let n = diesel::sql_query(q)
        .bind::<Text, _>(id)
        .bind::<Text, _>(owner)
        .bind::<Text, _>(kind)
        .bind::<BigInt, _>(limit)
        .execute(c)?;
    Ok(n == 1)
}
