//! How a watcher joins `operation:<id>` while the operation's actor is live: the status
//! snapshot, the log lines it missed (from memory, else from the database) and, for a finished
//! operation, the terminal event, all ahead of the live events after them. (The actors that
//! serve an operation to an SSE stream or its own WebSocket are in `actors/watcher.rs`; they
//! come here through the manager like a session does.)
//!
//! In: [`Watch`] (the manager, for a session, an SSE stream or a per-operation WebSocket).
//! Out: [`JoinRoom`] with the backfill, to the broker; database reads of older lines.
//!
//! Invariant: the join is handed to the broker by the same caller as this actor's events, at a
//! moment when the backfill ends exactly where the published events stand, so the broker's
//! contract (first in, first out per caller across publishes and joins) puts every event
//! published before it ahead of the join and every later one after: no gap, no duplicate. A watcher arriving while the terminal state is being written waits
//! (`deferred_watches`) until its event is published, so it gets that event once.

use actix::prelude::*;
use serde_json::value::RawValue;

use super::journal::Replay;
use super::{OperationActor, Watch};
use crate::actors::room::JoinRoom;
use crate::db::operations::{self as store, LogRow};
use crate::error::Refusal;
use crate::operations::LogLine;
use crate::protocol::Backfill;

impl Handler<Watch> for OperationActor {
    type Result = Result<(), Refusal>;
    fn handle(&mut self, msg: Watch, ctx: &mut Context<Self>) -> Self::Result {
        self.watch(msg, ctx);
        Ok(())
    }
}

impl OperationActor {
    /// Sends the watcher's join with its backfill now if every line it needs is in memory;
    /// otherwise reads the older lines first. Returns whether it was sent synchronously.
    pub(super) fn watch(&mut self, w: Watch, ctx: &mut Context<Self>) -> bool {
        if self.terminal_pending {
            self.deferred_watches.push(w);
            return true;
        }
        let max = self.cx.settings.log_replay_max as u64;
        let (after, limit) = match self.journal.replay(w.log_offset, max) {
            Replay::Memory {
                after,
                lines,
                complete,
            } => {
                self.send_join(w, after, lines, complete);
                return true;
            }
            Replay::Database { after, limit } => (after, limit),
        };
        // Lines before memory's start are all written (everything unwritten is in memory).
        let id = self.op.id.clone();
        self.cx
            .db
            .run(move |c| store::logs_after(c, &id, after, limit as i64))
            .into_actor(self)
            .map(move |res, act, _ctx| match res {
                Ok(rows) => {
                    let lines: Vec<LogLine> = rows.into_iter().map(LogRow::into_line).collect();
                    let (lines, complete) = act.journal.replay_rest(after, lines, max);
                    if act.terminal_pending {
                        act.deferred_watches.push(w);
                    } else {
                        act.send_join(w, after, lines, complete);
                    }
                }
                Err(e) => {
                    log::warn!(
                        "operation {}: reading logs for a watcher failed: {e}",
                        act.op.id
                    );
                    // Still join: live events and the snapshot are worth more than nothing.
                    let (from, lines) = act.journal.replay_memory();
                    act.send_join(w, from, lines, false);
                }
            })
            .spawn(ctx);
        false
    }

    /// `after` is where the watcher's log stood: the snapshot carries it as its sequence, so an
    /// SSE client that drops right after the snapshot resumes without skipping lines.
    fn send_join(&self, w: Watch, after: u64, lines: Vec<LogLine>, complete: bool) {
        let terminal = if self.announced {
            self.op.status.terminal_event()
        } else {
            None
        };
        let backfill = backfill_frames(self.status_json(), after, lines, terminal);
        // Takes its place now, behind every event already published (the broker's contract).
        let room = self.op.room();
        let join = self.cx.broker.join(JoinRoom {
            room: room.clone(),
            member: w.member,
            since: None,
            request_id: w.request_id,
            backfill: Some(backfill),
            backfill_complete: complete,
            after: None,
        });
        let joined_to = w.joined_to;
        actix::spawn(async move {
            if let (Ok(joined), Some(to)) = (join.await, joined_to) {
                to.do_send(super::WatchJoined { room, joined });
            }
        });
    }
}

/// A watcher's backfill: the status snapshot first (its sequence is where the watcher's log
/// stood), then the missed lines, then — for a finished operation — its one terminal event, so
/// the order is the same as for a watcher that was there all along.
pub fn backfill_frames(
    status: Box<RawValue>,
    after: u64,
    lines: Vec<LogLine>,
    terminal_event: Option<&str>,
) -> Vec<Backfill> {
    let mut out = Vec::with_capacity(lines.len() + 2);
    out.push(Backfill {
        event: "operation.progress".into(),
        data: status.clone(),
        seq: Some(after),
    });
    let mut last = after;
    for l in lines {
        let Some(data) = serde_json::to_string(&l)
            .ok()
            .and_then(|s| RawValue::from_string(s).ok())
        else {
            continue;
        };
        last = l.offset;
        out.push(Backfill {
            event: "operation.log".into(),
            data,
            seq: Some(l.offset),
        });
    }
    if let Some(event) = terminal_event {
        out.push(Backfill {
            event: event.to_string(),
            data: status,
            seq: Some(last),
        });
    }
    out
}
