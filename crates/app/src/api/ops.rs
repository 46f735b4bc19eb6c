//! Operations endpoints of an api instance: the deep health check and the
//! Prometheus metrics (and, registered here, the OpenAPI document).
//!
//! The cache's part of the health check is [`scalestack_cache::Cache::check`]:
//! it never reads a probe entry back from the L1, whose TinyLFU admission
//! may rightly refuse a newcomer and would make a healthy instance look sick.

use axum::extract::State;
use axum::response::Response;
use scalestack_telemetry::health::{Check, HealthReport};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::openapi::{__path_openapi_json, openapi_json};
use crate::http::{HEALTH_CHECK_TIMEOUT, health_response, metrics_response, store_checks};

/// The routes of this module.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
}

/// Deep health: every database's primary answers, and every write-behind
/// log accepts writes. Redis is not a check: without it reads are slower,
/// not failing, and an instance must not leave the balancer because of it.
#[utoipa::path(
    get, path = "/health", tag = "operations",
    responses(
        (status = 200, description = "Every check passed (JSON report)", content_type = "application/json"),
        (status = 503, description = "A check failed (JSON report naming it)", content_type = "application/json"),
    )
)]
pub(crate) async fn health(State(s): State<AppState>) -> Response {
    let mut checks = store_checks(&s.store).await;
    checks.push(Check::run("cache", HEALTH_CHECK_TIMEOUT, s.cache.check()).await);
    let report = HealthReport::new("api", &s.instance, s.started.elapsed(), checks);
    health_response(&report)
}

/// Prometheus metrics of this process.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain"))
)]
pub(crate) async fn metrics(State(s): State<AppState>) -> Response {
    s.cache.update_gauges();
    let metrics = scalestack_telemetry::metrics::install("api", &s.instance);
    metrics_response(metrics.render())
}
