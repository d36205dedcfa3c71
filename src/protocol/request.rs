//! The requests a client can make, whatever wire carries them.
//!
//! One piece (~500 lines, a fifth of them tests): the request type, the verbs and every field
//! check, which must stay together for every front end to refuse the same input the same way.
//!
//! Every front end reads its own framing (a `/ws` JSON frame, a Socket.IO event, next an app's
//! own event names) and names a [`Verb`]; [`build`] then reads that verb's fields through
//! [`Fields`] and checks each one, so a request means the same thing, with the same refusals,
//! on every wire. A front end is a mapping onto this module, never a copy of its checks.
//!
//! Fields are read where they are: `/ws` keeps them as borrowed raw JSON (see
//! [`super::native`]), Socket.IO as the `serde_json::Value` its packet parser produced. Neither is
//! re-encoded to go through the other's parser. A `data` payload is copied once into the
//! request as raw JSON and from there into the encoded room message.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::{ErrorCode, Refusal};
use crate::operations::{Update, WorkerReport};

/// A request id, echoed verbatim in the reply: a JSON string or number.
pub type RequestId = Box<RawValue>;

/// The position a client last saw in a room.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Since {
    pub epoch: String,
    pub offset: u64,
}

/// What a publish asks the room to keep for its joiners (they get it after `joined`, unless
/// they resume). On the wire: `"retain": true` is [`Retain::Last`], `"retain": "event"` is
/// [`Retain::PerEvent`], `false` or absent is [`Retain::No`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retain {
    /// Not kept (beyond history).
    #[default]
    No,
    /// The room's last retained message: replaces the previous one, whatever its event.
    Last,
    /// The last message of its event name: replaces the previous one of that name only, so a
    /// room keeps e.g. its latest `stats` beside its latest `status` (bounded per room by
    /// `SWITCHYARD_RETAINED_EVENTS_MAX`).
    PerEvent,
}

impl Retain {
    /// Nothing to keep (what a serialized envelope leaves out).
    pub fn is_no(&self) -> bool {
        *self == Retain::No
    }
}

impl Serialize for Retain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Retain::No => s.serialize_bool(false),
            Retain::Last => s.serialize_bool(true),
            Retain::PerEvent => s.serialize_str("event"),
        }
    }
}

/// On the wire `true`, `false` or `"event"`, which a derive cannot say.
impl utoipa::PartialSchema for Retain {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Boolean))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["event"])),
            )
            .description(Some(
                "What joiners get first: `true` keeps the message as the room's retained one, \
                 `\"event\"` as the last one of its event name, `false` (the default) nothing.",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Retain {}

impl<'de> Deserialize<'de> for Retain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Flag(bool),
            Name(String),
        }
        match Form::deserialize(d)? {
            Form::Flag(false) => Ok(Retain::No),
            Form::Flag(true) => Ok(Retain::Last),
            Form::Name(n) if n == "event" => Ok(Retain::PerEvent),
            Form::Name(_) => Err(serde::de::Error::custom(
                "`retain` must be true, false or \"event\"",
            )),
        }
    }
}

/// A parsed client request.
#[derive(Debug)]
pub enum Request {
    Auth {
        token: Option<String>,
        user: Option<String>,
        name: Option<String>,
    },
    Join {
        room: String,
        since: Option<Since>,
        /// For `operation:<id>` rooms: the last log line seen.
        log_offset: Option<u64>,
    },
    Leave {
        room: String,
    },
    Publish {
        room: String,
        event: String,
        data: Box<RawValue>,
        /// Binary attachments (Socket.IO binary events); empty on `/ws`.
        attachments: Vec<Bytes>,
        /// Whether the publisher gets its own message too (`echo: false` is Socket.IO's
        /// `socket.to(room).emit`: everyone but the sender). Default true.
        echo: bool,
        /// `retain`: `true` keeps it as the room's last retained message, `"event"` as the
        /// last one of its event name; joiners that do not resume get them. Default no.
        retain: Retain,
        /// Set by a front end that turns one client request into publishes into several
        /// rooms (an app profile's `publish_to_joined`): the id they share, so a socket in
        /// several of the rooms gets the message once. Never read from the client.
        message_id: Option<std::sync::Arc<str>>,
    },
    Ping,
    /// `operation.start`
    StartOperation {
        kind: String,
        target: String,
        project: Option<String>,
        params: serde_json::Value,
        /// Join the started operation's room (`operation:<id>`) at once, as a `join` of it
        /// would. Default false.
        watch: bool,
    },
    /// `operation.cancel`
    CancelOperation {
        operation: String,
    },
    /// `operation.progress`, `operation.log`, `operation.complete`, `operation.fail`: an
    /// external worker reporting.
    ReportOperation {
        operation: String,
        report: WorkerReport,
        /// The operation's own worker token, for workers without role `service`.
        worker_token: Option<String>,
    },
}

