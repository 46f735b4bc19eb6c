//! The routing table: routes, pools and rate-limit tiers built from the
//! config, and swapped as a whole on reload.
//!
//! A table is immutable once built, apart from the endpoints' own atomic
//! state (health, weight, drain, load). Requests in flight keep the table they
//! started with, so a reload never cuts one off. Building a new table reuses
//! every endpoint whose pool and address stay, with its health, breaker,
//! counters and pooled connections; only what really changed starts afresh.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method};
use scalestack_config::{
    Algorithm, GatewayConfig, HealthCheckConfig, OutlierConfig, PoolConfig, RateLimitAlgorithm,
    RequestKey,
};
use scalestack_resilience::ratelimit::{Algorithm as LimitAlgorithm, Policy};
use scalestack_resilience::{Backoff, RetryBudget};

use crate::balance::{Balancer, Pick};
use crate::endpoint::Endpoint;
use crate::error::GatewayError;
use crate::observe::{PoolMetrics, RouteMetrics};

/// Everything a request is matched and balanced against.
#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) routes: Vec<Route>,
    pub(crate) pools: Vec<Arc<Pool>>,
    pub(crate) tiers: Vec<Tier>,
    /// Largest request body accepted.
    pub(crate) max_request_body: u64,
    /// Whether to log every request.
    pub(crate) access_log: bool,
    /// Whether any route matches on host names.
    pub(crate) routes_by_host: bool,
}

/// One route.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) name: Arc<str>,
    /// Lower-case host names; empty matches any.
    hosts: Vec<Box<str>>,
    prefix: Box<str>,
    /// Empty matches any.
    methods: Vec<Method>,
    /// Index into [`Table::pools`].
    pub(crate) pool: usize,
    /// Indexes into [`Table::tiers`].
    pub(crate) tiers: Vec<usize>,
    pub(crate) metrics: RouteMetrics,
}

/// One rate-limit tier.
#[derive(Debug)]
pub(crate) struct Tier {
    pub(crate) name: Arc<str>,
    /// Stable across reloads (a hash of the name), so counts survive them.
    pub(crate) id: u32,
    pub(crate) policy: Policy,
    pub(crate) key: RequestKey,
}

/// A pool of endpoints with its balancer and policies.
#[derive(Debug)]
pub(crate) struct Pool {
    pub(crate) name: Arc<str>,
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
    pub(crate) balancer: Balancer,
    pub(crate) hash_key: RequestKey,
    pub(crate) connect_timeout: Duration,
    pub(crate) first_byte_timeout: Duration,
    pub(crate) total_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_idle: usize,
    pub(crate) slow_start: Duration,
    pub(crate) outlier: OutlierConfig,
    pub(crate) health_check: HealthCheckConfig,
    pub(crate) retry: RetryPolicy,
    pub(crate) metrics: PoolMetrics,
}

/// A pool's retry rules.
#[derive(Debug)]
pub(crate) struct RetryPolicy {
    /// Attempts after the first.
    pub(crate) attempts: u32,
    statuses: Vec<u16>,
    pub(crate) backoff: Backoff,
    pub(crate) budget: RetryBudget,
    pub(crate) max_replay_body: u64,
}

impl RetryPolicy {
    /// Whether an upstream answer with `status` is retried (if the request may be).
    pub(crate) fn retries_status(&self, status: u16) -> bool {
        self.statuses.contains(&status)
    }
}

// === Building ===

