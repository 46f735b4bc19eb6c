//! The thing under load and the requests sent to it.
//!
//! [`Target`] is the URL split once into an address and a path; every
//! request type (the one request of a plain run, or each entry of a
//! [`Scenario`](crate::Scenario)) is compiled into a [`RequestKind`] whose
//! HTTP/1.1 wire form is rendered per request into a reused buffer: no
//! header map, no URI parsing, no allocation on the hot path.

use std::collections::BTreeSet;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use rand::Rng;

use crate::keys::KeySampler;
use crate::template::{Template, Vars};
use crate::{BenchError, BenchSpec, KeyDist, KeyRange};

/// Where requests go, parsed from the URL.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `host[:port]` as written; sent as the `Host` header.
    pub(crate) authority: Authority,
    /// The host without IPv6 brackets, for name resolution.
    host: String,
    pub(crate) port: u16,
    /// Path and query as written (`/` if none), a template.
    pub(crate) path: String,
}

impl Target {
    /// Parses `http://host[:port]/path?query`, where path and query may hold
    /// placeholders.
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
        if authority.contains('{') {
            return Err(bad(
                "placeholders such as `{id}` may only appear in the path or query, not in the host"
                    .into(),
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

    /// `http://authority`, for messages and absolute URIs.
    pub(crate) fn origin(&self) -> String {
        format!("http://{}", self.authority)
    }
}

/// Which statuses count as success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expect {
    /// 2xx and 3xx.
    Success,
    /// Exactly these.
    Listed(BTreeSet<u16>),
}

impl Expect {
    pub(crate) fn accepts(&self, status: u16) -> bool {
        match self {
            Self::Success => (200..400).contains(&status),
            Self::Listed(statuses) => statuses.contains(&status),
        }
    }

    /// For reports: `2xx/3xx` or `200, 201`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Success => "2xx/3xx".into(),
            Self::Listed(s) => s.iter().map(u16::to_string).collect::<Vec<_>>().join(", "),
        }
    }
}

/// The source of one request type, before compilation.
#[derive(Debug, Clone)]
pub(crate) struct KindSource {
    pub(crate) name: String,
    pub(crate) weight: u32,
    pub(crate) method: String,
    /// Path template, relative to the origin.
    pub(crate) path: String,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    /// Body; a template when `templated`, else sent as is.
    pub(crate) body: Option<Vec<u8>>,
    pub(crate) templated_body: bool,
    pub(crate) keys: KeyRange,
    pub(crate) dist: KeyDist,
    pub(crate) expect: Vec<u16>,
}

impl KindSource {
    /// The request types of `spec`: its scenario's, or the one request of
    /// its URL, method, headers and body.
    pub(crate) fn from_spec(spec: &BenchSpec, target: &Target) -> Vec<Self> {
        match &spec.scenario {
            Some(scenario) => {
                // A path in the URL is a prefix of every request's path.
                let prefix = target.path.trim_end_matches('/');
                let prefix = if prefix == "/" { "" } else { prefix };
                scenario
                    .requests
                    .iter()
                    .map(|r| Self {
                        name: if r.name.is_empty() {
                            format!("{} {}", r.method.to_ascii_uppercase(), r.path)
                        } else {
                            r.name.clone()
                        },
                        weight: r.weight,
                        method: r.method.clone(),
                        path: format!("{prefix}{}", r.path),
                        headers: r
                            .headers
                            .iter()
                            .map(|(n, v)| (n.clone(), v.as_bytes().to_vec()))
                            .collect(),
                        body: r.body.as_ref().map(|b| b.as_bytes().to_vec()),
                        templated_body: true,
                        keys: r.keys,
                        dist: r.dist,
                        expect: r.expect.clone(),
                    })
                    .collect()
            }
            None => vec![Self {
                name: format!("{} {}", spec.method, target.path),
                weight: 1,
                method: spec.method.to_string(),
                path: target.path.clone(),
                headers: spec
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                    .collect(),
                body: spec.body.as_ref().map(|b| b.to_vec()),
                // A body given as bytes is sent exactly as given.
                templated_body: false,
                keys: spec.keys,
                dist: spec.dist,
                expect: Vec::new(),
            }],
        }
    }
}

