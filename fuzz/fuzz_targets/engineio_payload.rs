//! Engine.IO long-polling payloads and single packets.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = switchyard::protocol::engineio::decode_payload(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = switchyard::protocol::engineio::Packet::parse_text(text);
    }
});
