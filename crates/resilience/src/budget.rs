//! A retry budget: retries may be at most a share of the requests.
//!
//! Retrying each failed request a few times is harmless while failures are
//! rare and ruinous during an outage: every request becomes several, exactly
//! when the upstreams can least take them. A budget caps retries at
//! `ratio × requests` over a sliding window, plus a small constant allowance
//! (`min_per_second`) so that a quiet service can still retry (the design of
//! Finagle's and linkerd's retry budgets).
//!
//! Counting is lock-free: a ring of per-second buckets of atomic counters.
//! Two threads that roll a bucket over at the same moment may lose a count
//! or two; a budget is a safety valve, not an invoice.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::breaker::{Clock, SystemClock};

/// Seconds covered by the window (one bucket per second).
const BUCKETS: usize = 10;

#[derive(Debug, Default)]
struct Bucket {
    /// Which second since the budget's origin the counts belong to.
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// Retries allowed as a share of requests over the last ten seconds.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: u32,
    buckets: [Bucket; BUCKETS],
    clock: Arc<dyn Clock>,
    origin: Instant,
}

impl RetryBudget {
    /// A budget of `ratio` retries per request (0.2: one retry per five
    /// requests) plus `min_per_second` retries per second, on the system clock.
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        Self::with_clock(ratio, min_per_second, Arc::new(SystemClock))
    }

    /// The same on `clock`.
    pub fn with_clock(ratio: f64, min_per_second: u32, clock: Arc<dyn Clock>) -> Self {
        let origin = clock.now();
        Self {
            ratio: ratio.clamp(0.0, 1.0),
            min_per_second,
            // Second 0 is the current one; the ring starts empty.
            buckets: Default::default(),
            clock,
            origin,
        }
    }

    /// The length of the window over which requests and retries are counted.
    pub fn window() -> Duration {
        Duration::from_secs(BUCKETS as u64)
    }

    fn second(&self) -> u64 {
        self.clock
            .now()
            .saturating_duration_since(self.origin)
            .as_secs()
    }

    /// The bucket of `second`, emptied first if it still holds an older second.
    fn bucket(&self, second: u64) -> &Bucket {
        let bucket = &self.buckets[(second % BUCKETS as u64) as usize];
        let held = bucket.second.load(Ordering::Acquire);
        if held != second
            && bucket
                .second
                .compare_exchange(held, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            bucket.requests.store(0, Ordering::Release);
            bucket.retries.store(0, Ordering::Release);
        }
        bucket
    }

    /// `(requests, retries)` over the window ending now.
    fn totals(&self, now: u64) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|b| {
                let second = b.second.load(Ordering::Acquire);
                second <= now && now - second < BUCKETS as u64
            })
            .fold((0, 0), |(requests, retries), b| {
                (
                    requests + b.requests.load(Ordering::Relaxed),
                    retries + b.retries.load(Ordering::Relaxed),
                )
            })
    }

    /// Counts one request (its first attempt).
    pub fn deposit(&self) {
        let second = self.second();
        self.bucket(second).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Asks for one retry: `true` (and counted) if the budget allows it.
    pub fn try_withdraw(&self) -> bool {
        let second = self.second();
        let (requests, retries) = self.totals(second);
        let allowance =
            self.ratio * requests as f64 + f64::from(self.min_per_second) * BUCKETS as f64;
        if (retries + 1) as f64 > allowance {
            return false;
        }
        self.bucket(second).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::ManualClock;

    fn budget(ratio: f64, min: u32) -> (RetryBudget, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        (RetryBudget::with_clock(ratio, min, clock.clone()), clock)
    }

    fn withdraw(b: &RetryBudget, n: usize) -> usize {
        (0..n).filter(|_| b.try_withdraw()).count()
    }

    #[test]
    fn retries_are_capped_at_the_ratio() {
        let (b, _) = budget(0.2, 0);
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(withdraw(&b, 100), 20);
    }

    #[test]
    fn the_minimum_allows_retries_without_traffic() {
        let (b, _) = budget(0.2, 1);
        // One per second over the ten-second window.
        assert_eq!(withdraw(&b, 50), 10);
    }

    #[test]
    fn old_traffic_leaves_the_window() {
        let (b, clock) = budget(0.5, 0);
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(withdraw(&b, 10), 10);
        clock.advance(Duration::from_secs(11));
        assert_eq!(withdraw(&b, 10), 0, "the deposits are more than 10 s old");
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(withdraw(&b, 10), 5);
    }

    #[test]
    fn an_outage_cannot_multiply_the_load() {
        // Every request fails and wants two retries; the budget lets through
        // a fifth of the requests' count, second after second.
        let (b, clock) = budget(0.2, 0);
        let mut retries = 0;
        for _ in 0..30 {
            for _ in 0..100 {
                b.deposit();
                retries += withdraw(&b, 2);
            }
            clock.advance(Duration::from_secs(1));
        }
        assert!(retries <= 3000 / 5, "{retries} retries for 3000 requests");
        assert!(
            retries >= 3000 / 5 - 100,
            "{retries} retries for 3000 requests"
        );
    }

    #[test]
    fn shared_across_threads() {
        let b = Arc::new(RetryBudget::new(0.1, 0));
        for _ in 0..1000 {
            b.deposit();
        }
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || withdraw(&b, 100))
            })
            .collect();
        let granted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        // Check-then-count races can let a thread or two past the line.
        assert!((100..=104).contains(&granted), "{granted}");
    }
}