impl Request {
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Auth { .. } => "auth",
            Request::Join { .. } => "join",
            Request::Leave { .. } => "leave",
            Request::Publish { .. } => "publish",
            Request::Ping => "ping",
            Request::StartOperation { .. } => "operation.start",
            Request::CancelOperation { .. } => "operation.cancel",
            Request::ReportOperation { .. } => "operation.report",
        }
    }
}

/// What a request asks for, before any of its fields is read. Front ends map their own names
/// onto these (the native `type`, a Socket.IO event name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Ping,
    Auth,
    Join,
    Leave,
    Publish,
    StartOperation,
    CancelOperation,
    Progress,
    Log,
    Complete,
    Fail,
}

impl Verb {
    /// Every verb, for front ends that list them.
    pub const ALL: [Verb; 11] = [
        Verb::Ping,
        Verb::Auth,
        Verb::Join,
        Verb::Leave,
        Verb::Publish,
        Verb::StartOperation,
        Verb::CancelOperation,
        Verb::Progress,
        Verb::Log,
        Verb::Complete,
        Verb::Fail,
    ];

    /// The verb's native name (the `/ws` frame `type`), also used in refusal messages.
    pub fn name(self) -> &'static str {
        match self {
            Verb::Ping => "ping",
            Verb::Auth => "auth",
            Verb::Join => "join",
            Verb::Leave => "leave",
            Verb::Publish => "publish",
            Verb::StartOperation => "operation.start",
            Verb::CancelOperation => "operation.cancel",
            Verb::Progress => "operation.progress",
            Verb::Log => "operation.log",
            Verb::Complete => "operation.complete",
            Verb::Fail => "operation.fail",
        }
    }

    /// The verb with this native name.
    pub fn from_name(name: &str) -> Option<Verb> {
        Verb::ALL.into_iter().find(|v| v.name() == name)
    }
}

/// One field of a request, as its front end holds it.
#[derive(Clone, Copy)]
pub enum Field<'a> {
    /// Raw JSON text, not yet parsed (`/ws`).
    Raw(&'a RawValue),
    /// An already parsed value (Socket.IO).
    Json(&'a Value),
}

impl Field<'_> {
    /// The field as `T` (`Err` when it has another shape; the caller words the refusal).
    fn decode<T: DeserializeOwned>(self) -> Result<T, ()> {
        match self {
            Field::Raw(r) => serde_json::from_str(r.get()).map_err(|_| ()),
            Field::Json(v) => T::deserialize(v).map_err(|_| ()),
        }
    }

    /// The field as raw JSON, copied once (a publish's `data`).
    fn to_raw(self) -> Result<Box<RawValue>, Refusal> {
        match self {
            Field::Raw(r) => Ok(r.to_owned()),
            Field::Json(v) => serde_json::value::to_raw_value(v).map_err(|_| {
                Refusal::new(
                    ErrorCode::Internal,
                    "could not copy the payload".to_string(),
                )
            }),
        }
    }

    /// Whether arrays and objects nest deeper than `limit` in it.
    fn nests_deeper_than(self, limit: usize) -> bool {
        match self {
            Field::Raw(r) => super::nests_deeper_than(r.get(), limit),
            // Counted as `super::json_depth` counts the text: 0 for a scalar, 1 for flat.
            Field::Json(v) => crate::operations::json_depth(v) > limit,
        }
    }
}

/// A request's fields by name. A JSON `null` counts as absent, on every front end.
pub trait Fields {
    fn field(&self, name: &str) -> Option<Field<'_>>;
}

/// A Socket.IO event's argument object.
impl Fields for serde_json::Map<String, Value> {
    fn field(&self, name: &str) -> Option<Field<'_>> {
        self.get(name).filter(|v| !v.is_null()).map(Field::Json)
    }
}

