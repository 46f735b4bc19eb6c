//! Rate limiting: four algorithms, a store trait, and an in-process store.
//!
//! A [`Policy`] says how many requests a key may make per window and by which
//! algorithm they are counted; a [`RateLimitStore`] keeps the per-key state and
//! answers one [`Decision`] per request. [`LocalStore`] keeps the state in this
//! process, shared by every thread; a store shared by several processes (Redis)
//! implements the same trait.
//!
//! The algorithms, as the seeds describe them:
//!
//! * **token bucket**: a bucket of `burst` tokens refilled continuously at
//!   `limit / window`; each request takes one token. Bursts up to the bucket
//!   size, smooth on average.
//! * **sliding window log**: the time of every admitted request within the
//!   last `window`; exact, one timestamp per admitted request.
//! * **sliding window counter**: counts of the current and the previous
//!   fixed window; the previous one is weighted by the share of it the
//!   sliding window still covers. Nearly exact with two counters.
//! * **fixed window**: one counter per window; up to twice the limit can pass
//!   around a boundary.
//!
//! Nothing here knows HTTP: the caller derives the key from a request and
//! turns the decision into headers.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::future::Future;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::breaker::{Clock, SystemClock};

/// How requests are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Tokens refilled at a constant rate; a request takes one.
    TokenBucket,
    /// Every admitted request's time within the window.
    SlidingWindowLog,
    /// Current and previous window counts, the previous one weighted.
    SlidingWindowCounter,
    /// One count per fixed window.
    FixedWindow,
}

impl Algorithm {
    /// The name used in configuration and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenBucket => "token_bucket",
            Self::SlidingWindowLog => "sliding_window_log",
            Self::SlidingWindowCounter => "sliding_window_counter",
            Self::FixedWindow => "fixed_window",
        }
    }
}

/// A limit: `limit` requests per `window`, counted by `algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Policy {
    /// How requests are counted.
    pub algorithm: Algorithm,
    /// Requests admitted per key and window (the refill per window of a
    /// token bucket).
    pub limit: u64,
    /// Length of the window.
    pub window: Duration,
    /// Token bucket only: the bucket's size; 0 means `limit`.
    pub burst: u64,
}

impl Policy {
    /// `limit` requests per `window` by `algorithm`, with the default burst.
    pub fn new(algorithm: Algorithm, limit: u64, window: Duration) -> Self {
        Self {
            algorithm,
            limit,
            window,
            burst: 0,
        }
    }

    /// The limit advertised to clients (`X-RateLimit-Limit`): the bucket size
    /// of a token bucket, else `limit`.
    pub fn advertised_limit(&self) -> u64 {
        match self.algorithm {
            Algorithm::TokenBucket => self.capacity(),
            _ => self.limit,
        }
    }

    fn capacity(&self) -> u64 {
        if self.burst == 0 {
            self.limit
        } else {
            self.burst
        }
    }

    /// Window length, never zero (a zero window would divide by zero).
    fn window(&self) -> Duration {
        self.window.max(Duration::from_micros(1))
    }
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may pass; if so, it has been counted.
    pub allowed: bool,
    /// The limit, as advertised to clients.
    pub limit: u64,
    /// Requests the key may still make now.
    pub remaining: u64,
    /// Time until the key's allowance is whole again (end of the window; a
    /// full bucket).
    pub reset_after: Duration,
    /// When refused: time until a request may pass. Zero when allowed.
    pub retry_after: Duration,
}

/// Why a store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The shared store is unreachable or answered nonsense.
    #[error("rate-limit store unavailable: {0}")]
    Unavailable(String),
}

