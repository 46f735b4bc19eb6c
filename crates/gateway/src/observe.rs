//! The gateway's metrics: names, descriptions and cached handles, and the
//! optional access log.
//!
//! Labels are bounded by construction: `route`, `pool`, `endpoint` and
//! `tier` take the configured names (plus `none` for requests answered
//! before a route or an endpoint was chosen), `status_class` five values,
//! `kind` five, `method` the nine standard methods plus `OTHER`. Handles are
//! created once and kept, so the request path neither formats labels nor
//! looks series up by name.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::Method;
use metrics::{Counter, Gauge, Histogram};
use scalestack_resilience::BreakerState;
use scalestack_telemetry::metrics::{HTTP_DURATION, HTTP_REQUESTS};

use crate::error::UpstreamErrorKind;

/// Counter of proxied requests, by `pool`, `endpoint` and `status_class`.
pub(crate) const REQUESTS: &str = "scalestack_gateway_requests_total";
/// Histogram of the time from request head to response head, by `pool` and `endpoint`.
pub(crate) const REQUEST_DURATION: &str = "scalestack_gateway_request_duration_seconds";
/// Counter of failed attempts to reach an endpoint, by `pool`, `endpoint` and `kind`.
pub(crate) const UPSTREAM_ERRORS: &str = "scalestack_gateway_upstream_errors_total";
/// Counter of attempts after the first for one request, by `pool`.
pub(crate) const RETRIES: &str = "scalestack_gateway_retries_total";
/// Counter of retries refused by the retry budget, by `pool`.
pub(crate) const BUDGET_EXHAUSTED: &str = "scalestack_gateway_retry_budget_exhausted_total";
/// Gauge, 1 when an endpoint passes its health checks and 0 when it is down.
pub(crate) const ENDPOINT_HEALTHY: &str = "scalestack_gateway_endpoint_healthy";
/// Gauge of an endpoint's weight.
pub(crate) const ENDPOINT_WEIGHT: &str = "scalestack_gateway_endpoint_weight";
/// Gauge, 1 while an endpoint is drained.
pub(crate) const ENDPOINT_DRAINED: &str = "scalestack_gateway_endpoint_drained";
/// Gauge of open connections to an endpoint, over all worker threads.
pub(crate) const UPSTREAM_CONNECTIONS: &str = "scalestack_gateway_upstream_connections";
/// Gauge of an endpoint's circuit breaker: 0 closed, 1 open, 2 half-open.
pub(crate) const BREAKER_STATE: &str = "scalestack_gateway_breaker_state";
/// Counter of breaker state changes, by `pool`, `endpoint` and `to`.
pub(crate) const BREAKER_TRANSITIONS: &str = "scalestack_gateway_breaker_transitions_total";
/// Counter of passive outlier ejections, by `pool` and `endpoint`.
pub(crate) const EJECTIONS: &str = "scalestack_gateway_ejections_total";
/// Gauge of open client connections.
pub(crate) const ACTIVE_CONNECTIONS: &str = "scalestack_gateway_active_connections";
/// Gauge of client connections parked while idle (no HTTP session buffers).
pub(crate) const PARKED_CONNECTIONS: &str = "scalestack_gateway_parked_connections";
/// Counter of HTTP sessions started on client connections: one per
/// connection, plus one each time a parked connection is woken.
pub(crate) const CLIENT_SESSIONS: &str = "scalestack_gateway_client_sessions_total";
/// Gauge of client connections kept warm: returning soon after they were
/// parked, they are parked after a longer idle time.
pub(crate) const WARM_CONNECTIONS: &str = "scalestack_gateway_warm_connections";
/// Counter of active health checks, by `pool`, `endpoint` and `result` (`ok`, `fail`).
pub(crate) const HEALTH_CHECKS: &str = "scalestack_gateway_health_checks_total";
/// Counter of requests refused by a rate limit, by `route` and `tier`.
pub(crate) const RATE_LIMITED: &str = "scalestack_gateway_rate_limited_total";
/// Counter of configuration reloads, by `result` (`ok`, `error`).
pub(crate) const RELOADS: &str = "scalestack_gateway_reloads_total";

/// `route`, `pool` or `endpoint` label of requests answered before one was chosen.
pub(crate) const NONE: &str = "none";

/// Status classes in the order of [`class_index`]; the same strings as
/// `scalestack_telemetry::metrics::status_class`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Methods with a `method` label of their own; anything else is `OTHER`.
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];