/// One request type, compiled.
#[derive(Debug)]
pub(crate) struct RequestKind {
    pub(crate) name: String,
    pub(crate) method: Method,
    pub(crate) path_source: String,
    pub(crate) weight: u32,
    pub(crate) sampler: KeySampler,
    pub(crate) first_key: u64,
    pub(crate) expect: Expect,
    /// `METHOD path HTTP/1.1\r\n`, split around the path.
    path: Template,
    /// `Host` and the user's headers, each `name: value\r\n`, a template.
    head: Template,
    /// The same headers, for HTTP/2 (without `Host`, which is `:authority`).
    h2_headers: Vec<(HeaderName, Template)>,
    body: Template,
    /// Whether to send `Content-Length` even for an empty body (methods
    /// that carry one).
    always_length: bool,
    /// A response to this request has no body (`HEAD`).
    pub(crate) head_only: bool,
    origin: String,
}

/// Headers the generator writes itself.
const RESERVED: [&str; 3] = ["content-length", "transfer-encoding", "connection"];

impl RequestKind {
    pub(crate) fn compile(
        index: usize,
        source: &KindSource,
        target: &Target,
        scenario: bool,
    ) -> Result<Self, BenchError> {
        let field: &'static str = if scenario { "scenario" } else { "request" };
        let invalid = |what: String| BenchError::InvalidSpec {
            field,
            reason: if scenario {
                format!("request[{index}] (`{}`): {what}", source.name)
            } else {
                what
            },
        };
        let template = |text: &[u8], what: &str| {
            Template::compile(text).map_err(|e| invalid(format!("{what}: {e}")))
        };
        let method: Method = source
            .method
            .to_ascii_uppercase()
            .parse()
            .map_err(|_| invalid(format!("`{}` is not an HTTP method", source.method)))?;
        let path = template(source.path.as_bytes(), "path")?;
        let longest = String::from_utf8(path.render_longest())
            .map_err(|_| invalid("the path is not UTF-8".into()))?;
        if !longest.starts_with('/') {
            return Err(invalid(format!(
                "the path `{}` must start with `/`",
                source.path
            )));
        }
        PathAndQuery::try_from(longest.as_str())
            .map_err(|e| invalid(format!("invalid path `{}`: {e}", source.path)))?;

        let mut head = Vec::new();
        let mut h2_headers = Vec::new();
        let mut host_given = false;
        for (name, value) in &source.headers {
            let header = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| invalid(format!("`{name}` is not a valid header name")))?;
            if RESERVED.contains(&header.as_str()) {
                return Err(invalid(format!(
                    "the `{header}` header is set by the load generator; remove it"
                )));
            }
            let value_template = template(value, &format!("header `{header}`"))?;
            for literal in value_template.literals() {
                HeaderValue::from_bytes(literal).map_err(|_| {
                    invalid(format!(
                        "the value of header `{header}` has invalid characters"
                    ))
                })?;
            }
            host_given |= header == http::header::HOST;
            head.extend_from_slice(header.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
            if header != http::header::HOST {
                h2_headers.push((header, value_template));
            }
        }
        if !host_given {
            let mut with_host = format!("host: {}\r\n", target.authority).into_bytes();
            with_host.extend_from_slice(&head);
            head = with_host;
        }
        let head = template(&head, "headers")?;
        let body = match &source.body {
            Some(b) if source.templated_body => template(b, "body")?,
            Some(b) => Template::literal(b),
            None => Template::literal(b""),
        };
        let sampler = KeySampler::new(source.keys, source.dist).map_err(|e| match e {
            BenchError::InvalidSpec { reason, .. } => invalid(reason),
            other => other,
        })?;
        let expect = if source.expect.is_empty() {
            Expect::Success
        } else {
            Expect::Listed(source.expect.iter().copied().collect())
        };
        Ok(Self {
            name: source.name.clone(),
            always_length: matches!(method, Method::POST | Method::PUT | Method::PATCH),
            head_only: method == Method::HEAD,
            method,
            path_source: source.path.clone(),
            weight: source.weight,
            sampler,
            first_key: source.keys.first(),
            expect,
            path,
            head,
            h2_headers,
            body,
            origin: target.origin(),
        })
    }

