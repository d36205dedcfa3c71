//! Backend hooks: HTTP calls from Switchyard to an app's backend (docs/profiles.md, "Backend
//! hooks"; docs/security.md, "Backend hooks"). An app profile names its backend
//! ([`HookConfig`]); a call is one JSON POST, signed ([`sign`]), bounded in time (the
//! profile's timeout), in number (`SWITCHYARD_HOOK_CONCURRENCY` per node) and in answer size
//! (`SWITCHYARD_MAX_FRAME_BYTES`: the answer goes to a client in one frame anyway).
//!
//! * `connect` — the backend authenticates a handshake with the app's own cookies or headers
//!   and answers the identity ([`identity`]).
//! * `subscribe` — allows or denies a join.
//! * `publish` — allows or denies a publish, and may rewrite its data.
//! * `rpc` — an app's event answered by the backend.
//!
//! The answer's HTTP status is the decision: 2xx allows (its JSON body is the answer), 401 and
//! 403 deny (`forbidden`, with the body's `message`), anything else — another status, no answer
//! within the timeout, no connection, an answer that is not JSON or too large — is
//! `backend_unavailable`. A call is a future the caller spawns: no actor waits on it.
//!
//! Why one piece (about 500 lines, a fifth of them tests): the config, the captured request,
//! the call, its signature and the reading of its answer are one contract with the backend,
//! documented once in docs/security.md; split, the signing and the answer rules would drift.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::auth::Identity;
use crate::error_code::{ErrorCode, Refusal};

/// The header with the call's timestamp (seconds since the epoch), which the signature covers.
pub const TIMESTAMP_HEADER: &str = "x-switchyard-timestamp";
/// The header with `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub const SIGNATURE_HEADER: &str = "x-switchyard-signature";
/// The header naming the hook (`connect`, `subscribe`, `publish`, `rpc`).
pub const HOOK_HEADER: &str = "x-switchyard-hook";

/// Headers a profile may not forward: Switchyard sets them itself (a client's own
/// `X-Switchyard-Signature` must never reach the backend as if it were ours).
const NOT_FORWARDED: [&str; 6] = [
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "cookie",
];

/// Longest denial message passed from the backend to a client.
const MESSAGE_MAX: usize = 200;

/// Which hook a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Connect,
    Subscribe,
    Publish,
    Rpc,
}

impl HookKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Subscribe => "subscribe",
            Self::Publish => "publish",
            Self::Rpc => "rpc",
        }
    }
}

/// One profile's backend: where each hook is, how long a call may take, what of the client's
/// request is forwarded.
#[derive(Debug, Clone)]
pub struct HookConfig {
    /// The base URL (environment variables expanded at start-up).
    pub url: String,
    pub timeout: Duration,
    /// Request headers forwarded as they came (lowercase names).
    pub headers: Vec<String>,
    /// Cookies forwarded (by name), in one `Cookie` header.
    pub cookies: Vec<String>,
    pub connect: Option<String>,
    pub subscribe: Option<String>,
    pub publish: Option<String>,
    pub rpc: Option<String>,
    /// `connect`, `subscribe` and `publish` serve `/ws` too (one profile at most).
    pub ws: bool,
}

impl HookConfig {
    /// The URL of a hook, when the profile declares it.
    pub fn url_of(&self, kind: HookKind) -> Option<String> {
        let path = match kind {
            HookKind::Connect => &self.connect,
            HookKind::Subscribe => &self.subscribe,
            HookKind::Publish => &self.publish,
            HookKind::Rpc => &self.rpc,
        };
        path.as_ref()
            .map(|p| format!("{}{}", self.url.trim_end_matches('/'), p))
    }

    /// Whether `name` may be forwarded (checked when the profile is read).
    pub fn forwardable(name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        !lower.is_empty()
            && !NOT_FORWARDED.contains(&lower.as_str())
            && !lower.starts_with("x-switchyard-")
            && lower
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }
}

