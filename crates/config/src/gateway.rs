//! Settings of the edge gateway (`[gateway]`): listeners, client limits,
//! routes, upstream pools with their balancing, health, breaker and retry
//! policies, and rate-limit tiers.
//!
//! This module only describes and validates; `scalestack-gateway` acts on it.
//! The default is the embedded stack: one pool named `api` (whose endpoints
//! `scalestack up` fills with the api instances) serving every path.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, duration_value, invalid, positive, quoted};

/// The edge gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address for client traffic.
    pub listen: SocketAddr,
    /// Address of the gateway's own `/health`, `/metrics` and admin API (kept
    /// apart from client traffic so that every path of the client port reaches
    /// the upstreams). Keep it on a loopback or private address.
    pub admin_listen: SocketAddr,
    /// Bearer token that the admin API (`/admin/...`) requires in
    /// `Authorization: Bearer <token>`. Empty disables the admin API;
    /// `/health` and `/metrics` never need it.
    pub admin_token: String,
    /// Worker threads, each with its own listener on `listen` (SO_REUSEPORT)
    /// and its own upstream connections; 0 means one per CPU core.
    pub threads: usize,
    /// Largest request body accepted from a client, in bytes; larger gets 413.
    pub max_request_body: u64,
    /// Write one structured log line per request (target `scalestack_gateway::access`).
    pub access_log: bool,
    /// Limits and timeouts of client connections.
    pub client: ClientConfig,
    /// Default active health check of every pool (a pool may set its own).
    pub health_check: HealthCheckConfig,
    /// Routes, tried in order: the first whose host, path prefix and method
    /// match sends the request to its pool. A request no route matches gets 404.
    pub routes: Vec<RouteConfig>,
    /// Upstream pools: groups of endpoints with a balancing algorithm and
    /// failure handling.
    pub pools: Vec<PoolConfig>,
    /// Rate-limit tiers that routes refer to by name.
    pub rate_limits: Vec<RateLimitConfig>,
}

/// Name of the default pool, which `scalestack up` fills with the api instances.
pub const DEFAULT_POOL: &str = "api";

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 8080).into(),
            admin_listen: ([127, 0, 0, 1], 9000).into(),
            admin_token: String::new(),
            threads: 0,
            max_request_body: 1024 * 1024,
            access_log: false,
            client: ClientConfig::default(),
            health_check: HealthCheckConfig::default(),
            routes: vec![RouteConfig::default()],
            pools: vec![PoolConfig::default()],
            rate_limits: Vec::new(),
        }
    }
}

/// Limits and timeouts of client connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Time a client has to send a complete request head, counted from the
    /// moment the gateway waits for one; it also closes keep-alive connections
    /// idle for this long and stops slow-header (slowloris) clients.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers) in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Most header lines in a request; more gets 431.
    pub max_headers: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            max_headers: 100,
        }
    }
}

/// A route: which requests go to which pool, with which rate limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// Name of the route: metric label and log field.
    pub name: String,
    /// Host names (the `Host` header without port) this route serves; empty
    /// matches any host.
    pub hosts: Vec<String>,
    /// Path prefix this route serves, matched on whole segments: `/users`
    /// matches `/users` and `/users/42` but not `/usersx`. `/` matches every path.
    pub path_prefix: String,
    /// Methods this route serves (`GET`, `POST`, ...); empty matches any method.
    pub methods: Vec<String>,
    /// The pool that serves the route's requests.
    pub pool: String,
    /// Names of the rate-limit tiers (from `gateway.rate_limits`) applied to
    /// this route, all at once; a request over any of them gets 429.
    pub rate_limits: Vec<String>,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            name: "default".into(),
            hosts: Vec::new(),
            path_prefix: "/".into(),
            methods: Vec::new(),
            pool: DEFAULT_POOL.into(),
            rate_limits: Vec::new(),
        }
    }
}

// === Pools ===

