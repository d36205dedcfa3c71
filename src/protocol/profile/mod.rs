//! App profiles: an app's own Socket.IO events and paths, mapped onto Switchyard's primitives,
//! so its existing client connects unchanged (docs/profiles.md). Declared in the configuration
//! file (`SWITCHYARD_CONFIG_FILE`, read by [`load`]) and compiled once at start-up.
//!
//! * Incoming: an app's event (`join-project(42)`) becomes the same [`Request`]s a client of
//!   Switchyard's own events would make (`join` of `project:42`), built through
//!   [`request::build`] so every check and refusal is the one every front end shares.
//! * Outgoing: Switchyard's events delivered under the app's names and payload fields
//!   ([`Outgoing`], carried by the namespace's [`super::Wire`], so a room still encodes each
//!   message once per wire, never per member), and what a client gets on connect.
//! * Paths: the per-operation WebSocket, SSE stream and REST status under the app's own paths,
//!   in the app's own status shape ([`PathAlias`]).
//! * Hooks: the app's backend (`[hooks]`, a [`crate::hooks::HookConfig`]) and the events it
//!   answers ([`RpcCall`]).
//!
//! Why one piece (about 500 lines): the compiled profile and the one mapping per action are
//! read together (each `Action` variant next to what it becomes); the loader, the templates and
//! the tests are already files of their own.

pub mod load;
pub mod template;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::request::{self, Request, Verb};
use crate::error::{ErrorCode, Refusal};
use template::{Env, Template, Unrendered};

/// Every profile, by namespace, and the path aliases they declare.
#[derive(Debug, Default, Clone)]
pub struct Profiles {
    by_namespace: HashMap<Arc<str>, Arc<Profile>>,
    aliases: Vec<PathAlias>,
    /// The profile whose backend hooks also serve `/ws` (`[profiles.NAME.hooks] ws = true`).
    ws: Option<Arc<Profile>>,
}

impl Profiles {
    /// The profile of a Socket.IO namespace, if one is declared.
    pub fn for_namespace(&self, nsp: &str) -> Option<&Arc<Profile>> {
        self.by_namespace.get(nsp)
    }

    /// The namespaces profiles declare (served whether or not `SWITCHYARD_SOCKETIO_NAMESPACES`
    /// lists them).
    pub fn namespaces(&self) -> impl Iterator<Item = &Arc<str>> {
        self.by_namespace.keys()
    }

    pub fn aliases(&self) -> &[PathAlias] {
        &self.aliases
    }

    pub fn is_empty(&self) -> bool {
        self.by_namespace.is_empty() && self.aliases.is_empty()
    }

    /// The profile whose hooks serve `/ws` connections, if one says so.
    pub fn for_ws(&self) -> Option<&Arc<Profile>> {
        self.ws.as_ref()
    }

    /// The backends profiles declare (`[profiles.NAME.hooks]`).
    pub fn hook_configs(&self) -> impl Iterator<Item = &crate::hooks::HookConfig> {
        self.by_namespace
            .values()
            .filter_map(|p| p.hooks.as_deref())
    }

    /// Profile names, for the start-up log.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .by_namespace
            .values()
            .map(|p| p.name.as_str())
            .collect();
        names.sort_unstable();
        names
    }
}

/// One app's mapping for one Socket.IO namespace.
#[derive(Debug)]
pub struct Profile {
    pub name: String,
    pub namespace: Arc<str>,
    events: HashMap<String, Incoming>,
    /// Renames for this namespace's wire (`None`: the profile renames nothing).
    pub outgoing: Option<Arc<Outgoing>>,
    /// Rooms a socket joins as it connects (templates over `$user`).
    on_connect_join: Vec<Template>,
    /// Events a socket gets as it connects, before anything else.
    on_connect_emit: Vec<(String, Template)>,
    /// The app's backend (`[profiles.NAME.hooks]`), when it declares one.
    pub hooks: Option<Arc<crate::hooks::HookConfig>>,
}

