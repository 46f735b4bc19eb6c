//! The HTTP/1.1 client connection of the load generator's hot path.
//!
//! A load generator's client is not a general HTTP client: it sends bytes it
//! rendered itself (see `target`), one request at a time per connection, and
//! needs from each response only its status, its body's length and whether
//! the connection stays open. So this module writes the request with one
//! `write`, parses the response head with `httparse` (the parser inside
//! hyper) straight out of a reused read buffer, and skips the body by its
//! framing (`Content-Length`, chunked, or until the connection closes)
//! without copying it anywhere. Measured with callgrind against hyper's
//! client connection, this is what brought the generator's own cost per
//! request to wrk's (see ARCHITECTURE.md, *Decisions*).
//!
//! It must stay a faithful HTTP/1.1 reader: interim 1xx responses are
//! skipped, `Connection: close` and HTTP/1.0 are honoured, and anything it
//! cannot frame is a protocol error, never a guess.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Read buffer size; also the largest response head accepted.
const BUFFER: usize = 64 * 1024;

/// Headers parsed per response; a response with more is a protocol error.
const MAX_HEADERS: usize = 64;

/// A response, as far as the load generator cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body_bytes: u64,
}

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum Error {
    /// The socket failed.
    Io(io::Error),
    /// The server closed the connection before the response was complete.
    Closed,
    /// The response is not HTTP/1.x as this reader understands it.
    Protocol(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Closed => f.write_str("the connection closed before the response was complete"),
            Self::Protocol(why) => write!(f, "malformed response: {why}"),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// Why a connection could not be opened.
#[derive(Debug)]
pub(crate) enum ConnectError {
    Io(io::Error),
    Timeout,
}

impl ConnectError {
    /// Short, lower-case text for messages: `connection refused`.
    pub(crate) fn describe(&self, limit: Duration) -> String {
        match self {
            Self::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                "connection refused".into()
            }
            Self::Io(e) => e.to_string(),
            Self::Timeout => format!("connect timed out after {limit:?}"),
        }
    }
}

/// Opens a TCP connection with Nagle's algorithm off: requests are small
/// single writes, and waiting for Nagle would add up to 40 ms to latencies.
pub(crate) async fn connect(addr: SocketAddr, limit: Duration) -> Result<TcpStream, ConnectError> {
    let stream = timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout)?
        .map_err(ConnectError::Io)?;
    stream.set_nodelay(true).map_err(ConnectError::Io)?;
    Ok(stream)
}

/// How the body of a response is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// One keep-alive HTTP/1.1 connection.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: TcpStream,
    /// Read buffer; bytes `start..end` are received and not yet consumed.
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The connection must not carry another request (the server said
    /// `Connection: close`, or an exchange failed midway).
    done: bool,
    /// Complete responses read on this connection.
    pub(crate) responses: u64,
}

impl Conn {
    pub(crate) async fn open(addr: SocketAddr, limit: Duration) -> Result<Self, ConnectError> {
        Ok(Self::new(connect(addr, limit).await?))
    }

