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

/// Why the gateway could not start.
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
    /// No upstream endpoint is configured, so there is nothing to proxy to.
    #[error(
        "gateway: gateway.upstream.endpoints is empty: list at least one host:port to proxy to"
    )]
    NoEndpoints,
    /// An endpoint is not a `host:port`.
    #[error("gateway: gateway.upstream.endpoints[{index}] = \"{value}\" is not host:port")]
    InvalidEndpoint {
        /// Position in the list.
        index: usize,
        /// The rejected value.
        value: String,
    },
}

// === Upstream failures ===

/// Where one attempt to reach an endpoint failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamErrorKind {
    /// No connection could be opened: the request was never sent.
    Connect,
    /// The endpoint sent no response head within `request_timeout`.
    Timeout,
    /// Anything else: the connection broke while the request was sent or
    /// before the response head arrived, or the response was malformed.
    Other,
}

impl UpstreamErrorKind {
    /// Classifies an error of the upstream client.
    pub(crate) fn of(error: &hyper_util::client::legacy::Error) -> Self {
        if error.is_connect() {
            Self::Connect
        } else {
            Self::Other
        }
    }

    /// The `kind` label of `scalestack_gateway_upstream_errors_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Other => "other",
        }
    }

    /// A distinct position below 3, for arrays of metric handles.
    pub(crate) fn index(self) -> usize {
        match self {
            Self::Connect => 0,
            Self::Timeout => 1,
            Self::Other => 2,
        }
    }

    /// Whether the request may be sent to another endpoint.
    ///
    /// A request that never left is safe to replay whatever its method. A
    /// request that may have reached the endpoint is replayed only when its
    /// method is idempotent (the rule of NGINX's `proxy_next_upstream`); this
    /// also covers the race of a pooled keep-alive connection that the
    /// endpoint closed just as the request went out. A timeout is not
    /// retried: the endpoint may still be working on it, and replaying slow
    /// requests multiplies the load exactly when the upstreams are struggling.
    pub(crate) fn may_retry(self, idempotent: bool) -> bool {
        match self {
            Self::Connect => true,
            Self::Other => idempotent,
            Self::Timeout => false,
        }
    }

    /// Whether the failure is proof that the endpoint is down (passive health).
    ///
    /// Only a refused or timed-out connect is: a broken keep-alive connection
    /// or a slow answer says nothing certain about the next request.
    pub(crate) fn marks_endpoint_down(self) -> bool {
        self == Self::Connect
    }

    /// What the client gets when this was the last attempt.
    pub(crate) fn reject(self) -> Reject {
        match self {
            Self::Connect | Self::Other => Reject::BadGateway,
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
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.message() }
        });
        json_response(self.status(), body.to_string())
    }
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
    fn only_connect_errors_mark_down_and_timeouts_are_never_retried() {
        use UpstreamErrorKind::*;
        assert!(Connect.may_retry(false) && Connect.marks_endpoint_down());
        assert!(Other.may_retry(true) && !Other.may_retry(false));
        assert!(!Other.marks_endpoint_down());
        assert!(!Timeout.may_retry(true) && !Timeout.marks_endpoint_down());
        assert_eq!(Timeout.reject().status(), StatusCode::GATEWAY_TIMEOUT);
        let indexes = [Connect.index(), Timeout.index(), Other.index()];
        assert_eq!(indexes, [0, 1, 2]);
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
