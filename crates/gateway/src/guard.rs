//! The framing guard: a check of every request head on a client connection
//! before hyper reads it.
//!
//! hyper is lenient where a proxy must be strict: it accepts a request with
//! both `Content-Length` and `Transfer-Encoding` (the classic request
//! smuggling vector) by dropping the length, and it answers malformed heads
//! with bare status lines instead of the project's JSON errors. The guard sits
//! between the socket and hyper, tracks message boundaries (heads, lengths,
//! chunked bodies) exactly as strictly as it validates them, and releases a
//! head to hyper only once the whole head is here and valid. A bad head is
//! never released: the guard hands hyper a small request of its own instead,
//! which the proxy recognises (by its position on the connection, see
//! [`GuardShared`]) and answers with the JSON error and `Connection: close`.
//! Requests before the bad one are answered normally and in order; the
//! client's bytes after it are discarded.
//!
//! It also enforces the client's header read timeout (slowloris and idle
//! keep-alive connections), with one reusable timer per connection, and
//! parks connections that stay idle: after [`PARK_AFTER`] without a request
//! it ends hyper's session on the connection (without closing the socket),
//! so that the server can drop hyper's read and write buffers (16 KiB) while
//! the client thinks, and start a fresh session when bytes arrive.
//!
//! The guard does not touch bodies beyond following their framing, and holds
//! only the bytes of an incomplete head or chunk line.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::error::Reject;
use crate::headers::parse_length;

/// Longest chunk-size line (with extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;
/// Most header lines the guard can parse; `gateway.client.max_headers` is
/// validated to stay below.
const HEADER_SLOTS: usize = 1001;

/// Idle time after which a keep-alive connection is parked.
///
/// A session holds about 20 KiB (hyper's read and write buffers, 8 KiB
/// each, and the room for the proxy's request future), and the sessions
/// alive at once are about the rate of requests times this delay: when
/// 10,000 clients connect, send one request each and then idle, 50 ms kept
/// ~800 sessions (16 MiB) alive at the peak, which glibc's allocator keeps
/// resident after they are freed. 5 ms keeps the peak near 80 sessions.
/// NGINX frees its buffers as soon as a keep-alive connection goes idle. A
/// client that sends request after request (a load generator, a busy
/// backend-for-frontend) sends the next one within this delay and never pays
/// for a new session; one that pauses longer pays a few allocations for it.
pub(crate) const PARK_AFTER: Duration = Duration::from_millis(5);

/// A parked connection whose client sends again within this time of going
/// idle is *warm*: a busy client pausing between requests (at a fixed rate,
/// say) rather than one that went quiet.
pub(crate) const WARM_WITHIN: Duration = Duration::from_millis(100);

/// Idle time after which a warm connection is parked; one idle longer stops
/// being warm and goes back to [`PARK_AFTER`].
pub(crate) const WARM_PARK_AFTER: Duration = Duration::from_millis(100);

/// Most warm connections per worker thread. A session and its wake-up cost
/// about 9k instructions, a third of a proxied request, so a busy client
/// that pauses for longer than [`PARK_AFTER`] keeps its session; the bound
/// keeps the memory this holds under about 1.3 MiB per worker (20 KiB a
/// session), whatever the clients do. Clients that connect, send once and
/// idle never become warm.
pub(crate) const WARM_CONNECTIONS: usize = 64;

/// Limits of one client connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_header_bytes: usize,
    pub(crate) max_headers: usize,
    pub(crate) header_read_timeout: Duration,
}

/// What the guard and the proxy share about one connection.
#[derive(Debug, Default)]
pub(crate) struct GuardShared {
    /// Heads released to hyper (the guard's own included).
    heads: Cell<u64>,
    /// Requests the proxy has started to answer.
    requests: Cell<u64>,
    /// Responses finished (their bodies dropped).
    responses: Cell<u64>,
    /// The position of the guard's own request and the answer it stands for.
    reject: Cell<Option<(u64, Reject)>>,
}

