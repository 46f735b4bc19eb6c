//! The thing under load: the URL template split once into an address and a
//! path template, and the request built from them for each key.
//!
//! Splitting up front keeps the per-request work to one string of the exact
//! size and one URI parse: no template scanning, no header building.

use std::fmt::Write as _;

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::Full;

use crate::{BenchError, BenchSpec};

/// The placeholder replaced by a key.
const PLACEHOLDER: &str = "{id}";

/// Where requests go, parsed from the URL template.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `host[:port]` as written; sent as the `Host` header.
    authority: Authority,
    /// The host without IPv6 brackets, for name resolution.
    host: String,
    pub(crate) port: u16,
    pub(crate) path: PathTemplate,
}

impl Target {
    /// Parses `http://host[:port]/path?query`, where path and query may hold
    /// `{id}`.
    pub(crate) fn parse(url: &str) -> Result<Self, BenchError> {
        let bad = |reason: String| BenchError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let expected =
            "expected `http://HOST[:PORT]/PATH`, e.g. `http://127.0.0.1:8080/users/{id}`";
        let Some((scheme, rest)) = url.trim().split_once("://") else {
            return Err(bad(expected.into()));
        };
        if scheme.eq_ignore_ascii_case("https") {
            return Err(bad("https is not supported yet; use an http:// URL".into()));
        }
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(bad(format!("unsupported scheme `{scheme}`; {expected}")));
        }
        let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() {
            return Err(bad(format!("the host is missing; {expected}")));
        }
        if authority.contains(PLACEHOLDER) {
            return Err(bad(
                "`{id}` may only appear in the path or query, not in the host".into(),
            ));
        }
        if authority.contains('@') {
            return Err(bad(
                "user info (`user@host`) is not supported; send an Authorization header".into(),
            ));
        }
        if path.contains('#') {
            return Err(bad(
                "a fragment (`#...`) is never sent to the server; remove it".into(),
            ));
        }
        let authority: Authority = authority
            .parse()
            .map_err(|e| bad(format!("invalid host `{authority}`: {e}")))?;
        let port = authority.port_u16().unwrap_or(80);
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let path = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        let path = PathTemplate::new(&path);
        // Keys only ever put digits where `{id}` was, so if the longest key
        // renders into a valid path, every key does.
        PathAndQuery::try_from(path.render(u64::MAX))
            .map_err(|e| bad(format!("invalid path `{}`: {e}", path.render(u64::MAX))))?;
        Ok(Self {
            authority,
            host,
            port,
            path,
        })
    }

    /// The host to resolve and the port to connect to.
    pub(crate) fn host_port(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    /// The concrete URL for `key`, for messages.
    pub(crate) fn url_for(&self, key: u64) -> String {
        format!("http://{}{}", self.authority, self.path.render(key))
    }
}

/// A path-and-query with `{id}` placeholders, pre-split into the literal
/// pieces between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathTemplate {
    /// `pieces.len() - 1` keys go between consecutive pieces.
    pieces: Vec<String>,
    /// Length of the rendered path for the longest key, so rendering never
    /// reallocates.
    capacity: usize,
}

impl PathTemplate {
    pub(crate) fn new(template: &str) -> Self {
        let pieces: Vec<String> = template.split(PLACEHOLDER).map(str::to_owned).collect();
        let literal: usize = pieces.iter().map(String::len).sum();
        let capacity = literal + (pieces.len() - 1) * u64::MAX.to_string().len();
        Self { pieces, capacity }
    }

    /// The path with every `{id}` replaced by `key`.
    pub(crate) fn render(&self, key: u64) -> String {
        let mut out = String::with_capacity(self.capacity);
        let (first, rest) = self
            .pieces
            .split_first()
            .expect("split yields at least one piece");
        out.push_str(first);
        for piece in rest {
            // Writing into a String cannot fail.
            let _ = write!(out, "{key}");
            out.push_str(piece);
        }
        out
    }
}

/// Everything of a request that does not depend on the key, built once.
#[derive(Debug, Clone)]
pub(crate) struct RequestTemplate {
    method: Method,
    path: PathTemplate,
    headers: HeaderMap,
    /// `Bytes` so that each request's body is a reference-count increment.
    body: Bytes,
}

