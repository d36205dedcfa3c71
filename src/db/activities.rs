//! The `activities` table: the persisted activity feed.

use diesel::prelude::*;
use serde::Serialize;
use serde_json::value::RawValue;

use super::schema::activities;
use super::DbConn;
use crate::with_conn;

/// A stored row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = activities)]
pub struct ActivityRow {
    pub id: i64,
    pub project: Option<String>,
    pub actor: String,
    pub verb: String,
    pub object: Option<String>,
    pub data: Option<String>,
    pub created_at: i64,
}

/// The insert form.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = activities)]
pub struct NewActivity {
    pub project: Option<String>,
    pub actor: String,
    pub verb: String,
    pub object: Option<String>,
    pub data: Option<String>,
    pub created_at: i64,
}

/// The API shape, shared by HTTP responses and the `activity.created` event.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Activity {
    pub id: i64,
    pub project: Option<String>,
    pub actor: String,
    pub verb: String,
    pub object: Option<String>,
    /// Any JSON value the poster gave.
    #[schema(value_type = Option<Value>)]
    pub data: Option<Box<RawValue>>,
    /// RFC 3339, UTC, milliseconds.
    pub created_at: String,
}

impl From<ActivityRow> for Activity {
    fn from(r: ActivityRow) -> Self {
        Self {
            id: r.id,
            project: r.project,
            actor: r.actor,
            verb: r.verb,
            object: r.object,
            // Stored by us from validated JSON; a row edited by hand into invalid JSON shows as
            // null rather than failing the whole page.
            data: r.data.and_then(|d| RawValue::from_string(d).ok()),
            created_at: crate::util::rfc3339_millis(r.created_at),
        }
    }
}

pub fn insert(conn: &mut DbConn, new: &NewActivity) -> QueryResult<ActivityRow> {
    with_conn!(conn, c => diesel::insert_into(activities::table)
        .values(new)
        .returning(ActivityRow::as_returning())
        .get_result(c))
}

/// Newest first: up to `limit` activities with id < `before`, optionally of one project.
pub fn page(
    conn: &mut DbConn,
    project: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> QueryResult<Vec<ActivityRow>> {
    with_conn!(conn, c => {
        let mut q = activities::table
            .select(ActivityRow::as_select())
            .order(activities::id.desc())
            .limit(limit)
            .into_boxed();
        if let Some(p) = project {
            q = q.filter(activities::project.eq(p.to_string()));
        }
        if let Some(b) = before {
            q = q.filter(activities::id.lt(b));
        }
        q.load(c)
    })
}