/// An app's event answered by its backend (an `rpc` hook call).
#[derive(Debug)]
pub struct RpcCall {
    /// The hook's name in the profile (`hook = "deployments"`): the call's `method`.
    pub method: String,
    /// The event's arguments, through the event's `data` template.
    pub data: Value,
    pub reply: RpcReply,
}

/// Where the backend's answer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcReply {
    /// To the event's ack (nowhere when the client asked for none).
    Ack,
    /// To the socket as this event; the ack, if any, gets `{ok: true}`.
    Emit(String),
    /// Published into this room as this event (the sender must be a member and may publish
    /// there); the ack, if any, gets the publish's answer.
    Room { room: String, event: String },
}

/// What the session knows that a mapping may need.
pub trait SocketView {
    /// The socket's user id (`$user`).
    fn user(&self) -> &str;
    /// The rooms the socket is in.
    fn rooms(&self) -> Vec<&str>;
    /// The operation of `kind` this socket started last.
    fn started(&self, kind: &str) -> Option<&str>;
}

/// An app's incoming event.
#[derive(Debug)]
struct Incoming {
    action: Action,
}

#[derive(Debug)]
enum Action {
    Join(Template),
    Leave(Template),
    Publish {
        to: PublishTo,
        /// The event name members get (default: the app's own event name).
        event: Option<String>,
        data: Template,
        echo: bool,
        /// What the room keeps of it for joiners (`retain = true | "event"`).
        retain: crate::protocol::Retain,
    },
    Start {
        kind: String,
        target: Template,
        project: Option<Template>,
        params: Option<Template>,
        watch: bool,
    },
    Cancel {
        kind: String,
        operation: Option<Template>,
    },
    /// A call to the app's backend (the `rpc` hook).
    Hook {
        method: String,
        data: Template,
        emit: Option<String>,
        room: Option<Template>,
        /// The room event's name (default: the app's event name).
        event: Option<String>,
    },
}

#[derive(Debug)]
enum PublishTo {
    Room(Template),
    /// Every room the socket is in whose name starts with this.
    Joined(String),
}

impl Profile {
    /// Whether this profile maps `event` (its own events take precedence over Switchyard's).
    pub fn handles(&self, event: &str) -> bool {
        self.events.contains_key(event)
    }

    /// The requests an app's event stands for (several for a publish into every joined room
    /// with a prefix). `None` when this profile does not map `event`.
    pub fn requests(
        &self,
        event: &str,
        args: &[Value],
        attachments: Vec<Bytes>,
        socket: &impl SocketView,
    ) -> Option<Result<Vec<Request>, Refusal>> {
        let incoming = self.events.get(event)?;
        Some(incoming.requests(event, args, attachments, socket))
    }

    /// The backend call an app's event stands for, when it maps to a hook. `None` when this
    /// profile does not map `event` to a hook.
    pub fn rpc(
        &self,
        event: &str,
        args: &[Value],
        socket: &impl SocketView,
    ) -> Option<Result<RpcCall, Refusal>> {
        let Action::Hook {
            method,
            data,
            emit,
            room,
            event: as_event,
        } = &self.events.get(event)?.action
        else {
            return None;
        };
        let env = Env {
            args,
            user: Some(socket.user()),
            ..Env::default()
        };
        let reply = match (emit, room) {
            (Some(e), _) => RpcReply::Emit(e.clone()),
            (None, Some(t)) => match t.text(&env) {
                Ok(room) => RpcReply::Room {
                    room,
                    event: as_event.as_deref().unwrap_or(event).to_string(),
                },
                Err(u) => return Some(Err(unrendered(event, "room", u))),
            },
            (None, None) => RpcReply::Ack,
        };
        Some(Ok(RpcCall {
            method: method.clone(),
            data: data.value(&env),
            reply,
        }))
    }

    /// Rooms to join on connect.
    pub fn connect_rooms(&self, user: &str) -> Vec<String> {
        let env = Env {
            user: Some(user),
            ..Env::default()
        };
        self.on_connect_join
            .iter()
            .filter_map(|t| t.text(&env).ok())
            .filter(|r| crate::names::valid_room_name(r))
            .collect()
    }

