use serde_json::json;

use super::*;

const GATEWAY: &str = r#"
[profiles.gateway]
namespace = "/"

[profiles.gateway.events.join-project]
join = "project:{0.projectId|0}"

[profiles.gateway.events.leave-project]
leave = "project:{0}"

[profiles.gateway.events.step-updated]
publish_to_joined = "project:"

[profiles.gateway.events.new-activity]
publish = "activity"
event = "activity-created"
echo = true

[profiles.gateway.events.stats]
publish = "activity"
retain = "event"

[profiles.gateway.events."install:start"]
start = "install"
target = "wizard"
params = { config = "{0.config}", profiles = "{0.profiles}" }

[profiles.gateway.events."install:cancel"]
cancel = "install"

[profiles.gateway.events.request_deployments]
hook = "deployments"

[profiles.gateway.events.request_system_status]
hook = "status"
emit = "system_status"

[profiles.gateway.events.share]
hook = "deployments"
room = "project:{0}"
event = "deployments_refresh"

[profiles.gateway.hooks]
url = "http://127.0.0.1:9/hooks/"
rpc = "/rpc"

[profiles.gateway.outgoing."operation.failed"]
event = "install:error"
data = { stage = "{error.stage|stage}", message = "{error.message}", error = "{error.message}" }

[profiles.gateway.outgoing."operation.progress"]
event = "install:progress"
data = { status = "{status}", progress = "{progress}" }
values = { status = { running = "processing" } }
"#;

struct Socket {
    rooms: Vec<&'static str>,
    started: Option<&'static str>,
}

impl SocketView for Socket {
    fn user(&self) -> &str {
        "alice"
    }
    fn rooms(&self) -> Vec<&str> {
        self.rooms.clone()
    }
    fn started(&self, _kind: &str) -> Option<&str> {
        self.started
    }
}

fn requests(profiles: &Profiles, event: &str, args: &[Value], socket: &Socket) -> String {
    let p = profiles.for_namespace("/").unwrap();
    match p.requests(event, args, vec![], socket) {
        None => "unmapped".into(),
        Some(Ok(r)) => format!("{r:?}"),
        Some(Err(e)) => format!("{}: {}", e.code, e.message),
    }
}

/// What Switchyard's own Socket.IO events make of the same fields: the reference a profile's
/// mapping must equal.
fn native(event: &str, fields: Value) -> String {
    let r = crate::protocol::socketio::request(event, &[fields], vec![]).unwrap();
    format!("{:?}", vec![r])
}

#[test]
fn app_events_become_the_requests_switchyard_events_make() {
    let profiles = Profiles::from_toml(GATEWAY).unwrap();
    let socket = Socket {
        rooms: vec!["project:7", "activity", "project:9"],
        started: Some("op-1"),
    };
    assert_eq!(
        requests(&profiles, "join-project", &[json!(42)], &socket),
        native("join", json!({"room": "project:42"}))
    );
    assert_eq!(
        requests(
            &profiles,
            "join-project",
            &[json!({"projectId": "p1"})],
            &socket
        ),
        native("join", json!({"room": "project:p1"}))
    );
    assert_eq!(
        requests(&profiles, "leave-project", &[json!(42)], &socket),
        native("leave", json!({"room": "project:42"}))
    );
    assert_eq!(
        requests(&profiles, "new-activity", &[json!({"text": "hi"})], &socket),
        native(
            "publish",
            json!({"room": "activity", "event": "activity-created", "data": {"text": "hi"}, "echo": true})
        )
    );
    assert_eq!(
        requests(&profiles, "stats", &[json!(5)], &socket),
        native(
            "publish",
            json!({"room": "activity", "event": "stats", "data": 5, "echo": false, "retain": "event"})
        )
    );
    // Into every joined project room, everyone but the sender (the default).
    let both = requests(&profiles, "step-updated", &[json!({"step": 3})], &socket);
    assert_eq!(both.matches("Publish").count(), 2, "{both}");
    assert!(
        both.contains("project:7") && both.contains("project:9") && both.contains("echo: false")
    );
    assert_eq!(
        requests(
            &profiles,
            "install:start",
            &[json!({"config": {"a": 1}, "profiles": ["core"], "other": 1})],
            &socket
        ),
        native(
            "operation:start",
            json!({"kind": "install", "target": "wizard", "watch": true,
                   "params": {"config": {"a": 1}, "profiles": ["core"]}})
        )
    );
    assert_eq!(
        requests(&profiles, "install:cancel", &[], &socket),
        native("operation:cancel", json!({"operation": "op-1"}))
    );
    assert_eq!(requests(&profiles, "dance", &[], &socket), "unmapped");
}

