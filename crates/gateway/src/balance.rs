//! Choosing the endpoint of a request: the nine balancing algorithms.
//!
//! A balancer sees a pool's endpoints, a test of which of them may take the
//! request (healthy, not drained, not ejected, breaker willing, not yet tried
//! for this request), their effective weights and, for the hashing
//! algorithms, the hash of the request's key. It knows nothing of HTTP or of
//! connections. Balancers that keep state (turn counters, smooth weights, the
//! hash ring) share it between the worker threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rand::RngExt;
use scalestack_config::Algorithm;

use crate::endpoint::Endpoint;

/// Points on the hash ring per unit of weight (ketama's 160 keeps each
/// endpoint's share within about ±8 % of its due).
const VNODES_PER_WEIGHT: u32 = 160;
/// Weights above this count as this on the ring, which bounds its size.
const RING_WEIGHT_CAP: u32 = 100;
/// Tries of IP hash to find an eligible endpoint before falling back to round robin.
const IP_HASH_TRIES: u32 = 20;

/// What a balancer needs to know about one request.
pub(crate) struct Pick<'a> {
    /// The pool's endpoints.
    pub(crate) endpoints: &'a [Arc<Endpoint>],
    /// Whether endpoint `i` may take this request.
    pub(crate) eligible: &'a dyn Fn(usize) -> bool,
    /// The effective weight of endpoint `i` (weight × slow-start share).
    pub(crate) weight: &'a dyn Fn(usize) -> f64,
    /// Hash of the request's key (client IP or `hash_key`), if it has one.
    pub(crate) hash: Option<u64>,
}

/// A pool's balancer.
#[derive(Debug)]
pub(crate) struct Balancer {
    algorithm: Algorithm,
    /// Turn counter: round robin, and tie-breaking elsewhere.
    turn: AtomicUsize,
    /// Current weights of smooth weighted round robin (one per endpoint).
    smooth: Mutex<Vec<f64>>,
    ring: RwLock<Arc<Ring>>,
}

impl Balancer {
    /// A balancer of `algorithm` over `endpoints`.
    pub(crate) fn new(algorithm: Algorithm, endpoints: &[Arc<Endpoint>]) -> Self {
        let ring = if algorithm == Algorithm::ConsistentHash {
            Ring::build(endpoints)
        } else {
            Ring::default()
        };
        Self {
            algorithm,
            turn: AtomicUsize::new(0),
            smooth: Mutex::new(vec![0.0; endpoints.len()]),
            ring: RwLock::new(Arc::new(ring)),
        }
    }

    /// The algorithm.
    pub(crate) fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Whether the algorithm reads weights (and so slow start), rather than
    /// needing slow start applied on top of its choice.
    pub(crate) fn uses_weights(&self) -> bool {
        !matches!(
            self.algorithm,
            Algorithm::RoundRobin
                | Algorithm::LeastConnections
                | Algorithm::IpHash
                | Algorithm::ConsistentHash
        )
    }

    /// Whether the algorithm pins keys to endpoints (slow start must not
    /// break that affinity).
    pub(crate) fn is_affine(&self) -> bool {
        matches!(
            self.algorithm,
            Algorithm::IpHash | Algorithm::ConsistentHash
        )
    }

    /// Rebuilds what depends on the weights (the hash ring) after a change.
    pub(crate) fn weights_changed(&self, endpoints: &[Arc<Endpoint>]) {
        if self.algorithm == Algorithm::ConsistentHash {
            let ring = Arc::new(Ring::build(endpoints));
            *self.ring.write().unwrap_or_else(PoisonError::into_inner) = ring;
        }
    }

    /// Picks an eligible endpoint; `None` when none is.
    pub(crate) fn pick(&self, p: &Pick<'_>) -> Option<usize> {
        let n = p.endpoints.len();
        if n == 0 {
            return None;
        }
        match self.algorithm {
            Algorithm::RoundRobin => self.round_robin(p),
            Algorithm::WeightedRoundRobin => self.smooth_weighted(p, |_| true),
            Algorithm::LeastConnections => self.least_connections(p),
            Algorithm::WeightedLeastConnections => self.weighted_least_connections(p),
            Algorithm::IpHash => match p.hash {
                Some(hash) => ip_hash(p, hash).or_else(|| self.round_robin(p)),
                None => self.round_robin(p),
            },
            Algorithm::ConsistentHash => match p.hash {
                Some(hash) => {
                    let ring =
                        Arc::clone(&self.ring.read().unwrap_or_else(PoisonError::into_inner));
                    ring.lookup(hash, p.eligible)
                }
                None => self.round_robin(p),
            },
            Algorithm::PeakEwma => two_choices(p, |i| {
                let e = &p.endpoints[i];
                e.rtt() * (f64::from(e.in_flight()) + 1.0) / p_weight(p, i)
            }),
            Algorithm::PowerOfTwoChoices => two_choices(p, |i| {
                f64::from(p.endpoints[i].in_flight()) / p_weight(p, i)
            }),
            Algorithm::Random => weighted_random(p),
        }
    }

