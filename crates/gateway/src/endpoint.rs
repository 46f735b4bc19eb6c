//! One upstream endpoint and everything the gateway knows about it: its
//! weight, active health, drain flag, requests in flight, response-time
//! average, passive outlier state, slow-start ramp and circuit breaker.
//!
//! The state is shared by every worker thread, so it is made of atomics; the
//! breaker has its own lock. Times are nanoseconds on the gateway's monotonic
//! clock ([`crate::clock`]) so that they fit in atomics and tests can pass
//! any instant they like. This module decides nothing about balancing or
//! retries; it answers "may this endpoint take a request now?" and records
//! what happened.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::HeaderValue;
use http::uri::Authority;
use scalestack_config::{BreakerSettings, OutlierConfig};
use scalestack_resilience::{BreakerConfig, BreakerState, CircuitBreaker};
use scalestack_telemetry::health::Check;

use crate::clock;
use crate::error::GatewayError;
use crate::observe::EndpointMetrics;

/// Response time assumed for an endpoint that has not answered yet (peak EWMA).
const DEFAULT_RTT_NS: f64 = 5_000_000.0;
/// Time constant of the response-time average: older samples weigh
/// `e^(-age / DECAY)`.
const EWMA_DECAY_NS: f64 = 10_000_000_000.0;
/// Smallest share of traffic an endpoint in slow start gets.
const SLOW_START_FLOOR: f64 = 0.1;

/// One upstream server of one pool.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// Unique in this process: the key of the workers' idle connections.
    pub(crate) id: u64,
    /// The endpoint as configured (`127.0.0.1:8081`): label, log field, admin key.
    pub(crate) name: String,
    /// The pool it belongs to.
    pub(crate) pool: Arc<str>,
    pub(crate) authority: Authority,
    /// `Host` for requests that came without one (HTTP/1.0) and for health checks.
    pub(crate) host_header: HeaderValue,
    weight: AtomicU32,
    healthy: AtomicBool,
    drained: AtomicBool,
    in_flight: AtomicU32,
    /// Peak-EWMA response time in ns, as `f64` bits.
    rtt_ewma: AtomicU64,
    rtt_stamp: AtomicU64,
    /// When the endpoint last became healthy (0: it has been since start).
    healthy_since: AtomicU64,
    outlier: Outlier,
    breaker: Option<Breaker>,
    /// The latest check, active or passive, for the admin `/health` report.
    last_check: Mutex<Option<Check>>,
    pub(crate) metrics: EndpointMetrics,
}

#[derive(Debug, Default)]
struct Outlier {
    consecutive_failures: AtomicU32,
    /// Ejections in a row; the next one lasts one base interval longer.
    ejections: AtomicU32,
    ejected_until: AtomicU64,
}

/// The breaker and a cached copy of its state that balancers read without
/// taking the breaker's lock.
#[derive(Debug)]
struct Breaker {
    breaker: CircuitBreaker,
    state: Arc<AtomicU8>,
    opened_at: Arc<AtomicU64>,
    open_for_ns: u64,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

fn state_code(state: BreakerState) -> u8 {
    match state {
        BreakerState::Closed => CLOSED,
        BreakerState::Open => OPEN,
        BreakerState::HalfOpen => HALF_OPEN,
    }
}

impl Endpoint {
    /// An endpoint of pool `pool`, healthy, with `weight`.
    pub(crate) fn new(
        pool: &Arc<str>,
        key: &str,
        name: &str,
        weight: u32,
        breaker: &BreakerSettings,
    ) -> Result<Self, GatewayError> {
        let invalid = || GatewayError::InvalidEndpoint {
            key: key.to_owned(),
            value: name.to_owned(),
        };
        let authority: Authority = name.parse().map_err(|_| invalid())?;
        // A port is required: guessing 80 would hide a typo in the config.
        if authority.port_u16().is_none() || authority.as_str().contains('@') {
            return Err(invalid());
        }
        let host_header = HeaderValue::from_str(authority.as_str()).map_err(|_| invalid())?;
        let metrics = EndpointMetrics::new(pool, name);
        metrics.set_weight(weight);
        let breaker = breaker.enabled.then(|| Breaker::new(breaker, &metrics));
        Ok(Self {
            id: clock::next_id(),
            name: name.to_owned(),
            pool: Arc::clone(pool),
            authority,
            host_header,
            weight: AtomicU32::new(weight),
            healthy: AtomicBool::new(true),
            drained: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
            rtt_ewma: AtomicU64::new(DEFAULT_RTT_NS.to_bits()),
            rtt_stamp: AtomicU64::new(0),
            healthy_since: AtomicU64::new(0),
            outlier: Outlier::default(),
            breaker,
            last_check: Mutex::new(None),
            metrics,
        })
    }

