//! HTTP plumbing shared by the api and worker servers: binding with errors that
//! name the config key, request metrics, and the `/health` and `/metrics` bodies.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use scalestack_store::Store;
use scalestack_telemetry::health::{Check, HealthReport};
use tokio::net::TcpListener;

use crate::AppError;

/// Time allowed to each check of a deep health report.
pub(crate) const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds `addr`, naming `instance` and the config `key` on failure.
pub(crate) async fn bind(
    instance: &str,
    key: &str,
    addr: SocketAddr,
) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind {
            instance: instance.to_owned(),
            key: key.to_owned(),
            addr,
            source,
        })
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish.
pub(crate) async fn serve(
    instance: &str,
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| AppError::Serve {
            instance: instance.to_owned(),
            source,
        })
}

/// Middleware recording every request under its route template.
pub(crate) async fn record_metrics(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().clone();
    let response = next.run(request).await;
    scalestack_telemetry::metrics::record_http(
        &route,
        method.as_str(),
        response.status().as_u16(),
        start.elapsed(),
    );
    response
}

/// Health checks of every database of the store, run concurrently.
pub(crate) async fn store_checks(store: &Store) -> Vec<Check> {
    let names = store.database_names();
    futures::future::join_all(names.iter().map(|name| {
        Check::run(
            format!("store.{name}"),
            HEALTH_CHECK_TIMEOUT,
            store.ping(name),
        )
    }))
    .await
}

/// A health report as an HTTP response: 200 or 503 with the JSON report.
pub(crate) fn health_response(report: &HealthReport) -> Response {
    let status =
        StatusCode::from_u16(report.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        report.to_json(),
    )
        .into_response()
}

/// The Prometheus exposition as an HTTP response.
pub(crate) fn metrics_response(text: String) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(Body::from(text))
        .expect("static headers are valid")
}
