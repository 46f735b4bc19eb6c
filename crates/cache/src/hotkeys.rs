//! The hottest keys, approximately: a space-saving summary (Metwally et al.)
//! of `k` counters, so that a celebrity key shows up in metrics without
//! counting every key.
//!
//! Space-saving keeps `k` (key, count) pairs; an unseen key takes over the
//! pair with the smallest count and inherits that count plus one, so counts
//! overestimate by at most the evicted minimum and every key more frequent
//! than `1/k` of the traffic is guaranteed to be held. Counts are halved every
//! [`DECAY_EVERY`] observations so the report shows what is hot now.
//!
//! Lookups record with `try_lock`: when another thread holds the summary the
//! observation is skipped rather than waited for, so the hot path never blocks
//! here; under contention the counts are a sample, which is all a top-K needs.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::key::Key;

/// Observations between two halvings of every count.
const DECAY_EVERY: u64 = 100_000;

#[derive(Debug)]
pub(crate) struct HotKeys {
    inner: Mutex<SpaceSaving>,
}

#[derive(Debug)]
struct SpaceSaving {
    capacity: usize,
    counts: Vec<(Key, u64)>,
    index: HashMap<Key, usize>,
    since_decay: u64,
}

impl HotKeys {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(SpaceSaving {
                capacity: capacity.max(1),
                counts: Vec::with_capacity(capacity),
                index: HashMap::with_capacity(capacity),
                since_decay: 0,
            }),
        }
    }

    /// Counts one lookup of `key`, unless another thread is counting.
    pub(crate) fn observe(&self, key: &Key) {
        if let Ok(mut s) = self.inner.try_lock() {
            s.observe(key);
        }
    }

    /// The `n` hottest keys as (`resource:id`, approximate recent lookups),
    /// hottest first.
    pub(crate) fn top(&self, n: usize) -> Vec<(String, u64)> {
        let s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = s.counts.iter().filter(|(_, c)| *c > 0).collect();
        all.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| a.0.logical().cmp(&b.0.logical()))
        });
        all.into_iter()
            .take(n)
            .map(|(k, c)| (k.logical(), *c))
            .collect()
    }
}

impl SpaceSaving {
    fn observe(&mut self, key: &Key) {
        self.since_decay += 1;
        if self.since_decay >= DECAY_EVERY {
            self.decay();
        }
        if let Some(&i) = self.index.get(key) {
            self.counts[i].1 += 1;
            return;
        }
        if self.counts.len() < self.capacity {
            self.index.insert(key.clone(), self.counts.len());
            self.counts.push((key.clone(), 1));
            return;
        }
        // Replace the least counted key; the newcomer inherits its count.
        let (i, _) = self
            .counts
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, c))| *c)
            .expect("capacity is at least one");
        let min = self.counts[i].1;
        let old = std::mem::replace(&mut self.counts[i], (key.clone(), min + 1));
        self.index.remove(&old.0);
        self.index.insert(key.clone(), i);
    }

    fn decay(&mut self) {
        self.since_decay = 0;
        for (_, c) in &mut self.counts {
            *c /= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Id;

    fn key(id: i64) -> Key {
        Key::new("users", Id::Int(id))
    }

    #[test]
    fn a_celebrity_key_tops_the_report() {
        // Space-saving holds every key seen more than 1/k of the time: 10%
        // is well above 1/64.
        let hot = HotKeys::new(64);
        // 10,000 lookups: every tenth is user 42, the rest spread over 5,000 keys.
        for i in 0..10_000i64 {
            if i % 10 == 0 {
                hot.observe(&key(42));
            } else {
                hot.observe(&key(1_000 + i % 5_000));
            }
        }
        let top = hot.top(3);
        assert_eq!(top[0].0, "users:42");
        assert!(top[0].1 >= 1_000, "{top:?}");
    }

    #[test]
    fn counts_never_underestimate_a_held_key() {
        let hot = HotKeys::new(4);
        for round in 0..50 {
            hot.observe(&key(1));
            hot.observe(&key(1));
            hot.observe(&key(100 + round));
        }
        let top = hot.top(1);
        assert_eq!(top[0].0, "users:1");
        assert!(top[0].1 >= 100);
    }

    #[test]
    fn decay_halves_old_counts() {
        let mut s = SpaceSaving {
            capacity: 2,
            counts: Vec::new(),
            index: HashMap::new(),
            since_decay: 0,
        };
        for _ in 0..10 {
            s.observe(&key(1));
        }
        s.decay();
        assert_eq!(s.counts[0].1, 5);
    }
}