impl Table {
    /// Builds the table of `config`, reusing the endpoints of `previous`
    /// that are still configured.
    pub(crate) fn build(
        config: &GatewayConfig,
        previous: Option<&Table>,
    ) -> Result<Table, GatewayError> {
        let mut pools = Vec::with_capacity(config.pools.len());
        for (i, pool) in config.pools.iter().enumerate() {
            let old = previous.and_then(|t| t.pools.iter().find(|p| *p.name == *pool.name));
            pools.push(Arc::new(Pool::build(
                i,
                pool,
                config.health_check_of(pool),
                old.map(|p| &**p),
            )?));
        }
        let tiers = config
            .rate_limits
            .iter()
            .map(|limit| {
                let algorithm = match limit.algorithm {
                    RateLimitAlgorithm::TokenBucket => LimitAlgorithm::TokenBucket,
                    RateLimitAlgorithm::SlidingWindowLog => LimitAlgorithm::SlidingWindowLog,
                    RateLimitAlgorithm::SlidingWindowCounter => {
                        LimitAlgorithm::SlidingWindowCounter
                    }
                    RateLimitAlgorithm::FixedWindow => LimitAlgorithm::FixedWindow,
                };
                Tier {
                    name: Arc::from(limit.name.as_str()),
                    id: crate::balance::hash_bytes(limit.name.as_bytes()) as u32,
                    policy: Policy {
                        algorithm,
                        limit: limit.limit,
                        window: limit.window,
                        burst: limit.burst,
                    },
                    key: limit.key.clone(),
                }
            })
            .collect::<Vec<_>>();
        let routes = config
            .routes
            .iter()
            .map(|route| {
                let pool = config
                    .pools
                    .iter()
                    .position(|p| p.name == route.pool)
                    .ok_or_else(|| GatewayError::Config(format!(
                        "gateway.routes: route \"{}\" names pool \"{}\", which does not exist",
                        route.name, route.pool
                    )))?;
                let tiers = route
                    .rate_limits
                    .iter()
                    .map(|name| {
                        tiers.iter().position(|t| *t.name == **name).ok_or_else(|| {
                            GatewayError::Config(format!(
                                "gateway.routes: route \"{}\" names rate limit \"{name}\", which does not exist",
                                route.name
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let methods = route
                    .methods
                    .iter()
                    .map(|m| Method::from_bytes(m.as_bytes()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| {
                        GatewayError::Config(format!(
                            "gateway.routes: route \"{}\" has an invalid method",
                            route.name
                        ))
                    })?;
                Ok(Route {
                    name: Arc::from(route.name.as_str()),
                    hosts: route
                        .hosts
                        .iter()
                        .map(|h| h.to_ascii_lowercase().into_boxed_str())
                        .collect(),
                    prefix: route.path_prefix.clone().into_boxed_str(),
                    methods,
                    pool,
                    tiers,
                    metrics: RouteMetrics::new(
                        &route.name,
                        &route.rate_limits.iter().map(String::as_str).collect::<Vec<_>>(),
                    ),
                })
            })
            .collect::<Result<Vec<_>, GatewayError>>()?;
        Ok(Table {
            routes_by_host: routes.iter().any(|r| !r.hosts.is_empty()),
            routes,
            pools,
            tiers,
            max_request_body: config.max_request_body,
            access_log: config.access_log,
        })
    }

    /// The first route that serves `method` on `host` and `path`.
    pub(crate) fn route(&self, method: &Method, host: Option<&str>, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(method, host, path))
    }

    /// The pool named `name`.
    pub(crate) fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| *p.name == *name)
    }

    /// Every endpoint of every pool.
    pub(crate) fn endpoints(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.pools.iter().flat_map(|p| p.endpoints.iter())
    }
}

impl Route {
    fn matches(&self, method: &Method, host: Option<&str>, path: &str) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        if !self.hosts.is_empty() {
            let Some(host) = host else { return false };
            if !self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
                return false;
            }
        }
        prefix_matches(&self.prefix, path)
    }
}

/// Whether `path` is under `prefix`, on whole segments: `/users` takes
/// `/users` and `/users/42`, not `/usersx`; a prefix ending in `/` takes
/// everything that starts with it.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

impl Pool {
    fn build(
        index: usize,
        config: &PoolConfig,
        health_check: &HealthCheckConfig,
        old: Option<&Pool>,
    ) -> Result<Pool, GatewayError> {
        if config.endpoints.is_empty() {
            return Err(GatewayError::NoEndpoints {
                key: format!("gateway.pools[{index}].endpoints"),
            });
        }
        let name: Arc<str> = old
            .map(|p| Arc::clone(&p.name))
            .unwrap_or_else(|| Arc::from(config.name.as_str()));
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for (i, endpoint) in config.endpoints.iter().enumerate() {
            let reused = old.and_then(|p| {
                p.endpoints
                    .iter()
                    .find(|e| e.name == endpoint.addr() && e.breaker_matches(&config.breaker))
            });
            let endpoint = match reused {
                Some(e) => {
                    e.set_weight(endpoint.weight());
                    Arc::clone(e)
                }
                None => Arc::new(Endpoint::new(
                    &name,
                    &format!("gateway.pools[{index}].endpoints[{i}]"),
                    endpoint.addr(),
                    endpoint.weight(),
                    &config.breaker,
                )?),
            };
            endpoints.push(endpoint);
        }
        let retry = &config.retry;
        let backoff = Backoff::new(retry.backoff_initial, retry.backoff_max);
        Ok(Pool {
            balancer: Balancer::new(config.algorithm, &endpoints),
            metrics: PoolMetrics::new(&config.name),
            name,
            endpoints,
            hash_key: config.hash_key.clone(),
            connect_timeout: config.connect_timeout,
            first_byte_timeout: config.first_byte_timeout,
            total_timeout: config.total_timeout,
            idle_timeout: config.idle_timeout,
            max_idle: config.max_idle_per_endpoint,
            slow_start: config.slow_start,
            outlier: config.outlier.clone(),
            health_check: health_check.clone(),
            retry: RetryPolicy {
                attempts: retry.attempts,
                statuses: retry.statuses.clone(),
                backoff,
                budget: RetryBudget::new(retry.budget_ratio, retry.budget_min_per_second),
                max_replay_body: retry.max_replay_body,
            },
        })
    }

    /// The endpoint named `name`.
    pub(crate) fn endpoint(&self, name: &str) -> Option<&Arc<Endpoint>> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    /// Whether endpoint `i` may take a new request at `now`, `tried` aside.
    pub(crate) fn available(&self, i: usize, now: u64) -> bool {
        let e = &self.endpoints[i];
        e.is_healthy() && !e.is_drained() && !e.is_ejected(now) && e.breaker_allows(now)
    }

    /// Picks the endpoint for a request: eligible (see [`Pool::available`])
    /// and not in `tried`. `hash` is the hash of the request's balancing key.
    pub(crate) fn pick(&self, tried: &[usize], hash: Option<u64>, now: u64) -> Option<usize> {
        let eligible = |i: usize| !tried.contains(&i) && self.available(i, now);
        let weights_ramp = self.balancer.uses_weights();
        let weight = |i: usize| {
            let e = &self.endpoints[i];
            let mut w = f64::from(e.weight());
            if weights_ramp {
                w *= e.slow_start_factor(self.slow_start, now);
            }
            w
        };
        let chosen = self.balancer.pick(&Pick {
            endpoints: &self.endpoints,
            eligible: &eligible,
            weight: &weight,
            hash,
        })?;
        if weights_ramp || self.balancer.is_affine() || self.slow_start.is_zero() {
            return Some(chosen);
        }
        // Unweighted algorithms ramp an endpoint in slow start by turning
        // away part of its picks; the second choice excludes it.
        let factor = self.endpoints[chosen].slow_start_factor(self.slow_start, now);
        if factor >= 1.0 || rand::random::<f64>() < factor {
            return Some(chosen);
        }
        let eligible_other = |i: usize| i != chosen && eligible(i);
        self.balancer
            .pick(&Pick {
                endpoints: &self.endpoints,
                eligible: &eligible_other,
                weight: &weight,
                hash,
            })
            .or(Some(chosen))
    }

    /// Records a gateway-level failure of endpoint `i`: counts towards its
    /// ejection, and ejects it if due and the pool can spare it.
    pub(crate) fn record_failure(&self, i: usize, now: u64) {
        let endpoint = &self.endpoints[i];
        if !endpoint.note_failure(&self.outlier) || endpoint.is_ejected(now) {
            return;
        }
        let ejected = self.endpoints.iter().filter(|e| e.is_ejected(now)).count();
        let allowed = self.endpoints.len() * self.outlier.max_ejected_percent as usize / 100;
        if ejected + 1 > allowed {
            tracing::warn!(
                pool = %self.name,
                endpoint = %endpoint.name,
                ejected,
                "outlier not ejected: the pool's ejection limit is reached"
            );
            return;
        }
        let length = endpoint.eject(&self.outlier, now);
        tracing::warn!(
            pool = %self.name,
            endpoint = %endpoint.name,
            ejection_ms = length.as_millis() as u64,
            "endpoint ejected after consecutive failures"
        );
    }

    /// Records a good outcome of endpoint `i`.
    pub(crate) fn record_success(&self, i: usize, now: u64) {
        self.endpoints[i].note_success(&self.outlier, now);
    }

    /// Rebuilds weight-dependent balancer state after a weight change.
    pub(crate) fn weights_changed(&self) {
        self.balancer.weights_changed(&self.endpoints);
    }

    /// The algorithm.
    pub(crate) fn algorithm(&self) -> Algorithm {
        self.balancer.algorithm()
    }
}

// === Request keys ===

/// The bytes of `key` in a request, if the request has it.
pub(crate) fn key_of<'a>(
    key: &RequestKey,
    headers: &'a HeaderMap,
    path: &'a str,
    client_ip: &'a [u8],
    route: &'a str,
) -> Option<&'a [u8]> {
    match key {
        RequestKey::ClientIp => Some(client_ip),
        RequestKey::Path => Some(path.as_bytes()),
        RequestKey::Route => Some(route.as_bytes()),
        RequestKey::Header(name) => headers
            .get(name.as_str())
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty()),
        RequestKey::Cookie(name) => cookie(headers, name),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use scalestack_config::{EndpointConfig, RouteConfig};

