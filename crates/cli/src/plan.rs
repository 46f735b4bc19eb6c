//! `scalestack plan`: flags and files in, `scalestack_plan` math out. The
//! IO the plan crate must not do — reading inputs, bench reports and key
//! traces — happens here, and nothing else does.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use scalestack_bench::BenchReport;
use scalestack_plan::cache_sim::{self, Access, PolicyKind};
use scalestack_plan::queueing::{erlang_c, little, servers_for_wait};
use scalestack_plan::{CapacityPlan, Format, Measurement, PlanInputs, aligned, thousands, usl};

use crate::bench::read_report;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct PlanArgs {
    #[command(subcommand)]
    command: Option<PlanCommand>,
    /// Inputs as TOML (every key optional; `--print-inputs` shows them all
    /// with the seed's worked example as defaults).
    #[arg(long, value_name = "FILE")]
    inputs: Option<PathBuf>,
    /// Calibrate from a `scalestack bench --json` report: per-server
    /// throughput and latency (and the read share of a scenario) replace
    /// the ballparks.
    #[arg(long, value_name = "REPORT")]
    from: Option<PathBuf>,
    /// With --from: how many API instances served that load.
    #[arg(long, default_value_t = 1, requires = "from")]
    instances: u32,
    /// Peak requests per second (overrides the inputs).
    #[arg(long)]
    target_rps: Option<f64>,
    /// Share of reads, 0 to 1 (overrides the inputs).
    #[arg(long)]
    read_ratio: Option<f64>,
    /// Cache hit rate, 0 to 1 (overrides the inputs).
    #[arg(long)]
    cache_hit_rate: Option<f64>,
    /// Requests per second one API server sustains (overrides the inputs).
    #[arg(long)]
    rps_per_server: Option<f64>,
    /// Time one worker spends on a message, e.g. 10ms (overrides the inputs).
    #[arg(long, value_parser = parse_duration)]
    processing: Option<Duration>,
    /// Output: table, markdown or json.
    #[arg(long, default_value = "table")]
    format: Format,
    /// Print the effective inputs as TOML and exit.
    #[arg(long)]
    print_inputs: bool,
}

#[derive(Debug, Subcommand)]
enum PlanCommand {
    /// Fit the Universal Scalability Law to throughput at several instance
    /// counts: σ (contention), κ (coherency), peak, predictions, R².
    Fit(FitArgs),
    /// Little's law and Erlang C for a pool of servers or workers.
    Queue(QueueArgs),
    /// Replay a key trace through LRU, LFU, FIFO, random, TTL-only and
    /// TinyLFU caches and print their hit ratios.
    Cache(CacheArgs),
}

#[derive(Debug, Args)]
struct FitArgs {
    /// Measurements as `INSTANCES=REPORT.json` or `INSTANCES:RPS`, at least
    /// three instance counts.
    #[arg(required = true, value_name = "N=FILE|N:RPS")]
    points: Vec<String>,
    /// Instance counts to predict throughput for, e.g. 16,32,64.
    #[arg(long, value_delimiter = ',')]
    predict: Vec<f64>,
    /// Output: table or json.
    #[arg(long, default_value = "table")]
    format: Format,
}

#[derive(Debug, Args)]
struct QueueArgs {
    /// Arrivals per second.
    #[arg(long)]
    arrival: f64,
    /// Mean service time per item, e.g. 1ms.
    #[arg(long, value_parser = parse_duration)]
    service: Duration,
    /// Servers (workers, pool connections) to evaluate; default: Little's
    /// law rounded up.
    #[arg(long)]
    servers: Option<u64>,
    /// Mean wait to size for, e.g. 10ms.
    #[arg(long, value_parser = parse_duration, default_value = "10ms")]
    wait_target: Duration,
}

