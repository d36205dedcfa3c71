//! Socket.IO packets (the payload of Engine.IO messages), with the placeholder check.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(p) = switchyard::protocol::socketio::parse(text) {
            if let Some(d) = &p.data {
                let _ = switchyard::protocol::socketio::placeholders_ok(d, p.attachments);
            }
        }
    }
});