    pub(crate) fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: vec![0; BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            done: false,
            responses: 0,
        }
    }

    /// Whether the connection can carry another request.
    pub(crate) fn is_reusable(&self) -> bool {
        !self.done
    }

    /// Sends `request` (a complete HTTP/1.1 message) and reads the whole
    /// response. `head_only` says that the response has no body whatever
    /// its headers say (the request was `HEAD`). On error the connection
    /// is no longer reusable.
    pub(crate) async fn exchange(
        &mut self,
        request: &[u8],
        head_only: bool,
    ) -> Result<Response, Error> {
        // Until the exchange completes, a cancelled or failed one leaves the
        // connection in an unknown state.
        self.done = true;
        self.stream.write_all(request).await?;
        let (status, framing, close) = self.read_head().await?;
        let framing = if head_only || status == 204 || status == 304 {
            Framing::None
        } else {
            framing
        };
        let body_bytes = match framing {
            Framing::None => 0,
            Framing::Length(n) => {
                self.skip(n).await?;
                n
            }
            Framing::Chunked => self.skip_chunked().await?,
            Framing::UntilClose => self.skip_to_end().await?,
        };
        self.responses += 1;
        self.done = close || framing == Framing::UntilClose;
        Ok(Response { status, body_bytes })
    }

    /// Reads and parses the response head, skipping interim (1xx) responses.
    /// Returns the status, the body's framing and whether the server will
    /// close the connection after this response.
    async fn read_head(&mut self) -> Result<(u16, Framing, bool), Error> {
        loop {
            let parsed = {
                // Uninitialised header slots: initialising 64 of them for
                // every response cost more than parsing a typical head.
                let mut headers =
                    [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
                let mut response = httparse::Response::new(&mut []);
                match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                    &mut response,
                    &self.buf[self.start..self.end],
                    &mut headers,
                ) {
                    Ok(httparse::Status::Complete(len)) => {
                        Some(head_of(&response).map(|h| (len, h)))
                    }
                    Ok(httparse::Status::Partial) => None,
                    Err(e) => Some(Err(Error::Protocol(e.to_string()))),
                }
            };
            match parsed {
                None => self.fill().await?,
                Some(Err(e)) => return Err(e),
                Some(Ok((len, (status, framing, close)))) => {
                    self.start += len;
                    // 101 switches protocols, which a load generator never
                    // asks for; other 1xx come before the real response.
                    if (100..200).contains(&status) && status != 101 {
                        continue;
                    }
                    return Ok((status, framing, close));
                }
            }
        }
    }

    /// Reads more bytes into the buffer, making room first. Fails at end of
    /// stream and when a response head does not fit.
    async fn fill(&mut self) -> Result<(), Error> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start == 0 {
                return Err(Error::Protocol(format!(
                    "the response head is larger than {BUFFER} bytes"
                )));
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(Error::Closed);
        }
        self.end += n;
        Ok(())
    }

    /// Consumes `n` body bytes without keeping them.
    async fn skip(&mut self, mut n: u64) -> Result<(), Error> {
        loop {
            let available = (self.end - self.start) as u64;
            let take = available.min(n);
            self.start += take as usize;
            n -= take;
            if n == 0 {
                return Ok(());
            }
            self.fill().await?;
        }
    }

    /// Consumes a chunked body and its trailers; returns the data length.
    async fn skip_chunked(&mut self) -> Result<u64, Error> {
        let mut total = 0u64;
        loop {
            let size = match httparse::parse_chunk_size(&self.buf[self.start..self.end]) {
                Ok(httparse::Status::Complete((len, size))) => {
                    self.start += len;
                    size
                }
                Ok(httparse::Status::Partial) => {
                    self.fill().await?;
                    continue;
                }
                Err(_) => return Err(Error::Protocol("invalid chunk size".into())),
            };
            if size == 0 {
                self.skip_trailers().await?;
                return Ok(total);
            }
            self.skip(size).await?;
            self.expect_crlf().await?;
            total = total.saturating_add(size);
        }
    }

    async fn expect_crlf(&mut self) -> Result<(), Error> {
        while self.end - self.start < 2 {
            self.fill().await?;
        }
        if &self.buf[self.start..self.start + 2] != b"\r\n" {
            return Err(Error::Protocol("a chunk does not end with CRLF".into()));
        }
        self.start += 2;
        Ok(())
    }

    /// Consumes trailer lines up to and including the empty line.
    async fn skip_trailers(&mut self) -> Result<(), Error> {
        loop {
            match self.buf[self.start..self.end]
                .windows(2)
                .position(|w| w == b"\r\n")
            {
                Some(0) => {
                    self.start += 2;
                    return Ok(());
                }
                Some(line) => self.start += line + 2,
                None => self.fill().await?,
            }
        }
    }

    /// Consumes everything until the server closes the connection.
    async fn skip_to_end(&mut self) -> Result<u64, Error> {
        let mut total = (self.end - self.start) as u64;
        self.start = 0;
        self.end = 0;
        loop {
            let n = self.stream.read(&mut self.buf).await?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    }
}