/// Where per-key counting state lives.
///
/// `tier` names the limit (one key space per tier); `key` is the
/// caller's key (an IP address, an API key, a user id). A store must count
/// each call exactly once and be safe to call from many threads at once.
pub trait RateLimitStore: Send + Sync {
    /// Counts one request of `key` against `policy` and says whether it passes.
    fn acquire(
        &self,
        tier: u32,
        policy: &Policy,
        key: &[u8],
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send;
}

// === State of one key ===

#[derive(Debug)]
enum State {
    Bucket {
        tokens: f64,
        last: Instant,
    },
    Log(VecDeque<Instant>),
    Counter {
        /// Index of the current fixed window since the store's origin.
        epoch: u64,
        current: u64,
        previous: u64,
    },
}

#[derive(Debug)]
struct Entry {
    state: State,
    last_used: Instant,
    /// The policy's window, for eviction.
    window: Duration,
}

/// The decision of `policy` for a key in `state` at `now`; counts the request
/// if it passes. `origin` aligns fixed windows.
fn decide(policy: &Policy, state: &mut State, now: Instant, origin: Instant) -> Decision {
    let window = policy.window();
    match state {
        State::Bucket { tokens, last } => {
            let capacity = policy.capacity() as f64;
            // Tokens per second; the bucket refills `limit` tokens per window.
            let rate = policy.limit as f64 / window.as_secs_f64();
            let elapsed = now.saturating_duration_since(*last).as_secs_f64();
            *tokens = (*tokens + elapsed * rate).min(capacity);
            *last = now;
            let allowed = *tokens >= 1.0;
            if allowed {
                *tokens -= 1.0;
            }
            let retry_after = if allowed {
                Duration::ZERO
            } else {
                // At least a millisecond: a bucket a rounding error short of
                // a token would otherwise ask for a retry "now".
                secs((1.0 - *tokens) / rate).max(Duration::from_millis(1))
            };
            Decision {
                allowed,
                limit: policy.capacity(),
                remaining: tokens.floor() as u64,
                reset_after: secs((capacity - *tokens) / rate),
                retry_after,
            }
        }
        State::Log(times) => {
            while times
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= window)
            {
                times.pop_front();
            }
            let allowed = (times.len() as u64) < policy.limit;
            if allowed {
                times.push_back(now);
            }
            // The allowance grows back as the oldest entries leave the window.
            let oldest_leaves = times
                .front()
                .map(|t| (*t + window).saturating_duration_since(now))
                .unwrap_or(Duration::ZERO);
            let newest_leaves = times
                .back()
                .map(|t| (*t + window).saturating_duration_since(now))
                .unwrap_or(Duration::ZERO);
            Decision {
                allowed,
                limit: policy.limit,
                remaining: policy.limit.saturating_sub(times.len() as u64),
                reset_after: newest_leaves,
                retry_after: if allowed {
                    Duration::ZERO
                } else {
                    oldest_leaves
                },
            }
        }
        State::Counter {
            epoch,
            current,
            previous,
        } => {
            let since = now.saturating_duration_since(origin);
            let now_epoch = (since.as_nanos() / window.as_nanos()) as u64;
            if now_epoch != *epoch {
                *previous = if now_epoch == *epoch + 1 { *current } else { 0 };
                *current = 0;
                *epoch = now_epoch;
            }
            let into = since.as_nanos() % window.as_nanos();
            let window_end = Duration::from_nanos((window.as_nanos() - into) as u64);
            if policy.algorithm == Algorithm::FixedWindow {
                let allowed = *current < policy.limit;
                if allowed {
                    *current += 1;
                }
                return Decision {
                    allowed,
                    limit: policy.limit,
                    remaining: policy.limit.saturating_sub(*current),
                    reset_after: window_end,
                    retry_after: if allowed { Duration::ZERO } else { window_end },
                };
            }
            // Sliding window counter: the previous window counts for the part
            // of it that the sliding window still overlaps.
            let overlap = 1.0 - into as f64 / window.as_nanos() as f64;
            let estimate = *previous as f64 * overlap + *current as f64;
            let limit = policy.limit as f64;
            let allowed = estimate + 1.0 <= limit;
            if allowed {
                *current += 1;
            }
            let used = estimate + if allowed { 1.0 } else { 0.0 };
            let position = into as f64 / window.as_nanos() as f64;
            let retry_after = if allowed {
                Duration::ZERO
            } else if (*current as f64) + 1.0 <= limit && *previous > 0 {
                // Later in this window the previous one weighs less: solve
                // previous × (1 − p) + current + 1 ≤ limit for the position p.
                let needed = 1.0 - (limit - 1.0 - *current as f64) / *previous as f64;
                secs(window.as_secs_f64() * (needed - position)).max(Duration::from_millis(1))
            } else {
                // This window alone is full. In the next one this window's
                // count is the previous one and fades: solve
                // current × (1 − q) + 1 ≤ limit for the position q.
                let q = (1.0 - (limit - 1.0) / *current as f64).clamp(0.0, 1.0);
                window_end + secs(window.as_secs_f64() * q)
            };
            Decision {
                allowed,
                limit: policy.limit,
                remaining: (limit - used).max(0.0).floor() as u64,
                reset_after: window_end + if *current > 0 { window } else { Duration::ZERO },
                retry_after,
            }
        }
    }
}

