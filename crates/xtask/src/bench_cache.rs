//! `cargo xtask bench cache`: what the cache tier buys, measured through the
//! whole stack, and how close its L2 path comes to Redis's own client.
//!
//! 1. **Through the gateway.** Seeds `--users` users (100,000) once, starts a
//!    redis-server, then starts the whole stack from the release binary four
//!    times on the same data: with L1 + L2 (Redis standalone), with the L2
//!    only (`cache.l1_max_bytes = 0`), with no cache (`cache.enabled =
//!    false`), and, for reference, with the embedded default (L1 only,
//!    invalidation over UDP). Each time `scalestack bench` drives
//!    `GET /users/{id}` with Zipf(1.1) keys through the gateway, first to warm
//!    up, then measured. For each set-up it reports (a) store queries per 100
//!    requests (the api instances' `scalestack_store_queries_total{op=
//!    "get_user"}` read before and after the measured run; the issue's target
//!    is at most 10 with the cache), (b) RPS, latency and CPU per request of
//!    the stack's process tree and of redis-server, with their ratios to the
//!    run without a cache, and the Redis calls per second and breaker
//!    openings of the api instances during the run.
//!
//!    After each measured run of a set-up with an L1, an invalidation probe
//!    times how long a write takes to reach the other instance: user `u` is
//!    read on api-1 (so that api-1 holds it in L1), patched on api-0, and
//!    read on api-1 in a tight loop until the new name shows; the time from
//!    api-0's acknowledgement to the first fresh read is recorded (the issue:
//!    within 100 ms, over Redis pub/sub and in embedded mode).
//! 2. **The L2 ceiling.** The same Redis, alone: reads per second through the
//!    cache's L2 path (L1 off, so each read is one pipelined GET + PTTL
//!    through the breaker; the `l2_ceiling` bench of `scalestack-cache`,
//!    release build) against `redis-benchmark -t get` with the same number of
//!    connections, keys and value size, one after the other; with the
//!    redis-server CPU per operation each client causes and each client's own.
//!
//! `--smoke` shrinks every size and duration so that the whole command proves
//! it works in about a minute once built (it appends nothing).

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use scalestack_config::{Config, L2Mode};
use scalestack_telemetry::procfs;
use scalestack_testkit::http::Client;
use scalestack_testkit::redis::RedisServer;
use scalestack_testkit::stack::{Stack, test_config};

use crate::report;
use crate::{cargo, ensure_program, root, run as run_cmd};

/// Options of the cache benchmark.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Users seeded; the keys of `GET /users/{id}` are 1..=users.
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Connections of `scalestack bench` through the gateway.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds of measured load through the gateway, per cache set-up.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Seconds of warm-up before each measured run through the gateway.
    #[arg(long, default_value_t = 10)]
    warmup: u64,
    /// Api instances of the stack (the invalidation probe needs two).
    #[arg(long, default_value_t = 2)]
    api_instances: u16,
    /// Writes timed by the invalidation probe, per set-up with an L1.
    #[arg(long, default_value_t = 50)]
    probes: u64,
    /// Concurrent callers of the L2 path, and connections of redis-benchmark.
    #[arg(long, default_value_t = 50)]
    l2_callers: usize,
    /// Keys read at random in the L2 ceiling run (both clients).
    #[arg(long, default_value_t = 10_000)]
    l2_keys: u64,
    /// Bytes per value in the L2 ceiling run.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Seconds of measured load through the L2 path.
    #[arg(long, default_value_t = 10)]
    l2_seconds: u64,
    /// Seconds of warm-up before it.
    #[arg(long, default_value_t = 2)]
    l2_warmup: u64,
    /// GET requests redis-benchmark sends (pick about `l2_seconds` worth).
    #[arg(long, default_value_t = 1_000_000)]
    requests: u64,
    /// A quick run that proves the command works: 2,000 users, 2 s per
    /// set-up, 5 probe writes, 1 s for the L2 path, 20,000 redis-benchmark
    /// requests; implies `--no-append`.
    #[arg(long)]
    smoke: bool,
    /// Print only; do not append to BENCHMARKS.md.
    #[arg(long)]
    no_append: bool,
}