    /// Events to emit on connect, as (event, data).
    pub fn connect_emits(&self, user: &str) -> Vec<(&str, Value)> {
        let env = Env {
            user: Some(user),
            ..Env::default()
        };
        self.on_connect_emit
            .iter()
            .map(|(e, t)| (e.as_str(), t.value(&env)))
            .collect()
    }
}

impl Incoming {
    fn requests(
        &self,
        event: &str,
        args: &[Value],
        attachments: Vec<Bytes>,
        socket: &impl SocketView,
    ) -> Result<Vec<Request>, Refusal> {
        let env = Env {
            args,
            user: Some(socket.user()),
            ..Env::default()
        };
        let name = |t: &Template, field: &str| {
            t.text(&env)
                .map(Value::String)
                .map_err(|u| unrendered(event, field, u))
        };
        let mut f = Map::new();
        let one = |verb, f: &Map<String, Value>| request::build(verb, f).map(|r| vec![r]);
        match &self.action {
            Action::Join(room) => {
                f.insert("room".into(), name(room, "room")?);
                one(Verb::Join, &f)
            }
            Action::Leave(room) => {
                f.insert("room".into(), name(room, "room")?);
                one(Verb::Leave, &f)
            }
            Action::Publish {
                to,
                event: as_event,
                data,
                echo,
                retain,
            } => {
                let rooms = match to {
                    PublishTo::Room(t) => vec![name(t, "room")?],
                    PublishTo::Joined(prefix) => {
                        let rooms: Vec<Value> = socket
                            .rooms()
                            .into_iter()
                            .filter(|r| r.starts_with(prefix.as_str()))
                            .map(|r| Value::String(r.to_string()))
                            .collect();
                        if rooms.is_empty() {
                            return Err(Refusal::new(
                                ErrorCode::NotMember,
                                format!("`{event}` publishes into the {prefix}… rooms this socket is in, and it is in none"),
                            ));
                        }
                        rooms
                    }
                };
                f.insert(
                    "event".into(),
                    Value::String(as_event.as_deref().unwrap_or(event).to_string()),
                );
                f.insert("data".into(), data.value(&env));
                f.insert("echo".into(), Value::Bool(*echo));
                if let Ok(r) = serde_json::to_value(retain) {
                    f.insert("retain".into(), r);
                }
                let data_ok = attachments.is_empty()
                    || f.get("data")
                        .is_some_and(|d| super::socketio::placeholders_ok(d, attachments.len()));
                if !data_ok {
                    return Err(Refusal::new(
                        ErrorCode::InvalidField,
                        "attachments do not match their placeholders",
                    ));
                }
                let mut out = Vec::with_capacity(rooms.len());
                for room in rooms {
                    f.insert("room".into(), room);
                    let mut r = request::build(Verb::Publish, &f)?;
                    if let Request::Publish { attachments: a, .. } = &mut r {
                        a.clone_from(&attachments);
                    }
                    out.push(r);
                }
                Ok(out)
            }
            Action::Start {
                kind,
                target,
                project,
                params,
                watch,
            } => {
                f.insert("kind".into(), Value::String(kind.clone()));
                f.insert("target".into(), name(target, "target")?);
                if let Some(p) = project {
                    f.insert("project".into(), name(p, "project")?);
                }
                if let Some(p) = params {
                    f.insert("params".into(), p.value(&env));
                }
                f.insert("watch".into(), Value::Bool(*watch));
                one(Verb::StartOperation, &f)
            }
            Action::Cancel { kind, operation } => {
                let id = match operation {
                    Some(t) => name(t, "operation")?,
                    None => Value::String(
                        socket
                            .started(kind)
                            .ok_or_else(|| {
                                Refusal::new(
                                    ErrorCode::NotFound,
                                    format!(
                                        "`{event}`: this socket has started no {kind} operation"
                                    ),
                                )
                            })?
                            .to_string(),
                    ),
                };
                f.insert("operation".into(), id);
                one(Verb::CancelOperation, &f)
            }
            // Sessions ask `Profile::rpc` first; a hook is never a request.
            Action::Hook { method, .. } => Err(Refusal::new(
                ErrorCode::Internal,
                format!("`{event}` maps to the backend hook {method:?}, not to a request"),
            )),
        }
    }
}

