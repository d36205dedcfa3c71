//! The fixtures of the official protocol test suites (`switchyard conformance`): what
//! engine.io-protocol and socket.io-protocol expect from a server, kept apart from the real
//! thing. [`EngineMode::Echo`](super::EngineMode::Echo) echoes every Engine.IO message;
//! [`EngineMode::Fixture`](super::EngineMode::Fixture) accepts any CONNECT, answers it with an
//! `auth` event carrying the CONNECT's payload, echoes `message` as `message-back` and acks
//! `message-with-ack` with its own arguments.
//!
//! Nothing flows in but what the Engine.IO and Socket.IO layers hand over at their entry points
//! (each checks the mode once); everything goes out into the session's outbox. No session
//! actor, registry or room is involved.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use serde_json::Value;

use super::namespaces::Socket;
use super::EngineSession;
use crate::protocol::sio;
use crate::protocol::socketio::{self, Kind};
use crate::transport::outbox::Frame;

impl EngineSession {
    /// `Echo`: a text message goes back as it came.
    pub(super) fn echo_text(&self, text: &str) {
        self.push_text(format!("4{text}"));
    }

    /// `Echo`: a binary message goes back as it came.
    pub(super) fn echo_binary(&self, b: Bytes) {
        let _ = self.outbox.push_frames([Frame::Binary(b)]);
    }

    /// `Fixture`: any namespace the endpoint serves connects, with no authentication.
    pub(super) fn fixture_connect(
        &mut self,
        nsp: Arc<str>,
        auth: Option<Value>,
        ctx: &mut Context<Self>,
    ) {
        let sid = uuid::Uuid::new_v4().simple().to_string();
        let connected = format!(r#"{{"sid":"{sid}"}}"#);
        self.sockets.insert(nsp.clone(), Socket::Fixture);
        self.push_text(sio::packet(Kind::Connect, &nsp, None, Some(&connected), 0));
        let auth = auth.unwrap_or_else(|| Value::Object(Default::default()));
        // The test suite reads the CONNECT answer and this event with two listeners in
        // sequence; one TCP write carrying both would deliver the second before the
        // second listener exists. A millisecond apart, they are two writes.
        ctx.run_later(Duration::from_millis(1), move |act, _| {
            act.push_text(sio::emit(&nsp, "auth", &auth));
        });
    }

    /// `Fixture`: `message` comes back as `message-back`, `message-with-ack` is acked with its
    /// arguments, attachments included; other events are ignored.
    pub(super) fn fixture_event(
        &mut self,
        nsp: &Arc<str>,
        p: socketio::Packet,
        attachments: Vec<Bytes>,
    ) {
        let Some(Value::Array(mut args)) = p.data else {
            return;
        };
        let name = match args.first() {
            Some(Value::String(s)) => s.clone(),
            _ => return,
        };
        args.remove(0);
        let n = attachments.len();
        let binary = n > 0;
        match name.as_str() {
            "message" => {
                args.insert(0, Value::String("message-back".into()));
                let kind = if binary {
                    Kind::BinaryEvent
                } else {
                    Kind::Event
                };
                let text = sio::packet(kind, nsp, None, Some(&Value::Array(args).to_string()), n);
                let _ = self.outbox.push_frames(
                    std::iter::once(Frame::Text(text))
                        .chain(attachments.into_iter().map(Frame::Binary)),
                );
            }
            "message-with-ack" => {
                if let Some(id) = p.id {
                    let kind = if binary { Kind::BinaryAck } else { Kind::Ack };
                    let text = sio::packet(
                        kind,
                        nsp,
                        Some(id),
                        Some(&Value::Array(args).to_string()),
                        n,
                    );
                    let _ = self.outbox.push_frames(
                        std::iter::once(Frame::Text(text))
                            .chain(attachments.into_iter().map(Frame::Binary)),
                    );
                }
            }
            _ => {}
        }
    }
}
