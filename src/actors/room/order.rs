//! A room's place in the broker's order: delivering what the broker ordered (`Ordered`), after
//! checking it continues what the room delivered (`continue_at`: a gap or a new epoch drops the
//! history and tells the members, `announce_reset`), storing it, filling a gap from a shared
//! log, and starting from a shared log's tail. Part of `Room`'s one invariant (room.rs says why
//! the room is one piece); here only to keep that file readable.

use super::*;

impl Room {
    /// Where a message the broker ordered stands against what this room delivered: the next
    /// offset of the same epoch is the only normal case. Anything else means the room missed
    /// part of the order (the local log makes this impossible; a shared log's consumer can see
    /// it after an outage) or the broker started a new epoch. Either way the history before it
    /// no longer continues, so it is dropped: a resume from before answers `recovered: false`
    /// instead of skipping silently over what is missing. A message already delivered (an
    /// offset at or before ours in the same epoch) is not delivered again.
    fn continue_at(&mut self, at: &Position) -> bool {
        if *at.epoch == *self.epoch {
            if at.offset == self.last_offset + 1 {
                return true;
            }
            if at.offset <= self.last_offset {
                // Expected with a shared log: a room that started from the backlog already
                // holds what the log's reader delivers next if the reader lagged.
                log::debug!(
                    "room {}: offset {} delivered again (at {}); dropped",
                    self.name,
                    at.offset,
                    self.last_offset
                );
                return false;
            }
            log::warn!(
                "room {}: gap in the order ({} after {}); history before it is dropped, members told",
                self.name,
                at.offset,
                self.last_offset
            );
            self.drop_everything();
            self.announce_reset(at, "gap");
        } else {
            let had_one = !self.epoch.is_empty();
            if had_one {
                log::warn!(
                    "room {}: new epoch {} (was {}); history of the old one is dropped, members told",
                    self.name,
                    at.epoch,
                    self.epoch
                );
            }
            self.epoch = at.epoch.clone();
            self.drop_everything();
            if had_one {
                self.announce_reset(at, "new_epoch");
            }
        }
        true
    }

    /// Tells every member that the order does not continue where they were: what came between
    /// their last message and the one at `at` is lost (a `reset` frame, before that message),
    /// so an app reloads what it shows instead of going on with a silent hole. The issue's
    /// "never silently": a resume across it already says `recovered: false`.
    fn announce_reset(&mut self, at: &Position, reason: &str) {
        let before = at.offset.saturating_sub(1);
        let mut cache = WireCache::default();
        let (mut delivered, mut dropped) = (0usize, Vec::new());
        for (id, m) in &self.members {
            let Some(frame) =
                cache.get(&m.wire, |w| w.reset(&self.name, &at.epoch, before, reason))
            else {
                continue;
            };
            match m.outbox.push_text(frame) {
                Ok(()) => delivered += 1,
                Err(PushError::Full) => dropped.push((*id, true)),
                Err(PushError::Closed) => dropped.push((*id, false)),
            }
        }
        self.settle(dropped, delivered);
    }
}

impl Handler<Ordered> for Room {
    type Result = ();

    fn handle(&mut self, o: Ordered, ctx: &mut Context<Self>) {
        // A gap in a shared log's deliveries (this node's reader fell further behind than the
        // fan-out stream keeps): filled from the room's own stream first, with the mailbox held
        // so nothing overtakes the fill. What the stream no longer holds stays a gap, which
        // `continue_at` then handles (history before it dropped: resumes say recovered:false).
        if let Some(backlog) = self.backlog.clone() {
            let gap = !self.epoch.is_empty()
                && *o.position.epoch == *self.epoch
                && o.position.offset > self.last_offset + 1;
            if gap {
                let (after, until) = (self.last_offset, o.position.offset - 1);
                log::warn!(
                    "room {}: offsets {}..={until} missing from the deliveries; filling from the log",
                    self.name,
                    after + 1
                );
                ctx.wait(
                    backlog
                        .range(self.name.to_string(), after, until)
                        .into_actor(self)
                        .map(move |res, act, _| {
                            match res {
                                Ok(entries) => {
                                    for (offset, envelope) in entries {
                                        let at = Position {
                                            epoch: o.position.epoch.clone(),
                                            offset,
                                        };
                                        if offset == act.last_offset + 1 {
                                            act.deliver(envelope, &at, o.received_at, false);
                                        }
                                    }
                                }
                                Err(e) => {
                                    log::warn!("room {}: filling the gap failed: {e}", act.name)
                                }
                            }
                            act.finish(o);
                        }),
                );
                return;
            }
        }
        self.finish(o);
    }
}

