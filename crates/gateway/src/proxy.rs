//! Proxying one client request: route, rate-limit, prepare the body and
//! headers, pick an endpoint, send, retry when that is safe, and stream the
//! response back.
//!
//! Everything here runs on one worker thread (see [`crate::server`]); the
//! routing table, endpoints and rate-limit state are shared with the other
//! workers, the upstream connections are the worker's own.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use scalestack_config::{Algorithm, RequestKey};
use scalestack_resilience::{Decision, RateLimitStore};
use scalestack_telemetry::health::{Check, Status};
use tokio::time::Sleep;

use crate::body::{Release, RequestBody, ResponseBody, UpstreamBody};
use crate::clock;
use crate::codec::{BodyState, Origin, ResponseHead, Step};
use crate::conn::{Connections, ExchangeError, UpstreamConn};
use crate::error::{Reject, UpstreamErrorKind};
use crate::guard::GuardShared;
use crate::headers::prepare_request;
use crate::server::Shared;
use crate::table::{Pool, Route, Table, key_of};

/// `Idempotency-Key`: a request carrying it may be replayed like an idempotent one.
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Most times a request is put back because its pooled connection closed
/// before it was written (not counted as attempts: nothing was sent).
const MAX_UNSENT: u32 = 8;

/// One worker thread's view of the gateway.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) shared: Arc<Shared>,
    pub(crate) connections: Rc<Connections>,
    /// The worker's reference to the current table. Requests clone the
    /// `Rc`, not the `Arc`, so that they do not contend on the `Arc`'s
    /// counter with the other workers.
    table: RefCell<Rc<Current>>,
    version: Cell<u64>,
}

impl Worker {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let (version, table) = shared.current();
        Self {
            shared,
            connections: Rc::new(Connections::default()),
            table: RefCell::new(Rc::new(Current(table))),
            version: Cell::new(version),
        }
    }

    /// The current table. The worker keeps its own reference and checks one
    /// atomic per request, so requests do not contend on the shared copy.
    pub(crate) fn table(&self) -> Rc<Current> {
        let version = self.shared.version.load(Ordering::Acquire);
        if version != self.version.get() {
            let (version, table) = self.shared.current();
            *self.table.borrow_mut() = Rc::new(Current(table));
            self.version.set(version);
        }
        Rc::clone(&self.table.borrow())
    }
}

/// A worker's handle on a table.
#[derive(Debug)]
pub(crate) struct Current(Arc<Table>);

impl std::ops::Deref for Current {
    type Target = Table;

    fn deref(&self) -> &Table {
        &self.0
    }
}

/// One client connection.
pub(crate) struct Client {
    pub(crate) worker: Rc<Worker>,
    pub(crate) ip: IpAddr,
    /// The client address as a header value, rendered once per connection.
    pub(crate) ip_header: HeaderValue,
    ip_bytes: Vec<u8>,
    pub(crate) guard: Rc<GuardShared>,
    /// The first-byte timer, kept between the connection's requests: moving
    /// a registered timer's deadline later is one atomic update, where a new
    /// timer per request is a registration and a removal in the runtime's
    /// timer wheel. Dropped when the connection parks.
    first_byte: Cell<Option<Pin<Box<Sleep>>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("ip", &self.ip)
            .finish_non_exhaustive()
    }
}

/// How a request ended: the response and the endpoint it is attributed to.
struct Outcome {
    response: Response<ResponseBody>,
    endpoint: Option<usize>,
}

impl Outcome {
    fn reject(reject: Reject) -> Self {
        Self {
            response: reject.response().map(ResponseBody::from),
            endpoint: None,
        }
    }
}

