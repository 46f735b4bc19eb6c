//! The cache policy simulator behind `scalestack plan cache`: replays a key
//! trace through LRU, LFU, FIFO, random, TTL-only and TinyLFU caches of
//! given capacities and counts hits — the seeds' eviction-policy table,
//! made measurable on your own access pattern.
//!
//! Capacities are in entries. Each policy is a plain data structure that
//! answers "was this key cached?" and then admits or evicts by its rule;
//! nothing here reads files or clocks (the trace carries its own times,
//! which only the TTL policy uses).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

/// The policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// Evicts the least recently used entry.
    Lru,
    /// Evicts the least frequently used entry (ties: the least recent).
    Lfu,
    /// Evicts the oldest insertion, whatever its use.
    Fifo,
    /// Evicts a random entry.
    Random,
    /// No capacity bound: entries expire a fixed time after they were
    /// loaded. Its capacity column is the peak number of live entries.
    TtlOnly,
    /// W-TinyLFU, the policy of Caffeine and moka (the project's L1): a
    /// small LRU window, then admission into a segmented LRU only for keys
    /// seen more often than the entry they would evict.
    TinyLfu,
}

impl PolicyKind {
    /// Every policy, in table order.
    pub const ALL: [Self; 6] = [
        Self::Lru,
        Self::Lfu,
        Self::Fifo,
        Self::Random,
        Self::TtlOnly,
        Self::TinyLfu,
    ];

    /// Its name in tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Lru => "lru",
            Self::Lfu => "lfu",
            Self::Fifo => "fifo",
            Self::Random => "random",
            Self::TtlOnly => "ttl",
            Self::TinyLfu => "tinylfu",
        }
    }
}

impl std::str::FromStr for PolicyKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!(
                    "unknown policy `{s}`; expected one of lru, lfu, fifo, random, ttl, tinylfu"
                )
            })
    }
}

/// One access of a trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Access {
    /// Seconds since the start of the trace.
    pub at: f64,
    /// The key.
    pub key: u64,
}

/// One row of the results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimResult {
    /// The policy.
    pub policy: PolicyKind,
    /// Capacity in entries (TTL-only: the peak number of live entries).
    pub capacity: u64,
    /// Accesses replayed.
    pub accesses: u64,
    /// Accesses found in the cache.
    pub hits: u64,
    /// `hits / accesses`.
    pub hit_ratio: f64,
}

/// A cache under simulation.
trait Policy {
    /// Looks `key` up at time `at`; loads it on a miss. True on a hit.
    fn access(&mut self, key: u64, at: f64) -> bool;
}

/// Replays `trace` through every policy in `policies` at every capacity in
/// `capacities` (TTL-only runs once, whatever the capacities). `ttl_s` is
/// the TTL-only policy's time to live; `seed` seeds the random policy.
pub fn simulate(
    trace: &[Access],
    policies: &[PolicyKind],
    capacities: &[u64],
    ttl_s: f64,
    seed: u64,
) -> Vec<SimResult> {
    let mut results = Vec::new();
    for &policy in policies {
        let caps: Vec<u64> = if policy == PolicyKind::TtlOnly {
            vec![0]
        } else {
            capacities.to_vec()
        };
        for capacity in caps {
            let (hits, reported) = match policy {
                PolicyKind::Lru => (replay(trace, &mut Lru::new(capacity)), capacity),
                PolicyKind::Lfu => (replay(trace, &mut Lfu::new(capacity)), capacity),
                PolicyKind::Fifo => (replay(trace, &mut Fifo::new(capacity)), capacity),
                PolicyKind::Random => (
                    replay(trace, &mut RandomEvict::new(capacity, seed)),
                    capacity,
                ),
                PolicyKind::TinyLfu => (replay(trace, &mut TinyLfu::new(capacity)), capacity),
                PolicyKind::TtlOnly => {
                    let mut ttl = TtlOnly::new(ttl_s);
                    let hits = replay(trace, &mut ttl);
                    (hits, ttl.peak)
                }
            };
            let accesses = trace.len() as u64;
            results.push(SimResult {
                policy,
                capacity: reported,
                accesses,
                hits,
                hit_ratio: if accesses > 0 {
                    hits as f64 / accesses as f64
                } else {
                    0.0
                },
            });
        }
    }
    results
}

fn replay(trace: &[Access], policy: &mut dyn Policy) -> u64 {
    trace.iter().filter(|a| policy.access(a.key, a.at)).count() as u64
}