    /// Each eligible endpoint in turn. The turn counts over the eligible
    /// endpoints only, so when one is out its share spreads evenly over the
    /// others instead of all landing on its successor.
    fn round_robin(&self, p: &Pick<'_>) -> Option<usize> {
        let n = p.endpoints.len();
        let count = (0..n).filter(|&i| (p.eligible)(i)).count();
        if count == 0 {
            return None;
        }
        // Relaxed is enough: the counter only spreads load, it orders nothing.
        let turn = self.turn.fetch_add(1, Ordering::Relaxed) % count;
        (0..n).filter(|&i| (p.eligible)(i)).nth(turn)
    }

    /// NGINX's smooth weighted round robin among the eligible endpoints for
    /// which `among` holds: every pick adds each one's weight to its current
    /// weight, takes the largest and subtracts the total from it.
    fn smooth_weighted(&self, p: &Pick<'_>, among: impl Fn(usize) -> bool) -> Option<usize> {
        let mut current = self.smooth.lock().unwrap_or_else(PoisonError::into_inner);
        current.resize(p.endpoints.len(), 0.0);
        let mut total = 0.0;
        let mut best: Option<usize> = None;
        for i in 0..p.endpoints.len() {
            if !(p.eligible)(i) || !among(i) {
                continue;
            }
            let weight = (p.weight)(i);
            if weight <= 0.0 {
                continue;
            }
            current[i] += weight;
            total += weight;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        current[best] -= total;
        Some(best)
    }

    /// The fewest requests in flight; ties go round the tied endpoints in turn.
    fn least_connections(&self, p: &Pick<'_>) -> Option<usize> {
        let n = p.endpoints.len();
        let mut least = u32::MAX;
        let mut ties = 0;
        for i in (0..n).filter(|&i| (p.eligible)(i)) {
            let load = p.endpoints[i].in_flight();
            if load < least {
                least = load;
                ties = 1;
            } else if load == least {
                ties += 1;
            }
        }
        if ties == 0 {
            return None;
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed) % ties;
        (0..n)
            .filter(|&i| (p.eligible)(i) && p.endpoints[i].in_flight() == least)
            .nth(turn)
            // The loads may have moved between the two passes.
            .or_else(|| (0..n).find(|&i| (p.eligible)(i)))
    }

    /// The fewest requests in flight per unit of weight; ties are broken by
    /// smooth weighted round robin, so that idle endpoints still share in
    /// proportion to their weights.
    fn weighted_least_connections(&self, p: &Pick<'_>) -> Option<usize> {
        let load = |i: usize| f64::from(p.endpoints[i].in_flight()) / p_weight(p, i);
        let least = (0..p.endpoints.len())
            .filter(|&i| (p.eligible)(i) && (p.weight)(i) > 0.0)
            .map(load)
            .fold(f64::INFINITY, f64::min);
        if !least.is_finite() {
            return None;
        }
        self.smooth_weighted(p, |i| load(i) <= least)
    }
}

/// Weight for division: a tiny floor keeps weight-0 endpoints last, not infinite.
fn p_weight(p: &Pick<'_>, i: usize) -> f64 {
    (p.weight)(i).max(1e-6)
}

/// The endpoint the client's hash names; if it is out, the next hash of the
/// series (the choice stays stable for every client of that endpoint).
fn ip_hash(p: &Pick<'_>, hash: u64) -> Option<usize> {
    let n = p.endpoints.len() as u64;
    let mut h = hash;
    for _ in 0..IP_HASH_TRIES {
        let i = (h % n) as usize;
        if (p.eligible)(i) {
            return Some(i);
        }
        h = mix(h.wrapping_add(0x9e37_79b9_7f4a_7c15));
    }
    None
}

/// The cheaper by `cost` of two distinct eligible endpoints drawn at random.
fn two_choices(p: &Pick<'_>, cost: impl Fn(usize) -> f64) -> Option<usize> {
    let n = p.endpoints.len();
    let mut rng = rand::rng();
    let first = probe(p, rng.random_range(0..n), None)?;
    let Some(second) = probe(p, rng.random_range(0..n), Some(first)) else {
        return Some(first);
    };
    let (a, b) = (cost(first), cost(second));
    Some(if b < a { second } else { first })
}

/// The first eligible endpoint from `start` on (wrapping), other than `not`.
fn probe(p: &Pick<'_>, start: usize, not: Option<usize>) -> Option<usize> {
    let n = p.endpoints.len();
    (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| Some(i) != not && (p.eligible)(i))
}

/// An eligible endpoint drawn in proportion to its effective weight.
fn weighted_random(p: &Pick<'_>) -> Option<usize> {
    let n = p.endpoints.len();
    let total: f64 = (0..n)
        .filter(|&i| (p.eligible)(i))
        .map(|i| (p.weight)(i).max(0.0))
        .sum();
    if total <= 0.0 {
        return None;
    }
    let mut target = rand::rng().random_range(0.0..total);
    let mut last = None;
    for i in (0..n).filter(|&i| (p.eligible)(i)) {
        let weight = (p.weight)(i).max(0.0);
        if weight <= 0.0 {
            continue;
        }
        last = Some(i);
        if target < weight {
            return Some(i);
        }
        target -= weight;
    }
    // Rounding can leave the target a hair past the last weight.
    last
}

// === Hashing ===

/// FNV-1a over `bytes`, finished with a 64-bit mixer. Deterministic across
/// processes, so that several gateways map a key to the same endpoint.
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// MurmurHash3's 64-bit finaliser: spreads every input bit over the output.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// A consistent-hash ring: each endpoint owns `100 × weight` points, placed
/// by hashing its name, so an endpoint's points do not depend on the others
/// and adding one moves only the keys that land on its new points.
#[derive(Debug, Default)]
struct Ring {
    /// `(point, endpoint index)`, sorted by point.
    points: Vec<(u64, usize)>,
}

impl Ring {
    fn build(endpoints: &[Arc<Endpoint>]) -> Self {
        let mut points = Vec::new();
        let mut name = Vec::new();
        for (i, endpoint) in endpoints.iter().enumerate() {
            let vnodes = endpoint.weight().min(RING_WEIGHT_CAP) * VNODES_PER_WEIGHT;
            for v in 0..vnodes {
                name.clear();
                name.extend_from_slice(endpoint.name.as_bytes());
                name.push(b'#');
                name.extend_from_slice(&v.to_le_bytes());
                points.push((hash_bytes(&name), i));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// The owner of the first point at or after `hash` that is eligible.
    fn lookup(&self, hash: u64, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|(point, _)| *point < hash);
        let len = self.points.len();
        (0..len)
            .map(|k| self.points[(start + k) % len].1)
            .find(|&i| eligible(i))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::AtomicU32;

    use super::*;
    use crate::endpoint::tests::endpoint;

    fn pool(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| endpoint(&format!("10.0.0.{i}:80"), 1))
            .collect()
    }

    fn weighted(weights: &[u32]) -> Vec<Arc<Endpoint>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| endpoint(&format!("10.0.0.{i}:80"), *w))
            .collect()
    }