fn secs(s: f64) -> Duration {
    if s.is_finite() && s > 0.0 {
        Duration::from_secs_f64(s.min(1e9))
    } else {
        Duration::ZERO
    }
}

fn fresh_state(policy: &Policy, now: Instant, origin: Instant) -> State {
    match policy.algorithm {
        Algorithm::TokenBucket => State::Bucket {
            tokens: policy.capacity() as f64,
            last: now,
        },
        Algorithm::SlidingWindowLog => State::Log(VecDeque::new()),
        Algorithm::SlidingWindowCounter | Algorithm::FixedWindow => State::Counter {
            epoch: (now.saturating_duration_since(origin).as_nanos() / policy.window().as_nanos())
                as u64,
            current: 0,
            previous: 0,
        },
    }
}

// === LocalStore ===

/// Number of independently locked parts of a [`LocalStore`].
const SHARDS: usize = 64;

/// Keys per shard before the first sweep of idle keys; the threshold
/// doubles with the live keys, so sweeping costs O(1) per request amortised.
const FIRST_SWEEP: usize = 1024;

#[derive(Debug, Default)]
struct Shard {
    entries: HashMap<(u32, u64), Entry>,
    sweep_at: usize,
}

/// Rate-limit state in this process, shared by all its threads.
///
/// Keys are kept as 64-bit hashes (SipHash with a per-store random key), so a
/// request never allocates for a known key and clients cannot aim for
/// collisions. Keys idle for two windows are dropped as the map grows.
#[derive(Debug)]
pub struct LocalStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
    origin: Instant,
    keys: AtomicUsize,
}

