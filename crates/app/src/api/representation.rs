//! How responses are represented: the format the client accepts (JSON, or
//! MessagePack for `Accept: application/msgpack`), entity tags with
//! `If-None-Match` → 304, and compression (gzip, br, zstd) by
//! `Accept-Encoding`.
//!
//! Handlers always produce JSON; these layers turn it into what the client
//! asked for, so every endpoint, its errors and replayed idempotent responses
//! get the same treatment. The order of the layers matters: the entity tag is
//! computed over the negotiated (uncompressed) representation, and
//! compression runs last.
//!
//! This module knows no resource; it sees bytes and headers.

use std::hash::{Hash as _, Hasher as _};

use axum::body::{Body, to_bytes};
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::compression::{CompressionLayer, CompressionLevel};

use super::error::ApiError;

/// Counter of responses by representation format (`json`, `msgpack`).
pub const RESPONSE_FORMATS: &str = "scalestack_api_response_formats_total";
/// Counter of responses by content coding (`identity`, `gzip`, `br`, `zstd`).
pub const RESPONSE_ENCODINGS: &str = "scalestack_api_response_encodings_total";
/// Counter of conditional GETs answered 304, by route.
pub const NOT_MODIFIED: &str = "scalestack_api_not_modified_total";

/// Largest response body that gets an entity tag (and is buffered for it).
const MAX_TAGGED_BODY: usize = 8 * 1024 * 1024;

/// The MessagePack media type.
pub const MSGPACK: &str = "application/msgpack";

/// A representation format of the api.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json`.
    Json,
    /// `application/msgpack`.
    MsgPack,
}

/// How well an `Accept` header admits a media type: its quality and how
/// specifically it was named (2 exact, 1 `type/*`, 0 `*/*`).
fn admits(accept: &str, kind: &str, subtypes: &[&str]) -> Option<(u16, u8)> {
    let mut best: Option<(u8, u16)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut q = 1000u16;
        for param in parts {
            if let Some((name, value)) = param.split_once('=')
                && name.trim().eq_ignore_ascii_case("q")
            {
                q = parse_q(value.trim()).unwrap_or(0);
            }
        }
        let Some((t, s)) = media.split_once('/') else {
            continue;
        };
        let specificity = if t == kind && subtypes.contains(&s) {
            2
        } else if t == kind && s == "*" {
            1
        } else if t == "*" && s == "*" {
            0
        } else {
            continue;
        };
        // The most specific range that matches decides the quality.
        if best.is_none_or(|(spec, _)| specificity > spec) {
            best = Some((specificity, q));
        }
    }
    best.map(|(spec, q)| (q, spec))
}

/// A quality value (`0` to `1` with up to three decimals) in thousandths.
fn parse_q(value: &str) -> Option<u16> {
    let q: f64 = value.parse().ok()?;
    (0.0..=1.0)
        .contains(&q)
        .then(|| (q * 1000.0).round() as u16)
}

/// The format `accept` prefers; `None` when it admits neither.
pub fn negotiate(accept: Option<&str>) -> Option<Format> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Some(Format::Json);
    };
    let json = admits(accept, "application", &["json"]).unwrap_or((0, 0));
    let msgpack = admits(
        accept,
        "application",
        &["msgpack", "x-msgpack", "vnd.msgpack"],
    )
    .unwrap_or((0, 0));
    match (json.0, msgpack.0) {
        (0, 0) => None,
        // A tie goes to the type named more specifically, then to JSON.
        _ if msgpack > json => Some(Format::MsgPack),
        _ => Some(Format::Json),
    }
}

fn vary(headers: &mut HeaderMap, value: &'static str) {
    headers.append(header::VARY, HeaderValue::from_static(value));
}

/// Middleware: answers in the format the client accepts (406 when it
/// accepts none the api has), converting JSON bodies to MessagePack.
pub(crate) async fn negotiate_format(request: Request, next: Next) -> Response {
    let accept = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(format) = negotiate(accept.as_deref()) else {
        let mut response = ApiError::not_acceptable(format!(
            "this api answers in application/json or {MSGPACK}; the request accepts neither ({})",
            accept.unwrap_or_default()
        ))
        .into_response();
        vary(response.headers_mut(), "accept");
        return response;
    };
    let mut response = next.run(request).await;
    vary(response.headers_mut(), "accept");
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let format = if is_json { format } else { Format::Json };
    let label = match format {
        Format::Json => "json",
        Format::MsgPack => "msgpack",
    };
    metrics::counter!(RESPONSE_FORMATS, "format" => label).increment(1);
    if format == Format::Json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let converted = match to_bytes(body, MAX_TAGGED_BODY).await {
        Ok(bytes) if bytes.is_empty() => Ok(Vec::new()),
        Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|v| rmp_serde::to_vec_named(&v).map_err(|e| e.to_string())),
        Err(e) => Err(e.to_string()),
    };
    match converted {
        Ok(bytes) => {
            parts
                .headers
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(MSGPACK));
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(bytes))
        }
        Err(error) => {
            tracing::error!(%error, "cannot convert a response to MessagePack");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
            .into_response()
        }
    }
}

