//! Proxying one client request: buffer the body, rewrite the headers, pick an
//! endpoint, send, retry when that is safe, and stream the response back.
//!
//! Request bodies are buffered (bounded by `gateway.max_request_body`) so
//! that a request can be replayed on another endpoint; response bodies are
//! streamed, never buffered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, EXPECT, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, Version};
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper::body::Incoming;

use crate::error::{Reject, UpstreamErrorKind};
use crate::headers::{X_FORWARDED_FOR, X_FORWARDED_PROTO, forwarded_for, strip_hop_by_hop};
use crate::observe::ProxyMetrics;
use crate::upstream::Pool;

/// What the client gets: an upstream's streamed body, or a body the gateway
/// made up. `Either` avoids boxing the body of every response.
pub(crate) type ResponseBody = Either<Incoming, Full<Bytes>>;

/// The proxy of the client port; one per gateway, shared by all connections.
#[derive(Debug)]
pub(crate) struct Proxy {
    pool: Arc<Pool>,
    max_body: u64,
    request_timeout: Duration,
    metrics: ProxyMetrics,
}

/// How a request ended: the response and the endpoint it is attributed to.
type Outcome = (Response<ResponseBody>, Option<usize>);

impl Proxy {
    pub(crate) fn new(pool: Arc<Pool>, max_body: u64, request_timeout: Duration) -> Self {
        Self {
            pool,
            max_body,
            request_timeout,
            metrics: ProxyMetrics::new(),
        }
    }

    /// Answers one client request. `client_ip` is the peer address of the
    /// connection, prepared once per connection as a header value.
    pub(crate) async fn serve(
        &self,
        request: Request<Incoming>,
        client_ip: &HeaderValue,
    ) -> Response<ResponseBody> {
        let start = Instant::now();
        let method = request.method().clone();
        let (response, endpoint) = self.forward(request, client_ip).await;
        let elapsed = start.elapsed();
        let status = response.status().as_u16();
        let series = match endpoint {
            Some(index) => &self.pool.endpoint(index).metrics.requests,
            None => &self.metrics.no_endpoint,
        };
        series.record(status, elapsed);
        self.metrics.record_http(&method, status, elapsed);
        response
    }

    async fn forward(&self, request: Request<Incoming>, client_ip: &HeaderValue) -> Outcome {
        let (parts, body) = request.into_parts();
        if parts.method == Method::CONNECT {
            return rejected(
                Reject::MethodNotAllowed("this gateway does not proxy CONNECT tunnels"),
                None,
            );
        }
        // A declared length above the limit is refused before reading a byte.
        if declared_length(&parts.headers).is_some_and(|len| len > self.max_body) {
            return rejected(Reject::PayloadTooLarge, None);
        }
        let limit = usize::try_from(self.max_body).unwrap_or(usize::MAX);
        let body = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<LengthLimitError>() => {
                return rejected(Reject::PayloadTooLarge, None);
            }
            Err(error) => {
                tracing::debug!(%error, "cannot read a request body");
                return rejected(
                    Reject::BadRequest("the request body could not be read"),
                    None,
                );
            }
        };
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));

        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        // The body is already here (hyper sent `100 Continue` when it was
        // read), so the upstream must not be asked to wait for it.
        headers.remove(EXPECT);
        let chain = forwarded_for(&headers, client_ip);
        headers.insert(X_FORWARDED_FOR.clone(), chain);
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        // A chunked body was buffered and is now sent with a length.
        if !body.is_empty() && !headers.contains_key(CONTENT_LENGTH) {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }

        let attempt = Attempt {
            method: parts.method,
            path,
            headers,
            body,
        };
        self.send(&attempt).await
    }

    /// Sends the request to one healthy endpoint after another until one
    /// answers or a failure forbids another try; each endpoint at most once.
    async fn send(&self, attempt: &Attempt) -> Outcome {
        let idempotent = attempt.method.is_idempotent();
        // Allocated only when a retry happens.
        let mut tried: Vec<usize> = Vec::new();
        let mut last: Option<(usize, UpstreamErrorKind)> = None;
        let mut all_refused = true;
        while let Some(index) = self.pool.pick(&tried) {
            if last.is_some() {
                self.metrics.retry();
            }
            let endpoint = self.pool.endpoint(index);
            let Ok(request) = attempt.to(endpoint) else {
                return rejected(
                    Reject::BadRequest("the request target cannot be forwarded"),
                    None,
                );
            };
            let sent =
                tokio::time::timeout(self.request_timeout, self.pool.client().request(request));
            let kind = match sent.await {
                Ok(Ok(mut response)) => {
                    strip_hop_by_hop(response.headers_mut());
                    return (response.map(Either::Left), Some(index));
                }
                Ok(Err(error)) => {
                    let kind = UpstreamErrorKind::of(&error);
                    if kind.marks_endpoint_down() {
                        self.pool.mark_down(index, &error);
                    } else {
                        let error = crate::error::chain(&error);
                        tracing::debug!(endpoint = %endpoint.name, %error, "upstream request failed");
                    }
                    kind
                }
                Err(_elapsed) => UpstreamErrorKind::Timeout,
            };
            endpoint.metrics.upstream_error(kind);
            all_refused &= kind == UpstreamErrorKind::Connect;
            last = Some((index, kind));
            if !kind.may_retry(idempotent) {
                break;
            }
            tried.push(index);
        }
        match last {
            None => rejected(Reject::NoHealthyUpstream, None),
            Some((index, kind)) => {
                // Every endpoint tried refused the connection and is now
                // marked down: that is "no healthy upstream", not a bad answer.
                let reject = if all_refused {
                    Reject::NoHealthyUpstream
                } else {
                    kind.reject()
                };
                if kind != UpstreamErrorKind::Connect {
                    tracing::warn!(
                        endpoint = %self.pool.endpoint(index).name,
                        kind = kind.label(),
                        status = reject.status().as_u16(),
                        "upstream failed"
                    );
                }
                rejected(reject, Some(index))
            }
        }
    }
}

/// A request ready to be sent, kept so it can be sent again.
struct Attempt {
    method: Method,
    path: PathAndQuery,
    headers: HeaderMap,
    body: Bytes,
}

impl Attempt {
    /// The request for `endpoint`. Clones are cheap (`Bytes` and shared
    /// header values) except for the header map's own table.
    fn to(
        &self,
        endpoint: &crate::upstream::Endpoint,
    ) -> Result<Request<Full<Bytes>>, http::Error> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = endpoint.uri(self.path.clone())?;
        // Upstream connections are HTTP/1.1 whatever the client spoke, so
        // that they can be kept alive and pooled.
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = self.headers.clone();
        Ok(request)
    }
}

/// The `Content-Length` a client declared, if any and if it parses (hyper
/// has already refused malformed or conflicting ones).
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn rejected(reject: Reject, endpoint: Option<usize>) -> Outcome {
    (reject.response().map(Either::Right), endpoint)
}