/// An upstream endpoint: `"host:port"`, or `{ addr = "host:port", weight = 3 }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum EndpointConfig {
    /// `host:port` with weight 1.
    Addr(String),
    /// `host:port` with a weight.
    Weighted {
        /// `host:port`.
        addr: String,
        /// Relative share of traffic under weighted algorithms (0 sends none).
        weight: u32,
    },
}

impl EndpointConfig {
    /// The `host:port`.
    pub fn addr(&self) -> &str {
        match self {
            Self::Addr(addr) | Self::Weighted { addr, .. } => addr,
        }
    }

    /// The weight (1 unless given).
    pub fn weight(&self) -> u32 {
        match self {
            Self::Addr(_) => 1,
            Self::Weighted { weight, .. } => *weight,
        }
    }
}

impl From<String> for EndpointConfig {
    fn from(addr: String) -> Self {
        Self::Addr(addr)
    }
}

impl From<&str> for EndpointConfig {
    fn from(addr: &str) -> Self {
        Self::Addr(addr.to_owned())
    }
}

/// How a pool chooses the endpoint of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Each endpoint in turn.
    RoundRobin,
    /// In turn, in proportion to the weights, interleaved (NGINX's smooth
    /// weighted round robin: weights 5,1,1 give a a b a c a a, not a a a a a b c).
    WeightedRoundRobin,
    /// The endpoint with the fewest requests in flight.
    LeastConnections,
    /// The fewest requests in flight relative to the weight.
    WeightedLeastConnections,
    /// A hash of the client IP: one client sticks to one endpoint.
    IpHash,
    /// A hash ring over `hash_key`: one key sticks to one endpoint, and adding
    /// or removing an endpoint moves only the keys of its share of the ring.
    ConsistentHash,
    /// The lowest peak-sensitive moving average of response time times the
    /// requests in flight, between two random endpoints (as linkerd and Finagle).
    PeakEwma,
    /// The fewer requests in flight of two endpoints drawn at random.
    PowerOfTwoChoices,
    /// An endpoint drawn at random, in proportion to the weights.
    Random,
}

impl Algorithm {
    /// The name used in config and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::WeightedRoundRobin => "weighted_round_robin",
            Self::LeastConnections => "least_connections",
            Self::WeightedLeastConnections => "weighted_least_connections",
            Self::IpHash => "ip_hash",
            Self::ConsistentHash => "consistent_hash",
            Self::PeakEwma => "peak_ewma",
            Self::PowerOfTwoChoices => "power_of_two_choices",
            Self::Random => "random",
        }
    }
}

/// A value taken from each request: the key of consistent hashing or of a
/// rate limit. Written as `client_ip`, `path`, `route`, `header:NAME` or
/// `cookie:NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RequestKey {
    /// The client's IP address (the TCP peer).
    ClientIp,
    /// The request path, without the query.
    Path,
    /// The matched route's name: one counter shared by every client.
    Route,
    /// The value of a request header (lower-case name).
    Header(String),
    /// The value of a cookie.
    Cookie(String),
}

impl fmt::Display for RequestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientIp => f.write_str("client_ip"),
            Self::Path => f.write_str("path"),
            Self::Route => f.write_str("route"),
            Self::Header(name) => write!(f, "header:{name}"),
            Self::Cookie(name) => write!(f, "cookie:{name}"),
        }
    }
}

impl TryFrom<String> for RequestKey {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let valid_name = |name: &str| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b))
        };
        match text.split_once(':') {
            None => match text.as_str() {
                "client_ip" => Ok(Self::ClientIp),
                "path" => Ok(Self::Path),
                "route" => Ok(Self::Route),
                _ => Err(format!(
                    "\"{text}\" is not a request key: use client_ip, path, route, header:NAME or cookie:NAME"
                )),
            },
            Some(("header", name)) if valid_name(name) => {
                Ok(Self::Header(name.to_ascii_lowercase()))
            }
            Some(("cookie", name)) if valid_name(name) => Ok(Self::Cookie(name.to_owned())),
            Some(_) => Err(format!(
                "\"{text}\" is not a request key: use header:NAME or cookie:NAME with a valid token as NAME"
            )),
        }
    }
}

