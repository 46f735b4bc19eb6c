//! `cargo xtask bench queue`: publish and consume throughput of the queue's
//! two backends, side by side with the raw async-nats client on the same
//! nats-server, and the end-to-end latency of an order's three effects.
//!
//! Starts a nats-server from testkit, runs the optimised measuring programs
//! `crates/queue/benches/throughput.rs` and `crates/app/benches/flows.rs`
//! against it, prints a table with the ratios to the raw client (the target
//! is at least 0.8×) and one with the order → inventory + email + analytics
//! latency, and appends both to `BENCHMARKS.md` unless `--no-append`.

use std::fmt::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use scalestack_testkit::nats::NatsServer;

use crate::report;

/// Rows the throughput benchmark prints per run: raw, raw + ids, scalestack
/// nats (default and with dedupe on publish), embedded.
const ROWS: usize = 5;
use crate::{cargo, ensure_program, root};

/// Options of the queue benchmark.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Messages published and then consumed per row.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Messages per fetch (and the raw client's pull batch).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Partitions of the topic (subjects of the raw stream).
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Consume loops of the worker runtime.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Publishes awaiting their ack at once.
    #[arg(long, default_value_t = 1_000)]
    window: usize,
    /// Orders placed for the end-to-end latency rows.
    #[arg(long, default_value_t = 5_000)]
    orders: usize,
    /// Orders placed per second (an open model: on schedule, not after the
    /// previous one's effects).
    #[arg(long, default_value_t = 250.0)]
    order_rate: f64,
    /// Print only; do not append to BENCHMARKS.md.
    #[arg(long)]
    no_append: bool,
    /// Skip the end-to-end latency rows (throughput only; implies
    /// `--no-append`).
    #[arg(long)]
    no_e2e: bool,
    /// Runs of the five throughput rows, interleaved (raw, raw + ids,
    /// scalestack nats, with dedupe, embedded, raw, ...); each figure is the median of
    /// its row's runs, which keeps a noisy neighbour from deciding a ratio.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
}

struct LatencyRow {
    name: String,
    p50: f64,
    p99: f64,
    max: f64,
}

struct Row {
    name: String,
    publish: f64,
    consume: f64,
    cpu_us: f64,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    ensure_program("nats-server", "nats-server")?;
    let server = NatsServer::start().map_err(anyhow::Error::msg)?;
    let dir = tempfile::tempdir().context("create a temporary directory")?;
    eprintln!(
        "xtask: cargo bench -p scalestack-queue --bench throughput against {}",
        server.url()
    );
    let output = cargo()
        .args([
            "bench",
            "-q",
            "-p",
            "scalestack-queue",
            "--bench",
            "throughput",
            "--",
        ])
        .args(["--nats-url", &server.url()])
        .args(["--nats-pid", &server.pid().unwrap_or(0).to_string()])
        .arg("--dir")
        .arg(dir.path())
        .args(["--messages", &args.messages.to_string()])
        .args(["--payload", &args.payload.to_string()])
        .args(["--batch", &args.batch.to_string()])
        .args(["--partitions", &args.partitions.to_string()])
        .args(["--concurrency", &args.concurrency.to_string()])
        .args(["--window", &args.window.to_string()])
        .args(["--repeat", &args.repeat.max(1).to_string()])
        .current_dir(root())
        .stderr(Stdio::inherit())
        .output()
        .context("run the queue throughput benchmark")?;
    if !output.status.success() {
        bail!(
            "the queue throughput benchmark failed with {}",
            output.status
        );
    }
    let mut runs = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        runs.push(Row {
            name: v["name"].as_str().unwrap_or("?").to_owned(),
            publish: v["publish_per_s"].as_f64().unwrap_or(f64::NAN),
            consume: v["consume_per_s"].as_f64().unwrap_or(f64::NAN),
            cpu_us: v["cpu_us_per_msg"].as_f64().unwrap_or(f64::NAN),
        });
    }
    let repeat = args.repeat.max(1);
    if runs.len() != ROWS * repeat {
        bail!(
            "expected {} result rows from the benchmark, got {}",
            ROWS * repeat,
            runs.len()
        );
    }
    let rows = medians(&runs);
    if args.no_e2e {
        println!("{}", render(&rows));
        return Ok(());
    }
    let latency = end_to_end(args, &server, dir.path())?;
    let table = format!("{}\n{}", render(&rows), render_latency(args, &latency));
    println!("{table}");
    if !args.no_append {
        append(args, &table)?;
    }
    Ok(())
}

/// One row per backend, in the order of their first run, with the median of
/// each figure over that backend's runs.
fn medians(runs: &[Row]) -> Vec<Row> {
    fn median(mut values: Vec<f64>) -> f64 {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        }
    }
    let mut names: Vec<&str> = Vec::new();
    for run in runs {
        if !names.contains(&run.name.as_str()) {
            names.push(&run.name);
        }
    }
    names
        .into_iter()
        .map(|name| {
            let of = |f: fn(&Row) -> f64| {
                median(runs.iter().filter(|r| r.name == name).map(f).collect())
            };
            Row {
                name: name.to_owned(),
                publish: of(|r| r.publish),
                consume: of(|r| r.consume),
                cpu_us: of(|r| r.cpu_us),
            }
        })
        .collect()
}