    /// Whether a reload may keep this endpoint (and its state) for `breaker`.
    pub(crate) fn breaker_matches(&self, breaker: &BreakerSettings) -> bool {
        match (&self.breaker, breaker.enabled) {
            (None, false) => true,
            (Some(b), true) => *b.breaker.config() == breaker_config(breaker),
            _ => false,
        }
    }

    // --- weight and drain ---

    /// The configured weight.
    pub(crate) fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Changes the weight (blue-green and canary shifts).
    pub(crate) fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
        self.metrics.set_weight(weight);
    }

    /// Whether the endpoint is drained: no new requests, in-flight ones finish.
    pub(crate) fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Drains or undrains.
    pub(crate) fn set_drained(&self, drained: bool) {
        self.drained.store(drained, Ordering::Relaxed);
        self.metrics.set_drained(drained);
    }

    // --- health ---

    /// Whether the active checks (and refused connections) say it is up.
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Sets the health flag; returns whether it changed. The caller logs the
    /// change, since only it knows why.
    pub(crate) fn set_healthy(&self, healthy: bool, now: u64) -> bool {
        let was = self.healthy.swap(healthy, Ordering::AcqRel);
        if was != healthy {
            if healthy {
                self.healthy_since.store(now.max(1), Ordering::Release);
            }
            self.metrics.set_healthy(healthy);
        }
        was != healthy
    }

    /// Records the outcome of the latest check.
    pub(crate) fn set_last_check(&self, check: Check) {
        *self
            .last_check
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(check);
    }

    /// The outcome of the latest check, if there was one.
    pub(crate) fn last_check(&self) -> Option<Check> {
        self.last_check
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    // --- passive outlier ejection ---

    /// Whether passive ejection holds the endpoint out at `now`.
    pub(crate) fn is_ejected(&self, now: u64) -> bool {
        now < self.outlier.ejected_until.load(Ordering::Acquire)
    }

    /// When the current (or last) ejection ends, 0 if there never was one.
    pub(crate) fn ejected_until(&self) -> u64 {
        self.outlier.ejected_until.load(Ordering::Acquire)
    }

    /// Counts a failure; returns whether `config` says to eject now.
    pub(crate) fn note_failure(&self, config: &OutlierConfig) -> bool {
        if config.consecutive_failures == 0 {
            return false;
        }
        let failures = self
            .outlier
            .consecutive_failures
            .fetch_add(1, Ordering::AcqRel)
            + 1;
        failures >= config.consecutive_failures
    }

    /// Ejects the endpoint from `now` for the next interval of the growing
    /// series; returns how long.
    pub(crate) fn eject(&self, config: &OutlierConfig, now: u64) -> Duration {
        let n = self.outlier.ejections.fetch_add(1, Ordering::AcqRel) + 1;
        let length = config
            .base_ejection
            .saturating_mul(n)
            .min(config.max_ejection);
        self.outlier
            .consecutive_failures
            .store(0, Ordering::Release);
        self.outlier
            .ejected_until
            .store(now + clock::ns(length), Ordering::Release);
        self.metrics.ejected();
        length
    }

    /// Counts a success: the run of failures is over. An endpoint that has
    /// stayed in for the longest ejection since its last one starts its
    /// ejection series afresh.
    pub(crate) fn note_success(&self, config: &OutlierConfig, now: u64) {
        if self.outlier.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.outlier
                .consecutive_failures
                .store(0, Ordering::Release);
        }
        if self.outlier.ejections.load(Ordering::Relaxed) != 0
            && now >= self.ejected_until() + clock::ns(config.max_ejection)
        {
            self.outlier.ejections.store(0, Ordering::Release);
        }
    }

    // --- slow start ---