impl Client {
    pub(crate) fn new(worker: Rc<Worker>, ip: IpAddr, guard: Rc<GuardShared>) -> Self {
        let ip_header = HeaderValue::try_from(ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        let ip_bytes = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        Self {
            worker,
            ip,
            ip_header,
            ip_bytes,
            guard,
            first_byte: Cell::new(None),
        }
    }

    /// Drops what the connection keeps between requests (its timer), for a
    /// connection that goes idle.
    pub(crate) fn release_idle_state(&self) {
        drop(self.first_byte.take());
    }

    /// Sends the request on `conn` and reads the response head; `None` if
    /// no head came by `deadline`.
    async fn exchange_within(
        &self,
        conn: &mut UpstreamConn,
        parts: &http::request::Parts,
        body: RequestBody,
        origin: Origin<'_>,
        deadline: Instant,
    ) -> Option<Result<ResponseHead, ExchangeError>> {
        let deadline = tokio::time::Instant::from_std(deadline);
        let mut timer = match self.first_byte.take() {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        let mut exchange = std::pin::pin!(conn.exchange(parts, body, origin));
        let done = std::future::poll_fn(|cx| {
            if let Poll::Ready(done) = exchange.as_mut().poll(cx) {
                return Poll::Ready(Some(done));
            }
            timer.as_mut().poll(cx).map(|()| None)
        })
        .await;
        self.first_byte.set(Some(timer));
        done
    }

    /// Answers one client request.
    pub(crate) async fn serve(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let start = Instant::now();
        if let Some(reject) = self.guard.next_request() {
            // The guard's stand-in for a head it refused: answer and close.
            let mut response = reject.response().map(ResponseBody::from);
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            self.worker.shared.unrouted.record(
                &Method::GET,
                response.status().as_u16(),
                start.elapsed(),
            );
            return response;
        }
        let table = self.worker.table();
        let method = request.method().clone();
        if method == Method::CONNECT {
            let response = Reject::MethodNotAllowed("this gateway does not proxy CONNECT tunnels")
                .response()
                .map(ResponseBody::from);
            self.worker
                .shared
                .unrouted
                .record(&method, 405, start.elapsed());
            return response;
        }
        // Only routes with host names need the host.
        let host = if table.routes_by_host {
            host_of(&request)
        } else {
            None
        };
        let Some(route) = table.route(&method, host, request.uri().path()) else {
            let response = Reject::NoRoute.response().map(ResponseBody::from);
            self.worker
                .shared
                .unrouted
                .record(&method, 404, start.elapsed());
            return response;
        };
        let pool = &table.pools[route.pool];
        let log_path = table.access_log.then(|| {
            request
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
        });
        let outcome = self.forward(&table, route, pool, request, start).await;
        let elapsed = start.elapsed();
        let status = outcome.response.status().as_u16();
        route.metrics.record(&method, status, elapsed);
        let endpoint = outcome.endpoint.map(|i| &pool.endpoints[i]);
        match endpoint {
            Some(e) => e.metrics.requests.record(status, elapsed),
            None => pool.metrics.no_endpoint.record(status, elapsed),
        }
        if let Some(path) = log_path {
            tracing::info!(
                target: "scalestack_gateway::access",
                client = %self.ip,
                method = %method,
                path = path.as_deref().unwrap_or("/"),
                status,
                route = %route.name,
                pool = %pool.name,
                endpoint = endpoint.map_or(crate::observe::NONE, |e| e.name.as_str()),
                duration_us = elapsed.as_micros() as u64,
                "request"
            );
        }
        outcome.response
    }

    async fn forward(
        &self,
        table: &Table,
        route: &Route,
        pool: &Pool,
        request: Request<Incoming>,
        start: Instant,
    ) -> Outcome {
        let (mut parts, body) = request.into_parts();
        // The request's start time serves as its first attempt's while
        // nothing has been waited for since, which saves reading the clock.
        let mut first_start = Some(start);
        let declared = declared_length(&parts.headers);
        // A declared length above the limit is refused before reading a byte.
        if declared.is_some_and(|len| len > table.max_request_body) {
            return Outcome::reject(Reject::PayloadTooLarge);
        }

        let limited = if route.tiers.is_empty() {
            None
        } else {
            first_start = None;
            let limited = self
                .rate_limit(table, route, &parts.headers, parts.uri.path())
                .await;
            if !limited.decision.allowed {
                let mut response = Reject::TooManyRequests.response().map(ResponseBody::from);
                limit_headers(response.headers_mut(), &limited.decision, true);
                return Outcome {
                    response,
                    endpoint: None,
                };
            }
            Some(limited)
        };

        // The body: nothing, buffered (so that it can be replayed), or
        // streamed when it is longer than the pool keeps for replay.
        let body = if body.is_end_stream() {
            RequestBody::Empty
        } else if declared.is_some_and(|len| len > pool.retry.max_replay_body) {
            RequestBody::Stream(body)
        } else {
            first_start = None;
            match read_body(body, table.max_request_body).await {
                Ok(bytes) if bytes.is_empty() => RequestBody::Empty,
                Ok(bytes) => RequestBody::Full(bytes),
                Err(reject) => return Outcome::reject(reject),
            }
        };

        let headers = &mut parts.headers;
        // Hop-by-hop headers go, and so does `Expect`: the body is the
        // gateway's to send now (hyper answered any `100 Continue` when it was
        // read), so the upstream must not wait for it.
        // A chunked body that was buffered goes with a length, which the
        // encoder writes (`codec::RequestFraming`).
        prepare_request(headers);
        if parts.uri.scheme().is_some() {
            // An absolute-form target (`GET http://host/path`) goes upstream
            // in origin form.
            let path = parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            parts.uri = Uri::from(path);
        }
        // Upstream connections are HTTP/1.1 whatever the client spoke, so
        // that they can be kept alive and pooled.
        parts.version = Version::HTTP_11;

        let hash = self.balance_hash(pool, &parts.headers, parts.uri.path(), &route.name);
        let mut outcome = self.send(pool, parts, body, hash, first_start).await;
        if let Some(limited) = limited {
            limit_headers(outcome.response.headers_mut(), &limited.decision, false);
        }
        outcome
    }

    /// Applies the route's rate-limit tiers; the decision returned is the
    /// refusal, or the tightest of the allowances (fewest remaining).
    async fn rate_limit(
        &self,
        table: &Table,
        route: &Route,
        headers: &HeaderMap,
        path: &str,
    ) -> LimitVerdict {
        let mut tightest: Option<Decision> = None;
        for (k, &t) in route.tiers.iter().enumerate() {
            let tier = &table.tiers[t];
            let Some(key) = key_of(&tier.key, headers, path, &self.ip_bytes, &route.name) else {
                continue;
            };
            let decision = match self
                .worker
                .shared
                .limits
                .acquire(tier.id, &tier.policy, key)
                .await
            {
                Ok(decision) => decision,
                Err(error) => {
                    // The local store never fails; a shared one that does
                    // must not take the gateway down with it: fail open.
                    tracing::warn!(%error, tier = %tier.name, "rate-limit store unavailable; request allowed");
                    continue;
                }
            };
            if !decision.allowed {
                route.metrics.limited(k);
                return LimitVerdict { decision };
            }
            if tightest.is_none_or(|t| decision.remaining < t.remaining) {
                tightest = Some(decision);
            }
        }
        LimitVerdict {
            // No tier had a key: nothing to advertise but the first tier's limit.
            decision: tightest.unwrap_or_else(|| {
                let policy = &table.tiers[route.tiers[0]].policy;
                Decision {
                    allowed: true,
                    limit: policy.advertised_limit(),
                    remaining: policy.advertised_limit(),
                    reset_after: Duration::ZERO,
                    retry_after: Duration::ZERO,
                }
            }),
        }
    }

    /// The hash of the request's balancing key, for the hashing algorithms.
    fn balance_hash(
        &self,
        pool: &Pool,
        headers: &HeaderMap,
        path: &str,
        route: &str,
    ) -> Option<u64> {
        let key = match pool.algorithm() {
            Algorithm::IpHash => &RequestKey::ClientIp,
            Algorithm::ConsistentHash => &pool.hash_key,
            _ => return None,
        };
        key_of(key, headers, path, &self.ip_bytes, route).map(crate::balance::hash_bytes)
    }

    /// Sends the request to one endpoint after another until one answers or
    /// a failure forbids another try; each endpoint at most once.
    async fn send(
        &self,
        pool: &Pool,
        parts: http::request::Parts,
        mut body: RequestBody,
        hash: Option<u64>,
        mut first_start: Option<Instant>,
    ) -> Outcome {
        let replayable_method =
            parts.method.is_idempotent() || parts.headers.contains_key(&IDEMPOTENCY_KEY);
        let retries_enabled = pool.retry.attempts > 0;
        // The head stays here for every attempt; a body can go out again
        // unless it was streamed through.
        let replayable = replayable_method && !matches!(body, RequestBody::Stream(_));
        // A retry also takes another endpoint to send it to.
        let may_retry = retries_enabled && replayable && pool.endpoints.len() > 1;
        if retries_enabled {
            pool.retry.budget.deposit();
        }
        let mut next: Option<RequestBody> = Some(body.take_first());
        let mut tried: Vec<usize> = Vec::new();
        let mut attempts: u32 = 0;
        let mut unsent: u32 = 0;
        let mut last: Option<(usize, UpstreamErrorKind)> = None;
        let mut kept: Option<(usize, Response<ResponseBody>)> = None;
        let mut all_refused = true;

        loop {
            if attempts > 0 && next.is_none() {
                // This would be a retry: is one allowed?
                if attempts > pool.retry.attempts || !may_retry {
                    break;
                }
                if !pool.retry.budget.try_withdraw() {
                    pool.metrics.budget_exhausted();
                    break;
                }
                let delay = pool.retry.backoff.delay_random(attempts - 1);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                next = Some(body.again());
            }
            let attempt_start = first_start.take().unwrap_or_else(Instant::now);
            let now = clock::at(attempt_start);
            let Some(index) = pool.pick(&tried, hash, now) else {
                break;
            };
            let endpoint = &pool.endpoints[index];
            let Ok(permit) = endpoint.breaker_permit() else {
                // Its breaker refused between the pick and now; not an attempt.
                tried.push(index);
                continue;
            };
            let Some(request_body) = next.take() else {
                break;
            };
            if attempts > 0 && last.is_some() {
                pool.metrics.retry();
            }
            let in_flight = endpoint.start_request();
            let (mut conn, reused) = match self
                .worker
                .connections
                .get(endpoint, pool.connect_timeout, attempt_start)
                .await
            {
                Ok(conn) => conn,
                Err(error) => {
                    // Nothing was sent: the request goes elsewhere whatever it is.
                    mark_down(endpoint, &error);
                    if let Some(p) = permit {
                        p.failure();
                    }
                    pool.record_failure(index, now);
                    endpoint.metrics.upstream_error(UpstreamErrorKind::Connect);
                    last = Some((index, UpstreamErrorKind::Connect));
                    tried.push(index);
                    attempts += 1;
                    // The request never left, so it goes to the next endpoint
                    // at once, without backoff or budget: each endpoint is
                    // tried at most once, which bounds this.
                    next = Some(request_body);
                    continue;
                }
            };
            let timeout = pool.first_byte_timeout.min(pool.total_timeout);
            let exchanged = self
                .exchange_within(
                    &mut conn,
                    &parts,
                    request_body,
                    Origin {
                        default_host: endpoint.authority.as_str(),
                        client_ip: self.ip_header.as_bytes(),
                    },
                    attempt_start + timeout,
                )
                .await;
            let kind = match exchanged {
                Some(Ok(head)) => {
                    let status = head.status.as_u16();
                    let answered = Instant::now();
                    let answered_ns = clock::at(answered);
                    endpoint.observe_rtt(
                        answered.saturating_duration_since(attempt_start),
                        answered_ns,
                    );
                    let gateway_failure = matches!(status, 502..=504);
                    if gateway_failure {
                        if let Some(p) = permit {
                            p.failure();
                        }
                        pool.record_failure(index, answered_ns);
                    } else {
                        if let Some(p) = permit {
                            p.success();
                        }
                        pool.record_success(index, answered_ns);
                    }
                    let response = self.wrap(pool, endpoint, head, conn, in_flight, attempt_start);
                    if !pool.retry.retries_status(status) || !replayable {
                        return Outcome {
                            response,
                            endpoint: Some(index),
                        };
                    }
                    // A retryable status: keep the answer in case no retry
                    // happens, and try another endpoint.
                    all_refused = false;
                    endpoint.metrics.upstream_error(UpstreamErrorKind::Status);
                    kept = Some((index, response));
                    UpstreamErrorKind::Status
                }
                Some(Err(error)) if reused && replayable && conn.nothing_received() => {
                    // A pooled connection the upstream closed as the request
                    // went out (its idle timeout): nothing came back, so the
                    // request goes again on a fresh connection; not an attempt.
                    tracing::debug!(endpoint = %endpoint.name, error = %crate::error::chain(&error), "pooled upstream connection was closed; sending again");
                    drop(permit);
                    unsent += 1;
                    endpoint.metrics.upstream_error(UpstreamErrorKind::Unsent);
                    if unsent > MAX_UNSENT {
                        last = Some((index, UpstreamErrorKind::Unsent));
                        break;
                    }
                    next = Some(body.again());
                    first_start = Some(attempt_start);
                    continue;
                }
                Some(Err(error)) => {
                    tracing::debug!(endpoint = %endpoint.name, error = %crate::error::chain(&error), "upstream request failed");
                    if let Some(p) = permit {
                        p.failure();
                    }
                    pool.record_failure(index, clock::now());
                    endpoint.metrics.upstream_error(UpstreamErrorKind::Other);
                    UpstreamErrorKind::Other
                }
                None => {
                    if let Some(p) = permit {
                        p.failure();
                    }
                    pool.record_failure(index, clock::now());
                    endpoint.metrics.upstream_error(UpstreamErrorKind::Timeout);
                    UpstreamErrorKind::Timeout
                }
            };
            all_refused &= kind == UpstreamErrorKind::Connect;
            last = Some((index, kind));
            tried.push(index);
            attempts += 1;
            if !kind.may_retry(replayable) {
                break;
            }
        }

        if let Some((index, response)) = kept {
            // The last retryable answer goes to the client as the endpoint sent it.
            return Outcome {
                response,
                endpoint: Some(index),
            };
        }
        match last {
            None => Outcome::reject(Reject::NoHealthyUpstream),
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
                        pool = %pool.name,
                        endpoint = %pool.endpoints[index].name,
                        kind = kind.label(),
                        status = reject.status().as_u16(),
                        "upstream failed"
                    );
                }
                Outcome {
                    endpoint: Some(index),
                    ..Outcome::reject(reject)
                }
            }
        }
    }

    /// The client's response around an upstream's head; its body is read
    /// from `conn` as the client takes it.
    fn wrap(
        &self,
        pool: &Pool,
        endpoint: &crate::endpoint::Endpoint,
        head: ResponseHead,
        mut conn: UpstreamConn,
        in_flight: crate::endpoint::InFlight,
        attempt_start: Instant,
    ) -> Response<ResponseBody> {
        let release = head.reusable.then(|| Release {
            connections: Rc::clone(&self.worker.connections),
            endpoint: endpoint.id,
            max_idle: pool.max_idle,
            idle_timeout: pool.idle_timeout,
        });
        let mut state = BodyState::new(head.framing);
        // A body that came whole with its head (most small responses) is
        // taken at once, and the connection goes straight back to the pool.
        let body = match state.exact_left() {
            Some(left) if left <= conn.buf.len() as u64 => {
                let data = match state.step(&mut conn.buf) {
                    Ok(Step::Data(data)) => data,
                    _ => Bytes::new(),
                };
                drop(in_flight);
                if let Some(release) = release {
                    release.put(conn);
                }
                ResponseBody::Local(Full::new(data))
            }
            _ => ResponseBody::Upstream(UpstreamBody::new(
                conn,
                state,
                release,
                in_flight,
                attempt_start + pool.total_timeout,
            )),
        };
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        *response.headers_mut() = head.headers;
        response
    }
}