/// Registers the descriptions of every gateway metric.
pub(crate) fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS,
        "Requests answered by the gateway, by pool, endpoint (none when no endpoint was chosen) and status class."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from a client's request head to the response head, by pool and endpoint."
    );
    describe_counter!(
        UPSTREAM_ERRORS,
        "Failed attempts to get a response from an endpoint, by pool, endpoint and kind (connect, unsent, timeout, other, status)."
    );
    describe_counter!(
        RETRIES,
        "Requests sent to another endpoint after an attempt failed, by pool."
    );
    describe_counter!(
        BUDGET_EXHAUSTED,
        "Retries not made because the pool's retry budget was spent, by pool."
    );
    describe_gauge!(
        ENDPOINT_HEALTHY,
        "1 when an endpoint passes its health checks, 0 when it is marked down."
    );
    describe_gauge!(ENDPOINT_WEIGHT, "The balancing weight of an endpoint.");
    describe_gauge!(
        ENDPOINT_DRAINED,
        "1 while an endpoint is drained (no new requests)."
    );
    describe_gauge!(
        UPSTREAM_CONNECTIONS,
        "Open connections to an endpoint, over all worker threads."
    );
    describe_gauge!(
        BREAKER_STATE,
        "State of an endpoint's circuit breaker: 0 closed, 1 open, 2 half-open."
    );
    describe_counter!(
        BREAKER_TRANSITIONS,
        "Circuit breaker state changes, by pool, endpoint and the state changed to."
    );
    describe_counter!(
        EJECTIONS,
        "Passive outlier ejections of an endpoint after consecutive failures."
    );
    describe_gauge!(ACTIVE_CONNECTIONS, "Open client connections.");
    describe_gauge!(
        PARKED_CONNECTIONS,
        "Idle keep-alive client connections parked without HTTP session buffers."
    );
    describe_counter!(
        CLIENT_SESSIONS,
        "HTTP sessions started on client connections (one per connection and one per wake from parking)."
    );
    describe_gauge!(
        WARM_CONNECTIONS,
        "Client connections kept warm: they came back soon after parking and are parked after a longer idle time."
    );
    describe_counter!(
        HEALTH_CHECKS,
        "Active health checks of the endpoints, by pool, endpoint and result (ok, fail)."
    );
    describe_counter!(
        RATE_LIMITED,
        "Requests refused with 429 by a rate-limit tier, by route and tier."
    );
    describe_counter!(RELOADS, "Configuration reloads, by result (ok, error).");
}

/// Position of a status code's class in [`CLASSES`].
fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// Position of a method in [`METHODS`].
fn method_index(method: &Method) -> usize {
    match method.as_str() {
        "GET" => 0,
        "HEAD" => 1,
        "POST" => 2,
        "PUT" => 3,
        "DELETE" => 4,
        "PATCH" => 5,
        "OPTIONS" => 6,
        "CONNECT" => 7,
        "TRACE" => 8,
        _ => 9,
    }
}

// === Per-endpoint series ===

/// Request count and duration for one `pool` and `endpoint` label pair.
#[derive(Debug)]
pub(crate) struct RequestSeries {
    pool: Arc<str>,
    endpoint: String,
    by_class: [OnceLock<Counter>; 5],
    duration: OnceLock<Histogram>,
}

impl RequestSeries {
    pub(crate) fn new(pool: &Arc<str>, endpoint: &str) -> Self {
        Self {
            pool: Arc::clone(pool),
            endpoint: endpoint.to_owned(),
            by_class: Default::default(),
            duration: OnceLock::new(),
        }
    }

    /// Records one answered request.
    pub(crate) fn record(&self, status: u16, elapsed: Duration) {
        let class = class_index(status);
        self.by_class[class]
            .get_or_init(|| {
                metrics::counter!(REQUESTS,
                    "pool" => self.pool.to_string(),
                    "endpoint" => self.endpoint.clone(),
                    "status_class" => CLASSES[class])
            })
            .increment(1);
        self.duration
            .get_or_init(|| {
                metrics::histogram!(REQUEST_DURATION,
                    "pool" => self.pool.to_string(),
                    "endpoint" => self.endpoint.clone())
            })
            .record(elapsed.as_secs_f64());
    }
}

