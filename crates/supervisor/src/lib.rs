//! `scalestack up`: the process supervisor of the one-machine stack.
//!
//! This crate owns the process topology (api instances, worker, gateway),
//! starting each child as a separate OS process of the same binary, waiting
//! for it to report healthy, restarting it with backoff when it dies, and
//! stopping everything in order (gateway first, so no request reaches a
//! stopped api). It also owns the lifecycle signals every process obeys
//! ([`signal`]).
//!
//! It must not serve client traffic or hold domain logic: children do the
//! work; the supervisor only starts, watches and stops them. Its own
//! `/health` and `/metrics` report the children.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use scalestack_config::Config;

mod child;
pub mod probe;
pub mod signal;
mod status;

use child::{ChildSpec, Kind, Supervised};
pub use status::{ChildState, ChildStatus};

/// Counter of child restarts, by child.
pub const RESTARTS: &str = "scalestack_supervisor_restarts_total";
/// Gauge: 1 while a child is running, by child.
pub const CHILD_UP: &str = "scalestack_supervisor_child_up";

/// Why `up` could not start or keep the stack running.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] scalestack_config::ConfigError),
    /// A port the stack needs is taken by another process.
    #[error("{component}: cannot listen on {addr} ({key}): {source}")]
    PortInUse {
        /// The process that needs the port.
        component: String,
        /// The config key of the address.
        key: String,
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The store could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] scalestack_store::StoreError),
    /// A child could not be started.
    #[error("cannot start {child} ({exe}): {source}")]
    Spawn {
        /// The child, e.g. `api-0`.
        child: String,
        /// The program.
        exe: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A child exited or stayed unhealthy while the stack was starting.
    #[error("{child} did not start: {reason}")]
    StartFailed {
        /// The child.
        child: String,
        /// What happened (its own output above tells more).
        reason: String,
    },
}

/// The children of a configuration, in start order.
fn topology(config: &Config) -> Vec<ChildSpec> {
    let mut children: Vec<ChildSpec> = (0..config.api.instances)
        .map(|i| ChildSpec {
            name: format!("api-{i}"),
            kind: Kind::Api,
            args: vec!["api".into(), "--instance".into(), i.to_string()],
            url: format!("http://{}", config.api.instance_addr(i)),
            health: config.api.instance_addr(i),
        })
        .collect();
    children.push(ChildSpec {
        name: "worker".into(),
        kind: Kind::Worker,
        args: vec!["worker".into()],
        url: format!("http://{}", config.worker.listen),
        health: config.worker.listen,
    });
    children.push(ChildSpec {
        name: "gateway".into(),
        kind: Kind::Gateway,
        args: vec!["gateway".into()],
        url: format!("http://{}", config.gateway.listen),
        health: config.gateway.admin_listen,
    });
    children
}

/// Fails with the component, key and address of the first listen address
/// that another process holds, before any child starts.
fn preflight_ports(config: &Config) -> Result<(), SupervisorError> {
    for l in config.listeners() {
        if let Err(source) = std::net::TcpListener::bind(l.addr) {
            return Err(SupervisorError::PortInUse {
                component: l.component,
                key: l.key,
                addr: l.addr,
                source,
            });
        }
    }
    Ok(())
}

/// Runs the whole stack from `config` with `exe` (this binary) until
/// `shutdown` resolves, then stops every child.
pub async fn up(
    mut config: Config,
    exe: PathBuf,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SupervisorError> {
    config.validate()?;
    preflight_ports(&config)?;
    // Migrate once here, so that children never race to create the schema.
    let store = scalestack_store::Store::open(&config).await?;
    store.close().await;
    // Pools without endpoints (the default `api` pool) serve the api instances.
    let instances: Vec<_> = (0..config.api.instances)
        .map(|i| config.api.instance_addr(i))
        .collect();
    config.gateway.fill_empty_pools(&instances);
    describe_metrics();

    let config = Arc::new(config);
    let specs = topology(&config);
    let supervised = Supervised::new(config.clone(), exe, &specs);
    let status_server = status::serve(config.supervisor.listen, supervised.statuses()).await?;

    // Backends first, then the gateway once they answer.
    let (backends, gateway): (Vec<_>, Vec<_>) = specs.iter().partition(|s| s.kind != Kind::Gateway);
    let started = async {
        supervised.start_all(&backends).await?;
        supervised.start_all(&gateway).await
    };
    tokio::pin!(shutdown);
    let outcome = tokio::select! {
        result = started => Some(result),
        () = &mut shutdown => None,
    };
    match outcome {
        Some(Ok(())) => {
            print_banner(&config, &specs, &supervised);
            shutdown.await;
            tracing::info!("stopping the stack");
        }
        Some(Err(error)) => {
            supervised.stop_all(&specs).await;
            status_server.abort();
            return Err(error);
        }
        None => tracing::info!("interrupted while starting; stopping"),
    }
    supervised.stop_all(&specs).await;
    status_server.abort();
    tracing::info!("every child stopped");
    Ok(())
}

fn describe_metrics() {
    metrics::describe_counter!(RESTARTS, "Restarts of a child after it died, by child.");
    metrics::describe_gauge!(CHILD_UP, "1 while a child process is running, by child.");
}

fn print_banner(config: &Config, specs: &[ChildSpec], supervised: &Supervised) {
    let pids = supervised.pids();
    let pid_of = |name: &str| {
        pids.iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.to_string())
            .unwrap_or_default()
    };
    let mut out = String::new();
    out.push_str(&format!(
        "\nscalestack is up: {} api instance(s), {} user shard(s) + catalog on SQLite in {}\n\n",
        config.api.instances,
        config.store.shards.len(),
        config.data_dir.display()
    ));
    out.push_str(&format!(
        "  {:<11} {:<28} {:<30} {}\n",
        "process", "serves", "health & metrics", "pid"
    ));
    for spec in specs {
        let ops = format!("http://{}/health", spec.health);
        out.push_str(&format!(
            "  {:<11} {:<28} {:<30} {}\n",
            spec.name,
            spec.url,
            ops,
            pid_of(&spec.name)
        ));
    }
    out.push_str(&format!(
        "  {:<11} {:<28} {:<30} {}\n",
        "supervisor",
        "-",
        format!("http://{}/health", config.supervisor.listen),
        std::process::id()
    ));
    let gw = config.gateway.listen;
    out.push_str(&format!(
        "\nTry:  curl -s -X POST http://{gw}/users -d '{{\"email\":\"ada@example.com\",\"name\":\"Ada\"}}'\n      \
         curl -s http://{gw}/users/1\n\nCtrl-C stops every process.\n"
    ));
    println!("{out}");
}

/// How long `up` waits between health probes of a starting child.
pub(crate) const START_POLL: Duration = Duration::from_millis(50);