/// Status, framing and persistence from a parsed head (RFC 9112 §6.3).
fn head_of(response: &httparse::Response<'_, '_>) -> Result<(u16, Framing, bool), Error> {
    let status = response
        .code
        .ok_or_else(|| Error::Protocol("no status code".into()))?;
    let http10 = response.version == Some(0);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = http10;
    for h in response.headers.iter() {
        // Dispatch on the name's length first: most headers (Date, Server,
        // Content-Type) are then dismissed without comparing a byte.
        let name = h.name.as_bytes();
        match name.len() {
            14 if eq_lower(name, b"content-length") => {
                let value = parse_length(h.value)
                    .ok_or_else(|| Error::Protocol("invalid Content-Length".into()))?;
                if length.is_some_and(|l| l != value) {
                    return Err(Error::Protocol("conflicting Content-Length headers".into()));
                }
                length = Some(value);
            }
            17 if eq_lower(name, b"transfer-encoding") => {
                // Chunked must be the last coding; anything else is framed
                // by the connection's end.
                chunked = h
                    .value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            10 if eq_lower(name, b"connection") => {
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if eq_lower(token, b"close") {
                        close = true;
                    } else if http10 && eq_lower(token, b"keep-alive") {
                        close = false;
                    }
                }
            }
            _ => {}
        }
    }
    let framing = if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        if n == 0 {
            Framing::None
        } else {
            Framing::Length(n)
        }
    } else if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::None
    } else {
        Framing::UntilClose
    };
    Ok((status, framing, close))
}

/// Whether `text` equals the lower-case ASCII `lower`, ignoring case.
///
/// Setting bit 5 lower-cases a letter and leaves `-` alone; the only other
/// byte it maps onto `-` is CR, which httparse never lets into a header
/// name or value. Cheaper than `eq_ignore_ascii_case`, which callgrind
/// showed among the costliest lines per response.
fn eq_lower(text: &[u8], lower: &[u8]) -> bool {
    text.len() == lower.len() && text.iter().zip(lower).all(|(&a, &b)| a | 0x20 == b)
}