impl From<RequestKey> for String {
    fn from(key: RequestKey) -> String {
        key.to_string()
    }
}

impl Serialize for RequestKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RequestKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        RequestKey::try_from(text).map_err(serde::de::Error::custom)
    }
}

/// A group of endpoints serving the same thing, and how to use them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Name of the pool: routes refer to it; metric label and admin API path.
    pub name: String,
    /// Endpoints as `"host:port"` or `{ addr = "host:port", weight = 3 }`.
    /// Empty in the `api` pool means the api instances that `scalestack up` starts.
    pub endpoints: Vec<EndpointConfig>,
    /// Balancing algorithm: round_robin, weighted_round_robin,
    /// least_connections, weighted_least_connections, ip_hash,
    /// consistent_hash, peak_ewma, power_of_two_choices or random.
    pub algorithm: Algorithm,
    /// Key of `consistent_hash`: client_ip, path, header:NAME or cookie:NAME.
    /// A request without the key is balanced round robin.
    #[schemars(with = "String")]
    pub hash_key: RequestKey,
    /// Time allowed to open a TCP connection to an endpoint.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// Time allowed, once the request is sent, for the response head.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub first_byte_timeout: Duration,
    /// Time allowed for a whole exchange with one endpoint, response body
    /// included; a response still streaming then is cut off.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub total_timeout: Duration,
    /// How long an idle keep-alive connection to an endpoint is kept.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idle_timeout: Duration,
    /// Most idle keep-alive connections kept per endpoint and worker thread.
    pub max_idle_per_endpoint: usize,
    /// Time over which an endpoint's share of traffic ramps up after it comes
    /// back (health restored or ejection over); 0 gives it a full share at once.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub slow_start: Duration,
    /// This pool's own active health check instead of `gateway.health_check`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    /// Passive outlier ejection: endpoints that keep failing are taken out
    /// for a growing interval.
    pub outlier: OutlierConfig,
    /// The circuit breaker of each endpoint.
    pub breaker: BreakerSettings,
    /// When and how failed requests are retried on another endpoint.
    pub retry: RetryConfig,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            name: DEFAULT_POOL.into(),
            endpoints: Vec::new(),
            algorithm: Algorithm::RoundRobin,
            hash_key: RequestKey::ClientIp,
            connect_timeout: Duration::from_secs(1),
            first_byte_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(300),
            // Below the keep-alive timeouts of common servers (NGINX: 75 s),
            // so that the gateway, not the upstream, closes an idle connection.
            idle_timeout: Duration::from_secs(60),
            max_idle_per_endpoint: 256,
            slow_start: Duration::ZERO,
            health_check: None,
            outlier: OutlierConfig::default(),
            breaker: BreakerSettings::default(),
            retry: RetryConfig::default(),
        }
    }
}

/// Active health checks: a GET of `path` on every endpoint at every `interval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Path requested on each endpoint; a 2xx answer counts as healthy.
    pub path: String,
    /// Time between two checks of one endpoint.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// Time allowed for one check before it counts as failed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Consecutive successful checks before an unhealthy endpoint gets traffic again.
    pub rise: u32,
    /// Consecutive failed checks before a healthy endpoint stops getting traffic.
    pub fall: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            path: "/health".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 1,
            fall: 1,
        }
    }
}

/// Passive outlier ejection, judged on proxied traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct OutlierConfig {
    /// Gateway-level failures in a row (no connection, timeout, broken
    /// connection, 502/503/504) that eject an endpoint; 0 disables ejection.
    pub consecutive_failures: u32,
    /// Length of the first ejection; the n-th ejection in a row lasts n times
    /// as long.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub base_ejection: Duration,
    /// Longest ejection.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_ejection: Duration,
    /// Most endpoints of the pool ejected at once, in percent; ejection never
    /// empties a pool by itself.
    pub max_ejected_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// The circuit breaker of each endpoint: closed, then open after too many
