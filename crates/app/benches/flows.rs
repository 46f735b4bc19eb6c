//! End-to-end latency of an order's effects, run by `cargo xtask bench
//! queue` (which starts the nats-server and renders the table); built with
//! the bench profile so that the measured code is optimised.
//!
//! In one process: a store of SQLite files, the queue (embedded or
//! JetStream), the outbox relay and the worker's groups `inventory`, `email`
//! and `analytics`, exactly as `scalestack worker` wires them. Orders are
//! placed one by one through the store (an order row and its outbox row in
//! one transaction, as the api does) at `--rate` per second; an order's
//! latency is from its commit to the last of its three effects, each stamped
//! by the effect itself: the reservation's and the analytics record's
//! `applied_at`, the email file's modification time. Nothing is polled while
//! the orders flow, so the measurement does not load the system.
//!
//! Prints one JSON line per backend: p50, p99 and max in milliseconds.

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use scalestack_app::flows::relay::Relay;
use scalestack_app::flows::{self, Flows, Invalidator};
use scalestack_config::{Config, QueueBackendKind};
use scalestack_queue::{AnyQueue, Worker};
use scalestack_store::{NewOrder, NewProduct, NewUser, Store};
use tokio::sync::watch;

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    nats_url: Option<String>,
    dir: std::path::PathBuf,
    orders: usize,
    rate: f64,
}

fn parse() -> Result<Args, Error> {
    let mut args = Args {
        nats_url: None,
        dir: std::env::temp_dir(),
        orders: 2_000,
        rate: 200.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--nats-url" => args.nats_url = Some(value()?),
            "--dir" => args.dir = value()?.into(),
            "--orders" => args.orders = value()?.parse()?,
            "--rate" => args.rate = value()?.parse()?,
            // `cargo bench` passes --bench; other flags are not ours.
            _ => {}
        }
    }
    if args.orders == 0 || args.rate.is_nan() || args.rate <= 0.0 {
        return Err("--orders and --rate must be positive".into());
    }
    Ok(args)
}

/// The milliseconds at `q` (0..=1) of sorted `values`.
fn quantile(sorted: &[i64], q: f64) -> i64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// Waits until every order of `ids` has its three effects; returns their
/// stock and analytics times.
async fn wait_for_effects(
    store: &Store,
    sink: &std::path::Path,
    ids: &[i64],
) -> Result<Vec<(i64, Option<i64>, Option<i64>)>, Error> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let times = store.effect_times(ids).await?;
        let emailed = ids
            .iter()
            .filter(|id| sink.join(format!("order-{id}.eml")).exists())
            .count();
        if emailed == ids.len() && times.iter().all(|(_, a, b)| a.is_some() && b.is_some()) {
            return Ok(times);
        }
        if Instant::now() > deadline {
            return Err("the effects did not all happen within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn run_backend(args: &Args, backend: QueueBackendKind) -> Result<serde_json::Value, Error> {
    let dir = tempfile::tempdir_in(&args.dir)?;
    let mut config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.queue.backend = backend;
    if let Some(url) = &args.nats_url {
        config.queue.nats.url = url.clone();
        // A stack of its own on the shared server.
        config.queue.nats.prefix = format!("e2e{}", std::process::id());
    }
    config.worker.consumer.fetch_wait = Duration::from_millis(100);
    config.worker.relay.poll_interval = Duration::from_millis(5);
    let store = Store::open(&config).await?;
    let queue = Arc::new(AnyQueue::open(&config).await?);
    flows::ensure_topics(queue.as_ref(), config.queue.partitions).await?;
    let flows = Flows::new(&config, store.clone(), Invalidator::none(&config));
    let sink = flows.sink().dir().to_owned();
    let worker = flows.register(Worker::from_config(queue.clone(), &config.worker));
    let relay = Arc::new(Relay::new(
        store.clone(),
        queue.clone(),
        &config.worker.relay,
    ));
    let (stop, rx) = watch::channel(false);
    let stopped = {
        let mut rx = rx.clone();
        async move {
            while !*rx.borrow_and_update() {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }
    };
    let consumers = tokio::spawn(async move { worker.run(stopped).await });
    let relaying = {
        let relay = relay.clone();
        tokio::spawn(async move { relay.run(rx).await })
    };

    let mut users = Vec::new();
    for i in 0..100 {
        let user = store
            .create_user(&NewUser {
                email: format!("u{i}@example.com"),
                name: format!("User {i}"),
                region: None,
            })
            .await?;
        users.push(user.value.id);
    }
    let product = store
        .create_product(&NewProduct {
            name: "Lamp".into(),
            description: String::new(),
            price_cents: 250,
            stock: i64::MAX / 4,
        })
        .await?
        .value
        .id;

    // Warm-up: the groups' first fetches and the consumers' creation are not
    // what is measured.
    let mut warm = Vec::new();
    for user_id in users.iter().take(20) {
        let order = store
            .create_order(&NewOrder {
                user_id: *user_id,
                product_id: product,
                quantity: 1,
                unit_price_cents: 250,
            })
            .await?
            .value;
        warm.push(order.id);
    }
    wait_for_effects(&store, &sink, &warm).await?;

    // Placed at a fixed rate, on schedule rather than after the previous.
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let start = Instant::now();
    let mut placed = Vec::with_capacity(args.orders);
    for i in 0..args.orders {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let order = store
            .create_order(&NewOrder {
                user_id: users[i % users.len()],
                product_id: product,
                quantity: 1,
                unit_price_cents: 250,
            })
            .await?
            .value;
        placed.push((order.id, order.created_at));
    }
    let ids: Vec<i64> = placed.iter().map(|(id, _)| *id).collect();
    let times = wait_for_effects(&store, &sink, &ids).await?;
    let _ = stop.send(true);
    consumers.await??;
    relaying.await?;

    let mut latencies = Vec::with_capacity(ids.len());
    for ((id, created), (_, inventory, analytics)) in placed.iter().zip(&times) {
        let mtime = std::fs::metadata(sink.join(format!("order-{id}.eml")))?.modified()?;
        let emailed = mtime.duration_since(UNIX_EPOCH)?.as_millis() as i64;
        let last = emailed
            .max(inventory.unwrap_or_default())
            .max(analytics.unwrap_or_default());
        latencies.push((last - created).max(0));
    }
    latencies.sort_unstable();
    store.close().await;
    Ok(serde_json::json!({
        "name": match backend {
            QueueBackendKind::Embedded => "scalestack embedded",
            QueueBackendKind::Nats => "scalestack nats",
        },
        "orders": args.orders,
        "rate_per_s": args.rate,
        "e2e_p50_ms": quantile(&latencies, 0.50),
        "e2e_p99_ms": quantile(&latencies, 0.99),
        "e2e_max_ms": latencies.last().copied().unwrap_or_default(),
    }))
}

fn main() -> Result<(), Error> {
    let args = parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut backends = vec![QueueBackendKind::Embedded];
        if args.nats_url.is_some() {
            backends.push(QueueBackendKind::Nats);
        }
        for backend in backends {
            let row = run_backend(&args, backend).await?;
            println!("{row}");
        }
        Ok(())
    })
}
