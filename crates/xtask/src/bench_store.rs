//! `cargo xtask bench store`: the data tier on real PostgreSQL, side by side
//! with PostgreSQL's own load generator.
//!
//! * **Writes**: `POST /orders` per second through one api process (release
//!   build) on 1 and on 2 PostgreSQL shards, against `pgbench` running the
//!   same transaction the api runs (insert the order with an id from the
//!   shard's sequence, insert its outbox row, commit) on the same server, with
//!   as many clients as the api has connections. The issue's target is at
//!   least 0.5× pgbench's TPS: the api's own cost must be small next to the
//!   database's.
//! * **Reads**: `GET /users/{id}` per second with the cache disabled, with the
//!   shard's primary alone and with the primary plus one streaming replica.
//!
//! Every server is started by testkit in temporary directories with
//! PostgreSQL's durable defaults (fsync and synchronous commit on); the
//! replica streams asynchronously. Nothing is left behind.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use scalestack_bench::{BenchReport, Scenario};
use scalestack_config::{Config, ReplicaSetConfig};
use scalestack_testkit::ports::free_addr;
use scalestack_testkit::postgres::{PgCluster, PgOptions, SUPERUSER, bin_dir};

use crate::report;
use crate::{cargo, ensure_program, root, run as run_cmd};

/// Options of the store benchmark.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Users seeded (keys are 1..=users).
    #[arg(long, default_value_t = 20_000)]
    users: u64,
    /// Products seeded.
    #[arg(long, default_value_t = 1_000)]
    products: u64,
    /// Connections of the load generator, and clients of pgbench.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds each measured run drives load.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Seconds of warm-up before each measured run.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Print only; do not append to BENCHMARKS.md.
    #[arg(long)]
    no_append: bool,
}

/// One line of the result table.
struct Row {
    what: String,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    api_cpu_us: f64,
    errors: u64,
}

impl Row {
    fn of(what: String, report: &BenchReport) -> Self {
        Self {
            what,
            per_sec: report.rps,
            p50_ms: report.latency.p50_us as f64 / 1e3,
            p99_ms: report.latency.p99_us as f64 / 1e3,
            api_cpu_us: report
                .target_cpu
                .as_ref()
                .and_then(|c| c.us_per_request)
                .unwrap_or(f64::NAN),
            errors: report.error_responses() + report.errors.total(),
        }
    }
}

/// A running `scalestack api`, killed on drop.
struct ApiProcess {
    child: Child,
    url: String,
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_api(exe: &Path, config: &Config, dir: &Path, name: &str) -> Result<ApiProcess> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config.to_toml())?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let child = Command::new(exe)
        .args(["api", "--config"])
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {}", exe.display()))?;
    let api = ApiProcess {
        child,
        url: format!("http://{}", config.api.listen),
    };
    let rt = tokio::runtime::Runtime::new()?;
    let client = scalestack_testkit::http::Client::new(Duration::from_secs(2));
    let health = format!("{}/health", api.url);
    let ready = rt.block_on(scalestack_testkit::eventually(
        Duration::from_secs(60),
        || async { client.get(&health).await.ok().filter(|r| r.status == 200) },
    ));
    if ready.is_none() {
        let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
        bail!("the api ({name}) did not become healthy; log:\n{log}");
    }
    Ok(api)
}

/// The configuration of one scenario: `shards` as `(cluster, database)`.
fn config_for(
    catalog: (&PgCluster, &str),
    shards: &[(&PgCluster, &str)],
    replicas: bool,
    cache: bool,
    connections: usize,
) -> Config {
    let set = |(cluster, db): (&PgCluster, &str)| {
        ReplicaSetConfig::postgres(
            cluster.primary_url(db),
            if replicas {
                cluster.replica_urls(db)
            } else {
                Vec::new()
            },
        )
    };
    let mut config = Config::default();
    config.api.listen = free_addr();
    config.log.level = "warn".into();
    config.cache.enabled = cache;
    // As many database connections as pgbench has clients: with durable
    // commits the throughput of both grows with the transactions in flight
    // (group commit), so a smaller pool would measure the pool, not the api.
    config.store.max_connections = u32::try_from(connections).unwrap_or(u32::MAX);
    config.store.catalog = set(catalog);
    config.store.shards = shards.iter().map(|s| set(*s)).collect();
    config
}

fn seed(exe: &Path, config: &Config, dir: &Path, args: &Args) -> Result<()> {
    let path = dir.join("seed.toml");
    std::fs::write(&path, config.to_toml())?;
    run_cmd(
        Command::new(exe)
            .arg("seed")
            .arg("--config")
            .arg(&path)
            .args([
                "--users",
                &args.users.to_string(),
                "--products",
                &args.products.to_string(),
                "--quiet",
            ]),
    )
}

