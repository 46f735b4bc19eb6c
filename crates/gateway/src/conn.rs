//! Upstream connections of one worker thread: opening them, one request and
//! response head at a time on each, and keeping the idle ones for reuse.
//!
//! Each worker has its own pool, so taking and returning a connection is a
//! `Vec` push and pop without locks or cross-thread wake-ups. A connection
//! is driven by the task of the request using it: the request head is
//! encoded from the proxy's parts straight into the connection's buffer
//! (origin-form target, the client's `Host`) and written in one go, and the
//! response head is parsed by that same task (see [`crate::codec`]), so no
//! connection task, channel or second wake-up sits between a request and
//! its upstream. The response body is read by [`crate::body::UpstreamBody`],
//! which hands the connection back when the body ends.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::Method;
use http::request::Parts;
use http_body_util::BodyExt;
use hyper::body::Body;
use metrics::Gauge;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::body::RequestBody;
use crate::codec::{self, Origin, ParseError, RequestFraming, ResponseHead};
use crate::endpoint::Endpoint;

/// Bytes reserved for each read from an upstream (hyper's default too).
const READ_SIZE: usize = 8 * 1024;

/// A read is made only with at least this much room in the buffer.
const MIN_READ_ROOM: usize = 2048;

/// Buffered request bodies up to this size go out in the same write as the head.
const INLINE_BODY: usize = 16 * 1024;

/// A request scratch buffer that grew past this is not kept between requests.
const MAX_KEPT_SCRATCH: usize = 16 * 1024;

/// Why no connection could be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The TCP connect failed (refused, unreachable, no such host).
    #[error("connect: {0}")]
    Io(#[from] io::Error),
    /// The TCP connect took longer than the pool's `connect_timeout`.
    #[error("connect timed out")]
    Timeout,
}

