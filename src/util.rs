//! Small helpers with no better home.

use chrono::{TimeZone, Utc};

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    Utc::now().timestamp_millis()
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-22T15:13:35.123Z`.
pub fn rfc3339_millis(ms: i64) -> String {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => String::new(),
    }
}
