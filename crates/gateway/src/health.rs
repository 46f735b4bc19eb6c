//! Active health checks of the upstream endpoints, and the gateway's own
//! health report.
//!
//! One task per endpoint sends `GET path` every `interval` (the pool's
//! health check, else `gateway.health_check`), each on a fresh connection so
//! that a dead endpoint is found even while pooled connections linger; a 2xx
//! answer within `timeout` passes. `fall` failures in a row take a healthy
//! endpoint out of rotation, `rise` passes in a row put an unhealthy one back.
//! With the default `fall = 1`, a dead instance stops getting traffic within
//! one interval even when no request happens to discover it first (the
//! proxy's connect failures mark endpoints down at once, see
//! [`crate::proxy::mark_down`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use scalestack_config::HealthCheckConfig;
use scalestack_telemetry::health::{Check, HealthReport, Status};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::clock;
use crate::endpoint::Endpoint;
use crate::table::Table;

/// The name of an endpoint's check in the health report.
pub(crate) fn check_name(pool: &str, endpoint: &str) -> String {
    format!("upstream.{pool}.{endpoint}")
}

/// Starts one checking task per endpoint of `table`; dropping the set stops them.
pub(crate) fn spawn_checks(table: &Table) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    for pool in &table.pools {
        for endpoint in &pool.endpoints {
            tasks.spawn(check_loop(Arc::clone(endpoint), pool.health_check.clone()));
        }
    }
    tasks
}

async fn check_loop(endpoint: Arc<Endpoint>, config: HealthCheckConfig) {
    let name = check_name(&endpoint.pool, &endpoint.name);
    let mut streak = Streak::new(config.rise, config.fall);
    // The first tick fires at once, so a dead endpoint is found right at start.
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let check = Check::run(name.clone(), config.timeout, probe(&endpoint, &config.path)).await;
        let passed = check.status == Status::Ok;
        endpoint.metrics.health_check(passed);
        // The flag is read after the probe: a passive mark-down during the
        // probe must count as the state this result applies to.
        let change = streak.observe(endpoint.is_healthy(), passed);
        if let Some(healthy) = change
            && endpoint.set_healthy(healthy, clock::now())
        {
            if healthy {
                tracing::info!(pool = %endpoint.pool, endpoint = %endpoint.name, "endpoint up");
            } else {
                tracing::warn!(
                    pool = %endpoint.pool,
                    endpoint = %endpoint.name,
                    error = check.error.as_deref().unwrap_or(""),
                    "endpoint down"
                );
            }
        }
        endpoint.set_last_check(check);
    }
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("cannot build the request: {0}")]
    Request(#[from] http::Error),
    #[error("connect: {0}")]
    Connect(#[from] std::io::Error),
    #[error("{}", crate::error::chain(.0))]
    Http(#[from] hyper::Error),
    #[error("answered {0}")]
    Status(StatusCode),
}

/// One `GET path` on a connection of its own.
async fn probe(endpoint: &Endpoint, path: &str) -> Result<(), ProbeError> {
    let target = endpoint.authority.as_str();
    let stream = match target.parse::<std::net::SocketAddr>() {
        Ok(addr) => TcpStream::connect(addr).await?,
        Err(_) => TcpStream::connect(target).await?,
    };
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let request = Request::get(path)
        .header(HOST, endpoint.host_header.clone())
        .header(CONNECTION, HeaderValue::from_static("close"))
        .body(Empty::new())?;
    let result = async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(ProbeError::Status(status))
        }
    }
    .await;
    connection.abort();
    result
}

/// The rise/fall hysteresis of one endpoint.
#[derive(Debug)]
struct Streak {
    rise: u32,
    fall: u32,
    passes: u32,
    failures: u32,
}

