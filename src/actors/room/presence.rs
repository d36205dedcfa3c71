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
//!
//! With a shared log (several nodes, [`Presence::clustered`]) the shared log decides: a user is
//! present while they have a connection on any node, and their arrival and departure come from
//! the log ([`Presence::change`], once across the nodes, in the log's order) on top of a
//! snapshot read when the room started ([`Presence::snapshot`]). This node's own member
//! sessions are still counted, and a user with one here is listed even before the log has told
//! the room about them (their own join answer lists them, as on one node).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::UserInfo;
use crate::broker::{PresenceChange, PresenceSnapshot};

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
    /// With a shared log: who is present across the nodes. `None` on one node, where `users`
    /// is the whole truth.
    cluster: Option<Cluster>,
}

/// Presence across the nodes, as the shared log told it.
struct Cluster {
    /// user id → user: present somewhere.
    users: HashMap<String, Arc<UserInfo>>,
    /// The log position of the snapshot: changes at or before it are already in `users`.
    since: (u64, u64),
}

impl Presence {
    pub fn new(list_max: usize) -> Self {
        Self {
            users: HashMap::new(),
            pending: Vec::new(),
            sent_at: None,
            flush_armed: false,
            list_max,
            cluster: None,
        }
    }

    /// Presence decided by a shared log: local arrivals and departures are counted, not
    /// announced; announcements come from [`Presence::change`].
    pub fn clustered(list_max: usize) -> Self {
        Self {
            cluster: Some(Cluster {
                users: HashMap::new(),
                since: (0, 0),
            }),
            ..Self::new(list_max)
        }
    }

    /// Who the shared log said was present when the room started (before any change is
    /// applied: the room reads it before it handles anything else).
    pub fn snapshot(&mut self, snapshot: PresenceSnapshot) {
        if let Some(c) = &mut self.cluster {
            c.since = snapshot.at;
            c.users = snapshot
                .users
                .into_iter()
                .map(|u| (u.id.clone(), u))
                .collect();
        }
    }

    /// A change from the shared log: announced unless the snapshot already had it (or it
    /// changes nothing: a repeat).
    pub fn change(&mut self, change: PresenceChange, now: Instant) -> Flush {
        let before = self.len();
        let Some(c) = &mut self.cluster else {
            return Flush::Nothing;
        };
        if change.at <= c.since {
            return Flush::Nothing;
        }
        let changed = if change.joined {
            c.users
                .insert(change.user.id.clone(), change.user.clone())
                .is_none()
        } else {
            c.users.remove(&change.user.id).is_some()
        };
        if changed {
            self.note(change.user, change.joined, before, now)
        } else {
            Flush::Nothing
        }
    }

    /// A member session of `user` joined. Announced only if it is the user's first one.
    pub fn arrive(&mut self, user: &Arc<UserInfo>, now: Instant) -> Flush {
        let before = self.users.len();
        let entry = self
            .users
            .entry(user.id.clone())
            .or_insert_with(|| (user.clone(), 0));
        entry.1 += 1;
        if entry.1 == 1 && self.cluster.is_none() {
            self.note(user.clone(), true, before, now)
        } else {
            Flush::Nothing
        }
    }

    /// A member session of `user` left. Announced only if it was the user's last one.
    pub fn depart(&mut self, user: &Arc<UserInfo>, now: Instant) -> Flush {
        let before = self.users.len();
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
        if gone && self.cluster.is_none() {
            self.note(user.clone(), false, before, now)
        } else {
            Flush::Nothing
        }
    }

    /// Records that `user` arrived (their first session joined) or left (their last one left):
    /// announced at once after a quiet spell, else batched until the window ends.
    fn note(
        &mut self,
        user: Arc<UserInfo>,
        joined: bool,
        users_before: usize,
        now: Instant,
    ) -> Flush {
        // A room with more users than a join answer lists is a broadcast room: its arrivals and
        // departures are not announced. Batching cuts frames, not bytes.
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

    /// Distinct users present (with a shared log: across the nodes, and this node's members).
    pub fn len(&self) -> usize {
        match &self.cluster {
            None => self.users.len(),
            Some(c) => {
                c.users.len()
                    + self
                        .users
                        .keys()
                        .filter(|id| !c.users.contains_key(*id))
                        .count()
            }
        }
    }

    /// Users present, by id, at most `limit` of them (the first ones by id).
    pub fn list(&self, limit: usize) -> Vec<&UserInfo> {
        let mut users: Vec<&UserInfo> = self.users.values().map(|(u, _)| u.as_ref()).collect();
        if let Some(c) = &self.cluster {
            users.retain(|u| !c.users.contains_key(&u.id));
            users.extend(c.users.values().map(Arc::as_ref));
        }
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

    fn change(at: u64, id: &str, joined: bool) -> PresenceChange {
        PresenceChange {
            at: (at, 0),
            user: user(id),
            joined,
        }
    }

    #[test]
    fn with_a_shared_log_the_log_announces_and_local_sessions_only_count() {
        let t = Instant::now();
        let mut p = Presence::clustered(100);
        p.snapshot(PresenceSnapshot {
            at: (10, 0),
            users: vec![user("bob")],
        });
        // A local session is listed at once, but its arrival is the log's to announce.
        assert_eq!(p.arrive(&user("alice"), t), Flush::Nothing);
        assert_eq!(ids(&p, 10), ["alice", "bob"]);
        assert_eq!(p.len(), 2);
        // Changes the snapshot already holds are not announced again.
        assert_eq!(p.change(change(9, "carol", true), t), Flush::Nothing);
        assert_eq!(p.change(change(10, "bob", false), t), Flush::Nothing);
        assert_eq!(ids(&p, 10), ["alice", "bob"]);
        // Later ones are, once: alice counted once although local and in the log.
        assert_eq!(p.change(change(11, "alice", true), t), Flush::Now);
        assert_eq!(p.len(), 2);
        assert_eq!(p.take_pending(t).len(), 1);
        let later = t + PRESENCE_WINDOW;
        assert_eq!(p.change(change(12, "alice", true), later), Flush::Nothing);
        assert_eq!(p.depart(&user("alice"), later), Flush::Nothing);
        assert_eq!(
            ids(&p, 10),
            ["alice", "bob"],
            "until the log says alice left"
        );
        assert_eq!(p.change(change(13, "bob", false), later), Flush::Now);
        let pending = p.take_pending(later);
        assert_eq!(pending.len(), 1);
        assert!(!pending[0].1, "a departure");
        assert_eq!(ids(&p, 10), ["alice"]);
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
