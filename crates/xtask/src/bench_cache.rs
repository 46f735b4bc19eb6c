//! `cargo xtask bench cache`: the cache tier's measurements.
//!
//! Phase 1 (this file today) measures the L2 ceiling: reads per second through
//! the cache's L2 path (L1 off, so every read is one pipelined GET + PTTL
//! through the breaker; the `l2_ceiling` bench of `scalestack-cache`, built in
//! release) against `redis-benchmark -t get` on the same redis-server, with
//! the same number of connections, key space and value size, run one after
//! the other. It reports operations per second, the CPU of redis-server per
//! operation for each client (how hard each drives the server) and the CPU of
//! each client per operation, and their ratios.
//!
//! The through-the-gateway parts of the issue (store queries per 100 requests
//! and RPS with L1+L2, L2 only and no cache) join when the cache is wired into
//! the reference service.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use scalestack_telemetry::procfs;
use scalestack_testkit::redis::RedisServer;

use crate::{cargo, ensure_program, root, run as run_cmd};

/// Options of the cache benchmark.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Concurrent callers of the cache, and connections of redis-benchmark.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Keys read at random (both clients).
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Seconds of measured load through the cache.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of warm-up before the measured load through the cache.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// GET requests redis-benchmark sends (pick about `seconds` worth).
    #[arg(long, default_value_t = 1_000_000)]
    requests: u64,
    /// Print only; do not append to BENCHMARKS.md.
    #[arg(long)]
    no_append: bool,
}

struct Row {
    client: &'static str,
    ops_per_sec: f64,
    server_cpu_us: f64,
    client_cpu_us: f64,
}

fn redis_cpu(server: &RedisServer) -> Duration {
    server
        .pid()
        .and_then(|pid| procfs::stat(pid).ok())
        .map(|s| s.cpu)
        .unwrap_or_default()
}

pub(crate) fn run(args: &Args) -> Result<()> {
    ensure_program("redis-server", "redis-server")?;
    ensure_program("redis-benchmark", "redis-tools")?;
    eprintln!("xtask: building the l2_ceiling bench (release)");
    run_cmd(cargo().args([
        "bench",
        "-p",
        "scalestack-cache",
        "--bench",
        "l2_ceiling",
        "--no-run",
    ]))?;
    let server = RedisServer::start().map_err(anyhow::Error::msg)?;

    eprintln!(
        "xtask: cache L2 path for {} s after {} s of warm-up",
        args.seconds, args.warmup
    );
    let before = redis_cpu(&server);
    let out = cargo()
        .args([
            "bench",
            "-q",
            "-p",
            "scalestack-cache",
            "--bench",
            "l2_ceiling",
        ])
        .env("L2_BENCH_URL", server.url())
        .env("L2_BENCH_CALLERS", args.connections.to_string())
        .env("L2_BENCH_KEYS", args.keys.to_string())
        .env("L2_BENCH_VALUE_BYTES", args.value_bytes.to_string())
        .env("L2_BENCH_SECONDS", args.seconds.to_string())
        .env("L2_BENCH_WARMUP", args.warmup.to_string())
        .current_dir(root())
        .output()
        .context("run the l2_ceiling bench")?;
    let server_cpu = redis_cpu(&server).saturating_sub(before);
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
    let measured_share = args.seconds as f64 / (args.seconds + args.warmup) as f64;
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
        args.connections, args.keys, args.value_bytes
    );
    // Fill the key space redis-benchmark reads (`key:__rand_int__`) first.
    run_cmd(Command::new("bash").args([
        "-c",
        &format!("{common} -t set -n {} -q > /dev/null", args.keys * 5),
    ]))?;
    let before = redis_cpu(&server);
    let out = Command::new("bash")
        .args([
            "-c",
            &format!("{common} -t get -n {} --csv; times", args.requests),
        ])
        .output()
        .context("run redis-benchmark")?;
    let server_cpu = redis_cpu(&server).saturating_sub(before);
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

    let table = render(&[ours, anchor]);
    println!("{table}");
    if !args.no_append {
        append(args, &table)?;
    }
    Ok(())
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

fn render(rows: &[Row]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| client | ops/s | redis-server CPU µs/op | client CPU µs/op |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {:.0} | {:.2} | {:.2} |",
            r.client, r.ops_per_sec, r.server_cpu_us, r.client_cpu_us
        );
    }
    if let [a, b] = rows {
        let _ = writeln!(
            t,
            "\nRatios cache L2 path / redis-benchmark: ops/s {:.2}×, redis-server CPU per op {:.2}×, client CPU per op {:.2}×",
            a.ops_per_sec / b.ops_per_sec,
            a.server_cpu_us / b.server_cpu_us,
            a.client_cpu_us / b.client_cpu_us
        );
    }
    t
}

fn append(args: &Args, table: &str) -> Result<()> {
    let path = root().join("BENCHMARKS.md");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = time::OffsetDateTime::now_utc().date();
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = write!(
        text,
        "\n## Cache: the L2 ceiling ({date})\n\n\
         Machine: {cores} cores; redis-server 7 (Debian), both clients and the server share it.\n\
         Cache L2 path: `Resource::get_or_load` with the L1 off, so each read is one pipelined \
         GET + PTTL through the breaker; {} concurrent callers on a 2-thread Tokio runtime \
         (release build), {} s after {} s of warm-up. redis-benchmark: `-t get -c {} -r {} -d {} \
         -n {}` on the same server. Keys drawn uniformly over {} keys of {} bytes.\n\n\
         Command: `cargo xtask bench cache --connections {} --seconds {} --requests {}`\n\n{table}",
        args.connections,
        args.seconds,
        args.warmup,
        args.connections,
        args.keys,
        args.value_bytes,
        args.requests,
        args.keys,
        args.value_bytes,
        args.connections,
        args.seconds,
        args.requests,
    );
    std::fs::write(&path, text)?;
    eprintln!("xtask: appended to {}", path.display());
    Ok(())
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
}
