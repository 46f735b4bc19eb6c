//! The edge gateway: a general-purpose HTTP/1.1 reverse proxy.
//!
//! This crate owns the edge proxy of scalestack: the client listeners (one
//! per worker thread), routing (host, path prefix, method) to upstream pools,
//! the nine balancing algorithms, active health checks and passive outlier
//! ejection with slow start, a circuit breaker per endpoint, retries when they
//! are safe (within a retry budget, with backoff), timeouts and request
//! limits, strict request framing, rate limiting, its metrics and access log,
//! reloads without dropping anything, and the admin listener (`/health`,
//! `/metrics`, the token-protected admin API).
//!
//! It must not know the reference service's domain (users, orders, products),
//! speak SQL, or talk to the cache, store or queue backends: every path of the
//! client port, `/health` and `/metrics` included, belongs to the upstreams and
//! is proxied untouched apart from hop-by-hop and forwarding headers.
//!
//! The public surface is [`Gateway`], [`GatewayError`] and [`ReloadSource`];
//! everything behind them is internal.
//!
//! One request, end to end: a worker thread's listener accepts the connection
//! (`server`); the framing guard (`guard`) checks each request head before
//! hyper parses it; `proxy` matches a route of the current `table`, applies
//! its rate limits, buffers a body small enough to replay, rewrites the
//! headers, asks the pool's balancer (`balance`) for an endpoint that is
//! healthy, not drained, not ejected and whose breaker allows it (`endpoint`),
//! and sends the request on one of the worker's own pooled connections
//! (`conn`), speaking HTTP/1.1 to the upstream itself (`codec`). Failures that are safe to retry go to another endpoint; the
//! response streams back (`body`), and its connection returns to the pool
//! when the body ends. `health` probes every endpoint in the background;
//! `control` swaps in new tables on reload; `admin` serves the admin port.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use scalestack_config::GatewayConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;

mod admin;
mod balance;
mod body;
mod clock;
mod codec;
mod conn;
mod control;
mod endpoint;
mod error;
mod guard;
mod headers;
mod health;
mod observe;
mod proxy;
mod server;
mod table;

pub use control::ReloadSource;
pub use error::GatewayError;

/// Value of the `component` and `instance` labels and of the health report
/// when the CLI has not installed the metrics recorder itself.
const COMPONENT: &str = "gateway";

/// A gateway whose listeners are bound and which is ready to [`serve`](Gateway::serve).
pub struct Gateway {
    listeners: Vec<std::net::TcpListener>,
    admin_listener: TcpListener,
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
    shared: Arc<server::Shared>,
    config: GatewayConfig,
    source: Option<ReloadSource>,
    telemetry: &'static scalestack_telemetry::metrics::Metrics,
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field("local_addr", &self.local_addr)
            .field("admin_addr", &self.admin_addr)
            .field("threads", &self.listeners.len())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Checks `config`, builds the routing table and binds the client
    /// listeners (`config.listen`, one per worker thread) and the admin
    /// listener (`config.admin_listen`).
    ///
    /// The config is checked first, so that a bad one is reported (naming
    /// the key) before any port is taken. Port 0 picks a free port; read it
    /// back with [`local_addr`](Gateway::local_addr) and
    /// [`admin_addr`](Gateway::admin_addr). If the caller has not installed
    /// the process's metrics recorder yet, this installs it.
    pub async fn bind(config: &GatewayConfig) -> Result<Gateway, GatewayError> {
        let telemetry = scalestack_telemetry::metrics::install(COMPONENT, COMPONENT);
        observe::describe();
        config
            .validate()
            .map_err(|e| GatewayError::Config(e.to_string()))?;
        let table = table::Table::build(config, None)?;
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let listeners = server::bind_reuseport(config.listen, threads).map_err(|source| {
            GatewayError::Bind {
                key: "gateway.listen",
                addr: config.listen,
                source,
            }
        })?;
        let local_addr = listeners[0]
            .local_addr()
            .map_err(|source| GatewayError::Bind {
                key: "gateway.listen",
                addr: config.listen,
                source,
            })?;
        let admin_listener = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|source| GatewayError::Bind {
                key: "gateway.admin_listen",
                addr: config.admin_listen,
                source,
            })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| GatewayError::Bind {
                key: "gateway.admin_listen",
                addr: config.admin_listen,
                source,
            })?;
        let shared = Arc::new(server::Shared::new(table, control::client_limits(config)));
        Ok(Gateway {
            listeners,
            admin_listener,
            local_addr,
            admin_addr,
            shared,
            config: config.clone(),
            source: None,
            telemetry,
        })
    }

    /// Sets where SIGHUP and an empty `POST /admin/reload` read the new
    /// configuration from (the CLI re-reads its config file). Without one,
    /// SIGHUP is ignored and reload calls must carry the configuration.
    pub fn with_reload_source(mut self, source: ReloadSource) -> Self {
        self.source = Some(source);
        self
    }

    /// The address of the client listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the admin listener (`/health`, `/metrics`, `/admin/`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Serves clients and the admin port until `shutdown` resolves, then
    /// stops accepting on every listener and lets in-flight requests finish,
    /// waiting at most 10 s for them before returning.
    ///
    /// Active health checks run, and SIGHUP reloads (when a reload source is
    /// set), for as long as this does.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let (stop, stopped) = watch::channel(false);
        let control = Arc::new(control::Control::new(
            Arc::clone(&self.shared),
            self.config,
            self.source,
            self.telemetry,
        ));
        // The SIGHUP handler is in place before the first request is served,
        // so that a reload signal never meets the default action (exit).
        let hangups = if control.has_source() {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(hangups) => Some(tokio::spawn(reload_on_hangup(
                    Arc::clone(&control),
                    hangups,
                ))),
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGHUP; reload through the admin API");
                    None
                }
            }
        } else {
            None
        };
        let threads = self.listeners.len();
        let mut workers = Vec::with_capacity(threads);
        for (index, listener) in self.listeners.into_iter().enumerate() {
            match server::spawn_worker(index, listener, Arc::clone(&self.shared), stopped.clone()) {
                Ok(worker) => workers.push(worker),
                Err(source) => {
                    let _ = stop.send(true);
                    for worker in workers {
                        let _ = worker.done.await;
                    }
                    if let Some(hangups) = hangups {
                        hangups.abort();
                    }
                    return Err(GatewayError::Thread { index, source });
                }
            }
        }
        control.start_checks();
        let admin = tokio::spawn(admin::run(
            self.admin_listener,
            Arc::clone(&control),
            stopped.clone(),
        ));
        tracing::info!(
            listen = %self.local_addr,
            admin = %self.admin_addr,
            threads,
            "gateway serving"
        );

        shutdown.await;
        tracing::info!("shutting down: draining connections");
        let _ = stop.send(true);
        if let Some(hangups) = hangups {
            hangups.abort();
        }
        for worker in workers {
            // A worker that panicked has dropped its sender: nothing to wait for.
            let _ = worker.done.await;
        }
        let _ = admin.await;
        // Nothing uses the checks' verdicts once the listeners are gone.
        control.stop_checks();
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// Reloads the configuration on every SIGHUP.
async fn reload_on_hangup(
    control: Arc<control::Control>,
    mut hangups: tokio::signal::unix::Signal,
) {
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        // The outcome is logged and counted by the reload itself.
        let _ = control.reload_from_source().await;
    }
}