    /// Renders the HTTP/1.1 request for `vars` into `out` (cleared first);
    /// `scratch` holds the body while its length is not yet known.
    pub(crate) fn render_h1<R: Rng + ?Sized>(
        &self,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
        vars: &mut Vars,
        rng: &mut R,
    ) {
        out.clear();
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        self.path.render(out, vars, rng);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        self.head.render(out, vars, rng);
        if self.body.is_empty() {
            if self.always_length {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            out.extend_from_slice(b"\r\n");
        } else {
            scratch.clear();
            self.body.render(scratch, vars, rng);
            out.extend_from_slice(b"content-length: ");
            crate::template::push_u64(out, scratch.len() as u64);
            out.extend_from_slice(b"\r\n\r\n");
            out.extend_from_slice(scratch);
        }
    }

    /// Builds the HTTP/2 request for `vars`.
    pub(crate) fn build_h2<R: Rng + ?Sized>(
        &self,
        vars: &mut Vars,
        rng: &mut R,
    ) -> Request<Full<Bytes>> {
        let mut uri = Vec::with_capacity(self.origin.len() + 32);
        uri.extend_from_slice(self.origin.as_bytes());
        self.path.render(&mut uri, vars, rng);
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.method_mut() = self.method.clone();
        // Compilation proved that every rendering is a valid path.
        *request.uri_mut() = Uri::try_from(uri).expect("validated when compiled");
        for (name, value) in &self.h2_headers {
            let mut bytes = Vec::new();
            value.render(&mut bytes, vars, rng);
            // Literals were validated and placeholders render only digits,
            // hex and dashes.
            let value = HeaderValue::from_bytes(&bytes).expect("validated when compiled");
            request.headers_mut().append(name.clone(), value);
        }
        if !self.body.is_empty() {
            let mut body = Vec::new();
            self.body.render(&mut body, vars, rng);
            *request.body_mut() = Full::new(Bytes::from(body));
        }
        request
    }
}

/// Picks request types by weight.
#[derive(Debug)]
pub(crate) struct Mix {
    /// Cumulative weights; kind `i` is picked when a draw below the total
    /// falls under `cumulative[i]` and not under the one before.
    cumulative: Vec<u64>,
    total: u64,
}

impl Mix {
    pub(crate) fn new(kinds: &[RequestKind]) -> Self {
        let mut total = 0;
        let cumulative = kinds
            .iter()
            .map(|k| {
                total += u64::from(k.weight);
                total
            })
            .collect();
        Self { cumulative, total }
    }

    pub(crate) fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        if self.cumulative.len() == 1 {
            return 0;
        }
        let draw = rand::RngExt::random_range(rng, 0..self.total);
        self.cumulative.partition_point(|&c| c <= draw)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;
    use crate::Scenario;

    fn bad_url_reason(url: &str) -> String {
        match Target::parse(url) {
            Err(BenchError::BadUrl { url: u, reason }) => {
                assert_eq!(u, url);
                reason
            }
            other => panic!("expected a bad URL, got {other:?}"),
        }
    }

    fn kinds(spec: &BenchSpec) -> Result<Vec<RequestKind>, BenchError> {
        let target = Target::parse(&spec.url)?;
        KindSource::from_spec(spec, &target)
            .iter()
            .enumerate()
            .map(|(i, s)| RequestKind::compile(i, s, &target, spec.scenario.is_some()))
            .collect()
    }