/// failures, then half-open with a few probes, then closed or open again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Whether endpoints have a breaker at all.
    pub enabled: bool,
    /// Failures in a row that open the breaker; 0 disables this trigger.
    pub consecutive_failures: u32,
    /// Share of failed requests in the window (0.0 to 1.0) that opens the
    /// breaker once `min_requests` were seen.
    pub failure_rate: f64,
    /// Requests the window must hold before `failure_rate` is judged.
    pub min_requests: u32,
    /// Length of the sliding window of outcomes.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub window: Duration,
    /// How long an open breaker refuses requests before it lets probes through.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub open_for: Duration,
    /// Probe requests allowed at once when half-open; this many successes close it.
    pub half_open_probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            consecutive_failures: 10,
            failure_rate: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            half_open_probes: 3,
        }
    }
}

/// Retries of failed requests on another endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries after the first attempt, each on an endpoint not tried yet
    /// for the request; 0 disables retries. A request is retried only when
    /// that is safe: its method is idempotent or it carries `Idempotency-Key`,
    /// or the connection could not be opened at all.
    pub attempts: u32,
    /// Upstream statuses that are retried (besides connection failures).
    pub statuses: Vec<u16>,
    /// Delay before the first retry; each further retry doubles it, with
    /// jitter (each delay is drawn between half and all of its value).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub backoff_initial: Duration,
    /// Longest delay between two attempts.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub backoff_max: Duration,
    /// Retries allowed as a share of requests over the last 10 s (0.2 means
    /// at most one retry per five requests), so an outage cannot turn into a
    /// retry storm.
    pub budget_ratio: f64,
    /// Retries per second always allowed on top of `budget_ratio`, so that a
    /// quiet pool can still retry.
    pub budget_min_per_second: u32,
    /// Largest request body kept in memory for replay; a request with a larger
    /// body is retried only when its connection could not be opened.
    pub max_replay_body: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 2,
            statuses: vec![502, 503, 504],
            backoff_initial: Duration::from_millis(2),
            backoff_max: Duration::from_millis(200),
            budget_ratio: 0.2,
            budget_min_per_second: 10,
            max_replay_body: 64 * 1024,
        }
    }
}

// === Rate limits ===

/// A rate-limit algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitAlgorithm {
    /// A bucket of `burst` tokens refilled at `limit` per `window`; each
    /// request takes one. Allows bursts, smooth over time.
    TokenBucket,
    /// The time of every admitted request in the last `window` is kept:
    /// exact, but memory grows with the limit.
    SlidingWindowLog,
    /// The current and previous fixed windows' counts, the previous weighted
    /// by how much of it still overlaps the sliding window: nearly exact, two
    /// counters per key.
    SlidingWindowCounter,
    /// One counter per key and fixed window: simplest, but up to twice the
    /// limit can pass around a window boundary.
    FixedWindow,
}

/// One rate-limit tier, e.g. 1,000 requests per minute per user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Name that routes use in their `rate_limits`.
    pub name: String,
    /// token_bucket, sliding_window_log, sliding_window_counter or fixed_window.
    pub algorithm: RateLimitAlgorithm,
    /// What is limited: client_ip, route, header:NAME (e.g. header:x-api-key,
    /// header:x-user-id) or cookie:NAME. Requests without the key are not
    /// limited by this tier.
    #[schemars(with = "String")]
    pub key: RequestKey,
    /// Requests admitted per key and `window`.
    pub limit: u64,
    /// Length of the window.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub window: Duration,
    /// Token bucket only: the bucket's size, i.e. the largest burst; 0 means `limit`.
    pub burst: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            name: "per-ip".into(),
            algorithm: RateLimitAlgorithm::SlidingWindowCounter,
            key: RequestKey::ClientIp,
            limit: 10_000,
            window: Duration::from_secs(60),
            burst: 0,
        }
    }
}

// === impl GatewayConfig ===

