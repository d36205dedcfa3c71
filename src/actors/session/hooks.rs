//! Backend hooks in a [`Session`] (src/hooks.rs, docs/profiles.md "Backend hooks"): a join
//! authorized by the app's backend (`subscribe`), a publish allowed and maybe rewritten by it
//! (`publish`), an app's event answered by it (`rpc`).
//!
//! Each call is spawned on the session's context, never waited for: the session goes on
//! handling its mailbox (room traffic, other requests, its own end, which drops the call) while
//! the backend thinks. What the request does next runs when the answer comes, with the same
//! checks it would have had without a hook. A session has at most
//! `SWITCHYARD_HOOK_SESSION_CONCURRENCY` calls in flight; one more is refused `rate_limited`.
//!
//! In: requests [`Session::dispatch`] routes here when the profile declares the hook. Out:
//! signed HTTP calls; then the join, the publish, or the rpc's answer.

use std::sync::Arc;

use actix::prelude::*;
use serde_json::{json, Value};

use super::publish::Publication;
use super::Session;
use crate::auth::Identity;
use crate::error::{ErrorCode, Refusal};
use crate::hooks::{HookConfig, HookKind, Hooks};
use crate::protocol::profile::{RpcCall, RpcReply};
use crate::protocol::request::{self, Verb};
use crate::protocol::{sio, RequestId, Since, Wire};

impl Session {
    /// The node's hook client and this profile's backend, when the profile declares `kind`.
    fn hook(&self, kind: HookKind) -> Option<(Arc<Hooks>, Arc<HookConfig>)> {
        let cfg = self.profile.as_ref()?.hooks.clone()?;
        cfg.url_of(kind)?;
        Some((self.deps.hooks.clone()?, cfg))
    }

    /// What every call tells the backend about the socket.
    fn hook_body(&self, kind: HookKind, identity: &Identity, mut extra: Value) -> Value {
        let nsp = match &self.wire {
            Wire::SocketIo(nsp, _, _) => Some(nsp.to_string()),
            _ => None,
        };
        if let Value::Object(o) = &mut extra {
            o.insert("hook".into(), kind.as_str().into());
            o.insert("user".into(), identity.user.id.clone().into());
            o.insert("name".into(), json!(identity.user.name));
            o.insert("namespace".into(), json!(nsp));
            o.insert("session".into(), self.key.clone().into());
        }
        extra
    }

