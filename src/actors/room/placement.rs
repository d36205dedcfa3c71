//! Where a room runs: on an HTTP worker while it is small (a publish then costs no thread hop),
//! on a room thread once it grew (large rooms fan out better there: while the room pushes, its
//! members' writers collect frames and write them together), and back on a worker once it
//! shrank to a quarter of that size (the gap keeps a room near the limit from moving back and
//! forth); and how quiet it is, which decides
//! whether its frames go straight to idle sockets (`Pace`, used by `Room::deliver`). The numbers
//! behind both are in docs/benchmarks.md, "Small rooms and quiet rooms".

use super::*;

/// Room → Registry: move me — to a room thread (`grown`: it reached the size where it moves,
/// on an HTTP worker) or back to a worker (it shrank, on a room thread). Sent once per place.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RoomResized {
    pub name: String,
    pub room_id: u64,
    pub grown: bool,
}

/// When a room asks to move: at `grow_at` members on a worker, at `shrink_at` (but not
/// empty: an empty room retires instead) on a room thread.
pub struct Moves {
    pub on_worker: bool,
    pub grow_at: usize,
    pub shrink_at: usize,
    pub registry: Recipient<RoomResized>,
}

impl Moves {
    /// The size a room at `grow_at` members moves back at: a quarter of it.
    pub fn shrink_at(grow_at: usize) -> usize {
        grow_at / 4
    }
}

/// Registry → Room (through its log, behind everything ordered before): go on as a new actor
/// on `arbiter`, reading `mailbox` — where everything sent to the room from now on waits —
/// watching its size as `moves` says.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MoveTo {
    pub mailbox: actix::dev::channel::AddressReceiver<Room>,
    pub arbiter: actix::ArbiterHandle,
    pub moves: Moves,
}

/// Frames a room fanned out in the current window of 100 ms and the one before it: a quiet
/// room writes straight to idle sockets; a busy one queues so that frames piling up for a
/// connection go out in one write (`Room::deliver`).
#[derive(Default)]
pub(super) struct Pace {
    start: Option<Instant>,
    this: usize,
    last: usize,
}

impl Pace {
    const WINDOW: Duration = Duration::from_millis(100);

    /// Counts `frames` fanned out at `now`; returns what the two windows held before them.
    pub(super) fn count(&mut self, now: Instant, frames: usize) -> usize {
        let since = self.start.map(|s| now.saturating_duration_since(s));
        match since {
            Some(d) if d < Self::WINDOW => {}
            Some(d) if d < 2 * Self::WINDOW => {
                self.last = std::mem::take(&mut self.this);
                self.start = Some(now);
            }
            _ => {
                (self.last, self.this) = (0, 0);
                self.start = Some(now);
            }
        }
        let before = self.this + self.last;
        self.this += frames;
        before
    }
}

impl Room {
    /// Asks the registry to move this room as `moves` says.
    pub fn moving(mut self, moves: Moves) -> Self {
        self.moves = Some(moves);
        self
    }

    /// After a join or a departure: at the size where it moves, ask the registry (once; the
    /// room that moved watches again, from its new place).
    pub(super) fn check_size(&mut self) {
        let n = self.members.len();
        let due = self.moves.as_ref().is_some_and(|m| {
            if m.on_worker {
                n >= m.grow_at
            } else {
                n > 0 && n <= m.shrink_at
            }
        });
        if !due {
            return;
        }
        if let Some(m) = self.moves.take() {
            m.registry.do_send(RoomResized {
                name: self.name.to_string(),
                room_id: self.room_id,
                grown: m.on_worker,
            });
        }
    }
}

impl Handler<MoveTo> for Room {
    type Result = ();

    /// Hands the whole room — members, history, presence, positions — to a new actor on
    /// another thread and stops. Nothing overtakes the hand-over: the log and the registry
    /// sent everything before it here and everything after it to the new mailbox, which the
    /// new actor only starts reading with this state.
    fn handle(&mut self, msg: MoveTo, ctx: &mut Context<Self>) {
        let husk = Room::new(
            self.name.to_string(),
            self.room_id,
            Position {
                epoch: self.epoch.clone(),
                offset: self.last_offset,
            },
            self.limits,
            self.registry.clone(),
            self.metrics.clone(),
            None,
        );
        let MoveTo {
            mailbox,
            arbiter,
            moves,
        } = msg;
        let mut room = std::mem::replace(self, husk);
        log::debug!(
            "room {} moves to {} with {} members",
            room.name,
            if moves.on_worker {
                "an HTTP worker"
            } else {
                "a room thread"
            },
            room.members.len()
        );
        room.moves = Some(moves);
        arbiter.spawn_fn(move || {
            let ctx = Context::with_receiver(mailbox);
            actix::spawn(ctx.into_future(room));
        });
        ctx.stop();
    }
}
