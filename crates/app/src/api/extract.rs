//! Request extractors whose rejections are [`ApiError`]s naming the problem.

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON request body, parsed with errors that name the field at fault.
///
/// The content type is not checked: `curl -d` sends form content types, and a
/// body that is not JSON fails parsing with a clear message anyway.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| body_error(&r))?;
        parse_json(&bytes).map(JsonBody)
    }
}

fn body_error(rejection: &BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "payload_too_large",
            message: rejection.body_text(),
            field: None,
        }
    } else {
        ApiError::bad_request("unreadable_body", rejection.body_text())
    }
}

/// Parses a JSON document into `T`, naming the field of a missing, unknown or
/// wrongly typed value.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "malformed_json",
            "request body is empty; expected a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                ApiError::bad_request(
                    "malformed_json",
                    format!("request body is not valid JSON: {inner}"),
                )
            }
            _ => field_error(&path, &inner.to_string()),
        }
    })?;
    de.end().map_err(|e| {
        ApiError::bad_request(
            "malformed_json",
            format!("trailing characters after the JSON value: {e}"),
        )
    })?;
    Ok(value)
}

/// Builds the 400 for a data error of serde at `path`.
fn field_error(path: &str, message: &str) -> ApiError {
    // serde_json appends " at line L column C"; the field name is more useful.
    let message = message.split(" at line ").next().unwrap_or(message);
    // A missing field is reported at its parent's path with the name in
    // backticks; an unknown field's path already ends with its name.
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    let field = match (path, missing) {
        (".", Some(name)) => name.to_owned(),
        (parent, Some(name)) => format!("{parent}.{name}"),
        (path, None) if path != "." => path.to_owned(),
        _ => {
            return ApiError::bad_request("invalid_body", message.to_owned());
        }
    };
    let code = if message.starts_with("missing field") {
        "missing_field"
    } else if message.starts_with("unknown field") {
        "unknown_field"
    } else {
        "invalid_field"
    };
    ApiError::bad_request(code, format!("{field}: {message}")).with_field(field)
}

/// A resource id from the path (`/users/{id}`): a positive integer.
#[derive(Debug, Clone, Copy)]
pub struct Id(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))?;
        match raw.parse::<i64>() {
            Ok(id) => Ok(Id(id)),
            Err(_) => Err(ApiError::bad_request(
                "invalid_path",
                format!("id must be an integer, got {raw:?}"),
            )
            .with_field("id")),
        }
    }
}

/// Query parameters common to the api's GET endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// `fields=a,b`: the fields to return.
    pub fields: Option<Vec<String>>,
    /// `limit=N`.
    pub limit: Option<u32>,
    /// `cursor=...`: where the previous page ended.
    pub cursor: Option<String>,
    /// Other allowed parameters (e.g. `status`, `since`), for the endpoint to
    /// interpret, in the order given.
    pub extra: Vec<(String, String)>,
}

impl ListQuery {
    /// The value of an endpoint-specific parameter (the last one given).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.extra
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the query string, accepting only the parameters in `allowed`.
pub fn parse_query(query: Option<&str>, allowed: &[&str]) -> Result<ListQuery, ApiError> {
    let mut out = ListQuery::default();
    let Some(query) = query else { return Ok(out) };
    let pairs: Vec<(String, String)> = serde_urlencoded_pairs(query)?;
    for (key, value) in pairs {
        if !allowed.contains(&key.as_str()) {
            return Err(ApiError::bad_request(
                "unknown_parameter",
                format!(
                    "unknown query parameter `{key}`; this endpoint accepts: {}",
                    allowed.join(", ")
                ),
            )
            .with_field(key));
        }
        match key.as_str() {
            "fields" => {
                let names: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                if names.is_empty() {
                    return Err(ApiError::invalid_field(
                        "fields",
                        "fields must name at least one field",
                    ));
                }
                out.fields = Some(names);
            }
            "limit" => match value.parse::<u32>() {
                Ok(n) if n > 0 => out.limit = Some(n),
                _ => {
                    return Err(ApiError::invalid_field(
                        "limit",
                        format!("limit must be a positive integer, got {value:?}"),
                    ));
                }
            },
            "cursor" => out.cursor = Some(value),
            _ => out.extra.push((key, value)),
        }
    }
    Ok(out)
}

fn serde_urlencoded_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut pairs = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        pairs.push((percent_decode(k)?, percent_decode(v)?));
    }
    Ok(pairs)
}

/// Decodes `%XX` escapes and `+` (form encoding of a space).
fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_query",
                            format!("bad percent-escape in {s:?}"),
                        )
                    })?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_request("invalid_query", "query is not UTF-8"))
}

