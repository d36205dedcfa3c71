//! Token verification (headers, auth frames, Socket.IO CONNECT payloads).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let auth = switchyard::auth::Authenticator::new(Some("fuzzing-secret"));
        let _ = auth.verify(text);
        let _ = auth.from_header(Some(text));
    }
});
