//! The gateway's metrics: names, descriptions and cached handles.
//!
//! Labels are bounded by construction: `endpoint` takes one value per
//! configured endpoint (plus `none` for requests answered before an endpoint
//! was chosen), `status_class` five, `kind` three, `method` the nine standard
//! methods plus `OTHER`. Handles are created on first use and kept, so the
//! request path neither formats labels nor looks series up by name, and a
//! series appears only once it has something to say.

use std::sync::OnceLock;
use std::time::Duration;

use http::Method;
use metrics::{Counter, Gauge, Histogram};
use scalestack_telemetry::metrics::{HTTP_DURATION, HTTP_REQUESTS};

use crate::error::UpstreamErrorKind;

/// Counter of proxied requests, by `endpoint` and `status_class`.
pub(crate) const REQUESTS: &str = "scalestack_gateway_requests_total";
/// Histogram of the time from request head to response head, by `endpoint`.
pub(crate) const REQUEST_DURATION: &str = "scalestack_gateway_request_duration_seconds";
/// Counter of failed attempts to reach an endpoint, by `endpoint` and `kind`.
pub(crate) const UPSTREAM_ERRORS: &str = "scalestack_gateway_upstream_errors_total";
/// Counter of attempts after the first for one request.
pub(crate) const RETRIES: &str = "scalestack_gateway_retries_total";
/// Gauge, 1 when an endpoint gets traffic and 0 when it is down, by `endpoint`.
pub(crate) const ENDPOINT_HEALTHY: &str = "scalestack_gateway_endpoint_healthy";
/// Gauge of open client connections.
pub(crate) const ACTIVE_CONNECTIONS: &str = "scalestack_gateway_active_connections";
/// Counter of active health checks, by `endpoint` and `result` (`ok`, `fail`).
pub(crate) const HEALTH_CHECKS: &str = "scalestack_gateway_health_checks_total";

/// The `route` label of the common `scalestack_http_*` series: the gateway
/// does not route by path (yet), so every proxied request is one route.
const ROUTE: &str = "proxy";

/// `endpoint` label of requests answered before an endpoint was chosen.
pub(crate) const NO_ENDPOINT: &str = "none";

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
        "Requests answered by the gateway, by endpoint (none when no endpoint was chosen) and status class."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from a client's request head to the response head, by endpoint."
    );
    describe_counter!(
        UPSTREAM_ERRORS,
        "Failed attempts to get a response head from an endpoint, by endpoint and kind (connect, timeout, other)."
    );
    describe_counter!(
        RETRIES,
        "Requests sent to another endpoint after an attempt failed."
    );
    describe_gauge!(
        ENDPOINT_HEALTHY,
        "1 when an endpoint receives traffic, 0 when it is marked down."
    );
    describe_gauge!(ACTIVE_CONNECTIONS, "Open client connections.");
    describe_counter!(
        HEALTH_CHECKS,
        "Active health checks of the endpoints, by endpoint and result (ok, fail)."
    );
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

/// Request count and duration for one `endpoint` label value.
#[derive(Debug)]
pub(crate) struct RequestSeries {
    endpoint: String,
    by_class: [OnceLock<Counter>; 5],
    duration: OnceLock<Histogram>,
}

impl RequestSeries {
    pub(crate) fn new(endpoint: &str) -> Self {
        Self {
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
                    "endpoint" => self.endpoint.clone(),
                    "status_class" => CLASSES[class])
            })
            .increment(1);
        self.duration
            .get_or_init(
                || metrics::histogram!(REQUEST_DURATION, "endpoint" => self.endpoint.clone()),
            )
            .record(elapsed.as_secs_f64());
    }
}

/// Every series labelled with one endpoint.
#[derive(Debug)]
pub(crate) struct EndpointMetrics {
    pub(crate) requests: RequestSeries,
    errors: [OnceLock<Counter>; 3],
    checks: [OnceLock<Counter>; 2],
    healthy: Gauge,
}

impl EndpointMetrics {
    /// Handles for `endpoint`; its health gauge starts at 1, like the endpoint.
    pub(crate) fn new(endpoint: &str) -> Self {
        let healthy = metrics::gauge!(ENDPOINT_HEALTHY, "endpoint" => endpoint.to_owned());
        healthy.set(1.0);
        Self {
            requests: RequestSeries::new(endpoint),
            errors: Default::default(),
            checks: Default::default(),
            healthy,
        }
    }

    /// Counts one failed attempt.
    pub(crate) fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.errors[kind.index()]
            .get_or_init(|| {
                metrics::counter!(UPSTREAM_ERRORS,
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
                    "endpoint" => self.requests.endpoint.clone(),
                    "result" => result)
            })
            .increment(1);
    }

    /// Sets the health gauge.
    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.healthy.set(if healthy { 1.0 } else { 0.0 });
    }
}

// === Gateway-wide series ===

/// Series that are not about one endpoint.
#[derive(Debug)]
pub(crate) struct ProxyMetrics {
    /// Requests answered before an endpoint was chosen (413, 400, 503).
    pub(crate) no_endpoint: RequestSeries,
    retries: Counter,
    http_requests: [[OnceLock<Counter>; 5]; 10],
    http_duration: [OnceLock<Histogram>; 10],
}

impl ProxyMetrics {
    pub(crate) fn new() -> Self {
        Self {
            no_endpoint: RequestSeries::new(NO_ENDPOINT),
            retries: metrics::counter!(RETRIES),
            http_requests: Default::default(),
            http_duration: Default::default(),
        }
    }

    /// Counts one retry.
    pub(crate) fn retry(&self) {
        self.retries.increment(1);
    }

    /// Records one request in the common `scalestack_http_*` series, as
    /// `scalestack_telemetry::metrics::record_http("proxy", ..)` would, but
    /// with cached handles and with unknown methods folded into `OTHER` so
    /// that a client cannot create series at will.
    pub(crate) fn record_http(&self, method: &Method, status: u16, elapsed: Duration) {
        let m = method_index(method);
        let class = class_index(status);
        self.http_requests[m][class]
            .get_or_init(|| {
                metrics::counter!(HTTP_REQUESTS,
                    "route" => ROUTE,
                    "method" => METHODS[m],
                    "status_class" => CLASSES[class])
            })
            .increment(1);
        self.http_duration[m]
            .get_or_init(
                || metrics::histogram!(HTTP_DURATION, "route" => ROUTE, "method" => METHODS[m]),
            )
            .record(elapsed.as_secs_f64());
    }
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
