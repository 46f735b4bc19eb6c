//! `scalestack bench`: flags of the load generator, mapped onto
//! `scalestack_bench::BenchSpec`, and `scalestack bench compare`. Reading
//! the scenario file and writing the reports are the only IO here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use scalestack_bench::{BenchReport, BenchSpec, Load, Protocol, Scenario, Stage};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    /// Target URL; `{id}` is replaced by a key per request (also `{uuid}`,
    /// `{seq}`, `{rand:A..B}`). With --scenario: the origin, overriding the
    /// scenario's `url`.
    #[arg(long)]
    url: Option<String>,
    /// A TOML file with a weighted mix of requests (see the crate docs of
    /// scalestack-bench); replaces --method, --body, --header, --keys, --dist.
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,
    /// Keys substituted for `{id}`, as FIRST..LAST (inclusive).
    #[arg(long, default_value = "1..1000")]
    keys: String,
    /// Key distribution: `uniform`, `zipf:S` (e.g. zipf:1.1; key FIRST is the
    /// hottest) or `hotspot:X/Y` (X% of the traffic on the first Y% of keys).
    #[arg(long, default_value = "uniform")]
    dist: String,
    /// Open model at a constant arrival rate (requests per second): latency
    /// counts from each request's due time. Without it (and --stages): the
    /// closed model, as fast as the connections go.
    #[arg(long, value_name = "RPS", conflicts_with = "stages")]
    rate: Option<f64>,
    /// Open model with stages: `START..END/DURATION` ramps and `RATE/DURATION`
    /// holds, comma-separated, e.g. `0..5000/30s,5000/60s,10000/60s`.
    /// Replaces --duration.
    #[arg(long)]
    stages: Option<String>,
    /// Concurrent keep-alive connections (open model: the most requests in
    /// flight; with --http2, times --streams).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// How long to send load, e.g. 20s or 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Load-generator threads; 0 means one per core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Speak HTTP/2 over cleartext TCP with prior knowledge (h2c).
    #[arg(long)]
    http2: bool,
    /// With --http2: concurrent streams per connection.
    #[arg(long, default_value_t = 1, requires = "http2")]
    streams: usize,
    /// HTTP method.
    #[arg(long, short = 'X', default_value = "GET")]
    method: String,
    /// Request body (sent with every request, as given).
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
    /// Seed of the random key streams, to repeat a run's exact keys.
    #[arg(long)]
    seed: Option<u64>,
    /// Also write the report as JSON to FILE (for `compare` and `plan --from`).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Also write a self-contained HTML report with charts to FILE.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// No live progress line (for CI and scripts).
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Print the differences between two JSON reports (a is the baseline).
    Compare {
        /// The baseline report.
        a: PathBuf,
        /// The report compared with it.
        b: PathBuf,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 500ms, 20s, 2m)"))
}

/// Reads a JSON report written by `scalestack bench --json`.
pub(crate) fn read_report(path: &Path) -> Result<BenchReport> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a report written by `scalestack bench --json`",
            path.display()
        )
    })
}

fn spec(args: &BenchArgs) -> Result<BenchSpec> {
    let scenario = match &args.scenario {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read --scenario {}", path.display()))?;
            Some(Scenario::from_toml(&text, &path.display().to_string())?)
        }
        None => None,
    };
    let url = match (&args.url, scenario.as_ref().and_then(|s| s.url.clone())) {
        (Some(url), _) => url.clone(),
        (None, Some(url)) => url,
        (None, None) if scenario.is_some() => {
            bail!("give --url or a `url` in the scenario file")
        }
        (None, None) => bail!("give --url (or --scenario FILE)"),
    };
    let mut spec = BenchSpec::new(url);
    spec.scenario = scenario;
    spec.keys = args.keys.parse().context("--keys")?;
    spec.dist = args.dist.parse().context("--dist")?;
    spec.method = args
        .method
        .to_ascii_uppercase()
        .parse()
        .with_context(|| format!("--method {:?} is not an HTTP method", args.method))?;
    spec.body = args.body.clone().map(bytes::Bytes::from);
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
    spec.load = match (args.rate, &args.stages) {
        (Some(rate), _) => Load::Rate(rate),
        (None, Some(stages)) => Load::Stages(Stage::parse_list(stages).context("--stages")?),
        (None, None) => Load::Closed,
    };
    if args.http2 {
        spec.protocol = Protocol::Http2 {
            streams: args.streams,
        };
    }
    spec.connections = args.connections;
    spec.duration = args.duration;
    spec.threads = args.threads;
    spec.timeout = args.timeout;
    spec.cpu_pids = args.cpu_pids.clone();
    spec.progress = !args.quiet;
    spec.seed = args.seed;
    Ok(spec)
}

/// Runs `scalestack bench`.
pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    if let Some(BenchCommand::Compare { a, b }) = &args.command {
        let (a, b) = (read_report(a)?, read_report(b)?);
        print!("{}", scalestack_bench::compare(&a, &b));
        return Ok(());
    }
    let spec = spec(args)?;
    let report = scalestack_bench::run(&spec)?;
    print!("{}", report.render_table());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).context("encode the report")?;
        std::fs::write(path, json).with_context(|| format!("write {}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, scalestack_bench::render_html(&report))
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