/// Runs `crates/app/benches/flows.rs`: order → all three effects, per backend.
fn end_to_end(args: &Args, server: &NatsServer, dir: &std::path::Path) -> Result<Vec<LatencyRow>> {
    eprintln!(
        "xtask: cargo bench -p scalestack-app --bench flows ({} orders at {}/s)",
        args.orders, args.order_rate
    );
    let output = cargo()
        .args([
            "bench",
            "-q",
            "-p",
            "scalestack-app",
            "--bench",
            "flows",
            "--",
        ])
        .args(["--nats-url", &server.url()])
        .arg("--dir")
        .arg(dir)
        .args(["--orders", &args.orders.to_string()])
        .args(["--rate", &args.order_rate.to_string()])
        .current_dir(root())
        .stderr(Stdio::inherit())
        .output()
        .context("run the end-to-end order benchmark")?;
    if !output.status.success() {
        bail!(
            "the end-to-end order benchmark failed with {}",
            output.status
        );
    }
    let rows: Vec<LatencyRow> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|v| LatencyRow {
            name: v["name"].as_str().unwrap_or("?").to_owned(),
            p50: v["e2e_p50_ms"].as_f64().unwrap_or(f64::NAN),
            p99: v["e2e_p99_ms"].as_f64().unwrap_or(f64::NAN),
            max: v["e2e_max_ms"].as_f64().unwrap_or(f64::NAN),
        })
        .collect();
    if rows.len() != 2 {
        bail!(
            "expected 2 latency rows from the benchmark, got {}",
            rows.len()
        );
    }
    Ok(rows)
}

fn render_latency(args: &Args, rows: &[LatencyRow]) -> String {
    let mut out = format!(
        "End to end, {} orders at {}/s: from the order's commit to the last of its stock \
         reservation, email file and analytics update.\n\n\
         | backend | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|\n",
        args.orders, args.order_rate
    );
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.0} |",
            row.name, row.p50, row.p99, row.max
        );
    }
    out
}

fn render(rows: &[Row]) -> String {
    let raw = &rows[0];
    let mut out = String::from(
        "| backend | publish msg/s | consume + ack msg/s | CPU µs/msg | publish vs raw | consume vs raw |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.1} | {:.2}× | {:.2}× |",
            row.name,
            row.publish,
            row.consume,
            row.cpu_us,
            row.publish / raw.publish,
            row.consume / raw.consume
        );
    }
    // Message ids are what duplicate detection needs, so the backend is also
    // compared with the raw client that sends them.
    if let (Some(ids), Some(ours)) = (
        rows.iter()
            .find(|r| r.name == "raw async-nats + message ids"),
        rows.iter()
            .find(|r| r.name == "scalestack nats, dedupe on publish"),
    ) {
        let _ = writeln!(
            out,
            "\nscalestack nats, dedupe on publish / raw async-nats + message ids: publish {:.2}×, consume + ack {:.2}×.",
            ours.publish / ids.publish,
            ours.consume / ids.consume
        );
    }
    out
}

fn append(args: &Args, table: &str) -> Result<()> {
    let machine = report::machine();
    let date = report::today();
    let server = Command::new("nats-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut text = String::new();
    let _ = write!(
        text,
        "\n## Queue: publish and consume throughput ({date})\n\n\
         Machine: {machine}; {server} with JetStream on file storage, the benchmark and the \
         server share it.\n\
         Each row publishes {} messages of {} bytes (acks awaited in windows of {}), then consumes \
         and acknowledges all of them. Raw: one stream over {} subjects, one durable pull consumer \
         read as a message stream in batches of {}; its second row adds a `Nats-Msg-Id` header to \
         every publish, which the server's duplicate detection needs. scalestack: a topic of {} partitions, the worker \
         runtime with the defaults (the message id in a header of ours, no duplicate detection on publish; \
         consumers skip duplicates by their own records) and with `queue.nats.dedupe_on_publish = true`, \
         the worker \
         runtime with {} consume loops and batches of {}. Both NATS streams use limits \
         retention; scalestack deletes settled messages by a clean-up about once a second, \
         whose CPU is counted. CPU = utime + stime of the benchmark \
         process plus, for the NATS rows, the server, per message.\n\n\
         {}\
         Command: `cargo xtask bench queue --messages {} --payload {} --batch {} --partitions {} \
         --concurrency {} --window {} --orders {} --order-rate {}{}`\n\n{table}",
        args.messages,
        args.payload,
        args.window,
        args.partitions,
        args.batch,
        args.partitions,
        args.concurrency,
        args.batch,
        if args.repeat > 1 {
            format!(
                "Each figure is the median of {} interleaved runs of the four rows.\n\n",
                args.repeat
            )
        } else {
            String::new()
        },
        args.messages,
        args.payload,
        args.batch,
        args.partitions,
        args.concurrency,
        args.window,
        args.orders,
        args.order_rate,
        if args.repeat > 1 {
            format!(" --repeat {}", args.repeat)
        } else {
            String::new()
        },
    );
    report::append(&text)
}
