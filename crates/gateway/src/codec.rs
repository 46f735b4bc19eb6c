//! The HTTP/1.1 wire format of the upstream side: writing a request head,
//! reading a response head, and finding where a response body ends.
//!
//! The gateway speaks to its upstreams itself instead of through hyper's
//! client connection: a request is encoded straight from the parts the proxy
//! already holds, and the response is parsed in the task that waits for it,
//! with no connection task, channel or wake-up between the two. Everything
//! here works on buffers only (no I/O), so that the framing rules can be
//! tested byte by byte; `conn` does the reading and writing.
//!
//! The client side stays with hyper's server connection; nothing here may
//! touch it.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};

use crate::headers::{is_hop_by_hop, parse_length, tokens};

/// The largest response head read from an upstream.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// The most header lines a response head may have (hyper's default too).
const MAX_RESPONSE_HEADERS: usize = 100;

/// The longest chunk-size line or trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body.
    Empty,
    /// A body of this many bytes, sent as they are.
    Length(u64),
    /// A body of unknown length, sent in chunks.
    Chunked,
}

/// Who the request came from, for the forwarding headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin<'a> {
    /// The endpoint's `host:port`, sent as `Host` if the client sent none.
    pub(crate) default_host: &'a str,
    /// The client's address, appended to `X-Forwarded-For`.
    pub(crate) client_ip: &'a [u8],
}

