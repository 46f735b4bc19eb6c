//! Exponential backoff with jitter.
//!
//! The delay before retry `n` (0-based) grows as `initial * multiplier^n`, is
//! capped at `max`, and is then randomised so that many clients failing at the
//! same moment do not retry in lockstep.

use std::time::Duration;

use rand::{Rng, RngExt};

/// How the exponential delay is randomised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// No randomness: exactly the exponential delay.
    None,
    /// Uniform in `[0, delay]`: spreads retries the most.
    Full,
    /// Uniform in `[delay / 2, delay]`: spreads retries but keeps a floor.
    Equal,
}

/// An exponential backoff policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry (before jitter).
    pub initial: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
    /// Growth factor per attempt; 2.0 doubles.
    pub multiplier: f64,
    /// Randomisation applied to the capped delay.
    pub jitter: Jitter,
}

impl Backoff {
    /// A doubling backoff from `initial` to `max` with equal jitter.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            multiplier: 2.0,
            jitter: Jitter::Equal,
        }
    }

    /// Returns the policy with another jitter.
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The capped exponential delay of attempt `attempt`, before jitter.
    pub fn base(&self, attempt: u32) -> Duration {
        let factor = self.multiplier.max(1.0).powi(attempt.min(1024) as i32);
        let secs = self.initial.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// The delay before retry `attempt`, with jitter drawn from `rng`.
    pub fn delay<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let base = self.base(attempt);
        match self.jitter {
            Jitter::None => base,
            Jitter::Full => base.mul_f64(rng.random_range(0.0..=1.0)),
            Jitter::Equal => base / 2 + (base / 2).mul_f64(rng.random_range(0.0..=1.0)),
        }
    }

    /// [`Backoff::delay`] with the thread-local generator.
    pub fn delay_random(&self, attempt: u32) -> Duration {
        self.delay(attempt, &mut rand::rng())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn doubles_then_caps() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300))
            .with_jitter(Jitter::None);
        let delays: Vec<u64> = (0..11).map(|n| b.base(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(b.base(u32::MAX), Duration::from_secs(300));
    }

    proptest! {
        #[test]
        fn jittered_delay_stays_within_bounds(
            initial_ms in 1u64..10_000,
            max_ms in 1u64..1_000_000,
            attempt in 0u32..100,
            seed: u64,
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let b = Backoff::new(Duration::from_millis(initial_ms), Duration::from_millis(max_ms));
            let base = b.base(attempt);
            prop_assert!(base <= b.max);
            prop_assert!(base >= b.initial.min(b.max));
            let equal = b.delay(attempt, &mut rng);
            prop_assert!(equal >= base / 2 && equal <= base);
            let full = b.with_jitter(Jitter::Full).delay(attempt, &mut rng);
            prop_assert!(full <= base);
        }

        #[test]
        fn base_never_shrinks(initial_ms in 1u64..10_000, max_ms in 1u64..1_000_000, attempt in 0u32..200) {
            let b = Backoff::new(Duration::from_millis(initial_ms), Duration::from_millis(max_ms));
            prop_assert!(b.base(attempt + 1) >= b.base(attempt));
        }
    }
}
