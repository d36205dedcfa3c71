//! Engine.IO v4 framing: packets and the HTTP long-polling payload format.
//!
//! A packet is a type digit followed by data: `0` open, `1` close, `2` ping, `3` pong,
//! `4` message, `5` upgrade, `6` noop. Over WebSocket each packet is one frame (binary messages
//! are binary frames, with no type digit). Over long-polling a payload joins packets with the
//! record separator `\x1e`, and a binary message is `b` followed by its base64.

use base64::Engine as _;
use bytes::Bytes;

pub const SEPARATOR: u8 = 0x1e;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Open(String),
    Close,
    Ping(String),
    Pong(String),
    Message(String),
    Binary(Bytes),
    Upgrade,
    Noop,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Engine.IO packet: {0}")]
pub struct PacketError(pub &'static str);

impl Packet {
    /// Parses one text packet (a WebSocket text frame, or one record of a polling payload that
    /// is not base64 binary).
    pub fn parse_text(s: &str) -> Result<Self, PacketError> {
        let mut chars = s.chars();
        let t = chars.next().ok_or(PacketError("empty packet"))?;
        let rest = chars.as_str();
        Ok(match t {
            '0' => Packet::Open(rest.to_string()),
            '1' => Packet::Close,
            '2' => Packet::Ping(rest.to_string()),
            '3' => Packet::Pong(rest.to_string()),
            '4' => Packet::Message(rest.to_string()),
            '5' => Packet::Upgrade,
            '6' => Packet::Noop,
            _ => return Err(PacketError("unknown packet type")),
        })
    }

    /// The text form (not for `Binary`).
    pub fn encode_text(&self) -> String {
        match self {
            Packet::Open(d) => format!("0{d}"),
            Packet::Close => "1".into(),
            Packet::Ping(d) => format!("2{d}"),
            Packet::Pong(d) => format!("3{d}"),
            Packet::Message(d) => format!("4{d}"),
            Packet::Binary(b) => {
                format!("b{}", base64::engine::general_purpose::STANDARD.encode(b))
            }
            Packet::Upgrade => "5".into(),
            Packet::Noop => "6".into(),
        }
    }
}

/// Splits a long-polling request body into packets.
pub fn decode_payload(body: &[u8]) -> Result<Vec<Packet>, PacketError> {
    let text = std::str::from_utf8(body).map_err(|_| PacketError("payload is not UTF-8"))?;
    if text.is_empty() {
        return Err(PacketError("empty payload"));
    }
    text.split(SEPARATOR as char)
        .map(|record| match record.strip_prefix('b') {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(|v| Packet::Binary(Bytes::from(v)))
                .map_err(|_| PacketError("invalid base64 in binary packet")),
            None => Packet::parse_text(record),
        })
        .collect()
}

/// What the outbox holds for an Engine.IO session: the text of a packet (type digit included)
/// or a binary message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queued {
    Text(Bytes),
    Binary(Bytes),
}

/// Joins queued packets into one long-polling response body.
pub fn encode_payload(packets: &[Queued]) -> Bytes {
    let mut out = Vec::with_capacity(
        packets
            .iter()
            .map(|p| match p {
                Queued::Text(t) => t.len() + 1,
                Queued::Binary(b) => b.len() * 4 / 3 + 6,
            })
            .sum(),
    );
    for (i, p) in packets.iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        match p {
            Queued::Text(t) => out.extend_from_slice(t),
            Queued::Binary(b) => {
                out.push(b'b');
                out.extend_from_slice(
                    base64::engine::general_purpose::STANDARD
                        .encode(b)
                        .as_bytes(),
                );
            }
        }
    }
    Bytes::from(out)
}

/// The open packet's data.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Handshake<'a> {
    pub sid: &'a str,
    pub upgrades: &'a [&'a str],
    pub ping_interval: u64,
    pub ping_timeout: u64,
    pub max_payload: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_text_and_binary() {
        let p = decode_payload(b"4hello\x1ebAQIDBA==\x1e2").unwrap();
        assert_eq!(
            p,
            vec![
                Packet::Message("hello".into()),
                Packet::Binary(Bytes::from_static(&[1, 2, 3, 4])),
                Packet::Ping(String::new())
            ]
        );
        let out = encode_payload(&[
            Queued::Text(Bytes::from_static(b"4hello")),
            Queued::Binary(Bytes::from_static(&[1, 2, 3, 4])),
        ]);
        assert_eq!(&out[..], b"4hello\x1ebAQIDBA==");
    }

    #[test]
    fn bad_packets_are_refused() {
        assert!(decode_payload(b"abc").is_err());
        assert!(decode_payload(b"").is_err());
        assert!(decode_payload(b"b!!!").is_err());
        assert!(Packet::parse_text("9x").is_err());
    }
}
