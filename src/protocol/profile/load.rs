//! The `[profiles.*]` sections of the configuration file, read and compiled once at start-up.
//! Every mistake stops start-up with a message naming the line (TOML syntax errors name line
//! and column themselves; the checks here find the line from the value's span).
//!
//! Why one piece (about 600 lines): one serde format per section and one compile step per
//! section, all sharing [`At`] (the line of a span); the `[hooks]` section's checks are here for
//! the same reason. Reading it top to bottom is how one checks it against docs/profiles.md.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::de::IgnoredAny;
use serde::Deserialize;
use toml::Spanned;

use super::template::{Scope, Template};
use super::{
    Action, AliasKind, Incoming, Outgoing, PathAlias, Profile, Profiles, PublishTo, Rename, Shape,
};
use crate::hooks::{expand_env, HookConfig};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    /// Operation kinds: read by `operations::config`.
    #[serde(default)]
    #[allow(dead_code)]
    kinds: Option<IgnoredAny>,
    #[serde(default)]
    profiles: BTreeMap<String, Spanned<ProfileFormat>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFormat {
    namespace: Option<Spanned<String>>,
    #[serde(default)]
    events: BTreeMap<String, Spanned<EventFormat>>,
    #[serde(default)]
    outgoing: BTreeMap<String, Spanned<ShapeFormat>>,
    on_connect: Option<ConnectFormat>,
    paths: Option<Spanned<PathsFormat>>,
    hooks: Option<Spanned<HooksFormat>>,
}

/// `[profiles.NAME.hooks]`: the app's backend.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HooksFormat {
    url: Spanned<String>,
    timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    forward_headers: Vec<Spanned<String>>,
    #[serde(default)]
    forward_cookies: Vec<Spanned<String>>,
    connect: Option<Spanned<String>>,
    subscribe: Option<Spanned<String>>,
    publish: Option<Spanned<String>>,
    rpc: Option<Spanned<String>>,
    /// This backend's `connect`, `subscribe` and `publish` hooks serve `/ws` too.
    ws: Option<Spanned<bool>>,
}

/// A hook's default timeout, and the longest one a profile may set: a call holds one of the
/// node's `SWITCHYARD_HOOK_CONCURRENCY` slots for as long.
const HOOK_TIMEOUT_DEFAULT_MS: u64 = 5_000;
const HOOK_TIMEOUT_MAX_MS: u64 = 60_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventFormat {
    join: Option<Spanned<String>>,
    leave: Option<Spanned<String>>,
    publish: Option<Spanned<String>>,
    publish_to_joined: Option<Spanned<String>>,
    start: Option<Spanned<String>>,
    cancel: Option<Spanned<String>>,
    hook: Option<Spanned<String>>,
    event: Option<Spanned<String>>,
    data: Option<Spanned<toml::Value>>,
    echo: Option<Spanned<bool>>,
    /// `true` or `"event"` (the request's `retain`).
    retain: Option<Spanned<toml::Value>>,
    target: Option<Spanned<String>>,
    project: Option<Spanned<String>>,
    params: Option<Spanned<toml::Value>>,
    watch: Option<Spanned<bool>>,
    operation: Option<Spanned<String>>,
    emit: Option<Spanned<String>>,
    room: Option<Spanned<String>>,
}

/// An outgoing rename (`event`, `data`, `values`), or the status shape of `paths`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShapeFormat {
    event: Option<Spanned<String>>,
    data: Option<Spanned<toml::Value>>,
    #[serde(default)]
    values: BTreeMap<String, BTreeMap<String, toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectFormat {
    #[serde(default)]
    join: Vec<Spanned<String>>,
    #[serde(default)]
    emit: Vec<Spanned<EmitFormat>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmitFormat {
    event: String,
    data: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathsFormat {
    ws: Option<Spanned<String>>,
    sse: Option<Spanned<String>>,
    status: Option<Spanned<String>>,
    data: Option<Spanned<toml::Value>>,
    #[serde(default)]
    values: BTreeMap<String, BTreeMap<String, toml::Value>>,
}

/// Paths Switchyard serves itself: an alias may not shadow them.
const RESERVED: [&str; 12] = [
    "/api/operations",
    "/api/rooms",
    "/api/activities",
    "/socket.io",
    "/engine.io",
    "/ws",
    "/health",
    "/metrics",
    "/assets",
    "/operations",
    "/activity",
    "/rooms",
];

/// Where an error is: the line of a byte offset, and what it concerns.
struct At<'t> {
    text: &'t str,
}

impl At<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn err<T>(&self, span: std::ops::Range<usize>, what: String) -> anyhow::Result<T> {
        Err(anyhow::anyhow!("line {}: {what}", self.line(span.start)))
    }
}