/// What of a client's HTTP request (the Socket.IO handshake, the `/ws` upgrade) later hook
/// calls forward: only the headers and cookies some profile names, captured once.
#[derive(Debug, Clone, Default)]
pub struct Forwarded {
    headers: Vec<(String, String)>,
    cookies: Vec<(String, String)>,
}

impl Forwarded {
    /// Nothing to forward, as one value every connection without hooks shares: no allocation
    /// per connection for what most servers never use.
    pub fn none() -> Arc<Forwarded> {
        static NONE: std::sync::OnceLock<Arc<Forwarded>> = std::sync::OnceLock::new();
        NONE.get_or_init(|| Arc::new(Forwarded::default())).clone()
    }

    /// This, shared: the common empty value when there is nothing to forward.
    pub fn shared(self) -> Arc<Forwarded> {
        if self.headers.is_empty() && self.cookies.is_empty() {
            Self::none()
        } else {
            Arc::new(self)
        }
    }

    /// What a hook call with `cfg` sends: its headers, and its cookies in one `Cookie` header.
    fn for_config(&self, cfg: &HookConfig) -> (Vec<(&str, &str)>, Option<String>) {
        let headers = self
            .headers
            .iter()
            .filter(|(n, _)| cfg.headers.iter().any(|h| h == n))
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let cookies: Vec<String> = self
            .cookies
            .iter()
            .filter(|(n, _)| cfg.cookies.iter().any(|c| c == n))
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        (headers, (!cookies.is_empty()).then(|| cookies.join("; ")))
    }
}

/// The node's hook client: one pooled HTTP client, the signing key, the concurrency bound.
pub struct Hooks {
    client: reqwest::Client,
    secret: Arc<[u8]>,
    slots: Arc<tokio::sync::Semaphore>,
    /// The largest answer read (`SWITCHYARD_MAX_FRAME_BYTES`).
    max_answer: usize,
    /// Every header and cookie some profile forwards: what [`Self::capture`] keeps.
    header_names: Vec<String>,
    cookie_names: Vec<String>,
}

