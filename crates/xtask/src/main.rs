//! Developer tasks of the scalestack workspace (`cargo xtask ...`).
//!
//! `test` is the one command that checks everything: it installs what the
//! tests need, then runs formatting, lints and every test. `bench <name>`
//! runs a benchmark side by side with its anchor (wrk, NGINX, ...), prints a
//! table and appends the figures and the command to `BENCHMARKS.md`.
//!
//! Nothing here ships: the product never depends on this crate.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod bench_cache;
mod bench_gateway;
mod bench_loadgen;
mod bench_queue;
mod bench_stack;
mod bench_store;
mod report;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "scalestack developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what the tests need, then check formatting, lints and run every test.
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run a benchmark and append its figures to BENCHMARKS.md.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// GET /users/{id} with Zipf keys through the gateway of the whole stack:
    /// `scalestack bench` and wrk as clients, CPU per request of every process.
    Stack(bench_stack::Args),
    /// Publish and consume msg/s of the queue's embedded and JetStream
    /// backends, against the raw async-nats client on the same nats-server;
    /// p50/p99 from an order to all three of its effects.
    Queue(bench_queue::Args),
    /// The cache tier: GET /users/{id} with Zipf keys through the gateway with
    /// L1 + L2, L2 only and no cache (store queries per 100 requests, RPS, CPU
    /// per request, invalidation time between instances), and reads/s of the
    /// L2 path against `redis-benchmark -t get` on the same redis-server.
    Cache(bench_cache::Args),
    /// `scalestack bench` against wrk and h2load on one nginx: requests per
    /// CPU-second, HTTP/2, open-model accuracy, optionally callgrind
    /// instructions per request.
    Loadgen(bench_loadgen::Args),
    /// The data tier on PostgreSQL: POST /orders per second on 1 and 2 shards
    /// against pgbench running the same transaction, and GET /users/{id}
    /// without the cache on the primary alone and with one replica.
    Store(bench_store::Args),
    /// The gateway against NGINX and HAProxy as reverse proxies in front of
    /// one upstream: RPS, p50/p99 and CPU per request at saturation (wrk and
    /// `scalestack bench`) and at a fixed rate, RSS with idle keep-alive clients.
    Gateway(bench_gateway::Args),
}

/// The workspace root (xtask lives in `crates/xtask`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

/// Runs a command in the workspace root, failing with its command line.
fn run(cmd: &mut Command) -> Result<()> {
    let line = format!("{cmd:?}");
    eprintln!("xtask: {line}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("start {line}"))?;
    if !status.success() {
        bail!("{line} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Debian packages the tests need, by the program that shows they are there.
/// (The walking skeleton's tests run on embedded SQLite only; PostgreSQL,
/// Redis and nats-server join this list with the issues that test on them.)
const TEST_PACKAGES: &[(&str, &str)] = &[
    // The queue's JetStream backend (crates/queue, testkit::nats).
    ("nats-server", "nats-server"),
    // The cache's L2 and outage tests (crates/cache, testkit::redis); the
    // cluster tests also need redis-cli, which is in redis-tools.
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    // The store's and the app's PostgreSQL tests (testkit::postgres): the
    // server programs are not on PATH, so their path is checked. The same
    // package brings pgbench, which `cargo xtask bench store` runs.
    ("/usr/lib/postgresql/15/bin/postgres", "postgresql"),
];

/// Installs a Debian package when its program is missing.
pub(crate) fn ensure_program(program: &str, package: &str) -> Result<()> {
    if Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    eprintln!("xtask: {program} is missing; installing Debian package {package}");
    let sudo = if is_root() { vec![] } else { vec!["sudo"] };
    let apt = |args: &[&str]| -> Result<()> {
        let mut cmd = Command::new(sudo.first().copied().unwrap_or("apt-get"));
        if !sudo.is_empty() {
            cmd.arg("apt-get");
        }
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut cmd)
    };
    if apt(&["install", "-y", "-q", package]).is_err() {
        apt(&["update", "-q"])?;
        apt(&["install", "-y", "-q", package])?;
    }
    Ok(())
}

fn is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || std::fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false)
}

fn test(no_lint: bool, args: &[String]) -> Result<()> {
    for (program, package) in TEST_PACKAGES {
        ensure_program(program, package)?;
    }
    if !no_lint {
        run(cargo().args(["fmt", "--all", "--", "--check"]))?;
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    run(cargo().args(["test", "--workspace"]).args(args))
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Test { no_lint, args } => test(no_lint, &args),
        Task::Bench { which } => match which {
            Bench::Stack(args) => bench_stack::run(&args),
            Bench::Loadgen(args) => bench_loadgen::run(&args),
            Bench::Queue(args) => bench_queue::run(&args),
            Bench::Cache(args) => bench_cache::run(&args),
            Bench::Store(args) => bench_store::run(&args),
            Bench::Gateway(args) => bench_gateway::run(&args),
        },
    }
}