impl GuardShared {
    /// Called by the proxy for each request, in order: the error the
    /// request stands for, if it is the guard's own.
    pub(crate) fn next_request(&self) -> Option<Reject> {
        let n = self.requests.get() + 1;
        self.requests.set(n);
        match self.reject.get() {
            Some((at, reject)) if at == n => Some(reject),
            _ => None,
        }
    }

    /// Called when a response body is finished or dropped.
    pub(crate) fn response_done(&self) {
        self.responses.set(self.responses.get() + 1);
    }

    /// Whether no request is being answered: the connection waits for a head.
    fn idle(&self) -> bool {
        self.responses.get() >= self.heads.get()
    }
}

/// Where the scanner is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for (the rest of) a request head.
    Head,
    /// Inside a body with a length; this many bytes to go.
    Body(u64),
    /// A chunk-size line.
    ChunkSize,
    /// Inside a chunk; this many data bytes to go.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// Trailer lines after the last chunk, up to an empty line.
    Trailers,
    /// A bad head was replaced; nothing more is read.
    Rejected,
    /// The body's framing broke mid-body; the stream ends here.
    Broken,
}

/// One step of the scanner over the unreleased bytes.
enum Step {
    /// This many leading bytes are good: release them.
    Release(usize),
    /// The current unit is incomplete: wait for more bytes.
    More,
    /// The head at the front is bad.
    Reject(Reject),
}

/// A client connection's IO with the guard in front of reads.
#[derive(Debug)]
pub(crate) struct Guarded<IO> {
    io: IO,
    /// Bytes read but not released to hyper; the first `ready` may be.
    held: BytesMut,
    ready: usize,
    state: State,
    eof: bool,
    limits: Limits,
    shared: Rc<GuardShared>,
    timer: Option<Pin<Box<Sleep>>>,
    /// The count of released heads when the timer was last set: a new
    /// wait for a head (after another request) sets it afresh, more bytes
    /// of the same incomplete head do not.
    armed_for: Option<u64>,
    /// When the current wait for a head began.
    idle_since: Option<Instant>,
    /// Park idle connections after this long (`None`: never).
    park_after: Option<Duration>,
    /// Whether the timer is set for parking rather than for the header timeout.
    park_armed: bool,
    /// hyper's session is being ended for parking: reads end, shutdown is skipped.
    parking: bool,
}

/// Why the timer woke the guard.
#[derive(Clone, Copy)]
enum Wake {
    /// Idle long enough to park.
    Park,
    /// The header read timeout expired.
    Expired,
}

impl<IO> Guarded<IO> {
    pub(crate) fn new(io: IO, limits: Limits, shared: Rc<GuardShared>) -> Self {
        Self {
            io,
            held: BytesMut::new(),
            ready: 0,
            state: State::Head,
            eof: false,
            limits,
            shared,
            timer: None,
            armed_for: None,
            idle_since: None,
            park_after: None,
            park_armed: false,
            parking: false,
        }
    }

    /// Parks the connection after `after` idle (see [`PARK_AFTER`]).
    pub(crate) fn park_after(mut self, after: Duration) -> Self {
        self.park_after = Some(after);
        self
    }

    /// The limits of this connection.
    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// Sets the idle time after which the connection is parked, from the
    /// next wait for a head on.
    pub(crate) fn set_park_after(&mut self, after: Duration) {
        self.park_after = Some(after);
    }

