//! The WebSocket frame reader (`src/transport/ws.rs`): arbitrary client bytes, split at
//! arbitrary points, through the same header admission and decoding as every connection.
//! Beyond "no panic", it checks the memory bound the reader promises: whatever a frame
//! announces, the read buffer never holds or reserves more than one admitted frame (or one read
//! chunk), and no message exceeds the limit.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchyard::transport::ws::{FrameReader, WsMessage};

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    // The limit (small ones reach the interesting edges sooner), how the stream is split into
    // reads, and how many filler bytes follow the input: a short input can then announce a
    // large frame and stream far more than any bound allows.
    let max_size = usize::from(u16::from_le_bytes([data[0], data[1]]) % 9000);
    let split = usize::from(data[2]) * 64 + 1;
    let filler = vec![0u8; usize::from(u16::from_le_bytes([data[3], data[4]])) * 4];
    let mut input = &data[5..];
    let mut tail = &filler[..];
    let mut reader = FrameReader::new(Default::default(), max_size);
    let bound = reader.buffer_bound();
    loop {
        match reader.next_message() {
            Ok(Some(WsMessage::Text(b) | WsMessage::Binary(b))) => {
                assert!(b.len() <= max_size, "{} > {max_size}", b.len())
            }
            Ok(Some(WsMessage::Ping(p))) => assert!(p.len() <= 125),
            Ok(Some(WsMessage::Pong | WsMessage::Close)) => {}
            Ok(None) => {
                if input.is_empty() {
                    if tail.is_empty() {
                        return;
                    }
                    input = std::mem::take(&mut tail);
                }
                // One "read": at most what the reader allows, cut where the input says.
                let n = reader.fill_from(&input[..input.len().min(split)]);
                assert!(n > 0, "a read always has room");
                input = &input[n..];
                assert!(
                    reader.buffered() <= bound,
                    "{} > {bound}",
                    reader.buffered()
                );
                assert!(
                    reader.buffer_capacity() <= bound,
                    "capacity {} > {bound}",
                    reader.buffer_capacity()
                );
            }
            // The connection would be closed here.
            Err(_) => return,
        }
    }
});
