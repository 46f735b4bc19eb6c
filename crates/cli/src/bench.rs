//! `scalestack bench`: flags of the load generator, mapped onto
//! `scalestack_bench::BenchSpec`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Target URL; `{id}` is replaced by a key per request.
    #[arg(long)]
    url: String,
    /// Keys substituted for `{id}`, as FIRST..LAST (inclusive).
    #[arg(long, default_value = "1..1000")]
    keys: String,
    /// Key distribution: `uniform` or `zipf:S` (e.g. zipf:1.1; key FIRST is the hottest).
    #[arg(long, default_value = "uniform")]
    dist: String,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// How long to send load, e.g. 20s or 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Load-generator threads; 0 means one per core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// HTTP method.
    #[arg(long, short = 'X', default_value = "GET")]
    method: String,
    /// Request body (sent with every request).
    #[arg(long, short = 'd')]
    body: Option<String>,
    /// Extra header as `Name: value`; repeatable.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Process whose CPU time (with its descendants) is reported per request;
    /// repeatable. Give the pid of `scalestack up` to cover the whole stack.
    #[arg(long = "cpu-pid", value_name = "PID")]
    cpu_pids: Vec<u32>,
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// No live progress line.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 500ms, 20s, 2m)"))
}

/// Runs `scalestack bench`.
pub(crate) fn run(args: BenchArgs) -> Result<()> {
    let mut spec = scalestack_bench::BenchSpec::new(args.url);
    spec.keys = args.keys.parse().context("--keys")?;
    spec.dist = args.dist.parse().context("--dist")?;
    spec.method = args
        .method
        .to_ascii_uppercase()
        .parse()
        .with_context(|| format!("--method {:?} is not an HTTP method", args.method))?;
    spec.body = args.body.map(bytes::Bytes::from);
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("--header {h:?} must look like `Name: value`"))?;
        let name: http::HeaderName = name
            .trim()
            .parse()
            .with_context(|| format!("--header {h:?}: bad name"))?;
        let value: http::HeaderValue = value
            .trim()
            .parse()
            .with_context(|| format!("--header {h:?}: bad value"))?;
        spec.headers.push((name, value));
    }
    spec.connections = args.connections;
    spec.duration = args.duration;
    spec.threads = args.threads;
    spec.timeout = args.timeout;
    spec.cpu_pids = args.cpu_pids;
    spec.progress = !args.quiet;
    let report = scalestack_bench::run(&spec)?;
    print!("{}", report.render_table());
    if let Some(path) = args.json {
        let json = serde_json::to_string_pretty(&report).context("encode the report")?;
        std::fs::write(&path, json).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
