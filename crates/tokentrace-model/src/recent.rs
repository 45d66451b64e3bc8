//! A bounded memory of recently seen keys (ends seen, calls counted, trace keys, spans written
//! again): what the pipeline and the store's writer remember to avoid work or duplicates,
//! bounded in count and in bytes.

use std::collections::{HashMap, VecDeque};

/// A bounded set of recently seen keys, oldest forgotten first: at most `capacity` of them,
/// and values of at most `max_bytes` (as `weigh` estimates them).
pub struct RecentKeys<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    capacity: usize,
    bytes: u64,
    max_bytes: u64,
    weigh: fn(&V) -> u64,
}

impl<K: std::hash::Hash + Eq + Clone, V> RecentKeys<K, V> {
    /// At most `capacity` keys, and values of at most `max_bytes` as `weigh` counts them.
    pub fn new(capacity: usize, max_bytes: u64, weigh: fn(&V) -> u64) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            bytes: 0,
            max_bytes,
            weigh,
        }
    }

    /// Remembers `key`; returns whether it was new. The oldest key is forgotten before a new
    /// one is added, so the order never holds more than `capacity` keys (and its buffer never
    /// doubles past them).
    pub fn insert(&mut self, key: K, value: V) -> bool {
        let w = (self.weigh)(&value);
        let new = !self.map.contains_key(&key);
        if new {
            while self.order.len() >= self.capacity.max(1) && self.forget_oldest() {}
            self.order.push_back(key.clone());
        }
        if let Some(old) = self.map.insert(key, value) {
            self.bytes = self.bytes.saturating_sub((self.weigh)(&old));
        }
        self.bytes += w;
        while self.bytes > self.max_bytes && self.forget_oldest() {}
        new
    }

    /// Forgets every key.
    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
        self.bytes = 0;
    }

    /// Forgets the oldest key; false when none is left.
    fn forget_oldest(&mut self) -> bool {
        let Some(old) = self.order.pop_front() else {
            return false;
        };
        if let Some(v) = self.map.remove(&old) {
            self.bytes = self.bytes.saturating_sub((self.weigh)(&v));
        }
        true
    }

    /// Whether `key` is remembered.
    pub fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    /// The value remembered for `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.map.get(key)
    }

    /// Forgets `key`, returning its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let v = self.map.remove(key)?;
        self.bytes = self.bytes.saturating_sub((self.weigh)(&v));
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::RecentKeys;

    #[test]
    fn the_oldest_is_forgotten_first_and_the_order_never_grows_past_the_count() {
        let mut recent: RecentKeys<u64, ()> = RecentKeys::new(1_024, u64::MAX, |_| 0);
        for k in 0..10_000u64 {
            assert!(recent.insert(k, ()), "{k} is new");
            assert!(!recent.insert(k, ()), "{k} was just remembered");
        }
        assert_eq!(recent.map.len(), 1_024);
        assert_eq!(recent.order.len(), 1_024);
        // The buffer grew by doubling up to the count, never to the next power past it.
        assert!(
            recent.order.capacity() < 2_048,
            "{}",
            recent.order.capacity()
        );
        assert!(!recent.contains(&8_975));
        assert!(recent.contains(&8_976) && recent.contains(&9_999));
    }

    #[test]
    fn values_past_the_byte_bound_push_the_oldest_out() {
        let mut recent: RecentKeys<u64, Vec<u8>> = RecentKeys::new(1_000, 100, |v| v.len() as u64);
        for k in 0..10u64 {
            recent.insert(k, vec![0; 30]);
        }
        assert_eq!(recent.bytes, 90);
        assert!(recent.contains(&7) && !recent.contains(&6));
        // Replacing a value weighs the new one, not both.
        recent.insert(9, vec![0; 10]);
        assert_eq!(recent.bytes, 70);
        assert_eq!(recent.remove(&8).map(|v| v.len()), Some(30));
        assert_eq!(recent.bytes, 40);
    }
}
