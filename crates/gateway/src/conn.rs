//! Upstream connections of one worker thread: opening them, and keeping the
//! idle ones for reuse.
//!
//! Each worker has its own pool, so taking and returning a connection is a
//! `Vec` push and pop without locks or cross-thread wake-ups, and a
//! connection's task runs on the thread that uses it. Connections are
//! hyper's connection-level HTTP/1.1 client: the request goes out exactly as
//! the proxy built it (origin-form target, the client's `Host`), with no URI
//! rebuilt and no generic pool in between.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::RequestBody;
use crate::endpoint::Endpoint;

/// The sending half of one upstream connection.
pub(crate) type Sender = http1::SendRequest<RequestBody>;

/// Why no connection could be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The TCP connect failed (refused, unreachable, no such host).
    #[error("connect: {0}")]
    Io(#[from] io::Error),
    /// The TCP connect took longer than the pool's `connect_timeout`.
    #[error("connect timed out")]
    Timeout,
    /// The HTTP/1.1 handshake failed.
    #[error("handshake: {0}")]
    Handshake(#[from] hyper::Error),
}

#[derive(Debug)]
struct Idle {
    sender: Sender,
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
    /// A connection to `endpoint` that is ready for a request: the most
    /// recently used idle one (its socket is likeliest to be warm), else a
    /// new one. Idle connections found closed or expired (at `now`) are dropped.
    pub(crate) async fn get(
        &self,
        endpoint: &Arc<Endpoint>,
        connect_timeout: Duration,
        now: Instant,
    ) -> Result<(Sender, bool), ConnectError> {
        while let Some(mut sender) = self.take(endpoint.id, now) {
            // Ready at once unless the previous response's end has not been
            // processed by the connection task yet, which is a short wait.
            if sender.ready().await.is_ok() {
                return Ok((sender, true));
            }
        }
        connect(endpoint, connect_timeout)
            .await
            .map(|sender| (sender, false))
    }

    fn take(&self, endpoint: u64, now: Instant) -> Option<Sender> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&endpoint)?;
        while let Some(conn) = list.pop() {
            if conn.expires > now && !conn.sender.is_closed() {
                return Some(conn.sender);
            }
        }
        None
    }

    /// Keeps `sender` for reuse, unless `max_idle` are kept already.
    pub(crate) fn put(
        &self,
        endpoint: u64,
        sender: Sender,
        max_idle: usize,
        idle_timeout: Duration,
    ) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(endpoint).or_default();
        if list.len() < max_idle {
            list.push(Idle {
                sender,
                expires: Instant::now() + idle_timeout,
            });
        }
    }

    /// Drops expired and closed connections, and every connection of an
    /// endpoint for which `keep` is false (it left the config).
    pub(crate) fn sweep(&self, now: Instant, keep: impl Fn(u64) -> bool) {
        let mut idle = self.idle.borrow_mut();
        idle.retain(|endpoint, list| {
            if !keep(*endpoint) {
                return false;
            }
            list.retain(|c| c.expires > now && !c.sender.is_closed());
            !list.is_empty()
        });
    }
}

/// Opens a connection to `endpoint` and starts its task on this thread.
async fn connect(endpoint: &Arc<Endpoint>, timeout: Duration) -> Result<Sender, ConnectError> {
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
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    let gauge = endpoint.metrics.connection_opened();
    tokio::task::spawn_local(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream connection ended with an error");
        }
        gauge.decrement(1.0);
    });
    Ok(sender)
}
