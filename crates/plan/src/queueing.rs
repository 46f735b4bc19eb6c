//! Queueing formulas: Little's law for sizing pools and worker counts, and
//! Erlang C (M/M/c) for how long work waits for a free server.
//!
//! Pure functions of rates and times in seconds; nothing here knows what a
//! server or a worker is.

use serde::{Deserialize, Serialize};

/// Little's law: the mean number in the system is the arrival rate times
/// the mean time in the system (L = λW). With `rate` requests per second
/// each taking `seconds`, this is how many are in flight on average: the
/// pool size, thread count or worker count that just keeps up.
pub fn little(rate: f64, seconds: f64) -> f64 {
    rate * seconds
}

/// What Erlang C says about `servers` servers fed at `arrival_rate` per
/// second with a mean service time of `service_s` seconds (Poisson arrivals,
/// exponential service: M/M/c).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ErlangC {
    /// Servers.
    pub servers: u64,
    /// Offered load in Erlangs (arrival rate × service time): the servers
    /// busy on average.
    pub offered_load: f64,
    /// Offered load per server; 1 or more means the queue grows forever.
    pub utilisation: f64,
    /// Probability that an arrival waits; `None` when unstable.
    pub p_wait: Option<f64>,
    /// Mean wait in the queue before service, seconds; `None` when unstable.
    pub mean_wait_s: Option<f64>,
}

/// Erlang C for `servers` servers (see [`ErlangC`]).
pub fn erlang_c(servers: u64, arrival_rate: f64, service_s: f64) -> ErlangC {
    let a = arrival_rate * service_s;
    let c = servers as f64;
    let utilisation = if servers == 0 { f64::INFINITY } else { a / c };
    let (p_wait, mean_wait_s) = if servers == 0 || utilisation >= 1.0 {
        (None, None)
    } else {
        // Erlang B by its stable recurrence B(k) = A·B(k−1) / (k + A·B(k−1)),
        // then C = B / (1 − ρ(1 − B)): no factorials, no overflow even for
        // a hundred thousand servers.
        let mut b = 1.0;
        for k in 1..=servers {
            b = a * b / (k as f64 + a * b);
        }
        let p = b / (1.0 - utilisation * (1.0 - b));
        (Some(p), Some(p * service_s / (c - a)))
    };
    ErlangC {
        servers,
        offered_load: a,
        utilisation,
        p_wait,
        mean_wait_s,
    }
}

/// The fewest servers whose mean queue wait is at most `target_wait_s`.
pub fn servers_for_wait(arrival_rate: f64, service_s: f64, target_wait_s: f64) -> u64 {
    let a = arrival_rate * service_s;
    // Below the offered load the queue is unstable; start just above it and
    // walk up. The wait falls steeply, so the walk is short; the
    // exponential search bounds it for extreme targets.
    let mut low = (a.floor() as u64).saturating_add(1).max(1);
    let ok = |c: u64| {
        erlang_c(c, arrival_rate, service_s)
            .mean_wait_s
            .is_some_and(|w| w <= target_wait_s)
    };
    if ok(low) {
        return low;
    }
    let mut step = 1u64;
    let mut high = low + step;
    while !ok(high) {
        low = high;
        step = step.saturating_mul(2);
        high = high.saturating_add(step);
    }
    // Binary search in (low, high].
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if ok(mid) {
            high = mid;
        } else {
            low = mid;
        }
    }
    high
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn littles_law_sizes_the_seeds_workers() {
        // 1M messages/s at 100 ms, 10 ms and 1 ms each.
        assert!((little(1e6, 0.1) - 100_000.0).abs() < 1e-6);
        assert!((little(1e6, 0.01) - 10_000.0).abs() < 1e-6);
        assert!((little(1e6, 0.001) - 1_000.0).abs() < 1e-6);
    }

    #[test]
    fn erlang_c_matches_known_values() {
        // One server is M/M/1: P(wait) = ρ, Wq = ρ/(μ − λ).
        let e = erlang_c(1, 0.5, 1.0);
        assert!((e.p_wait.unwrap() - 0.5).abs() < 1e-12);
        assert!((e.mean_wait_s.unwrap() - 1.0).abs() < 1e-12);
        // The classic call-centre example: 2 Erlangs on 3 agents waits with
        // probability 4/9.
        let e = erlang_c(3, 2.0, 1.0);
        assert!((e.p_wait.unwrap() - 4.0 / 9.0).abs() < 1e-12);
        assert!((e.mean_wait_s.unwrap() - 4.0 / 9.0).abs() < 1e-12);
        // At or above 100% utilisation the queue is unstable.
        let e = erlang_c(1000, 1e6, 0.001);
        assert_eq!((e.p_wait, e.mean_wait_s), (None, None));
        assert!((e.utilisation - 1.0).abs() < 1e-12);
        assert!(erlang_c(0, 1.0, 1.0).p_wait.is_none());
    }

    #[test]
    fn more_servers_never_wait_longer() {
        let mut last = f64::INFINITY;
        for c in 1001..1100 {
            let w = erlang_c(c, 1e6, 0.001).mean_wait_s.unwrap();
            assert!(w <= last);
            last = w;
        }
    }

    #[test]
    fn finds_the_fewest_servers_for_a_wait() {
        let c = servers_for_wait(1e6, 0.001, 0.001);
        assert!(erlang_c(c, 1e6, 0.001).mean_wait_s.unwrap() <= 0.001);
        assert!(
            erlang_c(c - 1, 1e6, 0.001)
                .mean_wait_s
                .is_none_or(|w| w > 0.001)
        );
        assert!(c > 1000 && c < 1100, "{c}");
        assert_eq!(servers_for_wait(0.5, 1.0, 10.0), 1);
        // A target of zero wait is reached only asymptotically; a tiny one
        // still ends.
        let c = servers_for_wait(100.0, 0.1, 1e-9);
        assert!(c > 10);
    }
}