/// A weak entity tag of a representation's bytes.
///
/// Weak, because the same representation is also sent compressed: the tag
/// names the content, not the bytes on the wire. The hash is std's SipHash
/// with fixed keys; every api instance runs the same build, so instances
/// agree on the tags they give.
pub fn entity_tag(body: &[u8]) -> String {
    let mut hasher = std::hash::DefaultHasher::new();
    body.hash(&mut hasher);
    format!("W/\"{:016x}\"", hasher.finish())
}

/// Whether `If-None-Match` lists `etag` (weak comparison) or is `*`.
pub fn none_match(if_none_match: &str, etag: &str) -> bool {
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    let wanted = opaque(etag);
    if_none_match
        .split(',')
        .any(|tag| tag.trim() == "*" || opaque(tag) == wanted)
}

/// Middleware: gives successful GET responses an entity tag and answers a
/// matching `If-None-Match` with 304 and no body.
pub(crate) async fn conditional_get(request: Request, next: Next) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return next.run(request).await;
    }
    let if_none_match = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    if response.status() != StatusCode::OK {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match to_bytes(body, MAX_TAGGED_BODY).await {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::error!(%error, "cannot read a response body to tag it");
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
            .into_response();
        }
    };
    let etag = entity_tag(&bytes);
    let value = HeaderValue::from_str(&etag).expect("an entity tag is a valid header value");
    parts.headers.insert(header::ETAG, value);
    if !parts.headers.contains_key(header::CACHE_CONTROL) {
        // Caches may keep the response but must revalidate it (cheaply,
        // with the tag) before reusing it.
        parts
            .headers
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    if if_none_match.is_some_and(|inm| none_match(&inm, &etag)) {
        metrics::counter!(NOT_MODIFIED, "route" => route).increment(1);
        parts.status = StatusCode::NOT_MODIFIED;
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::CONTENT_TYPE);
        return Response::from_parts(parts, Body::empty());
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// Middleware (outside compression): counts responses by content coding.
pub(crate) async fn count_encodings(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let encoding = match response
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(HeaderValue::as_bytes)
    {
        None => "identity",
        Some(b"gzip") => "gzip",
        Some(b"br") => "br",
        Some(b"zstd") => "zstd",
        Some(_) => "other",
    };
    metrics::counter!(RESPONSE_ENCODINGS, "encoding" => encoding).increment(1);
    response
}

/// Compression by `Accept-Encoding`: gzip, br and zstd at their default
/// levels (tower-http caps brotli's, whose maximum is far too slow to serve).
pub(crate) fn compression() -> CompressionLayer {
    CompressionLayer::new()
        .gzip(true)
        .br(true)
        .zstd(true)
        .quality(CompressionLevel::Default)
}

/// Registers the metrics of this module with their help texts.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        RESPONSE_FORMATS,
        "Responses by representation format (json, msgpack)."
    );
    metrics::describe_counter!(
        RESPONSE_ENCODINGS,
        "Responses by content coding (identity, gzip, br, zstd)."
    );
    metrics::describe_counter!(
        NOT_MODIFIED,
        "Conditional GETs answered 304 Not Modified, by route."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_pick_the_format() {
        assert_eq!(negotiate(None), Some(Format::Json));
        assert_eq!(negotiate(Some("")), Some(Format::Json));
        assert_eq!(negotiate(Some("*/*")), Some(Format::Json));
        assert_eq!(negotiate(Some("application/json")), Some(Format::Json));
        assert_eq!(
            negotiate(Some("application/msgpack")),
            Some(Format::MsgPack)
        );
        assert_eq!(
            negotiate(Some("application/x-msgpack")),
            Some(Format::MsgPack)
        );
        assert_eq!(
            negotiate(Some("application/msgpack, */*;q=0.1")),
            Some(Format::MsgPack)
        );
        assert_eq!(
            negotiate(Some("application/msgpack, */*")),
            Some(Format::MsgPack)
        );
        assert_eq!(
            negotiate(Some("application/msgpack;q=0.5, application/json")),
            Some(Format::Json)
        );
        assert_eq!(
            negotiate(Some("application/json;q=0.2, application/msgpack;q=0.9")),
            Some(Format::MsgPack)
        );
        assert_eq!(negotiate(Some("text/html")), None);
        assert_eq!(negotiate(Some("application/json;q=0")), None);
        assert_eq!(
            negotiate(Some("text/html, application/*;q=0.3")),
            Some(Format::Json)
        );
        // An exact range with q=0 excludes a type a wildcard would admit.
        assert_eq!(
            negotiate(Some("*/*, application/json;q=0")),
            Some(Format::MsgPack)
        );
    }

    #[test]
    fn entity_tags_are_weak_and_compare_weakly() {
        let tag = entity_tag(b"{}");
        assert!(tag.starts_with("W/\"") && tag.ends_with('"'), "{tag}");
        assert_ne!(tag, entity_tag(b"{ }"));
        assert!(none_match(&tag, &tag));
        assert!(none_match(&tag.replace("W/", ""), &tag));
        assert!(none_match(&format!("\"x\", {tag}"), &tag));
        assert!(none_match("*", &tag));
        assert!(!none_match("\"x\"", &tag));
    }
}