impl Profiles {
    /// Reads the `[profiles.*]` sections of a configuration file's text, `${VAR}` in hook URLs
    /// from the process environment.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        Self::from_toml_with(text, &|n| std::env::var(n).ok())
    }

    /// `from_toml` with `${VAR}` looked up by `vars` (start-up gives it the settings'
    /// `config_vars` ahead of the environment).
    pub fn from_toml_with(
        text: &str,
        vars: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let format: FileFormat = toml::from_str(text)?;
        let at = At { text };
        let mut by_namespace: HashMap<Arc<str>, Arc<Profile>> = HashMap::new();
        let mut aliases: Vec<PathAlias> = Vec::new();
        for (name, spanned) in format.profiles {
            let span = spanned.span();
            let p = spanned.into_inner();
            let (nsp, nsp_span) = match &p.namespace {
                Some(n) => (n.get_ref().clone(), n.span()),
                None => ("/".to_string(), span.clone()),
            };
            if !nsp.starts_with('/') || nsp.len() > 128 || nsp.contains([',', ' ']) {
                return at.err(
                    nsp_span,
                    format!("profile {name}: namespace {nsp:?} must start with `/` (at most 128 characters, no comma or space)"),
                );
            }
            if let Some(other) = by_namespace.get(nsp.as_str()) {
                return at.err(
                    nsp_span,
                    format!(
                        "profile {name}: namespace {nsp} already has profile {}",
                        other.name
                    ),
                );
            }
            let what = format!("profile {name}");
            let hooks = match p.hooks {
                Some(h) => Some(Arc::new(hooks(&at, &what, h, vars)?)),
                None => None,
            };
            let mut events = HashMap::new();
            for (event, e) in p.events {
                if !crate::names::valid_event_name(&event) {
                    return at.err(e.span(), format!("{what}: event name {event:?} must be 1-128 characters without control characters"));
                }
                let span = e.span();
                let action = action(&at, &format!("{what}, event {event:?}"), e)?;
                if matches!(action, Action::Hook { .. })
                    && hooks.as_ref().is_none_or(|h| h.rpc.is_none())
                {
                    return at.err(span, format!("{what}, event {event:?}: `hook` needs the profile's backend: [profiles.{name}.hooks] with url and rpc"));
                }
                events.insert(event, Incoming { action });
            }
            let mut renames = HashMap::new();
            for (event, s) in p.outgoing {
                let where_ = format!("{what}, outgoing {event:?}");
                let span = s.span();
                let s = s.into_inner();
                let to = match s.event {
                    Some(e) if !crate::names::valid_event_name(e.get_ref()) => {
                        return at.err(
                            e.span(),
                            format!("{where_}: event must be 1-128 characters"),
                        )
                    }
                    Some(e) => e.into_inner(),
                    None => event.clone(),
                };
                let shape = shape(&at, &where_, span, s.data, s.values)?;
                renames.insert(event, Rename { event: to, shape });
            }
            let outgoing = (!renames.is_empty()).then(|| Arc::new(Outgoing { renames }));
            let (mut on_connect_join, mut on_connect_emit) = (Vec::new(), Vec::new());
            if let Some(c) = p.on_connect {
                for j in c.join {
                    let t = Template::compile_str(j.get_ref(), Scope::Connect);
                    on_connect_join.push(match t {
                        Ok(t) => t,
                        Err(e) => return at.err(j.span(), format!("{what}, on_connect: {e}")),
                    });
                }
                for e in c.emit {
                    let span = e.span();
                    let e = e.into_inner();
                    if !crate::names::valid_event_name(&e.event) {
                        return at.err(
                            span,
                            format!("{what}, on_connect: event must be 1-128 characters"),
                        );
                    }
                    let data = match e.data {
                        None => Template::Const(serde_json::Value::Null),
                        Some(d) => match Template::compile(d.get_ref(), Scope::Connect) {
                            Ok(t) => t,
                            Err(m) => {
                                return at.err(d.span(), format!("{what}, on_connect emit: {m}"))
                            }
                        },
                    };
                    on_connect_emit.push((e.event, data));
                }
            }
            if let Some(paths) = p.paths {
                let span = paths.span();
                let paths = paths.into_inner();
                let where_ = format!("{what}, paths");
                let s = shape(&at, &where_, span.clone(), paths.data, paths.values)?;
                let s = (!s.is_identity()).then(|| Arc::new(s));
                for (kind, path) in [
                    (AliasKind::WebSocket, paths.ws),
                    (AliasKind::Sse, paths.sse),
                    (AliasKind::Status, paths.status),
                ] {
                    let Some(path) = path else { continue };
                    check_alias(&at, &where_, &path, &aliases)?;
                    aliases.push(PathAlias {
                        kind,
                        path: path.into_inner(),
                        shape: s.clone(),
                        // The profile's `connect` hook authenticates the alias too.
                        hooks: hooks.clone().filter(|h| h.connect.is_some()),
                    });
                }
            }
            let nsp: Arc<str> = Arc::from(nsp.as_str());
            by_namespace.insert(
                nsp.clone(),
                Arc::new(Profile {
                    name,
                    namespace: nsp,
                    events,
                    outgoing,
                    on_connect_join,
                    on_connect_emit,
                    hooks,
                }),
            );
        }
        let mut ws = by_namespace
            .values()
            .filter(|p| p.hooks.as_ref().is_some_and(|h| h.ws));
        let ws_profile = ws.next().cloned();
        if let Some(other) = ws.next() {
            let first = ws_profile.as_ref().map(|p| p.name.as_str()).unwrap_or("");
            anyhow::bail!(
                "profiles {first} and {}: only one profile's hooks may serve /ws (`ws = true`)",
                other.name
            );
        }
        Ok(Profiles {
            by_namespace,
            aliases,
            ws: ws_profile,
        })
    }
}

