//! Settings of the edge gateway (`[gateway]`).

use std::net::SocketAddr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, invalid, positive, quoted};

/// The edge gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address for client traffic.
    pub listen: SocketAddr,
    /// Address of the gateway's own `/health` and `/metrics` (kept apart from
    /// client traffic so that every path of the client port reaches the upstreams).
    pub admin_listen: SocketAddr,
    /// Worker threads; 0 means one per CPU core.
    pub threads: usize,
    /// Largest request body accepted from a client, in bytes; larger gets 413.
    pub max_request_body: u64,
    /// The pool of api endpoints and how connections to them are kept.
    pub upstream: UpstreamConfig,
    /// Active health checks of the upstream endpoints.
    pub health_check: HealthCheckConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 8080).into(),
            admin_listen: ([127, 0, 0, 1], 9000).into(),
            threads: 0,
            max_request_body: 1024 * 1024,
            upstream: UpstreamConfig::default(),
            health_check: HealthCheckConfig::default(),
        }
    }
}

/// The upstream pool of the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Endpoints as `host:port`. Empty means the api instances that
    /// `scalestack up` starts.
    pub endpoints: Vec<String>,
    /// Time allowed to open a TCP connection to an endpoint.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// Time allowed for an endpoint to send a response's headers.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// How long an idle keep-alive connection to an endpoint is kept.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idle_timeout: Duration,
    /// Most idle keep-alive connections kept per endpoint.
    pub max_idle_per_endpoint: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            max_idle_per_endpoint: 512,
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

impl GatewayConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_request_body == 0 {
            return Err(invalid(
                "gateway.max_request_body",
                0,
                "must be at least 1 byte",
            ));
        }
        for (i, endpoint) in self.upstream.endpoints.iter().enumerate() {
            if endpoint.parse::<SocketAddr>().is_err() && !looks_like_host_port(endpoint) {
                return Err(invalid(
                    format!("gateway.upstream.endpoints[{i}]"),
                    quoted(endpoint),
                    "must be host:port",
                ));
            }
        }
        positive(
            "gateway.upstream.connect_timeout",
            self.upstream.connect_timeout,
        )?;
        positive(
            "gateway.upstream.request_timeout",
            self.upstream.request_timeout,
        )?;
        positive("gateway.upstream.idle_timeout", self.upstream.idle_timeout)?;
        let hc = &self.health_check;
        if !hc.path.starts_with('/') {
            return Err(invalid(
                "gateway.health_check.path",
                quoted(&hc.path),
                "must start with /",
            ));
        }
        positive("gateway.health_check.interval", hc.interval)?;
        positive("gateway.health_check.timeout", hc.timeout)?;
        if hc.rise == 0 {
            return Err(invalid(
                "gateway.health_check.rise",
                0,
                "must be at least 1",
            ));
        }
        if hc.fall == 0 {
            return Err(invalid(
                "gateway.health_check.fall",
                0,
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

fn looks_like_host_port(s: &str) -> bool {
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