/// The rate-limit verdict of a request.
struct LimitVerdict {
    decision: Decision,
}

async fn read_body(body: Incoming, limit: u64) -> Result<Bytes, Reject> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(Reject::PayloadTooLarge),
        Err(error) => {
            tracing::debug!(%error, "cannot read a request body");
            Err(Reject::BadRequest("the request body could not be read"))
        }
    }
}

/// The host a request is for: the `Host` header (or the absolute URI's),
/// without the port.
fn host_of<B>(request: &Request<B>) -> Option<&str> {
    let raw = match request.headers().get(HOST) {
        // Host names are ASCII: anything else cannot match a route's host.
        Some(value) => std::str::from_utf8(value.as_bytes()).ok()?,
        None => request.uri().host()?,
    };
    // `[v6]:port`, `name:port` or a bare name.
    Some(if let Some(rest) = raw.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        raw.rsplit_once(':').map_or(raw, |(host, _)| host)
    })
}

/// The `Content-Length` a client declared, if any (the guard has refused
/// malformed ones).
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Takes `endpoint` out of rotation because a connection to it failed
/// (passive health checking); the active checker brings it back.
pub(crate) fn mark_down(endpoint: &crate::endpoint::Endpoint, error: &dyn std::error::Error) {
    if endpoint.set_healthy(false, clock::now()) {
        let error = crate::error::chain(error);
        tracing::warn!(pool = %endpoint.pool, endpoint = %endpoint.name, %error, "endpoint down: connection failed");
        endpoint.set_last_check(Check {
            name: crate::health::check_name(&endpoint.pool, &endpoint.name),
            status: Status::Fail,
            latency_ms: 0.0,
            error: Some(format!("a proxied request could not connect: {error}")),
        });
    }
}