/// The `POST /orders` scenario as TOML.
fn orders_text(args: &Args) -> String {
    format!(
        r#"
[[request]]
name = "place order"
method = "POST"
path = "/orders"
headers = {{ "Content-Type" = "application/json" }}
body = '{{"user_id": {{id}}, "product_id": {{rand:1..{products}}}, "quantity": 1}}'
keys = "1..{users}"
expect = [201]
"#,
        products = args.products,
        users = args.users
    )
}

fn orders_scenario(args: &Args) -> Result<Scenario> {
    Ok(Scenario::from_toml(&orders_text(args), "bench store")?)
}

/// Drives `url` (with the scenario file, if any), warm-up first, with the
/// api's CPU measured in the second run.
fn drive(
    exe: &Path,
    url: &str,
    scenario: Option<&Path>,
    args: &Args,
    pid: u32,
    dir: &Path,
) -> Result<BenchReport> {
    let keys = format!("1..{}", args.users);
    let connections = args.connections.to_string();
    let mut load = vec!["--url", url, "--keys", &keys, "--connections", &connections];
    let scenario = scenario.map(|s| s.to_string_lossy().into_owned());
    if let Some(scenario) = &scenario {
        load.extend(["--scenario", scenario.as_str()]);
    }
    if args.warmup > 0 {
        report::release_bench(exe, dir, &load, args.warmup, None)?;
    }
    report::release_bench(exe, dir, &load, args.seconds, Some(pid))
}

/// The api's order transaction as a pgbench script.
fn pgbench_script(args: &Args) -> String {
    // The payload has the size of a real `order.placed` event.
    let payload = format!(
        "{{\"type\":\"order.placed\",\"order\":{{{}}}}}",
        "x".repeat(190)
    );
    format!(
        "\\set uid random(1, {users})\n\
         \\set pid random(1, {products})\n\
         BEGIN;\n\
         INSERT INTO orders (id, user_id, product_id, quantity, unit_price_cents, total_cents, status, created_at) \
         VALUES (nextval('order_seq') * 1024 + 1023, :uid, :pid, 1, 100, 100, 'placed', 0);\n\
         INSERT INTO outbox (topic, key, payload, created_at) VALUES ('orders', :uid, '{payload}', 0);\n\
         END;\n",
        users = args.users,
        products = args.products
    )
}

fn run_pgbench(cluster: &PgCluster, db: &str, dir: &Path, args: &Args) -> Result<f64> {
    let script = dir.join("orders.sql");
    std::fs::write(&script, pgbench_script(args))?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let out = Command::new(bin_dir()?.join("pgbench"))
        .args([
            "-n",
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.primary.port.to_string(),
        ])
        .args(["-U", SUPERUSER, "-c", &args.connections.to_string()])
        .args([
            "-j",
            &threads.to_string(),
            "-T",
            &args.seconds.to_string(),
            "-f",
        ])
        .arg(&script)
        .arg(db)
        .output()
        .context("run pgbench")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "pgbench failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprint!("{text}");
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
        .context("pgbench printed no tps")
}

