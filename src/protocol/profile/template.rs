//! Templates of app profiles: how a profile names a room from an event's arguments
//! (`"project:{0}"`), builds a request's payload from them (`"{0}"`, `{config = "{0.config}"}`),
//! and builds an app's payload from a Switchyard event (`{job_id = "{id}"}`).
//!
//! A template is compiled once, at start-up, from the TOML value the profile wrote:
//!
//! * a string that is exactly one placeholder (`"{0.config}"`) stands for the value it names,
//!   whatever its type (an object stays an object);
//! * any other string is text with placeholders substituted (`"project:{0}"`); `{{` and `}}`
//!   are literal braces;
//! * a table is an object of templates (a field whose placeholder names nothing is left out),
//!   an array an array of templates, anything else a constant.
//!
//! A placeholder is one or more paths separated by `|`: the first that names something present
//! (not missing, not `null`) is used (`{0.projectId|0}` takes `projectId` from an object
//! argument, or the argument itself when it is a bare id); `'text'` is a fixed fallback
//! (`{stage|'init'}`). A path starts at a root — an
//! argument's index (incoming events), a field of the event's data (outgoing events), or one of
//! `$user`, `$now`, `$room`, `$event` — and goes on through `.field` or `.index` steps.

use std::borrow::Cow;

use serde_json::Value;

/// What a template is rendered against; decides which roots its placeholders may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// An app's event from a client: roots are argument indexes and `$user`, `$now`.
    Incoming,
    /// What a client gets on connect: `$user`, `$now`.
    Connect,
    /// A Switchyard event delivered to the app: roots are the data's fields, and `$now`,
    /// `$room`, `$event`.
    Outgoing,
}

#[derive(Debug, Clone, PartialEq)]
enum Root {
    /// `'text'`: a fixed fallback (`{stage|'init'}`).
    Literal(String),
    Arg(usize),
    Field(String),
    User,
    Now,
    Room,
    Event,
}

#[derive(Debug, Clone, PartialEq)]
struct Path {
    root: Root,
    steps: Vec<String>,
}

/// One `{…}`: alternatives, the first present one wins.
#[derive(Debug, Clone, PartialEq)]
pub struct Placeholder {
    /// As written, for refusals ("`{0.projectId}` is missing").
    source: String,
    paths: Vec<Path>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Hole(Placeholder),
}

/// A compiled template.
#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    Const(Value),
    Whole(Placeholder),
    Text(Vec<Part>),
    Object(Vec<(String, Template)>),
    Array(Vec<Template>),
}

/// What a template's placeholders can see.
#[derive(Default)]
pub struct Env<'a> {
    /// The event's arguments after its name (incoming).
    pub args: &'a [Value],
    /// The event's data (outgoing).
    pub data: Option<&'a Value>,
    pub user: Option<&'a str>,
    pub room: Option<&'a str>,
    pub event: Option<&'a str>,
}

/// Why a strict rendering failed: the placeholder, as written, and what was wrong.
#[derive(Debug, PartialEq)]
pub struct Unrendered {
    pub placeholder: String,
    pub missing: bool,
}

impl Template {
    /// Compiles a profile's TOML value; the error says what is wrong (the caller adds where).
    pub fn compile(v: &toml::Value, scope: Scope) -> Result<Self, String> {
        Ok(match v {
            toml::Value::String(s) => Self::compile_str(s, scope)?,
            toml::Value::Integer(i) => Template::Const(Value::from(*i)),
            toml::Value::Float(f) => Template::Const(Value::from(*f)),
            toml::Value::Boolean(b) => Template::Const(Value::Bool(*b)),
            toml::Value::Datetime(d) => Template::Const(Value::String(d.to_string())),
            toml::Value::Array(a) => Template::Array(
                a.iter()
                    .map(|x| Self::compile(x, scope))
                    .collect::<Result<_, _>>()?,
            ),
            toml::Value::Table(t) => Template::Object(
                t.iter()
                    .map(|(k, x)| Ok((k.clone(), Self::compile(x, scope)?)))
                    .collect::<Result<_, String>>()?,
            ),
        })
    }