impl Hooks {
    pub fn new<'a>(
        secret: &str,
        concurrency: usize,
        max_answer: usize,
        configs: impl Iterator<Item = &'a HookConfig>,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            // A backend is the app's own, reached directly: a proxy from the environment would
            // see every signed call and every forwarded cookie.
            .no_proxy()
            .build()?;
        let (mut header_names, mut cookie_names) = (Vec::new(), Vec::new());
        for c in configs {
            header_names.extend(c.headers.iter().cloned());
            cookie_names.extend(c.cookies.iter().cloned());
        }
        header_names.sort_unstable();
        header_names.dedup();
        cookie_names.sort_unstable();
        cookie_names.dedup();
        Ok(Self {
            client,
            secret: Arc::from(secret.as_bytes()),
            slots: Arc::new(tokio::sync::Semaphore::new(concurrency)),
            max_answer,
            header_names,
            cookie_names,
        })
    }

    /// The headers and cookies of a client's request that some profile forwards.
    pub fn capture(&self, headers: &actix_web::http::header::HeaderMap) -> Forwarded {
        let mut f = Forwarded::default();
        for name in &self.header_names {
            for v in headers.get_all(name.as_str()) {
                if let Ok(v) = v.to_str() {
                    f.headers.push((name.clone(), v.to_string()));
                }
            }
        }
        if self.cookie_names.is_empty() {
            return f;
        }
        for h in headers.get_all(actix_web::http::header::COOKIE) {
            let Ok(h) = h.to_str() else { continue };
            for pair in h.split(';') {
                let Some((n, v)) = pair.trim().split_once('=') else {
                    continue;
                };
                if self.cookie_names.iter().any(|c| c == n) {
                    f.cookies.push((n.to_string(), v.to_string()));
                }
            }
        }
        f
    }

    /// Calls a hook: the future resolves to the backend's JSON answer or the refusal for the
    /// client. Returns at once (`backend_unavailable`) when the node's calls are all in use.
    pub fn call(
        &self,
        cfg: &HookConfig,
        kind: HookKind,
        body: &Value,
        forwarded: &Forwarded,
    ) -> impl std::future::Future<Output = Result<Value, Refusal>> + 'static {
        let prepared = self.prepare(cfg, kind, body, forwarded);
        let max_answer = self.max_answer;
        let timeout = cfg.timeout;
        async move {
            let (permit, request, url) = prepared?;
            // One deadline over the whole exchange: connecting, the answer's head and its body.
            let answer = tokio::time::timeout(timeout, exchange(request, max_answer)).await;
            drop(permit);
            let refusal = |m: String| {
                log::warn!("backend hook {} ({url}): {m}", kind.as_str());
                Refusal::new(
                    ErrorCode::BackendUnavailable,
                    format!(
                        "the app's backend is unavailable ({} hook: {m})",
                        kind.as_str()
                    ),
                )
            };
            match answer {
                Err(_) => Err(refusal(format!(
                    "no answer within {} ms",
                    timeout.as_millis()
                ))),
                Ok(Err(Failure::Unavailable(m))) => Err(refusal(m)),
                Ok(Err(Failure::Denied(m))) => Err(Refusal::new(ErrorCode::Forbidden, m)),
                Ok(Ok(v)) => Ok(v),
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn prepare(
        &self,
        cfg: &HookConfig,
        kind: HookKind,
        body: &Value,
        forwarded: &Forwarded,
    ) -> Result<
        (
            tokio::sync::OwnedSemaphorePermit,
            reqwest::RequestBuilder,
            String,
        ),
        Refusal,
    > {
        let Some(url) = cfg.url_of(kind) else {
            return Err(Refusal::new(
                ErrorCode::Internal,
                format!("no {} hook is configured", kind.as_str()),
            ));
        };
        let permit = self.slots.clone().try_acquire_owned().map_err(|_| {
            log::warn!("backend hooks: all SWITCHYARD_HOOK_CONCURRENCY calls in use");
            Refusal::new(
                ErrorCode::BackendUnavailable,
                "too many calls to the app's backend in flight; try again",
            )
        })?;
        let bytes = serde_json::to_vec(body)
            .map_err(|e| Refusal::new(ErrorCode::Internal, format!("hook body: {e}")))?;
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .to_string();
        let signature = sign(&self.secret, &ts, &bytes);
        let mut request = self
            .client
            .post(&url)
            .header("content-type", "application/json")
            .header(TIMESTAMP_HEADER, ts)
            .header(SIGNATURE_HEADER, signature)
            .header(HOOK_HEADER, kind.as_str());
        let (headers, cookie) = forwarded.for_config(cfg);
        for (n, v) in headers {
            request = request.header(n, v);
        }
        if let Some(c) = cookie {
            request = request.header("cookie", c);
        }
        Ok((permit, request.body(bytes), url))
    }
}

enum Failure {
    Unavailable(String),
    Denied(String),
}

/// Sends the request and reads at most `max` bytes of answer.
async fn exchange(request: reqwest::RequestBuilder, max: usize) -> Result<Value, Failure> {
    let mut response = request.send().await.map_err(|e| {
        Failure::Unavailable(if e.is_connect() {
            "cannot connect".to_string()
        } else {
            format!("request failed: {e}")
        })
    })?;
    let status = response.status();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return Err(Failure::Unavailable(format!(
                        "answer larger than {max} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(Failure::Unavailable(format!("answer cut off: {e}"))),
        }
    }
    let parsed = || -> Result<Value, Failure> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body)
            .map_err(|_| Failure::Unavailable(format!("answer with status {status} is not JSON")))
    };
    if status.is_success() {
        return parsed();
    }
    if status.as_u16() == 401 || status.as_u16() == 403 {
        let message = parsed()
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
            .map(|m| m.chars().take(MESSAGE_MAX).collect::<String>())
            .unwrap_or_else(|| "the app's backend refused".to_string());
        return Err(Failure::Denied(message));
    }
    Err(Failure::Unavailable(format!("answered {status}")))
}