    /// Calls `kind`; `then` runs with the answer, a refusal answers `id`.
    fn call_hook(
        &mut self,
        kind: HookKind,
        id: Option<RequestId>,
        body: Value,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, Option<RequestId>, Value, &mut Context<Self>) + 'static,
    ) {
        let Some((hooks, cfg)) = self.hook(kind) else {
            return;
        };
        if self.hook_calls >= self.deps.settings.hook_session_concurrency {
            let r = Refusal::new(
                ErrorCode::RateLimited,
                "too many calls to the app's backend in flight for this socket; wait for their answers",
            );
            return self.refuse(ctx, id.as_deref(), r);
        }
        self.hook_calls += 1;
        let call = hooks.call(&cfg, kind, &body, &self.forwarded);
        ctx.spawn(call.into_actor(self).map(move |answer, act, ctx| {
            act.hook_calls -= 1;
            match answer {
                Ok(v) => then(act, id, v, ctx),
                Err(r) => act.refuse(ctx, id.as_deref(), r),
            }
        }));
    }

    /// `join`, through the `subscribe` hook when the profile declares one: the backend allows
    /// (2xx) or denies. A join the identity could not make anyway, or a room already joined,
    /// costs no call.
    pub(super) fn join_hooked(
        &mut self,
        id: Option<RequestId>,
        room: String,
        since: Option<Since>,
        log_offset: Option<u64>,
        identity: Identity,
        ctx: &mut Context<Self>,
    ) {
        if self.hook(HookKind::Subscribe).is_none()
            || !identity.may_join(&room)
            || self.rooms.contains_key(&room)
        {
            return self.join(id, room, since, log_offset, identity, ctx);
        }
        let body = self.hook_body(HookKind::Subscribe, &identity, json!({ "room": room }));
        self.call_hook(
            HookKind::Subscribe,
            id,
            body,
            ctx,
            move |act, id, _, ctx| act.join(id, room, since, log_offset, identity, ctx),
        );
    }

    /// `publish`, through the `publish` hook when the profile declares one: the backend allows
    /// (2xx; `{"data": …}` in its answer replaces the data) or denies. A publish the session
    /// would refuse anyway (not a member, not allowed) costs no call.
    pub(super) fn publish_hooked(
        &mut self,
        id: Option<RequestId>,
        p: Publication,
        identity: Identity,
        ctx: &mut Context<Self>,
    ) {
        if self.hook(HookKind::Publish).is_none()
            || !identity.may_publish(&p.room)
            || !self.rooms.contains_key(&p.room)
        {
            return self.publish(id, p, identity, ctx);
        }
        let body = self.hook_body(
            HookKind::Publish,
            &identity,
            json!({ "room": p.room, "event": p.event, "data": &p.data }),
        );
        self.call_hook(
            HookKind::Publish,
            id,
            body,
            ctx,
            move |act, id, answer, ctx| {
                let mut p = p;
                if let Some(data) = answer.get("data") {
                    match serde_json::value::to_raw_value(data) {
                        Ok(raw) => {
                            p.data = raw;
                            // Attachments belong to the data the client sent.
                            p.attachments.clear();
                        }
                        Err(e) => {
                            let r = Refusal::new(
                                ErrorCode::BackendUnavailable,
                                format!("the app's backend rewrote the data unusably: {e}"),
                            );
                            return act.refuse(ctx, id.as_deref(), r);
                        }
                    }
                }
                act.publish(id, p, identity, ctx)
            },
        );
    }

    /// An app's event answered by the backend (`rpc`): the answer to the ack, to the socket as
    /// an event, or into a room, as the profile says.
    pub(super) fn rpc(&mut self, id: Option<RequestId>, call: RpcCall, ctx: &mut Context<Self>) {
        let Some(identity) = self.identity.clone() else {
            return;
        };
        if self.hook(HookKind::Rpc).is_none() {
            let r = Refusal::new(ErrorCode::Internal, "this profile has no rpc hook");
            return self.refuse(ctx, id.as_deref(), r);
        }
        let RpcCall {
            method,
            data,
            reply,
        } = call;
        let body = self.hook_body(
            HookKind::Rpc,
            &identity,
            json!({ "method": method, "data": data }),
        );
        self.call_hook(HookKind::Rpc, id, body, ctx, move |act, id, answer, ctx| {
            let Wire::SocketIo(nsp, _, _) = &act.wire else {
                return;
            };
            let nsp = nsp.clone();
            match reply {
                RpcReply::Ack => {
                    if let Some(frame) = sio::ack_ok(&nsp, id.as_deref(), &answer) {
                        act.send(frame);
                    }
                }
                RpcReply::Emit(event) => {
                    act.send(sio::emit(&nsp, &event, &answer));
                    if let Some(frame) = sio::ack_ok(&nsp, id.as_deref(), &json!({"ok": true})) {
                        act.send(frame);
                    }
                }
                RpcReply::Room { room, event } => {
                    let mut f = serde_json::Map::new();
                    f.insert("room".into(), room.into());
                    f.insert("event".into(), event.into());
                    f.insert("data".into(), answer);
                    f.insert("echo".into(), true.into());
                    // Published as the socket (its membership and permissions), but not
                    // through the publish hook: the data is the backend's own.
                    match request::build(Verb::Publish, &f) {
                        Ok(crate::protocol::Request::Publish {
                            room,
                            event,
                            data,
                            attachments,
                            echo,
                            retain,
                            message_id,
                        }) => {
                            let p = Publication {
                                room,
                                event,
                                data,
                                attachments,
                                echo,
                                retain,
                                message_id,
                            };
                            act.publish(id, p, identity, ctx)
                        }
                        Ok(_) => {}
                        Err(r) => act.refuse(ctx, id.as_deref(), r),
                    }
                }
            }
        });
    }
}
