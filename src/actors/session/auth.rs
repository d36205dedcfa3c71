//! Authentication of a [`Session`]: the `auth` request (first sign-in or a token refresh) and
//! the close when the token expires.
//!
//! In: `auth` requests. Out: an `authenticated` reply (or a refusal, and for a bad token the
//! close); unsolicited `left` frames for rooms a refreshed token no longer grants.

use actix::prelude::*;
use actix_http::ws::CloseCode;

use super::Session;
use crate::auth::Identity;
use crate::error::{ErrorCode, Refusal};
use crate::protocol::{Reply, RequestId};

impl Session {
    /// Closes the session when its token expires, unless a fresh `auth` frame arrived meanwhile.
    pub(super) fn schedule_expiry(&self, ctx: &mut Context<Self>) {
        let Some(exp) = self.identity.as_ref().and_then(|i| i.expires_at) else {
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let wait = std::time::Duration::from_secs(exp.saturating_sub(now));
        ctx.run_later(wait, move |act, ctx| {
            let current = act.identity.as_ref().and_then(|i| i.expires_at);
            if current != Some(exp) {
                return; // refreshed: the new token has its own timer
            }
            let r = Refusal::new(
                ErrorCode::TokenExpired,
                "your token expired; reconnect with a fresh one (or send a new auth frame before it expires)",
            );
            act.deps.metrics.refused(r.code);
            log::info!("session {}: token expired, closing", act.key);
            act.reply(None, Reply::Error(&r));
            act.close(ctx, CloseCode::Policy, "token expired");
        });
    }

    pub(super) fn authenticate(
        &mut self,
        id: Option<RequestId>,
        token: Option<String>,
        user: Option<String>,
        name: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        let result = if self.deps.auth.open_mode() {
            let user = user.filter(|u| !u.is_empty() && u.len() <= 256);
            match user {
                Some(u) => Ok(Identity::open(u, name)),
                None => Err(Refusal::new(
                    ErrorCode::MissingField,
                    "open mode: `auth` declares an identity with `user` (1-256 characters)",
                )),
            }
        } else {
            match token {
                Some(t) => self.deps.auth.verify(&t),
                None => Err(Refusal::new(
                    ErrorCode::MissingField,
                    "field `token` is required for `auth`",
                )),
            }
        };
        let fresh = match result {
            Ok(i) => i,
            Err(refusal) => {
                self.refuse(ctx, id.as_deref(), refusal);
                // A bad token ends the session, also on a refresh: the session must not keep
                // running on the old token's permissions after its owner presented a bad one
                // (docs/protocol.md: 1008 after the error).
                if !self.deps.auth.open_mode() {
                    self.close(ctx, CloseCode::Policy, "authentication failed");
                }
                return;
            }
        };
        if let Some(current) = &self.identity {
            // A refresh must keep the identity: presence and membership are keyed by it.
            if current.user.id != fresh.user.id
                && (!self.rooms.is_empty() || self.identity_at_connect)
            {
                let r = Refusal::new(
                    ErrorCode::IdentityChange,
                    "a session cannot change user once it has joined rooms",
                );
                return self.refuse(ctx, id.as_deref(), r);
            }
        }
        // A user signing in here is counted now (`SWITCHYARD_MAX_CONNECTIONS_PER_USER`); one who
        // came with the connection was counted with it, and a refresh keeps its place.
        if !self.identity_at_connect
            && self.user_slot.as_ref().map(|s| s.user()) != Some(fresh.user.id.as_str())
        {
            match self.deps.users.admit(&fresh) {
                Ok(slot) => self.user_slot = slot,
                Err(refusal) => {
                    self.refuse(ctx, id.as_deref(), refusal);
                    self.close(ctx, CloseCode::Policy, "too many connections for this user");
                    return;
                }
            }
        }
        log::info!("session {}: authenticated as {}", self.key, fresh.user.id);
        self.reply(id.as_deref(), Reply::Authenticated(&fresh.user));
        self.leave_revoked_rooms(&fresh, ctx);
        self.identity = Some(fresh);
        if let super::FrontEnd::Native {
            frame_limit: Some(limit),
        } = &self.front
        {
            limit.set(self.deps.settings.max_frame_bytes);
        }
        self.schedule_expiry(ctx);
    }
}