/// Counters of breaker transitions by the state changed to.
#[derive(Debug, Clone)]
pub(crate) struct Transitions([Counter; 3]);

impl Transitions {
    /// Counts one change to `to`.
    pub(crate) fn count(&self, to: BreakerState) {
        let i = match to {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        };
        self.0[i].increment(1);
    }
}

/// Every series labelled with one endpoint.
#[derive(Debug)]
pub(crate) struct EndpointMetrics {
    pub(crate) requests: RequestSeries,
    errors: [OnceLock<Counter>; 5],
    checks: [OnceLock<Counter>; 2],
    healthy: Gauge,
    weight: Gauge,
    drained: Gauge,
    connections: Gauge,
    ejections: Counter,
}

impl EndpointMetrics {
    /// Handles for `endpoint` of `pool`; its health gauge starts at 1, like the endpoint.
    pub(crate) fn new(pool: &Arc<str>, endpoint: &str) -> Self {
        let labels = [
            ("pool", pool.to_string()),
            ("endpoint", endpoint.to_owned()),
        ];
        let healthy = metrics::gauge!(ENDPOINT_HEALTHY, &labels);
        healthy.set(1.0);
        let drained = metrics::gauge!(ENDPOINT_DRAINED, &labels);
        drained.set(0.0);
        Self {
            requests: RequestSeries::new(pool, endpoint),
            errors: Default::default(),
            checks: Default::default(),
            healthy,
            weight: metrics::gauge!(ENDPOINT_WEIGHT, &labels),
            drained,
            connections: metrics::gauge!(UPSTREAM_CONNECTIONS, &labels),
            ejections: metrics::counter!(EJECTIONS, &labels),
        }
    }

    /// `(pool, endpoint)` for log fields.
    pub(crate) fn labels(&self) -> (Arc<str>, String) {
        (
            Arc::clone(&self.requests.pool),
            self.requests.endpoint.clone(),
        )
    }

    fn label_pairs(&self) -> [(&'static str, String); 2] {
        [
            ("pool", self.requests.pool.to_string()),
            ("endpoint", self.requests.endpoint.clone()),
        ]
    }

    /// The breaker-state gauge, set to closed.
    pub(crate) fn breaker_gauge(&self) -> Gauge {
        let gauge = metrics::gauge!(BREAKER_STATE, &self.label_pairs());
        gauge.set(0.0);
        gauge
    }

    /// The breaker-transition counters.
    pub(crate) fn breaker_transitions(&self) -> Transitions {
        let [pool, endpoint] = self.label_pairs();
        let counter = |to: &'static str| {
            metrics::counter!(BREAKER_TRANSITIONS,
                "pool" => pool.1.clone(), "endpoint" => endpoint.1.clone(), "to" => to)
        };
        Transitions([counter("closed"), counter("open"), counter("half_open")])
    }

    /// Counts one failed attempt.
    pub(crate) fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.errors[kind.index()]
            .get_or_init(|| {
                metrics::counter!(UPSTREAM_ERRORS,
                    "pool" => self.requests.pool.to_string(),
                    "endpoint" => self.requests.endpoint.clone(),
                    "kind" => kind.label())
            })
            .increment(1);
    }

    /// Counts one active health check.
    pub(crate) fn health_check(&self, passed: bool) {
        let (slot, result) = if passed { (0, "ok") } else { (1, "fail") };
        self.checks[slot]
            .get_or_init(|| {
                metrics::counter!(HEALTH_CHECKS,
                    "pool" => self.requests.pool.to_string(),
                    "endpoint" => self.requests.endpoint.clone(),
                    "result" => result)
            })
            .increment(1);
    }

    /// Sets the health gauge.
    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.healthy.set(if healthy { 1.0 } else { 0.0 });
    }

    /// Sets the weight gauge.
    pub(crate) fn set_weight(&self, weight: u32) {
        self.weight.set(f64::from(weight));
    }

    /// Sets the drained gauge.
    pub(crate) fn set_drained(&self, drained: bool) {
        self.drained.set(if drained { 1.0 } else { 0.0 });
    }

    /// Counts one ejection.
    pub(crate) fn ejected(&self) {
        self.ejections.increment(1);
    }

    /// Counts a new connection; decrement the returned gauge when it closes.
    pub(crate) fn connection_opened(&self) -> Gauge {
        self.connections.increment(1.0);
        self.connections.clone()
    }
}

// === Per-pool series ===