fn unrendered(event: &str, field: &str, u: Unrendered) -> Refusal {
    if u.missing {
        Refusal::new(
            ErrorCode::MissingField,
            format!("`{event}`: {} (for the {field}) is missing", u.placeholder),
        )
    } else {
        Refusal::new(
            ErrorCode::InvalidField,
            format!(
                "`{event}`: {} (for the {field}) must be a string or a number",
                u.placeholder
            ),
        )
    }
}

/// A payload reshaped for an app: a template over the event's data, then per top-level field
/// a map of values (`running` → `processing`).
#[derive(Debug)]
pub struct Shape {
    data: Option<Template>,
    values: Vec<(String, HashMap<String, Value>)>,
}

impl Shape {
    /// Whether applying it changes anything.
    fn is_identity(&self) -> bool {
        self.data.is_none() && self.values.is_empty()
    }

    pub fn apply(&self, data: &Value, room: &str, event: &str) -> Value {
        let env = Env {
            data: Some(data),
            room: Some(room),
            event: Some(event),
            ..Env::default()
        };
        let mut out = match &self.data {
            Some(t) => t.value(&env),
            None => data.clone(),
        };
        if let Value::Object(o) = &mut out {
            for (field, map) in &self.values {
                let Some(v) = o.get_mut(field) else { continue };
                let key = match &*v {
                    Value::String(s) => s.clone(),
                    Value::Number(_) | Value::Bool(_) => v.to_string(),
                    _ => continue,
                };
                if let Some(to) = map.get(&key) {
                    *v = to.clone();
                }
            }
        }
        out
    }

    /// [`Self::apply`] on raw JSON; a payload that does not parse is passed on unchanged.
    pub fn apply_raw<'a>(
        &self,
        data: &'a RawValue,
        room: &str,
        event: &str,
    ) -> std::borrow::Cow<'a, RawValue> {
        use std::borrow::Cow;
        if self.is_identity() {
            return Cow::Borrowed(data);
        }
        let Ok(parsed) = serde_json::from_str::<Value>(data.get()) else {
            return Cow::Borrowed(data);
        };
        match serde_json::value::to_raw_value(&self.apply(&parsed, room, event)) {
            Ok(raw) => Cow::Owned(raw),
            Err(_) => Cow::Borrowed(data),
        }
    }
}

/// One of Switchyard's events, as an app gets it.
#[derive(Debug)]
pub struct Rename {
    pub event: String,
    pub shape: Shape,
}

/// A namespace's renames, by Switchyard's event name.
#[derive(Debug, Default)]
pub struct Outgoing {
    renames: HashMap<String, Rename>,
}

impl Outgoing {
    pub fn get(&self, event: &str) -> Option<&Rename> {
        self.renames.get(event)
    }
}

/// Which per-operation endpoint an alias serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasKind {
    /// `GET /api/operations/{id}/ws`
    WebSocket,
    /// `GET /api/operations/{id}/events`
    Sse,
    /// `GET /api/operations/{id}`
    Status,
}

/// An app's path for a per-operation endpoint, with `{id}` where the operation id goes.
#[derive(Debug, Clone)]
pub struct PathAlias {
    pub kind: AliasKind,
    pub path: String,
    /// The app's status object (`None`: Switchyard's own).
    pub shape: Option<Arc<Shape>>,
    /// The profile's backend, when it has a `connect` hook: a request without
    /// `Authorization` is authenticated by asking it (a browser's WebSocket and EventSource
    /// send the app's cookies, never a header).
    pub hooks: Option<Arc<crate::hooks::HookConfig>>,
}

#[cfg(test)]
mod tests;