    /// Share of its weight the endpoint gets at `now`: ramps from 10 % to
    /// 100 % over `slow_start` after it became healthy or its ejection ended.
    pub(crate) fn slow_start_factor(&self, slow_start: Duration, now: u64) -> f64 {
        if slow_start.is_zero() {
            return 1.0;
        }
        let back = self
            .healthy_since
            .load(Ordering::Relaxed)
            .max(self.ejected_until());
        if back == 0 || now <= back {
            // Never came back, or still out (then it is not eligible anyway).
            return if back == 0 { 1.0 } else { SLOW_START_FLOOR };
        }
        let ramp = (now - back) as f64 / clock::ns(slow_start) as f64;
        ramp.clamp(SLOW_START_FLOOR, 1.0)
    }

    // --- breaker ---

    /// Whether the breaker would let a request through at `now`, judged from
    /// the cached state without its lock (an open breaker whose time is up
    /// counts, since asking it moves it to half-open).
    pub(crate) fn breaker_allows(&self, now: u64) -> bool {
        match &self.breaker {
            None => true,
            Some(b) => match b.state.load(Ordering::Acquire) {
                OPEN => now >= b.opened_at.load(Ordering::Acquire) + b.open_for_ns,
                _ => true,
            },
        }
    }

    /// Asks the breaker for a permit; `Ok(None)` when there is no breaker,
    /// `Err(())` when it refuses.
    pub(crate) fn breaker_permit(
        &self,
    ) -> Result<Option<scalestack_resilience::breaker::Permit<'_>>, ()> {
        match &self.breaker {
            None => Ok(None),
            Some(b) => b.breaker.try_acquire().map(Some).map_err(|_| ()),
        }
    }

    /// The breaker's state, for the admin API (`None` without a breaker).
    pub(crate) fn breaker_state(&self) -> Option<BreakerState> {
        self.breaker.as_ref().map(|b| b.breaker.state())
    }

    // --- load ---

    /// Requests in flight to this endpoint.
    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub(crate) fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// The peak-EWMA response time in ns at `now`.
    pub(crate) fn rtt(&self) -> f64 {
        f64::from_bits(self.rtt_ewma.load(Ordering::Relaxed))
    }

    /// Feeds one response time into the peak-sensitive average: a slower
    /// sample replaces the average at once (so a degrading endpoint is
    /// avoided quickly); faster ones pull it down gradually.
    pub(crate) fn observe_rtt(&self, sample: Duration, now: u64) {
        let sample = sample.as_nanos() as f64;
        let current = self.rtt();
        let last = self.rtt_stamp.swap(now, Ordering::Relaxed);
        let next = if sample > current {
            sample
        } else {
            let age = now.saturating_sub(last) as f64;
            let keep = (-age / EWMA_DECAY_NS).exp();
            current * keep + sample * (1.0 - keep)
        };
        self.rtt_ewma.store(next.to_bits(), Ordering::Relaxed);
    }
}

/// A request counted in [`Endpoint::in_flight`]; the count drops with it.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The resilience crate's breaker settings from the pool config.
fn breaker_config(settings: &BreakerSettings) -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: settings.consecutive_failures,
        failure_rate: settings.failure_rate,
        min_requests: settings.min_requests,
        window: settings.window,
        open_for: settings.open_for,
        half_open_probes: settings.half_open_probes,
    }
}

