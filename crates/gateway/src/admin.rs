//! The admin listener: the gateway's own `/health` and `/metrics`, and the
//! admin API under `/admin/` (pools and endpoints with their health and
//! breaker state, drain and undrain, weights, routes, reload).
//!
//! It lives on a port of its own because every path of the client port
//! belongs to the upstreams. `/health` and `/metrics` are open (the
//! supervisor and Prometheus read them); `/admin/` needs
//! `Authorization: Bearer <gateway.admin_token>` and is off while the token is
//! empty.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock;
use crate::control::Control;
use crate::endpoint::Endpoint;
use crate::error::{Reject, error_response, json_response};
use crate::table::{Pool, Table};

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Largest admin request body (a whole configuration file fits easily).
const MAX_ADMIN_BODY: usize = 1024 * 1024;

/// Serves the admin listener until `shutdown` turns true, then drains.
pub(crate) async fn run(
    listener: TcpListener,
    control: Arc<Control>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let http = http1::Builder::new();
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let control = Arc::clone(&control);
                    let service = service_fn(move |request| {
                        let control = Arc::clone(&control);
                        async move { Ok::<_, Infallible>(serve(&control, request).await) }
                    });
                    let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                    tokio::spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::debug!(%error, "admin connection ended with an error");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, listener = "admin", "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(crate::server::DRAIN_TIMEOUT, graceful.shutdown()).await;
}

/// Answers one admin request.
pub(crate) async fn serve(control: &Control, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    match (request.method(), path.as_str()) {
        (&Method::GET, "/health") => {
            let (_, table) = control.shared.current();
            let report = crate::health::report(&table, control.started.elapsed());
            let status = StatusCode::from_u16(report.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            json_response(status, report.to_json())
        }
        (&Method::GET, "/metrics") => {
            let mut response = Response::new(Full::new(Bytes::from(control.metrics.render())));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT));
            response
        }
        (_, "/health" | "/metrics") => {
            Reject::MethodNotAllowed("only GET is served here").response()
        }
        (_, p) if p == "/admin" || p.starts_with("/admin/") => {
            if let Err(response) = authorize(control, &request) {
                return response;
            }
            api(control, request, &path).await
        }
        _ => Reject::NotFound.response(),
    }
}

/// Checks the bearer token.
#[allow(clippy::result_large_err)]
fn authorize<B>(control: &Control, request: &Request<B>) -> Result<(), Response<Full<Bytes>>> {
    let token = control.admin_token();
    if token.is_empty() {
        return Err(error_response(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "the admin API is off: set gateway.admin_token to enable it",
            None,
        ));
    }
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    if given.is_some_and(|given| constant_time_eq(given, token.as_bytes())) {
        return Ok(());
    }
    let mut response = error_response(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "the admin API needs Authorization: Bearer <gateway.admin_token>",
        None,
    );
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Err(response)
}

/// Compares without an early exit, so that the time taken does not tell how
/// much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn api(control: &Control, request: Request<Incoming>, path: &str) -> Response<Full<Bytes>> {
    let segments: Vec<&str> = path
        .trim_start_matches("/admin")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let method = request.method().clone();
    let (_, table) = control.shared.current();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["pools"]) => ok(&json!({
            "pools": table.pools.iter().map(|p| pool_json(p)).collect::<Vec<_>>()
        })),
        (&Method::GET, ["pools", pool]) => match find_pool(&table, pool) {
            Ok(pool) => ok(&pool_json(pool)),
            Err(response) => response,
        },
        (&Method::GET, ["routes"]) => ok(&routes_json(&table)),
        (
            &Method::POST,
            [
                "pools",
                pool,
                "endpoints",
                endpoint,
                action @ ("drain" | "undrain"),
            ],
        ) => match find_endpoint(&table, pool, endpoint) {
            Ok(e) => {
                let drained = *action == "drain";
                e.set_drained(drained);
                tracing::info!(pool = %e.pool, endpoint = %e.name, drained, "endpoint drain changed");
                ok(&endpoint_json(e, None))
            }
            Err(response) => response,
        },
        (&Method::PUT | &Method::POST, ["pools", pool, "endpoints", endpoint, "weight"]) => {
            let pool = match find_pool(&table, pool) {
                Ok(found) => found,
                Err(response) => return response,
            };
            let Some(e) = pool.endpoint(endpoint) else {
                return no_endpoint(&pool.name, endpoint);
            };
            let body = match read_body(request).await {
                Ok(body) => body,
                Err(response) => return response,
            };
            let weight = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("weight").and_then(Value::as_u64));
            match weight {
                Some(weight) if weight <= 10_000 => {
                    e.set_weight(weight as u32);
                    pool.weights_changed();
                    tracing::info!(pool = %pool.name, endpoint = %e.name, weight, "endpoint weight changed");
                    ok(&endpoint_json(e, Some(pool)))
                }
                _ => error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_weight",
                    "send {\"weight\": N} with N between 0 and 10000",
                    Some("weight"),
                ),
            }
        }
        (&Method::POST, ["reload"]) => {
            let body = match read_body(request).await {
                Ok(body) => body,
                Err(response) => return response,
            };
            let result = if body.iter().all(u8::is_ascii_whitespace) {
                control.reload_from_source().await
            } else {
                match parse_config(&body) {
                    Ok(config) => control.reload(config).await,
                    Err(response) => return response,
                }
            };
            match result {
                Ok(done) => ok(&serde_json::to_value(done).unwrap_or(Value::Null)),
                Err(error) => {
                    let message = error.to_string();
                    let field = message
                        .split('`')
                        .nth(1)
                        .filter(|_| message.contains('`'))
                        .map(str::to_owned);
                    error_response(
                        StatusCode::BAD_REQUEST,
                        "invalid_config",
                        &message,
                        field.as_deref(),
                    )
                }
            }
        }
        (
            _,
            ["pools"] | ["pools", _] | ["routes"] | ["reload"] | ["pools", _, "endpoints", _, _],
        ) => Reject::MethodNotAllowed("this admin path does not take this method").response(),
        _ => Reject::NotFound.response(),
    }
}