    /// How long the connection has waited for its next head (zero when it
    /// is not waiting).
    pub(crate) fn idle_for(&self) -> Duration {
        self.idle_since
            .map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// Whether hyper's session ended because the connection was parked.
    pub(crate) fn is_parking(&self) -> bool {
        self.parking
    }

    /// Resumes after parking: the next session reads on.
    pub(crate) fn unpark(&mut self) {
        self.parking = false;
    }

    /// When the current wait for a head runs out (the header read timeout).
    pub(crate) fn idle_deadline(&self) -> Option<Instant> {
        self.idle_since
            .map(|since| since + self.limits.header_read_timeout)
    }

    /// Scans `data`, the unreleased bytes, from the current state on.
    fn scan(&mut self, data: &[u8]) -> Step {
        let mut done = 0;
        loop {
            let rest = &data[done..];
            let step = match self.state {
                State::Rejected | State::Broken => return Step::More,
                State::Head => self.scan_head(rest),
                State::Body(remaining) => {
                    if rest.is_empty() {
                        Step::More
                    } else {
                        let n = rest
                            .len()
                            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                        let left = remaining - n as u64;
                        self.state = if left == 0 {
                            State::Head
                        } else {
                            State::Body(left)
                        };
                        Step::Release(n)
                    }
                }
                State::ChunkSize => match line(rest) {
                    Line::Incomplete if rest.len() > MAX_LINE => self.broken(),
                    Line::Incomplete => Step::More,
                    Line::Bad => self.broken(),
                    Line::Complete(len) => match chunk_size(&rest[..len - 2]) {
                        Some(0) => {
                            self.state = State::Trailers;
                            Step::Release(len)
                        }
                        Some(size) => {
                            self.state = State::ChunkData(size);
                            Step::Release(len)
                        }
                        None => self.broken(),
                    },
                },
                State::ChunkData(remaining) => {
                    if rest.is_empty() {
                        Step::More
                    } else {
                        let n = rest
                            .len()
                            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                        let left = remaining - n as u64;
                        self.state = if left == 0 {
                            State::ChunkEnd
                        } else {
                            State::ChunkData(left)
                        };
                        Step::Release(n)
                    }
                }
                State::ChunkEnd => {
                    if rest.len() < 2 {
                        Step::More
                    } else if &rest[..2] == b"\r\n" {
                        self.state = State::ChunkSize;
                        Step::Release(2)
                    } else {
                        self.broken()
                    }
                }
                State::Trailers => match line(rest) {
                    Line::Incomplete if rest.len() > MAX_LINE => self.broken(),
                    Line::Incomplete => Step::More,
                    Line::Bad => self.broken(),
                    Line::Complete(2) => {
                        self.state = State::Head;
                        Step::Release(2)
                    }
                    Line::Complete(len) => Step::Release(len),
                },
            };
            match step {
                Step::Release(n) => {
                    done += n;
                    if done == data.len() {
                        return Step::Release(done);
                    }
                }
                Step::More if done > 0 => return Step::Release(done),
                // Release the good bytes first; the bad head is found again,
                // at the front, by the next scan.
                Step::Reject(_) if done > 0 => return Step::Release(done),
                other => return other,
            }
        }
    }

    /// The body's framing is broken: nothing more goes to hyper, whose body
    /// read then fails and is answered as a bad request.
    fn broken(&mut self) -> Step {
        self.state = State::Broken;
        Step::More
    }

    /// Validates the head at the front of `data`, if it is complete.
    fn scan_head(&mut self, data: &[u8]) -> Step {
        if data.is_empty() {
            return Step::More;
        }
        // Tolerate blank lines before a request line (RFC 9112 §2.2), as hyper does.
        let skip = data
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        let Some(end) = head_end(&data[skip..]) else {
            if data.len() > self.limits.max_header_bytes {
                return Step::Reject(Reject::HeaderTooLarge);
            }
            return Step::More;
        };
        let end = skip + end;
        if end > self.limits.max_header_bytes {
            return Step::Reject(Reject::HeaderTooLarge);
        }
        match check_head(&data[skip..end], self.limits.max_headers) {
            Ok(next) => {
                self.state = next;
                self.shared.heads.set(self.shared.heads.get() + 1);
                Step::Release(end)
            }
            Err(reject) => Step::Reject(reject),
        }
    }

    /// Replaces everything unreleased with the guard's own request.
    fn reject(&mut self, reject: Reject) {
        self.held.truncate(self.ready);
        self.held.extend_from_slice(SYNTHETIC);
        self.ready = self.held.len();
        let at = self.shared.heads.get() + 1;
        self.shared.heads.set(at);
        self.shared.reject.set(Some((at, reject)));
        self.state = State::Rejected;
    }

    /// Scans the held bytes after `ready`.
    fn scan_held(&mut self) {
        let held = std::mem::take(&mut self.held);
        let step = self.scan(&held[self.ready..]);
        self.held = held;
        match step {
            Step::Release(n) => self.ready += n,
            Step::More => {}
            Step::Reject(reject) => self.reject(reject),
        }
    }
}

/// The request that stands for a rejected head: hyper parses it, the proxy
/// answers it from [`GuardShared::next_request`].
const SYNTHETIC: &[u8] = b"GET / HTTP/1.1\r\nhost: gateway.invalid\r\nconnection: close\r\n\r\n";

impl<IO: AsyncRead + Unpin> Guarded<IO> {
    /// Waits on the timer while the connection waits for a head: first for
    /// parking (if the connection is idle and parking is on), then for the
    /// header read timeout.
    fn poll_timeout(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        let waiting_for_head = self.state == State::Head && self.shared.idle();
        if !waiting_for_head {
            return Poll::Pending;
        }
        let timeout = self.limits.header_read_timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        let heads = self.shared.heads.get();
        if self.armed_for != Some(heads) {
            let now = Instant::now();
            self.armed_for = Some(heads);
            self.idle_since = Some(now);
            self.park_armed = self.park_after.is_some_and(|p| p < timeout);
            let first = match self.park_after {
                Some(park) if self.park_armed => park,
                _ => timeout,
            };
            timer.as_mut().reset(now + first);
        }
        ready!(timer.as_mut().poll(cx));
        if self.park_armed {
            self.park_armed = false;
            if self.held.is_empty() && self.ready == 0 {
                return Poll::Ready(Wake::Park);
            }
            // A head is on its way: no parking; the header timeout goes on.
            let deadline = self
                .idle_since
                .map_or_else(Instant::now, |since| since + timeout);
            timer.as_mut().reset(deadline);
            ready!(timer.as_mut().poll(cx));
        }
        Poll::Ready(Wake::Expired)
    }

