//! Errors as clients see them: a status code and a JSON body naming the problem.
//!
//! Every error body has one shape:
//! `{"error": {"code": "invalid_field", "message": "...", "field": "quantity"}}`
//! (`field` only when one field is at fault). Store failures are logged here,
//! where they are handled, and reach the client without internal details.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use scalestack_store::StoreError;
use serde::Serialize;

/// An error response of the api.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// The request field at fault, if one is.
    pub field: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

/// The error body, as the OpenAPI document describes it.
#[derive(Debug, utoipa::ToSchema)]
#[schema(as = Error)]
#[allow(dead_code)]
pub struct ErrorDoc {
    /// What went wrong.
    error: ErrorDetailDoc,
}

/// The inside of an error body.
#[derive(Debug, utoipa::ToSchema)]
#[schema(as = ErrorDetail)]
#[allow(dead_code)]
pub struct ErrorDetailDoc {
    /// Stable machine-readable code, e.g. `invalid_field`.
    code: String,
    /// Human-readable explanation.
    message: String,
    /// The request field (or header) at fault, when one is.
    field: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// Names the field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 400: the request is malformed or a value is unacceptable.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 400 about one field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::bad_request("invalid_field", message).with_field(field)
    }

    /// 404: no such resource.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 422: well-formed, but refers to something that does not exist.
    pub fn unprocessable(field: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_reference",
            message,
        )
        .with_field(field)
    }

    /// 409: the request conflicts with one in progress.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 406: no representation the client accepts.
    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_ACCEPTABLE, "not_acceptable", message)
    }

    /// 413: the body is larger than allowed.
    pub fn payload_too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than {limit} bytes"),
        )
    }

    /// 405.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this method is not allowed on this path",
        )
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::to_string(&Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        })
        .expect("an error body serializes")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.body(),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE || self.status == StatusCode::CONFLICT {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        ApiError::from(&error)
    }
}

impl From<&StoreError> for ApiError {
    fn from(error: &StoreError) -> Self {
        if error.is_transient() {
            tracing::warn!(%error, "store temporarily unavailable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the data store is busy; retry shortly",
            )
        } else {
            tracing::error!(%error, "store failure");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        }
    }
}

impl From<scalestack_cache::LoadError<StoreError>> for ApiError {
    fn from(error: scalestack_cache::LoadError<StoreError>) -> Self {
        match error {
            scalestack_cache::LoadError::Failed(e) => ApiError::from(&*e),
        }
    }
}
