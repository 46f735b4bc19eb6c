//! Errors: why the gateway cannot start ([`GatewayError`]), how one failed
//! upstream attempt is classified ([`UpstreamErrorKind`]), and the JSON error
//! responses the gateway itself sends to clients ([`Reject`]).
//!
//! One classification per upstream failure drives the retry decision, the
//! passive health verdict, the status code and the metric label, so that the
//! four can never disagree.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

/// Why the gateway could not start (or reload).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A listener could not be bound.
    #[error("gateway: cannot listen on {addr} ({key}): {source}")]
    Bind {
        /// The config key of the address: `gateway.listen` or `gateway.admin_listen`.
        key: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A pool has no endpoint, so there is nothing to proxy to.
    #[error("gateway: {key} is empty: list at least one host:port to proxy to")]
    NoEndpoints {
        /// The config key of the empty list, e.g. `gateway.pools[0].endpoints`.
        key: String,
    },
    /// An endpoint is not a `host:port`.
    #[error("gateway: {key} = \"{value}\" is not host:port")]
    InvalidEndpoint {
        /// The config key, e.g. `gateway.pools[0].endpoints[1]`.
        key: String,
        /// The rejected value.
        value: String,
    },
    /// The configuration is invalid; the message names the key and value.
    #[error("gateway: {0}")]
    Config(String),
    /// The worker threads could not be started.
    #[error("gateway: cannot start worker thread {index}: {source}")]
    Thread {
        /// Which worker.
        index: usize,
        /// What the OS said.
        source: std::io::Error,
    },
}

// === Upstream failures ===

/// Where one attempt to reach an endpoint failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamErrorKind {
    /// No connection could be opened: the request was never sent.
    Connect,
    /// A pooled connection closed before the request was written: it was
    /// never sent either.
    Unsent,
    /// The endpoint sent no response head within `first_byte_timeout`.
    Timeout,
    /// The connection broke after the request went out, or the response
    /// was malformed.
    Other,
    /// The endpoint answered with a status the pool retries (502/503/504).
    Status,
}

impl UpstreamErrorKind {
    /// Every kind, in [`UpstreamErrorKind::index`] order.
    #[cfg(test)]
    pub(crate) const ALL: [Self; 5] = [
        Self::Connect,
        Self::Unsent,
        Self::Timeout,
        Self::Other,
        Self::Status,
    ];

    /// The `kind` label of `scalestack_gateway_upstream_errors_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Unsent => "unsent",
            Self::Timeout => "timeout",
            Self::Other => "other",
            Self::Status => "status",
        }
    }

    /// A distinct position below 5, for arrays of metric handles.
    pub(crate) fn index(self) -> usize {
        match self {
            Self::Connect => 0,
            Self::Unsent => 1,
            Self::Timeout => 2,
            Self::Other => 3,
            Self::Status => 4,
        }
    }

    /// Whether the request may be sent to another endpoint, given whether
    /// replaying it is safe (`replayable`: an idempotent method or an
    /// `Idempotency-Key`, and a body the gateway still has).
    ///
    /// A request that never left is safe to send elsewhere whatever it is.
    /// One that may have reached the endpoint is replayed only when that is
    /// safe (the rule of NGINX's `proxy_next_upstream`). A timeout is not
    /// retried: the endpoint may still be working on it, and replaying slow
    /// requests multiplies the load exactly when the upstreams struggle.
    pub(crate) fn may_retry(self, replayable: bool) -> bool {
        match self {
            Self::Connect | Self::Unsent => true,
            Self::Other | Self::Status => replayable,
            Self::Timeout => false,
        }
    }

    /// What the client gets when this was the last attempt (a retryable
    /// status is passed on as the endpoint sent it, not made up here).
    pub(crate) fn reject(self) -> Reject {
        match self {
            Self::Connect | Self::Unsent | Self::Other | Self::Status => Reject::BadGateway,
            Self::Timeout => Reject::GatewayTimeout,
        }
    }
}

/// `error` and its sources, joined by `: `. hyper's errors put the useful
/// part (`Connection refused`) in the source chain, not in their `Display`.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some layers repeat their source in their own message.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

// === Gateway-generated responses ===