/// Why one request/response-head exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    /// Writing the request failed.
    #[error("write: {0}")]
    Write(#[source] io::Error),
    /// Reading the response failed.
    #[error("read: {0}")]
    Read(#[source] io::Error),
    /// The upstream closed the connection before a whole response head.
    #[error("the upstream closed the connection before answering")]
    Closed,
    /// The response head broke the protocol.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The client's body, streamed through, failed.
    #[error("request body: {0}")]
    Body(#[source] hyper::Error),
}

/// One open connection to an endpoint.
#[derive(Debug)]
pub(crate) struct UpstreamConn {
    stream: TcpStream,
    /// Bytes read and not consumed yet: a response head, then its body.
    pub(crate) buf: BytesMut,
    /// The request being written.
    scratch: Vec<u8>,
    /// Whether any byte of the current response has arrived.
    answered: bool,
    /// The endpoint's open-connections gauge, decremented on drop.
    gauge: Gauge,
}

impl Drop for UpstreamConn {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

impl UpstreamConn {
    /// Reads what the socket has into the buffer. `Ready(Ok(0))` is the
    /// upstream closing the connection.
    pub(crate) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < MIN_READ_ROOM {
            self.buf.reserve(READ_SIZE);
        }
        // Through `AsyncRead`, so that a short read clears the socket's
        // readiness and the next read waits for epoll instead of trying a
        // read that would only say "would block".
        let read =
            tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut self.stream), cx, &mut self.buf);
        if let Poll::Ready(Ok(n)) = read
            && n > 0
        {
            self.answered = true;
        }
        read
    }

    /// Whether an idle connection can no longer carry a request: the
    /// upstream closed it, or sent something nobody asked for. Costs no
    /// system call unless the socket became readable while it was idle.
    fn is_stale(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        !matches!(self.poll_fill(&mut cx), Poll::Pending) || !self.buf.is_empty()
    }

    /// Frees the buffers of a connection that sits idle: a pool of them
    /// would otherwise keep a read buffer each for nothing.
    fn release_buffers(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        self.scratch = Vec::new();
    }

    /// Whether the exchange that failed got nothing back, so that the
    /// request may never have reached the upstream's application (a pooled
    /// connection the upstream closed just as the request went out).
    pub(crate) fn nothing_received(&self) -> bool {
        !self.answered
    }

    /// Sends a request and reads its response head. The head's bytes leave
    /// the buffer; what follows them is the start of the body.
    pub(crate) async fn exchange(
        &mut self,
        parts: &Parts,
        body: RequestBody,
        origin: Origin<'_>,
    ) -> Result<ResponseHead, ExchangeError> {
        self.answered = false;
        self.send(parts, body, origin).await?;
        self.read_head(&parts.method).await
    }

    async fn send(
        &mut self,
        parts: &Parts,
        body: RequestBody,
        origin: Origin<'_>,
    ) -> Result<(), ExchangeError> {
        let framing = match &body {
            RequestBody::Empty => RequestFraming::Empty,
            RequestBody::Full(bytes) => RequestFraming::Length(bytes.len() as u64),
            RequestBody::Stream(incoming) => match incoming.size_hint().exact() {
                Some(len) => RequestFraming::Length(len),
                None => RequestFraming::Chunked,
            },
        };
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        self.scratch.clear();
        codec::encode_request_head(
            &mut self.scratch,
            &parts.method,
            target,
            &parts.headers,
            origin,
            framing,
        );
        match body {
            RequestBody::Full(bytes) if bytes.len() > INLINE_BODY => {
                self.write_scratch().await?;
                write(&mut self.stream, &bytes).await?;
            }
            RequestBody::Full(bytes) => {
                self.scratch.extend_from_slice(&bytes);
                self.write_scratch().await?;
            }
            RequestBody::Empty => self.write_scratch().await?,
            RequestBody::Stream(mut incoming) => {
                self.write_scratch().await?;
                let chunked = framing == RequestFraming::Chunked;
                while let Some(frame) = incoming.frame().await {
                    let frame = frame.map_err(ExchangeError::Body)?;
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers are not forwarded
                    };
                    if chunked {
                        self.scratch.clear();
                        codec::encode_chunk(&mut self.scratch, &data);
                        self.write_scratch().await?;
                    } else {
                        write(&mut self.stream, &data).await?;
                    }
                }
                if chunked {
                    write(&mut self.stream, codec::LAST_CHUNK).await?;
                }
            }
        }
        if self.scratch.capacity() > MAX_KEPT_SCRATCH {
            self.scratch = Vec::new();
        }
        Ok(())
    }

    async fn write_scratch(&mut self) -> Result<(), ExchangeError> {
        write(&mut self.stream, &self.scratch).await
    }

    async fn read_head(&mut self, method: &Method) -> Result<ResponseHead, ExchangeError> {
        loop {
            let read = std::future::poll_fn(|cx| self.poll_fill(cx)).await;
            match read {
                Ok(0) => return Err(ExchangeError::Closed),
                Ok(_) => {
                    if let Some(head) = codec::parse_response_head(&mut self.buf, method)? {
                        return Ok(head);
                    }
                }
                Err(error) => return Err(ExchangeError::Read(error)),
            }
        }
    }
}

/// Writes all of `bytes` to an upstream.
async fn write(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), ExchangeError> {
    stream.write_all(bytes).await.map_err(ExchangeError::Write)
}

#[derive(Debug)]
struct Idle {
    conn: UpstreamConn,
    expires: Instant,
}

/// The idle connections of one worker, by endpoint id.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    idle: RefCell<HashMap<u64, Vec<Idle>, BuildHasherDefault<IdHasher>>>,
}