pub(crate) fn run(args: &Args) -> Result<()> {
    if bin_dir().is_err() {
        ensure_program("/usr/lib/postgresql/15/bin/postgres", "postgresql")?;
    }
    let bin = bin_dir()?;
    eprintln!("xtask: PostgreSQL programs in {}", bin.display());
    run_cmd(cargo().args(["build", "--release", "-p", "scalestack-cli"]))?;
    let exe: PathBuf = root().join("target/release/scalestack");
    let dir = tempfile::tempdir().context("create a temporary directory")?;

    eprintln!("xtask: starting PostgreSQL (a: primary + 1 replica, b: primary)");
    let options = |replicas| PgOptions {
        replicas,
        durable: true,
        max_connections: 300,
    };
    let a = PgCluster::start_with(&options(1))?;
    let b = PgCluster::start_with(&options(0))?;
    let rt = tokio::runtime::Runtime::new()?;
    for (cluster, db) in [
        (&a, "w1_catalog"),
        (&a, "w1_s0"),
        (&a, "w2_catalog"),
        (&a, "w2_s0"),
        (&b, "w2_s1"),
    ] {
        rt.block_on(cluster.create_database(db))?;
    }
    drop(rt);
    // Checked here, so that a bad scenario fails before any server work.
    orders_scenario(args)?;
    let orders = dir.path().join("orders.toml");
    std::fs::write(&orders, orders_text(args))?;
    let mut rows = Vec::new();

    // Writes on one shard, then the same transaction by pgbench.
    let one = config_for(
        (&a, "w1_catalog"),
        &[(&a, "w1_s0")],
        true,
        true,
        args.connections,
    );
    seed(&exe, &one, dir.path(), args)?;
    {
        let api = start_api(&exe, &one, dir.path(), "w1")?;
        eprintln!("xtask: POST /orders, 1 shard, {} s", args.seconds);
        let report = drive(
            &exe,
            &api.url,
            Some(&orders),
            args,
            api.child.id(),
            dir.path(),
        )?;
        rows.push(Row::of("POST /orders, 1 shard (api)".into(), &report));
    }
    eprintln!("xtask: pgbench, the same transaction, {} s", args.seconds);
    let tps = run_pgbench(&a, "w1_s0", dir.path(), args)?;
    rows.push(Row {
        what: "the same transaction, pgbench".into(),
        per_sec: tps,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        api_cpu_us: f64::NAN,
        errors: 0,
    });

    // Writes on two shards (two servers).
    let two = config_for(
        (&a, "w2_catalog"),
        &[(&a, "w2_s0"), (&b, "w2_s1")],
        true,
        true,
        args.connections,
    );
    seed(&exe, &two, dir.path(), args)?;
    {
        let api = start_api(&exe, &two, dir.path(), "w2")?;
        eprintln!("xtask: POST /orders, 2 shards, {} s", args.seconds);
        let report = drive(
            &exe,
            &api.url,
            Some(&orders),
            args,
            api.child.id(),
            dir.path(),
        )?;
        rows.push(Row::of("POST /orders, 2 shards (api)".into(), &report));
    }

    // Reads without the cache: the primary alone, then with its replica.
    for (replicas, what) in [
        (false, "GET /users/{id}, primary only"),
        (true, "GET /users/{id}, primary + 1 replica"),
    ] {
        let config = config_for(
            (&a, "w1_catalog"),
            &[(&a, "w1_s0")],
            replicas,
            false,
            args.connections,
        );
        let api = start_api(&exe, &config, dir.path(), "reads")?;
        eprintln!("xtask: {what}, {} s", args.seconds);
        let url = format!("{}/users/{{id}}", api.url);
        let report = drive(&exe, &url, None, args, api.child.id(), dir.path())?;
        rows.push(Row::of(what.into(), &report));
    }

    let table = render(&rows);
    println!("{table}");
    if !args.no_append {
        append(args, &table)?;
    }
    Ok(())
}

fn render(rows: &[Row]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| run | per s | p50 ms | p99 ms | api CPU µs/req | errors |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|");
    // pgbench reports no latency percentiles and has no api process.
    let cell = |v: f64, decimals: usize| {
        if v.is_nan() {
            "–".to_owned()
        } else {
            format!("{v:.decimals$}")
        }
    };
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {:.0} | {} | {} | {} | {} |",
            r.what,
            r.per_sec,
            cell(r.p50_ms, 2),
            cell(r.p99_ms, 2),
            cell(r.api_cpu_us, 1),
            r.errors
        );
    }
    if let [api, pgbench, two, primary, replica] = rows {
        let _ = writeln!(
            t,
            "\nRatios: api ÷ pgbench on 1 shard {:.2}× (target ≥ 0.5×); 2 shards ÷ 1 shard {:.2}×; \
             reads with a replica ÷ primary only {:.2}×",
            api.per_sec / pgbench.per_sec,
            two.per_sec / api.per_sec,
            replica.per_sec / primary.per_sec
        );
    }
    t
}

fn append(args: &Args, table: &str) -> Result<()> {
    let machine = report::machine();
    let date = report::today();
    let mut text = String::new();
    let _ = write!(
        text,
        "\n## Data tier: orders and user reads on PostgreSQL ({date})\n\n\
         Machine: {machine}; PostgreSQL 15 (fsync and synchronous_commit on, one \
         asynchronous streaming replica on server a), the api (release build, one process) and the \
         load generator share it.\n\
         Writes: `POST /orders` with uniform users over 1..={} and products over 1..={}; 1 shard = \
         catalog and shard on server a; 2 shards = the second shard on server b. pgbench ran the \
         api's transaction (order row with a sequence id, outbox row, commit) against the same \
         database with the same number of clients. Reads: `GET /users/{{id}}` with the cache \
         disabled. {} connections, {} s per run after {} s of warm-up; api CPU = utime + stime \
         of the api process per request.\n\n\
         Command: `cargo xtask bench store --users {} --connections {} --seconds {}`\n\n{table}",
        args.users,
        args.products,
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

    fn args() -> Args {
        Args {
            users: 10,
            products: 3,
            connections: 2,
            seconds: 1,
            warmup: 0,
            no_append: true,
        }
    }

    #[test]
    fn the_pgbench_script_is_the_api_transaction() {
        let script = pgbench_script(&args());
        assert!(script.contains("random(1, 10)") && script.contains("random(1, 3)"));
        assert!(script.contains("nextval('order_seq')"));
        assert!(script.contains("INSERT INTO outbox"));
        assert!(script.trim_end().ends_with("END;"));
    }

    #[test]
    fn the_orders_scenario_parses() {
        let scenario = orders_scenario(&args()).unwrap();
        assert_eq!(scenario.requests.len(), 1);
        assert_eq!(scenario.requests[0].method, "POST");
    }
}