impl Streak {
    fn new(rise: u32, fall: u32) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            passes: 0,
            failures: 0,
        }
    }

    /// Records one check of an endpoint that is currently `healthy`; returns
    /// the new state when the endpoint must change state.
    fn observe(&mut self, healthy: bool, passed: bool) -> Option<bool> {
        // Only the streak against the current state matters; the other one
        // stays at zero, so a state change by someone else (a passive
        // mark-down) starts a fresh count.
        match (healthy, passed) {
            (true, true) => {
                self.failures = 0;
                self.passes = 0;
                None
            }
            (true, false) => {
                self.passes = 0;
                self.failures += 1;
                (self.failures >= self.fall).then(|| {
                    self.failures = 0;
                    false
                })
            }
            (false, true) => {
                self.failures = 0;
                self.passes += 1;
                (self.passes >= self.rise).then(|| {
                    self.passes = 0;
                    true
                })
            }
            (false, false) => {
                self.passes = 0;
                self.failures = 0;
                None
            }
        }
    }
}

/// The gateway's `/health` report: one check per endpoint, showing whether
/// it receives traffic. The gateway can serve while every pool has an
/// endpoint in rotation, so that — not "every check passed" — decides the
/// overall status.
pub(crate) fn report(table: &Table, uptime: Duration) -> HealthReport {
    let checks = table
        .pools
        .iter()
        .flat_map(|pool| pool.endpoints.iter())
        .map(|endpoint| {
            let status = if endpoint.is_healthy() {
                Status::Ok
            } else {
                Status::Fail
            };
            match endpoint.last_check() {
                Some(last) => Check { status, ..last },
                None => Check {
                    name: check_name(&endpoint.pool, &endpoint.name),
                    status,
                    latency_ms: 0.0,
                    error: None,
                },
            }
        })
        .collect();
    let mut report = HealthReport::new(crate::COMPONENT, crate::COMPONENT, uptime, checks);
    let serving = table
        .pools
        .iter()
        .all(|pool| pool.endpoints.iter().any(|e| e.is_healthy()));
    report.status = if serving { Status::Ok } else { Status::Fail };
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_passes() {
        let mut streak = Streak::new(2, 3);
        assert_eq!(streak.observe(true, false), None);
        assert_eq!(streak.observe(true, false), None);
        assert_eq!(streak.observe(true, true), None, "a pass breaks the streak");
        assert_eq!(streak.observe(true, false), None);
        assert_eq!(streak.observe(true, false), None);
        assert_eq!(streak.observe(true, false), Some(false));
        assert_eq!(streak.observe(false, true), None);
        assert_eq!(streak.observe(false, false), None, "a failure breaks it");
        assert_eq!(streak.observe(false, true), None);
        assert_eq!(streak.observe(false, true), Some(true));
    }

    #[test]
    fn one_and_one_flip_at_once() {
        let mut streak = Streak::new(1, 1);
        assert_eq!(streak.observe(true, false), Some(false));
        assert_eq!(streak.observe(false, true), Some(true));
        assert_eq!(streak.observe(true, true), None);
    }

    #[test]
    fn passive_mark_down_starts_a_fresh_rise_count() {
        let mut streak = Streak::new(2, 5);
        assert_eq!(streak.observe(true, true), None);
        // Marked down by the proxy in between: the earlier pass must not count.
        assert_eq!(streak.observe(false, true), None);
        assert_eq!(streak.observe(false, true), Some(true));
    }

    #[tokio::test]
    async fn report_is_ok_while_every_pool_has_a_healthy_endpoint() {
        let mut config = scalestack_config::GatewayConfig::default();
        config.pools[0].endpoints = vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()];
        let table = Table::build(&config, None).unwrap();
        let pool = &table.pools[0];
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        crate::proxy::mark_down(&pool.endpoints[0], &refused);
        let report = report(&table, Duration::from_secs(3));
        assert_eq!(report.http_status(), 200);
        assert_eq!(report.checks.len(), 2);
        assert_eq!(report.checks[0].name, "upstream.api.127.0.0.1:1");
        assert_eq!(report.checks[0].status, Status::Fail);
        assert!(
            report.checks[0]
                .error
                .as_deref()
                .unwrap()
                .contains("refused")
        );
        assert_eq!(report.checks[1].status, Status::Ok);

        crate::proxy::mark_down(&pool.endpoints[1], &refused);
        assert_eq!(super::report(&table, Duration::ZERO).http_status(), 503);
    }
}