    /// While the connection is parked: resolves when the header read
    /// timeout runs out, on the connection's own timer.
    ///
    /// The timer is left set to that deadline, so that a head which starts
    /// to arrive after the connection wakes is timed from the same start.
    pub(crate) fn poll_parked(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(deadline) = self.idle_deadline() else {
            return Poll::Pending;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx)
    }

    /// Starts the wait for the next head if the connection went idle since
    /// hyper last read: hyper may read before the response's end is written
    /// (the guard then cannot start the wait: a request is being answered)
    /// and not read again after it, which would leave the connection with
    /// neither a header read timeout nor parking until the client sends. The
    /// server calls this after each poll of the session that left it pending.
    pub(crate) fn poll_idle(&mut self, cx: &mut Context<'_>) {
        if self.armed_for == Some(self.shared.heads.get()) || self.parking {
            // Armed already (its timer holds the task's waker), or parking.
            return;
        }
        if let Poll::Ready(wake) = self.poll_timeout(cx) {
            self.woke(wake);
            // hyper learns of it on its next read.
            cx.waker().wake_by_ref();
        }
    }

    /// Handles the timer's verdict; `true` when hyper is to see the end of
    /// its session (parking).
    fn woke(&mut self, wake: Wake) -> bool {
        match wake {
            Wake::Park => {
                self.parking = true;
                true
            }
            Wake::Expired => {
                self.timed_out();
                false
            }
        }
    }
}

impl Guarded<tokio::net::TcpStream> {
    /// Readiness of the socket while parked.
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.poll_read_ready(cx)
    }

