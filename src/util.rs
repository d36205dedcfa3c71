//! Small helpers with no better home.

use chrono::{TimeZone, Utc};

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    Utc::now().timestamp_millis()
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-22T15:13:35.123Z`.
pub fn rfc3339_millis(ms: i64) -> String {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => String::new(),
    }
}

/// A map kept as a vector of pairs, for the few entries a connection holds (its Socket.IO
/// namespaces, its rooms): one exact allocation where a `HashMap` takes four buckets and
/// control bytes for its first entry (hundreds of bytes on every idle connection), and a search
/// over a few keys is no slower than hashing one. Only for maps with a small bound: a lookup
/// is linear (a connection's rooms: at most `SWITCHYARD_MAX_ROOMS_PER_CONNECTION`, 100 by
/// default, compared by length first).
#[derive(Debug)]
pub struct VecMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<K: Eq, V> VecMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    fn position<Q>(&self, key: &Q) -> Option<usize>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.0.iter().position(|(k, _)| k.borrow() == key)
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.position(key).map(|i| &self.0[i].1)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.position(key).is_some()
    }

    /// Sets `key` to `value`; the value it replaced, if any.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.position(&key) {
            Some(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            None => {
                // Exactly one more while small (most hold one entry), doubling beyond.
                if self.0.len() < 4 {
                    self.0.reserve_exact(1);
                }
                self.0.push((key, value));
                None
            }
        }
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.position(key).map(|i| self.0.swap_remove(i).1)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.0.retain_mut(|(k, v)| keep(k, v));
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().map(|(k, _)| k)
    }

    /// Takes every entry out, leaving the map empty (and its memory freed).
    pub fn drain(&mut self) -> impl Iterator<Item = (K, V)> {
        std::mem::take(&mut self.0).into_iter()
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::VecMap;
    use std::sync::Arc;

    #[test]
    fn a_vec_map_behaves_as_a_map() {
        let mut m: VecMap<Arc<str>, u32> = VecMap::new();
        assert!(m.is_empty());
        assert_eq!(m.insert("/".into(), 1), None);
        assert_eq!(m.insert("/admin".into(), 2), None);
        assert_eq!(m.insert("/".into(), 3), Some(1));
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("/"), Some(&3));
        assert!(m.contains_key("/admin"));
        assert!(!m.contains_key("/other"));
        m.retain(|k, _| &**k != "/admin");
        assert!(!m.contains_key("/admin"));
        assert_eq!(m.remove("/"), Some(3));
        assert_eq!(m.remove("/"), None);
        assert!(m.is_empty());
        assert_eq!(m.values().count(), 0);
    }
}
