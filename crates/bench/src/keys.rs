//! Drawing keys from a [`KeyRange`] according to a [`KeyDist`].
//!
//! The sampler is built once and shared read-only by every connection; each
//! connection brings its own RNG, so drawing a key touches no shared state.

use rand::Rng;
use rand::distr::{Distribution, Uniform};
use rand_distr::Zipf;

use crate::{BenchError, KeyDist, KeyRange};

/// A prepared key distribution over one range.
#[derive(Debug, Clone)]
pub(crate) enum KeySampler {
    Uniform(Uniform<u64>),
    Zipf {
        first: u64,
        /// Number of ranks; rank `r` maps to key `first + r - 1`.
        ranks: u64,
        zipf: Zipf<f64>,
    },
}

impl KeySampler {
    pub(crate) fn new(range: KeyRange, dist: KeyDist) -> Result<Self, BenchError> {
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
        }
    }

    /// Draws one key.
    pub(crate) fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match self {
            Self::Uniform(uniform) => uniform.sample(rng),
            Self::Zipf { first, ranks, zipf } => {
                // Zipf yields a whole number in [1, ranks] as a float; the
                // cast saturates and the clamp guards against rounding.
                let rank = (zipf.sample(rng) as u64).clamp(1, *ranks);
                first + (rank - 1)
            }
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
        for dist in [KeyDist::Uniform, KeyDist::Zipf { exponent: 1.1 }] {
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
}