/// Reads and checks the fields `verb` takes. Fields are checked in a fixed order, so a request
/// with several bad fields gets the same refusal on every wire.
pub fn build(verb: Verb, f: &impl Fields) -> Result<Request, Refusal> {
    let kind = verb.name();
    Ok(match verb {
        Verb::Ping => Request::Ping,
        Verb::Join => Request::Join {
            log_offset: match f.field("log_offset") {
                None => None,
                Some(v) => Some(v.decode::<u64>().map_err(|_| {
                    Refusal::new(
                        ErrorCode::InvalidField,
                        "field `log_offset` must be a non-negative integer",
                    )
                })?),
            },
            room: room_field(f, kind)?,
            since: match f.field("since") {
                None => None,
                Some(v) => v.decode::<Option<Since>>().map_err(|_| {
                    Refusal::new(
                        ErrorCode::InvalidField,
                        "field `since` must be {\"epoch\": string, \"offset\": non-negative integer}",
                    )
                })?,
            },
        },
        Verb::Leave => Request::Leave {
            room: room_field(f, kind)?,
        },
        Verb::Publish => {
            let room = room_field(f, kind)?;
            let event = string_field(f, "event", kind, true)?.unwrap_or_default();
            if !super::valid_event_name(&event) {
                return Err(Refusal::new(
                    ErrorCode::InvalidField,
                    "field `event` must be 1-128 characters without control characters",
                ));
            }
            let data = f.field("data");
            if data.is_some_and(|d| d.nests_deeper_than(super::MAX_PAYLOAD_DEPTH)) {
                return Err(Refusal::new(
                    ErrorCode::InvalidField,
                    format!(
                        "field `data` nests deeper than {} levels",
                        super::MAX_PAYLOAD_DEPTH
                    ),
                ));
            }
            let data = match data {
                Some(d) => d.to_raw()?,
                None => RawValue::from_string("null".into()).map_err(|_| {
                    Refusal::new(ErrorCode::Internal, "could not build an empty payload")
                })?,
            };
            Request::Publish {
                room,
                event,
                data,
                attachments: Vec::new(),
                echo: bool_field(f, "echo")?.unwrap_or(true),
                retain: match f.field("retain") {
                    None => Retain::No,
                    Some(v) => v.decode::<Retain>().map_err(|_| {
                        Refusal::new(
                            ErrorCode::InvalidField,
                            "field `retain` must be true, false or \"event\"",
                        )
                    })?,
                },
                message_id: None,
            }
        }
        Verb::Auth => Request::Auth {
            token: string_field(f, "token", kind, false)?,
            user: string_field(f, "user", kind, false)?,
            name: string_field(f, "name", kind, false)?,
        },
        Verb::StartOperation => {
            let params = match f.field("params") {
                None => Value::Null,
                Some(v) => v.decode::<Value>().map_err(|_| {
                    Refusal::new(ErrorCode::InvalidField, "field `params` must be JSON")
                })?,
            };
            Request::StartOperation {
                kind: string_field(f, "kind", kind, true)?.unwrap_or_default(),
                target: string_field(f, "target", kind, true)?.unwrap_or_default(),
                project: string_field(f, "project", kind, false)?,
                params,
                watch: bool_field(f, "watch")?.unwrap_or(false),
            }
        }
        Verb::CancelOperation => Request::CancelOperation {
            operation: string_field(f, "operation", kind, true)?.unwrap_or_default(),
        },
        Verb::Progress | Verb::Log | Verb::Complete | Verb::Fail => {
            let operation = string_field(f, "operation", kind, true)?.unwrap_or_default();
            let report = worker_report(verb, f)?;
            let worker_token = string_field(f, "worker_token", kind, false)?;
            Request::ReportOperation {
                operation,
                report,
                worker_token,
            }
        }
    })
}