/// Writes a request head to `out`: the request line with `target` in origin
/// form, the headers as the proxy prepared them, `Host` if the client sent
/// none, the forwarding headers (the client's address appended to any
/// `X-Forwarded-For` chain it sent; `X-Forwarded-Proto: http`), and the
/// framing header the body needs if the headers lack it.
pub(crate) fn encode_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    origin: Origin<'_>,
    framing: RequestFraming,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host = false;
    let mut length = false;
    let mut chain: Option<Vec<u8>> = None;
    for (name, value) in headers {
        match name.as_str() {
            "host" => host = true,
            "content-length" => {
                if framing == RequestFraming::Chunked {
                    // A chunked body carries no length.
                    continue;
                }
                length = true;
            }
            "x-forwarded-for" => {
                // Rare (another proxy in front): the lines join in order.
                let chain = chain.get_or_insert_with(Vec::new);
                chain.extend_from_slice(value.as_bytes());
                chain.extend_from_slice(b", ");
                continue;
            }
            // The gateway is the edge: it says what the client spoke.
            "x-forwarded-proto" => continue,
            _ => {}
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(origin.default_host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(chain) = chain {
        out.extend_from_slice(&chain);
    }
    out.extend_from_slice(origin.client_ip);
    out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n");
    match framing {
        RequestFraming::Empty => {
            // Methods that usually carry a body say that this one has none,
            // so that the upstream does not wait for one.
            if !length && matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
        }
        RequestFraming::Length(len) => {
            if !length {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(len.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes one chunk of a chunked body (an empty `data` writes nothing: the
/// last chunk is [`LAST_CHUNK`]).
pub(crate) fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body, without trailers.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body: a response to `HEAD`, or a 204 or 304.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the upstream closes the connection.
    Close,
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    /// The status code.
    pub(crate) status: StatusCode,
    /// The end-to-end headers: the hop-by-hop ones (and any the
    /// `Connection` header named) are already left out.
    pub(crate) headers: HeaderMap,
    /// Where the body ends.
    pub(crate) framing: Framing,
    /// Whether the connection may carry another request after this
    /// response's body.
    pub(crate) reusable: bool,
}

/// Why a response head (or body framing) was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// The bytes are not an HTTP/1.x response head.
    #[error("malformed response head: {0}")]
    Malformed(httparse::Error),
    /// The head is longer than [`MAX_RESPONSE_HEAD`].
    #[error("response head longer than {MAX_RESPONSE_HEAD} bytes")]
    TooLarge,
    /// The status code is outside 100..=999.
    #[error("invalid status code {0}")]
    Status(u16),
    /// `Content-Length` is not a number, or two of them disagree.
    #[error("invalid Content-Length")]
    ContentLength,
    /// A transfer coding other than `chunked`, which the gateway cannot
    /// pass on once it has removed `Transfer-Encoding` (a hop-by-hop header).
    #[error("unsupported transfer coding")]
    TransferCoding,
    /// A `101 Switching Protocols`: the gateway never asks for an upgrade.
    #[error("unrequested protocol switch")]
    Switch,
    /// A header value the `http` crate refuses.
    #[error("invalid header value")]
    HeaderValue,
    /// A chunk size line or trailer that breaks the chunked coding.
    #[error("malformed chunked body")]
    Chunk,
}

/// Parses the response head at the start of `buf` for a request with
/// `method`. `Ok(None)`: the head is not complete yet. On success the head's
/// bytes are taken out of `buf`, which then starts with the body.
/// Informational (1xx) heads are skipped.
pub(crate) fn parse_response_head(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<ResponseHead>, ParseError> {
    loop {
        let mut slots =
            [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let status = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut response, buf, &mut slots)
            .map_err(ParseError::Malformed)?;
        let len = match status {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => {
                return if buf.len() > MAX_RESPONSE_HEAD {
                    Err(ParseError::TooLarge)
                } else {
                    Ok(None)
                };
            }
        };
        if len > MAX_RESPONSE_HEAD {
            return Err(ParseError::TooLarge);
        }
        let code = response.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| ParseError::Status(code))?;
        if code == 101 {
            return Err(ParseError::Switch);
        }
        if status.is_informational() {
            // 100 Continue, 103 Early Hints: the final answer follows.
            buf.advance(len);
            continue;
        }
        let http10 = response.version == Some(0);

        // First pass: the framing and connection headers.
        let mut close = false;
        let mut keep_alive = false;
        let mut named = false;
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut coded = false;
        for header in response.headers.iter() {
            let name = header.name;
            if name.eq_ignore_ascii_case("content-length") {
                let value = parse_length(header.value).ok_or(ParseError::ContentLength)?;
                if length.is_some_and(|l| l != value) {
                    return Err(ParseError::ContentLength);
                }
                length = Some(value);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                coded = true;
                for token in tokens(header.value) {
                    chunked = token.eq_ignore_ascii_case(b"chunked");
                    if !chunked {
                        return Err(ParseError::TransferCoding);
                    }
                }
            } else if name.eq_ignore_ascii_case("connection") {
                for token in tokens(header.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    } else {
                        named = true;
                    }
                }
            }
        }
        let bodiless = *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let framing = if bodiless {
            Framing::Empty
        } else if coded {
            if chunked {
                Framing::Chunked
            } else {
                Framing::Close
            }
        } else {
            match length {
                Some(0) => Framing::Empty,
                Some(len) => Framing::Length(len),
                None => Framing::Close,
            }
        };
        // Both a length and a transfer coding: the coding wins, and the
        // connection must not be trusted with another request (RFC 9112 §6.3).
        let ambiguous = coded && length.is_some();
        let reusable = !close && (!http10 || keep_alive) && framing != Framing::Close && !ambiguous;

        // The names the `Connection` header lists are hop-by-hop too.
        let connection_named: Vec<&[u8]> = if named {
            response
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("connection"))
                .flat_map(|h| tokens(h.value))
                .collect()
        } else {
            Vec::new()
        };

        // Second pass: the end-to-end headers, whose values share the head's
        // bytes instead of being copied.
        let base = buf.as_ptr() as usize;
        let mut kept: Vec<(HeaderName, usize, usize)> = Vec::with_capacity(response.headers.len());
        for header in response.headers.iter() {
            if is_hop_by_hop(header.name)
                || connection_named
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(header.name.as_bytes()))
            {
                continue;
            }
            let name = HeaderName::from_bytes(header.name.as_bytes())
                .map_err(|_| ParseError::Malformed(httparse::Error::HeaderName))?;
            let start = header.value.as_ptr() as usize - base;
            kept.push((name, start, start + header.value.len()));
        }
        let head: Bytes = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(kept.len());
        for (name, start, end) in kept {
            let value = HeaderValue::from_maybe_shared(head.slice(start..end))
                .map_err(|_| ParseError::HeaderValue)?;
            headers.append(name, value);
        }
        return Ok(Some(ResponseHead {
            status,
            headers,
            framing,
            reusable,
        }));
    }
}

/// One step of taking a body out of the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The next piece of the body.
    Data(Bytes),
    /// More input is needed.
    More,
    /// The body is complete.
    Done,
}

/// Where a body being read stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyState {
    /// This many bytes are left of a body with a length.
    Length(u64),
    /// Reading a chunked body.
    Chunked(Chunk),
    /// Reading until the connection closes.
    Close,
    /// Complete.
    Done,
}

/// Where a chunked body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes are left of the current chunk.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: skipping trailer lines up to the empty one.
    Trailers,
}

