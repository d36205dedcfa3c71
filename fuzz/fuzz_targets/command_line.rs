//! JSON status lines from command runners' stdout.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = switchyard::operations::runner::command::status_line(text);
    }
});