#[derive(Debug, Args)]
struct CacheArgs {
    /// A key trace: one access per line, `KEY` or `SECONDS KEY` (keys that
    /// are not integers are hashed). Without it, a synthetic trace.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Synthetic trace: key distribution (uniform, zipf:S, hotspot:X/Y).
    #[arg(long, default_value = "zipf:1.1")]
    dist: String,
    /// Synthetic trace: key range.
    #[arg(long, default_value = "1..100000")]
    keys: String,
    /// Synthetic trace: accesses.
    #[arg(long, default_value_t = 1_000_000)]
    requests: usize,
    /// Accesses per second, for times of traces without them (TTL only).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Cache capacities in entries, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    capacity: Vec<u64>,
    /// Policies, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    policies: Vec<PolicyKind>,
    /// Time to live of the TTL-only policy.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    ttl: Duration,
    /// Seed of the synthetic trace and the random policy.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 1ms, 20s, 2m)"))
}

/// What a bench report says about one instance's capacity.
fn measurement(report: &BenchReport, source: &Path, instances: u32) -> Measurement {
    let requests = report.requests as f64;
    let transport = report.errors.total() as f64;
    let failed = report.error_responses() as f64 + transport;
    let reads = |method: &str| matches!(method, "GET" | "HEAD");
    let read_ratio = if report.kinds.len() > 1 && requests > 0.0 {
        let read: u64 = report
            .kinds
            .iter()
            .filter(|k| reads(&k.method))
            .map(|k| k.requests)
            .sum();
        Some(read as f64 / requests)
    } else {
        None
    };
    Measurement {
        source: source.display().to_string(),
        instances,
        rps: report.rps,
        mean_latency_ms: report.latency.mean_us / 1000.0,
        p99_latency_ms: report.latency.p99_us as f64 / 1000.0,
        read_ratio,
        error_ratio: if requests + transport > 0.0 {
            failed / (requests + transport)
        } else {
            0.0
        },
    }
}

/// Runs `scalestack plan`.
pub(crate) fn run(args: PlanArgs) -> Result<()> {
    match args.command {
        Some(PlanCommand::Fit(fit)) => return run_fit(&fit),
        Some(PlanCommand::Queue(q)) => return run_queue(&q),
        Some(PlanCommand::Cache(c)) => return run_cache(&c),
        None => {}
    }
    let mut inputs = match &args.inputs {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read --inputs {}", path.display()))?;
            PlanInputs::from_toml(&text, &path.display().to_string())?
        }
        None => PlanInputs::default(),
    };
    let overrides = [
        (&mut inputs.target_rps, args.target_rps),
        (&mut inputs.read_ratio, args.read_ratio),
        (&mut inputs.cache_hit_rate, args.cache_hit_rate),
        (&mut inputs.api_rps_per_server, args.rps_per_server),
        (
            &mut inputs.message_processing_ms,
            args.processing.map(|d| d.as_secs_f64() * 1000.0),
        ),
    ];
    for (field, value) in overrides {
        if let Some(v) = value {
            *field = v;
        }
    }
    let mut calibration = None;
    if let Some(path) = &args.from {
        let report = read_report(path)?;
        calibration = Some(measurement(&report, path, args.instances).apply(&mut inputs)?);
    }
    inputs.validate()?;
    if args.print_inputs {
        print!("{}", inputs.to_toml());
        return Ok(());
    }
    let plan = CapacityPlan::compute(&inputs);
    if args.format == Format::Json {
        let json =
            serde_json::json!({ "inputs": inputs, "calibration": calibration, "plan": plan });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    if let Some(c) = &calibration {
        println!("Calibrated from {}:", c.measurement.source);
        for change in &c.changes {
            println!("  {change}");
        }
        println!();
    }
    print!("{}", scalestack_plan::render(&plan, args.format));
    Ok(())
}

fn parse_point(text: &str) -> Result<(f64, f64)> {
    if let Some((n, file)) = text.split_once('=') {
        let n: f64 = n
            .trim()
            .parse()
            .with_context(|| format!("`{text}`: `{n}` is not an instance count"))?;
        let report = read_report(Path::new(file.trim()))?;
        return Ok((n, report.rps));
    }
    if let Some((n, rps)) = text.split_once(':') {
        let parse = |v: &str, what: &str| -> Result<f64> {
            v.trim()
                .parse()
                .with_context(|| format!("`{text}`: `{v}` is not {what}"))
        };
        return Ok((parse(n, "an instance count")?, parse(rps, "a throughput")?));
    }
    bail!("`{text}` must be INSTANCES=REPORT.json or INSTANCES:RPS, e.g. 4=r4.json or 4:41000")
}

