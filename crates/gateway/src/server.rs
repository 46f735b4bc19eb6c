//! Accepting connections on the client and admin listeners, serving HTTP/1.1
//! on them, and draining them on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::admin::Admin;
use crate::observe::{self, ConnectionGuard};
use crate::proxy::Proxy;

/// Longest wait for in-flight requests after shutdown begins.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a client has to send a complete request head; it bounds the
/// connections a slow or idle client can hold open.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause after a failed `accept` (typically: out of file descriptors), so
/// that the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The two bound listeners.
pub(crate) struct Listeners {
    pub(crate) client: TcpListener,
    pub(crate) admin: TcpListener,
}

/// Serves both listeners until `shutdown` resolves, then drains.
///
/// Connection tasks belong to this function: when it returns, every
/// connection is finished or, after the drain timeout, aborted, so that the
/// caller can rely on nothing of the gateway running any more.
pub(crate) async fn run(
    listeners: Listeners,
    proxy: Arc<Proxy>,
    admin: Arc<Admin>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let gauge = observe::active_connections();
    let mut connections = JoinSet::new();

    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listeners.client.accept() => match accepted {
                Ok((stream, peer)) => {
                    let guard = ConnectionGuard::open(&gauge);
                    let connection = serve_client(&http, &graceful, stream, peer, Arc::clone(&proxy));
                    connections.spawn(async move {
                        connection.await;
                        drop(guard);
                    });
                }
                Err(error) => accept_failed("client", &error).await,
            },
            accepted = listeners.admin.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_admin(&http, &graceful, stream, Arc::clone(&admin)));
                }
                Err(error) => accept_failed("admin", &error).await,
            },
            // Reaping finished connections keeps the set from growing.
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = finished {
                    tracing::error!(%error, "a connection task failed");
                }
            }
        }
    }

    // Closing the listeners first makes new connections fail at once
    // instead of waiting in the backlog for an answer that never comes.
    drop(listeners);
    let open = graceful.count();
    tracing::info!(connections = open, "shutting down: draining connections");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_s = DRAIN_TIMEOUT.as_secs(),
            "connections still open after the drain timeout; closing them"
        );
    }
    connections.shutdown().await;
}

/// The future that serves one client connection to its end.
fn serve_client(
    http: &http1::Builder,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
) -> impl Future<Output = ()> + Send + 'static {
    // Responses are written as soon as they are ready; Nagle would hold
    // back the last segment of each one.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    // The client address is rendered once per connection, not per request.
    let client_ip = HeaderValue::try_from(peer.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    let service = service_fn(move |request| {
        let proxy = Arc::clone(&proxy);
        let client_ip = client_ip.clone();
        async move { Ok::<_, Infallible>(proxy.serve(request, &client_ip).await) }
    });
    let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
    async move {
        if let Err(error) = connection.await {
            // Clients that hang up or time out are routine, not errors of ours.
            tracing::debug!(%error, %peer, "client connection ended with an error");
        }
    }
}

/// The future that serves one admin connection to its end.
fn serve_admin(
    http: &http1::Builder,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    admin: Arc<Admin>,
) -> impl Future<Output = ()> + Send + 'static {
    let service = service_fn(move |request| {
        let response = admin.serve(&request);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
    async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "admin connection ended with an error");
        }
    }
}

async fn accept_failed(listener: &'static str, error: &io::Error) {
    tracing::warn!(listener, %error, "accept failed");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}
