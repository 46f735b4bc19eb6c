//! `Idempotency-Key` on POST (the IETF httpapi draft's semantics).
//!
//! * A malformed key is refused with 400 before anything happens.
//! * A request whose key is still being processed — by this instance (an
//!   in-process registry) or, on PostgreSQL, by any instance (an advisory
//!   lock held by the writing transaction) — gets 409 with `Retry-After`.
//! * A finished key with the same payload replays the stored status, headers
//!   and body (with `Idempotent-Replayed: true`); with another payload it
//!   gets 422. Requests refused by validation are not recorded: a corrected
//!   retry with the same key proceeds.
//!
//! The key's record is written by the store in the same transaction as the
//! order and its outbox row; keys are scoped to the order's user.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use scalestack_store::StoredResponse;

use super::error::ApiError;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The header that marks a replayed response.
pub const REPLAYED: &str = "idempotent-replayed";
/// Counter of requests with a key, by outcome (`created`, `replayed`,
/// `in_flight`, `reused`, `malformed`).
pub const IDEMPOTENCY_REQUESTS: &str = "scalestack_idempotency_requests_total";

/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

fn malformed(message: impl Into<String>) -> ApiError {
    count("malformed");
    ApiError::bad_request("invalid_idempotency_key", message).with_field("Idempotency-Key")
}

/// Counts a keyed request's outcome.
pub(crate) fn count(outcome: &'static str) {
    metrics::counter!(IDEMPOTENCY_REQUESTS, "outcome" => outcome).increment(1);
}

/// The request's key: `None` without the header.
///
/// The draft defines the value as a structured-field string (`"…"`, printable
/// ASCII with `\"` and `\\` escapes); many clients send the bare value, so a
/// token of visible ASCII without quotes, commas or spaces is accepted too.
pub fn parse(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(malformed("send one Idempotency-Key header, not several"));
    }
    let raw = value
        .to_str()
        .map_err(|_| malformed("Idempotency-Key must be printable ASCII"))?
        .trim();
    let key = if let Some(inner) = raw.strip_prefix('"') {
        let Some(inner) = inner.strip_suffix('"') else {
            return Err(malformed(
                "Idempotency-Key has an opening quote but no closing one",
            ));
        };
        let mut key = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(e @ ('"' | '\\')) => key.push(e),
                    _ => {
                        return Err(malformed(
                            "Idempotency-Key has a bad escape (only \\\" and \\\\ are allowed)",
                        ));
                    }
                },
                '"' => return Err(malformed("Idempotency-Key has an unescaped quote inside")),
                ' '..='~' => key.push(c),
                _ => return Err(malformed("Idempotency-Key must be printable ASCII")),
            }
        }
        key
    } else {
        if !raw
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | ',' | '\\'))
        {
            return Err(malformed(
                "Idempotency-Key must be a quoted string or visible ASCII without quotes, commas or spaces",
            ));
        }
        raw.to_owned()
    };
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(malformed(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} characters, got {}",
            key.len()
        )));
    }
    Ok(Some(key))
}

/// Keys being processed by this instance, as `(user id, key)`.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    keys: Arc<Mutex<HashSet<(i64, String)>>>,
}

/// Holds a key as in flight until dropped.
#[derive(Debug)]
pub struct Claim {
    keys: Arc<Mutex<HashSet<(i64, String)>>>,
    entry: (i64, String),
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.entry);
    }
}

impl InFlight {
    /// Claims `key` of `user_id`; `None` when another request holds it.
    pub fn claim(&self, user_id: i64, key: &str) -> Option<Claim> {
        let entry = (user_id, key.to_owned());
        let fresh = self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry.clone());
        fresh.then(|| Claim {
            keys: self.keys.clone(),
            entry,
        })
    }
}

/// The 409 of a key in flight.
pub fn in_flight() -> ApiError {
    count("in_flight");
    ApiError::conflict(
        "idempotency_key_in_flight",
        "a request with this Idempotency-Key is still being processed; retry shortly",
    )
    .with_field("Idempotency-Key")
}

/// The 422 of a key reused with another payload.
pub fn reused() -> ApiError {
    count("reused");
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "this Idempotency-Key was used with a different request body",
    )
    .with_field("Idempotency-Key")
}

/// The response of a replayed key, as it was first sent.
pub fn replay(stored: &StoredResponse) -> Response {
    count("replayed");
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (status, stored.body.clone()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (name, value) in &stored.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    headers.insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

/// Registers the metrics of this module with their help texts.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        IDEMPOTENCY_REQUESTS,
        "Requests with an Idempotency-Key, by outcome (created, replayed, in_flight, reused, malformed)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(values: &[&str]) -> Result<Option<String>, ApiError> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(HEADER, HeaderValue::from_str(v).unwrap());
        }
        parse(&headers)
    }

    #[test]
    fn keys_are_sf_strings_or_bare_tokens() {
        assert_eq!(key_of(&[]).unwrap(), None);
        assert_eq!(
            key_of(&["\"8e03978e-40d5-43e8-bc93-6894a57f9324\""])
                .unwrap()
                .as_deref(),
            Some("8e03978e-40d5-43e8-bc93-6894a57f9324")
        );
        assert_eq!(
            key_of(&["abc-123_x.y:z"]).unwrap().as_deref(),
            Some("abc-123_x.y:z")
        );
        assert_eq!(
            key_of(&[r#""a \"b\" \\ c""#]).unwrap().as_deref(),
            Some(r#"a "b" \ c"#)
        );
        let long = "k".repeat(MAX_KEY_LEN + 1);
        for bad in [
            "\"\"",
            "\"open",
            "a b",
            "a,b",
            "\"a\\nb\"",
            "\"a\"b\"",
            long.as_str(),
        ] {
            let err = key_of(&[bad]).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(err.field.as_deref(), Some("Idempotency-Key"), "{bad}");
        }
        assert!(key_of(&["a", "b"]).is_err(), "two headers");
    }

    #[test]
    fn a_claim_holds_its_key_until_dropped() {
        let inflight = InFlight::default();
        let claim = inflight.claim(1, "k").unwrap();
        assert!(inflight.claim(1, "k").is_none());
        assert!(inflight.claim(2, "k").is_some(), "keys are per user");
        drop(claim);
        assert!(inflight.claim(1, "k").is_some());
    }
}
