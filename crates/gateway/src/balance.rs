//! Choosing the endpoint of a request.
//!
//! The balancer sees endpoints only as positions and an eligibility test
//! (healthy and not yet tried for this request); it knows nothing about
//! connections or HTTP. Round robin is the only algorithm of the walking
//! skeleton; others (least connections, peak EWMA, consistent hashing) are to
//! live here behind the same shape.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Round robin over the eligible endpoints.
#[derive(Debug, Default)]
pub(crate) struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// Picks one of the positions `0..len` for which `eligible` holds, taking
    /// them in turn; `None` when none is eligible.
    ///
    /// The turn counts over the eligible endpoints only, so when one endpoint
    /// is down its share spreads evenly over the others instead of all
    /// landing on its successor.
    pub(crate) fn pick(&self, len: usize, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let count = (0..len).filter(|&i| eligible(i)).count();
        if count == 0 {
            return None;
        }
        // Relaxed is enough: the counter only spreads load, it orders nothing.
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % count;
        (0..len).filter(|&i| eligible(i)).nth(turn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_every_endpoint_in_turn() {
        let rr = RoundRobin::default();
        let picks: Vec<_> = (0..6).map(|_| rr.pick(3, |_| true).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn spreads_evenly_over_the_eligible_only() {
        let rr = RoundRobin::default();
        let mut hits = [0; 4];
        for _ in 0..300 {
            hits[rr.pick(4, |i| i != 1).unwrap()] += 1;
        }
        assert_eq!(hits, [100, 0, 100, 100]);
    }

    #[test]
    fn none_when_nothing_is_eligible() {
        let rr = RoundRobin::default();
        assert_eq!(rr.pick(3, |_| false), None);
        assert_eq!(rr.pick(0, |_| true), None);
    }
}