impl BodyState {
    /// The state a body with `framing` starts in.
    pub(crate) fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty | Framing::Length(0) => Self::Done,
            Framing::Length(len) => Self::Length(len),
            Framing::Chunked => Self::Chunked(Chunk::Size),
            Framing::Close => Self::Close,
        }
    }

    /// Whether the body is complete.
    pub(crate) fn is_done(&self) -> bool {
        *self == Self::Done
    }

    /// Takes the next piece of the body out of `buf`.
    pub(crate) fn step(&mut self, buf: &mut BytesMut) -> Result<Step, ParseError> {
        loop {
            match self {
                Self::Done => return Ok(Step::Done),
                Self::Length(left) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let take = (*left).min(buf.len() as u64);
                    *left -= take;
                    if *left == 0 {
                        *self = Self::Done;
                    }
                    return Ok(Step::Data(buf.split_to(take as usize).freeze()));
                }
                Self::Close => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    return Ok(Step::Data(buf.split().freeze()));
                }
                Self::Chunked(chunk) => match *chunk {
                    Chunk::Size => match httparse::parse_chunk_size(buf) {
                        Ok(httparse::Status::Complete((used, size))) => {
                            buf.advance(used);
                            *chunk = if size == 0 {
                                Chunk::Trailers
                            } else {
                                Chunk::Data(size)
                            };
                        }
                        Ok(httparse::Status::Partial) => {
                            return if buf.len() > MAX_CHUNK_LINE {
                                Err(ParseError::Chunk)
                            } else {
                                Ok(Step::More)
                            };
                        }
                        Err(httparse::InvalidChunkSize) => return Err(ParseError::Chunk),
                    },
                    Chunk::Data(left) => {
                        if buf.is_empty() {
                            return Ok(Step::More);
                        }
                        let take = left.min(buf.len() as u64);
                        *chunk = if take == left {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(left - take)
                        };
                        return Ok(Step::Data(buf.split_to(take as usize).freeze()));
                    }
                    Chunk::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(Step::More);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(ParseError::Chunk);
                        }
                        buf.advance(2);
                        *chunk = Chunk::Size;
                    }
                    Chunk::Trailers => match memchr::memmem::find(buf, b"\r\n") {
                        // The empty line ends the trailers, and the body.
                        Some(0) => {
                            buf.advance(2);
                            *self = Self::Done;
                        }
                        // Trailer fields are not passed on: hyper's server
                        // side would need them before the body ends.
                        Some(line) => buf.advance(line + 2),
                        None => {
                            return if buf.len() > MAX_CHUNK_LINE {
                                Err(ParseError::Chunk)
                            } else {
                                Ok(Step::More)
                            };
                        }
                    },
                },
            }
        }
    }

    /// The exact number of bytes left, when the framing says it.
    pub(crate) fn exact_left(&self) -> Option<u64> {
        match self {
            Self::Length(left) => Some(*left),
            Self::Done => Some(0),
            Self::Chunked(_) | Self::Close => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(bytes: &[u8], method: &Method) -> Result<Option<ResponseHead>, ParseError> {
        let mut buf = BytesMut::from(bytes);
        parse_response_head(&mut buf, method)
    }

    fn encode(method: &Method, headers: &[(&str, &str)], framing: RequestFraming) -> String {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let mut out = Vec::new();
        let origin = Origin {
            default_host: "10.0.0.1:80",
            client_ip: b"192.0.2.9",
        };
        encode_request_head(&mut out, method, "/a?b=1", &map, origin, framing);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn request_heads_carry_host_forwarding_and_the_framing_the_body_needs() {
        const FWD: &str = "x-forwarded-for: 192.0.2.9\r\nx-forwarded-proto: http\r\n";
        assert_eq!(
            encode(
                &Method::GET,
                &[("host", "example.com")],
                RequestFraming::Empty
            ),
            format!("GET /a?b=1 HTTP/1.1\r\nhost: example.com\r\n{FWD}\r\n")
        );
        // An HTTP/1.0 client may send no Host: the endpoint's address stands in.
        assert_eq!(
            encode(&Method::POST, &[], RequestFraming::Empty),
            format!("POST /a?b=1 HTTP/1.1\r\nhost: 10.0.0.1:80\r\n{FWD}content-length: 0\r\n\r\n")
        );
        assert_eq!(
            encode(
                &Method::PUT,
                &[("host", "h"), ("content-length", "5")],
                RequestFraming::Length(5)
            ),
            format!("PUT /a?b=1 HTTP/1.1\r\nhost: h\r\ncontent-length: 5\r\n{FWD}\r\n")
        );
        assert_eq!(
            encode(&Method::PUT, &[("host", "h")], RequestFraming::Length(7)),
            format!("PUT /a?b=1 HTTP/1.1\r\nhost: h\r\n{FWD}content-length: 7\r\n\r\n")
        );
        assert_eq!(
            encode(
                &Method::POST,
                &[("host", "h"), ("content-length", "9")],
                RequestFraming::Chunked
            ),
            format!("POST /a?b=1 HTTP/1.1\r\nhost: h\r\n{FWD}transfer-encoding: chunked\r\n\r\n")
        );
        // A chain from proxies in front is kept, in order, with the client
        // appended; a client's claim about the scheme is replaced.
        assert_eq!(
            encode(
                &Method::GET,
                &[
                    ("host", "h"),
                    ("x-forwarded-for", "203.0.113.7"),
                    ("x-forwarded-proto", "https"),
                    ("x-forwarded-for", "198.51.100.1, 192.0.2.3"),
                ],
                RequestFraming::Empty
            ),
            "GET /a?b=1 HTTP/1.1\r\nhost: h\r\nx-forwarded-for: 203.0.113.7, 198.51.100.1, 192.0.2.3, 192.0.2.9\r\nx-forwarded-proto: http\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_chunk(&mut out, b"hello world, this is 26 b!");
        encode_chunk(&mut out, b"");
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(out, b"1a\r\nhello world, this is 26 b!\r\n0\r\n\r\n");
    }

    #[test]
    fn an_incomplete_head_asks_for_more() {
        assert_eq!(
            head(b"HTTP/1.1 200 OK\r\nContent-Le", &Method::GET)
                .unwrap()
                .map(|h| h.status),
            None
        );
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_left_out() {
        let parsed = head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\nX-End: 2\r\nContent-Length: 3\r\n\r\nabc",
            &Method::GET,
        )
        .unwrap()
        .unwrap();
        let names: Vec<&str> = parsed.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-end", "content-length"]);
        assert_eq!(parsed.framing, Framing::Length(3));
        assert!(parsed.reusable);
    }

    #[test]
    fn the_framing_follows_rfc_9112() {
        let framing = |bytes: &[u8], method: &Method| head(bytes, method).unwrap().unwrap();
        let chunked = framing(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(
            (chunked.framing, chunked.reusable),
            (Framing::Chunked, true)
        );
        // A length and a coding: the coding wins and the connection is not reused.
        let both = framing(
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            &Method::GET,
        );
        assert_eq!((both.framing, both.reusable), (Framing::Chunked, false));
        let until_close = framing(b"HTTP/1.1 200 OK\r\n\r\n", &Method::GET);
        assert_eq!(
            (until_close.framing, until_close.reusable),
            (Framing::Close, false)
        );
        let to_head = framing(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
            &Method::HEAD,
        );
        assert_eq!((to_head.framing, to_head.reusable), (Framing::Empty, true));
        assert_eq!(to_head.headers["content-length"], "10");
        let no_content = framing(b"HTTP/1.1 204 No Content\r\n\r\n", &Method::DELETE);
        assert_eq!(no_content.framing, Framing::Empty);
        let closing = framing(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            &Method::GET,
        );
        assert!(!closing.reusable);
        let old = framing(
            b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
            &Method::GET,
        );
        assert!(!old.reusable);
        let old_kept = framing(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            &Method::GET,
        );
        assert!(old_kept.reusable);
    }

    #[test]
    fn informational_heads_are_skipped() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"[..],
        );
        let parsed = parse_response_head(&mut buf, &Method::POST)
            .unwrap()
            .unwrap();
        assert_eq!(parsed.status, StatusCode::CREATED);
        assert!(!parsed.headers.contains_key("link"));
        assert_eq!(&buf[..], b"ok");
    }

    #[test]
    fn broken_heads_are_refused_by_kind() {
        let error = |bytes: &[u8]| head(bytes, &Method::GET).unwrap_err();
        assert_eq!(
            error(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            ParseError::ContentLength
        );
        assert_eq!(
            error(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            ParseError::ContentLength
        );
        assert_eq!(
            error(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
            ParseError::ContentLength
        );
        assert_eq!(
            error(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            ParseError::TransferCoding
        );
        assert_eq!(
            error(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
            ParseError::Switch
        );
        assert!(matches!(
            error(b"SSH-2.0-OpenSSH\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        let mut long = b"HTTP/1.1 200 OK\r\nx-filler: ".to_vec();
        long.resize(MAX_RESPONSE_HEAD + 1, b'a');
        // Unfinished, and already too long.
        assert_eq!(error(&long), ParseError::TooLarge);
        long.extend_from_slice(b"\r\n\r\n");
        assert_eq!(error(&long), ParseError::TooLarge);
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_RESPONSE_HEADERS {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            error(&many),
            ParseError::Malformed(httparse::Error::TooManyHeaders)
        );
    }

    /// Feeds `wire` to a body state in pieces of `piece` bytes and collects
    /// the body.
    fn read_body(state: &mut BodyState, wire: &[u8], piece: usize) -> Result<Vec<u8>, ParseError> {
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut input = wire.chunks(piece.max(1));
        loop {
            match state.step(&mut buf)? {
                Step::Data(data) => body.extend_from_slice(&data),
                Step::Done => return Ok(body),
                Step::More => match input.next() {
                    Some(next) => buf.extend_from_slice(next),
                    None => return Ok(body),
                },
            }
        }
    }

    #[test]
    fn chunk_extensions_and_trailers_are_read_past() {
        let mut state = BodyState::new(Framing::Chunked);
        let body = read_body(
            &mut state,
            b"3;name=value\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT",
            1,
        )
        .unwrap();
        assert_eq!(body, b"abcde");
        assert!(state.is_done());
    }

    #[test]
    fn broken_chunks_are_refused() {
        let mut bad_size = BodyState::new(Framing::Chunked);
        assert_eq!(
            read_body(&mut bad_size, b"zz\r\n", 64),
            Err(ParseError::Chunk)
        );
        let mut no_crlf = BodyState::new(Framing::Chunked);
        assert_eq!(
            read_body(&mut no_crlf, b"1\r\naXX", 64),
            Err(ParseError::Chunk)
        );
        let mut endless = BodyState::new(Framing::Chunked);
        assert_eq!(
            read_body(&mut endless, &[b'1'; 5000], 64),
            Err(ParseError::Chunk)
        );
    }

    #[test]
    fn a_length_body_stops_at_its_length() {
        let mut state = BodyState::new(Framing::Length(4));
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert_eq!(
            state.step(&mut buf).unwrap(),
            Step::Data(Bytes::from_static(b"abcd"))
        );
        assert_eq!(state.step(&mut buf).unwrap(), Step::Done);
        assert_eq!(&buf[..], b"ef");
    }

    proptest! {
        /// Any body, chunked any way and delivered in any piece size, comes
        /// out whole, and the bytes after it stay in the buffer.
        #[test]
        fn chunked_bodies_round_trip(
            body in proptest::collection::vec(any::<u8>(), 0..2000),
            cuts in proptest::collection::vec(1usize..300, 1..20),
            piece in 1usize..100,
        ) {
            let mut wire = Vec::new();
            let mut rest = &body[..];
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, tail) = rest.split_at((*cut).min(rest.len()));
                encode_chunk(&mut wire, chunk);
                rest = tail;
            }
            wire.extend_from_slice(LAST_CHUNK);
            let mut state = BodyState::new(Framing::Chunked);
            let decoded = read_body(&mut state, &wire, piece).unwrap();
            prop_assert!(state.is_done());
            prop_assert_eq!(decoded, body);
        }

        #[test]
        fn length_bodies_round_trip(body in proptest::collection::vec(any::<u8>(), 1..2000), piece in 1usize..100) {
            let mut state = BodyState::new(Framing::Length(body.len() as u64));
            let decoded = read_body(&mut state, &body, piece).unwrap();
            prop_assert!(state.is_done());
            prop_assert_eq!(decoded, body);
        }
    }
}
