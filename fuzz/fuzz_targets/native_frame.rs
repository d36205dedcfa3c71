//! The native protocol's frame parser (`/ws` text frames).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = switchyard::protocol::native::parse(text);
        let _ = switchyard::protocol::json_depth(text);
    }
});
