//! Message bodies on both sides of the proxy.
//!
//! [`RequestBody`] is what goes upstream: nothing, a buffered body (cheap to
//! clone for a retry), or the client's body streamed through. [`ResponseBody`]
//! is what goes back: the upstream's body streamed through
//! ([`UpstreamBody`], which hands its connection back to the worker's pool
//! when it ends and enforces the pool's total timeout), or a body the gateway
//! made up.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::codec::{BodyState, ParseError, Step};
use crate::conn::{Connections, UpstreamConn};
use crate::endpoint::InFlight;

/// A request body as the proxy holds it and sends it upstream.
#[derive(Debug)]
pub(crate) enum RequestBody {
    /// No body.
    Empty,
    /// A buffered body (cheap to clone for a retry).
    Full(Bytes),
    /// The client's body, streamed through: never replayed.
    Stream(Incoming),
}

impl RequestBody {
    /// The body of the first attempt. A streamed body moves into it: it is
    /// never replayed once it went out (a connect failure hands it back
    /// unread, for the next endpoint).
    pub(crate) fn take_first(&mut self) -> RequestBody {
        match self {
            Self::Empty => Self::Empty,
            Self::Full(bytes) => Self::Full(bytes.clone()),
            Self::Stream(_) => std::mem::replace(self, Self::Empty),
        }
    }

    /// The body of a replay (only buffered bodies are replayed).
    pub(crate) fn again(&self) -> RequestBody {
        match self {
            Self::Full(bytes) => Self::Full(bytes.clone()),
            Self::Empty | Self::Stream(_) => Self::Empty,
        }
    }
}

/// Why a response body stopped early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResponseBodyError {
    /// Reading from the upstream connection failed mid-body.
    #[error("upstream body: {0}")]
    Upstream(#[from] std::io::Error),
    /// The upstream closed the connection before the body's end.
    #[error("upstream body: the connection closed before the body's end")]
    Incomplete,
    /// The body broke its framing (a bad chunk).
    #[error("upstream body: {0}")]
    Malformed(#[from] ParseError),
    /// The pool's total timeout ran out while the body was streaming.
    #[error("the upstream exchange exceeded the pool's total timeout")]
    TotalTimeout,
}

/// A response body on its way to the client.
#[derive(Debug)]
pub(crate) enum ResponseBody {
    /// Streamed from an upstream.
    Upstream(UpstreamBody),
    /// Made by the gateway, or an upstream's body that arrived whole with
    /// its head (its connection is back in the pool already).
    Local(Full<Bytes>),
}

impl From<Full<Bytes>> for ResponseBody {
    fn from(body: Full<Bytes>) -> Self {
        Self::Local(body)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        match self.get_mut() {
            Self::Upstream(body) => Pin::new(body).poll_frame(cx),
            Self::Local(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream(body) => body.is_end_stream(),
            Self::Local(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream(body) => body.size_hint(),
            Self::Local(body) => body.size_hint(),
        }
    }
}

/// Where a connection goes back when its response is fully read.
#[derive(Debug)]
pub(crate) struct Release {
    pub(crate) connections: Rc<Connections>,
    pub(crate) endpoint: u64,
    pub(crate) max_idle: usize,
    pub(crate) idle_timeout: std::time::Duration,
}

impl Release {
    /// Hands `conn` back to the worker's pool.
    pub(crate) fn put(self, conn: UpstreamConn) {
        self.connections
            .put(self.endpoint, conn, self.max_idle, self.idle_timeout);
    }
}

/// An upstream's response body: read from its connection as the client
/// takes it, framed by length, chunks or the connection's end; returns the
/// connection to the pool at its end (if the response allows reuse), holds
/// the request's in-flight count until then, and cuts the response off at
/// the pool's total timeout.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    /// `None` once the body ended (or failed).
    conn: Option<UpstreamConn>,
    state: BodyState,
    /// `None` if the connection must not be reused.
    release: Option<Release>,
    in_flight: Option<InFlight>,
    deadline: Instant,
    /// Created only if the body ever has to wait, so that small responses
    /// (read with their head) cost no timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl UpstreamBody {
    pub(crate) fn new(
        conn: UpstreamConn,
        state: BodyState,
        release: Option<Release>,
        in_flight: InFlight,
        deadline: Instant,
    ) -> Self {
        let mut body = Self {
            conn: Some(conn),
            state,
            release,
            in_flight: Some(in_flight),
            deadline,
            timer: None,
        };
        if body.state.is_done() {
            body.finish();
        }
        body
    }

    /// The body is complete: the connection may serve another request.
    fn finish(&mut self) {
        self.in_flight = None;
        let conn = self.conn.take();
        if let (Some(conn), Some(release)) = (conn, self.release.take()) {
            release.put(conn);
        }
    }

    /// The body broke off: its connection is closed, never pooled.
    fn fail(
        &mut self,
        error: ResponseBodyError,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        self.conn = None;
        self.release = None;
        self.in_flight = None;
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.state.step(&mut conn.buf) {
                Ok(Step::Data(data)) => {
                    if this.state.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::Done) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(error) => return this.fail(error.into()),
            }
            match conn.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    if this.state != BodyState::Close {
                        return this.fail(ResponseBodyError::Incomplete);
                    }
                    // The end of a body delimited by the connection's end.
                    this.state = BodyState::Done;
                    this.release = None;
                    this.finish();
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(error)) => return this.fail(error.into()),
                Poll::Pending => {
                    let deadline = tokio::time::Instant::from_std(this.deadline);
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    ready!(timer.as_mut().poll(cx));
                    return this.fail(ResponseBodyError::TotalTimeout);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.state.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.state.exact_left() {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}