    fn gateway(pools: &[(&str, &[&str])], routes: &[RouteConfig]) -> GatewayConfig {
        GatewayConfig {
            pools: pools
                .iter()
                .map(|(name, endpoints)| PoolConfig {
                    name: (*name).into(),
                    endpoints: endpoints.iter().map(|e| EndpointConfig::from(*e)).collect(),
                    ..PoolConfig::default()
                })
                .collect(),
            routes: routes.to_vec(),
            ..GatewayConfig::default()
        }
    }

    fn route(
        name: &str,
        prefix: &str,
        methods: &[&str],
        hosts: &[&str],
        pool: &str,
    ) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            path_prefix: prefix.into(),
            methods: methods.iter().map(|m| (*m).into()).collect(),
            hosts: hosts.iter().map(|h| (*h).into()).collect(),
            pool: pool.into(),
            rate_limits: Vec::new(),
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/users", "/users"));
        assert!(prefix_matches("/users", "/users/42"));
        assert!(!prefix_matches("/users", "/usersx"));
        assert!(!prefix_matches("/users", "/orders"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(!prefix_matches("/api/", "/api"));
    }

    #[test]
    fn routes_match_in_order_on_host_path_and_method() {
        let config = gateway(
            &[
                ("users", &["127.0.0.1:1"]),
                ("orders", &["127.0.0.1:2"]),
                ("api", &["127.0.0.1:3"]),
            ],
            &[
                route("users-read", "/users", &["GET"], &[], "users"),
                route("shop-orders", "/orders", &[], &["shop.example"], "orders"),
                route("rest", "/", &[], &[], "api"),
            ],
        );
        let table = Table::build(&config, None).unwrap();
        let name = |m: Method, host: Option<&str>, path: &str| {
            table.route(&m, host, path).map(|r| r.name.to_string())
        };
        assert_eq!(
            name(Method::GET, None, "/users/1").as_deref(),
            Some("users-read")
        );
        assert_eq!(
            name(Method::POST, None, "/users/1").as_deref(),
            Some("rest")
        );
        assert_eq!(
            name(Method::POST, Some("SHOP.example"), "/orders").as_deref(),
            Some("shop-orders")
        );
        assert_eq!(
            name(Method::POST, Some("other"), "/orders").as_deref(),
            Some("rest")
        );
        assert_eq!(table.routes[0].pool, 0);
        assert_eq!(table.routes[1].pool, 1);
    }

    #[test]
    fn a_rebuild_keeps_the_endpoints_that_stay() {
        let first = gateway(
            &[("api", &["127.0.0.1:1", "127.0.0.1:2"])],
            &[route("r", "/", &[], &[], "api")],
        );
        let table = Table::build(&first, None).unwrap();
        table.pools[0].endpoints[0].set_drained(true);
        let second = gateway(
            &[("api", &["127.0.0.1:1", "127.0.0.1:3"])],
            &[route("r", "/", &[], &[], "api")],
        );
        let next = Table::build(&second, Some(&table)).unwrap();
        assert!(Arc::ptr_eq(
            &table.pools[0].endpoints[0],
            &next.pools[0].endpoints[0]
        ));
        assert!(next.pools[0].endpoints[0].is_drained(), "its state stays");
        assert_eq!(next.pools[0].endpoints[1].name, "127.0.0.1:3");
    }

    #[test]
    fn an_empty_pool_is_refused_by_key() {
        let config = gateway(&[("api", &[])], &[route("r", "/", &[], &[], "api")]);
        let message = Table::build(&config, None).unwrap_err().to_string();
        assert!(message.contains("gateway.pools[0].endpoints"), "{message}");
    }

    #[test]
    fn picks_skip_drained_ejected_and_tried_endpoints() {
        let config = gateway(
            &[("api", &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"])],
            &[route("r", "/", &[], &[], "api")],
        );
        let table = Table::build(&config, None).unwrap();
        let pool = &table.pools[0];
        let now = crate::clock::now();
        pool.endpoints[0].set_drained(true);
        pool.endpoints[1].eject(&pool.outlier, now);
        assert_eq!(pool.pick(&[], None, now), Some(2));
        assert_eq!(pool.pick(&[2], None, now), None);
    }

    #[test]
    fn ejection_never_takes_more_than_the_allowed_share() {
        let config = gateway(
            &[(
                "api",
                &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"],
            )],
            &[route("r", "/", &[], &[], "api")],
        );
        let table = Table::build(&config, None).unwrap();
        let pool = &table.pools[0];
        let now = crate::clock::now();
        for i in 0..4 {
            for _ in 0..pool.outlier.consecutive_failures {
                pool.record_failure(i, now);
            }
        }
        let ejected = pool.endpoints.iter().filter(|e| e.is_ejected(now)).count();
        assert_eq!(ejected, 2, "50 % of four");
    }

    #[test]
    fn keys_come_from_the_request() {
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", "k1".parse().unwrap());
        headers.append("cookie", "a=1; session=abc ; b=2".parse().unwrap());
        let ip = [10, 0, 0, 1];
        let of = |key: &str| {
            key_of(
                &RequestKey::try_from(key.to_owned()).unwrap(),
                &headers,
                "/p",
                &ip,
                "r",
            )
            .map(<[u8]>::to_vec)
        };
        assert_eq!(of("header:x-api-key"), Some(b"k1".to_vec()));
        assert_eq!(of("header:x-user-id"), None);
        assert_eq!(of("cookie:session"), Some(b"abc".to_vec()));
        assert_eq!(of("cookie:missing"), None);
        assert_eq!(of("client_ip"), Some(ip.to_vec()));
        assert_eq!(of("path"), Some(b"/p".to_vec()));
        assert_eq!(of("route"), Some(b"r".to_vec()));
    }
}