impl GatewayConfig {
    /// Gives every pool without endpoints the endpoints `addrs`; this is how
    /// `scalestack up` points the default pool at its api instances.
    pub fn fill_empty_pools(&mut self, addrs: &[SocketAddr]) {
        for pool in &mut self.pools {
            if pool.endpoints.is_empty() {
                pool.endpoints = addrs
                    .iter()
                    .map(|a| EndpointConfig::Addr(a.to_string()))
                    .collect();
            }
        }
    }

    /// The health check that applies to `pool`.
    pub fn health_check_of<'a>(&'a self, pool: &'a PoolConfig) -> &'a HealthCheckConfig {
        pool.health_check.as_ref().unwrap_or(&self.health_check)
    }

    /// Checks every value of the section. Pools may have no endpoints here
    /// (`scalestack up` fills them); the gateway refuses to start with one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_request_body == 0 {
            return Err(invalid(
                "gateway.max_request_body",
                0,
                "must be at least 1 byte",
            ));
        }
        if self
            .admin_token
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "gateway.admin_token",
                "(hidden)",
                "must not contain spaces or control characters",
            ));
        }
        self.client.validate()?;
        self.health_check.validate("gateway.health_check")?;

        let mut pool_names = HashSet::new();
        for (i, pool) in self.pools.iter().enumerate() {
            let key = format!("gateway.pools[{i}]");
            pool.validate(&key)?;
            if !pool_names.insert(pool.name.as_str()) {
                return Err(invalid(
                    format!("{key}.name"),
                    quoted(&pool.name),
                    "another pool has this name",
                ));
            }
        }
        let mut limit_names = HashSet::new();
        for (i, limit) in self.rate_limits.iter().enumerate() {
            let key = format!("gateway.rate_limits[{i}]");
            limit.validate(&key)?;
            if !limit_names.insert(limit.name.as_str()) {
                return Err(invalid(
                    format!("{key}.name"),
                    quoted(&limit.name),
                    "another rate limit has this name",
                ));
            }
        }
        if self.routes.is_empty() {
            return Err(invalid(
                "gateway.routes",
                "[]",
                "needs at least one route (path_prefix = \"/\" serves everything)",
            ));
        }
        let mut route_names = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let key = format!("gateway.routes[{i}]");
            route.validate(&key, &pool_names, &limit_names)?;
            if !route_names.insert(route.name.as_str()) {
                return Err(invalid(
                    format!("{key}.name"),
                    quoted(&route.name),
                    "another route has this name",
                ));
            }
        }
        Ok(())
    }
}

impl ClientConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        positive(
            "gateway.client.header_read_timeout",
            self.header_read_timeout,
        )?;
        if self.max_header_bytes < 256 {
            return Err(invalid(
                "gateway.client.max_header_bytes",
                self.max_header_bytes,
                "must be at least 256",
            ));
        }
        if !(1..=1000).contains(&self.max_headers) {
            return Err(invalid(
                "gateway.client.max_headers",
                self.max_headers,
                "must be between 1 and 1000",
            ));
        }
        Ok(())
    }
}

impl HealthCheckConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !is_path(&self.path) {
            return Err(invalid(
                format!("{key}.path"),
                quoted(&self.path),
                "must be a path starting with /",
            ));
        }
        positive(&format!("{key}.interval"), self.interval)?;
        positive(&format!("{key}.timeout"), self.timeout)?;
        if self.rise == 0 {
            return Err(invalid(format!("{key}.rise"), 0, "must be at least 1"));
        }
        if self.fall == 0 {
            return Err(invalid(format!("{key}.fall"), 0, "must be at least 1"));
        }
        Ok(())
    }
}

/// Whether `s` is a path that a request line can carry as it is.
fn is_path(s: &str) -> bool {
    s.starts_with('/') && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether `s` is `host:port` (an IP address or a DNS name, and a port above 0).
fn is_host_port(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p != 0)
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        }
        None => false,
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

const NAME_RULE: &str = "must be 1 to 64 letters, digits, '-', '_' or '.'";

