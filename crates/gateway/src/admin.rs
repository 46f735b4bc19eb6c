//! The admin listener: the gateway's own `/health` and `/metrics`.
//!
//! They live on a port of their own because every path of the client port
//! belongs to the upstreams, theirs included.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use scalestack_telemetry::metrics::Metrics;

use crate::error::{Reject, json_response};
use crate::upstream::Pool;

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Answers admin requests.
#[derive(Debug)]
pub(crate) struct Admin {
    pool: Arc<Pool>,
    metrics: &'static Metrics,
    started: Instant,
}

impl Admin {
    pub(crate) fn new(pool: Arc<Pool>, metrics: &'static Metrics) -> Self {
        Self {
            pool,
            metrics,
            started: Instant::now(),
        }
    }

    /// Answers one admin request; the body, if any, is ignored.
    pub(crate) fn serve<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        match (request.method(), path) {
            (&Method::GET, "/health") => {
                let report = crate::health::report(&self.pool, self.started.elapsed());
                let status = StatusCode::from_u16(report.http_status())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                json_response(status, report.to_json())
            }
            (&Method::GET, "/metrics") => {
                let mut response = Response::new(Full::new(Bytes::from(self.metrics.render())));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT));
                response
            }
            (_, "/health" | "/metrics") => {
                Reject::MethodNotAllowed("only GET is served here").response()
            }
            _ => Reject::NotFound.response(),
        }
    }
}
