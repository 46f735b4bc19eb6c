//! `cargo xtask bench stack`: the walking skeleton's end-to-end measurement.
//!
//! Seeds 100,000 users, starts the whole stack from the release binary, and
//! drives `GET /users/{id}` with Zipf(1.1) keys through the gateway, first with
//! `scalestack bench`, then with wrk (same keys, same connections, same
//! duration). For each client it reports achieved RPS, latency percentiles,
//! and CPU microseconds per request summed over every scalestack process (the
//! supervisor's process tree, from /proc), plus the client's own CPU per request.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use scalestack_bench::BenchReport;
use scalestack_telemetry::procfs;
use scalestack_testkit::stack::{Stack, test_config};

use crate::report;
use crate::{cargo, ensure_program, root, run as run_cmd};

/// Options of the stack benchmark.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Users seeded (keys are 1..=users).
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Products seeded.
    #[arg(long, default_value_t = 10_000)]
    products: u64,
    /// Connections of each client.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds each client drives load.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Seconds of warm-up before the measured runs.
    #[arg(long, default_value_t = 10)]
    warmup: u64,
    /// Api instances.
    #[arg(long, default_value_t = 2)]
    api_instances: u16,
    /// Print only; do not append to BENCHMARKS.md.
    #[arg(long)]
    no_append: bool,
}

struct Row {
    client: &'static str,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    stack_cpu_us: f64,
    client_cpu_us: f64,
    errors: u64,
}

fn tree_cpu(pid: u32) -> Duration {
    procfs::process_tree(pid)
        .into_iter()
        .filter_map(|p| procfs::stat(p).ok())
        .map(|s| s.cpu)
        .sum()
}

pub(crate) fn run(args: &Args) -> Result<()> {
    ensure_program("wrk", "wrk")?;
    run_cmd(cargo().args(["build", "--release", "-p", "scalestack-cli"]))?;
    let exe = root().join("target/release/scalestack");
    let dir = tempfile::tempdir().context("create a temporary directory")?;
    let mut config = test_config(dir.path(), args.api_instances);
    config.log.level = "warn".into();
    config.gateway.health_check = Default::default();
    let config_path = dir.path().join("bench.toml");
    std::fs::write(&config_path, config.to_toml())?;

    let seed_start = std::time::Instant::now();
    run_cmd(Command::new(&exe).args([
        "seed",
        "--config",
        config_path.to_str().unwrap(),
        "--users",
        &args.users.to_string(),
        "--products",
        &args.products.to_string(),
        "--quiet",
    ]))?;
    let seed_secs = seed_start.elapsed().as_secs_f64();

    let rt = tokio::runtime::Runtime::new()?;
    let stack = rt
        .block_on(Stack::start(&exe, config, dir.path(), &[]))
        .map_err(anyhow::Error::msg)?;
    let pid = stack.pid();
    let load = report::user_reads(&stack.gateway_url(), args.users, args.connections);
    let bench = |seconds: u64, measure: bool| -> Result<BenchReport> {
        report::release_bench(&exe, dir.path(), &load, seconds, measure.then_some(pid))
    };
    eprintln!("xtask: warming up for {} s", args.warmup);
    bench(args.warmup, false)?;

    eprintln!("xtask: scalestack bench for {} s", args.seconds);
    let report = bench(args.seconds, true)?;
    let ours = Row {
        client: "scalestack bench",
        rps: report.rps,
        p50_ms: report.latency.p50_us as f64 / 1e3,
        p99_ms: report.latency.p99_us as f64 / 1e3,
        stack_cpu_us: report
            .target_cpu
            .as_ref()
            .and_then(|c| c.us_per_request)
            .unwrap_or(f64::NAN),
        client_cpu_us: report
            .client_cpu
            .as_ref()
            .and_then(|c| c.us_per_request)
            .unwrap_or(f64::NAN),
        errors: report.error_responses() + report.errors.total(),
    };

    eprintln!("xtask: wrk for {} s", args.seconds);
    let wrk = run_wrk(dir.path(), &stack.gateway_url(), args, pid)?;
    drop(rt.block_on(stack.stop()));

    let rows = [ours, wrk];
    let table = render(&rows);
    println!("{table}");
    if !args.no_append {
        append(args, &table, seed_secs)?;
    }
    Ok(())
}