#[test]
fn mapped_events_are_refused_with_the_shared_checks() {
    let profiles = Profiles::from_toml(GATEWAY).unwrap();
    let nowhere = Socket {
        rooms: vec![],
        started: None,
    };
    let r = requests(&profiles, "join-project", &[], &nowhere);
    assert!(
        r.starts_with("missing_field: `join-project`: {0.projectId|0}"),
        "{r}"
    );
    let r = requests(&profiles, "join-project", &[json!("bad room")], &nowhere);
    assert!(
        r.starts_with("invalid_room"),
        "the request layer's own check: {r}"
    );
    let r = requests(&profiles, "leave-project", &[json!({"a": 1})], &nowhere);
    assert!(r.starts_with("invalid_field"), "{r}");
    let r = requests(&profiles, "step-updated", &[json!({})], &nowhere);
    assert!(r.starts_with("not_member"), "{r}");
    let r = requests(&profiles, "install:cancel", &[], &nowhere);
    assert!(
        r.starts_with("not_found: `install:cancel`: this socket has started no install"),
        "{r}"
    );
    // A hook is a backend call, not a request.
    let p = profiles.for_namespace("/").unwrap();
    let call = p
        .rpc("request_deployments", &[json!({"venue": "CORO"})], &nowhere)
        .unwrap()
        .unwrap();
    assert_eq!(call.method, "deployments");
    assert_eq!(call.data, json!({"venue": "CORO"}));
    assert_eq!(call.reply, RpcReply::Ack);
    let call = p
        .rpc("request_system_status", &[], &nowhere)
        .unwrap()
        .unwrap();
    assert_eq!(call.reply, RpcReply::Emit("system_status".into()));
    let call = p.rpc("share", &[json!(42)], &nowhere).unwrap().unwrap();
    assert_eq!(
        call.reply,
        RpcReply::Room {
            room: "project:42".into(),
            event: "deployments_refresh".into()
        }
    );
    assert!(p.rpc("join-project", &[], &nowhere).is_none());
    let hooks = p.hooks.as_ref().unwrap();
    assert_eq!(
        hooks.url_of(crate::hooks::HookKind::Rpc).as_deref(),
        Some("http://127.0.0.1:9/hooks/rpc")
    );
    assert!(hooks.url_of(crate::hooks::HookKind::Connect).is_none());
}

#[test]
fn hook_mistakes_stop_start_up_naming_the_line() {
    let cases = [
        // A hook without a backend.
        ("[profiles.a.events.e]\nhook = \"x\"\n", "line 1", "needs the profile's backend"),
        (
            "[profiles.a.hooks]\nurl = \"http://h\"\n[profiles.a.events.e]\nhook = \"x\"\n",
            "line 3",
            "needs the profile's backend",
        ),
        (
            "[profiles.a.hooks]\nurl = \"http://h\"\nrpc = \"/r\"\n[profiles.a.events.e]\nhook = \"x\"\nemit = \"y\"\nroom = \"z\"\n",
            "line 4",
            "not both",
        ),
        (
            "[profiles.a.hooks]\nurl = \"http://h\"\nforward_headers = [\"X-Switchyard-Signature\"]\n",
            "line 3",
            "cannot be forwarded",
        ),
        ("[profiles.a.hooks]\nurl = \"ftp://h\"\n", "line 2", "http://"),
        ("[profiles.a.hooks]\nurl = \"http://h\"\ntimeout_ms = 0\n", "line 3", "timeout_ms"),
        ("[profiles.a.hooks]\nurl = \"http://h\"\nrpc = \"r\"\n", "line 3", "starting with `/`"),
        (
            "[profiles.a.hooks]\nurl = \"http://${SWITCHYARD_TEST_UNSET_VARIABLE}\"\n",
            "line 2",
            "is not set",
        ),
    ];
    for (text, line, what) in cases {
        let e = format!("{:#}", Profiles::from_toml(text).unwrap_err());
        assert!(e.contains(line) && e.contains(what), "{text}: {e}");
    }
    let two = "[profiles.a.hooks]\nurl = \"http://h\"\nws = true\n[profiles.b]\nnamespace = \"/b\"\n[profiles.b.hooks]\nurl = \"http://h\"\nws = true\n";
    let e = format!("{:#}", Profiles::from_toml(two).unwrap_err());
    assert!(e.contains("only one profile"), "{e}");
}

#[test]
fn outgoing_events_take_the_apps_names_and_fields() {
    let profiles = Profiles::from_toml(GATEWAY).unwrap();
    let out = profiles
        .for_namespace("/")
        .unwrap()
        .outgoing
        .clone()
        .unwrap();
    let failed = out.get("operation.failed").unwrap();
    assert_eq!(failed.event, "install:error");
    let status = json!({"id": "o", "status": "failed", "stage": "pull",
                        "error": {"code": "x", "message": "no image"}});
    assert_eq!(
        failed
            .shape
            .apply(&status, "operation:o", "operation.failed"),
        json!({"stage": "pull", "message": "no image", "error": "no image"})
    );
    let progress = out.get("operation.progress").unwrap();
    let raw =
        serde_json::value::to_raw_value(&json!({"status": "running", "progress": 20})).unwrap();
    assert_eq!(
        progress
            .shape
            .apply_raw(&raw, "r", "operation.progress")
            .get(),
        r#"{"progress":20,"status":"processing"}"#
    );
    assert!(out.get("operation.completed").is_none());
}