    fn pick(b: &Balancer, endpoints: &[Arc<Endpoint>], hash: Option<u64>) -> Option<usize> {
        pick_if(b, endpoints, hash, &|_| true)
    }

    fn pick_if(
        b: &Balancer,
        endpoints: &[Arc<Endpoint>],
        hash: Option<u64>,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let weight = |i: usize| f64::from(endpoints[i].weight());
        b.pick(&Pick {
            endpoints,
            eligible,
            weight: &weight,
            hash,
        })
    }

    fn counts(picks: impl Iterator<Item = usize>, n: usize) -> Vec<usize> {
        let mut hits = vec![0; n];
        for i in picks {
            hits[i] += 1;
        }
        hits
    }

    #[test]
    fn round_robin_takes_every_endpoint_in_turn_and_skips_the_ineligible() {
        let e = pool(4);
        let b = Balancer::new(Algorithm::RoundRobin, &e);
        let picks: Vec<_> = (0..8).map(|_| pick(&b, &e, None).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 3, 0, 1, 2, 3]);
        let hits = counts(
            (0..300).map(|_| pick_if(&b, &e, None, &|i| i != 1).unwrap()),
            4,
        );
        assert_eq!(hits, [100, 0, 100, 100]);
        assert_eq!(pick_if(&b, &e, None, &|_| false), None);
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves_in_proportion() {
        let e = weighted(&[5, 1, 1]);
        let b = Balancer::new(Algorithm::WeightedRoundRobin, &e);
        let picks: Vec<_> = (0..7).map(|_| pick(&b, &e, None).unwrap()).collect();
        // NGINX's documented sequence for weights 5, 1, 1.
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
        let hits = counts((0..700).map(|_| pick(&b, &e, None).unwrap()), 3);
        assert_eq!(hits, [500, 100, 100]);
        // A weight of 0 takes nothing (a drained canary).
        let e = weighted(&[3, 0]);
        let b = Balancer::new(Algorithm::WeightedRoundRobin, &e);
        assert!((0..50).all(|_| pick(&b, &e, None) == Some(0)));
    }