/// A wrk Lua script drawing Zipf(1.1) keys over `1..=n` by inverse CDF.
fn zipf_script(n: u64) -> String {
    format!(
        r#"-- Zipf(1.1) keys over 1..{n}, key 1 hottest (as `scalestack bench --dist zipf:1.1`).
local n, s = {n}, 1.1
local cdf, total = {{}}, 0
for k = 1, n do total = total + 1 / (k ^ s); cdf[k] = total end
for k = 1, n do cdf[k] = cdf[k] / total end
math.randomseed(os.time() + tonumber(tostring({{}}):sub(8), 16))
request = function()
  local u, lo, hi = math.random(), 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return wrk.format("GET", "/users/" .. lo)
end
"#
    )
}

fn run_wrk(dir: &Path, gateway: &str, args: &Args, pid: u32) -> Result<Row> {
    let script = dir.join("zipf.lua");
    std::fs::write(&script, zipf_script(args.users))?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let wrk = format!(
        "wrk -t{threads} -c{} -d{}s --latency -s {} {gateway}/; times",
        args.connections,
        args.seconds,
        script.display()
    );
    let before = tree_cpu(pid);
    let out = Command::new("bash")
        .args(["-c", &wrk])
        .output()
        .context("run wrk")?;
    let stack_cpu = tree_cpu(pid).saturating_sub(before);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    eprint!("{text}");
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .context("wrk printed no request count")?;
    let field = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
    };
    let rps: f64 = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    let p50 = field("50%").map_or(f64::NAN, |v| wrk_ms(&v));
    let p99 = field("99%").map_or(f64::NAN, |v| wrk_ms(&v));
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    // bash's `times`: the second line is the user and system time of its children (wrk).
    let client_cpu = text
        .lines()
        .rev()
        .find(|l| l.contains('m') && l.ends_with('s'))
        .map(|l| l.split_whitespace().map(bash_secs).sum::<f64>())
        .unwrap_or(f64::NAN);
    Ok(Row {
        client: "wrk",
        rps,
        p50_ms: p50,
        p99_ms: p99,
        stack_cpu_us: stack_cpu.as_secs_f64() * 1e6 / requests,
        client_cpu_us: client_cpu * 1e6 / requests,
        errors,
    })
}

/// `1.23ms`, `456.78us`, `1.02s` → milliseconds.
fn wrk_ms(v: &str) -> f64 {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        (v, f64::NAN)
    };
    num.parse::<f64>().map_or(f64::NAN, |n| n * scale)
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
        "| client | RPS | p50 ms | p99 ms | stack CPU µs/req | client CPU µs/req | errors |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {} |",
            r.client, r.rps, r.p50_ms, r.p99_ms, r.stack_cpu_us, r.client_cpu_us, r.errors
        );
    }
    if let [a, b] = rows {
        let _ = writeln!(
            t,
            "\nRatios scalestack bench / wrk: RPS {:.2}×, stack CPU per request {:.2}×, client CPU per request {:.2}×",
            a.rps / b.rps,
            a.stack_cpu_us / b.stack_cpu_us,
            a.client_cpu_us / b.client_cpu_us
        );
    }
    t
}

fn append(args: &Args, table: &str, seed_secs: f64) -> Result<()> {
    let machine = report::machine();
    let date = report::today();
    let mut text = String::new();
    let _ = write!(
        text,
        "\n## Walking skeleton: GET /users/{{id}} through the gateway ({date})\n\n\
         Machine: {machine}; the stack, both clients and the seeder share it.\n\
         Stack: release build, {} api instances, 4 SQLite shards + catalog, L1 cache on, \
         seeded with {} users and {} products in {seed_secs:.1} s.\n\
         Load: Zipf(1.1) keys over 1..={}, {} connections, {} s per client after {} s of warm-up; \
         `scalestack bench` ran first, then wrk (with a Lua script drawing the same distribution).\n\
         Stack CPU = utime + stime of the supervisor's whole process tree (gateway, api instances, \
         worker, supervisor) over the run, divided by the requests served.\n\n\
         Command: `cargo xtask bench stack --users {} --connections {} --seconds {}`\n\n{table}",
        args.api_instances,
        args.users,
        args.products,
        args.users,
        args.connections,
        args.seconds,
        args.warmup,
        args.users,
        args.connections,
        args.seconds,
    );
    report::append(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_and_bash_units() {
        assert!((wrk_ms("1.50ms") - 1.5).abs() < 1e-9);
        assert!((wrk_ms("250.00us") - 0.25).abs() < 1e-9);
        assert!((wrk_ms("1.20s") - 1200.0).abs() < 1e-9);
        assert!((bash_secs("1m2.500s") - 62.5).abs() < 1e-9);
    }
}