fn hooks(
    at: &At,
    what: &str,
    h: Spanned<HooksFormat>,
    vars: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<HookConfig> {
    let what = format!("{what}, hooks");
    let h = h.into_inner();
    let url = expand_env(h.url.get_ref(), vars)
        .or_else(|m| at.err(h.url.span(), format!("{what}: url: {m}")))?;
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 1024 {
        return at.err(
            h.url.span(),
            format!("{what}: url {url:?} must start with http:// or https://"),
        );
    }
    if url.starts_with("https://") {
        return at.err(
            h.url.span(),
            format!("{what}: url {url:?}: https is not supported; reach the backend over the local network (docs/security.md)"),
        );
    }
    let timeout_ms = match h.timeout_ms {
        None => HOOK_TIMEOUT_DEFAULT_MS,
        Some(t) if (1..=HOOK_TIMEOUT_MAX_MS).contains(t.get_ref()) => t.into_inner(),
        Some(t) => {
            return at.err(
                t.span(),
                format!("{what}: timeout_ms must be 1-{HOOK_TIMEOUT_MAX_MS}"),
            )
        }
    };
    let mut headers = Vec::new();
    for n in h.forward_headers {
        if !HookConfig::forwardable(n.get_ref()) {
            return at.err(n.span(), format!("{what}: header {:?} cannot be forwarded (Switchyard sets it, or it is not a header name; cookies go in forward_cookies)", n.get_ref()));
        }
        headers.push(n.into_inner().to_ascii_lowercase());
    }
    let mut cookies = Vec::new();
    for c in h.forward_cookies {
        let ok = !c.get_ref().is_empty()
            && c.get_ref()
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b";=,".contains(&b));
        if !ok {
            return at.err(
                c.span(),
                format!("{what}: {:?} is not a cookie name", c.get_ref()),
            );
        }
        cookies.push(c.into_inner());
    }
    let path = |p: Option<Spanned<String>>, hook: &str| -> anyhow::Result<Option<String>> {
        match p {
            None => Ok(None),
            Some(p)
                if p.get_ref().starts_with('/') && !p.get_ref().contains(char::is_whitespace) =>
            {
                Ok(Some(p.into_inner()))
            }
            Some(p) => at.err(
                p.span(),
                format!("{what}: {hook} must be a path starting with `/`"),
            ),
        }
    };
    let (connect, subscribe) = (path(h.connect, "connect")?, path(h.subscribe, "subscribe")?);
    let (publish, rpc) = (path(h.publish, "publish")?, path(h.rpc, "rpc")?);
    let ws = h.ws.is_some_and(|w| *w.get_ref());
    Ok(HookConfig {
        ws,
        url,
        timeout: std::time::Duration::from_millis(timeout_ms),
        headers,
        cookies,
        connect,
        subscribe,
        publish,
        rpc,
    })
}