/// A response the gateway makes up itself instead of proxying one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    /// The request body is larger than `gateway.max_request_body`.
    PayloadTooLarge,
    /// The request head is larger than `gateway.client.max_header_bytes`.
    HeaderTooLarge,
    /// The request has more than `gateway.client.max_headers` header lines.
    TooManyHeaders,
    /// The client did not send a whole head within the header read timeout.
    RequestTimeout,
    /// No route serves the request.
    NoRoute,
    /// A rate limit refused the request.
    TooManyRequests,
    /// The request could not be read or cannot be forwarded.
    BadRequest(&'static str),
    /// The method is not served here (`CONNECT` tunnels; non-GET admin requests).
    MethodNotAllowed(&'static str),
    /// An admin path that does not exist.
    NotFound,
    /// The endpoint failed before a response head arrived.
    BadGateway,
    /// The endpoint sent no response head within `request_timeout`.
    GatewayTimeout,
    /// No endpoint is healthy, or every one refused the connection.
    NoHealthyUpstream,
}

impl Reject {
    /// The HTTP status.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeaderTooLarge | Self::TooManyHeaders => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::NoHealthyUpstream => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The machine-readable `error.code`.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Self::PayloadTooLarge => "payload_too_large",
            Self::HeaderTooLarge => "header_too_large",
            Self::TooManyHeaders => "too_many_headers",
            Self::RequestTimeout => "request_timeout",
            Self::NoRoute => "no_route",
            Self::TooManyRequests => "rate_limited",
            Self::BadRequest(_) => "bad_request",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::NotFound => "not_found",
            Self::BadGateway => "bad_gateway",
            Self::GatewayTimeout => "gateway_timeout",
            Self::NoHealthyUpstream => "no_healthy_upstream",
        }
    }

    /// The human-readable `error.message`. It names no endpoint: clients
    /// have no business knowing the upstream topology.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Self::PayloadTooLarge => "the request body is larger than this gateway accepts",
            Self::HeaderTooLarge => "the request head is larger than this gateway accepts",
            Self::TooManyHeaders => "the request has more header lines than this gateway accepts",
            Self::RequestTimeout => "the request head did not arrive in time",
            Self::NoRoute => "no route of this gateway serves this request",
            Self::TooManyRequests => {
                "too many requests: slow down and retry after Retry-After seconds"
            }
            Self::BadRequest(why) => why,
            Self::MethodNotAllowed(why) => why,
            Self::NotFound => "no such path on the gateway's admin port",
            Self::BadGateway => "the upstream server failed to answer",
            Self::GatewayTimeout => "the upstream server did not answer in time",
            Self::NoHealthyUpstream => "no upstream server is available",
        }
    }

    /// The response: `{"error":{"code":"...","message":"..."}}` as JSON.
    pub(crate) fn response(self) -> Response<Full<Bytes>> {
        error_response(self.status(), self.code(), self.message(), None)
    }
}

/// A response in the project's error shape:
/// `{"error":{"code":"...","message":"...","field":"..."}}` (`field` only when given).
pub(crate) fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    field: Option<&str>,
) -> Response<Full<Bytes>> {
    let mut error = serde_json::json!({ "code": code, "message": message });
    if let Some(field) = field {
        error["field"] = serde_json::Value::from(field);
    }
    json_response(status, serde_json::json!({ "error": error }).to_string())
}

/// A response with a JSON body.
pub(crate) fn json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_error_names_component_key_and_address() {
        let error = GatewayError::Bind {
            key: "gateway.listen",
            addr: ([127, 0, 0, 1], 8080).into(),
            source: std::io::ErrorKind::AddrInUse.into(),
        };
        let message = error.to_string();
        assert!(
            message.starts_with("gateway: cannot listen on 127.0.0.1:8080 (gateway.listen): "),
            "{message}"
        );
    }

    #[test]
    fn unsent_requests_always_retry_and_timeouts_never() {
        use UpstreamErrorKind::*;
        assert!(Connect.may_retry(false));
        assert!(Unsent.may_retry(false));
        assert!(Other.may_retry(true) && !Other.may_retry(false));
        assert!(Status.may_retry(true) && !Status.may_retry(false));
        assert!(!Timeout.may_retry(true));
        assert_eq!(Timeout.reject().status(), StatusCode::GATEWAY_TIMEOUT);
        for (i, kind) in UpstreamErrorKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }

    #[test]
    fn chain_shows_every_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Outer(#[source] std::io::Error);
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(chain(&Outer(refused)), "client error (Connect): refused");
    }

    #[test]
    fn reject_has_the_project_error_shape() {
        let response = Reject::BadRequest("say \"why\"").response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = body_of(response);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "bad_request");
        assert_eq!(json["error"]["message"], "say \"why\"");
        assert!(json["error"].get("field").is_none());
        let with_field = error_response(StatusCode::BAD_REQUEST, "invalid", "m", Some("f"));
        let json: serde_json::Value = serde_json::from_slice(&body_of(with_field)).unwrap();
        assert_eq!(json["error"]["field"], "f");
    }

    fn body_of(response: Response<Full<Bytes>>) -> Bytes {
        use http_body_util::BodyExt;
        let collected = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(response.into_body().collect())
            .unwrap();
        collected.to_bytes()
    }
}
