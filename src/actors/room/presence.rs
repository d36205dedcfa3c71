//! Who is present in a room, and when their arrivals and departures are announced: a plain
//! struct the room owns (no actor, no clock of its own: the caller passes `now`), so its rules
//! are unit-tested here. The room does the fan-out of what [`Presence::take_pending`] returns
//! and schedules the flush that [`Flush::After`] asks for.
//!
//! * A user is present while at least one of their sessions is a member: several connections
//!   of one user count once.
//! * Changes within [`PRESENCE_WINDOW`] of the last announcement are batched; the first change
//!   after a quiet spell goes out at once.
//! * A room with more users than a join answer lists (`SWITCHYARD_PRESENCE_LIST_MAX`) is a
//!   broadcast room: its arrivals and departures are counted, not announced.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::UserInfo;

/// Presence changes within this long of the last announcement are batched into one frame per
/// direction. A join flood into a room of n members would otherwise cost n² frames (10,000
/// joins into one room: 50 million); batched it costs n per window. The first change after a
/// quiet spell still goes out at once, and pending changes are flushed before any room message,
/// so presence never arrives after a message that depends on it.
pub const PRESENCE_WINDOW: Duration = Duration::from_millis(100);

/// What the room does after a presence change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Announce what is pending now (a quiet spell ended).
    Now,
    /// Schedule one flush after this long (the window is still open); the room calls
    /// [`Presence::timer_fired`] when it runs.
    After(Duration),
    /// Nothing to do: a flush is already scheduled, or the change is not announced.
    Nothing,
}

pub struct Presence {
    /// user id → (user, number of member sessions of that user). A user is present while > 0;
    /// the count is what makes several connections of one user present once.
    users: HashMap<String, (Arc<UserInfo>, usize)>,
    /// Changes not announced yet (user, arrived), oldest first: one frame per run of arrivals
    /// or departures when flushed.
    pending: Vec<(Arc<UserInfo>, bool)>,
    /// When presence was last announced: a change within [`PRESENCE_WINDOW`] of it waits.
    sent_at: Option<Instant>,
    /// A flush is scheduled (at most one at a time).
    flush_armed: bool,
    /// `SWITCHYARD_PRESENCE_LIST_MAX`: with at least this many users, changes are not announced
    /// (announcing every arrival to everyone is n² user entries: 10,000 users, 2 GB of JSON).
    list_max: usize,
}

impl Presence {
    pub fn new(list_max: usize) -> Self {
        Self {
            users: HashMap::new(),
            pending: Vec::new(),
            sent_at: None,
            flush_armed: false,
            list_max,
        }
    }

    /// A member session of `user` joined. Announced only if it is the user's first one.
    pub fn arrive(&mut self, user: &Arc<UserInfo>, now: Instant) -> Flush {
        let entry = self
            .users
            .entry(user.id.clone())
            .or_insert_with(|| (user.clone(), 0));
        entry.1 += 1;
        if entry.1 == 1 {
            self.note(user.clone(), true, now)
        } else {
            Flush::Nothing
        }
    }