impl RequestTemplate {
    pub(crate) fn new(spec: &BenchSpec, target: &Target) -> Result<Self, BenchError> {
        let mut headers = HeaderMap::with_capacity(spec.headers.len() + 1);
        let host =
            HeaderValue::from_str(target.authority.as_str()).map_err(|e| BenchError::BadUrl {
                url: spec.url.clone(),
                reason: format!("the host cannot be sent as a Host header: {e}"),
            })?;
        headers.insert(HOST, host);
        // User headers come last so that they can replace `Host`; a header
        // given twice is sent twice, as the user asked.
        let mut replaced_host = false;
        for (name, value) in &spec.headers {
            if name == HOST && !replaced_host {
                headers.remove(HOST);
                replaced_host = true;
            }
            headers.append(name.clone(), value.clone());
        }
        Ok(Self {
            method: spec.method.clone(),
            path: target.path.clone(),
            headers,
            body: spec.body.clone().unwrap_or_default(),
        })
    }

    /// The request for `key`, in origin form (`/path?query`) as HTTP/1.1
    /// expects when talking to the origin directly.
    pub(crate) fn build(&self, key: u64) -> Request<Full<Bytes>> {
        // `Target::parse` proved that rendering any key gives a valid path.
        let uri =
            Uri::try_from(self.path.render(key)).expect("validated when the target was parsed");
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = self.headers.clone();
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad_url_reason(url: &str) -> String {
        match Target::parse(url) {
            Err(BenchError::BadUrl { url: u, reason }) => {
                assert_eq!(u, url);
                reason
            }
            other => panic!("expected a bad URL, got {other:?}"),
        }
    }

    #[test]
    fn substitutes_every_placeholder_with_the_key() {
        let t = PathTemplate::new("/users/{id}");
        assert_eq!(t.render(42), "/users/42");
        assert_eq!(t.render(u64::MAX), format!("/users/{}", u64::MAX));
        let t = PathTemplate::new("/users/{id}/orders?user={id}&x=1");
        assert_eq!(t.render(7), "/users/7/orders?user=7&x=1");
        assert_eq!(PathTemplate::new("/{id}").render(0), "/0");
        assert_eq!(PathTemplate::new("/static").render(9), "/static");
        // The capacity covers the longest key, so rendering never grows.
        let t = PathTemplate::new("/a/{id}/b/{id}");
        assert!(t.render(u64::MAX).len() <= t.capacity);
    }

    #[test]
    fn parses_host_port_and_path() {
        let t = Target::parse("http://127.0.0.1:8080/users/{id}").unwrap();
        assert_eq!(t.host_port(), ("127.0.0.1", 8080));
        assert_eq!(t.url_for(5), "http://127.0.0.1:8080/users/5");
        let t = Target::parse("HTTP://example.com").unwrap();
        assert_eq!(t.host_port(), ("example.com", 80));
        assert_eq!(t.path.render(1), "/");
        let t = Target::parse("http://[::1]:9000?k={id}").unwrap();
        assert_eq!(t.host_port(), ("::1", 9000));
        assert_eq!(t.url_for(3), "http://[::1]:9000/?k=3");
    }

    #[test]
    fn rejects_bad_urls_with_a_reason() {
        assert!(bad_url_reason("https://127.0.0.1/x").contains("https is not supported"));
        assert!(bad_url_reason("ftp://127.0.0.1/x").contains("`ftp`"));
        assert!(bad_url_reason("127.0.0.1:8080/users").contains("http://HOST"));
        assert!(bad_url_reason("http:///users").contains("host is missing"));
        assert!(bad_url_reason("http://{id}.example.com/").contains("path or query"));
        assert!(bad_url_reason("http://a b/").contains("invalid host"));
        assert!(bad_url_reason("http://h/users/{id} x").contains("invalid path"));
        assert!(bad_url_reason("http://h/users#top").contains("fragment"));
        assert!(bad_url_reason("http://u:p@h/").contains("user info"));
    }

    #[test]
    fn builds_origin_form_requests_with_host_and_user_headers() {
        let mut spec = BenchSpec::new("http://localhost:8080/users/{id}?fields=name");
        spec.method = Method::POST;
        spec.body = Some(Bytes::from_static(b"{}"));
        spec.headers.push((
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer t"),
        ));
        let target = Target::parse(&spec.url).unwrap();
        let template = RequestTemplate::new(&spec, &target).unwrap();
        let req = template.build(12);
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri(), "/users/12?fields=name");
        assert_eq!(req.headers()[HOST], "localhost:8080");
        assert_eq!(req.headers()[http::header::AUTHORIZATION], "Bearer t");

        spec.headers
            .push((HOST, HeaderValue::from_static("api.example")));
        let template = RequestTemplate::new(&spec, &target).unwrap();
        let req = template.build(1);
        assert_eq!(
            req.headers().get_all(HOST).iter().collect::<Vec<_>>(),
            ["api.example"]
        );
    }
}