fn run_fit(args: &FitArgs) -> Result<()> {
    let points: Vec<(f64, f64)> = args
        .points
        .iter()
        .map(|p| parse_point(p))
        .collect::<Result<_>>()?;
    let fit = usl::fit(&points)?;
    let mut predict = args.predict.clone();
    if predict.is_empty() {
        let max = points.iter().map(|p| p.0).fold(1.0, f64::max);
        predict = vec![max * 2.0, max * 4.0];
        if let Some(peak) = fit.peak_n {
            predict.push(peak.round().max(1.0));
        }
    }
    if args.format == Format::Json {
        let predictions: Vec<_> = predict
            .iter()
            .map(|&n| serde_json::json!({ "instances": n, "throughput": fit.predict(n) }))
            .collect();
        let json = serde_json::json!({ "fit": fit, "predictions": predictions });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    let r = |a: &str, b: String| [a.to_owned(), b];
    let rows = vec![
        r(
            "λ (one instance)",
            format!("{} req/s", thousands(fit.lambda)),
        ),
        r("σ (contention)", format!("{:.5}", fit.sigma)),
        r("κ (coherency)", format!("{:.3e}", fit.kappa)),
        r(
            "peak at",
            fit.peak_n.map_or_else(
                || "no peak (κ = 0)".to_owned(),
                |n| format!("{n:.1} instances"),
            ),
        ),
        r(
            "peak throughput",
            fit.peak_throughput.map_or_else(
                || "unbounded (linear)".to_owned(),
                |x| format!("{} req/s", thousands(x)),
            ),
        ),
        r("R²", format!("{:.4}", fit.r_squared)),
        r("RMSE", format!("{} req/s", thousands(fit.rmse))),
    ];
    println!(
        "Universal Scalability Law fitted to {} measurements",
        fit.points
    );
    print!("{}", aligned(&rows, [false, true]));
    let mut table = vec![[
        "instances".to_owned(),
        "measured".to_owned(),
        "model".to_owned(),
    ]];
    let mut shown: Vec<f64> = points.iter().map(|p| p.0).collect();
    shown.extend(&predict);
    shown.sort_by(f64::total_cmp);
    shown.dedup();
    for n in shown {
        let measured = points
            .iter()
            .filter(|p| p.0 == n)
            .map(|p| thousands(p.1))
            .collect::<Vec<_>>()
            .join(", ");
        table.push([format!("{n}"), measured, thousands(fit.predict(n))]);
    }
    println!();
    print!("{}", aligned(&table, [true, true, true]));
    if fit.points == 3 {
        println!(
            "\nThree points fit three parameters exactly; measure more counts to judge the fit."
        );
    }
    Ok(())
}

fn run_queue(args: &QueueArgs) -> Result<()> {
    if !(args.arrival.is_finite() && args.arrival > 0.0) {
        bail!(
            "--arrival must be a rate greater than 0, got {}",
            args.arrival
        );
    }
    let service = args.service.as_secs_f64();
    if service <= 0.0 {
        bail!("--service must be longer than 0");
    }
    let busy = little(args.arrival, service);
    let servers = args.servers.unwrap_or(busy.ceil() as u64);
    let e = erlang_c(servers, args.arrival, service);
    let target = args.wait_target.as_secs_f64();
    let needed = servers_for_wait(args.arrival, service, target);
    let r = |a: &str, b: String| [a.to_owned(), b];
    let rows = vec![
        r("busy on average (Little's law)", format!("{busy:.2}")),
        r("servers", thousands(servers as f64)),
        r("utilisation", format!("{:.2}%", e.utilisation * 100.0)),
        r(
            "P(wait) (Erlang C)",
            e.p_wait
                .map_or_else(|| "1 (unstable)".to_owned(), |p| format!("{p:.4}")),
        ),
        r(
            "mean wait",
            e.mean_wait_s.map_or_else(
                || "unbounded".to_owned(),
                |w| format!("{:.3} ms", w * 1000.0),
            ),
        ),
        r(
            &format!("servers for a mean wait ≤ {:?}", args.wait_target),
            thousands(needed as f64),
        ),
    ];
    print!("{}", aligned(&rows, [false, true]));
    Ok(())
}

/// Reads a trace file: `KEY` or `SECONDS KEY` per line.
fn read_trace(path: &Path, rate: f64) -> Result<Vec<Access>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read --trace {}", path.display()))?;
    let key_of = |k: &str| {
        k.parse::<u64>().unwrap_or_else(|_| {
            let mut h = DefaultHasher::new();
            k.hash(&mut h);
            h.finish()
        })
    };
    let mut trace = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let access = match line.split_once(char::is_whitespace) {
            Some((t, k)) => {
                let at: f64 = t.parse().with_context(|| {
                    format!(
                        "{}:{}: `{t}` is not a time in seconds",
                        path.display(),
                        i + 1
                    )
                })?;
                Access {
                    at,
                    key: key_of(k.trim()),
                }
            }
            None => Access {
                at: trace.len() as f64 / rate,
                key: key_of(line),
            },
        };
        trace.push(access);
    }
    if trace.is_empty() {
        bail!("{} holds no accesses", path.display());
    }
    Ok(trace)
}