impl Breaker {
    fn new(settings: &BreakerSettings, metrics: &EndpointMetrics) -> Self {
        let state = Arc::new(AtomicU8::new(CLOSED));
        let opened_at = Arc::new(AtomicU64::new(0));
        let (cached, opened) = (Arc::clone(&state), Arc::clone(&opened_at));
        let gauge = metrics.breaker_gauge();
        let transitions = metrics.breaker_transitions();
        let labels = metrics.labels();
        let breaker =
            CircuitBreaker::new(breaker_config(settings)).on_transition(move |from, to| {
                if to == BreakerState::Open {
                    opened.store(clock::now(), Ordering::Release);
                }
                cached.store(state_code(to), Ordering::Release);
                gauge.set(to.as_gauge());
                transitions.count(to);
                tracing::warn!(
                    pool = %labels.0,
                    endpoint = %labels.1,
                    from = from.as_str(),
                    to = to.as_str(),
                    "circuit breaker changed state"
                );
            });
        Self {
            breaker,
            state,
            opened_at,
            open_for_ns: clock::ns(settings.open_for),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn endpoint(name: &str, weight: u32) -> Arc<Endpoint> {
        Arc::new(
            Endpoint::new(
                &Arc::from("test"),
                "gateway.pools[0].endpoints[0]",
                name,
                weight,
                &BreakerSettings::default(),
            )
            .unwrap(),
        )
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn endpoints_need_host_and_port() {
        for bad in ["api.internal", "a b:80", "user@host:80", "", "http://x:1"] {
            let pool: Arc<str> = Arc::from("p");
            let error = Endpoint::new(&pool, "k[1]", bad, 1, &BreakerSettings::default())
                .unwrap_err()
                .to_string();
            assert!(error.contains("k[1]"), "{bad}: {error}");
        }
        assert_eq!(
            endpoint("api-2.internal:8082", 1).authority,
            "api-2.internal:8082"
        );
    }

    #[test]
    fn ejections_grow_and_are_capped() {
        let e = endpoint("127.0.0.1:1", 1);
        let config = OutlierConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejected_percent: 100,
        };
        assert!(!e.note_failure(&config));
        assert!(!e.note_failure(&config));
        e.note_success(&config, S);
        assert!(!e.note_failure(&config), "a success ends the run");
        assert!(!e.note_failure(&config));
        assert!(e.note_failure(&config));
        assert_eq!(e.eject(&config, 100 * S), Duration::from_secs(10));
        assert!(e.is_ejected(109 * S) && !e.is_ejected(110 * S));
        // Back, fails again at once: ejected for longer.
        for _ in 0..3 {
            e.note_failure(&config);
        }
        assert_eq!(e.eject(&config, 111 * S), Duration::from_secs(20));
        assert_eq!(e.eject(&config, 140 * S), Duration::from_secs(25), "capped");
        // Long enough in service: the series starts again.
        e.note_success(&config, 140 * S + 25 * S + 25 * S);
        assert_eq!(e.eject(&config, 300 * S), Duration::from_secs(10));
    }

    #[test]
    fn slow_start_ramps_after_coming_back() {
        let e = endpoint("127.0.0.1:1", 1);
        let ramp = Duration::from_secs(10);
        assert_eq!(e.slow_start_factor(ramp, 5 * S), 1.0, "healthy since start");
        e.set_healthy(false, 10 * S);
        e.set_healthy(true, 20 * S);
        assert_eq!(e.slow_start_factor(ramp, 20 * S), SLOW_START_FLOOR);
        assert!((e.slow_start_factor(ramp, 25 * S) - 0.5).abs() < 1e-9);
        assert_eq!(e.slow_start_factor(ramp, 31 * S), 1.0);
        assert_eq!(e.slow_start_factor(Duration::ZERO, 20 * S), 1.0);
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let e = endpoint("127.0.0.1:1", 1);
        e.observe_rtt(Duration::from_millis(100), S);
        assert_eq!(e.rtt(), 100e6, "a slow sample counts at once");
        e.observe_rtt(Duration::from_millis(1), S + 10 * S);
        let after = e.rtt();
        assert!(after < 100e6 && after > 1e6, "{after}");
    }

    #[test]
    fn in_flight_counts_until_the_guard_drops() {
        let e = endpoint("127.0.0.1:1", 1);
        let a = e.start_request();
        let b = e.start_request();
        assert_eq!(e.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(e.in_flight(), 0);
    }

    #[test]
    fn breaker_opens_and_is_skipped_until_it_may_probe() {
        let settings = BreakerSettings {
            consecutive_failures: 2,
            open_for: Duration::from_secs(3600),
            ..BreakerSettings::default()
        };
        let e = Endpoint::new(&Arc::from("p"), "k", "127.0.0.1:1", 1, &settings).unwrap();
        assert!(e.breaker_allows(clock::now()));
        for _ in 0..2 {
            e.breaker_permit().unwrap().unwrap().failure();
        }
        assert_eq!(e.breaker_state(), Some(BreakerState::Open));
        assert!(!e.breaker_allows(clock::now()));
        assert!(e.breaker_permit().is_err());
        assert!(e.breaker_allows(clock::now() + clock::ns(Duration::from_secs(3601))));
    }
}
