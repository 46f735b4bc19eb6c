//! The upstream pool: the configured endpoints, their health, the balancer
//! that picks among them and the client that keeps pooled keep-alive
//! connections to them.
//!
//! Health is one flag per endpoint, written by the active checker
//! ([`crate::health`]) and by the proxy when a connection fails (passive
//! checking), and read by the balancer on every request.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use scalestack_config::UpstreamConfig;
use scalestack_telemetry::health::Check;

use crate::balance::RoundRobin;
use crate::error::GatewayError;
use crate::observe::EndpointMetrics;

/// The HTTP client to the endpoints. Request bodies are buffered, so a
/// `Full` body can be cloned (cheaply: `Bytes`) for every attempt.
pub(crate) type UpstreamClient = Client<HttpConnector, Full<Bytes>>;

/// One upstream server.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// The endpoint as configured (`127.0.0.1:8081`): label, log field and
    /// name of its health check.
    pub(crate) name: String,
    authority: Authority,
    healthy: AtomicBool,
    /// The latest check, active or passive, for the admin `/health` report.
    last_check: Mutex<Option<Check>>,
    pub(crate) metrics: EndpointMetrics,
}

impl Endpoint {
    fn new(index: usize, name: &str) -> Result<Self, GatewayError> {
        let invalid = || GatewayError::InvalidEndpoint {
            index,
            value: name.to_owned(),
        };
        let authority: Authority = name.parse().map_err(|_| invalid())?;
        // A port is required: guessing 80 would hide a typo in the config.
        if authority.port_u16().is_none() || authority.as_str().contains('@') {
            return Err(invalid());
        }
        Ok(Self {
            name: name.to_owned(),
            authority,
            healthy: AtomicBool::new(true),
            last_check: Mutex::new(None),
            metrics: EndpointMetrics::new(name),
        })
    }

    /// Whether the endpoint receives traffic.
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Sets the health flag; returns whether it changed. The caller logs the
    /// change, since only it knows why.
    pub(crate) fn set_healthy(&self, healthy: bool) -> bool {
        let was = self.healthy.swap(healthy, Ordering::AcqRel);
        if was != healthy {
            self.metrics.set_healthy(healthy);
        }
        was != healthy
    }

    /// The absolute URI of `path_and_query` on this endpoint.
    pub(crate) fn uri(&self, path_and_query: PathAndQuery) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }

    /// The `Host` header of the endpoint's own requests (health checks).
    pub(crate) fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Records the outcome of the latest check.
    pub(crate) fn set_last_check(&self, check: Check) {
        *self
            .last_check
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(check);
    }

    /// The outcome of the latest check, if there was one.
    pub(crate) fn last_check(&self) -> Option<Check> {
        self.last_check
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Every endpoint, the balancer and the connection pool.
#[derive(Debug)]
pub(crate) struct Pool {
    endpoints: Vec<Endpoint>,
    balancer: RoundRobin,
    client: UpstreamClient,
}

impl Pool {
    /// Checks the endpoints of `config` and sets up the client. Opens no
    /// connection: the first request or health check does.
    pub(crate) fn new(config: &UpstreamConfig) -> Result<Self, GatewayError> {
        if config.endpoints.is_empty() {
            return Err(GatewayError::NoEndpoints);
        }
        let endpoints = config
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, name)| Endpoint::new(i, name))
            .collect::<Result<Vec<_>, _>>()?;

        let mut connector = HttpConnector::new();
        // Requests are written in one go; Nagle would only delay them.
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.idle_timeout)
            .pool_max_idle_per_host(config.max_idle_per_endpoint)
            // Without a timer the pool never evicts idle connections.
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Self {
            endpoints,
            balancer: RoundRobin::default(),
            client,
        })
    }

    /// Number of endpoints.
    pub(crate) fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Every endpoint, in config order.
    pub(crate) fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Endpoint number `index`.
    pub(crate) fn endpoint(&self, index: usize) -> &Endpoint {
        &self.endpoints[index]
    }

    /// The client with the pooled connections.
    pub(crate) fn client(&self) -> &UpstreamClient {
        &self.client
    }

    /// The next healthy endpoint not in `tried`.
    pub(crate) fn pick(&self, tried: &[usize]) -> Option<usize> {
        self.balancer.pick(self.endpoints.len(), |i| {
            self.endpoints[i].is_healthy() && !tried.contains(&i)
        })
    }

    /// Takes endpoint `index` out of rotation because a connection to it
    /// failed (passive health checking); the active checker brings it back.
    pub(crate) fn mark_down(&self, index: usize, error: &dyn std::error::Error) {
        let endpoint = &self.endpoints[index];
        if endpoint.set_healthy(false) {
            let error = crate::error::chain(error);
            tracing::warn!(endpoint = %endpoint.name, %error, "endpoint down: connection failed");
            endpoint.set_last_check(Check {
                name: crate::health::check_name(&endpoint.name),
                status: scalestack_telemetry::health::Status::Fail,
                latency_ms: 0.0,
                error: Some(format!("a proxied request could not connect: {error}")),
            });
        }
    }

    /// Whether any endpoint receives traffic.
    pub(crate) fn any_healthy(&self) -> bool {
        self.endpoints.iter().any(Endpoint::is_healthy)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn config(endpoints: &[&str]) -> UpstreamConfig {
        UpstreamConfig {
            endpoints: endpoints.iter().map(|e| (*e).to_owned()).collect(),
            ..UpstreamConfig::default()
        }
    }

    #[tokio::test]
    async fn endpoints_need_host_and_port() {
        assert!(matches!(
            Pool::new(&config(&[])),
            Err(GatewayError::NoEndpoints)
        ));
        for bad in ["api.internal", "a b:80", "user@host:80", "", "http://x:1"] {
            let error = Pool::new(&config(&["127.0.0.1:1", bad])).unwrap_err();
            assert!(
                matches!(error, GatewayError::InvalidEndpoint { index: 1, .. }),
                "{bad}: {error}"
            );
        }
        let pool = Pool::new(&config(&["127.0.0.1:8081", "api-2.internal:8082"])).unwrap();
        assert_eq!(pool.len(), 2);
        let uri = pool
            .endpoint(1)
            .uri(PathAndQuery::from_static("/u?x=1"))
            .unwrap();
        assert_eq!(uri, "http://api-2.internal:8082/u?x=1");
    }

    pub(crate) fn refused() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused")
    }

    #[tokio::test]
    async fn down_endpoints_are_not_picked() {
        let pool = Pool::new(&config(&["127.0.0.1:1", "127.0.0.1:2"])).unwrap();
        pool.mark_down(0, &refused());
        assert!(!pool.endpoint(0).is_healthy());
        assert_eq!(pool.pick(&[]), Some(1));
        assert_eq!(pool.pick(&[1]), None);
        assert!(pool.any_healthy());
        assert!(pool.endpoint(1).set_healthy(false));
        assert!(
            !pool.endpoint(1).set_healthy(false),
            "no change the second time"
        );
        assert!(!pool.any_healthy());
    }
}