    /// The client's address (looked up when asked, so that a connection
    /// does not carry it).
    pub(crate) fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.io.peer_addr()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.ready > 0 {
                let n = this.ready.min(out.remaining());
                out.put_slice(&this.held[..n]);
                this.held.advance(n);
                this.ready -= n;
                return Poll::Ready(Ok(()));
            }
            if this.parking {
                // The end of hyper's session, not of the connection.
                return Poll::Ready(Ok(()));
            }
            if this.state == State::Rejected {
                // hyper has the stand-in request, which asks to close the
                // connection after its answer. Nothing more is read; an end of
                // stream here could make hyper drop the connection before
                // that answer is written.
                return Poll::Pending;
            }
            if this.eof || this.state == State::Broken {
                // End of stream for hyper: a body cut short fails to read,
                // and the proxy answers 400 (hyper half-closes, see `server`).
                return Poll::Ready(Ok(()));
            }
            if this.held.is_empty() {
                // Fast path: read straight into hyper's buffer and keep what
                // the scanner releases, which is all of it for a whole head.
                let before = out.filled().len();
                match Pin::new(&mut this.io).poll_read(cx, out) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => {
                        let wake = ready!(this.poll_timeout(cx));
                        if this.woke(wake) {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                }
                let read = out.filled().len() - before;
                if read == 0 {
                    this.eof = true;
                    return Poll::Ready(Ok(()));
                }
                let step = this.scan(&out.filled()[before..]);
                match step {
                    Step::Release(n) if n == read => return Poll::Ready(Ok(())),
                    Step::Release(n) => {
                        this.held.extend_from_slice(&out.filled()[before + n..]);
                        out.set_filled(before + n);
                        // The rest waits for more bytes (or is released on the
                        // next call if the scanner can go on).
                        this.scan_held();
                        if n > 0 {
                            return Poll::Ready(Ok(()));
                        }
                    }
                    Step::More => {
                        this.held.extend_from_slice(&out.filled()[before..]);
                        out.set_filled(before);
                    }
                    Step::Reject(reject) => {
                        out.set_filled(before);
                        this.reject(reject);
                    }
                }
                continue;
            }
            // Slow path: a head or line is incomplete; read behind it.
            let read = {
                let reading = tokio::io::AsyncReadExt::read_buf(&mut this.io, &mut this.held);
                let mut reading = std::pin::pin!(reading);
                match reading.as_mut().poll(cx) {
                    Poll::Ready(result) => result?,
                    Poll::Pending => {
                        let wake = ready!(this.poll_timeout(cx));
                        if this.woke(wake) {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                }
            };
            if read == 0 {
                this.eof = true;
                // An incomplete head at end of stream goes nowhere.
                this.held.clear();
                continue;
            }
            this.scan_held();
        }
    }
}

impl<IO> Guarded<IO> {
    /// The header read timeout expired: an idle connection ends quietly; a
    /// client that started a head and stalled (slowloris) gets a 408.
    fn timed_out(&mut self) {
        if self.held.is_empty() {
            self.eof = true;
        } else {
            self.reject(Reject::RequestTimeout);
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.parking {
            // hyper's session ends; the connection stays open for the next.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The guard as hyper holds it: shared with the connection's task, which
/// takes the connection back when hyper's session ends for parking.
#[derive(Debug)]
pub(crate) struct GuardedIo<IO>(pub(crate) Rc<RefCell<Guarded<IO>>>);

impl<IO: AsyncRead + Unpin> AsyncRead for GuardedIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, out)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for GuardedIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.borrow().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_shutdown(cx)
    }
}

// === Parsing ===

/// The length of the head at the front of `data` (through its blank line).
fn head_end(data: &[u8]) -> Option<usize> {
    memchr_crlfcrlf(data).map(|i| i + 4)
}

fn memchr_crlfcrlf(data: &[u8]) -> Option<usize> {
    // This runs over every request head: a vectorised search for each line
    // end, and a look back from it, costs a few instructions per line where
    // comparing every 4-byte window costs several per byte (and building a
    // substring searcher for each call costs more than a short head).
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'\n', &data[from..]) {
        let at = from + i;
        if at >= 3 && &data[at - 3..=at] == b"\r\n\r\n" {
            return Some(at - 3);
        }
        from = at + 1;
    }
    None
}

/// Checks one complete head; returns the state of what follows it.
fn check_head(head: &[u8], max_headers: usize) -> Result<State, Reject> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADER_SLOTS];
    let slots = &mut slots[..(max_headers + 1).min(HEADER_SLOTS)];
    let mut request = httparse::Request::new(&mut []);
    match request.parse_with_uninit_headers(head, slots) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(Reject::BadRequest("the request head is malformed"));
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::TooManyHeaders),
        Err(_) => return Err(Reject::BadRequest("the request head is malformed")),
    }
    if request.headers.len() > max_headers {
        return Err(Reject::TooManyHeaders);
    }
    let http10 = request.version == Some(0);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encodings = 0;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err(Reject::BadRequest(
                    "the request has more than one Content-Length",
                ));
            }
            length = Some(parse_length(header.value).ok_or(Reject::BadRequest(
                "the request's Content-Length is not a number",
            ))?);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encodings += 1;
            chunked = last_token_is_chunked(header.value);
        }
    }
    if transfer_encodings > 0 {
        if length.is_some() {
            return Err(Reject::BadRequest(
                "the request has both Content-Length and Transfer-Encoding",
            ));
        }
        if http10 {
            return Err(Reject::BadRequest(
                "HTTP/1.0 requests cannot use Transfer-Encoding",
            ));
        }
        if transfer_encodings > 1 || !chunked {
            return Err(Reject::BadRequest(
                "the request's Transfer-Encoding must be a single list ending in chunked",
            ));
        }
        return Ok(State::ChunkSize);
    }
    Ok(match length {
        Some(n) if n > 0 => State::Body(n),
        _ => State::Head,
    })
}