    #[test]
    fn least_connections_steers_away_from_a_slow_endpoint() {
        // Endpoint 0 is slow: its requests stay in flight. The others answer
        // at once. New requests go to the endpoints with nothing in flight.
        let e = pool(3);
        let b = Balancer::new(Algorithm::LeastConnections, &e);
        let mut stuck = Vec::new();
        let mut hits = [0usize; 3];
        for _ in 0..300 {
            let i = pick(&b, &e, None).unwrap();
            hits[i] += 1;
            let guard = e[i].start_request();
            if i == 0 {
                stuck.push(guard);
            }
        }
        assert_eq!(
            hits[0], 1,
            "only the first request went to the slow endpoint"
        );
        assert!(hits[1].abs_diff(hits[2]) <= 1, "{hits:?}");
        drop(stuck);
    }

    #[test]
    fn weighted_least_connections_divides_load_by_weight() {
        let e = weighted(&[3, 1]);
        let b = Balancer::new(Algorithm::WeightedLeastConnections, &e);
        // Requests that all stay in flight end up 3:1.
        let mut held = Vec::new();
        let mut hits = [0usize; 2];
        for _ in 0..400 {
            let i = pick(&b, &e, None).unwrap();
            hits[i] += 1;
            held.push(e[i].start_request());
        }
        assert!(hits[0].abs_diff(300) <= 2, "{hits:?}");
        drop(held);
        // Requests that finish at once are shared by weight too.
        let hits = counts((0..400).map(|_| pick(&b, &e, None).unwrap()), 2);
        assert!(hits[0].abs_diff(300) <= 2, "{hits:?}");
    }

    #[test]
    fn ip_hash_pins_a_client_and_moves_it_only_when_its_endpoint_is_out() {
        let e = pool(5);
        let b = Balancer::new(Algorithm::IpHash, &e);
        let client = hash_bytes(b"203.0.113.7");
        let home = pick(&b, &e, Some(client)).unwrap();
        assert!((0..20).all(|_| pick(&b, &e, Some(client)) == Some(home)));
        let away = pick_if(&b, &e, Some(client), &|i| i != home).unwrap();
        assert_ne!(away, home);
        assert!((0..20).all(|_| pick_if(&b, &e, Some(client), &|i| i != home) == Some(away)));
        // Many clients spread over every endpoint.
        let hits = counts(
            (0..5000u32).map(|c| pick(&b, &e, Some(hash_bytes(&c.to_le_bytes()))).unwrap()),
            5,
        );
        assert!(hits.iter().all(|&h| (800..1200).contains(&h)), "{hits:?}");
    }

    #[test]
    fn consistent_hash_moves_about_one_key_in_eleven_when_an_eleventh_endpoint_joins() {
        let ten = pool(10);
        let eleven = pool(11);
        let before = Balancer::new(Algorithm::ConsistentHash, &ten);
        let after = Balancer::new(Algorithm::ConsistentHash, &eleven);
        let keys = 100_000u32;
        let mut moved = 0;
        let mut to_new = 0;
        let mut load = vec![0; 11];
        for k in 0..keys {
            let hash = hash_bytes(format!("user-{k}").as_bytes());
            let a = pick(&before, &ten, Some(hash)).unwrap();
            let b = pick(&after, &eleven, Some(hash)).unwrap();
            load[b] += 1;
            if a != b {
                moved += 1;
                if b == 10 {
                    to_new += 1;
                }
            }
        }
        let share = f64::from(moved) / f64::from(keys);
        assert!((share - 1.0 / 11.0).abs() < 0.02, "{share} of keys moved");
        assert_eq!(moved, to_new, "keys only move to the new endpoint");
        let mean = f64::from(keys) / 11.0;
        assert!(
            load.iter()
                .all(|&l| (f64::from(l) / mean - 1.0).abs() < 0.3),
            "every endpoint owns its share of the ring, within 30 %: {load:?}"
        );
    }

