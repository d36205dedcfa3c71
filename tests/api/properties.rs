//! Property tests for every parser that reads network input: whatever the bytes, they answer
//! with a value or an error, never a panic; and what we encode, we parse back.

use proptest::prelude::*;
use serde_json::json;
use switchyard::protocol::engineio::{self, Packet, Queued};
use switchyard::protocol::{native, socketio};

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-z:_. -]{0,12}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::hash_map("[a-z_]{1,8}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Frames that look like ours: the right field names with arbitrary values.
fn native_frame() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        Just("join"),
        Just("leave"),
        Just("publish"),
        Just("ping"),
        Just("auth"),
        Just("operation.start"),
        Just("operation.cancel"),
        Just("operation.progress"),
        Just("operation.log"),
        Just("operation.complete"),
        Just("operation.fail"),
        Just("x"),
    ];
    let fields = prop::collection::hash_map(
        prop_oneof![
            Just("room"),
            Just("since"),
            Just("event"),
            Just("data"),
            Just("id"),
            Just("token"),
            Just("log_offset"),
            Just("kind"),
            Just("target"),
            Just("params"),
            Just("operation"),
            Just("progress"),
            Just("lines"),
            Just("error"),
            Just("result"),
            Just("stage"),
        ],
        json_value(),
        0..6,
    );
    (kind, fields).prop_map(|(k, f)| {
        let mut m: serde_json::Map<String, serde_json::Value> =
            f.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        m.insert("type".into(), json!(k));
        serde_json::Value::Object(m).to_string()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn native_frames_never_panic(text in "\\PC{0,200}") {
        let _ = native::parse(&text);
    }

    #[test]
    fn native_frames_with_our_fields_parse_or_refuse_with_a_code(frame in native_frame()) {
        match native::parse(&frame) {
            Ok(_) => {}
            Err(bad) => prop_assert!(!bad.refusal.message.is_empty()),
        }
    }

    #[test]
    fn engine_io_payloads_never_panic(body in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = engineio::decode_payload(&body);
    }

    #[test]
    fn engine_io_payloads_round_trip(
        texts in prop::collection::vec("[ -~&&[^\\x1e]]{0,40}", 1..6),
        binary in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..3),
    ) {
        let mut queued: Vec<Queued> = texts.iter().map(|t| Queued::Text(format!("4{t}").into())).collect();
        queued.extend(binary.iter().map(|b| Queued::Binary(b.clone().into())));
        let decoded = engineio::decode_payload(&engineio::encode_payload(&queued)).unwrap();
        let mut expected: Vec<Packet> = texts.iter().map(|t| Packet::Message(t.clone())).collect();
        expected.extend(binary.iter().map(|b| Packet::Binary(b.clone().into())));
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn socket_io_packets_never_panic(text in "\\PC{0,200}") {
        let _ = socketio::parse(&text);
    }

    /// A CONNECT's `offset` is the client's; the journal's tagger reads every event payload.
    #[test]
    fn recovery_offsets_and_tags_never_panic(text in "\\PC{0,200}", bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = socketio::parse_recovery_offset(&text);
        let _ = socketio::recovery_tag(text.as_bytes());
        let _ = socketio::recovery_tag(&bytes);
    }

    /// What a room event carries is what the journal reads back, whatever the namespace.
    #[test]
    fn recovery_tags_read_back_the_offset_an_event_carries(
        nsp in prop_oneof![Just("/".to_string()), "/[a-z]{1,8}"],
        room in "[A-Za-z0-9:_.-]{1,128}",
        offset in any::<u64>(),
        data in json_value(),
    ) {
        let tag = socketio::recovery_offset(&room, offset);
        let args = serde_json::json!(["ev", data, {"room": room}, tag]).to_string();
        let text = format!("4{}", socketio::encode(socketio::Kind::Event, &nsp, None, Some(&args), 0));
        prop_assert_eq!(
            socketio::recovery_tag(text.as_bytes()),
            Some((socketio::recovery_stream(&nsp, &room), offset))
        );
        prop_assert_eq!(socketio::parse_recovery_offset(&tag), Some((room.as_str(), offset)));
    }

    #[test]
    fn socket_io_events_round_trip(
        nsp in prop_oneof![Just("/".to_string()), "/[a-z]{1,8}"],
        id in proptest::option::of(0u64..1_000_000),
        event in "[a-z:.-]{1,12}",
        args in prop::collection::vec(json_value(), 0..4),
    ) {
        let mut payload = vec![json!(event)];
        payload.extend(args);
        let data = serde_json::Value::Array(payload).to_string();
        let text = socketio::encode(socketio::Kind::Event, &nsp, id, Some(&data), 0);
        let p = socketio::parse(&text).unwrap();
        prop_assert_eq!(p.nsp, nsp);
        prop_assert_eq!(p.id, id);
        prop_assert_eq!(p.data.unwrap().to_string(), data);
    }

    #[test]
    fn tokens_never_panic(token in "\\PC{0,300}", dots in "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}") {
        let auth = switchyard::auth::Authenticator::new(Some("k"));
        prop_assert!(auth.verify(&token).is_err());
        prop_assert!(auth.verify(&dots).is_err());
    }

    #[test]
    fn command_lines_never_panic(line in "\\PC{0,200}") {
        let _ = switchyard::operations::runner::command::status_line(&line);
    }
}

#[test]
fn deeply_nested_payloads_are_refused_not_overflowed() {
    let deep = format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000));
    let frame = format!(r#"{{"type":"publish","room":"r","event":"e","data":{deep}}}"#);
    let err = native::parse(&frame).unwrap_err();
    assert_eq!(err.refusal.code, switchyard::error::ErrorCode::InvalidField);
    assert!(err.refusal.message.contains("deeper than 64"));
    assert!(socketio::parse(&format!("2[\"e\",{deep}]")).is_err());
}
