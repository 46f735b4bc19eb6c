//! Header rewriting between client and upstream.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection, not the
//! message, so a proxy must drop them in both directions: `Connection` and
//! every header it names, plus the fixed list below.

use http::HeaderMap;
use http::header::{CONNECTION, HeaderName, HeaderValue, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The fixed hop-by-hop headers, `Connection` first.
fn hop_by_hop() -> [&'static HeaderName; 7] {
    [
        &CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
        &UPGRADE,
    ]
}

/// Whether `name`, in any case as it came off the wire, is one of the fixed
/// hop-by-hop headers (the upstream response side, before names are
/// lowercased). The length check first keeps this to about one comparison.
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    hop_by_hop()
        .iter()
        .any(|n| n.as_str().len() == name.len() && n.as_str().eq_ignore_ascii_case(name))
}

/// The position of a lowercase `name` in [`hop_by_hop`], if it is one of them.
///
/// A match on the name's text: the compiler turns it into a length switch
/// and at most one comparison, where comparing `HeaderName`s one by one
/// costs seven comparisons for every header of every message.
fn hop_index_str(name: &str) -> Option<usize> {
    match name {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "te" => Some(3),
        "trailer" => Some(4),
        "transfer-encoding" => Some(5),
        "upgrade" => Some(6),
        _ => None,
    }
}

/// Readies a request's headers for the upstream in one pass over the names:
/// drops the hop-by-hop headers and `Expect` (the body is the gateway's to
/// send, so the upstream must not wait for it). The forwarding headers are
/// written with the head (`codec::encode_request_head`), not kept in the map.
///
/// Knowing from the pass which names are there spares the lookups of the
/// absent ones.
pub(crate) fn prepare_request(headers: &mut HeaderMap) {
    let mut present = 0u8;
    let mut expect = false;
    for name in headers.keys() {
        match name.as_str() {
            "expect" => expect = true,
            other => {
                if let Some(i) = hop_index_str(other) {
                    present |= 1 << i;
                }
            }
        }
    }
    if present != 0 {
        strip_present(headers, present);
    }
    if expect {
        headers.remove(http::header::EXPECT);
    }
}

/// Removes the hop-by-hop headers whose bits (positions in [`hop_by_hop`])
/// are set in `present`.
fn strip_present(headers: &mut HeaderMap, present: u8) {
    let fixed = hop_by_hop();
    if present & 1 != 0 {
        // The headers that `Connection` names go first, while it is still
        // there. Copying its values (cheap: they share the read buffer) lets
        // us mutate the map; a message with several `Connection` lines is rare.
        let mut values = headers.get_all(CONNECTION).iter();
        match (values.next().cloned(), values.next().is_some()) {
            (None, _) => {}
            (Some(value), false) => remove_named(headers, &value),
            (Some(_), true) => {
                let values: Vec<HeaderValue> =
                    headers.get_all(CONNECTION).iter().cloned().collect();
                for value in &values {
                    remove_named(headers, value);
                }
            }
        }
    }
    for (i, name) in fixed.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
}

/// Removes every header named in one `Connection` value (`close, x-foo`).
fn remove_named(headers: &mut HeaderMap, connection: &HeaderValue) {
    // Nearly every message says just one of the two options.
    let bytes = connection.as_bytes();
    if bytes.eq_ignore_ascii_case(b"keep-alive") || bytes.eq_ignore_ascii_case(b"close") {
        return;
    }
    for token in tokens(bytes) {
        // The two common tokens are options, not header names; skipping them
        // saves building a header name for nearly every request.
        if token.eq_ignore_ascii_case(b"keep-alive") || token.eq_ignore_ascii_case(b"close") {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token) {
            headers.remove(name);
        }
    }
}

/// A Content-Length value: digits only (no sign, space or list), at most
/// 18 of them; requests (the guard) and responses (the codec) alike.
pub(crate) fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The comma-separated tokens of a header value, trimmed, empty ones left out.
pub(crate) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn requests_lose_fixed_and_connection_named_headers() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "x-other"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("host", "api.example"),
            ("x-kept", "yes"),
        ]);
        prepare_request(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-kept"]);
        assert!(is_hop_by_hop("Transfer-Encoding"));
        assert!(is_hop_by_hop("KEEP-ALIVE"));
        assert!(!is_hop_by_hop("Content-Length"));
    }

    #[test]
    fn requests_lose_hop_by_hop_and_expect() {
        let mut headers = map(&[
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("expect", "100-continue"),
            ("x-forwarded-for", "203.0.113.7"),
            ("host", "api.example"),
        ]);
        prepare_request(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-forwarded-for"]);
    }
}
