//! The edge gateway: an HTTP/1.1 reverse proxy in front of the api servers.
//!
//! This crate owns the edge proxy of scalestack: the client listener, the
//! choice of an upstream endpoint for every request (round robin over the
//! endpoints currently healthy), pooled keep-alive connections to them,
//! retries when they are safe (see `error`), active and passive
//! health checking, and the gateway's own admin listener (`/health`,
//! `/metrics`).
//!
//! It must not know the reference service's domain (users, orders, products),
//! speak SQL, or talk to the cache, store or queue backends: every path of the
//! client port, `/health` and `/metrics` included, belongs to the upstreams and
//! is proxied untouched apart from hop-by-hop headers.
//!
//! The only public surface is [`Gateway`] and [`GatewayError`]; the modules
//! behind them (the upstream pool, the balancer, the health checker) are
//! internal so that a later, faster gateway can replace them freely.
//!
//! One request, end to end: `server` accepts the connection and hands each
//! request to `proxy`, which buffers the body (bounded by
//! `gateway.max_request_body`), rewrites the headers, asks the `upstream`
//! pool's balancer (`balance`) for a healthy endpoint and sends the request on a pooled
//! connection. A connection failure marks that endpoint down and tries the next
//! one; the response streams back to the client. `health` probes every
//! endpoint in the background and brings endpoints back.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use scalestack_config::{GatewayConfig, HealthCheckConfig};
use tokio::net::TcpListener;

mod admin;
mod balance;
mod error;
mod headers;
mod health;
mod observe;
mod proxy;
mod server;
mod upstream;

pub use error::GatewayError;

/// Value of the `component` and `instance` labels and of the health report
/// when the CLI has not installed the metrics recorder itself.
const COMPONENT: &str = "gateway";

/// A gateway whose listeners are bound and which is ready to [`serve`](Gateway::serve).
pub struct Gateway {
    listener: TcpListener,
    admin_listener: TcpListener,
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
    pool: Arc<upstream::Pool>,
    proxy: Arc<proxy::Proxy>,
    health_check: HealthCheckConfig,
    telemetry: &'static scalestack_telemetry::metrics::Metrics,
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field("local_addr", &self.local_addr)
            .field("admin_addr", &self.admin_addr)
            .field("endpoints", &self.pool.len())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Binds the client listener (`config.listen`) and the admin listener
    /// (`config.admin_listen`).
    ///
    /// The endpoints are checked first, so that a bad config is reported
    /// before any port is taken. Port 0 picks a free port; read it back with
    /// [`local_addr`](Gateway::local_addr) and [`admin_addr`](Gateway::admin_addr).
    /// If the caller has not installed the process's metrics recorder yet,
    /// this installs it (installing is idempotent).
    pub async fn bind(config: &GatewayConfig) -> Result<Gateway, GatewayError> {
        let telemetry = scalestack_telemetry::metrics::install(COMPONENT, COMPONENT);
        observe::describe();
        let pool = Arc::new(upstream::Pool::new(&config.upstream)?);
        let listener = bind_listener(config.listen, "gateway.listen").await?;
        let admin_listener = bind_listener(config.admin_listen, "gateway.admin_listen").await?;
        let local_addr = bound_addr(&listener, config.listen, "gateway.listen")?;
        let admin_addr = bound_addr(&admin_listener, config.admin_listen, "gateway.admin_listen")?;
        let proxy = Arc::new(proxy::Proxy::new(
            Arc::clone(&pool),
            config.max_request_body,
            config.upstream.request_timeout,
        ));
        Ok(Gateway {
            listener,
            admin_listener,
            local_addr,
            admin_addr,
            pool,
            proxy,
            health_check: config.health_check.clone(),
            telemetry,
        })
    }

    /// The address of the client listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the admin listener (`/health`, `/metrics`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Serves clients and the admin port until `shutdown` resolves, then stops
    /// accepting on both listeners and lets in-flight requests finish, waiting
    /// at most 10 s for them before returning.
    ///
    /// Active health checks run for as long as this does.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let checks = health::spawn_checks(&self.pool, &self.health_check);
        let admin = Arc::new(admin::Admin::new(Arc::clone(&self.pool), self.telemetry));
        tracing::info!(
            listen = %self.local_addr,
            admin = %self.admin_addr,
            endpoints = self.pool.len(),
            "gateway serving"
        );
        server::run(
            server::Listeners {
                client: self.listener,
                admin: self.admin_listener,
            },
            self.proxy,
            admin,
            shutdown,
        )
        .await;
        // Dropping the set aborts the health-check tasks: nothing uses their
        // verdicts once the listeners are gone.
        drop(checks);
        tracing::info!("gateway stopped");
        Ok(())
    }
}

async fn bind_listener(addr: SocketAddr, key: &'static str) -> Result<TcpListener, GatewayError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind { key, addr, source })
}

fn bound_addr(
    listener: &TcpListener,
    addr: SocketAddr,
    key: &'static str,
) -> Result<SocketAddr, GatewayError> {
    listener
        .local_addr()
        .map_err(|source| GatewayError::Bind { key, addr, source })
}