    /// Compiles a string template.
    pub fn compile_str(s: &str, scope: Scope) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = s;
        while let Some(i) = rest.find(['{', '}']) {
            text.push_str(&rest[..i]);
            let brace = rest.as_bytes()[i];
            let after = &rest[i + 1..];
            if after.as_bytes().first() == Some(&brace) {
                text.push(brace as char); // `{{` or `}}`
                rest = &after[1..];
                continue;
            }
            if brace == b'}' {
                return Err(format!(
                    "unmatched `}}` in {s:?} (write `}}}}` for a brace)"
                ));
            }
            let Some(end) = after.find('}') else {
                return Err(format!("unclosed `{{` in {s:?}"));
            };
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Hole(placeholder(&after[..end], scope)?));
            rest = &after[end + 1..];
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(match parts.len() {
            0 => Template::Const(Value::String(String::new())),
            1 => match parts.pop() {
                Some(Part::Hole(p)) => Template::Whole(p),
                Some(Part::Text(t)) => Template::Const(Value::String(t)),
                None => Template::Const(Value::String(String::new())),
            },
            _ => Template::Text(parts),
        })
    }

    /// Whether this template reads anything (a constant needs no rendering).
    pub fn is_const(&self) -> bool {
        matches!(self, Template::Const(_))
    }

    /// The value, leniently: a missing placeholder is `null` (or `""` inside text), an object
    /// inside text its JSON. For payloads, where the app reads what it reads.
    pub fn value(&self, env: &Env) -> Value {
        match self {
            Template::Const(v) => v.clone(),
            Template::Whole(p) => p.resolve(env).map(Cow::into_owned).unwrap_or(Value::Null),
            Template::Text(parts) => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => out.push_str(t),
                        Part::Hole(p) => match p.resolve(env).as_deref() {
                            None => {}
                            Some(Value::String(s)) => out.push_str(s),
                            Some(v) => out.push_str(&v.to_string()),
                        },
                    }
                }
                Value::String(out)
            }
            // A field whose placeholder names nothing is left out (an app's optional field;
            // a request's absent param), not sent as `null`.
            Template::Object(fields) => Value::Object(
                fields
                    .iter()
                    .filter(|(_, t)| match t {
                        Template::Whole(p) => p.resolve(env).is_some(),
                        _ => true,
                    })
                    .map(|(k, t)| (k.clone(), t.value(env)))
                    .collect(),
            ),
            Template::Array(items) => Value::Array(items.iter().map(|t| t.value(env)).collect()),
        }
    }

    /// A name (a room, an operation id, a target), strictly: every placeholder must name a
    /// string, a number or a boolean.
    pub fn text(&self, env: &Env) -> Result<String, Unrendered> {
        let hole = |p: &Placeholder, out: &mut String| -> Result<(), Unrendered> {
            match p.resolve(env).as_deref() {
                Some(Value::String(s)) => out.push_str(s),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => out.push_str(&v.to_string()),
                other => {
                    return Err(Unrendered {
                        placeholder: p.source.clone(),
                        missing: other.is_none(),
                    })
                }
            }
            Ok(())
        };
        let mut out = String::new();
        match self {
            Template::Const(Value::String(s)) => out.push_str(s),
            Template::Const(v) => out.push_str(&v.to_string()),
            Template::Whole(p) => hole(p, &mut out)?,
            Template::Text(parts) => {
                for part in parts {
                    match part {
                        Part::Text(t) => out.push_str(t),
                        Part::Hole(p) => hole(p, &mut out)?,
                    }
                }
            }
            Template::Object(_) | Template::Array(_) => {
                return Err(Unrendered {
                    placeholder: "a table".into(),
                    missing: false,
                })
            }
        }
        Ok(out)
    }
}

impl Placeholder {
    fn resolve<'v>(&self, env: &Env<'v>) -> Option<Cow<'v, Value>> {
        self.paths.iter().find_map(|p| p.resolve(env))
    }
}

impl Path {
    fn resolve<'v>(&self, env: &Env<'v>) -> Option<Cow<'v, Value>> {
        let root: Cow<'v, Value> = match &self.root {
            Root::Literal(t) => Cow::Owned(Value::String(t.clone())),
            Root::Arg(i) => Cow::Borrowed(env.args.get(*i)?),
            Root::Field(f) => Cow::Borrowed(env.data?.get(f)?),
            Root::User => Cow::Owned(Value::String(env.user?.to_string())),
            Root::Now => Cow::Owned(Value::String(crate::util::rfc3339_millis(
                crate::util::now_millis(),
            ))),
            Root::Room => Cow::Owned(Value::String(env.room?.to_string())),
            Root::Event => Cow::Owned(Value::String(env.event?.to_string())),
        };
        let mut at = root;
        for step in &self.steps {
            at = match at {
                Cow::Borrowed(v) => Cow::Borrowed(step_into(v, step)?),
                Cow::Owned(v) => Cow::Owned(step_into(&v, step)?.clone()),
            };
        }
        (!at.is_null()).then_some(at)
    }
}

fn step_into<'v>(v: &'v Value, step: &str) -> Option<&'v Value> {
    match v {
        Value::Object(o) => o.get(step),
        Value::Array(a) => a.get(step.parse::<usize>().ok()?),
        _ => None,
    }
}

fn placeholder(inner: &str, scope: Scope) -> Result<Placeholder, String> {
    let paths = inner
        .split('|')
        .map(|alt| path(alt.trim(), scope))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Placeholder {
        source: format!("{{{inner}}}"),
        paths,
    })
}