/// The report of an external worker, from the request's fields.
fn worker_report(verb: Verb, f: &impl Fields) -> Result<WorkerReport, Refusal> {
    let kind = verb.name();
    let json = |name: &str| -> Result<Option<Value>, Refusal> {
        f.field(name)
            .map(|v| v.decode::<Value>())
            .transpose()
            .map_err(|_| Refusal::new(ErrorCode::InvalidField, "invalid JSON field"))
    };
    Ok(match verb {
        Verb::Progress => WorkerReport::Progress(Update {
            progress: match f.field("progress") {
                None => None,
                Some(v) => Some(v.decode::<f64>().map_err(|_| {
                    Refusal::new(ErrorCode::InvalidField, "field `progress` must be a number")
                })?),
            },
            stage: string_field(f, "stage", kind, false)?,
            message: string_field(f, "message", kind, false)?,
            eta_seconds: match f.field("eta_seconds") {
                None => None,
                Some(v) => Some(v.decode::<f64>().map_err(|_| {
                    Refusal::new(
                        ErrorCode::InvalidField,
                        "field `eta_seconds` must be a number",
                    )
                })?),
            },
            // Checked (an object, bounded) where it is applied, like `result`.
            details: json("details")?,
            result: None,
        }),
        Verb::Log => {
            let lines = json("lines")?.ok_or_else(|| {
                Refusal::new(
                    ErrorCode::MissingField,
                    "field `lines` is required for `operation.log`",
                )
            })?;
            WorkerReport::Logs(log_lines(&lines)?)
        }
        Verb::Complete => WorkerReport::Complete(json("result")?),
        _ => {
            let e = json("error")?.unwrap_or(Value::Null);
            let (code, message) = fail_fields(&e)?;
            WorkerReport::Fail { code, message }
        }
    })
}

/// `lines`: an array of strings or of `{stream?, line}` objects.
pub fn log_lines(v: &serde_json::Value) -> Result<Vec<(String, String)>, Refusal> {
    let bad = || {
        Refusal::new(
            ErrorCode::InvalidField,
            "field `lines` must be an array of strings or {\"stream\", \"line\"} objects (at most 1000)",
        )
    };
    let arr = v.as_array().filter(|a| a.len() <= 1000).ok_or_else(bad)?;
    arr.iter()
        .map(|l| match l {
            serde_json::Value::String(s) => Ok(("stdout".to_string(), s.clone())),
            serde_json::Value::Object(o) => {
                let line = o.get("line").and_then(|x| x.as_str()).ok_or_else(bad)?;
                let stream = o.get("stream").and_then(|x| x.as_str()).unwrap_or("stdout");
                if stream.is_empty() || stream.len() > 32 {
                    return Err(bad());
                }
                Ok((stream.to_string(), line.to_string()))
            }
            _ => Err(bad()),
        })
        .collect()
}

/// `error`: `{code?, message}` or a plain message string.
pub fn fail_fields(e: &serde_json::Value) -> Result<(String, String), Refusal> {
    let (code, message) = match e {
        serde_json::Value::String(m) => ("failed".to_string(), m.clone()),
        serde_json::Value::Object(o) => (
            o.get("code")
                .and_then(|c| c.as_str())
                .unwrap_or("failed")
                .to_string(),
            o.get("message")
                .and_then(|c| c.as_str())
                .unwrap_or("")
                .to_string(),
        ),
        _ => {
            return Err(Refusal::new(
                ErrorCode::MissingField,
                "field `error` ({\"code\", \"message\"}) is required",
            ))
        }
    };
    if code.is_empty() || code.len() > 64 || message.len() > 4096 {
        return Err(Refusal::new(
            ErrorCode::InvalidField,
            "error.code must be 1-64 characters and error.message at most 4096",
        ));
    }
    Ok((code, message))
}

fn string_field(
    f: &impl Fields,
    field: &str,
    kind: &str,
    required: bool,
) -> Result<Option<String>, Refusal> {
    match f.field(field) {
        None => {
            if required {
                Err(Refusal::new(
                    ErrorCode::MissingField,
                    format!("field `{field}` is required for `{kind}`"),
                ))
            } else {
                Ok(None)
            }
        }
        Some(v) => v.decode::<String>().map(Some).map_err(|_| {
            Refusal::new(
                ErrorCode::InvalidField,
                format!("field `{field}` must be a string"),
            )
        }),
    }
}

fn bool_field(f: &impl Fields, field: &str) -> Result<Option<bool>, Refusal> {
    f.field(field)
        .map(|v| {
            v.decode::<bool>().map_err(|_| {
                Refusal::new(
                    ErrorCode::InvalidField,
                    format!("field `{field}` must be true or false"),
                )
            })
        })
        .transpose()
}