impl Args {
    /// The options in effect: `--smoke` caps sizes and durations.
    fn resolved(&self) -> Args {
        if !self.smoke {
            return self.clone();
        }
        Args {
            users: self.users.min(2_000),
            connections: self.connections.min(16),
            seconds: 2,
            warmup: 1,
            l2_callers: self.l2_callers.min(16),
            l2_keys: self.l2_keys.min(1_000),
            l2_seconds: 1,
            l2_warmup: 1,
            requests: 20_000,
            probes: self.probes.min(5),
            no_append: true,
            ..self.clone()
        }
    }
}

// === through the gateway ===

/// The cache configurations compared through the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// The embedded default: the L1 alone, invalidations over UDP.
    L1Only,
    /// The default L1 plus the Redis L2.
    L1AndL2,
    /// The Redis L2 alone (`cache.l1_max_bytes = 0`).
    L2Only,
    /// `cache.enabled = false`: every read goes to the store.
    NoCache,
}

impl Setup {
    const ALL: [Setup; 4] = [Setup::L1AndL2, Setup::L2Only, Setup::NoCache, Setup::L1Only];

    fn label(self) -> &'static str {
        match self {
            Setup::L1Only => "L1 only (embedded)",
            Setup::L1AndL2 => "L1 + L2",
            Setup::L2Only => "L2 only",
            Setup::NoCache => "no cache",
        }
    }

    /// Whether api instances hold values in their own memory (and so need
    /// invalidations from the others).
    fn has_l1(self) -> bool {
        matches!(self, Setup::L1Only | Setup::L1AndL2)
    }

    fn apply(self, config: &mut Config, redis_url: &str) {
        let cache = &mut config.cache;
        match self {
            Setup::NoCache => {
                cache.enabled = false;
                return;
            }
            Setup::L1Only => {
                cache.enabled = true;
                cache.l2.mode = L2Mode::Off;
                return;
            }
            Setup::L1AndL2 | Setup::L2Only => {}
        }
        cache.enabled = true;
        cache.l2.mode = L2Mode::Standalone;
        cache.l2.urls = vec![redis_url.to_owned()];
        if self == Setup::L2Only {
            cache.l1_max_bytes = 0;
        }
    }
}

/// One set-up's measured run through the gateway.
struct StackRow {
    setup: Setup,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    queries_per_100: f64,
    stack_cpu_us: f64,
    redis_cpu_us: f64,
    redis_calls_per_sec: f64,
    breaker_opens: f64,
    errors: u64,
    /// Write-to-fresh-read times on the other instance, sorted.
    invalidation: Vec<Duration>,
}

impl StackRow {
    fn cpu_us(&self) -> f64 {
        self.stack_cpu_us + self.redis_cpu_us
    }
}

// Series read from the api instances' `/metrics` (named by the store's
// `QUERIES` and the cache's `metrics` constants; xtask links neither crate).
const STORE_QUERIES: &str = "scalestack_store_queries_total";
const L2_CALLS: &str = "scalestack_cache_l2_duration_seconds_count";
const BREAKER_TRANSITIONS: &str = "scalestack_cache_l2_breaker_transitions_total";

/// Counters of every api instance that the comparison needs.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    user_queries: f64,
    redis_calls: f64,
    breaker_opens: f64,
}