fn shape(
    at: &At,
    what: &str,
    span: std::ops::Range<usize>,
    data: Option<Spanned<toml::Value>>,
    values: BTreeMap<String, BTreeMap<String, toml::Value>>,
) -> anyhow::Result<Shape> {
    let data = match data {
        None => None,
        Some(d) => match Template::compile(d.get_ref(), Scope::Outgoing) {
            Ok(t) => Some(t),
            Err(m) => return at.err(d.span(), format!("{what}: data: {m}")),
        },
    };
    let mut compiled = Vec::new();
    for (field, map) in values {
        let mut m = HashMap::new();
        for (from, to) in map {
            match Template::compile(&to, Scope::Outgoing) {
                Ok(Template::Const(v)) => {
                    m.insert(from, v);
                }
                _ => {
                    return at.err(
                        span,
                        format!(
                            "{what}: values.{field}.{from} must be a constant (no placeholders)"
                        ),
                    )
                }
            }
        }
        compiled.push((field, m));
    }
    Ok(Shape {
        data,
        values: compiled,
    })
}

fn check_alias(
    at: &At,
    what: &str,
    path: &Spanned<String>,
    taken: &[PathAlias],
) -> anyhow::Result<()> {
    let p = path.get_ref();
    let segments: Vec<&str> = p.split('/').skip(1).collect();
    let ok = p.starts_with('/')
        && p.len() <= 256
        && segments.iter().filter(|s| **s == "{id}").count() == 1
        && segments.iter().all(|s| {
            *s == "{id}"
                || (!s.is_empty()
                    && s.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
                    }))
        });
    if !ok {
        return at.err(
            path.span(),
            format!("{what}: {p:?} must start with `/`, hold `{{id}}` as one whole segment, and otherwise only A-Z a-z 0-9 - _ . ~"),
        );
    }
    if let Some(r) = RESERVED
        .iter()
        .find(|r| p == *r || p.starts_with(&format!("{r}/")))
    {
        return at.err(
            path.span(),
            format!("{what}: {p:?} is under {r}, which Switchyard serves itself"),
        );
    }
    if taken.iter().any(|a| a.path == *p) {
        return at.err(path.span(), format!("{what}: {p:?} is declared twice"));
    }
    Ok(())
}