impl PoolConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !valid_name(&self.name) {
            return Err(invalid(
                format!("{key}.name"),
                quoted(&self.name),
                NAME_RULE,
            ));
        }
        let mut seen = HashSet::new();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            if !is_host_port(endpoint.addr()) {
                return Err(invalid(
                    format!("{key}.endpoints[{i}]"),
                    quoted(endpoint.addr()),
                    "must be host:port",
                ));
            }
            if endpoint.weight() > 10_000 {
                return Err(invalid(
                    format!("{key}.endpoints[{i}].weight"),
                    endpoint.weight(),
                    "must be at most 10000",
                ));
            }
            if !seen.insert(endpoint.addr()) {
                return Err(invalid(
                    format!("{key}.endpoints[{i}]"),
                    quoted(endpoint.addr()),
                    "is listed twice in this pool",
                ));
            }
        }
        if self.algorithm == Algorithm::ConsistentHash && self.hash_key == RequestKey::Route {
            return Err(invalid(
                format!("{key}.hash_key"),
                quoted(&self.hash_key),
                "route is one value per route: use client_ip, path, header:NAME or cookie:NAME",
            ));
        }
        positive(&format!("{key}.connect_timeout"), self.connect_timeout)?;
        positive(
            &format!("{key}.first_byte_timeout"),
            self.first_byte_timeout,
        )?;
        positive(&format!("{key}.total_timeout"), self.total_timeout)?;
        positive(&format!("{key}.idle_timeout"), self.idle_timeout)?;
        if let Some(check) = &self.health_check {
            check.validate(&format!("{key}.health_check"))?;
        }
        let outlier = &self.outlier;
        if outlier.consecutive_failures > 0 {
            positive(
                &format!("{key}.outlier.base_ejection"),
                outlier.base_ejection,
            )?;
            if outlier.max_ejection < outlier.base_ejection {
                return Err(invalid(
                    format!("{key}.outlier.max_ejection"),
                    duration_value(outlier.max_ejection),
                    "must not be shorter than outlier.base_ejection",
                ));
            }
        }
        if outlier.max_ejected_percent > 100 {
            return Err(invalid(
                format!("{key}.outlier.max_ejected_percent"),
                outlier.max_ejected_percent,
                "must be between 0 and 100",
            ));
        }
        let breaker = &self.breaker;
        if !(breaker.failure_rate > 0.0 && breaker.failure_rate <= 1.0) {
            return Err(invalid(
                format!("{key}.breaker.failure_rate"),
                breaker.failure_rate,
                "must be above 0.0 and at most 1.0",
            ));
        }
        positive(&format!("{key}.breaker.window"), breaker.window)?;
        positive(&format!("{key}.breaker.open_for"), breaker.open_for)?;
        if breaker.half_open_probes == 0 {
            return Err(invalid(
                format!("{key}.breaker.half_open_probes"),
                0,
                "must be at least 1",
            ));
        }
        let retry = &self.retry;
        if retry.attempts > 10 {
            return Err(invalid(
                format!("{key}.retry.attempts"),
                retry.attempts,
                "must be at most 10",
            ));
        }
        for (i, status) in retry.statuses.iter().enumerate() {
            if !(500..=599).contains(status) {
                return Err(invalid(
                    format!("{key}.retry.statuses[{i}]"),
                    status,
                    "only 5xx statuses are retried",
                ));
            }
        }
        if retry.backoff_max < retry.backoff_initial {
            return Err(invalid(
                format!("{key}.retry.backoff_max"),
                duration_value(retry.backoff_max),
                "must not be shorter than retry.backoff_initial",
            ));
        }
        if !(0.0..=1.0).contains(&retry.budget_ratio) {
            return Err(invalid(
                format!("{key}.retry.budget_ratio"),
                retry.budget_ratio,
                "must be between 0.0 and 1.0",
            ));
        }
        Ok(())
    }
}