fn run_cache(args: &CacheArgs) -> Result<()> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be greater than 0, got {}", args.rate);
    }
    let (trace, source) = match &args.trace {
        Some(path) => (read_trace(path, args.rate)?, path.display().to_string()),
        None => {
            let keys: scalestack_bench::KeyRange = args.keys.parse().context("--keys")?;
            let dist: scalestack_bench::KeyDist = args.dist.parse().context("--dist")?;
            let sampler = scalestack_bench::KeySampler::new(keys, dist)?;
            let trace = sampler
                .stream(args.seed)
                .take(args.requests)
                .enumerate()
                .map(|(i, key)| Access {
                    at: i as f64 / args.rate,
                    key,
                })
                .collect();
            (
                trace,
                format!("{} keys {keys} {dist}", thousands(args.requests as f64)),
            )
        }
    };
    let policies = if args.policies.is_empty() {
        PolicyKind::ALL.to_vec()
    } else {
        args.policies.clone()
    };
    let results = cache_sim::simulate(
        &trace,
        &policies,
        &args.capacity,
        args.ttl.as_secs_f64(),
        args.seed,
    );
    println!("{} accesses from {source}", thousands(trace.len() as f64));
    let mut rows = vec![[
        "policy".to_owned(),
        "capacity".to_owned(),
        "hits".to_owned(),
        "hit ratio".to_owned(),
    ]];
    for r in &results {
        let capacity = if r.policy == PolicyKind::TtlOnly {
            format!("{} peak (ttl {:?})", thousands(r.capacity as f64), args.ttl)
        } else {
            thousands(r.capacity as f64)
        };
        rows.push([
            r.policy.name().to_owned(),
            capacity,
            thousands(r.hits as f64),
            format!("{:.2}%", r.hit_ratio * 100.0),
        ]);
    }
    print!("{}", aligned(&rows, [false, true, true, true]));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_counts_with_rates_or_reports() {
        assert_eq!(parse_point("4:41000").unwrap(), (4.0, 41_000.0));
        let err = parse_point("4").unwrap_err().to_string();
        assert!(err.contains("INSTANCES=REPORT.json"), "{err}");
        let err = parse_point("x:1").unwrap_err().to_string();
        assert!(err.contains("`x` is not an instance count"), "{err}");
        let err = format!("{:#}", parse_point("2=/nonexistent/r.json").unwrap_err());
        assert!(err.contains("/nonexistent/r.json"), "{err}");
    }

    #[test]
    fn traces_take_keys_with_or_without_times() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("trace.txt");
        std::fs::write(&file, "# a comment\n7\nuser:42\n\n1.5 7\n").unwrap();
        let trace = read_trace(&file, 10.0).unwrap();
        assert_eq!(trace.len(), 3);
        assert_eq!((trace[0].at, trace[0].key), (0.0, 7));
        assert_eq!(trace[1].at, 0.1);
        assert_ne!(trace[1].key, 42, "a non-numeric key is hashed whole");
        assert_eq!((trace[2].at, trace[2].key), (1.5, 7));
        std::fs::write(&file, "x 7\n").unwrap();
        let err = format!("{:#}", read_trace(&file, 10.0).unwrap_err());
        assert!(err.contains(":1: `x` is not a time"), "{err}");
    }
}
