//! The `/ws` front end of a [`Session`]: the session owns the WebSocket. It welcomes the
//! client, runs the heartbeat, waits for an `auth` frame when one is required, reads JSON text
//! frames ([`native::parse`]) and closes the connection itself.
//!
//! In: whole WebSocket messages from the connection's reader (a stream). Out: `welcome`, pings,
//! and requests on to [`Session::dispatch`].

use std::time::Instant;

use actix::prelude::*;
use actix_http::ws::CloseCode;

use super::Session;
use crate::error::{ErrorCode, Refusal};
use crate::protocol::native::{self, Request};
use crate::protocol::Reply;
use crate::transport::ws::{ReadError, WsMessage};

impl Session {
    /// What a `/ws` session does when it starts: the welcome, the heartbeat, the auth deadline.
    pub(super) fn start_native(&mut self, ctx: &mut Context<Self>) {
        let deps = &self.deps;
        let auth = if deps.auth.open_mode() {
            "open"
        } else if self.identity.is_some() {
            "ok"
        } else {
            "required"
        };
        let hb = deps.settings.heartbeat_interval;
        self.send(native::welcome(
            &self.key,
            hb.as_millis() as u64,
            auth,
            self.identity
                .as_ref()
                .map(|i| i.user.as_ref())
                .filter(|_| self.identity_at_connect),
        ));
        log::info!(
            "session {} connected ({}, auth {auth})",
            self.key,
            self.user_id()
        );

        ctx.run_interval(hb, |act, ctx| {
            if act.last_seen.elapsed() > act.deps.settings.heartbeat_timeout {
                log::info!("session {}: heartbeat timeout, dropping", act.key);
                act.close(ctx, CloseCode::Away, "heartbeat timeout");
            } else {
                act.outbox.ping();
            }
        });
        if self.identity.is_none() {
            ctx.run_later(deps.settings.auth_timeout, |act, ctx| {
                if act.identity.is_none() {
                    let r = Refusal::new(ErrorCode::AuthTimeout, "no auth frame in time");
                    act.deps.metrics.refused(r.code);
                    act.reply(None, Reply::Error(&r));
                    act.close(ctx, CloseCode::Policy, "authentication timeout");
                }
            });
        }
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        let (id, request) = match native::parse(text) {
            Ok(ok) => ok,
            Err(bad) => return self.refuse(ctx, bad.id.as_deref(), bad.refusal),
        };
        let Some(identity) = self.identity.clone() else {
            return match request {
                Request::Auth { .. } | Request::Ping => self.dispatch(id, request, None, ctx),
                _ => self.refuse(
                    ctx,
                    id.as_deref(),
                    Refusal::new(
                        ErrorCode::Unauthenticated,
                        "send {\"type\":\"auth\",\"token\":…} first",
                    ),
                ),
            };
        };
        self.dispatch(id, request, Some(identity), ctx);
    }
}

impl StreamHandler<Result<WsMessage, ReadError>> for Session {
    fn handle(&mut self, item: Result<WsMessage, ReadError>, ctx: &mut Self::Context) {
        self.last_seen = Instant::now();
        match item {
            Ok(WsMessage::Text(bytes)) => {
                self.deps.metrics.messages_in.inc();
                match std::str::from_utf8(&bytes) {
                    Ok(text) => self.on_text(text, ctx),
                    Err(_) => {
                        self.deps.metrics.refused(ErrorCode::InvalidFrame);
                        self.close(ctx, CloseCode::Invalid, "text frame is not valid UTF-8");
                    }
                }
            }
            Ok(WsMessage::Binary(_)) => {
                self.deps.metrics.refused(ErrorCode::BinaryNotSupported);
                log::warn!("session {}: binary frame, closing", self.key);
                self.close(
                    ctx,
                    CloseCode::Unsupported,
                    "binary frames are not supported; send JSON text frames",
                );
            }
            Ok(WsMessage::Ping(payload)) => self.outbox.pong(payload),
            Ok(WsMessage::Pong) => {}
            Ok(WsMessage::Close) => self.close(ctx, CloseCode::Normal, ""),
            Err(ReadError::TooLarge { limit }) => {
                self.deps.metrics.refused(ErrorCode::FrameTooLarge);
                log::warn!("session {}: message over {limit} bytes, closing", self.key);
                self.close(
                    ctx,
                    CloseCode::Size,
                    &format!("message exceeds the limit of {limit} bytes"),
                );
            }
            Err(ReadError::Protocol(e)) => {
                log::warn!("session {}: protocol error: {e}", self.key);
                self.close(ctx, CloseCode::Protocol, "protocol error");
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The client went away (TCP closed) or the reader gave up.
        ctx.stop();
    }
}
