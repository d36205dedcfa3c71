//! Server-Sent Events encoding (`text/event-stream`).

use bytes::Bytes;
use serde_json::value::RawValue;

/// One event. JSON has no raw newlines outside strings once serialised compactly, but data sent
/// by clients is passed through verbatim and may contain them, so every line gets its own
/// `data:` field as the SSE format requires.
pub fn event(name: &str, data: &RawValue, id: Option<u64>) -> Bytes {
    let mut out = String::with_capacity(data.get().len() + name.len() + 32);
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(&id.to_string());
        out.push('\n');
    }
    out.push_str("event: ");
    out.push_str(name);
    out.push('\n');
    for line in data.get().split('\n') {
        out.push_str("data: ");
        out.push_str(line.trim_end_matches('\r'));
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// A comment line: keeps proxies from timing the stream out.
pub fn keepalive() -> Bytes {
    Bytes::from_static(b": keepalive\n\n")
}

/// Tells `EventSource` how long to wait before reconnecting.
pub fn retry(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}