fn room_field(f: &impl Fields, kind: &str) -> Result<String, Refusal> {
    let room = string_field(f, "room", kind, true)?.unwrap_or_default();
    if !super::valid_room_name(&room) {
        return Err(Refusal::new(
            ErrorCode::InvalidRoom,
            "room names are 1-128 characters of A-Z a-z 0-9 : _ . -",
        ));
    }
    Ok(room)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The same request over `/ws` and over Socket.IO: the same request, or the same refusal.
    #[test]
    fn native_and_socket_io_read_requests_alike() {
        let cases = [
            json!({"type": "ping"}),
            json!({"type": "join", "room": "project:1", "since": {"epoch": "e", "offset": 3}}),
            json!({"type": "join", "room": "operation:x", "log_offset": 4}),
            json!({"type": "join", "room": "r", "since": null}),
            json!({"type": "join", "room": null}),
            json!({"type": "join", "room": 5}),
            json!({"type": "join", "room": "bad room"}),
            json!({"type": "join", "room": "r", "log_offset": -1}),
            json!({"type": "join", "room": "r", "log_offset": 1.5}),
            json!({"type": "join", "room": "r", "since": {"epoch": 1}}),
            json!({"type": "leave", "room": "r"}),
            json!({"type": "publish", "room": "r", "event": "e", "data": {"a":[1,{"b":null}]}}),
            json!({"type": "publish", "room": "r", "event": "e"}),
            json!({"type": "publish", "room": "r", "event": ""}),
            json!({"type": "publish", "room": "r"}),
            json!({"type": "publish", "room": "r", "event": "e", "echo": false}),
            json!({"type": "publish", "room": "r", "event": "e", "echo": "no"}),
            json!({"type": "publish", "room": "r", "event": "e", "retain": true}),
            json!({"type": "publish", "room": "r", "event": "e", "retain": "event"}),
            json!({"type": "publish", "room": "r", "event": "e", "retain": "room"}),
            json!({"type": "auth", "token": "t", "user": "u", "name": "n"}),
            json!({"type": "auth", "token": 1}),
            json!({"type": "operation.start", "kind": "demo", "target": "t", "params": {"x": 1}}),
            json!({"type": "operation.start", "target": "t"}),
            json!({"type": "operation.start", "kind": "demo", "target": "t", "watch": true}),
            json!({"type": "operation.cancel", "operation": "o"}),
            json!({"type": "operation.progress", "operation": "o", "progress": 0.5, "stage": "s"}),
            json!({"type": "operation.progress", "operation": "o", "progress": "half"}),
            json!({"type": "operation.log", "operation": "o", "lines": ["a", {"stream": "stderr", "line": "b"}]}),
            json!({"type": "operation.log", "operation": "o"}),
            json!({"type": "operation.complete", "operation": "o", "result": {"ok": true}}),
            json!({"type": "operation.fail", "operation": "o", "error": {"code": "x", "message": "m"}, "worker_token": "w"}),
            json!({"type": "operation.fail", "operation": "o"}),
        ];
        let deep = (0..70).fold(json!(1), |v, _| json!([v]));
        let cases = cases.into_iter().chain([json!({
            "type": "publish", "room": "r", "event": "e", "data": deep
        })]);
        for case in cases {
            let native = crate::protocol::native::parse(&case.to_string())
                .map(|(_, r)| format!("{r:?}"))
                .map_err(|bad| (bad.refusal.code, bad.refusal.message));
            let mut fields = case.as_object().cloned().unwrap_or_default();
            let name = fields
                .remove("type")
                .and_then(|t| t.as_str().map(str::to_string));
            let event = name
                .unwrap_or_default()
                .replacen("operation.", "operation:", 1);
            let socket_io =
                crate::protocol::socketio::request(&event, &[Value::Object(fields)], vec![])
                    .map(|r| format!("{r:?}"))
                    .map_err(|r| (r.code, r.message));
            assert_eq!(native, socket_io, "{case}");
        }
    }

    #[test]
    fn verbs_round_trip_through_their_names() {
        for v in Verb::ALL {
            assert_eq!(Verb::from_name(v.name()), Some(v));
        }
        assert_eq!(Verb::from_name("dance"), None);
    }
}