impl Room {
    /// Delivers an ordered message and answers its publisher, if one waits.
    fn finish(&mut self, o: Ordered) {
        self.deliver(o.envelope, &o.position, o.received_at, o.routed);
        if let Some(tx) = o.reply {
            // The publisher may have stopped waiting; nothing to tell then.
            let _ = tx.send(Ok(o.position));
        }
    }
}

impl Room {
    /// Delivers one ordered message: history, the retained message, fan-out.
    fn deliver(&mut self, msg: Envelope, at: &Position, received_at: Instant, routed: bool) {
        if routed {
            self.routed_seen += 1;
        }
        if !self.continue_at(at) {
            return;
        }
        let skip = msg.exclude.as_ref().and_then(|c| c.on_this_node());
        let conflate = msg.conflate;
        let shared = msg.message_id.as_deref().and_then(dedupe::key);
        let (stored, frame) = self.store(at.offset, msg);
        let name = self.name.clone();
        let event = stored_event(&name, &stored);
        // A quiet room — nothing ordered behind this message, few frames fanned out lately —
        // writes each member's frame at once from here (`Outbox::push_text_now`): one write
        // per frame either way, without waking each connection's writer. A busy room queues,
        // so each connection's writer takes several frames in one write (the batching that
        // makes large rooms at full rate cheap: measured in docs/benchmarks.md).
        let budget = self.limits.direct_writes_per_100ms;
        // The clock read `store` took for the message serves the pace too.
        let recent = self.pace.count(stored.at, self.members.len());
        let direct = recent < budget && self.ordered.as_ref().is_some_and(|o| o.get() <= at.offset);
        self.broadcast(&event, &frame, conflate, skip, shared, direct);
        if !self.floors.is_empty() {
            self.floors.retain(|_, f| *f > at.offset);
        }
        self.metrics.publishes.inc();
        self.metrics.observe_publish_latency(received_at.elapsed());
    }

    /// Takes `msg` as the room's message at `offset`: encoded once for `/ws`, retained if it
    /// asks, kept in history within the bounds.
    fn store(&mut self, offset: u64, msg: Envelope) -> (Arc<Stored>, Bytes) {
        self.last_offset = offset;
        let frame = native::message_of(&Event {
            room: &self.name,
            offset,
            event: &msg.event,
            data: &msg.data,
            from: msg.from.as_deref(),
            connection: msg.connection.as_deref(),
            message_id: msg.message_id.as_deref(),
            seq: msg.seq,
            attachments: &msg.attachments,
        });
        let bytes = Stored::cost(&msg.event, &msg.data, &frame, &msg.attachments);
        let stored = Arc::new(Stored {
            offset,
            at: Instant::now(),
            event: msg.event,
            data: msg.data,
            from: msg.from,
            connection: msg.connection,
            message_id: msg.message_id,
            seq: msg.seq,
            attachments: Arc::from(msg.attachments),
            native: frame.clone(),
            bytes,
        });
        if self.limits.history_size > 0 {
            self.keep(stored.clone());
        }
        if msg.retain != Retain::No {
            if !self.in_history(offset) {
                self.charge(bytes);
            }
            let gone = self.retained.put(stored.clone(), msg.retain);
            self.release(gone);
        }
        self.trim_history();
        (stored, frame)
    }

    /// Where the shared order stands, from the backlog: the room continues from there, holding
    /// the recent messages as history (so a client resumes here whatever node it was on).
    pub(super) fn start_at(&mut self, tail: Result<Tail, Refusal>) {
        match tail {
            Ok(Tail { position, entries }) => {
                self.epoch = position.epoch;
                for (offset, envelope) in entries {
                    self.store(offset, envelope);
                }
                self.last_offset = position.offset;
            }
            Err(e) => {
                // Nothing to continue from: the first delivery sets the epoch, and a client
                // resuming meanwhile is told `recovered: false`.
                log::warn!("room {}: the shared log did not answer: {e}", self.name);
                self.epoch = "".into();
                self.last_offset = 0;
            }
        }
        log::debug!(
            "room {} started from the shared log (epoch {}, offset {}, {} kept)",
            self.name,
            self.epoch,
            self.last_offset,
            self.history.len()
        );
    }
}
