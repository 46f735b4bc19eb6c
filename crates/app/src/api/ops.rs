//! Operations endpoints of an api instance: the deep health check and the
//! Prometheus metrics (and, registered here, the OpenAPI document).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use scalestack_cache::Cache;
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

/// Deep health: every database's primary answers, and the cache keeps values.
#[utoipa::path(
    get, path = "/health", tag = "operations",
    responses(
        (status = 200, description = "Every check passed (JSON report)", content_type = "application/json"),
        (status = 503, description = "A check failed (JSON report naming it)", content_type = "application/json"),
    )
)]
pub(crate) async fn health(State(s): State<AppState>) -> Response {
    let mut checks = store_checks(&s.store).await;
    checks.push(Check::run("cache.l1", HEALTH_CHECK_TIMEOUT, cache_probe(&s.cache)).await);
    let report = HealthReport::new("api", &s.instance, s.started.elapsed(), checks);
    health_response(&report)
}

/// Writes and reads back a probe entry: the cache answers and keeps values.
async fn cache_probe(cache: &Cache) -> Result<(), String> {
    if !cache.is_enabled() {
        return Ok(());
    }
    let probe = cache.resource::<u64>("health", std::time::Duration::from_secs(5), |_| 0);
    let token = rand_token();
    probe.insert(0, Arc::new(token)).await;
    let read = probe
        .get_or_load(0, async { Ok::<_, String>(None) })
        .await
        .map_err(|e| e.to_string())?;
    match read {
        Some(v) if *v == token => Ok(()),
        _ => Err("the cache did not return the value just written".into()),
    }
}

fn rand_token() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
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