/// Checks requested field names against a resource's fields.
pub fn check_fields(requested: Option<&[String]>, known: &[&str]) -> Result<(), ApiError> {
    let Some(requested) = requested else {
        return Ok(());
    };
    let unknown: BTreeSet<&str> = requested
        .iter()
        .map(String::as_str)
        .filter(|f| !known.contains(f))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let unknown: Vec<&str> = unknown.into_iter().collect();
    Err(ApiError::bad_request(
        "unknown_fields",
        format!(
            "unknown fields: {}; known fields: {}",
            unknown.join(", "),
            known.join(", ")
        ),
    )
    .with_field("fields"))
}

/// Opaque page cursors: the last id of a page, tagged with its list so that a
/// cursor of one list is refused by another.
pub fn encode_cursor(tag: &str, last_id: i64) -> String {
    encode_cursor_text(tag, &last_id.to_string())
}

/// Decodes a cursor made by [`encode_cursor`] with the same `tag`.
pub fn decode_cursor(tag: &str, cursor: &str) -> Result<i64, ApiError> {
    decode_cursor_text(tag, cursor)?
        .parse()
        .map_err(|_| invalid_cursor())
}

fn invalid_cursor() -> ApiError {
    ApiError::invalid_field("cursor", "cursor is not one this list issued")
}

/// An opaque cursor carrying `payload` (anything the list needs to resume),
/// tagged with its list.
pub fn encode_cursor_text(tag: &str, payload: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{tag}:{payload}"))
}

/// The payload of a cursor made by [`encode_cursor_text`] with the same `tag`.
pub fn decode_cursor_text(tag: &str, cursor: &str) -> Result<String, ApiError> {
    let raw = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| invalid_cursor())?;
    let text = String::from_utf8(raw).map_err(|_| invalid_cursor())?;
    let (got_tag, payload) = text.split_once(':').ok_or_else(invalid_cursor)?;
    if got_tag != tag {
        return Err(invalid_cursor());
    }
    Ok(payload.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Order {
        user_id: i64,
        quantity: i64,
        note: Option<Nested>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Nested {
        text: String,
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = parse_json::<Order>(br#"{"user_id": 1}"#).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("missing_field", Some("quantity"))
        );

        let e = parse_json::<Order>(br#"{"user_id": 1, "quantity": "two"}"#).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_field", Some("quantity"))
        );
        assert!(e.message.contains("invalid type"), "{}", e.message);

        let e = parse_json::<Order>(br#"{"user_id": 1, "quantity": 2, "colour": 1}"#).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("unknown_field", Some("colour"))
        );

        let e = parse_json::<Order>(br#"{"user_id": 1, "quantity": 2, "note": {"text": 5}}"#)
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("note.text"));

        let e = parse_json::<Order>(br#"{"user_id": 1, "quantity": 2, "note": {}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("note.text"));
    }

    #[test]
    fn malformed_json_is_a_400_without_a_field() {
        for body in [
            &b""[..],
            b"  ",
            b"{",
            b"{\"user_id\": }",
            b"[1, 2",
            br#"{"user_id":1,"quantity":2} {}"#,
        ] {
            let e = parse_json::<Order>(body).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(
                e.code,
                "malformed_json",
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        let e = parse_json::<Order>(b"[1, 2]").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn query_parsing() {
        let q = parse_query(
            Some("fields=id,%20name&limit=5&cursor=abc"),
            &["fields", "limit", "cursor"],
        )
        .unwrap();
        assert_eq!(q.fields, Some(vec!["id".to_owned(), "name".to_owned()]));
        assert_eq!(q.limit, Some(5));
        assert_eq!(q.cursor.as_deref(), Some("abc"));

        let e = parse_query(Some("limit=0"), &["limit"]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("limit"));
        let e = parse_query(Some("limit=ten"), &["limit"]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("limit"));
        let e = parse_query(Some("sort=id"), &["fields"]).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("unknown_parameter", Some("sort"))
        );
        let e = parse_query(Some("fields="), &["fields"]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("fields"));
        assert!(parse_query(Some("fields=%zz"), &["fields"]).is_err());
    }

    #[test]
    fn unknown_fields_are_listed() {
        let known = ["id", "name"];
        assert!(check_fields(Some(&["id".to_owned()]), &known).is_ok());
        let e = check_fields(
            Some(&["id".to_owned(), "zip".to_owned(), "age".to_owned()]),
            &known,
        )
        .unwrap_err();
        assert!(
            e.message.starts_with("unknown fields: age, zip;"),
            "{}",
            e.message
        );
    }

    #[test]
    fn cursors_round_trip_and_are_bound_to_their_list() {
        let c = encode_cursor("p", 42);
        assert_eq!(decode_cursor("p", &c).unwrap(), 42);
        assert!(decode_cursor("o", &c).is_err());
        assert!(decode_cursor("p", "not base64!").is_err());
        assert!(decode_cursor("p", &URL_SAFE_NO_PAD.encode("p:x")).is_err());
    }
}
