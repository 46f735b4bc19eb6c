//! The `scalestack` binary: parses arguments, loads the configuration and
//! dispatches to the crate that does the work.
//!
//! It holds no logic of its own beyond that: `up` is the supervisor crate,
//! `api`, `worker` and `seed` the app crate, `gateway` the gateway crate,
//! `bench` the bench crate. Errors reach the user here, with short context.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use scalestack_config::{CONFIG_ENV, Config};

mod bench;
mod dlq;
mod plan;

#[derive(Debug, Parser)]
#[command(
    name = "scalestack",
    version,
    about = "The scale-out API system: gateway, api servers, cache, sharded store, worker, load generator."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct ConfigArgs {
    /// TOML configuration file; every key is optional (see `scalestack config default`).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole stack on this machine: api instances, worker and gateway
    /// as separate processes, restarted when they die. Ctrl-C stops everything.
    Up {
        #[command(flatten)]
        config: ConfigArgs,
        /// Number of api processes (overrides `api.instances`).
        #[arg(long, value_name = "N")]
        api_instances: Option<u16>,
        /// Data directory (overrides `data_dir`).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Run one api server (normally started by `up`).
    Api {
        #[command(flatten)]
        config: ConfigArgs,
        /// Which instance: listens on `api.listen` port + INSTANCE.
        #[arg(long, default_value_t = 0)]
        instance: u16,
    },
    /// Run the background worker (normally started by `up`).
    Worker {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Run the edge gateway (normally started by `up`).
    Gateway {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Fill the store with generated users and products.
    Seed {
        #[command(flatten)]
        config: ConfigArgs,
        /// Users to create (ids continue the global sequence; 1..=N on a fresh data set).
        #[arg(long, default_value_t = 0)]
        users: u64,
        /// Products to create.
        #[arg(long, default_value_t = 0)]
        products: u64,
        /// Do not draw a progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Drive HTTP load at a URL and report throughput and latency (open or
    /// closed model, scenarios, HTTP/2); `bench compare a.json b.json`.
    Bench(bench::BenchArgs),
    /// Capacity planning: instance counts and cost from load figures,
    /// calibrated by bench reports; `plan fit`, `plan queue`, `plan cache`.
    Plan(plan::PlanArgs),
    /// Inspect and repair the queue's dead-letter queue: list, show, redrive, purge.
    Dlq(dlq::DlqArgs),
    /// Inspect configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the default configuration, every key with its documentation.
    Default,
    /// Check a configuration file and report the first problem.
    Check {
        /// The file to check.
        file: PathBuf,
    },
    /// Print the effective configuration (file plus defaults) as TOML.
    Show {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

/// Loads the configuration: from the supervisor's environment variable when
/// started by `up`, else from `--config`, else the defaults.
fn load_config(args: &ConfigArgs) -> Result<Config> {
    let config = if let Ok(text) = std::env::var(CONFIG_ENV) {
        Config::from_toml_str(&text, CONFIG_ENV)?
    } else if let Some(path) = &args.config {
        Config::from_file(path)?
    } else {
        Config::default()
    };
    Ok(config)
}

fn runtime(threads: usize, name: &str) -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    builder
        .thread_name(name)
        .enable_all()
        .build()
        .context("start the async runtime")
}

/// Runs one server process (`api`, `worker`, `gateway`): validates the
/// config, sets up logging and metrics, builds the runtime with `threads`
/// workers and serves until a shutdown signal.
fn serve<'c, F, Fut>(
    component: &str,
    instance: &str,
    threads: usize,
    config: &'c Config,
    run: F,
) -> Result<()>
where
    F: FnOnce(&'c Config, Shutdown) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    config.validate()?;
    scalestack_telemetry::logging::init(&config.log);
    scalestack_telemetry::metrics::install(component, instance);
    let rt = runtime(threads, instance)?;
    let result = rt.block_on(run(
        config,
        Box::pin(scalestack_supervisor::signal::shutdown_signal()),
    ));
    // Background tasks (pool reapers, health checks) must not hold up the exit.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The shutdown future handed to a server.
type Shutdown = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up {
            config,
            api_instances,
            data_dir,
        } => {
            let mut config = load_config(&config)?;
            if let Some(n) = api_instances {
                config.api.instances = n;
            }
            if let Some(dir) = data_dir {
                config.data_dir = dir;
            }
            config.validate()?;
            scalestack_telemetry::logging::init(&config.log);
            scalestack_telemetry::metrics::install("supervisor", "supervisor");
            let exe =
                std::env::current_exe().context("find the scalestack binary to start children")?;
            let rt = runtime(2, "supervisor")?;
            rt.block_on(scalestack_supervisor::up(
                config,
                exe,
                scalestack_supervisor::signal::shutdown_signal(),
            ))?;
            Ok(())
        }
        Command::Api { config, instance } => {
            let config = load_config(&config)?;
            let name = format!("api-{instance}");
            serve(
                "api",
                &name,
                config.api.threads,
                &config,
                |config, shutdown| async move {
                    Ok(scalestack_app::api::run(config, instance, shutdown).await?)
                },
            )
        }
        Command::Worker { config } => {
            let config = load_config(&config)?;
            serve(
                "worker",
                "worker",
                config.worker.threads,
                &config,
                |config, shutdown| async move {
                    Ok(scalestack_app::worker::run(config, shutdown).await?)
                },
            )
        }
        Command::Gateway { config: args } => {
            let config = load_config(&args)?;
            serve(
                "gateway",
                "gateway",
                // The gateway runs a worker thread of its own per core
                // (gateway.threads); this runtime only serves its admin port
                // and health checks.
                1,
                &config,
                |config, shutdown| async move {
                    // SIGHUP and an empty admin reload re-read the configuration.
                    let reload: scalestack_gateway::ReloadSource = std::sync::Arc::new(move || {
                        load_config(&args)
                            .map(|config| config.gateway)
                            .map_err(|e| format!("{e:#}"))
                    });
                    let gateway = scalestack_gateway::Gateway::bind(&config.gateway)
                        .await?
                        .with_reload_source(reload);
                    tracing::info!(listen = %gateway.local_addr(), admin = %gateway.admin_addr(), "gateway serving");
                    Ok(gateway.serve(shutdown).await?)
                },
            )
        }
        Command::Seed {
            config,
            users,
            products,
            quiet,
        } => {
            let config = load_config(&config)?;
            config.validate()?;
            scalestack_telemetry::logging::init(&config.log);
            if users == 0 && products == 0 {
                bail!("nothing to seed: give --users N and/or --products N");
            }
            let rt = runtime(0, "seed")?;
            let report = rt
                .block_on(scalestack_app::seed::run(&config, users, products, !quiet))
                .context("seed the store")?;
            let secs = report.elapsed.as_secs_f64();
            let rows = (users + products) as f64;
            if report.users.is_empty() {
                println!("seeded {} products in {secs:.1}s", report.products);
            } else {
                println!(
                    "seeded users {}..={} and {} products in {secs:.1}s ({:.0} rows/s)",
                    report.users.start,
                    report.users.end - 1,
                    report.products,
                    rows / secs.max(1e-9)
                );
            }
            Ok(())
        }
        Command::Bench(args) => bench::run(&args),
        Command::Plan(args) => plan::run(args),
        Command::Dlq(args) => {
            let config = load_config(&args.config)?;
            config.validate()?;
            dlq::run(&config, args)
        }
        Command::Config { command } => match command {
            ConfigCommand::Default => {
                print!(
                    "{}",
                    scalestack_config::render::commented_toml(&Config::default())
                );
                Ok(())
            }
            ConfigCommand::Check { file } => {
                let config = Config::from_file(&file)?;
                config.validate()?;
                println!("{}: ok", file.display());
                Ok(())
            }
            ConfigCommand::Show { config } => {
                let config = load_config(&config)?;
                config.validate()?;
                print!("{}", config.to_toml());
                Ok(())
            }
        },
    }
}