// === An intrusive LRU list over a slab ===

const NIL: usize = usize::MAX;

/// Keys in recency order (front = most recent), O(1) for every operation.
#[derive(Debug, Default)]
struct LruList {
    keys: Vec<u64>,
    prev: Vec<usize>,
    next: Vec<usize>,
    free: Vec<usize>,
    head: usize,
    tail: usize,
    index: HashMap<u64, usize>,
}

impl LruList {
    fn new() -> Self {
        Self {
            head: NIL,
            tail: NIL,
            ..Self::default()
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn contains(&self, key: u64) -> bool {
        self.index.contains_key(&key)
    }

    fn unlink(&mut self, i: usize) {
        let (p, n) = (self.prev[i], self.next[i]);
        if p == NIL {
            self.head = n
        } else {
            self.next[p] = n
        }
        if n == NIL {
            self.tail = p
        } else {
            self.prev[n] = p
        }
    }

    fn link_front(&mut self, i: usize) {
        self.prev[i] = NIL;
        self.next[i] = self.head;
        if self.head != NIL {
            self.prev[self.head] = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    fn push_front(&mut self, key: u64) {
        let i = match self.free.pop() {
            Some(i) => {
                self.keys[i] = key;
                i
            }
            None => {
                self.keys.push(key);
                self.prev.push(NIL);
                self.next.push(NIL);
                self.keys.len() - 1
            }
        };
        self.link_front(i);
        self.index.insert(key, i);
    }

    /// Moves `key` to the front; false if absent.
    fn touch(&mut self, key: u64) -> bool {
        let Some(&i) = self.index.get(&key) else {
            return false;
        };
        if self.head != i {
            self.unlink(i);
            self.link_front(i);
        }
        true
    }

    fn remove(&mut self, key: u64) -> bool {
        let Some(i) = self.index.remove(&key) else {
            return false;
        };
        self.unlink(i);
        self.free.push(i);
        true
    }

    fn back(&self) -> Option<u64> {
        (self.tail != NIL).then(|| self.keys[self.tail])
    }

    fn pop_back(&mut self) -> Option<u64> {
        let key = self.back()?;
        self.remove(key);
        Some(key)
    }
}

// === The policies ===

struct Lru {
    capacity: usize,
    list: LruList,
}

impl Lru {
    fn new(capacity: u64) -> Self {
        Self {
            capacity: capacity as usize,
            list: LruList::new(),
        }
    }
}

impl Policy for Lru {
    fn access(&mut self, key: u64, _at: f64) -> bool {
        if self.list.touch(key) {
            return true;
        }
        if self.capacity > 0 {
            if self.list.len() >= self.capacity {
                self.list.pop_back();
            }
            self.list.push_front(key);
        }
        false
    }
}

struct Lfu {
    capacity: usize,
    /// key → (frequency, last use).
    entries: HashMap<u64, (u64, u64)>,
    /// (frequency, last use, key), least first.
    order: BTreeSet<(u64, u64, u64)>,
    clock: u64,
}

impl Lfu {
    fn new(capacity: u64) -> Self {
        Self {
            capacity: capacity as usize,
            entries: HashMap::new(),
            order: BTreeSet::new(),
            clock: 0,
        }
    }
}

impl Policy for Lfu {
    fn access(&mut self, key: u64, _at: f64) -> bool {
        self.clock += 1;
        if let Some(entry) = self.entries.get_mut(&key) {
            self.order.remove(&(entry.0, entry.1, key));
            *entry = (entry.0 + 1, self.clock);
            self.order.insert((entry.0, entry.1, key));
            return true;
        }
        if self.capacity > 0 {
            if self.entries.len() >= self.capacity
                && let Some(victim) = self.order.pop_first()
            {
                self.entries.remove(&victim.2);
            }
            self.entries.insert(key, (1, self.clock));
            self.order.insert((1, self.clock, key));
        }
        false
    }
}

struct Fifo {
    capacity: usize,
    queue: VecDeque<u64>,
    present: HashSet<u64>,
}

impl Fifo {
    fn new(capacity: u64) -> Self {
        Self {
            capacity: capacity as usize,
            queue: VecDeque::new(),
            present: HashSet::new(),
        }
    }
}

impl Policy for Fifo {
    fn access(&mut self, key: u64, _at: f64) -> bool {
        if self.present.contains(&key) {
            return true;
        }
        if self.capacity > 0 {
            if self.queue.len() >= self.capacity
                && let Some(old) = self.queue.pop_front()
            {
                self.present.remove(&old);
            }
            self.queue.push_back(key);
            self.present.insert(key);
        }
        false
    }
}

struct RandomEvict {
    capacity: usize,
    keys: Vec<u64>,
    index: HashMap<u64, usize>,
    /// xorshift64*: deterministic, and the simulator needs no more.
    state: u64,
}

impl RandomEvict {
    fn new(capacity: u64, seed: u64) -> Self {
        Self {
            capacity: capacity as usize,
            keys: Vec::new(),
            index: HashMap::new(),
            state: seed | 1,
        }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

impl Policy for RandomEvict {
    fn access(&mut self, key: u64, _at: f64) -> bool {
        if self.index.contains_key(&key) {
            return true;
        }
        if self.capacity > 0 {
            if self.keys.len() >= self.capacity {
                let victim = (self.next() % self.keys.len() as u64) as usize;
                let old = self.keys.swap_remove(victim);
                self.index.remove(&old);
                if victim < self.keys.len() {
                    self.index.insert(self.keys[victim], victim);
                }
            }
            self.index.insert(key, self.keys.len());
            self.keys.push(key);
        }
        false
    }
}

struct TtlOnly {
    ttl: f64,
    expires: HashMap<u64, f64>,
    peak: u64,
    last_sweep: f64,
}

impl TtlOnly {
    fn new(ttl: f64) -> Self {
        Self {
            ttl,
            expires: HashMap::new(),
            peak: 0,
            last_sweep: 0.0,
        }
    }
}

impl Policy for TtlOnly {
    fn access(&mut self, key: u64, at: f64) -> bool {
        // Expired entries are dropped once per TTL, which bounds both the
        // memory and the cost of sweeping.
        if at - self.last_sweep >= self.ttl {
            self.expires.retain(|_, e| *e > at);
            self.last_sweep = at;
        }
        let hit = self.expires.get(&key).is_some_and(|&e| e > at);
        if !hit {
            self.expires.insert(key, at + self.ttl);
        }
        let live = self.expires.len() as u64;
        self.peak = self.peak.max(live);
        hit
    }
}

/// A count-min sketch of 4-bit counters that halves itself every
/// `sample` increments, so that frequency means *recent* frequency.
struct FrequencySketch {
    rows: [Vec<u8>; 4],
    mask: usize,
    additions: u64,
    sample: u64,
}

impl FrequencySketch {
    fn new(capacity: u64) -> Self {
        let width = (capacity.max(16) as usize).next_power_of_two();
        Self {
            rows: std::array::from_fn(|_| vec![0; width]),
            mask: width - 1,
            additions: 0,
            sample: capacity.max(1) * 10,
        }
    }

    fn slot(&self, key: u64, row: usize) -> usize {
        const SEEDS: [u64; 4] = [
            0x9e37_79b9_7f4a_7c15,
            0xc2b2_ae3d_27d4_eb4f,
            0x1656_67b1_9e37_79f9,
            0x27d4_eb2f_1656_67c5,
        ];
        let mut h = key
            .wrapping_add(SEEDS[row])
            .wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        (h as usize) & self.mask
    }

    fn frequency(&self, key: u64) -> u8 {
        (0..4)
            .map(|r| self.rows[r][self.slot(key, r)])
            .min()
            .unwrap_or(0)
    }

    fn increment(&mut self, key: u64) {
        for r in 0..4 {
            let s = self.slot(key, r);
            let c = &mut self.rows[r][s];
            *c = (*c + 1).min(15);
        }
        self.additions += 1;
        if self.additions >= self.sample {
            for row in &mut self.rows {
                for c in row.iter_mut() {
                    *c /= 2;
                }
            }
            self.additions /= 2;
        }
    }
}

/// W-TinyLFU: 1% window LRU, 99% main segmented LRU (80% protected, 20%
/// probation), admission by the frequency sketch.
struct TinyLfu {
    window_cap: usize,
    protected_cap: usize,
    main_cap: usize,
    window: LruList,
    probation: LruList,
    protected: LruList,
    sketch: FrequencySketch,
}

impl TinyLfu {
    fn new(capacity: u64) -> Self {
        let capacity = capacity as usize;
        let window_cap = if capacity == 0 {
            0
        } else {
            (capacity / 100).max(1)
        };
        let main_cap = capacity - window_cap;
        Self {
            window_cap,
            protected_cap: main_cap * 8 / 10,
            main_cap,
            window: LruList::new(),
            probation: LruList::new(),
            protected: LruList::new(),
            sketch: FrequencySketch::new(capacity as u64),
        }
    }

    /// A key leaving the window competes with the main cache's victim.
    fn admit(&mut self, candidate: u64) {
        if self.main_cap == 0 {
            return;
        }
        if self.probation.len() + self.protected.len() < self.main_cap {
            self.probation.push_front(candidate);
            return;
        }
        let victim = self.probation.back().or_else(|| self.protected.back());
        if let Some(victim) = victim
            && self.sketch.frequency(candidate) > self.sketch.frequency(victim)
        {
            if !self.probation.remove(victim) {
                self.protected.remove(victim);
            }
            self.probation.push_front(candidate);
        }
    }
}

impl Policy for TinyLfu {
    fn access(&mut self, key: u64, _at: f64) -> bool {
        self.sketch.increment(key);
        if self.window.touch(key) || self.protected.touch(key) {
            return true;
        }
        if self.probation.contains(key) {
            // A second hit promotes to protected; protected's least recent
            // drops back to probation.
            self.probation.remove(key);
            self.protected.push_front(key);
            if self.protected.len() > self.protected_cap
                && let Some(demoted) = self.protected.pop_back()
            {
                self.probation.push_front(demoted);
            }
            return true;
        }
        if self.window_cap == 0 {
            return false;
        }
        self.window.push_front(key);
        if self.window.len() > self.window_cap
            && let Some(candidate) = self.window.pop_back()
        {
            self.admit(candidate);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(keys: &[u64]) -> Vec<Access> {
        keys.iter()
            .enumerate()
            .map(|(i, &key)| Access { at: i as f64, key })
            .collect()
    }

    fn hits(policy: &mut dyn Policy, keys: &[u64]) -> Vec<bool> {
        trace(keys)
            .iter()
            .map(|a| policy.access(a.key, a.at))
            .collect()
    }

    #[test]
    fn lru_fifo_and_lfu_differ_exactly_where_they_should() {
        // Capacity 2: A B A C A B.
        let keys = [1, 2, 1, 3, 1, 2];
        // LRU keeps A (recently used) and evicts B for C; B then misses.
        assert_eq!(
            hits(&mut Lru::new(2), &keys),
            [false, false, true, false, true, false]
        );
        // FIFO evicts A (oldest insert) for C, so A misses again.
        assert_eq!(
            hits(&mut Fifo::new(2), &keys),
            [false, false, true, false, false, false]
        );
        // LFU evicts B (used once) for C, keeps A.
        assert_eq!(
            hits(&mut Lfu::new(2), &keys),
            [false, false, true, false, true, false]
        );
        assert_eq!(hits(&mut Lru::new(0), &keys), [false; 6]);
    }

    #[test]
    fn ttl_only_expires_by_time_not_by_size() {
        let mut ttl = TtlOnly::new(2.5);
        // At t = 0..5: key 1 at 0, 1, 2 hits, at 3 it has expired (loaded
        // at 0, lives until 2.5), at 4 it hits again.
        assert_eq!(
            hits(&mut ttl, &[1, 1, 1, 1, 1]),
            [false, true, true, false, true]
        );
        assert_eq!(ttl.peak, 1);
    }

    #[test]
    fn random_eviction_is_bounded_and_deterministic() {
        let keys: Vec<u64> = (0..1000).map(|i| i % 37).collect();
        let a = hits(&mut RandomEvict::new(10, 5), &keys);
        let b = hits(&mut RandomEvict::new(10, 5), &keys);
        assert_eq!(a, b);
        let mut r = RandomEvict::new(10, 5);
        hits(&mut r, &keys);
        assert_eq!(r.keys.len(), 10);
        assert_eq!(r.index.len(), 10);
        assert!(r.keys.iter().enumerate().all(|(i, k)| r.index[k] == i));
    }

    #[test]
    fn tinylfu_resists_a_scan_that_flushes_lru() {
        // A hot set of 50 keys used over and over, interrupted by one scan
        // of 10,000 keys never seen again.
        let mut keys = Vec::new();
        for _ in 0..20 {
            keys.extend(0..50u64);
        }
        keys.extend(1_000..11_000u64);
        for _ in 0..20 {
            keys.extend(0..50u64);
        }
        let t = trace(&keys);
        let r = simulate(&t, &[PolicyKind::Lru, PolicyKind::TinyLfu], &[100], 1.0, 1);
        let (lru, tiny) = (r[0].hits, r[1].hits);
        // Both keep the hot set before the scan; after it LRU misses all 50
        // once more, TinyLFU refused to admit the scan.
        assert!(tiny > lru, "tinylfu {tiny} vs lru {lru}");
        assert!(tiny >= 19 * 50 + 19 * 50, "{tiny}");
    }

    #[test]
    fn every_policy_stays_within_its_capacity() {
        let keys: Vec<u64> = (0..20_000u64).map(|i| (i * 7919) % 3000).collect();
        let mut lru = Lru::new(100);
        let mut lfu = Lfu::new(100);
        let mut fifo = Fifo::new(100);
        let mut tiny = TinyLfu::new(100);
        for (i, &k) in keys.iter().enumerate() {
            lru.access(k, i as f64);
            lfu.access(k, i as f64);
            fifo.access(k, i as f64);
            tiny.access(k, i as f64);
            assert!(lru.list.len() <= 100);
            assert!(lfu.entries.len() <= 100 && lfu.order.len() == lfu.entries.len());
            assert!(fifo.queue.len() <= 100 && fifo.present.len() == fifo.queue.len());
            assert!(tiny.window.len() + tiny.probation.len() + tiny.protected.len() <= 100);
        }
    }

    #[test]
    fn policies_parse_by_name() {
        for p in PolicyKind::ALL {
            assert_eq!(p.name().parse::<PolicyKind>().unwrap(), p);
        }
        assert!("arc".parse::<PolicyKind>().unwrap_err().contains("tinylfu"));
    }
}

#[cfg(test)]
mod model {
    //! The O(1) policies against obviously correct O(n) reference models.

    use proptest::prelude::*;

    use super::*;

    /// LRU as a vector, most recent first.
    fn reference_lru(capacity: usize, keys: &[u64]) -> Vec<bool> {
        let mut cache: Vec<u64> = Vec::new();
        keys.iter()
            .map(|&k| {
                let hit = cache.iter().position(|&c| c == k).map(|i| cache.remove(i));
                if hit.is_none() && cache.len() == capacity && capacity > 0 {
                    cache.pop();
                }
                if capacity > 0 {
                    cache.insert(0, k);
                }
                hit.is_some()
            })
            .collect()
    }

    /// FIFO as a vector, oldest first.
    fn reference_fifo(capacity: usize, keys: &[u64]) -> Vec<bool> {
        let mut cache: Vec<u64> = Vec::new();
        keys.iter()
            .map(|&k| {
                if cache.contains(&k) {
                    return true;
                }
                if capacity > 0 {
                    if cache.len() == capacity {
                        cache.remove(0);
                    }
                    cache.push(k);
                }
                false
            })
            .collect()
    }

    proptest! {
        #[test]
        fn lru_matches_its_reference(capacity in 0usize..8, keys in prop::collection::vec(0u64..12, 0..200)) {
            let mut lru = Lru::new(capacity as u64);
            let got: Vec<bool> = keys.iter().map(|&k| lru.access(k, 0.0)).collect();
            prop_assert_eq!(got, reference_lru(capacity, &keys));
        }

        #[test]
        fn fifo_matches_its_reference(capacity in 0usize..8, keys in prop::collection::vec(0u64..12, 0..200)) {
            let mut fifo = Fifo::new(capacity as u64);
            let got: Vec<bool> = keys.iter().map(|&k| fifo.access(k, 0.0)).collect();
            prop_assert_eq!(got, reference_fifo(capacity, &keys));
        }

        #[test]
        fn tinylfu_never_exceeds_capacity_nor_invents_hits(capacity in 1u64..50, keys in prop::collection::vec(0u64..100, 0..500)) {
            let mut tiny = TinyLfu::new(capacity);
            let mut seen = std::collections::HashSet::new();
            for &k in &keys {
                let hit = tiny.access(k, 0.0);
                prop_assert!(!hit || seen.contains(&k), "a hit on a key never seen");
                seen.insert(k);
                let size = tiny.window.len() + tiny.probation.len() + tiny.protected.len();
                prop_assert!(size as u64 <= capacity);
            }
        }
    }
}