/// A Content-Length value: decimal digits, optionally surrounded by spaces.
fn parse_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// A server that answers each request with the next canned reply,
    /// written in the given pieces, then closes.
    async fn serve(replies: Vec<Vec<&'static [u8]>>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            for reply in replies {
                // Requests here have no body: wait for the end of the head.
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                for piece in reply {
                    stream.write_all(piece).await.unwrap();
                    stream.flush().await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
        });
        addr
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";

    #[tokio::test]
    async fn reads_length_chunked_interim_and_empty_bodies_on_one_connection() {
        let addr = serve(vec![
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"],
            // Split across writes at awkward places.
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Enc",
                b"oding: chunked\r\n\r\n3\r\nab",
                b"c\r\n4;ext=1\r\ndefg\r\n0\r\nX-T: 1\r\n\r\n",
            ],
            vec![b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"],
            vec![b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"],
        ])
        .await;
        let mut conn = Conn::open(addr, Duration::from_secs(5)).await.unwrap();
        let r = conn.exchange(GET, false).await.unwrap();
        assert_eq!(
            r,
            Response {
                status: 200,
                body_bytes: 5
            }
        );
        let r = conn.exchange(GET, false).await.unwrap();
        assert_eq!(
            r,
            Response {
                status: 200,
                body_bytes: 7
            }
        );
        let r = conn.exchange(GET, false).await.unwrap();
        assert_eq!(
            r,
            Response {
                status: 204,
                body_bytes: 0
            }
        );
        let r = conn.exchange(GET, false).await.unwrap();
        assert_eq!(
            r,
            Response {
                status: 404,
                body_bytes: 0
            }
        );
        assert!(conn.is_reusable());
        assert_eq!(conn.responses, 4);
    }

    #[tokio::test]
    async fn close_and_http10_end_the_connection() {
        let addr = serve(vec![vec![
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        ]])
        .await;
        let mut conn = Conn::open(addr, Duration::from_secs(5)).await.unwrap();
        assert_eq!(conn.exchange(GET, false).await.unwrap().body_bytes, 2);
        assert!(!conn.is_reusable());

        let addr = serve(vec![vec![b"HTTP/1.0 200 OK\r\n\r\nuntil the end"]]).await;
        let mut conn = Conn::open(addr, Duration::from_secs(5)).await.unwrap();
        assert_eq!(conn.exchange(GET, false).await.unwrap().body_bytes, 13);
        assert!(!conn.is_reusable());
    }

    #[tokio::test]
    async fn head_responses_have_no_body_whatever_they_say() {
        let addr = serve(vec![
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"],
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"],
        ])
        .await;
        let mut conn = Conn::open(addr, Duration::from_secs(5)).await.unwrap();
        assert_eq!(conn.exchange(GET, true).await.unwrap().body_bytes, 0);
        assert_eq!(conn.exchange(GET, false).await.unwrap().body_bytes, 1);
    }

    #[tokio::test]
    async fn truncated_and_malformed_responses_are_errors() {
        let addr = serve(vec![vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        ]])
        .await;
        let mut conn = Conn::open(addr, Duration::from_secs(5)).await.unwrap();
        assert!(matches!(
            conn.exchange(GET, false).await,
            Err(Error::Closed)
        ));
        assert!(!conn.is_reusable());

        let addr = serve(vec![vec![b"NOT HTTP AT ALL\r\n\r\n"]]).await;
        let mut conn = Conn::open(addr, Duration::from_secs(5)).await.unwrap();
        assert!(matches!(
            conn.exchange(GET, false).await,
            Err(Error::Protocol(_))
        ));

        let addr = serve(vec![vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ]])
        .await;
        let mut conn = Conn::open(addr, Duration::from_secs(5)).await.unwrap();
        let err = conn.exchange(GET, false).await.unwrap_err();
        assert!(err.to_string().contains("chunk"), "{err}");

        let addr = serve(vec![vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
        ]])
        .await;
        let mut conn = Conn::open(addr, Duration::from_secs(5)).await.unwrap();
        let err = conn.exchange(GET, false).await.unwrap_err();
        assert!(err.to_string().contains("conflicting"), "{err}");
    }

    #[test]
    fn header_names_match_in_any_case() {
        assert!(eq_lower(b"Content-Length", b"content-length"));
        assert!(eq_lower(b"CONNECTION", b"connection"));
        assert!(eq_lower(b"keep-alive", b"keep-alive"));
        assert!(!eq_lower(b"Content-Lengt", b"content-length"));
        assert!(!eq_lower(b"Content_Length", b"content-length"));
        // The one collision the comment names: CR reads as `-`. httparse
        // rejects CR inside names and values, so it never gets here.
        assert!(eq_lower(b"a\rb", b"a-b"));
        assert!(!eq_lower(b"clos", b"close"));
    }

    #[test]
    fn content_lengths_parse_strictly() {
        assert_eq!(parse_length(b"12"), Some(12));
        assert_eq!(parse_length(b" 0 "), Some(0));
        assert_eq!(parse_length(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b" ",
            b"-1",
            b"1 2",
            b"0x10",
            b"18446744073709551616",
        ] {
            assert_eq!(
                parse_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[tokio::test]
    async fn large_bodies_stream_through_the_buffer() {
        static BIG: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
            let mut v =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 1_000_000).into_bytes();
            v.extend(std::iter::repeat_n(b'x', 1_000_000));
            v
        });
        let addr = serve(vec![
            vec![&BIG[..]],
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
        ])
        .await;
        let mut conn = Conn::open(addr, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            conn.exchange(GET, false).await.unwrap().body_bytes,
            1_000_000
        );
        assert_eq!(conn.exchange(GET, false).await.unwrap().body_bytes, 0);
    }
}