impl RouteConfig {
    fn validate(
        &self,
        key: &str,
        pools: &HashSet<&str>,
        limits: &HashSet<&str>,
    ) -> Result<(), ConfigError> {
        if !valid_name(&self.name) {
            return Err(invalid(
                format!("{key}.name"),
                quoted(&self.name),
                NAME_RULE,
            ));
        }
        if !is_path(&self.path_prefix) {
            return Err(invalid(
                format!("{key}.path_prefix"),
                quoted(&self.path_prefix),
                "must be a path starting with /",
            ));
        }
        for (i, host) in self.hosts.iter().enumerate() {
            let ok = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
            if !ok {
                return Err(invalid(
                    format!("{key}.hosts[{i}]"),
                    quoted(host),
                    "must be a host name without port (letters, digits, '.', '-')",
                ));
            }
        }
        for (i, method) in self.methods.iter().enumerate() {
            let ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
            if !ok {
                return Err(invalid(
                    format!("{key}.methods[{i}]"),
                    quoted(method),
                    "must be an upper-case method name such as GET",
                ));
            }
        }
        if !pools.contains(self.pool.as_str()) {
            return Err(invalid(
                format!("{key}.pool"),
                quoted(&self.pool),
                "no pool in gateway.pools has this name",
            ));
        }
        for (i, name) in self.rate_limits.iter().enumerate() {
            if !limits.contains(name.as_str()) {
                return Err(invalid(
                    format!("{key}.rate_limits[{i}]"),
                    quoted(name),
                    "no tier in gateway.rate_limits has this name",
                ));
            }
        }
        Ok(())
    }
}