/// Adds the `X-RateLimit-*` headers (and `Retry-After` to a refusal).
fn limit_headers(headers: &mut HeaderMap, decision: &Decision, refused: bool) {
    headers.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from(decision.limit));
    headers.insert(
        X_RATELIMIT_REMAINING.clone(),
        HeaderValue::from(decision.remaining),
    );
    // The time the allowance is whole again, in seconds since the epoch
    // (as the seeds' example shows), rounded up.
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        + decision.reset_after;
    let reset = reset.as_secs() + u64::from(reset.subsec_nanos() > 0);
    headers.insert(X_RATELIMIT_RESET.clone(), HeaderValue::from(reset));
    if refused {
        let wait = decision.retry_after;
        let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port() {
        let request = |host: &str| Request::get("/").header(HOST, host).body(()).unwrap();
        assert_eq!(host_of(&request("shop.example:8080")), Some("shop.example"));
        assert_eq!(host_of(&request("shop.example")), Some("shop.example"));
        assert_eq!(host_of(&request("[::1]:80")), Some("::1"));
        let absolute = Request::get("http://other.example/x").body(()).unwrap();
        assert_eq!(host_of(&absolute), Some("other.example"));
    }

    #[test]
    fn rate_limit_headers_round_up_and_never_say_zero() {
        let mut headers = HeaderMap::new();
        let decision = Decision {
            allowed: false,
            limit: 100,
            remaining: 0,
            reset_after: Duration::from_millis(1500),
            retry_after: Duration::from_millis(200),
        };
        limit_headers(&mut headers, &decision, true);
        assert_eq!(headers["x-ratelimit-limit"], "100");
        assert_eq!(headers["x-ratelimit-remaining"], "0");
        assert_eq!(headers["retry-after"], "1");
        let reset: u64 = headers["x-ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(reset > now && reset <= now + 3, "{reset} vs {now}");
    }
}
