//! Where a room runs: on an HTTP worker while it is small (a publish then costs no thread hop),
//! on a room thread once it grew (large rooms fan out better there: while the room pushes, its
//! members' writers collect frames and write them together); and how quiet it is, which decides
//! whether its frames go straight to idle sockets (`Pace`, used by `Room::deliver`). The numbers
//! behind both are in docs/benchmarks.md, "Small rooms and quiet rooms".

use super::*;

/// Room (on an HTTP worker, grown to the size where it moves) → Registry: move me to a room
/// thread. Sent once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RoomGrew {
    pub name: String,
    pub room_id: u64,
}

/// Registry → Room (through its log, behind everything ordered before): go on as a new actor
/// on `arbiter`, reading `mailbox` — where everything sent to the room from now on waits.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MoveTo {
    pub mailbox: actix::dev::channel::AddressReceiver<Room>,
    pub arbiter: actix::ArbiterHandle,
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
    /// Asks `registry` to move this room to a room thread once it has `at` members.
    pub fn moving_at(mut self, at: usize, registry: Recipient<RoomGrew>) -> Self {
        self.grow = Some((at, registry));
        self
    }

    /// After a join: at the size where it moves, ask the registry (once).
    pub(super) fn check_growth(&mut self) {
        if self
            .grow
            .as_ref()
            .is_some_and(|(at, _)| self.members.len() >= *at)
        {
            if let Some((_, registry)) = self.grow.take() {
                registry.do_send(RoomGrew {
                    name: self.name.to_string(),
                    room_id: self.room_id,
                });
            }
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
        let room = std::mem::replace(self, husk);
        log::debug!(
            "room {} moves to a room thread with {} members",
            room.name,
            room.members.len()
        );
        let MoveTo { mailbox, arbiter } = msg;
        arbiter.spawn_fn(move || {
            let ctx = Context::with_receiver(mailbox);
            actix::spawn(ctx.into_future(room));
        });
        ctx.stop();
    }
}