impl RateLimitConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !valid_name(&self.name) {
            return Err(invalid(
                format!("{key}.name"),
                quoted(&self.name),
                NAME_RULE,
            ));
        }
        if self.limit == 0 {
            return Err(invalid(format!("{key}.limit"), 0, "must be at least 1"));
        }
        positive(&format!("{key}.window"), self.window)?;
        if self.algorithm == RateLimitAlgorithm::SlidingWindowLog && self.limit > 100_000 {
            return Err(invalid(
                format!("{key}.limit"),
                self.limit,
                "sliding_window_log keeps one timestamp per admitted request: use at most \
                 100000, or sliding_window_counter",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let config = Config::from_toml_str(text, "test")?;
        config.validate()?;
        Ok(config)
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn default_is_one_api_pool_serving_every_path() {
        let config = GatewayConfig::default();
        assert_eq!(config.pools.len(), 1);
        assert_eq!(config.pools[0].name, DEFAULT_POOL);
        assert_eq!(config.routes[0].path_prefix, "/");
        assert_eq!(config.routes[0].pool, DEFAULT_POOL);
    }

    #[test]
    fn fill_empty_pools_gives_the_instances_to_pools_without_endpoints() {
        let mut config = GatewayConfig::default();
        config.pools.push(PoolConfig {
            name: "other".into(),
            endpoints: vec!["10.0.0.1:80".into()],
            ..PoolConfig::default()
        });
        config.fill_empty_pools(&[([127, 0, 0, 1], 8081).into()]);
        assert_eq!(config.pools[0].endpoints, vec!["127.0.0.1:8081".into()]);
        assert_eq!(config.pools[1].endpoints, vec!["10.0.0.1:80".into()]);
    }

    #[test]
    fn routes_pools_and_limits_parse() {
        let config = parse(
            r#"
            [[gateway.routes]]
            name = "users"
            path_prefix = "/users"
            methods = ["GET"]
            pool = "users"
            rate_limits = ["per-user", "per-ip"]

            [[gateway.routes]]
            name = "rest"
            pool = "api"

            [[gateway.pools]]
            name = "users"
            endpoints = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 3 }]
            algorithm = "consistent_hash"
            hash_key = "header:X-User-Id"
            [gateway.pools.retry]
            attempts = 1

            [[gateway.pools]]
            name = "api"

            [[gateway.rate_limits]]
            name = "per-user"
            algorithm = "token_bucket"
            key = "header:x-user-id"
            limit = 1000
            window = "1m"

            [[gateway.rate_limits]]
            name = "per-ip"
            key = "client_ip"
            limit = 10000
            "#,
        )
        .unwrap();
        let gw = &config.gateway;
        assert_eq!(gw.pools[0].endpoints[1].weight(), 3);
        assert_eq!(gw.pools[0].hash_key, RequestKey::Header("x-user-id".into()));
        assert_eq!(gw.pools[0].retry.attempts, 1);
        assert_eq!(gw.rate_limits[0].algorithm, RateLimitAlgorithm::TokenBucket);
        assert_eq!(gw.routes[0].rate_limits, ["per-user", "per-ip"]);
        // Round trip through TOML keeps everything.
        let back = Config::from_toml_str(&config.to_toml(), "back").unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn errors_name_the_key_and_the_value() {
        let cases = [
            (
                "[[gateway.routes]]\npool = \"nope\"\n",
                "`gateway.routes[0].pool` = \"nope\"",
            ),
            (
                "[[gateway.pools]]\nname = \"api\"\nendpoints = [\"nohost\"]\n",
                "`gateway.pools[0].endpoints[0]` = \"nohost\"",
            ),
            (
                "[[gateway.pools]]\nname = \"api\"\nalgorithm = \"fastest\"\n",
                "gateway.pools[0].algorithm",
            ),
            (
                "[[gateway.pools]]\nname = \"api\"\nhash_key = \"header:\"\n",
                "gateway.pools[0].hash_key",
            ),
            (
                "[[gateway.pools]]\nname = \"api\"\n[gateway.pools.retry]\nstatuses = [404]\n",
                "`gateway.pools[0].retry.statuses[0]` = 404",
            ),
            (
                "[[gateway.pools]]\nname = \"api\"\n[gateway.pools.breaker]\nfailure_rate = 1.5\n",
                "`gateway.pools[0].breaker.failure_rate` = 1.5",
            ),
            (
                "[[gateway.rate_limits]]\nname = \"x\"\nlimit = 0\n",
                "`gateway.rate_limits[0].limit` = 0",
            ),
            (
                "[[gateway.routes]]\nname = \"r\"\nrate_limits = [\"missing\"]\n",
                "`gateway.routes[0].rate_limits[0]` = \"missing\"",
            ),
            (
                "[[gateway.routes]]\nname = \"r\"\nmethods = [\"get\"]\n",
                "`gateway.routes[0].methods[0]` = \"get\"",
            ),
            (
                "[gateway.client]\nmax_header_bytes = 10\n",
                "`gateway.client.max_header_bytes` = 10",
            ),
            (
                "[[gateway.pools]]\nname = \"api\"\n[gateway.pools.health_check]\npath = \"x\"\n",
                "`gateway.pools[0].health_check.path` = \"x\"",
            ),
            (
                "[[gateway.pools]]\nname = \"api\"\nendpoints = [\"a:1\", \"a:1\"]\n",
                "`gateway.pools[0].endpoints[1]` = \"a:1\"",
            ),
        ];
        for (text, expected) in cases {
            let message = error(text);
            assert!(message.contains(expected), "{text}\n→ {message}");
        }
    }

    #[test]
    fn duplicate_names_are_refused() {
        let message =
            error("[[gateway.pools]]\nname = \"api\"\n[[gateway.pools]]\nname = \"api\"\n");
        assert!(
            message.contains("`gateway.pools[1].name` = \"api\""),
            "{message}"
        );
    }

    #[test]
    fn request_keys_round_trip() {
        for text in [
            "client_ip",
            "path",
            "route",
            "header:x-api-key",
            "cookie:session",
        ] {
            let key = RequestKey::try_from(text.to_owned()).unwrap();
            assert_eq!(key.to_string(), text);
        }
        assert!(RequestKey::try_from("header:bad name".to_owned()).is_err());
        assert!(RequestKey::try_from("ip".to_owned()).is_err());
    }
}
