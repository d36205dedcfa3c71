//! What a room keeps for its joiners beyond history: its last `retain: true` message and the
//! last `retain: "event"` message of each event name (docs/protocol.md, "Retained messages").
//! A plain struct the room owns; the room does the byte accounting (retained messages count
//! against the history byte bounds) with what [`Retained::put`] and friends hand back.
//!
//! Invariants: `by_event` is in offset order (oldest first) with one entry per event name and
//! at most `max_events` entries; a joiner gets `last` and `by_event` merged in offset order, so
//! the order is the one the room published them in, and each message once.

use std::sync::Arc;

use crate::broker::Retain;

/// What the retained set needs of a stored message.
pub(super) trait Entry {
    fn offset(&self) -> u64;
    fn event(&self) -> &str;
}

pub(super) struct Retained<T> {
    /// The last `retain: true` message, whatever its event.
    last: Option<Arc<T>>,
    /// The last `retain: "event"` message of each event name, oldest first.
    by_event: Vec<Arc<T>>,
    /// Event names kept (`SWITCHYARD_RETAINED_EVENTS_MAX`); past it the oldest name goes.
    max_events: usize,
}

impl<T: Entry> Retained<T> {
    pub fn new(max_events: usize) -> Self {
        Self {
            last: None,
            by_event: Vec::new(),
            max_events,
        }
    }

    /// Keeps `m` as `mode` asks (`m` is the room's newest message). Returns what it no longer
    /// keeps (replaced, or pushed out by the bound), for the room's byte accounting.
    pub fn put(&mut self, m: Arc<T>, mode: Retain) -> Vec<Arc<T>> {
        match mode {
            Retain::No => Vec::new(),
            Retain::Last => self.last.replace(m).into_iter().collect(),
            Retain::PerEvent => {
                let mut gone = Vec::new();
                if let Some(i) = self.by_event.iter().position(|r| r.event() == m.event()) {
                    gone.push(self.by_event.remove(i));
                }
                self.by_event.push(m);
                while self.by_event.len() > self.max_events.max(1) {
                    gone.push(self.by_event.remove(0));
                }
                gone
            }
        }
    }

    /// Whether the message at `offset` is kept here.
    pub fn holds(&self, offset: u64) -> bool {
        self.last.as_ref().is_some_and(|m| m.offset() == offset)
            || self.by_event.iter().any(|m| m.offset() == offset)
    }

    /// Drops the oldest message kept (under byte pressure); `None` when empty.
    pub fn drop_oldest(&mut self) -> Option<Arc<T>> {
        let last_is_older = match (&self.last, self.by_event.first()) {
            (Some(l), Some(e)) => l.offset() < e.offset(),
            (Some(_), None) => true,
            _ => false,
        };
        if last_is_older {
            self.last.take()
        } else if self.by_event.is_empty() {
            None
        } else {
            Some(self.by_event.remove(0))
        }
    }

    /// Everything kept, for a joiner: in offset order, each once.
    pub fn in_order(&self) -> Vec<&Arc<T>> {
        let mut all: Vec<&Arc<T>> = self.by_event.iter().collect();
        if let Some(l) = &self.last {
            let at = all.partition_point(|m| m.offset() < l.offset());
            all.insert(at, l);
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct M(u64, &'static str);

    impl Entry for M {
        fn offset(&self) -> u64 {
            self.0
        }
        fn event(&self) -> &str {
            self.1
        }
    }

    fn offsets(r: &Retained<M>) -> Vec<u64> {
        r.in_order().iter().map(|m| m.0).collect()
    }

    #[test]
    fn the_last_of_each_event_is_kept_in_publish_order() {
        let mut r = Retained::new(8);
        r.put(Arc::new(M(1, "stats")), Retain::PerEvent);
        r.put(Arc::new(M(2, "status")), Retain::PerEvent);
        let gone = r.put(Arc::new(M(3, "stats")), Retain::PerEvent);
        assert_eq!(gone.iter().map(|m| m.0).collect::<Vec<_>>(), vec![1]);
        assert_eq!(offsets(&r), vec![2, 3]);
        assert!(r.holds(3) && !r.holds(1));
    }

    #[test]
    fn the_rooms_last_message_sits_beside_them_in_offset_order() {
        let mut r = Retained::new(8);
        r.put(Arc::new(M(1, "a")), Retain::PerEvent);
        r.put(Arc::new(M(2, "x")), Retain::Last);
        r.put(Arc::new(M(3, "b")), Retain::PerEvent);
        assert_eq!(offsets(&r), vec![1, 2, 3]);
        let gone = r.put(Arc::new(M(4, "y")), Retain::Last);
        assert_eq!(gone.len(), 1);
        assert_eq!(offsets(&r), vec![1, 3, 4]);
        assert!(r.put(Arc::new(M(5, "z")), Retain::No).is_empty());
        assert_eq!(offsets(&r), vec![1, 3, 4]);
    }

    #[test]
    fn past_the_bound_the_oldest_name_goes() {
        let mut r = Retained::new(2);
        r.put(Arc::new(M(1, "a")), Retain::PerEvent);
        r.put(Arc::new(M(2, "b")), Retain::PerEvent);
        let gone = r.put(Arc::new(M(3, "c")), Retain::PerEvent);
        assert_eq!(gone.iter().map(|m| m.1).collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(offsets(&r), vec![2, 3]);
    }

    #[test]
    fn under_pressure_the_oldest_goes_first_whichever_kind() {
        let mut r = Retained::new(8);
        r.put(Arc::new(M(1, "x")), Retain::Last);
        r.put(Arc::new(M(2, "a")), Retain::PerEvent);
        assert_eq!(r.drop_oldest().map(|m| m.0), Some(1));
        assert_eq!(r.drop_oldest().map(|m| m.0), Some(2));
        assert!(r.drop_oldest().is_none() && r.in_order().is_empty());
    }
}
