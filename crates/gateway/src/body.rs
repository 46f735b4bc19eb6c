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

use crate::conn::{Connections, Sender};
use crate::endpoint::InFlight;

/// A request body on its way upstream.
#[derive(Debug)]
pub(crate) enum RequestBody {
    /// No body.
    Empty,
    /// A buffered body; `None` once sent.
    Full(Option<Bytes>),
    /// The client's body, streamed.
    Stream(Incoming),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Self::Stream(incoming) => Pin::new(incoming).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Full(data) => data.is_none(),
            Self::Stream(incoming) => incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Self::Stream(incoming) => incoming.size_hint(),
        }
    }
}

/// Why a response body stopped early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResponseBodyError {
    /// The upstream connection failed mid-body.
    #[error("upstream body: {0}")]
    Upstream(#[from] hyper::Error),
    /// The pool's total timeout ran out while the body was streaming.
    #[error("the upstream exchange exceeded the pool's total timeout")]
    TotalTimeout,
}

/// A response body on its way to the client.
#[derive(Debug)]
pub(crate) enum ResponseBody {
    /// Streamed from an upstream.
    Upstream(UpstreamBody),
    /// Made by the gateway.
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
    pub(crate) sender: Sender,
    pub(crate) max_idle: usize,
    pub(crate) idle_timeout: std::time::Duration,
}

/// An upstream's response body: streams through, returns the connection to
/// the pool at its end, holds the request's in-flight count until then, and
/// cuts the response off at the pool's total timeout.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    inner: Incoming,
    release: Option<Release>,
    in_flight: Option<InFlight>,
    deadline: Instant,
    /// Created only if the body ever has to wait, so that small responses
    /// (read with their head) cost no timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl UpstreamBody {
    pub(crate) fn new(
        inner: Incoming,
        release: Release,
        in_flight: InFlight,
        deadline: Instant,
    ) -> Self {
        let mut body = Self {
            inner,
            release: Some(release),
            in_flight: Some(in_flight),
            deadline,
            timer: None,
        };
        if body.inner.is_end_stream() {
            body.finish();
        }
        body
    }

    /// The body is complete: the connection may serve another request.
    fn finish(&mut self) {
        self.in_flight = None;
        if let Some(release) = self.release.take() {
            release.connections.put(
                release.endpoint,
                release.sender,
                release.max_idle,
                release.idle_timeout,
            );
        }
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
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                // A broken connection is dropped, not pooled.
                this.release = None;
                this.in_flight = None;
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Pending => {
                let deadline = tokio::time::Instant::from_std(this.deadline);
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                ready!(timer.as_mut().poll(cx));
                this.release = None;
                this.in_flight = None;
                Poll::Ready(Some(Err(ResponseBodyError::TotalTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Dropped after its last frame without being polled to the end (hyper
        // stops once the length is reached): the connection is still clean.
        if self.release.is_some() && self.inner.is_end_stream() {
            self.finish();
        }
    }
}