/// A hasher for endpoint ids, which are process-unique counters that no
/// client chooses: a multiply spreads them over the table. The default
/// SipHash costs more than the rest of a pool lookup, twice per request.
#[derive(Debug, Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl Connections {
    /// A connection to `endpoint`, and whether it was reused: the most
    /// recently used idle one (its socket is likeliest to be warm), else a
    /// new one. Idle connections found closed or expired (at `now`) are dropped.
    pub(crate) async fn get(
        &self,
        endpoint: &Arc<Endpoint>,
        connect_timeout: Duration,
        now: Instant,
    ) -> Result<(UpstreamConn, bool), ConnectError> {
        if let Some(conn) = self.take(endpoint.id, now) {
            return Ok((conn, true));
        }
        connect(endpoint, connect_timeout)
            .await
            .map(|conn| (conn, false))
    }

    fn take(&self, endpoint: u64, now: Instant) -> Option<UpstreamConn> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&endpoint)?;
        while let Some(mut idle) = list.pop() {
            if idle.expires > now && !idle.conn.is_stale() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Keeps `conn` for reuse, unless `max_idle` are kept already.
    pub(crate) fn put(
        &self,
        endpoint: u64,
        conn: UpstreamConn,
        max_idle: usize,
        idle_timeout: Duration,
    ) {
        if !conn.buf.is_empty() {
            // Bytes after the response: the upstream does not follow the protocol.
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(endpoint).or_default();
        if list.len() < max_idle {
            list.push(Idle {
                conn,
                expires: Instant::now() + idle_timeout,
            });
        }
    }

    /// Drops expired and closed connections, and every connection of an
    /// endpoint for which `keep` is false (it left the config); the others
    /// give up their buffers until they are used again.
    pub(crate) fn sweep(&self, now: Instant, keep: impl Fn(u64) -> bool) {
        let mut idle = self.idle.borrow_mut();
        idle.retain(|endpoint, list| {
            if !keep(*endpoint) {
                return false;
            }
            list.retain_mut(|c| {
                let alive = c.expires > now && !c.conn.is_stale();
                if alive {
                    c.conn.release_buffers();
                }
                alive
            });
            !list.is_empty()
        });
    }
}

/// Opens a connection to `endpoint`.
async fn connect(
    endpoint: &Arc<Endpoint>,
    timeout: Duration,
) -> Result<UpstreamConn, ConnectError> {
    let target = endpoint.authority.as_str();
    let connecting = async {
        // An IP address needs no resolver (which would hop to the blocking pool).
        match target.parse::<SocketAddr>() {
            Ok(addr) => TcpStream::connect(addr).await,
            Err(_) => TcpStream::connect(target).await,
        }
    };
    let stream = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| ConnectError::Timeout)??;
    // Requests are written in one go; Nagle would only delay them.
    stream.set_nodelay(true)?;
    Ok(UpstreamConn {
        stream,
        buf: BytesMut::new(),
        scratch: Vec::new(),
        answered: false,
        gauge: endpoint.metrics.connection_opened(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::tests::endpoint;
    use tokio::io::AsyncReadExt;

    /// A loopback server that answers every request head with a 2-byte body
    /// and keeps the connection open.
    async fn answering_server() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0
                            || stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await
                                .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn idle_connections_give_up_their_buffers_and_still_serve() {
        let addr = answering_server().await;
        let endpoint = endpoint(&addr.to_string(), 1);
        let connections = Connections::default();
        let (parts, _) = http::Request::get("/").body(()).unwrap().into_parts();
        let origin = Origin {
            default_host: "h",
            client_ip: b"127.0.0.1",
        };
        let timeout = Duration::from_secs(5);
        let (mut conn, reused) = connections
            .get(&endpoint, timeout, Instant::now())
            .await
            .unwrap();
        assert!(!reused);
        let head = conn
            .exchange(&parts, RequestBody::Empty, origin)
            .await
            .unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(&conn.buf[..], b"ok");
        conn.buf.clear();
        assert!(conn.buf.capacity() > 0 && conn.scratch.capacity() > 0);
        connections.put(endpoint.id, conn, 8, Duration::from_secs(60));

        connections.sweep(Instant::now(), |_| true);
        {
            let idle = connections.idle.borrow();
            let kept = &idle[&endpoint.id][0].conn;
            assert_eq!((kept.buf.capacity(), kept.scratch.capacity()), (0, 0));
        }

        // The same connection serves the next request, buffers regrown.
        let (mut conn, reused) = connections
            .get(&endpoint, timeout, Instant::now())
            .await
            .unwrap();
        assert!(reused);
        let head = conn
            .exchange(&parts, RequestBody::Empty, origin)
            .await
            .unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(&conn.buf[..], b"ok");
    }
}