    /// A member session of `user` left. Announced only if it was the user's last one.
    pub fn depart(&mut self, user: &Arc<UserInfo>, now: Instant) -> Flush {
        let gone = match self.users.get_mut(&user.id) {
            Some((_, n)) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.users.remove(&user.id);
                true
            }
            None => false,
        };
        if gone {
            self.note(user.clone(), false, now)
        } else {
            Flush::Nothing
        }
    }

    /// Records that `user` arrived (their first session joined) or left (their last one left):
    /// announced at once after a quiet spell, else batched until the window ends.
    fn note(&mut self, user: Arc<UserInfo>, joined: bool, now: Instant) -> Flush {
        // A room with more users than a join answer lists is a broadcast room: its arrivals and
        // departures are not announced. Batching cuts frames, not bytes.
        let users_before = self.users.len() + usize::from(!joined) - usize::from(joined);
        if users_before >= self.list_max {
            return Flush::Nothing;
        }
        self.pending.push((user, joined));
        let since_sent = self.sent_at.map(|t| now.saturating_duration_since(t));
        let quiet = since_sent.is_none_or(|d| d >= PRESENCE_WINDOW);
        if self.flush_armed {
            Flush::Nothing
        } else if quiet {
            Flush::Now
        } else {
            self.flush_armed = true;
            Flush::After(
                since_sent
                    .map(|d| PRESENCE_WINDOW.saturating_sub(d))
                    .unwrap_or_default(),
            )
        }
    }

    /// True when changes wait to be announced (checked before every room message, so cheap).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The changes to announce now, oldest first; starts a new window when there are any.
    pub fn take_pending(&mut self, now: Instant) -> Vec<(Arc<UserInfo>, bool)> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        self.sent_at = Some(now);
        std::mem::take(&mut self.pending)
    }

    /// The scheduled flush is running: a later change may schedule another.
    pub fn timer_fired(&mut self) {
        self.flush_armed = false;
    }

    /// Distinct users present.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Users present, by id, at most `limit` of them (the first ones by id).
    pub fn list(&self, limit: usize) -> Vec<&UserInfo> {
        let mut users: Vec<&UserInfo> = self.users.values().map(|(u, _)| u.as_ref()).collect();
        if users.len() > limit {
            users.select_nth_unstable_by(limit, |a, b| a.id.cmp(&b.id));
            users.truncate(limit);
        }
        users.sort_by(|a, b| a.id.cmp(&b.id));
        users
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> Arc<UserInfo> {
        Arc::new(UserInfo {
            id: id.into(),
            name: None,
        })
    }

    fn ids(p: &Presence, limit: usize) -> Vec<String> {
        p.list(limit).iter().map(|u| u.id.to_string()).collect()
    }

    #[test]
    fn a_user_with_several_connections_is_present_once() {
        let t = Instant::now();
        let mut p = Presence::new(100);
        let alice = user("alice");
        assert_eq!(p.arrive(&alice, t), Flush::Now);
        assert_eq!(p.take_pending(t).len(), 1);
        // The second connection is no arrival, and the first to leave no departure.
        assert_eq!(p.arrive(&alice, t), Flush::Nothing);
        assert_eq!(p.len(), 1);
        assert_eq!(p.depart(&alice, t), Flush::Nothing);
        assert!(!p.has_pending());
        assert_eq!(ids(&p, 10), ["alice"]);
        // The last one is.
        let later = t + PRESENCE_WINDOW;
        assert_eq!(p.depart(&alice, later), Flush::Now);
        assert_eq!(p.len(), 0);
        let pending = p.take_pending(later);
        assert_eq!(pending.len(), 1);
        assert!(!pending[0].1, "a departure");
    }

    #[test]
    fn changes_within_the_window_are_batched_into_one_flush() {
        let t = Instant::now();
        let mut p = Presence::new(100);
        assert_eq!(p.arrive(&user("a"), t), Flush::Now);
        p.take_pending(t);
        // Within the window: one timer for the rest of it, then nothing more is scheduled.
        let t1 = t + Duration::from_millis(30);
        assert_eq!(
            p.arrive(&user("b"), t1),
            Flush::After(Duration::from_millis(70))
        );
        assert_eq!(p.arrive(&user("c"), t1), Flush::Nothing);
        assert_eq!(p.depart(&user("b"), t1), Flush::Nothing);
        p.timer_fired();
        let pending = p.take_pending(t + PRESENCE_WINDOW);
        let got: Vec<(&str, bool)> = pending.iter().map(|(u, j)| (&*u.id, *j)).collect();
        assert_eq!(
            got,
            [("b", true), ("c", true), ("b", false)],
            "oldest first"
        );
        // Once the window after that flush is over, the next change goes out at once.
        let t2 = t + PRESENCE_WINDOW * 2;
        assert_eq!(p.arrive(&user("d"), t2), Flush::Now);
    }

    #[test]
    fn an_empty_flush_does_not_open_a_window() {
        let t = Instant::now();
        let mut p = Presence::new(100);
        assert!(p.take_pending(t).is_empty());
        assert_eq!(p.arrive(&user("a"), t), Flush::Now);
    }

    #[test]
    fn a_room_over_the_list_bound_counts_users_without_announcing_them() {
        let t = Instant::now();
        let mut p = Presence::new(2);
        assert_eq!(p.arrive(&user("a"), t), Flush::Now);
        p.take_pending(t);
        assert_eq!(p.arrive(&user("b"), t), Flush::After(PRESENCE_WINDOW));
        p.timer_fired();
        p.take_pending(t);
        // Two users already: the third is counted, not announced; nor is a departure that
        // leaves two behind.
        let later = t + PRESENCE_WINDOW * 2;
        assert_eq!(p.arrive(&user("c"), later), Flush::Nothing);
        assert_eq!(p.len(), 3);
        assert_eq!(p.depart(&user("c"), later), Flush::Nothing);
        assert!(!p.has_pending());
        // Announced again once the room had fewer users than the bound before the change.
        assert_eq!(p.depart(&user("b"), later), Flush::Nothing);
        assert_eq!(p.depart(&user("a"), later), Flush::Now);
    }

    #[test]
    fn the_list_is_the_first_users_by_id() {
        let t = Instant::now();
        let mut p = Presence::new(100);
        for id in ["d", "b", "a", "c"] {
            p.arrive(&user(id), t);
        }
        assert_eq!(ids(&p, 2), ["a", "b"]);
        assert_eq!(ids(&p, usize::MAX), ["a", "b", "c", "d"]);
    }
}
