//! The WebSocket transport of [`EngineSession`] and the upgrade to it: a WebSocket that names
//! an existing sid is a probe (`2probe` → `3probe`) until the client sends `5`, after which the
//! session's outbox goes out over it and polling is refused. A WebSocket opened without a sid
//! is the session's transport from the start (`routes/socketio.rs`).
//!
//! In: [`Upgrade`] (the probe starts), [`AttachProbe`] (its reader, polled by this actor), the
//! WebSocket's messages (a stream). Out: `3probe` into the probe's outbox, the switch flipped
//! for the probe's writer, packets on to `on_packet`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use actix_http::ws::CloseCode;
use bytes::Bytes;

use super::{EngineSession, Transport};
use crate::error::ErrorCode;
use crate::protocol::engineio::Packet;
use crate::transport::outbox::Outbox;
use crate::transport::ws::{ReadError, WsMessage, WsReader};

/// How long a GET held by an upgrade waits for the client's `5` before it is released with a
/// noop (see `2probe` in `EngineSession::on_ws`).
const HELD_POLL_RELEASE: std::time::Duration = std::time::Duration::from_millis(100);

/// Shared between the session and the upgrading connection's response stream: set when the
/// upgrade completes, after which that stream drains the session's main outbox.
#[derive(Default)]
pub struct UpgradeSwitch {
    /// The client sent `5`: the main outbox now goes out over the WebSocket.
    pub switched: AtomicBool,
}

/// A WebSocket with this sid wants to take over (the probe starts). Replies with the main
/// outbox the WebSocket drains once the upgrade completes.
#[derive(Message)]
#[rtype(result = "Result<Arc<Outbox>, ()>")]
pub struct Upgrade {
    /// The probe connection's own outbox.
    pub probe: Arc<Outbox>,
    /// Shared with the probe connection's writer.
    pub switch: Arc<UpgradeSwitch>,
}

/// The reader of the upgrading WebSocket, for the session to poll: its messages come in as a
/// stream of this actor, wherever the session lives (the reader can be polled from any thread).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachProbe(pub WsReader);

impl EngineSession {
    fn on_ws(&mut self, item: Result<WsMessage, ReadError>, ctx: &mut Context<Self>) {
        match item {
            Ok(WsMessage::Text(bytes)) => {
                let Ok(text) = std::str::from_utf8(&bytes) else {
                    return self.protocol_error(ctx, "text frame is not UTF-8");
                };
                if let Transport::Upgrading {
                    probe,
                    switch,
                    probed,
                } = &mut self.transport
                {
                    match text {
                        "2probe" => {
                            let _ = probe.push_text(Bytes::from_static(b"3probe"));
                            *probed = true;
                            // Release the long poll that was waiting so the client can pause
                            // polling (it gets a noop).
                            if !self.polling {
                                return;
                            }
                            if !self.held_poll {
                                self.outbox.release_poll();
                            } else {
                                // A GET that came after the WebSocket but before its probe. A
                                // client that sends `5` right behind the probe (the protocol
                                // suite does) has it refused when `5` arrives; socket.io-client
                                // waits for it to end before it sends `5`, so release it
                                // shortly, as the reference server's 100 ms upgrade check does
                                // (waiting for `5` left the client stuck until the next ping).
                                ctx.run_later(HELD_POLL_RELEASE, |act, _| {
                                    if act.polling
                                        && act.held_poll
                                        && matches!(act.transport, Transport::Upgrading { .. })
                                    {
                                        act.held_poll = false;
                                        act.outbox.release_poll();
                                    }
                                });
                            }
                            return;
                        }
                        "5" => {
                            // The held poll first: `refuse_poll` wakes whoever waits on the
                            // outbox, and that must still be the poll. Once the switch is seen
                            // (`probe.wake()`), the WebSocket's writer registers there instead,
                            // and a refusal after it would wake the writer and leave the poll
                            // parked for good.
                            if self.polling && self.held_poll {
                                self.outbox.refuse_poll();
                            }
                            switch.switched.store(true, Ordering::Release);
                            probe.wake();
                            self.outbox.wake();
                            self.transport = Transport::WebSocket;
                            log::debug!("engine.io session {} upgraded to websocket", self.sid);
                            return;
                        }
                        _ => {}
                    }
                }
                if self.closed {
                    // Draining: only the upgrade handshake above still matters.
                    return;
                }
                match Packet::parse_text(text) {
                    Ok(p) => self.on_packet(p, ctx),
                    Err(_) => self.protocol_error(ctx, "invalid Engine.IO packet"),
                }
            }
            Ok(WsMessage::Binary(b)) => self.on_binary(b, ctx),
            Ok(WsMessage::Ping(p)) => self.outbox.pong(p),
            Ok(WsMessage::Pong) => {}
            Ok(WsMessage::Close) => {
                if let Transport::Upgrading { probe, .. } = &self.transport {
                    // The probe is going away, not the session: answer its close frame. Its
                    // end (`finished`) puts the session back on polling.
                    probe.close(CloseCode::Normal, "");
                    return;
                }
                self.close(ctx, true, CloseCode::Normal, "client closed");
            }
            Err(ReadError::TooLarge { limit }) => {
                self.deps.metrics.refused(ErrorCode::FrameTooLarge);
                let reason = format!("message exceeds maxPayload ({limit} bytes)");
                self.close(ctx, false, CloseCode::Size, &reason);
            }
            Err(ReadError::Protocol(_)) => self.protocol_error(ctx, "WebSocket framing error"),
        }
    }
}

impl Handler<Upgrade> for EngineSession {
    type Result = Result<Arc<Outbox>, ()>;

    fn handle(&mut self, msg: Upgrade, _ctx: &mut Context<Self>) -> Self::Result {
        if !matches!(self.transport, Transport::Polling) || self.closed {
            return Err(());
        }
        self.transport = Transport::Upgrading {
            probe: msg.probe,
            switch: msg.switch,
            probed: false,
        };
        Ok(self.outbox.clone())
    }
}

impl Handler<AttachProbe> for EngineSession {
    type Result = ();
    fn handle(&mut self, msg: AttachProbe, ctx: &mut Context<Self>) {
        // The probe was upgraded with `maxPayload`; before a CONNECT it gets the smaller bound
        // (the reader has not read a frame yet: it is polled from here on).
        let limit = msg.0.limit();
        let connected = !self.sockets.is_empty();
        limit.set(Self::frame_bound(
            &self.config,
            &self.deps.settings,
            connected,
        ));
        self.frame_limit = Some(limit);
        ctx.add_stream(msg.0);
    }
}

impl StreamHandler<Result<WsMessage, ReadError>> for EngineSession {
    fn handle(&mut self, item: Result<WsMessage, ReadError>, ctx: &mut Context<Self>) {
        self.on_ws(item, ctx);
    }

    /// The WebSocket ended (a probe, or the session's own).
    fn finished(&mut self, ctx: &mut Context<Self>) {
        if matches!(self.transport, Transport::Upgrading { .. }) {
            // The probe connection went away before the upgrade: stay on polling.
            self.transport = Transport::Polling;
            if self.held_poll {
                self.held_poll = false;
                self.outbox.release_poll();
            }
        } else if self.draining {
            // Upgraded after the close: the WebSocket delivered what was queued.
            ctx.stop();
        } else {
            self.close(ctx, false, CloseCode::Normal, "connection closed");
        }
    }
}
