//! The control plane: reloading routes and pools, and the active health
//! checks that go with each table.
//!
//! A reload builds a complete new table next to the running one (reusing the
//! endpoints that stay, see [`crate::table`]) and swaps it in with one atomic
//! store; workers pick it up on their next request. Connections, requests in
//! flight and pooled upstream connections of surviving endpoints are not
//! touched, so a reload drops nothing. Listen addresses and the thread count
//! cannot change without a restart; a reload that changes them says so and
//! keeps the old ones.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use scalestack_config::GatewayConfig;
use tokio::task::JoinSet;

use crate::error::GatewayError;
use crate::guard::Limits;
use crate::server::Shared;
use crate::table::Table;

/// Where a reload without a new config in hand reads one from (SIGHUP, or
/// an empty `POST /admin/reload`): the CLI re-reads its config file.
pub type ReloadSource = Arc<dyn Fn() -> Result<GatewayConfig, String> + Send + Sync>;

/// The running gateway's state that the admin API and signals act on.
pub(crate) struct Control {
    pub(crate) shared: Arc<Shared>,
    config: Mutex<GatewayConfig>,
    source: Option<ReloadSource>,
    checks: Mutex<Option<JoinSet<()>>>,
    /// Serialises reloads, so that two at once cannot interleave their swaps.
    reloading: tokio::sync::Mutex<()>,
    pub(crate) started: Instant,
    pub(crate) metrics: &'static scalestack_telemetry::metrics::Metrics,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("reload_source", &self.source.is_some())
            .finish_non_exhaustive()
    }
}

/// What a reload did.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Reloaded {
    pub(crate) version: u64,
    pub(crate) routes: usize,
    pub(crate) pools: usize,
    pub(crate) endpoints: usize,
    /// Settings that changed but need a restart to take effect.
    pub(crate) restart_needed: Vec<&'static str>,
}

/// The client limits of `config`.
pub(crate) fn client_limits(config: &GatewayConfig) -> Limits {
    Limits {
        max_header_bytes: config.client.max_header_bytes,
        max_headers: config.client.max_headers,
        header_read_timeout: config.client.header_read_timeout,
    }
}

impl Control {
    pub(crate) fn new(
        shared: Arc<Shared>,
        config: GatewayConfig,
        source: Option<ReloadSource>,
        metrics: &'static scalestack_telemetry::metrics::Metrics,
    ) -> Self {
        Self {
            shared,
            config: Mutex::new(config),
            source,
            checks: Mutex::new(None),
            reloading: tokio::sync::Mutex::new(()),
            started: Instant::now(),
            metrics,
        }
    }

    /// The admin token in force.
    pub(crate) fn admin_token(&self) -> String {
        self.config
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admin_token
            .clone()
    }

    /// Whether a reload source is set (SIGHUP and empty reload calls work).
    pub(crate) fn has_source(&self) -> bool {
        self.source.is_some()
    }

    /// (Re)starts the active health checks of the current table.
    pub(crate) fn start_checks(&self) {
        let (_, table) = self.shared.current();
        let tasks = crate::health::spawn_checks(&table);
        // Replacing the set drops, and so aborts, the old table's checks.
        *self.checks.lock().unwrap_or_else(PoisonError::into_inner) = Some(tasks);
    }

    /// Stops the health checks.
    pub(crate) fn stop_checks(&self) {
        self.checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Reloads from the reload source.
    pub(crate) async fn reload_from_source(&self) -> Result<Reloaded, GatewayError> {
        let Some(source) = &self.source else {
            return Err(GatewayError::Config(
                "no configuration source to reload from: send the new configuration in the request body"
                    .into(),
            ));
        };
        let config = source().map_err(GatewayError::Config)?;
        self.reload(config).await
    }

    /// Validates `config` and makes it the running configuration.
    pub(crate) async fn reload(&self, config: GatewayConfig) -> Result<Reloaded, GatewayError> {
        let _one_at_a_time = self.reloading.lock().await;
        let result = self.apply(config);
        crate::observe::reloaded(result.is_ok());
        match &result {
            Ok(done) => tracing::info!(
                version = done.version,
                routes = done.routes,
                pools = done.pools,
                endpoints = done.endpoints,
                "configuration reloaded"
            ),
            Err(error) => tracing::warn!(%error, "reload refused; the running configuration stays"),
        }
        result
    }

    fn apply(&self, mut config: GatewayConfig) -> Result<Reloaded, GatewayError> {
        config
            .validate()
            .map_err(|e| GatewayError::Config(e.to_string()))?;
        let mut current = self.config.lock().unwrap_or_else(PoisonError::into_inner);
        let mut restart_needed = Vec::new();
        if config.listen != current.listen {
            restart_needed.push("gateway.listen");
            config.listen = current.listen;
        }
        if config.admin_listen != current.admin_listen {
            restart_needed.push("gateway.admin_listen");
            config.admin_listen = current.admin_listen;
        }
        if config.threads != current.threads {
            restart_needed.push("gateway.threads");
            config.threads = current.threads;
        }
        let (_, old) = self.shared.current();
        let table = Table::build(&config, Some(&old))?;
        let reloaded = Reloaded {
            version: 0,
            routes: table.routes.len(),
            pools: table.pools.len(),
            endpoints: table.endpoints().count(),
            restart_needed,
        };
        let version = self.shared.swap(table, client_limits(&config));
        *current = config;
        drop(current);
        self.start_checks();
        Ok(Reloaded {
            version,
            ..reloaded
        })
    }
}