#[test]
fn invalid_profiles_name_their_line() {
    let cases = [
        ("[profiles.a.events.x]\njoin = \"p:{0\"\n", 2, "unclosed"),
        (
            "[profiles.a.events.x]\n\n\njoin = \"a\"\nleave = \"b\"\n",
            1,
            "one action per event",
        ),
        (
            "[profiles.a.events.x]\nwatch = true\n",
            1,
            "say what it does",
        ),
        (
            "[profiles.a.events.x]\njoin = \"r\"\necho = true\n",
            3,
            "`echo` does not go with `join`",
        ),
        (
            "[profiles.a.events.x]\npublish = \"r\"\nretain = \"room\"\n",
            3,
            "`retain` is true, false or",
        ),
        (
            "[profiles.a.events.x]\nstart = \"k\"\n",
            1,
            "needs a `target`",
        ),
        (
            "[profiles.a.events.x]\njoin = \"r\"\nlisten = 1\n",
            3,
            "unknown field",
        ),
        (
            "[profiles.a]\nnamespace = \"admin\"\n",
            2,
            "must start with `/`",
        ),
        ("[profiles.a]\n[profiles.b]\n", 2, "already has profile a"),
        (
            "[profiles.a.paths]\nws = \"/api/operations/{id}/x\"\n",
            2,
            "Switchyard serves itself",
        ),
        ("[profiles.a.paths]\nws = \"/jobs/ws\"\n", 2, "{id}"),
        (
            "[profiles.a.outgoing.x]\ndata = { a = \"{$user}\" }\n",
            2,
            "not known here",
        ),
        (
            "[profiles.a.on_connect]\njoin = [\"ok\", \"{0}\"]\n",
            2,
            "no event",
        ),
        ("[profile.a]\n", 1, "unknown field"),
    ];
    for (text, line, says) in cases {
        let e = format!("{:#}", Profiles::from_toml(text).unwrap_err());
        assert!(
            e.contains(&format!("line {line}")) && e.contains(says),
            "{text:?}: {e}"
        );
    }
}

#[test]
fn paths_and_on_connect_compile() {
    let profiles = Profiles::from_toml(
        r#"
[profiles.dash]
namespace = "/dash"
on_connect = { join = ["dashboard", "user:{$user}"], emit = [{ event = "status", data = { message = "hi", at = "{$now}" } }] }

[profiles.dash.paths]
ws = "/api/v1/conversions/{id}/ws"
status = "/api/v1/conversions/{id}"
data = { job_id = "{id}", status = "{status}" }
values = { status = { running = "processing" } }

[kinds.install]
runner = "external"
"#,
    )
    .unwrap();
    let p = profiles.for_namespace("/dash").unwrap();
    assert_eq!(p.connect_rooms("bob"), ["dashboard", "user:bob"]);
    let emits = p.connect_emits("bob");
    assert_eq!(emits[0].0, "status");
    assert_eq!(emits[0].1["message"], "hi");
    assert!(emits[0].1["at"].as_str().is_some_and(|t| t.ends_with('Z')));
    let aliases = profiles.aliases();
    assert_eq!(aliases.len(), 2);
    assert_eq!(aliases[0].kind, AliasKind::WebSocket);
    let shape = aliases[0].shape.as_ref().unwrap();
    assert_eq!(
        shape.apply(
            &json!({"id": "o", "status": "running"}),
            "operation:o",
            "operation.progress"
        ),
        json!({"job_id": "o", "status": "processing"})
    );
}

#[test]
fn a_hook_url_takes_its_variables_from_the_lookup_given() {
    let text = "[profiles.a.hooks]\nurl = \"http://127.0.0.1:${BACKEND_PORT}/switchyard\"\nrpc = \"/rpc\"\n";
    let vars = |n: &str| (n == "BACKEND_PORT").then(|| "8123".to_string());
    let profiles = Profiles::from_toml_with(text, &vars).unwrap();
    let hooks = profiles.for_namespace("/").unwrap().hooks.clone().unwrap();
    assert_eq!(
        hooks.url_of(crate::hooks::HookKind::Rpc).as_deref(),
        Some("http://127.0.0.1:8123/switchyard/rpc")
    );
    // Not in the lookup: start-up stops, naming the line and the variable.
    let e = format!(
        "{:#}",
        Profiles::from_toml_with(text, &|_| None).unwrap_err()
    );
    assert!(e.contains("line 2") && e.contains("BACKEND_PORT"), "{e}");
}