    #[test]
    fn consistent_hash_skips_an_ineligible_owner_to_the_next_point() {
        let e = pool(4);
        let b = Balancer::new(Algorithm::ConsistentHash, &e);
        let mut owners = HashMap::new();
        for k in 0..1000u32 {
            let hash = hash_bytes(&k.to_le_bytes());
            owners.insert(k, pick(&b, &e, Some(hash)).unwrap());
        }
        // Endpoint 2 goes out: only its keys move.
        for (k, owner) in &owners {
            let hash = hash_bytes(&k.to_le_bytes());
            let now = pick_if(&b, &e, Some(hash), &|i| i != 2).unwrap();
            if *owner != 2 {
                assert_eq!(now, *owner);
            } else {
                assert_ne!(now, 2);
            }
        }
        // Without a key it balances round robin.
        let picks: Vec<_> = (0..4).map(|_| pick(&b, &e, None).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 3]);
    }

    #[test]
    fn consistent_hash_weights_own_more_of_the_ring_after_a_change() {
        let e = pool(2);
        let b = Balancer::new(Algorithm::ConsistentHash, &e);
        e[0].set_weight(3);
        b.weights_changed(&e);
        let hits = counts(
            (0..40_000u32).map(|k| pick(&b, &e, Some(hash_bytes(&k.to_le_bytes()))).unwrap()),
            2,
        );
        let share = hits[0] as f64 / 40_000.0;
        assert!((share - 0.75).abs() < 0.05, "{hits:?}");
    }

    #[test]
    fn peak_ewma_prefers_the_fast_endpoint() {
        let e = pool(3);
        let b = Balancer::new(Algorithm::PeakEwma, &e);
        let now = crate::clock::now();
        e[0].observe_rtt(std::time::Duration::from_millis(200), now);
        e[1].observe_rtt(std::time::Duration::from_millis(2), now);
        e[2].observe_rtt(std::time::Duration::from_millis(2), now);
        let hits = counts((0..3000).map(|_| pick(&b, &e, None).unwrap()), 3);
        // The slow one wins only when both draws land on it, which two
        // distinct draws never do.
        assert_eq!(hits[0], 0, "{hits:?}");
        assert!(hits[1] > 1000 && hits[2] > 1000, "{hits:?}");
    }

    #[test]
    fn power_of_two_choices_avoids_the_loaded_endpoint() {
        let e = pool(4);
        let b = Balancer::new(Algorithm::PowerOfTwoChoices, &e);
        let _held: Vec<_> = (0..10).map(|_| e[3].start_request()).collect();
        let hits = counts((0..4000).map(|_| pick(&b, &e, None).unwrap()), 4);
        assert_eq!(hits[3], 0, "{hits:?}");
        assert!(hits[..3].iter().all(|&h| h > 1000), "{hits:?}");
        // One eligible endpoint is still picked.
        assert_eq!(pick_if(&b, &e, None, &|i| i == 3), Some(3));
    }

    #[test]
    fn random_follows_the_weights() {
        let e = weighted(&[1, 2, 7]);
        let b = Balancer::new(Algorithm::Random, &e);
        let hits = counts((0..20_000).map(|_| pick(&b, &e, None).unwrap()), 3);
        for (i, expected) in [0.1, 0.2, 0.7].into_iter().enumerate() {
            let share = hits[i] as f64 / 20_000.0;
            assert!((share - expected).abs() < 0.02, "{hits:?}");
        }
        assert_eq!(pick_if(&b, &e, None, &|_| false), None);
    }

    #[test]
    fn balancers_are_shared_across_threads() {
        let e = pool(4);
        let b = Arc::new(Balancer::new(Algorithm::RoundRobin, &e));
        let total = Arc::new([(); 4].map(|_| AtomicU32::new(0)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (b, e, total) = (b.clone(), e.clone(), total.clone());
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        let i = pick(&b, &e, None).unwrap();
                        total[i].fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let hits: Vec<u32> = total.iter().map(|t| t.load(Ordering::Relaxed)).collect();
        assert_eq!(hits, [1000; 4]);
    }
}