/// The samples of metric `name` in a Prometheus text exposition whose
/// labels contain every one of `labels` (e.g. `op="get_user"`), summed.
fn sum_samples(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            let (series, value) = rest.rsplit_once(' ')?;
            labels
                .iter()
                .all(|want| series.contains(want))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The comparison's counters, summed over every api instance's `/metrics`.
async fn counters(client: &Client, stack: &Stack, instances: u16) -> Result<Counters> {
    let mut c = Counters::default();
    for i in 0..instances {
        let url = format!("{}/metrics", stack.api_url(i));
        let text = client
            .get(&url)
            .await
            .map_err(|e| anyhow::anyhow!("scrape {url}: {e}"))?
            .text();
        c.user_queries += sum_samples(&text, STORE_QUERIES, &["op=\"get_user\""]);
        c.redis_calls += sum_samples(&text, L2_CALLS, &[]);
        c.breaker_opens += sum_samples(&text, BREAKER_TRANSITIONS, &["to=\"open\""]);
    }
    Ok(c)
}

/// CPU time redis-server has used since it started.
fn redis_cpu(server: &RedisServer) -> Duration {
    server
        .pid()
        .and_then(|pid| procfs::stat(pid).ok())
        .map(|s| s.cpu)
        .unwrap_or_default()
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let args = &args.resolved();
    ensure_program("redis-server", "redis-server")?;
    ensure_program("redis-benchmark", "redis-tools")?;
    run_cmd(cargo().args(["build", "--release", "-p", "scalestack-cli"]))?;
    let l2_bench = build_l2_bench()?;
    let exe = root().join("target/release/scalestack");
    let server = RedisServer::start().map_err(anyhow::Error::msg)?;

    let dir = tempfile::tempdir().context("create a temporary directory")?;
    let mut base = test_config(dir.path(), args.api_instances);
    base.log.level = "warn".into();
    base.gateway.health_check = Default::default();
    let seed_path = dir.path().join("seed.toml");
    std::fs::write(&seed_path, base.to_toml())?;
    let seed_start = std::time::Instant::now();
    run_cmd(Command::new(&exe).args([
        "seed",
        "--config",
        seed_path.to_str().context("a UTF-8 temporary path")?,
        "--users",
        &args.users.to_string(),
        "--products",
        "100",
        "--quiet",
    ]))?;
    let seed_secs = seed_start.elapsed().as_secs_f64();

    let rt = tokio::runtime::Runtime::new()?;
    let mut rows = Vec::new();
    for setup in Setup::ALL {
        let mut config = base.clone();
        setup.apply(&mut config, &server.url());
        // Every set-up starts with an empty L2 and warms up on its own.
        server
            .cli(&["FLUSHALL"])
            .map_err(anyhow::Error::msg)
            .context("empty the L2")?;
        rows.push(rt.block_on(through_gateway(
            &exe,
            dir.path(),
            config,
            setup,
            args,
            &server,
        ))?);
    }
    drop(rt);

    let (ours, anchor) = l2_ceiling(args, &server, &l2_bench)?;
    let table = render(&rows, &[ours, anchor]);
    println!("{table}");
    if !args.no_append {
        append(args, &table, seed_secs)?;
    }
    Ok(())
}

/// Starts the stack with `config`, warms it up, measures one run of
/// `scalestack bench` through the gateway, and stops it.
async fn through_gateway(
    exe: &Path,
    dir: &Path,
    config: Config,
    setup: Setup,
    args: &Args,
    redis: &RedisServer,
) -> Result<StackRow> {
    eprintln!("xtask: the stack with {}", setup.label());
    let stack = Stack::start(exe, config, dir, &[])
        .await
        .map_err(anyhow::Error::msg)?;
    let load = report::user_reads(&stack.gateway_url(), args.users, args.connections);
    let result = async {
        eprintln!("xtask: warming up for {} s", args.warmup);
        report::release_bench(exe, dir, &load, args.warmup, None)?;
        let client = Client::new(Duration::from_secs(5));
        let before = counters(&client, &stack, args.api_instances).await?;
        let redis_before = redis_cpu(redis);
        eprintln!("xtask: measuring for {} s", args.seconds);
        let report = report::release_bench(exe, dir, &load, args.seconds, Some(stack.pid()))?;
        let redis_used = redis_cpu(redis).saturating_sub(redis_before);
        let after = counters(&client, &stack, args.api_instances).await?;
        let invalidation = if setup.has_l1() && args.api_instances >= 2 {
            eprintln!("xtask: invalidation probe, {} writes", args.probes);
            invalidation_probe(&stack, args.users, args.probes)?
        } else {
            Vec::new()
        };
        let requests = report.requests.max(1) as f64;
        Ok::<_, anyhow::Error>(StackRow {
            setup,
            rps: report.rps,
            p50_ms: report.latency.p50_us as f64 / 1e3,
            p99_ms: report.latency.p99_us as f64 / 1e3,
            queries_per_100: (after.user_queries - before.user_queries) * 100.0 / requests,
            stack_cpu_us: report
                .target_cpu
                .as_ref()
                .and_then(|c| c.us_per_request)
                .unwrap_or(f64::NAN),
            redis_cpu_us: redis_used.as_secs_f64() * 1e6 / requests,
            redis_calls_per_sec: (after.redis_calls - before.redis_calls)
                / report.elapsed_s.max(1e-9),
            breaker_opens: after.breaker_opens - before.breaker_opens,
            errors: report.error_responses() + report.errors.total(),
            invalidation,
        })
    }
    .await;
    let stopped = stack.stop().await;
    let row = result?;
    match stopped {
        Ok(status) if status.success() => Ok(row),
        Ok(status) => bail!("the stack with {} exited with {status}", setup.label()),
        Err(e) => bail!("stop the stack with {}: {e}", setup.label()),
    }
}

/// One HTTP/1.1 exchange on a new connection (`Connection: close`): the
/// status code and the whole response as text. The probe's writes need a
/// PATCH, which the shared test client does not send, and a fresh
/// connection per request keeps every read independent.
fn exchange(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .with_context(|| format!("read the response to {method} {path}"))?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{method} {path}: not an HTTP response: {response:?}"))?;
    Ok((status, response))
}

/// Longest wait for a write to show on the other instance before the probe
/// gives up on it (and records this much).
const PROBE_PATIENCE: Duration = Duration::from_secs(5);

/// Times `rounds` writes on api-0 until api-1 serves them (see the module
/// documentation); returns the times sorted.
fn invalidation_probe(stack: &Stack, users: u64, rounds: u64) -> Result<Vec<Duration>> {
    let (writer, reader) = (
        stack.config.api.instance_addr(0),
        stack.config.api.instance_addr(1),
    );
    let mut times = Vec::new();
    for round in 0..rounds.min(users) {
        // Cold ids from the end of the key range, one per write.
        let path = format!("/users/{}", users - round);
        for _ in 0..2 {
            let (status, text) = exchange(reader, "GET", &path, "")?;
            if status != 200 {
                bail!("GET {path} on api-1: {text}");
            }
        }
        let name = format!("probe {round} {}", std::process::id());
        let (status, text) = exchange(writer, "PATCH", &path, &format!(r#"{{"name":"{name}"}}"#))?;
        if status != 200 {
            bail!("PATCH {path} on api-0: {text}");
        }
        let acknowledged = Instant::now();
        let wanted = format!(r#""name":"{name}""#);
        loop {
            let (_, text) = exchange(reader, "GET", &path, "")?;
            if text.contains(&wanted) {
                times.push(acknowledged.elapsed());
                break;
            }
            if acknowledged.elapsed() > PROBE_PATIENCE {
                times.push(PROBE_PATIENCE);
                break;
            }
        }
    }
    times.sort();
    Ok(times)
}

// === the L2 ceiling ===

/// Builds the `l2_ceiling` bench of `scalestack-cache` (release) and returns
/// its executable, which then runs directly: no cargo process waits for a
/// build lock or checks freshness while it measures.
fn build_l2_bench() -> Result<PathBuf> {
    eprintln!("xtask: building the l2_ceiling bench (release)");
    let out = cargo()
        .args([
            "bench",
            "-p",
            "scalestack-cache",
            "--bench",
            "l2_ceiling",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(root())
        .stderr(Stdio::inherit())
        .output()
        .context("build the l2_ceiling bench")?;
    if !out.status.success() {
        bail!("building the l2_ceiling bench failed");
    }
    bench_executable(&String::from_utf8_lossy(&out.stdout), "l2_ceiling")
        .context("cargo named no executable for the l2_ceiling bench")
}

/// The executable of bench `name` in cargo's JSON messages.
fn bench_executable(messages: &str, name: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

/// A client of the L2 ceiling comparison.
struct Row {
    client: &'static str,
    ops_per_sec: f64,
    server_cpu_us: f64,
    client_cpu_us: f64,
}

/// The cache's L2 path, then `redis-benchmark -t get`, on `server`.
fn l2_ceiling(args: &Args, server: &RedisServer, l2_bench: &Path) -> Result<(Row, Row)> {
    server
        .cli(&["FLUSHALL"])
        .map_err(anyhow::Error::msg)
        .context("empty Redis")?;
    eprintln!(
        "xtask: cache L2 path for {} s after {} s of warm-up",
        args.l2_seconds, args.l2_warmup
    );
    let before = redis_cpu(server);
    let out = Command::new(l2_bench)
        .env("L2_BENCH_URL", server.url())
        .env("L2_BENCH_CALLERS", args.l2_callers.to_string())
        .env("L2_BENCH_KEYS", args.l2_keys.to_string())
        .env("L2_BENCH_VALUE_BYTES", args.value_bytes.to_string())
        .env("L2_BENCH_SECONDS", args.l2_seconds.to_string())
        .env("L2_BENCH_WARMUP", args.l2_warmup.to_string())
        .current_dir(root())
        .output()
        .context("run the l2_ceiling bench")?;
    let server_cpu = redis_cpu(server).saturating_sub(before);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "the l2_ceiling bench failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let result = parse_result(&text).context("the l2_ceiling bench printed no RESULT line")?;
    if result.misses > 0 {
        bail!(
            "{} of {} reads missed L2: the measurement is not of L2 hits",
            result.misses,
            result.ops
        );
    }
    // Warm-up reads also cost the server CPU; scale its CPU to the measured share.
    let measured_share = args.l2_seconds as f64 / (args.l2_seconds + args.l2_warmup) as f64;
    let ours = Row {
        client: "scalestack cache L2 read (GET+PTTL)",
        ops_per_sec: result.ops as f64 / result.seconds,
        server_cpu_us: server_cpu.as_secs_f64() * measured_share * 1e6 / result.ops as f64,
        client_cpu_us: result.client_cpu_seconds * 1e6 / result.ops as f64,
    };

    eprintln!("xtask: redis-benchmark -t get, {} requests", args.requests);
    let port = server.port().to_string();
    let common = format!(
        "redis-benchmark -h 127.0.0.1 -p {port} -c {} -r {} -d {}",
        args.l2_callers, args.l2_keys, args.value_bytes
    );
    // Fill the key space redis-benchmark reads (`key:__rand_int__`) first.
    run_cmd(Command::new("bash").args([
        "-c",
        &format!("{common} -t set -n {} -q > /dev/null", args.l2_keys * 5),
    ]))?;
    let before = redis_cpu(server);
    let out = Command::new("bash")
        .args([
            "-c",
            &format!("{common} -t get -n {} --csv; times", args.requests),
        ])
        .output()
        .context("run redis-benchmark")?;
    let server_cpu = redis_cpu(server).saturating_sub(before);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "redis-benchmark failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rps = parse_redis_benchmark_csv(&text).context("redis-benchmark printed no GET row")?;
    let client_cpu = bash_times_children(&text).unwrap_or(f64::NAN);
    let anchor = Row {
        client: "redis-benchmark -t get",
        ops_per_sec: rps,
        server_cpu_us: server_cpu.as_secs_f64() * 1e6 / args.requests as f64,
        client_cpu_us: client_cpu * 1e6 / args.requests as f64,
    };
    Ok((ours, anchor))
}

#[derive(Debug, PartialEq)]
struct L2Result {
    ops: u64,
    seconds: f64,
    client_cpu_seconds: f64,
    misses: u64,
}

fn parse_result(text: &str) -> Option<L2Result> {
    let line = text.lines().find(|l| l.starts_with("RESULT "))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    Some(L2Result {
        ops: field("ops")?.parse().ok()?,
        seconds: field("seconds")?.parse().ok()?,
        client_cpu_seconds: field("client_cpu_seconds")?.parse().ok()?,
        misses: field("misses")?.parse().ok()?,
    })
}

/// The requests per second of the GET row of `redis-benchmark --csv`.
fn parse_redis_benchmark_csv(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("\"GET\""))?;
    line.split(',').nth(1)?.trim_matches('"').parse().ok()
}

/// bash's `times`: the second line is the user and system time of its children.
fn bash_times_children(text: &str) -> Option<f64> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains('m') && l.trim_end().ends_with('s'))?;
    Some(line.split_whitespace().map(bash_secs).sum())
}

/// `0m1.234s` → seconds.
fn bash_secs(v: &str) -> f64 {
    let Some((m, s)) = v.trim_end_matches('s').split_once('m') else {
        return 0.0;
    };
    m.parse::<f64>().unwrap_or(0.0) * 60.0 + s.parse::<f64>().unwrap_or(0.0)
}

// === report ===

/// The issue's target: at most this many store queries per 100 requests
/// with the cache (the seeds' "90% fewer queries").
const QUERY_TARGET: f64 = 10.0;

fn render(stack: &[StackRow], ceiling: &[Row]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| cache | RPS | p50 ms | p99 ms | store queries / 100 req | stack CPU µs/req | redis CPU µs/req | Redis calls/s | L2 breaker opened | errors |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in stack {
        let _ = writeln!(
            t,
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.0} | {:.0} | {} |",
            r.setup.label(),
            r.rps,
            r.p50_ms,
            r.p99_ms,
            r.queries_per_100,
            r.stack_cpu_us,
            r.redis_cpu_us,
            r.redis_calls_per_sec,
            r.breaker_opens,
            r.errors
        );
    }
    if let Some(base) = stack.iter().find(|r| r.setup == Setup::NoCache) {
        let _ = writeln!(t);
        for r in stack.iter().filter(|r| r.setup != Setup::NoCache) {
            let _ = writeln!(
                t,
                "{} / no cache: RPS {:.2}×, CPU per request (stack + redis-server) {:.2}×.",
                r.setup.label(),
                r.rps / base.rps,
                r.cpu_us() / base.cpu_us()
            );
        }
    }
    if let Some(r) = stack.iter().find(|r| r.setup == Setup::L1AndL2) {
        let verdict = if r.queries_per_100 <= QUERY_TARGET {
            "met"
        } else {
            "missed"
        };
        let _ = writeln!(
            t,
            "Store queries per 100 requests with L1 + L2: {:.2} (target ≤ {QUERY_TARGET:.0}: {verdict}).",
            r.queries_per_100
        );
    }

    let probed: Vec<&StackRow> = stack
        .iter()
        .filter(|r| !r.invalidation.is_empty())
        .collect();
    if !probed.is_empty() {
        let _ = writeln!(
            t,
            "\n| invalidation (write on api-0 → fresh read on api-1) | writes | p50 ms | p90 ms | max ms | over 100 ms |"
        );
        let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|");
        for r in probed {
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            let at = |q: f64| {
                let i = ((r.invalidation.len() - 1) as f64 * q).round() as usize;
                ms(r.invalidation[i])
            };
            let over = r
                .invalidation
                .iter()
                .filter(|d| **d > Duration::from_millis(100))
                .count();
            let _ = writeln!(
                t,
                "| {} | {} | {:.2} | {:.2} | {:.2} | {} |",
                r.setup.label(),
                r.invalidation.len(),
                at(0.5),
                at(0.9),
                at(1.0),
                over
            );
        }
    }

    let _ = writeln!(
        t,
        "\n| L2 ceiling client | ops/s | redis-server CPU µs/op | client CPU µs/op |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|");
    for r in ceiling {
        let _ = writeln!(
            t,
            "| {} | {:.0} | {:.2} | {:.2} |",
            r.client, r.ops_per_sec, r.server_cpu_us, r.client_cpu_us
        );
    }
    if let [a, b] = ceiling {
        let _ = writeln!(
            t,
            "\nRatios cache L2 path / redis-benchmark: ops/s {:.2}×, redis-server CPU per op {:.2}×, client CPU per op {:.2}×",
            a.ops_per_sec / b.ops_per_sec,
            a.server_cpu_us / b.server_cpu_us,
            a.client_cpu_us / b.client_cpu_us
        );
        if let Some(l2) = stack.iter().find(|r| r.setup == Setup::L2Only) {
            let _ = writeln!(
                t,
                "The api instances' Redis calls through the gateway with the L2 only: {:.0}/s, {:.2}× the ceiling of redis-benchmark.",
                l2.redis_calls_per_sec,
                l2.redis_calls_per_sec / b.ops_per_sec
            );
        }
    }
    t
}

fn append(args: &Args, table: &str, seed_secs: f64) -> Result<()> {
    let machine = report::machine();
    let date = report::today();
    let mut text = String::new();
    let _ = write!(
        text,
        "\n## Cache tier: GET /users/{{id}} through the gateway, and the L2 ceiling ({date})\n\n\
         Machine: {machine}; the stack, redis-server 7 (Debian), the load generator \
         and the seeder share it.\n\
         Stack: release build, {} api instances, 4 SQLite shards + catalog, seeded with {} users \
         in {seed_secs:.1} s; started four times on the same data: L1 + L2 (the default 64 MiB \
         TinyLFU L1, Redis standalone), L2 only (`cache.l1_max_bytes = 0`), no cache \
         (`cache.enabled = false`) and the embedded default (L1 only, UDP invalidation); \
         Redis emptied before each.\n\
         Load: `scalestack bench` (release), `GET /users/{{id}}` with Zipf(1.1) keys over 1..={}, \
         {} connections through the gateway, {} s measured after {} s of warm-up per set-up. \
         Store queries: the api instances' `scalestack_store_queries_total{{op=\"get_user\"}}` \
         over the measured run. Stack CPU: the supervisor's process tree; redis-server's CPU \
         apart. Invalidation: {} writes per set-up with an L1, each timed from api-0's \
         acknowledgement of a PATCH to the first read on api-1 (which held the old value) \
         that shows it, polling on fresh connections, after the load.\n\
         L2 ceiling: `Resource::get_or_load` with the L1 off (one pipelined GET + PTTL per read \
         through the breaker), {} callers on a 2-thread Tokio runtime, {} s after {} s of \
         warm-up, against `redis-benchmark -t get -c {} -r {} -d {} -n {}` on the same server.\n\n\
         Command: `cargo xtask bench cache --users {} --connections {} --seconds {} --warmup {} \
         --l2-seconds {} --requests {}`\n\n{table}",
        args.api_instances,
        args.users,
        args.users,
        args.connections,
        args.seconds,
        args.warmup,
        args.probes,
        args.l2_callers,
        args.l2_seconds,
        args.l2_warmup,
        args.l2_callers,
        args.l2_keys,
        args.value_bytes,
        args.requests,
        args.users,
        args.connections,
        args.seconds,
        args.warmup,
        args.l2_seconds,
        args.requests,
    );
    report::append(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_bench_and_redis_benchmark_outputs() {
        let r = parse_result(
            "noise\nRESULT ops=1000 seconds=2.000 client_cpu_seconds=0.500 misses=0\n",
        )
        .unwrap();
        assert_eq!(
            r,
            L2Result {
                ops: 1000,
                seconds: 2.0,
                client_cpu_seconds: 0.5,
                misses: 0
            }
        );
        let csv = "\"test\",\"rps\",\"avg_latency_ms\"\n\"GET\",\"98765.43\",\"0.3\"\n";
        assert_eq!(parse_redis_benchmark_csv(csv), Some(98765.43));
        assert!(
            (bash_times_children("0m0.1s 0m0.2s\n0m1.5s 0m0.5s\n").unwrap() - 2.0).abs() < 1e-9
        );
    }

    #[test]
    fn finds_the_bench_executable_in_cargo_messages() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"scalestack_cache"},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"l2_ceiling"},"executable":"/t/l2_ceiling-1"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(
            bench_executable(messages, "l2_ceiling"),
            Some(PathBuf::from("/t/l2_ceiling-1"))
        );
        assert_eq!(bench_executable(messages, "other"), None);
    }

    #[test]
    fn sums_the_samples_of_one_series_by_label() {
        let text = "# TYPE scalestack_store_queries_total counter\n\
            scalestack_store_queries_total{db=\"shard-0\",op=\"get_user\"} 10\n\
            scalestack_store_queries_total{db=\"shard-1\",op=\"get_user\"} 5\n\
            scalestack_store_queries_total{db=\"catalog\",op=\"get_product\"} 7\n\
            scalestack_store_queries_total_extra{op=\"get_user\"} 100\n\
            scalestack_cache_l2_duration_seconds_count{op=\"get\"} 3\n\
            scalestack_cache_l2_duration_seconds_count 4\n";
        assert_eq!(sum_samples(text, STORE_QUERIES, &["op=\"get_user\""]), 15.0);
        assert_eq!(sum_samples(text, STORE_QUERIES, &[]), 22.0);
        assert_eq!(sum_samples(text, L2_CALLS, &[]), 7.0);
        assert_eq!(sum_samples(text, BREAKER_TRANSITIONS, &[]), 0.0);
    }

    #[test]
    fn smoke_caps_sizes_and_never_appends() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let a = Cli::parse_from(["x", "--smoke"]).args.resolved();
        assert_eq!((a.users, a.seconds, a.no_append), (2_000, 2, true));
        let a = Cli::parse_from(["x", "--users", "500"]).args.resolved();
        assert_eq!((a.users, a.seconds, a.no_append), (500, 20, false));
    }
}