/// `sha256=<hex>` of HMAC-SHA256(secret, `<timestamp>.<body>`): the timestamp is signed with
/// the body, so a backend that refuses old timestamps refuses a replayed call.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + digest.len() * 2);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The identity a `connect` hook answered: `{"user": "42", "name": "Ada", "rooms": ["project:*"],
/// "publish": ["project:*"]}` (`user` required; the patterns are those of a token's claims).
pub fn identity(answer: &Value) -> Result<Identity, Refusal> {
    let bad = |m: &str| {
        log::warn!("backend hook connect: {m}");
        Refusal::new(
            ErrorCode::BackendUnavailable,
            format!("the app's backend gave no usable identity: {m}"),
        )
    };
    let user = answer
        .get("user")
        .and_then(|u| match u {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .filter(|u| !u.is_empty() && u.len() <= 256)
        .ok_or_else(|| bad("`user` must be a string (1-256 characters)"))?;
    let name = answer
        .get("name")
        .and_then(Value::as_str)
        .map(|n| n.chars().take(256).collect());
    let patterns = |field: &str| -> Result<Vec<String>, Refusal> {
        match answer.get(field) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|p| p.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad(&format!("`{field}` must be a list of strings"))),
            Some(_) => Err(bad(&format!("`{field}` must be a list of strings"))),
        }
    };
    Ok(Identity::from_backend(
        user,
        name,
        patterns("rooms")?,
        patterns("publish")?,
    ))
}

/// `${NAME}` in a profile's URL replaced by the variable's value (`$${` is a literal `${`);
/// an unset variable is an error, so a typo stops start-up instead of calling a wrong host.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unclosed `${{` in {text:?}"));
        };
        let name = &after[..end];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("`${{{name}}}` is not a variable name"));
        }
        match lookup(name) {
            Some(v) => out.push_str(&v),
            None => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_variables() {
        let env = |n: &str| (n == "BACKEND_PORT").then(|| "8081".to_string());
        assert_eq!(
            expand_env("http://127.0.0.1:${BACKEND_PORT}/hooks", env).as_deref(),
            Ok("http://127.0.0.1:8081/hooks")
        );
        assert_eq!(expand_env("a$${B}", env).as_deref(), Ok("a${B}"));
        assert!(expand_env("${MISSING}", env).is_err());
        assert!(expand_env("${BACKEND_PORT", env).is_err());
        assert!(expand_env("${A B}", env).is_err());
    }

    #[test]
    fn signature_covers_timestamp_and_body() {
        let a = sign(b"k", "100", b"{}");
        assert!(a.starts_with("sha256=") && a.len() == 7 + 64, "{a}");
        assert_ne!(a, sign(b"k", "101", b"{}"));
        assert_ne!(a, sign(b"k", "100", b"{ }"));
        assert_ne!(a, sign(b"other", "100", b"{}"));
        // RFC 4231 test case 2, to pin the construction to plain HMAC-SHA256.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn identity_from_answer() {
        let i = identity(&serde_json::json!({"user": 7, "rooms": ["project:*"]})).unwrap();
        assert_eq!(i.user.id, "7");
        assert!(i.may_join("project:1") && !i.may_join("admin"));
        assert!(!i.may_publish("project:1"));
        assert!(identity(&serde_json::json!({"name": "x"})).is_err());
        assert!(identity(&serde_json::json!({"user": "u", "rooms": "x"})).is_err());
    }

    #[test]
    fn forwardable_headers() {
        assert!(HookConfig::forwardable("X-CSRF-Token"));
        assert!(!HookConfig::forwardable("X-Switchyard-Signature"));
        assert!(!HookConfig::forwardable("Cookie"));
        assert!(!HookConfig::forwardable("bad header"));
    }
}