impl Default for LocalStore {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty store on `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        let origin = clock.now();
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            clock,
            origin,
            keys: AtomicUsize::new(0),
        }
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.keys.load(Ordering::Relaxed)
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`RateLimitStore::acquire`] without the future: the local store never waits.
    pub fn acquire_now(&self, tier: u32, policy: &Policy, key: &[u8]) -> Decision {
        let mut hasher = self.hasher.build_hasher();
        tier.hash(&mut hasher);
        key.hash(&mut hasher);
        let hash = hasher.finish();
        let now = self.clock.now();
        let shard = &self.shards[(hash as usize) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if shard.entries.len() >= shard.sweep_at.max(FIRST_SWEEP) {
            let before = shard.entries.len();
            shard
                .entries
                .retain(|_, e| now.saturating_duration_since(e.last_used) < e.window * 2);
            let after = shard.entries.len();
            shard.sweep_at = (after * 2).max(FIRST_SWEEP);
            self.keys.fetch_sub(before - after, Ordering::Relaxed);
        }
        let origin = self.origin;
        let entry = shard.entries.entry((tier, hash)).or_insert_with(|| {
            self.keys.fetch_add(1, Ordering::Relaxed);
            Entry {
                state: fresh_state(policy, now, origin),
                last_used: now,
                window: policy.window(),
            }
        });
        entry.last_used = now;
        decide(policy, &mut entry.state, now, origin)
    }
}

impl RateLimitStore for LocalStore {
    fn acquire(
        &self,
        tier: u32,
        policy: &Policy,
        key: &[u8],
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send {
        std::future::ready(Ok(self.acquire_now(tier, policy, key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::ManualClock;
    use proptest::prelude::*;

    const ALL: [Algorithm; 4] = [
        Algorithm::TokenBucket,
        Algorithm::SlidingWindowLog,
        Algorithm::SlidingWindowCounter,
        Algorithm::FixedWindow,
    ];

    fn store() -> (LocalStore, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        (LocalStore::with_clock(clock.clone()), clock)
    }

    fn admitted(store: &LocalStore, policy: &Policy, key: &[u8], n: usize) -> usize {
        (0..n)
            .filter(|_| store.acquire_now(0, policy, key).allowed)
            .count()
    }

    #[test]
    fn every_algorithm_admits_exactly_the_limit_at_one_instant() {
        for algorithm in ALL {
            let (store, _) = store();
            let policy = Policy::new(algorithm, 10, Duration::from_secs(60));
            assert_eq!(admitted(&store, &policy, b"k", 25), 10, "{algorithm:?}");
            let refused = store.acquire_now(0, &policy, b"k");
            assert!(!refused.allowed);
            assert_eq!(refused.remaining, 0, "{algorithm:?}");
            assert!(refused.retry_after > Duration::ZERO, "{algorithm:?}");
            // The sliding counter may wait into the next window as the full
            // one fades; no algorithm asks for more than two windows.
            assert!(
                refused.retry_after <= Duration::from_secs(120),
                "{algorithm:?}"
            );
            // Other keys and other tiers are counted apart.
            assert!(store.acquire_now(0, &policy, b"other").allowed);
            assert!(store.acquire_now(1, &policy, b"k").allowed);
        }
    }

    #[test]
    fn remaining_counts_down() {
        for algorithm in ALL {
            let (store, _) = store();
            let policy = Policy::new(algorithm, 3, Duration::from_secs(10));
            let left: Vec<u64> = (0..4)
                .map(|_| store.acquire_now(0, &policy, b"k").remaining)
                .collect();
            assert_eq!(left, [2, 1, 0, 0], "{algorithm:?}");
        }
    }

    #[test]
    fn token_bucket_refills_at_the_rate_as_in_the_seed() {
        // The seed's example: 10 tokens, 2 per second.
        let (store, clock) = store();
        let policy = Policy {
            algorithm: Algorithm::TokenBucket,
            limit: 2,
            window: Duration::from_secs(1),
            burst: 10,
        };
        assert_eq!(admitted(&store, &policy, b"a", 5), 5);
        clock.advance(Duration::from_secs(1));
        // 5 left + 2 refilled = 7 of 8 pass.
        assert_eq!(admitted(&store, &policy, b"a", 8), 7);
        clock.advance(Duration::from_secs(1));
        assert_eq!(admitted(&store, &policy, b"a", 3), 2);
        let refused = store.acquire_now(0, &policy, b"a");
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        assert_eq!(refused.limit, 10);
    }

    #[test]
    fn sliding_log_lets_requests_back_as_old_ones_leave() {
        // The seed's example: 5 per minute.
        let (store, clock) = store();
        let policy = Policy::new(Algorithm::SlidingWindowLog, 5, Duration::from_secs(60));
        for at in [15, 7, 23, 6, 7] {
            clock.advance(Duration::from_secs(at));
            assert!(store.acquire_now(0, &policy, b"a").allowed);
        }
        // At 0:58 the window holds 5 requests: refused until 0:15's leaves at 1:15.
        let refused = store.acquire_now(0, &policy, b"a");
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_secs(17));
        clock.advance(Duration::from_secs(17));
        assert!(store.acquire_now(0, &policy, b"a").allowed);
    }

    #[test]
    fn fixed_window_resets_at_the_boundary_and_allows_the_double_burst() {
        let (store, clock) = store();
        let policy = Policy::new(Algorithm::FixedWindow, 100, Duration::from_secs(60));
        clock.advance(Duration::from_secs(59));
        assert_eq!(admitted(&store, &policy, b"a", 100), 100);
        let refused = store.acquire_now(0, &policy, b"a");
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        clock.advance(Duration::from_secs(2));
        // The boundary problem: 200 requests within two seconds.
        assert_eq!(admitted(&store, &policy, b"a", 150), 100);
    }

    #[test]
    fn sliding_counter_smooths_the_boundary() {
        let (store, clock) = store();
        let policy = Policy::new(
            Algorithm::SlidingWindowCounter,
            100,
            Duration::from_secs(60),
        );
        clock.advance(Duration::from_secs(59));
        assert_eq!(admitted(&store, &policy, b"a", 100), 100);
        // One second into the next window the previous one still weighs 59/60.
        clock.advance(Duration::from_secs(2));
        let passed = admitted(&store, &policy, b"a", 100);
        assert!(passed <= 2, "{passed} passed right after the boundary");
        // Half a window later, half of the previous window's count has gone.
        clock.advance(Duration::from_secs(29));
        let passed = admitted(&store, &policy, b"a", 100);
        assert!((48..=52).contains(&passed), "{passed}");
    }

    #[test]
    fn idle_keys_are_swept() {
        let (store, clock) = store();
        let policy = Policy::new(Algorithm::FixedWindow, 5, Duration::from_secs(1));
        for i in 0..(SHARDS * FIRST_SWEEP * 2) as u32 {
            store.acquire_now(0, &policy, &i.to_le_bytes());
        }
        let peak = store.len();
        clock.advance(Duration::from_secs(5));
        for i in 0..(SHARDS * FIRST_SWEEP * 2) as u32 {
            store.acquire_now(1, &policy, &i.to_le_bytes());
        }
        assert!(
            store.len() < peak * 2,
            "{} keys after sweeping, peak {peak}",
            store.len()
        );
    }

    #[test]
    fn concurrent_callers_share_one_count() {
        for algorithm in ALL {
            let (store, _) = store();
            let store = Arc::new(store);
            let policy = Policy::new(algorithm, 1000, Duration::from_secs(60));
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let store = store.clone();
                    std::thread::spawn(move || admitted(&store, &policy, b"shared", 500))
                })
                .collect();
            let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
            assert_eq!(total, 1000, "{algorithm:?}");
        }
    }

    proptest! {
        /// Over any window of the sliding log, never more than the limit pass;
        /// the other algorithms never admit more than twice the limit in any
        /// window (their worst case, around a window boundary or a full bucket
        /// refilling).
        #[test]
        fn no_algorithm_admits_more_than_its_bound(
            gaps in proptest::collection::vec(0u64..3_000, 1..400),
            limit in 1u64..20,
            algorithm in 0usize..4,
        ) {
            let algorithm = ALL[algorithm];
            let (store, clock) = store();
            let window = Duration::from_secs(10);
            let policy = Policy::new(algorithm, limit, window);
            let mut admitted_at = Vec::new();
            let mut t = Duration::ZERO;
            for gap in gaps {
                clock.advance(Duration::from_millis(gap));
                t += Duration::from_millis(gap);
                let d = store.acquire_now(0, &policy, b"k");
                prop_assert!(d.remaining <= d.limit);
                if d.allowed {
                    prop_assert_eq!(d.retry_after, Duration::ZERO);
                    admitted_at.push(t);
                } else {
                    prop_assert!(d.retry_after > Duration::ZERO);
                }
            }
            let bound = match algorithm {
                Algorithm::SlidingWindowLog => limit,
                // The counter assumes the previous window's requests were
                // spread evenly; bunched at its end they count for less.
                _ => limit * 2,
            };
            for (i, start) in admitted_at.iter().enumerate() {
                let within = admitted_at[i..].iter().take_while(|t| **t < *start + window).count();
                prop_assert!(within as u64 <= bound, "{} in one window, bound {}", within, bound);
            }
        }
    }
}