/// Series of one pool.
#[derive(Debug)]
pub(crate) struct PoolMetrics {
    /// Requests of the pool's routes answered before an endpoint was chosen.
    pub(crate) no_endpoint: RequestSeries,
    retries: Counter,
    budget_exhausted: Counter,
}

impl PoolMetrics {
    pub(crate) fn new(pool: &str) -> Self {
        let name: Arc<str> = Arc::from(pool);
        Self {
            no_endpoint: RequestSeries::new(&name, NONE),
            retries: metrics::counter!(RETRIES, "pool" => pool.to_owned()),
            budget_exhausted: metrics::counter!(BUDGET_EXHAUSTED, "pool" => pool.to_owned()),
        }
    }

    /// Counts one retry.
    pub(crate) fn retry(&self) {
        self.retries.increment(1);
    }

    /// Counts one retry refused by the budget.
    pub(crate) fn budget_exhausted(&self) {
        self.budget_exhausted.increment(1);
    }
}

// === Per-route series ===

/// The common `scalestack_http_*` series for one route, and its rate-limit rejections.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    route: String,
    requests: [[OnceLock<Counter>; 5]; 10],
    duration: [OnceLock<Histogram>; 10],
    /// One per tier of the route, in the route's order.
    limited: Vec<Counter>,
}

impl RouteMetrics {
    pub(crate) fn new(route: &str, tiers: &[&str]) -> Self {
        Self {
            route: route.to_owned(),
            requests: Default::default(),
            duration: Default::default(),
            limited: tiers
                .iter()
                .map(|tier| {
                    metrics::counter!(RATE_LIMITED,
                        "route" => route.to_owned(), "tier" => (*tier).to_owned())
                })
                .collect(),
        }
    }

    /// Records one request, as `scalestack_telemetry::metrics::record_http`
    /// would, but with cached handles and with unknown methods folded into
    /// `OTHER` so that a client cannot create series at will.
    pub(crate) fn record(&self, method: &Method, status: u16, elapsed: Duration) {
        let m = method_index(method);
        let class = class_index(status);
        self.requests[m][class]
            .get_or_init(|| {
                metrics::counter!(HTTP_REQUESTS,
                    "route" => self.route.clone(),
                    "method" => METHODS[m],
                    "status_class" => CLASSES[class])
            })
            .increment(1);
        self.duration[m]
            .get_or_init(|| {
                metrics::histogram!(HTTP_DURATION,
                    "route" => self.route.clone(), "method" => METHODS[m])
            })
            .record(elapsed.as_secs_f64());
    }

    /// Counts a request refused by the route's tier number `tier`.
    pub(crate) fn limited(&self, tier: usize) {
        if let Some(counter) = self.limited.get(tier) {
            counter.increment(1);
        }
    }
}

/// Counts one reload.
pub(crate) fn reloaded(ok: bool) {
    metrics::counter!(RELOADS, "result" => if ok { "ok" } else { "error" }).increment(1);
}

/// Counts a client connection for as long as it lives.
#[derive(Debug)]
pub(crate) struct ConnectionGuard(Gauge);

impl ConnectionGuard {
    pub(crate) fn open(gauge: &Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge.clone())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The gauge of open client connections.
pub(crate) fn active_connections() -> Gauge {
    metrics::gauge!(ACTIVE_CONNECTIONS)
}

/// The gauge of parked client connections.
pub(crate) fn parked_connections() -> Gauge {
    metrics::gauge!(PARKED_CONNECTIONS)
}

/// The counter of HTTP sessions started on client connections.
pub(crate) fn client_sessions() -> Counter {
    metrics::counter!(CLIENT_SESSIONS)
}

/// The gauge of warm client connections.
pub(crate) fn warm_connections() -> Gauge {
    metrics::gauge!(WARM_CONNECTIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_labels_agree_with_telemetry() {
        for status in 100..=999 {
            assert_eq!(
                CLASSES[class_index(status)],
                scalestack_telemetry::metrics::status_class(status),
                "{status}"
            );
        }
    }

    #[test]
    fn method_labels_are_bounded() {
        for (i, name) in METHODS.iter().enumerate().take(9) {
            assert_eq!(
                method_index(&Method::from_bytes(name.as_bytes()).unwrap()),
                i
            );
        }
        let custom = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(METHODS[method_index(&custom)], "OTHER");
    }
}