    fn wire(kind: &RequestKind, key: u64) -> String {
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        let mut rng = SmallRng::seed_from_u64(1);
        kind.render_h1(&mut out, &mut scratch, &mut Vars::new(key, 9), &mut rng);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn parses_host_port_and_path() {
        let t = Target::parse("http://127.0.0.1:8080/users/{id}").unwrap();
        assert_eq!(t.host_port(), ("127.0.0.1", 8080));
        assert_eq!(t.path, "/users/{id}");
        let t = Target::parse("HTTP://example.com").unwrap();
        assert_eq!(t.host_port(), ("example.com", 80));
        assert_eq!(t.path, "/");
        let t = Target::parse("http://[::1]:9000?k={id}").unwrap();
        assert_eq!(t.host_port(), ("::1", 9000));
        assert_eq!(t.path, "/?k={id}");
    }

    #[test]
    fn rejects_bad_urls_with_a_reason() {
        assert!(bad_url_reason("https://127.0.0.1/x").contains("https is not supported"));
        assert!(bad_url_reason("ftp://127.0.0.1/x").contains("`ftp`"));
        assert!(bad_url_reason("127.0.0.1:8080/users").contains("http://HOST"));
        assert!(bad_url_reason("http:///users").contains("host is missing"));
        assert!(bad_url_reason("http://{id}.example.com/").contains("path or query"));
        assert!(bad_url_reason("http://a b/").contains("invalid host"));
        assert!(bad_url_reason("http://h/users#top").contains("fragment"));
        assert!(bad_url_reason("http://u:p@h/").contains("user info"));
        let mut spec = BenchSpec::new("http://h/users/{id} x");
        let err = kinds(&spec).unwrap_err().to_string();
        assert!(err.contains("invalid path"), "{err}");
        spec.url = "http://h/users/{user}".into();
        let err = kinds(&spec).unwrap_err().to_string();
        assert!(err.contains("unknown placeholder `{user}`"), "{err}");
    }

    #[test]
    fn renders_the_wire_form_with_host_headers_and_length() {
        let mut spec = BenchSpec::new("http://localhost:8080/users/{id}?fields=name");
        let kind = &kinds(&spec).unwrap()[0];
        assert_eq!(
            wire(kind, 12),
            "GET /users/12?fields=name HTTP/1.1\r\nhost: localhost:8080\r\n\r\n"
        );
        spec.method = Method::POST;
        spec.body = Some(Bytes::from_static(b"{\"q\":{id}}"));
        spec.headers.push((
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer t"),
        ));
        spec.headers
            .push((http::header::HOST, HeaderValue::from_static("api.example")));
        let kind = &kinds(&spec).unwrap()[0];
        // A plain body is sent as given, braces and all; a Host header
        // replaces the derived one.
        assert_eq!(
            wire(kind, 1),
            "POST /users/1?fields=name HTTP/1.1\r\nauthorization: Bearer t\r\nhost: api.example\r\n\
             content-length: 10\r\n\r\n{\"q\":{id}}"
        );
        spec.body = None;
        let kind = &kinds(&spec).unwrap()[0];
        assert!(wire(kind, 1).ends_with("content-length: 0\r\n\r\n"));
    }

    #[test]
    fn scenario_requests_render_templates_and_reject_reserved_headers() {
        let text = r#"
[[request]]
name = "order"
method = "post"
path = "/orders"
headers = { "Idempotency-Key" = "{uuid}" }
body = '{"user_id": {id}, "n": {seq}}'
"#;
        let mut spec = BenchSpec::new("http://127.0.0.1:9/api/");
        spec.scenario = Some(Scenario::from_toml(text, "t").unwrap());
        let kind = &kinds(&spec).unwrap()[0];
        let w = wire(kind, 77);
        assert!(
            w.starts_with("POST /api/orders HTTP/1.1\r\nhost: 127.0.0.1:9\r\n"),
            "{w}"
        );
        assert!(w.contains("idempotency-key: "), "{w}");
        assert!(
            w.ends_with("content-length: 23\r\n\r\n{\"user_id\": 77, \"n\": 9}"),
            "{w}"
        );
        let mut rng = SmallRng::seed_from_u64(1);
        let req = kind.build_h2(&mut Vars::new(77, 9), &mut rng);
        assert_eq!(req.uri(), "http://127.0.0.1:9/api/orders");
        assert_eq!(req.headers()["idempotency-key"].len(), 36);

        let bad = text.replace("Idempotency-Key", "Content-Length");
        spec.scenario = Some(Scenario::from_toml(&bad, "t").unwrap());
        let err = kinds(&spec).unwrap_err().to_string();
        assert!(
            err.contains("request[0] (`order`)") && err.contains("content-length"),
            "{err}"
        );
        let bad = text.replace("method = \"post\"", "method = \"PO ST\"");
        spec.scenario = Some(Scenario::from_toml(&bad, "t").unwrap());
        assert!(
            kinds(&spec)
                .unwrap_err()
                .to_string()
                .contains("not an HTTP method")
        );
    }

    #[test]
    fn the_mix_follows_the_weights() {
        let text = "[[request]]\npath='/a'\nweight=80\n[[request]]\npath='/b'\nweight=15\n\
                    [[request]]\npath='/c'\nweight=5\n[[request]]\npath='/d'\nweight=0\n";
        let mut spec = BenchSpec::new("http://127.0.0.1:9");
        spec.scenario = Some(Scenario::from_toml(text, "t").unwrap());
        let kinds = kinds(&spec).unwrap();
        let mix = Mix::new(&kinds);
        let mut rng = SmallRng::seed_from_u64(4);
        let mut counts = [0u32; 4];
        for _ in 0..100_000 {
            counts[mix.pick(&mut rng)] += 1;
        }
        assert_eq!(counts[3], 0, "weight 0 is never picked");
        let share = |i: usize| f64::from(counts[i]) / 100_000.0;
        assert!((share(0) - 0.80).abs() < 0.01, "{counts:?}");
        assert!((share(1) - 0.15).abs() < 0.01, "{counts:?}");
        assert!((share(2) - 0.05).abs() < 0.01, "{counts:?}");
    }
}