fn path(s: &str, scope: Scope) -> Result<Path, String> {
    if let Some(text) = s.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) {
        return Ok(Path {
            root: Root::Literal(text.to_string()),
            steps: Vec::new(),
        });
    }
    let mut steps = s.split('.');
    let first = steps.next().unwrap_or_default();
    if first.is_empty() || steps.clone().any(str::is_empty) {
        return Err(format!("empty name in placeholder {{{s}}}"));
    }
    let root = match (first, scope) {
        ("$now", _) => Root::Now,
        ("$user", Scope::Incoming | Scope::Connect) => Root::User,
        ("$room", Scope::Outgoing) => Root::Room,
        ("$event", Scope::Outgoing) => Root::Event,
        (f, _) if f.starts_with('$') => {
            let allowed = match scope {
                Scope::Incoming | Scope::Connect => "$user, $now",
                Scope::Outgoing => "$now, $room, $event",
            };
            return Err(format!("{{{s}}}: {f} is not known here (use {allowed})"));
        }
        (f, Scope::Incoming) => Root::Arg(f.parse::<usize>().map_err(|_| {
            format!("{{{s}}}: an event's arguments are named by their index ({{0}}, {{0.field}})")
        })?),
        (_, Scope::Connect) => {
            return Err(format!(
                "{{{s}}}: on connect there is no event to read (use $user, $now)"
            ))
        }
        (f, Scope::Outgoing) => Root::Field(f.to_string()),
    };
    Ok(Path {
        root,
        steps: steps.map(str::to_string).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str, scope: Scope) -> Template {
        Template::compile_str(s, scope).unwrap()
    }

    #[test]
    fn names_are_built_from_arguments() {
        let args = [
            json!(42),
            json!({"projectId": "p7", "deep": [1, {"x": true}]}),
        ];
        let env = Env {
            args: &args,
            user: Some("alice"),
            ..Env::default()
        };
        assert_eq!(
            t("project:{0}", Scope::Incoming).text(&env).unwrap(),
            "project:42"
        );
        assert_eq!(
            t("project:{1.projectId}", Scope::Incoming)
                .text(&env)
                .unwrap(),
            "project:p7"
        );
        assert_eq!(
            t("{1.deep.1.x}", Scope::Incoming).text(&env).unwrap(),
            "true"
        );
        assert_eq!(
            t("{0.projectId|0}", Scope::Incoming).text(&env).unwrap(),
            "42",
            "alternatives: a bare id or an object's field"
        );
        assert_eq!(
            t("u:{$user}", Scope::Incoming).text(&env).unwrap(),
            "u:alice"
        );
        assert_eq!(t("{2|'none'}", Scope::Incoming).text(&env).unwrap(), "none");
        assert_eq!(t("{{lit}}", Scope::Incoming).text(&env).unwrap(), "{lit}");
        let missing = t("project:{2}", Scope::Incoming).text(&env).unwrap_err();
        assert_eq!(
            missing,
            Unrendered {
                placeholder: "{2}".into(),
                missing: true
            }
        );
        assert!(!t("{1}", Scope::Incoming).text(&env).unwrap_err().missing);
    }

    #[test]
    fn payloads_keep_types_and_missing_is_null() {
        let data = json!({"id": "op1", "result": {"url": "/x"}, "progress": 40.5, "error": null});
        let env = Env {
            data: Some(&data),
            room: Some("operation:op1"),
            ..Env::default()
        };
        let shape = toml::from_str::<toml::Table>(
            r#"job_id = "{id}"
               result_url = "{result.url}"
               progress = "{progress}"
               error = "{error.message}"
               label = "at {progress}%: {nope}"
               room = "{$room}"
               fixed = [1, "two"]"#,
        )
        .unwrap();
        let v = Template::compile(&toml::Value::Table(shape), Scope::Outgoing)
            .unwrap()
            .value(&env);
        assert_eq!(
            v,
            json!({"job_id": "op1", "result_url": "/x", "progress": 40.5,
                   "label": "at 40.5%: ", "room": "operation:op1", "fixed": [1, "two"]}),
            "a missing value is left out"
        );
    }

    #[test]
    fn bad_templates_are_refused_with_a_reason() {
        for (s, scope, says) in [
            ("{0", Scope::Incoming, "unclosed"),
            ("a}", Scope::Incoming, "unmatched"),
            ("{}", Scope::Incoming, "empty name"),
            ("{0..x}", Scope::Incoming, "empty name"),
            ("{projectId}", Scope::Incoming, "index"),
            ("{$room}", Scope::Incoming, "not known here"),
            ("{$user}", Scope::Outgoing, "not known here"),
            ("{0}", Scope::Connect, "no event"),
        ] {
            let e = Template::compile_str(s, scope).unwrap_err();
            assert!(e.contains(says), "{s}: {e}");
        }
    }
}
