//! Drawing keys from a [`KeyRange`] according to a [`KeyDist`].
//!
//! The sampler is built once and shared read-only by every connection; each
//! connection brings its own RNG, so drawing a key touches no shared state.

use rand::distr::{Distribution, Uniform};
use rand::{Rng, RngExt, SeedableRng};
use rand_distr::Zipf;

use crate::{BenchError, KeyDist, KeyRange};

/// A prepared key distribution over one range.
///
/// Public so that other tools (the cache simulator of `scalestack plan
/// cache`) draw exactly the key streams that the load generator sends.
#[derive(Debug, Clone)]
pub struct KeySampler {
    inner: Sampler,
}

#[derive(Debug, Clone)]
enum Sampler {
    Uniform(Uniform<u64>),
    Zipf {
        first: u64,
        /// Number of ranks; rank `r` maps to key `first + r - 1`.
        ranks: u64,
        zipf: Zipf<f64>,
    },
    Hotspot {
        /// Probability that a draw is hot.
        hot_share: f64,
        hot: Uniform<u64>,
        /// `None` when every key is hot.
        cold: Option<Uniform<u64>>,
    },
}

impl KeySampler {
    /// Prepares `dist` over `range`; fails if `dist` is out of its bounds.
    pub fn new(range: KeyRange, dist: KeyDist) -> Result<Self, BenchError> {
        Sampler::new(range, dist).map(|inner| Self { inner })
    }

    /// Draws one key.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        self.inner.sample(rng)
    }

    /// An endless stream of keys from a generator seeded with `seed`: the
    /// same seed gives the same stream.
    pub fn stream(&self, seed: u64) -> impl Iterator<Item = u64> + '_ {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        std::iter::repeat_with(move || self.sample(&mut rng))
    }
}

impl Sampler {
    fn new(range: KeyRange, dist: KeyDist) -> Result<Self, BenchError> {
        let invalid = |field, reason: String| BenchError::InvalidSpec { field, reason };
        match dist {
            KeyDist::Uniform => Uniform::new_inclusive(range.first(), range.last())
                .map(Self::Uniform)
                .map_err(|e| invalid("keys", format!("cannot draw uniformly from {range}: {e}"))),
            KeyDist::Zipf { exponent } => {
                let ranks = range.count();
                // For huge ranges `ranks as f64` rounds; the sample is clamped
                // to the range below, so rounding only blurs the far tail.
                let zipf = Zipf::new(ranks as f64, exponent).map_err(|e| {
                    invalid("dist", format!("cannot build {dist} over {range}: {e}"))
                })?;
                Ok(Self::Zipf {
                    first: range.first(),
                    ranks,
                    zipf,
                })
            }
            KeyDist::Hotspot {
                traffic_pct,
                keys_pct,
            } => {
                dist.check().map_err(|reason| invalid("dist", reason))?;
                let count = range.count();
                // At least one key is hot, and the hot set never exceeds the range.
                let hot_keys = ((count as f64 * keys_pct / 100.0).ceil() as u64).clamp(1, count);
                let last_hot = range.first() + (hot_keys - 1);
                let uniform = |a, b| {
                    Uniform::new_inclusive(a, b)
                        .map_err(|e| invalid("keys", format!("cannot draw from {a}..={b}: {e}")))
                };
                let hot = uniform(range.first(), last_hot)?;
                let cold = if last_hot < range.last() {
                    Some(uniform(last_hot + 1, range.last())?)
                } else {
                    None
                };
                Ok(Self::Hotspot {
                    hot_share: traffic_pct / 100.0,
                    hot,
                    cold,
                })
            }
        }
    }

    fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match self {
            Self::Uniform(uniform) => uniform.sample(rng),
            Self::Zipf { first, ranks, zipf } => {
                // Zipf yields a whole number in [1, ranks] as a float; the
                // cast saturates and the clamp guards against rounding.
                let rank = (zipf.sample(rng) as u64).clamp(1, *ranks);
                first + (rank - 1)
            }
            Self::Hotspot {
                hot_share,
                hot,
                cold,
            } => match cold {
                Some(cold) if !rng.random_bool(*hot_share) => cold.sample(rng),
                _ => hot.sample(rng),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    fn counts(range: KeyRange, dist: KeyDist, samples: usize) -> Vec<u64> {
        let sampler = KeySampler::new(range, dist).unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = vec![0u64; range.count() as usize];
        for _ in 0..samples {
            let key = sampler.sample(&mut rng);
            assert!(range.contains(key), "{key} outside {range}");
            counts[(key - range.first()) as usize] += 1;
        }
        counts
    }

    #[test]
    fn uniform_stays_in_range_and_reaches_both_ends() {
        let range = KeyRange::new(10, 19).unwrap();
        let counts = counts(range, KeyDist::Uniform, 10_000);
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    }

    #[test]
    fn single_key_and_full_ranges_work() {
        let mut rng = SmallRng::seed_from_u64(1);
        let hotspot = KeyDist::Hotspot {
            traffic_pct: 90.0,
            keys_pct: 1.0,
        };
        for dist in [KeyDist::Uniform, KeyDist::Zipf { exponent: 1.1 }, hotspot] {
            let one = KeySampler::new(KeyRange::new(5, 5).unwrap(), dist).unwrap();
            assert_eq!(one.sample(&mut rng), 5);
            let full = KeySampler::new(KeyRange::new(0, u64::MAX).unwrap(), dist).unwrap();
            for _ in 0..1000 {
                full.sample(&mut rng);
            }
        }
    }

    #[test]
    fn zipf_makes_the_first_keys_hot() {
        let range = KeyRange::new(1001, 2000).unwrap();
        let samples = 100_000;
        let counts = counts(range, KeyDist::Zipf { exponent: 1.1 }, samples);
        // Rank 1 (the first key of the range) is the most frequent.
        let hottest = counts
            .iter()
            .enumerate()
            .max_by_key(|&(_, c)| c)
            .map(|(i, _)| i);
        assert_eq!(hottest, Some(0));
        assert!(counts[0] > counts[1] && counts[1] > counts[9] && counts[9] > counts[999]);
        // With s = 1.1 over 1000 keys the top 10 keys draw about 48% of the
        // requests; uniform would give them 1%.
        let top10: u64 = counts[..10].iter().sum();
        let share = top10 as f64 / samples as f64;
        assert!(share > 0.3, "top-10 share {share}");
    }

    #[test]
    fn hotspot_sends_its_share_to_the_hot_keys() {
        let range = KeyRange::new(1, 1000).unwrap();
        let samples = 100_000;
        let dist = KeyDist::Hotspot {
            traffic_pct: 90.0,
            keys_pct: 1.0,
        };
        let counts = counts(range, dist, samples);
        let hot: u64 = counts[..10].iter().sum();
        let share = hot as f64 / samples as f64;
        // 90% expected; 100,000 draws put it within a fraction of a percent.
        assert!((0.88..0.92).contains(&share), "hot share {share}");
        assert!(counts[10..].iter().all(|&c| c < 100), "cold keys stay cold");
        // Everything hot: all keys are drawn, no panic on an empty cold set.
        let all_hot = KeyDist::Hotspot {
            traffic_pct: 50.0,
            keys_pct: 100.0,
        };
        assert!(
            self::counts(KeyRange::new(1, 5).unwrap(), all_hot, 1_000)
                .iter()
                .all(|&c| c > 0)
        );
    }

    #[test]
    fn streams_repeat_for_the_same_seed() {
        let sampler =
            KeySampler::new(KeyRange::new(1, 1_000_000).unwrap(), KeyDist::Uniform).unwrap();
        let a: Vec<u64> = sampler.stream(5).take(100).collect();
        let b: Vec<u64> = sampler.stream(5).take(100).collect();
        let c: Vec<u64> = sampler.stream(6).take(100).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
