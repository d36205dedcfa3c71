//! Operation kinds, declared in the `[kinds.*]` sections of the configuration file
//! (`SWITCHYARD_CONFIG_FILE`, which also holds app profiles) or of the operations file
//! (`SWITCHYARD_OPERATIONS_FILE`, kinds only; see `docs/operations.example.toml`). The built-in
//! `demo` kind is added unless disabled or redefined.
//!
//! Every value that reaches a command line is validated against a pattern declared for its kind
//! (anchored: the whole value must match), and commands are run from an argv list, never through
//! a shell. Params declared `type = "json"` (objects, arrays, any JSON) never reach a command
//! line: a kind whose argv names one is refused at load, and the command gets every param as
//! one JSON object in `SWITCHYARD_PARAMS` (and on stdin with `stdin = "params"`).
//!
//! Why this file is one piece (about 720 lines, a quarter of them tests): the file format, the
//! checks made when a kind is loaded and the checks made when one is started are one contract —
//! which values may reach argv is decided by both, and splitting them would let one side drift
//! from the other.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use super::{RunnerKind, Stage, StageState};
use crate::error_code::{ErrorCode, Refusal};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    kinds: BTreeMap<String, toml::Spanned<KindFormat>>,
    /// App profiles: read by `protocol::profile` (the configuration file only).
    #[serde(default)]
    profiles: Option<toml::Spanned<serde::de::IgnoredAny>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KindFormat {
    runner: String,
    /// argv; `{target}` and `{params.NAME}` are replaced (command runner).
    command: Option<Vec<String>>,
    /// Pattern the target must match (whole value). Defaults to a conservative identifier.
    target_pattern: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, ParamFormat>,
    timeout_secs: Option<u64>,
    /// How many may run at once; more wait as `queued`. 0 or absent: no limit.
    concurrency: Option<usize>,
    cancel_grace_secs: Option<u64>,
    stall_timeout_secs: Option<u64>,
    #[serde(default)]
    stages: Vec<StageFormat>,
    /// Working directory of the command.
    workdir: Option<String>,
    /// Extra environment for the command.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// What the command reads on stdin: nothing (`"null"`, the default) or its params as one
    /// JSON object and a newline (`"params"`).
    stdin: Option<String>,
    /// The project's room gets `operation.progress` too, as `operations` does (stage and
    /// status changes at once, pure progress throttled), not only the lifecycle events.
    #[serde(default)]
    project_progress: bool,
    /// The project's room retains the operation's latest status while it runs, and
    /// `operation.cleared` once it ended: a joiner (a reloaded page) gets the current state.
    #[serde(default)]
    project_retain: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamFormat {
    /// `"string"` (the default; may be placed in argv) or `"json"` (any JSON value; never in
    /// argv).
    #[serde(rename = "type")]
    kind: Option<String>,
    /// Required for string params; json params have none.
    pattern: Option<String>,
    #[serde(default)]
    required: bool,
    /// A string for string params; any TOML value (turned into JSON) for json params.
    default: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StageFormat {
    name: String,
    from: f64,
    to: f64,
}

/// How a declared param is checked and where it may go.
#[derive(Debug)]
pub enum ParamType {
    /// A string (numbers and booleans are turned into one) matching the whole pattern; the only
    /// kind of value that may be placed in argv.
    String(Regex),
    /// Any JSON value: objects, arrays and scalars. Passed to a command only as JSON (see
    /// [`PARAMS_ENV`]), never in argv.
    Json,
}

#[derive(Debug)]
pub struct ParamSpec {
    pub ty: ParamType,
    pub required: bool,
    pub default: Option<Value>,
}

/// The environment variable holding a command's params as one JSON object.
pub const PARAMS_ENV: &str = "SWITCHYARD_PARAMS";

/// One operation kind.
#[derive(Debug)]
pub struct Kind {
    pub name: String,
    pub runner: RunnerKind,
    pub command: Vec<String>,
    pub target_pattern: Regex,
    pub params: BTreeMap<String, ParamSpec>,
    pub timeout: Option<Duration>,
    pub concurrency: usize,
    pub cancel_grace: Duration,
    pub stall_timeout: Duration,
    pub stages: Vec<Stage>,
    pub workdir: Option<String>,
    pub env: BTreeMap<String, String>,
    /// Write the params (JSON and a newline) to the command's stdin; otherwise stdin is
    /// `/dev/null`.
    pub params_on_stdin: bool,
    /// Also publish `operation.progress` into `project:<project>` (`project_progress`).
    pub project_progress: bool,
    /// What the operation publishes into `project:<project>` is that room's retained message:
    /// its status while it runs, `operation.cleared` after its terminal event
    /// (`project_retain`).
    pub project_retain: bool,
}

/// The target pattern of a kind that declares none: 1-256 characters of `A-Z a-z 0-9 : _ . / @
/// -`, never starting with `-` or `.` (an option, a hidden or parent path) and never holding
/// `..` (a dot is always followed by another character of the class, or ends the value).
pub(crate) const DEFAULT_TARGET: &str = r"[A-Za-z0-9:_/@](?:\.?[A-Za-z0-9:_/@-]){0,254}\.?";

fn anchored(pattern: &str, what: &str) -> anyhow::Result<Regex> {
    Regex::new(&format!("^(?:{pattern})$")).with_context(|| format!("{what}: invalid pattern"))
}

impl Kind {
    /// The built-in simulated install.
    pub fn demo() -> Self {
        let stage = |name: &str, from: f64, to: f64| Stage {
            name: name.into(),
            state: StageState::Pending,
            progress_from: from,
            progress_to: to,
        };
        Self {
            name: "demo".into(),
            runner: RunnerKind::Demo,
            command: Vec::new(),
            target_pattern: anchored(DEFAULT_TARGET, "demo").expect("built-in pattern is valid"),
            params: BTreeMap::new(),
            timeout: None,
            concurrency: 0,
            cancel_grace: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(3600),
            stages: vec![
                stage("init", 0.0, 10.0),
                stage("config", 10.0, 20.0),
                stage("pull", 20.0, 50.0),
                stage("build", 55.0, 75.0),
                stage("deploy", 80.0, 90.0),
                stage("validate", 95.0, 100.0),
            ],
            workdir: None,
            env: BTreeMap::new(),
            params_on_stdin: false,
            project_progress: false,
            project_retain: false,
        }
    }

    fn from_format(name: &str, f: KindFormat) -> anyhow::Result<Self> {
        let what = format!("kind {name}");
        let runner = RunnerKind::parse(&f.runner)
            .with_context(|| format!("{what}: runner must be command, external or demo"))?;
        let mut params = BTreeMap::new();
        for (p, spec) in f.params {
            let (ty, default) = match spec.kind.as_deref().unwrap_or("string") {
                "string" => {
                    let Some(pattern) = &spec.pattern else {
                        bail!("{what}: param {p} needs a `pattern` (or `type = \"json\"`)");
                    };
                    let pattern = anchored(pattern, &format!("{what}: param {p}"))?;
                    let default = match spec.default {
                        None => None,
                        Some(toml::Value::String(d)) if pattern.is_match(&d) => {
                            Some(Value::String(d))
                        }
                        Some(_) => {
                            bail!(
                                "{what}: default of param {p} is not a string matching its pattern"
                            )
                        }
                    };
                    (ParamType::String(pattern), default)
                }
                "json" => {
                    if spec.pattern.is_some() {
                        bail!("{what}: param {p} is `type = \"json\"`, which takes no `pattern`");
                    }
                    let default = spec
                        .default
                        .map(serde_json::to_value)
                        .transpose()
                        .with_context(|| format!("{what}: default of param {p}"))?;
                    (ParamType::Json, default)
                }
                other => bail!("{what}: param {p} has type {other:?}; use \"string\" or \"json\""),
            };
            params.insert(
                p,
                ParamSpec {
                    ty,
                    required: spec.required,
                    default,
                },
            );
        }
        let params_on_stdin = match f.stdin.as_deref() {
            None | Some("null") => false,
            Some("params") => true,
            Some(other) => bail!("{what}: stdin = {other:?}; use \"params\" or \"null\""),
        };
        if f.env.contains_key(PARAMS_ENV) {
            bail!("{what}: env may not set {PARAMS_ENV}, which holds the operation's params");
        }
        let command = f.command.unwrap_or_default();
        if runner == RunnerKind::Command {
            if command.is_empty() || command[0].is_empty() {
                bail!("{what}: a command runner needs `command = [\"program\", …]`");
            }
            for arg in &command {
                for placeholder in placeholders(arg) {
                    let param = placeholder
                        .strip_prefix("params.")
                        .and_then(|p| params.get(p));
                    if let Some(ParamSpec {
                        ty: ParamType::Json,
                        ..
                    }) = param
                    {
                        bail!(
                            "{what}: placeholder {{{placeholder}}} names a `type = \"json\"` param, \
                             which never goes on a command line; the command reads it from \
                             {PARAMS_ENV} (or stdin with `stdin = \"params\"`)"
                        );
                    }
                    if placeholder != "target" && param.is_none() {
                        bail!("{what}: placeholder {{{placeholder}}} is not `target` or a declared param");
                    }
                }
            }
        }
        let stages = f
            .stages
            .into_iter()
            .map(|s| {
                if !(0.0..=100.0).contains(&s.from) || !(s.from..=100.0).contains(&s.to) {
                    bail!("{what}: stage {} needs 0 <= from <= to <= 100", s.name);
                }
                Ok(Stage {
                    name: s.name,
                    state: StageState::Pending,
                    progress_from: s.from,
                    progress_to: s.to,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            name: name.to_string(),
            runner,
            command,
            target_pattern: anchored(
                f.target_pattern.as_deref().unwrap_or(DEFAULT_TARGET),
                &format!("{what}: target_pattern"),
            )?,
            params,
            timeout: f.timeout_secs.map(Duration::from_secs),
            concurrency: f.concurrency.unwrap_or(0),
            cancel_grace: Duration::from_secs(f.cancel_grace_secs.unwrap_or(10)),
            stall_timeout: Duration::from_secs(f.stall_timeout_secs.unwrap_or(300)),
            stages,
            workdir: f.workdir,
            env: f.env,
            params_on_stdin,
            project_progress: f.project_progress,
            project_retain: f.project_retain,
        })
    }

    /// Checks a start request's target and params. For command kinds, returns the params with
    /// defaults filled in (every value a validated string); other kinds keep params as given.
    pub fn validate(&self, target: &str, params: &Value) -> Result<Value, String> {
        if !self.target_pattern.is_match(target) {
            return Err(format!(
                "target {target:?} is not valid for kind {}",
                self.name
            ));
        }
        let obj = match params {
            Value::Null => serde_json::Map::new(),
            Value::Object(m) => m.clone(),
            _ => return Err("params must be a JSON object".into()),
        };
        match self.runner {
            RunnerKind::Command => {
                let mut out = serde_json::Map::new();
                for (k, v) in &obj {
                    let Some(spec) = self.params.get(k) else {
                        return Err(format!(
                            "param {k:?} is not declared for kind {}",
                            self.name
                        ));
                    };
                    let v = match (&spec.ty, v) {
                        (ParamType::Json, v) => v.clone(),
                        (ParamType::String(_), Value::String(s)) => Value::String(s.clone()),
                        (ParamType::String(_), Value::Number(n)) => Value::String(n.to_string()),
                        (ParamType::String(_), Value::Bool(b)) => Value::String(b.to_string()),
                        (ParamType::String(_), _) => {
                            return Err(format!(
                                "param {k:?} of kind {} is a string param (it may be placed on \
                                 the command line), so it must be a string, a number or a \
                                 boolean; objects and arrays go in params declared \
                                 `type = \"json\"`, which the command reads from {PARAMS_ENV}",
                                self.name
                            ))
                        }
                    };
                    out.insert(k.clone(), v);
                }
                for (k, spec) in &self.params {
                    if !out.contains_key(k) {
                        match &spec.default {
                            Some(d) => {
                                out.insert(k.clone(), d.clone());
                            }
                            None if spec.required => {
                                return Err(format!(
                                    "param {k:?} is required for kind {}",
                                    self.name
                                ))
                            }
                            None => continue,
                        }
                    }
                    if let (ParamType::String(pattern), Some(Value::String(s))) =
                        (&spec.ty, out.get(k))
                    {
                        if !pattern.is_match(s) {
                            return Err(format!("param {k:?} does not match its pattern"));
                        }
                    }
                }
                Ok(Value::Object(out))
            }
            RunnerKind::Demo => {
                if let Some(f) = obj.get("fail_at") {
                    let ok = f
                        .as_str()
                        .is_some_and(|s| self.stages.iter().any(|st| st.name == s));
                    if !ok {
                        return Err("fail_at must name a demo stage (init, config, pull, build, deploy, validate)".into());
                    }
                }
                if let Some(ms) = obj.get("step_ms") {
                    if !ms.as_u64().is_some_and(|ms| (1..=10_000).contains(&ms)) {
                        return Err("step_ms must be 1-10000".into());
                    }
                }
                Ok(Value::Object(obj))
            }
            RunnerKind::External => Ok(Value::Object(obj)),
        }
    }

    /// [`Kind::validate`] within bounds: params of at most `max_bytes` of JSON (413
    /// `payload_too_large`) nesting at most `max_depth` deep (400 `invalid_field`), before and
    /// after defaults are filled in. Params travel in every status event and, for a command, in
    /// one environment variable.
    pub fn validate_bounded(
        &self,
        target: &str,
        params: &Value,
        max_bytes: usize,
        max_depth: usize,
    ) -> Result<Value, Refusal> {
        let bounded = |p: &Value| -> Result<(), Refusal> {
            // Depth first: `params` itself is level 1.
            let depth = super::json_depth(p);
            if depth > max_depth {
                return Err(Refusal::new(
                    ErrorCode::InvalidField,
                    format!(
                        "params nest {depth} levels deep, over the limit of {max_depth} \
                         (SWITCHYARD_OPERATION_MAX_JSON_DEPTH)"
                    ),
                ));
            }
            let len = super::json_len(p);
            if len > max_bytes {
                return Err(Refusal::new(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "params are {len} bytes of JSON, over the limit of {max_bytes} \
                         (SWITCHYARD_OPERATION_MAX_PARAMS_BYTES)"
                    ),
                ));
            }
            Ok(())
        };
        bounded(params)?;
        let out = self
            .validate(target, params)
            .map_err(|m| Refusal::new(ErrorCode::InvalidField, m))?;
        bounded(&out)?;
        Ok(out)
    }

    /// The argv for a command run, placeholders replaced by validated values. One pass over
    /// each argument: a value is copied in and never looked at again, so a value that itself
    /// contains `{params.x}` stays literal instead of being substituted past its own pattern.
    pub fn render_argv(&self, target: &str, params: &Value) -> Vec<String> {
        self.command
            .iter()
            .map(|arg| {
                let mut out = String::with_capacity(arg.len());
                let mut rest = arg.as_str();
                while let Some(start) = rest.find('{') {
                    out.push_str(&rest[..start]);
                    let Some(len) = rest[start + 1..].find('}') else {
                        break;
                    };
                    let name = &rest[start + 1..start + 1 + len];
                    // An optional param that was not given renders as "".
                    let value = match name.strip_prefix("params.") {
                        _ if name == "target" => Some(target),
                        Some(p) => Some(params.get(p).and_then(Value::as_str).unwrap_or("")),
                        None => None,
                    };
                    match value {
                        Some(v) => out.push_str(v),
                        None => out.push_str(&rest[start..start + len + 2]),
                    }
                    rest = &rest[start + len + 2..];
                }
                out.push_str(rest);
                out
            })
            .collect()
    }

    /// Warns (once, at load) about argv patterns that let a value start with `-` or contain
    /// `..`: such a value reaches the program as an option or as a path out of its directory.
    fn warn_about_risky_patterns(&self) {
        if self.runner != RunnerKind::Command {
            return; // only command kinds put values on a command line
        }
        let patterns = std::iter::once(("target_pattern".to_string(), &self.target_pattern)).chain(
            self.params
                .iter()
                .filter_map(|(name, spec)| match &spec.ty {
                    ParamType::String(pattern) => Some((format!("param {name}"), pattern)),
                    // Never on a command line.
                    ParamType::Json => None,
                }),
        );
        for (what, anchored) in patterns {
            // Kinds store the anchored form `^(?:…)$`; the check anchors again, harmlessly.
            match super::pattern_risk::risks(anchored.as_str()) {
                Some(r) if r.any() => log::warn!(
                    "operation kind {}: {what} {:?} accepts {} — a value like that reaches the \
                     command as {}; tighten the pattern (docs/operations.example.toml)",
                    self.name,
                    anchored.as_str(),
                    match (r.leading_dash, r.dot_dot) {
                        (true, true) => "a leading `-` and `..`",
                        (true, false) => "a leading `-`",
                        _ => "`..`",
                    },
                    match (r.leading_dash, r.dot_dot) {
                        (true, true) => "an option or a path outside its directory",
                        (true, false) => "an option",
                        _ => "a path outside its directory",
                    },
                ),
                Some(_) => {}
                None => log::warn!(
                    "operation kind {}: {what} is too complex to check for a leading `-` or `..`",
                    self.name
                ),
            }
        }
    }
}

/// `{name}` placeholders in an argument.
fn placeholders(arg: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = arg;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start + 1..].find('}') else {
            break;
        };
        out.push(rest[start + 1..start + 1 + len].to_string());
        rest = &rest[start + 1 + len + 1..];
    }
    out
}

/// All configured kinds.
#[derive(Debug, Default, Clone)]
pub struct Kinds {
    kinds: BTreeMap<String, Arc<Kind>>,
}

impl Kinds {
    /// Reads `path` (if any) and adds the demo kind when `demo` is on and the file does not
    /// define a kind named `demo`.
    pub fn load(path: Option<&Path>, demo: bool) -> anyhow::Result<Self> {
        Self::load_files(None, path, demo)
    }

    /// The kinds of the configuration file (its text, already read) and of the operations file
    /// together; a kind declared in both is refused.
    pub fn load_files(
        config: Option<(&Path, &str)>,
        operations: Option<&Path>,
        demo: bool,
    ) -> anyhow::Result<Self> {
        let mut kinds = match config {
            None => BTreeMap::new(),
            Some((p, text)) => Self::parse(text, true)
                .with_context(|| format!("in configuration file {}", p.display()))?,
        };
        if let Some(p) = operations {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading operations file {}", p.display()))?;
            let more = Self::parse(&text, false)
                .with_context(|| format!("in operations file {}", p.display()))?;
            for (name, kind) in more {
                if kinds.contains_key(&name) {
                    bail!(
                        "operation kind {name} is declared both in {} and in the configuration file",
                        p.display()
                    );
                }
                kinds.insert(name, kind);
            }
        }
        Ok(Self::with_demo(kinds, demo))
    }

    pub fn from_toml(text: &str, demo: bool) -> anyhow::Result<Self> {
        Ok(Self::with_demo(Self::parse(text, false)?, demo))
    }

    /// Kinds of one file. `profiles`: the file may also hold `[profiles.*]` (the
    /// configuration file does; the operations file holds kinds only). Errors name the line.
    fn parse(text: &str, profiles: bool) -> anyhow::Result<BTreeMap<String, Arc<Kind>>> {
        let format: FileFormat = toml::from_str(text)?;
        let line = |span: std::ops::Range<usize>| {
            text.as_bytes()[..span.start.min(text.len())]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1
        };
        if let (Some(p), false) = (&format.profiles, profiles) {
            bail!(
                "line {}: app profiles belong in SWITCHYARD_CONFIG_FILE, not in the operations file",
                line(p.span())
            );
        }
        let mut kinds = BTreeMap::new();
        for (name, f) in format.kinds {
            let at = line(f.span());
            if !crate::names::valid_room_name(&name) {
                bail!(
                    "line {at}: kind name {name:?} must be 1-128 characters of A-Z a-z 0-9 : _ . -"
                );
            }
            let kind =
                Kind::from_format(&name, f.into_inner()).with_context(|| format!("line {at}"))?;
            kind.warn_about_risky_patterns();
            kinds.insert(name.clone(), Arc::new(kind));
        }
        Ok(kinds)
    }

    fn with_demo(mut kinds: BTreeMap<String, Arc<Kind>>, demo: bool) -> Self {
        if demo {
            kinds
                .entry("demo".to_string())
                .or_insert_with(|| Arc::new(Kind::demo()));
        }
        Self { kinds }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Kind>> {
        self.kinds.get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.kinds.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FILE: &str = r#"
[kinds.restart]
runner = "command"
command = ["/bin/echo", "restart", "{target}", "--service={params.service}"]
target_pattern = "[a-z0-9.-]+"
concurrency = 2
[kinds.restart.params.service]
pattern = "[a-z]+"
required = true

[kinds.convert]
runner = "external"
stall_timeout_secs = 30
"#;

    #[test]
    fn loads_kinds_and_adds_demo() {
        let k = Kinds::from_toml(FILE, true).unwrap();
        assert_eq!(k.names(), vec!["convert", "demo", "restart"]);
        let r = k.get("restart").unwrap();
        assert_eq!(r.concurrency, 2);
        assert_eq!(
            k.get("convert").unwrap().stall_timeout,
            Duration::from_secs(30)
        );
    }

    #[test]
    fn values_are_validated_before_they_reach_argv() {
        let k = Kinds::from_toml(FILE, false).unwrap();
        let r = k.get("restart").unwrap();
        let p = r.validate("web-1", &json!({"service": "nginx"})).unwrap();
        assert_eq!(
            r.render_argv("web-1", &p),
            vec!["/bin/echo", "restart", "web-1", "--service=nginx"]
        );
        assert!(r
            .validate("web-1; rm -rf /", &json!({"service": "nginx"}))
            .is_err());
        assert!(r
            .validate("web-1", &json!({"service": "nginx && reboot"}))
            .is_err());
        assert!(r.validate("web-1", &json!({})).is_err(), "required param");
        assert!(r
            .validate("web-1", &json!({"service": "a", "extra": "b"}))
            .is_err());
    }

    #[test]
    fn a_value_that_holds_a_placeholder_is_not_substituted_again() {
        let file = r#"
[kinds.x]
runner = "command"
command = ["/bin/echo", "{params.a}{params.b}", "{target}-{params.b}"]
target_pattern = ".+"
[kinds.x.params.a]
pattern = ".*"
[kinds.x.params.b]
pattern = "[a-z]+"
"#;
        let k = Kinds::from_toml(file, false).unwrap();
        let x = k.get("x").unwrap();
        // `a` names `b`'s placeholder; `b` must stay what its pattern allows.
        let p = x
            .validate("{params.b}", &json!({"a": "{params.b}", "b": "ok"}))
            .unwrap();
        assert_eq!(
            x.render_argv("{params.b}", &p),
            vec!["/bin/echo", "{params.b}ok", "{params.b}-ok"]
        );
    }

    #[test]
    fn json_params_never_reach_argv_and_string_params_take_no_objects() {
        let file = r#"
[kinds.x]
runner = "command"
command = ["/bin/echo", "{target}", "{params.name}"]
stdin = "params"
[kinds.x.params.name]
pattern = "[a-z]+"
[kinds.x.params.plan]
type = "json"
required = true
[kinds.x.params.limits]
type = "json"
default = { cpu = 2, zones = ["a"] }
"#;
        let k = Kinds::from_toml(file, false).unwrap();
        let x = k.get("x").unwrap();
        assert!(x.params_on_stdin);
        let p = x
            .validate("t", &json!({"name": "web", "plan": [{"step": 1}]}))
            .unwrap();
        assert_eq!(
            p,
            json!({"name": "web", "plan": [{"step": 1}], "limits": {"cpu": 2, "zones": ["a"]}})
        );
        assert_eq!(x.render_argv("t", &p), vec!["/bin/echo", "t", "web"]);
        let e = x
            .validate("t", &json!({"name": {"a": 1}, "plan": []}))
            .unwrap_err();
        assert!(e.contains("type = \"json\""), "{e}");
        assert!(
            x.validate("t", &json!({"name": "web"})).is_err(),
            "required"
        );
        let bounded = |p: serde_json::Value| x.validate_bounded("t", &p, 64, 3);
        assert_eq!(
            bounded(json!({"plan": {"a": {"b": [1]}}}))
                .unwrap_err()
                .code,
            ErrorCode::InvalidField,
            "too deep"
        );
        assert_eq!(
            bounded(json!({"plan": "x".repeat(64)})).unwrap_err().code,
            ErrorCode::PayloadTooLarge
        );

        let refused = [
            // A json param in argv, alone or inside an argument.
            r#"command = ["/bin/echo", "{params.plan}"]"#,
            r#"command = ["/bin/echo", "--plan={params.plan}"]"#,
            // The kind's env may not hide the params variable.
            r#"command = ["/bin/echo"]
env = { SWITCHYARD_PARAMS = "{}" }"#,
            r#"command = ["/bin/echo"]
stdin = "file""#,
        ];
        for kind in refused {
            let file = format!(
                "[kinds.y]\nrunner = \"command\"\n{kind}\n[kinds.y.params.plan]\ntype = \"json\"\n"
            );
            assert!(Kinds::from_toml(&file, false).is_err(), "{kind}");
        }
        let no_pattern = "[kinds.y]\nrunner = \"command\"\ncommand = [\"/bin/echo\"]\n[kinds.y.params.s]\nrequired = true\n";
        assert!(
            Kinds::from_toml(no_pattern, false).is_err(),
            "a string param needs a pattern"
        );
        let json_pattern = "[kinds.y]\nrunner = \"command\"\ncommand = [\"/bin/echo\"]\n[kinds.y.params.j]\ntype = \"json\"\npattern = \".*\"\n";
        assert!(
            Kinds::from_toml(json_pattern, false).is_err(),
            "a json param has no pattern"
        );
    }

    #[test]
    fn the_documented_example_file_loads() {
        let k = Kinds::from_toml(include_str!("../../docs/operations.example.toml"), false)
            .expect("docs/operations.example.toml loads");
        let install = k.get("install").expect("install kind");
        assert!(install.params_on_stdin);
        assert!(matches!(
            install.params.get("config").map(|p| &p.ty),
            Some(ParamType::Json)
        ));
    }

    #[test]
    fn undeclared_placeholders_are_refused_at_load() {
        let bad = r#"
[kinds.x]
runner = "command"
command = ["/bin/echo", "{params.nope}"]
"#;
        assert!(Kinds::from_toml(bad, false).is_err());
    }
}
