//! The long-polling transport of [`EngineSession`]: a GET waits for packets from the outbox,
//! a POST brings the client's. Both are HTTP requests handled in `routes/socketio.rs` on any
//! worker thread; they reach the session by these messages.
//!
//! In: [`BeginPoll`]/[`EndPoll`] around a GET, [`BeginPost`], then [`PostPackets`] or
//! [`EndPost`] around a POST. Out: the outbox the GET reads; the POST's packets go on to the
//! Engine.IO packet handling (`on_packet`).

use std::sync::Arc;

use actix::prelude::*;
use actix_http::ws::CloseCode;

use super::{EngineSession, Transport};
use crate::protocol::engineio::Packet;
use crate::transport::outbox::Outbox;

/// A long-polling GET wants to wait for packets.
#[derive(Message)]
#[rtype(result = "Result<Arc<Outbox>, PollRefused>")]
pub struct BeginPoll;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollRefused {
    /// A second GET while one is waiting: the session is closed.
    Duplicate,
    /// The session is no longer on long-polling.
    NotPolling,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct EndPoll;

/// A long-polling POST ended without packets to apply: its body was refused (`close`: it was
/// malformed, which ends the session; otherwise, e.g. over `maxPayload`, the session goes on).
#[derive(Message)]
#[rtype(result = "()")]
pub struct EndPost {
    /// The body was malformed: the session ends.
    pub close: bool,
}

/// A long-polling POST begins (`Err`: another is in flight, which ends the session).
#[derive(Message)]
#[rtype(result = "Result<(), ()>")]
pub struct BeginPost;

/// A long-polling POST's packets. `Err` closes the session (the request gets 400).
#[derive(Message)]
#[rtype(result = "Result<(), ()>")]
pub struct PostPackets(pub Vec<Packet>);

impl Handler<BeginPoll> for EngineSession {
    type Result = Result<Arc<Outbox>, PollRefused>;

    fn handle(&mut self, _: BeginPoll, ctx: &mut Context<Self>) -> Self::Result {
        if self.draining && !self.polling {
            // The last poll: it takes what is queued, then the closed outbox's close packet.
            self.polling = true;
            return Ok(self.outbox.clone());
        }
        if self.expired(ctx) {
            return Err(PollRefused::NotPolling);
        }
        if !matches!(
            self.transport,
            Transport::Polling | Transport::Upgrading { .. }
        ) {
            return Err(PollRefused::NotPolling);
        }
        if self.polling {
            // Two GETs at once: a broken or hostile client. End the session; the waiting GET
            // gets the close packet.
            self.close(ctx, false, CloseCode::Policy, "duplicate poll");
            return Err(PollRefused::Duplicate);
        }
        self.polling = true;
        self.held_poll = false;
        if let Transport::Upgrading { probed, .. } = &self.transport {
            if *probed {
                // The client is switching: a poll now only needs a noop.
                self.outbox.release_poll();
            } else {
                self.held_poll = true;
            }
        }
        Ok(self.outbox.clone())
    }
}

impl Handler<EndPoll> for EngineSession {
    type Result = ();
    fn handle(&mut self, _: EndPoll, ctx: &mut Context<Self>) {
        self.polling = false;
        self.held_poll = false;
        // While upgrading, this poll may only have been released (a noop): the queue goes out
        // over the WebSocket, or to a later poll if the probe fails.
        if self.draining && matches!(self.transport, Transport::Polling) {
            ctx.stop();
        }
    }
}

impl Handler<BeginPost> for EngineSession {
    type Result = Result<(), ()>;

    fn handle(&mut self, _: BeginPost, ctx: &mut Context<Self>) -> Self::Result {
        if self.posting {
            self.close(ctx, false, CloseCode::Policy, "overlapping POST requests");
            return Err(());
        }
        self.posting = true;
        Ok(())
    }
}

impl Handler<EndPost> for EngineSession {
    type Result = ();

    fn handle(&mut self, msg: EndPost, ctx: &mut Context<Self>) {
        self.posting = false;
        if msg.close {
            self.protocol_error(ctx, "malformed polling payload");
        }
    }
}

impl Handler<PostPackets> for EngineSession {
    type Result = Result<(), ()>;

    fn handle(&mut self, msg: PostPackets, ctx: &mut Context<Self>) -> Self::Result {
        self.posting = false;
        if self.expired(ctx) {
            return Err(());
        }
        if !matches!(
            self.transport,
            Transport::Polling | Transport::Upgrading { .. }
        ) {
            return Err(());
        }
        for p in msg.0 {
            if self.closed {
                break;
            }
            self.on_packet(p, ctx);
        }
        Ok(())
    }
}