/// The one action an event maps to, with only the options that action takes.
fn action(at: &At, what: &str, e: Spanned<EventFormat>) -> anyhow::Result<Action> {
    let span = e.span();
    let e = e.into_inner();
    let actions = [
        ("join", e.join.is_some()),
        ("leave", e.leave.is_some()),
        ("publish", e.publish.is_some()),
        ("publish_to_joined", e.publish_to_joined.is_some()),
        ("start", e.start.is_some()),
        ("cancel", e.cancel.is_some()),
        ("hook", e.hook.is_some()),
    ];
    let chosen: Vec<&str> = actions.iter().filter(|a| a.1).map(|a| a.0).collect();
    let action = match chosen.as_slice() {
        [one] => *one,
        [] => return at.err(span, format!("{what}: say what it does: one of join, leave, publish, publish_to_joined, start, cancel, hook")),
        more => return at.err(span, format!("{what}: one action per event, not {}", more.join(" and "))),
    };
    // Options each action takes; any other is a mistake worth stopping for.
    let allowed: &[&str] = match action {
        "publish" | "publish_to_joined" => &["event", "data", "echo", "retain"],
        "start" => &["target", "project", "params", "watch"],
        "cancel" => &["operation"],
        "hook" => &["data", "emit", "room", "event"],
        _ => &[],
    };
    let given = [
        ("event", e.event.as_ref().map(Spanned::span)),
        ("data", e.data.as_ref().map(Spanned::span)),
        ("echo", e.echo.as_ref().map(Spanned::span)),
        ("retain", e.retain.as_ref().map(Spanned::span)),
        ("target", e.target.as_ref().map(Spanned::span)),
        ("project", e.project.as_ref().map(Spanned::span)),
        ("params", e.params.as_ref().map(Spanned::span)),
        ("watch", e.watch.as_ref().map(Spanned::span)),
        ("operation", e.operation.as_ref().map(Spanned::span)),
        ("emit", e.emit.as_ref().map(Spanned::span)),
        ("room", e.room.as_ref().map(Spanned::span)),
    ];
    for (opt, s) in given {
        if let Some(s) = s {
            if !allowed.contains(&opt) {
                return at.err(s, format!("{what}: `{opt}` does not go with `{action}`"));
            }
        }
    }
    let name = |s: &Spanned<String>| -> anyhow::Result<Template> {
        Template::compile_str(s.get_ref(), Scope::Incoming)
            .or_else(|m| at.err(s.span(), format!("{what}: {m}")))
    };
    let value = |s: &Spanned<toml::Value>| -> anyhow::Result<Template> {
        Template::compile(s.get_ref(), Scope::Incoming)
            .or_else(|m| at.err(s.span(), format!("{what}: {m}")))
    };
    let kind = |s: &Spanned<String>| -> anyhow::Result<String> {
        if crate::names::valid_room_name(s.get_ref()) {
            Ok(s.get_ref().clone())
        } else {
            at.err(
                s.span(),
                format!("{what}: {:?} is not an operation kind name", s.get_ref()),
            )
        }
    };
    if let Some(room) = &e.join {
        return Ok(Action::Join(name(room)?));
    }
    if let Some(room) = &e.leave {
        return Ok(Action::Leave(name(room)?));
    }
    if let Some(k) = &e.start {
        let Some(target) = &e.target else {
            return at.err(span, format!("{what}: `start` needs a `target` (a template, e.g. \"{{0.target}}\" or a fixed name)"));
        };
        return Ok(Action::Start {
            kind: kind(k)?,
            target: name(target)?,
            project: e.project.as_ref().map(name).transpose()?,
            params: e.params.as_ref().map(value).transpose()?,
            watch: e.watch.map(Spanned::into_inner).unwrap_or(true),
        });
    }
    if let Some(k) = &e.cancel {
        return Ok(Action::Cancel {
            kind: kind(k)?,
            operation: e.operation.as_ref().map(name).transpose()?,
        });
    }
    if let Some(h) = &e.hook {
        if !crate::names::valid_event_name(h.get_ref()) {
            return at.err(
                h.span(),
                format!("{what}: hook name must be 1-128 characters"),
            );
        }
        for name in [&e.emit, &e.event].into_iter().flatten() {
            if !crate::names::valid_event_name(name.get_ref()) {
                return at.err(
                    name.span(),
                    format!("{what}: event must be 1-128 characters"),
                );
            }
        }
        if e.emit.is_some() && e.room.is_some() {
            return at.err(
                span,
                format!("{what}: the answer goes to one place: `emit` or `room`, not both"),
            );
        }
        if e.event.is_some() && e.room.is_none() {
            return at.err(
                span,
                format!("{what}: `event` names the room event; it goes with `room`"),
            );
        }
        let data = match &e.data {
            Some(d) => value(d)?,
            None => Template::compile_str("{0}", Scope::Incoming)
                .or_else(|m| at.err(span.clone(), m))?,
        };
        return Ok(Action::Hook {
            method: h.get_ref().clone(),
            data,
            emit: e.emit.as_ref().map(|s| s.get_ref().clone()),
            room: e.room.as_ref().map(name).transpose()?,
            event: e.event.as_ref().map(|s| s.get_ref().clone()),
        });
    }
    let to = match (&e.publish, e.publish_to_joined) {
        (Some(room), _) => PublishTo::Room(name(room)?),
        (None, Some(prefix)) => PublishTo::Joined(prefix.into_inner()),
        (None, None) => return at.err(span, format!("{what}: no action")),
    };
    let event = match e.event {
        Some(ev) if !crate::names::valid_event_name(ev.get_ref()) => {
            return at.err(ev.span(), format!("{what}: event must be 1-128 characters"))
        }
        other => other.map(Spanned::into_inner),
    };
    let data = match &e.data {
        Some(d) => value(d)?,
        None => Template::compile_str("{0}", Scope::Incoming).or_else(|m| at.err(span, m))?,
    };
    let retain = match &e.retain {
        None => crate::protocol::Retain::No,
        Some(r) => match r.get_ref() {
            toml::Value::Boolean(false) => crate::protocol::Retain::No,
            toml::Value::Boolean(true) => crate::protocol::Retain::Last,
            toml::Value::String(s) if s == "event" => crate::protocol::Retain::PerEvent,
            _ => {
                return at.err(
                    r.span(),
                    format!("{what}: `retain` is true, false or \"event\""),
                )
            }
        },
    };
    Ok(Action::Publish {
        to,
        event,
        data,
        echo: e.echo.map(Spanned::into_inner).unwrap_or(false),
        retain,
    })
}