/// A whole configuration file (TOML); its `[gateway]` section is used.
#[allow(clippy::result_large_err)]
fn parse_config(body: &[u8]) -> Result<scalestack_config::GatewayConfig, Response<Full<Bytes>>> {
    let text = std::str::from_utf8(body).map_err(|_| {
        error_response(
            StatusCode::BAD_REQUEST,
            "invalid_config",
            "the body is not UTF-8 text",
            None,
        )
    })?;
    scalestack_config::Config::from_toml_str(text, "the reload request")
        .map(|config| config.gateway)
        .map_err(|error| {
            let message = error.to_string();
            let field = message.split('`').nth(1).map(str::to_owned);
            error_response(
                StatusCode::BAD_REQUEST,
                "invalid_config",
                &message,
                field.as_deref(),
            )
        })
}

#[allow(clippy::result_large_err)]
async fn read_body(request: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    match Limited::new(request.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(Reject::PayloadTooLarge.response()),
    }
}

fn ok(value: &Value) -> Response<Full<Bytes>> {
    json_response(StatusCode::OK, value.to_string())
}

#[allow(clippy::result_large_err)]
fn find_pool<'a>(table: &'a Table, name: &str) -> Result<&'a Arc<Pool>, Response<Full<Bytes>>> {
    table.pool(name).ok_or_else(|| {
        error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no pool named \"{name}\""),
            Some("pool"),
        )
    })
}

fn no_endpoint(pool: &str, endpoint: &str) -> Response<Full<Bytes>> {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("pool \"{pool}\" has no endpoint \"{endpoint}\""),
        Some("endpoint"),
    )
}

#[allow(clippy::result_large_err)]
fn find_endpoint<'a>(
    table: &'a Table,
    pool: &str,
    endpoint: &str,
) -> Result<&'a Arc<Endpoint>, Response<Full<Bytes>>> {
    find_pool(table, pool)?
        .endpoint(endpoint)
        .ok_or_else(|| no_endpoint(pool, endpoint))
}

fn pool_json(pool: &Pool) -> Value {
    json!({
        "name": &*pool.name,
        "algorithm": pool.algorithm().as_str(),
        "endpoints": pool.endpoints.iter().map(|e| endpoint_json(e, Some(pool))).collect::<Vec<_>>(),
    })
}

fn endpoint_json(e: &Endpoint, pool: Option<&Pool>) -> Value {
    let now = clock::now();
    let ejected_ms = e.ejected_until().saturating_sub(now) / 1_000_000;
    let available = pool.map(|p| {
        p.endpoints
            .iter()
            .position(|x| std::ptr::eq(&**x, e))
            .is_some_and(|i| p.available(i, now))
    });
    json!({
        "address": e.name,
        "weight": e.weight(),
        "healthy": e.is_healthy(),
        "drained": e.is_drained(),
        "ejected_for_ms": ejected_ms,
        "breaker": e.breaker_state().map(|s| s.as_str()),
        "in_flight": e.in_flight(),
        "rtt_ms": e.rtt() / 1e6,
        "available": available,
        "last_check": e.last_check(),
    })
}

fn routes_json(table: &Table) -> Value {
    json!({
        "routes": table.routes.iter().map(|r| json!({
            "name": &*r.name,
            "pool": &*table.pools[r.pool].name,
            "rate_limits": r.tiers.iter().map(|t| &*table.tiers[*t].name).collect::<Vec<_>>(),
        })).collect::<Vec<_>>()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_needs_every_byte() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secrets"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