fn last_token_is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|b| *b == b',')
        .next()
        .map(<[u8]>::trim_ascii)
        .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
}

enum Line {
    /// A line of this length, CRLF included.
    Complete(usize),
    Incomplete,
    /// A bare CR or LF inside the line.
    Bad,
}

fn line(data: &[u8]) -> Line {
    match data.iter().position(|b| *b == b'\n') {
        None => Line::Incomplete,
        Some(0) => Line::Bad,
        Some(i) if data[i - 1] != b'\r' || data[..i - 1].contains(&b'\r') => Line::Bad,
        Some(i) => Line::Complete(i + 1),
    }
}

/// The size of a chunk-size line (without CRLF): hex digits, then optional
/// whitespace and `;extensions`.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_header_bytes: 1024,
            max_headers: 10,
            header_read_timeout: Duration::from_secs(60),
        }
    }

    /// Feeds `chunks` through a guard (one read each) and returns what hyper
    /// would read before the stream ends or waits, and the rejection the
    /// proxy would see.
    async fn guard(chunks: &[&[u8]]) -> (Vec<u8>, Option<Reject>) {
        let mut reader = tokio_test_io(chunks);
        let shared = Rc::new(GuardShared::default());
        let mut guarded = Guarded::new(&mut reader, limits(), Rc::clone(&shared));
        let mut out = Vec::new();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            let mut buf = [0u8; 64];
            let mut read = ReadBuf::new(&mut buf);
            match Pin::new(&mut guarded).poll_read(&mut cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => break,
                Poll::Ready(Ok(())) => out.extend_from_slice(read.filled()),
                Poll::Ready(Err(error)) => panic!("{error}"),
                // After a rejection the guard waits for hyper to close.
                Poll::Pending => break,
            }
        }
        let reject = shared.reject.get().map(|(_, r)| r);
        (out, reject)
    }

    /// A reader that returns each chunk from one read (an empty chunk would
    /// read as the end of the stream, so there are none).
    fn tokio_test_io(chunks: &[&[u8]]) -> ChunkReader {
        ChunkReader(
            chunks
                .iter()
                .filter(|c| !c.is_empty())
                .map(|c| c.to_vec())
                .rev()
                .collect(),
        )
    }

    struct ChunkReader(Vec<Vec<u8>>);

    impl AsyncRead for ChunkReader {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(mut chunk) = self.0.pop() {
                let n = chunk.len().min(out.remaining());
                out.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.0.push(chunk.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn good_requests_pass_through_unchanged_however_they_are_split() {
        let requests: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
            POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n\
            GET /d HTTP/1.1\r\nHost: x\r\n\r\n";
        let (out, reject) = guard(&[requests]).await;
        assert_eq!(out, requests);
        assert_eq!(reject, None);
        for split in 1..requests.len() {
            let (a, b) = requests.split_at(split);
            let (out, reject) = guard(&[a, b]).await;
            assert_eq!(out, requests, "split at {split}");
            assert_eq!(reject, None, "split at {split}");
        }
        let bytes: Vec<&[u8]> = requests.chunks(1).collect();
        assert_eq!(guard(&bytes).await.0, requests);
    }

    #[tokio::test]
    async fn ambiguous_framing_is_replaced_never_released() {
        for (bad, why) in [
            (
                &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                "both",
            ),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", "both"),
            (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", "more than one"),
            (b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", "not a number"),
            (b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", "not a number"),
            (b"POST / HTTP/1.1\r\nContent-Length: nope\r\n\r\n", "not a number"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "ending in chunked"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "single"),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.0"),
            (b"NOT HTTP AT ALL\r\n\r\n", "malformed"),
            (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", "malformed"),
        ] {
            let good = b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n";
            let mut stream = good.to_vec();
            stream.extend_from_slice(bad);
            stream.extend_from_slice(b"GET /smuggled HTTP/1.1\r\n\r\n");
            let (out, reject) = guard(&[&stream]).await;
            let mut expected = good.to_vec();
            expected.extend_from_slice(SYNTHETIC);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&expected),
                "{}",
                String::from_utf8_lossy(bad)
            );
            match reject {
                Some(Reject::BadRequest(message)) => assert!(message.contains(why), "{message}"),
                other => panic!("{other:?} for {}", String::from_utf8_lossy(bad)),
            }
        }
    }

    #[tokio::test]
    async fn oversized_heads_and_too_many_headers_get_431() {
        let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 2000));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(guard(&[&big]).await.1, Some(Reject::HeaderTooLarge));
        // Without an end in sight either.
        assert_eq!(guard(&[&big[..1500]]).await.1, Some(Reject::HeaderTooLarge));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..11 {
            many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(guard(&[&many]).await.1, Some(Reject::TooManyHeaders));
    }

    #[tokio::test]
    async fn broken_chunk_framing_ends_the_stream_mid_body() {
        let head: &[u8] = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for body in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\nhello",
        ] {
            let mut stream = head.to_vec();
            stream.extend_from_slice(body);
            stream.extend_from_slice(b"GET /smuggled HTTP/1.1\r\n\r\n");
            let (out, _) = guard(&[&stream]).await;
            assert!(out.starts_with(head));
            assert!(
                !String::from_utf8_lossy(&out).contains("smuggled"),
                "{}",
                String::from_utf8_lossy(&out)
            );
        }
    }

    #[tokio::test]
    async fn an_idle_connection_is_parked_without_being_closed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1024);
        let shared = Rc::new(GuardShared::default());
        let mut guarded =
            Guarded::new(server, limits(), shared).park_after(Duration::from_millis(20));
        let mut buf = [0u8; 64];
        // hyper's session ends (a read of nothing) once the connection idled.
        assert_eq!(guarded.read(&mut buf).await.unwrap(), 0);
        assert!(guarded.is_parking());
        // Ending the session must not close the connection.
        guarded.shutdown().await.unwrap();
        guarded.write_all(b"still open").await.unwrap();
        let mut seen = [0u8; 10];
        client.read_exact(&mut seen).await.unwrap();
        assert_eq!(&seen, b"still open");
        // The next session reads the next request.
        guarded.unpark();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let n = guarded.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn a_head_in_progress_is_not_parked_but_times_out() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1024);
        let shared = Rc::new(GuardShared::default());
        let limits = Limits {
            header_read_timeout: Duration::from_millis(60),
            ..limits()
        };
        let mut guarded =
            Guarded::new(server, limits, Rc::clone(&shared)).park_after(Duration::from_millis(10));
        client.write_all(b"GET / HTTP/1.1\r\nHost").await.unwrap();
        let mut buf = [0u8; 128];
        let n = guarded.read(&mut buf).await.unwrap();
        assert!(!guarded.is_parking());
        assert_eq!(&buf[..n], SYNTHETIC, "the stand-in for the timed-out head");
        assert_eq!(
            shared.reject.get().map(|(_, r)| r),
            Some(Reject::RequestTimeout)
        );
    }

    /// One valid request, as bytes.
    fn request_bytes(
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &Body,
    ) -> Vec<u8> {
        let mut out = format!("{method} /{path} HTTP/1.1\r\nHost: x\r\n").into_bytes();
        for (name, value) in headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        match body {
            Body::None => out.extend_from_slice(b"\r\n"),
            Body::Length(data) => {
                out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", data.len()).as_bytes());
                out.extend_from_slice(data);
            }
            Body::Chunked(chunks, trailer) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for chunk in chunks {
                    out.extend_from_slice(format!("{:x};e=1\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n");
                if *trailer {
                    out.extend_from_slice(b"X-Sum: 1\r\n");
                }
                out.extend_from_slice(b"\r\n");
            }
        }
        out
    }

    #[derive(Debug, Clone)]
    enum Body {
        None,
        Length(Vec<u8>),
        Chunked(Vec<Vec<u8>>, bool),
    }

    fn body() -> impl Strategy<Value = Body> {
        let bytes = proptest::collection::vec(any::<u8>(), 1..40);
        prop_oneof![
            Just(Body::None),
            bytes.clone().prop_map(Body::Length),
            (proptest::collection::vec(bytes, 0..4), any::<bool>())
                .prop_map(|(chunks, trailer)| Body::Chunked(chunks, trailer)),
        ]
    }

    fn request() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH"]),
            "[a-z0-9/]{0,20}",
            proptest::collection::vec(("X-[A-Za-z]{1,8}", "[ -~]{0,20}"), 0..5),
            body(),
        )
            .prop_map(|(method, path, headers, body)| {
                let headers: Vec<(String, String)> = headers
                    .into_iter()
                    .map(|(n, v)| (n, v.trim().to_owned()))
                    .collect();
                request_bytes(method, &path, &headers, &body)
            })
    }

    use proptest::prelude::*;

    proptest! {
        /// Valid requests pass through byte for byte, however the stream is cut.
        #[test]
        fn valid_streams_pass_unchanged(
            requests in proptest::collection::vec(request(), 1..5),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let stream: Vec<u8> = requests.concat();
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len())).collect();
            points.sort_unstable();
            points.dedup();
            let mut chunks = Vec::new();
            let mut last = 0;
            for p in points {
                chunks.push(&stream[last..p]);
                last = p;
            }
            chunks.push(&stream[last..]);
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (out, reject) = runtime.block_on(guard(&chunks));
            prop_assert_eq!(reject, None);
            prop_assert_eq!(out, stream);
        }

        /// Whatever a client sends, the guard neither panics nor releases
        /// more than it got (plus its own stand-in request).
        #[test]
        fn arbitrary_bytes_never_break_the_guard(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..5),
        ) {
            let slices: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let total: usize = chunks.iter().map(Vec::len).sum();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (out, reject) = runtime.block_on(guard(&slices));
            prop_assert!(out.len() <= total + SYNTHETIC.len());
            if reject.is_some() {
                prop_assert!(out.ends_with(SYNTHETIC));
            }
        }
    }

    #[test]
    fn the_head_ends_at_the_first_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nhost: a\r\n\r\nrest"), Some(27));
        assert_eq!(head_end(b"\r\n\r\n"), Some(4));
        assert_eq!(head_end(b"x\n\r\n\r\n"), Some(6));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nhost: a\r\n\r"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nhost: a\r\n"), None);
        assert_eq!(head_end(b""), None);
    }

    #[test]
    fn chunk_sizes_and_lengths_are_strict() {
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"1a ; name=value"), Some(26));
        assert_eq!(chunk_size(b""), None);
        assert_eq!(chunk_size(b"-1"), None);
        assert_eq!(chunk_size(b"1a x"), None);
        assert_eq!(chunk_size(b"ffffffffffffffff"), None);
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b" 5"), None);
        assert_eq!(parse_length(b"99999999999999999999"), None);
    }
}
